// Convolution on the CPU: im2col + OpenBLAS GEMM over chunks of images, so the column buffer stays
// bounded. Channels-last (NHWC) makes a column row R * S runs of C / groups contiguous channels.
//
//   forward         col[m, (r, s, c)] = x at the input pixel of output pixel m, offset (r, s)
//                   y_g[m, k] = col_g[m, :] . w_g[k, :]             (one GEMM per group)
//   backward data   dcol_g = dy_g w_g, then every input pixel gathers the dcol entries that read
//                   it (col2im as a gather: no write conflicts, deterministic order)
//   backward filter dw_g += dy_g^T col_g, chunk after chunk
// fp16/bf16 operands are widened to fp32 as they are gathered (exactly what tensor cores do:
// fp32 products and accumulation); the F64 reference path gathers doubles and calls dgemm. A 1x1
// convolution with stride 1 and no padding needs no gather: the input itself is the column
// matrix.
#include <algorithm>
#include <cstdlib>
#include <new>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_blas.hpp"
#include "backends/cpu/cpu_convert.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "backends/cpu/cpu_rows.hpp"

namespace mixtrain::cpu {

namespace {

// dst (+)= src, rounded once to T, in parallel blocks.
template <typename T, typename A>
void store_rows(A* src, T* dst, std::int64_t n, bool accumulate) {
  constexpr std::int64_t kBlock = 4096;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel if (n >= kParallelMin)
  {
    std::vector<A> tmp(accumulate ? kBlock : 0);
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      const std::int64_t begin = b * kBlock, count = std::min(kBlock, n - begin);
      row_store(src + begin, dst + begin, count, accumulate, tmp.data());
    }
  }
}

template <typename A>
DType dtype_of() {
  return std::is_same_v<A, double> ? DType::F64 : DType::F32;
}

void require_dtype(DType got, DType want, const char* what) {
  if (got != want) {
    throw Error(std::string("internal: ") + what + " must be " + std::string(dtype_name(want)) +
                ", got " + std::string(dtype_name(got)));
  }
}

struct Geometry {
  std::int64_t cg, kg, kc;  // channels and filters per group, column width R * S * cg
  std::int64_t pq, hw;      // output and input pixels per image
  bool identity;            // 1x1, stride 1, no padding: the input is the column matrix

