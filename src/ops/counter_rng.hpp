// Counter-based random numbers: a pure function of (seed, iteration, salt, index), identical on
// the CPU and in CUDA kernels. Dropout regenerates its mask in the backward pass from the same
// counters instead of storing it, and a replayed CUDA graph draws new numbers each step because
// the iteration is read from device memory.
#pragma once

#include <cstdint>

#include "core/hd.hpp"

namespace mixtrain {

MIXTRAIN_HD std::uint64_t mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

// Uniform in [0, 1) with 24 random bits.
MIXTRAIN_HD float counter_uniform(std::uint64_t seed, std::int32_t iteration, std::uint64_t salt,
                                  std::uint64_t index) {
  const std::uint64_t key =
      mix64(seed ^ mix64(static_cast<std::uint64_t>(iteration) * 0x9E3779B97F4A7C15ull + salt));
  const std::uint64_t bits = mix64(key + index * 0xD1B54A32D192ED03ull);
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

}  // namespace mixtrain
