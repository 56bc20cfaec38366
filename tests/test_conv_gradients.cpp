// The convolutional layers against float64 finite differences on the CPU backend's F64 dtype
// (tests/grad_check.hpp explains the method and the tolerances), their forward passes against
// direct double formulas, and a residual CNN's gradients end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "grad_check.hpp"
#include "layers/spatial.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain {
namespace {

using gradcheck::Draw;
using gradcheck::Vec;
using J = nlohmann::json;

double symmetric(Draw& d) {
  return d.uniform(-2.0, 2.0);
}

// Distinct values 1/64 apart (exact in binary, far more than the 4h a difference spans), in a
// scrambled order: no two inputs of a max-pool window tie, so the maximum is differentiable.
std::function<double(Draw&)> distinct() {
  return [k = 0](Draw&) mutable {
    const int v = (k++ * 389) % 1009;  // a permutation of 0..1008
    return v / 64.0 - 8.0;
  };
}

struct LayerCase {
  std::string label;
  std::string type;
  J attrs;
  Shape in_shape;  // per sample
  std::int64_t batch;
  std::function<double(Draw&)> input;
};

void PrintTo(const LayerCase& c, std::ostream* os) {
  *os << c.label;
}

std::vector<LayerCase> layer_cases() {
  return {
      {"ConvValidBias", "conv2d", J{{"filters", 4}, {"kernel", 3}}, {5, 6, 3}, 2, symmetric},
      {"ConvStridePadNonSquareNoBias",
       "conv2d",
       J{{"filters", 3}, {"kernel", {2, 3}}, {"stride", 2}, {"padding", 1}, {"bias", false}},
       {6, 7, 2},
       2,
       symmetric},
      {"ConvDilatedSame",
       "conv2d",
       J{{"filters", 3}, {"kernel", 3}, {"dilation", {2, 1}}, {"padding", "same"}},
       {7, 5, 2},
       2,
       symmetric},
      {"ConvSameStride2Asymmetric",
       "conv2d",
       J{{"filters", 2}, {"kernel", 3}, {"stride", 2}, {"padding", "same"}},
       {6, 6, 3},
       2,
       symmetric},
      {"ConvGroups",
       "conv2d",
       J{{"filters", 6},
         {"kernel", {3, 2}},
         {"stride", {1, 2}},
         {"padding", {1, 0}},
         {"groups", 2}},
       {5, 6, 4},
       2,
       symmetric},
      {"ConvDepthwise",
       "conv2d",
       J{{"filters", 3}, {"kernel", 3}, {"padding", 1}, {"groups", 3}, {"bias", false}},
       {4, 5, 3},
       2,
       symmetric},
      {"Conv1x1", "conv2d", J{{"filters", 5}, {"kernel", 1}}, {3, 4, 3}, 3, symmetric},
      {"Conv1x1Groups",
       "conv2d",
       J{{"filters", 4}, {"kernel", 1}, {"groups", 2}},
       {3, 3, 4},
       2,
       symmetric},
      {"Conv1x1Stride2",
       "conv2d",
       J{{"filters", 3}, {"kernel", 1}, {"stride", 2}, {"bias", false}},
       {5, 4, 2},
       2,
       symmetric},
      {"BatchNormImage", "batch_norm", J::object(), {3, 4, 5}, 2, symmetric},
      {"BatchNormDense", "batch_norm", J{{"epsilon", 0.01}}, {6}, 5, symmetric},
      {"MaxPool2x2", "max_pool2d", J{{"kernel", 2}}, {4, 6, 3}, 2, distinct()},
      {"MaxPoolOverlapPadded",
       "max_pool2d",
       J{{"kernel", 3}, {"stride", 2}, {"padding", 1}},
       {5, 5, 2},
       2,
       distinct()},
      {"MaxPoolSameNonSquare",
       "max_pool2d",
       J{{"kernel", {2, 3}}, {"stride", {2, 1}}, {"padding", "same"}},
       {5, 4, 2},
       2,
       distinct()},
      {"AvgPool2x2", "avg_pool2d", J{{"kernel", 2}}, {4, 6, 3}, 2, symmetric},
      {"AvgPoolOverlapPadded",
       "avg_pool2d",
       J{{"kernel", 3}, {"stride", 2}, {"padding", 1}},
       {5, 6, 2},
       2,
       symmetric},
      {"AvgPoolSameNonSquare",
       "avg_pool2d",
       J{{"kernel", {2, 3}}, {"stride", {1, 2}}, {"padding", "same"}},
       {3, 5, 2},
       2,
       symmetric},
      {"GlobalAvgPool", "global_avg_pool", J::object(), {3, 4, 5}, 2, symmetric},
  };
}

class ConvLayerGradient : public ::testing::TestWithParam<LayerCase> {};

TEST_P(ConvLayerGradient, MatchesFloat64FiniteDifferences) {
  const LayerCase& c = GetParam();
  for (std::uint64_t seed : {1u, 2u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    const double worst =
        gradcheck::check_layer(c.type, c.attrs, {c.in_shape}, c.batch, seed, c.input);
    RecordProperty("worst_scaled_error_seed" + std::to_string(seed), std::to_string(worst));
  }
}

INSTANTIATE_TEST_SUITE_P(ConvLayers, ConvLayerGradient, ::testing::ValuesIn(layer_cases()),
                         [](const ::testing::TestParamInfo<LayerCase>& param_info) {
                           return param_info.param.label;
                         });

// ---------------------------------------------------------------------------------------------
// Forward passes against direct double formulas (the gradient checks only show that backward
// matches forward; these show that forward computes the right thing).

std::size_t at(std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c, std::int64_t H,
               std::int64_t W, std::int64_t C) {
  return static_cast<std::size_t>(((n * H + h) * W + w) * C + c);
}

TEST_P(ConvLayerGradient, ForwardMatchesDirectFormula) {
  const LayerCase& c = GetParam();
  gradcheck::LayerRun run(c.type, c.attrs, {c.in_shape}, c.batch, 3, c.input);
  const Vec y = run.forward();
  const Vec& x = run.inputs[0];
  const std::int64_t N = c.batch, H = c.in_shape[0];
  const double eps = dtype_epsilon(DType::F64);
  if (c.type == "batch_norm") {
    const std::int64_t C = c.in_shape.back(), rows = N * numel(c.in_shape) / C;
    const double epsilon = c.attrs.value("epsilon", 1e-5f);
    for (std::int64_t ch = 0; ch < C; ++ch) {
      double mean = 0, var = 0;
      for (std::int64_t r = 0; r < rows; ++r) mean += x[static_cast<std::size_t>(r * C + ch)];
      mean /= static_cast<double>(rows);
      for (std::int64_t r = 0; r < rows; ++r) {
        const double d = x[static_cast<std::size_t>(r * C + ch)] - mean;
        var += d * d;
      }
      var /= static_cast<double>(rows);
      const double g = run.params[0][static_cast<std::size_t>(ch)];
      const double b = run.params[1][static_cast<std::size_t>(ch)];
      for (std::int64_t r = 0; r < rows; ++r) {
        const auto i = static_cast<std::size_t>(r * C + ch);
        EXPECT_NEAR(y[i], (x[i] - mean) / std::sqrt(var + epsilon) * g + b, 64 * eps) << i;
      }
      EXPECT_NEAR(run.buffers[2][static_cast<std::size_t>(ch)], mean, 16 * eps);
      EXPECT_NEAR(run.buffers[3][static_cast<std::size_t>(ch)], 1 / std::sqrt(var + epsilon),
                  1e-12);
    }
    return;
  }
  if (c.type == "global_avg_pool") {
    const std::int64_t C = c.in_shape.back(), pixels = numel(c.in_shape) / C;
    for (std::int64_t n = 0; n < N; ++n) {
      for (std::int64_t ch = 0; ch < C; ++ch) {
        double s = 0;
        for (std::int64_t p = 0; p < pixels; ++p)
          s += x[static_cast<std::size_t>((n * pixels + p) * C + ch)];
        EXPECT_NEAR(y[static_cast<std::size_t>(n * C + ch)], s / static_cast<double>(pixels),
                    16 * eps);
      }
    }
    return;
  }
  const std::int64_t W = c.in_shape[1], C = c.in_shape[2];
  const Hw kernel = read_hw("t", c.attrs.at("kernel"), "kernel", {});
  const bool conv = c.type == "conv2d";
  const Hw stride = read_hw("t", c.attrs.value("stride", J()), "stride", conv ? Hw{1, 1} : kernel);
  const Hw dil = read_hw("t", c.attrs.value("dilation", J()), "dilation", {1, 1});
  const PaddingAttr pad = read_padding("t", c.attrs.value("padding", J()));
  const Extent eh = spatial_extent(H, (kernel.h - 1) * dil.h + 1, stride.h, pad.same, pad.size.h);
  const Extent ew = spatial_extent(W, (kernel.w - 1) * dil.w + 1, stride.w, pad.same, pad.size.w);
  const std::int64_t groups = c.attrs.value("groups", 1);
  const std::int64_t K = conv ? c.attrs.at("filters").get<std::int64_t>() : C;
  ASSERT_EQ(y.size(), static_cast<std::size_t>(N * eh.out * ew.out * K));
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t p = 0; p < eh.out; ++p) {
      for (std::int64_t q = 0; q < ew.out; ++q) {
        for (std::int64_t k = 0; k < K; ++k) {
          double want = 0, best = -INFINITY;
          int count = 0;
          for (std::int64_t r = 0; r < kernel.h; ++r) {
            for (std::int64_t s = 0; s < kernel.w; ++s) {
              const std::int64_t h = p * stride.h - eh.pad_before + r * dil.h;
              const std::int64_t w = q * stride.w - ew.pad_before + s * dil.w;
              if (h < 0 || h >= H || w < 0 || w >= W) continue;  // zero padding
              if (!conv) {
                const double v = x[at(n, h, w, k, H, W, C)];
                want += v;
                best = std::max(best, v);
                ++count;
                continue;
              }
              const std::int64_t cg = C / groups, g = k / (K / groups);
              for (std::int64_t ci = 0; ci < cg; ++ci) {
                want += x[at(n, h, w, g * cg + ci, H, W, C)] *
                        run.params[0][static_cast<std::size_t>(
                            ((k * kernel.h + r) * kernel.w + s) * cg + ci)];
              }
            }
          }
          if (conv && c.attrs.value("bias", true))
            want += run.params[1][static_cast<std::size_t>(k)];
          if (c.type == "avg_pool2d") want /= count;  // padding excluded from the count
          if (c.type == "max_pool2d") want = best;
          EXPECT_NEAR(y[at(n, p, q, k, eh.out, ew.out, K)], want, 1e-13)
              << n << " " << p << " " << q << " " << k;
        }
      }
    }
  }
}

