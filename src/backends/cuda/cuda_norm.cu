// Batch normalisation on CUDA over [rows, channels], channels-last (a row is a pixel), with the CPU
// backend's semantics (ops/backend.hpp).
//
// Tiling. Every kernel covers the [rows, channels] matrix with blocks of (tx, ty) threads: tx
// channel vectors of V channels each (a 16-byte pack when the channel count and the pointers
// allow it, else V = 1) by ty row phases. Block (bx, by) takes the column tiles bx, bx +
// gridDim.x, ... and a share of the rows: chunk `by` (reductions) or the groups of U * ty rows by,
// by + gridDim.y, ... (element-wise passes); its thread (x, y) walks rows y, y + ty, ... of that
// share for its V channels, U rows at a time. A warp reads whole row segments, and per-channel
// constants stay in registers. A column tile is at most 64 channels wide, so that wide layers get
// several grid columns: each column finishes its own reduction (below), in parallel with the
// others. Grids are about one wave of resident blocks.
//
// Statistics are deterministic two-level reductions without float atomics. Each thread reduces
// its rows in fp32 (Welford updates for the moments: no cancellation, unlike sum and sum of
// squares), the block combines its row phases in double in a fixed tree and writes one double
// partial per channel for its chunk of rows into the backend's scratch; the last block of each
// grid column to finish (a completion counter per column) combines the partials in chunk order,
// in double, and writes the result. The order depends on the shape and the device (the chunk
// count follows the SM count, occupancy and scratch size): every run on one GPU model gives the
// same bits. With a single chunk the blocks write the result directly (no scratch). The element-
// wise pass (y, or dx) is a second launch that reads the statistics as stored in F32, like the CPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "ops/activation_math.hpp"

namespace mixtrain::cuda {

namespace {

// Rows each thread has in flight: kernels reading one tensor, and two (x and dy). The loads of a
// group of rows carry no branch (see load_rows), so they are all issued before the first use.
constexpr int kUnroll = 8;
constexpr int kUnroll2 = 4;
constexpr int kMinBlocks = 2;         // resident blocks per SM the kernels are built for
constexpr int kTileChannels = 64;     // widest column tile (see above)
constexpr std::int64_t kMinRun = 8;   // reductions: rows per thread at least (fewer partials) ...
constexpr std::int64_t kMaxRun = 64;  // ... and at most (bounds the fp32 part of the error)
constexpr std::int64_t kMaxGridY = 65535;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// ---- device helpers -----------------------------------------------------------------------------

// A [channels] vector of any float dtype (gamma, beta, statistics), converted as it is read: one
// load per channel and thread, so one kernel serves every combination of dtypes.
struct Channels {
  const void* ptr;
  DType dtype;
};

__device__ __forceinline__ float channel_at(const Channels& b, std::int64_t c) {
  if (b.dtype == DType::F16) return __half2float(static_cast<const __half*>(b.ptr)[c]);
  if (b.dtype == DType::BF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(b.ptr)[c]);
  return static_cast<const float*>(b.ptr)[c];
}

// Loads rows r, r + step, ... (U of them) of the V channels at p as raw packs. A row past `last`
// loads row `last` instead (the caller ignores it): no branch separates the loads, so all U are in
// flight together instead of each waiting for the conversion of the one before.
template <int U, int V, typename T>
__device__ __forceinline__ void load_rows(const T* p, std::int64_t r, std::int64_t last,
                                          std::int64_t step, std::int64_t channels,
                                          Pack<T, V> (&raw)[U]) {
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const std::int64_t ru = r + u * step < last ? r + u * step : last;
    raw[u] = *reinterpret_cast<const Pack<T, V>*>(p + ru * channels);
  }
}

template <int V, typename T>
__device__ __forceinline__ void unpack(const Pack<T, V>& raw, float (&out)[V]) {
#pragma unroll
  for (int j = 0; j < V; ++j) out[j] = Dev<T>::load(raw.v[j]);
}

// Count, mean and sum of squared deviations of V channels, in double.
template <int V>
struct Moments {
  double n;
  double mean[V];
  double m2[V];

