#include "backends/cpu/cpu_blas.hpp"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <mutex>
#include <type_traits>

#include "backends/cpu/cpu_dispatch.hpp"  // kParallelMin

// OpenBLAS's own entry points (declared here too: cblas.h may be another vendor's).
extern "C" int openblas_get_parallel(void);
extern "C" void openblas_set_num_threads(int num_threads);

namespace mixtrain::cpu {

namespace {

// The number of pieces a product is cut into: one per kPieceWork multiply-adds (about 50-100 us
// on one core), at most kMaxPieces. Few, large pieces keep the repeated packing of operands
// (each piece packs the rows of A and the columns of B it reads) small beside the arithmetic;
// kMaxPieces bounds the threads one product can use.
constexpr std::int64_t kPieceWork = std::int64_t{1} << 22;
constexpr std::int64_t kMaxPieces = 16;
// Tiles of C are cut only while both halves keep at least kMinTile rows (columns), multiples of
// kAlign (OpenBLAS's widest register block).
constexpr std::int64_t kMinTile = 64;
constexpr std::int64_t kAlign = 16;
// When C has too few tiles, K is cut into groups of at least kMinKGroup, as many as keep the
// partial products within kMaxPartials elements.
constexpr std::int64_t kMinKGroup = 512;
constexpr std::int64_t kMaxPartials = std::int64_t{1} << 22;

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}
std::int64_t round_up(std::int64_t v, std::int64_t to) {
  return ceil_div(v, to) * to;
}

// Makes the OpenBLAS calls in its scope run on the calling thread. The OpenMP build of OpenBLAS
// takes its thread count from omp_get_max_threads() at each call (one inside an active parallel
// region); the pthreads build from openblas_set_num_threads, set to 1 once for the process.
class SerialBlas {
 public:
  SerialBlas() : saved_(omp_get_max_threads()) {
    static std::once_flag pthreads_build;
    std::call_once(pthreads_build, [] {
      if (openblas_get_parallel() == 1) openblas_set_num_threads(1);
    });
    if (saved_ != 1) omp_set_num_threads(1);
  }
  ~SerialBlas() {
    if (saved_ != 1) omp_set_num_threads(saved_);
  }
  SerialBlas(const SerialBlas&) = delete;
  SerialBlas& operator=(const SerialBlas&) = delete;

 private:
  int saved_;
};

void xgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha, const float* a,
           int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void xgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
           const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

template <typename A>
void gemm_impl(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, A alpha,
               const A* a, std::int64_t lda, const A* b, std::int64_t ldb, A beta, A* c,
               std::int64_t ldc, std::vector<A>& partials) {
  if (m <= 0 || n <= 0) return;
  const GemmTiling t = gemm_tiling(m, n, k);
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  const auto i = [](std::int64_t v) { return static_cast<int>(v); };
  // The product of rows [m0, m0 + mm), columns [n0, n0 + nn) and depth [k0, k0 + kk) of op(A)
  // op(B), into out (leading dimension ldo) as alpha * product + beta * out, on this thread.
  const auto piece = [&](std::int64_t m0, std::int64_t mm, std::int64_t n0, std::int64_t nn,
                         std::int64_t k0, std::int64_t kk, A al, A be, A* out, std::int64_t ldo) {
    const A* pa = a + (trans_a ? k0 * lda + m0 : m0 * lda + k0);
    const A* pb = b + (trans_b ? n0 * ldb + k0 : k0 * ldb + n0);
    const SerialBlas serial;
    xgemm(ta, tb, i(mm), i(nn), i(kk), al, pa, i(lda), pb, i(ldb), be, out, i(ldo));
  };
  const std::int64_t pieces = t.pieces();
  A* part = nullptr;
  if (t.groups > 1) {
    const auto need = static_cast<std::size_t>(t.groups * m * n);
    if (partials.size() < need) partials.resize(need);
    part = partials.data();
  }
  // Pieces write disjoint outputs, so the order they run in (dynamic: a thread that was
  // descheduled does not hold the others up) changes nothing.
#pragma omp parallel for schedule(dynamic, 1) if (pieces > 1)
  for (std::int64_t p = 0; p < pieces; ++p) {
    const std::int64_t tile = p / t.groups, g = p % t.groups;
    const std::int64_t m0 = (tile / t.tiles_n) * t.tile_m, n0 = (tile % t.tiles_n) * t.tile_n;
    const std::int64_t mm = std::min(t.tile_m, m - m0), nn = std::min(t.tile_n, n - n0);
    if (part == nullptr) {
      piece(m0, mm, n0, nn, 0, k, alpha, beta, c + m0 * ldc + n0, ldc);
    } else {
      const std::int64_t k0 = g * t.k_group, kk = std::min(t.k_group, k - k0);
      piece(m0, mm, n0, nn, k0, kk, A(1), A(0), part + g * m * n + m0 * n + n0, n);
    }
  }
  if (part == nullptr) return;
  // C = alpha * (partial 0 + partial 1 + ...) + beta * C, the groups added in order.
  const std::int64_t groups = t.groups;
#pragma omp parallel for schedule(static) if (m * n * groups >= kParallelMin)
  for (std::int64_t r = 0; r < m; ++r) {
    A* out = c + r * ldc;
    const A* p0 = part + r * n;
    for (std::int64_t col = 0; col < n; ++col) {
      A s = p0[col];
      for (std::int64_t g = 1; g < groups; ++g) s += p0[g * m * n + col];
      out[col] = beta == A(0) ? alpha * s : alpha * s + beta * out[col];
    }
  }
}

}  // namespace

