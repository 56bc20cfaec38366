// Tests for the preset models: every preset compiles, with exact parameter counts and layers.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/presets.hpp"
#include "mixtrain/error.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain {
namespace {

// Weights and biases of a dense layer in -> out.
constexpr std::int64_t dense_params(std::int64_t in, std::int64_t out) {
  return in * out + out;
}

std::vector<std::string> layer_types(const ModelSpec& spec) {
  std::vector<std::string> types;
  for (const LayerSpec& l : spec.layers) types.push_back(l.type);
  return types;
}

TEST(Presets, NamesAreListedInOrder) {
  EXPECT_EQ(preset_names(), (std::vector<std::string>{"mlp", "small_mlp", "large_mlp", "logistic",
                                                      "cnn", "resnet18_cifar"}));
  for (const std::string& name : preset_names()) {
    EXPECT_TRUE(is_preset(name)) << name;
    EXPECT_FALSE(preset_description(name).empty()) << name;
  }
  EXPECT_FALSE(is_preset("gpt_small"));
  EXPECT_FALSE(is_preset(""));
}

TEST(Presets, EveryPresetCompilesWithTheRequestedBatch) {
  for (const std::string& name : preset_names()) {
    SCOPED_TRACE(name);
    const Model m = compile(preset_model(name, 32));
    const Shape in = name == "cnn"              ? Shape{32, 28, 28, 1}
                     : name == "resnet18_cifar" ? Shape{32, 32, 32, 3}
                                                : Shape{32, 784};
    EXPECT_EQ(m.input_shape(), in);
    EXPECT_EQ(m.output_shape(), (Shape{32, 10}));
  }
}

// Convolutions (no bias: batch-norm follows), batch-norm gamma and beta, dense layers.
TEST(Presets, ConvPresetParameterCountsAreExact) {
  const std::int64_t cnn = 9 * 1 * 32 + 9 * 32 * 32 + 9 * 32 * 64 + 9 * 64 * 64 +
                           2 * (32 + 32 + 64 + 64) + dense_params(7 * 7 * 64, 256) +
                           dense_params(256, 10);
  EXPECT_EQ(compile(preset_model("cnn", 64)).parameter_count(), cnn);
  // torchvision-style CIFAR ResNet-18: 11,173,962 parameters (running statistics are not
  // parameters).
  EXPECT_EQ(compile(preset_model("resnet18_cifar", 256)).parameter_count(), 11173962);
}

TEST(Presets, Resnet18HasEightBasicBlocksAndThreeProjections) {
  ModelSpec spec = preset_model("resnet18_cifar", 8);
  int adds = 0, convs = 0, bns = 0, shortcuts = 0;
  for (const LayerSpec& l : spec.layers) {
    adds += l.type == "add";
    convs += l.type == "conv2d";
    bns += l.type == "batch_norm";
    shortcuts += l.type == "conv2d" && l.attrs.json().at("kernel") == nlohmann::json::array({1, 1});
    if (l.type == "conv2d") {
      EXPECT_FALSE(l.attrs.json().at("bias").get<bool>()) << l.name;
    }
  }
  EXPECT_EQ(adds, 8);
  EXPECT_EQ(convs, 1 + 16 + 3);
  EXPECT_EQ(bns, convs);
  EXPECT_EQ(shortcuts, 3);
  // 32x32 -> 16 -> 8 -> 4 after the stride-2 stages, pooled to 512 features.
  spec.output = spec.layers[spec.layers.size() - 3].name;
  EXPECT_EQ(compile(spec).output_shape(), (Shape{8, 4, 4, 512}));
}

TEST(Presets, ParameterCountsAreExact) {
  const std::int64_t mlp = dense_params(784, 512) + dense_params(512, 256) + dense_params(256, 10);
  EXPECT_EQ(mlp, 535818);
  EXPECT_EQ(compile(preset_model("mlp", 64)).parameter_count(), mlp);
  EXPECT_EQ(compile(preset_model("small_mlp", 64)).parameter_count(), mlp);
  const std::int64_t large =
      dense_params(784, 4096) + 2 * dense_params(4096, 4096) + dense_params(4096, 10);
  EXPECT_EQ(large, 36818954);
  EXPECT_EQ(compile(preset_model("large_mlp", 512)).parameter_count(), large);
  EXPECT_EQ(compile(preset_model("logistic", 8)).parameter_count(), dense_params(784, 10));
}

TEST(Presets, MlpMatchesTheBenchmarkDefinition) {
  const ModelSpec spec = preset_model("mlp", 64);
  EXPECT_EQ(layer_types(spec),
            (std::vector<std::string>{"dense", "relu", "dropout", "dense", "relu", "dense"}));
  EXPECT_FLOAT_EQ(spec.layers[2].attrs.json().at("rate").get<float>(), 0.2f);
  EXPECT_EQ(spec.layers[0].attrs.json().at("units").get<std::int64_t>(), 512);
  EXPECT_EQ(spec.layers[3].attrs.json().at("units").get<std::int64_t>(), 256);
  EXPECT_EQ(spec.output, "logits");  // logits, no softmax
  // small_mlp is BENCHMARKS.md's name for the same network.
  EXPECT_EQ(preset_model("small_mlp", 64).to_json(), spec.to_json());
}

TEST(Presets, LargeMlpHasThreeHiddenLayersOf4096) {
  const ModelSpec spec = preset_model("large_mlp", 512);
  EXPECT_EQ(layer_types(spec),
            (std::vector<std::string>{"dense", "relu", "dense", "relu", "dense", "relu", "dense"}));
  for (int i : {0, 2, 4}) {
    EXPECT_EQ(spec.layers[static_cast<std::size_t>(i)].attrs.json().at("units").get<std::int64_t>(),
              4096);
  }
}

TEST(Presets, SpecsRoundTripThroughJson) {
  for (const std::string& name : preset_names()) {
    const ModelSpec spec = preset_model(name, 16);
    EXPECT_EQ(ModelSpec::from_json(spec.to_json()).to_json(), spec.to_json()) << name;
  }
}

TEST(Presets, UnknownNameListsThePresets) {
  try {
    preset_model("resnet50", 64);
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("resnet50"), std::string::npos) << what;
    for (const std::string& name : preset_names()) {
      EXPECT_NE(what.find(name), std::string::npos) << what;
    }
  }
  EXPECT_THROW(preset_description("nope"), ConfigError);
}

TEST(Presets, BatchMustBePositive) {
  EXPECT_THROW(preset_model("mlp", 0), ConfigError);
  EXPECT_THROW(preset_model("logistic", -4), ConfigError);
}

}  // namespace
}  // namespace mixtrain
