// Losses. Cross-entropy over logits: one warp per row, the log-sum-exp summed in double like the
// CPU backend. The element-wise losses: a flat grid-stride pass over rows * cols. Both write one
// double partial per block; the last block to finish (last_block_done) adds the partials in block
// order and writes the mean, so the loss has the same bits every run, no atomics touch the sum,
// and one launch does it all.
#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "ops/loss_math.hpp"

namespace mixtrain::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr std::int64_t kMaxPartials = 1024;

__device__ __forceinline__ float grad_scale(const StepControl* control, float denom) {
  const float scale = control != nullptr ? control->loss_scale : 1.0f;
  return scale / denom;
}

// In the last block: the partials of every block, in block order, to the mean loss.
__device__ __forceinline__ void finish_loss(const double* partial, double* shared, float denom,
                                            float* loss) {
  double acc = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < static_cast<int>(gridDim.x); i += kThreads) {
    acc += __ldcg(partial + i);
  }
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) *loss = static_cast<float>(total / static_cast<double>(denom));
}

// Sparse (labels) or dense (targets) cross-entropy over logits.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(const T* __restrict__ pred, std::int64_t rows, std::int64_t cols,
                         const std::int32_t* __restrict__ labels, const float* __restrict__ targets,
                         T* __restrict__ grad, const StepControl* control, float denom,
                         double* __restrict__ partial, unsigned int* __restrict__ counter,
                         float* loss) {
  __shared__ double warp_loss[kWarpsPerBlock];
  __shared__ double shared[kWarpsPerBlock];
  const float gscale = grad_scale(control, denom);
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  double loss_acc = 0.0;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + warp; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock) {
    const T* x = pred + r * cols;
    float mx = -INFINITY;
    for (std::int64_t c = lane; c < cols; c += kWarp) mx = fmaxf(mx, ld(x, c));
    mx = warp_max(mx);
    double sum = 0.0;
    for (std::int64_t c = lane; c < cols; c += kWarp)
      sum += exp(static_cast<double>(ld(x, c) - mx));
    sum = warp_sum(sum);
    const float lse = mx + static_cast<float>(log(sum));
    const float* tgt = targets != nullptr ? targets + r * cols : nullptr;
    const std::int32_t label = labels != nullptr ? labels[r] : -1;
    float tsum = 0.0f;
    double acc = 0.0;
    for (std::int64_t c = lane; c < cols; c += kWarp) {
      const float tc = tgt != nullptr ? tgt[c] : (c == label ? 1.0f : 0.0f);
      tsum += tc;
      if (tc != 0.0f) acc += static_cast<double>(tc) * (lse - ld(x, c));
    }
    tsum = warp_sum(tsum);
    loss_acc += warp_sum(acc);
    if (grad != nullptr) {
      T* g = grad + r * cols;
      for (std::int64_t c = lane; c < cols; c += kWarp) {
        const float tc = tgt != nullptr ? tgt[c] : (c == label ? 1.0f : 0.0f);
        const float p = expf(ld(x, c) - lse);
        st(g, c, (p * tsum - tc) * gscale);
      }
    }
  }
  if (lane == 0) warp_loss[warp] = loss_acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_loss[w];
    partial[blockIdx.x] = total;
  }
  if (last_block_done(counter)) finish_loss(partial, shared, denom, loss);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    elementwise_loss_kernel(LossKind kind, float delta, const T* __restrict__ pred,
                            const float* __restrict__ targets, std::int64_t n, T* __restrict__ grad,
                            const StepControl* control, float denom, double* __restrict__ partial,
                            unsigned int* __restrict__ counter, float* loss) {
  __shared__ double shared[kWarpsPerBlock];
  const float gscale = grad_scale(control, denom);
  double acc = 0.0;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float p = ld(pred, i);
    const float t = targets[i];
    acc += elementwise_loss(kind, delta, p, t);
    if (grad != nullptr) st(grad, i, elementwise_loss_grad(kind, delta, p, t) * gscale);
  }
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
  if (last_block_done(counter)) finish_loss(partial, shared, denom, loss);
}

__global__ void __launch_bounds__(kThreads)
    loss_finalize_kernel(const double* __restrict__ partial, int count, float denom, float* loss) {
  __shared__ double shared[kWarpsPerBlock];
  double acc = 0.0;
  for (int i = static_cast<int>(threadIdx.x); i < count; i += kThreads) acc += partial[i];
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) *loss = static_cast<float>(total / static_cast<double>(denom));
}

}  // namespace

void CudaBackend::loss(const LossDesc& d) {
  if (d.dpred) require_same(d.pred.dtype, d.dpred.dtype, "loss");
  if (d.loss == nullptr) throw Error("internal: loss needs an output scalar");
  const bool logits = d.kind == LossKind::SparseCrossEntropy || d.kind == LossKind::CrossEntropy;
  // Like the CPU backend, the logits losses take targets when given, else labels (a row without
  // either has no target mass); the element-wise losses need targets.
  if (!logits && d.targets == nullptr) throw Error("internal: loss needs targets");
  dispatch_float(d.pred.dtype, "loss", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    const std::int64_t rows = std::max<std::int64_t>(d.rows, 0);
    const std::int64_t cols = std::max<std::int64_t>(d.cols, 0);
    const float denom =
        loss_sums_over_cols(d.kind) ? static_cast<float>(rows) : static_cast<float>(rows * cols);
    const T* pred = static_cast<const T*>(d.pred.ptr);
    T* grad = d.dpred ? static_cast<T*>(d.dpred.ptr) : nullptr;
    double* partial = static_cast<double*>(scratch_);
    unsigned int* counter = step_counters_ + kCounterLoss;
    if (logits && rows > 0 && cols > 0) {
      const int blocks = static_cast<int>(
          std::min<std::int64_t>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock, kMaxPartials));
      cross_entropy_kernel<<<blocks, kThreads, 0, stream_>>>(
          pred, rows, cols, d.labels, d.targets, grad, d.control, denom, partial, counter, d.loss);
      MIXTRAIN_CUDA_LAUNCH_CHECK("cross_entropy_kernel");
    } else if (!logits && rows * cols > 0) {
      const std::int64_t n = rows * cols;
      const int blocks =
          static_cast<int>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, kMaxPartials));
      elementwise_loss_kernel<<<blocks, kThreads, 0, stream_>>>(d.kind, d.huber_delta, pred,
                                                                d.targets, n, grad, d.control,
                                                                denom, partial, counter, d.loss);
      MIXTRAIN_CUDA_LAUNCH_CHECK("elementwise_loss_kernel");
    } else {  // nothing to sum: the mean of no terms, as the CPU computes it
      loss_finalize_kernel<<<1, kThreads, 0, stream_>>>(partial, 0, denom, d.loss);
      MIXTRAIN_CUDA_LAUNCH_CHECK("loss_finalize_kernel");
    }
  });
}

}  // namespace mixtrain::cuda
