// Host-side dtype check shared by the backends (and usable from .cu files).
#pragma once

#include <string>

#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

// Throws Error("internal: ...") when an op's tensors disagree in dtype.
inline void require_same(DType a, DType b, const char* op) {
  if (a != b) {
    throw Error(std::string("internal: ") + op + " needs matching dtypes, got " +
                std::string(dtype_name(a)) + " and " + std::string(dtype_name(b)));
  }
}

}  // namespace mixtrain
