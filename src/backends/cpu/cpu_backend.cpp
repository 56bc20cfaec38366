#include "backends/cpu/cpu_backend.hpp"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "backends/cpu/cpu_grad_ranges.hpp"
#include "backends/cpu/cpu_optimizer.hpp"
#include "train/scaler_math.hpp"

namespace mixtrain {

namespace cpu {

namespace {
// Allocations carry their size in a 64-byte header so free() can keep the in-use count.
constexpr std::size_t kHeader = 64;
}  // namespace

void* CpuBackend::alloc(std::size_t bytes) {
  void* base = std::aligned_alloc(64, kHeader + ((bytes + 63) / 64) * 64);
  if (base == nullptr) throw std::bad_alloc();
  *static_cast<std::size_t*>(base) = bytes;
  in_use_ += bytes;
  if (in_use_ > peak_) peak_ = in_use_;
  return static_cast<char*>(base) + kHeader;
}

void CpuBackend::free(void* ptr) {
  if (ptr == nullptr) return;
  void* base = static_cast<char*>(ptr) - kHeader;
  in_use_ -= *static_cast<std::size_t*>(base);
  std::free(base);
}

void CpuBackend::upload(void* dst, const void* host_src, std::size_t bytes) {
  std::memcpy(dst, host_src, bytes);
}

void CpuBackend::download(void* host_dst, const void* src, std::size_t bytes) {
  std::memcpy(host_dst, src, bytes);
}

void CpuBackend::copy(void* dst, const void* src, std::size_t bytes) {
  std::memcpy(dst, src, bytes);
}

void CpuBackend::run_step(const std::string& /*key*/, const std::function<void()>& body) {
  body();
}

std::vector<float>& CpuBackend::scratch(int slot, std::size_t count) {
  auto& v = scratch_[slot];
  if (v.size() < count) v.resize(count);
  return v;
}

namespace {

// One block of the gradient check, outside any OpenMP parallel region. The simd reduction lets
// the compiler keep one partial sum per vector lane (a fixed order for a given build); g - g is 0
// for finite g and nan for inf/nan, so summing it flags them.
void check_block(const float* __restrict grad, std::int64_t n, float inv, double& total,
                 bool& bad) {
  double sum = 0.0;  // double like the CUDA backend's partial sums
  float nonfinite = 0.0f;
#pragma omp simd reduction(+ : sum, nonfinite)
  for (std::int64_t i = 0; i < n; ++i) {
    const float g = grad[i] * inv;
    sum += static_cast<double>(g) * g;
    nonfinite += g - g;
  }
  total = sum;
  bad = nonfinite != 0.0f;  // nan != 0
}

}  // namespace

void CpuBackend::check_gradients(const GradRanges& grad, std::int64_t count, StepControl* control) {
  // Fixed-size blocks summed in a fixed order: the norm is bit-identical for any thread count.
  constexpr std::int64_t kBlock = 4096;
  const std::int64_t blocks = (count + kBlock - 1) / kBlock;
  // Grow-only: one double per block (nan for a block that holds inf/nan), kept between steps.
  if (check_partials_.size() < static_cast<std::size_t>(blocks)) {
    check_partials_.resize(static_cast<std::size_t>(blocks));
  }
  double* const partial = check_partials_.data();
  const float inv = control->inv_scale;
#pragma omp parallel if (count >= 65536)
  {
    float tmp[kBlock];  // a block's low-precision gradients, widened
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < blocks; ++b) {
      double block_sum = 0.0;
      bool block_bad = false;
      for_each_grad_piece(grad, b * kBlock, std::min(count, (b + 1) * kBlock), tmp,
                          [&](std::int64_t begin, std::int64_t end, const float* g) {
                            double sum = 0.0;
                            bool piece_bad = false;
                            check_block(g, end - begin, inv, sum, piece_bad);
                            block_sum += sum;
                            block_bad = block_bad || piece_bad;
                          });
      partial[b] = block_bad ? NAN : block_sum;
    }
  }
  double total = 0.0;
  bool any_bad = false;
  for (std::int64_t b = 0; b < blocks; ++b) {
    any_bad = any_bad || std::isnan(partial[b]);
    total += partial[b];
  }
  control->found_inf = any_bad ? 1.0f : 0.0f;
  control->grad_norm_sq = any_bad ? INFINITY : static_cast<float>(total);
}

void CpuBackend::optimizer_step(const OptimizerDesc& desc) {
  cpu_optimizer_step(desc);
}

void CpuBackend::finish_step(StepControl* control, const ScalerParams& params,
                             const OptimizerHyper& hyper, StepRecord* history) {
  finish_step_math(*control, params, hyper, history);
}

}  // namespace cpu

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<cpu::CpuBackend>();
}

}  // namespace mixtrain
