// GEMM through cuBLASLt. Row-major C = op(A) op(B) is computed as the column-major product
// C^T = op(B)^T op(A)^T: cuBLASLt's A is our B, its B is our A, and C keeps its memory as an
// n x m column-major matrix. Descriptors, layouts and the heuristic's algorithm are built once
// per shape (GemmKey) and reused, so a step does no cuBLASLt setup and a captured graph replays
// the same algorithms.
#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "core/half.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cuda {

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // cuBLASLt's A: our B
  cublasLtMatrixLayout_t b = nullptr;  // cuBLASLt's B: our A
  cublasLtMatrixLayout_t c = nullptr;  // C and D (and aux: same dtype and layout)
  cublasLtMatmulAlgo_t algo{};
  // What cuBLASLt's epilogue does; the rest of what the GemmDesc asks for is done apart:
  bool bias_fused = false;   // false: the bias (if any) is seeded by gemm_epilogue_only
  bool act_fused = false;    // false: the activation (if any) runs after, from D
  bool bgrad_fused = false;  // false: the bias gradient (if any) is a bias_grad() call

  ~GemmPlan() {
    if (c != nullptr) (void)cublasLtMatrixLayoutDestroy(c);
    if (b != nullptr) (void)cublasLtMatrixLayoutDestroy(b);
    if (a != nullptr) (void)cublasLtMatrixLayoutDestroy(a);
    if (op != nullptr) (void)cublasLtMatmulDescDestroy(op);
  }
};

void GemmPlanDeleter::operator()(GemmPlan* plan) const noexcept {
  delete plan;
}

namespace {

cudaDataType_t cuda_type(DType t, const char* what) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      break;
  }
  throw Error(std::string("internal: gemm ") + what + " on the cuda backend must be f32, f16 or " +
              "bf16, not " + std::string(dtype_name(t)));
}

// Largest power of two (at most 256) dividing the address and, for batched products, the batch
// stride in bytes: what cuBLASLt may assume about every matrix it reads.
std::int64_t alignment(const void* p, std::int64_t stride_elems, std::size_t elem, bool batched) {
  std::uint64_t bits = reinterpret_cast<std::uintptr_t>(p) | 256u;
  if (batched) bits |= static_cast<std::uint64_t>(stride_elems) * elem;
  return static_cast<std::int64_t>(bits & (~bits + 1));
}

template <typename T>
void set_attr(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  MIXTRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof value));
}

template <typename T>
void set_layout_attr(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                     const T& value) {
  MIXTRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, attr, &value, sizeof value));
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t type, std::int64_t rows, std::int64_t cols,
                                   std::int64_t ld, std::int64_t batch, std::int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  MIXTRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, static_cast<std::uint64_t>(rows),
                                                   static_cast<std::uint64_t>(cols), ld));
  if (batch > 1) {
    try {
      set_layout_attr(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, static_cast<std::int32_t>(batch));
      set_layout_attr(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, stride);
    } catch (...) {
      (void)cublasLtMatrixLayoutDestroy(layout);
      throw;
    }
  }
  return layout;
}

std::string describe(const GemmDesc& d) {
  return "gemm m=" + std::to_string(d.m) + " n=" + std::to_string(d.n) +
         " k=" + std::to_string(d.k) + " trans_a=" + std::to_string(d.trans_a) +
         " trans_b=" + std::to_string(d.trans_b) + " lda=" + std::to_string(d.lda) +
         " ldb=" + std::to_string(d.ldb) + " ldc=" + std::to_string(d.ldc) +
         " batch=" + std::to_string(d.batch) + " operands " + std::string(dtype_name(d.a.dtype)) +
         " output " + std::string(dtype_name(d.c.dtype)) +
         (d.bias ? " bias " + std::string(dtype_name(d.bias.dtype)) : std::string()) +
         (d.epilogue != Activation::Identity
              ? " activation " + std::to_string(static_cast<int>(d.epilogue))
              : std::string()) +
         (d.aux ? " aux" : "") + (d.bias_grad ? " bias_grad" : "");
}

