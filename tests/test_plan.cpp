// The plan's memory: activation gradients share bytes only when their lifetimes in the backward
// pass do not overlap (checked against lifetimes derived here from the graph), and sharing does
// shrink the arena.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "graph/graph.hpp"
#include "io/presets.hpp"
#include "mixtrain/mixtrain.hpp"
#include "train/backend_factory.hpp"
#include "train/plan.hpp"

namespace mixtrain {
namespace {

struct Life {
  std::int64_t first, last;  // backward steps, inclusive; -1 is the loss
};

// Node i's gradient is written from the backward of its last reader (the loss for the output
// and its inputs) until node i's own backward (step count - 1 - i).
std::vector<Life> lifetimes(const graph::Graph& g) {
  const auto count = static_cast<std::int64_t>(g.nodes.size());
  std::vector<Life> life(g.nodes.size());
  for (std::int64_t i = 0; i < count; ++i) {
    life[static_cast<std::size_t>(i)] = {count - 1 - i, count - 1 - i};
  }
  for (std::int64_t j = 0; j < count; ++j) {
    for (int src : g.nodes[static_cast<std::size_t>(j)].inputs) {
      if (src == graph::kModelInput) continue;
      auto& l = life[static_cast<std::size_t>(src)];
      l.first = std::min(l.first, count - 1 - j);
    }
  }
  life[static_cast<std::size_t>(g.output)].first = -1;
  for (int src : g.nodes[static_cast<std::size_t>(g.output)].inputs) {
    if (src != graph::kModelInput) life[static_cast<std::size_t>(src)].first = -1;
  }
  return life;
}

void expect_no_live_overlap(const std::string& preset, std::int64_t batch) {
  SCOPED_TRACE(preset);
  const Model m = compile(preset_model(preset, batch));
  const graph::Graph& g = m.graph();
  auto backend = make_cpu_backend();
  PlanOptions o;
  o.policy = PrecisionPolicy::for_precision(Precision::FP16);
  o.label_count = 1;
  const Plan plan(g, *backend, o);
  const std::vector<Life> life = lifetimes(g);
  const auto bytes = [&](std::size_t i) {
    return static_cast<std::size_t>(g.max_batch * numel(g.nodes[i].shape)) * 2;
  };
  std::size_t sum = 0, lo = SIZE_MAX, hi = 0;
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    const auto a = reinterpret_cast<std::uintptr_t>(plan.nodes[i].gradient.ptr);
    sum += bytes(i);
    lo = std::min<std::size_t>(lo, a);
    hi = std::max<std::size_t>(hi, a + bytes(i));
    for (std::size_t j = i + 1; j < g.nodes.size(); ++j) {
      const bool alive_together = life[i].first <= life[j].last && life[j].first <= life[i].last;
      if (!alive_together) continue;
      const auto b = reinterpret_cast<std::uintptr_t>(plan.nodes[j].gradient.ptr);
      const bool disjoint = a + bytes(i) <= b || b + bytes(j) <= a;
      EXPECT_TRUE(disjoint) << g.nodes[i].layer->name() << " and " << g.nodes[j].layer->name()
                            << " are alive together but share memory";
    }
  }
  // Sharing must pay off on a deep network: the region is a fraction of the sum.
  if (g.nodes.size() > 20) {
    EXPECT_LT(hi - lo, sum / 3) << "region " << hi - lo << " of " << sum;
  }
}

TEST(PlanMemory, GradientsAliveTogetherNeverShareBytes) {
  expect_no_live_overlap("mlp", 16);
  expect_no_live_overlap("cnn", 8);
  expect_no_live_overlap("resnet18_cifar", 4);
}

// Weight matrices and filters keep their gradients in the compute dtype in mixed precision and
// come first in the arena; the other parameters' gradients are fp32 and follow; the layout of
// the parameter slots is the same in every precision.
TEST(PlanMemory, WeightGradientsInComputeDtypeFirst) {
  const Model m = compile(preset_model("cnn", 4));
  const graph::Graph& g = m.graph();
  auto backend = make_cpu_backend();
  std::vector<std::vector<std::int64_t>> fp32_offsets;
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(precision_name(p));
    PlanOptions o;
    o.policy = PrecisionPolicy::for_precision(p);
    o.label_count = 1;
    const Plan plan(g, *backend, o);
    const DType low = o.policy.mixed() ? o.policy.compute : DType::F32;
    EXPECT_EQ(plan.lowp_count % Plan::kLowpAlign, 0);
    EXPECT_EQ(plan.grads().lowp.dtype, low);
    std::int64_t declared = 0, lowp = 0;
    std::vector<std::int64_t> offsets;
    for (std::size_t i = 0; i < g.nodes.size(); ++i) {
      for (std::size_t k = 0; k < g.nodes[i].params.size(); ++k) {
        const ParamDecl& d = g.nodes[i].params[k];
        const std::int64_t off = plan.nodes[i].param_offsets[k];
        offsets.push_back(off);
        // weights() order: declaration order.
        const auto span = plan.param_spans[offsets.size() - 1];
        EXPECT_EQ(span.first, off);
        EXPECT_EQ(span.second, numel(d.shape));
        declared += numel(d.shape);
        const Buf grad = plan.grad_of(off);
        if (d.grad_in_compute_dtype) {
          lowp += numel(d.shape);
          EXPECT_LT(off, plan.lowp_count);
          EXPECT_EQ(grad.dtype, low);
        } else {
          EXPECT_GE(off, plan.lowp_count);
          EXPECT_EQ(grad.dtype, DType::F32);
          EXPECT_EQ(grad.ptr, plan.grads().f32 + (off - plan.lowp_count));
        }
      }
    }
    EXPECT_GT(lowp, 0);
    EXPECT_LT(lowp, declared);
    EXPECT_EQ(plan.graph.parameter_count, declared);
    EXPECT_EQ(plan.lowp_count, (lowp + Plan::kLowpAlign - 1) / Plan::kLowpAlign * Plan::kLowpAlign);
    EXPECT_EQ(plan.param_count, plan.lowp_count + declared - lowp);
    fp32_offsets.push_back(offsets);
  }
  EXPECT_EQ(fp32_offsets[0], fp32_offsets[1]);
  EXPECT_EQ(fp32_offsets[0], fp32_offsets[2]);
}

// set_weights() takes back what weights() gives (both walk Plan::param_spans, whose declaration
// order WeightGradientsInComputeDtypeFirst checks), the layer state after the parameters.
TEST(PlanMemory, SetWeightsTakesWhatWeightsGives) {
  const Model m = compile(preset_model("cnn", 4));
  TrainerConfig c;
  c.device = Device::CPU;
  c.precision = Precision::FP16;
  Trainer t(m, c);
  std::vector<float> w = t.weights();
  std::int64_t declared = 0, state = 0;
  for (const auto& node : m.graph().nodes) {
    for (const ParamDecl& d : node.params) declared += numel(d.shape);
    for (const BufferDecl& d : node.buffers) state += d.persistent ? numel(d.shape) : 0;
  }
  ASSERT_EQ(static_cast<std::int64_t>(w.size()), declared + state);
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 1000) * 0.001f;
  t.set_weights(w);
  EXPECT_EQ(t.weights(), w);
}

}  // namespace
}  // namespace mixtrain
