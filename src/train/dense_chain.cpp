#include "train/dense_chain.hpp"

#include <algorithm>
#include <cstddef>

#include "layers/dense.hpp"
#include "layers/simple_layers.hpp"

namespace mixtrain {

std::vector<DenseChainLayer> dense_chain_layers(const graph::Graph& g, const Plan& plan,
                                                int loss_node) {
  if (g.sample_shape.size() != 1 || loss_node < 0) return {};
  // The nodes from the input to the loss node, each reading the one before.
  std::vector<int> path;
  for (int node = loss_node; node != graph::kModelInput;) {
    const graph::Node& n = g.nodes[static_cast<std::size_t>(node)];
    if (n.inputs.size() != 1 || n.shape.size() != 1) return {};
    path.push_back(node);
    node = n.inputs[0];
  }
  std::reverse(path.begin(), path.end());

  std::vector<DenseChainLayer> chain;
  bool after_dropout = false;
  for (std::size_t p = 0; p < path.size(); ++p) {
    const auto i = static_cast<std::size_t>(path[p]);
    const graph::Node& n = g.nodes[i];
    const Plan::NodeMemory& mem = plan.nodes[i];
    if (const auto* dropout = dynamic_cast<const Dropout*>(n.layer.get())) {
      if (chain.empty() || after_dropout) return {};
      after_dropout = true;
      if (dropout->rate() > 0.0f) {
        chain.back().dropout = dropout->rate();
        chain.back().dropout_salt = dropout->salt();
        chain.back().dropped = mem.activation;
      }
      continue;
    }
    const auto* dense = dynamic_cast<const Dense*>(n.layer.get());
    if (dense == nullptr) return {};
    after_dropout = false;
    const bool head = p + 1 == path.size();
    if (!head && dense->activation() != Activation::ReLU) return {};
    DenseChainLayer L;
    L.in = g.shape_of(n.inputs[0]).back();
    L.out = dense->units();
    L.act = dense->activation();
    L.weight = plan.param(mem.param_offsets[0]);
    L.grad_weight = plan.grad_of(mem.param_offsets[0]);
    if (dense->has_bias()) {
      L.bias = plan.param(mem.param_offsets[1]);
      const Buf gb = plan.grad_of(mem.param_offsets[1]);
      if (gb.dtype != DType::F32) return {};
      L.grad_bias = static_cast<float*>(gb.ptr);
    }
    L.output = mem.activation;
    // The head's gradient is that of the logits, in the node's gradient buffer; a hidden layer's
    // pre-activation gradient goes to its scratch, as Dense::backward puts it.
    L.grad_pre = head ? mem.gradient : dense->scratch(mem.buffers, plan.compute());
    chain.push_back(L);
  }
  return chain;
}

}  // namespace mixtrain
