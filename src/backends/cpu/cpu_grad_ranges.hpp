// Reading a GradRanges (ops/backend.hpp) as fp32 in pieces: the loops of the gradient check and
// the optimizer walk fixed index blocks and ask for each block's gradients here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "backends/cpu/cpu_convert.hpp"
#include "backends/cpu/cpu_dispatch.hpp"
#include "mixtrain/error.hpp"
#include "ops/backend.hpp"

namespace mixtrain::cpu {

// Calls f(begin, end, grad) for the pieces of [begin, end) that lie in one range, in index order;
// grad points at the fp32 gradients of the piece (grad[0] is element begin): the f32 range
// itself, or the low-precision range widened into tmp (at least end - begin floats).
template <typename F>
void for_each_grad_piece(const GradRanges& g, std::int64_t begin, std::int64_t end, float* tmp,
                         F&& f) {
  const std::int64_t split = std::clamp(g.lowp_count, begin, end);
  if (begin < split) {
    dispatch_float(g.lowp.dtype, [&](auto t) {
      using T = decltype(t);
      if constexpr (std::is_same_v<T, float>) {
        f(begin, split, static_cast<const float*>(g.lowp.ptr) + begin);
      } else if constexpr (std::is_same_v<T, double>) {
        throw Error("internal: low-precision gradients must be f32, f16 or bf16, not f64");
      } else {
        widen(static_cast<const T*>(g.lowp.ptr) + begin, tmp, split - begin);
        f(begin, split, static_cast<const float*>(tmp));
      }
    });
  }
  if (split < end) f(split, end, g.f32 + (split - g.lowp_count));
}

}  // namespace mixtrain::cpu
