// Mixed-precision training in a few lines: the Fashion-MNIST MLP in FP16 for one epoch, with a
// plain train_batch loop over a DataLoader.
//
//   example_basic_mixed_precision [FASHION_MNIST_DIR]
//
// FP16 keeps activations, their gradients and a working copy of the weights in half precision;
// the master weights and the optimizer state stay FP32, and a dynamic loss scale (initially 65536)
// keeps small gradients from flushing to zero.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>

#include <mixtrain/mixtrain.hpp>

int main(int argc, char** argv) {
  const std::filesystem::path dir = argc > 1 ? argv[1] : mixtrain::default_fashion_mnist_dir();
  if (!std::filesystem::is_directory(dir)) {
    std::printf(
        "Fashion-MNIST not found in %s.\nThis example needs it: pass its directory as the first "
        "argument, or install Debian's dataset-fashion-mnist package. Nothing to do.\n",
        dir.c_str());
    return 0;
  }
  try {
    const mixtrain::Dataset train = mixtrain::load_fashion_mnist(dir, "train");
    const mixtrain::Dataset test = mixtrain::load_fashion_mnist(dir, "test");

    constexpr std::int64_t kBatch = 64;
    const mixtrain::Model model = mixtrain::ModelBuilder({kBatch, 784})
                                      .dense(512)
                                      .relu()
                                      .dropout(0.2f)
                                      .dense(256)
                                      .relu()
                                      .dense(10)  // logits: the loss applies the softmax
                                      .compile();
    std::printf("%s", model.summary().c_str());

    mixtrain::TrainerConfig cfg;                // Adam, lr 1e-3, sparse cross-entropy
    cfg.precision = mixtrain::Precision::FP16;  // dynamic loss scaling comes with it
    cfg.seed = 1;
    mixtrain::Trainer trainer(model, cfg);
    std::printf("device: %s, precision: fp16, initial loss scale %g\n", trainer.device().c_str(),
                static_cast<double>(cfg.loss_scale.initial));

    mixtrain::DataLoader loader(train, kBatch, /*shuffle=*/true, /*seed=*/1);
    loader.start_epoch(0);
    mixtrain::DataLoader::Batch batch{};
    while (loader.next(batch)) {
      const auto n = static_cast<std::int64_t>(batch.count);
      const mixtrain::StepResult r =
          trainer.train_batch(batch.features, {n, 784}, batch.labels, {n});
      // Training never waits for the device; reading a result does, so read only now and then.
      if (r.step() % 200 == 0) {
        std::printf("step %4lld  loss %.4f  loss scale %g%s\n", static_cast<long long>(r.step()),
                    static_cast<double>(r.loss()), static_cast<double>(r.loss_scale()),
                    r.skipped() ? "  (skipped: overflow)" : "");
      }
    }
    const mixtrain::TrainerStats stats = trainer.stats();
    std::printf("%lld steps, %lld skipped for overflow, final loss scale %g\n",
                static_cast<long long>(stats.steps), static_cast<long long>(stats.skipped_steps),
                static_cast<double>(stats.loss_scale));
    // On a GPU in FP16/BF16 this model's steps run as one fused kernel each (docs/cuda.md).
    std::printf("%lld of them as one fused kernel\n", static_cast<long long>(stats.fused_steps));

    const mixtrain::EvalResult eval = trainer.evaluate(test);
    std::printf("test loss %.4f, test accuracy %.2f%%\n", eval.loss, eval.accuracy * 100.0);
    return 0;
  } catch (const mixtrain::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
