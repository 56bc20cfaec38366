// Misuse of the public API is a clear error, never a crash or a silently wrong answer: results read
// after their trainer is gone, moved-from trainers, empty datasets, FP16 inputs past FP16's range,
// buffers shorter than their shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "error_message.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain {
namespace {

TrainerConfig cpu(Precision p = Precision::FP32) {
  TrainerConfig c;
  c.device = Device::CPU;
  c.precision = p;
  return c;
}

Model small() {
  return ModelBuilder({4, 3}).dense(8).relu().dense(2).compile();
}

const std::vector<float> kX = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f,
                               0.7f, 0.8f, 0.9f, 1.0f, 1.1f, 1.2f};
const std::vector<std::int32_t> kY = {0, 1, 0, 1};

TEST(Misuse, StepResultOutlivingItsTrainerThrows) {
  std::optional<StepResult> r;
  {
    Trainer t(small(), cpu());
    r = t.train_batch(kX.data(), {4, 3}, kY.data(), {4});
  }
  const std::string what = message_of([&] { (void)r->loss(); });
  EXPECT_NE(what.find("gone with its Trainer"), std::string::npos) << what;
  EXPECT_THROW((void)r->skipped(), Error);
}

TEST(Misuse, MovedTrainerKeepsItsResultsAndTheMovedFromOneThrows) {
  Trainer a(small(), cpu());
  const StepResult r = a.train_batch(kX.data(), {4, 3}, kY.data(), {4});
  Trainer b(std::move(a));
  EXPECT_TRUE(std::isfinite(r.loss()));  // read through the new owner
  b.train_batch(kX.data(), {4, 3}, kY.data(), {4});
  EXPECT_EQ(b.stats().steps, 2);
  const std::string what = message_of([&] { a.train_batch(kX.data(), {4, 3}, kY.data(), {4}); });
  EXPECT_NE(what.find("moved from"), std::string::npos) << what;
  EXPECT_THROW((void)a.stats(), Error);

  Trainer c(small(), cpu());
  c = std::move(b);  // move assignment releases c's own plan first
  EXPECT_EQ(c.stats().steps, 2);
  EXPECT_TRUE(std::isfinite(r.loss()));
  std::vector<Trainer> many;
  many.push_back(std::move(c));  // a Trainer can live in a container
  EXPECT_EQ(many[0].stats().steps, 2);
}

TEST(Misuse, EvaluatingOrFittingAnEmptyDatasetIsAnError) {
  Trainer t(small(), cpu());
  Dataset empty;
  empty.sample_shape = {3};
  empty.num_classes = 2;
  const std::string what = message_of([&] { t.evaluate(empty); });
  EXPECT_NE(what.find("empty"), std::string::npos) << what;
  FitOptions o;
  o.batch_size = 4;
  EXPECT_THROW(t.fit(empty, o), DataError);
}

TEST(Misuse, Fp16InputsBeyondItsRangeAreRejectedNamingTheValue) {
  Trainer t(small(), cpu(Precision::FP16));
  std::vector<float> x = kX;
  x[7] = 70000.0f;
  const std::string what = message_of([&] { t.train_batch(x.data(), {4, 3}, kY.data(), {4}); });
  EXPECT_NE(what.find("sample 2 feature 1"), std::string::npos) << what;
  EXPECT_NE(what.find("65504"), std::string::npos) << what;
  EXPECT_THROW(t.predict(x.data(), {4, 3}), DataError);
  x[7] = -65504.0f;  // the largest finite FP16 value itself is fine
  EXPECT_NO_THROW(t.train_batch(x.data(), {4, 3}, kY.data(), {4}));
  // BF16 and FP32 hold it.
  x[7] = 70000.0f;
  Trainer bf16(small(), cpu(Precision::BF16));
  EXPECT_NO_THROW(bf16.train_batch(x.data(), {4, 3}, kY.data(), {4}));
}

TEST(Misuse, SpansShorterOrLongerThanTheirShapesAreShapeErrors) {
  Trainer t(small(), cpu());
  const std::vector<float> short_x(kX.begin(), kX.end() - 1);
  const std::string what = message_of([&] { t.train_batch(short_x, {4, 3}, kY, {4}); });
  EXPECT_NE(what.find("11"), std::string::npos) << what;
  EXPECT_NE(what.find("12"), std::string::npos) << what;
  const std::vector<std::int32_t> long_y = {0, 1, 0, 1, 1};
  EXPECT_THROW(t.train_batch(kX, {4, 3}, long_y, {4}), ShapeError);
  EXPECT_THROW(t.predict(short_x, {4, 3}), ShapeError);
  EXPECT_THROW(t.upload_batch(short_x, {4, 3}, kY, {4}), ShapeError);
  const StepResult r = t.train_batch(kX, {4, 3}, kY, {4});
  EXPECT_TRUE(std::isfinite(r.loss()));
  EXPECT_EQ(t.predict(kX, {4, 3}).size(), 8U);
  const std::vector<float> targets(8, 0.5f);
  Trainer mse(small(), [] {
    TrainerConfig c = cpu();
    c.loss = Loss::MeanSquaredError;
    return c;
  }());
  EXPECT_NO_THROW(mse.train_batch(kX, {4, 3}, targets, {4, 2}));
  EXPECT_THROW(mse.train_batch(kX, {4, 3}, std::vector<float>(7), {4, 2}), ShapeError);
}

}  // namespace
}  // namespace mixtrain
