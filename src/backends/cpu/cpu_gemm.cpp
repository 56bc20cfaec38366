#include <algorithm>
#include <string>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_blas.hpp"
#include "backends/cpu/cpu_convert.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "ops/activation_math.hpp"

namespace mixtrain::cpu {

namespace {

// Widens a stored row-major matrix (rows x cols, leading dimension ld) into dense fp32.
void widen_matrix(CBuf src, std::int64_t offset, std::int64_t rows, std::int64_t cols,
                  std::int64_t ld, float* dst) {
  dispatch_float(src.dtype, [&](auto t) {
    using T = decltype(t);
    const T* base = as<T>(src.ptr) + offset;
#pragma omp parallel for schedule(static) if (rows * cols > 65536)
    for (std::int64_t r = 0; r < rows; ++r) widen(base + r * ld, dst + r * cols, cols);
  });
}

// The F64 reference: a, b, c (and the bias) all f64, one blas_gemm per batch entry.
void gemm_f64(const GemmDesc& d, std::vector<double>& partials) {
  if (d.a.dtype != DType::F64 || d.c.dtype != DType::F64 ||
      (d.bias && d.bias.dtype != DType::F64)) {
    throw Error("internal: an f64 gemm needs f64 operands, output and bias, got " +
                std::string(dtype_name(d.a.dtype)) + " operands and " +
                std::string(dtype_name(d.c.dtype)) + " output");
  }
  for (std::int64_t batch = 0; batch < d.batch; ++batch) {
    const double* pa = as<double>(d.a.ptr) + batch * d.stride_a;
    const double* pb = as<double>(d.b.ptr) + batch * d.stride_b;
    double* pc = as<double>(d.c.ptr) + batch * d.stride_c;
    double beta = d.beta;
    if (d.bias) {  // seed C with the bias, then accumulate the product onto it
      const double* bias = as<double>(d.bias.ptr);
      for (std::int64_t r = 0; r < d.m; ++r) std::copy_n(bias, d.n, pc + r * d.ldc);
      beta = 1.0;
    }
    blas_gemm(d.trans_a, d.trans_b, d.m, d.n, d.k, static_cast<double>(d.alpha), pa, d.lda, pb,
              d.ldb, beta, pc, d.ldc, partials);
    if (d.epilogue == Activation::Identity) continue;
    if (d.aux) {
      double* aux = as<double>(d.aux.ptr) + batch * d.stride_c;
      for (std::int64_t r = 0; r < d.m; ++r) std::copy_n(pc + r * d.ldc, d.n, aux + r * d.ldc);
    }
    for (std::int64_t r = 0; r < d.m; ++r) {
      for (std::int64_t c = 0; c < d.n; ++c) {
        pc[r * d.ldc + c] = activation_value(d.epilogue, 0.0f, pc[r * d.ldc + c]);
      }
    }
  }
}

template <typename T, typename O>
void bias_grad_impl(const T* g, O* db, std::int64_t rows, std::int64_t cols, bool accumulate) {
  using A = acc_t<T>;
  // Column blocks in parallel; each column sums its rows in order (deterministic).
  constexpr std::int64_t kBlock = 64;
  const std::int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t b = 0; b < blocks; ++b) {
    const std::int64_t c0 = b * kBlock, c1 = std::min(cols, c0 + kBlock);
    A acc[kBlock] = {};
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = c0; c < c1; ++c) acc[c - c0] += load(g[r * cols + c]);
    }
    for (std::int64_t c = c0; c < c1; ++c) {
      db[c] = accumulate ? static_cast<O>(db[c] + acc[c - c0]) : static_cast<O>(acc[c - c0]);
    }
  }
}

}  // namespace

