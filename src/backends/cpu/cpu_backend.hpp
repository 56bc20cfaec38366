// The CPU backend: the portable default and the numerical reference. GEMMs go through OpenBLAS
// (fp16/bf16 operands are widened to fp32 first, exactly as tensor cores accumulate in fp32), cut
// into pieces that each run single-threaded (cpu_blas.hpp); every other op is an OpenMP loop
// templated on the storage type. Results are bit-identical for any thread count: every parallel
// loop splits its work by the problem size only, and every sum over pieces adds them in a fixed
// order.
#pragma once

#include <memory>
#include <type_traits>
#include <vector>

#include "ops/backend.hpp"

namespace mixtrain::cpu {

class CpuBackend final : public Backend {
 public:
  std::string name() const override { return "cpu"; }

  void* alloc(std::size_t bytes) override;
  void free(void* ptr) override;
  void upload(void* dst, const void* host_src, std::size_t bytes) override;
  void download(void* host_dst, const void* src, std::size_t bytes) override;
  void synchronize() override {}
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void* alloc_host(std::size_t bytes) override { return alloc(bytes); }
  void free_host(void* ptr) override { free(ptr); }
  std::size_t memory_in_use() const override { return in_use_; }
  std::size_t peak_memory() const override { return peak_; }

  void run_step(const std::string& key, const std::function<void()>& body) override;
  void reset_steps() override {}

  void fill(Buf x, std::int64_t n, float value) override;
  void convert(CBuf src, Buf dst, std::int64_t n, bool accumulate) override;
  void add(CBuf a, CBuf b, Buf y, std::int64_t n) override;
  void activation_forward(Activation act, float alpha, CBuf x, Buf y, std::int64_t n) override;
  void activation_backward(Activation act, float alpha, CBuf x, CBuf y, CBuf dy, Buf dx,
                           std::int64_t n, bool accumulate) override;
  void dropout_forward(float rate, std::uint64_t salt, CBuf x, Buf y, std::int64_t n,
                       const StepControl* control) override;
  void dropout_backward(float rate, std::uint64_t salt, CBuf dy, Buf dx, std::int64_t n,
                        const StepControl* control, bool accumulate) override;
  void softmax_forward(CBuf x, Buf y, std::int64_t rows, std::int64_t cols) override;
  void softmax_backward(CBuf y, CBuf dy, Buf dx, std::int64_t rows, std::int64_t cols,
                        bool accumulate) override;

  void gemm(const GemmDesc& desc) override;
  void bias_grad(CBuf dy, Buf db, std::int64_t rows, std::int64_t cols, bool accumulate) override;

  // cpu_conv.cpp: im2col + OpenBLAS GEMM in chunks of images whose column buffer and fp32
  // staging fit in conv_chunk_bytes (at least one image per chunk; 64 MiB by default, tests
  // lower it to exercise the chunking).
  void set_conv_chunk_bytes(std::size_t bytes) { conv_chunk_bytes_ = bytes; }
  void conv2d_forward(const ConvDesc& desc, CBuf x, CBuf w, CBuf bias, Buf y) override;
  void conv2d_backward_data(const ConvDesc& desc, CBuf dy, CBuf w, Buf dx,
                            bool accumulate) override;
  void conv2d_backward_filter(const ConvDesc& desc, CBuf x, CBuf dy, Buf dw, Buf db) override;

  // cpu_norm.cpp
  void batch_norm_forward_training(CBuf x, CBuf gamma, CBuf beta, Buf y, Buf batch_mean,
                                   Buf batch_invstd, std::int64_t rows, std::int64_t channels,
                                   float eps, bool relu) override;
  void batch_norm_forward_inference(CBuf x, CBuf gamma, CBuf beta, CBuf running_mean,
                                    CBuf running_var, Buf y, std::int64_t rows,
                                    std::int64_t channels, float eps, bool relu) override;
  void batch_norm_backward(CBuf x, CBuf dy, CBuf gamma, CBuf batch_mean, CBuf batch_invstd, Buf dx,
                           Buf dgamma, Buf dbeta, std::int64_t rows, std::int64_t channels,
                           bool accumulate, CBuf relu_output) override;
  void batch_norm_update_running(CBuf batch_mean, CBuf batch_invstd, Buf running_mean,
                                 Buf running_var, std::int64_t channels, float momentum,
                                 std::int64_t count, float eps,
                                 const StepControl* control) override;

  // cpu_pool.cpp
  void max_pool2d_forward(const PoolDesc& desc, CBuf x, Buf y) override;
  void max_pool2d_backward(const PoolDesc& desc, CBuf x, CBuf y, CBuf dy, Buf dx,
                           bool accumulate) override;
  void avg_pool2d_forward(const PoolDesc& desc, CBuf x, Buf y) override;
  void avg_pool2d_backward(const PoolDesc& desc, CBuf dy, Buf dx, bool accumulate) override;
  void global_avg_pool_forward(CBuf x, Buf y, std::int64_t n, std::int64_t pixels,
                               std::int64_t channels) override;
  void global_avg_pool_backward(CBuf dy, Buf dx, std::int64_t n, std::int64_t pixels,
                                std::int64_t channels, bool accumulate) override;

  void loss(const LossDesc& desc) override;
  // The mean loss of the last loss() call in double, before its rounding to *desc.loss (float).
  // With an F64 pred it is computed in double throughout: the float64 finite-difference tests
  // differentiate it.
  double last_loss() const { return last_loss_; }

  void check_gradients(const GradRanges& grad, std::int64_t count, StepControl* control) override;
  void optimizer_step(const OptimizerDesc& desc) override;
  void finish_step(StepControl* control, const ScalerParams& params, const OptimizerHyper& hyper,
                   StepRecord* history) override;

 private:
  // Grow-only fp32 staging for widened GEMM operands; sized on first use and then reused.
  std::vector<float>& scratch(int slot, std::size_t count);
  std::vector<float> scratch_[3];
  // Grow-only scratch of blas_gemm's partial products (cpu_blas.hpp), per arithmetic type.
  template <typename A>
  std::vector<A>& gemm_partials() {
    if constexpr (std::is_same_v<A, double>) {
      return gemm_partials_f64_;
    } else {
      return gemm_partials_;
    }
  }
  std::vector<float> gemm_partials_;
  std::vector<double> gemm_partials_f64_;
  std::vector<double> check_partials_;  // check_gradients' per-block sums
  // Grow-only byte scratch of the convolutions (column buffers, fp32 staging); 64-byte aligned.
  void* conv_scratch(int slot, std::size_t bytes);
  struct FreeDeleter {
    void operator()(void* p) const noexcept;
  };
  std::unique_ptr<void, FreeDeleter> conv_scratch_[4];
  std::size_t conv_scratch_bytes_[4] = {};
  std::size_t conv_chunk_bytes_ = std::size_t{64} << 20;
  double last_loss_ = 0.0;
  std::size_t in_use_ = 0;
  std::size_t peak_ = 0;
};

}  // namespace mixtrain::cpu