GemmTiling gemm_tiling(std::int64_t m, std::int64_t n, std::int64_t k) {
  const std::int64_t rows = std::max<std::int64_t>(m, 1), cols = std::max<std::int64_t>(n, 1);
  const std::int64_t depth = std::max<std::int64_t>(k, 1);
  const std::int64_t want =
      std::clamp<std::int64_t>(ceil_div(rows * cols * depth, kPieceWork), 1, kMaxPieces);
  GemmTiling t;
  t.tile_m = rows;
  t.tile_n = cols;
  const auto tiles = [&] { return ceil_div(rows, t.tile_m) * ceil_div(cols, t.tile_n); };
  // Halve the longer side of the tile (rounded up to kAlign), or else the other, while there are
  // fewer tiles than wanted and the side has room for two halves of kMinTile.
  while (tiles() < want) {
    const bool m_longer = t.tile_m >= t.tile_n;
    std::int64_t& longer = m_longer ? t.tile_m : t.tile_n;
    std::int64_t& shorter = m_longer ? t.tile_n : t.tile_m;
    if (longer >= 2 * kMinTile) {
      longer = round_up(ceil_div(longer, 2), kAlign);
    } else if (shorter >= 2 * kMinTile) {
      shorter = round_up(ceil_div(shorter, 2), kAlign);
    } else {
      break;
    }
  }
  t.tiles_m = ceil_div(rows, t.tile_m);
  t.tiles_n = ceil_div(cols, t.tile_n);
  t.k_group = k;
  t.groups = 1;
  // Still too few pieces (a small C with a long K, as in a filter gradient): cut K too.
  if (tiles() < want && k >= 2 * kMinKGroup) {
    const std::int64_t groups = std::min({ceil_div(want, tiles()), k / kMinKGroup,
                                          std::max<std::int64_t>(1, kMaxPartials / (rows * cols))});
    if (groups > 1) {
      t.k_group = round_up(ceil_div(k, groups), kAlign);
      t.groups = ceil_div(k, t.k_group);
    }
  }
  return t;
}

void blas_gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               float alpha, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
               float beta, float* c, std::int64_t ldc, std::vector<float>& partials) {
  gemm_impl(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, partials);
}

void blas_gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
               double alpha, const double* a, std::int64_t lda, const double* b, std::int64_t ldb,
               double beta, double* c, std::int64_t ldc, std::vector<double>& partials) {
  gemm_impl(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, partials);
}

}  // namespace mixtrain::cpu
