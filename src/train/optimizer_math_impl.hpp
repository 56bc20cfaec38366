// Bodies of the optimizer update rules declared in optimizer_math.hpp (included from there). They
// are compiled by the host compiler and by nvcc as __host__ __device__, so they only call C math
// functions that CUDA device code provides too.
//
// State slots: SGD: [momentum buffer] when momentum > 0. Adam, AdamW, Nadam: [m, v].
// RMSProp: [square average, momentum buffer when momentum > 0, mean gradient when centered].
// AdaGrad: [sum of squares]. AdaDelta: [square average, accumulated squared delta].
#pragma once

#include <cmath>
#include <cstdint>

namespace mixtrain {

namespace optimizer_detail {

// 1 - beta^t, accurate also when beta is close to 1 (1 - 0.999^t cancels badly with powf).
MIXTRAIN_HD float one_minus_pow(float beta, std::int32_t t) {
  return -expm1f(static_cast<float>(t) * log1pf(beta - 1.0f));
}

// PyTorch NAdam's momentum schedule: mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)).
MIXTRAIN_HD float nadam_mu(const NadamOptions& o, std::int32_t t) {
  return o.beta1 * (1.0f - 0.5f * powf(0.96f, static_cast<float>(t) * o.momentum_decay));
}

MIXTRAIN_HD void adam_moments(float beta1, float beta2, float g, float* s) {
  s[0] = beta1 * s[0] + (1.0f - beta1) * g;
  s[1] = beta2 * s[1] + (1.0f - beta2) * g * g;
}

MIXTRAIN_HD void adam_update(float beta1, float beta2, float epsilon,
                             const OptimizerStepScalars& sc, float& p, float g, float* s) {
  adam_moments(beta1, beta2, g, s);
  const float denom = sqrtf(s[1]) / sqrtf(sc.bias_correction2) + epsilon;
  p -= (sc.lr / sc.bias_correction1) * s[0] / denom;
}

}  // namespace optimizer_detail

MIXTRAIN_HD float schedule_factor(const ScheduleConfig& s, std::int32_t applied_steps) {
  const float t = static_cast<float>(applied_steps);
  float factor = 1.0f;
  if (s.kind == LrSchedule::Cosine && s.total_steps > 0) {
    const float progress = fminf(t / static_cast<float>(s.total_steps), 1.0f);
    factor =
        s.min_factor + (1.0f - s.min_factor) * 0.5f * (1.0f + cosf(3.14159265358979f * progress));
  } else if (s.kind == LrSchedule::StepDecay && s.step_size > 0) {
    factor = powf(s.gamma, floorf(t / static_cast<float>(s.step_size)));
  }
  if (s.warmup_steps > 0 && applied_steps < s.warmup_steps) {
    factor *= (t + 1.0f) / static_cast<float>(s.warmup_steps);
  }
  return factor;
}

MIXTRAIN_HD OptimizerStepScalars optimizer_step_scalars(const OptimizerHyper& h, float lr,
                                                        float grad_factor,
                                                        std::int32_t applied_steps,
                                                        float mu_product_before) {
  lr *= schedule_factor(h.schedule, applied_steps);
  OptimizerStepScalars sc{lr,   grad_factor, applied_steps + 1, 0.0f, 0.0f, mu_product_before,
                          1.0f, 1.0f};
  const float beta1 = h.kind == Optimizer::AdamW   ? h.adamw.beta1
                      : h.kind == Optimizer::Nadam ? h.nadam.beta1
                                                   : h.adam.beta1;
  const float beta2 = h.kind == Optimizer::AdamW   ? h.adamw.beta2
                      : h.kind == Optimizer::Nadam ? h.nadam.beta2
                                                   : h.adam.beta2;
  sc.bias_correction1 = optimizer_detail::one_minus_pow(beta1, sc.step);
  sc.bias_correction2 = optimizer_detail::one_minus_pow(beta2, sc.step);
  if (h.kind == Optimizer::Nadam) {
    sc.mu_t = optimizer_detail::nadam_mu(h.nadam, sc.step);
    sc.mu_next = optimizer_detail::nadam_mu(h.nadam, sc.step + 1);
    sc.mu_product = mu_product_before * sc.mu_t;
  }
  return sc;
}

// StepControl::optimizer_scalar after an applied step, given its value before the step and the
// applied steps before it (Nadam: the running product of mu_t; other optimizers keep it).
MIXTRAIN_HD float next_optimizer_scalar(const OptimizerHyper& h, float before,
                                        std::int32_t applied_steps_before) {
  if (h.kind == Optimizer::Nadam) {
    return before * optimizer_detail::nadam_mu(h.nadam, applied_steps_before + 1);
  }
  return before;
}

// The rule of `kind` (h.kind is not read): a kernel passes a compile-time constant and reads the
// rest of h straight from its parameters, without a modified copy of h.
MIXTRAIN_HD void optimizer_update_element(const OptimizerHyper& h, Optimizer kind,
                                          const OptimizerStepScalars& sc, float& p, float g,
                                          float* s) {
  // AdamW shrinks the parameter first; the coupled decay below then sees the shrunk value.
  if (kind == Optimizer::AdamW) {
    p *= 1.0f - sc.lr * h.adamw.decoupled_weight_decay;
  }
  g = g * sc.grad_factor + h.weight_decay * p;

  switch (kind) {
    case Optimizer::SGD: {
      const SgdOptions& o = h.sgd;
      if (o.momentum > 0.0f) {
        float& buf = s[0];
        buf = sc.step == 1 ? g : o.momentum * buf + (1.0f - o.dampening) * g;
        g = o.nesterov ? g + o.momentum * buf : buf;
      }
      p -= sc.lr * g;
      return;
    }
    case Optimizer::Adam:
      optimizer_detail::adam_update(h.adam.beta1, h.adam.beta2, h.adam.epsilon, sc, p, g, s);
      return;
    case Optimizer::AdamW:
      optimizer_detail::adam_update(h.adamw.beta1, h.adamw.beta2, h.adamw.epsilon, sc, p, g, s);
      return;
    case Optimizer::RMSProp: {
      const RmspropOptions& o = h.rmsprop;
      float& square_avg = s[0];
      square_avg = o.rho * square_avg + (1.0f - o.rho) * g * g;
      float variance = square_avg;
      int slot = 1;
      float* buf = o.momentum > 0.0f ? &s[slot++] : nullptr;
      if (o.centered) {
        float& grad_avg = s[slot];
        grad_avg = o.rho * grad_avg + (1.0f - o.rho) * g;
        // Never negative in exact arithmetic; rounding could make it so.
        variance = fmaxf(square_avg - grad_avg * grad_avg, 0.0f);
      }
      const float denom = sqrtf(variance) + o.epsilon;
      if (buf != nullptr) {
        *buf = o.momentum * *buf + g / denom;
        p -= sc.lr * *buf;
      } else {
        p -= sc.lr * g / denom;
      }
      return;
    }
    case Optimizer::AdaGrad: {
      float& sum = s[0];
      sum += g * g;
      p -= sc.lr * g / (sqrtf(sum) + h.adagrad.epsilon);
      return;
    }
    case Optimizer::AdaDelta: {
      const AdadeltaOptions& o = h.adadelta;
      float& square_avg = s[0];
      float& acc_delta = s[1];
      square_avg = o.rho * square_avg + (1.0f - o.rho) * g * g;
      const float delta = sqrtf(acc_delta + o.epsilon) / sqrtf(square_avg + o.epsilon) * g;
      acc_delta = o.rho * acc_delta + (1.0f - o.rho) * delta * delta;
      p -= sc.lr * delta;
      return;
    }
    case Optimizer::Nadam: {
      const NadamOptions& o = h.nadam;
      optimizer_detail::adam_moments(o.beta1, o.beta2, g, s);
      const float denom = sqrtf(s[1] / sc.bias_correction2) + o.epsilon;
      p -= sc.lr * (1.0f - sc.mu_t) / (1.0f - sc.mu_product) * g / denom;
      p -= sc.lr * sc.mu_next / (1.0f - sc.mu_product * sc.mu_next) * s[0] / denom;
      return;
    }
  }
}

}  // namespace mixtrain
