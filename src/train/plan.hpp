// A compiled training plan: the memory of one model on one backend in one precision, allocated
// once as a single arena, and the per-layer arguments that point into it.
//
// Arena layout (each region 256-byte aligned):
//   master [P] f32 | gradients of the first L parameters (weight matrices, filters) in the
//   compute dtype (f32 outside mixed precision) | gradients of the other P - L f32 |
//   working copy [P] compute dtype (mixed precision only) |
//   optimizer state [slots][P] f32 | activations per node [max_batch, shape] compute dtype |
//   activation gradients, same shapes, sharing memory where their lifetimes in the backward
//   pass do not overlap | model input [max_batch, sample] compute dtype |
//   input staging f32 | output staging f32 | labels i32 | targets f32 | control block | step
//   history ring
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "graph/graph.hpp"
#include "mixtrain/precision.hpp"
#include "ops/backend.hpp"

namespace mixtrain {

struct PlanOptions {
  PrecisionPolicy policy;
  int optimizer_slots = 0;
  std::int64_t label_count = 0;   // int32 labels per sample
  std::int64_t target_count = 0;  // float targets per sample
  int history_size = 1024;
};

class Plan {
 public:
  Plan(const graph::Graph& graph, Backend& backend, const PlanOptions& options);
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  struct NodeMemory {
    Buf activation;                           // [max_batch, shape]
    Buf gradient;                             // [max_batch, shape]
    std::vector<std::int64_t> param_offsets;  // element offset of each parameter in master
    std::vector<Buf> buffers;                 // the layer's BufferDecls, in order
  };

  const graph::Graph& graph;
  Backend& backend;
  PlanOptions options;
  // Parameter slots of the arena: the model's parameters, the L = lowp_count that keep their
  // gradient in the compute dtype first (padded with unused zero slots to a multiple of
  // kLowpAlign), then the others. Each layer's parameters are found by NodeMemory::param_offsets.
  static constexpr std::int64_t kLowpAlign = 64;
  std::int64_t param_count = 0;
  std::int64_t lowp_count = 0;
  // (slot offset, element count) of every parameter in declaration order (layers, then their
  // parameters): the order of Trainer::weights().
  std::vector<std::pair<std::int64_t, std::int64_t>> param_spans;
  float* master = nullptr;
  Buf grads_lowp;              // [lowp_count]: compute dtype in mixed precision, else f32
  float* grads_f32 = nullptr;  // [param_count - lowp_count]
  Buf working;                 // null in fp32: the layers read master directly
  float* state[kMaxOptimizerSlots] = {};
  std::vector<NodeMemory> nodes;
  Buf input;
  float* input_staging = nullptr;
  float* output_staging = nullptr;  // [max_batch, output] f32: predictions read back
  std::int32_t* labels = nullptr;
  float* targets = nullptr;
  StepControl* control = nullptr;
  StepRecord* history = nullptr;
  float* eval_loss = nullptr;
  std::size_t arena_bytes = 0;
  // Persistent layer buffers (running statistics) are one contiguous fp32 range, saved with the
  // weights.
  float* persistent = nullptr;
  std::int64_t persistent_count = 0;

  DType compute() const { return options.policy.compute; }
  // The view of the parameter at `offset` that layers read: the compute-dtype working copy, or
  // master in fp32 and for parameters declared keep_fp32.
  CBuf param(std::int64_t offset) const;
  // Every parameter gradient, as the check and the optimizer read them.
  GradRanges grads() const { return GradRanges(grads_lowp, lowp_count, grads_f32); }
  // The gradient buffer of the parameter at `offset` (the layers write it in backward).
  Buf grad_of(std::int64_t offset) const;
  Buf activation_of(int index) const;  // index may be graph::kModelInput

 private:
  void* arena_ = nullptr;
  std::vector<std::int64_t> fp32_params_;  // sorted offsets of the keep_fp32 parameters
};

}  // namespace mixtrain