  // this = this (+) (nb, mb(j), m2b(j)): Chan et al.'s pairwise combination, in a fixed operand
  // order. The other side is read channel by channel (fewer live registers). From n == 0 it is
  // an exact copy (f = 1, w = 0).
  template <typename MeanAt, typename M2At>
  __device__ __forceinline__ void add(double nb, MeanAt mb, M2At m2b) {
    if (nb == 0.0) return;
    const double total = n + nb;
    const double f = nb / total;
    const double w = n * f;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const double d = mb(j) - mean[j];
      mean[j] += d * f;
      m2[j] += m2b(j) + d * d * w;
    }
    n = total;
  }
};

template <int V>
struct MomentsShared {
  double n[kThreads];
  double mean[V][kThreads];
  double m2[V][kThreads];
  __device__ __forceinline__ void put(int i, const Moments<V>& m) {
    n[i] = m.n;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      mean[j][i] = m.mean[j];
      m2[j][i] = m.m2[j];
    }
  }
  __device__ __forceinline__ void add_to(Moments<V>& m, int i) const {
    m.add(
        n[i], [&](int j) { return mean[j][i]; }, [&](int j) { return m2[j][i]; });
  }
};

// Sums of dy and of dy * xhat of V channels, in double.
template <int V>
struct Sums {
  double dy[V];
  double dyx[V];
};

template <int V>
struct SumsShared {
  double dy[V][kThreads];
  double dyx[V][kThreads];
  __device__ __forceinline__ void put(int i, const Sums<V>& s) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      dy[j][i] = s.dy[j];
      dyx[j][i] = s.dyx[j];
    }
  }
  __device__ __forceinline__ void add_to(Sums<V>& s, int i) const {
#pragma unroll
    for (int j = 0; j < V; ++j) {
      s.dy[j] += dy[j][i];
      s.dyx[j] += dyx[j][i];
    }
  }
};

// The partials of chunk k for the V channels from c: means (or sums of dy), then squared
// deviations (or sums of dy * xhat); read past L1 (other blocks wrote them).
template <int V>
struct Partial {
  double first[V];
  double second[V];
  __device__ __forceinline__ void load(const double* partial, std::int64_t k, std::int64_t channels,
                                       std::int64_t c) {
    const double* in = partial + 2 * k * channels + c;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      first[j] = __ldcg(in + j);
      second[j] = __ldcg(in + channels + j);
    }
  }
};

// Combines the ty row phases of a block in a fixed tree (phase y absorbs phase y + h for h =
// ty / 2, ..., 1; ty is a power of two); the block's total ends in the threads of phase 0. Every
// thread of the block calls it.
template <typename S, typename Shared>
__device__ __forceinline__ void combine_phases(S& s, Shared& sh) {
  const int tid = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  sh.put(tid, s);
  for (int h = static_cast<int>(blockDim.y) / 2; h > 0; h /= 2) {
    __syncthreads();
    if (static_cast<int>(threadIdx.y) < h) {
      sh.add_to(s, tid + h * static_cast<int>(blockDim.x));
      sh.put(tid, s);
    }
  }
  __syncthreads();  // the shared arrays may be reused
}

// Rows of chunk k of per_chunk rows each.
__device__ __forceinline__ double chunk_rows(std::int64_t k, std::int64_t per_chunk,
                                             std::int64_t rows) {
  const std::int64_t end = (k + 1) * per_chunk < rows ? (k + 1) * per_chunk : rows;
  return static_cast<double>(end - k * per_chunk);
}

// The batch statistics as the CPU computes them from its double sums: the mean, and
// 1 / sqrt(biased variance + eps).
template <int V>
__device__ __forceinline__ void write_moments(const Moments<V>& m, std::int64_t c,
                                              std::int64_t rows, float eps, float* mean,
                                              float* invstd) {
  const double inv_rows = 1.0 / static_cast<double>(rows);
#pragma unroll
  for (int j = 0; j < V; ++j) {
    mean[c + j] = static_cast<float>(m.mean[j]);
    invstd[c + j] = static_cast<float>(1.0 / sqrt(m.m2[j] * inv_rows + static_cast<double>(eps)));
  }
}

// ---- kernels ------------------------------------------------------------------------------------

