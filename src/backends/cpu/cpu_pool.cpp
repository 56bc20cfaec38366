// Pooling on the CPU over channels-last tensors. Forward runs over output pixels with channel rows
// converted in bulk; backward scatters each output's gradient into a per-image fp32 (double for
// F64) accumulator on the thread that owns the image, then rounds once into dx. Windows are
// clipped to the input: padding never takes part (max ignores it, average divides by the pixels
// actually covered: count_include_pad=false).
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "backends/cpu/cpu_rows.hpp"

namespace mixtrain::cpu {

namespace {

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

// Calls f(n, acc, tmp) for each image n with a zeroed [H, W, C] accumulator and room for four
// channel rows (tmp), both owned by the calling thread, then stores acc into dx (adding to it
// with accumulate).
template <typename T, typename A, typename F>
void scatter_images(const PoolDesc& d, T* dx, bool accumulate, F&& f) {
  const std::int64_t image = d.H * d.W * d.C;
#pragma omp parallel if (d.N * image >= kParallelMin)
  {
    std::vector<A> acc(static_cast<std::size_t>(image));
    std::vector<A> tmp(static_cast<std::size_t>(4 * d.C));
    std::vector<A> old(accumulate ? static_cast<std::size_t>(image) : 0);
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < d.N; ++n) {
      std::fill(acc.begin(), acc.end(), A(0));
      f(n, acc.data(), tmp.data());
      row_store(acc.data(), dx + n * image, image, accumulate, old.data());
    }
  }
}

// Calls f(o, sum, row) for every output pixel o, with two [C] rows owned by the calling thread.
template <typename A, typename F>
void for_outputs(const PoolDesc& d, F&& f) {
  const std::int64_t outputs = d.N * d.P * d.Q;
#pragma omp parallel if (outputs * d.C >= kParallelMin)
  {
    std::vector<A> a(static_cast<std::size_t>(d.C)), b(a.size());
#pragma omp for schedule(static)
    for (std::int64_t o = 0; o < outputs; ++o) f(o, a.data(), b.data());
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
    for_outputs<A>(d, [&](std::int64_t o, A* best, A* row) {
      const std::int64_t q = o % d.Q, p = (o / d.Q) % d.P, n = o / (d.P * d.Q);
      const Window win(d, p, q);
      std::fill_n(best, d.C, -std::numeric_limits<A>::infinity());
      for (std::int64_t h = win.h0; h < win.h1; ++h) {
        for (std::int64_t w = win.w0; w < win.w1; ++w) {
          row_in(px + ((n * d.H + h) * d.W + w) * d.C, row, d.C);
          for (std::int64_t c = 0; c < d.C; ++c) {
            const A v = row[c];
            if (v > best[c] || std::isnan(v)) best[c] = std::isnan(best[c]) ? best[c] : v;
          }
        }
      }
      row_out(best, py + o * d.C, d.C);  // a nan in the window propagates
    });
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
    scatter_images<T, A>(d, as<T>(dx.ptr), accumulate, [&](std::int64_t n, A* acc, A* tmp) {
      A* target = tmp;             // y of the window
      A* grad = tmp + d.C;         // dy of the window
      A* row = tmp + 2 * d.C;      // x of one input pixel
      A* pending = tmp + 3 * d.C;  // 1 while the window's maximum is still to be found
      const T* image = px + n * d.H * d.W * d.C;
      for (std::int64_t p = 0; p < d.P; ++p) {
        for (std::int64_t q = 0; q < d.Q; ++q) {
          const Window win(d, p, q);
          const std::int64_t o = ((n * d.P + p) * d.Q + q) * d.C;
          row_in(py + o, target, d.C);
          row_in(pdy + o, grad, d.C);
          std::fill_n(pending, d.C, A(1));
          // The first input of the window (row-major) that holds the maximum takes dy.
          for (std::int64_t h = win.h0; h < win.h1; ++h) {
            for (std::int64_t w = win.w0; w < win.w1; ++w) {
              const std::int64_t i = (h * d.W + w) * d.C;
              row_in(image + i, row, d.C);
              for (std::int64_t c = 0; c < d.C; ++c) {
                const bool hit =
                    row[c] == target[c] || (std::isnan(target[c]) && std::isnan(row[c]));
                if (hit && pending[c] != A(0)) {
                  acc[i + c] += grad[c];
                  pending[c] = A(0);
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
    for_outputs<A>(d, [&](std::int64_t o, A* sum, A* row) {
      const std::int64_t q = o % d.Q, p = (o / d.Q) % d.P, n = o / (d.P * d.Q);
      const Window win(d, p, q);
      std::fill_n(sum, d.C, A(0));
      for (std::int64_t h = win.h0; h < win.h1; ++h) {
        for (std::int64_t w = win.w0; w < win.w1; ++w) {
          row_in(px + ((n * d.H + h) * d.W + w) * d.C, row, d.C);
          for (std::int64_t c = 0; c < d.C; ++c) sum[c] += row[c];
        }
      }
      const A inv = A(1) / static_cast<A>(win.count());
      for (std::int64_t c = 0; c < d.C; ++c) sum[c] *= inv;
      row_out(sum, py + o * d.C, d.C);
    });
  });
}

void CpuBackend::avg_pool2d_backward(const PoolDesc& d, CBuf dy, Buf dx, bool accumulate) {
  require_same(dy.dtype, dx.dtype, "avg_pool2d_backward");
  dispatch_float(dx.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* pdy = as<T>(dy.ptr);
    scatter_images<T, A>(d, as<T>(dx.ptr), accumulate, [&](std::int64_t n, A* acc, A* g) {
      for (std::int64_t p = 0; p < d.P; ++p) {
        for (std::int64_t q = 0; q < d.Q; ++q) {
          const Window win(d, p, q);
          const A inv = A(1) / static_cast<A>(win.count());
          row_in(pdy + ((n * d.P + p) * d.Q + q) * d.C, g, d.C);
          for (std::int64_t c = 0; c < d.C; ++c) g[c] *= inv;
          for (std::int64_t h = win.h0; h < win.h1; ++h) {
            for (std::int64_t w = win.w0; w < win.w1; ++w) {
              A* out = acc + (h * d.W + w) * d.C;
              for (std::int64_t c = 0; c < d.C; ++c) out[c] += g[c];
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
      std::vector<A> sum(static_cast<std::size_t>(channels)), row(sum.size());
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) {
        std::fill(sum.begin(), sum.end(), A(0));
        for (std::int64_t p = 0; p < pixels; ++p) {
          row_in(px + (i * pixels + p) * channels, row.data(), channels);
          for (std::size_t c = 0; c < row.size(); ++c) sum[c] += row[c];
        }
        for (A& v : sum) v *= inv;
        row_out(sum.data(), py + i * channels, channels);
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
#pragma omp parallel if (rows * channels >= kParallelMin)
    {
      std::vector<A> g(static_cast<std::size_t>(channels)), v(g.size()), tmp(g.size());
#pragma omp for schedule(static)
      for (std::int64_t r = 0; r < rows; ++r) {
        row_in(pdy + (r / pixels) * channels, g.data(), channels);
        for (std::size_t c = 0; c < g.size(); ++c) v[c] = g[c] * inv;
        row_store(v.data(), pdx + r * channels, channels, accumulate, tmp.data());
      }
    }
  });
}

}  // namespace mixtrain::cpu
