// Row and column reductions: softmax forward/backward (one warp per row, fp32 math), the bias
// gradient, and an activation's backward fused with its bias gradient (fp32 column sums in a
// fixed order, no atomics in the sums: the same bits every run).
#include <algorithm>
#include <cstdint>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "ops/activation_math.hpp"

namespace mixtrain::cuda {

namespace {

constexpr int kWarpsPerBlock = kThreads / kWarp;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, std::int64_t rows,
                           std::int64_t cols) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t warp = threadIdx.x / kWarp;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + warp; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock) {
    const T* in = x + r * cols;
    T* out = y + r * cols;
    float mx = -INFINITY;
    for (std::int64_t c = lane; c < cols; c += kWarp) mx = fmaxf(mx, ld(in, c));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (std::int64_t c = lane; c < cols; c += kWarp) sum += expf(ld(in, c) - mx);
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    for (std::int64_t c = lane; c < cols; c += kWarp) st(out, c, expf(ld(in, c) - mx) * inv);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    softmax_backward_kernel(const T* __restrict__ y, const T* __restrict__ dy, T* dx,
                            std::int64_t rows, std::int64_t cols, bool accumulate) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const std::int64_t warp = threadIdx.x / kWarp;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + warp; r < rows;
       r += static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock) {
    const std::int64_t o = r * cols;
    float dot = 0.0f;
    for (std::int64_t c = lane; c < cols; c += kWarp) dot += ld(y, o + c) * ld(dy, o + c);
    dot = warp_sum(dot);
    for (std::int64_t c = lane; c < cols; c += kWarp) {
      const float v = ld(y, o + c) * (ld(dy, o + c) - dot);
      st(dx, o + c, accumulate ? ld(dx, o + c) + v : v);
    }
  }
}

// Column sums of one chunk of rows. Block (32, 8): threadIdx.x picks the column, threadIdx.y a
// row phase; the 8 phase sums are added in order. With one chunk the result goes straight to
// db; otherwise to partial[chunk][cols] for bias_grad_combine_kernel.
constexpr int kColTile = 32;
constexpr int kRowPhases = kThreads / kColTile;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_grad_kernel(const T* __restrict__ dy, std::int64_t rows, std::int64_t cols,
                     std::int64_t rows_per_chunk, float* __restrict__ out, bool direct,
                     bool accumulate) {
  __shared__ float sums[kRowPhases][kColTile + 1];
  const std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * kColTile + threadIdx.x;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_chunk;
  const std::int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc = 0.0f;
  if (c < cols) {
    // Unrolled so that several rows' loads are in flight (the sum stays in row order): a
    // classifier head's 512 x 10 gradient is one chunk of 64 rows per thread.
#pragma unroll 8
    for (std::int64_t r = r0 + threadIdx.y; r < r1; r += kRowPhases) acc += ld(dy, r * cols + c);
  }
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.0f;
    for (int p = 0; p < kRowPhases; ++p) total += sums[p][threadIdx.x];
    if (direct) {
      out[c] = accumulate ? out[c] + total : total;
    } else {
      out[static_cast<std::int64_t>(blockIdx.y) * cols + c] = total;
    }
  }
}

__global__ void bias_grad_combine_kernel(const float* __restrict__ partial, std::int64_t chunks,
                                         std::int64_t cols, float* db, bool accumulate) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c < cols;
       c += stride) {
    float total = 0.0f;
    for (std::int64_t k = 0; k < chunks; ++k) total += partial[k * cols + c];
    db[c] = accumulate ? db[c] + total : total;
  }
}

// activation_backward and bias_grad in one pass. Block (32, 8): threadIdx.x picks V consecutive
// columns (one 16-byte pack when V > 1), threadIdx.y a row phase of the block's chunk of rows.
// Each thread computes dx = dy * act'(x, y), stores it rounded to T and sums the stored values
// (the bias gradient of the rounded dx, as bias_grad reads it); the 8 phase sums are added in
// order into partial[chunk][cols]. The last block of each column tile to finish (a completion
// counter per tile: last_to_arrive) adds that tile's chunks in order into db. No __restrict__
// on x and dx: dx may be x (each element is read, then written, by one thread).
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    act_backward_bias_grad_kernel(Activation act, float alpha, const T* x, const T* y,
                                  const T* __restrict__ dy, T* dx, std::int64_t rows,
                                  std::int64_t cols, std::int64_t rows_per_chunk,
                                  float* __restrict__ partial, float* __restrict__ db,
                                  unsigned int* __restrict__ counters) {
  __shared__ float sums[kRowPhases][kColTile * V + 1];
  const std::int64_t c0 = (static_cast<std::int64_t>(blockIdx.x) * kColTile + threadIdx.x) * V;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * rows_per_chunk;
  const std::int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
  float acc[V] = {};
  if (c0 < cols) {
    for (std::int64_t r = r0 + threadIdx.y; r < r1; r += kRowPhases) {
      const std::int64_t i = r * cols + c0;
      float xv[V], yv[V], gv[V], out[V];
      load_pack<V>(x + i, xv);
      load_pack<V>(y + i, yv);
      load_pack<V>(dy + i, gv);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        out[j] =
            Dev<T>::load(Dev<T>::store(gv[j] * activation_derivative(act, alpha, xv[j], yv[j])));
        acc[j] += out[j];
      }
      store_pack<V>(dx + i, out);  // exact: the values are already rounded to T
    }
  }
