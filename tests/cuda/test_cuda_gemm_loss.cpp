// GEMM (cuBLASLt) and the losses of the CUDA backend against the CPU backend.
#include <algorithm>
#include <cmath>

#include "cuda_test_util.hpp"
#include "ops/loss_math.hpp"

namespace mixtrain::cuda_test {
namespace {

// ---- GEMM -------------------------------------------------------------------------------------

struct GemmCase {
  bool ta = false, tb = false;
  std::int64_t m = 37, n = 29, k = 53;
  std::int64_t pad = 0;  // extra leading-dimension slack
  DType ab = DType::F32, c = DType::F32;
  bool bias = false;
  DType bias_dtype = DType::F32;
  float alpha = 1.0f, beta = 0.0f;
  std::int64_t batch = 1;
  bool tf32 = false;
  Activation epilogue = Activation::Identity;  // Identity or ReLU here

  std::string str() const {
    return "ta=" + std::to_string(ta) + " tb=" + std::to_string(tb) + " m=" + std::to_string(m) +
           " n=" + std::to_string(n) + " k=" + std::to_string(k) + " pad=" + std::to_string(pad) +
           " ab=" + std::string(dtype_name(ab)) + " c=" + std::string(dtype_name(c)) +
           (bias ? " bias=" + std::string(dtype_name(bias_dtype)) : "") +
           " alpha=" + std::to_string(alpha) + " beta=" + std::to_string(beta) +
           " batch=" + std::to_string(batch) + (tf32 ? " tf32" : "") +
           (epilogue == Activation::ReLU ? " relu" : "");
  }
};

class GemmTest : public CudaVsCpu {
 protected:
  void run(const GemmCase& g) {
    SCOPED_TRACE(g.str());
    const std::int64_t a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
    const std::int64_t b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
    const std::int64_t lda = a_cols + g.pad, ldb = b_cols + g.pad, ldc = g.n + g.pad;
    const std::int64_t sa = a_rows * lda, sb = b_rows * ldb, sc = g.m * ldc;
    Twin a(cpu(), gpu(), g.ab, sa * g.batch), b(cpu(), gpu(), g.ab, sb * g.batch),
        c(cpu(), gpu(), g.c, sc * g.batch), bias(cpu(), gpu(), g.bias_dtype, g.n);
    const std::vector<float> av = a.set(uniform(sa * g.batch, -1, 1));
    const std::vector<float> bv = b.set(uniform(sb * g.batch, -1, 1));
    const std::vector<float> biasv = bias.set(uniform(g.n, -1, 1));
    std::vector<float> c0(static_cast<std::size_t>(sc * g.batch), 0.0f);
    if (g.beta != 0.0f) {
      c0 = c.set(uniform(sc * g.batch, -1, 1));
    } else {
      c.poison();
      // Padding columns are not part of the product: give them a value both sides keep.
      if (g.pad > 0) {
        std::vector<float> p(static_cast<std::size_t>(sc * g.batch), NAN);
        for (std::int64_t i = 0; i < sc * g.batch; ++i) {
          if (i % ldc >= g.n) p[static_cast<std::size_t>(i)] = 5.0f;
        }
        c.set(p);
      }
    }
    GemmDesc d;
    d.trans_a = g.ta;
    d.trans_b = g.tb;
    d.m = g.m;
    d.n = g.n;
    d.k = g.k;
    d.lda = lda;
    d.ldb = ldb;
    d.ldc = ldc;
    d.alpha = g.alpha;
    d.beta = g.beta;
    d.batch = g.batch;
    d.stride_a = sa;
    d.stride_b = sb;
    d.stride_c = sc;
    d.allow_tf32 = g.tf32;
    d.epilogue = g.epilogue;  // relu(z) is within the error bound of z below
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
    gpu().gemm(dg);
    const std::vector<float> ref = c.cpu_values(), got = c.gpu_values();
    // Both accumulate exact fp32 products (fp16 x fp16 and bf16 x bf16 products fit in fp32) in
    // different orders; each is within k * eps32 * sum_k |a_ik b_kj| of the exact sum (one
    // rounding per addition, even for tensor cores that truncate), so the two are within
    // 2 k eps32 sum|a b| of each other. TF32 first rounds each operand to 10 mantissa bits:
    // 2^-9 relative per product more. Then beta * c and the bias: two roundings each, and one
    // output ulp. When the bias type differs from C's, the CUDA backend seeds C with
    // beta * C + bias rounded to C's type before accumulating the product onto it: one more
    // rounding of C's type on those terms.
    const double per_term = 2.0 * static_cast<double>(g.k) * kEps32 + (g.tf32 ? 1.0 / 512 : 0.0);
    EXPECT_TRUE(all_close(ref, got, [&](std::size_t idx) {
      const auto i = static_cast<std::int64_t>(idx);
      const std::int64_t bt = i / sc, row = (i % sc) / ldc, col = (i % sc) % ldc;
      if (col >= g.n) return 0.0;  // padding: untouched
      double sum_abs = 0.0;
      for (std::int64_t p = 0; p < g.k; ++p) {
        const std::int64_t ai = bt * sa + (g.ta ? p * lda + row : row * lda + p);
        const std::int64_t bi = bt * sb + (g.tb ? col * ldb + p : p * ldb + col);
        sum_abs += std::fabs(static_cast<double>(av[static_cast<std::size_t>(ai)]) *
                             bv[static_cast<std::size_t>(bi)]);
      }
      const double seed = std::fabs(g.beta * c0[idx]) +
                          (g.bias ? std::fabs(biasv[static_cast<std::size_t>(col)]) : 0.0);
      const bool seeded = g.bias && g.bias_dtype != g.c;
      const double fp32 = per_term * std::fabs(g.alpha) * sum_abs +
                          (2.0 * kEps32 + (seeded ? dtype_epsilon(g.c) : 0.0)) * seed;
      // cuBLASLt's bias epilogue with an fp16/bf16 output rounds the product to C's type before
      // adding the bias (seen on the H200: errors of eps_c * |product| where the sum cancels), so
      // with a fused bias the output error is eps_c * (|product| + |bias|), not eps_c * |sum|.
      const bool fused_low = g.bias && g.bias_dtype == g.c && g.c != DType::F32;
      const double fused =
          fused_low ? dtype_epsilon(g.c) * (std::fabs(ref[idx]) + 2.0 * seed) : 0.0;
      return dtype_epsilon(g.c) * std::fabs(ref[idx]) + fp32 + fused + dtype_min_subnormal(g.c);
    }));
  }
};

TEST_F(GemmTest, AllTransposeCombinationsEveryDtype) {
  for (DType t : float_dtypes()) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        GemmCase g;
        g.ta = ta;
        g.tb = tb;
        g.ab = g.c = t;
        g.m = 30 + uniform_int(0, 20);
        g.n = 20 + uniform_int(0, 20);
        g.k = 40 + uniform_int(0, 30);
        run(g);
      }
    }
  }
}

