// Pieces the `mixtrain` subcommands share: dataset and model arguments, the trainer flags, the
// progress display and plain-text tables.
#pragma once

#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mixtrain/data.hpp"
#include "mixtrain/model.hpp"
#include "mixtrain/trainer.hpp"

namespace mixtrain::cli {

// Exit status of a run that failed on bad input (flags, files, data, configuration).
constexpr int kExitUsage = 2;

// A subcommand: its CLI11 app (to see whether it was chosen) and what runs it.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

Command add_train_command(CLI::App& parent);
Command add_compare_command(CLI::App& parent);
Command add_eval_command(CLI::App& parent);
Command add_bench_command(CLI::App& parent);

// --- datasets (dataset_arg.cpp) ------------------------------------------------------------

struct DataOptions {
  std::string dataset = "fashion-mnist";  // "fashion-mnist" or "csv:PATH"
  std::string data_dir;                   // empty: default_fashion_mnist_dir()
  std::string label_column = "-1";        // CSV: index (negative from the end) or header name
  std::string header = "auto";            // CSV: whether the first row is a header: auto|yes|no
  double test_fraction = 0.2;             // CSV: the last rows held out as the test split
  bool normalize = false;                 // CSV: standardise features with train statistics
};

struct LoadedData {
  Dataset train;  // empty when test_fraction is 1 (eval of a whole CSV file)
  Dataset test;
  std::string description;  // "fashion-mnist (60000 train, 10000 test)"
};

void add_data_options(CLI::App& app, DataOptions& options);
// Loads the data set for `model`: Fashion-MNIST samples are channels-last images [28, 28, 1]
// when the model takes images ([batch, height, width, channels]), flat [784] otherwise. Throws
// ConfigError (bad --dataset) or DataError/IoError (unreadable files).
LoadedData load_data(const DataOptions& options, const ModelSpec& model);

// --- models (model_arg.cpp) ----------------------------------------------------------------

// A preset name (see preset_names()) or a ModelSpec JSON file. The batch dimension of the model
// is set to `batch`. Throws ConfigError when the name is neither.
ModelSpec resolve_model(const std::string& arg, std::int64_t batch);
// Help text for --model: the presets and the JSON alternative.
std::string model_help();
// Throws ShapeError when the model's per-sample input does not match the dataset's.
void check_model_fits(const Model& model, const Dataset& data, const std::string& model_arg);

// --- trainer flags (trainer_flags.cpp) -----------------------------------------------------

struct TrainerFlags {
  std::string precision = "fp32";
  std::string optimizer = "adam";
  float learning_rate = 1e-3f;
  float weight_decay = 0.0f;
  std::uint64_t seed = 1;
  std::string device = "auto";
  std::string loss_scale = "auto";
  float initial_scale = 65536.0f;
  std::int32_t growth_interval = 2000;
  float clip_grad_norm = 0.0f;
  std::string lr_schedule = "constant";
  std::int32_t warmup_steps = 0;
};

// Adds --optimizer, --lr, --weight-decay, --seed, --device, the loss-scale flags and
// --clip-grad-norm; with_precision also adds --precision (compare takes a list instead).
void add_trainer_flags(CLI::App& app, TrainerFlags& flags, bool with_precision);
// Throws ConfigError naming the bad value.
TrainerConfig make_config(const TrainerFlags& flags);
// Sets the learning-rate schedule once the run's length is known (steps = epochs x batches).
void apply_schedule(TrainerConfig& config, const TrainerFlags& flags, std::int64_t steps);
// "device=cpu precision=fp16 loss-scale=dynamic(initial 65536, growth every 2000) ..."
std::string describe_config(const TrainerConfig& config, const std::string& device);

// A CLI11 check that accepts what `parse` accepts and reports its ConfigError message.
CLI::Validator parsed_by(std::function<void(const std::string&)> parse, std::string description);
// An integer >= 1 ("must be a positive integer, got 0"; CLI11's PositiveNumber prints the
// range of a double instead).
CLI::Validator positive_integer();

// --- progress (progress.cpp) ---------------------------------------------------------------

// Shows FitOptions::on_progress reports on stderr: a redrawn bar on a terminal, otherwise one
// plain line per report.
class ProgressDisplay {
 public:
  explicit ProgressDisplay(bool enabled);
  ~ProgressDisplay();
  ProgressDisplay(const ProgressDisplay&) = delete;
  ProgressDisplay& operator=(const ProgressDisplay&) = delete;

  void update(const ProgressReport& report);
  // Erases the bar (on a terminal) so other output starts on a clean line.
  void clear();
  bool terminal() const { return terminal_; }
  // Batches between reports: `requested` when > 0, else 10 on a terminal and 100 otherwise.
  std::size_t interval(std::size_t requested) const;

 private:
  bool enabled_;
  bool terminal_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_draw_{};
};

// "1:05" or "1:02:03"
std::string format_duration(double seconds);

// --- one training run with the display (fit_run.cpp) -----------------------------------------

struct FitRun {
  FitHistory history;
  double train_seconds = 0;       // training only (the per-epoch test evaluation excluded)
  double samples_per_second = 0;  // training samples over train_seconds
  TrainerStats stats;             // after the last epoch
};

struct FitDisplay {
  bool progress = true;            // progress reports on stderr
  std::size_t progress_every = 0;  // batches between reports; 0: automatic
  bool epoch_lines = true;         // one stdout line per epoch
  std::string prefix;              // put before each epoch line ("fp16 ")
};

// Trains on data.train for `epochs`, evaluating data.test after each epoch.
FitRun fit_with_display(Trainer& trainer, const LoadedData& data, int epochs,
                        std::size_t batch_size, const FitDisplay& display);

// --- tables (table.cpp) ----------------------------------------------------------

// Left-aligns the first column and right-aligns the others, two spaces apart, with a rule under
// the header.
std::string format_table(const std::vector<std::string>& header,
                         const std::vector<std::vector<std::string>>& rows);

// "88.42%"
std::string percent(double fraction);

}  // namespace mixtrain::cli