#pragma unroll
  for (int j = 0; j < V; ++j) sums[threadIdx.y][threadIdx.x * V + j] = acc[j];
  __syncthreads();
  const int flat = static_cast<int>(threadIdx.y * kColTile + threadIdx.x);
  const std::int64_t tile0 = static_cast<std::int64_t>(blockIdx.x) * kColTile * V;
  for (int k = flat; k < kColTile * V; k += kThreads) {
    if (tile0 + k >= cols) continue;
    float total = 0.0f;
    for (int p = 0; p < kRowPhases; ++p) total += sums[p][k];
    partial[static_cast<std::int64_t>(blockIdx.y) * cols + tile0 + k] = total;
  }
  // The column tile's last chunk to arrive adds the tile's chunks in order.
  if (!last_to_arrive(counters + blockIdx.x, gridDim.y)) return;
  for (int k = flat; k < kColTile * V; k += kThreads) {
    if (tile0 + k >= cols) continue;
    float total = 0.0f;
    const float* column = partial + tile0 + k;
    // Loads issued kCombineLoads at a time, so the 32 chunks of a 512-row batch take one round
    // trip to L2 instead of four (the sum stays in chunk order).
    constexpr int kCombineLoads = 32;
    const std::int64_t chunks = gridDim.y;
    std::int64_t ch = 0;
    for (; ch + kCombineLoads <= chunks; ch += kCombineLoads) {
      float v[kCombineLoads];
#pragma unroll
      for (int u = 0; u < kCombineLoads; ++u) v[u] = __ldcg(column + (ch + u) * cols);
#pragma unroll
      for (int u = 0; u < kCombineLoads; ++u) total += v[u];
    }
    for (; ch < chunks; ++ch) total += __ldcg(column + ch * cols);
    db[tile0 + k] = total;
  }
}

}  // namespace

void CudaBackend::activation_backward_bias_grad(Activation act, float alpha, CBuf x, CBuf y,
                                                CBuf dy, Buf dx, Buf db, std::int64_t rows,
                                                std::int64_t cols) {
  require_same(x.dtype, dx.dtype, "activation_backward_bias_grad");
  require_same(y.dtype, dx.dtype, "activation_backward_bias_grad");
  require_same(dy.dtype, dx.dtype, "activation_backward_bias_grad");
  if (db.dtype != DType::F32) {
    throw Error(
        "internal: activation_backward_bias_grad on the cuda backend writes an f32 bias "
        "gradient, not " +
        std::string(dtype_name(db.dtype)));
  }
  dispatch_float(dx.dtype, "activation_backward_bias_grad", [&](auto t) {
    using T = decltype(t);
    if (planning() || cols <= 0) return;
    if (rows <= 0) {
      fill(db, cols, 0.0f);
      return;
    }
    constexpr int kPack = static_cast<int>(16 / sizeof(T));
    const bool vector = use_packs<T>(cols, x.ptr, y.ptr, dy.ptr, dx.ptr);
    const std::int64_t tile_cols = kColTile * (vector ? kPack : 1);
    const std::int64_t tiles = (cols + tile_cols - 1) / tile_cols;
    // Chunks of rows/32 rows (8 to 256, a multiple of the 8 row phases): a function of the shape
    // only, so the summation order is fixed; their partial sums must fit the scratch. On
    // large_mlp (512 x 4096, FP16) 32 chunks of 16 rows ran each step 4 us faster than 16 of 32
    // (512 blocks instead of 256 to hide the loads' latency; H200, session 4).
    std::int64_t per_chunk = std::clamp<std::int64_t>((rows + 31) / 32, 8, 256);
    per_chunk = (per_chunk + kRowPhases - 1) / kRowPhases * kRowPhases;
    const std::int64_t chunks = (rows + per_chunk - 1) / per_chunk;
    if (tiles > kActBiasGradCounters || chunks > 65535 ||
        static_cast<std::size_t>(chunks * cols) * sizeof(float) > scratch_bytes_) {
      Backend::activation_backward_bias_grad(act, alpha, x, y, dy, dx, db, rows, cols);
      return;
    }
    const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(chunks));
    const dim3 block(kColTile, kRowPhases);
    with_pack<T>(vector, [&](auto v) {
      act_backward_bias_grad_kernel<T, decltype(v)::value><<<grid, block, 0, stream_>>>(
          act, alpha, static_cast<const T*>(x.ptr), static_cast<const T*>(y.ptr),
          static_cast<const T*>(dy.ptr), static_cast<T*>(dx.ptr), rows, cols, per_chunk,
          static_cast<float*>(scratch_), static_cast<float*>(db.ptr),
          step_counters_ + kCounterActBiasGrad);
    });
    MIXTRAIN_CUDA_LAUNCH_CHECK("act_backward_bias_grad_kernel");
  });
}

