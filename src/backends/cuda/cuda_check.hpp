// Error checking for CUDA runtime and cuBLASLt calls. Every failure becomes a mixtrain::DeviceError
// naming the call, the file and line, and the library's error name and string.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

namespace mixtrain::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file,
                                     int line);

}  // namespace mixtrain::cuda

#define MIXTRAIN_CUDA_CHECK(call)                                                        \
  do {                                                                                   \
    const cudaError_t mixtrain_cuda_err_ = (call);                                       \
    if (mixtrain_cuda_err_ != cudaSuccess) {                                             \
      ::mixtrain::cuda::throw_cuda_error(mixtrain_cuda_err_, #call, __FILE__, __LINE__); \
    }                                                                                    \
  } while (0)

#define MIXTRAIN_CUBLAS_CHECK(call)                                                         \
  do {                                                                                      \
    const cublasStatus_t mixtrain_cublas_st_ = (call);                                      \
    if (mixtrain_cublas_st_ != CUBLAS_STATUS_SUCCESS) {                                     \
      ::mixtrain::cuda::throw_cublas_error(mixtrain_cublas_st_, #call, __FILE__, __LINE__); \
    }                                                                                       \
  } while (0)

// After every kernel launch: catches bad launch configurations (and earlier asynchronous faults)
// at the launch site.
#define MIXTRAIN_CUDA_LAUNCH_CHECK(kernel_name)                                                  \
  do {                                                                                           \
    const cudaError_t mixtrain_cuda_err_ = cudaGetLastError();                                   \
    if (mixtrain_cuda_err_ != cudaSuccess) {                                                     \
      ::mixtrain::cuda::throw_cuda_error(mixtrain_cuda_err_, "launch of " kernel_name, __FILE__, \
                                         __LINE__);                                              \
    }                                                                                            \
  } while (0)
