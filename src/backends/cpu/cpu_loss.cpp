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
  const float gscale = scale / denom;
  std::vector<double> row_loss(static_cast<std::size_t>(rows));

  dispatch_float(d.pred.dtype, [&](auto t) {
    using T = decltype(t);
    const T* pred = as<T>(d.pred.ptr);
    T* grad = d.dpred ? as<T>(d.dpred.ptr) : nullptr;
    const bool logits = d.kind == LossKind::SparseCrossEntropy || d.kind == LossKind::CrossEntropy;
#pragma omp parallel for schedule(static) if (rows * cols >= kParallelMin)
    for (std::int64_t r = 0; r < rows; ++r) {
      const T* x = pred + r * cols;
      double acc = 0.0;
      if (logits) {
        float mx = -INFINITY;
        for (std::int64_t c = 0; c < cols; ++c) mx = std::max(mx, load(x[c]));
        double sum = 0.0;
        for (std::int64_t c = 0; c < cols; ++c)
          sum += std::exp(static_cast<double>(load(x[c]) - mx));
        const float lse = mx + static_cast<float>(std::log(sum));
        const float* tgt = d.targets != nullptr ? d.targets + r * cols : nullptr;
        const std::int32_t label = d.labels != nullptr ? d.labels[r] : -1;
        float tsum = 0.0f;
        for (std::int64_t c = 0; c < cols; ++c) {
          const float tc = tgt != nullptr ? tgt[c] : (c == label ? 1.0f : 0.0f);
          tsum += tc;
          if (tc != 0.0f) acc += static_cast<double>(tc) * (lse - load(x[c]));
        }
        if (grad != nullptr) {
          for (std::int64_t c = 0; c < cols; ++c) {
            const float tc = tgt != nullptr ? tgt[c] : (c == label ? 1.0f : 0.0f);
            const float p = std::exp(load(x[c]) - lse);
            grad[r * cols + c] = store<T>((p * tsum - tc) * gscale);
          }
        }
      } else {
        const float* tgt = d.targets + r * cols;
        for (std::int64_t c = 0; c < cols; ++c) {
          const float p = load(x[c]);
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
  *d.loss = static_cast<float>(total / denom);
}

}  // namespace mixtrain::cpu
