// Element-wise ops: fill, convert, add, activations, dropout, and the bias epilogue of the GEMM
// fallback. One generic grid-stride kernel moves 16-byte packs when every pointer allows it and
// finishes odd tails element by element; the per-element math comes from the shared headers.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"
#include "ops/activation_math.hpp"
#include "ops/counter_rng.hpp"

namespace mixtrain::cuda {

namespace {

template <typename F, typename V, std::size_t... K>
__device__ __forceinline__ float apply_at(const F& f, std::int64_t i, const V& vals, int j,
                                          std::index_sequence<K...>) {
  return f(i, vals[K][j]...);
}

// out[i] (+)= f(i, in_0[i], in_1[i], ...) for i < n. N: elements per thread per iteration (1, or
// a 16-byte pack of the narrowest type when every pointer is aligned for it). Each element is
// read and then written by the same thread, so an input may be the output buffer itself.
template <int N, typename TO, typename F, typename... TI>
__device__ __forceinline__ void map_body(const F& f, TO* out, bool accumulate, std::int64_t n,
                                         const TI*... in) {
  constexpr int kIn = static_cast<int>(sizeof...(TI));
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x * N;
  for (std::int64_t base = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * N;
       base < n; base += stride) {
    if (base + N <= n) {
      float vals[kIn + 1][N];
      int k = 0;
      (load_pack<N>(in + base, vals[k++]), ...);
      (void)k;
      float prev[N];
      if (accumulate) load_pack<N>(out + base, prev);
      float r[N];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        const float v = apply_at(f, base + j, vals, j, std::index_sequence_for<TI...>{});
        r[j] = accumulate ? prev[j] + v : v;
      }
      store_pack<N>(out + base, r);
    } else {
      for (std::int64_t i = base; i < n; ++i) {
        const float v = f(i, ld(in, i)...);
        st(out, i, accumulate ? ld(out, i) + v : v);
      }
    }
  }
}

// Distinct buffers: __restrict__ lets the compiler use the read-only data path.
template <int N, typename TO, typename F, typename... TI>
__global__ void __launch_bounds__(kThreads)
    map_kernel(F f, TO* __restrict__ out, bool accumulate, std::int64_t n,
               const TI* __restrict__... in) {
  map_body<N>(f, out, accumulate, n, in...);
}

// In place (an input is the output): no __restrict__ promise.
template <int N, typename TO, typename F, typename... TI>
__global__ void __launch_bounds__(kThreads)
    map_kernel_in_place(F f, TO* out, bool accumulate, std::int64_t n, const TI*... in) {
  map_body<N>(f, out, accumulate, n, in...);
}

// Launches map_kernel with 16-byte packs when all pointers are aligned for them. Inputs must be
// either distinct from the output or the output buffer itself (not a shifted view of it).
template <typename TO, typename F, typename... TI>
void launch_map(cudaStream_t stream, unsigned blocks_cap, F f, TO* out, bool accumulate,
                std::int64_t n, const TI*... in) {
  if (n <= 0) return;
  constexpr std::size_t kMin = std::min({sizeof(TO), sizeof(TI)...});
  constexpr int kN = static_cast<int>(16 / kMin);
  const bool vector = aligned_to(out, sizeof(TO) * kN) && (aligned_to(in, sizeof(TI) * kN) && ...);
  const bool in_place = ((static_cast<const void*>(in) == static_cast<const void*>(out)) || ...);
  const int per_thread = vector ? kN : 1;
  const std::int64_t items = (n + per_thread - 1) / per_thread;
  const std::int64_t want = (items + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(want < blocks_cap ? want : blocks_cap);
  if (in_place) {
    if (vector) {
      map_kernel_in_place<kN><<<blocks, kThreads, 0, stream>>>(f, out, accumulate, n, in...);
    } else {
      map_kernel_in_place<1><<<blocks, kThreads, 0, stream>>>(f, out, accumulate, n, in...);
    }
  } else if (vector) {
    map_kernel<kN><<<blocks, kThreads, 0, stream>>>(f, out, accumulate, n, in...);
  } else {
    map_kernel<1><<<blocks, kThreads, 0, stream>>>(f, out, accumulate, n, in...);
  }
  MIXTRAIN_CUDA_LAUNCH_CHECK("map_kernel");
}

// ---- per-element functions -----------------------------------------------------------------

struct FillOp {
  float value;
  __device__ float operator()(std::int64_t) const { return value; }
};
// Uniform values in [-1, 1) from a hash of the index: data for timing cuDNN's candidate algorithms
// (never zeros, which can run faster than real data).
struct SearchDataOp {
  __device__ float operator()(std::int64_t i) const {
    return 2.0f * counter_uniform_keyed(0x5EA7C4DA7Aull, static_cast<std::uint64_t>(i)) - 1.0f;
  }
};
struct CopyOp {
  __device__ float operator()(std::int64_t, float x) const { return x; }
};
struct AddOp {
  __device__ float operator()(std::int64_t, float a, float b) const { return a + b; }
};
struct ActForward {
  Activation act;
  float alpha;
  __device__ float operator()(std::int64_t, float x) const {
    return activation_value(act, alpha, x);
  }
};
struct ActBackward {  // with the stored forward output y
  Activation act;
  float alpha;
  __device__ float operator()(std::int64_t, float x, float y, float dy) const {
    return dy * activation_derivative(act, alpha, x, y);
  }
};
struct ActBackwardNoY {
  Activation act;
  float alpha;
  __device__ float operator()(std::int64_t, float x, float dy) const {
    return dy * activation_derivative(act, alpha, x, 0.0f);
  }
};
// Inverted dropout: the mask is a pure function of (seed, iteration, salt, index), read from the
// control block at run time so a replayed graph draws a new mask every step.
struct DropoutOp {
  float rate;
  float keep_scale;
  std::uint64_t salt;
  const StepControl* control;
  __device__ float operator()(std::int64_t i, float x) const {
    const bool keep = counter_uniform(control->seed, control->iteration, salt,
                                      static_cast<std::uint64_t>(i)) >= rate;
    return keep ? x * keep_scale : 0.0f;
  }
};

__global__ void fill_i32_kernel(std::int32_t* x, std::int64_t n, std::int32_t value) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    x[i] = value;
  }
}

