// The CUDA backend's host side: construction, memory, transfers and step capture.
#include "backends/cuda/cuda_backend.hpp"

#include <algorithm>
#include <string>

#include "backends/cuda/cuda_check.hpp"
#include "backends/cuda/cudnn_check.hpp"
#include "core/env_switch.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace cuda {

namespace {

constexpr std::size_t kWorkspaceBytes = std::size_t{32} << 20;  // cuBLASLt
constexpr std::size_t kScratchBytes = std::size_t{4} << 20;     // reduction partials
constexpr std::size_t kRingBytes = std::size_t{16} << 20;       // pinned upload staging
constexpr std::size_t kMaxPendingCopies = 64;

// The path from "src/" on, so messages stay short and do not name the build machine's folders.
const char* short_path(const char* file) {
  const char* p = std::strstr(file, "src/");
  return p != nullptr ? p : file;
}

std::string where(const char* call, const char* file, int line) {
  return std::string(call) + " at " + short_path(file) + ":" + std::to_string(line);
}

}  // namespace

void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line) {
  throw DeviceError("CUDA error: " + where(call, file, line) + ": " + cudaGetErrorName(error) +
                    " (" + cudaGetErrorString(error) + ")");
}

void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file, int line) {
  throw DeviceError("cuDNN error: " + where(call, file, line) + ": " + cudnnGetErrorString(status));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw DeviceError("cuBLASLt error: " + where(call, file, line) + ": " +
                    cublasLtGetStatusName(status) + " (" + cublasLtGetStatusString(status) + ")");
}

CudaBackend::CudaBackend() {
  try {
    MIXTRAIN_CUDA_CHECK(cudaGetDevice(&device_));
    MIXTRAIN_CUDA_CHECK(
        cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, device_));
    int cooperative = 0;
    MIXTRAIN_CUDA_CHECK(
        cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device_));
    cooperative_launch_ = cooperative != 0;
    int l2 = 0;
    MIXTRAIN_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device_));
    l2_bytes_ = static_cast<std::size_t>(std::max(l2, 0));
    MIXTRAIN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    MIXTRAIN_CUBLAS_CHECK(cublasLtCreate(&lt_));
    workspace_bytes_ = kWorkspaceBytes;
    workspace_ = alloc(workspace_bytes_);
    scratch_bytes_ = kScratchBytes;
    scratch_ = alloc(scratch_bytes_);
    step_counters_ = static_cast<unsigned int*>(alloc(kCounters * sizeof(unsigned int)));
    prepared_step_ = alloc(kPreparedStepBytes);
    MIXTRAIN_CUDA_CHECK(
        cudaMemsetAsync(step_counters_, 0, kCounters * sizeof(unsigned int), stream_));
    void* ring = nullptr;
    MIXTRAIN_CUDA_CHECK(cudaMallocHost(&ring, kRingBytes));
    ring_ = static_cast<char*>(ring);
    ring_bytes_ = kRingBytes;
  } catch (...) {
    release();
    throw;
  }
  graphs_enabled_ = env_switch_on("MIXTRAIN_CUDA_GRAPHS");
  fused_epilogues_ = env_switch_on("MIXTRAIN_CUDA_FUSED_EPILOGUES");
  gemm_autotune_ = env_switch_on("MIXTRAIN_GEMM_AUTOTUNE");
  skinny_gemms_ = env_switch_on("MIXTRAIN_CUDA_SKINNY_GEMM");
  fused_chains_ = env_switch_on("MIXTRAIN_CUDA_FUSED_CHAIN");
}

int CudaBackend::resident_blocks_of(const void* kernel, int threads) {
  const auto known = resident_blocks_.find(kernel);
  if (known != resident_blocks_.end()) return known->second;
  int blocks = 0;
  MIXTRAIN_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, 0));
  resident_blocks_.emplace(kernel, blocks);
  return blocks;
}

CudaBackend::~CudaBackend() {
  release();
}