// A dimension of at most 16: the forward (n) and weight gradient (m) of a dense layer with few
// units (cuBLASLt) and its input gradient (k: the CUDA backend's own kernel, cuda_skinny_gemm.cu;
// its rows in groups of 8, so 40 rows make a partial group).
TEST_F(GemmTest, SkinnyProductsEveryDtype) {
  for (DType t : float_dtypes()) {
    for (DType out : {t, DType::F32}) {
      for (std::int64_t pad : {0, 3}) {
        const auto shape = [&](bool ta, bool tb, std::int64_t m, std::int64_t n, std::int64_t k) {
          GemmCase g;
          g.ab = t;
          g.c = out;
          g.ta = ta;
          g.tb = tb;
          g.m = m;
          g.n = n;
          g.k = k;
          g.pad = pad;
          return g;
        };
        for (std::int64_t n : {1, 10, 16}) {  // the forward (cuBLASLt)
          for (std::int64_t k : {37, 256}) {
            GemmCase g = shape(false, true, 50, n, k);
            run(g);
            g.bias = true;
            g.bias_dtype = out == DType::F32 ? DType::F32 : (k == 37 ? DType::F32 : t);
            g.epilogue = Activation::ReLU;
            run(g);
          }
        }
        for (std::int64_t m : {1, 10, 16}) {  // the weight gradient (cuBLASLt)
          for (std::int64_t k : {64, 600}) run(shape(true, false, m, 100, k));
        }
        for (std::int64_t k : {1, 10, 16}) {  // the input gradient (our kernel)
          for (std::int64_t n : {37, 512}) {
            for (float beta : {0.0f, 1.0f}) {
              GemmCase g = shape(false, false, 40, n, k);
              g.beta = beta;
              run(g);
            }
          }
        }
      }
    }
  }
}

