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

// Trains `host` from host memory and `device` from stored batches (upload_batch) on the same
// batches of rows x features, `steps` steps cycling through them: 20 batches are stored, so the
// first 16 are read in place by a step captured for each and the later ones copied into the
// plan's buffers; steps from the 7th on use those copies. The caller compares the two trainers.
inline void train_host_and_stored(Trainer& host, Trainer& device, const Batches& b,
                                  std::int64_t rows, std::int64_t features, int steps) {
  const std::size_t count = b.x.size();
  std::vector<DeviceBatch> stored;
  for (std::size_t i = 0; i < 20; ++i) {
    const std::size_t k = i % count;
    stored.push_back(device.upload_batch(b.x[k].data(), {rows, features}, b.y[k].data(), {rows}));
  }
  for (int s = 0; s < steps; ++s) {
    const std::size_t k = static_cast<std::size_t>(s) % count;
    host.train_batch(b.x[k].data(), {rows, features}, b.y[k].data(), {rows});
    device.train_batch(stored[k + (s >= 6 ? 16 : 0)]);
  }
}

}  // namespace mixtrain::cuda_test