// Batch mean and invstd of x [rows, channels] (see the top of the file). partial: [chunk][2]
// [channels] doubles (means, then squared deviations); counters: one per grid column.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    bn_moments_kernel(const T* __restrict__ x, std::int64_t rows, std::int64_t channels,
                      std::int64_t cols, std::int64_t tiles, std::int64_t per_chunk, float eps,
                      double* __restrict__ partial, unsigned int* __restrict__ counters,
                      float* __restrict__ mean_out, float* __restrict__ invstd_out) {
  __shared__ MomentsShared<V> sh;
  const std::int64_t step = blockDim.y;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * per_chunk;
  const std::int64_t r1 = r0 + per_chunk < rows ? r0 + per_chunk : rows;
  const bool direct = gridDim.y == 1;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t cv = tile * blockDim.x + threadIdx.x;
    const bool active = cv < cols;
    float n = 0.0f;
    float mean[V] = {}, m2[V] = {};
    if (active) {
      const T* p = x + cv * V;
      for (std::int64_t r = r0 + threadIdx.y; r < r1; r += kUnroll * step) {
        Pack<T, V> raw[kUnroll];
        load_rows(p, r, r1 - 1, step, channels, raw);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (r + u * step < r1) {
            float v[V];
            unpack(raw[u], v);
            // Welford: one reciprocal per row (correctly rounded, = 1 / n), shared by the V
            // channels.
            n += 1.0f;
            const float rn = __frcp_rn(n);
#pragma unroll
            for (int j = 0; j < V; ++j) {
              const float d = v[j] - mean[j];
              mean[j] += d * rn;
              m2[j] += d * (v[j] - mean[j]);
            }
          }
        }
      }
    }
    Moments<V> m;
    m.n = n;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      m.mean[j] = mean[j];
      m.m2[j] = m2[j];
    }
    combine_phases(m, sh);
    if (threadIdx.y == 0 && active) {
      if (direct) {
        write_moments(m, cv * V, rows, eps, mean_out, invstd_out);
      } else {
        double* out = partial + 2 * static_cast<std::int64_t>(blockIdx.y) * channels + cv * V;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          out[j] = m.mean[j];
          out[channels + j] = m.m2[j];
        }
      }
    }
  }
  if (direct || !last_to_arrive(counters + blockIdx.x, gridDim.y)) return;
  // The column's last block: phase y combines chunks y, y + ty, ... in order, then the tree.
  const std::int64_t chunks = gridDim.y;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t cv = tile * blockDim.x + threadIdx.x;
    const bool active = cv < cols;
    Moments<V> m{};
    if (active) {
      // A chunk's 2V partials are all loaded before the first is used: one L2 round trip per
      // chunk, not one per value.
      for (std::int64_t k = threadIdx.y; k < chunks; k += step) {
        Partial<V> cur;
        cur.load(partial, k, channels, cv * V);
        m.add(
            chunk_rows(k, per_chunk, rows), [&](int j) { return cur.first[j]; },
            [&](int j) { return cur.second[j]; });
      }
    }
    combine_phases(m, sh);
    if (threadIdx.y == 0 && active) write_moments(m, cv * V, rows, eps, mean_out, invstd_out);
  }
}

// y = (x - m) * s + b per channel, with m, s, b computed in fp32 exactly as the CPU does: from
// the batch mean and invstd (s = invstd * gamma), or from the running mean and variance
// (s = gamma / sqrt(var + eps)). x may be y (each element is read, then written, by one thread).
// Block y of the grid takes the groups of kUnroll * ty rows y, y + gridDim.y, ... (a grid of about
// one wave of resident blocks: the per-channel constants are computed once per block).
template <typename T, int V, bool kRunning, bool kRelu>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    bn_apply_kernel(const T* x, T* y, Channels mean, Channels spread, Channels gamma, Channels beta,
                    float eps, std::int64_t rows, std::int64_t channels, std::int64_t cols,
                    std::int64_t tiles) {
  const std::int64_t step = blockDim.y;
  const std::int64_t group = kUnroll * step;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t cv = tile * blockDim.x + threadIdx.x;
    if (cv >= cols) continue;
    float m[V], s[V], b[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const std::int64_t c = cv * V + j;
      m[j] = channel_at(mean, c);
      const float g = channel_at(gamma, c);
      s[j] = kRunning ? g / sqrtf(channel_at(spread, c) + eps) : channel_at(spread, c) * g;
      b[j] = channel_at(beta, c);
    }
    for (std::int64_t r = blockIdx.y * group + threadIdx.y; r < rows; r += gridDim.y * group) {
      Pack<T, V> raw[kUnroll];
      load_rows(x + cv * V, r, rows - 1, step, channels, raw);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (r + u * step < rows) {
          float o[V];
          unpack(raw[u], o);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            o[j] = (o[j] - m[j]) * s[j] + b[j];
            if constexpr (kRelu) o[j] = relu_passes(o[j]) ? o[j] : 0.0f;  // the fused ReLU
          }
          store_pack<V>(y + (r + u * step) * channels + cv * V, o);
        }
      }
    }
  }
}