// The parts of a GemmDesc's epilogue that one cuBLASLt epilogue performs.
struct Fusion {
  bool bias = false, act = false, bgrad = false;
  bool operator==(const Fusion&) const = default;
};

cublasLtEpilogue_t epilogue_of(const GemmDesc& d, const Fusion& f) {
  if (f.act) {  // GELU: candidates() fuses no other activation
    if (d.aux) return f.bias ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    return f.bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
  }
  if (f.bgrad) {
    // cuBLASLt's B is our A: BGRADB sums our A over k, BGRADA our B.
    return d.bias_grad_operand == GemmOperand::A ? CUBLASLT_EPILOGUE_BGRADB
                                                 : CUBLASLT_EPILOGUE_BGRADA;
  }
  return f.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
}

// The fusions to try, most fused first; the last fuses nothing and always exists.
// - The bias epilogue takes a bias of C's type only.
// - ReLU is never fused: cuBLASLt's RELU epilogues map NaN to 0 (seen on an H100 with cuBLASLt
//   13.1 for fp16 and bf16 outputs; the documentation says max(x, 0) and promises nothing about
//   NaN), which would hide a NaN weight behind a ReLU. It runs apart, in place on C, through
//   activation_value (ops/activation_math.hpp), which propagates NaN as PyTorch's relu does.
// - cuBLASLt's GELU may evaluate tanh with a fast approximation: it is fused only for fp16/bf16
//   outputs, whose rounding (2^-11, 2^-8 relative) is at least that error; an fp32 output gets
//   the exact tanhf of the activation kernels. Its aux needs a leading dimension divisible by 8.
// - The bias gradient epilogue shares the bias pointer, so it is fused only without a bias and
//   without an activation, with alpha == 1 and beta == 0 (what BGRADA/BGRADB assume).
// - MIXTRAIN_CUDA_FUSED_EPILOGUES=0 (fused_epilogues false) keeps only the bias epilogue.
std::vector<Fusion> candidates(const GemmDesc& d, bool fused_epilogues) {
  Fusion full;
  full.bias = d.bias && d.bias.dtype == d.c.dtype;
  full.act = fused_epilogues && d.epilogue == Activation::GELUTanh && d.c.dtype != DType::F32 &&
             (!d.aux || d.ldc % 8 == 0);
  full.bgrad = fused_epilogues && d.bias_grad && !d.bias && d.epilogue == Activation::Identity &&
               d.alpha == 1.0f && d.beta == 0.0f && d.bias_grad.dtype == DType::F32;
  std::vector<Fusion> out{full};
  const Fusion bias_only{full.bias, false, false};
  if (!(bias_only == out.back())) out.push_back(bias_only);
  if (!(Fusion{} == out.back())) out.push_back(Fusion{});
  return out;
}

// ---- autotuning -------------------------------------------------------------------------------
// When a plan is created outside a stream capture, the heuristic's candidates (up to
// kHeuristicResults) are timed on scratch operands of the plan's shapes and dtypes, each launch
// after the L2 cache was overwritten, and the fastest is kept. Docs: cuda.md.

constexpr int kHeuristicResults = 16;

constexpr int kTuneWarmup = 2;
constexpr int kTuneTimed = 7;  // the median launch is the candidate's time
// Scratch operands larger than this in total are not allocated: the heuristic's pick is kept.
constexpr std::size_t kTuneMaxScratchBytes = std::size_t{1} << 30;
// Another candidate replaces the heuristic's pick only when it is faster by more than this
// fraction, so timing noise does not swap between near-equal algorithms.
constexpr float kTuneMargin = 0.02f;

