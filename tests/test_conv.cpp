// The convolutional layers beyond their gradients: batch-norm running statistics and skipped
// steps, fp32 parameters in mixed precision, FP16/BF16 ops against fp32 on rounded operands,
// chunked convolution, shape errors, and a small CNN learning in every precision.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cpu/cpu_backend.hpp"
#include "core/half.hpp"
#include "mixtrain/mixtrain.hpp"
#include "train/plan.hpp"

namespace mixtrain {
namespace {

TrainerConfig cpu_config(Precision p = Precision::FP32) {
  TrainerConfig c;
  c.device = Device::CPU;
  c.precision = p;
  c.learning_rate = 1e-2f;
  c.seed = 3;
  return c;
}

std::vector<float> uniform(std::size_t n, std::uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Batch-norm running statistics

// Model weights() are the parameters followed by the persistent layer state: for one batch-norm
// layer, running_mean [C] then running_var [C].
std::vector<float> running_stats(Trainer& t) {
  const std::vector<float> w = t.weights();
  return {w.begin() + t.model().parameter_count(), w.end()};
}

Model small_cnn(std::int64_t batch) {
  return ModelBuilder({batch, 6, 6, 2})
      .conv2d(4, 3, {.padding = "same"})
      .batch_norm({.name = "bn"})
      .relu()
      .global_avg_pool()
      .dense(3)
      .compile();
}

TEST(BatchNormRunningStats, SkippedStepLeavesThemUntouched) {
  TrainerConfig c = cpu_config(Precision::FP16);
  c.loss_scale.initial = 16777216.0f;  // 2^24: d(loss * scale) overflows fp16 on the first step
  Trainer t(small_cnn(8), c);
  const std::vector<float> init = running_stats(t);
  ASSERT_EQ(init.size(), 8u);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(init[static_cast<std::size_t>(k)], 0.0f);      // running_mean
    EXPECT_EQ(init[static_cast<std::size_t>(k + 4)], 1.0f);  // running_var
  }
  const std::vector<float> x = uniform(8 * 6 * 6 * 2, 1);
  const std::vector<std::int32_t> y = {0, 1, 2, 0, 1, 2, 0, 1};
  auto r = t.train_batch(x.data(), {8, 6, 6, 2}, y.data(), {8});
  ASSERT_TRUE(r.skipped());
  EXPECT_EQ(running_stats(t), init);
  // The scale backs off until a step is clean; every skipped step leaves the statistics alone.
  int steps = 1;
  while (t.train_batch(x.data(), {8, 6, 6, 2}, y.data(), {8}).skipped()) {
    EXPECT_EQ(running_stats(t), init);
    ASSERT_LT(++steps, 20);
  }
  const std::vector<float> after = running_stats(t);
  for (std::size_t k = 0; k < after.size(); ++k) EXPECT_NE(after[k], init[k]) << k;
}

// On a clean step, running = 0.9 running + 0.1 batch with the unbiased variance (PyTorch).
TEST(BatchNormRunningStats, CleanStepFollowsPyTorchsRule) {
  const Model m = ModelBuilder({8, 3}).batch_norm().dense(2).compile();
  Trainer t(m, cpu_config());
  const std::vector<float> x = uniform(8 * 3, 2, -2.0f, 3.0f);
  const std::vector<std::int32_t> y = {0, 1, 0, 1, 0, 1, 1, 0};
  ASSERT_FALSE(t.train_batch(x.data(), {8, 3}, y.data(), {8}).skipped());
  const std::vector<float> s = running_stats(t);
  for (int c = 0; c < 3; ++c) {
    double mean = 0, var = 0;
    for (int r = 0; r < 8; ++r) mean += x[static_cast<std::size_t>(r * 3 + c)];
    mean /= 8;
    for (int r = 0; r < 8; ++r) var += std::pow(x[static_cast<std::size_t>(r * 3 + c)] - mean, 2);
    var /= 7;  // unbiased
    EXPECT_NEAR(s[static_cast<std::size_t>(c)], 0.1 * mean, 1e-6);
    EXPECT_NEAR(s[static_cast<std::size_t>(3 + c)], 0.9 + 0.1 * var, 1e-5);
  }
}

TEST(BatchNormRunningStats, InferenceUsesRunningStatistics) {
  for (Precision p : {Precision::FP32, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const Model m = ModelBuilder({4, 3}).batch_norm({.epsilon = 1e-3f}).compile();
    Trainer t(m, cpu_config(p));
    // gamma, beta, running_mean, running_var
    const std::vector<float> w = {2.0f, 0.5f,  -1.0f, 0.25f, -0.5f, 1.0f,
                                  1.0f, -2.0f, 0.5f,  4.0f,  0.25f, 1.0f};
    t.set_weights(w);
    const std::vector<float> x = uniform(12, 3, -3.0f, 3.0f);
    const std::vector<float> out = t.predict(x.data(), {4, 3});
    const double tol = p == Precision::FP32 ? 1e-5 : 2e-2;
    for (int r = 0; r < 4; ++r) {
      for (int c = 0; c < 3; ++c) {
        const auto i = static_cast<std::size_t>(r * 3 + c), k = static_cast<std::size_t>(c);
        const float xi = p == Precision::FP32 ? x[i] : round_to<bf16>(x[i]);
        const double want = (xi - w[6 + k]) / std::sqrt(w[9 + k] + 1e-3) * w[k] + w[3 + k];
        EXPECT_NEAR(out[i], want, tol * std::max(1.0, std::fabs(want))) << r << "," << c;
      }
    }
  }
}

// In mixed precision batch-norm reads fp32 gamma and beta (the master copy), other layers the
// FP16/BF16 working copy.
TEST(BatchNormParams, StayFp32InMixedPrecision) {
  const Model m = ModelBuilder({4, 5}).dense(3).batch_norm().compile();
  cpu::CpuBackend backend;
  PlanOptions o;
  o.policy = PrecisionPolicy::for_precision(Precision::FP16);
  Plan plan(m.graph(), backend, o);
  const auto& dense = plan.nodes[0].param_offsets;
  const auto& bn = plan.nodes[1].param_offsets;
  EXPECT_EQ(plan.param(dense[0]).dtype, DType::F16);
  EXPECT_EQ(plan.param(dense[1]).dtype, DType::F16);
  for (std::int64_t off : bn) {
    const CBuf b = plan.param(off);
    EXPECT_EQ(b.dtype, DType::F32);
    EXPECT_EQ(b.ptr, plan.master + off);
  }
}

// ---------------------------------------------------------------------------------------------
// FP16/BF16 ops equal the fp32 ops on the rounded operands, rounded once: the CPU backend widens
// to fp32, computes exactly what the fp32 path computes, and rounds once when storing.

template <typename T>
std::vector<T> to_low(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = store<T>(v[i]);
  return out;
}
template <typename T>
std::vector<float> rounded(const std::vector<float>& v) {
  std::vector<float> out(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) out[i] = round_to<T>(v[i]);
  return out;
}
template <typename T>
void expect_rounded_equal(const std::vector<T>& low, const std::vector<float>& f32,
                          const char* what) {
  ASSERT_EQ(low.size(), f32.size());
  int bad = 0;
  for (std::size_t i = 0; i < low.size(); ++i) {
    if (low[i].bits != store<T>(f32[i]).bits && bad++ < 5) {
      ADD_FAILURE() << what << "[" << i << "]: " << load(low[i]) << " vs fp32 " << f32[i];
    }
  }
}

template <typename T>
void check_low_precision(DType dt) {
  cpu::CpuBackend be;
  ConvDesc d;
  d.N = 3, d.H = 7, d.W = 6, d.C = 4, d.K = 6, d.R = 3, d.S = 2;
  d.stride_h = 2, d.pad_h = 1, d.pad_w = 1, d.dilation_w = 2, d.groups = 2;
  d.P = (7 + 2 - 3) / 2 + 1;
  d.Q = (6 + 1 - 3) / 1 + 1;  // bottom/right padding implied by P, Q
  const std::size_t nx = static_cast<std::size_t>(d.N * d.H * d.W * d.C);
  const std::size_t nw = static_cast<std::size_t>(d.K * d.R * d.S * d.C / d.groups);
  const std::size_t ny = static_cast<std::size_t>(d.N * d.P * d.Q * d.K);
  const std::vector<float> x = rounded<T>(uniform(nx, 1, -4, 4));
  const std::vector<float> w = rounded<T>(uniform(nw, 2));
  const std::vector<float> b = rounded<T>(uniform(static_cast<std::size_t>(d.K), 3));
  const std::vector<float> dy = rounded<T>(uniform(ny, 4, -8, 8));
  std::vector<T> xl = to_low<T>(x), wl = to_low<T>(w), bl = to_low<T>(b), dyl = to_low<T>(dy);
  auto lo = [&](std::vector<T>& v) { return Buf{v.data(), dt}; };
  auto f = [](std::vector<float>& v) { return Buf{v.data(), DType::F32}; };
  std::vector<float> x32 = x, w32 = w, b32 = b, dy32 = dy;

  std::vector<T> yl(ny);
  std::vector<float> y32(ny);
  be.conv2d_forward(d, lo(xl), lo(wl), lo(bl), lo(yl));
  be.conv2d_forward(d, f(x32), f(w32), f(b32), f(y32));
  expect_rounded_equal(yl, y32, "conv2d_forward");

  for (bool acc : {false, true}) {
    std::vector<T> dxl = to_low<T>(rounded<T>(uniform(nx, 5)));
    std::vector<float> dx32 = rounded<T>(uniform(nx, 5));
    be.conv2d_backward_data(d, lo(dyl), lo(wl), lo(dxl), acc);
    be.conv2d_backward_data(d, f(dy32), f(w32), f(dx32), acc);
    expect_rounded_equal(dxl, dx32,
                         acc ? "conv2d_backward_data (accumulate)" : "conv2d_backward_data");
  }
  std::vector<float> dwl(nw), dw32(nw), dbl(static_cast<std::size_t>(d.K)), db32(dbl.size());
  be.conv2d_backward_filter(d, lo(xl), lo(dyl), f(dwl), f(dbl));
  be.conv2d_backward_filter(d, f(x32), f(dy32), f(dw32), f(db32));
  // The weight gradient is the fp32 one rounded once to the tensor dtype (as cuDNN gives it).
  EXPECT_EQ(dwl, rounded<T>(dw32));
  EXPECT_EQ(dbl, db32);

  PoolDesc pd;
  pd.N = 3, pd.H = 7, pd.W = 6, pd.C = 4, pd.R = 3, pd.S = 2, pd.stride_h = 2, pd.stride_w = 2;
  pd.pad_h = 1, pd.P = 4, pd.Q = 3;
  const std::size_t np = static_cast<std::size_t>(pd.N * pd.P * pd.Q * pd.C);
  std::vector<T> pl(np), pdyl = to_low<T>(rounded<T>(uniform(np, 6))), pdxl(nx);
  std::vector<float> p32(np), pdy32 = rounded<T>(uniform(np, 6)), pdx32(nx);
  be.max_pool2d_forward(pd, lo(xl), lo(pl));
  be.max_pool2d_forward(pd, f(x32), f(p32));
  expect_rounded_equal(pl, p32, "max_pool2d_forward");
  be.max_pool2d_backward(pd, lo(xl), lo(pl), lo(pdyl), lo(pdxl), false);
  be.max_pool2d_backward(pd, f(x32), f(p32), f(pdy32), f(pdx32), false);
  expect_rounded_equal(pdxl, pdx32, "max_pool2d_backward");
  be.avg_pool2d_forward(pd, lo(xl), lo(pl));
  be.avg_pool2d_forward(pd, f(x32), f(p32));
  expect_rounded_equal(pl, p32, "avg_pool2d_forward");
  be.avg_pool2d_backward(pd, lo(pdyl), lo(pdxl), false);
  be.avg_pool2d_backward(pd, f(pdy32), f(pdx32), false);
  expect_rounded_equal(pdxl, pdx32, "avg_pool2d_backward");

  // Batch-norm over [N * H * W, C]; fp32 gamma and beta in both.
  const std::int64_t rows = d.N * d.H * d.W;
  std::vector<float> gamma = uniform(4, 7), beta = uniform(4, 8);
  std::vector<float> ml(4), il(4), m32(4), i32(4);
  std::vector<T> bnl(nx);
  std::vector<float> bn32(nx);
  be.batch_norm_forward_training(lo(xl), f(gamma), f(beta), lo(bnl), f(ml), f(il), rows, 4, 1e-5f,
                                 false);
  be.batch_norm_forward_training(f(x32), f(gamma), f(beta), f(bn32), f(m32), f(i32), rows, 4, 1e-5f,
                                 false);
  EXPECT_EQ(ml, m32);
  EXPECT_EQ(il, i32);
  expect_rounded_equal(bnl, bn32, "batch_norm_forward_training");
  std::vector<T> bdyl = to_low<T>(rounded<T>(uniform(nx, 9))), bdxl(nx);
  std::vector<float> bdy32 = rounded<T>(uniform(nx, 9)), bdx32(nx), gl(4), g32(4), btl(4), bt32(4);
  be.batch_norm_backward(lo(xl), lo(bdyl), f(gamma), f(ml), f(il), lo(bdxl), f(gl), f(btl), rows, 4,
                         false, CBuf());
  be.batch_norm_backward(f(x32), f(bdy32), f(gamma), f(m32), f(i32), f(bdx32), f(g32), f(bt32),
                         rows, 4, false, CBuf());
  expect_rounded_equal(bdxl, bdx32, "batch_norm_backward");
  EXPECT_EQ(gl, g32);
  EXPECT_EQ(btl, bt32);
}

TEST(ConvLowPrecision, Fp16EqualsFp32OfRoundedOperands) {
  check_low_precision<f16>(DType::F16);
}
TEST(ConvLowPrecision, Bf16EqualsFp32OfRoundedOperands) {
  check_low_precision<bf16>(DType::BF16);
}

// A conv output beyond fp16's range is inf (and flags the step), not a clamped value.
TEST(ConvLowPrecision, Fp16OverflowIsInf) {
  cpu::CpuBackend be;
  ConvDesc d;
  d.N = 1, d.H = 2, d.W = 2, d.C = 1, d.K = 1, d.R = 2, d.S = 2, d.P = 1, d.Q = 1;
  std::vector<f16> x(4, store<f16>(60000.0f)), w(4, store<f16>(1.0f)), y(1);
  be.conv2d_forward(d, CBuf(x.data(), DType::F16), CBuf(w.data(), DType::F16), CBuf(),
                    Buf{y.data(), DType::F16});
  EXPECT_TRUE(std::isinf(load(y[0])));
}

// ---------------------------------------------------------------------------------------------
// Chunks of images: with a tiny budget every image is a chunk of its own; the results equal
// the one-chunk results (to rounding: the GEMMs have other shapes) in F64.

TEST(ConvChunks, SmallBudgetGivesTheSameResults) {
  for (bool identity : {false, true}) {
    SCOPED_TRACE(identity ? "1x1" : "3x3 stride 2");
    ConvDesc d;
    d.N = 5, d.H = 6, d.W = 5, d.C = 4, d.K = 6, d.groups = 2;
    d.R = d.S = identity ? 1 : 3;
    d.stride_h = d.stride_w = identity ? 1 : 2;
    d.pad_h = d.pad_w = identity ? 0 : 1;
    d.P = identity ? 6 : 3;
    d.Q = identity ? 5 : 3;
    const std::size_t nx = static_cast<std::size_t>(d.N * d.H * d.W * d.C);
    const std::size_t nw = static_cast<std::size_t>(d.K * d.R * d.S * d.C / d.groups);
    const std::size_t ny = static_cast<std::size_t>(d.N * d.P * d.Q * d.K);
    auto dbl = [](const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); };
    std::vector<double> x = dbl(uniform(nx, 1)), w = dbl(uniform(nw, 2)), b = dbl(uniform(6, 3));
    std::vector<double> dy = dbl(uniform(ny, 4));
    auto run = [&](std::size_t budget) {
      cpu::CpuBackend be;
      be.set_conv_chunk_bytes(budget);
      auto B = [](std::vector<double>& v) { return Buf{v.data(), DType::F64}; };
      std::vector<double> y(ny), dx(nx, 0.5), dw(nw), db(6);
      be.conv2d_forward(d, B(x), B(w), B(b), B(y));
      be.conv2d_backward_data(d, B(dy), B(w), B(dx), true);
      be.conv2d_backward_filter(d, B(x), B(dy), B(dw), B(db));
      return std::vector<std::vector<double>>{y, dx, dw, db};
    };
    const auto one = run(std::size_t{64} << 20);
    const auto many = run(1);
    for (std::size_t t = 0; t < one.size(); ++t) {
      ASSERT_EQ(one[t].size(), many[t].size());
      for (std::size_t i = 0; i < one[t].size(); ++i) {
        EXPECT_NEAR(one[t][i], many[t][i], 1e-13) << "tensor " << t << " [" << i << "]";
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Max-pool ties: the first input of the window (row-major) that holds the maximum takes dy.

TEST(MaxPool, TiesRouteToTheFirstMaximum) {
  cpu::CpuBackend be;
  PoolDesc d;
  d.N = 1, d.H = 2, d.W = 2, d.C = 1, d.R = 2, d.S = 2, d.stride_h = 2, d.stride_w = 2;
  d.P = 1, d.Q = 1;
  std::vector<float> x = {1.0f, 3.0f, 3.0f, 2.0f}, y(1), dy = {5.0f}, dx(4, -1.0f);
  be.max_pool2d_forward(d, CBuf(x.data(), DType::F32), Buf{y.data(), DType::F32});
  EXPECT_EQ(y[0], 3.0f);
  be.max_pool2d_backward(d, CBuf(x.data(), DType::F32), CBuf(y.data(), DType::F32),
                         CBuf(dy.data(), DType::F32), Buf{dx.data(), DType::F32}, false);
  EXPECT_EQ(dx, (std::vector<float>{0.0f, 5.0f, 0.0f, 0.0f}));
}

// ---------------------------------------------------------------------------------------------
// Shape errors name the layer and what is wrong.

void expect_shape_error(const ModelBuilder& b, const std::vector<std::string>& parts) {
  try {
    b.compile();
    ADD_FAILURE() << "expected ShapeError";
  } catch (const ShapeError& e) {
    const std::string what = e.what();
    for (const std::string& p : parts) EXPECT_NE(what.find(p), std::string::npos) << what;
  }
}

TEST(ConvShapes, KernelLargerThanInput) {
  expect_shape_error(ModelBuilder({2, 4, 4, 1}).conv2d(8, 5, {.name = "big"}),
                     {"'big'", "kernel 5x5", "larger than the padded input 4x4"});
  expect_shape_error(
      ModelBuilder({2, 6, 4, 1}).conv2d(8, 3, {.name = "dil", .padding = 1, .dilation = 3}),
      {"'dil'", "dilated to 7x7", "padded input 8x6"});
  expect_shape_error(ModelBuilder({2, 3, 3, 1}).max_pool2d(4, {.name = "pool"}),
                     {"'pool'", "kernel 4x4", "larger than the padded input 3x3"});
}

TEST(ConvShapes, ChannelMismatchInAnAddNamesBothPaths) {
  expect_shape_error(ModelBuilder({2, 8, 8, 4}).residual([](ModelBuilder& b) {
    b.conv2d(8, 3, {.name = "body", .padding = "same"});
  }),
                     {"add", "'body' [8, 8, 8]", "'input' [8, 8, 4]"});
  expect_shape_error(
      ModelBuilder({2, 8, 8, 4})
          .residual(
              [](ModelBuilder& b) { b.conv2d(4, 3, {.name = "body", .stride = 2, .padding = 1}); },
              [](ModelBuilder& s) { s.conv2d(4, 1, {.name = "shortcut"}); }),
      {"'body' [4, 4, 4]", "'shortcut' [8, 8, 4]"});
}

TEST(ConvShapes, OtherMistakes) {
  expect_shape_error(ModelBuilder({2, 8, 8, 6}).conv2d(8, 3, {.name = "g", .groups = 4}),
                     {"'g'", "groups (4)", "input channels (6"});
  expect_shape_error(ModelBuilder({2, 784}).conv2d(8, 3, {.name = "flat"}),
                     {"'flat'", "[height, width, channels]", "[784]"});
  try {  // a layer option out of range is a configuration error, not a shape error
    ModelBuilder({2, 8, 8, 1}).max_pool2d(2, {.name = "p", .padding = 2}).compile();
    ADD_FAILURE() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("half the kernel"), std::string::npos) << e.what();
  }
  expect_shape_error(ModelBuilder({2, 8}).global_avg_pool({.name = "gap"}), {"'gap'"});
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).conv2d(8, 3, {.padding = "full"}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).layer({"c", "conv2d", {}, {{"filters", 2}}}).compile(),
               ConfigError);  // no kernel
}

TEST(ConvShapes, SpecsRoundTripThroughJson) {
  const ModelSpec spec =
      ModelBuilder({4, 9, 9, 3})
          .conv2d(8, {3, 2},
                  {.stride = {2, 1}, .padding = "same", .dilation = 2, .groups = 1, .bias = false})
          .batch_norm({.momentum = 0.01f, .epsilon = 1e-3f})
          .max_pool2d(2, {.padding = 1})
          .avg_pool2d(2, {.stride = 1})
          .global_avg_pool()
          .spec();
  EXPECT_EQ(ModelSpec::from_json(spec.to_json()).to_json(), spec.to_json());
  const Model m = compile(ModelSpec::from_json(spec.to_json()));
  EXPECT_EQ(m.output_shape(), (Shape{4, 8}));
}

// ---------------------------------------------------------------------------------------------
// A small CNN learns a pattern task in every precision: class c is a bright 3x3 patch in
// quadrant c of an 8x8 image, plus noise.

struct Images {
  std::vector<float> x;
  std::vector<std::int32_t> y;
};

Images quadrant_images(int n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  std::uniform_int_distribution<int> offset(0, 1);
  Images d;
  for (int i = 0; i < n; ++i) {
    const int label = i % 4;
    std::vector<float> img(64);
    for (float& v : img) v = noise(rng);
    const int r0 = (label / 2) * 4 + offset(rng), c0 = (label % 2) * 4 + offset(rng);
    for (int r = r0; r < r0 + 3; ++r) {
      for (int c = c0; c < c0 + 3; ++c) img[static_cast<std::size_t>(r * 8 + c)] += 1.5f;
    }
    d.x.insert(d.x.end(), img.begin(), img.end());
    d.y.push_back(label);
  }
  return d;
}

class ConvTrainer : public ::testing::TestWithParam<Precision> {};

TEST_P(ConvTrainer, LearnsQuadrants) {
  const Model m = ModelBuilder({32, 8, 8, 1})
                      .conv2d(8, 3, {.padding = "same", .bias = false})
                      .batch_norm()
                      .relu()
                      .max_pool2d(2)
                      .conv2d(8, 3, {.padding = 1})
                      .relu()
                      .avg_pool2d(2)
                      .flatten()
                      .dense(4)
                      .compile();
  Trainer t(m, cpu_config(GetParam()));
  const Images train = quadrant_images(640, 1), test = quadrant_images(256, 2);
  for (int epoch = 0; epoch < 3; ++epoch) {
    for (int b = 0; b < 20; ++b) {
      t.train_batch(train.x.data() + b * 32 * 64, {32, 8, 8, 1}, train.y.data() + b * 32, {32});
    }
  }
  Dataset d;
  d.features = test.x;
  d.sample_shape = {8, 8, 1};
  d.labels = test.y;
  d.num_classes = 4;
  const EvalResult r = t.evaluate(d);
  EXPECT_GT(r.accuracy, 0.95) << "loss " << r.loss;
}

INSTANTIATE_TEST_SUITE_P(AllPrecisions, ConvTrainer,
                         ::testing::Values(Precision::FP32, Precision::FP16, Precision::BF16),
                         [](const ::testing::TestParamInfo<Precision>& p) {
                           return std::string(precision_name(p.param));
                         });

}  // namespace
}  // namespace mixtrain
