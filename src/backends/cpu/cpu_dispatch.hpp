// Calls f with a value of the storage type matching a runtime dtype.
#pragma once

#include <type_traits>

#include "core/half.hpp"
#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"
#include "ops/dtype_checks.hpp"  // require_same

namespace mixtrain::cpu {

template <typename F>
decltype(auto) dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::F32:
      return f(float{});
    case DType::F16:
      return f(f16{});
    case DType::BF16:
      return f(bf16{});
    case DType::F64:
      return f(double{});
    case DType::I32:
      break;
  }
  throw Error("internal: a floating dtype was expected, got i32");
}

// The arithmetic type of a kernel for storage type T: fp32 for f32, f16 and bf16 (the backend's
// rule), double for the F64 reference dtype.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename T>
T* as(void* p) {
  return static_cast<T*>(p);
}
template <typename T>
const T* as(const void* p) {
  return static_cast<const T*>(p);
}

}  // namespace mixtrain::cpu

namespace mixtrain::cpu {
// Below this many elements a loop runs on one thread: waking the pool costs more than it saves.
inline constexpr std::int64_t kParallelMin = 8192;
}  // namespace mixtrain::cpu
