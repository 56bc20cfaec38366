// Building models: a fluent ModelBuilder that records a ModelSpec (a DAG of named layers, JSON
// round-trip) and compile(), which checks it and infers every shape.
//
//   auto model = mixtrain::ModelBuilder({64, 784})
//                    .dense(512, {.name = "dense1"}).relu().dropout(0.2f)
//                    .dense(10)
//                    .compile();   // errors surface here and name the layer
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mixtrain/shape.hpp"

namespace mixtrain {

// A layer's settings (units, rate, alpha, kernel...) as a JSON object, an empty object by default.
// The JSON lives behind a pointer so that this header needs only <nlohmann/json_fwd.hpp>: code
// that reads or builds attributes includes <nlohmann/json.hpp> itself. Copies are deep.
class LayerAttrs {
 public:
  LayerAttrs();
  LayerAttrs(nlohmann::json attrs);  // NOLINT(google-explicit-constructor): {{"units", 64}}
  LayerAttrs(const LayerAttrs& other);
  LayerAttrs(LayerAttrs&& other) noexcept;
  LayerAttrs& operator=(const LayerAttrs& other);
  LayerAttrs& operator=(LayerAttrs&& other) noexcept;
  ~LayerAttrs();

  const nlohmann::json& json() const;
  nlohmann::json& json();

 private:
  std::unique_ptr<nlohmann::json> json_;  // never null
};

// One node of the model graph. `inputs` name earlier layers, or "input" for the model's input.
struct LayerSpec {
  std::string name;
  std::string type;
  std::vector<std::string> inputs;
  LayerAttrs attrs;
};

// A model's description: plain data, written to and read from JSON.
struct ModelSpec {
  Shape input_shape;              // [batch, features...]: the largest batch a step takes
  std::vector<LayerSpec> layers;  // in the order they were added; every input comes earlier
  std::string output;             // the layer whose output is the model's output

  nlohmann::json to_json() const;
  // Throws ConfigError naming the missing or malformed field.
  static ModelSpec from_json(const nlohmann::json& j);
  // Atomic write (temporary file, then rename): an existing file is never left half-written.
  void save(const std::filesystem::path& path) const;
  // Throws IoError (unreadable file) or ConfigError (malformed JSON, with its position).
  static ModelSpec load(const std::filesystem::path& path);
  // The JSON text of a spec (what load reads from the file); errors start with `source`.
  static ModelSpec parse(std::string_view text, const std::string& source = "model spec");
};

namespace graph {
struct Graph;
}

// A checked model: every layer valid, every shape known. Cheap to copy (shared, immutable).
// Only compile() makes a usable one; every call on a default-constructed Model throws
// ConfigError.
class Model {
 public:
  const ModelSpec& spec() const;
  const Shape& input_shape() const;  // [batch, ...]
  Shape output_shape() const;        // [batch, ...]
  std::int64_t parameter_count() const;
  // A table of layers: name, type, output shape, parameters.
  std::string summary() const;

  const graph::Graph& graph() const;  // internal

 private:
  friend Model compile(const ModelSpec& spec);
  std::shared_ptr<const graph::Graph> graph_;
};

// Checks a spec and infers shapes. Throws ShapeError or ConfigError naming the layer.
Model compile(const ModelSpec& spec);

struct LayerOptions {
  std::string name;  // empty: generated from the type ("dense_2")
};

struct DenseOptions {
  std::string name;
  bool bias = true;
};

struct DropoutOptions {
  std::string name;
};

// A (height, width) pair for kernels, strides and dilations; an integer means both.
struct Size2 {
  std::int64_t h = 1, w = 1;
  Size2() = default;
  Size2(std::int64_t both) : h(both), w(both) {}  // NOLINT(google-explicit-constructor)
  Size2(std::int64_t height, std::int64_t width) : h(height), w(width) {}
};

// Zero padding of a 2-D layer: an integer (both sides of both dimensions), {h, w}, or "same"
// (output = ceil(input / stride); an odd total puts the extra row / column at the bottom /
// right, as TensorFlow does) or "valid" (none, the default).
struct Padding {
  Padding() = default;
  Padding(int both) : h(both), w(both) {}  // NOLINT(google-explicit-constructor)
  Padding(int height, int width) : h(height), w(width) {}
  Padding(const char* name) : mode(name) {}  // NOLINT(google-explicit-constructor)
  std::int64_t h = 0, w = 0;
  std::string mode;  // "same", "valid" or empty (explicit h, w)
};

struct Conv2dOptions {
  std::string name = {};  // empty: generated from the type
  Size2 stride = 1;
  Padding padding = "valid";
  Size2 dilation = 1;
  std::int64_t groups = 1;  // must divide the input channels and the filters
  bool bias = true;
};

struct BatchNormOptions {
  std::string name = {};  // empty: generated from the type
  float momentum = 0.1f;  // running = (1 - momentum) * running + momentum * batch (PyTorch)
  float epsilon = 1e-5f;
};

struct PoolOptions {
  std::string name = {};      // empty: generated from the type
  Size2 stride = 0;           // 0: the kernel size (non-overlapping windows)
  Padding padding = "valid";  // at most half the kernel; padded pixels never take part
};

class ModelBuilder {
 public:
  // input_shape: [batch, features...], e.g. {64, 784} or {64, 28, 28, 1} (images are
  // channels-last).
  explicit ModelBuilder(Shape input_shape);

