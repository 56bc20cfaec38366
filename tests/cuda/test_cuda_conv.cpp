// conv2d on CUDA (cuDNN) against the CPU backend (im2col + OpenBLAS), forward and both backward
// directions, in every training dtype, over strides, padding, dilation, groups, non-square
// kernels, odd channel counts and the optional bias.
//
// Tolerances. Both sides read the same stored operands; their products are exact in fp32 (for
// fp16/bf16 operands) and both sum them in fp32, in different orders and, on the GPU, possibly
// through a transform (Winograd) that the algorithm search picked. So an output differs by at
// most its final rounding, eps_out * |ref|, plus an fp32 summation error bounded by
// L * eps32 * sum |a_i b_i| over the L products that form it (the sum of magnitudes is computed
// by running the CPU op on |a| and |b|). The fp16/bf16 weight gradient is rounded to the tensor
// dtype by cuDNN before it is widened to fp32, so it gets one more ulp of that dtype. We allow
// twice that bound; an element computed from a wrong tap or a wrong padding is off by a whole
// product, far above it.
#include <cmath>
#include <string>

#include "cuda_test_util.hpp"

namespace mixtrain::cuda_test {
namespace {

ConvDesc make_conv(std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c, std::int64_t k,
                   std::int64_t r, std::int64_t s, std::int64_t stride_h, std::int64_t stride_w,
                   std::int64_t pad_h, std::int64_t pad_w, std::int64_t dil, std::int64_t groups) {
  ConvDesc d;
  d.N = n;
  d.H = h;
  d.W = w;
  d.C = c;
  d.K = k;
  d.R = r;
  d.S = s;
  d.stride_h = stride_h;
  d.stride_w = stride_w;
  d.pad_h = pad_h;
  d.pad_w = pad_w;
  d.dilation_h = d.dilation_w = dil;
  d.groups = groups;
  d.P = (h + 2 * pad_h - dil * (r - 1) - 1) / stride_h + 1;
  d.Q = (w + 2 * pad_w - dil * (s - 1) - 1) / stride_w + 1;
  return d;
}

struct Case {
  const char* name;
  ConvDesc d;
};

std::vector<Case> cases() {
  return {
      {"3x3 pad 1", make_conv(2, 9, 9, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1)},
      {"1x1 stride 2 shortcut", make_conv(3, 8, 8, 16, 32, 1, 1, 2, 2, 0, 0, 1, 1)},
      {"3x3 stride 2 pad 1", make_conv(2, 10, 7, 16, 8, 3, 3, 2, 2, 1, 1, 1, 1)},
      {"dilation 2, 3 and 5 channels", make_conv(2, 11, 10, 3, 5, 3, 3, 1, 1, 2, 2, 2, 1)},
      {"groups 2", make_conv(2, 7, 7, 8, 12, 3, 3, 1, 1, 1, 1, 1, 2)},
      {"depthwise", make_conv(2, 6, 6, 8, 8, 3, 3, 1, 1, 1, 1, 1, 8)},
      {"3x1 stride 1x2", make_conv(2, 9, 12, 4, 8, 3, 1, 1, 2, 1, 0, 1, 1)},
  };
}

std::vector<float> absolute(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

// Allowed |gpu - cpu| for each element: see the comment at the top.
std::function<double(std::size_t)> conv_tol(const std::vector<float>& ref,
                                            const std::vector<float>& magnitude, std::int64_t terms,
                                            DType out, DType operands, bool rounded_twice = false) {
  return [&ref, &magnitude, terms, out, operands, rounded_twice](std::size_t i) {
    const double sum_error = static_cast<double>(terms) * kEps32 * magnitude[i];
    // A GPU bias, or a previous gradient, is added to the already rounded convolution: a second
    // rounding of up to the magnitude of the sum.
    const double scale = std::fabs(ref[i]) + (rounded_twice ? magnitude[i] : 0.0);
    const double rounding = (dtype_epsilon(out) + dtype_epsilon(operands)) * scale;
    return 2.0 * (sum_error + rounding + dtype_min_subnormal(operands));
  };
}

using ConvTest = CudaVsCpu;

TEST_F(ConvTest, ForwardMatchesCpu) {
  for (const Case& c : cases()) {
    for (DType t : float_dtypes()) {
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(std::string(c.name) + ", " + dtype_trace(t) + (with_bias ? ", bias" : ""));
        const ConvDesc& d = c.d;
        const std::int64_t nx = d.N * d.H * d.W * d.C, nw = d.K * d.R * d.S * (d.C / d.groups),
                           ny = d.N * d.P * d.Q * d.K;
        Twin x(cpu(), gpu(), t, nx), w(cpu(), gpu(), t, nw), y(cpu(), gpu(), t, ny);
        Twin bias(cpu(), gpu(), DType::F32, d.K);
        const std::vector<float> xv = x.set(normal(nx, 0, 1));
        const std::vector<float> wv = w.set(normal(nw, 0, 0.5f));
        bias.set(normal(d.K, 0, 1));
        y.poison();
        const CBuf b_cpu = with_bias ? CBuf(bias.cpu()) : CBuf(),
                   b_gpu = with_bias ? CBuf(bias.gpu()) : CBuf();
        cpu().conv2d_forward(d, x.cpu(), w.cpu(), b_cpu, y.cpu());
        gpu().conv2d_forward(d, x.gpu(), w.gpu(), b_gpu, y.gpu());
        gpu().synchronize();
        const std::vector<float> ref = y.cpu_values();
        // Sum of |x| |w| per output, from the CPU op on absolute values.
        Twin mag(cpu(), gpu(), DType::F32, ny);
        Twin x32(cpu(), gpu(), DType::F32, nx), w32(cpu(), gpu(), DType::F32, nw);
        x32.set(absolute(xv));
        w32.set(absolute(wv));
        cpu().conv2d_forward(d, x32.cpu(), w32.cpu(), CBuf(), mag.cpu());
        const std::vector<float> m = mag.cpu_values();
        EXPECT_TRUE(all_close(ref, y.gpu_values(),
                              conv_tol(ref, m, d.R * d.S * d.C / d.groups + 1, t, t, with_bias)));
      }
    }
  }
}

TEST_F(ConvTest, BackwardDataMatchesCpu) {
  for (const Case& c : cases()) {
    for (DType t : float_dtypes()) {
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(std::string(c.name) + ", " + dtype_trace(t) +
                     (accumulate ? ", accumulate" : ""));
        const ConvDesc& d = c.d;
        const std::int64_t nx = d.N * d.H * d.W * d.C, nw = d.K * d.R * d.S * (d.C / d.groups),
                           ny = d.N * d.P * d.Q * d.K;
        Twin dy(cpu(), gpu(), t, ny), w(cpu(), gpu(), t, nw), dx(cpu(), gpu(), t, nx);
        const std::vector<float> dyv = dy.set(normal(ny, 0, 1));
        const std::vector<float> wv = w.set(normal(nw, 0, 0.5f));
        std::vector<float> prev;
        if (accumulate) {
          prev = dx.set(normal(nx, 0, 1));
        } else {
          dx.poison();
        }
        cpu().conv2d_backward_data(d, dy.cpu(), w.cpu(), dx.cpu(), accumulate);
        gpu().conv2d_backward_data(d, dy.gpu(), w.gpu(), dx.gpu(), accumulate);
        gpu().synchronize();
        const std::vector<float> ref = dx.cpu_values();
        Twin mag(cpu(), gpu(), DType::F32, nx);
        Twin dy32(cpu(), gpu(), DType::F32, ny), w32(cpu(), gpu(), DType::F32, nw);
        dy32.set(absolute(dyv));
        w32.set(absolute(wv));
        cpu().conv2d_backward_data(d, dy32.cpu(), w32.cpu(), mag.cpu(), false);
        std::vector<float> m = mag.cpu_values();
        for (std::size_t i = 0; i < prev.size(); ++i) m[i] += std::fabs(prev[i]);
        // cuDNN rounds the product sum to the dtype before it adds the previous dx.
        EXPECT_TRUE(all_close(ref, dx.gpu_values(),
                              conv_tol(ref, m, d.R * d.S * d.K / d.groups + 1, t, t, accumulate)));
      }
    }
  }
}

TEST_F(ConvTest, BackwardFilterAndBiasMatchCpu) {
  for (const Case& c : cases()) {
    for (DType t : float_dtypes()) {
      SCOPED_TRACE(std::string(c.name) + ", " + dtype_trace(t));
      const ConvDesc& d = c.d;
      const std::int64_t nx = d.N * d.H * d.W * d.C, nw = d.K * d.R * d.S * (d.C / d.groups),
                         ny = d.N * d.P * d.Q * d.K;
      Twin x(cpu(), gpu(), t, nx), dy(cpu(), gpu(), t, ny);
      Twin dw(cpu(), gpu(), DType::F32, nw), db(cpu(), gpu(), DType::F32, d.K);
      const std::vector<float> xv = x.set(normal(nx, 0, 1));
      const std::vector<float> dyv = dy.set(normal(ny, 0, 1));
      dw.poison();
      db.poison();
      cpu().conv2d_backward_filter(d, x.cpu(), dy.cpu(), dw.cpu(), db.cpu());
      gpu().conv2d_backward_filter(d, x.gpu(), dy.gpu(), dw.gpu(), db.gpu());
      gpu().synchronize();
      const std::vector<float> ref = dw.cpu_values();
      Twin mag(cpu(), gpu(), DType::F32, nw);
      Twin x32(cpu(), gpu(), DType::F32, nx), dy32(cpu(), gpu(), DType::F32, ny);
      x32.set(absolute(xv));
      dy32.set(absolute(dyv));
      cpu().conv2d_backward_filter(d, x32.cpu(), dy32.cpu(), mag.cpu(), Buf());
      const std::vector<float> m = mag.cpu_values();
      // The weight gradient is rounded to the tensor dtype once on the GPU (see the top).
      EXPECT_TRUE(all_close(ref, dw.gpu_values(), conv_tol(ref, m, d.N * d.P * d.Q, t, t)));
      // The bias gradient: fp32 column sums on both sides.
      const std::vector<float> ref_b = db.cpu_values();
      std::vector<float> mag_b(static_cast<std::size_t>(d.K), 0.0f);
      for (std::size_t i = 0; i < dyv.size(); ++i) mag_b[i % d.K] += std::fabs(dyv[i]);
      EXPECT_TRUE(all_close(ref_b, db.gpu_values(),
                            conv_tol(ref_b, mag_b, d.N * d.P * d.Q, DType::F32, DType::F32)));
    }
  }
}

TEST_F(ConvTest, RepeatedRunsAreBitIdentical) {
  const ConvDesc d = make_conv(4, 16, 16, 32, 32, 3, 3, 1, 1, 1, 1, 1, 1);
  const std::int64_t nx = d.N * d.H * d.W * d.C, nw = d.K * d.R * d.S * d.C,
                     ny = d.N * d.P * d.Q * d.K;
  for (DType t : float_dtypes()) {
    SCOPED_TRACE(dtype_trace(t));
    Twin x(cpu(), gpu(), t, nx), w(cpu(), gpu(), t, nw), dy(cpu(), gpu(), t, ny);
    Twin dw(cpu(), gpu(), DType::F32, nw), dx(cpu(), gpu(), t, nx), y(cpu(), gpu(), t, ny);
    x.set(normal(nx, 0, 1));
    w.set(normal(nw, 0, 0.3f));
    dy.set(normal(ny, 0, 1));
    std::vector<float> first[3];
    for (int run = 0; run < 2; ++run) {
      y.poison();
      dx.poison();
      dw.poison();
      gpu().conv2d_forward(d, x.gpu(), w.gpu(), CBuf(), y.gpu());
      gpu().conv2d_backward_data(d, dy.gpu(), w.gpu(), dx.gpu(), false);
      gpu().conv2d_backward_filter(d, x.gpu(), dy.gpu(), dw.gpu(), Buf());
      gpu().synchronize();
      const std::vector<float> now[3] = {y.gpu_values(), dx.gpu_values(), dw.gpu_values()};
      for (int i = 0; i < 3; ++i) {
        if (run == 0) {
          first[i] = now[i];
          EXPECT_TRUE(all_written(now[i]));
        } else {
          EXPECT_TRUE(all_equal(first[i], now[i])) << "output " << i;
        }
      }
    }
  }
}

TEST_F(ConvTest, AsymmetricPaddingIsAClearError) {
  // "same" with a 2x2 kernel pads one row below and none above: cuDNN cannot express that.
  ConvDesc d = make_conv(1, 8, 8, 4, 4, 2, 2, 1, 1, 0, 0, 1, 1);
  d.P = d.Q = 8;
  Twin x(cpu(), gpu(), DType::F16, 8 * 8 * 4), w(cpu(), gpu(), DType::F16, 4 * 2 * 2 * 4);
  Twin y(cpu(), gpu(), DType::F16, 8 * 8 * 4);
  try {
    gpu().conv2d_forward(d, x.gpu(), w.gpu(), CBuf(), y.gpu());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("same padding on both sides"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