// g *= [relu_passes(y)]: the fused ReLU's backward, as ReLU's own backward computes it (a product,
// so a non-finite gradient where y <= 0 stays non-finite, exactly as unfused).
template <int V, typename T>
__device__ __forceinline__ void mask_by_relu(const Pack<T, V>& y, float (&g)[V]) {
  float yv[V];
  unpack(y, yv);
#pragma unroll
  for (int j = 0; j < V; ++j) g[j] *= relu_passes(yv[j]) ? 1.0f : 0.0f;
}

// dbeta = sum dy and dgamma = sum dy * xhat per channel, xhat = (x - mean) * invstd (the same
// reduction scheme as bn_moments_kernel; partial: [chunk][2][channels] doubles).
template <typename T, int V, bool kMask>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    bn_backward_sums_kernel(const T* __restrict__ x, const T* __restrict__ dy,
                            const T* __restrict__ relu_y, const float* __restrict__ mean,
                            const float* __restrict__ invstd, std::int64_t rows,
                            std::int64_t channels, std::int64_t cols, std::int64_t tiles,
                            std::int64_t per_chunk, double* __restrict__ partial,
                            unsigned int* __restrict__ counters, float* __restrict__ dgamma,
                            float* __restrict__ dbeta) {
  __shared__ SumsShared<V> sh;
  const std::int64_t step = blockDim.y;
  const std::int64_t r0 = static_cast<std::int64_t>(blockIdx.y) * per_chunk;
  const std::int64_t r1 = r0 + per_chunk < rows ? r0 + per_chunk : rows;
  const bool direct = gridDim.y == 1;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t cv = tile * blockDim.x + threadIdx.x;
    const bool active = cv < cols;
    float sdy[V] = {}, sdyx[V] = {};
    if (active) {
      float m[V], inv[V];
#pragma unroll
      for (int j = 0; j < V; ++j) {
        m[j] = mean[cv * V + j];
        inv[j] = invstd[cv * V + j];
      }
      for (std::int64_t r = r0 + threadIdx.y; r < r1; r += kUnroll2 * step) {
        Pack<T, V> xraw[kUnroll2], graw[kUnroll2], mraw[kUnroll2];
        load_rows(x + cv * V, r, r1 - 1, step, channels, xraw);
        load_rows(dy + cv * V, r, r1 - 1, step, channels, graw);
        if constexpr (kMask) load_rows(relu_y + cv * V, r, r1 - 1, step, channels, mraw);
#pragma unroll
        for (int u = 0; u < kUnroll2; ++u) {
          if (r + u * step < r1) {
            float xv[V], gv[V];
            unpack(xraw[u], xv);
            unpack(graw[u], gv);
            if constexpr (kMask) mask_by_relu(mraw[u], gv);
#pragma unroll
            for (int j = 0; j < V; ++j) {
              sdy[j] += gv[j];
              sdyx[j] += gv[j] * ((xv[j] - m[j]) * inv[j]);
            }
          }
        }
      }
    }
    Sums<V> s;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      s.dy[j] = sdy[j];
      s.dyx[j] = sdyx[j];
    }
    combine_phases(s, sh);
    if (threadIdx.y == 0 && active) {
      if (direct) {
#pragma unroll
        for (int j = 0; j < V; ++j) {
          dbeta[cv * V + j] = static_cast<float>(s.dy[j]);
          dgamma[cv * V + j] = static_cast<float>(s.dyx[j]);
        }
      } else {
        double* out = partial + 2 * static_cast<std::int64_t>(blockIdx.y) * channels + cv * V;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          out[j] = s.dy[j];
          out[channels + j] = s.dyx[j];
        }
      }
    }
  }
  if (direct || !last_to_arrive(counters + blockIdx.x, gridDim.y)) return;
  const std::int64_t chunks = gridDim.y;
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t cv = tile * blockDim.x + threadIdx.x;
    const bool active = cv < cols;
    Sums<V> s{};
    if (active) {
      for (std::int64_t k = threadIdx.y; k < chunks; k += step) {
        Partial<V> cur;  // as in bn_moments_kernel
        cur.load(partial, k, channels, cv * V);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          s.dy[j] += cur.first[j];
          s.dyx[j] += cur.second[j];
        }
      }
    }
    combine_phases(s, sh);
    if (threadIdx.y == 0 && active) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        dbeta[cv * V + j] = static_cast<float>(s.dy[j]);
        dgamma[cv * V + j] = static_cast<float>(s.dyx[j]);
      }
    }
  }
}

