// The op interface a backend provides. Layers, losses and the trainer are written once against
// it; the CPU backend (the numerical reference) and the CUDA backend implement it.
//
// Conventions:
// - Every pointer is a device pointer of the backend (host memory for the CPU backend).
// - Tensors are row-major and contiguous unless a leading dimension says otherwise.
// - Low-precision kernels load, convert to fp32, compute in fp32, round once, store.
// - Values that change between steps are read through StepControl* in device memory, never passed
//   by value, so that a captured step stays valid when replayed.
// - Calls are asynchronous on the CUDA backend; only download() and synchronize() wait.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixtrain/dtype.hpp"
#include "ops/backend_types.hpp"
#include "ops/step_control.hpp"
#include "train/optimizer_math.hpp"

namespace mixtrain {

// Which operand a GEMM's fused bias gradient sums (GemmDesc::bias_grad).
enum class GemmOperand : std::uint8_t { A, B };

// C[m, n] = alpha * op(A)[m, k] * op(B)[k, n] + beta * C (+ bias[n] broadcast over rows), all
// row-major, accumulated in fp32. A and B must have the same dtype; C may differ (fp32 weight
// gradients from fp16 operands). batch > 1 runs strided batched products.
//
// Fused epilogues (check_gemm_epilogue() below enforces these rules):
// - epilogue (Identity, ReLU or GELUTanh; batch == 1 and beta == 0 unless Identity): with
//   z = alpha * op(A) op(B) + bias in fp32, C = epilogue(z), computed in fp32 and rounded once
//   to C's dtype.
// - aux (only with an epilogue other than Identity): aux = z rounded to C's dtype, [m, ldc] in
//   C's dtype and layout: the pre-activation a backward pass needs (GELU). ReLU needs none:
//   relu'(z) = (C > 0).
// - bias_grad (batch == 1; F32, or F64 on the CPU backend's F64 path), overwritten: the column
//   sums of one stored operand, independent of alpha, beta and C:
//     bias_grad_operand A: A stored as a dense [k, m] matrix (trans_a, lda == m),
//                          bias_grad[i] = sum over p < k of op(A)[i, p], i < m;
//     bias_grad_operand B: B stored as a dense [k, n] matrix (!trans_b, ldb == n),
//                          bias_grad[j] = sum over p < k of op(B)[p, j], j < n.
//   For dW = dy^T x (A = dy [rows, units], trans_a) it is a dense layer's bias gradient, the
//   sum over rows of dy; cuBLASLt calls it BGRADB (our A is its B). Summed in fp32 (double for
//   F64) from the stored values; the CPU adds p in increasing order, exactly like bias_grad().
struct GemmDesc {
  bool trans_a = false;
  bool trans_b = false;
  std::int64_t m = 0, n = 0, k = 0;
  CBuf a;
  std::int64_t lda = 0;
  CBuf b;
  std::int64_t ldb = 0;
  Buf c;
  std::int64_t ldc = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
  CBuf bias;  // optional, [n], added before storing (only with beta == 0)
  std::int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  bool allow_tf32 = false;                     // fp32 operands may use TF32 tensor cores
  Activation epilogue = Activation::Identity;  // applied after the bias (see above)
  Buf aux;                                     // optional pre-activation output (see above)
  Buf bias_grad;                               // optional fused bias gradient (see above)
  GemmOperand bias_grad_operand = GemmOperand::A;
};

// Throws Error("internal: ...") when a GemmDesc asks for an epilogue, aux or bias_grad outside
// the cases above. Both backends call it.
void check_gemm_epilogue(const GemmDesc& desc);

// Mean loss over rows (and over cols for the element-wise losses), computed in fp32.
struct LossDesc {
  LossKind kind = LossKind::SparseCrossEntropy;
  float huber_delta = 1.0f;
  CBuf pred;  // [rows, cols]
  std::int64_t rows = 0, cols = 0;
  const std::int32_t* labels = nullptr;  // SparseCrossEntropy
  const float* targets = nullptr;        // the others: [rows, cols]
  float* loss = nullptr;                 // device scalar: unscaled mean loss
  Buf dpred;                             // optional: d(mean loss * scale) / d pred
  const StepControl* control = nullptr;  // optional: supplies the loss scale for dpred
};

// The parameter gradients of a step, still scaled, in two ranges: the first lowp_count in
// lowp.dtype (weight matrices and filters, stored in the compute dtype as the GEMM or convolution
// produced them: half the bytes to write, check and read), the other count - lowp_count in fp32
// (biases, normalisation parameters). lowp_count is a multiple of 4 so that master, state and
// working copy at element lowp_count stay 16-byte aligned when they are at element 0 (the CUDA
// optimizer's 4-element packs run over both ranges). A plain fp32 array converts to an all-fp32
// GradRanges.
struct GradRanges {
  CBuf lowp;                    // [lowp_count], f16, bf16 or f32
  std::int64_t lowp_count = 0;  // a multiple of 4
  const float* f32 = nullptr;   // [count - lowp_count]
  GradRanges() = default;
  GradRanges(const float* all) : f32(all) {}  // NOLINT(google-explicit-constructor)
  GradRanges(CBuf low, std::int64_t low_count, const float* rest)
      : lowp(low), lowp_count(low_count), f32(rest) {}
  // The low-precision count of `count` gradients: lowp_count within [0, count] (0 for count < 0).
  std::int64_t lowp_within(std::int64_t count) const {
    return std::clamp<std::int64_t>(lowp_count, 0, std::max<std::int64_t>(count, 0));
  }
};

// Everything the optimizer pass touches; parameters are one contiguous range.
struct OptimizerDesc {
  OptimizerHyper hyper;
  std::int64_t count = 0;
  float* master = nullptr;                // fp32 master weights [count]
  GradRanges grad;                        // gradients, still scaled [count]
  float* state[kMaxOptimizerSlots] = {};  // fp32 optimizer state arrays [count] each
  Buf working;                 // optional FP16/BF16 working copy [count], written in the pass
  float max_grad_norm = 0.0f;  // > 0: clip to this global norm (from control->grad_norm_sq)
  const StepControl* control = nullptr;
};

// One layer of a dense chain (DenseChainStep): y = act(x W^T + b), then an optional inverted
// dropout, as Dense (with a fused activation) and Dropout compute them. Every tensor is in the
// compute dtype except the fp32 bias gradient.
struct DenseChainLayer {
  std::int64_t in = 0, out = 0;
  Activation act = Activation::Identity;  // Identity or ReLU
  CBuf weight;                            // [out, in]: the working copy
  CBuf bias;                              // [out], or null for a layer without bias
  Buf grad_weight;                        // [out, in], overwritten (still scaled)
  float* grad_bias = nullptr;             // [out] f32, overwritten (with a bias)
  Buf output;                             // [rows, out]: act(x W^T + b)
  float dropout = 0.0f;                   // rate of a Dropout reading the output; 0: none
  std::uint64_t dropout_salt = 0;         // that Dropout layer's salt
  Buf dropped;                            // [rows, out]: the Dropout's output (with dropout)
  Buf grad_pre;  // [rows, out] scratch: the gradient of x W^T + b (the head: of the logits)
};

// A whole training step of a chain of dense layers whose last layer (no activation, no dropout)
// gives the logits of a sparse softmax cross-entropy: the forward pass, the loss into
// control->loss, the backward pass into the layers' gradients, the gradient check and
// optimizer_step_and_finish over optimizer's parameters, with those ops' arithmetic (products in
// fp32, every stored value rounded to the compute dtype where the op-by-op step rounds it, the
// shared update and scaler rules). Sums run in other orders (products, bias gradients, the loss
// mean), and the check adds each square to its sum on its own instead of a pack at a time, so
// results can differ from the op-by-op step's in the last bits. The check covers the gradients
// the step stores: optimizer.grad must hold exactly the layers' gradients (plus zero padding),
// which the trainer guarantees by passing only models that are the whole chain.
struct DenseChainStep {
  std::int64_t rows = 0;
  CBuf input;                            // [rows, layers[0].in]
  const std::int32_t* labels = nullptr;  // [rows], each in [0, layers.back().out)
  std::vector<DenseChainLayer> layers;
  StepControl* control = nullptr;  // the step's control block (also optimizer.control)
  OptimizerDesc optimizer;
  ScalerParams scaler{};
  StepRecord* history = nullptr;
};

// A 2-D convolution over channels-last tensors (what cuDNN's tensor-core kernels want):
//   x [N, H, W, C], w [K, R, S, C / groups], bias [K], y [N, P, Q, K].
// Output pixel (p, q) of filter k in group g = k / (K / groups) reads input pixels
//   (p * stride_h - pad_h + r * dilation_h, q * stride_w - pad_w + s * dilation_w)
// for r < R, s < S, over channels [g * C / groups, (g + 1) * C / groups); pixels outside the
// input are zeros. pad_h / pad_w are the top / left padding; the bottom / right padding is
// whatever P and Q imply (it differs from the top / left one for "same" with an even total).
// It is a cross-correlation, as in every framework.
struct ConvDesc {
  std::int64_t N = 0, H = 0, W = 0, C = 0;  // input
  std::int64_t K = 0, R = 0, S = 0;         // filters and kernel size
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t pad_h = 0, pad_w = 0;
  std::int64_t dilation_h = 1, dilation_w = 1;
  std::int64_t groups = 1;
  std::int64_t P = 0, Q = 0;  // output height and width
  bool allow_tf32 = false;    // fp32 operands may use TF32 tensor cores
};

// A 2-D pooling window over channels-last tensors: x [N, H, W, C], y [N, P, Q, C]. Output
// (p, q) covers input rows p * stride_h - pad_h + [0, R) and columns q * stride_w - pad_w +
// [0, S), clipped to the input (padding never takes part: max ignores it, average divides by
// the number of input pixels in the window, PyTorch's count_include_pad=false).
struct PoolDesc {
  std::int64_t N = 0, H = 0, W = 0, C = 0;
  std::int64_t R = 0, S = 0;  // window
  std::int64_t stride_h = 1, stride_w = 1;
  std::int64_t pad_h = 0, pad_w = 0;
  std::int64_t P = 0, Q = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // Memory. alloc() is only called while a model is compiled, never inside a step.
  virtual void* alloc(std::size_t bytes) = 0;
  virtual void free(void* ptr) = 0;
  virtual void upload(void* dst, const void* host_src, std::size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, std::size_t bytes) = 0;
  virtual void synchronize() = 0;
  // Device-to-device copy, ordered with the other ops (allowed inside a step).
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;
  // Host staging memory for uploads that the step reads (pinned on CUDA).
  virtual void* alloc_host(std::size_t bytes) = 0;
  virtual void free_host(void* ptr) = 0;
  // Bytes of device memory in use now and at most since creation.
  virtual std::size_t memory_in_use() const = 0;
  virtual std::size_t peak_memory() const = 0;