void CpuBackend::gemm(const GemmDesc& d) {
  if (d.a.dtype != d.b.dtype) {
    throw Error("internal: gemm operands differ in dtype (" + std::string(dtype_name(d.a.dtype)) +
                " and " + std::string(dtype_name(d.b.dtype)) + ")");
  }
  check_gemm_epilogue(d);
  if (d.bias_grad) {  // the column sums of the stored operand: exactly bias_grad()'s sums
    const bool of_a = d.bias_grad_operand == GemmOperand::A;
    bias_grad(of_a ? d.a : d.b, d.bias_grad, d.k, of_a ? d.m : d.n, false);
  }
  if (d.a.dtype == DType::F64 || d.c.dtype == DType::F64) {
    gemm_f64(d, gemm_partials<double>());
    return;
  }
  const Activation act = d.epilogue;
  const std::int64_t a_rows = d.trans_a ? d.k : d.m, a_cols = d.trans_a ? d.m : d.k;
  const std::int64_t b_rows = d.trans_b ? d.n : d.k, b_cols = d.trans_b ? d.k : d.n;
  const bool wide = d.a.dtype == DType::F32;
  const bool direct_c = d.c.dtype == DType::F32;
  float* a32 = wide ? nullptr : scratch(0, static_cast<std::size_t>(a_rows * a_cols)).data();
  float* b32 = wide ? nullptr : scratch(1, static_cast<std::size_t>(b_rows * b_cols)).data();
  float* c32 = direct_c ? nullptr : scratch(2, static_cast<std::size_t>(d.m * d.n)).data();

  for (std::int64_t batch = 0; batch < d.batch; ++batch) {
    const float* pa;
    const float* pb;
    std::int64_t lda = d.lda, ldb = d.ldb;
    if (wide) {
      pa = static_cast<const float*>(d.a.ptr) + batch * d.stride_a;
      pb = static_cast<const float*>(d.b.ptr) + batch * d.stride_b;
    } else {
      widen_matrix(d.a, batch * d.stride_a, a_rows, a_cols, d.lda, a32);
      widen_matrix(d.b, batch * d.stride_b, b_rows, b_cols, d.ldb, b32);
      pa = a32;
      pb = b32;
      lda = a_cols;
      ldb = b_cols;
    }
    if (direct_c) {
      float* pc = static_cast<float*>(d.c.ptr) + batch * d.stride_c;
      float beta = d.beta;
      if (d.bias) {  // seed C with the bias, then accumulate the product onto it
        dispatch_float(d.bias.dtype, [&](auto t) {
          using T = decltype(t);
          const T* bias = as<T>(d.bias.ptr);
          for (std::int64_t r = 0; r < d.m; ++r) widen(bias, pc + r * d.ldc, d.n);
        });
        beta = 1.0f;
      }
      blas_gemm(d.trans_a, d.trans_b, d.m, d.n, d.k, d.alpha, pa, lda, pb, ldb, beta, pc, d.ldc,
                gemm_partials<float>());
      if (act == Activation::Identity) continue;
      // The epilogue on the fp32 result z: aux = z, C = act(z), in the activation layers' math.
      float* aux = d.aux ? static_cast<float*>(d.aux.ptr) + batch * d.stride_c : nullptr;
#pragma omp parallel for schedule(static) if (d.m * d.n >= kParallelMin)
      for (std::int64_t r = 0; r < d.m; ++r) {
        float* row = pc + r * d.ldc;
        if (aux != nullptr) std::copy_n(row, d.n, aux + r * d.ldc);
        for (std::int64_t c = 0; c < d.n; ++c) row[c] = activation_value(act, 0.0f, row[c]);
      }
      continue;
    }
    blas_gemm(d.trans_a, d.trans_b, d.m, d.n, d.k, d.alpha, pa, lda, pb, ldb, 0.0f, c32, d.n,
              gemm_partials<float>());
    // Epilogue in fp32, one rounding to the output type (and one to aux's, of z).
    dispatch_float(d.c.dtype, [&](auto t) {
      using T = decltype(t);
      T* pc = as<T>(d.c.ptr) + batch * d.stride_c;
      T* aux = d.aux ? as<T>(d.aux.ptr) + batch * d.stride_c : nullptr;
      std::vector<float> bias32;
      if (d.bias) {
        bias32.resize(static_cast<std::size_t>(d.n));
        dispatch_float(d.bias.dtype, [&](auto bt) {
          using B = decltype(bt);
          widen(as<B>(d.bias.ptr), bias32.data(), d.n);
        });
      }
      const float beta = d.beta;
#pragma omp parallel for schedule(static)
      for (std::int64_t r = 0; r < d.m; ++r) {
        float* acc = c32 + r * d.n;
        T* out = pc + r * d.ldc;
        if (beta != 0.0f) {
          for (std::int64_t c = 0; c < d.n; ++c) acc[c] += beta * load(out[c]);
        }
        if (!bias32.empty()) {
          for (std::int64_t c = 0; c < d.n; ++c) acc[c] += bias32[static_cast<std::size_t>(c)];
        }
        if (act != Activation::Identity) {
          if (aux != nullptr) narrow(acc, aux + r * d.ldc, d.n);
          for (std::int64_t c = 0; c < d.n; ++c) acc[c] = activation_value(act, 0.0f, acc[c]);
        }
        narrow(acc, out, d.n);
      }
    });
  }
}

void CpuBackend::bias_grad(CBuf dy, Buf db, std::int64_t rows, std::int64_t cols, bool accumulate) {
  dispatch_float(dy.dtype, [&](auto t) {
    using T = decltype(t);
    const T* g = as<T>(dy.ptr);
    switch (db.dtype) {
      case DType::F32:
        bias_grad_impl(g, as<float>(db.ptr), rows, cols, accumulate);
        return;
      case DType::F64:
        bias_grad_impl(g, as<double>(db.ptr), rows, cols, accumulate);
        return;
      default:
        throw Error("internal: bias_grad writes f32 or f64, not " +
                    std::string(dtype_name(db.dtype)));
    }
  });
}

}  // namespace mixtrain::cpu
