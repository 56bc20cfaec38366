// Pooling on the CPU over channels-last tensors. Forward runs over output pixels (channels
// innermost, contiguous); backward scatters each output's gradient into a per-image fp32 (double
// for F64) accumulator on the thread that owns the image, then rounds once into dx. Windows are
// clipped to the input: padding never takes part (max ignores it, average divides by the pixels
// actually covered: count_include_pad=false).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_dispatch.hpp"

namespace mixtrain::cpu {

namespace {

void require_same(DType a, DType b, const char* op) {
  if (a != b) {
    throw Error(std::string("internal: ") + op + " needs matching dtypes, got " +
                std::string(dtype_name(a)) + " and " + std::string(dtype_name(b)));
  }
}

// The input rows [h0, h1) and columns [w0, w1) under output (p, q).
struct Window {
  std::int64_t h0, h1, w0, w1;
  Window(const PoolDesc& d, std::int64_t p, std::int64_t q)
      : h0(std::max<std::int64_t>(0, p * d.stride_h - d.pad_h)),
        h1(std::min(d.H, p * d.stride_h - d.pad_h + d.R)),
        w0(std::max<std::int64_t>(0, q * d.stride_w - d.pad_w)),
        w1(std::min(d.W, q * d.stride_w - d.pad_w + d.S)) {}
  std::int64_t count() const { return std::max<std::int64_t>(0, (h1 - h0) * (w1 - w0)); }
};

// Calls f(n, acc) for each image n with a zeroed [H, W, C] accumulator owned by the calling
// thread, then stores acc into dx (adding to it with accumulate).
template <typename T, typename A, typename F>
void scatter_images(const PoolDesc& d, T* dx, bool accumulate, F&& f) {
  const std::int64_t image = d.H * d.W * d.C;
#pragma omp parallel if (d.N * image >= kParallelMin)
  {
    std::vector<A> acc(static_cast<std::size_t>(image));
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < d.N; ++n) {
      std::fill(acc.begin(), acc.end(), A(0));
      f(n, acc.data());
      T* out = dx + n * image;
      for (std::int64_t i = 0; i < image; ++i) {
        const A v = acc[static_cast<std::size_t>(i)];
        out[i] = store<T>(accumulate ? load(out[i]) + v : v);
      }
    }
  }
}

}  // namespace

void CpuBackend::max_pool2d_forward(const PoolDesc& d, CBuf x, Buf y) {
  require_same(x.dtype, y.dtype, "max_pool2d_forward");
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const std::int64_t outputs = d.N * d.P * d.Q;
#pragma omp parallel if (outputs * d.C >= kParallelMin)
    {
      std::vector<A> best(static_cast<std::size_t>(d.C));
#pragma omp for schedule(static)
      for (std::int64_t o = 0; o < outputs; ++o) {
        const std::int64_t q = o % d.Q, p = (o / d.Q) % d.P, n = o / (d.P * d.Q);
        const Window win(d, p, q);
        std::fill(best.begin(), best.end(), -std::numeric_limits<A>::infinity());
        for (std::int64_t h = win.h0; h < win.h1; ++h) {
          for (std::int64_t w = win.w0; w < win.w1; ++w) {
            const T* in = px + ((n * d.H + h) * d.W + w) * d.C;
            for (std::int64_t c = 0; c < d.C; ++c) {
              const A v = load(in[c]);
              A& b = best[static_cast<std::size_t>(c)];
              if (v > b || std::isnan(v)) b = std::isnan(b) ? b : v;  // a nan propagates
            }
          }
        }
        T* out = py + o * d.C;
        for (std::int64_t c = 0; c < d.C; ++c) out[c] = store<T>(best[static_cast<std::size_t>(c)]);
      }
    }
  });
}

void CpuBackend::max_pool2d_backward(const PoolDesc& d, CBuf x, CBuf y, CBuf dy, Buf dx,
                                     bool accumulate) {
  require_same(x.dtype, y.dtype, "max_pool2d_backward");
  require_same(x.dtype, dy.dtype, "max_pool2d_backward");
  require_same(x.dtype, dx.dtype, "max_pool2d_backward");
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    const T* py = as<T>(y.ptr);
    const T* pdy = as<T>(dy.ptr);
    scatter_images<T, A>(d, as<T>(dx.ptr), accumulate, [&](std::int64_t n, A* acc) {
      for (std::int64_t p = 0; p < d.P; ++p) {
        for (std::int64_t q = 0; q < d.Q; ++q) {
          const Window win(d, p, q);
          const std::int64_t o = ((n * d.P + p) * d.Q + q) * d.C;
          for (std::int64_t c = 0; c < d.C; ++c) {
            const A target = load(py[o + c]);
            const bool nan = std::isnan(target);
            // The first input of the window (row-major) that holds the maximum takes dy.
            for (std::int64_t h = win.h0, found = 0; h < win.h1 && !found; ++h) {
              for (std::int64_t w = win.w0; w < win.w1; ++w) {
                const std::int64_t i = (h * d.W + w) * d.C + c;
                const A v = load(px[n * d.H * d.W * d.C + i]);
                if (v == target || (nan && std::isnan(v))) {
                  acc[i] += load(pdy[o + c]);
                  found = 1;
                  break;
                }
              }
            }
          }
        }
      }
    });
  });
}

