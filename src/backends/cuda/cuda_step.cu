// The end of a step on the device: the read-only gradient check (finite check and squared norm
// of the unscaled values; one launch whose last block combines the partials in a fixed order),
// the optimizer pass (reads found_inf and the norm from the control block, unscales as it reads,
// updates master weights and state and writes the working copy in one pass), and the scaler
// update (in the optimizer's last block, or one thread alone). The update rules are the shared
// ones of train/optimizer_math.hpp and train/scaler_math.hpp, so the arithmetic is that of the
// CPU backend.
#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "train/scaler_math.hpp"

namespace mixtrain::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr std::int64_t kMaxPartials = 1024;

// ---- unscale and check ------------------------------------------------------------------------

__device__ __forceinline__ void unscale_one(float g, float inv, double& sum, bool& bad) {
  g *= inv;
  bad |= !isfinite(g);
  sum += static_cast<double>(g) * g;
}

// Per-block flag and double sum of squares of the unscaled gradients; the last block to finish
// (last_block_done) adds the per-block partials in block order, exactly what a separate
// one-block kernel did, and writes found_inf and grad_norm_sq: one launch, the same bits.
template <bool kVec4>
__global__ void __launch_bounds__(kThreads)
    unscale_kernel(const float* __restrict__ grad, std::int64_t count,
                   StepControl* __restrict__ control, double* __restrict__ partial,
                   int* __restrict__ flags, unsigned int* __restrict__ counter) {
  __shared__ double shared[kWarpsPerBlock];
  const float inv = control->inv_scale;
  double sum = 0.0;
  bool bad = false;
  const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t tail = 0;
  if constexpr (kVec4) {
    const float4* g4 = reinterpret_cast<const float4*>(grad);
    const std::int64_t n4 = count / 4;
    for (std::int64_t i = tid; i < n4; i += stride) {
      float4 v = g4[i];
      unscale_one(v.x, inv, sum, bad);
      unscale_one(v.y, inv, sum, bad);
      unscale_one(v.z, inv, sum, bad);
      unscale_one(v.w, inv, sum, bad);
    }
    tail = n4 * 4;
  }
  for (std::int64_t i = tail + tid; i < count; i += stride) {
    unscale_one(grad[i], inv, sum, bad);
  }
  const int any_bad = __syncthreads_or(bad ? 1 : 0);
  const double total = block_sum(sum, shared);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = total;
    flags[blockIdx.x] = any_bad;
  }
  if (!last_block_done(counter)) return;
  double acc = 0.0;
  int all_bad = 0;
  for (int i = static_cast<int>(threadIdx.x); i < static_cast<int>(gridDim.x); i += kThreads) {
    acc += __ldcg(partial + i);
    all_bad |= __ldcg(flags + i);
  }
  const int found = __syncthreads_or(all_bad);
  const double norm_sq = block_sum(acc, shared);
  if (threadIdx.x == 0) {
    control->found_inf = found ? 1.0f : 0.0f;
    control->grad_norm_sq = found ? INFINITY : static_cast<float>(norm_sq);
  }
}

// ---- optimizer --------------------------------------------------------------------------------

struct NoWorking {};

struct OptimizerArgs {
  OptimizerHyper hyper;
  int slots;
  std::int64_t count;
  float* master;
  const float* grad;
  float* state[kMaxOptimizerSlots];
  float max_grad_norm;
  const StepControl* control;
};

// The end of the step fused into the optimizer pass: the last block runs finish_step_math once
// every block has read the control block and written its elements.
struct FinishArgs {
  StepControl* control = nullptr;  // null: no finish in this launch
  ScalerParams params{};
  StepRecord* history = nullptr;
  unsigned int* counter = nullptr;
};

// kVec: elements per thread per iteration (4 when every array is 16-byte aligned, else 1).
// kKind: the optimizer as a compile-time constant (the rule's switch folds, its state stays in
// registers), or kAnyKind for the generic kernel that reads it from the hyperparameters.
constexpr int kAnyKind = -1;

