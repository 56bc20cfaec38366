// The CUDA backend's machinery (transfers, memory accounting, step capture) and the public API
// end to end: the same model and seed trained on Device::CUDA and Device::CPU.

#include "cuda_test_util.hpp"
#include "cuda_trainer_util.hpp"
#include "mixtrain/mixtrain.hpp"

namespace mixtrain::cuda_test {
namespace {

// ---- backend machinery ------------------------------------------------------------------------

using BackendTest = CudaVsCpu;

TEST_F(BackendTest, NameAndDevicePresent) {
  EXPECT_EQ(gpu().name(), "cuda");
  EXPECT_TRUE(cuda_available());
}

TEST_F(BackendTest, UploadTakesItsCopyBeforeReturning) {
  // The host buffer is overwritten right after each upload, with no synchronisation between.
  const std::size_t n = 1000;
  std::vector<float> host = uniform(static_cast<std::int64_t>(n), 0, 1);
  const std::vector<float> first = host;
  DeviceMemory d1(gpu(), n * 4), d2(gpu(), n * 4);
  gpu().upload(d1.get(), host.data(), n * 4);
  for (float& v : host) v = -v;
  gpu().upload(d2.get(), host.data(), n * 4);
  std::fill(host.begin(), host.end(), 0.0f);
  std::vector<float> r1(n), r2(n);
  gpu().download(r1.data(), d1.get(), n * 4);
  gpu().download(r2.data(), d2.get(), n * 4);
  EXPECT_EQ(r1, first);
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(r2[i], -first[i]);
}

TEST_F(BackendTest, LargeAndManyUploadsRoundTrip) {
  // Larger than the staging ring (chunked, the ring wraps), then many small ones.
  const std::size_t n = (std::size_t{40} << 20) / 4 + 13;
  std::vector<float> host(n);
  for (std::size_t i = 0; i < n; ++i) host[i] = static_cast<float>(i % 100003);
  DeviceMemory d(gpu(), n * 4);
  gpu().upload(d.get(), host.data(), n * 4);
  std::vector<float> back(n);
  gpu().download(back.data(), d.get(), n * 4);
  EXPECT_EQ(back, host);
  for (int i = 0; i < 500; ++i) {
    const float v = static_cast<float>(i);
    gpu().upload(static_cast<float*>(d.get()) + i, &v, 4);
  }
  gpu().download(back.data(), d.get(), 500 * 4);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(back[static_cast<std::size_t>(i)], static_cast<float>(i));
}

TEST_F(BackendTest, MemoryAccounting) {
  const std::size_t base = gpu().memory_in_use();
  void* a = gpu().alloc(1 << 20);
  EXPECT_EQ(gpu().memory_in_use(), base + (1 << 20));
  void* b = gpu().alloc(3 << 20);
  EXPECT_EQ(gpu().memory_in_use(), base + (4 << 20));
  gpu().free(a);
  EXPECT_EQ(gpu().memory_in_use(), base + (3 << 20));
  EXPECT_GE(gpu().peak_memory(), base + (4 << 20));
  gpu().free(b);
  EXPECT_EQ(gpu().memory_in_use(), base);
}

// dst += src inside a step: a step that ran twice would show.
struct AccumulateStep {
  Backend& be;
  Buf src, dst;
  std::int64_t n;
  int body_calls = 0;
  void run(const std::string& key) {
    be.run_step(key, [&] {
      ++body_calls;
      be.convert(src, dst, n, true);
    });
  }
};

TEST_F(BackendTest, RunStepRunsEachStepExactlyOnceAndReplaysWithNewData) {
  const std::int64_t n = 1000;
  Twin src(cpu(), gpu(), DType::F32, n), dst(cpu(), gpu(), DType::F32, n);
  src.set(std::vector<float>(static_cast<std::size_t>(n), 1.0f));
  dst.set(std::vector<float>(static_cast<std::size_t>(n), 0.0f));
  const bool graphs = graphs_enabled();
  AccumulateStep step{gpu(), src.gpu(), dst.gpu(), n};
  step.run("k");
  EXPECT_EQ(dst.gpu_values(), std::vector<float>(static_cast<std::size_t>(n), 1.0f));
  // Graphs: planning pass + capture issue the body twice, but the device runs it once.
  EXPECT_EQ(step.body_calls, graphs ? 2 : 1);
  const int calls = step.body_calls;
  // The replay reads the buffers' current contents.
  src.set(std::vector<float>(static_cast<std::size_t>(n), 2.0f));
  step.run("k");
  step.run("k");
  EXPECT_EQ(dst.gpu_values(), std::vector<float>(static_cast<std::size_t>(n), 5.0f));
  EXPECT_EQ(step.body_calls, graphs ? calls : calls + 2);
  gpu().reset_steps();
  step.run("k");
  EXPECT_EQ(dst.gpu_values(), std::vector<float>(static_cast<std::size_t>(n), 7.0f));
}

TEST_F(BackendTest, HostTransfersInsideAStepThrowAndLeaveTheBackendUsable) {
  if (!graphs_enabled()) GTEST_SKIP() << "eager mode: transfers in a step are allowed";
  DeviceMemory d(gpu(), 64);
  float host[16] = {};
  EXPECT_THROW(gpu().run_step("bad", [&] { gpu().download(host, d.get(), 64); }), DeviceError);
  EXPECT_THROW(gpu().run_step("bad2", [&] { gpu().upload(d.get(), host, 64); }), DeviceError);
  // A throwing op during capture ends the capture cleanly.
  Twin a(cpu(), gpu(), DType::F32, 16);
  int calls = 0;
  EXPECT_THROW(gpu().run_step("bad3",
                              [&] {
                                ++calls;
                                gpu().fill(a.gpu(), 16, 1.0f);
                                if (calls == 2) throw DataError("thrown during capture");
                              }),
               DataError);
  gpu().fill(a.gpu(), 16, 3.0f);
  EXPECT_EQ(a.gpu_values(), std::vector<float>(16, 3.0f));
}

TEST_F(BackendTest, GraphsOffRunsEagerly) {
  ScopedEnv env("MIXTRAIN_CUDA_GRAPHS", "0");
  auto be = make_cuda_backend();
  DeviceMemory s(*be, 64), d(*be, 64);
  const std::vector<float> ones(16, 1.0f), zeros(16, 0.0f);
  be->upload(s.get(), ones.data(), 64);
  be->upload(d.get(), zeros.data(), 64);
  AccumulateStep step{*be, Buf{s.get(), DType::F32}, Buf{d.get(), DType::F32}, 16};
  step.run("k");
  step.run("k");
  EXPECT_EQ(step.body_calls, 2);
  std::vector<float> back(16);
  be->download(back.data(), d.get(), 64);
  EXPECT_EQ(back, std::vector<float>(16, 2.0f));
}

// ---- end to end -------------------------------------------------------------------------------

constexpr std::int64_t kBatch = 32, kFeatures = 16, kClasses = 5;

Model test_model() {
  return ModelBuilder({kBatch, kFeatures})
      .dense(64)
      .relu()
      .dropout(0.1f)
      .dense(48)
      .gelu(true)
      .dense(32)
      .tanh()
      .dense(kClasses)
      .compile();
}

Batches make_batches(std::mt19937& rng, int count, float scale = 1.0f) {
  return cuda_test::make_batches(rng, count, kBatch, kFeatures, kClasses,
                                 std::normal_distribution<float>(0.0f, scale));
}

TrainerConfig config(Device d, Precision p) {
  return trainer_config(d, p, 11);
}

std::vector<StepStats> train(const Model& m, const TrainerConfig& c, const Batches& b, int steps,
                             std::vector<float>* weights = nullptr) {
  Trainer t(m, c);
  for (int s = 0; s < steps; ++s) {
    const std::size_t i = static_cast<std::size_t>(s) % b.x.size();
    t.train_batch(b.x[i].data(), {kBatch, kFeatures}, b.y[i].data(), {kBatch});
  }
  if (weights != nullptr) *weights = t.weights();
  return t.history();
}

class EndToEnd : public CudaVsCpu {};

TEST_F(EndToEnd, SameLossesAsCpuInEveryPrecision) {
  const Batches b = make_batches(rng_, 4);
  const Model m = test_model();
  // FP32: the GEMMs accumulate in different orders (~1e-6 relative per layer) and 20 Adam steps
  // of lr 1e-3 carry those differences into the weights without amplifying them much: 1e-3.
  // FP16/BF16: a rounding to the storage type can flip by one ulp (2^-11 / 2^-8 relative) where
  // the fp32 values differ at all; over the layers and steps: 2e-2.
  for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const std::vector<StepStats> ref = train(m, config(Device::CPU, p), b, 20);
    const std::vector<StepStats> got = train(m, config(Device::CUDA, p), b, 20);
    ASSERT_EQ(ref.size(), got.size());
    const double tol = p == Precision::FP32 ? 1e-3 : 2e-2;
    for (std::size_t s = 0; s < ref.size(); ++s) {
      EXPECT_NEAR(got[s].loss, ref[s].loss, tol * std::fabs(ref[s].loss)) << "step " << s;
      EXPECT_EQ(got[s].skipped, ref[s].skipped) << "step " << s;
      EXPECT_EQ(got[s].loss_scale, ref[s].loss_scale) << "step " << s;
    }
  }
}

// Batches kept on the device (upload_batch): the first 16 are read in place by a captured step of
// their own, later ones copied in; both give the bits of the same batches from host memory.
TEST_F(EndToEnd, DeviceBatchesTrainLikeHostBatches) {
  const Batches b = make_batches(rng_, 4);
  const Model m = test_model();
  for (Precision p : {Precision::FP32, Precision::FP16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    const TrainerConfig c = config(Device::CUDA, p);
    Trainer host(m, c), device(m, c);
    train_host_and_stored(host, device, b, kBatch, kFeatures, 12);
    const std::vector<StepStats> hh = host.history(), dh = device.history();
    ASSERT_EQ(hh.size(), dh.size());
    for (std::size_t s = 0; s < hh.size(); ++s) EXPECT_EQ(hh[s].loss, dh[s].loss) << "step " << s;
    EXPECT_EQ(host.weights(), device.weights());
  }
}

TEST_F(EndToEnd, Fp16OverflowSameSkipsAndScaleHistory) {
  const Batches b = make_batches(rng_, 4);
  const Model m = test_model();
  TrainerConfig c = config(Device::CPU, Precision::FP16);
  c.loss_scale.initial = 16777216.0f;  // 2^24: the first steps overflow
  c.loss_scale.growth_interval = 5;    // and the scale grows again within the run
  const std::vector<StepStats> ref = train(m, c, b, 20);
  c.device = Device::CUDA;
  const std::vector<StepStats> got = train(m, c, b, 20);
  ASSERT_EQ(ref.size(), got.size());
  int skipped = 0;
  for (std::size_t s = 0; s < ref.size(); ++s) {
    EXPECT_EQ(got[s].skipped, ref[s].skipped) << "step " << s;
    EXPECT_EQ(got[s].loss_scale, ref[s].loss_scale) << "step " << s;
    EXPECT_EQ(std::isinf(got[s].grad_norm), std::isinf(ref[s].grad_norm)) << "step " << s;
    skipped += ref[s].skipped ? 1 : 0;
  }
  EXPECT_GE(skipped, 3);
  EXPECT_TRUE(got.front().skipped);
}

TEST_F(EndToEnd, GraphReplayGivesTheSameBitsAsEager) {
  const Batches b = make_batches(rng_, 4);
  const Model m = test_model();
  for (Precision p : {Precision::FP32, Precision::FP16}) {
    SCOPED_TRACE(std::string(precision_name(p)));
    std::vector<float> w_graph, w_eager;
    std::vector<StepStats> graph, eager;
    {
      ScopedEnv env("MIXTRAIN_CUDA_GRAPHS", "1");  // graphs even when the suite runs without
      graph = train(m, config(Device::CUDA, p), b, 20, &w_graph);
    }
    {
      ScopedEnv env("MIXTRAIN_CUDA_GRAPHS", "0");
      eager = train(m, config(Device::CUDA, p), b, 20, &w_eager);
    }
    ASSERT_EQ(graph.size(), eager.size());
    for (std::size_t s = 0; s < graph.size(); ++s) {
      EXPECT_EQ(graph[s].loss, eager[s].loss) << "step " << s;
      EXPECT_EQ(graph[s].grad_norm, eager[s].grad_norm) << "step " << s;
    }
    EXPECT_EQ(w_graph, w_eager);
  }
}

TEST_F(EndToEnd, PartialBatchesAndPredictMatchCpu) {
  const Batches b = make_batches(rng_, 2);
  const Model m = test_model();
  Trainer tc(m, config(Device::CPU, Precision::FP32));
  Trainer tg(m, config(Device::CUDA, Precision::FP32));
  EXPECT_EQ(tg.device(), "cuda");
  for (int s = 0; s < 6; ++s) {
    const std::int64_t n = s % 2 == 0 ? kBatch : 20;  // two captured steps, alternating
    const std::size_t i = static_cast<std::size_t>(s) % 2;
    const float lc = tc.train_batch(b.x[i].data(), {n, kFeatures}, b.y[i].data(), {n}).loss();
    const float lg = tg.train_batch(b.x[i].data(), {n, kFeatures}, b.y[i].data(), {n}).loss();
    EXPECT_NEAR(lg, lc, 1e-3 * std::fabs(lc)) << "step " << s;
  }
  const std::vector<float> pc = tc.predict(b.x[0].data(), {kBatch, kFeatures});
  const std::vector<float> pg = tg.predict(b.x[0].data(), {kBatch, kFeatures});
  ASSERT_EQ(pc.size(), pg.size());
  for (std::size_t i = 0; i < pc.size(); ++i) {
    EXPECT_NEAR(pg[i], pc[i], 1e-3 * (1.0 + std::fabs(pc[i]))) << "output " << i;
  }
  EXPECT_GT(tg.stats().peak_memory_bytes, 0u);
}

TEST_F(EndToEnd, RegressionWithFloatTargets) {
  const Model m = ModelBuilder({kBatch, kFeatures}).dense(32).swish().dense(3).compile();
  std::vector<float> x = normal(kBatch * kFeatures, 0, 1), y = normal(kBatch * 3, 0, 1);
  for (Loss loss : {Loss::MeanSquaredError, Loss::Huber, Loss::MeanAbsoluteError}) {
    for (Precision p : {Precision::FP32, Precision::BF16}) {
      TrainerConfig c = config(Device::CPU, p);
      c.loss = loss;
      c.optimizer = Optimizer::SGD;
      c.sgd.momentum = 0.9f;
      c.learning_rate = 1e-2f;
      Trainer tc(m, c);
      c.device = Device::CUDA;
      Trainer tg(m, c);
      for (int s = 0; s < 10; ++s) {
        const float lc =
            tc.train_batch(x.data(), {kBatch, kFeatures}, y.data(), {kBatch, 3}).loss();
        const float lg =
            tg.train_batch(x.data(), {kBatch, kFeatures}, y.data(), {kBatch, 3}).loss();
        EXPECT_NEAR(lg, lc, (p == Precision::FP32 ? 1e-3 : 2e-2) * std::fabs(lc))
            << loss_name(loss) << " " << precision_name(p) << " step " << s;
      }
    }
  }
}

TEST_F(EndToEnd, BadInputsThrowTheSameTypesAndLeaveTheTrainerUsable) {
  const Batches b = make_batches(rng_, 1);
  const Model m = test_model();
  for (Device d : {Device::CPU, Device::CUDA}) {
    SCOPED_TRACE(std::string(device_name(d)));
    Trainer t(m, config(d, Precision::FP16));
    std::vector<float> x = b.x[0];
    std::vector<std::int32_t> y = b.y[0];
    x[5] = NAN;
    EXPECT_THROW(t.train_batch(x.data(), {kBatch, kFeatures}, y.data(), {kBatch}), DataError);
    x[5] = 0.0f;
    y[3] = static_cast<std::int32_t>(kClasses);
    EXPECT_THROW(t.train_batch(x.data(), {kBatch, kFeatures}, y.data(), {kBatch}), DataError);
    y[3] = 0;
    EXPECT_THROW(t.train_batch(x.data(), {kBatch, kFeatures + 1}, y.data(), {kBatch}), ShapeError);
    EXPECT_THROW(t.train_batch(x.data(), {kBatch + 1, kFeatures}, y.data(), {kBatch + 1}),
                 ShapeError);
    EXPECT_THROW(t.train_batch(x.data(), {kBatch, kFeatures}, y.data(), {kBatch - 1}), ShapeError);
    const std::vector<float> targets(static_cast<std::size_t>(kBatch * kClasses), 0.0f);
    EXPECT_THROW(t.train_batch(x.data(), {kBatch, kFeatures}, targets.data(), {kBatch, kClasses}),
                 ShapeError);
    const float loss = t.train_batch(x.data(), {kBatch, kFeatures}, y.data(), {kBatch}).loss();
    EXPECT_TRUE(std::isfinite(loss));
  }
}

}  // namespace
}  // namespace mixtrain::cuda_test
