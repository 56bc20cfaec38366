// mixtrain eval: evaluate saved weights on a dataset's test split.
#include <fmt/format.h>

#include <cstdio>

#include "common.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

namespace {

struct EvalOptions {
  DataOptions data;
  std::string model;
  std::string weights;
  std::int64_t batch_size = 256;
  std::string precision = "fp32";
  std::string device = "auto";
};

int run_eval(const EvalOptions& o) {
  TrainerConfig config;
  config.precision = parse_precision(o.precision);
  config.device = parse_device(o.device);
  const ModelSpec spec = resolve_model(o.model, o.batch_size);
  const LoadedData data = load_data(o.data, spec);
  if (data.test.size() == 0) throw DataError("the test split is empty");
  const Model model = compile(spec);
  check_model_fits(model, data.test, o.model);
  Trainer trainer(model, config);
  trainer.load_weights(o.weights);
  const EvalResult r = trainer.evaluate(data.test);
  std::printf("dataset: %s\n", data.description.c_str());
  std::printf("model: %s (%lld parameters), weights %s, device %s, precision %s\n", o.model.c_str(),
              static_cast<long long>(model.parameter_count()), o.weights.c_str(),
              trainer.device().c_str(), std::string(precision_name(config.precision)).c_str());
  std::printf("samples: %zu\n", r.samples);
  std::printf("test loss: %.6f\n", r.loss);
  if (r.has_accuracy) std::printf("test accuracy: %s\n", percent(r.accuracy).c_str());
  return 0;
}

}  // namespace

Command add_eval_command(CLI::App& parent) {
  auto o = std::make_shared<EvalOptions>();
  CLI::App* app = parent.add_subcommand(
      "eval",
      "Evaluate saved weights (from `train --save-weights`) on the test split: loss and "
      "accuracy.");
  app->add_option("--model", o->model, "the model the weights belong to: " + model_help())
      ->required();
  app->add_option("--weights", o->weights, "weights file written by `train --save-weights`")
      ->required()
      ->check(CLI::ExistingFile);
  add_data_options(*app, o->data);
  app->add_option("--batch-size", o->batch_size, "samples per evaluation batch")
      ->capture_default_str()
      ->check(positive_integer());
  app->add_option("--precision", o->precision, "precision to run the forward pass in")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_precision(s); }, "fp32|tf32|fp16|bf16"));
  app->add_option("--device", o->device, "auto, cpu or cuda")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_device(s); }, "auto|cpu|cuda"));
  app->footer(
      "Example:\n"
      "  mixtrain train --model mlp --save-spec mlp.json --save-weights mlp.bin\n"
      "  mixtrain eval --model mlp.json --weights mlp.bin --dataset fashion-mnist\n"
      "For csv:PATH, pass the --test-fraction used in training to evaluate the same held-out "
      "rows, or --test-fraction 1 for the whole file.");
  return {app, [o] { return run_eval(*o); }};
}

}  // namespace mixtrain::cli
