// Pooling on CUDA over channels-last tensors, computed in fp32, with the CPU backend's semantics
// (ops/backend.hpp): windows are clipped to the input, max ignores the padding, average divides by
// the input pixels a window covers.
//
// Every kernel gives a thread one pixel and V channels (a 16-byte pack when the channel count and
// the pointers allow it, else one channel). Forward passes scan the pixel's window in row-major
// order. Backward passes gather instead of scattering: the thread of input pixel (h, w) visits
// the outputs whose windows cover it in (p, q) order and adds their contributions in fp32, so
// each dx element is written once, without atomics, and summed in the order the CPU adds into
// its accumulator: max and average pooling give the CPU's bits. Index arithmetic is 32-bit
// (type I) whenever the tensors allow it: 64-bit division is a long software routine, and each
// thread splits its flat index into (image, row, column, channels).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"

namespace mixtrain::cuda {

namespace {

constexpr std::int64_t kMaxGridY = 65535;

// The input rows [h0, h1) and columns [w0, w1) under output (p, q).
struct Window {
  std::int64_t h0, h1, w0, w1;
};

__device__ __forceinline__ Window window_of(const PoolDesc& d, std::int64_t p, std::int64_t q) {
  const std::int64_t h = p * d.stride_h - d.pad_h, w = q * d.stride_w - d.pad_w;
  return Window{h > 0 ? h : 0, h + d.R < d.H ? h + d.R : d.H, w > 0 ? w : 0,
                w + d.S < d.W ? w + d.S : d.W};
}

// Input pixels of the window, as the CPU counts them.
__device__ __forceinline__ std::int64_t window_count(const Window& win) {
  const std::int64_t n = (win.h1 - win.h0) * (win.w1 - win.w0);
  return n > 0 ? n : 0;
}

// Integer division by a divisor fixed at launch. FastDiv: n / d for 0 <= n < 2^31 as a
// multiply-high, an add and a shift, with the magic number found on the host (Granlund and
// Montgomery, as in PyTorch's IntDivider): every thread splits its flat index into (image, row,
// column, channels), and a 64-bit division is a long software routine. SlowDiv: plain 64-bit
// division, for tensors of 2^31 elements or more.
struct FastDiv {
  std::int64_t d = 1;
  std::uint32_t magic = 1, shift = 0;
  FastDiv() = default;
  explicit FastDiv(std::int64_t divisor) : d(divisor) {
    const auto u = static_cast<std::uint64_t>(divisor);
    while (shift < 32 && (std::uint64_t{1} << shift) < u) ++shift;
    magic = static_cast<std::uint32_t>(
        ((std::uint64_t{1} << 32) * ((std::uint64_t{1} << shift) - u)) / u + 1);
  }
  __device__ __forceinline__ std::int64_t div(std::int64_t n) const {
    const auto u = static_cast<std::uint32_t>(n);
    return static_cast<std::int64_t>((__umulhi(u, magic) + u) >> shift);
  }
};

struct SlowDiv {
  std::int64_t d = 1;
  SlowDiv() = default;
  explicit SlowDiv(std::int64_t divisor) : d(divisor) {}
  __device__ __forceinline__ std::int64_t div(std::int64_t n) const { return n / d; }
};

// A flat index over [.][n1][n2][cols], split into (a, b, c, cv).
template <typename D>
struct Dims {
  D n1, n2, cols;
};

template <typename D>
struct Coords {
  std::int64_t a, b, c, cv;
  __device__ __forceinline__ Coords(std::int64_t i, const Dims<D>& dm) {
    const std::int64_t t = dm.cols.div(i);
    cv = i - t * dm.cols.d;
    const std::int64_t t2 = dm.n2.div(t);
    c = t - t2 * dm.n2.d;
    a = dm.n1.div(t2);
    b = t2 - a * dm.n1.d;
  }
};

// Outputs o in [lo, hi] whose window o * stride - pad + [0, k) holds input index i (of `out`
// outputs along that axis).
struct Span {
  std::int64_t lo, hi;
};

template <typename D>
__device__ __forceinline__ Span covering(std::int64_t i, const D& stride, std::int64_t pad,
                                         std::int64_t k, std::int64_t out) {
  const std::int64_t first = i + pad - k + 1;  // o * stride >= first
  const std::int64_t last = i + pad;           // o * stride <= last
  const std::int64_t lo = first <= 0 ? 0 : stride.div(first + stride.d - 1);
  const std::int64_t hi = last < 0 ? -1 : stride.div(last);
  return Span{lo, hi < out - 1 ? hi : out - 1};
}

// The CPU's test for "this input is the window's maximum" (a NaN maximum matches a NaN input).
__device__ __forceinline__ bool same_value(float x, float y) {
  return x == y || (isnan(x) && isnan(y));
}

// ---- kernels ------------------------------------------------------------------------------------

// One thread per (output pixel, channel vector); cols = C / V.
template <typename T, int V, typename D>
__global__ void __launch_bounds__(kThreads)
    max_pool_forward_kernel(PoolDesc d, Dims<D> dims, const T* __restrict__ x, T* __restrict__ y) {
  const std::int64_t items = d.N * d.P * d.Q * dims.cols.d;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const Coords<D> at(i, dims);
    const std::int64_t n = at.a, p = at.b, q = at.c, c = at.cv * V, o = (n * d.P + p) * d.Q + q;
    const Window win = window_of(d, p, q);
    float best[V];
#pragma unroll
    for (int j = 0; j < V; ++j) best[j] = -INFINITY;
    for (std::int64_t h = win.h0; h < win.h1; ++h) {
#pragma unroll 4
      for (std::int64_t w = win.w0; w < win.w1; ++w) {
        float v[V];
        load_pack<V>(x + ((n * d.H + h) * d.W + w) * d.C + c, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          // The CPU's update: a NaN in the window propagates.
          if (v[j] > best[j] || isnan(v[j])) best[j] = isnan(best[j]) ? best[j] : v[j];
        }
      }
    }
    store_pack<V>(y + o * d.C + c, best);
  }
}

// One thread per (input pixel, channel vector): dx = the dy of every covering window whose
// maximum this input is, the first such input in the window's row-major order.
template <typename T, int V, typename D>
__global__ void __launch_bounds__(kThreads)
    max_pool_backward_kernel(PoolDesc d, Dims<D> dims, D stride_h, D stride_w,
                             const T* __restrict__ x, const T* __restrict__ y,
                             const T* __restrict__ dy, T* dx, bool accumulate) {
  const std::int64_t items = d.N * d.H * d.W * dims.cols.d;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const Coords<D> at(i, dims);
    const std::int64_t n = at.a, h = at.b, w = at.c, c = at.cv * V;
    const std::int64_t pixel = (n * d.H + h) * d.W + w;
    const T* image = x + n * d.H * d.W * d.C + c;
    float xv[V], acc[V];
    load_pack<V>(image + (h * d.W + w) * d.C, xv);
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.0f;
    const Span ps = covering(h, stride_h, d.pad_h, d.R, d.P);
    const Span qs = covering(w, stride_w, d.pad_w, d.S, d.Q);
    for (std::int64_t p = ps.lo; p <= ps.hi; ++p) {
      for (std::int64_t q = qs.lo; q <= qs.hi; ++q) {
        const std::int64_t o = ((n * d.P + p) * d.Q + q) * d.C + c;
        float yv[V];
        load_pack<V>(y + o, yv);
        bool hit[V];
        bool any = false;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          hit[j] = same_value(xv[j], yv[j]);
          any = any || hit[j];
        }
        if (!any) continue;  // the common case: not this window's maximum
        // An earlier input of the window holding the maximum takes the gradient instead. (Scanning
        // on after every channel is settled, to keep a warp's lanes together, measured slower.)
        const Window win = window_of(d, p, q);
        for (std::int64_t hh = win.h0; hh <= h && any; ++hh) {
          const std::int64_t w_end = hh < h ? win.w1 : w;
          for (std::int64_t ww = win.w0; ww < w_end && any; ++ww) {
            float e[V];
            load_pack<V>(image + (hh * d.W + ww) * d.C, e);
            any = false;
#pragma unroll
            for (int j = 0; j < V; ++j) {
              hit[j] = hit[j] && !same_value(e[j], yv[j]);
              any = any || hit[j];
            }
          }
        }
        if (!any) continue;
        float g[V];
        load_pack<V>(dy + o, g);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          if (hit[j]) acc[j] += g[j];
        }
      }
    }
    T* out = dx + pixel * d.C + c;
    if (accumulate) {
      float prev[V];
      load_pack<V>(out, prev);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += prev[j];
    }
    store_pack<V>(out, acc);
  }
}

