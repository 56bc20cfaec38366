// The input gradient of a dense layer with few units (a classifier head): C[m, n] = A[m, k]
// B[k, n] + beta C with k <= kSkinny (16). cuBLASLt covers it with tensor-core tiles that are
// mostly padding (8 us on large_mlp's 4096 -> 10 head, where the data moved takes 2); this is a
// memory-bound pass with fp32 FMAs, z computed in fp32 and rounded once as GemmDesc says.
// (Kernels for the forward product, n <= 16, and the weight gradient, m <= 16, were tried and
// dropped: a warp per row re-read B from L2 and took 66 us where cuBLASLt takes 11; a block per 64
// columns of dW walking all rows took 26 us where cuBLASLt and its bias gradient take 14.)
#include <cstdint>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_common.cuh"

namespace mixtrain::cuda {

namespace {

constexpr int kSkinny = 16;

// One thread per pack of V columns and kRows rows of C: the k <= 16 packs of B it needs are
// loaded once into registers and serve all kRows rows (B is read m / kRows times in all, not m).
constexpr int kRows = 8;

template <typename T, typename TC, int V>
__global__ void __launch_bounds__(kThreads)
    skinny_input_grad_kernel(const T* __restrict__ a, std::int64_t lda, const T* __restrict__ b,
                             std::int64_t ldb, TC* __restrict__ c, std::int64_t ldc, std::int64_t m,
                             std::int64_t n, int k, float beta) {
  const std::int64_t packs_per_row = (n + V - 1) / V;
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const std::int64_t row_groups = (m + kRows - 1) / kRows;
  if (idx >= row_groups * packs_per_row) return;
  // Consecutive threads take consecutive column packs of one row group: coalesced rows of C.
  const std::int64_t row0 = (idx / packs_per_row) * kRows;
  const std::int64_t col = (idx % packs_per_row) * V;
  float w[kSkinny][V];
#pragma unroll
  for (int o = 0; o < kSkinny; ++o) {
    if (o < k) load_pack<V>(b + o * ldb + col, w[o]);
  }
  for (int r = 0; r < kRows; ++r) {
    const std::int64_t row = row0 + r;
    if (row >= m) break;
    const T* dz = a + row * lda;
    float acc[V] = {};
#pragma unroll
    for (int o = 0; o < kSkinny; ++o) {
      if (o < k) {
        const float s = Dev<T>::load(dz[o]);
#pragma unroll
        for (int j = 0; j < V; ++j) acc[j] = fmaf(s, w[o][j], acc[j]);
      }
    }
    TC* out = c + row * ldc + col;
    if (beta != 0.0f) {
      float prev[V];
      load_pack<V>(out, prev);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += beta * prev[j];
    }
    store_pack<V>(out, acc);
  }
}

}  // namespace

bool CudaBackend::skinny_gemm(const GemmDesc& d) {
  // gemm() has checked the operands' dtypes and the epilogue rules (no aux without an activation)
  // and returned for empty products.
  const bool input_grad = skinny_gemms_ && d.batch == 1 && d.alpha == 1.0f && !d.bias &&
                          !d.bias_grad && d.epilogue == Activation::Identity && !d.trans_a &&
                          !d.trans_b && d.k <= kSkinny;
  if (!input_grad) return false;
  if (planning()) return true;
  dispatch_float(d.a.dtype, "gemm", [&](auto t) {
    using T = decltype(t);
    constexpr int kPack = static_cast<int>(16 / sizeof(T));
    dispatch_float(d.c.dtype, "gemm output", [&](auto tc) {
      using TC = decltype(tc);
      const auto* a = static_cast<const T*>(d.a.ptr);
      const auto* b = static_cast<const T*>(d.b.ptr);
      auto* c = static_cast<TC*>(d.c.ptr);
      const bool vector = d.n % kPack == 0 && d.ldb % kPack == 0 && d.ldc % kPack == 0 &&
                          aligned_to(b, 16) && aligned_to(c, kPack * sizeof(TC));
      with_pack<T>(vector, [&](auto v) {
        constexpr int kV = decltype(v)::value;
        const std::int64_t threads = (d.m + kRows - 1) / kRows * ((d.n + kV - 1) / kV);
        skinny_input_grad_kernel<T, TC, kV>
            <<<static_cast<unsigned>((threads + kThreads - 1) / kThreads), kThreads, 0, stream_>>>(
                a, d.lda, b, d.ldb, c, d.ldc, d.m, d.n, static_cast<int>(d.k), d.beta);
      });
      MIXTRAIN_CUDA_LAUNCH_CHECK("skinny_input_grad_kernel");
    });
  });
  return true;
}

}  // namespace mixtrain::cuda
