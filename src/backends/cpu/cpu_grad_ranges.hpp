// Reading a GradRanges (ops/backend.hpp) as fp32 in pieces: the loops of the gradient check and
// the optimizer walk fixed index blocks and ask for each block's gradients here.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "backends/cpu/cpu_convert.hpp"
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
    const std::int64_t n = split - begin;
    switch (g.lowp.dtype) {
      case DType::F32:
        f(begin, split, static_cast<const float*>(g.lowp.ptr) + begin);
        break;
      case DType::F16:
        widen(static_cast<const f16*>(g.lowp.ptr) + begin, tmp, n);
        f(begin, split, static_cast<const float*>(tmp));
        break;
      case DType::BF16:
        widen(static_cast<const bf16*>(g.lowp.ptr) + begin, tmp, n);
        f(begin, split, static_cast<const float*>(tmp));
        break;
      default:
        throw Error("internal: low-precision gradients must be f32, f16 or bf16, not " +
                    std::string(dtype_name(g.lowp.dtype)));
    }
  }
  if (split < end) f(split, end, g.f32 + (split - g.lowp_count));
}

}  // namespace mixtrain::cpu
