#include "graph/fuse.hpp"

#include "core/env_switch.hpp"
#include "layers/batch_norm.hpp"
#include "layers/dense.hpp"
#include "layers/simple_layers.hpp"

namespace mixtrain::graph {

bool fusion_enabled() {
  return env_switch_on("MIXTRAIN_FUSION");
}

int fuse(Graph& g) {
  const std::size_t count = g.nodes.size();
  // Readers of each node's output; the model output counts as one more.
  std::vector<int> readers(count, 0);
  for (const Node& node : g.nodes) {
    for (int src : node.inputs) {
      if (src != kModelInput) ++readers[static_cast<std::size_t>(src)];
    }
  }
  ++readers[static_cast<std::size_t>(g.output)];

  // into[j] = the dense or batch-norm node that absorbs activation node j, or -1.
  std::vector<int> into(count, -1);
  int fused = 0;
  for (std::size_t j = 0; j < count; ++j) {
    const auto* act = dynamic_cast<const ActivationLayer*>(g.nodes[j].layer.get());
    if (act == nullptr) continue;
    const int i = g.nodes[j].inputs[0];
    if (i == kModelInput || readers[static_cast<std::size_t>(i)] != 1) continue;
    Node& node = g.nodes[static_cast<std::size_t>(i)];
    const std::string merged_name = node.layer->name() + "+" + act->name();
    std::unique_ptr<Layer> merged;
    if (const auto* dense = dynamic_cast<const Dense*>(node.layer.get())) {
      if (!Dense::fusable(act->activation()) || dense->activation() != Activation::Identity) {
        continue;
      }
      merged = std::make_unique<Dense>(merged_name, dense->salt(), dense->units(),
                                       dense->has_bias(), act->activation());
    } else if (const auto* bn = dynamic_cast<const BatchNorm*>(node.layer.get())) {
      if (act->activation() != Activation::ReLU || bn->fused_relu()) continue;
      merged =
          std::make_unique<BatchNorm>(merged_name, bn->salt(), bn->momentum(), bn->epsilon(), true);
    } else {
      continue;
    }

    std::vector<Shape> in_shapes;
    for (int src : node.inputs) in_shapes.push_back(g.shape_of(src));
    // The activation keeps the shape; parameters are the first layer's, in its order; buffers
    // are the fused layer's.
    merged->bind_shapes(in_shapes, node.shape);
    node.buffers = merged->buffers(in_shapes, g.max_batch);
    node.layer = std::move(merged);
    into[j] = i;
    ++fused;
  }
  if (fused == 0) return 0;

  // Drop the absorbed activation nodes; their readers read the fused node.
  std::vector<int> new_index(count, -1);
  std::vector<Node> kept;
  kept.reserve(count - static_cast<std::size_t>(fused));
  for (std::size_t j = 0; j < count; ++j) {
    if (into[j] >= 0) continue;
    new_index[j] = static_cast<int>(kept.size());
    kept.push_back(std::move(g.nodes[j]));
  }
  const auto remap = [&](int src) {
    if (src == kModelInput) return src;
    const auto s = static_cast<std::size_t>(src);
    return new_index[into[s] >= 0 ? static_cast<std::size_t>(into[s]) : s];
  };
  for (Node& node : kept) {
    for (int& src : node.inputs) src = remap(src);
  }
  g.output = remap(g.output);
  g.nodes = std::move(kept);
  return fused;
}

}  // namespace mixtrain::graph
