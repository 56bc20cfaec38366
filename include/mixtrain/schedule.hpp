// Learning-rate schedules. The factor is computed on the device from the number of applied
// optimizer steps (skipped overflow steps do not advance it), so captured steps stay valid.
#pragma once

#include <cstdint>
#include <string_view>

namespace mixtrain {

enum class LrSchedule : std::uint8_t {
  Constant,   // the learning rate throughout
  Cosine,     // from the learning rate down to min_factor * lr along a half cosine
  StepDecay,  // multiplied by gamma every step_size steps
};

std::string_view lr_schedule_name(LrSchedule s);
LrSchedule parse_lr_schedule(std::string_view name);  // "constant", "cosine", "step"

struct ScheduleConfig {
  LrSchedule kind = LrSchedule::Constant;
  std::int32_t warmup_steps = 0;  // linear ramp from lr / warmup_steps up to lr
  std::int32_t total_steps = 0;   // cosine: steps over which it decays (required)
  float min_factor = 0.0f;        // cosine: final learning rate as a fraction of lr
  std::int32_t step_size = 1000;  // step decay: steps between decays
  float gamma = 0.1f;             // step decay: factor per decay
};

}  // namespace mixtrain
