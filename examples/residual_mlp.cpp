// Residual connections with ModelBuilder::residual: y = body(x) + x, trained in BF16 on the
// classic two-armed spiral (2 features, 2 classes), which no linear model can separate.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <random>

#include <mixtrain/mixtrain.hpp>

namespace {

mixtrain::Dataset spiral(std::size_t per_class, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.03f);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  mixtrain::Dataset d;
  d.sample_shape = {2};
  d.num_classes = 2;
  for (std::size_t i = 0; i < per_class * 2; ++i) {
    const int c = static_cast<int>(i % 2);
    const float r = u(rng);
    const float angle = 9.0f * r + 3.14159265f * static_cast<float>(c);  // arms half a turn apart
    d.features.push_back(r * std::cos(angle) + noise(rng));
    d.features.push_back(r * std::sin(angle) + noise(rng));
    d.labels.push_back(c);
  }
  return d;
}

}  // namespace

int main() {
  try {
    const mixtrain::Dataset train = spiral(1500, 1);
    const mixtrain::Dataset test = spiral(500, 2);

    // Two residual blocks of width 64: each adds dense-relu-dense to its input.
    auto block = [](mixtrain::ModelBuilder& b) { b.dense(64).relu().dense(64); };
    const mixtrain::Model model = mixtrain::ModelBuilder({32, 2})
                                      .dense(64, {.name = "stem"})
                                      .relu()
                                      .residual(block, {}, {.name = "block1"})
                                      .relu()
                                      .residual(block, {}, {.name = "block2"})
                                      .relu()
                                      .dense(2, {.name = "logits"})
                                      .compile();
    std::printf("%s\n", model.summary().c_str());

    mixtrain::TrainerConfig cfg;
    cfg.precision = mixtrain::Precision::BF16;
    cfg.learning_rate = 3e-3f;
    cfg.seed = 1;
    mixtrain::Trainer trainer(model, cfg);
    mixtrain::FitOptions options;
    options.epochs = 30;
    options.batch_size = 32;
    options.validation = &test;
    options.on_epoch_end = [](const mixtrain::EpochReport& r) {
      if (r.epoch % 5 == 0) {
        std::printf("epoch %2d: train loss %.4f, test accuracy %.2f%%\n", r.epoch, r.train_loss,
                    r.validation.accuracy * 100.0);
      }
      return true;
    };
    trainer.fit(train, options);
    std::printf("final test accuracy: %.2f%%\n", trainer.evaluate(test).accuracy * 100.0);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
