#include "graph/fuse.hpp"

#include <cstdlib>
#include <cstring>

#include "layers/dense.hpp"
#include "layers/simple_layers.hpp"

namespace mixtrain::graph {

bool fusion_enabled() {
  const char* v = std::getenv("MIXTRAIN_FUSION");
  return !(v != nullptr && std::strcmp(v, "0") == 0);
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

  // into[j] = the dense node that absorbs activation node j, or -1.
  std::vector<int> into(count, -1);
  int fused = 0;
  for (std::size_t j = 0; j < count; ++j) {
    const auto* act = dynamic_cast<const ActivationLayer*>(g.nodes[j].layer.get());
    if (act == nullptr || !Dense::fusable(act->activation())) continue;
    const int i = g.nodes[j].inputs[0];
    if (i == kModelInput || readers[static_cast<std::size_t>(i)] != 1) continue;
    Node& dense_node = g.nodes[static_cast<std::size_t>(i)];
    const auto* dense = dynamic_cast<const Dense*>(dense_node.layer.get());
    if (dense == nullptr || dense->activation() != Activation::Identity) continue;

    std::vector<Shape> in_shapes;
    for (int src : dense_node.inputs) in_shapes.push_back(g.shape_of(src));
    auto merged = std::make_unique<Dense>(dense->name() + "+" + act->name(), dense->salt(),
                                          dense->units(), dense->has_bias(), act->activation());
    // The activation keeps the shape; parameters are the dense layer's, in its order.
    merged->bind_shapes(in_shapes, dense_node.shape);
    dense_node.buffers = merged->buffers(in_shapes, g.max_batch);
    dense_node.layer = std::move(merged);
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
