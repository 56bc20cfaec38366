// Single-launch step kernels of the CUDA backend: the gradient check, the loss and the optimizer
// pass with the finish each end with their last block finishing the reduction (a completion
// counter that must be back at zero for the next call and the next graph replay). Repeated calls
// and graph replays against the CPU backend, and the fused optimizer + finish against the two
// separate ops, bit for bit.
#include <algorithm>
#include <cmath>

#include "cuda_test_util.hpp"
#include "train/optimizer_math.hpp"

namespace mixtrain::cuda_test {
namespace {

using StepFusion = CudaVsCpu;

TEST_F(StepFusion, GradientCheckRepeatsAndReplays) {
  for (std::int64_t n : {5, 100003}) {  // one block; many blocks and a float4 tail
    SCOPED_TRACE("n " + std::to_string(n));
    Twin g(cpu(), gpu(), DType::F32, n);
    TwinControl control(cpu(), gpu());
    for (int replay = 0; replay < 2; ++replay) {  // eager calls, then a captured step replayed
      for (int call = 0; call < 4; ++call) {
        SCOPED_TRACE(std::string(replay ? "replay " : "call ") + std::to_string(call));
        std::vector<float> v = normal(n, 0, 100);
        if (call == 1)
          v[static_cast<std::size_t>(uniform_int(0, static_cast<int>(n) - 1))] = INFINITY;
        g.set(v);
        StepControl c = control.gpu_value();
        c.loss_scale = 128.0f;
        c.inv_scale = 1.0f / 128.0f;
        c.found_inf = 0.5f;  // stale values the pass overwrites
        c.grad_norm_sq = -1.0f;
        control.set(c);
        cpu().check_gradients(static_cast<float*>(g.cpu_ptr()), n, control.cpu());
        if (replay == 0) {
          gpu().check_gradients(static_cast<float*>(g.gpu_ptr()), n, control.gpu());
        } else {
          gpu().run_step("check " + std::to_string(n), [&] {
            gpu().check_gradients(static_cast<float*>(g.gpu_ptr()), n, control.gpu());
          });
        }
        const StepControl a = control.cpu_value(), b = control.gpu_value();
        EXPECT_EQ(a.found_inf, b.found_inf);
        if (a.found_inf != 0.0f) {
          EXPECT_TRUE(std::isinf(b.grad_norm_sq));
        } else {
          // 5 eps32 relative, derived in test_cuda_step_ops.cpp (UnscaleAndCheckCleanGradients).
          EXPECT_NEAR(b.grad_norm_sq, a.grad_norm_sq, 5.0 * kEps32 * a.grad_norm_sq);
        }
      }
    }
  }
}

TEST_F(StepFusion, LossRepeatsAndReplays) {
  for (std::int64_t rows : {3, 20000}) {  // one block; many blocks
    SCOPED_TRACE("rows " + std::to_string(rows));
    const std::int64_t cols = 10;
    Twin pred(cpu(), gpu(), DType::F16, rows * cols), grad(cpu(), gpu(), DType::F16, rows * cols);
    Twin labels(cpu(), gpu(), DType::I32, rows), loss(cpu(), gpu(), DType::F32, 1);
    TwinControl control(cpu(), gpu());
    for (int replay = 0; replay < 2; ++replay) {
      for (int call = 0; call < 3; ++call) {
        SCOPED_TRACE(std::string(replay ? "replay " : "call ") + std::to_string(call));
        pred.set(normal(rows * cols, 0, 2));
        std::vector<float> l(static_cast<std::size_t>(rows));
        for (float& x : l) x = static_cast<float>(uniform_int(0, static_cast<int>(cols) - 1));
        labels.set(l);
        loss.poison();
        LossDesc d;
        d.kind = LossKind::SparseCrossEntropy;
        d.rows = rows;
        d.cols = cols;
        LossDesc dc = d, dg = d;
        dc.pred = pred.cpu();
        dg.pred = pred.gpu();
        dc.labels = static_cast<const std::int32_t*>(labels.cpu_ptr());
        dg.labels = static_cast<const std::int32_t*>(labels.gpu_ptr());
        dc.loss = static_cast<float*>(loss.cpu_ptr());
        dg.loss = static_cast<float*>(loss.gpu_ptr());
        dc.dpred = grad.cpu();
        dg.dpred = grad.gpu();
        dc.control = control.cpu();
        dg.control = control.gpu();
        cpu().loss(dc);
        if (replay == 0) {
          gpu().loss(dg);
        } else {
          gpu().run_step("loss " + std::to_string(rows), [&] { gpu().loss(dg); });
        }
        // As LossTest: non-negative terms summed in double, rounded once; expf/logf of a few ulps
        // per term.
        const float a = loss.cpu_values()[0], b = loss.gpu_values()[0];
        EXPECT_NEAR(a, b, 16.0 * kEps32 * std::fabs(a) + 8.0 * kEps32 * 6.0);
      }
    }
  }
}

// The optimizer's arrays on the GPU, twice: one copy for the fused call, one for the two ops.
struct OptimizerState {
  OptimizerState(Backend& cpu, Backend& gpu, const OptimizerHyper& h, std::int64_t n, DType working)
      : slots(optimizer_state_slots(h)),
        master(cpu, gpu, DType::F32, n),
        grad(cpu, gpu, DType::F32, n),
        work(cpu, gpu, working, n),
        control(cpu, gpu),
        history(cpu, gpu, DType::F32, 4 * 8) {
    for (int k = 0; k < slots; ++k) {
      state.push_back(std::make_unique<Twin>(cpu, gpu, DType::F32, n));
      state.back()->set(
          std::vector<float>(static_cast<std::size_t>(n), optimizer_state_init(h, k)));
    }
    history.set(std::vector<float>(4 * 8, 0.0f));
    desc.hyper = h;
    desc.count = n;
    desc.master = static_cast<float*>(master.gpu_ptr());
    desc.grad = static_cast<const float*>(grad.gpu_ptr());
    for (int k = 0; k < slots; ++k) {
      desc.state[k] = static_cast<float*>(state[static_cast<std::size_t>(k)]->gpu_ptr());
    }
    if (working != DType::F32) desc.working = work.gpu();
    desc.control = control.gpu();
  }
  StepRecord* gpu_history() { return static_cast<StepRecord*>(history.gpu_ptr()); }
  std::vector<std::vector<float>> values() {
    std::vector<std::vector<float>> v{master.gpu_values(), work.gpu_values(), history.gpu_values()};
    for (auto& s : state) v.push_back(s->gpu_values());
    return v;
  }

