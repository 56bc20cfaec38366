// Preset models by name: the models the CLI (`--model mlp`), the examples and the benchmarks
// share, so that every tool trains exactly the same network.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mixtrain/model.hpp"

namespace mixtrain {

// The spec of preset `name` with input shape [batch, features...] (images channels-last):
//   mlp        Fashion-MNIST MLP: 784 -> dense 512, relu, dropout 0.2 -> dense 256, relu -> 10
//   small_mlp  BENCHMARKS.md's small_mlp (the same network as mlp)
//   large_mlp  BENCHMARKS.md's large_mlp: 784 -> 4096 -> 4096 -> 4096 -> 10, relu
//   logistic   multinomial logistic regression: 784 -> dense 10
//   cnn        Fashion-MNIST CNN, input [batch, 28, 28, 1]: 2 x (conv 32 3x3 same, batch-norm,
//              relu), max-pool 2, 2 x (conv 64, batch-norm, relu), max-pool 2, flatten, dense
//              256, relu, dropout 0.3, dense 10
//   resnet18_cifar  BENCHMARKS.md's CIFAR ResNet-18, input [batch, 32, 32, 3]
// Every preset ends in logits (no softmax): train it with a cross-entropy loss. Throws
// ConfigError for an unknown name (listing the presets) or a batch < 1.
ModelSpec preset_model(const std::string& name, std::int64_t batch);

// The preset names, in the order of the table above.
std::vector<std::string> preset_names();

// One line describing preset `name` (for help texts); ConfigError for an unknown name.
std::string preset_description(const std::string& name);

// True when `name` names a preset.
bool is_preset(const std::string& name);

}  // namespace mixtrain
