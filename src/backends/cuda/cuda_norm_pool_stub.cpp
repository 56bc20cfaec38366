// Placeholders for the batch-norm and pooling ops on CUDA: they compile and throw, so that the CUDA
// build keeps building while the cuDNN implementation (channels-last, tensor cores) is written. A
// model with conv2d, batch_norm or pooling layers trains on the CPU backend meanwhile.
#include <string>

#include "backends/cuda/cuda_backend.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cuda {

namespace {

[[noreturn]] void not_yet(const char* op) {
  throw DeviceError(std::string(op) +
                    " is not implemented on CUDA yet (conv2d, batch_norm and pooling layers run "
                    "on the CPU backend: --device cpu)");
}

}  // namespace

void CudaBackend::batch_norm_forward_training(CBuf, CBuf, CBuf, Buf, Buf, Buf, std::int64_t,
                                              std::int64_t, float) {
  not_yet("batch_norm");
}
void CudaBackend::batch_norm_forward_inference(CBuf, CBuf, CBuf, CBuf, CBuf, Buf, std::int64_t,
                                               std::int64_t, float) {
  not_yet("batch_norm");
}
void CudaBackend::batch_norm_backward(CBuf, CBuf, CBuf, CBuf, CBuf, Buf, Buf, Buf, std::int64_t,
                                      std::int64_t, bool) {
  not_yet("batch_norm");
}
void CudaBackend::batch_norm_update_running(CBuf, CBuf, Buf, Buf, std::int64_t, float, std::int64_t,
                                            float, const StepControl*) {
  not_yet("batch_norm");
}
void CudaBackend::max_pool2d_forward(const PoolDesc&, CBuf, Buf) {
  not_yet("max_pool2d");
}
void CudaBackend::max_pool2d_backward(const PoolDesc&, CBuf, CBuf, CBuf, Buf, bool) {
  not_yet("max_pool2d");
}
void CudaBackend::avg_pool2d_forward(const PoolDesc&, CBuf, Buf) {
  not_yet("avg_pool2d");
}
void CudaBackend::avg_pool2d_backward(const PoolDesc&, CBuf, Buf, bool) {
  not_yet("avg_pool2d");
}
void CudaBackend::global_avg_pool_forward(CBuf, Buf, std::int64_t, std::int64_t, std::int64_t) {
  not_yet("global_avg_pool");
}
void CudaBackend::global_avg_pool_backward(CBuf, Buf, std::int64_t, std::int64_t, std::int64_t,
                                           bool) {
  not_yet("global_avg_pool");
}

}  // namespace mixtrain::cuda