template <int kKind, typename W, int kVec>
__global__ void __launch_bounds__(kThreads)
    optimizer_kernel(OptimizerArgs a, W* working, FinishArgs finish) {
  OptimizerHyper hyper = a.hyper;
  if constexpr (kKind != kAnyKind) hyper.kind = static_cast<Optimizer>(kKind);
  const StepControl& c = *a.control;
  if (c.found_inf == 0.0f) {
    float grad_factor = 1.0f;
    if (a.max_grad_norm > 0.0f) {  // std::min(1.0f, x) of the CPU backend, spelled out
      const float x = a.max_grad_norm / (sqrtf(c.grad_norm_sq) + 1e-6f);
      grad_factor = x < 1.0f ? x : 1.0f;
    }
    grad_factor *= c.inv_scale;  // the gradients are still scaled
    const OptimizerStepScalars sc = optimizer_step_scalars(hyper, c.learning_rate, grad_factor,
                                                           c.optimizer_steps, c.optimizer_scalar);
    const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
    const std::int64_t vectors = a.count / kVec;
    for (std::int64_t v = tid; v < vectors; v += stride) {
      const std::int64_t i = v * kVec;
      Pack<float, kVec> p = *reinterpret_cast<const Pack<float, kVec>*>(a.master + i);
      const Pack<float, kVec> g = *reinterpret_cast<const Pack<float, kVec>*>(a.grad + i);
      Pack<float, kVec> s[kMaxOptimizerSlots];
#pragma unroll
      for (int k = 0; k < kMaxOptimizerSlots; ++k) {
        if (k < a.slots) s[k] = *reinterpret_cast<const Pack<float, kVec>*>(a.state[k] + i);
      }
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float st_j[kMaxOptimizerSlots] = {};
#pragma unroll
        for (int k = 0; k < kMaxOptimizerSlots; ++k) {
          if (k < a.slots) st_j[k] = s[k].v[j];
        }
        optimizer_update_element(hyper, sc, p.v[j], g.v[j], st_j);
#pragma unroll
        for (int k = 0; k < kMaxOptimizerSlots; ++k) {
          if (k < a.slots) s[k].v[j] = st_j[k];
        }
      }
      *reinterpret_cast<Pack<float, kVec>*>(a.master + i) = p;
#pragma unroll
      for (int k = 0; k < kMaxOptimizerSlots; ++k) {
        if (k < a.slots) *reinterpret_cast<Pack<float, kVec>*>(a.state[k] + i) = s[k];
      }
      if constexpr (!std::is_same_v<W, NoWorking>) store_pack<kVec>(working + i, p.v);
    }
    // Tail (count not a multiple of kVec).
    for (std::int64_t i = vectors * kVec + tid; i < a.count; i += stride) {
      float st_i[kMaxOptimizerSlots] = {};
#pragma unroll
      for (int k = 0; k < kMaxOptimizerSlots; ++k) {
        if (k < a.slots) st_i[k] = a.state[k][i];
      }
      float p = a.master[i];
      optimizer_update_element(hyper, sc, p, a.grad[i], st_i);
      a.master[i] = p;
#pragma unroll
      for (int k = 0; k < kMaxOptimizerSlots; ++k) {
        if (k < a.slots) a.state[k][i] = st_i[k];
      }
      if constexpr (!std::is_same_v<W, NoWorking>) st(working, i, p);
    }
  }
  // Every block counts in, skipped steps included: the finish runs either way.
  if (finish.control != nullptr && last_block_done(finish.counter) && threadIdx.x == 0) {
    finish_step_math(*finish.control, finish.params, a.hyper, finish.history);
  }
}

template <int kKind, typename W>
void launch_optimizer_as(const OptimizerArgs& a, W* working, const FinishArgs& finish, bool vec,
                         unsigned blocks, cudaStream_t stream) {
  if (vec) {
    optimizer_kernel<kKind, W, 4><<<blocks, kThreads, 0, stream>>>(a, working, finish);
  } else {
    optimizer_kernel<kAnyKind, W, 1><<<blocks, kThreads, 0, stream>>>(a, working, finish);
  }
}

template <typename W>
void launch_optimizer(const OptimizerArgs& a, W* working, const FinishArgs& finish,
                      unsigned blocks_cap, cudaStream_t stream) {
  bool vec = aligned_to(a.master, 16) && aligned_to(a.grad, 16);
  for (int k = 0; k < a.slots; ++k) vec = vec && aligned_to(a.state[k], 16);
  if constexpr (!std::is_same_v<W, NoWorking>) vec = vec && aligned_to(working, 4 * sizeof(W));
  const int per = vec ? 4 : 1;
  const std::int64_t items = (a.count + per - 1) / per;
  const std::int64_t want = (items + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < blocks_cap ? want : blocks_cap);
  // Aligned arrays (the arena's case) get the kernel specialised for the optimizer kind.
  switch (a.hyper.kind) {
    case Optimizer::SGD:
      launch_optimizer_as<static_cast<int>(Optimizer::SGD)>(a, working, finish, vec, blocks,
                                                            stream);
      break;
    case Optimizer::Adam:
      launch_optimizer_as<static_cast<int>(Optimizer::Adam)>(a, working, finish, vec, blocks,
                                                             stream);
      break;
    case Optimizer::AdamW:
      launch_optimizer_as<static_cast<int>(Optimizer::AdamW)>(a, working, finish, vec, blocks,
                                                              stream);
      break;
    case Optimizer::RMSProp:
      launch_optimizer_as<static_cast<int>(Optimizer::RMSProp)>(a, working, finish, vec, blocks,
                                                                stream);
      break;
    case Optimizer::AdaGrad:
      launch_optimizer_as<static_cast<int>(Optimizer::AdaGrad)>(a, working, finish, vec, blocks,
                                                                stream);
      break;
    case Optimizer::AdaDelta:
      launch_optimizer_as<static_cast<int>(Optimizer::AdaDelta)>(a, working, finish, vec, blocks,
                                                                 stream);
      break;
    case Optimizer::Nadam:
      launch_optimizer_as<static_cast<int>(Optimizer::Nadam)>(a, working, finish, vec, blocks,
                                                              stream);
      break;
    default:
      launch_optimizer_as<kAnyKind>(a, working, finish, vec, blocks, stream);
      break;
  }
  MIXTRAIN_CUDA_LAUNCH_CHECK("optimizer_kernel");
}

