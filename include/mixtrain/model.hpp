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
#include <vector>

#include <nlohmann/json.hpp>

#include "mixtrain/shape.hpp"

namespace mixtrain {

// One node of the model graph. `inputs` name earlier layers, or "input" for the model's input;
// `attrs` holds the type's settings (units, rate, alpha...).
struct LayerSpec {
  std::string name;
  std::string type;
  std::vector<std::string> inputs;
  nlohmann::json attrs = nlohmann::json::object();
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
};

namespace graph {
struct Graph;
}

// A checked model: every layer valid, every shape known. Cheap to copy (shared, immutable).
class Model {
 public:
  const ModelSpec& spec() const;
  const Shape& input_shape() const;  // [batch, ...]
  Shape output_shape() const;        // [batch, ...]
  std::int64_t parameter_count() const;
  // A table of layers: name, type, output shape, parameters.
  std::string summary() const;

  const graph::Graph& graph() const { return *graph_; }

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

class ModelBuilder {
 public:
  // input_shape: [batch, features...], e.g. {64, 784} or {64, 1, 28, 28}.
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

  // y = body(x) + shortcut(x); with no shortcut, the identity. Both paths must end in the same
  // shape; compile() names both when they do not.
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