  // Runs the op sequence `body` issues. The CUDA backend captures it once per key as a graph and
  // replays it afterwards; the CPU backend just runs it.
  virtual void run_step(const std::string& key, const std::function<void()>& body) = 0;
  // Forgets captured steps (after buffers they referenced change).
  virtual void reset_steps() = 0;

  // Element-wise.
  virtual void fill(Buf x, std::int64_t n, float value) = 0;
  // dst = src (converted), or dst += src with accumulate.
  virtual void convert(CBuf src, Buf dst, std::int64_t n, bool accumulate) = 0;
  // y = a + b
  virtual void add(CBuf a, CBuf b, Buf y, std::int64_t n) = 0;
  virtual void activation_forward(Activation act, float alpha, CBuf x, Buf y, std::int64_t n) = 0;
  // dx (+)= dy * act'(x); y is the forward output (some activations use it).
  virtual void activation_backward(Activation act, float alpha, CBuf x, CBuf y, CBuf dy, Buf dx,
                                   std::int64_t n, bool accumulate) = 0;
  // Inverted dropout with a counter-based generator keyed by (control->seed, control->iteration,
  // salt, element index): the backward pass regenerates the mask instead of storing it.
  virtual void dropout_forward(float rate, std::uint64_t salt, CBuf x, Buf y, std::int64_t n,
                               const StepControl* control) = 0;
  virtual void dropout_backward(float rate, std::uint64_t salt, CBuf dy, Buf dx, std::int64_t n,
                                const StepControl* control, bool accumulate) = 0;
  // Row-wise softmax over cols, computed in fp32.
  virtual void softmax_forward(CBuf x, Buf y, std::int64_t rows, std::int64_t cols) = 0;
  virtual void softmax_backward(CBuf y, CBuf dy, Buf dx, std::int64_t rows, std::int64_t cols,
                                bool accumulate) = 0;

