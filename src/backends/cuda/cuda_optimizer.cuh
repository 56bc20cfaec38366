// The end of a step's device code, shared by the per-op step (cuda_step.cu) and the fused
// dense-chain step (cuda_dense_chain.cu): the gradient check's per-block partials and their
// total, the optimizer pass's arguments, one range of elements updated by the shared rules of
// train/optimizer_math.hpp, and the step's scalars from the control block.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_common.cuh"
#include "mixtrain/error.hpp"
#include "ops/backend.hpp"
#include "ops/step_control.hpp"
#include "train/optimizer_math.hpp"

namespace mixtrain::cuda {

// ---- gradient check --------------------------------------------------------------------------

// Every thread of a block: stores the block's partials of the gradient check, the sum of the
// threads' squares of unscaled gradients and whether any thread saw a non-finite one.
// `shared` holds kThreads / kWarp doubles.
__device__ __forceinline__ void store_check_partial(double sum, bool bad, double* partial,
                                                    int* flags, int block, double* shared) {
  const int any_bad = __syncthreads_or(bad ? 1 : 0);
  const double total = block_sum(sum, shared);
  if (threadIdx.x == 0) {
    partial[block] = total;
    flags[block] = any_bad;
  }
}

// The check's result from the partials of `blocks` blocks, added in block order (the same bits
// in whichever block adds them). found is valid in every thread, norm_sq (inf when found) in
// thread 0. Every thread of the block calls it, after the partials are visible.
struct CheckTotal {
  int found;
  float norm_sq;
};
__device__ __forceinline__ CheckTotal check_total(const double* partial, const int* flags,
                                                  int blocks, double* shared) {
  double acc = 0.0;
  int bad = 0;
  for (int i = static_cast<int>(threadIdx.x); i < blocks; i += kThreads) {
    acc += __ldcg(partial + i);
    bad |= __ldcg(flags + i);
  }
  const int found = __syncthreads_or(bad);
  const double norm_sq = block_sum(acc, shared);
  return {found, found != 0 ? INFINITY : static_cast<float>(norm_sq)};
}

// ---- optimizer -------------------------------------------------------------------------------

struct NoWorking {};

// The per-step values of the optimizer pass (skip or not, the clipping and unscaling factor, the
// learning rate after the schedule, bias corrections), computed once by prepare_step_kernel. When
// every warp of the pass computed them (expm1f, log1pf, a square root and divisions: as many
// instructions as its 4 elements' updates) the pass ran 7% below the bandwidth it reaches with
// them precomputed.
struct PreparedStep {
  int skip;
  OptimizerStepScalars sc;
};

struct OptimizerArgs {
  OptimizerHyper hyper;
  int slots;
  std::int64_t count;
  std::int64_t lowp_count;  // elements [0, lowp_count) read their gradient from lowp
  float* master;
  const void* lowp;
  const float* f32;  // gradients of elements [lowp_count, count)
  float* state[kMaxOptimizerSlots];
  float max_grad_norm;
  const StepControl* control;
  const PreparedStep* prepared;  // written by prepare_step_kernel just before
};

// The end of the step: fused into the optimizer pass of a small grid (the last block runs
// finish_step_math once every block has read the control block and written its elements), or
// run by prepare_step_kernel (counter unused there).
struct FinishArgs {
  StepControl* control = nullptr;  // null: no finish in this launch
  ScalerParams params{};
  StepRecord* history = nullptr;
  unsigned int* counter = nullptr;
};

// kVec: elements per pack (4 when every array is 16-byte aligned, else 1).
// kKind: the optimizer as a compile-time constant (the rule's switch folds, its state stays in
// registers), or kAnyKind for the generic kernel that reads it from the hyperparameters.
constexpr int kAnyKind = -1;

// State slots of kKind when they do not depend on its options (optimizer_state_slots), else -1:
// with a constant count the unused slots' loads and stores compile away.
__host__ __device__ constexpr int fixed_slots(int kind) {
  switch (kind) {
    case static_cast<int>(Optimizer::Adam):
    case static_cast<int>(Optimizer::AdamW):
    case static_cast<int>(Optimizer::Nadam):
    case static_cast<int>(Optimizer::AdaDelta):
      return 2;
    case static_cast<int>(Optimizer::AdaGrad):
      return 1;
    default:
      return -1;
  }
}

// kUnroll packs of one range, pack v of it at elements begin + v * kVec of master and state
// and at grad[v * kVec]: load() reads them, update() applies the rule and stores them. The two
// halves are apart so that a caller can issue the loads before it knows the step's scalars (the
// fused dense-chain step loads while it adds the gradient-norm partials).
template <int kSlots, typename G, int kVec, int kUnroll>
struct PackBatch {
  Pack<float, kVec> p[kUnroll];
  Pack<G, kVec> g[kUnroll];
  Pack<float, kVec> s[kUnroll][kMaxOptimizerSlots];

