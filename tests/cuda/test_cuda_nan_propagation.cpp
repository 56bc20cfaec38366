// NaN propagates through every ReLU of the CUDA backend as it does on the CPU
// (tests/test_nan_propagation.cpp): cuBLASLt's fused ReLU epilogue, the activation kernel,
// batch-norm's fused ReLU and the fused dense-chain step. A NaN weight behind a ReLU must reach
// the outputs and the loss.
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

constexpr std::int64_t kBatch = 32;

enum class Net : std::uint8_t { Dense, DenseChain, ConvBn };

struct Case {
  std::string name;
  Net net;
  bool fused;  // graph fusion on (ReLU in the GEMM epilogue / batch-norm) or off
  Precision precision;
};

Model build(const Case& c) {
  if (!c.fused) setenv("MIXTRAIN_FUSION", "0", 1);
  Model m = [&] {
    switch (c.net) {
      case Net::Dense:  // widths that the fused dense chain declines (not multiples of 16)
        return ModelBuilder({kBatch, 5}).dense(24).relu().dense(3).compile();
      case Net::DenseChain:  // one fused kernel a step in FP16/BF16
        return ModelBuilder({kBatch, 32}).dense(64).relu().dense(64).relu().dense(10).compile();
      case Net::ConvBn:
        return ModelBuilder({kBatch, 6, 6, 8})
            .conv2d(16, 3, {.padding = "same"})
            .batch_norm()
            .relu()
            .global_avg_pool()
            .dense(3)
            .compile();
    }
    return Model{};
  }();
  unsetenv("MIXTRAIN_FUSION");
  return m;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.name;
}

class CudaNanPropagation : public ::testing::TestWithParam<Case> {};

TEST_P(CudaNanPropagation, NanWeightBehindReluReachesOutputsAndLoss) {
  if (!cuda_available()) GTEST_SKIP() << "no GPU";
  const Case& c = GetParam();
  const Model model = build(c);
  TrainerConfig cfg;
  cfg.device = Device::CUDA;
  cfg.precision = c.precision;
  cfg.sync_interval = 1;
  cfg.loss_scale.nonfinite_loss_patience = 5;
  nan_check::expect_nan_weight_surfaces(model, cfg);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (const Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    for (const Net net : {Net::Dense, Net::DenseChain, Net::ConvBn}) {
      for (const bool fused : {true, false}) {
        const char* names[] = {"dense", "chain", "conv_bn"};
        v.push_back({std::string(names[static_cast<int>(net)]) + (fused ? "_fused_" : "_apart_") +
                         std::string(precision_name(p)),
                     net, fused, p});
      }
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(AllPaths, CudaNanPropagation, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace mixtrain