// True when the stream is being captured (or its state cannot be read): no tuning then.
bool stream_capturing(cudaStream_t s) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(s, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

// Elements spanned by a row-major matrix of `rows` rows with leading dimension ld, batched.
std::size_t span_elems(std::int64_t rows, std::int64_t ld, std::int64_t batch,
                       std::int64_t stride) {
  const std::int64_t batches = batch > 1 ? (batch - 1) * stride : 0;
  return static_cast<std::size_t>(batches + rows * ld);
}

// Split-K partial sums added in the output type (in place or through the workspace): more
// rounding than the fp32 accumulation when C is fp16/bf16. Such a candidate is only used when it
// is the heuristic's own pick, so tuning never makes a product less accurate than before.
bool reduces_in_low_precision(const cublasLtMatmulAlgo_t& algo, DType c) {
  if (c == DType::F32) return false;
  std::uint32_t splitk = 1, scheme = CUBLASLT_REDUCTION_SCHEME_NONE;
  std::size_t written = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk,
                                           sizeof splitk, &written) != CUBLAS_STATUS_SUCCESS ||
      cublasLtMatmulAlgoConfigGetAttribute(&algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme,
                                           sizeof scheme, &written) != CUBLAS_STATUS_SUCCESS) {
    return true;  // unknown: treat as inexact
  }
  return splitk > 1 && (scheme == CUBLASLT_REDUCTION_SCHEME_INPLACE ||
                        scheme == CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE);
}

// Fills `bytes` of device memory with small values of all signs (|x| <= 0.5) of dtype t: not
// zeros, which run faster than real data. A 64 KiB host pattern, then doubling device copies.
void fill_pattern(void* dst, std::size_t bytes, DType t, cudaStream_t s,
                  std::vector<unsigned char>& host) {
  constexpr std::size_t kPattern = std::size_t{64} << 10;
  const std::size_t elem = dtype_size(t);
  host.assign(kPattern, 0);
  std::uint32_t x = 0x9E3779B9u;
  for (std::size_t i = 0; i + elem <= kPattern; i += elem) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    const float v = static_cast<float>(x >> 8) * (1.0f / 16777216.0f) - 0.5f;
    if (t == DType::F32) {
      std::memcpy(host.data() + i, &v, 4);
    } else {
      const std::uint16_t b = t == DType::F16 ? float_to_f16(v) : float_to_bf16(v);
      std::memcpy(host.data() + i, &b, 2);
    }
  }
  auto* p = static_cast<unsigned char*>(dst);
  const std::size_t first = std::min(bytes, kPattern);
  MIXTRAIN_CUDA_CHECK(cudaMemcpyAsync(p, host.data(), first, cudaMemcpyHostToDevice, s));
  // The host pattern must outlive the copy: wait before the caller reuses `host`.
  MIXTRAIN_CUDA_CHECK(cudaStreamSynchronize(s));
  for (std::size_t done = first; done < bytes;) {
    const std::size_t n = std::min(done, bytes - done);
    MIXTRAIN_CUDA_CHECK(cudaMemcpyAsync(p + done, p, n, cudaMemcpyDeviceToDevice, s));
    done += n;
  }
}

// Device scratch and timing events of one tuning; released (after the stream drains) on exit.
struct TuneScratch {
  cudaStream_t stream = nullptr;
  std::vector<void*> buffers;
  cudaEvent_t start = nullptr, stop = nullptr;

  explicit TuneScratch(cudaStream_t s) : stream(s) {}
  ~TuneScratch() {
    (void)cudaStreamSynchronize(stream);
    for (void* p : buffers) (void)cudaFree(p);
    if (start != nullptr) (void)cudaEventDestroy(start);
    if (stop != nullptr) (void)cudaEventDestroy(stop);
    (void)cudaGetLastError();
  }
  TuneScratch(const TuneScratch&) = delete;
  TuneScratch& operator=(const TuneScratch&) = delete;

  // nullptr when the allocation fails (the tuning is then skipped).
  void* get(std::size_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, std::max<std::size_t>(bytes, 1)) != cudaSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    buffers.push_back(p);
    return p;
  }
};

