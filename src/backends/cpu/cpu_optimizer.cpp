#include "backends/cpu/cpu_optimizer.hpp"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "backends/cpu/cpu_convert.hpp"
#include "backends/cpu/cpu_grad_ranges.hpp"
#include "core/half.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

// One pass over a chunk at a time: the update loop has the optimizer kind and the slot count as
// compile-time constants (so it vectorises), then the chunk's working copy is rounded in bulk.
// One chunk, outside any OpenMP region: the optimizer kind is a constant the compiler folds the
// rule's switch on (inside an outlined parallel region the copy would be read through a pointer
// and the loop would not vectorise).
template <Optimizer K, int Slots>
void update_chunk(const OptimizerDesc& d, const OptimizerStepScalars& sc, std::int64_t begin,
                  std::int64_t end, const float* __restrict grad) {
  const OptimizerHyper hyper = d.hyper;  // a local copy, not read through d in the loop
  float* __restrict const master = d.master;
  float* __restrict const s0 = d.state[0];
  float* __restrict const s1 = d.state[1];
  float* __restrict const s2 = d.state[2];
  const OptimizerStepScalars scalars = sc;
  for (std::int64_t i = begin; i < end; ++i) {
    float s[kMaxOptimizerSlots] = {};
    if constexpr (Slots > 0) s[0] = s0[i];
    if constexpr (Slots > 1) s[1] = s1[i];
    if constexpr (Slots > 2) s[2] = s2[i];
    float p = master[i];
    optimizer_update_element(hyper, K, scalars, p, grad[i - begin], s);
    master[i] = p;
    if constexpr (Slots > 0) s0[i] = s[0];
    if constexpr (Slots > 1) s1[i] = s[1];
    if constexpr (Slots > 2) s2[i] = s[2];
  }
}

// Chunks in parallel; each chunk's working copy is rounded in bulk right after its update.
// Low-precision gradients are widened a chunk at a time.
template <Optimizer K, int Slots, typename W>
void update_range(const OptimizerDesc& d, const OptimizerStepScalars& sc, W* working) {
  const std::int64_t count = d.count;
  constexpr std::int64_t kChunk = 2048;
  const std::int64_t chunks = (count + kChunk - 1) / kChunk;
  // Small ranges cost more to fork threads for than to update.
#pragma omp parallel if (count >= 65536)
  {
    float tmp[kChunk];
#pragma omp for schedule(static)
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::int64_t begin = c * kChunk, end = std::min(count, begin + kChunk);
      cpu::for_each_grad_piece(d.grad, begin, end, tmp,
                               [&](std::int64_t b, std::int64_t e, const float* g) {
                                 update_chunk<K, Slots>(d, sc, b, e, g);
                               });
      if constexpr (!std::is_void_v<W>) {
        cpu::narrow(d.master + begin, working + begin, end - begin);
      }
    }
  }
}

template <Optimizer K, typename W>
void update_kind(const OptimizerDesc& d, const OptimizerStepScalars& sc, W* working) {
  switch (optimizer_state_slots(d.hyper)) {
    case 0:
      return update_range<K, 0>(d, sc, working);
    case 1:
      return update_range<K, 1>(d, sc, working);
    case 2:
      return update_range<K, 2>(d, sc, working);
    default:
      return update_range<K, 3>(d, sc, working);
  }
}

// W is the working-copy element type, or void when there is none.
template <typename W>
void update_all(const OptimizerDesc& d, const OptimizerStepScalars& sc, W* working) {
  switch (d.hyper.kind) {
    case Optimizer::SGD:
      return update_kind<Optimizer::SGD>(d, sc, working);
    case Optimizer::Adam:
      return update_kind<Optimizer::Adam>(d, sc, working);
    case Optimizer::AdamW:
      return update_kind<Optimizer::AdamW>(d, sc, working);
    case Optimizer::RMSProp:
      return update_kind<Optimizer::RMSProp>(d, sc, working);
    case Optimizer::AdaGrad:
      return update_kind<Optimizer::AdaGrad>(d, sc, working);
    case Optimizer::AdaDelta:
      return update_kind<Optimizer::AdaDelta>(d, sc, working);
    case Optimizer::Nadam:
      return update_kind<Optimizer::Nadam>(d, sc, working);
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
