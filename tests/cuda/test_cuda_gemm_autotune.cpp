// GEMM autotuning of the CUDA backend (MIXTRAIN_GEMM_AUTOTUNE): with it on and off the products
// equal the CPU's within the tolerances of test_cuda_gemm_loss.cpp, a GEMM planned inside
// run_step is tuned in the planning pass and replays under graph capture, and a trainer trains
// with it on.
#include <cmath>

#include "cuda_test_util.hpp"
#include "cuda_trainer_util.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain::cuda_test {
namespace {

struct Case {
  bool ta = false, tb = true;
  std::int64_t m = 256, n = 512, k = 768;
  DType ab = DType::F16, c = DType::F16;
  bool bias = false;
  bool tf32 = false;

  std::string str() const {
    return "ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " m=" + std::to_string(m) +
           " n=" + std::to_string(n) + " k=" + std::to_string(k) +
           " ab=" + std::string(dtype_name(ab)) + " c=" + std::string(dtype_name(c)) +
           (bias ? " bias" : "") + (tf32 ? " tf32" : "");
  }
};

// Shapes with several cuBLASLt candidates (tensor-core sizes), the Dense forward with its bias,
// the weight gradient with an fp32 output, and a small odd shape.
std::vector<Case> cases() {
  std::vector<Case> out;
  for (DType t : float_dtypes()) {
    Case g;
    g.ab = g.c = t;
    out.push_back(g);  // x W^T
    g.bias = true;
    out.push_back(g);  // + b, fused epilogue
    g.bias = false;
    g.tb = false;
    g.m = 37;
    g.n = 29;
    g.k = 53;
    out.push_back(g);
    if (t == DType::F32) {
      Case f;
      f.ab = f.c = t;
      f.tf32 = true;
      out.push_back(f);
    } else {
      Case w;  // dW = dy^T x
      w.ab = t;
      w.c = DType::F32;
      w.ta = true;
      w.tb = false;
      w.m = 512;
      w.n = 256;
      w.k = 256;
      out.push_back(w);
    }
  }
  return out;
}

class GemmAutotune : public CudaVsCpu {
 protected:
  // Runs g on the CPU and on `gpu` (inside run_step when `step`, twice: the planning pass and
  // capture, then a replay) and compares within the bound of test_cuda_gemm_loss.cpp (alpha 1,
  // beta 0, bias of C's type).
  void run(Backend& gpu, const Case& g, bool step = false) {
    SCOPED_TRACE(g.str());
    const std::int64_t a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
    const std::int64_t b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
    Twin a(cpu(), gpu, g.ab, a_rows * a_cols), b(cpu(), gpu, g.ab, b_rows * b_cols),
        c(cpu(), gpu, g.c, g.m * g.n), bias(cpu(), gpu, g.c, g.n);
    const std::vector<float> av = a.set(uniform(a_rows * a_cols, -1, 1));
    const std::vector<float> bv = b.set(uniform(b_rows * b_cols, -1, 1));
    const std::vector<float> biasv = bias.set(uniform(g.n, -1, 1));
    c.poison();
    GemmDesc d;
    d.trans_a = g.ta;
    d.trans_b = g.tb;
    d.m = g.m;
    d.n = g.n;
    d.k = g.k;
    d.lda = a_cols;
    d.ldb = b_cols;
    d.ldc = g.n;
    d.allow_tf32 = g.tf32;
    GemmDesc dc = d, dg = d;
    dc.a = a.cpu();
    dc.b = b.cpu();
    dc.c = c.cpu();
    dg.a = a.gpu();
    dg.b = b.gpu();
    dg.c = c.gpu();
    if (g.bias) {
      dc.bias = bias.cpu();
      dg.bias = bias.gpu();
    }
    cpu().gemm(dc);
    if (step) {
      gpu.run_step("autotune " + g.str(), [&] { gpu.gemm(dg); });
      gpu.run_step("autotune " + g.str(), [&] { gpu.gemm(dg); });  // a replay
    } else {
      gpu.gemm(dg);
    }
    const std::vector<float> ref = c.cpu_values(), got = c.gpu_values();
    // As in test_cuda_gemm_loss.cpp: both sums within 2 k eps32 sum|a b| of each other (plus
    // 2^-9 per product with TF32), two roundings on the bias, one output ulp, and with a fused
    // bias and an fp16/bf16 output the product rounded to C's type before the bias is added.
    // These shapes are larger, where cuBLASLt may split K and add the partial sums in an
    // fp16/bf16 output type (test_cuda_fusion.cpp's bound, seen on the H200): eps_c sum|a b|
    // more for such outputs. Tuning only considers such a candidate when it is the heuristic's
    // own pick, so on and off share this bound.
    const double per_term = 2.0 * static_cast<double>(g.k) * kEps32 + (g.tf32 ? 1.0 / 512 : 0.0);
    EXPECT_TRUE(all_close(ref, got, [&](std::size_t idx) {
      const auto i = static_cast<std::int64_t>(idx);
      const std::int64_t row = i / g.n, col = i % g.n;
      double sum_abs = 0.0;
      for (std::int64_t p = 0; p < g.k; ++p) {
        const std::int64_t ai = g.ta ? p * a_cols + row : row * a_cols + p;
        const std::int64_t bi = g.tb ? col * b_cols + p : p * b_cols + col;
        sum_abs += std::fabs(static_cast<double>(av[static_cast<std::size_t>(ai)]) *
                             bv[static_cast<std::size_t>(bi)]);
      }
      const double seed = g.bias ? std::fabs(biasv[static_cast<std::size_t>(col)]) : 0.0;
      const double fp32 = per_term * sum_abs + 2.0 * kEps32 * seed;
      const bool fused_low = g.bias && g.c != DType::F32;
      const double fused =
          fused_low ? dtype_epsilon(g.c) * (std::fabs(ref[idx]) + 2.0 * seed) : 0.0;
      const double split_k = g.c != DType::F32 ? dtype_epsilon(g.c) * sum_abs : 0.0;
      return dtype_epsilon(g.c) * std::fabs(ref[idx]) + fp32 + fused + split_k +
             dtype_min_subnormal(g.c);
    }));
  }
};

TEST_F(GemmAutotune, MatchesCpuWithAutotuneOnAndOff) {
  for (const char* setting : {"1", "0"}) {
    SCOPED_TRACE(std::string("MIXTRAIN_GEMM_AUTOTUNE=") + setting);
    ScopedEnv env("MIXTRAIN_GEMM_AUTOTUNE", setting);
    const std::unique_ptr<Backend> be = make_cuda_backend();
    for (const Case& g : cases()) run(*be, g);
  }
}

// The plan is made (and tuned) in run_step's planning pass, outside the capture; the captured
// graph then replays the chosen algorithm.
TEST_F(GemmAutotune, PlannedInsideRunStepAndReplayedFromTheGraph) {
  ScopedEnv env("MIXTRAIN_GEMM_AUTOTUNE", "1");
  const std::unique_ptr<Backend> be = make_cuda_backend();
  for (const Case& g : cases()) run(*be, g, /*step=*/true);
}

// ---- a trainer with autotuning on --------------------------------------------------------------

constexpr std::int64_t kBatch = 64, kFeatures = 32, kClasses = 10;

Model tune_model() {
  return ModelBuilder({kBatch, kFeatures})
      .dense(256)
      .relu()
      .dense(256)
      .gelu(true)
      .dense(kClasses)
      .compile();
}

TrainerConfig config(Device d, Precision p) {
  return trainer_config(d, p, 7);
}

TEST_F(GemmAutotune, TrainerStepsUnderGraphCaptureMatchCpu) {
  ScopedEnv env("MIXTRAIN_GEMM_AUTOTUNE", "1");
  if (!graphs_enabled()) GTEST_SKIP() << "MIXTRAIN_CUDA_GRAPHS=0: no capture to test";
  constexpr int kSteps = 10;
  std::vector<std::vector<float>> xs;
  std::vector<std::vector<std::int32_t>> ys;
  for (int i = 0; i < 3; ++i) {
    xs.push_back(normal(kBatch * kFeatures, 0.0f, 1.0f));
    std::vector<std::int32_t> y(static_cast<std::size_t>(kBatch));
    for (auto& v : y) v = uniform_int(0, static_cast<int>(kClasses) - 1);
    ys.push_back(std::move(y));
  }
  const Model m = tune_model();
  const auto train = [&](const TrainerConfig& c) {
    Trainer t(m, c);
    for (int s = 0; s < kSteps; ++s) {
      const std::size_t i = static_cast<std::size_t>(s) % xs.size();
      t.train_batch(xs[i].data(), {kBatch, kFeatures}, ys[i].data(), {kBatch});
    }
    return t.history();
  };
  // Tolerances of test_cuda_trainer.cpp's SameLossesAsCpuInEveryPrecision.
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const std::vector<StepStats> ref = train(config(Device::CPU, p));
    const std::vector<StepStats> got = train(config(Device::CUDA, p));
    // A second trainer in the process reuses the recorded choices: the same bits.
    const std::vector<StepStats> again = train(config(Device::CUDA, p));
    ASSERT_EQ(ref.size(), got.size());
    ASSERT_EQ(got.size(), again.size());
    const double tol = p == Precision::FP32 ? 1e-3 : 2e-2;
    for (std::size_t s = 0; s < ref.size(); ++s) {
      EXPECT_TRUE(std::isfinite(got[s].loss)) << "step " << s;
      EXPECT_NEAR(got[s].loss, ref[s].loss, tol * std::fabs(ref[s].loss)) << "step " << s;
      EXPECT_EQ(got[s].skipped, ref[s].skipped) << "step " << s;
      EXPECT_EQ(got[s].loss, again[s].loss) << "step " << s;
    }
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
