// The weights file format (src/io/weights_file.hpp) and Trainer::save_weights / load_weights:
// round trips, architecture checks, non-finite values, hostile sizes, version-1 files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/weights_file.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain {
namespace {

namespace fs = std::filesystem;

template <typename E, typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw the wrong exception type: " << e.what();
    return {};
  }
  ADD_FAILURE() << "did not throw";
  return {};
}

void expect_contains(const std::string& message, std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts) {
    EXPECT_NE(message.find(part), std::string::npos)
        << "message \"" << message << "\" lacks \"" << part << "\"";
  }
}

void append_le64(std::string& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void append_floats(std::string& out, const std::vector<float>& values) {
  out.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

// A version-2 file from a header text and values, for headers serialize would never write.
std::string v2_file(const std::string& header, const std::vector<float>& values = {}) {
  std::string out = "MXTWEI02";
  append_le64(out, header.size());
  out += header;
  append_floats(out, values);
  return out;
}

// A version-1 file as mixtrain wrote it before version 2: magic, count, values.
std::string v1_file(const std::vector<float>& values, std::uint64_t count) {
  std::string out = "MXTWEI01";
  append_le64(out, count);
  append_floats(out, values);
  return out;
}

// dense 3 -> 2 and a batch-norm with state.
WeightsArchitecture small_architecture() {
  return {{"dense1", "dense", {{"weight", {2, 3}}, {"bias", {2}}}, {}},
          {"bn",
           "batch_norm",
           {{"gamma", {2}}, {"beta", {2}}},
           {{"running_mean", {2}}, {"running_var", {2}}}}};
}

std::vector<float> small_values() {
  std::vector<float> v(16);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = 0.25f * static_cast<float>(i) - 1.0f;
  v[1] = -0.0f;
  v[2] = std::numeric_limits<float>::denorm_min();
  v[3] = std::numeric_limits<float>::max();
  return v;
}

// ---------------------------------------------------------------------------------------------
// The format, without a trainer

TEST(WeightsFile, RoundTripKeepsArchitectureAndEveryBit) {
  const std::string bytes = serialize_weights_file(small_architecture(), small_values());
  EXPECT_EQ(bytes.substr(0, 8), "MXTWEI02");
  const WeightsFile f = parse_weights_file(bytes, "w.bin");
  EXPECT_EQ(f.version, 2);
  EXPECT_EQ(f.architecture, small_architecture());
  ASSERT_EQ(f.values.size(), small_values().size());
  for (std::size_t i = 0; i < f.values.size(); ++i) {
    EXPECT_EQ(std::signbit(f.values[i]), std::signbit(small_values()[i])) << i;
    EXPECT_EQ(f.values[i], small_values()[i]) << i;
  }
  const WeightsArchitecture expected = small_architecture();
  EXPECT_NO_THROW(parse_weights_file(bytes, "w.bin", &expected));
  // An architecture without parameters holds no values.
  EXPECT_TRUE(parse_weights_file(serialize_weights_file({}, {}), "w.bin").values.empty());
  EXPECT_THROW(serialize_weights_file(small_architecture(), {1.0f}), ShapeError);
}

TEST(WeightsFile, HeaderIsReadableJson) {
  const std::string bytes = serialize_weights_file(small_architecture(), small_values());
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[8 + i]);
  ASSERT_EQ(bytes.size(), 16 + n + 16 * 4);
  const auto j = nlohmann::json::parse(bytes.substr(16, n));
  EXPECT_EQ(j["format"], "mixtrain.weights");
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(j["layers"][1]["name"], "bn");
  EXPECT_EQ(j["layers"][1]["state"][1]["name"], "running_var");
  EXPECT_EQ(j["layers"][0]["params"][0]["shape"], nlohmann::json::array({2, 3}));
}

TEST(WeightsFile, TruncatedOrOversizedValuesAreRejected) {
  const std::string bytes = serialize_weights_file(small_architecture(), small_values());
  for (const std::string& bad :
       {bytes.substr(0, bytes.size() - 1), bytes.substr(0, bytes.size() - 4), bytes + '\0',
        bytes + std::string(4, '\0')}) {
    expect_contains(error_of<IoError>([&] { parse_weights_file(bad, "w.bin"); }),
                    {"w.bin: truncated or oversized", "16 values (64 bytes)"});
  }
  expect_contains(error_of<IoError>([&] { parse_weights_file(bytes.substr(0, 20), "w.bin"); }),
                  {"w.bin", "header is said to be"});
  expect_contains(error_of<IoError>([&] { parse_weights_file("MXTWEI02", "w.bin"); }),
                  {"w.bin", "truncated to 8 bytes"});
}

TEST(WeightsFile, HostileHeaderLengthsAreRejectedWithoutOverflow) {
  const std::string good = serialize_weights_file(small_architecture(), small_values());
  for (const std::uint64_t n :
       {std::numeric_limits<std::uint64_t>::max(), std::uint64_t{1} << 63,
        std::numeric_limits<std::uint64_t>::max() - 15, std::uint64_t{good.size() - 15}}) {
    std::string bad = good.substr(0, 8);
    append_le64(bad, n);
    bad += good.substr(16);
    expect_contains(error_of<IoError>([&] { parse_weights_file(bad, "w.bin"); }),
                    {"w.bin", "header is said to be", std::to_string(n) + " bytes long"});
  }
}

TEST(WeightsFile, OverflowingShapesAreRejected) {
  const auto header = [](const std::string& params) {
    return R"({"format":"mixtrain.weights","version":2,"layers":[{"name":"d","type":"dense",)"
           R"("params":)" +
           params + R"(,"state":[]}]})";
  };
  // 2^62 * 8 elements, and two tensors whose sum passes the limit: no wrap-around to a small
  // count that the few bytes after the header could match.
  for (const std::string& params :
       {std::string(R"([{"name":"weight","shape":[4611686018427387904,8]}])"),
        std::string(R"([{"name":"a","shape":[2305843009213693952]},)"
                    R"({"name":"b","shape":[2305843009213693952]}])"),
        std::string(R"([{"name":"a","shape":[4294967296,4294967296,4]}])")}) {
    SCOPED_TRACE(params);
    expect_contains(
        error_of<IoError>([&] { parse_weights_file(v2_file(header(params)), "w.bin"); }),
        {"w.bin: layer 'd' parameter", "value count past"});
  }
  expect_contains(
      error_of<IoError>([&] {
        parse_weights_file(v2_file(header(R"([{"name":"w","shape":[-1]}])"), {1.0f}), "w.bin");
      }),
      {"w.bin: malformed weights header: header.layers[0].params[0].shape[0]", "non-negative"});
  expect_contains(error_of<IoError>([&] {
                    parse_weights_file(v2_file(header(R"([{"name":"w","shape":[1.5]}])")), "w.bin");
                  }),
                  {"shape[0]", "1.5"});
  expect_contains(error_of<IoError>([&] {
                    parse_weights_file(
                        v2_file(header(R"([{"name":"w","shape":[18446744073709551615]}])")),
                        "w.bin");
                  }),
                  {"shape[0]", "non-negative 64-bit"});
}

TEST(WeightsFile, MalformedHeadersNameTheField) {
  struct Case {
    std::string header;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"not json", "not valid JSON"},
      {"[]", "header: expected a JSON object"},
      {R"({"version":2,"layers":[]})", "missing field 'format'"},
      {R"({"format":"other","version":2,"layers":[]})", "header.format: expected"},
      {R"({"format":"mixtrain.weights","version":3,"layers":[]})", "header.version"},
      {R"({"format":"mixtrain.weights","version":2})", "missing field 'layers'"},
      {R"({"format":"mixtrain.weights","version":2,"layers":{}})",
       "header.layers: expected an array, found object"},
      {R"({"format":"mixtrain.weights","version":2,"layers":[{"name":1}]})",
       "header.layers[0].name: expected a string, found number"},
      {R"({"format":"mixtrain.weights","version":2,"layers":[{"name":"d","type":"dense",)"
       R"("params":[{"name":"w","shape":[1]}]}]})",
       "header.layers[0]: missing field 'state'"},
      {R"({"format":"mixtrain.weights","version":2,"layers":[{"name":"d","type":"dense",)"
       R"("params":[7],"state":[]}]})",
       "header.layers[0].params[0]: expected an object"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.header);
    expect_contains(error_of<IoError>([&] { parse_weights_file(v2_file(c.header), "w.bin"); }),
                    {"w.bin", c.message});
  }
}

