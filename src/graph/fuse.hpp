// Graph fusion: folds element-wise activations into the GEMM epilogue of the dense layer they
// follow, and a ReLU into the batch-norm it follows (one pass instead of two, forward and
// backward). graph::build() runs it last, so every later consumer sees the fused graph.
#pragma once

#include "graph/graph.hpp"

namespace mixtrain::graph {

// False when the environment has MIXTRAIN_FUSION=0 (read at each build): the graph stays as the
// spec wrote it (for tests that compare fused with unfused, and for debugging).
bool fusion_enabled();

// Merges each dense layer (without a fused activation yet) whose output is read by exactly one
// layer, a relu or a tanh-approximated gelu, and is not the model output, with that activation,
// and likewise each batch_norm with a relu: the first node becomes one fused node named
// "<layer>+<activation>" (salt, parameters and parameter order unchanged; its buffers are the
// fused layer's, a dense layer's pre-activation scratch among them) and the activation node leaves
// Graph::nodes. Readers of the activation, and spec.output, resolve to the fused node. Returns the
// number of fusions.
int fuse(Graph& g);

}  // namespace mixtrain::graph
