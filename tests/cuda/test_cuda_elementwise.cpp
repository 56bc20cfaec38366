// Element-wise and row ops of the CUDA backend against the CPU backend, in every training dtype.
//
// Tolerances. Both backends load the same stored inputs, compute in fp32 and round once, so they
// differ only where the fp32 arithmetic differs:
//  - exact ops (fill, convert, add, dropout, identity/ReLU/leaky ReLU) do the same IEEE operations
//    and must agree bit for bit; with accumulate, `prev + v` may be contracted into an FMA on one
//    side, which changes the fp32 sum by at most one rounding (eps32 * |result|) before the final
//    rounding to the output dtype;
//  - transcendental functions: CUDA's expf/tanhf/erff/expm1f are within 2 ulp, glibc's within 1,
//    and a composite formula (GELU's 1 + erf, tanh's 1 - t^2) turns that into an absolute error
//    of a few eps32 times the magnitude of its terms; we allow 16 eps32 times that magnitude;
//  - reductions (softmax) add in a different order: at most (cols + 4) eps32 relative;
//  - the final rounding to the output dtype can then flip by one ulp of the output, at most
//    eps_out * |value| (or the smallest subnormal near zero).
#include <algorithm>
#include <cmath>

#include "cuda_test_util.hpp"
#include "ops/counter_rng.hpp"

namespace mixtrain::cuda_test {
namespace {

// One output ulp plus the absolute fp32 error `fp32_err` carried into the rounding.
double out_tol(DType t, float ref, double fp32_err) {
  return dtype_epsilon(t) * std::fabs(static_cast<double>(ref)) +
         fp32_err * (1.0 + dtype_epsilon(t)) + dtype_min_subnormal(t);
}

using ElementwiseTest = CudaVsCpu;

TEST_F(ElementwiseTest, FillEveryDtype) {
  const std::int64_t n = 1000 + uniform_int(0, 37);
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::I32}) {
    SCOPED_TRACE(dtype_trace(t));
    Twin x(cpu(), gpu(), t, n);
    x.poison();
    const float value = t == DType::I32 ? 7.0f : uniform(1, -3, 3)[0];
    cpu().fill(x.cpu(), n, value);
    gpu().fill(x.gpu(), n, value);
    EXPECT_TRUE(all_equal(x.cpu_values(), x.gpu_values()));
  }
}

TEST_F(ElementwiseTest, ConvertAllPairsWithAndWithoutAccumulate) {
  for (DType s : float_dtypes()) {
    for (DType d : float_dtypes()) {
      for (bool acc : {false, true}) {
        for (std::int64_t offset : {0, 1}) {  // aligned (vector path) and misaligned (scalar)
          SCOPED_TRACE(std::string(dtype_name(s)) + " -> " + std::string(dtype_name(d)) +
                       (acc ? " accumulate" : "") + " offset " + std::to_string(offset));
          const std::int64_t n = 4096 + uniform_int(1, 15);
          Twin src(cpu(), gpu(), s, n, offset), dst(cpu(), gpu(), d, n, offset);
          // Values beyond fp16's range overflow to inf in both.
          std::vector<float> v = normal(n, 0.0f, 100.0f);
          v[3] = 70000.0f;
          v[5] = 1e-6f;  // fp16 subnormal
          src.set(v);
          if (acc) {
            dst.set(normal(n, 0.0f, 1.0f));
          } else {
            dst.poison();
          }
          cpu().convert(src.cpu(), dst.cpu(), n, acc);
          gpu().convert(src.gpu(), dst.gpu(), n, acc);
          // One fp32 addition on each side: bit-identical.
          EXPECT_TRUE(all_equal(dst.cpu_values(), dst.gpu_values()));
        }
      }
    }
  }
}

TEST_F(ElementwiseTest, AddIsExact) {
  for (DType t : float_dtypes()) {
    SCOPED_TRACE(dtype_trace(t));
    const std::int64_t n = 5000 + uniform_int(0, 9);
    Twin a(cpu(), gpu(), t, n), b(cpu(), gpu(), t, n), y(cpu(), gpu(), t, n);
    a.set(normal(n, 0, 2));
    b.set(normal(n, 0, 2));
    y.poison();
    cpu().add(a.cpu(), b.cpu(), y.cpu(), n);
    gpu().add(a.gpu(), b.gpu(), y.gpu(), n);
    EXPECT_TRUE(all_equal(y.cpu_values(), y.gpu_values()));
  }
}

