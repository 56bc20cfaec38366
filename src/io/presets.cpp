#include "io/presets.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>
#include <functional>
#include <string>

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

// conv 3x3 (no bias: the batch-norm's beta is one), batch-norm, relu.
void conv_bn_relu(ModelBuilder& b, std::int64_t filters, const std::string& name) {
  b.conv2d(filters, 3, {.name = name, .padding = "same", .bias = false})
      .batch_norm({.name = name + "_bn"})
      .relu({.name = name + "_relu"});
}

// Fashion-MNIST CNN on [28, 28, 1] images: two VGG-style stages (two 3x3 convs with
// batch-norm and relu, then 2x2 max-pool) of 32 and 64 channels, then dense 256 with dropout.
ModelSpec fashion_cnn(std::int64_t batch) {
  ModelBuilder b({batch, 28, 28, 1});
  conv_bn_relu(b, 32, "conv1");
  conv_bn_relu(b, 32, "conv2");
  b.max_pool2d(2, {.name = "pool1"});
  conv_bn_relu(b, 64, "conv3");
  conv_bn_relu(b, 64, "conv4");
  b.max_pool2d(2, {.name = "pool2"})
      .flatten({.name = "flatten"})
      .dense(256, {.name = "dense1"})
      .relu({.name = "relu1"})
      .dropout(0.3f, {.name = "dropout1"})
      .dense(kClasses, {.name = "logits"});
  return b.spec();
}

// A ResNet basic block: two 3x3 conv + batch-norm (relu between), added to the input, or to a
// 1x1 conv + batch-norm of it where the shape changes, then relu.
void basic_block(ModelBuilder& b, std::int64_t in_channels, std::int64_t channels,
                 std::int64_t stride, const std::string& name) {
  const bool project = stride != 1 || in_channels != channels;
  b.residual(
      [&](ModelBuilder& r) {
        r.conv2d(channels, 3,
                 {.name = name + "_conv1", .stride = stride, .padding = 1, .bias = false})
            .batch_norm({.name = name + "_bn1"})
            .relu({.name = name + "_relu1"})
            .conv2d(channels, 3, {.name = name + "_conv2", .padding = 1, .bias = false})
            .batch_norm({.name = name + "_bn2"});
      },
      project ? std::function<void(ModelBuilder&)>([&](ModelBuilder& s) {
        s.conv2d(channels, 1, {.name = name + "_shortcut", .stride = stride, .bias = false})
            .batch_norm({.name = name + "_shortcut_bn"});
      })
              : nullptr,
      {.name = name + "_add"});
  b.relu({.name = name + "_out"});
}

// BENCHMARKS.md's resnet18_cifar: 3x3 stem (64, stride 1, no pool), stages of 2 basic blocks
// with 64/128/256/512 channels and strides 1/2/2/2, global average pool, dense 10; convs
// without bias; padding 1 on the 3x3 convs as torchvision has it.
ModelSpec resnet18_cifar(std::int64_t batch) {
  ModelBuilder b({batch, 32, 32, 3});
  b.conv2d(64, 3, {.name = "stem", .padding = 1, .bias = false})
      .batch_norm({.name = "stem_bn"})
      .relu({.name = "stem_relu"});
  std::int64_t in = 64;
  const std::int64_t channels[] = {64, 128, 256, 512};
  for (int stage = 0; stage < 4; ++stage) {
    const std::int64_t c = channels[stage];
    for (int block = 0; block < 2; ++block) {
      const std::string name =
          "stage" + std::to_string(stage + 1) + "_block" + std::to_string(block + 1);
      basic_block(b, in, c, block == 0 && stage > 0 ? 2 : 1, name);
      in = c;
    }
  }
  b.global_avg_pool({.name = "pool"}).dense(kClasses, {.name = "logits"});
  return b.spec();
}

struct Preset {
  const char* name;
  const char* description;
  ModelSpec (*build)(std::int64_t batch);
};

// Extension point: a new preset is one more row here, with its builder function above;
// preset_names(), the CLI's help and the tests pick it up.
constexpr std::array kPresets{
    Preset{"mlp", "Fashion-MNIST MLP: 784-512-256-10, relu, dropout 0.2", fashion_mlp},
    Preset{"small_mlp", "BENCHMARKS.md small_mlp: 784-512-256-10, relu, dropout 0.2", fashion_mlp},
    Preset{"large_mlp", "BENCHMARKS.md large_mlp: 784-4096-4096-4096-10, relu", large_mlp},
    Preset{"logistic", "logistic regression: 784-10", logistic},
    Preset{"cnn",
           "Fashion-MNIST CNN on 28x28x1 images: 2x(conv 32 3x3, BN, relu), maxpool, 2x(conv 64, "
           "BN, relu), maxpool, dense 256, relu, dropout 0.3, dense 10",
           fashion_cnn},
    Preset{"resnet18_cifar",
           "BENCHMARKS.md resnet18_cifar: CIFAR ResNet-18 on 32x32x3 images (basic blocks "
           "64/128/256/512, BN, 1x1 conv shortcuts), 11.2M parameters",
           resnet18_cifar},
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
  names.reserve(kPresets.size());
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
