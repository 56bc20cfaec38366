// mixtrain train: train a model on a dataset and report the test accuracy.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>

#include "common.hpp"
#include "mixtrain/error.hpp"
#include "mixtrain/report.hpp"

namespace mixtrain::cli {

namespace {

struct TrainOptions {
  DataOptions data;
  TrainerFlags trainer;
  std::string model = "mlp";
  int epochs = 5;
  std::int64_t batch_size = 64;
  std::string save_weights;
  std::string save_spec;
  std::string history;
  bool quiet = false;
  std::size_t progress_every = 0;
};

// Output paths are checked before training, so that a typo does not cost a training run.
void check_output(const std::string& path, const std::string& flag) {
  if (path.empty()) return;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent)) {
    throw ConfigError(
        fmt::format("{} '{}': directory '{}' does not exist", flag, path, parent.string()));
  }
}

int run_train(const TrainOptions& o) {
  TrainerConfig config = make_config(o.trainer);  // bad flags fail before data loads
  check_output(o.save_weights, "--save-weights");
  check_output(o.save_spec, "--save-spec");
  check_output(o.history, "--history");
  if (!o.history.empty()) {
    const std::string ext = std::filesystem::path(o.history).extension().string();
    if (ext != ".csv" && ext != ".svg") {
      throw ConfigError(fmt::format("--history '{}': use a .csv or .svg extension", o.history));
    }
  }
  const ModelSpec spec = resolve_model(o.model, o.batch_size);
  const LoadedData data = load_data(o.data, spec);
  const Model model = compile(spec);
  check_model_fits(model, data.train.size() > 0 ? data.train : data.test, o.model);
  const auto batches =
      static_cast<std::int64_t>((data.train.size() + static_cast<std::size_t>(o.batch_size) - 1) /
                                static_cast<std::size_t>(o.batch_size));
  apply_schedule(config, o.trainer, batches * o.epochs);
  Trainer trainer(model, config);
  if (!o.quiet) {
    std::printf("%s", model.summary().c_str());
    std::printf("dataset: %s\n", data.description.c_str());
    std::printf("config: model=%s %s batch-size=%lld epochs=%d\n", o.model.c_str(),
                describe_config(config, trainer.device()).c_str(),
                static_cast<long long>(o.batch_size), o.epochs);
    std::fflush(stdout);
  }
  FitDisplay display;
  display.progress = !o.quiet;
  display.progress_every = o.progress_every;
  display.epoch_lines = !o.quiet;
  const FitRun run =
      fit_with_display(trainer, data, o.epochs, static_cast<std::size_t>(o.batch_size), display);
  if (!o.quiet) {
    std::printf(
        "trained %d epoch(s) in %.1f s (%.0f samples/s), %lld steps, %lld skipped, final "
        "loss scale %g\n",
        static_cast<int>(run.history.epochs.size()), run.train_seconds, run.samples_per_second,
        static_cast<long long>(run.stats.steps), static_cast<long long>(run.stats.skipped_steps),
        static_cast<double>(run.stats.loss_scale));
    if (run.stats.fused_steps > 0) {
      std::printf("%lld of the steps ran as one fused kernel each (docs/cuda.md)\n",
                  static_cast<long long>(run.stats.fused_steps));
    }
  }
  if (!o.save_weights.empty()) trainer.save_weights(o.save_weights);
  if (!o.save_spec.empty()) spec.save(o.save_spec);
  if (!o.history.empty())
    save_history(trainer.history(), o.history, "mixtrain train --model " + o.model);
  const EpochReport& last = run.history.epochs.back();
  if (last.has_validation && last.validation.has_accuracy) {
    std::printf("test accuracy: %s\n", percent(last.validation.accuracy).c_str());
  } else if (last.has_validation) {
    std::printf("test loss: %.6f\n", last.validation.loss);
  }
  return 0;
}

}  // namespace

Command add_train_command(CLI::App& parent) {
  auto o = std::make_shared<TrainOptions>();
  CLI::App* app = parent.add_subcommand(
      "train",
      "Train a model on a dataset, evaluate it on the test split after every epoch and print "
      "`test accuracy: NN.NN%` at the end.");
  add_data_options(*app, o->data);
  app->add_option("--model", o->model, model_help())->capture_default_str();
  add_trainer_flags(*app, o->trainer, /*with_precision=*/true);
  app->add_option("--epochs", o->epochs, "passes over the training split")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_option("--batch-size", o->batch_size, "samples per training step")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_option("--save-weights", o->save_weights,
                  "write the trained fp32 weights to this file (for `mixtrain eval`)");
  app->add_option("--save-spec", o->save_spec,
                  "write the model spec (JSON) to this file (for `mixtrain eval` or --model)");
  app->add_option("--history", o->history,
                  "write every step's loss, loss scale, gradient norm and skipped flag to this "
                  "file: .csv (step,loss,loss_scale,grad_norm,skipped) or .svg (a chart)");
  app->add_option("--progress-every", o->progress_every,
                  "batches between progress reports on stderr (each syncs the device once); 0: "
                  "10 on a terminal, 100 otherwise")
      ->capture_default_str();
  app->add_flag("--quiet,-q", o->quiet, "print only the final `test accuracy:` line (and errors)");
  app->footer(
      "Example:\n"
      "  mixtrain train --dataset fashion-mnist --model mlp --precision fp16 --epochs 5 --seed 1\n"
      "  mixtrain train --dataset csv:data.csv --label-column label --model spec.json");
  return {app, [o] { return run_train(*o); }};
}

}  // namespace mixtrain::cli
