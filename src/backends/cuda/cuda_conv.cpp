// Convolution through cuDNN, channels-last (NHWC activations, KRSC filters) so that FP16 and BF16
// run on tensor cores. It uses cuDNN's long-standing convolution API (cudnnConvolutionForward and
// the two backward calls), which cuDNN 9 still ships and supports; docs/cuda.md says why not the
// graph API yet. Per shape (ConvKey) the descriptors are built once; per direction the algorithm
// is chosen on first use by timing cuDNN's candidates (cudnnFind*AlgorithmEx on scratch outputs),
// preferring deterministic ones, and recorded for the whole process, so that a captured step
// replays the same algorithms and every backend of the process gives the same bits.
//
// Accumulation is in fp32 for every dtype (the convolution's compute type). Strict FP32 asks for
// FMA-only kernels; TF32 only when the ConvDesc allows it. cuDNN writes the weight gradient in
// the tensor dtype: for FP16/BF16 it lands in the workspace and is widened into the fp32 gradient.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <utility>

#include "backends/cuda/cuda_backend.hpp"
#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cuda_host.hpp"
#include "backends/cuda/cudnn_check.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cuda {

// An algorithm of one direction and what it needs.
struct ConvAlgo {
  bool ready = false;
  int algo = 0;
  std::size_t workspace = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

struct ConvPlan {
  ConvKey key{};
  cudnnTensorDescriptor_t x = nullptr;
  cudnnTensorDescriptor_t y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnDataType_t dtype = CUDNN_DATA_FLOAT;
  cudnnMathType_t requested_math = CUDNN_DEFAULT_MATH;
  bool strict_fp32 = false;
  std::size_t x_bytes = 0, y_bytes = 0, w_bytes = 0;
  std::int64_t w_count = 0;
  ConvAlgo forward, backward_data, backward_filter;