  // Packs v0, v0 + stride, ... below `packs`: master and state (load_params), gradients
  // (load_grads), or both.
  __device__ __forceinline__ void load_params(const OptimizerArgs& a, std::int64_t begin,
                                              std::int64_t packs, std::int64_t v0,
                                              std::int64_t stride) {
    const int slots = kSlots >= 0 ? kSlots : a.slots;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = v0 + u * stride;
      if (v >= packs) break;
      const std::int64_t i = begin + v * kVec;
      p[u] = *reinterpret_cast<const Pack<float, kVec>*>(a.master + i);
#pragma unroll
      for (int k = 0; k < kMaxOptimizerSlots; ++k) {
        if (k < slots) s[u][k] = *reinterpret_cast<const Pack<float, kVec>*>(a.state[k] + i);
      }
    }
  }
  __device__ __forceinline__ void load_grads(const G* grad, std::int64_t packs, std::int64_t v0,
                                             std::int64_t stride) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = v0 + u * stride;
      if (v >= packs) break;
      g[u] = *reinterpret_cast<const Pack<G, kVec>*>(grad + v * kVec);
    }
  }
  __device__ __forceinline__ void load(const OptimizerArgs& a, const G* grad, std::int64_t begin,
                                       std::int64_t packs, std::int64_t v0, std::int64_t stride) {
    load_params(a, begin, packs, v0, stride);
    load_grads(grad, packs, v0, stride);
  }

  template <typename W>
  __device__ __forceinline__ void update(const OptimizerArgs& a, Optimizer kind,
                                         const OptimizerStepScalars& sc, W* working,
                                         std::int64_t begin, std::int64_t packs, std::int64_t v0,
                                         std::int64_t stride) {
    const int slots = kSlots >= 0 ? kSlots : a.slots;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const std::int64_t v = v0 + u * stride;
      if (v >= packs) break;
      const std::int64_t i = begin + v * kVec;
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float st_j[kMaxOptimizerSlots] = {};
#pragma unroll
        for (int k = 0; k < kMaxOptimizerSlots; ++k) {
          if (k < slots) st_j[k] = s[u][k].v[j];
        }
        optimizer_update_element(a.hyper, kind, sc, p[u].v[j], Dev<G>::load(g[u].v[j]), st_j);
#pragma unroll
        for (int k = 0; k < kMaxOptimizerSlots; ++k) {
          if (k < slots) s[u][k].v[j] = st_j[k];
        }
      }
      *reinterpret_cast<Pack<float, kVec>*>(a.master + i) = p[u];
#pragma unroll
      for (int k = 0; k < kMaxOptimizerSlots; ++k) {
        if (k < slots) *reinterpret_cast<Pack<float, kVec>*>(a.state[k] + i) = s[u][k];
      }
      if constexpr (!std::is_same_v<W, NoWorking>) store_pack<kVec>(working + i, p[u].v);
    }
  }
};