TEST_F(GemmTest, TensorCoreSizes) {
  for (DType t : float_dtypes()) {
    GemmCase g;
    g.ab = g.c = t;
    g.tb = true;  // the Dense forward
    g.m = 64;
    g.n = 128;
    g.k = 256;
    run(g);
  }
}

TEST_F(GemmTest, BiasEpilogueAndFallback) {
  for (DType t : float_dtypes()) {
    GemmCase g;
    g.ab = g.c = t;
    g.tb = true;
    g.bias = true;
    g.bias_dtype = t;  // fused epilogue
    run(g);
    g.bias_dtype = t == DType::F32 ? DType::F16 : DType::F32;  // a different type: the fallback
    run(g);
  }
}

TEST_F(GemmTest, BetaOneAccumulates) {
  for (DType t : float_dtypes()) {
    GemmCase g;
    g.ab = g.c = t;
    g.beta = 1.0f;
    g.alpha = 0.5f;
    run(g);
  }
}

TEST_F(GemmTest, Fp32OutputFromLowPrecisionOperands) {
  for (DType t : {DType::F16, DType::BF16}) {
    GemmCase g;  // dW = dy^T x
    g.ab = t;
    g.c = DType::F32;
    g.ta = true;
    g.m = 48;
    g.n = 72;
    g.k = 64 + uniform_int(0, 3);
    run(g);
    g.beta = 1.0f;
    run(g);
  }
}

TEST_F(GemmTest, StridedBatched) {
  for (DType t : float_dtypes()) {
    GemmCase g;
    g.ab = g.c = t;
    g.batch = 3;
    g.m = 16;
    g.n = 24;
    g.k = 32;
    g.tb = true;
    run(g);
  }
}

TEST_F(GemmTest, PaddedLeadingDimensions) {
  for (DType t : float_dtypes()) {
    GemmCase g;
    g.ab = g.c = t;
    g.pad = 3;
    g.ta = true;
    run(g);
  }
}

TEST_F(GemmTest, Tf32) {
  GemmCase g;
  g.tf32 = true;
  g.m = 64;
  g.n = 64;
  g.k = 128;
  run(g);
}

TEST_F(GemmTest, RepeatedShapesReuseThePlan) {
  // Same shape, different buffers: the cached plan must take each call's pointers (and bias).
  GemmCase g;
  g.ab = g.c = DType::F16;
  g.tb = true;
  g.bias = true;
  g.bias_dtype = DType::F16;
  for (int i = 0; i < 3; ++i) run(g);
}

TEST_F(GemmTest, OperandDtypeMismatchThrows) {
  Twin a(cpu(), gpu(), DType::F32, 16), b(cpu(), gpu(), DType::F16, 16),
      c(cpu(), gpu(), DType::F32, 16);
  GemmDesc d;
  d.m = d.n = d.k = 4;
  d.lda = d.ldb = d.ldc = 4;
  d.a = a.gpu();
  d.b = b.gpu();
  d.c = c.gpu();
  EXPECT_THROW(gpu().gemm(d), Error);
}

// ---- losses -----------------------------------------------------------------------------------

struct LossCase {
  LossKind kind;
  const char* name;
};
const LossCase kLosses[] = {
    {LossKind::SparseCrossEntropy, "sparse_ce"},
    {LossKind::CrossEntropy, "ce"},
    {LossKind::CrossEntropyProbs, "ce_probs"},
    {LossKind::BinaryCrossEntropy, "bce"},
    {LossKind::BinaryCrossEntropyLogits, "bce_logits"},
    {LossKind::MeanSquaredError, "mse"},
    {LossKind::MeanAbsoluteError, "mae"},
    {LossKind::Huber, "huber"},
};

using LossTest = CudaVsCpu;