// dx (+)= gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)), the means from the sums
// bn_backward_sums_kernel just stored; rows as in bn_apply_kernel. dx may be dy (no __restrict__:
// every row is loaded before it is stored).
template <typename T, int V, bool kMask>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    bn_backward_dx_kernel(const T* x, const T* dy, const T* relu_y, T* dx, const float* mean,
                          const float* invstd, Channels gamma, const float* dgamma,
                          const float* dbeta, bool accumulate, std::int64_t rows,
                          std::int64_t channels, std::int64_t cols, std::int64_t tiles) {
  const std::int64_t step = blockDim.y;
  const std::int64_t group = kUnroll2 * step;
  const double inv_rows = 1.0 / static_cast<double>(rows);
  for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const std::int64_t cv = tile * blockDim.x + threadIdx.x;
    if (cv >= cols) continue;
    float m[V], inv[V], scale[V], mdy[V], mdyx[V];
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const std::int64_t c = cv * V + j;
      m[j] = mean[c];
      inv[j] = invstd[c];
      scale[j] = channel_at(gamma, c) * inv[j];
      mdy[j] = static_cast<float>(static_cast<double>(dbeta[c]) * inv_rows);
      mdyx[j] = static_cast<float>(static_cast<double>(dgamma[c]) * inv_rows);
    }
    for (std::int64_t r = blockIdx.y * group + threadIdx.y; r < rows; r += gridDim.y * group) {
      Pack<T, V> xraw[kUnroll2], graw[kUnroll2], praw[kUnroll2], mraw[kUnroll2];
      load_rows(x + cv * V, r, rows - 1, step, channels, xraw);
      load_rows(dy + cv * V, r, rows - 1, step, channels, graw);
      if constexpr (kMask) load_rows(relu_y + cv * V, r, rows - 1, step, channels, mraw);
      if (accumulate) load_rows(dx + cv * V, r, rows - 1, step, channels, praw);
#pragma unroll
      for (int u = 0; u < kUnroll2; ++u) {
        if (r + u * step < rows) {
          float xv[V], o[V], prev[V] = {};
          unpack(xraw[u], xv);
          unpack(graw[u], o);
          if constexpr (kMask) mask_by_relu(mraw[u], o);
          if (accumulate) unpack(praw[u], prev);
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const float xhat = (xv[j] - m[j]) * inv[j];
            // Rounded before the accumulate, like the CPU (no FMA into prev).
            const float v = __fmul_rn(scale[j], o[j] - mdy[j] - xhat * mdyx[j]);
            o[j] = accumulate ? prev[j] + v : v;
          }
          store_pack<V>(dx + (r + u * step) * channels + cv * V, o);
        }
      }
    }
  }
}

// PyTorch's running-statistics update in double, like the CPU; reads found_inf on the device so
// that a skipped step (a replayed graph included) leaves the running statistics untouched.
__global__ void bn_update_running_kernel(const float* __restrict__ batch_mean,
                                         const float* __restrict__ batch_invstd,
                                         float* __restrict__ running_mean,
                                         float* __restrict__ running_var, std::int64_t channels,
                                         double momentum, double unbias, double eps,
                                         const StepControl* control) {
  if (control != nullptr && control->found_inf != 0.0f) return;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t c = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       c < channels; c += stride) {
    const double bi = batch_invstd[c];
    const double var = fmax(0.0, 1.0 / (bi * bi) - eps);
    running_mean[c] = static_cast<float>((1.0 - momentum) * static_cast<double>(running_mean[c]) +
                                         momentum * static_cast<double>(batch_mean[c]));
    running_var[c] = static_cast<float>((1.0 - momentum) * static_cast<double>(running_var[c]) +
                                        momentum * var * unbias);
  }
}

