// The loss scaler as a state machine: finish_step_math is the one-thread update both backends run.
#include <gtest/gtest.h>

#include <cmath>

#include "train/scaler_math.hpp"

namespace mixtrain {
namespace {

ScalerParams params(int interval = 3, int hysteresis = 1) {
  ScalerParams p{};
  p.growth_factor = 2.0f;
  p.backoff_factor = 0.5f;
  p.min_scale = 1.0f;
  p.max_scale = 16777216.0f;
  p.growth_interval = interval;
  p.hysteresis = hysteresis;
  p.dynamic = 1;
  p.history_size = 8;
  return p;
}

StepControl control(float scale, int hysteresis = 1) {
  StepControl c{};
  c.loss_scale = scale;
  c.inv_scale = 1.0f / scale;
  c.hysteresis_left = hysteresis;
  c.optimizer_scalar = 1.0f;
  return c;
}

void step(StepControl& c, const ScalerParams& p, bool overflow, StepRecord* history = nullptr) {
  c.found_inf = overflow ? 1.0f : 0.0f;
  c.grad_norm_sq = overflow ? INFINITY : 4.0f;
  c.loss = 1.0f;
  finish_step_math(c, p, OptimizerHyper{}, history);
}

TEST(Scaler, OverflowHalvesTheScaleAndSkipsTheStep) {
  auto p = params();
  auto c = control(65536.0f);
  step(c, p, true);
  EXPECT_EQ(c.loss_scale, 32768.0f);
  EXPECT_EQ(c.inv_scale, 1.0f / 32768.0f);
  EXPECT_EQ(c.skipped_steps, 1);
  EXPECT_EQ(c.optimizer_steps, 0);  // Adam's step count does not advance on a skipped step
  EXPECT_EQ(c.iteration, 1);
  EXPECT_EQ(c.growth_tracker, 0);
}

TEST(Scaler, GrowsAfterIntervalCleanSteps) {
  auto p = params(3);
  auto c = control(1024.0f);
  step(c, p, false);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 1024.0f);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 2048.0f);
  EXPECT_EQ(c.growth_tracker, 0);
  EXPECT_EQ(c.optimizer_steps, 3);
}

TEST(Scaler, OverflowResetsTheGrowthCount) {
  auto p = params(3);
  auto c = control(1024.0f);
  step(c, p, false);
  step(c, p, false);
  step(c, p, true);  // 512
  step(c, p, false);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 512.0f);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 1024.0f);
}

TEST(Scaler, NeverBelowTheFloorAndCountsStepsAtIt) {
  auto p = params();
  p.min_scale = 4.0f;
  auto c = control(8.0f);
  step(c, p, true);
  EXPECT_EQ(c.loss_scale, 4.0f);
  step(c, p, true);
  step(c, p, true);
  EXPECT_EQ(c.loss_scale, 4.0f);
  EXPECT_EQ(c.scale_at_floor, 3);
  step(c, p, false);
  EXPECT_EQ(c.scale_at_floor, 0);
}

TEST(Scaler, NeverAboveTheCeiling) {
  auto p = params(1);
  p.max_scale = 2048.0f;
  auto c = control(1024.0f);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 2048.0f);
  step(c, p, false);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 2048.0f);
}

TEST(Scaler, GrowsOnlyToFiniteValues) {
  auto p = params(1);
  p.max_scale = INFINITY;
  auto c = control(std::ldexp(1.0f, 127));
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, std::ldexp(1.0f, 127));
  EXPECT_TRUE(std::isfinite(c.loss_scale));
}

TEST(Scaler, HysteresisToleratesOverflowsBeforeBackingOff) {
  auto p = params(2, 2);
  auto c = control(1024.0f, 2);
  step(c, p, true);
  EXPECT_EQ(c.loss_scale, 1024.0f);  // first overflow tolerated (still skipped)
  EXPECT_EQ(c.skipped_steps, 1);
  step(c, p, true);
  EXPECT_EQ(c.loss_scale, 512.0f);
  EXPECT_EQ(c.hysteresis_left, 2);  // restored after backing off
  step(c, p, true);
  EXPECT_EQ(c.loss_scale, 512.0f);
  EXPECT_EQ(c.hysteresis_left, 1);
  step(c, p, false);
  step(c, p, false);  // growth restores the hysteresis budget
  EXPECT_EQ(c.loss_scale, 1024.0f);
  EXPECT_EQ(c.hysteresis_left, 2);
}

TEST(Scaler, StaticModeKeepsTheScaleButStillSkips) {
  auto p = params(1);
  p.dynamic = 0;
  auto c = control(512.0f);
  step(c, p, true);
  step(c, p, false);
  step(c, p, false);
  EXPECT_EQ(c.loss_scale, 512.0f);
  EXPECT_EQ(c.skipped_steps, 1);
  EXPECT_EQ(c.optimizer_steps, 2);
}

TEST(Scaler, RecordsHistoryAndNonFiniteLosses) {
  auto p = params();
  auto c = control(256.0f);
  StepRecord history[8] = {};
  step(c, p, false, history);
  c.loss = NAN;
  c.found_inf = 1.0f;
  finish_step_math(c, p, OptimizerHyper{}, history);
  EXPECT_EQ(history[0].loss_scale, 256.0f);
  EXPECT_EQ(history[0].grad_norm, 2.0f);
  EXPECT_EQ(history[0].skipped, 0.0f);
  EXPECT_EQ(history[1].skipped, 1.0f);
  EXPECT_TRUE(std::isinf(history[1].grad_norm));
  EXPECT_EQ(c.nonfinite_loss, 1);
}

}  // namespace
}  // namespace mixtrain