  explicit Geometry(const ConvDesc& d)
      : cg(d.C / d.groups),
        kg(d.K / d.groups),
        kc(d.R * d.S * (d.C / d.groups)),
        pq(d.P * d.Q),
        hw(d.H * d.W),
        identity(d.R == 1 && d.S == 1 && d.stride_h == 1 && d.stride_w == 1 && d.pad_h == 0 &&
                 d.pad_w == 0 && d.P == d.H && d.Q == d.W) {}
};

void check_desc(const ConvDesc& d) {
  if (d.groups < 1 || d.C % d.groups != 0 || d.K % d.groups != 0 || d.N < 0 || d.P < 1 || d.Q < 1) {
    throw Error("internal: bad ConvDesc (groups " + std::to_string(d.groups) + ", C " +
                std::to_string(d.C) + ", K " + std::to_string(d.K) + ", P " + std::to_string(d.P) +
                ", Q " + std::to_string(d.Q) + ")");
  }
}

std::int64_t chunk_images(std::int64_t n, std::size_t bytes_per_image, std::size_t budget) {
  const auto fit = static_cast<std::int64_t>(budget / std::max<std::size_t>(1, bytes_per_image));
  return std::clamp<std::int64_t>(fit, 1, std::max<std::int64_t>(1, n));
}

// Scratch bytes per image of a chunk, forward and filter gradient alike: the column matrix (or the
// widened input of a 1x1 convolution), and the output or dy as A (none when the tensors are A).
template <typename A>
std::size_t per_image_bytes(const ConvDesc& d, const Geometry& ge, bool direct) {
  return static_cast<std::size_t>((ge.identity ? (direct ? 0 : ge.hw * d.C) : ge.pq * ge.kc) +
                                  (direct ? 0 : ge.pq * d.K)) *
         sizeof(A);
}

// col[m, (r, s, c)] for the output pixels m of images [n0, n0 + nb), channels of group g.
template <typename T, typename A>
void im2col(const ConvDesc& d, const Geometry& ge, const T* x, std::int64_t n0, std::int64_t nb,
            std::int64_t g, A* col) {
  const std::int64_t rows = nb * ge.pq;
#pragma omp parallel for schedule(static) if (rows * ge.kc >= kParallelMin)
  for (std::int64_t m = 0; m < rows; ++m) {
    const std::int64_t q = m % d.Q, p = (m / d.Q) % d.P, n = n0 + m / ge.pq;
    A* out = col + m * ge.kc;
    for (std::int64_t r = 0; r < d.R; ++r) {
      const std::int64_t ih = p * d.stride_h - d.pad_h + r * d.dilation_h;
      for (std::int64_t s = 0; s < d.S; ++s) {
        const std::int64_t iw = q * d.stride_w - d.pad_w + s * d.dilation_w;
        A* o = out + (r * d.S + s) * ge.cg;
        if (ih >= 0 && ih < d.H && iw >= 0 && iw < d.W) {
          row_in(x + ((n * d.H + ih) * d.W + iw) * d.C + g * ge.cg, o, ge.cg);
        } else {
          std::fill_n(o, ge.cg, A(0));
        }
      }
    }
  }
}

// dx[pixel, group g's channels] = sum of the dcol entries that read the pixel, for the input
// pixels of images [0, nb) of the chunk (dx and dcol both start at the chunk's first image).
template <typename A>
void col2im(const ConvDesc& d, const Geometry& ge, const A* dcol, std::int64_t nb, std::int64_t g,
            A* dx) {
  const std::int64_t pixels = nb * ge.hw;
#pragma omp parallel for schedule(static) if (pixels * ge.cg * d.R * d.S >= kParallelMin)
  for (std::int64_t t = 0; t < pixels; ++t) {
    const std::int64_t w = t % d.W, h = (t / d.W) % d.H, n = t / ge.hw;
    A* out = dx + t * d.C + g * ge.cg;
    std::fill_n(out, ge.cg, A(0));
    for (std::int64_t r = 0; r < d.R; ++r) {
      const std::int64_t hh = h + d.pad_h - r * d.dilation_h;
      if (hh < 0 || hh % d.stride_h != 0) continue;
      const std::int64_t p = hh / d.stride_h;
      if (p >= d.P) continue;
      for (std::int64_t s = 0; s < d.S; ++s) {
        const std::int64_t ww = w + d.pad_w - s * d.dilation_w;
        if (ww < 0 || ww % d.stride_w != 0) continue;
        const std::int64_t q = ww / d.stride_w;
        if (q >= d.Q) continue;
        const A* src = dcol + ((n * d.P + p) * d.Q + q) * ge.kc + (r * d.S + s) * ge.cg;
        for (std::int64_t c = 0; c < ge.cg; ++c) out[c] += src[c];
      }
    }
  }
}

// rows x cols values of T as A: the buffer itself when T is A, else widened row by row (in
// parallel) into `scratch` (unused, and may be null, when T is A).
template <typename T, typename A>
const A* as_acc(const T* src, std::int64_t rows, std::int64_t cols, void* scratch) {
  if constexpr (std::is_same_v<T, A>) {
    return src;
  } else {
    A* dst = static_cast<A*>(scratch);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) widen(src + r * cols, dst + r * cols, cols);
    return dst;
  }
}

// The column matrix of group g over images [n0, n0 + nb) and its row stride: for a 1x1 stride-1
// convolution the input itself (`input`, already as A: every group reads its channel slice),
// else im2col into `scratch`.
template <typename T, typename A>
std::pair<const A*, std::int64_t> group_columns(const ConvDesc& d, const Geometry& ge, const T* x,
                                                const A* input, std::int64_t n0, std::int64_t nb,
                                                std::int64_t g, void* scratch) {
  if (ge.identity) return {input + g * ge.cg, d.C};
  A* buf = static_cast<A*>(scratch);
  im2col(d, ge, x, n0, nb, g, buf);
  return {buf, ge.kc};
}

// What a chunk of `rows` output pixels (images from n0) reads its columns from: a slot-0 buffer
// of scratch(slot, bytes) (a group's column matrix, or the widened input of a 1x1 convolution;
// none when that input already is A) and, for a 1x1 convolution, the chunk's input as A.
// group_columns takes both.
template <typename T, typename A, typename Scratch>
std::pair<void*, const A*> chunk_columns(const ConvDesc& d, const Geometry& ge, const T* x,
                                         std::int64_t n0, std::int64_t rows, Scratch&& scratch) {
  void* cols =
      ge.identity && std::is_same_v<T, A>
          ? nullptr
          : scratch(0, static_cast<std::size_t>(rows * (ge.identity ? d.C : ge.kc)) * sizeof(A));
  const A* input = ge.identity ? as_acc<T, A>(x + n0 * ge.hw * d.C, rows, d.C, cols) : nullptr;
  return {cols, input};
}

}  // namespace

void CpuBackend::FreeDeleter::operator()(void* p) const noexcept {
  std::free(p);
}

