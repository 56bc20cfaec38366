// Fused GEMM epilogues of the CUDA backend (activation + bias, the pre-activation aux output, the
// bias gradient) against the CPU backend, and fused dense layers end to end.
//
// Tolerances, derived like test_cuda_gemm_loss.cpp's:
//  - z = alpha op(A) op(B) + bias in fp32: both sides add exact fp32 products in different orders,
//    each within k eps32 sum|a b| of the exact sum, so within 2 k eps32 sum|a b| of each other,
//    plus two roundings of the bias term (2 eps32 |bias|);
//  - cuBLASLt's bias epilogue with an fp16/bf16 output rounds the product to C's type before the
//    bias is added (seen on the H200): eps_c (|product| + 2 |bias|) more; the same is assumed
//    for its activation epilogues;
//  - aux = z rounded to C's type: one ulp of C's type (eps_c |aux|) on top;
//  - C = act(z) rounded: ReLU is 1-Lipschitz and exact; tanh-GELU has slope at most 1.13, and its
//    own evaluation error: tanhf within 2 ulp (16 eps32 (|z| + 1), as the element-wise tests
//    allow), and for fp16/bf16 outputs, where cuBLASLt's GELU epilogue may use a hardware tanh
//    approximation (relative error below 2^-11), up to 2^-10 * |z| / 2 more;
//  - bias gradients: k values summed in fp32 in different orders: 2 k eps32 sum|x|, plus one
//    rounding.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>

#include "cuda_test_util.hpp"
#include "graph/graph.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain::cuda_test {
namespace {

struct ForwardCase {
  DType t = DType::F32;
  Activation act = Activation::ReLU;
  bool aux = false;
  bool bias = true;
  std::int64_t m = 64, n = 128, k = 96;
  std::int64_t pad = 0;  // ldc = n + pad

  std::string str() const {
    return std::string(dtype_name(t)) + " act=" + std::to_string(static_cast<int>(act)) +
           (aux ? " aux" : "") + (bias ? " bias" : "") + " m=" + std::to_string(m) +
           " n=" + std::to_string(n) + " k=" + std::to_string(k) + " pad=" + std::to_string(pad);
  }
};

class FusedGemm : public CudaVsCpu {
 protected:
  // y = act(x W^T + b), the dense forward, on `g` (the fixture's GPU backend or another).
  void forward(Backend& g, const ForwardCase& e) {
    SCOPED_TRACE(e.str());
    const std::int64_t ldc = e.n + e.pad;
    Twin a(cpu(), g, e.t, e.m * e.k), b(cpu(), g, e.t, e.n * e.k), bias(cpu(), g, e.t, e.n);
    Twin c(cpu(), g, e.t, e.m * ldc), aux(cpu(), g, e.t, e.m * ldc);
    const std::vector<float> av = a.set(uniform(e.m * e.k, -1, 1));
    const std::vector<float> bv = b.set(uniform(e.n * e.k, -1, 1));
    const std::vector<float> biasv = bias.set(uniform(e.n, -1, 1));
    c.poison();
    aux.poison();
    GemmDesc d;
    d.trans_b = true;
    d.m = e.m;
    d.n = e.n;
    d.k = e.k;
    d.lda = e.k;
    d.ldb = e.k;
    d.ldc = ldc;
    d.epilogue = e.act;
    GemmDesc dc = d, dg = d;
    dc.a = a.cpu();
    dc.b = b.cpu();
    dc.c = c.cpu();
    dg.a = a.gpu();
    dg.b = b.gpu();
    dg.c = c.gpu();
    if (e.bias) {
      dc.bias = bias.cpu();
      dg.bias = bias.gpu();
    }
    if (e.aux) {
      dc.aux = aux.cpu();
      dg.aux = aux.gpu();
    }
    cpu().gemm(dc);
    g.gemm(dg);
    const std::vector<float> yref = c.cpu_values(), ygot = c.gpu_values();
    const std::vector<float> zref = aux.cpu_values(), zgot = aux.gpu_values();
    const double eps_c = dtype_epsilon(e.t);
    const bool low = e.t != DType::F32;
    // Per element: |product|, sum |a b|, |bias|; NaN-poisoned padding stays NaN on both sides.
    struct Mag {
      double prod = 0, sum_abs = 0, bias = 0;
    };
    auto mag = [&](std::size_t idx) {
      const auto i = static_cast<std::int64_t>(idx);
      const std::int64_t row = i / ldc, col = i % ldc;
      Mag mg;
      if (col >= e.n) return mg;
      for (std::int64_t p = 0; p < e.k; ++p) {
        const double v = static_cast<double>(av[static_cast<std::size_t>(row * e.k + p)]) *
                         bv[static_cast<std::size_t>(col * e.k + p)];
        mg.prod += v;
        mg.sum_abs += std::fabs(v);
      }
      mg.bias = e.bias ? std::fabs(biasv[static_cast<std::size_t>(col)]) : 0.0;
      return mg;
    };
    // With an fp16/bf16 output, cuBLASLt's activation epilogues may split K and add the partial
    // products in the output type (seen on the H200: errors of several ulps of the output where
    // the plain bias epilogue showed one), so the bound is eps_c * (sum |a b| + |bias|) rather
    // than eps_c * |z|.
    auto z_err = [&](const Mag& mg) {
      return 2.0 * static_cast<double>(e.k) * kEps32 * mg.sum_abs + 2.0 * kEps32 * mg.bias +
             (low ? eps_c * (mg.sum_abs + 2.0 * mg.bias) : 0.0);
    };
    if (e.aux) {
      EXPECT_TRUE(all_close(zref, zgot, [&](std::size_t i) {
        return eps_c * std::fabs(zref[i]) + z_err(mag(i)) * (1.0 + eps_c) +
               dtype_min_subnormal(e.t);
      })) << "aux";
    }
    EXPECT_TRUE(all_close(yref, ygot, [&](std::size_t i) {
      const Mag mg = mag(i);
      const double z = std::fabs(mg.prod) + mg.bias;  // bounds |z|
      double err = z_err(mg);
      if (e.act == Activation::GELUTanh) {
        err = 1.13 * err + 16.0 * kEps32 * (z + 1.0) + (low ? 0.5 * z / 1024.0 : 0.0);
      }
      return eps_c * std::fabs(yref[i]) + err * (1.0 + eps_c) + dtype_min_subnormal(e.t);
    })) << "output";
    std::vector<float> written;  // the padding columns stay poisoned on purpose
    for (std::size_t i = 0; i < ygot.size(); ++i) {
      if (static_cast<std::int64_t>(i) % ldc < e.n) written.push_back(ygot[i]);
    }
    EXPECT_TRUE(all_written(written)) << "output";
  }