struct ActCase {
  Activation act;
  float alpha;
  const char* name;
  bool exact;  // the same IEEE operations on both sides (no libm call)
};

const ActCase kActs[] = {
    {Activation::Identity, 0.0f, "identity", true},    {Activation::ReLU, 0.0f, "relu", true},
    {Activation::LeakyReLU, 0.1f, "leaky_relu", true}, {Activation::ELU, 1.3f, "elu", false},
    {Activation::Sigmoid, 0.0f, "sigmoid", false},     {Activation::Tanh, 0.0f, "tanh", false},
    {Activation::Swish, 0.0f, "swish", false},         {Activation::GELU, 0.0f, "gelu", false},
    {Activation::GELUTanh, 0.0f, "gelu_tanh", false},
};

TEST_F(ElementwiseTest, ActivationForward) {
  for (const ActCase& ac : kActs) {
    for (DType t : float_dtypes()) {
      SCOPED_TRACE(std::string(ac.name) + " " + dtype_trace(t));
      const std::int64_t n = 3000 + uniform_int(0, 13);
      Twin x(cpu(), gpu(), t, n), y(cpu(), gpu(), t, n);
      const std::vector<float> xv = x.set(normal(n, 0.0f, 3.0f));
      y.poison();
      cpu().activation_forward(ac.act, ac.alpha, x.cpu(), y.cpu(), n);
      gpu().activation_forward(ac.act, ac.alpha, x.gpu(), y.gpu(), n);
      const std::vector<float> ref = y.cpu_values(), got = y.gpu_values();
      if (ac.exact) {
        EXPECT_TRUE(all_equal(ref, got));
      } else {
        // The fp32 value differs by at most 16 eps32 times the magnitude of its terms (|x| and
        // |alpha| for ELU's saturation, 1 for sigmoid and tanh).
        EXPECT_TRUE(all_close(ref, got, [&](std::size_t i) {
          const double mag = std::fabs(xv[i]) + std::fabs(ac.alpha) + 1.0;
          return out_tol(t, ref[i], 16.0 * kEps32 * mag);
        }));
      }
    }
  }
}

TEST_F(ElementwiseTest, ActivationBackwardWithAndWithoutAccumulate) {
  for (const ActCase& ac : kActs) {
    for (DType t : float_dtypes()) {
      for (bool acc : {false, true}) {
        for (bool with_y : {true, false}) {
          SCOPED_TRACE(std::string(ac.name) + " " + dtype_trace(t) + (acc ? " accumulate" : "") +
                       (with_y ? "" : " without y"));
          const std::int64_t n = 2048 + uniform_int(1, 7);
          Twin x(cpu(), gpu(), t, n), y(cpu(), gpu(), t, n), dy(cpu(), gpu(), t, n),
              dx(cpu(), gpu(), t, n);
          const std::vector<float> xv = x.set(normal(n, 0.0f, 3.0f));
          cpu().activation_forward(ac.act, ac.alpha, x.cpu(), y.cpu(), n);
          gpu().activation_forward(ac.act, ac.alpha, x.gpu(), y.gpu(), n);
          const std::vector<float> dyv = dy.set(normal(n, 0.0f, 1.0f));
          std::vector<float> prev(static_cast<std::size_t>(n), 0.0f);
          if (acc) {
            prev = dx.set(normal(n, 0.0f, 1.0f));
          } else {
            dx.poison();
          }
          const CBuf cy = with_y ? CBuf(y.cpu()) : CBuf();
          const CBuf gy = with_y ? CBuf(y.gpu()) : CBuf();
          cpu().activation_backward(ac.act, ac.alpha, x.cpu(), cy, dy.cpu(), dx.cpu(), n, acc);
          gpu().activation_backward(ac.act, ac.alpha, x.gpu(), gy, dy.gpu(), dx.gpu(), n, acc);
          const std::vector<float> ref = dx.cpu_values(), got = dx.gpu_values();
          if (ac.exact && !acc) {
            EXPECT_TRUE(all_equal(ref, got));
          } else {
            // The derivative's terms are O(1 + |x|) (times |alpha| for ELU) with a few ulps each:
            // 16 eps32 * |dy| * (1 + |x|) * (1 + |alpha|); with accumulate one more fp32
            // rounding of the sum (or an FMA), eps32 * (|prev| + |v|).
            EXPECT_TRUE(all_close(ref, got, [&](std::size_t i) {
              const double v = std::fabs(dyv[i]) * (1.0 + std::fabs(xv[i])) * (1.0 + ac.alpha);
              const double fp32 = (ac.exact ? 0.0 : 16.0 * kEps32 * v) +
                                  (acc ? kEps32 * (std::fabs(prev[i]) + v) : 0.0);
              return out_tol(t, ref[i], fp32);
            }));
          }
        }
      }
    }
  }
}