TEST_F(LossTest, EveryKindEveryDtypeWithGradientAndScale) {
  for (const LossCase& lc : kLosses) {
    for (DType t : float_dtypes()) {
      for (int mode = 0; mode < 3; ++mode) {  // 0: loss only, 1: gradient, 2: gradient x scale
        const std::int64_t rows = 37 + uniform_int(0, 30);
        const std::int64_t cols =
            lc.kind == LossKind::BinaryCrossEntropy || lc.kind == LossKind::BinaryCrossEntropyLogits
                ? 1 + uniform_int(0, 3)
                : 10 + uniform_int(0, 50);
        const std::int64_t n = rows * cols;
        SCOPED_TRACE(std::string(lc.name) + " " + dtype_trace(t) + " mode " + std::to_string(mode) +
                     " rows " + std::to_string(rows) + " cols " + std::to_string(cols));
        Twin pred(cpu(), gpu(), t, n), dpred(cpu(), gpu(), t, n);
        Twin labels(cpu(), gpu(), DType::I32, rows), targets(cpu(), gpu(), DType::F32, n);
        Twin loss(cpu(), gpu(), DType::F32, 1);
        TwinControl control(cpu(), gpu());
        StepControl sc = control.cpu_value();
        sc.loss_scale = mode == 2 ? 1024.0f : 1.0f;
        sc.inv_scale = 1.0f / sc.loss_scale;
        control.set(sc);

        std::vector<float> p, tv;
        switch (lc.kind) {
          case LossKind::CrossEntropyProbs:
          case LossKind::BinaryCrossEntropy:
            p = uniform(n, 0.0f, 1.0f);
            break;
          default:
            p = normal(n, 0.0f, 2.0f);
        }
        const std::vector<float> pv = pred.set(p);
        std::vector<float> lv(static_cast<std::size_t>(rows));
        for (float& l : lv) l = static_cast<float>(uniform_int(0, static_cast<int>(cols) - 1));
        labels.set(lv);
        if (lc.kind == LossKind::CrossEntropy || lc.kind == LossKind::CrossEntropyProbs) {
          tv = uniform(n, 0, 1);  // rows of probabilities
          for (std::int64_t r = 0; r < rows; ++r) {
            float s = 0.0f;
            for (std::int64_t c = 0; c < cols; ++c) s += tv[static_cast<std::size_t>(r * cols + c)];
            for (std::int64_t c = 0; c < cols; ++c) tv[static_cast<std::size_t>(r * cols + c)] /= s;
          }
        } else if (lc.kind == LossKind::BinaryCrossEntropy ||
                   lc.kind == LossKind::BinaryCrossEntropyLogits) {
          tv = uniform(n, 0, 1);
          for (std::size_t i = 0; i < tv.size(); i += 2) tv[i] = std::round(tv[i]);  // some 0/1
        } else {
          tv = normal(n, 0, 2);
        }
        targets.set(tv);
        loss.poison();
        dpred.poison();

        LossDesc dc;
        dc.kind = lc.kind;
        dc.huber_delta = 0.7f;
        dc.rows = rows;
        dc.cols = cols;
        LossDesc dg = dc;
        const bool sparse = lc.kind == LossKind::SparseCrossEntropy;
        dc.pred = pred.cpu();
        dg.pred = pred.gpu();
        dc.labels = sparse ? static_cast<const std::int32_t*>(labels.cpu_ptr()) : nullptr;
        dg.labels = sparse ? static_cast<const std::int32_t*>(labels.gpu_ptr()) : nullptr;
        dc.targets = sparse ? nullptr : static_cast<const float*>(targets.cpu_ptr());
        dg.targets = sparse ? nullptr : static_cast<const float*>(targets.gpu_ptr());
        dc.loss = static_cast<float*>(loss.cpu_ptr());
        dg.loss = static_cast<float*>(loss.gpu_ptr());
        if (mode > 0) {
          dc.dpred = dpred.cpu();
          dg.dpred = dpred.gpu();
          dc.control = control.cpu();
          dg.control = control.gpu();
        }
        cpu().loss(dc);
        gpu().loss(dg);

        // The mean loss: every term is non-negative, so the sums have no cancellation. Each
        // term's libm calls differ by a few ulps, and the log-sum-exp (rounded to fp32 on both
        // sides) by one ulp of |lse| <= max|x| + log(cols): 16 eps32 relative plus
        // 8 eps32 (max|x| + log cols) absolute (cross-entropy over logits only).
        const float lref = loss.cpu_values()[0], lgot = loss.gpu_values()[0];
        double max_abs = 0.0;
        for (float v : pv) max_abs = std::max(max_abs, static_cast<double>(std::fabs(v)));
        const bool logits =
            lc.kind == LossKind::SparseCrossEntropy || lc.kind == LossKind::CrossEntropy;
        // The element-wise terms may contract p * t or d * d into an FMA on one side: one
        // rounding of a product of magnitude <= |p| (|t|), 4 eps32 max(|p|, |t|) absolute.
        double max_t = 0.0;
        for (float v : tv) max_t = std::max(max_t, static_cast<double>(std::fabs(v)));
        const double ltol = 16.0 * kEps32 * std::fabs(lref) +
                            (logits ? 8.0 * kEps32 * (max_abs + std::log(static_cast<double>(cols)))
                                    : 4.0 * kEps32 * (max_abs + 1.0) * (max_t + 1.0)) +
                            1e-30;
        EXPECT_TRUE(close(lref, lgot, ltol))
            << "loss cpu " << lref << " gpu " << lgot << " tol " << ltol;

        if (mode > 0) {
          const std::vector<float> ref = dpred.cpu_values(), got = dpred.gpu_values();
          const double denom =
              loss_sums_over_cols(lc.kind) ? static_cast<double>(rows) : static_cast<double>(n);
          const double gscale = sc.loss_scale / denom;
          // Gradient per element: the same formula on the same inputs; libm differences of a
          // few ulps in p = exp(x - lse) (whose argument differs by one ulp of |lse| + |x|) or
          // in the element-wise derivative: 16 eps32 (1 + |x| + log cols) times the terms'
          // magnitude (|grad| / gscale + |t| + 1) times gscale, then one output ulp.
          EXPECT_TRUE(all_close(ref, got, [&](std::size_t i) {
            const double mag = std::fabs(ref[i]) / gscale + std::fabs(tv[i]) + 1.0;
            const double arg = 1.0 + (logits ? max_abs + std::log(static_cast<double>(cols)) : 0.0);
            return dtype_epsilon(t) * std::fabs(ref[i]) + 16.0 * kEps32 * arg * mag * gscale +
                   dtype_min_subnormal(t);
          }));
        }
      }
    }
  }
}

