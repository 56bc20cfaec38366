// The CUDA backend: one stream, one cuBLASLt handle with a preallocated workspace, kernels that
// load the storage type, compute in fp32 and round once, and whole training steps captured as
// CUDA graphs. docs/cuda.md describes how it works.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ops/backend.hpp"

struct cudnnContext;  // cudnnHandle_t, kept out of this header

namespace mixtrain::cuda {

// Every field of a GEMM that changes the cuBLASLt descriptors or the algorithm choice.
using GemmKey = std::array<std::int64_t, 27>;
// Hash of the plan keys (GemmKey, ConvKey): FNV-style mixing of every field.
struct PlanKeyHash {
  template <std::size_t N>
  std::size_t operator()(const std::array<std::int64_t, N>& k) const noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::int64_t v : k) {
      h ^= static_cast<std::uint64_t>(v) + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    }
    return static_cast<std::size_t>(h);
  }
};
struct GemmPlan;  // descriptors, layouts and the chosen algorithm (cuda_gemm.cpp)
struct GemmPlanDeleter {
  void operator()(GemmPlan* plan) const noexcept;
};

// Every field of a convolution that changes the cuDNN descriptors or the algorithm choice.
using ConvKey = std::array<std::int64_t, 18>;
struct ConvPlan;  // cuDNN descriptors and the algorithm of each direction (cuda_conv.cpp)
struct ConvPlanDeleter {
  void operator()(ConvPlan* plan) const noexcept;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend();
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  std::string name() const override { return "cuda"; }

  void* alloc(std::size_t bytes) override;
  void free(void* ptr) override;
  void upload(void* dst, const void* host_src, std::size_t bytes) override;
  void download(void* host_dst, const void* src, std::size_t bytes) override;
  void synchronize() override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void* alloc_host(std::size_t bytes) override;
  void free_host(void* ptr) override;
  std::size_t memory_in_use() const override { return in_use_; }
  std::size_t peak_memory() const override { return peak_; }

  void run_step(const std::string& key, const std::function<void()>& body) override;
  void reset_steps() override;

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
  void activation_backward_bias_grad(Activation act, float alpha, CBuf x, CBuf y, CBuf dy, Buf dx,
                                     Buf db, std::int64_t rows, std::int64_t cols) override;

  // Convolution through cuDNN (cuda_conv.cpp); batch-norm and pooling kernels (cuda_norm.cu,
  // cuda_pool.cu).
  void conv2d_forward(const ConvDesc& desc, CBuf x, CBuf w, CBuf bias, Buf y) override;
  void conv2d_backward_data(const ConvDesc& desc, CBuf dy, CBuf w, Buf dx,
                            bool accumulate) override;
  void conv2d_backward_filter(const ConvDesc& desc, CBuf x, CBuf dy, Buf dw, Buf db) override;
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

  void check_gradients(const GradRanges& grad, std::int64_t count, StepControl* control) override;
  void optimizer_step(const OptimizerDesc& desc) override;
  // One launch whose last block runs the finish; for a grid over 4096 blocks the finish runs in
  // prepare_step_kernel before the pass (cuda_step.cu).
  void optimizer_step_and_finish(const OptimizerDesc& desc, StepControl* control,
                                 const ScalerParams& params, StepRecord* history) override;
  void finish_step(StepControl* control, const ScalerParams& params, const OptimizerHyper& hyper,
                   StepRecord* history) override;

  // A dense chain's whole step as one cooperative kernel (cuda_dense_chain.cu) when it is FP16 or
  // BF16, small enough and laid out for it; false (nothing issued) otherwise, and always when
  // MIXTRAIN_CUDA_FUSED_CHAIN=0.
  bool dense_chain_step(const DenseChainStep& step) override;

  // Whether run_step captures graphs (false when MIXTRAIN_CUDA_GRAPHS=0).
  bool graphs_enabled() const { return graphs_enabled_; }
  cudaStream_t stream() const { return stream_; }

 private:
  // True during the host-only planning pass of a step's first run_step: ops validate their
  // arguments (and gemm prepares its cuBLASLt plan) but launch nothing.
  bool planning() const { return planning_; }
  void release() noexcept;
  void release_conv() noexcept;  // cuDNN plans, workspace and handle (cuda_conv.cpp)
  // Synchronises the stream and destroys every cached graph (their buffers are about to change);
  // returns the synchronisation's status.
  cudaError_t drop_graphs() noexcept;
  // Throws DeviceError when called while a step is being planned or captured (host transfers
  // and synchronisation cannot be part of a graph).
  void require_outside_step(const char* what) const;
  // Blocks for a grid-stride kernel over `items` work items of `threads` threads each.
  unsigned grid_for(std::int64_t items, int threads) const;

