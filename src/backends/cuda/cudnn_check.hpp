// Error checking for cuDNN calls: every failure becomes a mixtrain::DeviceError naming the call,
// the file and line, and cuDNN's error string.
#pragma once

#include <cudnn.h>

namespace mixtrain::cuda {

[[noreturn]] void throw_cudnn_error(cudnnStatus_t status, const char* call, const char* file,
                                    int line);

}  // namespace mixtrain::cuda

#define MIXTRAIN_CUDNN_CHECK(call)                                                        \
  do {                                                                                    \
    const cudnnStatus_t mixtrain_cudnn_st_ = (call);                                      \
    if (mixtrain_cudnn_st_ != CUDNN_STATUS_SUCCESS) {                                     \
      ::mixtrain::cuda::throw_cudnn_error(mixtrain_cudnn_st_, #call, __FILE__, __LINE__); \
    }                                                                                     \
  } while (0)
