#include <cmath>
#include <vector>

#include "backends/cpu/cpu_backend.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "ops/loss_math.hpp"

namespace mixtrain::cpu {

void CpuBackend::loss(const LossDesc& d) {
  const std::int64_t rows = d.rows, cols = d.cols;
  const float scale = d.control != nullptr ? d.control->loss_scale : 1.0f;
  const float denom =
      loss_sums_over_cols(d.kind) ? static_cast<float>(rows) : static_cast<float>(rows * cols);
  std::vector<double> row_loss(static_cast<std::size_t>(rows));

  // fp32 arithmetic for the training dtypes, double throughout for F64 (acc_t).
  dispatch_float(d.pred.dtype, [&](auto t) {
    using T = decltype(t);
    using A = acc_t<T>;
    const A gscale = static_cast<A>(scale) / static_cast<A>(denom);
    const T* pred = as<T>(d.pred.ptr);
    T* grad = d.dpred ? as<T>(d.dpred.ptr) : nullptr;
    const bool logits = d.kind == LossKind::SparseCrossEntropy || d.kind == LossKind::CrossEntropy;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* x = pred + r * cols;
      double acc = 0.0;
      if (logits) {
        A mx = -INFINITY;
        for (std::int64_t c = 0; c < cols; ++c) mx = std::max(mx, load(x[c]));
        double sum = 0.0;
        for (std::int64_t c = 0; c < cols; ++c)
          sum += std::exp(static_cast<double>(load(x[c]) - mx));
        const A lse = mx + static_cast<A>(std::log(sum));
        const float* tgt = d.targets != nullptr ? d.targets + r * cols : nullptr;
        const std::int32_t label = d.labels != nullptr ? d.labels[r] : -1;
        A tsum = 0;
        for (std::int64_t c = 0; c < cols; ++c) {
          const A tc = tgt != nullptr ? tgt[c] : (c == label ? A(1) : A(0));
          tsum += tc;
          if (tc != A(0)) acc += static_cast<double>(tc) * (lse - load(x[c]));
        }
        if (grad != nullptr) {
          for (std::int64_t c = 0; c < cols; ++c) {
            const A tc = tgt != nullptr ? tgt[c] : (c == label ? A(1) : A(0));
            const A p = std::exp(load(x[c]) - lse);
            grad[r * cols + c] = store<T>((p * tsum - tc) * gscale);
          }
        }
      } else {
        const float* tgt = d.targets + r * cols;
        for (std::int64_t c = 0; c < cols; ++c) {
          const A p = load(x[c]);
          acc += elementwise_loss(d.kind, d.huber_delta, p, tgt[c]);
          if (grad != nullptr) {
            grad[r * cols + c] =
                store<T>(elementwise_loss_grad(d.kind, d.huber_delta, p, tgt[c]) * gscale);
          }
        }
      }
      row_loss[static_cast<std::size_t>(r)] = acc;
    }
  });
  double total = 0.0;
  for (double v : row_loss) total += v;
  last_loss_ = total / denom;
  *d.loss = static_cast<float>(last_loss_);
}

}  // namespace mixtrain::cpu