TEST_F(LossTest, LargeBatchUsesManyPartials) {
  // More rows than one block handles, many blocks: the two-stage mean.
  const std::int64_t rows = 20000, cols = 7;
  Twin pred(cpu(), gpu(), DType::F32, rows * cols), labels(cpu(), gpu(), DType::I32, rows),
      loss(cpu(), gpu(), DType::F32, 1);
  pred.set(normal(rows * cols, 0, 1));
  std::vector<float> lv(static_cast<std::size_t>(rows));
  for (float& l : lv) l = static_cast<float>(uniform_int(0, cols - 1));
  labels.set(lv);
  LossDesc dc;
  dc.kind = LossKind::SparseCrossEntropy;
  dc.rows = rows;
  dc.cols = cols;
  LossDesc dg = dc;
  dc.pred = pred.cpu();
  dg.pred = pred.gpu();
  dc.labels = static_cast<const std::int32_t*>(labels.cpu_ptr());
  dg.labels = static_cast<const std::int32_t*>(labels.gpu_ptr());
  dc.loss = static_cast<float*>(loss.cpu_ptr());
  dg.loss = static_cast<float*>(loss.gpu_ptr());
  cpu().loss(dc);
  gpu().loss(dg);
  const float a = loss.cpu_values()[0], b = loss.gpu_values()[0];
  // Double accumulation on both sides: only per-term fp32 differences remain (see above).
  EXPECT_NEAR(a, b, 16.0 * kEps32 * std::fabs(a) + 8.0 * kEps32 * 6.0);
  // Deterministic: the same bits again.
  gpu().loss(dg);
  EXPECT_EQ(loss.gpu_values()[0], b);
}

}  // namespace
}  // namespace mixtrain::cuda_test
