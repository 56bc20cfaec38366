// Recognises a model whose whole training step a backend may run as one fused operation
// (ops/backend.hpp: DenseChainStep): input -> dense (-> dropout) -> ... -> dense, the last
// dense layer's output the logits of a sparse softmax cross-entropy.
#pragma once

#include <vector>

#include "graph/graph.hpp"
#include "ops/backend.hpp"
#include "train/plan.hpp"

namespace mixtrain {

// The layers of the chain ending at loss_node, with the plan's buffers, or an empty vector when
// the model is not such a chain: a node on the way from the input (which, every node having one
// input, is all the training forward pass runs) is not a dense or a dropout layer or not one row
// per sample, a hidden dense layer has no ReLU (the fused step keeps the gradient of each hidden
// pre-activation in the layer's scratch, which only layers with an activation have), two dropouts
// follow one another, or a bias gradient is not fp32.
std::vector<DenseChainLayer> dense_chain_layers(const graph::Graph& g, const Plan& plan,
                                                int loss_node);

}  // namespace mixtrain