  ~ConvPlan() {
    if (conv != nullptr) (void)cudnnDestroyConvolutionDescriptor(conv);
    if (w != nullptr) (void)cudnnDestroyFilterDescriptor(w);
    if (y != nullptr) (void)cudnnDestroyTensorDescriptor(y);
    if (x != nullptr) (void)cudnnDestroyTensorDescriptor(x);
  }
};

void ConvPlanDeleter::operator()(ConvPlan* plan) const noexcept {
  delete plan;
}

namespace {

constexpr std::size_t kAlign = 256;
// The most workspace an algorithm may ask for; cuDNN's fastest kernels rarely need more.
constexpr std::size_t kMaxAlgoWorkspace = std::size_t{1} << 30;

std::size_t round_up(std::size_t bytes) {
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

cudnnDataType_t cudnn_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDNN_DATA_FLOAT;
    case DType::F16:
      return CUDNN_DATA_HALF;
    case DType::BF16:
      return CUDNN_DATA_BFLOAT16;
    default:
      break;
  }
  unsupported_dtype("conv2d", t);
}

int as_int(std::int64_t v, const char* what) {
  if (v < 0 || v > std::numeric_limits<int>::max()) {
    throw Error(std::string("conv2d on CUDA: ") + what + " = " + std::to_string(v) +
                " does not fit cuDNN's 32-bit descriptors");
  }
  return static_cast<int>(v);
}

std::string describe(const ConvDesc& d) {
  return "x [" + std::to_string(d.N) + ", " + std::to_string(d.H) + ", " + std::to_string(d.W) +
         ", " + std::to_string(d.C) + "], " + std::to_string(d.K) + " filters " +
         std::to_string(d.R) + "x" + std::to_string(d.S) + ", stride " +
         std::to_string(d.stride_h) + "x" + std::to_string(d.stride_w) + ", padding " +
         std::to_string(d.pad_h) + "x" + std::to_string(d.pad_w) + ", output " +
         std::to_string(d.P) + "x" + std::to_string(d.Q);
}

// A scratch device buffer for one algorithm search, freed when it goes out of scope.
class Scratch {
 public:
  explicit Scratch(std::size_t bytes) {
    MIXTRAIN_CUDA_CHECK(cudaMalloc(&ptr_, std::max<std::size_t>(bytes, kAlign)));
  }
  ~Scratch() { (void)cudaFree(ptr_); }
  Scratch(Scratch&& other) noexcept : ptr_(std::exchange(other.ptr_, nullptr)) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  Scratch& operator=(Scratch&&) = delete;
  void* get() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
};

// The workspace an algorithm search may offer: what is free, within kMaxAlgoWorkspace.
std::size_t search_workspace() {
  std::size_t free_bytes = 0, total = 0;
  MIXTRAIN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
  return std::min(kMaxAlgoWorkspace, free_bytes / 4);
}

// Picks a usable result: it must have succeeded, fit the workspace, keep strict FP32 off tensor
// cores, and be deterministic when any such one exists. Among those within kTimeSlack of the
// fastest, the one needing the least workspace wins: a few percent of one convolution's time is
// not worth hundreds of MiB of device memory held for the whole run.
constexpr float kTimeSlack = 1.05f;

template <typename Perf>
ConvAlgo pick(const Perf* perf, int returned, const ConvPlan& p, std::size_t workspace_limit,
              const char* direction, const ConvDesc& d) {
  for (const bool need_deterministic : {true, false}) {
    const auto usable = [&](const Perf& r) {
      return r.status == CUDNN_STATUS_SUCCESS && r.memory <= workspace_limit &&
             (!p.strict_fp32 || r.mathType == CUDNN_FMA_MATH) &&
             (!need_deterministic || r.determinism == CUDNN_DETERMINISTIC);
    };
    float fastest = -1.0f;
    for (int i = 0; i < returned; ++i) {
      if (usable(perf[i]) && (fastest < 0.0f || perf[i].time < fastest)) fastest = perf[i].time;
    }
    if (fastest < 0.0f) continue;
    const Perf* best = nullptr;
    for (int i = 0; i < returned; ++i) {
      const Perf& r = perf[i];
      if (!usable(r) || r.time > fastest * kTimeSlack) continue;
      if (best == nullptr || r.memory < best->memory) best = &r;
    }
    return ConvAlgo{true, static_cast<int>(best->algo), best->memory, best->mathType};
  }
  throw DeviceError(std::string("conv2d on CUDA: cuDNN has no ") + direction + " algorithm for " +
                    describe(d) + (p.strict_fp32 ? " in strict fp32" : ""));
}

// Times cuDNN's candidates of one direction: `find(out, &returned, perf, workspace, bytes)` runs
// its cudnnFind*AlgorithmEx on a scratch output of out_bytes and a scratch workspace of what the
// device can spare; pick() chooses among the results. The caller hands find scratch inputs filled
// by fill_search_data (SearchInputs), not the step's buffers: the search runs while the plan is
// built, before anything wrote them, and cuDNN's kernels would read uninitialised memory
// (compute-sanitizer's initcheck reported it) and be timed on whatever it held.
template <typename Perf, int kCount, typename Find>
ConvAlgo search(const ConvPlan& p, std::size_t out_bytes, const char* direction, const ConvDesc& d,
                Find&& find) {
  const std::size_t limit = search_workspace();
  Scratch out(out_bytes), workspace(limit);
  Perf perf[kCount];
  int returned = 0;
  // A launch leaves the descriptor on the math type of the algorithm it ran; find* searches
  // within the descriptor's math type, so put back what this plan asks for.
  MIXTRAIN_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.requested_math));
  find(out.get(), &returned, perf, workspace.get(), limit);
  return pick(perf, returned, p, limit, direction, d);
}

// The two operands a search reads, in scratch memory that `fill(buf, count)` writes.
struct SearchInputs {
  Scratch a, b;
};

template <typename Fill>
SearchInputs search_inputs(std::size_t a_bytes, std::size_t b_bytes, DType t, Fill&& fill) {
  SearchInputs in{Scratch(a_bytes), Scratch(b_bytes)};
  const auto es = dtype_size(t);
  fill(Buf{in.a.get(), t}, static_cast<std::int64_t>(a_bytes / es));
  fill(Buf{in.b.get(), t}, static_cast<std::int64_t>(b_bytes / es));
  return in;
}

enum Direction : int { kForward, kBackwardData, kBackwardFilter };

