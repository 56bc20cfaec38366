// Contiguous runs of a storage type as the arithmetic type and back, in bulk: a copy when they are
// the same type, else the vectorised widen()/narrow() (F16C for fp16). The conv, batch-norm and
// pooling kernels work on channel rows through these instead of converting element by element.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backends/cpu/cpu_convert.hpp"

namespace mixtrain::cpu {

// dst[0, n) = src as A.
template <typename T, typename A>
inline void row_in(const T* src, A* dst, std::int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    std::copy_n(src, n, dst);
  } else {
    widen(src, dst, n);
  }
}

// dst[0, n) = src rounded once to T.
template <typename T, typename A>
inline void row_out(const A* src, T* dst, std::int64_t n) {
  if constexpr (std::is_same_v<T, A>) {
    std::copy_n(src, n, dst);
  } else {
    narrow(src, dst, n);
  }
}

// dst (+)= src, rounded once; `tmp` holds n values of A (used only to accumulate).
template <typename T, typename A>
inline void row_store(A* src, T* dst, std::int64_t n, bool accumulate, A* tmp) {
  if (accumulate) {
    row_in(dst, tmp, n);
    for (std::int64_t i = 0; i < n; ++i) src[i] += tmp[i];
  }
  row_out(src, dst, n);
}

}  // namespace mixtrain::cpu