template <typename T, int V, typename D>
__global__ void __launch_bounds__(kThreads)
    avg_pool_forward_kernel(PoolDesc d, Dims<D> dims, const T* __restrict__ x, T* __restrict__ y) {
  const std::int64_t items = d.N * d.P * d.Q * dims.cols.d;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const Coords<D> at(i, dims);
    const std::int64_t n = at.a, p = at.b, q = at.c, c = at.cv * V, o = (n * d.P + p) * d.Q + q;
    const Window win = window_of(d, p, q);
    float sum[V];
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] = 0.0f;
    for (std::int64_t h = win.h0; h < win.h1; ++h) {
#pragma unroll 4
      for (std::int64_t w = win.w0; w < win.w1; ++w) {
        float v[V];
        load_pack<V>(x + ((n * d.H + h) * d.W + w) * d.C + c, v);
#pragma unroll
        for (int j = 0; j < V; ++j) sum[j] += v[j];
      }
    }
    const float inv = 1.0f / static_cast<float>(window_count(win));
#pragma unroll
    for (int j = 0; j < V; ++j) sum[j] *= inv;
    store_pack<V>(y + o * d.C + c, sum);
  }
}

// dx = sum over the covering windows of dy / (the window's input pixels), each term rounded
// before the sum as on the CPU (no FMA).
template <typename T, int V, typename D>
__global__ void __launch_bounds__(kThreads)
    avg_pool_backward_kernel(PoolDesc d, Dims<D> dims, D stride_h, D stride_w,
                             const T* __restrict__ dy, T* dx, bool accumulate) {
  const std::int64_t items = d.N * d.H * d.W * dims.cols.d;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const Coords<D> at(i, dims);
    const std::int64_t n = at.a, h = at.b, w = at.c, c = at.cv * V;
    const std::int64_t pixel = (n * d.H + h) * d.W + w;
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; ++j) acc[j] = 0.0f;
    const Span ps = covering(h, stride_h, d.pad_h, d.R, d.P);
    const Span qs = covering(w, stride_w, d.pad_w, d.S, d.Q);
    for (std::int64_t p = ps.lo; p <= ps.hi; ++p) {
      for (std::int64_t q = qs.lo; q <= qs.hi; ++q) {
        const float inv = 1.0f / static_cast<float>(window_count(window_of(d, p, q)));
        float g[V];
        load_pack<V>(dy + ((n * d.P + p) * d.Q + q) * d.C + c, g);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] += __fmul_rn(g[j], inv);
      }
    }
    T* out = dx + pixel * d.C + c;
    if (accumulate) {
      float prev[V];
      load_pack<V>(out, prev);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += prev[j];
    }
    store_pack<V>(out, acc);
  }
}