// out[r, c] = act(in[r, c]) over an m x n matrix with leading dimension ld. No __restrict__:
// in may be out (each element is read, then written, by one thread).
template <typename T>
__global__ void activation_rows_kernel(Activation act, const T* in, T* out, std::int64_t m,
                                       std::int64_t n, std::int64_t ld) {
  const std::int64_t total = m * n;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t at = (i / n) * ld + i % n;
    out[at] = Dev<T>::store(activation_value(act, 0.0f, Dev<T>::load(in[at])));
  }
}

// C[b][r, c] = beta * C[b][r, c] + bias[c] (beta == 0 never reads C).
template <typename TC, typename TB>
__global__ void epilogue_kernel(TC* c, std::int64_t m, std::int64_t n, std::int64_t ldc,
                                std::int64_t batch, std::int64_t stride_c, float beta,
                                const TB* bias) {
  const std::int64_t total = batch * m * n;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    const std::int64_t col = i % n, row = (i / n) % m, b = i / (m * n);
    TC* p = c + b * stride_c + row * ldc + col;
    float v = bias != nullptr ? Dev<TB>::load(bias[col]) : 0.0f;
    if (beta != 0.0f) v += beta * Dev<TC>::load(*p);
    *p = Dev<TC>::store(v);
  }
}

}  // namespace

void CudaBackend::fill_search_data(Buf x, std::int64_t n) {
  dispatch_float(x.dtype, "fill_search_data", [&](auto t) {
    using T = decltype(t);
    launch_map(stream_, grid_for(n, kThreads), SearchDataOp{}, static_cast<T*>(x.ptr), false, n);
  });
}

void CudaBackend::fill(Buf x, std::int64_t n, float value) {
  if (x.dtype == DType::I32) {
    if (planning() || n <= 0) return;
    fill_i32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream_>>>(
        static_cast<std::int32_t*>(x.ptr), n, static_cast<std::int32_t>(value));
    MIXTRAIN_CUDA_LAUNCH_CHECK("fill_i32_kernel");
    return;
  }
  dispatch_float(x.dtype, "fill", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    launch_map(stream_, grid_for(n, kThreads), FillOp{value}, static_cast<T*>(x.ptr), false, n);
  });
}

void CudaBackend::convert(CBuf src, Buf dst, std::int64_t n, bool accumulate) {
  dispatch_float(src.dtype, "convert", [&](auto s) {
    using S = decltype(s);
    dispatch_float(dst.dtype, "convert", [&](auto d) {
      using D = decltype(d);
      if (planning()) return;
      launch_map(stream_, grid_for(n, kThreads), CopyOp{}, static_cast<D*>(dst.ptr), accumulate, n,
                 static_cast<const S*>(src.ptr));
    });
  });
}

void CudaBackend::add(CBuf a, CBuf b, Buf y, std::int64_t n) {
  require_same(a.dtype, b.dtype, "add");
  require_same(a.dtype, y.dtype, "add");
  dispatch_float(y.dtype, "add", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    launch_map(stream_, grid_for(n, kThreads), AddOp{}, static_cast<T*>(y.ptr), false, n,
               static_cast<const T*>(a.ptr), static_cast<const T*>(b.ptr));
  });
}

void CudaBackend::activation_forward(Activation act, float alpha, CBuf x, Buf y, std::int64_t n) {
  require_same(x.dtype, y.dtype, "activation_forward");
  dispatch_float(y.dtype, "activation_forward", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    launch_map(stream_, grid_for(n, kThreads), ActForward{act, alpha}, static_cast<T*>(y.ptr),
               false, n, static_cast<const T*>(x.ptr));
  });
}