// The process-wide record of tuned choices, so backends of one process (a graph run and an eager
// run, say) use the same algorithm for the same plan and give the same bits. Keyed by device,
// GemmKey and the fusion the plan kept; a recorded algorithm is reused only when the heuristic
// still offers it.
using TunedKey = std::array<std::int64_t, std::tuple_size_v<GemmKey> + 2>;
std::mutex tuned_mutex;
std::map<TunedKey, cublasLtMatmulAlgo_t>& tuned_algos() {
  static std::map<TunedKey, cublasLtMatmulAlgo_t> algos;
  return algos;
}

bool same_algo(const cublasLtMatmulAlgo_t& a, const cublasLtMatmulAlgo_t& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

}  // namespace

// Times the usable candidates on scratch operands of d's shapes and dtypes and returns the
// index of the one to keep: `chosen` (the heuristic's pick) unless another is faster by more than
// kTuneMargin. Returns `chosen` when nothing could be timed. Never called during a capture.
int CudaBackend::gemm_autotune(GemmPlan& plan, const GemmDesc& d,
                               const cublasLtMatmulHeuristicResult_t* results, int returned,
                               int chosen) {
  std::vector<int> cands;
  for (int i = 0; i < returned; ++i) {
    if (results[i].state != CUBLAS_STATUS_SUCCESS) continue;
    if (results[i].workspaceSize > workspace_bytes_) continue;
    if (i != chosen && reduces_in_low_precision(results[i].algo, d.c.dtype)) continue;
    cands.push_back(i);
  }
  if (cands.size() < 2) return chosen;
  if (d.stride_a < 0 || d.stride_b < 0 || d.stride_c < 0) return chosen;

  const std::size_t ab = dtype_size(d.a.dtype), cs = dtype_size(d.c.dtype);
  const std::size_t a_bytes = span_elems(d.trans_a ? d.k : d.m, d.lda, d.batch, d.stride_a) * ab;
  const std::size_t b_bytes = span_elems(d.trans_b ? d.n : d.k, d.ldb, d.batch, d.stride_b) * ab;
  const std::size_t c_bytes = span_elems(d.m, d.ldc, d.batch, d.stride_c) * cs;
  const std::size_t vec_bytes = static_cast<std::size_t>(std::max(d.m, d.n)) * 4;  // bias, bgrad
  const bool need_aux = plan.act_fused && d.aux;
  const bool need_vec = plan.bias_fused || plan.bgrad_fused;
  if (a_bytes + b_bytes + c_bytes * (need_aux ? 2 : 1) + vec_bytes > kTuneMaxScratchBytes) {
    return chosen;
  }

  TuneScratch scratch(stream_);
  void* a = scratch.get(a_bytes);
  void* b = a != nullptr ? scratch.get(b_bytes) : nullptr;
  void* c = b != nullptr ? scratch.get(c_bytes) : nullptr;
  void* vec = c != nullptr && need_vec ? scratch.get(vec_bytes) : nullptr;
  void* aux = c != nullptr && need_aux ? scratch.get(c_bytes) : nullptr;
  if (c == nullptr || (need_vec && vec == nullptr) || (need_aux && aux == nullptr)) return chosen;
  MIXTRAIN_CUDA_CHECK(cudaEventCreate(&scratch.start));
  MIXTRAIN_CUDA_CHECK(cudaEventCreate(&scratch.stop));
  std::vector<unsigned char> host;
  fill_pattern(a, a_bytes, d.a.dtype, stream_, host);
  fill_pattern(b, b_bytes, d.a.dtype, stream_, host);
  fill_pattern(c, c_bytes, d.c.dtype, stream_, host);
  if (plan.bias_fused) fill_pattern(vec, vec_bytes, d.c.dtype, stream_, host);

  // A training step reads weights the optimizer streamed out of L2 long before: every timed launch
  // starts with an L2 that holds other data, else candidates that only win on operands already in
  // L2 get picked. The flush reads twice the L2 size, leaving clean lines: a flush that wrote
  // (a memset) left dirty ones whose write-back ate DRAM bandwidth during the timed launch, which
  // favoured large tiles with few blocks (64-96 on 132 SMs) that then ran 30% slower in the step.
  // Without a flush buffer (no L2 size reported) the timed launches follow each other unflushed.
  // Our A, in every product of a dense layer, is what the kernel before it has just written (the
  // layer input in the forward pass, dz in both backward products): when it fits in half the L2 it
  // is read back in after the flush, as it would sit in L2 in the step.
  void* flush = l2_bytes_ > 0 ? scratch.get(2 * l2_bytes_) : nullptr;
  const bool warm_a = a_bytes <= l2_bytes_ / 2;
  const auto flush_l2 = [&] {
    if (flush == nullptr) return;
    read_through(flush, 2 * l2_bytes_);
    if (warm_a) read_through(a, a_bytes);
  };

  // The descriptor points at the scratch epilogue buffers while timing; gemm() sets the real
  // pointers before every call anyway, and they are restored below.
  const auto point = [&](const void* vec_ptr, void* aux_ptr) {
    if (plan.bias_fused || plan.bgrad_fused) {
      set_attr(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, vec_ptr);
    }
    if (need_aux) set_attr(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux_ptr);
  };
  point(vec, aux);
  const float alpha = d.alpha;
  const float beta = d.bias && !plan.bias_fused ? 1.0f : d.beta;  // as gemm() calls it
  const auto launch = [&](int i) {
    return cublasLtMatmul(lt_, plan.op, &alpha, b, plan.a, a, plan.b, &beta, c, plan.c, c, plan.c,
                          &results[i].algo, workspace_, workspace_bytes_, stream_);
  };
  std::vector<float> ms(static_cast<std::size_t>(returned), -1.0f);
  for (const int i : cands) {
    bool ok = true;
    for (int r = 0; r < kTuneWarmup && ok; ++r) ok = launch(i) == CUBLAS_STATUS_SUCCESS;
    std::vector<float> times;
    for (int r = 0; r < kTuneTimed && ok; ++r) {
      flush_l2();
      MIXTRAIN_CUDA_CHECK(cudaEventRecord(scratch.start, stream_));
      ok = launch(i) == CUBLAS_STATUS_SUCCESS;
      MIXTRAIN_CUDA_CHECK(cudaEventRecord(scratch.stop, stream_));
      MIXTRAIN_CUDA_CHECK(cudaEventSynchronize(scratch.stop));
      float elapsed = 0.0f;
      MIXTRAIN_CUDA_CHECK(cudaEventElapsedTime(&elapsed, scratch.start, scratch.stop));
      times.push_back(elapsed);
    }
    if (!ok) {  // a candidate cuBLASLt refuses to run: skipped
      (void)cudaGetLastError();
      MIXTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream_));
      continue;
    }
    std::nth_element(times.begin(), times.begin() + kTuneTimed / 2, times.end());
    ms[static_cast<std::size_t>(i)] = times[kTuneTimed / 2];
  }
  MIXTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  point(plan.bias_fused ? d.bias.ptr : plan.bgrad_fused ? d.bias_grad.ptr : nullptr, d.aux.ptr);

  int best = -1;
  for (const int i : cands) {
    const float t = ms[static_cast<std::size_t>(i)];
    if (t >= 0.0f && (best < 0 || t < ms[static_cast<std::size_t>(best)])) best = i;
  }
  if (best < 0) return chosen;
  const float base = ms[static_cast<std::size_t>(chosen)];
  if (base >= 0.0f && ms[static_cast<std::size_t>(best)] >= base * (1.0f - kTuneMargin)) {
    return chosen;
  }
  return best;
}