// The process-wide record of chosen algorithms, so that backends of one process (a graph run and
// an eager run, two trainers) use the same algorithm for the same convolution and give the same
// bits, and search only once. Keyed by device, direction and ConvKey.
using ChosenKey = std::tuple<int, int, ConvKey>;
std::mutex chosen_mutex;
std::map<ChosenKey, ConvAlgo>& chosen_algos() {
  static std::map<ChosenKey, ConvAlgo> algos;
  return algos;
}

// Fills `slot` from the record, else runs `search` (which times cuDNN's candidates) and records
// its choice.
template <typename Search>
void choose(ConvAlgo& slot, int device, Direction direction, const ConvKey& key, bool capturing,
            Search&& search) {
  if (slot.ready) return;
  const ChosenKey chosen{device, direction, key};
  {
    const std::lock_guard<std::mutex> lock(chosen_mutex);
    const auto known = chosen_algos().find(chosen);
    if (known != chosen_algos().end()) {
      slot = known->second;
      return;
    }
  }
  if (capturing) throw DeviceError("internal: conv2d algorithm search inside a capture");
  slot = search();
  const std::lock_guard<std::mutex> lock(chosen_mutex);
  chosen_algos().emplace(chosen, slot);
}

}  // namespace

void CudaBackend::release_conv() noexcept {
  conv_plans_.clear();
  conv_workspace_ = nullptr;  // freed with the other allocations
  conv_workspace_bytes_ = 0;
  if (dnn_ != nullptr) (void)cudnnDestroy(dnn_);
  dnn_ = nullptr;
}

void CudaBackend::reserve_conv_workspace(std::size_t bytes) {
  if (bytes <= conv_workspace_bytes_) return;
  if (capturing_) throw DeviceError("internal: conv2d workspace grows inside a captured step");
  // Captured steps hold the old address: drop them (they are captured again on their next run).
  MIXTRAIN_CUDA_CHECK(drop_graphs());
  free(conv_workspace_);
  conv_workspace_ = nullptr;
  conv_workspace_bytes_ = 0;
  const std::size_t grown = round_up(bytes);
  conv_workspace_ = allocate(grown);
  conv_workspace_bytes_ = grown;
}