// ---- host side ----------------------------------------------------------------------------------

// The launch shape of a [rows, channels] kernel (see the top of the file).
struct Tiling {
  int tx = 1, ty = kThreads;   // block: channel vectors x row phases
  std::int64_t cols = 0;       // channel vectors per row
  std::int64_t tiles = 0;      // column tiles of tx channel vectors
  std::int64_t gx = 1;         // grid columns
  std::int64_t per_chunk = 0;  // reductions: rows per chunk
  std::int64_t chunks = 1;     // grid rows
  dim3 grid() const { return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(chunks)); }
  dim3 block() const { return dim3(static_cast<unsigned>(tx), static_cast<unsigned>(ty)); }
};

// tx: a power of two up to a warp and kTileChannels / vec; ty = kThreads / tx; at most max_gx
// grid columns.
Tiling columns_of(std::int64_t channels, int vec, std::int64_t max_gx) {
  Tiling t;
  t.cols = channels / vec;
  const int widest = std::min(kWarp, std::max(1, kTileChannels / vec));
  while (t.tx < widest && t.tx < t.cols) t.tx *= 2;
  t.ty = kThreads / t.tx;
  t.tiles = ceil_div(t.cols, t.tx);
  t.gx = std::min(t.tiles, max_gx);
  return t;
}

// Splits the rows into at most `chunks` chunks, none empty.
void split_rows(Tiling& t, std::int64_t rows, std::int64_t chunks) {
  chunks = std::clamp<std::int64_t>(chunks, 1, std::min(rows, kMaxGridY));
  t.per_chunk = ceil_div(rows, chunks);
  t.chunks = ceil_div(rows, t.per_chunk);
}

// A reduction: at most max_gx grid columns (completion counters), and chunks such that the grid
// is about one wave of `resident` blocks per SM (at least one) while each thread reduces
// kMinRun..kMaxRun rows, with the partials (2 * channels doubles per chunk) within the scratch.
// Fewer chunks when the scratch is short; with one chunk the blocks write the result directly.
Tiling reduce_tiling(std::int64_t rows, std::int64_t channels, int vec, std::int64_t max_gx,
                     int sm_count, int resident, std::size_t scratch_bytes) {
  Tiling t = columns_of(channels, vec, max_gx);
  std::int64_t chunks = ceil_div(std::int64_t{sm_count} * std::max(resident, 1), t.gx);
  chunks = std::min(chunks, ceil_div(rows, kMinRun * t.ty));
  chunks = std::max(chunks, ceil_div(rows, kMaxRun * t.ty));
  const auto fit = static_cast<std::int64_t>(
      scratch_bytes / (2 * sizeof(double) * static_cast<std::size_t>(channels)));
  split_rows(t, rows, std::min(chunks, fit));
  return t;
}

// An element-wise pass over groups of unroll * ty rows: one wave of `resident` blocks per SM (at
// least one), or fewer when there are fewer groups.
Tiling apply_tiling(std::int64_t rows, std::int64_t channels, int vec, int unroll, int sm_count,
                    int resident) {
  Tiling t = columns_of(channels, vec, kMaxGridY);
  const std::int64_t groups = ceil_div(rows, std::int64_t{unroll} * t.ty);
  t.chunks = std::clamp<std::int64_t>(
      std::min(groups, ceil_div(std::int64_t{sm_count} * std::max(resident, 1), t.gx)), 1,
      kMaxGridY);
  return t;
}

void require_f32(CBuf b, const char* op, const char* what) {
  if (!b) throw Error(std::string("internal: ") + op + " needs " + what);
  if (b.dtype != DType::F32) {
    throw Error(std::string("internal: ") + op + " on the cuda backend takes an f32 " + what +
                ", not " + std::string(dtype_name(b.dtype)));
  }
}

// gamma, beta and the running statistics: f32, f16 or bf16.
Channels channels_of(CBuf b, const char* op, const char* what) {
  if (!b) throw Error(std::string("internal: ") + op + " needs " + what);
  if (b.dtype != DType::F32 && b.dtype != DType::F16 && b.dtype != DType::BF16) {
    unsupported_dtype(op, b.dtype);
  }
  return Channels{b.ptr, b.dtype};
}

}  // namespace