GemmPlan& CudaBackend::gemm_plan(const GemmDesc& d) {
  const cudaDataType_t ab_type = cuda_type(d.a.dtype, "operands");
  const cudaDataType_t c_type = cuda_type(d.c.dtype, "output");
  const bool batched = d.batch > 1;
  const std::size_t ab_size = dtype_size(d.a.dtype), c_size = dtype_size(d.c.dtype);
  const bool tf32 = d.allow_tf32 && d.a.dtype == DType::F32;
  const std::int64_t align_a = alignment(d.a.ptr, d.stride_a, ab_size, batched);
  const std::int64_t align_b = alignment(d.b.ptr, d.stride_b, ab_size, batched);
  const std::int64_t align_c = alignment(d.c.ptr, d.stride_c, c_size, batched);
  const std::int64_t align_bias = d.bias ? alignment(d.bias.ptr, 0, 1, false) : 0;
  const std::int64_t align_aux = d.aux ? alignment(d.aux.ptr, 0, 1, false) : 0;
  const std::int64_t align_bgrad = d.bias_grad ? alignment(d.bias_grad.ptr, 0, 1, false) : 0;
  const GemmKey key{d.trans_a,
                    d.trans_b,
                    d.m,
                    d.n,
                    d.k,
                    d.lda,
                    d.ldb,
                    d.ldc,
                    static_cast<std::int64_t>(d.a.dtype),
                    static_cast<std::int64_t>(d.c.dtype),
                    d.bias ? 1 + static_cast<std::int64_t>(d.bias.dtype) : 0,
                    d.batch,
                    batched ? d.stride_a : 0,
                    batched ? d.stride_b : 0,
                    batched ? d.stride_c : 0,
                    tf32,
                    align_a,
                    align_b,
                    align_c,
                    align_bias,
                    static_cast<std::int64_t>(d.epilogue),
                    align_aux,
                    d.bias_grad ? 1 + static_cast<std::int64_t>(d.bias_grad_operand) : 0,
                    d.bias_grad ? 1 + static_cast<std::int64_t>(d.bias_grad.dtype) : 0,
                    align_bgrad,
                    d.alpha == 1.0f,
                    d.beta == 0.0f};
  const auto found = gemm_plans_.find(key);
  if (found != gemm_plans_.end()) return *found->second;

  std::unique_ptr<GemmPlan, GemmPlanDeleter> plan(new GemmPlan);
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cublasOperation_t op_a = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A = our B
  const cublasOperation_t op_b = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B = our A
  // Column-major dimensions: M' = n, N' = m, K = k. A stored matrix's rows and columns are those
  // of the operand before its transposition.
  plan->a = make_layout(ab_type, d.trans_b ? d.k : d.n, d.trans_b ? d.n : d.k, d.ldb, d.batch,
                        d.stride_b);
  plan->b = make_layout(ab_type, d.trans_a ? d.m : d.k, d.trans_a ? d.k : d.m, d.lda, d.batch,
                        d.stride_a);
  plan->c = make_layout(c_type, d.n, d.m, d.ldc, d.batch, d.stride_c);

  cublasLtMatmulPreference_t pref = nullptr;
  MIXTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  constexpr int kRequested = kHeuristicResults;
  cublasLtMatmulHeuristicResult_t results[kRequested] = {};
  int returned = 0;
  // A fresh operation descriptor per fusion tried, so no attribute of a rejected one lingers.
  const auto query = [&](const Fusion& f) {
    if (plan->op != nullptr) {
      (void)cublasLtMatmulDescDestroy(plan->op);
      plan->op = nullptr;
    }
    MIXTRAIN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, compute, CUDA_R_32F));
    set_attr(plan->op, CUBLASLT_MATMUL_DESC_TRANSA, op_a);
    set_attr(plan->op, CUBLASLT_MATMUL_DESC_TRANSB, op_b);
    const cublasLtEpilogue_t epilogue = epilogue_of(d, f);
    set_attr(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, epilogue);
    // The heuristic reads the pointers' alignment; gemm() sets the pointers of each call.
    if (f.bias) {
      const void* bias = d.bias.ptr;
      set_attr(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
    } else if (f.bgrad) {
      void* bgrad = d.bias_grad.ptr;
      set_attr(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bgrad);
      // The bias gradient is f32 (summed in fp32 and kept so) also under an fp16/bf16 product.
      if (c_type != CUDA_R_32F) {
        set_attr(plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                 static_cast<std::int32_t>(CUDA_R_32F));
      }
    }
    if (f.act && d.aux) {
      void* aux = d.aux.ptr;
      set_attr(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
      set_attr(plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, d.ldc);
    }
    returned = 0;
    const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(
        lt_, plan->op, plan->a, plan->b, plan->c, plan->c, pref, kRequested, results, &returned);
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED &&
        st != CUBLAS_STATUS_INVALID_VALUE) {
      MIXTRAIN_CUBLAS_CHECK(st);
    }
    if (st != CUBLAS_STATUS_SUCCESS) returned = 0;
    int usable = 0;
    for (int i = 0; i < returned; ++i) usable += results[i].state == CUBLAS_STATUS_SUCCESS ? 1 : 0;
    if (usable == 0) returned = 0;
  };
  try {
    const std::uint64_t workspace = workspace_bytes_;
    MIXTRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof workspace));
    // Without a fused activation the product is written to aux instead of C (laid out alike):
    // the algorithm must accept both pointers.
    const std::int64_t align_d = d.aux ? std::min(align_c, align_aux) : align_c;
    const std::uint32_t aligns[4] = {
        static_cast<std::uint32_t>(align_b), static_cast<std::uint32_t>(align_a),
        static_cast<std::uint32_t>(align_d), static_cast<std::uint32_t>(align_d)};
    const cublasLtMatmulPreferenceAttributes_t align_attrs[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 4; ++i) {
      MIXTRAIN_CUBLAS_CHECK(
          cublasLtMatmulPreferenceSetAttribute(pref, align_attrs[i], &aligns[i], sizeof aligns[i]));
    }
    // Most fused first; the last candidate fuses nothing.
    for (const Fusion& f : candidates(d, fused_epilogues_)) {
      query(f);
      if (returned > 0) {
        plan->bias_fused = f.bias;
        plan->act_fused = f.act;
        plan->bgrad_fused = f.bgrad;
        break;
      }
    }
  } catch (...) {
    (void)cublasLtMatmulPreferenceDestroy(pref);
    throw;
  }
  (void)cublasLtMatmulPreferenceDestroy(pref);
  int chosen = -1;
  for (int i = 0; i < returned && chosen < 0; ++i) {
    if (results[i].state == CUBLAS_STATUS_SUCCESS) chosen = i;
  }
  if (chosen < 0) {
    throw DeviceError("cuBLASLt has no algorithm for " + describe(d) + " (alignments A " +
                      std::to_string(align_a) + ", B " + std::to_string(align_b) + ", C " +
                      std::to_string(align_c) + " bytes)");
  }
  // Autotuning: only outside a capture (the planning pass, eager steps, calls outside run_step),
  // since it allocates, copies and synchronises.
  if (gemm_autotune_ && returned > 1 && !capturing_ && !stream_capturing(stream_)) {
    TunedKey tkey{};
    std::copy(key.begin(), key.end(), tkey.begin());
    tkey[key.size()] = device_;
    tkey[key.size() + 1] = (plan->bias_fused ? 1 : 0) | (plan->act_fused ? 2 : 0) |
                           (plan->bgrad_fused ? 4 : 0) | (fused_epilogues_ ? 8 : 0);
    int pick = -1;
    {
      const std::lock_guard<std::mutex> lock(tuned_mutex);
      const auto known = tuned_algos().find(tkey);
      if (known != tuned_algos().end()) {
        for (int i = 0; i < returned && pick < 0; ++i) {
          if (results[i].state == CUBLAS_STATUS_SUCCESS &&
              same_algo(results[i].algo, known->second)) {
            pick = i;
          }
        }
      }
    }
    if (pick < 0) {
      pick = gemm_autotune(*plan, d, results, returned, chosen);
      const std::lock_guard<std::mutex> lock(tuned_mutex);
      tuned_algos()[tkey] = results[pick].algo;
    }
    chosen = pick;
  }
  plan->algo = results[chosen].algo;
  return *gemm_plans_.emplace(key, std::move(plan)).first->second;
}

