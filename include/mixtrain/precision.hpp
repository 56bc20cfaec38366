// Precision: which dtype a step computes in, and how the loss is scaled.
#pragma once

#include <cstdint>
#include <string_view>

#include "mixtrain/dtype.hpp"

namespace mixtrain {

enum class Precision : std::uint8_t {
  FP32,  // strict fp32 everywhere
  TF32,  // fp32 storage, GEMMs may use TF32 tensor cores (CUDA); identical to FP32 on the CPU
  FP16,  // mixed precision: fp16 activations and weight copies, fp32 master weights
  BF16,  // mixed precision: bf16 activations and weight copies, fp32 master weights
};

std::string_view precision_name(Precision p);
// "fp32", "tf32", "fp16", "bf16" (case-insensitive); ConfigError otherwise.
Precision parse_precision(std::string_view name);

// Which ops run in low precision. Handed to the trainer explicitly (no global state).
//
// With compute = F16 or BF16: activations, their gradients and the working copy of the weights
// are stored in `compute`; GEMMs take `compute` operands and accumulate in fp32. Always fp32:
// master weights, weight gradients, optimizer state, softmax and loss arithmetic, reductions
// (bias gradients, norms), exp/log inside activations, the loss scaler.
struct PrecisionPolicy {
  DType compute = DType::F32;
  bool allow_tf32 = false;

  static PrecisionPolicy for_precision(Precision p);
  bool mixed() const { return compute != DType::F32; }
};

enum class LossScaleMode : std::uint8_t {
  Auto,     // Dynamic for FP16, None for FP32, TF32 and BF16 (bf16 has fp32's range)
  Dynamic,  // grow after growth_interval clean steps, back off and skip on overflow
  Static,   // fixed scale `initial`; overflowed steps are still skipped
  None,     // scale 1; overflowed steps are still skipped
};

std::string_view loss_scale_mode_name(LossScaleMode m);
LossScaleMode parse_loss_scale_mode(std::string_view name);

// Defaults follow PyTorch's GradScaler. Scales and factors must be powers of two, so scaling and
// unscaling are exact.
struct LossScaleConfig {
  LossScaleMode mode = LossScaleMode::Auto;
  float initial = 65536.0f;
  float growth_factor = 2.0f;
  float backoff_factor = 0.5f;
  std::int32_t growth_interval = 2000;  // clean steps before the scale grows
  std::int32_t hysteresis = 1;          // overflows tolerated before backing off (1: at once)
  float min_scale = 1.0f;               // floor
  float max_scale = 16777216.0f;        // ceiling (2^24)
  // Divergence: the scale stuck at its floor with overflow for this many consecutive steps.
  std::int32_t floor_patience = 50;
  // Divergence: the loss not finite for this many consecutive steps (at any scale: the loss scale
  // does not change the forward pass, so skipping steps cannot help).
  std::int32_t nonfinite_loss_patience = 10;

  // Throws ConfigError naming the field and the value.
  void validate() const;
  // The mode in force for a precision (resolves Auto).
  LossScaleMode resolved(Precision p) const;
};

}  // namespace mixtrain
