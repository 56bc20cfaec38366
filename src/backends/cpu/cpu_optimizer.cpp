#include "backends/cpu/cpu_optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "core/half.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

// W is the working-copy element type, or void when there is none.
template <typename W>
void update_all(const OptimizerDesc& d, const OptimizerStepScalars& sc, W* working) {
  const OptimizerHyper hyper = d.hyper;
  const int slots = optimizer_state_slots(hyper);
  float* const master = d.master;
  const float* const grad = d.grad;
  float* state[kMaxOptimizerSlots] = {};
  for (int k = 0; k < slots; ++k) state[k] = d.state[k];
  const std::int64_t count = d.count;

  // Small ranges cost more to fork threads for than to update.
#pragma omp parallel for schedule(static) if (count >= 16384)
  for (std::int64_t i = 0; i < count; ++i) {
    float s[kMaxOptimizerSlots] = {};
    for (int k = 0; k < slots; ++k) s[k] = state[k][i];
    float p = master[i];
    optimizer_update_element(hyper, sc, p, grad[i], s);
    master[i] = p;
    for (int k = 0; k < slots; ++k) state[k][i] = s[k];
    if constexpr (!std::is_void_v<W>) working[i] = store<W>(p);
  }
}

}  // namespace

void cpu_optimizer_step(const OptimizerDesc& d) {
  const StepControl& c = *d.control;
  if (c.found_inf != 0.0f || d.count <= 0) return;

  const int slots = optimizer_state_slots(d.hyper);
  for (int k = 0; k < slots; ++k) {
    if (d.state[k] == nullptr) {
      throw Error("optimizer_step: " + std::string(optimizer_name(d.hyper.kind)) +
                  " needs state slot " + std::to_string(k) + ", which is not set");
    }
  }

  // The gradients are still scaled: unscaling (exact, a power of two) and clipping are one factor.
  const float clip = d.max_grad_norm > 0.0f
                         ? std::min(1.0f, d.max_grad_norm / (std::sqrt(c.grad_norm_sq) + 1e-6f))
                         : 1.0f;
  const float grad_factor = clip * c.inv_scale;
  const OptimizerStepScalars sc = optimizer_step_scalars(d.hyper, c.learning_rate, grad_factor,
                                                         c.optimizer_steps, c.optimizer_scalar);

  if (!d.working) {
    update_all<void>(d, sc, nullptr);
    return;
  }
  switch (d.working.dtype) {
    case DType::F32:
      update_all(d, sc, static_cast<float*>(d.working.ptr));
      return;
    case DType::F16:
      update_all(d, sc, static_cast<f16*>(d.working.ptr));
      return;
    case DType::BF16:
      update_all(d, sc, static_cast<bf16*>(d.working.ptr));
      return;
    case DType::I32:
    case DType::F64:
      break;
  }
  throw Error("optimizer_step: the working copy must be f32, f16 or bf16, not " +
              std::string(dtype_name(d.working.dtype)));
}

}  // namespace mixtrain
