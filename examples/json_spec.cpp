// Models as data: build a spec, save it as JSON, load it back, compile it and train one batch.
// The same JSON file works with the command line: `mixtrain train --model spec.json ...`.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <random>
#include <vector>

#include <mixtrain/mixtrain.hpp>
#include <nlohmann/json.hpp>  // to_json()'s value: mixtrain.hpp declares it only

int main() {
  namespace fs = std::filesystem;
  const fs::path path = fs::temp_directory_path() / "mixtrain_example_spec.json";
  try {
    constexpr std::int64_t kBatch = 16;
    const mixtrain::ModelSpec spec = mixtrain::ModelBuilder({kBatch, 20})
                                         .dense(32, {.name = "hidden"})
                                         .gelu(/*approximate=*/true)
                                         .dropout(0.1f)
                                         .dense(4, {.name = "logits"})
                                         .spec();  // no compile yet: a spec is plain data
    spec.save(path);                               // atomic write
    std::printf("wrote %s:\n%s\n\n", path.c_str(), spec.to_json().dump(2).c_str());

    const mixtrain::ModelSpec loaded = mixtrain::ModelSpec::load(path);
    const mixtrain::Model model = mixtrain::compile(loaded);  // checks and infers every shape
    std::printf("%s\n", model.summary().c_str());

    std::mt19937 rng(5);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::uniform_int_distribution<std::int32_t> label(0, 3);
    std::vector<float> x(static_cast<std::size_t>(kBatch * 20));
    std::vector<std::int32_t> y(static_cast<std::size_t>(kBatch));
    for (float& v : x) v = u(rng);
    for (std::int32_t& v : y) v = label(rng);

    mixtrain::TrainerConfig cfg;
    cfg.precision = mixtrain::Precision::FP16;
    mixtrain::Trainer trainer(model, cfg);
    const mixtrain::StepResult r = trainer.train_batch(x.data(), {kBatch, 20}, y.data(), {kBatch});
    std::printf(
        "one FP16 step: loss %.4f (about ln 4 = 1.386 for an untrained 4-class model), "
        "loss scale %g, gradient norm %.4f\n",
        static_cast<double>(r.loss()), static_cast<double>(r.loss_scale()),
        static_cast<double>(r.grad_norm()));

    // A broken spec fails in compile(), and the message names the layer.
    mixtrain::ModelSpec broken = loaded;
    broken.layers.back().inputs = {"no_such_layer"};
    try {
      mixtrain::compile(broken);
    } catch (const mixtrain::Error& e) {
      std::printf("a broken spec is rejected: %s\n", e.what());
    }
    fs::remove(path);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    fs::remove(path);
    return 1;
  }
}
