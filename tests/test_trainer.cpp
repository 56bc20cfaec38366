// The trainer end to end on the CPU: learning, overflow handling, determinism, bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "mixtrain/mixtrain.hpp"
#include "train/optimizer_math.hpp"

namespace mixtrain {
namespace {

// Two Gaussian blobs per class in `features` dimensions: learnable to ~100% by a small MLP.
struct Blobs {
  std::vector<float> x;
  std::vector<std::int32_t> y;
};

Blobs make_blobs(int n, int features, int classes, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  std::vector<std::vector<float>> centers(static_cast<std::size_t>(classes));
  std::uniform_real_distribution<float> c(-1.0f, 1.0f);
  for (auto& v : centers) {
    for (int f = 0; f < features; ++f) v.push_back(c(rng));
  }
  Blobs b;
  for (int i = 0; i < n; ++i) {
    const int label = i % classes;
    b.y.push_back(label);
    for (int f = 0; f < features; ++f) {
      b.x.push_back(
          (centers[static_cast<std::size_t>(label)][static_cast<std::size_t>(f)] + noise(rng)) *
          scale);
    }
  }
  return b;
}

Model mlp(std::int64_t batch = 32, std::int64_t features = 8, std::int64_t classes = 3,
          float dropout = 0.0f) {
  ModelBuilder b({batch, features});
  b.dense(32).relu();
  if (dropout > 0.0f) b.dropout(dropout);
  return b.dense(classes).compile();
}

TrainerConfig cpu_config(Precision p = Precision::FP32) {
  TrainerConfig c;
  c.device = Device::CPU;
  c.precision = p;
  c.learning_rate = 1e-2f;
  c.seed = 7;
  return c;
}

float train_steps(Trainer& t, const Blobs& data, int steps, int batch = 32, int features = 8) {
  float last = 0.0f;
  const int n = static_cast<int>(data.y.size());
  for (int s = 0; s < steps; ++s) {
    const int start = (s * batch) % (n - batch + 1);
    auto r = t.train_batch(data.x.data() + start * features, {batch, features},
                           data.y.data() + start, {batch});
    if (s == steps - 1) last = r.loss();
  }
  return last;
}

class TrainerPrecision : public ::testing::TestWithParam<Precision> {};

TEST_P(TrainerPrecision, LearnsSeparableData) {
  const Blobs data = make_blobs(960, 8, 3, 1);
  Trainer t(mlp(), cpu_config(GetParam()));
  const float first = t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32}).loss();
  const float last = train_steps(t, data, 150);
  EXPECT_LT(last, 0.25f * first);
  Dataset d;
  d.features = data.x;
  d.sample_shape = {8};
  d.labels = data.y;
  d.num_classes = 3;
  EXPECT_GT(t.evaluate(d).accuracy, 0.95);
}

INSTANTIATE_TEST_SUITE_P(AllPrecisions, TrainerPrecision,
                         ::testing::Values(Precision::FP32, Precision::FP16, Precision::BF16),
                         [](const auto& param_info) {
                           return std::string(precision_name(param_info.param));
                         });

TEST(Trainer, MixedPrecisionFlagSelectsFp16WithDynamicScaling) {
  TrainerConfig c = cpu_config();
  c.mixed_precision = true;
  Trainer t(mlp(), c);
  EXPECT_EQ(t.policy().compute, DType::F16);
  const Blobs data = make_blobs(64, 8, 3, 2);
  t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32});
  EXPECT_EQ(t.stats().loss_scale, 65536.0f);
}

TEST(Trainer, Bf16IsUnscaledByDefault) {
  Trainer t(mlp(), cpu_config(Precision::BF16));
  const Blobs data = make_blobs(64, 8, 3, 2);
  EXPECT_EQ(t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32}).loss_scale(), 1.0f);
}

