// Bulk widening to fp32 and rounding from fp32, vectorised with F16C where the compiler targets it.
#pragma once

#include <cstdint>

#include "core/half.hpp"

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

namespace mixtrain::cpu {

template <typename T>
inline void widen(const T* src, float* dst, std::int64_t n) {
  std::int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  if constexpr (std::is_same_v<T, f16>) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = load(src[i]);
}

template <typename T>
inline void narrow(const float* src, T* dst, std::int64_t n) {
  std::int64_t i = 0;
#if defined(__F16C__) && defined(__AVX__)
  if constexpr (std::is_same_v<T, f16>) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
    }
  }
#endif
  for (; i < n; ++i) dst[i] = store<T>(src[i]);
}

}  // namespace mixtrain::cpu