// Never throws: errors (a sticky fault from an earlier kernel included) are ignored while
// releasing. Safe on a partly constructed backend.
void CudaBackend::release() noexcept {
  (void)drop_graphs();  // synchronises the stream first
  gemm_plans_.clear();
  release_conv();
  for (const PendingCopy& p : pending_) (void)cudaEventDestroy(p.done);
  pending_.clear();
  for (cudaEvent_t e : spare_events_) (void)cudaEventDestroy(e);
  spare_events_.clear();
  for (auto& [ptr, bytes] : allocations_) (void)cudaFree(ptr);
  allocations_.clear();
  workspace_ = nullptr;
  scratch_ = nullptr;
  step_counters_ = nullptr;
  prepared_step_ = nullptr;
  if (ring_ != nullptr) (void)cudaFreeHost(ring_);
  ring_ = nullptr;
  if (lt_ != nullptr) (void)cublasLtDestroy(lt_);
  lt_ = nullptr;
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  stream_ = nullptr;
  (void)cudaGetLastError();
}

void CudaBackend::require_outside_step(const char* what) const {
  if (planning_ || capturing_) {
    throw DeviceError(std::string("internal: ") + what +
                      " was called inside run_step; host transfers, allocation and "
                      "synchronisation cannot be part of a captured step");
  }
}

unsigned CudaBackend::grid_for(std::int64_t items, int threads) const {
  const std::int64_t blocks = (items + threads - 1) / threads;
  const std::int64_t cap = static_cast<std::int64_t>(sm_count_) * 16;
  return static_cast<unsigned>(std::clamp<std::int64_t>(blocks, 1, cap));
}

// ---- memory ------------------------------------------------------------------------------------

void* CudaBackend::alloc(std::size_t bytes) {
  require_outside_step("alloc");
  return allocate(bytes);
}

void* CudaBackend::allocate(std::size_t bytes) {
  if (capturing_) throw DeviceError("internal: device allocation inside a captured step");
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, std::max<std::size_t>(bytes, 1));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw DeviceError("cudaMalloc of " + std::to_string(bytes) + " bytes failed with " +
                      std::to_string(in_use_) + " bytes in use by this backend: " +
                      cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
  allocations_[ptr] = bytes;
  in_use_ += bytes;
  peak_ = std::max(peak_, in_use_);
  return ptr;
}

// Called from destructors: never throws.
void CudaBackend::free(void* ptr) {
  if (ptr == nullptr) return;
  const auto it = allocations_.find(ptr);
  if (it != allocations_.end()) {
    in_use_ -= it->second;
    allocations_.erase(it);
  }
  (void)cudaFree(ptr);
}

void* CudaBackend::alloc_host(std::size_t bytes) {
  require_outside_step("alloc_host");
  void* ptr = nullptr;
  MIXTRAIN_CUDA_CHECK(cudaMallocHost(&ptr, std::max<std::size_t>(bytes, 1)));
  return ptr;
}

void CudaBackend::free_host(void* ptr) {
  if (ptr != nullptr) (void)cudaFreeHost(ptr);
}

// ---- transfers ---------------------------------------------------------------------------------

