// The end of a step on the device: the read-only gradient check (finite check and squared norm
// of the unscaled values; one launch whose last block combines the partials in a fixed order),
// the optimizer pass (reads found_inf and the norm from the control block, or for large grids
// the PreparedStep prepare_step_kernel made of them; unscales as it reads, updates master
// weights and state and writes the working copy in one pass), and the scaler update (in the
// optimizer's last block, in prepare_step_kernel for large grids, or one thread alone). The
// update rules are the shared ones of train/optimizer_math.hpp and train/scaler_math.hpp, so the
// arithmetic is that of the CPU backend.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "backends/cuda/cuda_optimizer.cuh"
#include "train/scaler_math.hpp"

namespace mixtrain::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr std::int64_t kMaxPartials = 1024;

// ---- unscale and check ------------------------------------------------------------------------

// The unscaled values of one pack: their squares summed in fp32 (at most 8 terms), then added to
// the thread's double sum. Widening every element to double instead runs the check on the
// H200's FP64 conversion rate (16 a clock per SM), a third of its time on 36.8M gradients.
template <typename G, int V>
__device__ __forceinline__ void unscale_pack(const Pack<G, V>& pk, float inv, double& sum,
                                             bool& bad) {
  float squares = 0.0f;
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float g = Dev<G>::load(pk.v[j]) * inv;
    bad |= !isfinite(g);
    squares = fmaf(g, g, squares);
  }
  sum += static_cast<double>(squares);
}

// One range of gradients: packs of V elements (V = 1: element by element), then the tail. The grid
// is capped (its blocks' partials are combined by the last one), so each thread loads kUnroll
// packs before it adds any: more loads in flight than one pack per iteration would keep.
template <int V, typename G>
__device__ __forceinline__ void unscale_range(const G* __restrict__ grad, std::int64_t count,
                                              float inv, double& sum, bool& bad) {
  constexpr int kUnroll = 4;
  const std::int64_t tid = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t packs = count / V;
  const auto* p = reinterpret_cast<const Pack<G, V>*>(grad);
  std::int64_t i = tid;
  for (; i + (kUnroll - 1) * stride < packs; i += kUnroll * stride) {
    Pack<G, V> pk[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) pk[u] = p[i + u * stride];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) unscale_pack(pk[u], inv, sum, bad);
  }
  for (; i < packs; i += stride) unscale_pack(p[i], inv, sum, bad);
  for (std::int64_t e = packs * V + tid; e < count; e += stride) {
    unscale_pack(Pack<G, 1>{{grad[e]}}, inv, sum, bad);
  }
}

// Per-block flag and double sum of squares of the unscaled gradients (the low-precision range,
// then the fp32 one); the last block to finish (last_block_done) adds the per-block partials in
// block order and writes found_inf and grad_norm_sq: one launch.
template <bool kVec, typename G>
__global__ void __launch_bounds__(kThreads)
    unscale_kernel(const G* __restrict__ lowp, std::int64_t lowp_count,
                   const float* __restrict__ f32, std::int64_t f32_count,
                   StepControl* __restrict__ control, double* __restrict__ partial,
                   int* __restrict__ flags, unsigned int* __restrict__ counter) {
  __shared__ double shared[kWarpsPerBlock];
  const float inv = control->inv_scale;
  double sum = 0.0;
  bool bad = false;
  unscale_range<kVec ? static_cast<int>(16 / sizeof(G)) : 1>(lowp, lowp_count, inv, sum, bad);
  unscale_range<kVec ? 4 : 1>(f32, f32_count, inv, sum, bad);
  store_check_partial(sum, bad, partial, flags, static_cast<int>(blockIdx.x), shared);
  if (!last_block_done(counter)) return;
  const CheckTotal total = check_total(partial, flags, static_cast<int>(gridDim.x), shared);
  if (threadIdx.x == 0) {
    control->found_inf = total.found != 0 ? 1.0f : 0.0f;
    control->grad_norm_sq = total.norm_sq;
  }
}

// ---- optimizer --------------------------------------------------------------------------------