TEST_F(ElementwiseTest, DropoutSameMaskAsCpu) {
  for (DType t : float_dtypes()) {
    for (std::int64_t offset : {0, 1}) {
      SCOPED_TRACE(dtype_trace(t) + " offset " + std::to_string(offset));
      const std::int64_t n = 10000 + uniform_int(0, 99);
      const float rate = 0.1f + 0.5f * uniform(1, 0, 1)[0];
      const auto salt = static_cast<std::uint64_t>(uniform_int(0, 1 << 30));
      TwinControl control(cpu(), gpu());
      StepControl c{};
      c.seed = static_cast<std::uint64_t>(uniform_int(0, 1 << 30)) << 20;
      c.iteration = uniform_int(0, 1000);
      control.set(c);
      Twin x(cpu(), gpu(), t, n, offset), y(cpu(), gpu(), t, n, offset);
      x.set(normal(n, 0, 1));
      y.poison();
      cpu().dropout_forward(rate, salt, x.cpu(), y.cpu(), n, control.cpu());
      gpu().dropout_forward(rate, salt, x.gpu(), y.gpu(), n, control.gpu());
      const std::vector<float> ref = y.cpu_values(), got = y.gpu_values();
      EXPECT_TRUE(all_equal(ref, got));  // integer mask, one multiplication: exact
      const auto dropped = std::count(got.begin(), got.end(), 0.0f);
      EXPECT_NEAR(static_cast<double>(dropped) / static_cast<double>(n), rate, 0.05);

      for (bool acc : {false, true}) {
        Twin dy(cpu(), gpu(), t, n, offset), dx(cpu(), gpu(), t, n, offset);
        const std::vector<float> dyv = dy.set(normal(n, 0, 1));
        std::vector<float> prev(static_cast<std::size_t>(n), 0.0f);
        if (acc) {
          prev = dx.set(normal(n, 0, 1));
        } else {
          dx.poison();
        }
        cpu().dropout_backward(rate, salt, dy.cpu(), dx.cpu(), n, control.cpu(), acc);
        gpu().dropout_backward(rate, salt, dy.gpu(), dx.gpu(), n, control.gpu(), acc);
        const std::vector<float> bref = dx.cpu_values(), bgot = dx.gpu_values();
        // Exact without accumulate; with it, prev + dy * scale may be one FMA on one side.
        EXPECT_TRUE(all_close(bref, bgot, [&](std::size_t i) {
          return acc ? out_tol(t, bref[i],
                               2.0 * kEps32 *
                                   (std::fabs(prev[i]) + 2.0 * std::fabs(dyv[i]) / (1.0 - rate)))
                     : 0.0;
        }));
      }
    }
  }
}

TEST_F(ElementwiseTest, DropoutMaskChangesWithIterationReadOnDevice) {
  const std::int64_t n = 4096;
  TwinControl control(cpu(), gpu());
  Twin x(cpu(), gpu(), DType::F32, n), y1(cpu(), gpu(), DType::F32, n),
      y2(cpu(), gpu(), DType::F32, n);
  x.set(uniform(n, 1, 2));
  gpu().dropout_forward(0.5f, 3, x.gpu(), y1.gpu(), n, control.gpu());
  StepControl c = control.gpu_value();
  c.iteration += 1;
  control.set(c);
  gpu().dropout_forward(0.5f, 3, x.gpu(), y2.gpu(), n, control.gpu());
  cpu().dropout_forward(0.5f, 3, x.cpu(), y2.cpu(), n, control.cpu());
  EXPECT_NE(y1.gpu_values(), y2.gpu_values());
  EXPECT_TRUE(all_equal(y2.cpu_values(), y2.gpu_values()));
}