void CudaBackend::activation_backward(Activation act, float alpha, CBuf x, CBuf y, CBuf dy, Buf dx,
                                      std::int64_t n, bool accumulate) {
  require_same(x.dtype, dy.dtype, "activation_backward");
  require_same(x.dtype, dx.dtype, "activation_backward");
  if (y) require_same(x.dtype, y.dtype, "activation_backward");
  dispatch_float(dx.dtype, "activation_backward", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    const unsigned cap = grid_for(n, kThreads);
    T* out = static_cast<T*>(dx.ptr);
    const T* px = static_cast<const T*>(x.ptr);
    const T* pdy = static_cast<const T*>(dy.ptr);
    if (y) {
      launch_map(stream_, cap, ActBackward{act, alpha}, out, accumulate, n, px,
                 static_cast<const T*>(y.ptr), pdy);
    } else {
      launch_map(stream_, cap, ActBackwardNoY{act, alpha}, out, accumulate, n, px, pdy);
    }
  });
}

void CudaBackend::dropout_forward(float rate, std::uint64_t salt, CBuf x, Buf y, std::int64_t n,
                                  const StepControl* control) {
  require_same(x.dtype, y.dtype, "dropout_forward");
  const float keep_scale = 1.0f / (1.0f - rate);
  dispatch_float(y.dtype, "dropout_forward", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    launch_map(stream_, grid_for(n, kThreads), DropoutOp{rate, keep_scale, salt, control},
               static_cast<T*>(y.ptr), false, n, static_cast<const T*>(x.ptr));
  });
}

void CudaBackend::dropout_backward(float rate, std::uint64_t salt, CBuf dy, Buf dx, std::int64_t n,
                                   const StepControl* control, bool accumulate) {
  require_same(dy.dtype, dx.dtype, "dropout_backward");
  const float keep_scale = 1.0f / (1.0f - rate);
  dispatch_float(dx.dtype, "dropout_backward", [&](auto t) {
    using T = decltype(t);
    if (planning()) return;
    launch_map(stream_, grid_for(n, kThreads), DropoutOp{rate, keep_scale, salt, control},
               static_cast<T*>(dx.ptr), accumulate, n, static_cast<const T*>(dy.ptr));
  });
}

namespace {

// Loads every 16 bytes of p and keeps nothing; the sink store (under a condition on the loaded
// bytes, into the backend's idle scratch, harmless when it happens) only keeps the loads from
// being removed.
__global__ void read_through_kernel(const uint4* __restrict__ p, std::int64_t n,
                                    unsigned int* __restrict__ sink) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  unsigned int acc = 0;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const uint4 v = p[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x9E3779B9u) *sink = acc;
}

}  // namespace

void CudaBackend::read_through(const void* p, std::size_t bytes) {
  const auto n = static_cast<std::int64_t>(bytes / 16);
  if (n <= 0) return;
  read_through_kernel<<<grid_for(n, kThreads), kThreads, 0, stream_>>>(
      static_cast<const uint4*>(p), n, static_cast<unsigned int*>(scratch_));
  MIXTRAIN_CUDA_LAUNCH_CHECK("read_through_kernel");
}

void CudaBackend::gemm_epilogue_only(const GemmDesc& d, Buf target, float beta, bool with_bias) {
  if (planning()) return;
  dispatch_float(d.c.dtype, "gemm", [&](auto tc) {
    using TC = decltype(tc);
    const DType bias_dtype = with_bias ? d.bias.dtype : d.c.dtype;
    dispatch_float(bias_dtype, "gemm bias", [&](auto tb) {
      using TB = decltype(tb);
      const std::int64_t total = d.batch * d.m * d.n;
      if (total <= 0) return;
      // beta * C comes from C itself; the target (C or aux) only receives the result.
      if (beta != 0.0f && target.ptr != d.c.ptr) {
        throw Error("internal: gemm epilogue with beta != 0 into a buffer other than C");
      }
      epilogue_kernel<<<grid_for(total, kThreads), kThreads, 0, stream_>>>(
          static_cast<TC*>(target.ptr), d.m, d.n, d.ldc, d.batch, d.stride_c, beta,
          with_bias ? static_cast<const TB*>(d.bias.ptr) : nullptr);
      MIXTRAIN_CUDA_LAUNCH_CHECK("epilogue_kernel");
    });
  });
}

void CudaBackend::gemm_activation(const GemmDesc& d, CBuf z) {
  if (planning()) return;
  require_same(z.dtype, d.c.dtype, "gemm activation");
  dispatch_float(d.c.dtype, "gemm activation", [&](auto t) {
    using T = decltype(t);
    const std::int64_t total = d.m * d.n;
    if (total <= 0) return;
    T* out = static_cast<T*>(d.c.ptr);
    const T* in = static_cast<const T*>(z.ptr);
    if (d.ldc == d.n) {  // contiguous: the element-wise kernel (in place when z is C)
      launch_map(stream_, grid_for(total, kThreads), ActForward{d.epilogue, 0.0f}, out, false,
                 total, in);
      return;
    }
    activation_rows_kernel<<<grid_for(total, kThreads), kThreads, 0, stream_>>>(d.epilogue, in, out,
                                                                                d.m, d.n, d.ldc);
    MIXTRAIN_CUDA_LAUNCH_CHECK("activation_rows_kernel");
  });
}

}  // namespace mixtrain::cuda