// One thread: the PreparedStep the optimizer pass of a large grid reads, then (with a finish) the
// end of the step. The finish reads nothing the optimizer writes and the optimizer, given the
// PreparedStep, reads nothing of the control block, so the finish may come first: one launch
// less than prepare, optimizer, finish.
__global__ void prepare_step_kernel(OptimizerHyper hyper, float max_grad_norm,
                                    const StepControl* control, PreparedStep* __restrict__ out,
                                    FinishArgs finish) {
  out->skip = control->found_inf != 0.0f ? 1 : 0;
  if (out->skip == 0) out->sc = step_scalars(hyper, max_grad_norm, *control);
  if (finish.control != nullptr) {
    finish_step_math(*finish.control, finish.params, hyper, finish.history);
  }
}

// Both optimizer kernels' pass over the parameters, with the step's scalars.
template <int kKind, typename W, typename G, int kVec>
__device__ __forceinline__ void optimizer_pass(const OptimizerArgs& a,
                                               const OptimizerStepScalars& sc, W* working) {
  const Optimizer kind = kKind != kAnyKind ? static_cast<Optimizer>(kKind) : a.hyper.kind;
  constexpr int kSlots = fixed_slots(kKind);
  optimizer_range<kSlots, W, G, kVec>(a, kind, sc, working, static_cast<const G*>(a.lowp), 0,
                                      a.lowp_count);
  optimizer_range<kSlots, W, float, kVec>(a, kind, sc, working, a.f32, a.lowp_count, a.count);
}

// A small grid: each warp computes the step's scalars from the control block, and the last block
// runs the finish.
template <int kKind, typename W, typename G, int kVec>
__global__ void __launch_bounds__(kThreads)
    optimizer_kernel(OptimizerArgs a, W* working, FinishArgs finish) {
  if (a.control->found_inf == 0.0f) {
    optimizer_pass<kKind, W, G, kVec>(a, step_scalars(a.hyper, a.max_grad_norm, *a.control),
                                      working);
  }
  // Every block counts in, skipped steps included: the finish runs either way.
  if (finish.control != nullptr && last_block_done(finish.counter) && threadIdx.x == 0) {
    finish_step_math(*finish.control, finish.params, a.hyper, finish.history);
  }
}

// A large grid, after prepare_step_kernel: the pass alone, a thread per pack. The pass is bound
// by the loads in flight, so the registers are budgeted for five blocks of kThreads per SM (48 a
// thread) where the compiler takes 48-70 and fits four or fewer. On large_mlp (36.8M
// parameters, FP16), interleaved A/B runs: Adam +1.5%, SGD +1.4%, AdamW +1.6%, Nadam +1.5%,
// RMSProp +3.3% samples/s; resnet18_cifar +1.2%. The small grid's scalars and finish stay in
// the other kernel: in this one their registers made AdamW and Nadam spill under the bound and
// run slower. Six blocks (40 registers) spill more and ran slower.
constexpr int kOptimizerBlocksPerSm = 5;

template <int kKind, typename W, typename G, int kVec>
__global__ void __launch_bounds__(kThreads, kOptimizerBlocksPerSm)
    optimizer_prepared_kernel(OptimizerArgs a, W* working) {
  if (a.prepared->skip == 0) optimizer_pass<kKind, W, G, kVec>(a, a.prepared->sc, working);
}

// The low-precision gradients share the working copy's dtype (fp32 without one).
template <typename W>
using GradOf = std::conditional_t<std::is_same_v<W, NoWorking>, float, W>;

// The large grid's pass kernel when a.prepared is set (finish already run), else the small grid's.
template <int kKind, int kVec, typename W>
void launch_optimizer_kernel(const OptimizerArgs& a, W* working, const FinishArgs& finish,
                             unsigned blocks, cudaStream_t stream) {
  if (a.prepared != nullptr) {
    optimizer_prepared_kernel<kKind, W, GradOf<W>, kVec>
        <<<blocks, kThreads, 0, stream>>>(a, working);
  } else {
    optimizer_kernel<kKind, W, GradOf<W>, kVec>
        <<<blocks, kThreads, 0, stream>>>(a, working, finish);
  }
}

template <int kKind, typename W>
void launch_optimizer_as(const OptimizerArgs& a, W* working, const FinishArgs& finish, bool vec,
                         unsigned blocks, cudaStream_t stream) {
  if (vec) {
    launch_optimizer_kernel<kKind, 4>(a, working, finish, blocks, stream);
  } else {
    launch_optimizer_kernel<kAnyKind, 1>(a, working, finish, blocks, stream);
  }
}