// FP16 gradients overflow at a scale of 2^24 (the loss gradient alone is ~2^24/32 per element,
// above fp16's 65504): the scaler must back off, skip those steps without touching the weights
// or Adam's step count, and training must still converge.
TEST(Trainer, Fp16OverflowBacksOffSkipsAndStillConverges) {
  TrainerConfig c = cpu_config(Precision::FP16);
  c.loss_scale.initial = 16777216.0f;
  c.loss_scale.growth_interval = 1000;
  Trainer t(mlp(), c);
  const Blobs data = make_blobs(960, 8, 3, 3);
  const std::vector<float> before = t.weights();
  auto first = t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32});
  EXPECT_TRUE(first.skipped());
  EXPECT_EQ(first.loss_scale(), 16777216.0f);
  EXPECT_TRUE(std::isinf(first.grad_norm()));
  EXPECT_EQ(t.weights(), before);  // a skipped step leaves the master weights untouched

  const float last = train_steps(t, data, 200);
  const TrainerStats s = t.stats();
  EXPECT_GE(s.skipped_steps, 3);
  EXPECT_EQ(s.applied_steps + s.skipped_steps, s.steps);
  EXPECT_LT(s.loss_scale, 16777216.0f);
  EXPECT_LT(last, 0.3f);
  // The history shows the scale halving once per skipped step at the start.
  const auto& h = t.history();
  for (std::size_t i = 1; i < h.size() && h[i - 1].skipped; ++i) {
    EXPECT_EQ(h[i].loss_scale, h[i - 1].loss_scale / 2.0f) << "step " << i;
  }
}

TEST(Trainer, SameSeedSameRunBitForBit) {
  const Blobs data = make_blobs(320, 8, 3, 4);
  auto run = [&](std::uint64_t seed) {
    TrainerConfig c = cpu_config(Precision::FP16);
    c.seed = seed;
    Trainer t(mlp(32, 8, 3, 0.3f), c);
    train_steps(t, data, 20);
    return t.weights();
  };
  EXPECT_EQ(run(11), run(11));
  EXPECT_NE(run(11), run(12));
}

TEST(Trainer, DropoutIsIdentityAtInference) {
  Trainer t(mlp(4, 8, 3, 0.5f), cpu_config());
  const Blobs data = make_blobs(4, 8, 3, 5);
  const auto a = t.predict(data.x.data(), {4, 8});
  const auto b = t.predict(data.x.data(), {4, 8});
  EXPECT_EQ(a, b);
}

TEST(Trainer, BadInputsThrowAndLeaveTheTrainerUsable) {
  Trainer t(mlp(), cpu_config());
  Blobs data = make_blobs(64, 8, 3, 6);
  EXPECT_THROW(t.train_batch(data.x.data(), {32, 9}, data.y.data(), {32}), ShapeError);
  EXPECT_THROW(t.train_batch(data.x.data(), {33, 8}, data.y.data(), {33}), ShapeError);
  EXPECT_THROW(t.train_batch(data.x.data(), {32, 8}, data.y.data(), {31}), ShapeError);
  data.y[5] = 3;
  try {
    t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32});
    FAIL() << "label out of range accepted";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("label 5"), std::string::npos) << e.what();
  }
  data.y[5] = 2;
  data.x[17] = NAN;
  EXPECT_THROW(t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32}), DataError);
  data.x[17] = 0.5f;
  EXPECT_EQ(t.stats().steps, 0);
  const float loss = t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32}).loss();
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_EQ(t.stats().steps, 1);
}

