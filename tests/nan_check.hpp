// The check of the NaN propagation tests, shared by the CPU (test_nan_propagation.cpp) and CUDA
// (cuda/test_cuda_nan_propagation.cpp) suites.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "mixtrain/mixtrain.hpp"

namespace mixtrain::nan_check {

// Puts a NaN in the first layer's first weight (dense: unit 0's first input; conv: filter 0's
// first tap) and expects every output of a batch of positive inputs to be NaN, and training on it
// to end in DivergenceError within 30 steps (the config's patience must be shorter).
inline void expect_nan_weight_surfaces(const Model& model, const TrainerConfig& config) {
  Trainer t(model, config);
  std::vector<float> w = t.weights();
  w[0] = std::numeric_limits<float>::quiet_NaN();
  t.set_weights(w);

  const Shape& shape = model.input_shape();
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(0.5f, 1.0f);  // positive: no exact zeros meet the NaN
  std::vector<float> x(static_cast<std::size_t>(numel(shape)));
  for (float& v : x) v = u(rng);
  const std::vector<std::int32_t> y(static_cast<std::size_t>(shape[0]), 1);

  const std::vector<float> out = t.predict(x, shape);
  for (std::size_t i = 0; i < out.size(); ++i) {
    ASSERT_TRUE(std::isnan(out[i])) << "output " << i << " = " << out[i];
  }
  try {
    for (int s = 0; s < 30; ++s) t.train_batch(x, shape, y, {shape[0]});
    FAIL() << "a NaN weight trained 30 steps without a word";
  } catch (const DivergenceError& e) {
    SUCCEED() << e.what();
  }
}

}  // namespace mixtrain::nan_check