void CudaBackend::batch_norm_forward_training(CBuf x, CBuf gamma, CBuf beta, Buf y, Buf batch_mean,
                                              Buf batch_invstd, std::int64_t rows,
                                              std::int64_t channels, float eps, bool relu) {
  const char* op = "batch_norm_forward_training";
  require_same(x.dtype, y.dtype, op);
  const Channels g = channels_of(gamma, op, "gamma");
  const Channels b = channels_of(beta, op, "beta");
  require_f32(batch_mean, op, "batch_mean");
  require_f32(batch_invstd, op, "batch_invstd");
  dispatch_float(x.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || channels <= 0) return;
    if (rows <= 0) {  // the CPU's 0 / 0
      fill(batch_mean, channels, NAN);
      fill(batch_invstd, channels, NAN);
      return;
    }
    float* mean = static_cast<float*>(batch_mean.ptr);
    float* invstd = static_cast<float*>(batch_invstd.ptr);
    const bool vector = use_packs<T>(channels, x.ptr, y.ptr);
    with_pack<T>(vector, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const int moments_resident = resident_blocks(bn_moments_kernel<T, V>, kThreads);
      const int apply_resident = resident_blocks(bn_apply_kernel<T, V, false, false>, kThreads);
      const Tiling r = reduce_tiling(rows, channels, V, kNormCounters, sm_count_, moments_resident,
                                     scratch_bytes_);
      bn_moments_kernel<T, V><<<r.grid(), r.block(), 0, stream_>>>(
          static_cast<const T*>(x.ptr), rows, channels, r.cols, r.tiles, r.per_chunk, eps,
          static_cast<double*>(scratch_), step_counters_ + kCounterNorm, mean, invstd);
      MIXTRAIN_CUDA_LAUNCH_CHECK("bn_moments_kernel");
      const Tiling a = apply_tiling(rows, channels, V, kUnroll, sm_count_, apply_resident);
      const auto kernel =
          relu ? bn_apply_kernel<T, V, false, true> : bn_apply_kernel<T, V, false, false>;
      kernel<<<a.grid(), a.block(), 0, stream_>>>(
          static_cast<const T*>(x.ptr), static_cast<T*>(y.ptr), Channels{mean, DType::F32},
          Channels{invstd, DType::F32}, g, b, eps, rows, channels, a.cols, a.tiles);
      MIXTRAIN_CUDA_LAUNCH_CHECK("bn_apply_kernel");
    });
  });
}

void CudaBackend::batch_norm_forward_inference(CBuf x, CBuf gamma, CBuf beta, CBuf running_mean,
                                               CBuf running_var, Buf y, std::int64_t rows,
                                               std::int64_t channels, float eps, bool relu) {
  const char* op = "batch_norm_forward_inference";
  require_same(x.dtype, y.dtype, op);
  const Channels g = channels_of(gamma, op, "gamma");
  const Channels b = channels_of(beta, op, "beta");
  const Channels m = channels_of(running_mean, op, "running_mean");
  const Channels v = channels_of(running_var, op, "running_var");
  dispatch_float(x.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || rows <= 0 || channels <= 0) return;
    const bool vector = use_packs<T>(channels, x.ptr, y.ptr);
    with_pack<T>(vector, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const int resident = resident_blocks(bn_apply_kernel<T, V, true, false>, kThreads);
      const Tiling a = apply_tiling(rows, channels, V, kUnroll, sm_count_, resident);
      const auto kernel =
          relu ? bn_apply_kernel<T, V, true, true> : bn_apply_kernel<T, V, true, false>;
      kernel<<<a.grid(), a.block(), 0, stream_>>>(static_cast<const T*>(x.ptr),
                                                  static_cast<T*>(y.ptr), m, v, g, b, eps, rows,
                                                  channels, a.cols, a.tiles);
      MIXTRAIN_CUDA_LAUNCH_CHECK("bn_apply_kernel");
    });
  });
}

