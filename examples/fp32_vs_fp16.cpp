// The same model from the same seed in FP32 and in FP16 mixed precision: time and accuracy.
//
//   example_fp32_vs_fp16 [FASHION_MNIST_DIR]
//
// Uses Fashion-MNIST when it is found, otherwise a synthetic 10-class problem of the same shape,
// so the example always runs. On the CPU, FP16 is emulated (exact IEEE rounding) and is not
// faster; on a GPU it is the fast path.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <random>
#include <string>

#include <mixtrain/mixtrain.hpp>

namespace {

// Ten faint prototypes under heavy noise, in [0, 1]^784: a stand-in for Fashion-MNIST when the
// files are missing, hard enough that the accuracy is not 100%.
mixtrain::Dataset synthetic(std::size_t n, std::uint32_t seed) {
  std::mt19937 proto_rng(3);  // the same prototypes for train and test
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  std::vector<std::vector<float>> protos(10, std::vector<float>(784));
  for (auto& p : protos) {
    for (float& v : p) v = u(proto_rng);
  }
  std::mt19937 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  std::uniform_int_distribution<int> cls(0, 9);
  mixtrain::Dataset d;
  d.sample_shape = {784};
  d.num_classes = 10;
  for (std::size_t i = 0; i < n; ++i) {
    const int c = cls(rng);
    d.labels.push_back(c);
    for (float v : protos[static_cast<std::size_t>(c)]) {
      const float x = 0.5f + 0.15f * v + noise(rng);
      d.features.push_back(x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x));
    }
  }
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::filesystem::path dir = argc > 1 ? argv[1] : mixtrain::default_fashion_mnist_dir();
    mixtrain::Dataset train, test;
    if (std::filesystem::is_directory(dir)) {
      train = mixtrain::load_fashion_mnist(dir, "train");
      test = mixtrain::load_fashion_mnist(dir, "test");
      std::printf("data: Fashion-MNIST from %s\n", dir.c_str());
    } else {
      train = synthetic(12000, 1);
      test = synthetic(2000, 2);
      std::printf("data: Fashion-MNIST not found in %s; using a synthetic 10-class problem\n",
                  dir.c_str());
    }
    const mixtrain::Model model = mixtrain::ModelBuilder({64, 784})
                                      .dense(512)
                                      .relu()
                                      .dropout(0.2f)
                                      .dense(256)
                                      .relu()
                                      .dense(10)
                                      .compile();

    std::printf("\n%-10s %9s %11s %11s %14s %8s %12s\n", "precision", "time (s)", "samples/s",
                "train loss", "test accuracy", "skipped", "final scale");
    for (mixtrain::Precision p : {mixtrain::Precision::FP32, mixtrain::Precision::FP16}) {
      mixtrain::TrainerConfig cfg;
      cfg.precision = p;
      cfg.seed = 1;  // same initial weights, dropout masks and batch order
      mixtrain::Trainer trainer(model, cfg);
      mixtrain::FitOptions options;
      options.epochs = 1;
      options.batch_size = 64;
      const auto start = std::chrono::steady_clock::now();
      const mixtrain::FitHistory h = trainer.fit(train, options);
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const mixtrain::EvalResult eval = trainer.evaluate(test);
      const mixtrain::TrainerStats stats = trainer.stats();
      std::printf("%-10s %9.2f %11.0f %11.4f %13.2f%% %8lld %12g\n",
                  std::string(mixtrain::precision_name(p)).c_str(), seconds,
                  static_cast<double>(train.size()) / seconds, h.epochs.back().train_loss,
                  eval.accuracy * 100.0, static_cast<long long>(stats.skipped_steps),
                  static_cast<double>(stats.loss_scale));
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