TEST(Trainer, InvalidConfigurationsNameTheField) {
  auto expect_config_error = [](TrainerConfig c, const std::string& field) {
    try {
      Trainer t(mlp(), c);
      FAIL() << "accepted invalid " << field;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
  };
  TrainerConfig c = cpu_config();
  c.learning_rate = -1.0f;
  expect_config_error(c, "learning_rate");
  c = cpu_config();
  c.loss_scale.initial = 1000.0f;
  expect_config_error(c, "loss_scale.initial");
  c = cpu_config();
  c.loss_scale.backoff_factor = 2.0f;
  expect_config_error(c, "loss_scale.backoff_factor");
  c = cpu_config();
  c.adam.beta1 = 1.0f;
  expect_config_error(c, "adam.beta1");
  c = cpu_config();
  c.loss = Loss::SparseCrossEntropy;
  try {
    Trainer t(ModelBuilder({8, 4}).dense(1).compile(), c);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("bce"), std::string::npos) << e.what();
  }
}

// The library users came from inverted binary labels; ours must predict label 1 as > 0.5.
TEST(Trainer, BinaryClassifierGetsItsLabelsRight) {
  std::mt19937 rng(9);
  std::normal_distribution<float> noise(0.0f, 0.5f);
  std::vector<float> x;
  std::vector<std::int32_t> y;
  for (int i = 0; i < 640; ++i) {
    const int label = i % 2;
    y.push_back(label);
    for (int f = 0; f < 4; ++f) x.push_back((label ? 1.5f : -1.5f) + noise(rng));
  }
  TrainerConfig c = cpu_config(Precision::FP16);
  c.loss = Loss::BinaryCrossEntropy;
  Trainer t(ModelBuilder({32, 4}).dense(8).relu().dense(1).sigmoid().compile(), c);
  for (int s = 0; s < 100; ++s) {
    const int start = (s * 32) % 608;
    t.train_batch(x.data() + start * 4, {32, 4}, y.data() + start, {32});
  }
  const auto p = t.predict(x.data(), {32, 4});
  for (int i = 0; i < 32; ++i) {
    if (y[static_cast<std::size_t>(i)] == 1) {
      EXPECT_GT(p[static_cast<std::size_t>(i)], 0.5f) << "sample " << i;
    } else {
      EXPECT_LT(p[static_cast<std::size_t>(i)], 0.5f) << "sample " << i;
    }
  }
}

TEST(Trainer, RegressionWithFloatTargets) {
  std::mt19937 rng(10);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x, y;
  for (int i = 0; i < 320; ++i) {
    const float a = u(rng), b = u(rng);
    x.push_back(a);
    x.push_back(b);
    y.push_back(0.5f * a - 2.0f * b + 0.25f);
  }
  for (Loss loss : {Loss::MeanSquaredError, Loss::MeanAbsoluteError, Loss::Huber}) {
    TrainerConfig c = cpu_config();
    c.loss = loss;
    Trainer t(ModelBuilder({32, 2}).dense(1).compile(), c);
    float first = 0.0f, last = 0.0f;
    for (int s = 0; s < 300; ++s) {
      const int start = (s * 32) % 288;
      auto r = t.train_batch(x.data() + start * 2, {32, 2}, y.data() + start, {32, 1});
      if (s == 0) first = r.loss();
      last = r.loss();
    }
    EXPECT_LT(last, 0.05f * first) << loss_name(loss);
  }
}

TEST(Trainer, NonFiniteLossIsReportedAsDivergence) {
  TrainerConfig c = cpu_config();
  c.learning_rate = 1e30f;
  c.optimizer = Optimizer::SGD;
  c.loss_scale.nonfinite_loss_patience = 3;
  c.sync_interval = 1;
  Trainer t(mlp(), c);
  const Blobs data = make_blobs(64, 8, 3, 11);
  try {
    for (int s = 0; s < 50; ++s) t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32});
    FAIL() << "no divergence reported";
  } catch (const DivergenceError& e) {
    EXPECT_NE(std::string(e.what()).find("not been finite"), std::string::npos) << e.what();
  }
}

