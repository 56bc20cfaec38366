// Pieces of `mixtrain bench`: timing windows and the OpenBLAS-only GEMM baseline.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mixtrain/model.hpp"

namespace mixtrain::cli {

// Step times of several timed windows; the median is the figure reported.
struct Timing {
  std::vector<double> window_ms;  // mean step time of each window
  double step_ms = 0;             // median over the windows
  double samples_per_second = 0;  // batch / step_ms
};

// Runs `windows` windows of `steps` calls of step(); each window ends with sync(), inside the
// timed region.
Timing time_windows(int windows, int steps, std::int64_t batch, const std::function<void()>& step,
                    const std::function<void()>& sync);

// One dense layer: [batch, in] -> [batch, out].
struct DenseShape {
  std::int64_t in = 0;
  std::int64_t out = 0;
};

// The dense layers of a sequential model (dense and shape-preserving layers only); ConfigError
// for anything else.
std::vector<DenseShape> dense_layers(const ModelSpec& spec);

// True when this build can call cblas_sgemm directly.
bool gemm_baseline_available();

// Times the GEMMs one training step of these layers needs, in fp32 with cblas_sgemm: forward
// and weight gradient for every layer, input gradient for all but the first (the trainer does
// not compute the gradient of the model's input either).
Timing time_gemm_baseline(const std::vector<DenseShape>& layers, std::int64_t batch, int warmup,
                          int windows, int steps);

}  // namespace mixtrain::cli
