// Host-side IEEE binary16 and bfloat16 storage types with exact round-to-nearest-even
// conversions. FP16 overflows to +-inf beyond 65504 exactly as GPU hardware does, so the loss
// scaler meets the same overflows on the CPU backend as on the GPU.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__F16C__) && !defined(__CUDACC__)
#include <immintrin.h>
#endif

namespace mixtrain {

struct f16 {
  std::uint16_t bits;
};
struct bf16 {
  std::uint16_t bits;
};

inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  std::uint32_t bits;
  if (exp == 0x1F) {  // inf or nan
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    std::uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3FFu) << 13);
  }
  return std::bit_cast<float>(bits);
}

inline std::uint16_t float_to_f16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {  // inf or nan (keep nan quiet and non-zero)
    return static_cast<std::uint16_t>(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0u));
  }
  if (ax >= 0x477FF000u) {  // rounds to >= 65520: overflow to inf
    return static_cast<std::uint16_t>(sign | 0x7C00u);
  }
  if (ax < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    // Adding 0.5 in float aligns the mantissa so that the float adder rounds to nearest even.
    const float r = std::bit_cast<float>(ax) + 0.5f;
    return static_cast<std::uint16_t>(sign | (std::bit_cast<std::uint32_t>(r) - 0x3F000000u));
  }
  const std::uint32_t odd = (ax >> 13) & 1u;
  const std::uint32_t rounded = ax + 0xC8000FFFu + odd;  // rebias exponent, add rounding bias
  return static_cast<std::uint16_t>(sign | (rounded >> 13));
}

inline float bf16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {  // nan: keep it a quiet nan
    return static_cast<std::uint16_t>((x >> 16) | 0x40u);
  }
  const std::uint32_t rounding = 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

// Element access used by kernels templated on the storage type: load converts to float, store
// rounds from float. double (DType::F64, the CPU backend's float64 reference) loads and stores
// double.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
template <>
struct Elem<f16> {
#if defined(__F16C__) && !defined(__CUDACC__)
  // The hardware conversions round exactly like the functions above (the tests compare them on
  // every half and on ~10^6 floats) and cost one instruction instead of a dozen.
  static float load(f16 v) {
    return _cvtsh_ss(v.bits);
  }
  static f16 store(float v) {
    return f16{static_cast<std::uint16_t>(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT))};
  }
#else
  static float load(f16 v) {
    return f16_to_float(v.bits);
  }
  static f16 store(float v) {
    return f16{float_to_f16(v)};
  }
#endif
};
template <>
struct Elem<bf16> {
  static float load(bf16 v) { return bf16_to_float(v.bits); }
  static bf16 store(float v) { return bf16{float_to_bf16(v)}; }
};
template <>
struct Elem<double> {
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};

// float for float, f16 and bf16; double for double.
template <typename T>
inline auto load(const T& v) {
  return Elem<T>::load(v);
}
// Rounds v to T. A double v stored to f16 or bf16 passes through float first.
template <typename T, typename V>
inline T store(V v) {
  return Elem<T>::store(v);
}

// Rounds a float through a storage type (identity for float).
template <typename T>
inline float round_to(float v) {
  return load(store<T>(v));
}

}  // namespace mixtrain