// Elements [begin, end) of master and state, their gradients at grad[i - begin], one pack of kVec
// per thread and iteration, starting at the thread's pack first_pack (later packs: first_pack +
// the grid's threads, ...). The launch gives every pack its own thread when it can: measured on
// an H200 (36.8M Adam parameters), a grid covering the array streams at memcpy speed (4.0 TB/s)
// where a grid-stride loop over a capped grid reached 3.6-3.8 TB/s, and neither unrolling two
// packs nor evict-first (.cs) loads and stores helped. kUnroll > 1 is for a fixed grid that loops
// (the fused dense-chain step): each thread loads kUnroll packs before it updates any, so the
// iterations' memory latencies overlap instead of adding up.
template <int kSlots, typename W, typename G, int kVec, int kUnroll = 1>
__device__ __forceinline__ void optimizer_range(const OptimizerArgs& a, Optimizer kind,
                                                const OptimizerStepScalars& sc, W* working,
                                                const G* grad, std::int64_t begin, std::int64_t end,
                                                std::int64_t first_pack = 0) {
  const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t packs = (end - begin) / kVec;
  const int slots = kSlots >= 0 ? kSlots : a.slots;
  for (std::int64_t v0 = first_pack + tid; v0 < packs; v0 += stride * kUnroll) {
    PackBatch<kSlots, G, kVec, kUnroll> batch;
    batch.load(a, grad, begin, packs, v0, stride);
    batch.update(a, kind, sc, working, begin, packs, v0, stride);
  }
  // Tail (a range not a multiple of kVec).
  for (std::int64_t i = begin + packs * kVec + tid; i < end; i += stride) {
    float st_i[kMaxOptimizerSlots] = {};
#pragma unroll
    for (int k = 0; k < kMaxOptimizerSlots; ++k) {
      if (k < slots) st_i[k] = a.state[k][i];
    }
    float p = a.master[i];
    optimizer_update_element(a.hyper, kind, sc, p, Dev<G>::load(grad[i - begin]), st_i);
    a.master[i] = p;
#pragma unroll
    for (int k = 0; k < kMaxOptimizerSlots; ++k) {
      if (k < slots) a.state[k][i] = st_i[k];
    }
    if constexpr (!std::is_same_v<W, NoWorking>) st(working, i, p);
  }
}

// The step's scalars from the control block, as the CPU backend computes them.
__device__ __forceinline__ OptimizerStepScalars step_scalars(const OptimizerHyper& hyper,
                                                             float max_grad_norm,
                                                             const StepControl& c) {
  float grad_factor = 1.0f;
  if (max_grad_norm > 0.0f) {  // std::min(1.0f, x) of the CPU backend, spelled out
    const float x = max_grad_norm / (sqrtf(c.grad_norm_sq) + 1e-6f);
    grad_factor = x < 1.0f ? x : 1.0f;
  }
  grad_factor *= c.inv_scale;  // the gradients are still scaled
  return optimizer_step_scalars(hyper, c.learning_rate, grad_factor, c.optimizer_steps,
                                c.optimizer_scalar);
}

// Whether the pass can run on 4-element packs: master, both gradient ranges and every state slot
// 16-byte aligned, and the low-precision range a whole number of packs (the caller adds the
// working copy's alignment).
inline bool packs_aligned(const OptimizerArgs& a) {
  bool aligned = aligned_to(a.master, 16) && aligned_to(a.f32, 16) && aligned_to(a.lowp, 16) &&
                 a.lowp_count % 4 == 0;
  for (int k = 0; k < a.slots; ++k) aligned = aligned && aligned_to(a.state[k], 16);
  return aligned;
}

// The pass's arguments from an OptimizerDesc, validated (Error names what is missing or wrong).
inline OptimizerArgs optimizer_args(const OptimizerDesc& d) {
  OptimizerArgs a{};
  a.hyper = d.hyper;
  a.slots = optimizer_state_slots(d.hyper);
  a.count = d.count;
  a.master = d.master;
  a.lowp_count = d.grad.lowp_within(d.count);
  a.lowp = d.grad.lowp.ptr;
  a.f32 = d.grad.f32;
  a.max_grad_norm = d.max_grad_norm;
  a.control = d.control;
  for (int k = 0; k < a.slots; ++k) {
    if (d.state[k] == nullptr) {
      throw Error("optimizer_step: " + std::string(optimizer_name(d.hyper.kind)) +
                  " needs state slot " + std::to_string(k) + ", which is not set");
    }
    a.state[k] = d.state[k];
  }
  if (d.working && d.working.dtype != DType::F32 && d.working.dtype != DType::F16 &&
      d.working.dtype != DType::BF16) {
    throw Error("optimizer_step: the working copy must be f32, f16 or bf16, not " +
                std::string(dtype_name(d.working.dtype)));
  }
  // The kernel reads low-precision gradients in the working copy's dtype (f32 without one).
  const DType expected = d.working ? d.working.dtype : DType::F32;
  if (a.lowp_count > 0 && d.grad.lowp.dtype != expected) {
    throw Error("internal: optimizer_step on the cuda backend reads " +
                std::string(dtype_name(expected)) + " low-precision gradients, not " +
                std::string(dtype_name(d.grad.lowp.dtype)));
  }
  return a;
}

}  // namespace mixtrain::cuda