// A small ResNet: stem conv + batch-norm, a basic block with a strided 1x1 conv + batch-norm
// shortcut, an identity block, pooling and a dense head. Smooth activations (swish, tanh) keep
// the finite differences away from kinks.
TEST(ConvGraphGradient, ResidualCnnEndToEnd) {
  const Model model =
      ModelBuilder({3, 6, 5, 2})
          .conv2d(3, 3, {.padding = "same"})
          .batch_norm()
          .swish()
          .residual(
              [](ModelBuilder& b) {
                b.conv2d(4, 3, {.stride = 2, .padding = 1, .bias = false})
                    .batch_norm()
                    .tanh()
                    .conv2d(4, {3, 2}, {.padding = "same", .dilation = {1, 2}, .groups = 2});
              },
              [](ModelBuilder& s) { s.conv2d(4, 1, {.stride = 2, .bias = false}).batch_norm(); })
          .swish()
          .residual([](ModelBuilder& b) { b.conv2d(4, 3, {.padding = 1}).batch_norm().tanh(); })
          .avg_pool2d(2, {.stride = 1})
          .global_avg_pool()
          .dense(3)
          .compile();
  EXPECT_EQ(model.graph().nodes[static_cast<std::size_t>(model.graph().output)].shape, (Shape{3}));
  gradcheck::check_graph(model);
}

}  // namespace
}  // namespace mixtrain
