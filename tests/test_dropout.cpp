// Dropout's counter-based mask: the right keep rate, independent across steps and layers.
#include <gtest/gtest.h>

#include <vector>

#include "ops/backend.hpp"
#include "ops/counter_rng.hpp"

namespace mixtrain {
namespace {

std::vector<float> drop(Backend& be, float rate, std::uint64_t salt, std::int32_t iteration,
                        std::int64_t n) {
  std::vector<float> x(static_cast<std::size_t>(n), 1.0f), y(x.size());
  StepControl c{};
  c.seed = 42;
  c.iteration = iteration;
  be.dropout_forward(rate, salt, CBuf(x.data(), DType::F32), Buf{y.data(), DType::F32}, n, &c);
  return y;
}

TEST(Dropout, KeepsTheRightFractionAndScalesTheRest) {
  auto be = make_cpu_backend();
  const std::int64_t n = 1 << 20;
  for (float rate : {0.1f, 0.3f, 0.5f}) {
    const auto y = drop(*be, rate, 7, 3, n);
    std::int64_t dropped = 0;
    for (float v : y) {
      if (v == 0.0f) {
        ++dropped;
      } else {
        EXPECT_FLOAT_EQ(v, 1.0f / (1.0f - rate));
      }
    }
    // Binomial standard deviation sqrt(n p (1-p)) <= 512 for n = 2^20: 5 sigma is 2560.
    EXPECT_NEAR(static_cast<double>(dropped), rate * static_cast<double>(n), 2560.0) << rate;
  }
}

TEST(Dropout, MasksDifferAcrossStepsAndLayersButRepeat) {
  auto be = make_cpu_backend();
  const std::int64_t n = 4096;
  const auto a = drop(*be, 0.5f, 1, 0, n);
  EXPECT_EQ(a, drop(*be, 0.5f, 1, 0, n));
  for (const auto& other : {drop(*be, 0.5f, 1, 1, n), drop(*be, 0.5f, 2, 0, n)}) {
    std::int64_t same = 0;
    for (std::size_t i = 0; i < a.size(); ++i) same += (a[i] == 0.0f) == (other[i] == 0.0f);
    EXPECT_NEAR(static_cast<double>(same), n / 2.0, 5 * 32.0);  // independent: half agree
  }
}

TEST(Dropout, NeighbouringElementsAreUncorrelated) {
  // Adjacent indices must not share bits: the fraction of equal neighbour decisions is 1/2.
  const std::uint64_t key = counter_key(42, 0, 9);
  std::int64_t equal = 0;
  const std::int64_t n = 1 << 16;
  for (std::int64_t i = 0; i < n; ++i) {
    equal += (counter_uniform_keyed(key, static_cast<std::uint64_t>(i)) < 0.5f) ==
             (counter_uniform_keyed(key, static_cast<std::uint64_t>(i + 1)) < 0.5f);
  }
  EXPECT_NEAR(static_cast<double>(equal), n / 2.0, 5 * 128.0);
}

}  // namespace
}  // namespace mixtrain