// y [n, channels] = the mean of x [n, pixels, channels] over pixels. Block (tx, ty): tx channel
// vectors by ty pixel phases (a power of two); phase y sums pixels y, y + ty, ... in fp32, then the
// phases are added in a fixed tree. Images go over grid rows, channel tiles over grid columns.
template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    global_avg_forward_kernel(const T* __restrict__ x, T* __restrict__ y, std::int64_t n,
                              std::int64_t pixels, std::int64_t channels, std::int64_t cols,
                              std::int64_t tiles) {
  __shared__ float sh[V][kThreads];
  const int tid = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  const float inv = 1.0f / static_cast<float>(pixels);
  for (std::int64_t img = blockIdx.y; img < n; img += gridDim.y) {
    for (std::int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      const std::int64_t cv = tile * blockDim.x + threadIdx.x;
      const bool active = cv < cols;
      float sum[V];
#pragma unroll
      for (int j = 0; j < V; ++j) sum[j] = 0.0f;
      if (active) {
        const T* p = x + img * pixels * channels + cv * V;
        for (std::int64_t k = threadIdx.y; k < pixels; k += blockDim.y) {
          float v[V];
          load_pack<V>(p + k * channels, v);
#pragma unroll
          for (int j = 0; j < V; ++j) sum[j] += v[j];
        }
      }
#pragma unroll
      for (int j = 0; j < V; ++j) sh[j][tid] = sum[j];
      for (int h = static_cast<int>(blockDim.y) / 2; h > 0; h /= 2) {
        __syncthreads();
        if (static_cast<int>(threadIdx.y) < h) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            sum[j] += sh[j][tid + h * static_cast<int>(blockDim.x)];
            sh[j][tid] = sum[j];
          }
        }
      }
      __syncthreads();  // sh is reused by the next tile
      if (threadIdx.y == 0 && active) {
#pragma unroll
        for (int j = 0; j < V; ++j) sum[j] *= inv;
        store_pack<V>(y + img * channels + cv * V, sum);
      }
    }
  }
}

