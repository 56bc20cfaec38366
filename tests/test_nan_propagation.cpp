// NaN propagates through every ReLU of the library (the layer, the dense layer's fused epilogue,
// batch-norm's fused ReLU) as IEEE max and PyTorch's relu do: a NaN weight behind a ReLU must reach
// the outputs and the loss, where divergence detection sees it, instead of becoming zeros that
// hide it while the weight stays NaN forever.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "mixtrain/mixtrain.hpp"
#include "nan_check.hpp"

namespace mixtrain {
namespace {

constexpr std::int64_t kBatch = 8;

struct Case {
  std::string name;
  bool fused;  // graph fusion on (dense+relu, batch_norm+relu) or off (separate relu layers)
  bool conv;   // conv -> batch_norm -> relu, or dense -> relu
  Precision precision;
};

Model build(const Case& c) {
  if (!c.fused) setenv("MIXTRAIN_FUSION", "0", 1);
  Model m = c.conv ? ModelBuilder({kBatch, 6, 6, 2})
                         .conv2d(4, 3, {.padding = "same"})
                         .batch_norm()
                         .relu()
                         .global_avg_pool()
                         .dense(3)
                         .compile()
                   : ModelBuilder({kBatch, 5}).dense(16).relu().dense(3).compile();
  unsetenv("MIXTRAIN_FUSION");
  return m;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class NanPropagation : public ::testing::TestWithParam<Case> {};

TEST_P(NanPropagation, NanWeightBehindReluReachesOutputsAndLoss) {
  const Case& c = GetParam();
  const Model model = build(c);
  TrainerConfig cfg;
  cfg.device = Device::CPU;
  cfg.precision = c.precision;
  cfg.sync_interval = 1;
  cfg.loss_scale.nonfinite_loss_patience = 5;
  nan_check::expect_nan_weight_surfaces(model, cfg);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (const Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    for (const bool conv : {false, true}) {
      for (const bool fused : {true, false}) {
        v.push_back({std::string(conv ? "conv_bn" : "dense") + (fused ? "_fused_" : "_apart_") +
                         std::string(precision_name(p)),
                     fused, conv, p});
      }
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllPaths, NanPropagation, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) { return param_info.param.name; });

TEST(NanPropagation, ReluOfNanIsNanAndOfZeroIsZero) {
  ModelBuilder b({1, 4});
  b.relu();
  Trainer t(b.compile(), [] {
    TrainerConfig c;
    c.device = Device::CPU;
    c.loss = Loss::MeanSquaredError;
    c.validate_inputs = false;  // the NaN input is the point
    return c;
  }());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {nan, -1.0f, 0.0f, 2.0f};
  const std::vector<float> y = t.predict(x.data(), {1, 4});
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_EQ(y[2], 0.0f);
  EXPECT_EQ(y[3], 2.0f);
}

}  // namespace
}  // namespace mixtrain