  // Products and reductions.
  virtual void gemm(const GemmDesc& desc) = 0;
  // db[cols] (+)= sum over rows of dy[rows, cols], summed in fp32; db is F32 (the CPU backend
  // also takes F64 with an F64 dy, summed in double: the float64 gradient tests).
  virtual void bias_grad(CBuf dy, Buf db, std::int64_t rows, std::int64_t cols,
                         bool accumulate) = 0;

  // activation_backward(act, alpha, x, y, dy, dx, rows * cols, false), then bias_grad(dx, db,
  // rows, cols, false) of the stored dx: a dense layer's pre-activation gradient and its bias
  // gradient. A backend may do both in one pass (the CUDA backend does); dx may be x.
  virtual void activation_backward_bias_grad(Activation act, float alpha, CBuf x, CBuf y, CBuf dy,
                                             Buf dx, Buf db, std::int64_t rows, std::int64_t cols) {
    activation_backward(act, alpha, x, y, dy, dx, rows * cols, false);
    bias_grad(dx, db, rows, cols, false);
  }

  // Convolution (ConvDesc above), products accumulated in fp32 (double for the CPU backend's
  // F64). x, w, y, dy, dx share the compute dtype.
  // y = conv(x, w) (+ bias[k] broadcast); bias is optional and may be F32 or the compute dtype.
  virtual void conv2d_forward(const ConvDesc& desc, CBuf x, CBuf w, CBuf bias, Buf y) = 0;
  // dx (+)= the gradient of the input: the transposed convolution of dy [N, P, Q, K] with w.
  virtual void conv2d_backward_data(const ConvDesc& desc, CBuf dy, CBuf w, Buf dx,
                                    bool accumulate) = 0;
  // dw [K, R, S, C / groups] = the weight gradient, and db [K] = sum of dy over N, P, Q when db
  // is set; both overwritten. db is F32 (F64 with an F64 x and dy on the CPU backend); dw is F32
  // or x's dtype (F64 with F64 operands). With FP16/BF16 operands dw is rounded to that dtype
  // (cuDNN produces it in the tensor dtype), then stored as it is or widened to F32: it overflows
  // to inf where the GPU's would.
  virtual void conv2d_backward_filter(const ConvDesc& desc, CBuf x, CBuf dy, Buf dw, Buf db) = 0;

