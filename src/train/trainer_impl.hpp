// Trainer internals shared by trainer.cpp (steps, statistics) and fit.cpp (datasets).
#pragma once

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "mixtrain/trainer.hpp"
#include "train/plan.hpp"

namespace mixtrain {

// Shared with the StepResults it hands out (weakly), so that they can tell when it is gone.
struct Trainer::Impl : std::enable_shared_from_this<Trainer::Impl> {
  Impl(const Model& model, TrainerConfig config);
  ~Impl();

  Model model;
  TrainerConfig config;
  Precision precision;
  PrecisionPolicy policy;
  LossScaleMode scale_mode;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Plan> plan;
  OptimizerHyper hyper;
  ScalerParams scaler;

  // The loss reads this node's output; it is the model output, or the input of a final softmax
  // (sigmoid) when the loss is a cross-entropy (binary cross-entropy) and takes logits instead.
  int loss_node = 0;
  LossKind loss_kind = LossKind::SparseCrossEntropy;
  bool uses_labels = true;     // int32 labels (sparse cross-entropy) vs float targets
  std::int64_t loss_cols = 0;  // classes (cross-entropy) or outputs per row
  std::int64_t rows_per_sample = 1;

  std::vector<bool> in_forward;                     // nodes the training forward pass runs
  std::vector<bool> in_backward;                    // nodes whose backward runs
  std::vector<std::vector<bool>> grad_input;        // [node][input]: gradient needed
  std::vector<std::vector<bool>> accumulate_input;  // [node][input]: add into it

  // Host staging for 0/1 labels converted to float targets (uploads otherwise read the caller's
  // memory directly: upload() copies before it returns).
  float* host_targets = nullptr;

  // The first kDirectBatches stored batches are read where they lie, each with a captured step
  // of its own: no copies into the plan's input and label buffers (two device copies a step, ~1%
  // of large_mlp's). Later ones (a whole data set kept on the device) are copied in, so that the
  // number of captured steps stays small.
  static constexpr std::size_t kDirectBatches = 16;
  struct StoredBatch {
    void* inputs;    // [n, sample] compute dtype
    void* expected;  // int32 labels or fp32 targets, laid out as the plan's buffers
    std::size_t input_bytes;
    std::size_t expected_bytes;
    std::int64_t n;
    bool in_place;         // read where it lies (one of the first kDirectBatches)
    std::string step_key;  // the run_step key of its steps
  };
  std::vector<StoredBatch> device_batches;

  // The model as a dense chain the backend may train in one fused step (train/dense_chain.hpp),
  // its layers empty when it is not one; built once, each step sets its rows, input and labels.
  // Which captured steps ran fused, and how many steps did.
  DenseChainStep chain;
  std::unordered_map<std::string, bool> fused_keys;
  std::int64_t fused_steps = 0;

  std::vector<StepStats> history;
  std::int64_t steps_issued = 0;
  StepControl last_control{};

  void check_batch(const float* inputs, const Shape& shape) const;
  void check_labels(const std::int32_t* labels, const Shape& shape, std::int64_t n) const;
  void check_targets(const float* targets, const Shape& shape, std::int64_t n) const;
  void upload_inputs(const float* inputs, std::int64_t n);
  // Validates and uploads labels (or 0/1 labels as targets for binary losses) for a batch of n.
  void upload_labels(const std::int32_t* labels, const Shape& shape, std::int64_t n);
  void upload_targets(const float* targets, const Shape& shape, std::int64_t n);
  // Copies the staged batch (plan input + labels/targets) into device memory of its own.
  DeviceBatch store_batch(std::int64_t n);
  void forward(std::int64_t n, bool training);
  void backward(std::int64_t n);
  void run_loss(std::int64_t n, bool with_gradient, float* out);
  OptimizerDesc optimizer_desc() const;
  // Issues the step as the backend's fused dense-chain step; false when it has none for it.
  bool run_dense_chain(std::int64_t n);
  // Runs one training step on the batch in plan->input and the labels or targets; `key` names
  // the captured step (one per batch size, and per stored batch: see train_batch(DeviceBatch)).
  StepResult step(std::int64_t n, const std::string& key);
  // A step's record (drains the history when it is not read back yet).
  StepStats step_stats(std::int64_t step);
  // Reads the step history back (one sync) and raises DivergenceError when training diverged.
  void drain();
  void check_divergence() const;
  std::int64_t accuracy_hits(const float* outputs, std::int64_t n, const std::int32_t* labels,
                             const float* targets) const;
  std::int64_t output_numel() const;
};

}  // namespace mixtrain
