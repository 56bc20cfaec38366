// --model: a preset name or a ModelSpec JSON file.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>

#include "common.hpp"
#include "io/presets.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

ModelSpec resolve_model(const std::string& arg, std::int64_t batch) {
  if (is_preset(arg)) return preset_model(arg, batch);
  if (!std::filesystem::is_regular_file(arg)) {
    throw ConfigError(
        fmt::format("--model '{}' is neither a preset ({}) nor an existing model spec (.json) file",
                    arg, fmt::join(preset_names(), ", ")));
  }
  ModelSpec spec = ModelSpec::load(arg);
  if (spec.input_shape.empty()) {
    throw ConfigError(fmt::format("model spec '{}' has an empty input_shape", arg));
  }
  if (batch < 1) throw ConfigError(fmt::format("batch size must be >= 1, got {}", batch));
  spec.input_shape[0] = batch;  // the batch dimension is a run setting, not the model's
  return spec;
}

std::string model_help() {
  std::string help = "a preset (";
  const auto names = preset_names();
  for (std::size_t i = 0; i < names.size(); ++i) {
    help += fmt::format("{}{}: {}", i > 0 ? "; " : "", names[i], preset_description(names[i]));
  }
  help +=
      ") or a model spec JSON file (as --save-spec writes); its batch dimension is replaced by "
      "--batch-size";
  return help;
}

void check_model_fits(const Model& model, const Dataset& data, const std::string& model_arg) {
  const Shape& in = model.input_shape();
  std::int64_t per_sample = 1;
  for (std::size_t i = 1; i < in.size(); ++i) per_sample *= in[i];
  if (per_sample != static_cast<std::int64_t>(data.feature_size())) {
    throw ShapeError(fmt::format(
        "model '{}' takes {} features per sample but the dataset has {}; use a model spec "
        "whose input_shape matches the data",
        model_arg, per_sample, data.feature_size()));
  }
}

}  // namespace mixtrain::cli