TEST(WeightsFile, NotAWeightsFileAndUnknownVersions) {
  expect_contains(error_of<IoError>([] { parse_weights_file("", "w.bin"); }),
                  {"w.bin: not a mixtrain weights file"});
  expect_contains(error_of<IoError>([] { parse_weights_file("PK\x03\x04 zip", "w.bin"); }),
                  {"w.bin: not a mixtrain weights file"});
  std::string v3 = "MXTWEI03";
  append_le64(v3, 0);
  expect_contains(error_of<IoError>([&] { parse_weights_file(v3, "w.bin"); }),
                  {"w.bin", "unknown version", "MXTWEI03"});
}

TEST(WeightsFile, NonFiniteValuesNameLayerParameterAndElement) {
  std::vector<float> values = small_values();
  values[7] = std::nanf("");  // bias element 1 (weight holds 6)
  expect_contains(error_of<DataError>([&] {
                    parse_weights_file(serialize_weights_file(small_architecture(), values),
                                       "w.bin");
                  }),
                  {"w.bin: layer 'dense1' parameter 'bias' element 1 is NaN"});
  values = small_values();
  values[15] = -std::numeric_limits<float>::infinity();  // the last running_var
  expect_contains(error_of<DataError>([&] {
                    parse_weights_file(serialize_weights_file(small_architecture(), values),
                                       "w.bin");
                  }),
                  {"w.bin: layer 'bn' state 'running_var' element 1 is -infinity"});
}

