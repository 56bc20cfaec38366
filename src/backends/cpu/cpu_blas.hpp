// Matrix products through OpenBLAS with bits that do not depend on the number of threads.
//
// OpenBLAS's own threading cannot give that: its sgemm/dgemm run a different driver on one thread
// (driver/level3/level3.c) than on several (level3_thread.c), which split K into different blocks
// (a remainder between GEMM_Q and 2 * GEMM_Q is rounded to the M unroll on one thread, halved on
// several), and with the Haswell and Zen kernels an element's sum also depends on the width of
// the column block it falls in, which follows the thread split. So OMP_NUM_THREADS=1 and 2 gave
// different bits from the first step.
//
// blas_gemm does the threading itself. The product is cut into pieces fixed by its shape alone
// (gemm_tiling): one piece per 4M multiply-adds, at most 16, as tiles of C, and when C is too
// small for that many tiles, also as groups of K.
// Each piece is one OpenBLAS call that runs on one thread (an OpenMP parallel loop over the
// pieces; OpenBLAS's OpenMP build runs single-threaded inside a parallel region, and
// SerialBlas makes sure of it elsewhere), so every element is the same single-threaded OpenBLAS
// sum for any thread count. A tile cut into K groups writes each group's product into its own
// partial buffer, and the partials are added in group order, then scaled into C.
#pragma once

#include <cstdint>
#include <vector>

namespace mixtrain::cpu {

// How blas_gemm cuts an m x n x k product: tiles of tile_m x tile_n elements of C (the last ones
// in each direction smaller), and groups of k_group along K (groups > 1 only when C has too few
// tiles). A function of (m, n, k) only.
struct GemmTiling {
  std::int64_t tile_m = 0, tile_n = 0, k_group = 0;
  std::int64_t tiles_m = 0, tiles_n = 0, groups = 0;
  std::int64_t pieces() const { return tiles_m * tiles_n * groups; }
};
GemmTiling gemm_tiling(std::int64_t m, std::int64_t n, std::int64_t k);

// C = alpha * op(A) op(B) + beta * C for row-major matrices (cblas_?gemm's arguments; with
// beta == 0, C is not read). `partials` is grow-only scratch for the K groups' products.
void blas_gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               float alpha, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
               float beta, float* c, std::int64_t ldc, std::vector<float>& partials);
void blas_gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               double alpha, const double* a, std::int64_t lda, const double* b, std::int64_t ldb,
               double beta, double* c, std::int64_t ldc, std::vector<double>& partials);

}  // namespace mixtrain::cpu
