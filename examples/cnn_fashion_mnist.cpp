// A small residual CNN on Fashion-MNIST in FP16 mixed precision: conv2d, batch_norm, relu, a
// ResNet basic block with a strided 1x1 projection shortcut, max and global-average pooling.
// Runs on the GPU when one is present (cuDNN convolutions), else on the CPU.
// Usage: example_cnn_fashion_mnist [data-dir] [epochs]   (default: Debian's dataset-fashion-mnist,
// 1)
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <mixtrain/mixtrain.hpp>

int main(int argc, char** argv) {
  try {
    const std::string dir = argc > 1 ? argv[1] : mixtrain::default_fashion_mnist_dir().string();
    const int epochs = argc > 2 ? std::atoi(argv[2]) : 1;
    // image_layout: samples are [28, 28, 1] (channels-last), what conv2d takes.
    const mixtrain::Dataset train = mixtrain::load_fashion_mnist(dir, "train", true);
    const mixtrain::Dataset test = mixtrain::load_fashion_mnist(dir, "test", true);

    mixtrain::ModelBuilder b({128, 28, 28, 1});
    b.conv2d(32, 3, {.name = "stem", .padding = 1, .bias = false})
        .batch_norm({.name = "stem_bn"})
        .relu()  // fused into the batch-norm when the model compiles
        .max_pool2d(2, {.name = "pool"});
    // A basic block that halves the resolution and doubles the channels: both paths must end in
    // the same shape, so the shortcut is a strided 1x1 convolution with its own batch-norm.
    b.residual(
        [](mixtrain::ModelBuilder& r) {
          r.conv2d(64, 3, {.stride = 2, .padding = 1, .bias = false})
              .batch_norm()
              .relu()
              .conv2d(64, 3, {.padding = 1, .bias = false})
              .batch_norm();
        },
        [](mixtrain::ModelBuilder& s) {
          s.conv2d(64, 1, {.stride = 2, .bias = false}).batch_norm();
        },
        {.name = "block"});
    const mixtrain::Model model =
        b.relu().global_avg_pool({.name = "gap"}).dense(10, {.name = "logits"}).compile();
    std::printf("%s\n", model.summary().c_str());

    mixtrain::TrainerConfig cfg;
    cfg.precision = mixtrain::Precision::FP16;  // dynamic loss scaling, fp32 master weights
    cfg.learning_rate = 2e-3f;
    cfg.seed = 1;
    mixtrain::Trainer trainer(model, cfg);
    std::printf("device: %s\n", trainer.device().c_str());

    mixtrain::FitOptions options;
    options.epochs = epochs;
    options.batch_size = 128;
    options.validation = &test;
    options.on_epoch_end = [](const mixtrain::EpochReport& r) {
      std::printf("epoch %d: train loss %.4f, test accuracy %.2f%%\n", r.epoch, r.train_loss,
                  r.validation.accuracy * 100.0);
      return true;
    };
    trainer.fit(train, options);
    const mixtrain::TrainerStats s = trainer.stats();
    std::printf("steps %lld, skipped %lld, loss scale %g\n", static_cast<long long>(s.steps),
                static_cast<long long>(s.skipped_steps), static_cast<double>(s.loss_scale));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
