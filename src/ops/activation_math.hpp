// Activation functions and their derivatives in fp32, shared by the CPU backend and CUDA kernels.
#pragma once

#include <cmath>

#include "core/hd.hpp"
#include "ops/backend_types.hpp"

namespace mixtrain {

MIXTRAIN_HD float sigmoidf_(float x) {
  return 1.0f / (1.0f + expf(-x));
}

MIXTRAIN_HD float activation_value(Activation act, float alpha, float x) {
  switch (act) {
    case Activation::Identity:
      return x;
    case Activation::ReLU:
      return x > 0.0f ? x : 0.0f;
    case Activation::LeakyReLU:
      return x > 0.0f ? x : alpha * x;
    case Activation::ELU:
      return x > 0.0f ? x : alpha * expm1f(x);
    case Activation::Sigmoid:
      return sigmoidf_(x);
    case Activation::Tanh:
      return tanhf(x);
    case Activation::Swish:
      return x * sigmoidf_(x);
    case Activation::GELU:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case Activation::GELUTanh: {
      const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
      return 0.5f * x * (1.0f + tanhf(u));
    }
  }
  return x;
}

// d act(x) / dx. y = act(x) is passed for the activations whose derivative is cheaper from it;
// it is the stored (possibly rounded) forward output.
MIXTRAIN_HD float activation_derivative(Activation act, float alpha, float x, float y) {
  switch (act) {
    case Activation::Identity:
      return 1.0f;
    case Activation::ReLU:
      return x > 0.0f ? 1.0f : 0.0f;
    case Activation::LeakyReLU:
      return x > 0.0f ? 1.0f : alpha;
    case Activation::ELU:
      return x > 0.0f ? 1.0f : alpha * expf(x);
    case Activation::Sigmoid: {
      const float s = sigmoidf_(x);
      return s * (1.0f - s);
    }
    case Activation::Tanh: {
      const float t = tanhf(x);
      return 1.0f - t * t;
    }
    case Activation::Swish: {
      const float s = sigmoidf_(x);
      return s + x * s * (1.0f - s);
    }
    case Activation::GELU: {
      const float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
      const float pdf = 0.3989422804014327f * expf(-0.5f * x * x);
      return cdf + x * pdf;
    }
    case Activation::GELUTanh: {
      const float k = 0.7978845608028654f;
      const float u = k * (x + 0.044715f * x * x * x);
      const float t = tanhf(u);
      return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
    }
  }
  (void)y;
  return 1.0f;
}

}  // namespace mixtrain