void* CpuBackend::conv_scratch(int slot, std::size_t bytes) {
  if (conv_scratch_bytes_[slot] < bytes) {
    const std::size_t size = (bytes + 63) / 64 * 64;
    conv_scratch_[slot].reset();
    void* p = std::aligned_alloc(64, size);
    if (p == nullptr) throw std::bad_alloc();
    conv_scratch_[slot].reset(p);
    conv_scratch_bytes_[slot] = size;
  }
  return conv_scratch_[slot].get();
}

void CpuBackend::conv2d_forward(const ConvDesc& d, CBuf x, CBuf w, CBuf bias, Buf y) {
  check_desc(d);
  if (x.dtype != w.dtype || x.dtype != y.dtype) {
    throw Error("internal: conv2d_forward needs x, w and y of one dtype");
  }
  const Geometry ge(d);
  const auto scratch = [this](int slot, std::size_t bytes) { return conv_scratch(slot, bytes); };
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    constexpr bool direct = std::is_same_v<T, A>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const A* pw = as_acc<T, A>(
        as<T>(w.ptr), d.K, ge.kc,
        direct ? nullptr : conv_scratch(3, static_cast<std::size_t>(d.K * ge.kc) * sizeof(A)));
    std::vector<A> b;
    if (bias) {
      b.resize(static_cast<std::size_t>(d.K));
      dispatch_float(bias.dtype, [&](auto bt) {
        using B = decltype(bt);
        const B* pb = as<B>(bias.ptr);
        for (std::int64_t k = 0; k < d.K; ++k)
          b[static_cast<std::size_t>(k)] = static_cast<A>(load(pb[k]));
      });
    }
    const std::int64_t chunk =
        chunk_images(d.N, per_image_bytes<A>(d, ge, direct), conv_chunk_bytes_);
    for (std::int64_t n0 = 0; n0 < d.N; n0 += chunk) {
      const std::int64_t nb = std::min(chunk, d.N - n0);
      const std::int64_t rows = nb * ge.pq;
      A* out = nullptr;
      if constexpr (direct) {
        out = py + n0 * ge.pq * d.K;
      } else {
        out = static_cast<A*>(conv_scratch(1, static_cast<std::size_t>(rows * d.K) * sizeof(A)));
      }
      const auto [cols, input] = chunk_columns<T, A>(d, ge, px, n0, rows, scratch);
      for (std::int64_t g = 0; g < d.groups; ++g) {
        const auto [cg, ld] = group_columns(d, ge, px, input, n0, nb, g, cols);
        blas_gemm(false, true, rows, ge.kg, ge.kc, A(1), cg, ld, pw + g * ge.kg * ge.kc, ge.kc,
                  A(0), out + g * ge.kg, d.K, gemm_partials<A>());
      }
      // Epilogue: bias, and the one rounding to T.
      const A* pb = b.empty() ? nullptr : b.data();
      T* dst = py + n0 * ge.pq * d.K;
#pragma omp parallel for schedule(static) if (rows * d.K >= kParallelMin)
      for (std::int64_t r = 0; r < rows; ++r) {
        A* acc = out + r * d.K;
        if (pb != nullptr) {
          for (std::int64_t k = 0; k < d.K; ++k) acc[k] += pb[k];
        }
        if constexpr (!direct) narrow(acc, dst + r * d.K, d.K);
      }
    }
  });
}

