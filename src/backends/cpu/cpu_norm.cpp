// Batch normalisation on the CPU over [rows, channels] (channels-last: a row is a pixel). Sums
// run in double over fixed blocks of rows combined in a fixed order, so the statistics are exact
// to fp32 and bit-identical for any thread count; the element-wise passes compute in acc_t<T>.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "backends/cpu/cpu_rows.hpp"
#include "ops/activation_math.hpp"

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

// Per-channel sums in double over the rows: K arrays of [channels]. f(r, acc, tmp) adds row r's
// terms into acc ([K][channels], the partials of the row's block); tmp holds 3 * channels values
// of A for the rows it loads. Blocks of rows are summed in parallel, then in order.
template <typename A, int K, typename F>
std::vector<double> channel_sums(std::int64_t rows, std::int64_t channels, F&& f) {
  const std::int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  const std::int64_t width = K * channels;
  std::vector<double> partial(static_cast<std::size_t>(blocks * width), 0.0);
#pragma omp parallel if (rows * channels >= kParallelMin)
  {
    std::vector<A> tmp(static_cast<std::size_t>(3 * channels));
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      double* acc = partial.data() + b * width;
      const std::int64_t end = std::min(rows, (b + 1) * kRowBlock);
      for (std::int64_t r = b * kRowBlock; r < end; ++r) f(r, acc, tmp.data());
    }
  }
  std::vector<double> sum(static_cast<std::size_t>(width), 0.0);
  for (std::int64_t b = 0; b < blocks; ++b) {
    for (std::int64_t i = 0; i < width; ++i) {
      sum[static_cast<std::size_t>(i)] += partial[static_cast<std::size_t>(b * width + i)];
    }
  }
  return sum;
}

// The fused ReLU, as the activation computes it (NaN propagates: relu_passes).
template <typename A>
void relu_row(A* v, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) v[i] = relu_passes(v[i]) ? v[i] : A(0);
}

// Runs f(r, tmp) for every row in parallel; tmp holds 3 * channels values of A per thread.
template <typename A, typename F>
void for_rows(std::int64_t rows, std::int64_t channels, F&& f) {
#pragma omp parallel if (rows * channels >= kParallelMin)
  {
    std::vector<A> tmp(static_cast<std::size_t>(3 * channels));
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) f(r, tmp.data());
  }
}

// y = (x - m) * scale + b per channel (then ReLU when fused), the training and the inference
// forward alike.
template <typename T, typename A>
void normalize_rows(const T* x, T* y, const std::vector<A>& m, const std::vector<A>& scale,
                    const std::vector<A>& b, std::int64_t rows, std::int64_t channels, bool relu) {
  for_rows<A>(rows, channels, [&](std::int64_t r, A* tmp) {
    row_in(x + r * channels, tmp, channels);
    for (std::int64_t c = 0; c < channels; ++c) {
      const auto k = static_cast<std::size_t>(c);
      tmp[c] = (tmp[c] - m[k]) * scale[k] + b[k];
    }
    if (relu) relu_row(tmp, channels);
    row_out(tmp, y + r * channels, channels);
  });
}

}  // namespace

void CpuBackend::batch_norm_forward_training(CBuf x, CBuf gamma, CBuf beta, Buf y, Buf batch_mean,
                                             Buf batch_invstd, std::int64_t rows,
                                             std::int64_t channels, float eps, bool relu) {
  require_same(x.dtype, y.dtype, "batch_norm_forward_training");
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    T* py = as<T>(y.ptr);
    const auto inv_rows = 1.0 / static_cast<double>(rows);
    std::vector<double> mean =
        channel_sums<A, 1>(rows, channels, [&](std::int64_t r, double* acc, A* tmp) {
          row_in(px + r * channels, tmp, channels);
          for (std::int64_t c = 0; c < channels; ++c) acc[c] += tmp[c];
        });
    for (double& m : mean) m *= inv_rows;
    std::vector<double> invstd =
        channel_sums<A, 1>(rows, channels, [&](std::int64_t r, double* acc, A* tmp) {
          row_in(px + r * channels, tmp, channels);
          for (std::int64_t c = 0; c < channels; ++c) {
            const double v = double(tmp[c]) - mean[static_cast<std::size_t>(c)];
            acc[c] += v * v;
          }
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
    normalize_rows(px, py, m, scale, b, rows, channels, relu);
  });
}

void CpuBackend::batch_norm_forward_inference(CBuf x, CBuf gamma, CBuf beta, CBuf running_mean,
                                              CBuf running_var, Buf y, std::int64_t rows,
                                              std::int64_t channels, float eps, bool relu) {
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
    normalize_rows(px, py, m, scale, b, rows, channels, relu);
  });
}

void CpuBackend::batch_norm_backward(CBuf x, CBuf dy, CBuf gamma, CBuf batch_mean,
                                     CBuf batch_invstd, Buf dx, Buf dgamma, Buf dbeta,
                                     std::int64_t rows, std::int64_t channels, bool accumulate,
                                     CBuf relu_output) {
  require_same(x.dtype, dy.dtype, "batch_norm_backward");
  if (dx) require_same(x.dtype, dx.dtype, "batch_norm_backward");
  if (relu_output) require_same(x.dtype, relu_output.dtype, "batch_norm_backward");
  dispatch_float(x.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const T* px = as<T>(x.ptr);
    const T* pdy = as<T>(dy.ptr);
    const T* pyr = as<T>(relu_output.ptr);
    T* pdx = as<T>(dx.ptr);
    const std::vector<double> m = read_channels<double>(batch_mean, channels);
    // Row r as A: x in tmp[0, channels), dy in tmp[channels, 2 channels) (masked by the fused
    // ReLU's output, read into tmp[2 channels, 3 channels)).
    const auto load_row = [&](std::int64_t r, A* tmp) {
      A* gr = tmp + channels;
      A* mask = tmp + 2 * channels;
      row_in(px + r * channels, tmp, channels);
      row_in(pdy + r * channels, gr, channels);
      if (pyr == nullptr) return;
      row_in(pyr + r * channels, mask, channels);
      for (std::int64_t c = 0; c < channels; ++c) gr[c] *= relu_passes(mask[c]) ? A(1) : A(0);
    };
    const std::vector<double> inv = read_channels<double>(batch_invstd, channels);
    // [sum dy | sum dy * xhat], in one pass.
    const std::vector<double> sums =
        channel_sums<A, 2>(rows, channels, [&](std::int64_t r, double* acc, A* tmp) {
          const A* xr = tmp;
          const A* gr = tmp + channels;
          load_row(r, tmp);
          for (std::int64_t c = 0; c < channels; ++c) {
            const auto k = static_cast<std::size_t>(c);
            const double g = gr[c];
            acc[c] += g;
            acc[channels + c] += g * (double(xr[c]) - m[k]) * inv[k];
          }
        });
    const std::vector<double> sum_dy(sums.begin(), sums.begin() + channels);
    const std::vector<double> sum_dy_xhat(sums.begin() + channels, sums.end());
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
    for_rows<A>(rows, channels, [&](std::int64_t r, A* tmp) {
      const A* xr = tmp;
      A* gr = tmp + channels;
      load_row(r, tmp);
      for (std::int64_t c = 0; c < channels; ++c) {
        const auto k = static_cast<std::size_t>(c);
        const A xhat = (xr[c] - mean_a[k]) * inv_a[k];
        gr[c] = scale[k] * (gr[c] - mdy[k] - xhat * mdyx[k]);
      }
      row_store(gr, pdx + r * channels, channels, accumulate, tmp + 2 * channels);
    });
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
