// Element-wise loss terms and their derivatives, shared by the CPU backend and CUDA.
// Row-wise cross-entropy over logits lives in the backends (it needs a row reduction).
//
// Templated on the real type R like ops/activation_math.hpp: float for every training dtype,
// double for the CPU backend's F64 reference dtype. The float instantiation is the fp32 code as
// it always was.
#pragma once

#include <cmath>
#include <type_traits>

#include "core/hd.hpp"
#include "ops/activation_math.hpp"
#include "ops/backend_types.hpp"

namespace mixtrain {

MIXTRAIN_HD float math_log(float x) {
  return logf(x);
}
MIXTRAIN_HD double math_log(double x) {
  return log(x);
}
MIXTRAIN_HD float math_log1p(float x) {
  return log1pf(x);
}
MIXTRAIN_HD double math_log1p(double x) {
  return log1p(x);
}
MIXTRAIN_HD float math_fabs(float x) {
  return fabsf(x);
}
MIXTRAIN_HD double math_fabs(double x) {
  return fabs(x);
}
MIXTRAIN_HD float math_fmax(float x, float y) {
  return fmaxf(x, y);
}
MIXTRAIN_HD double math_fmax(double x, double y) {
  return fmax(x, y);
}

// Probabilities are clamped to [kProbEpsilon, 1 - kProbEpsilon] before taking logs (the same
// float bounds, widened, for double).
inline constexpr float kProbEpsilon = 1e-7f;

template <typename R>
MIXTRAIN_HD R clamp_prob(R p) {
  const R lo = static_cast<R>(kProbEpsilon);
  const R hi = static_cast<R>(1.0f - kProbEpsilon);
  return p < lo ? lo : (p > hi ? hi : p);
}

// Loss term of one element (p: prediction, t: target) for the element-wise losses.
template <typename R>
MIXTRAIN_HD R elementwise_loss(LossKind kind, float delta, R p, std::type_identity_t<R> t) {
  const R dl = static_cast<R>(delta);
  const R d = p - t;
  switch (kind) {
    case LossKind::BinaryCrossEntropy: {
      const R q = clamp_prob(p);
      return -(t * math_log(q) + (R(1) - t) * math_log(R(1) - q));
    }
    case LossKind::BinaryCrossEntropyLogits:
      return math_fmax(p, R(0)) - p * t + math_log1p(math_exp(-math_fabs(p)));
    case LossKind::MeanSquaredError:
      return d * d;
    case LossKind::MeanAbsoluteError:
      return math_fabs(d);
    case LossKind::Huber: {
      const R a = math_fabs(d);
      return a <= dl ? R(0.5) * d * d : dl * (a - R(0.5) * dl);
    }
    case LossKind::CrossEntropyProbs:
      return -t * math_log(clamp_prob(p));
    default:
      return R(0);
  }
}

// d term / d p.
template <typename R>
MIXTRAIN_HD R elementwise_loss_grad(LossKind kind, float delta, R p, std::type_identity_t<R> t) {
  const R dl = static_cast<R>(delta);
  const R d = p - t;
  switch (kind) {
    case LossKind::BinaryCrossEntropy: {
      const R q = clamp_prob(p);
      return (q - t) / (q * (R(1) - q));
    }
    case LossKind::BinaryCrossEntropyLogits:
      return R(1) / (R(1) + math_exp(-p)) - t;
    case LossKind::MeanSquaredError:
      return R(2) * d;
    case LossKind::MeanAbsoluteError:
      return d > R(0) ? R(1) : (d < R(0) ? R(-1) : R(0));
    case LossKind::Huber:
      return d > dl ? dl : (d < -dl ? -dl : d);
    case LossKind::CrossEntropyProbs:
      return -t / clamp_prob(p);
    default:
      return R(0);
  }
}

// Elements the mean divides by: rows for the cross-entropies (summed over classes), every
// element for the others.
MIXTRAIN_HD bool loss_sums_over_cols(LossKind kind) {
  return kind == LossKind::SparseCrossEntropy || kind == LossKind::CrossEntropy ||
         kind == LossKind::CrossEntropyProbs;
}

}  // namespace mixtrain