void CpuBackend::conv2d_backward_data(const ConvDesc& d, CBuf dy, CBuf w, Buf dx, bool accumulate) {
  check_desc(d);
  if (dy.dtype != w.dtype || dy.dtype != dx.dtype) {
    throw Error("internal: conv2d_backward_data needs dy, w and dx of one dtype");
  }
  const Geometry ge(d);
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    constexpr bool direct = std::is_same_v<T, A>;
    const T* pdy = as<T>(dy.ptr);
    T* pdx = as<T>(dx.ptr);
    const A* pw = as_acc<T, A>(
        as<T>(w.ptr), d.K, ge.kc,
        direct ? nullptr : conv_scratch(3, static_cast<std::size_t>(d.K * ge.kc) * sizeof(A)));
    // Written straight into dx when it has the arithmetic type and is overwritten.
    const bool into_dx = direct && !accumulate;
    const std::size_t per_image = ((ge.identity ? 0 : ge.pq * ge.kc) + (into_dx ? 0 : ge.hw * d.C) +
                                   (direct ? 0 : ge.pq * d.K)) *
                                  sizeof(A);
    const std::int64_t chunk = chunk_images(d.N, per_image, conv_chunk_bytes_);
    for (std::int64_t n0 = 0; n0 < d.N; n0 += chunk) {
      const std::int64_t nb = std::min(chunk, d.N - n0);
      const std::int64_t rows = nb * ge.pq;
      const std::int64_t in_count = nb * ge.hw * d.C;
      const A* g_out = as_acc<T, A>(  // dy of the chunk as A, [rows, K]
          pdy + n0 * ge.pq * d.K, rows, d.K,
          direct ? nullptr : conv_scratch(1, static_cast<std::size_t>(rows * d.K) * sizeof(A)));
      A* acc = nullptr;  // dx of the chunk as A, [nb, H, W, C]
      if constexpr (direct) {
        if (into_dx) acc = pdx + n0 * ge.hw * d.C;
      }
      if (acc == nullptr) {
        acc = static_cast<A*>(conv_scratch(2, static_cast<std::size_t>(in_count) * sizeof(A)));
      }
      for (std::int64_t g = 0; g < d.groups; ++g) {
        const A* dy_g = g_out + g * ge.kg;
        const A* w_g = pw + g * ge.kg * ge.kc;
        if (ge.identity) {
          blas_gemm(false, false, rows, ge.cg, ge.kg, A(1), dy_g, d.K, w_g, ge.kc, A(0),
                    acc + g * ge.cg, d.C, gemm_partials<A>());
        } else {
          A* dcol =
              static_cast<A*>(conv_scratch(0, static_cast<std::size_t>(rows * ge.kc) * sizeof(A)));
          blas_gemm(false, false, rows, ge.kc, ge.kg, A(1), dy_g, d.K, w_g, ge.kc, A(0), dcol,
                    ge.kc, gemm_partials<A>());
          col2im(d, ge, dcol, nb, g, acc);
        }
      }
      if (!into_dx) store_rows(acc, pdx + n0 * ge.hw * d.C, in_count, accumulate);
    }
  });
}

void CpuBackend::conv2d_backward_filter(const ConvDesc& d, CBuf x, CBuf dy, Buf dw, Buf db) {
  check_desc(d);
  if (x.dtype != dy.dtype) {
    throw Error("internal: conv2d_backward_filter needs x and dy of one dtype");
  }
  const Geometry ge(d);
  const auto scratch = [this](int slot, std::size_t bytes) { return conv_scratch(slot, bytes); };
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    constexpr bool direct = std::is_same_v<T, A>;
    // dw in the accumulation dtype, or (FP16/BF16) in the tensor dtype: accumulated in scratch.
    const bool dw_in_t = !direct && dw.dtype == x.dtype;
    if (!dw_in_t) require_dtype(dw.dtype, dtype_of<A>(), "conv2d_backward_filter's dw");
    const T* px = as<T>(x.ptr);
    const T* pdy = as<T>(dy.ptr);
    const std::int64_t dw_count = d.K * ge.kc;
    A* pdw = dw_in_t
                 ? static_cast<A*>(conv_scratch(2, static_cast<std::size_t>(dw_count) * sizeof(A)))
                 : as<A>(dw.ptr);
    const std::int64_t chunk =
        chunk_images(d.N, per_image_bytes<A>(d, ge, direct), conv_chunk_bytes_);
    if (d.N == 0) std::fill_n(pdw, dw_count, A(0));
    for (std::int64_t n0 = 0; n0 < d.N; n0 += chunk) {
      const std::int64_t nb = std::min(chunk, d.N - n0);
      const std::int64_t rows = nb * ge.pq;
      const A beta = n0 == 0 ? A(0) : A(1);
      const A* g_out = as_acc<T, A>(
          pdy + n0 * ge.pq * d.K, rows, d.K,
          direct ? nullptr : conv_scratch(1, static_cast<std::size_t>(rows * d.K) * sizeof(A)));
      const auto [cols, input] = chunk_columns<T, A>(d, ge, px, n0, rows, scratch);
      for (std::int64_t g = 0; g < d.groups; ++g) {
        const auto [cg, ld] = group_columns(d, ge, px, input, n0, nb, g, cols);
        blas_gemm(true, false, ge.kg, ge.kc, rows, A(1), g_out + g * ge.kg, d.K, cg, ld, beta,
                  pdw + g * ge.kg * ge.kc, ge.kc, gemm_partials<A>());
      }
    }
    if constexpr (!direct) {
      // The weight gradient passes through the tensor dtype, as cuDNN (and PyTorch AMP) produce
      // it: rounded once, and inf where it overflows FP16, so the loss scaler sees the overflow
      // the GPU would see.
      if (dw_in_t) {
        store_rows(pdw, as<T>(dw.ptr), dw_count, false);
      } else {
#pragma omp parallel for schedule(static) if (dw_count >= kParallelMin)
        for (std::int64_t i = 0; i < dw_count; ++i) pdw[i] = round_to<T>(pdw[i]);
      }
    }
  });
  if (db) bias_grad(dy, db, d.N * d.P * d.Q, d.K, false);
}

}  // namespace mixtrain::cpu
