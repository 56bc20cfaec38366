// Element-wise loss terms and their derivatives in fp32, shared by the CPU backend and CUDA.
// Row-wise cross-entropy over logits lives in the backends (it needs a row reduction).
#pragma once

#include <cmath>

#include "core/hd.hpp"
#include "ops/backend_types.hpp"

namespace mixtrain {

// Probabilities are clamped to [kProbEpsilon, 1 - kProbEpsilon] before taking logs.
inline constexpr float kProbEpsilon = 1e-7f;

MIXTRAIN_HD float clamp_prob(float p) {
  return p < kProbEpsilon ? kProbEpsilon : (p > 1.0f - kProbEpsilon ? 1.0f - kProbEpsilon : p);
}

// Loss term of one element (p: prediction, t: target) for the element-wise losses.
MIXTRAIN_HD float elementwise_loss(LossKind kind, float delta, float p, float t) {
  const float d = p - t;
  switch (kind) {
    case LossKind::BinaryCrossEntropy: {
      const float q = clamp_prob(p);
      return -(t * logf(q) + (1.0f - t) * logf(1.0f - q));
    }
    case LossKind::BinaryCrossEntropyLogits:
      return fmaxf(p, 0.0f) - p * t + log1pf(expf(-fabsf(p)));
    case LossKind::MeanSquaredError:
      return d * d;
    case LossKind::MeanAbsoluteError:
      return fabsf(d);
    case LossKind::Huber: {
      const float a = fabsf(d);
      return a <= delta ? 0.5f * d * d : delta * (a - 0.5f * delta);
    }
    case LossKind::CrossEntropyProbs:
      return -t * logf(clamp_prob(p));
    default:
      return 0.0f;
  }
}

// d term / d p.
MIXTRAIN_HD float elementwise_loss_grad(LossKind kind, float delta, float p, float t) {
  const float d = p - t;
  switch (kind) {
    case LossKind::BinaryCrossEntropy: {
      const float q = clamp_prob(p);
      return (q - t) / (q * (1.0f - q));
    }
    case LossKind::BinaryCrossEntropyLogits:
      return 1.0f / (1.0f + expf(-p)) - t;
    case LossKind::MeanSquaredError:
      return 2.0f * d;
    case LossKind::MeanAbsoluteError:
      return d > 0.0f ? 1.0f : (d < 0.0f ? -1.0f : 0.0f);
    case LossKind::Huber:
      return d > delta ? delta : (d < -delta ? -delta : d);
    case LossKind::CrossEntropyProbs:
      return -t / clamp_prob(p);
    default:
      return 0.0f;
  }
}

// Elements the mean divides by: rows for the cross-entropies (summed over classes), every
// element for the others.
MIXTRAIN_HD bool loss_sums_over_cols(LossKind kind) {
  return kind == LossKind::SparseCrossEntropy || kind == LossKind::CrossEntropy ||
         kind == LossKind::CrossEntropyProbs;
}

}  // namespace mixtrain
