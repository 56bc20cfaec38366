// The checked model graph: layers in topological order with their inferred per-sample shapes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "layers/layer.hpp"
#include "mixtrain/model.hpp"

namespace mixtrain::graph {

inline constexpr int kModelInput = -1;

struct Node {
  std::unique_ptr<Layer> layer;
  std::vector<int> inputs;  // node indices, or kModelInput
  Shape shape;              // per-sample output shape
  std::vector<ParamDecl> params;
  std::vector<BufferDecl> buffers;
  // Index in Graph::spec.layers of the layer this node was built from (a fused node keeps its
  // first layer's): names and types as the user wrote them, whatever fusion did.
  std::size_t spec_layer = 0;
};

struct Graph {
  ModelSpec spec;
  std::int64_t max_batch = 0;
  Shape sample_shape;  // per-sample input shape
  std::vector<Node> nodes;
  int output = 0;
  std::int64_t parameter_count = 0;

  const Shape& shape_of(int index) const {
    return index == kModelInput ? sample_shape : nodes[static_cast<std::size_t>(index)].shape;
  }
  std::string name_of(int index) const {
    return index == kModelInput ? "input" : nodes[static_cast<std::size_t>(index)].layer->name();
  }
};

// Validates the spec and infers shapes; throws ShapeError / ConfigError naming the layer.
std::shared_ptr<Graph> build(const ModelSpec& spec);

}  // namespace mixtrain::graph