  int slots;
  Twin master, grad, work;
  std::vector<std::unique_ptr<Twin>> state;
  TwinControl control;
  Twin history;
  OptimizerDesc desc;
};

bool same_control(const StepControl& a, const StepControl& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

TEST_F(StepFusion, OptimizerAndFinishInOneLaunchEqualsTheTwoOps) {
  ScalerParams p{};
  p.growth_factor = 2.0f;
  p.backoff_factor = 0.5f;
  p.min_scale = 1.0f;
  p.max_scale = 16777216.0f;
  p.growth_interval = 2;
  p.hysteresis = 1;
  p.dynamic = 1;
  p.history_size = 8;
  std::vector<OptimizerHyper> kinds(4);
  kinds[0].kind = Optimizer::Adam;
  kinds[1].kind = Optimizer::SGD;
  kinds[1].sgd.momentum = 0.9f;
  kinds[2].kind = Optimizer::Nadam;
  kinds[3].kind = Optimizer::RMSProp;
  kinds[3].rmsprop.centered = true;
  kinds[3].rmsprop.momentum = 0.5f;
  for (const OptimizerHyper& h : kinds) {
    // 4.2M parameters: more than 4096 blocks, the large-grid path (per-step values from
    // prepare_step_kernel, which also runs the finish); Adam only, to keep the test short.
    for (std::int64_t n : {0, 7, 100001, 4200000}) {
      if (n == 4200000 && h.kind != Optimizer::Adam) continue;
      for (bool graph : {false, true}) {
        SCOPED_TRACE(std::string(optimizer_name(h.kind)) + " n " + std::to_string(n) +
                     (graph ? " graph" : " eager"));
        OptimizerState fused(cpu(), gpu(), h, n, DType::F16), apart(cpu(), gpu(), h, n, DType::F16);
        const std::vector<float> p0 = normal(n, 0, 1);
        fused.master.set(p0);
        apart.master.set(p0);
        fused.work.poison();
        apart.work.poison();
        StepControl c{};
        c.loss_scale = 1024.0f;
        c.inv_scale = 1.0f / 1024.0f;
        c.hysteresis_left = 1;
        c.learning_rate = 1e-2f;
        c.optimizer_scalar = 1.0f;
        fused.control.set(c);
        apart.control.set(c);
        for (int step = 0; step < 4; ++step) {
          SCOPED_TRACE("step " + std::to_string(step));
          const std::vector<float> g = normal(n, 0, 1000);
          fused.grad.set(g);
          apart.grad.set(g);
          for (OptimizerState* s : {&fused, &apart}) {  // the earlier kernels' results
            StepControl now = s->control.gpu_value();
            now.found_inf = step == 2 ? 1.0f : 0.0f;  // one skipped step
            now.grad_norm_sq = step == 2 ? INFINITY : 4.0f;
            now.loss = 1.5f;
            s->control.set(now);
          }
          auto run_fused = [&] {
            gpu().optimizer_step_and_finish(fused.desc, fused.control.gpu(), p,
                                            fused.gpu_history());
          };
          if (graph) {
            gpu().run_step("fused " + std::to_string(n) + std::string(optimizer_name(h.kind)),
                           run_fused);
          } else {
            run_fused();
          }
          gpu().optimizer_step(apart.desc);
          gpu().finish_step(apart.control.gpu(), p, h, apart.gpu_history());
          EXPECT_TRUE(same_control(fused.control.gpu_value(), apart.control.gpu_value()));
          const auto a = fused.values(), b = apart.values();
          for (std::size_t k = 0; k < a.size(); ++k) {
            EXPECT_TRUE(all_equal(a[k], b[k])) << "array " << k;
          }
        }
        EXPECT_EQ(fused.control.gpu_value().skipped_steps, 1);
        EXPECT_EQ(fused.control.gpu_value().optimizer_steps, 3);
      }
    }
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