// dx [n, pixels, channels] (+)= dy [n, channels] / pixels; thread i takes dx's channel vector i
// (cols of them per pixel, image_size = pixels * cols per image).
template <typename T, int V, typename D>
__global__ void __launch_bounds__(kThreads)
    global_avg_backward_kernel(const T* __restrict__ dy, T* dx, std::int64_t items,
                               std::int64_t pixels, D cols, D image_size, bool accumulate) {
  const float inv = 1.0f / static_cast<float>(pixels);
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < items;
       i += stride) {
    const std::int64_t img = image_size.div(i), cv = i - cols.div(i) * cols.d;
    float g[V];
    load_pack<V>(dy + (img * cols.d + cv) * V, g);
    T* out = dx + i * V;
    float prev[V] = {};
    if (accumulate) load_pack<V>(out, prev);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float v = __fmul_rn(g[j], inv);  // rounded before the accumulate, like the CPU
      g[j] = accumulate ? prev[j] + v : v;
    }
    store_pack<V>(out, g);
  }
}

// ---- host side ----------------------------------------------------------------------------------

// Calls f(D{}): D = FastDiv when every flat index of the launch is below 2^31, else SlowDiv.
template <typename F>
void with_div(std::int64_t items, F&& f) {
  if (items < (std::int64_t{1} << 31)) {
    f(FastDiv{});
  } else {
    f(SlowDiv{});
  }
}

void check_pool(const PoolDesc& d, const char* op) {
  const bool ok = d.N >= 0 && d.H >= 0 && d.W >= 0 && d.C >= 0 && d.R >= 1 && d.S >= 1 &&
                  d.stride_h >= 1 && d.stride_w >= 1 && d.pad_h >= 0 && d.pad_w >= 0 && d.P >= 0 &&
                  d.Q >= 0;
  if (!ok) {
    throw Error(std::string("internal: ") + op +
                " needs non-negative sizes and padding, and windows and strides of at least 1");
  }
}

}  // namespace

void CudaBackend::max_pool2d_forward(const PoolDesc& d, CBuf x, Buf y) {
  const char* op = "max_pool2d_forward";
  require_same(x.dtype, y.dtype, op);
  check_pool(d, op);
  dispatch_float(y.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || d.N * d.P * d.Q <= 0 || d.C <= 0) return;
    with_pack<T>(use_packs<T>(d.C, x.ptr, y.ptr), [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const std::int64_t cols = d.C / V;
      with_div(std::max(d.N * d.P * d.Q, d.N * d.H * d.W) * d.C, [&](auto div) {
        using D = decltype(div);
        max_pool_forward_kernel<T, V, D>
            <<<grid_for(d.N * d.P * d.Q * cols, kThreads), kThreads, 0, stream_>>>(
                d, Dims<D>{D(d.P), D(d.Q), D(cols)}, static_cast<const T*>(x.ptr),
                static_cast<T*>(y.ptr));
        MIXTRAIN_CUDA_LAUNCH_CHECK("max_pool_forward_kernel");
      });
    });
  });
}

void CudaBackend::max_pool2d_backward(const PoolDesc& d, CBuf x, CBuf y, CBuf dy, Buf dx,
                                      bool accumulate) {
  const char* op = "max_pool2d_backward";
  require_same(x.dtype, y.dtype, op);
  require_same(x.dtype, dy.dtype, op);
  require_same(x.dtype, dx.dtype, op);
  check_pool(d, op);
  dispatch_float(dx.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || d.N * d.H * d.W <= 0 || d.C <= 0) return;
    with_pack<T>(use_packs<T>(d.C, x.ptr, y.ptr, dy.ptr, dx.ptr), [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const std::int64_t cols = d.C / V;
      with_div(std::max(d.N * d.P * d.Q, d.N * d.H * d.W) * d.C, [&](auto div) {
        using D = decltype(div);
        max_pool_backward_kernel<T, V, D>
            <<<grid_for(d.N * d.H * d.W * cols, kThreads), kThreads, 0, stream_>>>(
                d, Dims<D>{D(d.H), D(d.W), D(cols)}, D(d.stride_h), D(d.stride_w),
                static_cast<const T*>(x.ptr), static_cast<const T*>(y.ptr),
                static_cast<const T*>(dy.ptr), static_cast<T*>(dx.ptr), accumulate);
        MIXTRAIN_CUDA_LAUNCH_CHECK("max_pool_backward_kernel");
      });
    });
  });
}

