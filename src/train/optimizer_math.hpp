// The optimizer update rules, written once for the CPU backend and the CUDA kernels. Each rule
// updates one parameter element given its gradient; the backends loop over elements.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/hd.hpp"
#include "mixtrain/optim.hpp"
#include "mixtrain/schedule.hpp"

namespace mixtrain {

inline constexpr int kMaxOptimizerSlots = 3;

// All optimizer settings in one value the kernels take by value.
struct OptimizerHyper {
  Optimizer kind = Optimizer::Adam;
  float weight_decay = 0.0f;  // coupled L2: g += weight_decay * p (every optimizer)
  SgdOptions sgd;
  AdamOptions adam;
  AdamWOptions adamw;
  RmspropOptions rmsprop;
  AdagradOptions adagrad;
  AdadeltaOptions adadelta;
  NadamOptions nadam;
  ScheduleConfig schedule;  // scales the learning rate by the number of applied steps
};

// Per-step values shared by all elements of one update.
struct OptimizerStepScalars {
  float lr;                // learning rate of this step
  float grad_factor;       // multiplies every gradient (global-norm clipping coefficient, or 1)
  std::int32_t step;       // 1-based index of this applied step (bias corrections)
  float mu_t;              // Nadam: momentum coefficient of this step
  float mu_next;           // Nadam: momentum coefficient of the next step
  float mu_product;        // Nadam: product of mu_1..mu_t
  float bias_correction1;  // Adam family: 1 - beta1^step (computed once per step, not per element)
  float bias_correction2;  // Adam family: 1 - beta2^step
};

// Number of fp32 state arrays the optimizer keeps per parameter.
int optimizer_state_slots(const OptimizerHyper& hyper);

// Initial value of each state slot (AdaGrad's accumulator may start non-zero).
float optimizer_state_init(const OptimizerHyper& hyper, int slot);

// Learning-rate factor of the schedule for the step after `applied_steps` applied steps.
MIXTRAIN_HD float schedule_factor(const ScheduleConfig& s, std::int32_t applied_steps);

// Scalars of the step that follows `applied_steps` applied steps; `mu_product_before` is the
// running product stored in StepControl::optimizer_scalar.
MIXTRAIN_HD OptimizerStepScalars optimizer_step_scalars(const OptimizerHyper& h, float lr,
                                                        float grad_factor,
                                                        std::int32_t applied_steps,
                                                        float mu_product_before);

// Updates one element by the rule `kind` (h.kind is not read, so that a caller can make it a
// compile-time constant): p is the fp32 master value, g the unscaled gradient (before clipping
// and weight decay), s the element's state slots.
MIXTRAIN_HD void optimizer_update_element(const OptimizerHyper& h, Optimizer kind,
                                          const OptimizerStepScalars& sc, float& p, float g,
                                          float* s);

}  // namespace mixtrain

#include "train/optimizer_math_impl.hpp"