  // The cached plan of a GEMM: the most fused epilogue cuBLASLt has an algorithm for.
  GemmPlan& gemm_plan(const GemmDesc& d);
  // Reads bytes (16-byte aligned) of device memory on the stream: leaves the L2 cache holding
  // clean lines of p (GEMM autotuning, before each timed launch).
  void read_through(const void* p, std::size_t bytes);
  // Runs d with cuda_skinny_gemm.cu's kernel when it is the product it covers (an input gradient
  // C = A B with k <= 16: no transposes, batch 1, alpha 1, no bias and no epilogue); returns
  // false, having done nothing, otherwise.
  bool skinny_gemm(const GemmDesc& d);
  // Times the heuristic's candidates for a new plan on scratch operands and returns the index
  // of the one to keep (cuda_gemm.cpp). Allocates and synchronises: never during a capture.
  int gemm_autotune(GemmPlan& plan, const GemmDesc& d,
                    const cublasLtMatmulHeuristicResult_t* results, int returned, int chosen);
  // target = beta * C + bias over every row (target is C or aux, laid out as C; gemm with
  // k == 0, and the bias seed of the fallback). beta == 0 never reads C.
  void gemm_epilogue_only(const GemmDesc& d, Buf target, float beta, bool with_bias);
  // C = d.epilogue(z) over C's m x n elements, z laid out as C (z may be C: in place).
  void gemm_activation(const GemmDesc& d, CBuf z);
  // The cached cuDNN plan of a convolution; algorithms are found per direction on first use.
  ConvPlan& conv_plan(const ConvDesc& d, DType t);
  // Grows the convolution workspace to at least `bytes` (outside a capture only; captured steps
  // that referenced the old one are dropped and captured again on their next run).
  void reserve_conv_workspace(std::size_t bytes);
  // Writes n values of a fixed pseudo-random pattern in [-1, 1) (cuda_elementwise.cu), also while
  // planning: the inputs of cuDNN's algorithm searches, which run before any step has written
  // the real buffers.
  void fill_search_data(Buf x, std::int64_t n);
  // cudaMalloc with the bookkeeping of alloc(), allowed while a step is planned.
  void* allocate(std::size_t bytes);
  // Resident blocks per SM of a kernel launched with `threads` threads a block (0 when none
  // fits), queried once per kernel and backend (each kernel has one block size): the grids of
  // batch-norm and of the fused dense-chain step.
  template <typename Kernel>
  int resident_blocks(Kernel kernel, int threads) {
    return resident_blocks_of(reinterpret_cast<const void*>(kernel), threads);
  }
  int resident_blocks_of(const void* kernel, int threads);
  // The optimizer pass, followed in the same launch by finish_step when finish_control is set.
  void launch_optimizer_pass(const OptimizerDesc& d, StepControl* finish_control,
                             const ScalerParams* params, StepRecord* history);

  // Staging ring for upload(): the host copy is taken before upload() returns.
  struct PendingCopy {
    std::size_t begin, end;
    cudaEvent_t done;
  };
  std::size_t stage(std::size_t bytes);  // returns the ring offset of a free region
  cudaEvent_t take_event();

  int device_ = 0;
  int sm_count_ = 1;
  std::size_t l2_bytes_ = 0;  // L2 cache size (GEMM autotuning overwrites it between launches)
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  std::size_t workspace_bytes_ = 0;
  // Fixed device scratch for the partial sums of the deterministic two-stage reductions.
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
  // Zero-initialised completion counters of the kernels whose last block finishes a reduction
  // (last_to_arrive in cuda_common.cuh: one for a grid, or one per grid column); each is back at
  // zero after its kernel.
  unsigned int* step_counters_ = nullptr;
  // The optimizer pass's per-step values for large grids (cuda_optimizer.cuh: PreparedStep).
  void* prepared_step_ = nullptr;
  static constexpr std::size_t kPreparedStepBytes = 128;
  static constexpr int kCounterCheck = 0;   // unscale_kernel
  static constexpr int kCounterLoss = 1;    // the loss kernels
  static constexpr int kCounterFinish = 2;  // optimizer_kernel with the finish
  static constexpr int kCounterNorm = 3;    // batch norm: kNormCounters, one per grid column
  static constexpr int kNormCounters = 32;
  // activation_backward_bias_grad: one per column tile.
  static constexpr int kCounterActBiasGrad = kCounterNorm + kNormCounters;
  static constexpr int kActBiasGradCounters = 128;
  static constexpr int kCounterChain = kCounterActBiasGrad + kActBiasGradCounters;
  static constexpr int kCounters = kCounterChain + 1;

  std::unordered_map<void*, std::size_t> allocations_;
  std::size_t in_use_ = 0;
  std::size_t peak_ = 0;

  char* ring_ = nullptr;
  std::size_t ring_bytes_ = 0;
  std::size_t ring_head_ = 0;
  std::deque<PendingCopy> pending_;
  std::vector<cudaEvent_t> spare_events_;

  bool graphs_enabled_ = true;
  // cuBLASLt activation and bias-gradient epilogues (false when MIXTRAIN_CUDA_FUSED_EPILOGUES=0:
  // separate kernels instead, for debugging and A/B timing).
  bool fused_epilogues_ = true;
  // Time the heuristic's candidates when a GEMM plan is created outside a capture (cuda_gemm.cpp).
  bool gemm_autotune_ = true;
  // Input gradients with k <= 16 by our kernel (skinny_gemm; false when
  // MIXTRAIN_CUDA_SKINNY_GEMM=0: cuBLASLt for every product, for A/B timing).
  bool skinny_gemms_ = true;
  // Dense chains' steps as one kernel (false when MIXTRAIN_CUDA_FUSED_CHAIN=0: op by op).
  bool fused_chains_ = true;
  bool cooperative_launch_ = false;  // the device runs cooperative kernels (grid-wide barriers)
  std::unordered_map<const void*, int> resident_blocks_;  // resident_blocks_of() answers
  bool planning_ = false;
  bool capturing_ = false;
  std::unordered_map<std::string, cudaGraphExec_t> graphs_;

  std::unordered_map<GemmKey, std::unique_ptr<GemmPlan, GemmPlanDeleter>, PlanKeyHash> gemm_plans_;

  // cuDNN, created on the first convolution.
  cudnnContext* dnn_ = nullptr;
  std::unordered_map<ConvKey, std::unique_ptr<ConvPlan, ConvPlanDeleter>, PlanKeyHash> conv_plans_;
  void* conv_workspace_ = nullptr;
  std::size_t conv_workspace_bytes_ = 0;
};

}  // namespace mixtrain::cuda