TEST(Trainer, ScalePinnedAtItsFloorIsReportedAsDivergence) {
  TrainerConfig c = cpu_config(Precision::FP16);
  c.loss_scale.initial = 16777216.0f;
  c.loss_scale.min_scale = 16777216.0f;  // cannot back off: every step overflows
  c.loss_scale.floor_patience = 5;
  c.sync_interval = 1;
  Trainer t(mlp(), c);
  const Blobs data = make_blobs(64, 8, 3, 12);
  try {
    for (int s = 0; s < 50; ++s) t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32});
    FAIL() << "no divergence reported";
  } catch (const DivergenceError& e) {
    EXPECT_NE(std::string(e.what()).find("floor"), std::string::npos) << e.what();
  }
}

TEST(Trainer, ClippingBoundsTheUpdate) {
  const Blobs data = make_blobs(64, 8, 3, 13);
  TrainerConfig c = cpu_config();
  c.optimizer = Optimizer::SGD;
  c.learning_rate = 1.0f;
  c.clip_grad_norm = 1e-3f;
  Trainer t(mlp(), c);
  const auto before = t.weights();
  auto r = t.train_batch(data.x.data(), {32, 8}, data.y.data(), {32});
  EXPECT_GT(r.grad_norm(), 1e-3f);  // statistics report the unclipped, unscaled norm
  const auto after = t.weights();
  double moved = 0.0;
  for (std::size_t i = 0; i < before.size(); ++i) {
    moved += static_cast<double>(after[i] - before[i]) * (after[i] - before[i]);
  }
  EXPECT_NEAR(std::sqrt(moved), 1e-3, 1e-5);  // SGD step = lr * clipped gradient
}

// Regression: reading predictions back must not overwrite the control block, also when a sample
// has more outputs than input features.
TEST(Trainer, EvaluationLeavesTrainingStateIntact) {
  const Blobs data = make_blobs(320, 2, 3, 15);
  Dataset d;
  d.features = data.x;
  d.sample_shape = {2};
  d.labels = data.y;
  d.num_classes = 3;
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    TrainerConfig c = cpu_config(p);
    Trainer t(mlp(32, 2, 3), c);
    FitOptions fo;
    fo.epochs = 3;
    fo.batch_size = 32;
    fo.validation = &d;
    const FitHistory h = t.fit(d, fo);
    const TrainerStats s = t.stats();
    EXPECT_EQ(s.steps, 30) << precision_name(p);
    EXPECT_EQ(s.loss_scale, p == Precision::FP16 ? 65536.0f : 1.0f) << precision_name(p);
    EXPECT_LT(h.epochs.back().train_loss, h.epochs.front().train_loss) << precision_name(p);
    EXPECT_GT(h.epochs.back().validation.accuracy, 0.6) << precision_name(p);
    EXPECT_EQ(t.predict(data.x.data(), {32, 2}).size(), 96u);
  }
}

TEST(Trainer, DeviceBatchesTrainLikeHostBatches) {
  const Blobs data = make_blobs(128, 8, 3, 16);
  TrainerConfig c = cpu_config(Precision::FP16);
  Trainer host(mlp(32, 8, 3, 0.2f), c), device(mlp(32, 8, 3, 0.2f), c);
  // 20 stored batches (the data's 4, five times): the first 16 are read in place, the others
  // copied into the plan's buffers; steps 6 and later use the copied ones.
  std::vector<DeviceBatch> batches;
  for (int b = 0; b < 20; ++b) {
    batches.push_back(device.upload_batch(data.x.data() + (b % 4) * 32 * 8, {32, 8},
                                          data.y.data() + (b % 4) * 32, {32}));
  }
  EXPECT_EQ(device.stats().steps, 0);  // uploading trains nothing
  for (int s = 0; s < 12; ++s) {
    const float a = host.train_batch(data.x.data() + (s % 4) * 32 * 8, {32, 8},
                                     data.y.data() + (s % 4) * 32, {32})
                        .loss();
    const std::size_t stored = static_cast<std::size_t>(s % 4 + (s >= 6 ? 16 : 0));
    const float b = device.train_batch(batches[stored]).loss();
    EXPECT_EQ(a, b) << "step " << s;
  }
  EXPECT_EQ(host.weights(), device.weights());
  EXPECT_THROW(device.train_batch(DeviceBatch{29, 32}), ConfigError);
  EXPECT_THROW(device.upload_batch(data.x.data(), {32, 8}, data.y.data(), {31}), ShapeError);
}

