#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_optimizer.hpp"
#include "core/half.hpp"
#include "mixtrain/error.hpp"
#include "ops/backend.hpp"
#include "reference/optimizer_reference.inc"
#include "train/optimizer_math.hpp"

namespace mixtrain {
namespace {

// Master weights, state and gradients of one parameter range, with the descriptor over them.
struct Params {
  std::vector<float> master;
  std::vector<float> grad;
  std::vector<std::vector<float>> state;
  StepControl control{};
  OptimizerDesc desc;

  Params(const OptimizerHyper& hyper, std::vector<float> initial, float lr)
      : master(std::move(initial)), grad(master.size(), 0.0f) {
    const int slots = optimizer_state_slots(hyper);
    for (int k = 0; k < slots; ++k) {
      state.emplace_back(master.size(), optimizer_state_init(hyper, k));
    }
    control.loss_scale = 1.0f;
    control.inv_scale = 1.0f;
    control.learning_rate = lr;
    control.optimizer_scalar = 1.0f;
    desc.hyper = hyper;
    desc.control = &control;
  }
  Params(const Params&) = delete;
  Params& operator=(const Params&) = delete;

  // Runs the optimizer pass over the vectors as they are now (tests reassign them); the gradients
  // are `grad`, or `ranges` when given.
  void apply(const GradRanges* ranges = nullptr) {
    desc.count = static_cast<std::int64_t>(master.size());
    desc.master = master.data();
    desc.grad = ranges != nullptr ? *ranges : GradRanges(grad.data());
    for (std::size_t k = 0; k < state.size(); ++k) desc.state[k] = state[k].data();
    cpu_optimizer_step(desc);
  }