void CudaBackend::gemm(const GemmDesc& d) {
  if (d.a.dtype != d.b.dtype) {
    throw Error("internal: gemm operands differ in dtype (" + std::string(dtype_name(d.a.dtype)) +
                " and " + std::string(dtype_name(d.b.dtype)) + ")");
  }
  (void)cuda_type(d.a.dtype, "operands");
  (void)cuda_type(d.c.dtype, "output");
  if (d.bias) (void)cuda_type(d.bias.dtype, "bias");
  check_gemm_epilogue(d);
  if (d.bias_grad && d.bias_grad.dtype != DType::F32) {
    throw Error("internal: gemm bias_grad on the cuda backend is f32, not " +
                std::string(dtype_name(d.bias_grad.dtype)));
  }
  const bool act = d.epilogue != Activation::Identity;
  // The bias gradient apart: the column sums of the stored operand, as bias_grad() computes them.
  const auto separate_bias_grad = [&] {
    const bool of_a = d.bias_grad_operand == GemmOperand::A;
    bias_grad(of_a ? d.a : d.b, d.bias_grad, d.k, of_a ? d.m : d.n, false);
  };
  if (d.m <= 0 || d.n <= 0 || d.batch <= 0) {
    if (d.bias_grad) separate_bias_grad();
    return;
  }
  // Where the product (plus bias) lands when the activation is not fused: the aux buffer when
  // there is one (the activation then reads it and writes C), otherwise C (activation in place).
  const Buf z_out = d.aux ? d.aux : d.c;
  if (d.k <= 0) {  // an empty product: C = act(beta * C + bias), aux = beta * C + bias
    gemm_epilogue_only(d, act ? z_out : d.c, d.beta, static_cast<bool>(d.bias));
    if (act) gemm_activation(d, z_out);
    if (d.bias_grad) separate_bias_grad();
    return;
  }
  if (skinny_gemm(d)) return;
  GemmPlan& plan = gemm_plan(d);
  if (d.bias_grad && !plan.bgrad_fused) separate_bias_grad();  // validates in planning too
  if (planning()) return;
  // Without the activation fused, the product goes to z_out and the activation follows.
  const Buf target = act && !plan.act_fused ? z_out : d.c;
  float beta = d.beta;
  if (d.bias && !plan.bias_fused) {  // seed the target with beta * C + bias, then accumulate
    gemm_epilogue_only(d, target, d.beta, true);
    beta = 1.0f;
  }
  if (plan.bias_fused) {
    const void* bias = d.bias.ptr;
    set_attr(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  } else if (plan.bgrad_fused) {
    void* bgrad = d.bias_grad.ptr;
    set_attr(plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, bgrad);
  }
  if (plan.act_fused && d.aux) {
    void* aux = d.aux.ptr;
    set_attr(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, aux);
  }
  const float alpha = d.alpha;
  MIXTRAIN_CUBLAS_CHECK(cublasLtMatmul(lt_, plan.op, &alpha, d.b.ptr, plan.a, d.a.ptr, plan.b,
                                       &beta, target.ptr, plan.c, target.ptr, plan.c, &plan.algo,
                                       workspace_, workspace_bytes_, stream_));
  if (act && !plan.act_fused) gemm_activation(d, target);
}

}  // namespace mixtrain::cuda
