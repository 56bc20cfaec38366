// Element types of device buffers. The dtype is a runtime property of each buffer: one binary
// trains FP32, FP16 and BF16 side by side.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace mixtrain {

enum class DType : std::uint8_t {
  F32,   // IEEE binary32
  F16,   // IEEE binary16: 10-bit mantissa, max 65504, overflows to inf
  BF16,  // bfloat16: 7-bit mantissa, fp32's exponent range
  I32,   // integer labels and token ids
  F64,   // IEEE binary64: CPU backend only, the float64 oracle of the gradient tests (not a
         // training precision)
};

constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32:
    case DType::I32:
      return 4;
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::F64:
      return 8;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32:
      return "f32";
    case DType::F16:
      return "f16";
    case DType::BF16:
      return "bf16";
    case DType::I32:
      return "i32";
    case DType::F64:
      return "f64";
  }
  return "?";
}

// Machine epsilon (spacing of 1.0 to the next value) of a floating dtype; tests derive their
// tolerances from it.
constexpr double dtype_epsilon(DType t) {
  switch (t) {
    case DType::F32:
      return 1.1920928955078125e-07;  // 2^-23
    case DType::F16:
      return 9.765625e-04;  // 2^-10
    case DType::BF16:
      return 7.8125e-03;  // 2^-7
    case DType::I32:
      return 1.0;
    case DType::F64:
      return 2.220446049250313080847263336181640625e-16;  // 2^-52
  }
  return 1.0;
}

constexpr bool is_floating(DType t) {
  return t != DType::I32;
}

}  // namespace mixtrain