ConvPlan& CudaBackend::conv_plan(const ConvDesc& d, DType t) {
  const ConvKey key{static_cast<std::int64_t>(t),
                    d.N,
                    d.H,
                    d.W,
                    d.C,
                    d.K,
                    d.R,
                    d.S,
                    d.stride_h,
                    d.stride_w,
                    d.pad_h,
                    d.pad_w,
                    d.dilation_h,
                    d.dilation_w,
                    d.groups,
                    d.P,
                    d.Q,
                    d.allow_tf32 ? 1 : 0};
  const auto found = conv_plans_.find(key);
  if (found != conv_plans_.end()) return *found->second;
  if (capturing_) throw DeviceError("internal: conv2d plan created inside a captured step");

  if (d.groups <= 0 || d.C % d.groups != 0 || d.K % d.groups != 0) {
    throw Error("internal: conv2d groups " + std::to_string(d.groups) + " must divide C " +
                std::to_string(d.C) + " and K " + std::to_string(d.K));
  }
  if (dnn_ == nullptr) {
    cudnnHandle_t handle = nullptr;
    MIXTRAIN_CUDNN_CHECK(cudnnCreate(&handle));
    dnn_ = handle;
    MIXTRAIN_CUDNN_CHECK(cudnnSetStream(dnn_, stream_));
  }

  std::unique_ptr<ConvPlan, ConvPlanDeleter> plan(new ConvPlan);
  ConvPlan& p = *plan;
  p.key = key;
  p.dtype = cudnn_type(t);
  p.strict_fp32 = t == DType::F32 && !d.allow_tf32;
  p.requested_math = t != DType::F32 ? CUDNN_TENSOR_OP_MATH
                     : d.allow_tf32  ? CUDNN_DEFAULT_MATH
                                     : CUDNN_FMA_MATH;
  const std::size_t es = dtype_size(t);
  p.x_bytes = static_cast<std::size_t>(d.N * d.H * d.W * d.C) * es;
  p.y_bytes = static_cast<std::size_t>(d.N * d.P * d.Q * d.K) * es;
  p.w_count = d.K * d.R * d.S * (d.C / d.groups);
  p.w_bytes = static_cast<std::size_t>(p.w_count) * es;
  as_int(d.N * d.H * d.W * d.C, "input elements");
  as_int(d.N * d.P * d.Q * d.K, "output elements");

  MIXTRAIN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.x));
  MIXTRAIN_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.y));
  MIXTRAIN_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p.w));
  MIXTRAIN_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p.conv));
  MIXTRAIN_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, CUDNN_TENSOR_NHWC, p.dtype, as_int(d.N, "N"),
                                                  as_int(d.C, "C"), as_int(d.H, "H"),
                                                  as_int(d.W, "W")));
  MIXTRAIN_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, p.dtype, CUDNN_TENSOR_NHWC, as_int(d.K, "K"),
                                                  as_int(d.C / d.groups, "C"), as_int(d.R, "R"),
                                                  as_int(d.S, "S")));
  MIXTRAIN_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(
      p.conv, as_int(d.pad_h, "pad_h"), as_int(d.pad_w, "pad_w"), as_int(d.stride_h, "stride_h"),
      as_int(d.stride_w, "stride_w"), as_int(d.dilation_h, "dilation_h"),
      as_int(d.dilation_w, "dilation_w"), CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  MIXTRAIN_CUDNN_CHECK(cudnnSetConvolutionGroupCount(p.conv, as_int(d.groups, "groups")));
  MIXTRAIN_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.requested_math));
  // cuDNN pads both sides alike; the layer may ask for one more row or column at the bottom or
  // right ("same" with an odd total padding), which this path does not offer.
  int n = 0, k = 0, out_h = 0, out_w = 0;
  MIXTRAIN_CUDNN_CHECK(
      cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, &n, &k, &out_h, &out_w));
  if (out_h != d.P || out_w != d.Q || n != d.N || k != d.K) {
    throw DeviceError("conv2d on CUDA needs the same padding on both sides (" + describe(d) +
                      "; cuDNN's symmetric padding gives " + std::to_string(out_h) + "x" +
                      std::to_string(out_w) +
                      "): give an explicit padding instead of \"same\" for this layer");
  }
  MIXTRAIN_CUDNN_CHECK(
      cudnnSetTensor4dDescriptor(p.y, CUDNN_TENSOR_NHWC, p.dtype, n, k, out_h, out_w));
  return *conv_plans_.emplace(key, std::move(plan)).first->second;
}

void CudaBackend::conv2d_forward(const ConvDesc& d, CBuf x, CBuf w, CBuf bias, Buf y) {
  require_same(x.dtype, w.dtype, "conv2d");
  require_same(x.dtype, y.dtype, "conv2d");
  ConvPlan& p = conv_plan(d, x.dtype);
  const auto search_fill = [this](Buf b, std::int64_t n) { fill_search_data(b, n); };
  choose(p.forward, device_, kForward, p.key, capturing_, [&] {
    const SearchInputs in = search_inputs(p.x_bytes, p.w_bytes, x.dtype, search_fill);
    return search<cudnnConvolutionFwdAlgoPerf_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
        p, p.y_bytes, "forward", d,
        [&](void* out, int* returned, auto* perf, void* ws, auto ws_bytes) {
          MIXTRAIN_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
              dnn_, p.x, in.a.get(), p.w, in.b.get(), p.conv, p.y, out,
              CUDNN_CONVOLUTION_FWD_ALGO_COUNT, returned, perf, ws, ws_bytes));
        });
  });
  reserve_conv_workspace(p.forward.workspace);
  if (planning()) return;
  const float one = 1.0f, zero = 0.0f;
  MIXTRAIN_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.forward.math));
  MIXTRAIN_CUDNN_CHECK(
      cudnnConvolutionForward(dnn_, &one, p.x, x.ptr, p.w, w.ptr, p.conv,
                              static_cast<cudnnConvolutionFwdAlgo_t>(p.forward.algo),
                              conv_workspace_, p.forward.workspace, &zero, p.y, y.ptr));
  if (bias) {
    // y += bias[k] over the N * P * Q rows: the GEMM bias epilogue does exactly that.
    GemmDesc e;
    e.m = d.N * d.P * d.Q;
    e.n = d.K;
    e.ldc = d.K;
    e.c = y;
    e.bias = bias;
    gemm_epilogue_only(e, y, 1.0f, true);
  }
}