  // dW = dy^T x (bias gradient of A: the sum over rows of dy), or C = A B with the column sums
  // of B, fp32 output and bias gradient from `ab` operands.
  void weight_grad(Backend& g, DType ab, GemmOperand which, std::int64_t m, std::int64_t n,
                   std::int64_t k) {
    SCOPED_TRACE(std::string(dtype_name(ab)) + (which == GemmOperand::A ? " of A" : " of B") +
                 " m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k));
    const bool of_a = which == GemmOperand::A;
    Twin a(cpu(), g, ab, m * k), b(cpu(), g, ab, k * n), c(cpu(), g, DType::F32, m * n);
    const std::int64_t len = of_a ? m : n;
    Twin db(cpu(), g, DType::F32, len);
    const std::vector<float> av = a.set(uniform(m * k, -1, 1));
    const std::vector<float> bv = b.set(uniform(k * n, -1, 1));
    c.poison();
    db.poison();
    GemmDesc d;
    d.trans_a = of_a;  // A stored [k, m] for its column sums, else [m, k]
    d.m = m;
    d.n = n;
    d.k = k;
    d.lda = of_a ? m : k;
    d.ldb = n;
    d.ldc = n;
    d.bias_grad_operand = which;
    GemmDesc dc = d, dg = d;
    dc.a = a.cpu();
    dc.b = b.cpu();
    dc.c = c.cpu();
    dc.bias_grad = db.cpu();
    dg.a = a.gpu();
    dg.b = b.gpu();
    dg.c = c.gpu();
    dg.bias_grad = db.gpu();
    cpu().gemm(dc);
    g.gemm(dg);
    const std::vector<float> cref = c.cpu_values(), cgot = c.gpu_values();
    EXPECT_TRUE(all_close(cref, cgot, [&](std::size_t idx) {
      const auto i = static_cast<std::int64_t>(idx);
      const std::int64_t row = i / n, col = i % n;
      double sum_abs = 0.0;
      for (std::int64_t p = 0; p < k; ++p) {
        const double av_ = av[static_cast<std::size_t>(of_a ? p * m + row : row * k + p)];
        sum_abs += std::fabs(av_ * bv[static_cast<std::size_t>(p * n + col)]);
      }
      return kEps32 * std::fabs(cref[idx]) + 2.0 * static_cast<double>(k) * kEps32 * sum_abs +
             dtype_min_subnormal(DType::F32);
    })) << "product";
    const std::vector<float> dbref = db.cpu_values(), dbgot = db.gpu_values();
    EXPECT_TRUE(all_close(dbref, dbgot, [&](std::size_t j) {
      double sum_abs = 0.0;
      for (std::int64_t p = 0; p < k; ++p) {
        const std::size_t at =
            of_a ? static_cast<std::size_t>(p * m) + j : static_cast<std::size_t>(p * n) + j;
        sum_abs += std::fabs((of_a ? av : bv)[at]);
      }
      return kEps32 * std::fabs(dbref[j]) + 2.0 * static_cast<double>(k) * kEps32 * sum_abs +
             dtype_min_subnormal(DType::F32);
    })) << "bias gradient";
    EXPECT_TRUE(all_written(dbgot));
  }

  void all_forward_cases(Backend& g) {
    for (DType t : float_dtypes()) {
      for (Activation act : {Activation::ReLU, Activation::GELUTanh}) {
        for (bool with_aux : {false, true}) {
          ForwardCase e;
          e.t = t;
          e.act = act;
          e.aux = with_aux;
          forward(g, e);  // tensor-core friendly: small_mlp's second layer, batch 64
          e.m = 30 + uniform_int(0, 20);
          e.n = 20 + uniform_int(0, 20);
          e.k = 40 + uniform_int(0, 30);
          forward(g, e);  // odd sizes: some fused kernels refuse them
          e.n = 40;
          e.pad = 8;  // aux leading dimension divisible by 8
          forward(g, e);
          e.pad = 3;  // not divisible by 8, not contiguous: the row-wise activation fallback
          forward(g, e);
          e.bias = false;
          forward(g, e);
        }
      }
    }
  }

  void all_weight_grad_cases(Backend& g) {
    for (DType t : float_dtypes()) {
      for (GemmOperand which : {GemmOperand::A, GemmOperand::B}) {
        weight_grad(g, t, which, 256, 512, 64);  // small_mlp's second layer, batch 64
        weight_grad(g, t, which, 48, 72, 300);   // more than one chunk of rows to sum
        weight_grad(g, t, which, 37, 29, 53 + uniform_int(0, 3));
        weight_grad(g, t, which, 10, 4096, 512);  // large_mlp's head: 10 units, batch 512
      }
    }
  }
};

TEST_F(FusedGemm, ActivationEpiloguesMatchCpu) {
  all_forward_cases(gpu());
}

TEST_F(FusedGemm, BiasGradientEpilogueMatchesCpu) {
  all_weight_grad_cases(gpu());
}

TEST_F(FusedGemm, RepeatedShapesTakeEachCallsPointers) {
  ForwardCase e;
  e.t = DType::F16;
  e.act = Activation::GELUTanh;
  e.aux = true;
  for (int i = 0; i < 3; ++i) forward(gpu(), e);
  for (int i = 0; i < 3; ++i) weight_grad(gpu(), DType::F16, GemmOperand::A, 128, 96, 64);
}

TEST_F(FusedGemm, WithoutCublasLtEpiloguesTheFallbacksMatchCpu) {
  // MIXTRAIN_CUDA_FUSED_EPILOGUES=0: only the bias epilogue; activations and bias gradients run
  // as separate kernels.
  ScopedEnv env("MIXTRAIN_CUDA_FUSED_EPILOGUES", "0");
  std::unique_ptr<Backend> plain = make_cuda_backend();
  all_forward_cases(*plain);
  all_weight_grad_cases(*plain);
}

TEST_F(FusedGemm, EmptyProductsAndRejectedDescriptors) {
  // k == 0: C = act(bias), aux = bias, bias gradient 0.
  for (DType t : float_dtypes()) {
    SCOPED_TRACE(dtype_trace(t));
    Twin a(cpu(), gpu(), t, 8), b(cpu(), gpu(), t, 8), bias(cpu(), gpu(), t, 8);
    Twin c(cpu(), gpu(), t, 32), aux(cpu(), gpu(), t, 32), db(cpu(), gpu(), DType::F32, 4);
    bias.set(uniform(8, -1, 1));
    c.poison();
    aux.poison();
    GemmDesc d;
    d.trans_b = true;
    d.m = 4;
    d.n = 8;
    d.k = 0;
    d.lda = 1;
    d.ldb = 1;
    d.ldc = 8;
    d.epilogue = Activation::GELUTanh;
    GemmDesc dc = d, dg = d;
    dc.a = a.cpu();
    dc.b = b.cpu();
    dc.c = c.cpu();
    dc.bias = bias.cpu();
    dc.aux = aux.cpu();
    dg.a = a.gpu();
    dg.b = b.gpu();
    dg.c = c.gpu();
    dg.bias = bias.gpu();
    dg.aux = aux.gpu();
    cpu().gemm(dc);
    gpu().gemm(dg);
    EXPECT_TRUE(all_equal(aux.cpu_values(), aux.gpu_values()));
    const std::vector<float> yref = c.cpu_values();
    EXPECT_TRUE(all_close(yref, c.gpu_values(), [&](std::size_t i) {
      return dtype_epsilon(t) * std::fabs(yref[i]) + 32.0 * kEps32 + dtype_min_subnormal(t);
    }));
    // dW = dy^T x over zero rows: C = 0 and the bias gradient 0.
    Twin dw(cpu(), gpu(), DType::F32, 8);
    dw.poison();
    db.poison();
    GemmDesc w;
    w.trans_a = true;
    w.m = 4;
    w.n = 2;
    w.k = 0;
    w.lda = 4;
    w.ldb = 2;
    w.ldc = 2;
    w.a = a.gpu();
    w.b = b.gpu();
    w.c = dw.gpu();
    w.bias_grad = db.gpu();
    gpu().gemm(w);
    EXPECT_EQ(dw.gpu_values(), std::vector<float>(8, 0.0f));
    EXPECT_EQ(db.gpu_values(), std::vector<float>(4, 0.0f));
  }
  Twin a(cpu(), gpu(), DType::F32, 16), b(cpu(), gpu(), DType::F32, 16),
      c(cpu(), gpu(), DType::F32, 16);
  GemmDesc d;
  d.m = d.n = d.k = 4;
  d.lda = d.ldb = d.ldc = 4;
  d.a = a.gpu();
  d.b = b.gpu();
  d.c = c.gpu();
  d.epilogue = Activation::Tanh;
  EXPECT_THROW(gpu().gemm(d), Error);
  d.epilogue = Activation::ReLU;
  d.beta = 1.0f;
  EXPECT_THROW(gpu().gemm(d), Error);
}

// ---- fused dense layers end to end --------------------------------------------------------------

Model compile_with_fusion(const ModelSpec& spec, bool fused) {
  ScopedEnv env("MIXTRAIN_FUSION", fused ? "1" : "0");
  return compile(spec);
}

TEST_F(FusedGemm, FusedAndUnfusedTrainAlikeOnTheGpu) {
  constexpr std::int64_t kBatch = 64, kIn = 40, kClasses = 10;
  const ModelSpec spec = ModelBuilder({kBatch, kIn})
                             .dense(128)
                             .relu()
                             .dropout(0.2f)
                             .dense(64)
                             .gelu(true)
                             .dense(kClasses)
                             .spec();
  const Model fused = compile_with_fusion(spec, true), plain = compile_with_fusion(spec, false);
  ASSERT_EQ(fused.graph().nodes.size() + 2, plain.graph().nodes.size());
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<std::size_t>(kBatch * kIn));
  std::vector<std::int32_t> y(static_cast<std::size_t>(kBatch));
  for (float& v : x) v = nd(rng_);
  for (auto& v : y) v = uniform_int(0, kClasses - 1);
  // As EndToEnd.SameLossesAsCpuInEveryPrecision: GEMM algorithms (fused or not) add in different
  // orders; FP32 1e-3, FP16/BF16 2e-2 relative on the loss over 10 steps.
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    TrainerConfig c;
    c.device = Device::CUDA;
    c.precision = p;
    c.seed = 5;
    c.sync_interval = 1000;
    Trainer tf(fused, c), tp(plain, c), tc(fused, [&] {
      TrainerConfig cc = c;
      cc.device = Device::CPU;
      return cc;
    }());
    const double tol = p == Precision::FP32 ? 1e-3 : 2e-2;
    for (int s = 0; s < 10; ++s) {
      const float lf = tf.train_batch(x.data(), {kBatch, kIn}, y.data(), {kBatch}).loss();
      const float lp = tp.train_batch(x.data(), {kBatch, kIn}, y.data(), {kBatch}).loss();
      const float lc = tc.train_batch(x.data(), {kBatch, kIn}, y.data(), {kBatch}).loss();
      EXPECT_NEAR(lf, lp, tol * std::fabs(lp)) << "step " << s;
      EXPECT_NEAR(lf, lc, tol * std::fabs(lc)) << "step " << s;
    }
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
