#include "io/presets.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>

#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

constexpr std::int64_t kPixels = 28 * 28;  // Fashion-MNIST images, flattened
constexpr std::int64_t kClasses = 10;

ModelSpec fashion_mlp(std::int64_t batch) {
  return ModelBuilder({batch, kPixels})
      .dense(512, {.name = "dense1"})
      .relu({.name = "relu1"})
      .dropout(0.2f, {.name = "dropout1"})
      .dense(256, {.name = "dense2"})
      .relu({.name = "relu2"})
      .dense(kClasses, {.name = "logits"})
      .spec();
}

ModelSpec large_mlp(std::int64_t batch) {
  return ModelBuilder({batch, kPixels})
      .dense(4096, {.name = "dense1"})
      .relu({.name = "relu1"})
      .dense(4096, {.name = "dense2"})
      .relu({.name = "relu2"})
      .dense(4096, {.name = "dense3"})
      .relu({.name = "relu3"})
      .dense(kClasses, {.name = "logits"})
      .spec();
}

ModelSpec logistic(std::int64_t batch) {
  return ModelBuilder({batch, kPixels}).dense(kClasses, {.name = "logits"}).spec();
}

struct Preset {
  const char* name;
  const char* description;
  ModelSpec (*build)(std::int64_t batch);
};

// Extension point: a new preset (the CNNs, once conv layers exist) is one more row here, with
// its builder function above; preset_names(), the CLI's help and the tests pick it up.
constexpr std::array kPresets{
    Preset{"mlp", "Fashion-MNIST MLP: 784-512-256-10, relu, dropout 0.2", fashion_mlp},
    Preset{"small_mlp", "BENCHMARKS.md small_mlp: 784-512-256-10, relu, dropout 0.2", fashion_mlp},
    Preset{"large_mlp", "BENCHMARKS.md large_mlp: 784-4096-4096-4096-10, relu", large_mlp},
    Preset{"logistic", "logistic regression: 784-10", logistic},
};

const Preset& find_preset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) return p;
  }
  throw ConfigError(fmt::format("unknown preset model '{}' (presets: {})", name,
                                fmt::join(preset_names(), ", ")));
}

}  // namespace

ModelSpec preset_model(const std::string& name, std::int64_t batch) {
  const Preset& p = find_preset(name);
  if (batch < 1) {
    throw ConfigError(fmt::format("preset '{}': batch must be >= 1, got {}", name, batch));
  }
  return p.build(batch);
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

std::string preset_description(const std::string& name) {
  return find_preset(name).description;
}

bool is_preset(const std::string& name) {
  for (const Preset& p : kPresets) {
    if (name == p.name) return true;
  }
  return false;
}

}  // namespace mixtrain
