// Training and evaluation over datasets.
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "mixtrain/error.hpp"
#include "train/trainer_impl.hpp"

namespace mixtrain {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

std::int64_t Trainer::Impl::accuracy_hits(const float* out, std::int64_t n,
                                          const std::int32_t* labels, const float* targets) const {
  const std::int64_t per = output_numel();
  const std::int64_t cols = loss_cols;
  const std::int64_t rows = n * per / cols;
  std::int64_t hits = 0;
  const bool multiclass =
      config.loss == Loss::SparseCrossEntropy || config.loss == Loss::CrossEntropy;
  if (multiclass) {
    for (std::int64_t r = 0; r < rows; ++r) {
      const float* row = out + r * cols;
      std::int64_t best = 0;
      for (std::int64_t c = 1; c < cols; ++c) best = row[c] > row[best] ? c : best;
      std::int64_t truth = 0;
      if (labels != nullptr) {
        truth = labels[r];
      } else {
        const float* t = targets + r * cols;
        for (std::int64_t c = 1; c < cols; ++c) truth = t[c] > t[truth] ? c : truth;
      }
      hits += best == truth ? 1 : 0;
    }
    return hits;
  }
  // Binary: each output is a decision; probabilities threshold at 0.5, logits at 0.
  const float threshold = config.loss == Loss::BinaryCrossEntropyWithLogits ? 0.0f : 0.5f;
  for (std::int64_t i = 0; i < n * per; ++i) {
    const bool predicted = out[i] > threshold;
    const bool truth = labels != nullptr ? labels[i] != 0 : targets[i] >= 0.5f;
    hits += predicted == truth ? 1 : 0;
  }
  return hits;
}

EvalResult Trainer::evaluate(const Dataset& data) {
  Impl& m = impl();
  data.validate();
  // A loss of 0 over nothing would read as a perfect model.
  if (data.size() == 0) throw DataError("evaluate: the dataset is empty (0 samples)");
  const graph::Graph& g = m.model.graph();
  if (static_cast<std::int64_t>(data.feature_size()) != numel(g.sample_shape)) {
    throw ShapeError(fmt::format("dataset samples have {} features, the model takes {}",
                                 data.feature_size(), numel(g.sample_shape)));
  }
  const bool classification = m.config.loss == Loss::SparseCrossEntropy ||
                              m.config.loss == Loss::CrossEntropy ||
                              m.config.loss == Loss::BinaryCrossEntropy ||
                              m.config.loss == Loss::BinaryCrossEntropyWithLogits;
  DataLoader loader(data, static_cast<std::size_t>(g.max_batch), false, 0);
  DataLoader::Batch batch{};
  double loss_sum = 0.0;
  std::int64_t hits = 0, decisions = 0;
  std::size_t samples = 0;
  while (loader.next(batch)) {
    const auto n = static_cast<std::int64_t>(batch.count);
    Shape shape{n};
    shape.insert(shape.end(), g.sample_shape.begin(), g.sample_shape.end());
    m.check_batch(batch.features, shape);
    m.upload_inputs(batch.features, n);
    if (batch.labels == nullptr && batch.targets == nullptr) {
      throw DataError("the dataset has neither labels nor targets");
    }
    if (m.uses_labels && batch.labels == nullptr) {
      throw DataError("the loss takes labels; the dataset has targets");
    }
    if (batch.targets != nullptr && !m.uses_labels) {
      m.upload_targets(batch.targets, {n, static_cast<std::int64_t>(data.target_size)}, n);
    } else {
      m.upload_labels(batch.labels, {n}, n);  // binary losses take 0/1 labels as targets
    }
    m.forward(n, false);
    m.run_loss(n, false, m.plan->eval_loss);
    float loss = 0.0f;
    m.backend->download(&loss, m.plan->eval_loss, sizeof loss);
    loss_sum += static_cast<double>(loss) * static_cast<double>(n);
    samples += batch.count;
    if (classification) {
      // predict() re-runs nothing: read the output already computed.
      const Buf out = m.plan->nodes[static_cast<std::size_t>(g.output)].activation;
      const std::int64_t outs = n * m.output_numel();
      std::vector<float> host(static_cast<std::size_t>(outs));
      if (out.dtype == DType::F32) {
        m.backend->download(host.data(), out.ptr, host.size() * 4);
      } else {
        m.backend->convert(out, Buf{m.plan->output_staging, DType::F32}, outs, false);
        m.backend->download(host.data(), m.plan->output_staging, host.size() * 4);
      }
      hits += m.accuracy_hits(host.data(), n, batch.labels, batch.targets);
      const bool multiclass =
          m.config.loss == Loss::SparseCrossEntropy || m.config.loss == Loss::CrossEntropy;
      decisions += multiclass ? n * m.rows_per_sample : outs;
    }
  }
  EvalResult r;
  r.samples = samples;
  r.loss = loss_sum / static_cast<double>(samples);
  r.has_accuracy = classification && decisions > 0;
  r.accuracy = r.has_accuracy ? static_cast<double>(hits) / static_cast<double>(decisions) : 0.0;
  return r;
}

FitHistory Trainer::fit(const Dataset& train, const FitOptions& options) {
  Impl& m = impl();
  if (options.epochs < 1)
    throw ConfigError(fmt::format("epochs must be >= 1, got {}", options.epochs));
  const graph::Graph& g = m.model.graph();
  if (options.batch_size < 1 || static_cast<std::int64_t>(options.batch_size) > g.max_batch) {
    throw ConfigError(fmt::format("batch_size {} must be in [1, {}] (the model's batch dimension)",
                                  options.batch_size, g.max_batch));
  }
  train.validate();
  if (train.size() == 0) throw DataError("fit: the training dataset is empty (0 samples)");
  if (options.validation != nullptr && options.validation->size() == 0) {
    throw DataError("fit: the validation dataset is empty (0 samples)");
  }
  if (static_cast<std::int64_t>(train.feature_size()) != numel(g.sample_shape)) {
    throw ShapeError(fmt::format("dataset samples have {} features, the model takes {}",
                                 train.feature_size(), numel(g.sample_shape)));
  }
  if (options.progress_interval < 1) throw ConfigError("progress_interval must be >= 1");
  DataLoader loader(train, options.batch_size, options.shuffle, m.config.seed);
  FitHistory history;
  const auto fit_start = Clock::now();
  std::size_t total_batches = loader.batches_per_epoch() * static_cast<std::size_t>(options.epochs);
  std::size_t batches_done = 0;
  for (int epoch = 1; epoch <= options.epochs; ++epoch) {
    loader.start_epoch(static_cast<std::size_t>(epoch - 1));
    const auto epoch_start = Clock::now();
    const std::int64_t first_step = m.steps_issued;
    std::size_t samples = 0, batch_index = 0;
    DataLoader::Batch batch{};
    while (loader.next(batch)) {
      const auto n = static_cast<std::int64_t>(batch.count);
      Shape shape{n};
      shape.insert(shape.end(), g.sample_shape.begin(), g.sample_shape.end());
      if (batch.labels != nullptr) {
        Shape lshape{n};
        if (m.rows_per_sample > 1) lshape.push_back(m.rows_per_sample);
        train_batch(batch.features, shape, batch.labels, lshape);
      } else {
        train_batch(batch.features, shape, batch.targets,
                    Shape{n, static_cast<std::int64_t>(train.target_size)});
      }
      samples += batch.count;
      ++batch_index;
      ++batches_done;
      if (options.on_progress && batch_index % options.progress_interval == 0) {
        ProgressReport p;
        p.epoch = epoch;
        p.epochs = options.epochs;
        p.batch = batch_index;
        p.batches = loader.batches_per_epoch();
        p.stats = stats();
        p.loss = p.stats.last_loss;
        const double elapsed = seconds_since(epoch_start);
        p.samples_per_second = elapsed > 0 ? static_cast<double>(samples) / elapsed : 0.0;
        const double per_batch = seconds_since(fit_start) / static_cast<double>(batches_done);
        p.eta_seconds = per_batch * static_cast<double>(total_batches - batches_done);
        options.on_progress(p);
      }
    }
    EpochReport r;
    r.epoch = epoch;
    r.epochs = options.epochs;
    r.stats = stats();  // drains the history, checks for divergence
    r.seconds = seconds_since(epoch_start);
    r.samples_per_second = r.seconds > 0 ? static_cast<double>(samples) / r.seconds : 0.0;
    double sum = 0.0;
    std::int64_t finite = 0;
    for (std::int64_t s = first_step; s < m.steps_issued; ++s) {
      const float l = m.history[static_cast<std::size_t>(s)].loss;
      if (std::isfinite(l)) {
        sum += l;
        ++finite;
      }
    }
    r.train_loss = finite > 0 ? sum / static_cast<double>(finite) : NAN;
    if (options.validation != nullptr) {
      r.has_validation = true;
      r.validation = evaluate(*options.validation);
    }
    history.epochs.push_back(r);
    if (options.on_epoch_end && !options.on_epoch_end(r)) break;
  }
  return history;
}

}  // namespace mixtrain