  // Batch normalisation over the last dimension: x, y, dy, dx are [rows, channels] (rows = every
  // other dimension, N * H * W for images) in the compute dtype; gamma, beta (any float dtype,
  // F32 in training) and every statistic are [channels]. Statistics are F32 buffers (F64 on the
  // CPU backend's reference path) computed in fp32 or better: the CPU sums in double.
  // Training: batch mean and 1 / sqrt(biased variance + eps) of each channel are written to
  // batch_mean / batch_invstd, and y = (x - mean) * invstd * gamma + beta.
  // With relu, y = max(that, 0) in the same pass (batch-norm + ReLU fused: the graph's fusion
  // pass sets it), the same bits as the two ops one after the other.
  virtual void batch_norm_forward_training(CBuf x, CBuf gamma, CBuf beta, Buf y, Buf batch_mean,
                                           Buf batch_invstd, std::int64_t rows,
                                           std::int64_t channels, float eps, bool relu) = 0;
  // Inference: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta (then ReLU).
  virtual void batch_norm_forward_inference(CBuf x, CBuf gamma, CBuf beta, CBuf running_mean,
                                            CBuf running_var, Buf y, std::int64_t rows,
                                            std::int64_t channels, float eps, bool relu) = 0;
  // Gradients through the training forward (batch statistics): dx (+)= the input gradient
  // (skipped when dx is null), dgamma and dbeta (F32, or F64 on the reference path) overwritten.
  // relu_output: the fused forward's y when it applied ReLU, else null; dy then reaches the
  // batch-norm only where relu_output > 0 (dy * [y > 0], as ReLU's own backward computes it).
  virtual void batch_norm_backward(CBuf x, CBuf dy, CBuf gamma, CBuf batch_mean, CBuf batch_invstd,
                                   Buf dx, Buf dgamma, Buf dbeta, std::int64_t rows,
                                   std::int64_t channels, bool accumulate, CBuf relu_output) = 0;
  // running = (1 - momentum) * running + momentum * batch (PyTorch's convention), the variance
  // unbiased (times count / (count - 1), count = rows of the batch). Does nothing when
  // control->found_inf is set: a skipped step leaves the running statistics untouched.
  virtual void batch_norm_update_running(CBuf batch_mean, CBuf batch_invstd, Buf running_mean,
                                         Buf running_var, std::int64_t channels, float momentum,
                                         std::int64_t count, float eps,
                                         const StepControl* control) = 0;