TEST_F(ElementwiseTest, SoftmaxForwardAndBackward) {
  for (DType t : float_dtypes()) {
    for (std::int64_t cols : {1, 10, 33, 300}) {
      SCOPED_TRACE(dtype_trace(t) + " cols " + std::to_string(cols));
      const std::int64_t rows = 17 + uniform_int(0, 5);
      const std::int64_t n = rows * cols;
      Twin x(cpu(), gpu(), t, n), y(cpu(), gpu(), t, n);
      x.set(normal(n, 0, 4));
      y.poison();
      cpu().softmax_forward(x.cpu(), y.cpu(), rows, cols);
      gpu().softmax_forward(x.gpu(), y.gpu(), rows, cols);
      const std::vector<float> yv = y.cpu_values(), yg = y.gpu_values();
      // Sum of cols exponentials in a different order, expf within 2 ulp, one division:
      // (cols + 8) eps32 relative before the rounding to the output.
      const double rel = (static_cast<double>(cols) + 8.0) * kEps32;
      EXPECT_TRUE(all_close(
          yv, yg, [&](std::size_t i) { return out_tol(t, yv[i], rel * std::fabs(yv[i])); }));

      for (bool acc : {false, true}) {
        SCOPED_TRACE(acc ? "backward accumulate" : "backward");
        Twin dy(cpu(), gpu(), t, n), dx(cpu(), gpu(), t, n);
        const std::vector<float> dyv = dy.set(normal(n, 0, 1));
        std::vector<float> prev(static_cast<std::size_t>(n), 0.0f);
        if (acc) {
          prev = dx.set(normal(n, 0, 1));
        } else {
          dx.poison();
        }
        // Both read the CPU's forward output, so only the backward arithmetic differs.
        y.set(yv);
        cpu().softmax_backward(y.cpu(), dy.cpu(), dx.cpu(), rows, cols, acc);
        gpu().softmax_backward(y.gpu(), dy.gpu(), dx.gpu(), rows, cols, acc);
        const std::vector<float> ref = dx.cpu_values(), got = dx.gpu_values();
        // dot = sum y dy differs by (cols + 2) eps32 sum |y dy|; dx = y (dy - dot) adds two
        // roundings: |y| ((cols + 4) eps32 sum|y dy| + 2 eps32 (|dy| + |dot|)), plus the
        // accumulate rounding eps32 (|prev| + |v|).
        EXPECT_TRUE(all_close(ref, got, [&](std::size_t i) {
          const std::size_t r = i / static_cast<std::size_t>(cols);
          double sum_abs = 0.0;
          for (std::int64_t c = 0; c < cols; ++c) {
            const std::size_t k = r * static_cast<std::size_t>(cols) + static_cast<std::size_t>(c);
            sum_abs += std::fabs(static_cast<double>(yv[k]) * dyv[k]);
          }
          const double v = std::fabs(yv[i]) * (std::fabs(dyv[i]) + sum_abs);
          const double fp32 = (static_cast<double>(cols) + 8.0) * kEps32 * v +
                              (acc ? kEps32 * (std::fabs(prev[i]) + v) : 0.0);
          return out_tol(t, ref[i], fp32);
        }));
      }
    }
  }
}

TEST_F(ElementwiseTest, BiasGradColumnSums) {
  for (DType t : float_dtypes()) {
    for (std::int64_t rows : {1, 64, 1000}) {  // 1000 rows: several chunks and the combine pass
      for (bool acc : {false, true}) {
        const std::int64_t cols = rows == 1000 ? 77 : 10 + uniform_int(0, 40);
        SCOPED_TRACE(dtype_trace(t) + " rows " + std::to_string(rows) + " cols " +
                     std::to_string(cols) + (acc ? " accumulate" : ""));
        Twin dy(cpu(), gpu(), t, rows * cols), db(cpu(), gpu(), DType::F32, cols);
        const std::vector<float> g = dy.set(normal(rows * cols, 0, 1));
        std::vector<float> prev(static_cast<std::size_t>(cols), 0.0f);
        if (acc) {
          prev = db.set(normal(cols, 0, 1));
        } else {
          db.poison();
        }
        cpu().bias_grad(dy.cpu(), db.cpu(), rows, cols, acc);
        gpu().bias_grad(dy.gpu(), db.gpu(), rows, cols, acc);
        // Two fp32 sums of `rows` terms in different orders: each within rows * eps32 * sum|dy|
        // of the exact sum; the accumulate adds one rounding.
        EXPECT_TRUE(all_close(db.cpu_values(), db.gpu_values(), [&](std::size_t c) {
          double sum_abs = 0.0;
          for (std::int64_t r = 0; r < rows; ++r) {
            sum_abs += std::fabs(g[static_cast<std::size_t>(r * cols) + c]);
          }
          return 2.0 * static_cast<double>(rows) * kEps32 * sum_abs +
                 2.0 * kEps32 * (std::fabs(prev[c]) + sum_abs);
        }));
      }
    }
  }
}