template <typename W>
void launch_optimizer(OptimizerArgs a, W* working, FinishArgs finish, PreparedStep* prepared,
                      cudaStream_t stream) {
  bool vec = packs_aligned(a);
  if constexpr (!std::is_same_v<W, NoWorking>) vec = vec && aligned_to(working, 4 * sizeof(W));
  // A thread per pack (see optimizer_range), up to 2^30 blocks; the loop covers the rest.
  const int per = vec ? 4 : 1;
  const std::int64_t items = (a.count + per - 1) / per;
  const std::int64_t want = (items + kThreads - 1) / kThreads;
  const auto blocks = static_cast<unsigned>(std::min<std::int64_t>(want, std::int64_t{1} << 30));
  // A large grid (more blocks than kLargeGrid) gets the per-step values from prepare_step_kernel,
  // which also runs the finish: tens of thousands of blocks counting in for the finish would
  // queue as many atomics on one counter (36k blocks cost ~70 us on large_mlp). A small grid
  // computes them in each warp and lets its last block finish: one launch, which is what a small
  // model's step time is made of.
  constexpr unsigned kLargeGrid = 4096;
  if (blocks > kLargeGrid) {
    prepare_step_kernel<<<1, 1, 0, stream>>>(a.hyper, a.max_grad_norm, a.control, prepared, finish);
    MIXTRAIN_CUDA_LAUNCH_CHECK("prepare_step_kernel");
    a.prepared = prepared;
    finish = FinishArgs{};
  }
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

void CudaBackend::check_gradients(const GradRanges& grad, std::int64_t count,
                                  StepControl* control) {
  const std::int64_t lowp_count = grad.lowp_within(count);
  const std::int64_t f32_count = std::max<std::int64_t>(count, 0) - lowp_count;
  double* partial = static_cast<double*>(scratch_);
  int* flags = reinterpret_cast<int*>(partial + kMaxPartials);
  const bool vec = aligned_to(grad.lowp.ptr, 16) && aligned_to(grad.f32, 16);
  const std::int64_t items = vec ? (count + 3) / 4 : std::max<std::int64_t>(count, 0);
  // At least one block: it writes found_inf = 0 and a zero norm for an empty range.
  const int blocks = static_cast<int>(std::clamp<std::int64_t>(
      (items + kThreads - 1) / kThreads, 1, std::min<std::int64_t>(kMaxPartials, sm_count_ * 8LL)));
  unsigned int* counter = step_counters_ + kCounterCheck;
  const DType lowp_type = lowp_count > 0 ? grad.lowp.dtype : DType::F32;
  dispatch_float(lowp_type, "check_gradients", [&](auto t) {
    using G = decltype(t);
    if (planning()) return;
    const G* lowp = static_cast<const G*>(grad.lowp.ptr);
    if (vec) {
      unscale_kernel<true, G><<<blocks, kThreads, 0, stream_>>>(
          lowp, lowp_count, grad.f32, f32_count, control, partial, flags, counter);
    } else {
      unscale_kernel<false, G><<<blocks, kThreads, 0, stream_>>>(
          lowp, lowp_count, grad.f32, f32_count, control, partial, flags, counter);
    }
    MIXTRAIN_CUDA_LAUNCH_CHECK("unscale_kernel");
  });
}

void CudaBackend::launch_optimizer_pass(const OptimizerDesc& d, StepControl* finish_control,
                                        const ScalerParams* params, StepRecord* history) {
  static_assert(sizeof(PreparedStep) <= kPreparedStepBytes);
  const OptimizerArgs a = optimizer_args(d);
  if (planning()) return;
  if (d.count <= 0) {  // nothing to update; the finish (if any) runs alone
    if (finish_control != nullptr) finish_step(finish_control, *params, d.hyper, history);
    return;
  }
  FinishArgs finish;
  if (finish_control != nullptr) {
    finish.control = finish_control;
    finish.params = *params;
    finish.history = history;
    finish.counter = step_counters_ + kCounterFinish;
  }
  auto* prepared = static_cast<PreparedStep*>(prepared_step_);
  if (!d.working) {
    launch_optimizer<NoWorking>(a, nullptr, finish, prepared, stream_);
  } else {
    dispatch_float(d.working.dtype, "optimizer_step", [&](auto t) {
      using W = decltype(t);
      launch_optimizer(a, static_cast<W*>(d.working.ptr), finish, prepared, stream_);
    });
  }
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