void CudaBackend::softmax_forward(CBuf x, Buf y, std::int64_t rows, std::int64_t cols) {
  require_same(x.dtype, y.dtype, "softmax_forward");
  dispatch_float(y.dtype, "softmax_forward", [&](auto t) {
    using T = decltype(t);
    if (planning() || rows <= 0 || cols <= 0) return;
    softmax_forward_kernel<<<grid_for(rows, kWarpsPerBlock), kThreads, 0, stream_>>>(
        static_cast<const T*>(x.ptr), static_cast<T*>(y.ptr), rows, cols);
    MIXTRAIN_CUDA_LAUNCH_CHECK("softmax_forward_kernel");
  });
}

void CudaBackend::softmax_backward(CBuf y, CBuf dy, Buf dx, std::int64_t rows, std::int64_t cols,
                                   bool accumulate) {
  require_same(y.dtype, dy.dtype, "softmax_backward");
  require_same(y.dtype, dx.dtype, "softmax_backward");
  dispatch_float(dx.dtype, "softmax_backward", [&](auto t) {
    using T = decltype(t);
    if (planning() || rows <= 0 || cols <= 0) return;
    softmax_backward_kernel<<<grid_for(rows, kWarpsPerBlock), kThreads, 0, stream_>>>(
        static_cast<const T*>(y.ptr), static_cast<const T*>(dy.ptr), static_cast<T*>(dx.ptr), rows,
        cols, accumulate);
    MIXTRAIN_CUDA_LAUNCH_CHECK("softmax_backward_kernel");
  });
}

void CudaBackend::bias_grad(CBuf dy, Buf db, std::int64_t rows, std::int64_t cols,
                            bool accumulate) {
  if (db.dtype != DType::F32) {
    throw Error("internal: bias_grad on the cuda backend writes f32, not " +
                std::string(dtype_name(db.dtype)));
  }
  dispatch_float(dy.dtype, "bias_grad", [&](auto t) {
    using T = decltype(t);
    if (planning() || cols <= 0) return;
    float* out = static_cast<float*>(db.ptr);
    if (rows <= 0) {  // an empty sum: zero, or db unchanged
      if (!accumulate) fill(db, cols, 0.0f);
      return;
    }
    // Rows are split into chunks of 256 (32 per row phase) so that tall, narrow gradients still
    // fill the GPU; the chunking depends on the shape only, so the summation order is fixed.
    constexpr std::int64_t kChunkRows = 256;
    const std::int64_t max_chunks = std::min<std::int64_t>(
        65535, static_cast<std::int64_t>(scratch_bytes_ / sizeof(float)) / cols);
    std::int64_t chunks = std::min((rows + kChunkRows - 1) / kChunkRows, max_chunks);
    // A gradient of a few chunks' rows (a classifier head's: 512 x 10) is summed by one chunk,
    // without the combine launch: a few microseconds saved on a step that is made of them. The
    // limit is on rows, so a tall, narrow gradient still spreads over chunks.
    if (chunks < 1 || rows <= 2 * kChunkRows) chunks = 1;
    const std::int64_t per_chunk = (rows + chunks - 1) / chunks;
    const dim3 grid(static_cast<unsigned>((cols + kColTile - 1) / kColTile),
                    static_cast<unsigned>(chunks));
    const dim3 block(kColTile, kRowPhases);
    const bool direct = chunks == 1;
    float* partial = static_cast<float*>(scratch_);
    bias_grad_kernel<<<grid, block, 0, stream_>>>(static_cast<const T*>(dy.ptr), rows, cols,
                                                  per_chunk, direct ? out : partial, direct,
                                                  accumulate);
    MIXTRAIN_CUDA_LAUNCH_CHECK("bias_grad_kernel");
    if (!direct) {
      bias_grad_combine_kernel<<<grid_for(cols, kThreads), kThreads, 0, stream_>>>(
          partial, chunks, cols, out, accumulate);
      MIXTRAIN_CUDA_LAUNCH_CHECK("bias_grad_combine_kernel");
    }
  });
}

}  // namespace mixtrain::cuda
