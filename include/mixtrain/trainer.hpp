// Training: TrainerConfig (every field has a documented default), Trainer (RAII: owns the
// compiled plan and all device memory), StepResult (lazy: reading it may sync, training does not).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mixtrain/data.hpp"
#include "mixtrain/loss.hpp"
#include "mixtrain/model.hpp"
#include "mixtrain/optim.hpp"
#include "mixtrain/precision.hpp"
#include "mixtrain/schedule.hpp"

namespace mixtrain {

enum class Device : std::uint8_t {
  Auto,  // CUDA when this build has it and a GPU is present, otherwise the CPU
  CPU,
  CUDA,
};
std::string_view device_name(Device d);
Device parse_device(std::string_view name);  // "auto", "cpu", "cuda"
// True when this build has the CUDA backend and a GPU is visible.
bool cuda_available();

struct TrainerConfig {
  Optimizer optimizer = Optimizer::Adam;
  float learning_rate = 1e-3f;
  ScheduleConfig schedule;    // constant by default
  float weight_decay = 0.0f;  // coupled L2 added to the gradient (AdamW: see adamw options)
  SgdOptions sgd;
  AdamOptions adam;
  AdamWOptions adamw;
  RmspropOptions rmsprop;
  AdagradOptions adagrad;
  AdadeltaOptions adadelta;
  NadamOptions nadam;
  // > 0: clip the global L2 norm of the (unscaled) gradients to this value.
  float clip_grad_norm = 0.0f;

  Loss loss = Loss::SparseCrossEntropy;
  float huber_delta = 1.0f;

  Precision precision = Precision::FP32;
  // The tutorial's switch: true selects FP16 when precision is left at FP32.
  bool mixed_precision = false;
  LossScaleConfig loss_scale;

  Device device = Device::Auto;
  std::uint64_t seed = 42;  // weights, dropout and (in fit) shuffling
  // Check every batch on the host for non-finite inputs and out-of-range labels.
  bool validate_inputs = true;
  // The trainer reads its step history back (one device sync) every this many steps to check
  // for divergence; reading a StepResult or stats() also does.
  std::int32_t sync_interval = 100;

  // The precision in force (resolves mixed_precision).
  Precision effective_precision() const;
  // Throws ConfigError naming the field and the value.
  void validate() const;
};

// One training step's numbers, as recorded on the device.
struct StepStats {
  float loss = 0;        // unscaled mean loss
  float loss_scale = 1;  // scale the step used
  float grad_norm = 0;   // unscaled global gradient norm (inf when the step overflowed)
  bool skipped = false;  // optimizer step skipped (overflow)
};

struct TrainerStats {
  std::int64_t steps = 0;          // train_batch calls
  std::int64_t applied_steps = 0;  // optimizer updates
  std::int64_t skipped_steps = 0;  // skipped for overflow
  double overflow_rate = 0;        // skipped / steps
  float loss_scale = 1;            // current scale
  float last_loss = 0;
  float last_grad_norm = 0;
  std::size_t peak_memory_bytes = 0;  // device memory high-water mark
  // Steps that ran as one fused kernel (CUDA, FP16/BF16, a chain of dense layers with
  // cross-entropy: docs/cuda.md "Fused dense-chain step"); the others ran op by op.
  std::int64_t fused_steps = 0;
};

class Trainer;
class StepResult;

// A batch stored in device memory by Trainer::upload_batch (owned by that trainer).
struct DeviceBatch {
  std::size_t index = 0;
  std::int64_t size = 0;  // samples
};

struct EvalResult {
  double loss = 0;
  double accuracy = 0;        // fraction in [0, 1] when has_accuracy
  bool has_accuracy = false;  // classification losses only
  std::size_t samples = 0;
};

struct EpochReport {
  int epoch = 0;  // 1-based
  int epochs = 0;
  double train_loss = 0;  // mean over the epoch's steps with a finite loss
  bool has_validation = false;
  EvalResult validation;
  double seconds = 0;
  double samples_per_second = 0;
  TrainerStats stats;
};

struct ProgressReport {
  int epoch = 0;
  int epochs = 0;
  std::size_t batch = 0;    // batches done in this epoch
  std::size_t batches = 0;  // batches per epoch
  float loss = 0;           // latest step's loss
  TrainerStats stats;
  double samples_per_second = 0;
  double eta_seconds = 0;  // for the whole fit
};

struct FitOptions {
  int epochs = 1;
  std::size_t batch_size = 64;  // at most the model's batch dimension
  bool shuffle = true;
  const Dataset* validation = nullptr;
  // Called after each epoch; return false to stop training.
  std::function<bool(const EpochReport&)> on_epoch_end;
  // Called every progress_interval batches (each call syncs once).
  std::function<void(const ProgressReport&)> on_progress;
  std::size_t progress_interval = 50;
};

struct FitHistory {
  std::vector<EpochReport> epochs;
};

class Trainer {
 public:
  // Compiles the model for the device and precision: allocates every buffer once.
  Trainer(const Model& model, TrainerConfig config);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;
  // Moving hands over the compiled plan and device memory; StepResults of earlier steps stay
  // readable through the new owner. A moved-from trainer throws mixtrain::Error on every call.
  Trainer(Trainer&&) noexcept;
  Trainer& operator=(Trainer&&) noexcept;

