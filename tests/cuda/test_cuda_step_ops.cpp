// The mixed-precision step ops of the CUDA backend against the CPU backend: unscale + finite check
// + norm, every optimizer, and the device-side scaler update.
#include <algorithm>
#include <cmath>

#include "cuda_test_util.hpp"
#include "train/optimizer_math.hpp"

namespace mixtrain::cuda_test {
namespace {

using StepOpsTest = CudaVsCpu;

// Runs check_gradients on the same gradients on both backends.
struct Unscaled {
  std::vector<float> cpu_grad, gpu_grad;
  StepControl cpu_ctl, gpu_ctl;
};

Unscaled unscale_both(Backend& cpu, Backend& gpu, const std::vector<float>& grads,
                      std::int64_t offset, float scale) {
  const auto n = static_cast<std::int64_t>(grads.size());
  Twin g(cpu, gpu, DType::F32, n, offset);
  g.set(grads);
  TwinControl control(cpu, gpu);
  StepControl c{};
  c.loss_scale = scale;
  c.inv_scale = 1.0f / scale;
  c.found_inf = 0.5f;  // stale values the pass must overwrite
  c.grad_norm_sq = -1.0f;
  control.set(c);
  cpu.check_gradients(static_cast<float*>(g.cpu_ptr()), n, control.cpu());
  gpu.check_gradients(static_cast<float*>(g.gpu_ptr()), n, control.gpu());
  return {g.cpu_values(), g.gpu_values(), control.cpu_value(), control.gpu_value()};
}

TEST_F(StepOpsTest, UnscaleAndCheckCleanGradients) {
  for (std::int64_t offset : {0, 1}) {  // float4 path and scalar path
    for (std::int64_t n : {1, 1000, 100003}) {
      SCOPED_TRACE("n " + std::to_string(n) + " offset " + std::to_string(offset));
      const Unscaled u = unscale_both(cpu(), gpu(), normal(n, 0, 1000), offset, 1024.0f);
      // Multiplying by a power of two is exact.
      EXPECT_TRUE(all_equal(u.cpu_grad, u.gpu_grad));
      EXPECT_EQ(u.gpu_ctl.found_inf, 0.0f);
      EXPECT_EQ(u.cpu_ctl.found_inf, 0.0f);
      // The CPU sums the squares in double and rounds once to fp32 (eps32 / 2 relative). The GPU
      // first adds the squares of each pack (at most 8 positive terms) in fp32, each partial
      // within 8 * eps32 / 2 of its exact value, then sums those in double and rounds once:
      // 5 eps32 relative covers both.
      EXPECT_NEAR(u.gpu_ctl.grad_norm_sq, u.cpu_ctl.grad_norm_sq,
                  5.0 * kEps32 * u.cpu_ctl.grad_norm_sq);
    }
  }
}

// Low-precision gradients first, then fp32 ones (the plan's layout in mixed precision).
TEST_F(StepOpsTest, UnscaleAndCheckLowPrecisionRange) {
  for (DType t : {DType::F16, DType::BF16}) {
    for (std::int64_t low : {0, 4, 1000, 65536}) {
      for (int bad_at : {-1, 0, 1}) {  // no bad value, one in the low range, one in the fp32 one
        SCOPED_TRACE(std::string(dtype_name(t)) + " low " + std::to_string(low) + " bad " +
                     std::to_string(bad_at));
        if (bad_at == 0 && low == 0) continue;
        const std::int64_t rest = 30001;
        Twin g_low(cpu(), gpu(), t, low), g_f32(cpu(), gpu(), DType::F32, rest);
        std::vector<float> lv = normal(low, 0, 100), fv = normal(rest, 0, 100);
        if (bad_at == 0) lv[static_cast<std::size_t>(uniform_int(0, low - 1))] = INFINITY;
        if (bad_at == 1) fv[static_cast<std::size_t>(uniform_int(0, rest - 1))] = NAN;
        lv = g_low.set(lv);
        fv = g_f32.set(fv);
        TwinControl control(cpu(), gpu());
        StepControl c{};
        c.loss_scale = 256.0f;
        c.inv_scale = 1.0f / 256.0f;
        c.found_inf = 0.5f;
        control.set(c);
        cpu().check_gradients(
            GradRanges(g_low.cpu(), low, static_cast<const float*>(g_f32.cpu_ptr())), low + rest,
            control.cpu());
        gpu().check_gradients(
            GradRanges(g_low.gpu(), low, static_cast<const float*>(g_f32.gpu_ptr())), low + rest,
            control.gpu());
        const StepControl rc = control.cpu_value(), gc = control.gpu_value();
        const float expect_inf = bad_at >= 0 ? 1.0f : 0.0f;
        EXPECT_EQ(rc.found_inf, expect_inf);
        EXPECT_EQ(gc.found_inf, expect_inf);
        if (bad_at < 0) {
          double ref = 0.0;  // the stored (rounded) values, unscaled exactly
          for (float v : lv) ref += static_cast<double>(v / 256.0f) * (v / 256.0f);
          for (float v : fv) ref += static_cast<double>(v / 256.0f) * (v / 256.0f);
          // As UnscaleAndCheckCleanGradients: one fp32 rounding on the CPU, packs of up to 8
          // squares summed in fp32 on the GPU.
          EXPECT_NEAR(rc.grad_norm_sq, ref, 2.0 * kEps32 * ref);
          EXPECT_NEAR(gc.grad_norm_sq, ref, 5.0 * kEps32 * ref);
        }
      }
    }
  }
}

TEST_F(StepOpsTest, UnscaleAndCheckFindsInfAndNan) {
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    std::vector<float> g = normal(50001, 0, 1);
    g[static_cast<std::size_t>(uniform_int(0, 50000))] = bad;
    const Unscaled u = unscale_both(cpu(), gpu(), g, 0, 65536.0f);
    EXPECT_EQ(u.cpu_ctl.found_inf, 1.0f);
    EXPECT_EQ(u.gpu_ctl.found_inf, 1.0f);
    EXPECT_TRUE(std::isinf(u.gpu_ctl.grad_norm_sq));
    EXPECT_TRUE(all_equal(u.cpu_grad, u.gpu_grad));
  }
  // A finite value that overflows only after... unscaling never grows values at scale >= 1; at a
  // scale below 1 it can: 3e38 * 2 is inf.
  std::vector<float> g = normal(100, 0, 1);
  g[7] = 3e38f;
  const Unscaled u = unscale_both(cpu(), gpu(), g, 0, 0.5f);
  EXPECT_EQ(u.cpu_ctl.found_inf, 1.0f);
  EXPECT_EQ(u.gpu_ctl.found_inf, 1.0f);
}

TEST_F(StepOpsTest, UnscaleAndCheckEmpty) {
  TwinControl control(cpu(), gpu());
  StepControl c = control.gpu_value();
  c.found_inf = 1.0f;
  c.grad_norm_sq = 5.0f;
  control.set(c);
  DeviceMemory g(gpu(), 16);
  gpu().check_gradients(static_cast<float*>(g.get()), 0, control.gpu());
  cpu().check_gradients(nullptr, 0, control.cpu());
  EXPECT_EQ(control.gpu_value().found_inf, control.cpu_value().found_inf);
  EXPECT_EQ(control.gpu_value().grad_norm_sq, control.cpu_value().grad_norm_sq);
}

struct OptCase {
  const char* name;
  OptimizerHyper hyper;
};

std::vector<OptCase> optimizer_cases() {
  std::vector<OptCase> cases;
  auto add = [&](const char* name, Optimizer kind, auto&& tweak) {
    OptimizerHyper h;
    h.kind = kind;
    tweak(h);
    cases.push_back({name, h});
  };
  add("sgd", Optimizer::SGD, [](OptimizerHyper&) {});
  add("sgd_momentum_nesterov", Optimizer::SGD, [](OptimizerHyper& h) {
    h.sgd.momentum = 0.9f;
    h.sgd.nesterov = true;
  });
  add("sgd_momentum_dampening", Optimizer::SGD, [](OptimizerHyper& h) {
    h.sgd.momentum = 0.8f;
    h.sgd.dampening = 0.1f;
  });
  add("adam", Optimizer::Adam, [](OptimizerHyper&) {});
  add("adam_l2", Optimizer::Adam, [](OptimizerHyper& h) { h.weight_decay = 0.01f; });
  add("adamw", Optimizer::AdamW, [](OptimizerHyper&) {});
  add("rmsprop", Optimizer::RMSProp, [](OptimizerHyper&) {});
  add("rmsprop_centered_momentum", Optimizer::RMSProp, [](OptimizerHyper& h) {
    h.rmsprop.centered = true;
    h.rmsprop.momentum = 0.9f;
  });
  add("adagrad", Optimizer::AdaGrad,
      [](OptimizerHyper& h) { h.adagrad.initial_accumulator = 0.1f; });
  add("adadelta", Optimizer::AdaDelta, [](OptimizerHyper&) {});
  add("nadam", Optimizer::Nadam, [](OptimizerHyper&) {});
  return cases;
}

TEST_F(StepOpsTest, OptimizerStepMatchesCpuForEveryOptimizer) {
  const std::vector<OptCase> cases = optimizer_cases();
  for (const OptCase& oc : cases) {
    for (DType working : {DType::F32, DType::F16, DType::BF16}) {  // F32: no working copy
      for (float clip : {0.0f, 0.5f}) {
        SCOPED_TRACE(std::string(oc.name) + " working " + std::string(dtype_name(working)) +
                     " clip " + std::to_string(clip));
        // One large case (4.2M: the large-grid path, prepare_step_kernel and the pass's kernel
        // with its register budget) for every optimizer.
        const bool large = working == DType::F16 && clip > 0;
        const std::int64_t n = large ? 4200000 : 1029 + uniform_int(0, 40);
        // With a working copy, the first `low` gradients are in its dtype (the plan's layout:
        // weight matrices first), the rest fp32.
        const std::int64_t low = working != DType::F32 ? 4 * uniform_int(100, 200) : 0;
        const int slots = optimizer_state_slots(oc.hyper);
        Twin master(cpu(), gpu(), DType::F32, n), grad(cpu(), gpu(), DType::F32, n - low);
        Twin grad_low(cpu(), gpu(), working, low);
        Twin work(cpu(), gpu(), working, n);
        std::vector<std::unique_ptr<Twin>> state;
        for (int k = 0; k < slots; ++k) {
          state.push_back(std::make_unique<Twin>(cpu(), gpu(), DType::F32, n));
          state.back()->set(
              std::vector<float>(static_cast<std::size_t>(n), optimizer_state_init(oc.hyper, k)));
        }
        master.set(normal(n, 0, 1));
        work.poison();
        TwinControl control(cpu(), gpu());
        StepControl c{};
        c.loss_scale = c.inv_scale = 1.0f;
        c.learning_rate = 1e-2f;
        c.optimizer_scalar = 1.0f;

        OptimizerDesc dc, dg;
        dc.hyper = dg.hyper = oc.hyper;
        dc.count = dg.count = n;
        dc.max_grad_norm = dg.max_grad_norm = clip;
        dc.master = static_cast<float*>(master.cpu_ptr());
        dg.master = static_cast<float*>(master.gpu_ptr());
        dc.grad = GradRanges(grad_low.cpu(), low, static_cast<const float*>(grad.cpu_ptr()));
        dg.grad = GradRanges(grad_low.gpu(), low, static_cast<const float*>(grad.gpu_ptr()));
        for (int k = 0; k < slots; ++k) {
          dc.state[k] = static_cast<float*>(state[static_cast<std::size_t>(k)]->cpu_ptr());
          dg.state[k] = static_cast<float*>(state[static_cast<std::size_t>(k)]->gpu_ptr());
        }
        if (working != DType::F32) {
          dc.working = work.cpu();
          dg.working = work.gpu();
        }
        dc.control = control.cpu();
        dg.control = control.gpu();

        std::vector<double> moved(static_cast<std::size_t>(n), 0.0);  // sum of |updates|
        for (int step = 0; step < 3; ++step) {
          SCOPED_TRACE("step " + std::to_string(step));
          const std::vector<float> before = master.cpu_values();
          std::vector<float> g = grad_low.set(normal(low, 0, 1));
          const std::vector<float> rest = grad.set(normal(n - low, 0, 1));
          g.insert(g.end(), rest.begin(), rest.end());
          double norm_sq = 0.0;
          for (float v : g) norm_sq += static_cast<double>(v) * v;
          c.grad_norm_sq = static_cast<float>(norm_sq);
          control.set(c);
          cpu().optimizer_step(dc);
          gpu().optimizer_step(dg);
          // Each rule is the same fp32 arithmetic; the per-step scalars (bias corrections, the
          // Nadam schedule) go through expm1f/log1pf/powf, a few ulps apart on the GPU, and
          // contractions into FMAs differ: each update differs by <= 64 eps32 of its size, and
          // each stored value by one more rounding, eps32 of |p| + the updates so far (the
          // differences of earlier steps carry over). That is well inside the 1e-6 relative of
          // the brief for O(1) weights.
          const std::vector<float> ref = master.cpu_values(), got = master.gpu_values();
          for (std::size_t i = 0; i < moved.size(); ++i) moved[i] += std::fabs(ref[i] - before[i]);
          EXPECT_TRUE(all_close(ref, got, [&](std::size_t i) {
            return (step + 2) * kEps32 * (std::fabs(ref[i]) + moved[i]) + 64.0 * kEps32 * moved[i];
          }));
          for (int k = 0; k < slots; ++k) {
            SCOPED_TRACE("state slot " + std::to_string(k));
            const std::vector<float> sr = state[static_cast<std::size_t>(k)]->cpu_values();
            const std::vector<float> sg = state[static_cast<std::size_t>(k)]->gpu_values();
            // States are running combinations of terms no larger than the slot's largest value
            // (moments of O(|g|), RMSProp's g / (sqrt(v) + eps)); a combination may cancel, so
            // the bound is 64 eps32 per step of that largest magnitude.
            double max_abs = 0.0;
            for (float v : sr) max_abs = std::max(max_abs, static_cast<double>(std::fabs(v)));
            EXPECT_TRUE(all_close(sr, sg, [&](std::size_t i) {
              return 64.0 * (step + 1) * kEps32 * (std::fabs(sr[i]) + max_abs) + 1e-30;
            }));
          }
          if (working != DType::F32) {
            // The working copy is the stored master rounded once: exactly so on each side, and
            // the sides within one working ulp of each other.
            const std::vector<float> wr = work.cpu_values(), wg = work.gpu_values();
            for (std::size_t i = 0; i < wg.size(); ++i) {
              ASSERT_EQ(wg[i], round_to_dtype(got[i], working)) << "element " << i;
            }
            EXPECT_TRUE(all_close(wr, wg, [&](std::size_t i) {
              return dtype_epsilon(working) * std::fabs(wr[i]) + dtype_min_subnormal(working);
            }));
          }
          // What finish_step does after an applied step.
          c.optimizer_scalar =
              next_optimizer_scalar(oc.hyper, c.optimizer_scalar, c.optimizer_steps);
          c.optimizer_steps += 1;
        }
      }
    }
  }
}

TEST_F(StepOpsTest, OptimizerSkipsWhenFoundInf) {
  OptimizerHyper h;
  h.kind = Optimizer::Adam;
  const std::int64_t n = 777;
  Twin master(cpu(), gpu(), DType::F32, n), grad(cpu(), gpu(), DType::F32, n),
      m(cpu(), gpu(), DType::F32, n), v(cpu(), gpu(), DType::F32, n),
      work(cpu(), gpu(), DType::F16, n);
  const std::vector<float> p0 = master.set(normal(n, 0, 1));
  grad.set(normal(n, 0, 1));
  m.set(std::vector<float>(static_cast<std::size_t>(n), 0.0f));
  v.set(std::vector<float>(static_cast<std::size_t>(n), 0.0f));
  work.poison();
  TwinControl control(cpu(), gpu());
  StepControl c = control.gpu_value();
  c.found_inf = 1.0f;
  control.set(c);
  OptimizerDesc d;
  d.hyper = h;
  d.count = n;
  d.master = static_cast<float*>(master.gpu_ptr());
  d.grad = static_cast<const float*>(grad.gpu_ptr());
  d.state[0] = static_cast<float*>(m.gpu_ptr());
  d.state[1] = static_cast<float*>(v.gpu_ptr());
  d.working = work.gpu();
  d.control = control.gpu();
  gpu().optimizer_step(d);
  EXPECT_EQ(master.gpu_values(), p0);
  const std::vector<float> w = work.gpu_values();
  EXPECT_TRUE(std::all_of(w.begin(), w.end(), [](float x) { return std::isnan(x); }));
}

TEST_F(StepOpsTest, OptimizerMissingStateThrows) {
  OptimizerHyper h;
  h.kind = Optimizer::Adam;
  TwinControl control(cpu(), gpu());
  Twin master(cpu(), gpu(), DType::F32, 4);
  OptimizerDesc d;
  d.hyper = h;
  d.count = 4;
  d.master = static_cast<float*>(master.gpu_ptr());
  d.grad = static_cast<const float*>(master.gpu_ptr());
  d.control = control.gpu();
  EXPECT_THROW(gpu().optimizer_step(d), Error);
}

TEST_F(StepOpsTest, FinishStepSameControlBlockAsCpu) {
  for (Optimizer kind : {Optimizer::Adam, Optimizer::Nadam}) {
    SCOPED_TRACE(std::string(optimizer_name(kind)));
    OptimizerHyper h;
    h.kind = kind;
    ScalerParams p{};
    p.growth_factor = 2.0f;
    p.backoff_factor = 0.5f;
    p.min_scale = 1.0f;
    p.max_scale = 16777216.0f;
    p.growth_interval = 3;
    p.hysteresis = 2;
    p.dynamic = 1;
    p.history_size = 8;
    TwinControl control(cpu(), gpu());
    StepControl c{};
    c.loss_scale = 1048576.0f;
    c.inv_scale = 1.0f / c.loss_scale;
    c.hysteresis_left = p.hysteresis;
    c.optimizer_scalar = 1.0f;
    c.learning_rate = 1e-3f;
    control.set(c);
    Twin history(cpu(), gpu(), DType::F32, 4 * p.history_size);
    history.set(std::vector<float>(static_cast<std::size_t>(4 * p.history_size), 0.0f));
    // A scripted sequence: overflows (with hysteresis), clean runs that grow the scale, a
    // non-finite loss, more overflows than the history holds.
    const int script[] = {1, 1, 0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0, 0, 2, 0, 1, 1, 1, 1, 0, 0, 0, 0};
    for (int s : script) {
      // Values the step's earlier kernels would have written, on both sides.
      StepControl now = control.gpu_value();
      now.found_inf = s == 1 ? 1.0f : 0.0f;
      now.grad_norm_sq = s == 1 ? INFINITY : 2.25f;
      now.loss = s == 2 ? NAN : 0.5f + static_cast<float>(now.iteration);
      control.set(now);
      cpu().finish_step(control.cpu(), p, h, static_cast<StepRecord*>(history.cpu_ptr()));
      gpu().finish_step(control.gpu(), p, h, static_cast<StepRecord*>(history.gpu_ptr()));
      const StepControl a = control.cpu_value(), b = control.gpu_value();
      SCOPED_TRACE("iteration " + std::to_string(a.iteration));
      EXPECT_EQ(a.loss_scale, b.loss_scale);
      EXPECT_EQ(a.inv_scale, b.inv_scale);
      EXPECT_EQ(a.growth_tracker, b.growth_tracker);
      EXPECT_EQ(a.hysteresis_left, b.hysteresis_left);
      EXPECT_EQ(a.optimizer_steps, b.optimizer_steps);
      EXPECT_EQ(a.skipped_steps, b.skipped_steps);
      EXPECT_EQ(a.iteration, b.iteration);
      EXPECT_EQ(a.scale_at_floor, b.scale_at_floor);
      EXPECT_EQ(a.nonfinite_loss, b.nonfinite_loss);
      // Adam keeps 1 exactly; Nadam multiplies mu_t from powf, a few ulps apart per step.
      EXPECT_NEAR(a.optimizer_scalar, b.optimizer_scalar, 8.0 * kEps32 * a.iteration);
      // The history records: copies, a correctly rounded sqrtf, flags: exact.
      EXPECT_TRUE(all_equal(history.cpu_values(), history.gpu_values()));
    }
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