  // Pooling (PoolDesc above), computed in fp32.
  virtual void max_pool2d_forward(const PoolDesc& desc, CBuf x, Buf y) = 0;
  // dx (+)= dy routed to each window's maximum, recomputed from x and y (no index buffer); when
  // several inputs of a window equal its maximum, the first in row-major window order takes it.
  virtual void max_pool2d_backward(const PoolDesc& desc, CBuf x, CBuf y, CBuf dy, Buf dx,
                                   bool accumulate) = 0;
  virtual void avg_pool2d_forward(const PoolDesc& desc, CBuf x, Buf y) = 0;
  virtual void avg_pool2d_backward(const PoolDesc& desc, CBuf dy, Buf dx, bool accumulate) = 0;
  // x [n, pixels, channels] -> y [n, channels], the mean over pixels.
  virtual void global_avg_pool_forward(CBuf x, Buf y, std::int64_t n, std::int64_t pixels,
                                       std::int64_t channels) = 0;
  virtual void global_avg_pool_backward(CBuf dy, Buf dx, std::int64_t n, std::int64_t pixels,
                                        std::int64_t channels, bool accumulate) = 0;

  // Loss forward (and backward when desc.dpred is set).
  virtual void loss(const LossDesc& desc) = 0;

  // Mixed precision. Reads the still-scaled gradients (count of them, GradRanges above) once:
  // sets control->found_inf when any value times control->inv_scale is inf/nan and
  // control->grad_norm_sq to the squared norm of the unscaled gradients. It does not write them:
  // the optimizer multiplies by inv_scale as it reads.
  virtual void check_gradients(const GradRanges& grad, std::int64_t count,
                               StepControl* control) = 0;
  // Optimizer update on grad * control->inv_scale (times the clipping coefficient); does nothing
  // when control->found_inf is set.
  virtual void optimizer_step(const OptimizerDesc& desc) = 0;
  // Runs `step` (DenseChainStep above) as one fused operation and returns true, or returns false
  // having issued nothing when the backend has no fused path for it; the caller then runs the
  // ops one by one. The CPU backend never fuses; the CUDA backend fuses FP16/BF16 chains of small
  // batches (cuda_dense_chain.cu).
  virtual bool dense_chain_step(const DenseChainStep& step) {
    (void)step;
    return false;
  }
  // Ends a training step on the device: scaler update, counters, history record.
  virtual void finish_step(StepControl* control, const ScalerParams& params,
                           const OptimizerHyper& hyper, StepRecord* history) = 0;
  // optimizer_step(desc), then finish_step(control, params, desc.hyper, history); control must be
  // desc.control. A backend may run both together (the CUDA backend: one launch, or for more
  // than 4096 blocks a one-thread launch with the finish, then the pass).
  virtual void optimizer_step_and_finish(const OptimizerDesc& desc, StepControl* control,
                                         const ScalerParams& params, StepRecord* history) {
    optimizer_step(desc);
    finish_step(control, params, desc.hyper, history);
  }
};

// The CPU backend (always available).
std::unique_ptr<Backend> make_cpu_backend();

}  // namespace mixtrain
