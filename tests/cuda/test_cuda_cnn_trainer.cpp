// A convolutional network with a residual block trained end to end on CUDA and on the CPU from the
// same seed: conv2d (cuDNN), batch-norm, pooling, the residual add and the dense head together,
// in every precision, through the captured step graph.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "cuda_test_util.hpp"
#include "cuda_trainer_util.hpp"
#include "graph/graph.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain::cuda_test {
namespace {

constexpr std::int64_t kBatch = 8, kSide = 10, kChannels = 3, kClasses = 5;
constexpr std::int64_t kPixels = kSide * kSide * kChannels;

Model cnn() {
  return ModelBuilder({kBatch, kSide, kSide, kChannels})
      .conv2d(8, 3, {.padding = "same"})
      .batch_norm()
      .relu()
      .residual([](ModelBuilder& r) {
        r.conv2d(8, 3, {.padding = 1, .bias = false}).batch_norm().relu();
      })
      .max_pool2d(2)
      .conv2d(16, 3, {.stride = 2, .padding = 1, .bias = false})
      .batch_norm()
      .relu()
      .avg_pool2d(2, {.stride = 1})
      .global_avg_pool()
      .dense(kClasses)
      .compile();
}

Batches make_batches(std::mt19937& rng, int count) {
  return cuda_test::make_batches(rng, count, kBatch, kPixels, kClasses,
                                 std::normal_distribution<float>(0.0f, 1.0f));
}

TrainerConfig config(Device d, Precision p) {
  return trainer_config(d, p, 5);
}

struct TrainRun {
  std::vector<StepStats> history;
  std::vector<float> weights;
  std::vector<float> predictions;  // inference mode: batch-norm's running statistics
};

TrainRun train(const Model& m, const TrainerConfig& c, const Batches& b, int steps) {
  Trainer t(m, c);
  for (int s = 0; s < steps; ++s) {
    const std::size_t i = static_cast<std::size_t>(s) % b.x.size();
    t.train_batch(b.x[i].data(), {kBatch, kSide, kSide, kChannels}, b.y[i].data(), {kBatch});
  }
  TrainRun r;
  r.history = t.history();
  r.weights = t.weights();
  r.predictions = t.predict(b.x[0].data(), {kBatch, kSide, kSide, kChannels});
  return r;
}

using CnnEndToEnd = CudaVsCpu;

TEST_F(CnnEndToEnd, SameLossesAndPredictionsAsCpuInEveryPrecision) {
  const Batches b = make_batches(rng_, 3);
  const Model m = cnn();
  // FP32: convolutions and batch statistics sum in different orders (~1e-6 relative per layer);
  // 15 Adam steps carry that into the weights without amplifying it much: 1e-3 on the loss.
  // FP16/BF16: one-ulp flips of stored activations (2^-11 / 2^-8 relative), through batch-norm's
  // normalisation and the layers: 2e-2 (FP16) and 5e-2 (BF16) on the loss and the outputs.
  // Inference outputs divide by running variances estimated from as few as 72 rows (the last
  // stage), which amplifies the fp32 differences: 5e-3 for FP32 there.
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const TrainRun ref = train(m, config(Device::CPU, p), b, 15);
    const TrainRun got = train(m, config(Device::CUDA, p), b, 15);
    ASSERT_EQ(ref.history.size(), got.history.size());
    const double tol = p == Precision::FP32 ? 1e-3 : p == Precision::FP16 ? 2e-2 : 5e-2;
    for (std::size_t s = 0; s < ref.history.size(); ++s) {
      EXPECT_NEAR(got.history[s].loss, ref.history[s].loss, tol * std::fabs(ref.history[s].loss))
          << "step " << s;
      EXPECT_EQ(got.history[s].skipped, ref.history[s].skipped) << "step " << s;
      EXPECT_EQ(got.history[s].loss_scale, ref.history[s].loss_scale) << "step " << s;
    }
    ASSERT_EQ(ref.predictions.size(), got.predictions.size());
    for (std::size_t i = 0; i < ref.predictions.size(); ++i) {
      EXPECT_NEAR(got.predictions[i], ref.predictions[i],
                  std::max(tol, 5e-3) * (1.0 + std::fabs(ref.predictions[i])))
          << "output " << i;
    }
  }
}

