// Batch normalisation on the CPU over [rows, channels] (channels-last: a row is a pixel). Sums
// run in double over fixed blocks of rows combined in a fixed order, so the statistics are exact
// to fp32 and bit-identical for any thread count; the element-wise passes compute in acc_t<T>.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_dispatch.hpp"

namespace mixtrain::cpu {

namespace {

constexpr std::int64_t kRowBlock = 256;

// [channels] of any float dtype as A.
template <typename A>
std::vector<A> read_channels(CBuf b, std::int64_t channels) {
  std::vector<A> out(static_cast<std::size_t>(channels));
  dispatch_float(b.dtype, [&](auto t) {
    using T = decltype(t);
    const T* p = as<T>(b.ptr);
    for (std::int64_t c = 0; c < channels; ++c) {
      out[static_cast<std::size_t>(c)] = static_cast<A>(load(p[c]));
    }
  });
  return out;
}

// Writes [channels] doubles into a statistics or gradient buffer: F32 (rounded) or F64.
void write_channels(Buf b, const std::vector<double>& v) {
  if (b.dtype == DType::F32) {
    float* p = as<float>(b.ptr);
    for (std::size_t c = 0; c < v.size(); ++c) p[c] = static_cast<float>(v[c]);
  } else if (b.dtype == DType::F64) {
    double* p = as<double>(b.ptr);
    for (std::size_t c = 0; c < v.size(); ++c) p[c] = v[c];
  } else {
    throw Error("internal: batch-norm statistics and gradients are f32 or f64, not " +
                std::string(dtype_name(b.dtype)));
  }
}

// Per-channel sums over rows of f(row, channel), in double: block partials, then the blocks in
// order.
template <typename F>
std::vector<double> channel_sums(std::int64_t rows, std::int64_t channels, F&& f) {
  const std::int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks * channels), 0.0);
#pragma omp parallel for schedule(static) if (rows * channels >= kParallelMin)
  for (std::int64_t b = 0; b < blocks; ++b) {
    double* acc = partial.data() + b * channels;
    const std::int64_t end = std::min(rows, (b + 1) * kRowBlock);
    for (std::int64_t r = b * kRowBlock; r < end; ++r) {
      for (std::int64_t c = 0; c < channels; ++c) acc[c] += f(r, c);
    }
  }
  std::vector<double> sum(static_cast<std::size_t>(channels), 0.0);
  for (std::int64_t b = 0; b < blocks; ++b) {
    for (std::int64_t c = 0; c < channels; ++c) {
      sum[static_cast<std::size_t>(c)] += partial[static_cast<std::size_t>(b * channels + c)];
    }
  }
  return sum;
}

void require_same(DType a, DType b, const char* op) {
  if (a != b) {
    throw Error(std::string("internal: ") + op + " needs matching dtypes, got " +
                std::string(dtype_name(a)) + " and " + std::string(dtype_name(b)));
  }
}

}  // namespace

void CpuBackend::batch_norm_forward_training(CBuf x, CBuf gamma, CBuf beta, Buf y, Buf batch_mean,
                                             Buf batch_invstd, std::int64_t rows,
                                             std::int64_t channels, float eps) {
  require_same(x.dtype, y.dtype, "batch_norm_forward_training");
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const auto inv_rows = 1.0 / static_cast<double>(rows);
    std::vector<double> mean = channel_sums(rows, channels, [&](std::int64_t r, std::int64_t c) {
      return double(load(px[r * channels + c]));
    });
    for (double& m : mean) m *= inv_rows;
    std::vector<double> invstd = channel_sums(rows, channels, [&](std::int64_t r, std::int64_t c) {
      const double v = double(load(px[r * channels + c])) - mean[static_cast<std::size_t>(c)];
      return v * v;
    });
    for (double& v : invstd) v = 1.0 / std::sqrt(v * inv_rows + static_cast<double>(eps));
    write_channels(batch_mean, mean);
    write_channels(batch_invstd, invstd);
    // Normalise with the statistics as stored (what backward reads).
    const std::vector<A> m = read_channels<A>(batch_mean, channels);
    std::vector<A> scale = read_channels<A>(batch_invstd, channels);
    const std::vector<A> g = read_channels<A>(gamma, channels);
    const std::vector<A> b = read_channels<A>(beta, channels);
    for (std::size_t c = 0; c < scale.size(); ++c) scale[c] *= g[c];
#pragma omp parallel for schedule(static) if (rows * channels >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* in = px + r * channels;
      T* out = py + r * channels;
      for (std::int64_t c = 0; c < channels; ++c) {
        const auto k = static_cast<std::size_t>(c);
        out[c] = store<T>((load(in[c]) - m[k]) * scale[k] + b[k]);
      }
    }
  });
}

