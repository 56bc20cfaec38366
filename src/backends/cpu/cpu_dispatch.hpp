// Calls f with a value of the storage type matching a runtime dtype.
#pragma once

#include "core/half.hpp"
#include "mixtrain/dtype.hpp"
#include "mixtrain/error.hpp"

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
    case DType::I32:
      break;
  }
  throw Error("internal: a floating dtype was expected, got i32");
}

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
inline constexpr std::int64_t kParallelMin = 32768;
}  // namespace mixtrain::cpu