// ---- finish -----------------------------------------------------------------------------------

__global__ void finish_step_kernel(StepControl* control, ScalerParams params, OptimizerHyper hyper,
                                   StepRecord* history) {
  finish_step_math(*control, params, hyper, history);
}

}  // namespace

void CudaBackend::check_gradients(const float* grad, std::int64_t count, StepControl* control) {
  if (planning()) return;
  double* partial = static_cast<double*>(scratch_);
  int* flags = reinterpret_cast<int*>(partial + kMaxPartials);
  const bool vec = aligned_to(grad, 16);
  const std::int64_t items = vec ? (count + 3) / 4 : std::max<std::int64_t>(count, 0);
  // At least one block: it writes found_inf = 0 and a zero norm for an empty range.
  const int blocks = static_cast<int>(std::clamp<std::int64_t>(
      (items + kThreads - 1) / kThreads, 1, std::min<std::int64_t>(kMaxPartials, sm_count_ * 8LL)));
  unsigned int* counter = step_counters_ + kCounterCheck;
  if (vec) {
    unscale_kernel<true>
        <<<blocks, kThreads, 0, stream_>>>(grad, count, control, partial, flags, counter);
  } else {
    unscale_kernel<false>
        <<<blocks, kThreads, 0, stream_>>>(grad, count, control, partial, flags, counter);
  }
  MIXTRAIN_CUDA_LAUNCH_CHECK("unscale_kernel");
}

namespace {

OptimizerArgs optimizer_args(const OptimizerDesc& d) {
  OptimizerArgs a{};
  a.hyper = d.hyper;
  a.slots = optimizer_state_slots(d.hyper);
  a.count = d.count;
  a.master = d.master;
  a.grad = d.grad;
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
  return a;
}

}  // namespace

void CudaBackend::launch_optimizer_pass(const OptimizerDesc& d, StepControl* finish_control,
                                        const ScalerParams* params, StepRecord* history) {
  const OptimizerArgs a = optimizer_args(d);
  if (planning()) return;
  FinishArgs finish;
  if (finish_control != nullptr) {
    finish.control = finish_control;
    finish.params = *params;
    finish.history = history;
    finish.counter = step_counters_ + kCounterFinish;
  }
  if (d.count <= 0) {  // nothing to update; the finish (if any) runs alone
    if (finish_control != nullptr) {
      finish_step_kernel<<<1, 1, 0, stream_>>>(finish_control, *params, d.hyper, history);
      MIXTRAIN_CUDA_LAUNCH_CHECK("finish_step_kernel");
    }
    return;
  }
  const unsigned cap = grid_for(d.count, kThreads);
  if (!d.working) {
    launch_optimizer<NoWorking>(a, nullptr, finish, cap, stream_);
    return;
  }
  dispatch_float(d.working.dtype, "optimizer_step", [&](auto t) {
    using W = decltype(t);
    launch_optimizer(a, static_cast<W*>(d.working.ptr), finish, cap, stream_);
  });
}

void CudaBackend::optimizer_step(const OptimizerDesc& d) {
  launch_optimizer_pass(d, nullptr, nullptr, nullptr);
}

void CudaBackend::optimizer_step_and_finish(const OptimizerDesc& d, StepControl* control,
                                            const ScalerParams& params, StepRecord* history) {
  if (control != d.control) {
    throw Error("internal: optimizer_step_and_finish needs the optimizer's own control block");
  }
  launch_optimizer_pass(d, control, &params, history);
}

void CudaBackend::finish_step(StepControl* control, const ScalerParams& params,
                              const OptimizerHyper& hyper, StepRecord* history) {
  if (planning()) return;
  finish_step_kernel<<<1, 1, 0, stream_>>>(control, params, hyper, history);
  MIXTRAIN_CUDA_LAUNCH_CHECK("finish_step_kernel");
}

}  // namespace mixtrain::cuda
