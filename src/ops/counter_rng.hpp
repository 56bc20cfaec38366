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

// The per-call key of (seed, iteration, salt): computed once, outside the element loop.
MIXTRAIN_HD std::uint64_t counter_key(std::uint64_t seed, std::int32_t iteration,
                                      std::uint64_t salt) {
  return mix64(seed ^ mix64(static_cast<std::uint64_t>(iteration) * 0x9E3779B97F4A7C15ull + salt));
}

// 24 random bits for element `index` under `key`. A 32-bit finaliser (murmur3's, keyed by both
// halves of the key) so that the CPU loop vectorises; indices are taken modulo 2^32.
MIXTRAIN_HD std::uint32_t counter_bits_keyed(std::uint64_t key, std::uint64_t index) {
  std::uint32_t x =
      static_cast<std::uint32_t>(index) * 0x9E3779B9u ^ static_cast<std::uint32_t>(key);
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  x ^= static_cast<std::uint32_t>(key >> 32);
  x *= 0x27D4EB2Du;
  x ^= x >> 15;
  return x >> 8;
}

// Uniform in [0, 1): the 24 bits over 2^24 (exact in float).
MIXTRAIN_HD float counter_uniform_keyed(std::uint64_t key, std::uint64_t index) {
  return static_cast<float>(counter_bits_keyed(key, index)) * (1.0f / 16777216.0f);
}

// The smallest 24-bit value whose uniform is >= rate: `counter_bits_keyed(k, i) >= threshold`
// decides exactly as `counter_uniform_keyed(k, i) >= rate` (bits / 2^24 >= rate, both exact), in
// integers, which the CPU compares eight at a time.
MIXTRAIN_HD std::uint32_t counter_threshold(float rate) {
  const double scaled = static_cast<double>(rate) * 16777216.0;  // exact: rate is a float
  if (!(scaled > 0.0)) return 0u;
  if (scaled >= 16777216.0) return 16777216u;
  const auto t = static_cast<std::uint32_t>(scaled);
  return static_cast<double>(t) == scaled ? t : t + 1u;
}

MIXTRAIN_HD float counter_uniform(std::uint64_t seed, std::int32_t iteration, std::uint64_t salt,
                                  std::uint64_t index) {
  return counter_uniform_keyed(counter_key(seed, iteration, salt), index);
}

}  // namespace mixtrain