// The fused pass against the CPU's two ops: dx as activation_backward gives it (bit-identical
// for ReLU) and the bias gradient as the column sums of the stored dx; in place (dx = x) too.
TEST_F(ElementwiseTest, ActivationBackwardBiasGradMatchesTheTwoOps) {
  for (const ActCase& ac : {kActs[1], kActs[8]}) {  // relu, gelu_tanh
    for (DType t : float_dtypes()) {
      for (std::int64_t rows : {1, 64, 1000}) {  // 64, 1000 rows: several chunks
        // 37 columns: element by element; 544: 16-byte packs, and a last tile partly filled.
        for (std::int64_t cols : {37, 544}) {
          for (bool in_place : {false, true}) {
            SCOPED_TRACE(std::string(ac.name) + " " + dtype_trace(t) + " rows " +
                         std::to_string(rows) + " cols " + std::to_string(cols) +
                         (in_place ? " in place" : ""));
            const std::int64_t n = rows * cols;
            Twin x(cpu(), gpu(), t, n), y(cpu(), gpu(), t, n), dy(cpu(), gpu(), t, n),
                dx(cpu(), gpu(), t, n), db(cpu(), gpu(), DType::F32, cols);
            const std::vector<float> xv = x.set(normal(n, 0.0f, 3.0f));
            cpu().activation_forward(ac.act, ac.alpha, x.cpu(), y.cpu(), n);
            gpu().activation_forward(ac.act, ac.alpha, x.gpu(), y.gpu(), n);
            const std::vector<float> dyv = dy.set(normal(n, 0.0f, 1.0f));
            dx.poison();
            db.poison();
            const Twin& out = in_place ? x : dx;
            cpu().activation_backward_bias_grad(ac.act, ac.alpha, x.cpu(), y.cpu(), dy.cpu(),
                                                out.cpu(), db.cpu(), rows, cols);
            gpu().activation_backward_bias_grad(ac.act, ac.alpha, x.gpu(), y.gpu(), dy.gpu(),
                                                out.gpu(), db.gpu(), rows, cols);
            const std::vector<float> ref = out.cpu_values(), got = out.gpu_values();
            if (ac.exact) {
              EXPECT_TRUE(all_equal(ref, got));
            } else {
              // As ActivationBackwardWithAndWithoutAccumulate: 16 eps32 * |dy| * (1 + |x|).
              EXPECT_TRUE(all_close(ref, got, [&](std::size_t i) {
                return out_tol(t, ref[i],
                               16.0 * kEps32 * std::fabs(dyv[i]) * (1.0 + std::fabs(xv[i])));
              }));
            }
            // Column sums of the stored dx (the CPU's values; the GPU's differ only as above):
            // two fp32 sums in different orders, rows * eps32 * sum |dx| each, plus the GPU's dx
            // differences summed.
            const std::vector<float> dbr = db.cpu_values(), dbg = db.gpu_values();
            EXPECT_TRUE(all_close(dbr, dbg, [&](std::size_t c) {
              double sum_abs = 0.0, diff = 0.0;
              for (std::int64_t r = 0; r < rows; ++r) {
                const std::size_t i = static_cast<std::size_t>(r * cols) + c;
                sum_abs += std::fabs(ref[i]);
                diff += std::fabs(static_cast<double>(ref[i]) - got[i]);
              }
              return 2.0 * static_cast<double>(rows) * kEps32 * sum_abs + diff;
            }));
          }
        }
      }
    }
  }
}

TEST_F(ElementwiseTest, MismatchedDtypesThrowLikeTheCpu) {
  Twin a(cpu(), gpu(), DType::F32, 8), b(cpu(), gpu(), DType::F16, 8);
  EXPECT_THROW(cpu().add(a.cpu(), b.cpu(), a.cpu(), 8), Error);
  EXPECT_THROW(gpu().add(a.gpu(), b.gpu(), a.gpu(), 8), Error);
  EXPECT_THROW(gpu().activation_forward(Activation::ReLU, 0, a.gpu(), b.gpu(), 8), Error);
}

}  // namespace
}  // namespace mixtrain::cuda_test