  // One step, then the counter updates that finish_step does after an applied step.
  void step(const GradRanges* ranges = nullptr) {
    apply(ranges);
    if (control.found_inf == 0.0f) {
      control.optimizer_scalar =
          next_optimizer_scalar(desc.hyper, control.optimizer_scalar, control.optimizer_steps);
      ++control.optimizer_steps;
    }
  }
};

OptimizerHyper hyper_of(Optimizer kind) {
  OptimizerHyper h;
  h.kind = kind;
  return h;
}

std::vector<float> ramp(int n, float start, float step) {
  std::vector<float> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = start + step * static_cast<float>(i);
  return v;
}

TEST(OptimizerReference, TrajectoriesMatchFloat64Reference) {
  namespace ref = optimizer_reference;
  // The kernel computes in fp32 and the reference in float64 from the same fp32 inputs; six steps
  // of fp32 rounding (a few ulps each, amplified by divisions and square roots) stay well below
  // a relative 1e-5.
  constexpr double kRelTol = 1e-5;
  for (const ref::Case& c : ref::cases()) {
    SCOPED_TRACE(c.name);
    Params p(c.hyper, std::vector<float>(ref::kInitial, ref::kInitial + ref::kCount), c.lr);
    for (int t = 0; t < ref::kSteps; ++t) {
      p.grad.assign(ref::kGrads[t], ref::kGrads[t] + ref::kCount);
      p.step();
      for (int i = 0; i < ref::kCount; ++i) {
        const double want = c.expected[t][i];
        EXPECT_NEAR(p.master[static_cast<std::size_t>(i)], want, kRelTol * std::fabs(want))
            << "step " << t + 1 << ", element " << i;
      }
    }
  }
}

TEST(OptimizerStep, SkipsStepWhenFoundInf) {
  for (Optimizer kind : {Optimizer::SGD, Optimizer::Adam, Optimizer::RMSProp, Optimizer::Nadam}) {
    OptimizerHyper h = hyper_of(kind);
    h.sgd.momentum = 0.9f;
    h.rmsprop.centered = true;
    h.rmsprop.momentum = 0.5f;
    Params p(h, ramp(37, -1.3f, 0.071f), 0.01f);
    std::vector<f16> working(p.master.size());
    p.desc.working = Buf{working.data(), DType::F16};
    p.grad = ramp(37, 0.9f, -0.05f);
    p.step();  // two clean steps, so that no state is still zero or a copy of the gradient
    p.step();

    const std::vector<float> master = p.master;
    const std::vector<std::vector<float>> state = p.state;
    std::vector<std::uint16_t> working_bits;
    for (f16 w : working) working_bits.push_back(w.bits);
    const StepControl before = p.control;

    p.control.found_inf = 1.0f;
    p.grad = ramp(37, 5.0f, 1.0f);
    p.apply();
    EXPECT_EQ(p.master, master);
    EXPECT_EQ(p.state, state);
    for (std::size_t i = 0; i < working.size(); ++i) EXPECT_EQ(working[i].bits, working_bits[i]);
    EXPECT_EQ(p.control.optimizer_steps, before.optimizer_steps);
    EXPECT_EQ(p.control.optimizer_scalar, before.optimizer_scalar);
  }
}

TEST(OptimizerStep, ClippingScalesLikePrescaledGradients) {
  const std::vector<float> grad = ramp(50, -2.0f, 0.09f);
  double norm_sq = 0.0;
  for (float g : grad) norm_sq += static_cast<double>(g) * g;
  for (Optimizer kind : {Optimizer::SGD, Optimizer::Adam, Optimizer::AdaGrad, Optimizer::Nadam}) {
    for (float max_norm : {1.5f, 1e3f}) {
      SCOPED_TRACE(std::string(optimizer_name(kind)) + " max_norm " + std::to_string(max_norm));
      const OptimizerHyper h = hyper_of(kind);
      Params clipped(h, ramp(50, 0.5f, -0.02f), 0.05f);
      Params prescaled(h, clipped.master, 0.05f);
      clipped.desc.max_grad_norm = max_norm;
      clipped.control.grad_norm_sq = static_cast<float>(norm_sq);

      const float factor =
          std::fmin(1.0f, max_norm / (std::sqrt(clipped.control.grad_norm_sq) + 1e-6f));
      if (max_norm < 10.0f) {
        ASSERT_LT(factor, 0.5f);
      } else {
        ASSERT_EQ(factor, 1.0f);
      }
      clipped.grad = grad;
      for (std::size_t i = 0; i < grad.size(); ++i) prescaled.grad[i] = grad[i] * factor;
      for (int t = 0; t < 3; ++t) {
        clipped.step();
        prescaled.step();
      }
      // Exact: with no weight decay the kernel's g * factor is the same single rounding.
      EXPECT_EQ(clipped.master, prescaled.master);
      EXPECT_EQ(clipped.state, prescaled.state);
    }
  }
}

TEST(OptimizerStep, WorkingCopyIsRoundedMaster) {
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    SCOPED_TRACE(std::string(dtype_name(dtype)));
    OptimizerHyper h = hyper_of(Optimizer::AdamW);
    h.weight_decay = 1e-3f;
    Params p(h, ramp(101, -3.17f, 0.0613f), 0.003f);
    p.grad = ramp(101, 1.1f, -0.0219f);
    std::vector<float> w32(p.master.size(), -7.0f);
    std::vector<f16> w16(p.master.size(), f16{0});
    std::vector<bf16> wbf(p.master.size(), bf16{0});
    void* ptr = dtype == DType::F32   ? static_cast<void*>(w32.data())
                : dtype == DType::F16 ? static_cast<void*>(w16.data())
                                      : static_cast<void*>(wbf.data());
    p.desc.working = Buf{ptr, dtype};
    for (int t = 0; t < 2; ++t) {
      p.step();
      for (std::size_t i = 0; i < p.master.size(); ++i) {
        switch (dtype) {
          case DType::F32:
            EXPECT_EQ(w32[i], p.master[i]);
            break;
          case DType::F16:
            EXPECT_EQ(w16[i].bits, store<f16>(p.master[i]).bits);
            break;
          default:
            EXPECT_EQ(wbf[i].bits, store<bf16>(p.master[i]).bits);
            break;
        }
      }
    }
  }
}

// Large enough for the threaded loop: every element must get the element rule.
TEST(OptimizerStep, LargeRangeMatchesElementRule) {
  constexpr int kN = 100003;
  OptimizerHyper h = hyper_of(Optimizer::RMSProp);
  h.rmsprop.momentum = 0.9f;
  h.rmsprop.centered = true;
  h.weight_decay = 1e-4f;
  Params p(h, ramp(kN, -2.0f, 4.0f / kN), 0.01f);
  std::vector<bf16> working(p.master.size());
  p.desc.working = Buf{working.data(), DType::BF16};
  p.desc.max_grad_norm = 10.0f;
  p.control.grad_norm_sq = 400.0f;
  p.grad = ramp(kN, 1.5f, -3.0f / kN);
  std::vector<float> master = p.master;
  std::vector<float> s(3 * static_cast<std::size_t>(kN), 0.0f);
  for (int t = 0; t < 2; ++t) {
    const OptimizerStepScalars sc = optimizer_step_scalars(
        h, 0.01f, 10.0f / (20.0f + 1e-6f), p.control.optimizer_steps, p.control.optimizer_scalar);
    for (std::size_t i = 0; i < master.size(); ++i) {
      optimizer_update_element(h, h.kind, sc, master[i], p.grad[i], &s[3 * i]);
    }
    p.step();
  }
  // Not bitwise: the library may contract a * b + c into fused multiply-adds differently.
  for (std::size_t i = 0; i < master.size(); ++i) {
    ASSERT_NEAR(p.master[i], master[i], 1e-6 * std::fabs(master[i])) << i;
    for (std::size_t k = 0; k < 3; ++k) {
      ASSERT_NEAR(p.state[k][i], s[3 * i + k], 1e-6 * std::fabs(s[3 * i + k]) + 1e-12) << i;
    }
    ASSERT_EQ(working[i].bits, store<bf16>(p.master[i]).bits) << i;
  }
}

// Gradients kept in FP16/BF16 for the first parameters (the plan's mixed-precision layout) give
// the update their fp32 values give: widening is exact and the rule is the same.
TEST(OptimizerStep, LowPrecisionGradientRangeEqualsItsFp32Values) {
  for (DType t : {DType::F16, DType::BF16}) {
    SCOPED_TRACE(std::string(dtype_name(t)));
    constexpr int kN = 5000, kLow = 2052;  // a chunk boundary (2048) inside the low range
    const OptimizerHyper h = hyper_of(Optimizer::Adam);
    Params split(h, ramp(kN, -1.0f, 0.0004f), 1e-2f), all(h, ramp(kN, -1.0f, 0.0004f), 1e-2f);
    std::vector<std::uint16_t> low(kLow);
    for (int step = 0; step < 3; ++step) {
      std::vector<float> g = ramp(kN, 0.37f * static_cast<float>(step + 1), -0.00017f);
      for (int i = 0; i < kLow; ++i) {
        const auto k = static_cast<std::size_t>(i);
        low[k] = t == DType::F16 ? float_to_f16(g[k]) : float_to_bf16(g[k]);
        g[k] = t == DType::F16 ? f16_to_float(low[k]) : bf16_to_float(low[k]);
      }
      all.grad = g;
      all.step();
      split.grad.assign(g.begin() + kLow, g.end());
      const GradRanges ranges(CBuf(low.data(), t), kLow, split.grad.data());
      split.step(&ranges);
      EXPECT_EQ(split.master, all.master);
      EXPECT_EQ(split.state, all.state);
    }
  }
}

// The CPU gradient check over a low-precision range and an fp32 one: the squared norm of every
// stored value, and an inf or nan in either range found.
TEST(OptimizerStep, CheckGradientsOverBothRanges) {
  auto be = make_cpu_backend();
  constexpr int kLow = 70000, kRest = 9000;  // several check blocks, one shared by both ranges
  std::vector<std::uint16_t> low(kLow);
  std::vector<float> rest = ramp(kRest, -3.0f, 0.0007f);
  double ref = 0.0;
  for (int i = 0; i < kLow; ++i) {
    low[static_cast<std::size_t>(i)] = float_to_f16(0.001f * static_cast<float>(i % 997) - 0.5f);
    const double v = f16_to_float(low[static_cast<std::size_t>(i)]) / 4.0;
    ref += v * v;
  }
  for (float v : rest) ref += (v / 4.0) * (v / 4.0);
  for (int bad_at : {-1, 0, 1}) {
    SCOPED_TRACE(bad_at);
    std::vector<std::uint16_t> l = low;
    std::vector<float> r = rest;
    if (bad_at == 0) l[12345] = float_to_f16(INFINITY);
    if (bad_at == 1) r[8999] = NAN;
    StepControl c{};
    c.loss_scale = 4.0f;
    c.inv_scale = 0.25f;
    be->check_gradients(GradRanges(CBuf(l.data(), DType::F16), kLow, r.data()), kLow + kRest, &c);
    EXPECT_EQ(c.found_inf, bad_at >= 0 ? 1.0f : 0.0f);
    if (bad_at < 0) {
      EXPECT_NEAR(c.grad_norm_sq, ref, 2e-7 * ref);
    }
  }
}

TEST(OptimizerStep, StateSlots) {
  OptimizerHyper h = hyper_of(Optimizer::SGD);
  EXPECT_EQ(optimizer_state_slots(h), 0);
  h.sgd.momentum = 0.9f;
  EXPECT_EQ(optimizer_state_slots(h), 1);
  for (Optimizer kind :
       {Optimizer::Adam, Optimizer::AdamW, Optimizer::Nadam, Optimizer::AdaDelta}) {
    EXPECT_EQ(optimizer_state_slots(hyper_of(kind)), 2);
  }
  h = hyper_of(Optimizer::RMSProp);
  EXPECT_EQ(optimizer_state_slots(h), 1);
  h.rmsprop.centered = true;
  EXPECT_EQ(optimizer_state_slots(h), 2);
  h.rmsprop.momentum = 0.5f;
  EXPECT_EQ(optimizer_state_slots(h), 3);
  h = hyper_of(Optimizer::AdaGrad);
  h.adagrad.initial_accumulator = 0.25f;
  EXPECT_EQ(optimizer_state_slots(h), 1);
  EXPECT_EQ(optimizer_state_init(h, 0), 0.25f);
  EXPECT_EQ(optimizer_state_init(hyper_of(Optimizer::Adam), 1), 0.0f);
}

TEST(OptimizerStep, ScalarAdvancesOnlyForNadam) {
  EXPECT_EQ(next_optimizer_scalar(hyper_of(Optimizer::Adam), 1.0f, 3), 1.0f);
  const OptimizerHyper h = hyper_of(Optimizer::Nadam);
  const double mu1 = 0.9 * (1.0 - 0.5 * std::pow(0.96, 1 * 4e-3));
  const double mu2 = 0.9 * (1.0 - 0.5 * std::pow(0.96, 2 * 4e-3));
  const float after1 = next_optimizer_scalar(h, 1.0f, 0);
  EXPECT_NEAR(after1, mu1, 1e-6);
  EXPECT_NEAR(next_optimizer_scalar(h, after1, 1), mu1 * mu2, 1e-6);
}

TEST(OptimizerParse, RoundTripAndErrors) {
  for (Optimizer o : {Optimizer::SGD, Optimizer::Adam, Optimizer::AdamW, Optimizer::RMSProp,
                      Optimizer::AdaGrad, Optimizer::AdaDelta, Optimizer::Nadam}) {
    EXPECT_EQ(parse_optimizer(optimizer_name(o)), o);
  }
  EXPECT_EQ(parse_optimizer("AdamW"), Optimizer::AdamW);
  EXPECT_EQ(parse_optimizer("RMSPROP"), Optimizer::RMSProp);
  for (const char* bad : {"", "adamax", "adam ", "lbfgs"}) {
    try {
      parse_optimizer(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ConfigError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("'" + std::string(bad) + "'"), std::string::npos) << message;
      for (const char* name : {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "nadam"}) {
        EXPECT_NE(message.find(name), std::string::npos) << message;
      }
    }
  }
}

}  // namespace
}  // namespace mixtrain
