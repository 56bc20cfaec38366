// Host-side checks shared by the CUDA backend's .cu and .cpp files (cuda_common.cuh, which the
// kernels include, also includes this; .cpp files such as cuda_conv.cpp cannot include that).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"
#include "ops/dtype_checks.hpp"  // require_same

namespace mixtrain::cuda {

inline bool aligned_to(const void* p, std::size_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

[[noreturn]] inline void unsupported_dtype(const char* op, DType t) {
  throw Error(std::string("internal: ") + op + " on the cuda backend takes f32, f16 or bf16, not " +
              std::string(dtype_name(t)));
}

}  // namespace mixtrain::cuda
