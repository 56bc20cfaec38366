// The per-step control block. It lives in device memory and every kernel that needs a value that
// changes between steps (learning rate, loss scale, found-inf, step counters, RNG offset) reads it
// from here, so a captured CUDA graph stays valid across steps and no step waits on the host.
#pragma once

#include <cstdint>

namespace mixtrain {

struct StepControl {
  float loss_scale;     // current loss scale (a power of two; 1 when scaling is off)
  float inv_scale;      // 1 / loss_scale, exact because the scale is a power of two
  float found_inf;      // 1 when this step's gradients held inf/nan (set by the unscale pass)
  float grad_norm_sq;   // squared global L2 norm of the unscaled gradients of this step
  float loss;           // unscaled mean loss of this step
  float learning_rate;  // learning rate for this step (written by the host before the step)
  std::int32_t growth_tracker;   // consecutive clean steps since the scale last changed
  std::int32_t hysteresis_left;  // overflows still tolerated before backing off
  std::int32_t optimizer_steps;  // applied optimizer steps (skipped steps do not count)
  std::int32_t skipped_steps;    // steps skipped because of overflow
  std::int32_t iteration;        // training steps run (applied + skipped)
  std::int32_t scale_at_floor;   // consecutive steps that ended with the scale at its floor
  std::int32_t nonfinite_loss;   // consecutive steps whose loss was not finite
  float optimizer_scalar;  // optimizer-wide running value (Nadam: product of mu_t), starts at 1
  std::uint64_t seed;      // RNG seed of the run (dropout)
};

// One entry of the per-step history ring the trainer drains lazily.
struct StepRecord {
  float loss;
  float loss_scale;  // scale used by this step
  float grad_norm;   // unscaled global gradient norm (inf/nan on overflow)
  float skipped;     // 1 when the optimizer step was skipped
};

// Loss-scaler settings as the device update reads them.
struct ScalerParams {
  float growth_factor;
  float backoff_factor;
  float min_scale;
  float max_scale;
  std::int32_t growth_interval;
  std::int32_t hysteresis;
  std::int32_t dynamic;  // 0: static or no scaling (never changes the scale)
  std::int32_t history_size;
};

}  // namespace mixtrain