void CpuBackend::avg_pool2d_forward(const PoolDesc& d, CBuf x, Buf y) {
  require_same(x.dtype, y.dtype, "avg_pool2d_forward");
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const std::int64_t outputs = d.N * d.P * d.Q;
#pragma omp parallel if (outputs * d.C >= kParallelMin)
    {
      std::vector<A> sum(static_cast<std::size_t>(d.C));
#pragma omp for schedule(static)
      for (std::int64_t o = 0; o < outputs; ++o) {
        const std::int64_t q = o % d.Q, p = (o / d.Q) % d.P, n = o / (d.P * d.Q);
        const Window win(d, p, q);
        std::fill(sum.begin(), sum.end(), A(0));
        for (std::int64_t h = win.h0; h < win.h1; ++h) {
          for (std::int64_t w = win.w0; w < win.w1; ++w) {
            const T* in = px + ((n * d.H + h) * d.W + w) * d.C;
            for (std::int64_t c = 0; c < d.C; ++c) sum[static_cast<std::size_t>(c)] += load(in[c]);
          }
        }
        const A inv = A(1) / static_cast<A>(win.count());
        T* out = py + o * d.C;
        for (std::int64_t c = 0; c < d.C; ++c) {
          out[c] = store<T>(sum[static_cast<std::size_t>(c)] * inv);
        }
      }
    }
  });
}

void CpuBackend::avg_pool2d_backward(const PoolDesc& d, CBuf dy, Buf dx, bool accumulate) {
  require_same(dy.dtype, dx.dtype, "avg_pool2d_backward");
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* pdy = as<T>(dy.ptr);
    scatter_images<T, A>(d, as<T>(dx.ptr), accumulate, [&](std::int64_t n, A* acc) {
      for (std::int64_t p = 0; p < d.P; ++p) {
        for (std::int64_t q = 0; q < d.Q; ++q) {
          const Window win(d, p, q);
          const A inv = A(1) / static_cast<A>(win.count());
          const T* g = pdy + ((n * d.P + p) * d.Q + q) * d.C;
          for (std::int64_t h = win.h0; h < win.h1; ++h) {
            for (std::int64_t w = win.w0; w < win.w1; ++w) {
              A* out = acc + (h * d.W + w) * d.C;
              for (std::int64_t c = 0; c < d.C; ++c) out[c] += load(g[c]) * inv;
            }
          }
        }
      }
    });
  });
}

void CpuBackend::global_avg_pool_forward(CBuf x, Buf y, std::int64_t n, std::int64_t pixels,
                                         std::int64_t channels) {
  require_same(x.dtype, y.dtype, "global_avg_pool_forward");
  dispatch_float(y.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const A inv = A(1) / static_cast<A>(pixels);
#pragma omp parallel if (n * pixels * channels >= kParallelMin)
    {
      std::vector<A> sum(static_cast<std::size_t>(channels));
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) {
        std::fill(sum.begin(), sum.end(), A(0));
        for (std::int64_t p = 0; p < pixels; ++p) {
          const T* in = px + (i * pixels + p) * channels;
          for (std::int64_t c = 0; c < channels; ++c)
            sum[static_cast<std::size_t>(c)] += load(in[c]);
        }
        for (std::int64_t c = 0; c < channels; ++c) {
          py[i * channels + c] = store<T>(sum[static_cast<std::size_t>(c)] * inv);
        }
      }
    }
  });
}

void CpuBackend::global_avg_pool_backward(CBuf dy, Buf dx, std::int64_t n, std::int64_t pixels,
                                          std::int64_t channels, bool accumulate) {
  require_same(dy.dtype, dx.dtype, "global_avg_pool_backward");
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* pdy = as<T>(dy.ptr);
    T* pdx = as<T>(dx.ptr);
    const A inv = A(1) / static_cast<A>(pixels);
    const std::int64_t rows = n * pixels;
#pragma omp parallel for schedule(static) if (rows * channels >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* g = pdy + (r / pixels) * channels;
      T* out = pdx + r * channels;
      for (std::int64_t c = 0; c < channels; ++c) {
        const A v = load(g[c]) * inv;
        out[c] = store<T>(accumulate ? load(out[c]) + v : v);
      }
    }
  });
}

}  // namespace mixtrain::cpu
