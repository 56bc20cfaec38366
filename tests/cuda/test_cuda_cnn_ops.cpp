// Batch-norm and pooling ops of the CUDA backend against the CPU backend, in every training dtype,
// forward and backward, on the scalar path (odd channel counts, misaligned pointers) and the
// 16-byte pack path (multiples of 8 channels).
//
// Tolerances (eps32 = 2^-23; eps_out = the output dtype's epsilon):
//  - Pooling: both backends load the same stored values and do the same fp32 operations in the
//    same order. Windows are scanned in row-major order; the CUDA backward passes gather the
//    covering windows' terms in (p, q) order, the order in which the CPU scatters them into its
//    accumulator, and both round dy / count before adding it. Max and average pooling, forward
//    and backward, and the global average's backward must agree bit for bit.
//  - The global average's forward sums the pixels in another order (strided phases, then a
//    tree): each sum is within pixels * eps32 * sum|x| of the exact one, so the means differ by
//    at most (2 pixels + 2) eps32 * sum|x| / pixels before the rounding to the output.
//  - Batch-norm statistics: the CPU sums in double. The GPU runs fp32 updates over at most kRun
//    rows per thread (kMaxRun in cuda_norm.cu; only channel counts far beyond these tests', whose
//    partials crowd the scratch, make the runs longer) and combines the results in double, so
//    its fp32 error is that of a kRun-term recurrence: the mean within 2 kRun eps32 max|x|, the
//    variance (Welford) within 2 kRun kappa eps32 relative, kappa = 1 + |mean| / std its condition
//    number, invstd within half that; sum dy within kRun eps32 sum|dy| and sum dy * xhat within
//    (kRun + 4) eps32 sum|dy xhat| (xhat itself takes two roundings); plus the final rounding to
//    F32 (eps32 relative).
//  - y and dx: a handful of fp32 roundings, at most 8 eps32 of the magnitude of the terms, plus
//    what the statistics' differences carry (measured for y; bounded as above for dx, whose
//    means come from the sums), then one ulp of the output (out_tol).
//  - update_running computes in double on both sides from the same values: at most one F32 ulp.
#include <algorithm>
#include <cmath>
#include <limits>

#include "cuda_test_util.hpp"

namespace mixtrain::cuda_test {
namespace {

constexpr double kRun = 64.0;  // longest fp32 run of the GPU reductions (kMaxRun, cuda_norm.cu)
constexpr float kBnEps = 1e-5f;

// One output ulp plus the absolute fp32 error `fp32_err` carried into the rounding.
double out_tol(DType t, float ref, double fp32_err) {
  return dtype_epsilon(t) * std::fabs(static_cast<double>(ref)) +
         fp32_err * (1.0 + dtype_epsilon(t)) + dtype_min_subnormal(t);
}

class CnnOpsTest : public CudaVsCpu {
 protected:
  // x [rows, channels] with a random mean (up to +-4) and spread (0.5 to 2) per channel.
  std::vector<float> bn_input(std::int64_t rows, std::int64_t channels) {
    const std::vector<float> mu = uniform(channels, -4.0f, 4.0f);
    const std::vector<float> sd = uniform(channels, 0.5f, 2.0f);
    std::vector<float> x = normal(rows * channels, 0.0f, 1.0f);
    const auto C = static_cast<std::size_t>(channels);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = mu[i % C] + sd[i % C] * x[i];
    return x;
  }

