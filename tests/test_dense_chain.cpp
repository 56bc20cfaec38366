// Which models the trainer hands to a backend's fused dense-chain step (train/dense_chain.hpp):
// input -> dense+ReLU (-> dropout) -> ... -> dense, with the plan's buffers in place; anything
// else is not a chain. The fused kernel itself is tested on the GPU (tests/cuda).
#include <gtest/gtest.h>

#include <vector>

#include "mixtrain/mixtrain.hpp"
#include "train/dense_chain.hpp"
#include "train/plan.hpp"

namespace mixtrain {
namespace {

std::vector<DenseChainLayer> chain_of(const Model& m) {
  const graph::Graph& g = m.graph();
  auto backend = make_cpu_backend();
  PlanOptions o;
  o.policy = PrecisionPolicy::for_precision(Precision::FP16);
  o.label_count = 1;
  const Plan plan(g, *backend, o);
  // The loss node: the model output, or the input of a final softmax.
  int loss_node = g.output;
  if (g.nodes[static_cast<std::size_t>(g.output)].layer->type() == "softmax") {
    loss_node = g.nodes[static_cast<std::size_t>(g.output)].inputs[0];
  }
  std::vector<DenseChainLayer> chain = dense_chain_layers(g, plan, loss_node);
  for (const DenseChainLayer& L : chain) {
    // Every buffer points into the plan (the test reads no memory through them).
    EXPECT_TRUE(L.weight && L.grad_weight && L.output && L.grad_pre);
  }
  return chain;
}

TEST(DenseChain, SmallMlpIsAChainWithItsDropout) {
  const Model m = ModelBuilder({64, 784})
                      .dense(512)
                      .relu()
                      .dropout(0.2f)
                      .dense(256)
                      .relu()
                      .dense(10)
                      .softmax()
                      .compile();
  const std::vector<DenseChainLayer> c = chain_of(m);
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[0].in, 784);
  EXPECT_EQ(c[0].out, 512);
  EXPECT_EQ(c[0].act, Activation::ReLU);
  EXPECT_FLOAT_EQ(c[0].dropout, 0.2f);
  EXPECT_TRUE(c[0].dropped);
  EXPECT_NE(c[0].dropout_salt, 0u);
  EXPECT_EQ(c[1].in, 512);
  EXPECT_EQ(c[1].out, 256);
  EXPECT_EQ(c[1].dropout, 0.0f);
  EXPECT_FALSE(c[1].dropped);
  EXPECT_EQ(c[2].in, 256);
  EXPECT_EQ(c[2].out, 10);
  EXPECT_EQ(c[2].act, Activation::Identity);
  for (const DenseChainLayer& L : c) {
    EXPECT_TRUE(L.bias);
    EXPECT_NE(L.grad_bias, nullptr);
    EXPECT_EQ(L.weight.dtype, DType::F16);
    EXPECT_EQ(L.grad_pre.dtype, DType::F16);
  }
  // No two buffers the fused step writes share a byte (the plan shares activation gradients by
  // lifetime; the step keeps its gradients in the layers' scratch and the head's gradient).
  struct Range {
    const char* begin;
    const char* end;
  };
  std::vector<Range> written;
  constexpr std::int64_t kRows = 64, kHalf = 2;
  for (const DenseChainLayer& L : c) {
    const auto add = [&](const Buf& b, std::int64_t elements) {
      if (!b) return;
      const char* p = static_cast<const char*>(b.ptr);
      written.push_back({p, p + elements * kHalf});
    };
    add(L.output, kRows * L.out);
    add(L.dropped, kRows * L.out);
    add(L.grad_pre, kRows * L.out);
    add(L.grad_weight, L.out * L.in);
  }
  for (std::size_t i = 0; i < written.size(); ++i) {
    for (std::size_t j = i + 1; j < written.size(); ++j) {
      EXPECT_TRUE(written[i].end <= written[j].begin || written[j].end <= written[i].begin)
          << "buffers " << i << " and " << j << " overlap";
    }
  }
}

TEST(DenseChain, OtherModelsAreNotChains) {
  // A hidden layer without ReLU.
  EXPECT_TRUE(chain_of(ModelBuilder({32, 16}).dense(32).gelu(true).dense(4).compile()).empty());
  EXPECT_TRUE(chain_of(ModelBuilder({32, 16}).dense(32).dense(4).compile()).empty());
  // Two dropouts in a row; a dropout as the last layer (the loss node must be the head, a dense
  // layer).
  EXPECT_TRUE(
      chain_of(
          ModelBuilder({32, 16}).dense(32).relu().dropout(0.1f).dropout(0.1f).dense(4).compile())
          .empty());
  EXPECT_TRUE(
      chain_of(ModelBuilder({32, 16}).dense(32).relu().dense(4).dropout(0.1f).compile()).empty());
  // Another layer type in the chain.
  EXPECT_TRUE(chain_of(ModelBuilder({32, 16}).dense(32).relu().tanh().dense(4).compile()).empty());
  // The smallest chain: one hidden layer.
  EXPECT_EQ(chain_of(ModelBuilder({32, 16}).dense(32).relu().dense(4).compile()).size(), 2u);
}

}  // namespace
}  // namespace mixtrain