TEST(WeightsFile, ArchitectureMismatchNamesTheFirstDifference) {
  const std::string bytes = serialize_weights_file(small_architecture(), small_values());
  struct Case {
    WeightsArchitecture model;
    std::string message;
  };
  std::vector<Case> cases;
  WeightsArchitecture a = small_architecture();
  a[0].params[0].shape = {3, 2};  // same count, another shape
  cases.push_back({a,
                   "layer 'dense1' (dense) parameter 'weight': the model's shape is [3, 2], "
                   "the file's [2, 3]"});
  a = small_architecture();
  a[0].name = "dense_1";
  cases.push_back({a,
                   "layer 1 with parameters or state is 'dense_1' (dense) in the model but "
                   "'dense1' (dense) in the file"});
  a = small_architecture();
  a[1].type = "layer_norm";
  cases.push_back({a, "'bn' (layer_norm) in the model but 'bn' (batch_norm) in the file"});
  a = small_architecture();
  a[1].state.pop_back();
  cases.push_back({a,
                   "layer 'bn' (batch_norm) has state 'running_var' [2] in the file but not "
                   "in the model"});
  a = small_architecture();
  a[0].params.push_back({"scale", {1}});
  cases.push_back({a, "layer 'dense1' (dense) has parameter 'scale' [1] in the model but not"});
  a = small_architecture();
  a.pop_back();
  cases.push_back({a,
                   "the file's layer 'bn' (batch_norm) has parameters or state, but the "
                   "model has only 1 such layers"});
  a = small_architecture();
  a.push_back({"out", "dense", {{"weight", {1, 2}}}, {}});
  cases.push_back({a,
                   "the model's layer 'out' (dense) has parameters or state, but the file "
                   "describes only 2"});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.message);
    expect_contains(
        error_of<ShapeError>([&] { parse_weights_file(bytes, "w.bin", &c.model); }),
        {"w.bin: the weights are for another architecture than the model: ", c.message});
  }
}

