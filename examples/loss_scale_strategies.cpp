// Loss scaling on data where FP16 gradients overflow at high scales.
//
// A regression with large targets (t = 8 * x.v, 32 features in [0, 1), v = +-1): the untrained
// model's MSE gradient at the output is large, so scaled by 65536 or 131072 it exceeds FP16's
// maximum (65504) and the first steps overflow. The dynamic scaler skips each overflowed step and
// halves the scale until the scaled gradients fit, then doubles it after `growth_interval` clean
// steps (short here, 50, to show it), overflowing and backing off again when it grows too far.
// A static scale that is too high skips every step and the model never learns. BF16 has FP32's
// exponent range and needs no scaling.
//
// Every figure printed is read back from the trainer (stats() and history()): nothing is assumed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include <mixtrain/mixtrain.hpp>

namespace {

constexpr std::int64_t kFeatures = 32;
constexpr std::int64_t kBatch = 32;
constexpr int kSteps = 300;
constexpr std::int32_t kGrowthInterval = 50;

struct Data {
  std::vector<float> x;  // [n, kFeatures] in [0, 1)
  std::vector<float> t;  // [n, 1]
};

// t = 8 * (x . v) with v a fixed random +-1 vector: linear, learnable, large.
Data make_data(std::int64_t n) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> v(kFeatures);
  for (float& s : v) s = u(rng) < 0.5f ? -1.0f : 1.0f;
  Data d;
  d.x.resize(static_cast<std::size_t>(n * kFeatures));
  d.t.resize(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    float dot = 0.0f;
    for (std::int64_t k = 0; k < kFeatures; ++k) {
      const float x = u(rng);
      d.x[static_cast<std::size_t>(i * kFeatures + k)] = x;
      dot += x * v[static_cast<std::size_t>(k)];
    }
    d.t[static_cast<std::size_t>(i)] = 8.0f * dot;
  }
  return d;
}

struct Strategy {
  const char* name;
  mixtrain::Precision precision;
  mixtrain::LossScaleMode mode;
  float initial;
};

void run(const Strategy& s, const mixtrain::Model& model, const Data& data) {
  mixtrain::TrainerConfig cfg;
  cfg.loss = mixtrain::Loss::MeanSquaredError;
  cfg.learning_rate = 1e-2f;
  cfg.precision = s.precision;
  cfg.loss_scale.mode = s.mode;
  cfg.loss_scale.initial = s.initial;
  cfg.loss_scale.growth_interval = kGrowthInterval;
  cfg.seed = 1;
  mixtrain::Trainer trainer(model, cfg);
  const auto n = static_cast<std::int64_t>(data.t.size());
  float first_loss = 0.0f;
  for (int step = 0; step < kSteps; ++step) {
    const std::int64_t begin = (step * kBatch) % n;
    auto r = trainer.train_batch(data.x.data() + begin * kFeatures, {kBatch, kFeatures},
                                 data.t.data() + begin, {kBatch, 1});
    if (step == 0) first_loss = r.loss();
  }
  const mixtrain::TrainerStats st = trainer.stats();
  // Scale changes, from the per-step history.
  int backoffs = 0, growths = 0, first_clean = -1;
  const auto& h = trainer.history();
  for (std::size_t i = 0; i < h.size(); ++i) {
    if (first_clean < 0 && !h[i].skipped) first_clean = static_cast<int>(i);
    if (i > 0 && h[i].loss_scale < h[i - 1].loss_scale) ++backoffs;
    if (i > 0 && h[i].loss_scale > h[i - 1].loss_scale) ++growths;
  }
  std::printf("%-22s %9lld %8lld %8d %8d %12s %11g %10.3f %10.4f\n", s.name,
              static_cast<long long>(st.steps), static_cast<long long>(st.skipped_steps), backoffs,
              growths, first_clean < 0 ? "never" : std::to_string(first_clean).c_str(),
              static_cast<double>(st.loss_scale), static_cast<double>(first_loss),
              static_cast<double>(st.last_loss));
}

}  // namespace

int main() {
  try {
    const Data data = make_data(kBatch * 64);
    const mixtrain::Model model =
        mixtrain::ModelBuilder({kBatch, kFeatures}).dense(64).relu().dense(1).compile();
    using mixtrain::LossScaleMode;
    using mixtrain::Precision;
    const Strategy strategies[] = {
        {"fp32 (reference)", Precision::FP32, LossScaleMode::None, 1.0f},
        {"fp16 dynamic 16384", Precision::FP16, LossScaleMode::Dynamic, 16384.0f},
        {"fp16 dynamic 65536", Precision::FP16, LossScaleMode::Dynamic, 65536.0f},
        {"fp16 dynamic 131072", Precision::FP16, LossScaleMode::Dynamic, 131072.0f},
        {"fp16 static 131072", Precision::FP16, LossScaleMode::Static, 131072.0f},
        {"bf16 (no scaling)", Precision::BF16, LossScaleMode::None, 1.0f},
    };
    std::printf(
        "MSE regression, targets up to ~40, batch %lld, %d steps, Adam lr 1e-2, growth "
        "interval %d\n\n",
        static_cast<long long>(kBatch), kSteps, kGrowthInterval);
    std::printf("%-22s %9s %8s %8s %8s %12s %11s %10s %10s\n", "strategy", "steps", "skipped",
                "backoffs", "growths", "first clean", "final scale", "first loss", "final loss");
    for (const Strategy& s : strategies) run(s, model, data);
    std::printf(
        "\nskipped = steps whose scaled gradients overflowed (the update was not applied);\n"
        "first clean = index of the first step that was applied.\n");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