TEST_F(CnnEndToEnd, Fp16OverflowSkipsTheSameStepsAsCpu) {
  const Batches b = make_batches(rng_, 3);
  const Model m = cnn();
  TrainerConfig c = config(Device::CPU, Precision::FP16);
  c.loss_scale.initial = 16777216.0f;  // 2^24 (the ceiling): the first steps overflow
  // No growth within the run: a scale grown back to the edge of overflow would make the skip
  // depend on the last fp32 rounding of the largest gradient, which differs between backends.
  c.loss_scale.growth_interval = 1000;
  const TrainRun ref = train(m, c, b, 40);
  c.device = Device::CUDA;
  const TrainRun got = train(m, c, b, 40);
  ASSERT_EQ(ref.history.size(), got.history.size());
  int skipped = 0;
  for (std::size_t s = 0; s < ref.history.size(); ++s) {
    EXPECT_EQ(got.history[s].skipped, ref.history[s].skipped) << "step " << s;
    EXPECT_EQ(got.history[s].loss_scale, ref.history[s].loss_scale) << "step " << s;
    skipped += ref.history[s].skipped ? 1 : 0;
  }
  EXPECT_GE(skipped, 3);
  // Skipped steps left batch-norm's running statistics alone on both: the inference outputs
  // (which use them) still agree.
  ASSERT_EQ(got.predictions.size(), ref.predictions.size());
  for (std::size_t i = 0; i < ref.predictions.size(); ++i) {
    EXPECT_NEAR(got.predictions[i], ref.predictions[i],
                2e-2 * (1.0 + std::fabs(ref.predictions[i])))
        << "output " << i;
  }
}

TEST_F(CnnEndToEnd, GraphReplayGivesTheSameBitsAsEager) {
  const Batches b = make_batches(rng_, 3);
  const Model m = cnn();
  for (Precision p : {Precision::FP32, Precision::FP16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    TrainRun graph, eager;
    {
      ScopedEnv env("MIXTRAIN_CUDA_GRAPHS", "1");  // graphs even when the suite runs without
      graph = train(m, config(Device::CUDA, p), b, 10);
    }
    {
      ScopedEnv env("MIXTRAIN_CUDA_GRAPHS", "0");
      eager = train(m, config(Device::CUDA, p), b, 10);
    }
    ASSERT_EQ(graph.history.size(), eager.history.size());
    for (std::size_t s = 0; s < graph.history.size(); ++s) {
      EXPECT_EQ(graph.history[s].loss, eager.history[s].loss) << "step " << s;
    }
    EXPECT_EQ(graph.weights, eager.weights);
    EXPECT_EQ(graph.predictions, eager.predictions);
  }
}

TEST_F(CnnEndToEnd, FusedBatchNormReluGivesTheUnfusedBits) {
  // relu(round(bn)) == round(relu(bn)) and the backward mask is ReLU's own product: the fused
  // kernels give the bits of batch-norm and ReLU run apart.
  const Batches b = make_batches(rng_, 3);
  const Model fused = cnn();
  Model plain;
  {
    ScopedEnv env("MIXTRAIN_FUSION", "0");
    plain = cnn();
  }
  ASSERT_LT(fused.graph().nodes.size(), plain.graph().nodes.size());
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const TrainRun f = train(fused, config(Device::CUDA, p), b, 8);
    const TrainRun u = train(plain, config(Device::CUDA, p), b, 8);
    ASSERT_EQ(f.history.size(), u.history.size());
    for (std::size_t s = 0; s < f.history.size(); ++s) {
      EXPECT_EQ(f.history[s].loss, u.history[s].loss) << "step " << s;
    }
    EXPECT_EQ(f.weights, u.weights);
    EXPECT_EQ(f.predictions, u.predictions);
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