TEST(WeightsFile, Version1FilesParseWithCountAndFiniteChecks) {
  const std::vector<float> values = small_values();
  const WeightsFile f = parse_weights_file(v1_file(values, 16), "old.bin");
  EXPECT_EQ(f.version, 1);
  EXPECT_TRUE(f.architecture.empty());
  EXPECT_EQ(f.values, values);
  const WeightsArchitecture model = small_architecture();
  EXPECT_EQ(parse_weights_file(v1_file(values, 16), "old.bin", &model).values, values);

  // The count against the model (the only architecture check a version-1 file allows).
  WeightsArchitecture bigger = small_architecture();
  bigger[0].params[1].shape = {3};
  expect_contains(
      error_of<ShapeError>([&] { parse_weights_file(v1_file(values, 16), "old.bin", &bigger); }),
      {"old.bin: a version-1 weights file of 16 values, but the model has 17"});
  // Sizes, without overflow: 2^62 floats are 2^64 bytes, which wraps to 0 in 64 bits.
  for (const std::uint64_t count : {std::uint64_t{1} << 62, std::uint64_t{15}, std::uint64_t{17},
                                    std::numeric_limits<std::uint64_t>::max()}) {
    SCOPED_TRACE(count);
    expect_contains(
        error_of<IoError>([&] { parse_weights_file(v1_file({}, count), "old.bin", &model); }),
        {"old.bin: truncated or oversized"});
    expect_contains(
        error_of<IoError>([&] { parse_weights_file(v1_file(values, count), "old.bin"); }),
        {"old.bin: truncated or oversized"});
  }
  // Non-finite values: by the model's layout when there is one, else by index.
  std::vector<float> nan = values;
  nan[12] = std::numeric_limits<float>::infinity();
  expect_contains(
      error_of<DataError>([&] { parse_weights_file(v1_file(nan, 16), "old.bin", &model); }),
      {"old.bin: layer 'bn' state 'running_mean' element 0 is +infinity",
       "a version-1 file records no architecture"});
  expect_contains(error_of<DataError>([&] { parse_weights_file(v1_file(nan, 16), "old.bin"); }),
                  {"old.bin: value 12 is +infinity"});
}

// Found by tests/fuzz/fuzz_weights_file (corpus file crash-v1-no-values.bin): a file without
// values passed a null pointer to memcpy (undefined behaviour even for 0 bytes; UBSan in the
// fuzz build reports it, a plain build does not).
TEST(WeightsFile, FilesWithoutValuesParse) {
  const std::string v1("MXTWEI01\0\0\0\0\0\0\0\0", 16);
  const WeightsFile f = parse_weights_file(v1, "empty.bin");
  EXPECT_EQ(f.version, 1);
  EXPECT_TRUE(f.values.empty());
  const std::string v2 = serialize_weights_file({}, {});
  EXPECT_TRUE(parse_weights_file(v2, "empty.bin").values.empty());
  const WeightsArchitecture none;
  EXPECT_TRUE(parse_weights_file(v1, "empty.bin", &none).values.empty());
}

// ---------------------------------------------------------------------------------------------
// Through the trainer

class TrainerWeightsFile : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) /
           ("mixtrain_weights_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  static TrainerConfig config() {
    TrainerConfig c;
    c.device = Device::CPU;
    c.seed = 3;
    return c;
  }

  fs::path write(const std::string& name, const std::string& bytes) const {
    const fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }

  static std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  fs::path dir_;
};

// Two models of 51 parameters each: 8 -> 4 -> 3 and 8 -> 3 -> 6.
Model model_4_3() {
  return ModelBuilder({4, 8}).dense(4).relu().dense(3).compile();
}
Model model_3_6() {
  return ModelBuilder({4, 8}).dense(3).relu().dense(6).compile();
}

// A small CNN with batch-norm state; its conv -> batch_norm -> relu fuses.
Model small_cnn() {
  return ModelBuilder({2, 4, 4, 1})
      .conv2d(2, 3, {.name = "conv", .padding = "same"})
      .batch_norm({.name = "bn"})
      .relu()
      .flatten()
      .dense(3, {.name = "out"})
      .compile();
}

std::vector<float> distinct_values(std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = 0.01f * static_cast<float>(i) + 0.5f;
  return v;
}