void CudaBackend::batch_norm_backward(CBuf x, CBuf dy, CBuf gamma, CBuf batch_mean,
                                      CBuf batch_invstd, Buf dx, Buf dgamma, Buf dbeta,
                                      std::int64_t rows, std::int64_t channels, bool accumulate,
                                      CBuf relu_output) {
  const char* op = "batch_norm_backward";
  require_same(x.dtype, dy.dtype, op);
  if (dx) require_same(x.dtype, dx.dtype, op);
  if (relu_output) require_same(x.dtype, relu_output.dtype, op);
  const Channels g = channels_of(gamma, op, "gamma");
  require_f32(batch_mean, op, "batch_mean");
  require_f32(batch_invstd, op, "batch_invstd");
  require_f32(dgamma, op, "dgamma");
  require_f32(dbeta, op, "dbeta");
  dispatch_float(x.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || channels <= 0) return;
    if (rows <= 0) {  // empty sums; no dx to write
      fill(dgamma, channels, 0.0f);
      fill(dbeta, channels, 0.0f);
      return;
    }
    const float* mean = static_cast<const float*>(batch_mean.ptr);
    const float* invstd = static_cast<const float*>(batch_invstd.ptr);
    float* dg = static_cast<float*>(dgamma.ptr);
    float* db = static_cast<float*>(dbeta.ptr);
    const bool vector = use_packs<T>(channels, x.ptr, dy.ptr, dx.ptr, relu_output.ptr);
    const T* relu_y = static_cast<const T*>(relu_output.ptr);
    with_pack<T>(vector, [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      // The masked kernels (one more tensor read) are sized like the plain ones.
      const int sums_resident = resident_blocks(bn_backward_sums_kernel<T, V, true>, kThreads);
      const int dx_resident = resident_blocks(bn_backward_dx_kernel<T, V, true>, kThreads);
      const Tiling r =
          reduce_tiling(rows, channels, V, kNormCounters, sm_count_, sums_resident, scratch_bytes_);
      const auto sums = relu_y != nullptr ? bn_backward_sums_kernel<T, V, true>
                                          : bn_backward_sums_kernel<T, V, false>;
      sums<<<r.grid(), r.block(), 0, stream_>>>(
          static_cast<const T*>(x.ptr), static_cast<const T*>(dy.ptr), relu_y, mean, invstd, rows,
          channels, r.cols, r.tiles, r.per_chunk, static_cast<double*>(scratch_),
          step_counters_ + kCounterNorm, dg, db);
      MIXTRAIN_CUDA_LAUNCH_CHECK("bn_backward_sums_kernel");
      if (!dx) return;
      const Tiling a = apply_tiling(rows, channels, V, kUnroll2, sm_count_, dx_resident);
      const auto dx_kernel = relu_y != nullptr ? bn_backward_dx_kernel<T, V, true>
                                               : bn_backward_dx_kernel<T, V, false>;
      dx_kernel<<<a.grid(), a.block(), 0, stream_>>>(
          static_cast<const T*>(x.ptr), static_cast<const T*>(dy.ptr), relu_y,
          static_cast<T*>(dx.ptr), mean, invstd, g, dg, db, accumulate, rows, channels, a.cols,
          a.tiles);
      MIXTRAIN_CUDA_LAUNCH_CHECK("bn_backward_dx_kernel");
    });
  });
}

void CudaBackend::batch_norm_update_running(CBuf batch_mean, CBuf batch_invstd, Buf running_mean,
                                            Buf running_var, std::int64_t channels, float momentum,
                                            std::int64_t count, float eps,
                                            const StepControl* control) {
  const char* op = "batch_norm_update_running";
  require_f32(batch_mean, op, "batch_mean");
  require_f32(batch_invstd, op, "batch_invstd");
  require_f32(running_mean, op, "running_mean");
  require_f32(running_var, op, "running_var");
  if (planning() || channels <= 0) return;
  const double unbias =
      count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  bn_update_running_kernel<<<grid_for(channels, kThreads), kThreads, 0, stream_>>>(
      static_cast<const float*>(batch_mean.ptr), static_cast<const float*>(batch_invstd.ptr),
      static_cast<float*>(running_mean.ptr), static_cast<float*>(running_var.ptr), channels,
      static_cast<double>(momentum), unbias, static_cast<double>(eps), control);
  MIXTRAIN_CUDA_LAUNCH_CHECK("bn_update_running_kernel");
}

}  // namespace mixtrain::cuda
