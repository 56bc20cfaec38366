// Device-side building blocks shared by the kernel files: storage-type conversion, 16-byte packs,
// dtype dispatch, deterministic block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "backends/cuda/cuda_host.hpp"
#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cuda {

inline constexpr int kThreads = 256;  // threads per block of the element-wise kernels
inline constexpr int kWarp = 32;

// Load converts the storage type to float; store rounds to nearest even, overflowing to inf
// exactly like src/core/half.hpp on the CPU.
template <typename T>
struct Dev;
template <>
struct Dev<float> {
  __device__ __forceinline__ static float load(float v) { return v; }
  __device__ __forceinline__ static float store(float v) { return v; }
};
template <>
struct Dev<__half> {
  __device__ __forceinline__ static float load(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Dev<__nv_bfloat16> {
  __device__ __forceinline__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
__device__ __forceinline__ float ld(const T* p, std::int64_t i) {
  return Dev<T>::load(p[i]);
}
template <typename T>
__device__ __forceinline__ void st(T* p, std::int64_t i, float v) {
  p[i] = Dev<T>::store(v);
}

// N consecutive elements moved with one (or, for 32-byte packs, two) vector memory operations.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ void load_pack(const T* p, float (&out)[N]) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = Dev<T>::load(pk.v[j]);
}

template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const float (&in)[N]) {
  Pack<T, N> pk;
#pragma unroll
  for (int j = 0; j < N; ++j) pk.v[j] = Dev<T>::store(in[j]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// Calls f(std::integral_constant<int, V>{}): V = the elements of T in 16 bytes when `vector`,
// else 1.
template <typename T, typename F>
void with_pack(bool vector, F&& f) {
  if (vector) {
    f(std::integral_constant<int, static_cast<int>(16 / sizeof(T))>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// 16-byte packs of T along rows of `channels` elements: the row length a multiple of the pack
// and every pointer 16-byte aligned (a null pointer, an absent operand, counts as aligned).
template <typename T, typename... P>
bool use_packs(std::int64_t channels, const P*... ptrs) {
  constexpr auto kPack = static_cast<std::int64_t>(16 / sizeof(T));
  return channels % kPack == 0 && (aligned_to(ptrs, 16) && ...);
}

// Calls f(T{}) with the storage type of a floating training dtype.
template <typename F>
decltype(auto) dispatch_float(DType t, const char* op, F&& f) {
  if (t == DType::F32) return f(float{});
  if (t == DType::F16) return f(__half{});
  if (t == DType::BF16) return f(__nv_bfloat16{});
  unsupported_dtype(op, t);
}

// Sum over a warp in a fixed butterfly order: every lane ends with the same, reproducible value.
template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of kThreads threads in a fixed order (warp butterflies, then warp 0 adds the
// warp totals in order). The result is valid in thread 0. `shared` holds kThreads / kWarp values.
template <typename V>
__device__ __forceinline__ V block_sum(V v, V* shared) {
  v = warp_sum(v);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  V total = V(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kThreads / kWarp; ++w) total += shared[w];
  }
  return total;
}

// Completion count of `expected` blocks on one counter, for a kernel whose last block finishes a
// reduction the others contributed to (instead of a second, one-block launch). Every block calls
// it once with all its threads, after the global writes the last block must see. It returns true
// in exactly one block, the last to arrive, in which every other block's earlier writes are
// visible (read them with __ldcg, past L1): the block barrier orders its threads' writes before
// thread 0's fence and atomic. The last block resets the counter to zero, so the next launch or
// graph replay finds it there. The result does not depend on which block is last as long as the
// last block reads the partials in a fixed order. Blocks of any shape (thread (0, 0, 0) counts in).
__device__ __forceinline__ bool last_to_arrive(unsigned int* counter, unsigned int expected) {
  __shared__ int is_last;
  __syncthreads();  // the block's writes are issued
  if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
    __threadfence();  // ... and visible to every block before it counts in
    const unsigned int ticket = atomicAdd(counter, 1u);
    is_last = ticket == expected - 1 ? 1 : 0;
    if (is_last != 0) atomicExch(counter, 0u);
  }
  __syncthreads();
  const bool last = is_last != 0;
  if (last) __threadfence();
  return last;
}

// A one-dimensional grid whose blocks all count on one counter.
__device__ __forceinline__ bool last_block_done(unsigned int* counter) {
  return last_to_arrive(counter, gridDim.x);
}

}  // namespace mixtrain::cuda