void CpuBackend::batch_norm_forward_inference(CBuf x, CBuf gamma, CBuf beta, CBuf running_mean,
                                              CBuf running_var, Buf y, std::int64_t rows,
                                              std::int64_t channels, float eps) {
  require_same(x.dtype, y.dtype, "batch_norm_forward_inference");
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const std::vector<A> m = read_channels<A>(running_mean, channels);
    const std::vector<A> v = read_channels<A>(running_var, channels);
    const std::vector<A> g = read_channels<A>(gamma, channels);
    const std::vector<A> b = read_channels<A>(beta, channels);
    std::vector<A> scale(static_cast<std::size_t>(channels));
    for (std::size_t c = 0; c < scale.size(); ++c) {
      scale[c] = g[c] / std::sqrt(v[c] + static_cast<A>(eps));
    }
#pragma omp parallel for schedule(static) if (rows * channels >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* in = px + r * channels;
      T* out = py + r * channels;
      for (std::int64_t c = 0; c < channels; ++c) {
        const auto k = static_cast<std::size_t>(c);
        out[c] = store<T>((load(in[c]) - m[k]) * scale[k] + b[k]);
      }
    }
  });
}

void CpuBackend::batch_norm_backward(CBuf x, CBuf dy, CBuf gamma, CBuf batch_mean,
                                     CBuf batch_invstd, Buf dx, Buf dgamma, Buf dbeta,
                                     std::int64_t rows, std::int64_t channels, bool accumulate) {
  require_same(x.dtype, dy.dtype, "batch_norm_backward");
  if (dx) require_same(x.dtype, dx.dtype, "batch_norm_backward");
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    const T* pdy = as<T>(dy.ptr);
    T* pdx = as<T>(dx.ptr);
    const std::vector<double> m = read_channels<double>(batch_mean, channels);
    const std::vector<double> inv = read_channels<double>(batch_invstd, channels);
    const std::vector<double> sum_dy = channel_sums(
        rows, channels,
        [&](std::int64_t r, std::int64_t c) { return double(load(pdy[r * channels + c])); });
    const std::vector<double> sum_dy_xhat =
        channel_sums(rows, channels, [&](std::int64_t r, std::int64_t c) {
          const auto k = static_cast<std::size_t>(c);
          const std::int64_t i = r * channels + c;
          return double(load(pdy[i])) * (double(load(px[i])) - m[k]) * inv[k];
        });
    write_channels(dbeta, sum_dy);
    write_channels(dgamma, sum_dy_xhat);
    if (!dx) return;
    // dx = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat))
    const std::vector<A> g = read_channels<A>(gamma, channels);
    std::vector<A> mean_a(g.size()), inv_a(g.size()), scale(g.size()), mdy(g.size()),
        mdyx(g.size());
    const double inv_rows = 1.0 / static_cast<double>(rows);
    for (std::size_t c = 0; c < g.size(); ++c) {
      mean_a[c] = static_cast<A>(m[c]);
      inv_a[c] = static_cast<A>(inv[c]);
      scale[c] = g[c] * inv_a[c];
      mdy[c] = static_cast<A>(sum_dy[c] * inv_rows);
      mdyx[c] = static_cast<A>(sum_dy_xhat[c] * inv_rows);
    }
#pragma omp parallel for schedule(static) if (rows * channels >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      for (std::int64_t c = 0; c < channels; ++c) {
        const auto k = static_cast<std::size_t>(c);
        const std::int64_t i = r * channels + c;
        const A xhat = (load(px[i]) - mean_a[k]) * inv_a[k];
        const A v = scale[k] * (load(pdy[i]) - mdy[k] - xhat * mdyx[k]);
        pdx[i] = store<T>(accumulate ? load(pdx[i]) + v : v);
      }
    }
  });
}

void CpuBackend::batch_norm_update_running(CBuf batch_mean, CBuf batch_invstd, Buf running_mean,
                                           Buf running_var, std::int64_t channels, float momentum,
                                           std::int64_t count, float eps,
                                           const StepControl* control) {
  if (control != nullptr && control->found_inf != 0.0f) return;  // a skipped step
  const std::vector<double> bm = read_channels<double>(batch_mean, channels);
  const std::vector<double> bi = read_channels<double>(batch_invstd, channels);
  std::vector<double> rm = read_channels<double>(running_mean, channels);
  std::vector<double> rv = read_channels<double>(running_var, channels);
  const double mom = momentum;
  const double unbias =
      count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1) : 1.0;
  for (std::size_t c = 0; c < rm.size(); ++c) {
    const double var = std::max(0.0, 1.0 / (bi[c] * bi[c]) - static_cast<double>(eps));
    rm[c] = (1.0 - mom) * rm[c] + mom * bm[c];
    rv[c] = (1.0 - mom) * rv[c] + mom * var * unbias;
  }
  write_channels(running_mean, rm);
  write_channels(running_var, rv);
}

}  // namespace mixtrain::cpu
