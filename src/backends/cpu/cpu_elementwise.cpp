#include <algorithm>
#include <cmath>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "ops/activation_math.hpp"
#include "ops/counter_rng.hpp"

namespace mixtrain::cpu {

namespace {

// Kernels compute in acc_t<T>: fp32 for the training dtypes, double for F64.
template <typename T>
void write(T* out, std::int64_t i, acc_t<T> v, bool accumulate) {
  out[i] = store<T>(accumulate ? load(out[i]) + v : v);
}

// Dropout works in blocks: the keep mask of a block first (an integer loop the compiler
// vectorises, eight hashes at a time), then the scaling.
constexpr std::int64_t kDropoutBlock = 2048;

void keep_mask(std::uint64_t key, std::uint32_t threshold, std::int64_t begin, std::int64_t count,
               std::uint32_t* keep) {
  for (std::int64_t j = 0; j < count; ++j) {
    keep[j] = counter_bits_keyed(key, static_cast<std::uint64_t>(begin + j)) >= threshold ? 1u : 0u;
  }
}

// out (+)= in * keep / (1 - rate) where the mask of `key` keeps the element, else 0: the forward
// pass (in = x, overwrite) and the backward pass (in = dy) are the same map.
void dropout_apply(float rate, std::uint64_t key, CBuf in, Buf out, std::int64_t n,
                   bool accumulate) {
  dispatch_float(out.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const A keep_scale = A(1) / (A(1) - A(rate));
    const T* pin = as<T>(in.ptr);
    T* pout = as<T>(out.ptr);
    const std::uint32_t threshold = counter_threshold(rate);
    const std::int64_t blocks = (n + kDropoutBlock - 1) / kDropoutBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (std::int64_t b = 0; b < blocks; ++b) {
      std::uint32_t keep[kDropoutBlock];
      const std::int64_t begin = b * kDropoutBlock, count = std::min(kDropoutBlock, n - begin);
      keep_mask(key, threshold, begin, count, keep);
      for (std::int64_t j = 0; j < count; ++j) {
        const A kept = load(pin[begin + j]) * keep_scale;
        write(pout, begin + j, keep[j] != 0 ? kept : A(0), accumulate);
      }
    }
  });
}

// ReLU's backward over [begin, end), apart from the generic loop (whose per-element switch over
// the activation keeps it scalar) so that it vectorises: activation_derivative's ReLU case.
template <typename T>
void relu_backward_range(const T* x, const T* dy, T* dx, std::int64_t begin, std::int64_t end,
                         bool accumulate) {
  using A = acc_t<T>;
  if (accumulate) {
    for (std::int64_t i = begin; i < end; ++i) {
      const A d = relu_passes(load(x[i])) ? A(1) : A(0);
      dx[i] = store<T>(load(dx[i]) + load(dy[i]) * d);
    }
  } else {
    for (std::int64_t i = begin; i < end; ++i) {
      const A d = relu_passes(load(x[i])) ? A(1) : A(0);
      dx[i] = store<T>(load(dy[i]) * d);
    }
  }
}

}  // namespace

void CpuBackend::fill(Buf x, std::int64_t n, float value) {
  if (x.dtype == DType::I32) {
    std::fill_n(as<std::int32_t>(x.ptr), n, static_cast<std::int32_t>(value));
    return;
  }
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    std::fill_n(as<T>(x.ptr), n, store<T>(value));
  });
}

void CpuBackend::convert(CBuf src, Buf dst, std::int64_t n, bool accumulate) {
  dispatch_float(src.dtype, [&](auto s) {
    using S = decltype(s);
    dispatch_float(dst.dtype, [&](auto d) {
      using D = decltype(d);
      const S* in = as<S>(src.ptr);
      D* out = as<D>(dst.ptr);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (std::int64_t i = 0; i < n; ++i) write(out, i, load(in[i]), accumulate);
    });
  });
}