TEST(Trainer, WeightsSurviveASaveAndLoad) {
  const auto path = std::filesystem::temp_directory_path() / "mixtrain_test_weights.bin";
  Trainer a(mlp(), cpu_config());
  const Blobs data = make_blobs(64, 8, 3, 14);
  train_steps(a, data, 3);
  a.save_weights(path);
  Trainer b(mlp(), cpu_config());
  b.load_weights(path);
  EXPECT_EQ(a.weights(), b.weights());
  Trainer other(mlp(32, 8, 4), cpu_config());
  EXPECT_THROW(other.load_weights(path), Error);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace mixtrain

namespace mixtrain {
namespace {

TEST(Schedule, FactorsFollowTheirDefinitions) {
  ScheduleConfig s;
  EXPECT_EQ(schedule_factor(s, 0), 1.0f);
  EXPECT_EQ(schedule_factor(s, 12345), 1.0f);
  s.kind = LrSchedule::Cosine;
  s.total_steps = 100;
  EXPECT_FLOAT_EQ(schedule_factor(s, 0), 1.0f);
  EXPECT_NEAR(schedule_factor(s, 50), 0.5f, 1e-6f);
  EXPECT_NEAR(schedule_factor(s, 100), 0.0f, 1e-6f);
  EXPECT_NEAR(schedule_factor(s, 500), 0.0f, 1e-6f);  // stays at the floor after the run
  s.min_factor = 0.1f;
  EXPECT_NEAR(schedule_factor(s, 100), 0.1f, 1e-6f);
  s = ScheduleConfig{};
  s.kind = LrSchedule::StepDecay;
  s.step_size = 10;
  s.gamma = 0.5f;
  EXPECT_EQ(schedule_factor(s, 9), 1.0f);
  EXPECT_EQ(schedule_factor(s, 10), 0.5f);
  EXPECT_EQ(schedule_factor(s, 25), 0.25f);
  s = ScheduleConfig{};
  s.warmup_steps = 4;
  EXPECT_EQ(schedule_factor(s, 0), 0.25f);
  EXPECT_EQ(schedule_factor(s, 3), 1.0f);
  EXPECT_EQ(schedule_factor(s, 4), 1.0f);
}

TEST(Schedule, SgdStepsShrinkWithTheCosineSchedule) {
  TrainerConfig c;
  c.device = Device::CPU;
  c.optimizer = Optimizer::SGD;
  c.learning_rate = 0.01f;
  c.loss = Loss::MeanSquaredError;
  c.schedule.kind = LrSchedule::Cosine;
  c.schedule.total_steps = 2;
  Trainer t(ModelBuilder({4, 2}).dense(1).compile(), c);
  const std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8}, y{1, 2, 3, 4};
  const auto w0 = t.weights();
  t.train_batch(x.data(), {4, 2}, y.data(), {4, 1});  // factor 1
  const auto w1 = t.weights();
  t.train_batch(x.data(), {4, 2}, y.data(), {4, 1});  // factor 0.5
  t.train_batch(x.data(), {4, 2}, y.data(), {4, 1});  // factor 0: no change
  const auto w2 = t.weights();
  t.train_batch(x.data(), {4, 2}, y.data(), {4, 1});
  EXPECT_NE(w0, w1);
  EXPECT_EQ(t.weights(), w2);
  TrainerConfig bad = c;
  bad.schedule.total_steps = 0;
  EXPECT_THROW(Trainer(ModelBuilder({4, 2}).dense(1).compile(), bad), ConfigError);
}

}  // namespace
}  // namespace mixtrain