TEST_F(TrainerWeightsFile, SaveLoadRoundTripWithLayerState) {
  Trainer a(small_cnn(), config());
  const std::vector<float> w = distinct_values(a.weights().size());
  a.set_weights(w);
  a.save_weights(dir_ / "w.bin");
  EXPECT_EQ(slurp(dir_ / "w.bin").substr(0, 8), "MXTWEI02");
  Trainer b(small_cnn(), config());
  b.load_weights(dir_ / "w.bin");
  EXPECT_EQ(b.weights(), w);
  const WeightsFile f = parse_weights_file(slurp(dir_ / "w.bin"), "w.bin");
  ASSERT_EQ(f.architecture.size(), 3u);
  EXPECT_EQ(f.architecture[1].name, "bn");  // the spec's name, not the fused node's "bn+relu_1"
  EXPECT_EQ(f.architecture[1].state,
            (std::vector<WeightsTensor>{{"running_mean", {2}}, {"running_var", {2}}}));
}

// The file records the spec's layers, so weights saved from a fused graph load into an unfused
// one (MIXTRAIN_FUSION=0) and back.
TEST_F(TrainerWeightsFile, ArchitectureDoesNotDependOnFusion) {
  Trainer fused(small_cnn(), config());
  fused.set_weights(distinct_values(fused.weights().size()));
  fused.save_weights(dir_ / "fused.bin");
  ::setenv("MIXTRAIN_FUSION", "0", 1);
  const Model plain_model = small_cnn();
  ::unsetenv("MIXTRAIN_FUSION");
  Trainer plain(plain_model, config());
  plain.load_weights(dir_ / "fused.bin");
  EXPECT_EQ(plain.weights(), fused.weights());
}

TEST_F(TrainerWeightsFile, SameParameterCountOtherArchitectureIsRejected) {
  Trainer a(model_4_3(), config());
  Trainer b(model_3_6(), config());
  ASSERT_EQ(a.weights().size(), b.weights().size());
  a.save_weights(dir_ / "w.bin");
  const std::vector<float> before = b.weights();
  const std::string msg = error_of<ShapeError>([&] { b.load_weights(dir_ / "w.bin"); });
  expect_contains(msg, {(dir_ / "w.bin").string(), "layer 'dense_1' (dense) parameter 'weight'",
                        "the model's shape is [3, 8], the file's [4, 8]"});
  EXPECT_EQ(b.weights(), before);  // untouched
}

TEST_F(TrainerWeightsFile, NonFiniteWeightsAreRejected) {
  Trainer a(model_4_3(), config());
  std::vector<float> w = a.weights();
  w[33] = std::nanf("");  // dense_1's bias, element 1 (the weight holds 32)
  a.set_weights(w);
  a.save_weights(dir_ / "nan.bin");
  Trainer b(model_4_3(), config());
  expect_contains(
      error_of<DataError>([&] { b.load_weights(dir_ / "nan.bin"); }),
      {(dir_ / "nan.bin").string(), "layer 'dense_1' parameter 'bias' element 1 is NaN"});
}

TEST_F(TrainerWeightsFile, Version1FilesStillLoad) {
  Trainer a(model_4_3(), config());
  const std::vector<float> w = distinct_values(a.weights().size());
  const fs::path old = write("old.bin", v1_file(w, w.size()));
  a.load_weights(old);
  EXPECT_EQ(a.weights(), w);
  // The count is all a version-1 file can be checked for.
  Trainer other(ModelBuilder({4, 8}).dense(5).compile(), config());
  expect_contains(error_of<ShapeError>([&] { other.load_weights(old); }),
                  {old.string(), "version-1", "51 values", "45"});
}

TEST_F(TrainerWeightsFile, Version1NonFiniteAndHostileCountAreRejected) {
  Trainer a(model_4_3(), config());
  std::vector<float> w = distinct_values(a.weights().size());
  w[50] = std::numeric_limits<float>::infinity();
  const fs::path inf = write("inf.bin", v1_file(w, w.size()));
  expect_contains(error_of<DataError>([&] { a.load_weights(inf); }),
                  {inf.string(), "layer 'dense_2' parameter 'bias' element 2 is +infinity"});
  // 2^62 floats: count * sizeof(float) wraps to 0, which matched the empty payload.
  const fs::path huge = write("huge.bin", v1_file({}, std::uint64_t{1} << 62));
  expect_contains(error_of<IoError>([&] { a.load_weights(huge); }),
                  {huge.string(), "truncated or oversized"});
}

}  // namespace
}  // namespace mixtrain
