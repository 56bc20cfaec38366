// Building, checking and serialising models.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "error_message.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain {
namespace {

TEST(Model, InfersShapesAndCountsParameters) {
  const Model m = ModelBuilder({64, 784})
                      .dense(512, {.name = "dense1"})
                      .relu()
                      .dropout(0.2f)
                      .dense(256)
                      .relu()
                      .dense(10)
                      .compile();
  EXPECT_EQ(m.parameter_count(), 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10);
  EXPECT_EQ(m.output_shape(), (Shape{64, 10}));
  EXPECT_NE(m.summary().find("dense1"), std::string::npos);
}

TEST(Model, ErrorsSurfaceAtCompileAndNameTheLayer) {
  const std::string zero = message_of([] {
    ModelBuilder({8, 4}).dense(0, {.name = "empty"}).compile();
  });
  EXPECT_NE(zero.find("'empty'"), std::string::npos) << zero;
  const std::string rate = message_of([] { ModelBuilder({8, 4}).dropout(1.5f).compile(); });
  EXPECT_NE(rate.find("dropout_1"), std::string::npos) << rate;
  const std::string reshape = message_of([] {
    ModelBuilder({8, 6}).reshape({4, 2}, {.name = "r"}).compile();
  });
  EXPECT_NE(reshape.find("'r'"), std::string::npos) << reshape;
}

// Options out of range are ConfigError (as error.hpp documents), shapes that do not fit ShapeError.
TEST(Model, OptionErrorsAreConfigErrorsAndShapeErrorsShapeErrors) {
  EXPECT_THROW(ModelBuilder({8, 4}).dense(0).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({8, 4}).dropout(1.5f).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({8, 4}).reshape({-1, -1}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({8, 4}).reshape({0}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({8, 4}).batch_norm({.momentum = 2.0f}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({8, 4}).batch_norm({.epsilon = 0.0f}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).conv2d(0, 3).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).conv2d(4, 0).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).conv2d(4, 3, {.stride = 0}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).conv2d(4, 3, {.padding = -1}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 4}).conv2d(6, 3, {.groups = 4}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).max_pool2d(0).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 1}).avg_pool2d(2, {.padding = 2}).compile(), ConfigError);
  EXPECT_THROW(ModelBuilder({8, 6}).reshape({4, 2}).compile(), ShapeError);
  EXPECT_THROW(ModelBuilder({2, 8, 8, 6}).conv2d(8, 3, {.groups = 4}).compile(), ShapeError);
  EXPECT_THROW(ModelBuilder({2, 3, 3, 1}).max_pool2d(4).compile(), ShapeError);
  EXPECT_THROW(ModelBuilder({8, 4}).dense(3).conv2d(2, 1).compile(), ShapeError);
}

TEST(Model, AnEmptyModelIsAnErrorNotACrash) {
  const Model empty;
  EXPECT_THROW((void)empty.parameter_count(), ConfigError);
  EXPECT_THROW((void)empty.summary(), ConfigError);
  EXPECT_THROW((void)empty.output_shape(), ConfigError);
  EXPECT_THROW((void)empty.spec(), ConfigError);
  TrainerConfig c;
  c.device = Device::CPU;
  try {
    Trainer t(empty, c);
    FAIL() << "a trainer of an empty model";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("compile"), std::string::npos) << e.what();
  }
}

TEST(Model, ResidualShapeErrorNamesBothPaths) {
  const std::string msg = message_of([] {
    ModelBuilder({8, 16}).residual([](ModelBuilder& b) { b.dense(32).relu(); }).compile();
  });
  EXPECT_NE(msg.find("'relu_1'"), std::string::npos) << msg;  // where the body path ends
  EXPECT_NE(msg.find("'input'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16]"), std::string::npos) << msg;
}

TEST(Model, ResidualWithShortcutCompiles) {
  const Model m = ModelBuilder({8, 16})
                      .residual([](ModelBuilder& b) { b.dense(32).relu().dense(32); },
                                [](ModelBuilder& b) { b.dense(32, {.name = "proj"}); })
                      .relu()
                      .dense(4)
                      .compile();
  EXPECT_EQ(m.output_shape(), (Shape{8, 4}));
}

TEST(Model, SpecRoundTripsThroughJson) {
  const ModelSpec spec = ModelBuilder({16, 20})
                             .dense(12, {.name = "a", .bias = false})
                             .gelu(true)
                             .residual([](ModelBuilder& b) { b.dense(12).tanh(); })
                             .dropout(0.1f)
                             .dense(3)
                             .softmax()
                             .spec();
  const ModelSpec back = ModelSpec::from_json(nlohmann::json::parse(spec.to_json().dump()));
  EXPECT_EQ(back.to_json(), spec.to_json());
  EXPECT_EQ(compile(back).summary(), compile(spec).summary());

  const auto path = std::filesystem::temp_directory_path() / "mixtrain_spec_test.json";
  spec.save(path);
  EXPECT_EQ(ModelSpec::load(path).to_json(), spec.to_json());
  std::filesystem::remove(path);
}

TEST(Model, MalformedSpecsGiveClearErrors) {
  const auto path = std::filesystem::temp_directory_path() / "mixtrain_bad_spec.json";
  { std::ofstream(path) << "{\"input_shape\": [4, 3], \"layers\": [ {\"type\": \"dense\""; }
  const std::string syntax = message_of([&] { ModelSpec::load(path); });
  EXPECT_NE(syntax.find("invalid JSON"), std::string::npos) << syntax;
  { std::ofstream(path) << R"({"input_shape": [4, 3], "layers": [{"type": "densee"}]})"; }
  const std::string type = message_of([&] { compile(ModelSpec::load(path)); });
  EXPECT_NE(type.find("unknown type 'densee'"), std::string::npos) << type;
  { std::ofstream(path) << R"({"input_shape": [4, 3], "layers": [{"type": "dense"}]})"; }
  const std::string attr = message_of([&] { compile(ModelSpec::load(path)); });
  EXPECT_NE(attr.find("units"), std::string::npos) << attr;
  std::filesystem::remove(path);
  EXPECT_NE(message_of([&] { ModelSpec::load(path); }).find("cannot open"), std::string::npos);
}

TEST(Model, HandWrittenSpecsChainLayers) {
  const auto j = nlohmann::json::parse(R"({
    "input_shape": [32, 784],
    "layers": [
      {"type": "dense", "attrs": {"units": 64}},
      {"type": "relu"},
      {"type": "dense", "attrs": {"units": 10}}
    ]})");
  EXPECT_EQ(compile(ModelSpec::from_json(j)).output_shape(), (Shape{32, 10}));
}

}  // namespace
}  // namespace mixtrain
