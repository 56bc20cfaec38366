// Helpers of the CUDA tests that train whole models: random labelled batches and a trainer
// configuration whose steps queue back to back (no sync inside a test's steps).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "mixtrain/mixtrain.hpp"

namespace mixtrain::cuda_test {

struct Batches {
  std::vector<std::vector<float>> x;         // [rows * features] each
  std::vector<std::vector<std::int32_t>> y;  // [rows] each
};

// `count` batches of `rows` samples of `features` values drawn from `values`, labels uniform in
// [0, classes).
template <typename Distribution>
Batches make_batches(std::mt19937& rng, int count, std::int64_t rows, std::int64_t features,
                     int classes, Distribution values) {
  std::uniform_int_distribution<int> label(0, classes - 1);
  Batches b;
  for (int i = 0; i < count; ++i) {
    std::vector<float> x(static_cast<std::size_t>(rows * features));
    for (float& v : x) v = values(rng);
    std::vector<std::int32_t> y(static_cast<std::size_t>(rows));
    for (auto& v : y) v = label(rng);
    b.x.push_back(std::move(x));
    b.y.push_back(std::move(y));
  }
  return b;
}

// Adam at lr 1e-3 on `device` in `precision`, seeded; the history is drained only when read.
inline TrainerConfig trainer_config(Device device, Precision precision, std::uint64_t seed) {
  TrainerConfig c;
  c.device = device;
  c.precision = precision;
  c.seed = seed;
  c.learning_rate = 1e-3f;
  c.sync_interval = 1000;
  return c;
}

}  // namespace mixtrain::cuda_test
