// The end of a training step, run by one thread on the device (or by the CPU backend): counters,
// the dynamic loss-scale update and the history record. Shared by both backends so the scale
// history on the GPU is the same as on the CPU.
#pragma once

#include <cmath>

#include "core/hd.hpp"
#include "ops/step_control.hpp"
#include "train/optimizer_math.hpp"

namespace mixtrain {

MIXTRAIN_HD bool finite_f(float x) {
  return x - x == 0.0f;
}

MIXTRAIN_HD void finish_step_math(StepControl& c, const ScalerParams& p, const OptimizerHyper& h,
                                  StepRecord* history) {
  const bool overflow = c.found_inf != 0.0f;
  if (history != nullptr && p.history_size > 0) {
    StepRecord& r = history[c.iteration % p.history_size];
    r.loss = c.loss;
    r.loss_scale = c.loss_scale;
    r.grad_norm = overflow ? INFINITY : sqrtf(c.grad_norm_sq);
    r.skipped = overflow ? 1.0f : 0.0f;
  }
  c.nonfinite_loss = finite_f(c.loss) ? 0 : c.nonfinite_loss + 1;
  if (overflow) {
    c.skipped_steps += 1;
  } else {
    c.optimizer_scalar = next_optimizer_scalar(h, c.optimizer_scalar, c.optimizer_steps);
    c.optimizer_steps += 1;
  }
  if (p.dynamic != 0) {
    if (overflow) {
      c.growth_tracker = 0;
      c.hysteresis_left -= 1;
      if (c.hysteresis_left <= 0) {
        const float backed_off = c.loss_scale * p.backoff_factor;
        c.loss_scale = backed_off > p.min_scale ? backed_off : p.min_scale;
        c.hysteresis_left = p.hysteresis;
      }
    } else {
      c.growth_tracker += 1;
      if (c.growth_tracker >= p.growth_interval) {
        const float grown = c.loss_scale * p.growth_factor;
        // Growth only to finite values under the ceiling.
        if (finite_f(grown) && grown <= p.max_scale) c.loss_scale = grown;
        c.growth_tracker = 0;
        c.hysteresis_left = p.hysteresis;
      }
    }
    c.scale_at_floor = (overflow && c.loss_scale <= p.min_scale) ? c.scale_at_floor + 1 : 0;
  }
  c.inv_scale = 1.0f / c.loss_scale;
  c.iteration += 1;
}

}  // namespace mixtrain