void CudaBackend::conv2d_backward_data(const ConvDesc& d, CBuf dy, CBuf w, Buf dx,
                                       bool accumulate) {
  require_same(dy.dtype, w.dtype, "conv2d backward");
  require_same(dy.dtype, dx.dtype, "conv2d backward");
  ConvPlan& p = conv_plan(d, dy.dtype);
  const auto search_fill = [this](Buf b, std::int64_t n) { fill_search_data(b, n); };
  choose(p.backward_data, device_, kBackwardData, p.key, capturing_, [&] {
    const SearchInputs in = search_inputs(p.w_bytes, p.y_bytes, dy.dtype, search_fill);
    return search<cudnnConvolutionBwdDataAlgoPerf_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(
        p, p.x_bytes, "backward-data", d,
        [&](void* out, int* returned, auto* perf, void* ws, auto ws_bytes) {
          MIXTRAIN_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
              dnn_, p.w, in.a.get(), p.y, in.b.get(), p.conv, p.x, out,
              CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, returned, perf, ws, ws_bytes));
        });
  });
  reserve_conv_workspace(p.backward_data.workspace);
  if (planning()) return;
  const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  MIXTRAIN_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.backward_data.math));
  MIXTRAIN_CUDNN_CHECK(
      cudnnConvolutionBackwardData(dnn_, &one, p.w, w.ptr, p.y, dy.ptr, p.conv,
                                   static_cast<cudnnConvolutionBwdDataAlgo_t>(p.backward_data.algo),
                                   conv_workspace_, p.backward_data.workspace, &beta, p.x, dx.ptr));
}

void CudaBackend::conv2d_backward_filter(const ConvDesc& d, CBuf x, CBuf dy, Buf dw, Buf db) {
  require_same(x.dtype, dy.dtype, "conv2d backward");
  if ((dw.dtype != DType::F32 && dw.dtype != x.dtype) || (db && db.dtype != DType::F32)) {
    throw Error(
        "internal: conv2d weight gradients on the cuda backend are f32 or the tensor dtype, bias "
        "gradients f32");
  }
  ConvPlan& p = conv_plan(d, x.dtype);
  const bool widen = dw.dtype != x.dtype;  // cuDNN writes dw in the tensor dtype
  const auto search_fill = [this](Buf b, std::int64_t n) { fill_search_data(b, n); };
  choose(p.backward_filter, device_, kBackwardFilter, p.key, capturing_, [&] {
    const SearchInputs in = search_inputs(p.x_bytes, p.y_bytes, x.dtype, search_fill);
    return search<cudnnConvolutionBwdFilterAlgoPerf_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>(
        p, p.w_bytes, "backward-filter", d,
        [&](void* out, int* returned, auto* perf, void* ws, auto ws_bytes) {
          MIXTRAIN_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
              dnn_, p.x, in.a.get(), p.y, in.b.get(), p.conv, p.w, out,
              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, returned, perf, ws, ws_bytes));
        });
  });
  const std::size_t algo_bytes = round_up(p.backward_filter.workspace);
  reserve_conv_workspace(algo_bytes + (widen ? p.w_bytes : 0));
  if (!planning()) {
    void* target = widen ? static_cast<char*>(conv_workspace_) + algo_bytes : dw.ptr;
    const float one = 1.0f, zero = 0.0f;
    MIXTRAIN_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, p.backward_filter.math));
    MIXTRAIN_CUDNN_CHECK(cudnnConvolutionBackwardFilter(
        dnn_, &one, p.x, x.ptr, p.y, dy.ptr, p.conv,
        static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.backward_filter.algo), conv_workspace_,
        p.backward_filter.workspace, &zero, p.w, target));
    if (widen) convert(CBuf{target, x.dtype}, dw, p.w_count, false);
  }
  if (db) bias_grad(dy, db, d.N * d.P * d.Q, d.K, false);
}

}  // namespace mixtrain::cuda