void CudaBackend::avg_pool2d_forward(const PoolDesc& d, CBuf x, Buf y) {
  const char* op = "avg_pool2d_forward";
  require_same(x.dtype, y.dtype, op);
  check_pool(d, op);
  dispatch_float(y.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || d.N * d.P * d.Q <= 0 || d.C <= 0) return;
    with_pack<T>(use_packs<T>(d.C, x.ptr, y.ptr), [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const std::int64_t cols = d.C / V;
      with_div(std::max(d.N * d.P * d.Q, d.N * d.H * d.W) * d.C, [&](auto div) {
        using D = decltype(div);
        avg_pool_forward_kernel<T, V, D>
            <<<grid_for(d.N * d.P * d.Q * cols, kThreads), kThreads, 0, stream_>>>(
                d, Dims<D>{D(d.P), D(d.Q), D(cols)}, static_cast<const T*>(x.ptr),
                static_cast<T*>(y.ptr));
        MIXTRAIN_CUDA_LAUNCH_CHECK("avg_pool_forward_kernel");
      });
    });
  });
}

void CudaBackend::avg_pool2d_backward(const PoolDesc& d, CBuf dy, Buf dx, bool accumulate) {
  const char* op = "avg_pool2d_backward";
  require_same(dy.dtype, dx.dtype, op);
  check_pool(d, op);
  dispatch_float(dx.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || d.N * d.H * d.W <= 0 || d.C <= 0) return;
    with_pack<T>(use_packs<T>(d.C, dy.ptr, dx.ptr), [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const std::int64_t cols = d.C / V;
      with_div(std::max(d.N * d.P * d.Q, d.N * d.H * d.W) * d.C, [&](auto div) {
        using D = decltype(div);
        avg_pool_backward_kernel<T, V, D>
            <<<grid_for(d.N * d.H * d.W * cols, kThreads), kThreads, 0, stream_>>>(
                d, Dims<D>{D(d.H), D(d.W), D(cols)}, D(d.stride_h), D(d.stride_w),
                static_cast<const T*>(dy.ptr), static_cast<T*>(dx.ptr), accumulate);
        MIXTRAIN_CUDA_LAUNCH_CHECK("avg_pool_backward_kernel");
      });
    });
  });
}

void CudaBackend::global_avg_pool_forward(CBuf x, Buf y, std::int64_t n, std::int64_t pixels,
                                          std::int64_t channels) {
  const char* op = "global_avg_pool_forward";
  require_same(x.dtype, y.dtype, op);
  dispatch_float(y.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || n <= 0 || channels <= 0) return;
    with_pack<T>(use_packs<T>(channels, x.ptr, y.ptr), [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const std::int64_t cols = channels / V;
      // tx channel vectors (up to a warp) by ty pixel phases, no more phases than pixels.
      int tx = 1;
      while (tx < kWarp && tx < cols) tx *= 2;
      int ty = 1;
      while (ty * 2 <= kThreads / tx && ty * 2 <= pixels) ty *= 2;
      const std::int64_t tiles = (cols + tx - 1) / tx;
      const dim3 grid(static_cast<unsigned>(std::min(tiles, kMaxGridY)),
                      static_cast<unsigned>(std::min(n, kMaxGridY)));
      global_avg_forward_kernel<T, V><<<grid, dim3(tx, ty), 0, stream_>>>(
          static_cast<const T*>(x.ptr), static_cast<T*>(y.ptr), n, pixels, channels, cols, tiles);
      MIXTRAIN_CUDA_LAUNCH_CHECK("global_avg_forward_kernel");
    });
  });
}

void CudaBackend::global_avg_pool_backward(CBuf dy, Buf dx, std::int64_t n, std::int64_t pixels,
                                           std::int64_t channels, bool accumulate) {
  const char* op = "global_avg_pool_backward";
  require_same(dy.dtype, dx.dtype, op);
  dispatch_float(dx.dtype, op, [&](auto t) {
    using T = decltype(t);
    if (planning() || n * pixels <= 0 || channels <= 0) return;
    with_pack<T>(use_packs<T>(channels, dy.ptr, dx.ptr), [&](auto pack) {
      constexpr int V = decltype(pack)::value;
      const std::int64_t cols = channels / V;
      with_div(n * pixels * channels, [&](auto div) {
        using D = decltype(div);
        global_avg_backward_kernel<T, V, D>
            <<<grid_for(n * pixels * cols, kThreads), kThreads, 0, stream_>>>(
                static_cast<const T*>(dy.ptr), static_cast<T*>(dx.ptr), n * pixels * cols, pixels,
                D(cols), D(pixels * cols), accumulate);
        MIXTRAIN_CUDA_LAUNCH_CHECK("global_avg_backward_kernel");
      });
    });
  });
}

}  // namespace mixtrain::cuda