  // y = x W^T + b over the last dimension: [batch, in] -> [batch, units].
  ModelBuilder& dense(std::int64_t units, DenseOptions options = {});
  ModelBuilder& relu(LayerOptions options = {});
  ModelBuilder& leaky_relu(float negative_slope = 0.01f, LayerOptions options = {});
  ModelBuilder& elu(float alpha = 1.0f, LayerOptions options = {});
  ModelBuilder& sigmoid(LayerOptions options = {});
  ModelBuilder& tanh(LayerOptions options = {});
  ModelBuilder& swish(LayerOptions options = {});
  // approximate = true: the tanh approximation (GPT-2's), otherwise the exact erf form.
  ModelBuilder& gelu(bool approximate = false, LayerOptions options = {});
  // Softmax over the last dimension. Followed by a cross-entropy loss, the trainer computes the
  // loss from the softmax's input (the logits), which is exact and numerically stable.
  ModelBuilder& softmax(LayerOptions options = {});
  // Inverted dropout with rate in [0, 1): stochastic (seeded) in training, identity in inference.
  ModelBuilder& dropout(float rate, DropoutOptions options = {});
  // [batch, a, b, ...] -> [batch, a*b*...]
  ModelBuilder& flatten(LayerOptions options = {});
  // Per-sample shape (without the batch); one dimension may be -1 (inferred).
  ModelBuilder& reshape(Shape sample_shape, LayerOptions options = {});

  // 2-D layers over channels-last images, [batch, height, width, channels].
  // Convolution: [B, H, W, C] -> [B, P, Q, filters], weight [filters, kh, kw, C / groups].
  ModelBuilder& conv2d(std::int64_t filters, Size2 kernel, Conv2dOptions options = {});
  // Normalises the last dimension with batch statistics in training and running statistics in
  // inference; fp32 gamma and beta and statistics in every precision. Running statistics are
  // not updated on steps skipped for overflow.
  ModelBuilder& batch_norm(BatchNormOptions options = {});
  ModelBuilder& max_pool2d(Size2 kernel, PoolOptions options = {});
  // Averages the input pixels of each window (padding excluded: count_include_pad=false).
  ModelBuilder& avg_pool2d(Size2 kernel, PoolOptions options = {});
  // [B, H, W, C] -> [B, C]
  ModelBuilder& global_avg_pool(LayerOptions options = {});

  // y = body(x) + shortcut(x); with no shortcut, the identity. Both paths must end in the same
  // shape; compile() names both when they do not. A ResNet basic block:
  //   b.residual([](ModelBuilder& r) { r.conv2d(128, 3, {.stride = 2, .padding = 1, .bias = false})
  //                                     .batch_norm().relu()
  //                                     .conv2d(128, 3, {.padding = 1, .bias = false})
  //                                     .batch_norm(); },
  //              [](ModelBuilder& s) { s.conv2d(128, 1, {.stride = 2, .bias = false})
  //                                     .batch_norm(); })
  //    .relu();
  ModelBuilder& residual(const std::function<void(ModelBuilder&)>& body,
                         const std::function<void(ModelBuilder&)>& shortcut = {},
                         LayerOptions options = {});

  // Adds a layer of any registered type from its spec; empty inputs mean the current tip.
  ModelBuilder& layer(LayerSpec spec);
  // Name of the layer the next one will read from ("input" before any layer).
  const std::string& tip() const { return tip_; }

  const ModelSpec& spec() const { return spec_; }
  Model compile() const;

 private:
  ModelBuilder& append(std::string type, std::string name, nlohmann::json attrs);
  std::string unique_name(const std::string& type);

  ModelSpec spec_;
  std::string tip_ = "input";
};

}  // namespace mixtrain