  // One step on a batch from host memory. inputs: [n, features...] fp32 with n <= the model's
  // batch; labels: int32 [n] (class ids; 0/1 for binary losses) or targets: fp32 [n, outputs].
  // Bad shapes, labels out of range and non-finite inputs throw before anything runs, leaving
  // the trainer usable.
  StepResult train_batch(const float* inputs, const Shape& input_shape, const std::int32_t* labels,
                         const Shape& label_shape);
  StepResult train_batch(const float* inputs, const Shape& input_shape, const float* targets,
                         const Shape& target_shape);

  // Batches kept in device memory: upload once (validated and converted to the compute dtype),
  // then train on them with no host transfer (benchmarks, data sets that fit on the device).
  // The memory lives as long as the trainer. The first 16 stored batches are read where they
  // lie (on CUDA each has a captured step of its own); later ones are copied into the trainer's
  // input buffers first.
  DeviceBatch upload_batch(const float* inputs, const Shape& input_shape,
                           const std::int32_t* labels, const Shape& label_shape);
  DeviceBatch upload_batch(const float* inputs, const Shape& input_shape, const float* targets,
                           const Shape& target_shape);
  StepResult train_batch(const DeviceBatch& batch);

  // The same calls with the buffers' lengths checked: each span must hold exactly numel(shape)
  // values, or ShapeError names both counts. (The pointer overloads above read numel(shape)
  // values and cannot check.) A std::vector converts to these spans.
  StepResult train_batch(std::span<const float> inputs, const Shape& input_shape,
                         std::span<const std::int32_t> labels, const Shape& label_shape);
  StepResult train_batch(std::span<const float> inputs, const Shape& input_shape,
                         std::span<const float> targets, const Shape& target_shape);
  DeviceBatch upload_batch(std::span<const float> inputs, const Shape& input_shape,
                           std::span<const std::int32_t> labels, const Shape& label_shape);
  DeviceBatch upload_batch(std::span<const float> inputs, const Shape& input_shape,
                           std::span<const float> targets, const Shape& target_shape);
  std::vector<float> predict(std::span<const float> inputs, const Shape& input_shape);

  // Inference (dropout off): outputs [n, outputs...] as fp32, row-major.
  std::vector<float> predict(const float* inputs, const Shape& input_shape);
  // Loss and accuracy over a dataset, in batches of the model's batch size.
  EvalResult evaluate(const Dataset& data);

  FitHistory fit(const Dataset& train, const FitOptions& options);

  // Reads the device counters (one sync) and checks for divergence.
  TrainerStats stats();
  // Every step's record so far (one sync).
  const std::vector<StepStats>& history();
  StepStats step_stats(std::int64_t step);

  void set_learning_rate(float lr);
  float learning_rate() const;
  const TrainerConfig& config() const;
  const Model& model() const;
  std::string device() const;  // "cpu" or "cuda"
  PrecisionPolicy policy() const;

  // fp32 master weights in the order of the model's layers and their parameters, followed by the
  // layers' persistent state (batch-norm running statistics).
  std::vector<float> weights();
  void set_weights(const std::vector<float>& weights);
  // Binary checkpoint of weights() (format version 2, src/io/weights_file.hpp): the model's
  // architecture (each layer with parameters or state: name, type, parameter names and shapes,
  // state shapes), then the values. Written atomically (temporary file, then rename).
  void save_weights(const std::filesystem::path& path);
  // Reads a file of save_weights. Throws, naming the file: IoError (not a weights file, corrupt
  // header, truncated or oversized), ShapeError (another architecture: the first layer or
  // parameter that differs, with both shapes), DataError (a NaN or infinite value: layer,
  // parameter, element). Version-1 files (older mixtrain) still load; they record no
  // architecture, so only their value count is checked against the model.
  void load_weights(const std::filesystem::path& path);

  struct Impl;

 private:
  // Throws mixtrain::Error when this trainer was moved from.
  Impl& impl() const;
  std::shared_ptr<Impl> impl_;  // shared only with StepResults, which hold it weakly
};

// The result of train_batch. Holds no value until read: loss() and the rest read the step's record
// back from the device (a sync), which training itself never does. It refers to its trainer
// without owning it: reading it after the trainer is destroyed throws mixtrain::Error.
class StepResult {
 public:
  float loss() const;
  float loss_scale() const;
  float grad_norm() const;
  bool skipped() const;
  StepStats stats() const;
  std::int64_t step() const { return step_; }

 private:
  friend class Trainer;
  StepResult(std::weak_ptr<Trainer::Impl> trainer, std::int64_t step)
      : trainer_(std::move(trainer)), step_(step) {}
  std::weak_ptr<Trainer::Impl> trainer_;
  std::int64_t step_;
};

}  // namespace mixtrain