cudaEvent_t CudaBackend::take_event() {
  if (!spare_events_.empty()) {
    cudaEvent_t e = spare_events_.back();
    spare_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  MIXTRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// A region of `bytes` (at most a quarter of the ring) whose earlier copies have completed. Regions
// are handed out in ring order and copies complete in stream order, so waiting for the newest
// overlapping copy covers every older one.
std::size_t CudaBackend::stage(std::size_t bytes) {
  std::size_t begin = (ring_head_ + 255) / 256 * 256;
  if (begin + bytes > ring_bytes_) begin = 0;
  const std::size_t end = begin + bytes;
  std::size_t wait_through = 0;  // pending_[0, wait_through) must be complete
  for (std::size_t i = 0; i < pending_.size(); ++i) {
    if (pending_[i].begin < end && begin < pending_[i].end) wait_through = i + 1;
  }
  // Keep the record list short: far older copies are complete long ago.
  if (pending_.size() >= kMaxPendingCopies) {
    wait_through = std::max(wait_through, kMaxPendingCopies / 2);
  }
  if (wait_through > 0) {
    MIXTRAIN_CUDA_CHECK(cudaEventSynchronize(pending_[wait_through - 1].done));
    for (std::size_t i = 0; i < wait_through; ++i) {
      spare_events_.push_back(pending_.front().done);
      pending_.pop_front();
    }
  }
  ring_head_ = end;
  return begin;
}

void CudaBackend::upload(void* dst, const void* host_src, std::size_t bytes) {
  require_outside_step("upload");
  const std::size_t chunk_max = ring_bytes_ / 4;
  for (std::size_t done = 0; done < bytes;) {
    const std::size_t chunk = std::min(bytes - done, chunk_max);
    const std::size_t offset = stage(chunk);
    std::memcpy(ring_ + offset, static_cast<const char*>(host_src) + done, chunk);
    MIXTRAIN_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + done, ring_ + offset, chunk,
                                        cudaMemcpyHostToDevice, stream_));
    cudaEvent_t e = take_event();
    const cudaError_t err = cudaEventRecord(e, stream_);
    if (err != cudaSuccess) {
      spare_events_.push_back(e);
      MIXTRAIN_CUDA_CHECK(err);
    }
    pending_.push_back({offset, offset + chunk, e});
    done += chunk;
  }
}

void CudaBackend::download(void* host_dst, const void* src, std::size_t bytes) {
  require_outside_step("download");
  if (bytes == 0) return;
  MIXTRAIN_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  MIXTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

void CudaBackend::copy(void* dst, const void* src, std::size_t bytes) {
  if (planning_ || bytes == 0) return;
  MIXTRAIN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::synchronize() {
  require_outside_step("synchronize");
  MIXTRAIN_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

// ---- steps -------------------------------------------------------------------------------------

void CudaBackend::run_step(const std::string& key, const std::function<void()>& body) {
  if (planning_ || capturing_) throw DeviceError("internal: run_step inside run_step");
  if (!graphs_enabled_) {
    body();
    return;
  }
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    // 1. Planning pass, host only: arguments are validated and every GEMM's cuBLASLt descriptors
    //    and algorithm are chosen outside the capture, so nothing inside it allocates or queries.
    planning_ = true;
    try {
      body();
    } catch (...) {
      planning_ = false;
      throw;
    }
    planning_ = false;

    // 2. Capture. The body is issued a second time, into a graph instead of the stream.
    MIXTRAIN_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
    capturing_ = true;
    try {
      body();
    } catch (...) {
      capturing_ = false;
      cudaGraph_t partial = nullptr;
      (void)cudaStreamEndCapture(stream_, &partial);
      if (partial != nullptr) (void)cudaGraphDestroy(partial);
      (void)cudaGetLastError();
      throw;
    }
    capturing_ = false;
    cudaGraph_t graph = nullptr;
    MIXTRAIN_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    (void)cudaGraphDestroy(graph);
    MIXTRAIN_CUDA_CHECK(err);
    it = graphs_.emplace(key, exec).first;
  }
  // 3. Every call, the first included: one launch runs the whole step.
  MIXTRAIN_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
}

void CudaBackend::reset_steps() {
  require_outside_step("reset_steps");
  MIXTRAIN_CUDA_CHECK(drop_graphs());
}

cudaError_t CudaBackend::drop_graphs() noexcept {
  const cudaError_t err = stream_ != nullptr ? cudaStreamSynchronize(stream_) : cudaSuccess;
  for (auto& [key, exec] : graphs_) (void)cudaGraphExecDestroy(exec);
  graphs_.clear();
  return err;
}

}  // namespace cuda

std::unique_ptr<Backend> make_cuda_backend() {
  return std::make_unique<cuda::CudaBackend>();
}

bool cuda_device_present() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return count > 0;
}

}  // namespace mixtrain
