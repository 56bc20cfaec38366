// Timing windows and the cblas_sgemm baseline of `mixtrain bench`.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "bench.hpp"
#include "mixtrain/error.hpp"

#if __has_include(<cblas.h>)
#include <cblas.h>
#define MIXTRAIN_CLI_HAVE_CBLAS 1
#else
#define MIXTRAIN_CLI_HAVE_CBLAS 0
#endif

namespace mixtrain::cli {

Timing time_windows(int windows, int steps, std::int64_t batch, const std::function<void()>& step,
                    const std::function<void()>& sync) {
  using Clock = std::chrono::steady_clock;
  Timing t;
  for (int w = 0; w < windows; ++w) {
    const auto start = Clock::now();
    for (int s = 0; s < steps; ++s) step();
    sync();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    t.window_ms.push_back(ms / steps);
  }
  std::vector<double> sorted = t.window_ms;
  std::sort(sorted.begin(), sorted.end());
  const std::size_t n = sorted.size();
  t.step_ms = n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  t.samples_per_second = t.step_ms > 0 ? static_cast<double>(batch) * 1000.0 / t.step_ms : 0.0;
  return t;
}

std::vector<DenseShape> dense_layers(const ModelSpec& spec) {
  if (spec.input_shape.size() != 2) {
    throw ConfigError("the GEMM baseline needs a model with [batch, features] inputs");
  }
  std::map<std::string, std::int64_t> features{{"input", spec.input_shape[1]}};
  std::vector<DenseShape> layers;
  for (const LayerSpec& l : spec.layers) {
    if (l.inputs.size() != 1) {
      throw ConfigError(
          fmt::format("the GEMM baseline needs a sequential model; layer '{}' has {} "
                      "inputs",
                      l.name, l.inputs.size()));
    }
    const std::int64_t in = features.at(l.inputs[0]);
    if (l.type == "dense") {
      const std::int64_t units = l.attrs.json().at("units").get<std::int64_t>();
      layers.push_back({in, units});
      features[l.name] = units;
    } else if (l.type == "relu" || l.type == "dropout" || l.type == "gelu" || l.type == "sigmoid" ||
               l.type == "tanh" || l.type == "leaky_relu" || l.type == "elu" || l.type == "swish" ||
               l.type == "softmax") {
      features[l.name] = in;
    } else {
      throw ConfigError(
          fmt::format("the GEMM baseline does not know layer type '{}' ('{}')", l.type, l.name));
    }
  }
  return layers;
}

bool gemm_baseline_available() {
  return MIXTRAIN_CLI_HAVE_CBLAS != 0;
}

Timing time_gemm_baseline(const std::vector<DenseShape>& layers, std::int64_t batch, int warmup,
                          int windows, int steps) {
#if MIXTRAIN_CLI_HAVE_CBLAS
  struct Buffers {
    std::vector<float> x, w, y, dw, dx;  // y doubles as the output gradient
  };
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> uniform(0.0f, 0.01f);
  auto filled = [&](std::int64_t n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& f : v) f = uniform(rng);
    return v;
  };
  std::vector<Buffers> bufs;
  bufs.reserve(layers.size());
  for (const DenseShape& l : layers) {
    bufs.push_back({filled(batch * l.in), filled(l.out * l.in), filled(batch * l.out),
                    filled(l.out * l.in), filled(batch * l.in)});
  }
  const auto b = static_cast<int>(batch);
  auto step = [&] {
    for (std::size_t i = 0; i < layers.size(); ++i) {  // forward: y = x w^T
      const auto k = static_cast<int>(layers[i].in), n = static_cast<int>(layers[i].out);
      Buffers& m = bufs[i];
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, b, n, k, 1.0f, m.x.data(), k, m.w.data(),
                  k, 0.0f, m.y.data(), n);
    }
    for (std::size_t i = layers.size(); i-- > 0;) {  // backward: dw = dy^T x, dx = dy w
      const auto k = static_cast<int>(layers[i].in), n = static_cast<int>(layers[i].out);
      Buffers& m = bufs[i];
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, k, b, 1.0f, m.y.data(), n, m.x.data(),
                  k, 0.0f, m.dw.data(), k);
      if (i > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, b, k, n, 1.0f, m.y.data(), n,
                    m.w.data(), k, 0.0f, m.dx.data(), k);
      }
    }
  };
  for (int i = 0; i < warmup; ++i) step();
  return time_windows(windows, steps, batch, step, [] {});
#else
  (void)layers, (void)batch, (void)warmup, (void)windows, (void)steps;
  throw ConfigError("this build has no cblas.h: the GEMM baseline is unavailable");
#endif
}

}  // namespace mixtrain::cli
