// mixtrain compare: the same model from the same seed in several precisions, side by side.
#include <fmt/format.h>

#include <cstdio>
#include <optional>

#include "common.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

namespace {

struct CompareOptions {
  DataOptions data;
  TrainerFlags trainer;
  std::string model = "mlp";
  int epochs = 1;
  std::int64_t batch_size = 64;
  std::vector<std::string> precisions = {"fp32", "fp16", "bf16"};
  bool quiet = false;
};

struct Row {
  std::string precision;
  FitRun run;
};

int run_compare(const CompareOptions& o) {
  std::vector<TrainerConfig> configs;
  for (const std::string& p : o.precisions) {
    TrainerFlags flags = o.trainer;
    flags.precision = p;
    configs.push_back(make_config(flags));
  }
  const ModelSpec spec = resolve_model(o.model, o.batch_size);
  const LoadedData data = load_data(o.data, spec);
  const Model model = compile(spec);
  check_model_fits(model, data.train, o.model);
  const auto batches =
      static_cast<std::int64_t>((data.train.size() + static_cast<std::size_t>(o.batch_size) - 1) /
                                static_cast<std::size_t>(o.batch_size));
  for (TrainerConfig& config : configs) apply_schedule(config, o.trainer, batches * o.epochs);
  std::printf("dataset: %s\n", data.description.c_str());
  std::printf("model: %s (%lld parameters), batch size %lld, %d epoch(s), seed %llu\n",
              o.model.c_str(), static_cast<long long>(model.parameter_count()),
              static_cast<long long>(o.batch_size), o.epochs,
              static_cast<unsigned long long>(o.trainer.seed));
  std::fflush(stdout);

  std::vector<Row> rows;
  for (const TrainerConfig& config : configs) {
    Trainer trainer(model, config);
    const std::string name(precision_name(config.effective_precision()));
    std::printf("== %s: %s\n", name.c_str(), describe_config(config, trainer.device()).c_str());
    std::fflush(stdout);
    FitDisplay display;
    display.progress = !o.quiet;
    display.epoch_lines = !o.quiet;
    display.prefix = name + " ";
    rows.push_back({name, fit_with_display(trainer, data, o.epochs,
                                           static_cast<std::size_t>(o.batch_size), display)});
  }

  std::optional<double> fp32_seconds;
  for (const Row& r : rows) {
    if (r.precision == "fp32") fp32_seconds = r.run.train_seconds;
  }
  std::vector<std::vector<std::string>> table;
  for (const Row& r : rows) {
    const EpochReport& last = r.run.history.epochs.back();
    table.push_back({
        r.precision,
        fmt::format("{:.2f}", r.run.train_seconds),
        fmt::format("{:.0f}", r.run.samples_per_second),
        fmt::format("{:.4f}", last.train_loss),
        last.validation.has_accuracy ? percent(last.validation.accuracy) : "-",
        fmt::format("{}", r.run.stats.skipped_steps),
        fmt::format("{:g}", r.run.stats.loss_scale),
        fmt::format("{}", r.run.stats.fused_steps),
        fp32_seconds && r.run.train_seconds > 0
            ? fmt::format("{:.2f}x", *fp32_seconds / r.run.train_seconds)
            : "-",
    });
  }
  std::printf("\n%s", format_table({"precision", "time (s)", "samples/s", "final train loss",
                                    "test accuracy", "skipped steps", "final loss scale",
                                    "fused steps", "speedup vs fp32"},
                                   table)
                          .c_str());
  return 0;
}

}  // namespace

Command add_compare_command(CLI::App& parent) {
  auto o = std::make_shared<CompareOptions>();
  CLI::App* app = parent.add_subcommand(
      "compare",
      "Train the same model from the same seed in each precision and print a table: time, "
      "samples/s, final train loss, test accuracy, skipped steps, final loss scale, fused steps, "
      "speedup over "
      "fp32. Time counts training only, not the per-epoch test evaluation.");
  add_data_options(*app, o->data);
  app->add_option("--model", o->model, model_help())->capture_default_str();
  app->add_option("--precisions", o->precisions, "comma-separated precisions to train in")
      ->delimiter(',')
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_precision(s); }, "fp32|tf32|fp16|bf16"));
  add_trainer_flags(*app, o->trainer, /*with_precision=*/false);
  app->add_option("--epochs", o->epochs, "passes over the training split, per precision")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_option("--batch-size", o->batch_size, "samples per training step")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_flag("--quiet,-q", o->quiet,
                "no progress or per-epoch lines: the configuration lines and the table only");
  app->footer(
      "Example:\n"
      "  mixtrain compare --dataset fashion-mnist --model mlp --epochs 3 --seed 1 "
      "--precisions fp32,fp16,bf16");
  return {app, [o] { return run_compare(*o); }};
}

}  // namespace mixtrain::cli