void CpuBackend::add(CBuf a, CBuf b, Buf y, std::int64_t n) {
  require_same(a.dtype, b.dtype, "add");
  require_same(a.dtype, y.dtype, "add");
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    const T* pa = as<T>(a.ptr);
    const T* pb = as<T>(b.ptr);
    T* py = as<T>(y.ptr);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) py[i] = store<T>(load(pa[i]) + load(pb[i]));
  });
}

void CpuBackend::activation_forward(Activation act, float alpha, CBuf x, Buf y, std::int64_t n) {
  require_same(x.dtype, y.dtype, "activation_forward");
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (std::int64_t i = 0; i < n; ++i)
      py[i] = store<T>(activation_value(act, alpha, load(px[i])));
  });
}

void CpuBackend::activation_backward(Activation act, float alpha, CBuf x, CBuf y, CBuf dy, Buf dx,
                                     std::int64_t n, bool accumulate) {
  require_same(x.dtype, dy.dtype, "activation_backward");
  require_same(x.dtype, dx.dtype, "activation_backward");
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    const T* py = as<T>(y.ptr);
    const T* pdy = as<T>(dy.ptr);
    T* pdx = as<T>(dx.ptr);
    if (act == Activation::ReLU) {
      constexpr std::int64_t kBlock = 4096;
      const std::int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
      for (std::int64_t b = 0; b < blocks; ++b) {
        relu_backward_range(px, pdy, pdx, b * kBlock, std::min(n, (b + 1) * kBlock), accumulate);
      }
      return;
    }
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (std::int64_t i = 0; i < n; ++i) {
      const A yv = py != nullptr ? load(py[i]) : A(0);
      write(pdx, i, load(pdy[i]) * activation_derivative(act, alpha, load(px[i]), yv), accumulate);
    }
  });
}

void CpuBackend::dropout_forward(float rate, std::uint64_t salt, CBuf x, Buf y, std::int64_t n,
                                 const StepControl* control) {
  require_same(x.dtype, y.dtype, "dropout_forward");
  dropout_apply(rate, counter_key(control->seed, control->iteration, salt), x, y, n, false);
}

void CpuBackend::dropout_backward(float rate, std::uint64_t salt, CBuf dy, Buf dx, std::int64_t n,
                                  const StepControl* control, bool accumulate) {
  require_same(dy.dtype, dx.dtype, "dropout_backward");
  dropout_apply(rate, counter_key(control->seed, control->iteration, salt), dy, dx, n, accumulate);
}

void CpuBackend::softmax_forward(CBuf x, Buf y, std::int64_t rows, std::int64_t cols) {
  require_same(x.dtype, y.dtype, "softmax_forward");
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* in = px + r * cols;
      T* out = py + r * cols;
      A mx = -INFINITY;
      for (std::int64_t c = 0; c < cols; ++c) mx = std::max(mx, load(in[c]));
      A sum = 0;
      for (std::int64_t c = 0; c < cols; ++c) sum += std::exp(load(in[c]) - mx);
      const A inv = A(1) / sum;
      for (std::int64_t c = 0; c < cols; ++c) out[c] = store<T>(std::exp(load(in[c]) - mx) * inv);
    }
  });
}

void CpuBackend::softmax_backward(CBuf y, CBuf dy, Buf dx, std::int64_t rows, std::int64_t cols,
                                  bool accumulate) {
  require_same(y.dtype, dy.dtype, "softmax_backward");
  require_same(y.dtype, dx.dtype, "softmax_backward");
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* py = as<T>(y.ptr);
    const T* pdy = as<T>(dy.ptr);
    T* pdx = as<T>(dx.ptr);
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t o = r * cols;
      A dot = 0;
      for (std::int64_t c = 0; c < cols; ++c) dot += load(py[o + c]) * load(pdy[o + c]);
      for (std::int64_t c = 0; c < cols; ++c) {
        write(pdx, o + c, load(py[o + c]) * (load(pdy[o + c]) - dot), accumulate);
      }
    }
  });
}

}  // namespace mixtrain::cpu
