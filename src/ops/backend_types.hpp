// Small value types of the op interface, usable from CUDA kernels.
#pragma once

#include <cstdint>

#include "mixtrain/dtype.hpp"

namespace mixtrain {

// An untyped device pointer with its element type.
struct Buf {
  void* ptr = nullptr;
  DType dtype = DType::F32;
  explicit operator bool() const { return ptr != nullptr; }
};
struct CBuf {
  const void* ptr = nullptr;
  DType dtype = DType::F32;
  CBuf() = default;
  CBuf(const void* p, DType t) : ptr(p), dtype(t) {}
  CBuf(Buf b) : ptr(b.ptr), dtype(b.dtype) {}  // NOLINT(google-explicit-constructor)
  explicit operator bool() const { return ptr != nullptr; }
};

enum class Activation : std::uint8_t {
  Identity,
  ReLU,
  LeakyReLU,  // alpha: negative slope
  ELU,        // alpha: saturation value
  Sigmoid,
  Tanh,
  Swish,     // x * sigmoid(x)
  GELU,      // exact, x * Phi(x)
  GELUTanh,  // tanh approximation
};

enum class LossKind : std::uint8_t {
  SparseCrossEntropy,        // pred: logits [rows, cols]; labels: int32 [rows]
  CrossEntropy,              // pred: logits; targets: probabilities [rows, cols]
  CrossEntropyProbs,         // pred: probabilities (after softmax); targets: probabilities
  BinaryCrossEntropy,        // pred: probabilities in (0, 1); targets [rows, cols] in [0, 1]
  BinaryCrossEntropyLogits,  // pred: logits; targets in [0, 1]
  MeanSquaredError,
  MeanAbsoluteError,
  Huber,  // delta
};

}  // namespace mixtrain
