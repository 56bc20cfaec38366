// Activation functions and their derivatives, shared by the CPU backend and CUDA kernels.
//
// Templated on the real type R: float is the arithmetic of every training dtype (f32, f16 and
// bf16 all compute in fp32, with expf, tanhf, erff...); double serves the CPU backend's F64
// reference dtype, against which the gradient tests take finite differences. The float
// instantiation is the same arithmetic, constant for constant, as before the templating.
#pragma once

#include <cmath>
#include <type_traits>

#include "core/hd.hpp"
#include "ops/backend_types.hpp"

namespace mixtrain {

// Math functions by overload: the f-suffixed single-precision functions for float, the double
// ones for double; both exist in CUDA device code.
MIXTRAIN_HD float math_exp(float x) {
  return expf(x);
}
MIXTRAIN_HD double math_exp(double x) {
  return exp(x);
}
MIXTRAIN_HD float math_expm1(float x) {
  return expm1f(x);
}
MIXTRAIN_HD double math_expm1(double x) {
  return expm1(x);
}
MIXTRAIN_HD float math_tanh(float x) {
  return tanhf(x);
}
MIXTRAIN_HD double math_tanh(double x) {
  return tanh(x);
}
MIXTRAIN_HD float math_erf(float x) {
  return erff(x);
}
MIXTRAIN_HD double math_erf(double x) {
  return erf(x);
}

// The constants below are written in double; each rounds to exactly the float literal the fp32
// code has always used (checked here), so R(constant) changes nothing for float.
static_assert(static_cast<float>(0.70710678118654752440) == 0.70710678118654752f);
static_assert(static_cast<float>(0.39894228040143267794) == 0.3989422804014327f);
static_assert(static_cast<float>(0.79788456080286535588) == 0.7978845608028654f);
static_assert(static_cast<float>(0.044715) == 0.044715f);

// ReLU keeps x where x > 0 and where x is NaN, and gives 0 elsewhere: NaN propagates, as IEEE
// max and PyTorch's relu do, so a NaN weight behind a ReLU reaches the loss instead of turning
// into zeros that hide it. Every ReLU of the library (layer, fused epilogue, batch-norm's fused
// ReLU, the fused dense chain) and its backward mask go through this test.
template <typename R>
MIXTRAIN_HD bool relu_passes(R x) {
  return !(x <= R(0));
}

template <typename R>
MIXTRAIN_HD R sigmoid_(R x) {
  return R(1) / (R(1) + math_exp(-x));
}

template <typename R>
MIXTRAIN_HD R activation_value(Activation act, float alpha, R x) {
  const R a = static_cast<R>(alpha);
  switch (act) {
    case Activation::Identity:
      return x;
    case Activation::ReLU:
      return relu_passes(x) ? x : R(0);
    case Activation::LeakyReLU:
      return x > R(0) ? x : a * x;
    case Activation::ELU:
      return x > R(0) ? x : a * math_expm1(x);
    case Activation::Sigmoid:
      return sigmoid_(x);
    case Activation::Tanh:
      return math_tanh(x);
    case Activation::Swish:
      return x * sigmoid_(x);
    case Activation::GELU:
      return R(0.5) * x * (R(1) + math_erf(x * R(0.70710678118654752440)));
    case Activation::GELUTanh: {
      const R u = R(0.79788456080286535588) * (x + R(0.044715) * x * x * x);
      return R(0.5) * x * (R(1) + math_tanh(u));
    }
  }
  return x;
}

// d act(x) / dx. y = act(x) is passed for the activations whose derivative is cheaper from it;
// it is the stored (possibly rounded) forward output.
template <typename R>
MIXTRAIN_HD R activation_derivative(Activation act, float alpha, R x, std::type_identity_t<R> y) {
  const R a = static_cast<R>(alpha);
  switch (act) {
    case Activation::Identity:
      return R(1);
    case Activation::ReLU:
      return relu_passes(x) ? R(1) : R(0);
    case Activation::LeakyReLU:
      return x > R(0) ? R(1) : a;
    case Activation::ELU:
      return x > R(0) ? R(1) : a * math_exp(x);
    case Activation::Sigmoid: {
      const R s = sigmoid_(x);
      return s * (R(1) - s);
    }
    case Activation::Tanh: {
      const R t = math_tanh(x);
      return R(1) - t * t;
    }
    case Activation::Swish: {
      const R s = sigmoid_(x);
      return s + x * s * (R(1) - s);
    }
    case Activation::GELU: {
      const R cdf = R(0.5) * (R(1) + math_erf(x * R(0.70710678118654752440)));
      const R pdf = R(0.39894228040143267794) * math_exp(R(-0.5) * x * x);
      return cdf + x * pdf;
    }
    case Activation::GELUTanh: {
      const R k = R(0.79788456080286535588);
      const R u = k * (x + R(0.044715) * x * x * x);
      const R t = math_tanh(u);
      return R(0.5) * (R(1) + t) +
             R(0.5) * x * (R(1) - t * t) * k * (R(1) + R(3) * R(0.044715) * x * x);
    }
  }
  (void)y;
  return R(1);
}

}  // namespace mixtrain