  // Pool inputs: small integers (many ties inside a window: the first one takes max-pool's
  // gradient) or normal values with one NaN (it propagates, and takes the gradient).
  std::vector<float> pool_input(std::int64_t n, bool ties) {
    std::vector<float> v;
    if (ties) {
      v = uniform(n, 0.0f, 4.0f);
      for (float& x : v) x = std::floor(x);
    } else {
      v = normal(n, 0.0f, 2.0f);
      v[static_cast<std::size_t>(n / 3)] = std::numeric_limits<float>::quiet_NaN();
    }
    return v;
  }
};

// ---- batch norm -----------------------------------------------------------------------------

struct BnShape {
  std::int64_t rows, channels, offset;
  const char* what;
};

const BnShape kBnShapes[] = {
    {1, 5, 0, "one row"},
    {37, 3, 0, "odd channels, one chunk (direct)"},
    {1000, 5, 0, "odd channels, several chunks"},
    {4096, 64, 0, "packs"},
    {2061, 64, 1, "misaligned: scalar path with 64 channels"},
    {5000, 12, 0, "packs for f32 only"},
    {8192, 256, 0, "several grid columns and chunks"},
    {300, 2112, 0, "more column tiles than completion counters"},
    {200, 1057, 0, "odd and wide: scalar, more tiles than counters"},
    {65536, 64, 0, "a ResNet-sized layer"},
};

std::string bn_trace(DType t, const BnShape& s, DType g) {
  return dtype_trace(t) + " rows " + std::to_string(s.rows) + " channels " +
         std::to_string(s.channels) + " offset " + std::to_string(s.offset) + " gamma " +
         std::string(dtype_name(g)) + " (" + s.what + ")";
}

// Per-channel mean, biased variance and max |x| of x [rows, channels], in double.
struct ChannelStats {
  std::vector<double> mean, var, max_abs;
};

ChannelStats channel_stats(const std::vector<float>& x, std::int64_t rows, std::int64_t channels) {
  const auto C = static_cast<std::size_t>(channels);
  ChannelStats s{std::vector<double>(C, 0.0), std::vector<double>(C, 0.0),
                 std::vector<double>(C, 0.0)};
  for (std::size_t i = 0; i < x.size(); ++i) {
    s.mean[i % C] += x[i];
    s.max_abs[i % C] = std::max(s.max_abs[i % C], std::fabs(static_cast<double>(x[i])));
  }
  for (double& m : s.mean) m /= static_cast<double>(rows);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = x[i] - s.mean[i % C];
    s.var[i % C] += d * d;
  }
  for (double& v : s.var) v /= static_cast<double>(rows);
  return s;
}

std::vector<DType> gamma_dtypes(DType t) {
  if (t == DType::F32) return {DType::F32};
  return {DType::F32, t};  // gamma and beta kept in fp32 (training) or in the compute dtype
}

TEST_F(CnnOpsTest, BatchNormForwardTraining) {
  for (DType t : float_dtypes()) {
    for (const BnShape& s : kBnShapes) {
      for (DType gt : gamma_dtypes(t)) {
        SCOPED_TRACE(bn_trace(t, s, gt));
        const std::int64_t n = s.rows * s.channels, C = s.channels;
        Twin x(cpu(), gpu(), t, n, s.offset), y(cpu(), gpu(), t, n, s.offset);
        Twin gamma(cpu(), gpu(), gt, C), beta(cpu(), gpu(), gt, C);
        Twin mean(cpu(), gpu(), DType::F32, C), invstd(cpu(), gpu(), DType::F32, C);
        const std::vector<float> xv = x.set(bn_input(s.rows, C));
        const std::vector<float> gv = gamma.set(normal(C, 1.0f, 0.5f));
        const std::vector<float> bv = beta.set(normal(C, 0.0f, 0.5f));
        y.poison();
        mean.poison();
        invstd.poison();
        cpu().batch_norm_forward_training(x.cpu(), gamma.cpu(), beta.cpu(), y.cpu(), mean.cpu(),
                                          invstd.cpu(), s.rows, C, kBnEps, false);
        gpu().batch_norm_forward_training(x.gpu(), gamma.gpu(), beta.gpu(), y.gpu(), mean.gpu(),
                                          invstd.gpu(), s.rows, C, kBnEps, false);
        const ChannelStats st = channel_stats(xv, s.rows, C);
        const std::vector<float> mr = mean.cpu_values(), mg = mean.gpu_values();
        const std::vector<float> ir = invstd.cpu_values(), ig = invstd.gpu_values();
        EXPECT_TRUE(all_close(mr, mg, [&](std::size_t c) {
          return 2.0 * kRun * kEps32 * st.max_abs[c] + kEps32 * std::fabs(mr[c]);
        }));
        EXPECT_TRUE(all_close(ir, ig, [&](std::size_t c) {
          const double kappa = 1.0 + std::fabs(st.mean[c]) * ir[c];
          return (2.0 * kRun * kappa + 4.0) * kEps32 * ir[c];
        }));
        // y = (x - m) * invstd * gamma + beta from each side's own statistics: their measured
        // difference carried through, plus the fp32 formula's roundings.
        const std::vector<float> yr = y.cpu_values(), yg = y.gpu_values();
        const auto Cu = static_cast<std::size_t>(C);
        EXPECT_TRUE(all_close(yr, yg, [&](std::size_t i) {
          const std::size_t c = i % Cu;
          const double dev = std::fabs(static_cast<double>(xv[i]) - mr[c]);
          const double g = std::fabs(gv[c]);
          const double carried =
              g * (std::fabs(static_cast<double>(ig[c]) - ir[c]) * dev +
                   static_cast<double>(ir[c]) * std::fabs(static_cast<double>(mg[c]) - mr[c]));
          const double fp32 = 8.0 * kEps32 * (dev * g * ir[c] + std::fabs(bv[c]));
          return out_tol(t, yr[i], carried * (1.0 + 1e-3) + fp32);
        }));
      }
    }
  }
}

TEST_F(CnnOpsTest, BatchNormForwardInference) {
  for (DType t : float_dtypes()) {
    for (const BnShape& s : kBnShapes) {
      for (DType gt : gamma_dtypes(t)) {
        SCOPED_TRACE(bn_trace(t, s, gt));
        const std::int64_t n = s.rows * s.channels, C = s.channels;
        Twin x(cpu(), gpu(), t, n, s.offset), y(cpu(), gpu(), t, n, s.offset);
        Twin gamma(cpu(), gpu(), gt, C), beta(cpu(), gpu(), gt, C);
        Twin rmean(cpu(), gpu(), DType::F32, C), rvar(cpu(), gpu(), DType::F32, C);
        const std::vector<float> xv = x.set(bn_input(s.rows, C));
        const std::vector<float> gv = gamma.set(normal(C, 1.0f, 0.5f));
        const std::vector<float> bv = beta.set(normal(C, 0.0f, 0.5f));
        const std::vector<float> mv = rmean.set(uniform(C, -4.0f, 4.0f));
        const std::vector<float> vv = rvar.set(uniform(C, 0.25f, 4.0f));
        y.poison();
        cpu().batch_norm_forward_inference(x.cpu(), gamma.cpu(), beta.cpu(), rmean.cpu(),
                                           rvar.cpu(), y.cpu(), s.rows, C, kBnEps, false);
        gpu().batch_norm_forward_inference(x.gpu(), gamma.gpu(), beta.gpu(), rmean.gpu(),
                                           rvar.gpu(), y.gpu(), s.rows, C, kBnEps, false);
        // The same IEEE operations on the same values; only an FMA contraction of
        // (x - m) * s + b on one side differs: 2 eps32 of the terms.
        const std::vector<float> yr = y.cpu_values();
        const auto Cu = static_cast<std::size_t>(C);
        EXPECT_TRUE(all_close(yr, y.gpu_values(), [&](std::size_t i) {
          const std::size_t c = i % Cu;
          const double scale = std::fabs(gv[c]) / std::sqrt(vv[c] + kBnEps);
          const double term = std::fabs(static_cast<double>(xv[i]) - mv[c]) * scale;
          return out_tol(t, yr[i], 2.0 * kEps32 * (term + std::fabs(bv[c])));
        }));
      }
    }
  }
}

TEST_F(CnnOpsTest, BatchNormBackward) {
  enum Mode { kOverwrite, kAccumulate, kNoDx };
  for (DType t : float_dtypes()) {
    int index = 0;
    for (const BnShape& s : kBnShapes) {
      // gamma alternates between f32 and the compute dtype.
      const DType gt = (index++ % 2 == 0) ? DType::F32 : t;
      for (Mode mode : {kOverwrite, kAccumulate, kNoDx}) {
        SCOPED_TRACE(bn_trace(t, s, gt) + (mode == kAccumulate ? " accumulate"
                                           : mode == kNoDx     ? " without dx"
                                                               : ""));
        const bool acc = mode == kAccumulate;
        const std::int64_t n = s.rows * s.channels, C = s.channels;
        const auto Cu = static_cast<std::size_t>(C);
        Twin x(cpu(), gpu(), t, n, s.offset), dy(cpu(), gpu(), t, n, s.offset),
            dx(cpu(), gpu(), t, n, s.offset);
        Twin gamma(cpu(), gpu(), gt, C), mean(cpu(), gpu(), DType::F32, C),
            invstd(cpu(), gpu(), DType::F32, C), dgamma(cpu(), gpu(), DType::F32, C),
            dbeta(cpu(), gpu(), DType::F32, C);
        const std::vector<float> xv = x.set(bn_input(s.rows, C));
        const std::vector<float> gyv = dy.set(normal(n, 0.0f, 1.0f));
        const std::vector<float> gv = gamma.set(normal(C, 1.0f, 0.5f));
        // The same batch statistics on both sides (the exact ones, rounded to f32).
        const ChannelStats st = channel_stats(xv, s.rows, C);
        std::vector<float> m(Cu), inv(Cu);
        for (std::size_t c = 0; c < Cu; ++c) {
          m[c] = static_cast<float>(st.mean[c]);
          inv[c] = static_cast<float>(1.0 / std::sqrt(st.var[c] + kBnEps));
        }
        mean.set(m);
        invstd.set(inv);
        std::vector<float> prev(static_cast<std::size_t>(n), 0.0f);
        if (acc) {
          prev = dx.set(normal(n, 0.0f, 1.0f));
        } else {
          dx.poison();
        }
        dgamma.poison();
        dbeta.poison();
        const Buf cdx = mode == kNoDx ? Buf{} : dx.cpu();
        const Buf gdx = mode == kNoDx ? Buf{} : dx.gpu();
        cpu().batch_norm_backward(x.cpu(), dy.cpu(), gamma.cpu(), mean.cpu(), invstd.cpu(), cdx,
                                  dgamma.cpu(), dbeta.cpu(), s.rows, C, acc, CBuf());
        gpu().batch_norm_backward(x.gpu(), dy.gpu(), gamma.gpu(), mean.gpu(), invstd.gpu(), gdx,
                                  dgamma.gpu(), dbeta.gpu(), s.rows, C, acc, CBuf());
        // Per channel: sum |dy| and sum |dy * xhat|, the scales of the sums' errors.
        std::vector<double> abs_dy(Cu, 0.0), abs_dyx(Cu, 0.0);
        std::vector<double> xhat(xv.size());
        for (std::size_t i = 0; i < xv.size(); ++i) {
          const std::size_t c = i % Cu;
          xhat[i] = (static_cast<double>(xv[i]) - m[c]) * inv[c];
          abs_dy[c] += std::fabs(gyv[i]);
          abs_dyx[c] += std::fabs(gyv[i] * xhat[i]);
        }
        const std::vector<float> dbr = dbeta.cpu_values(), dgr = dgamma.cpu_values();
        std::vector<double> tol_db(Cu), tol_dg(Cu);
        for (std::size_t c = 0; c < Cu; ++c) {
          tol_db[c] = (kRun + 1.0) * kEps32 * abs_dy[c] + kEps32 * std::fabs(dbr[c]);
          tol_dg[c] = (kRun + 5.0) * kEps32 * abs_dyx[c] + kEps32 * std::fabs(dgr[c]);
        }
        EXPECT_TRUE(all_close(dbr, dbeta.gpu_values(), [&](std::size_t c) { return tol_db[c]; }));
        EXPECT_TRUE(all_close(dgr, dgamma.gpu_values(), [&](std::size_t c) { return tol_dg[c]; }));
        if (mode == kNoDx) {  // dx skipped: still all poison
          const std::vector<float> untouched = dx.gpu_values();
          EXPECT_EQ(std::count_if(untouched.begin(), untouched.end(),
                                  [](float v) { return !std::isnan(v); }),
                    0);
          continue;
        }
        // dx = scale (dy - mdy - xhat mdyx): 8 eps32 of its terms, the means' errors (the sums'
        // over rows, plus their rounding to f32) times scale, and the accumulate's rounding.
        const double rows = static_cast<double>(s.rows);
        const std::vector<float> ref = dx.cpu_values();
        EXPECT_TRUE(all_close(ref, dx.gpu_values(), [&](std::size_t i) {
          const std::size_t c = i % Cu;
          const double scale = std::fabs(static_cast<double>(gv[c]) * inv[c]);
          const double mdy = std::fabs(dbr[c]) / rows, mdyx = std::fabs(dgr[c]) / rows;
          const double ax = std::fabs(xhat[i]);
          const double v = scale * (std::fabs(gyv[i]) + mdy + ax * mdyx);
          const double fp32 = 8.0 * kEps32 * v + scale * (tol_db[c] + ax * tol_dg[c]) / rows +
                              (acc ? kEps32 * (std::fabs(prev[i]) + v) : 0.0);
          return out_tol(t, ref[i], fp32);
        }));
      }
    }
  }
}

TEST_F(CnnOpsTest, BatchNormUpdateRunningSkippedWhenFoundInf) {
  const std::int64_t C = 70;
  for (int found : {0, 1}) {
    for (bool with_control : {true, false}) {
      if (found == 1 && !with_control) continue;
      SCOPED_TRACE(std::string(found ? "found_inf" : "finite") +
                   (with_control ? "" : " without control"));
      Twin bm(cpu(), gpu(), DType::F32, C), bi(cpu(), gpu(), DType::F32, C),
          rm(cpu(), gpu(), DType::F32, C), rv(cpu(), gpu(), DType::F32, C);
      bm.set(normal(C, 0.0f, 2.0f));
      bi.set(uniform(C, 0.2f, 3.0f));
      const std::vector<float> rm0 = rm.set(normal(C, 0.0f, 1.0f));
      const std::vector<float> rv0 = rv.set(uniform(C, 0.5f, 2.0f));
      TwinControl control(cpu(), gpu());
      StepControl c = control.cpu_value();
      c.found_inf = static_cast<float>(found);
      control.set(c);
      const StepControl* cc = with_control ? control.cpu() : nullptr;
      const StepControl* gc = with_control ? control.gpu() : nullptr;
      cpu().batch_norm_update_running(bm.cpu(), bi.cpu(), rm.cpu(), rv.cpu(), C, 0.1f, 4096, kBnEps,
                                      cc);
      gpu().batch_norm_update_running(bm.gpu(), bi.gpu(), rm.gpu(), rv.gpu(), C, 0.1f, 4096, kBnEps,
                                      gc);
      if (found == 1) {  // a skipped step: untouched on both
        EXPECT_TRUE(all_equal(rm0, rm.cpu_values()));
        EXPECT_TRUE(all_equal(rv0, rv.cpu_values()));
        EXPECT_TRUE(all_equal(rm0, rm.gpu_values()));
        EXPECT_TRUE(all_equal(rv0, rv.gpu_values()));
      } else {
        const std::vector<float> rmr = rm.cpu_values(), rvr = rv.cpu_values();
        EXPECT_FALSE(all_equal(rm0, rmr));
        EXPECT_TRUE(all_close(rmr, rm.gpu_values(),
                              [&](std::size_t i) { return kEps32 * std::fabs(rmr[i]); }));
        EXPECT_TRUE(all_close(rvr, rv.gpu_values(),
                              [&](std::size_t i) { return kEps32 * std::fabs(rvr[i]); }));
      }
    }
  }
}

// ---- pooling --------------------------------------------------------------------------------

struct PoolCase {
  std::int64_t N, H, W, C, R, S, stride_h, stride_w, pad_h, pad_w, offset;
  const char* what;
  PoolDesc desc() const {
    PoolDesc d;
    d.N = N;
    d.H = H;
    d.W = W;
    d.C = C;
    d.R = R;
    d.S = S;
    d.stride_h = stride_h;
    d.stride_w = stride_w;
    d.pad_h = pad_h;
    d.pad_w = pad_w;
    d.P = (H + 2 * pad_h - R) / stride_h + 1;
    d.Q = (W + 2 * pad_w - S) / stride_w + 1;
    return d;
  }
};

const PoolCase kPoolCases[] = {
    {2, 8, 8, 64, 2, 2, 2, 2, 0, 0, 0, "2x2 stride 2, packs"},
    {2, 8, 8, 64, 2, 2, 2, 2, 0, 0, 1, "2x2 stride 2, misaligned: scalar path"},
    {2, 9, 9, 3, 3, 3, 2, 2, 1, 1, 0, "3x3 stride 2 pad 1: overlapping windows"},
    {3, 6, 7, 5, 3, 2, 1, 2, 1, 0, 0, "3x2 stride (1, 2) pad (1, 0)"},
    {2, 8, 8, 16, 2, 2, 3, 3, 0, 0, 0, "stride 3 > window 2: uncovered inputs"},
    {1, 5, 6, 8, 3, 3, 1, 1, 2, 2, 0, "pad 2: windows mostly padding"},
    {4, 32, 32, 64, 3, 3, 2, 2, 1, 1, 0, "3x3 stride 2 pad 1 on 32x32x64"},
};

std::string pool_trace(DType t, const PoolCase& pc) {
  return dtype_trace(t) + " N " + std::to_string(pc.N) + " H " + std::to_string(pc.H) + " W " +
         std::to_string(pc.W) + " C " + std::to_string(pc.C) + " (" + pc.what + ")";
}

TEST_F(CnnOpsTest, MaxPoolForwardAndBackwardAreExact) {
  for (DType t : float_dtypes()) {
    for (const PoolCase& pc : kPoolCases) {
      for (bool ties : {true, false}) {
        SCOPED_TRACE(pool_trace(t, pc) + (ties ? " ties" : " normal with a NaN"));
        const PoolDesc d = pc.desc();
        const std::int64_t nx = d.N * d.H * d.W * d.C, ny = d.N * d.P * d.Q * d.C;
        Twin x(cpu(), gpu(), t, nx, pc.offset), y(cpu(), gpu(), t, ny, pc.offset);
        x.set(pool_input(nx, ties));
        y.poison();
        cpu().max_pool2d_forward(d, x.cpu(), y.cpu());
        gpu().max_pool2d_forward(d, x.gpu(), y.gpu());
        const std::vector<float> yr = y.cpu_values();
        EXPECT_TRUE(all_equal(yr, y.gpu_values()));
        y.set(yr);  // both backward passes read the same forward output
        for (bool acc : {false, true}) {
          SCOPED_TRACE(acc ? "backward accumulate" : "backward");
          Twin dy(cpu(), gpu(), t, ny, pc.offset), dx(cpu(), gpu(), t, nx, pc.offset);
          dy.set(normal(ny, 0.0f, 1.0f));
          if (acc) {
            dx.set(normal(nx, 0.0f, 1.0f));
          } else {
            dx.poison();
          }
          cpu().max_pool2d_backward(d, x.cpu(), y.cpu(), dy.cpu(), dx.cpu(), acc);
          gpu().max_pool2d_backward(d, x.gpu(), y.gpu(), dy.gpu(), dx.gpu(), acc);
          EXPECT_TRUE(all_equal(dx.cpu_values(), dx.gpu_values()));
        }
      }
    }
  }
}

TEST_F(CnnOpsTest, AvgPoolForwardAndBackwardAreExact) {
  for (DType t : float_dtypes()) {
    for (const PoolCase& pc : kPoolCases) {
      SCOPED_TRACE(pool_trace(t, pc));
      const PoolDesc d = pc.desc();
      const std::int64_t nx = d.N * d.H * d.W * d.C, ny = d.N * d.P * d.Q * d.C;
      Twin x(cpu(), gpu(), t, nx, pc.offset), y(cpu(), gpu(), t, ny, pc.offset);
      x.set(normal(nx, 0.0f, 2.0f));
      y.poison();
      cpu().avg_pool2d_forward(d, x.cpu(), y.cpu());
      gpu().avg_pool2d_forward(d, x.gpu(), y.gpu());
      EXPECT_TRUE(all_equal(y.cpu_values(), y.gpu_values()));
      for (bool acc : {false, true}) {
        SCOPED_TRACE(acc ? "backward accumulate" : "backward");
        Twin dy(cpu(), gpu(), t, ny, pc.offset), dx(cpu(), gpu(), t, nx, pc.offset);
        dy.set(normal(ny, 0.0f, 1.0f));
        if (acc) {
          dx.set(normal(nx, 0.0f, 1.0f));
        } else {
          dx.poison();
        }
        cpu().avg_pool2d_backward(d, dy.cpu(), dx.cpu(), acc);
        gpu().avg_pool2d_backward(d, dy.gpu(), dx.gpu(), acc);
        EXPECT_TRUE(all_equal(dx.cpu_values(), dx.gpu_values()));
      }
    }
  }
}

TEST_F(CnnOpsTest, GlobalAvgPoolForwardAndBackward) {
  struct Shape {
    std::int64_t n, pixels, channels, offset;
  };
  for (DType t : float_dtypes()) {
    for (const Shape& s : {Shape{3, 16, 512, 0}, Shape{5, 49, 3, 0}, Shape{2, 1, 8, 0},
                           Shape{4, 1024, 64, 0}, Shape{3, 16, 64, 1}, Shape{256, 16, 512, 0}}) {
      SCOPED_TRACE(dtype_trace(t) + " n " + std::to_string(s.n) + " pixels " +
                   std::to_string(s.pixels) + " channels " + std::to_string(s.channels) +
                   " offset " + std::to_string(s.offset));
      const std::int64_t nx = s.n * s.pixels * s.channels, ny = s.n * s.channels;
      const auto C = static_cast<std::size_t>(s.channels), P = static_cast<std::size_t>(s.pixels);
      Twin x(cpu(), gpu(), t, nx, s.offset), y(cpu(), gpu(), t, ny, s.offset);
      const std::vector<float> xv = x.set(normal(nx, 1.0f, 2.0f));
      y.poison();
      cpu().global_avg_pool_forward(x.cpu(), y.cpu(), s.n, s.pixels, s.channels);
      gpu().global_avg_pool_forward(x.gpu(), y.gpu(), s.n, s.pixels, s.channels);
      const std::vector<float> yr = y.cpu_values();
      EXPECT_TRUE(all_close(yr, y.gpu_values(), [&](std::size_t o) {
        const std::size_t img = o / C, c = o % C;
        double sum_abs = 0.0;
        for (std::size_t p = 0; p < P; ++p) sum_abs += std::fabs(xv[(img * P + p) * C + c]);
        const double pixels = static_cast<double>(s.pixels);
        return out_tol(t, yr[o], (2.0 * pixels + 2.0) * kEps32 * sum_abs / pixels);
      }));
      for (bool acc : {false, true}) {
        SCOPED_TRACE(acc ? "backward accumulate" : "backward");
        Twin dy(cpu(), gpu(), t, ny, s.offset), dx(cpu(), gpu(), t, nx, s.offset);
        dy.set(normal(ny, 0.0f, 1.0f));
        if (acc) {
          dx.set(normal(nx, 0.0f, 1.0f));
        } else {
          dx.poison();
        }
        cpu().global_avg_pool_backward(dy.cpu(), dx.cpu(), s.n, s.pixels, s.channels, acc);
        gpu().global_avg_pool_backward(dy.gpu(), dx.gpu(), s.n, s.pixels, s.channels, acc);
        EXPECT_TRUE(all_equal(dx.cpu_values(), dx.gpu_values()));
      }
    }
  }
}

// ---- determinism ----------------------------------------------------------------------------

// Every op with a reduction, run twice eagerly and twice more as a captured step (capture, then
// a replay): the same bits each time, so the reductions have a fixed order and the completion
// counters are back at zero after every launch.
TEST_F(CnnOpsTest, ReductionsGiveTheSameBitsEveryRunAndUnderGraphReplay) {
  for (DType t : float_dtypes()) {
    for (const BnShape& s :
         {BnShape{20000, 192, 0, "several columns and chunks"}, BnShape{3001, 5, 0, "scalar"}}) {
      SCOPED_TRACE(bn_trace(t, s, DType::F32));
      const std::int64_t n = s.rows * s.channels, C = s.channels;
      Twin x(cpu(), gpu(), t, n), y(cpu(), gpu(), t, n), dy(cpu(), gpu(), t, n),
          dx(cpu(), gpu(), t, n);
      Twin gamma(cpu(), gpu(), DType::F32, C), beta(cpu(), gpu(), DType::F32, C),
          mean(cpu(), gpu(), DType::F32, C), invstd(cpu(), gpu(), DType::F32, C),
          dgamma(cpu(), gpu(), DType::F32, C), dbeta(cpu(), gpu(), DType::F32, C);
      x.set(bn_input(s.rows, C));
      dy.set(normal(n, 0.0f, 1.0f));
      gamma.set(normal(C, 1.0f, 0.5f));
      beta.set(normal(C, 0.0f, 0.5f));
      // Global average over 100 "pixels" of the same data, and a max pool over it as an image.
      const std::int64_t images = s.rows / 100;
      PoolDesc pd;
      pd.N = 1;
      pd.H = s.rows / 40;
      pd.W = 40;
      pd.C = C;
      pd.R = pd.S = 3;
      pd.stride_h = pd.stride_w = 2;
      pd.pad_h = pd.pad_w = 1;
      pd.P = (pd.H + 2 - 3) / 2 + 1;
      pd.Q = (pd.W + 2 - 3) / 2 + 1;
      Twin gy(cpu(), gpu(), t, images * C), py(cpu(), gpu(), t, pd.P * pd.Q * C),
          pdy(cpu(), gpu(), t, pd.P * pd.Q * C), pdx(cpu(), gpu(), t, pd.H * pd.W * C);
      pdy.set(normal(pd.P * pd.Q * C, 0.0f, 1.0f));
      const auto ops = [&] {
        gpu().batch_norm_forward_training(x.gpu(), gamma.gpu(), beta.gpu(), y.gpu(), mean.gpu(),
                                          invstd.gpu(), s.rows, C, kBnEps, false);
        gpu().batch_norm_backward(x.gpu(), dy.gpu(), gamma.gpu(), mean.gpu(), invstd.gpu(),
                                  dx.gpu(), dgamma.gpu(), dbeta.gpu(), s.rows, C, false, CBuf());
        gpu().global_avg_pool_forward(x.gpu(), gy.gpu(), images, 100, C);
        gpu().max_pool2d_forward(pd, x.gpu(), py.gpu());
        gpu().max_pool2d_backward(pd, x.gpu(), py.gpu(), pdy.gpu(), pdx.gpu(), false);
      };
      Twin* outputs[] = {&y, &mean, &invstd, &dx, &dgamma, &dbeta, &gy, &py, &pdx};
      std::vector<std::vector<float>> first;
      for (int run = 0; run < 4; ++run) {
        SCOPED_TRACE("run " + std::to_string(run));
        for (Twin* o : outputs) o->poison();
        if (run < 2) {
          ops();
        } else {
          gpu().run_step("cnn ops " + bn_trace(t, s, DType::F32), ops);
        }
        for (std::size_t k = 0; k < std::size(outputs); ++k) {
          const std::vector<float> v = outputs[k]->gpu_values();
          EXPECT_TRUE(all_written(v)) << "output " << k;
          if (run == 0) {
            first.push_back(v);
          } else {
            EXPECT_TRUE(all_equal(first[k], v)) << "output " << k;
          }
        }
      }
    }
  }
}

TEST_F(CnnOpsTest, BadArgumentsThrow) {
  Twin a(cpu(), gpu(), DType::F32, 64), b(cpu(), gpu(), DType::F16, 64);
  Twin s(cpu(), gpu(), DType::F16, 8);
  // Mismatched x / y dtypes, and f16 statistics (the CUDA backend keeps them in f32).
  EXPECT_THROW(gpu().batch_norm_forward_training(a.gpu(), a.gpu(), a.gpu(), b.gpu(), a.gpu(),
                                                 a.gpu(), 8, 8, kBnEps, false),
               Error);
  EXPECT_THROW(gpu().batch_norm_forward_training(a.gpu(), a.gpu(), a.gpu(), a.gpu(), s.gpu(),
                                                 a.gpu(), 8, 8, kBnEps, false),
               Error);
  PoolDesc d;
  d.N = 1;
  d.H = d.W = 4;
  d.C = 4;
  d.R = d.S = 2;
  d.stride_h = 0;  // a zero stride
  d.P = d.Q = 2;
  EXPECT_THROW(gpu().max_pool2d_forward(d, a.gpu(), a.gpu()), Error);
  EXPECT_THROW(gpu().global_avg_pool_forward(a.gpu(), b.gpu(), 1, 8, 8), Error);
}

}  // namespace
}  // namespace mixtrain::cuda_test
