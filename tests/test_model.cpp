// Building, checking and serialising models.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

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

// Found by tests/fuzz/fuzz_model_spec (corpus file crash-number-overflow.json): a number beyond
// double's range made nlohmann throw out_of_range, which escaped ModelSpec::parse / load as an
// exception that is not a mixtrain::Error.
TEST(Model, NumberOverflowInSpecJsonIsAConfigError) {
  const std::string text = R"({"input_shape":[4,8,8,3],"layers":[{"type":"batch_norm",)"
                           R"("attrs":{"epsilon":9E999999747378752e-0       6}}]})";
  try {
    ModelSpec::parse(text, "spec.json");
    ADD_FAILURE() << "did not throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("spec.json: invalid JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a ConfigError: " << e.what();
  }
  const auto path = std::filesystem::temp_directory_path() / "mixtrain_overflow_spec.json";
  { std::ofstream(path) << text; }
  EXPECT_THROW(ModelSpec::load(path), ConfigError);
  std::filesystem::remove(path);
}

// A non-string "output" made nlohmann's json::value() throw type_error past from_json.
TEST(Model, NonStringOutputIsAConfigError) {
  const auto j = nlohmann::json::parse(
      R"({"input_shape": [4, 3], "output": 5, "layers": [{"type": "relu"}]})");
  try {
    ModelSpec::from_json(j);
    ADD_FAILURE() << "did not throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("field 'output' has the wrong type"), std::string::npos)
        << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a ConfigError: " << e.what();
  }
}

// Found by fuzz_model_spec (corpus file crash-input-shape-float.json): an input dimension beyond
// int64, which nlohmann reads as a float, was cast to int64 (undefined behaviour; in a plain
// build the spec was then rejected for a wrapped dimension, or not at all for other values).
TEST(Model, InputShapeMustHoldIntegers) {
  for (const char* shape : {"[44112860184666666666666666627387904,1904]", "[4,2.5]",
                            "[4,18446744073709551615]", "[4,\"8\"]", "4"}) {
    SCOPED_TRACE(shape);
    const std::string text =
        std::string(R"({"input_shape":)") + shape + R"(,"layers":[{"type":"flatten"}]})";
    try {
      ModelSpec::parse(text, "spec.json");
      ADD_FAILURE() << "parsed";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("spec.json: model spec: "), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("input_shape"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << "not a ConfigError: " << e.what();
    }
  }
  EXPECT_EQ(ModelSpec::parse(R"({"input_shape":[4.0,8],"layers":[{"type":"relu"}]})").input_shape,
            (Shape{4, 8}));
}

// Run through tests/fuzz/fuzz_model_spec (UBSan), these specs overflowed 64-bit shape arithmetic
// (numel, a reshape's product, conv's fan-in) or cast an out-of-range float to an integer, and
// in a plain build some compiled into models with wrapped sizes. Each is now an error.
TEST(Model, HugeShapesAndAttributesAreErrorsNotOverflow) {
  struct Case {
    std::string json;
    std::string message;
  };
  const std::vector<Case> cases = {
      {R"({"input_shape":[4,16],"layers":[{"type":"dense","attrs":{"units":4611686018427387904}}]})",
       "layer 'dense_1': attribute 'units' is out of range (at most 2^31 - 1)"},
      {R"({"input_shape":[4,16],"layers":[{"type":"dense","attrs":{"units":1e30}}]})",
       "attribute 'units' must be an integer of magnitude at most 2^31 - 1"},
      {R"({"input_shape":[4,16],"layers":[{"type":"dense","attrs":{"units":2.5}}]})",
       "attribute 'units' must be an integer"},
      {R"({"input_shape":[4,16],"layers":[{"type":"dense","attrs":{"units":-4611686018427387904}}]})",
       "attribute 'units' is out of range"},
      {R"({"input_shape":[4611686018427387904,16,4611686018427387904],"layers":[{"type":"flatten"}]})",
       "model input shape [4611686018427387904, 16, 4611686018427387904] has more elements than "
       "64 bits can count"},
      {R"({"input_shape":[1048576,1048576,2],"layers":[{"type":"flatten"}]})",
       "model input shape [1048576, 1048576, 2] holds more than 2^40 elements"},
      {R"({"input_shape":[1024,1024],"layers":[{"type":"dense","attrs":{"units":2147483647}}]})",
       "layer 'dense_1' (dense): output [2147483647] for a batch of 1024 holds more than 2^40"},
      {R"({"input_shape":[1,1048576],"layers":[{"type":"dense","attrs":{"units":2097152}}]})",
       "layer 'dense_1' (dense): parameter 'weight' [2097152, 1048576] holds more than 2^40"},
      {R"({"input_shape":[2,8],"layers":[{"type":"reshape","attrs":{"shape":)"
       R"([2147483647,2147483647,2147483647,-1]}}]})",
       "layer 'reshape_1' (reshape): target shape [2147483647, 2147483647, 2147483647, -1] has "
       "more elements than 64 bits can count"},
      {R"({"input_shape":[2,8,8,3],"layers":[{"type":"conv2d","attrs":{"filters":4,)"
       R"("kernel":2147483648}}]})",
       "layer 'conv2d_1': attribute 'kernel' is out of range"},
      {R"({"input_shape":[1,1,1,1048576],"layers":[{"type":"conv2d","attrs":{"filters":)"
       R"(2147483647,"kernel":1,"padding":[2147483647,2147483647]}}]})",
       "layer 'conv2d_1' (conv2d): "},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.json);
    try {
      compile(ModelSpec::parse(c.json, "spec.json"));
      ADD_FAILURE() << "compiled";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
    }
  }
  // A float that is an integer is that integer.
  EXPECT_EQ(
      compile(ModelSpec::parse(
                  R"({"input_shape":[4,16],"layers":[{"type":"dense","attrs":{"units":8.0}}]})"))
          .output_shape(),
      (Shape{4, 8}));
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
