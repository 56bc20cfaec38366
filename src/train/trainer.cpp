#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "io/atomic_file.hpp"
#include "io/weights_file.hpp"
#include "mixtrain/error.hpp"
#include "ops/counter_rng.hpp"
#include "train/backend_factory.hpp"
#include "train/dense_chain.hpp"
#include "train/trainer_impl.hpp"

namespace mixtrain {

namespace {

LossKind resolve_loss(Loss loss, const std::string& final_type, bool& fuse) {
  fuse = false;
  switch (loss) {
    case Loss::SparseCrossEntropy:
      fuse = final_type == "softmax";
      return LossKind::SparseCrossEntropy;
    case Loss::CrossEntropy:
      fuse = final_type == "softmax";
      return LossKind::CrossEntropy;
    case Loss::BinaryCrossEntropy:
      fuse = final_type == "sigmoid";
      return fuse ? LossKind::BinaryCrossEntropyLogits : LossKind::BinaryCrossEntropy;
    case Loss::BinaryCrossEntropyWithLogits:
      return LossKind::BinaryCrossEntropyLogits;
    case Loss::MeanSquaredError:
      return LossKind::MeanSquaredError;
    case Loss::MeanAbsoluteError:
      return LossKind::MeanAbsoluteError;
    case Loss::Huber:
      return LossKind::Huber;
  }
  return LossKind::MeanSquaredError;
}

OptimizerHyper make_hyper(const TrainerConfig& c) {
  OptimizerHyper h;
  h.kind = c.optimizer;
  h.weight_decay = c.weight_decay;
  h.sgd = c.sgd;
  h.adam = c.adam;
  h.adamw = c.adamw;
  h.rmsprop = c.rmsprop;
  h.adagrad = c.adagrad;
  h.adadelta = c.adadelta;
  h.nadam = c.nadam;
  h.schedule = c.schedule;
  return h;
}

void init_params(const graph::Graph& g, const Plan& plan, std::uint64_t seed,
                 std::vector<float>& out) {
  out.assign(static_cast<std::size_t>(plan.param_count), 0.0f);
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    const auto& node = g.nodes[i];
    for (std::size_t p = 0; p < node.params.size(); ++p) {
      const ParamDecl& d = node.params[p];
      float* dst = out.data() + plan.nodes[i].param_offsets[p];
      const std::int64_t n = numel(d.shape);
      float bound = 0.0f;
      if (d.init == Init::GlorotUniform) {
        bound = std::sqrt(6.0f / static_cast<float>(d.fan_in + d.fan_out));
      } else if (d.init == Init::HeUniform) {
        bound = std::sqrt(6.0f / static_cast<float>(d.fan_in));
      }
      // Keyed by (seed, layer, parameter, element): independent of layer order and device.
      const std::uint64_t salt = node.layer->salt() * 31 + p;
      for (std::int64_t k = 0; k < n; ++k) {
        switch (d.init) {
          case Init::Zeros:
            dst[k] = 0.0f;
            break;
          case Init::Ones:
            dst[k] = 1.0f;
            break;
          default:
            dst[k] =
                (2.0f * counter_uniform(seed, -1, salt, static_cast<std::uint64_t>(k)) - 1.0f) *
                bound;
        }
      }
    }
  }
}

}  // namespace

Trainer::Impl::Impl(const Model& m, TrainerConfig c) : model(m), config(c) {
  config.validate();
  precision = config.effective_precision();
  policy = PrecisionPolicy::for_precision(precision);
  scale_mode = config.loss_scale.resolved(precision);
  backend = make_backend(config.device);
  hyper = make_hyper(config);

  const graph::Graph& g = model.graph();
  const std::string final_type = g.nodes[static_cast<std::size_t>(g.output)].layer->type();
  bool fuse = false;
  loss_kind = resolve_loss(config.loss, final_type, fuse);
  loss_node = fuse ? g.nodes[static_cast<std::size_t>(g.output)].inputs[0] : g.output;
  if (loss_node == graph::kModelInput) {
    throw ConfigError("the model has no layer before its final activation to compute the loss on");
  }
  uses_labels = loss_kind == LossKind::SparseCrossEntropy;
  const Shape& out = g.nodes[static_cast<std::size_t>(loss_node)].shape;
  loss_cols = out.back();
  rows_per_sample = numel(out) / loss_cols;
  if ((config.loss == Loss::SparseCrossEntropy || config.loss == Loss::CrossEntropy) &&
      loss_cols < 2) {
    throw ConfigError(fmt::format(
        "loss {} needs at least 2 classes, but the model's output '{}' has {} per row; for a "
        "single output use bce (with a final sigmoid) or bce_with_logits",
        loss_name(config.loss), g.name_of(g.output), loss_cols));
  }

  PlanOptions po;
  po.policy = policy;
  po.optimizer_slots = optimizer_state_slots(hyper);
  po.label_count = uses_labels ? rows_per_sample : 0;
  po.target_count = uses_labels ? 0 : numel(out);
  plan = std::make_unique<Plan>(g, *backend, po);

  // Which nodes run: training only needs the loss node's ancestors.
  const std::size_t count = g.nodes.size();
  in_forward.assign(count, false);
  in_forward[static_cast<std::size_t>(loss_node)] = true;
  for (std::size_t i = count; i-- > 0;) {
    if (!in_forward[i]) continue;
    for (int src : g.nodes[i].inputs) {
      if (src != graph::kModelInput) in_forward[static_cast<std::size_t>(src)] = true;
    }
  }
  std::vector<bool> has_params_upstream(count, false);
  for (std::size_t i = 0; i < count; ++i) {
    bool up = !g.nodes[i].params.empty();
    for (int src : g.nodes[i].inputs) {
      up = up || (src != graph::kModelInput && has_params_upstream[static_cast<std::size_t>(src)]);
    }
    has_params_upstream[i] = up;
  }
  in_backward.assign(count, false);
  grad_input.assign(count, {});
  accumulate_input.assign(count, {});
  std::vector<bool> written(count, false);
  for (std::size_t i = count; i-- > 0;) {
    const auto& node = g.nodes[i];
    grad_input[i].assign(node.inputs.size(), false);
    accumulate_input[i].assign(node.inputs.size(), false);
    if (!in_forward[i] || !has_params_upstream[i]) continue;
    if (static_cast<int>(i) != loss_node && !written[i]) continue;  // receives no gradient
    in_backward[i] = true;
    for (std::size_t k = 0; k < node.inputs.size(); ++k) {
      const int src = node.inputs[k];
      if (src == graph::kModelInput || !has_params_upstream[static_cast<std::size_t>(src)])
        continue;
      grad_input[i][k] = true;
      accumulate_input[i][k] = written[static_cast<std::size_t>(src)];
      written[static_cast<std::size_t>(src)] = true;
    }
  }

  // Parameters, optimizer state and the control block.
  std::vector<float> init;
  init_params(g, *plan, config.seed, init);
  const std::size_t pbytes = init.size() * sizeof(float);
  if (pbytes > 0) backend->upload(plan->master, init.data(), pbytes);
  for (int s = 0; s < po.optimizer_slots; ++s) {
    backend->fill(Buf{plan->state[s], DType::F32}, plan->param_count,
                  optimizer_state_init(hyper, s));
  }
  backend->fill(plan->grads_lowp, plan->lowp_count, 0.0f);
  backend->fill(Buf{plan->grads_f32, DType::F32}, plan->param_count - plan->lowp_count, 0.0f);
  if (plan->persistent_count > 0) {
    std::vector<float> state;
    for (const auto& node : g.nodes) {
      for (const BufferDecl& d : node.buffers) {
        if (d.persistent)
          state.insert(state.end(), static_cast<std::size_t>(numel(d.shape)), d.init);
      }
    }
    backend->upload(plan->persistent, state.data(), state.size() * sizeof(float));
  }
  if (plan->working) {
    backend->convert(CBuf(plan->master, DType::F32), plan->working, plan->param_count, false);
  }
  const LossScaleConfig& ls = config.loss_scale;
  StepControl ctl{};
  ctl.loss_scale = scale_mode == LossScaleMode::None ? 1.0f : ls.initial;
  ctl.inv_scale = 1.0f / ctl.loss_scale;
  ctl.learning_rate = config.learning_rate;
  ctl.hysteresis_left = ls.hysteresis;
  ctl.optimizer_scalar = 1.0f;
  ctl.seed = config.seed;
  backend->upload(plan->control, &ctl, sizeof ctl);
  last_control = ctl;
  scaler.growth_factor = ls.growth_factor;
  scaler.backoff_factor = ls.backoff_factor;
  scaler.min_scale = ls.min_scale;
  scaler.max_scale = ls.max_scale;
  scaler.growth_interval = ls.growth_interval;
  scaler.hysteresis = ls.hysteresis;
  scaler.dynamic = scale_mode == LossScaleMode::Dynamic ? 1 : 0;
  scaler.history_size = plan->options.history_size;

  if (loss_kind == LossKind::SparseCrossEntropy) {
    chain.layers = dense_chain_layers(g, *plan, loss_node);
    chain.control = plan->control;
    chain.optimizer = optimizer_desc();
    chain.scaler = scaler;
    chain.history = plan->history;
  }

  const std::int64_t b = g.max_batch;
  host_targets = static_cast<float*>(
      backend->alloc_host(static_cast<std::size_t>(b * numel(out) + 1) * sizeof(float)));
  backend->synchronize();
}

Trainer::Impl::~Impl() {
  if (backend) {
    backend->synchronize();
    for (const StoredBatch& b : device_batches) {
      backend->free(b.inputs);
      backend->free(b.expected);
    }
    backend->free_host(host_targets);
    plan.reset();
  }
}

std::int64_t Trainer::Impl::output_numel() const {
  const graph::Graph& g = model.graph();
  return numel(g.nodes[static_cast<std::size_t>(g.output)].shape);
}

void Trainer::Impl::check_batch(const float* inputs, const Shape& shape) const {
  const graph::Graph& g = model.graph();
  Shape expected{g.max_batch};
  expected.insert(expected.end(), g.sample_shape.begin(), g.sample_shape.end());
  const bool batch_ok = !shape.empty() && shape[0] >= 1 && shape[0] <= g.max_batch;
  const bool sample_ok = shape.size() == expected.size() &&
                         std::equal(shape.begin() + 1, shape.end(), expected.begin() + 1);
  if (!batch_ok || !sample_ok) {
    throw ShapeError(fmt::format(
        "input batch has shape {}, but the model takes [n, {}] with 1 <= n <= {} (model input {})",
        shape_str(shape), shape_str(g.sample_shape).substr(1, shape_str(g.sample_shape).size() - 2),
        g.max_batch, shape_str(expected)));
  }
  if (inputs == nullptr) throw ShapeError("input batch pointer is null");
  if (!config.validate_inputs) return;
  const std::int64_t n = numel(shape);
  const std::int64_t per = numel(g.sample_shape);
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(inputs[i])) {
      throw DataError(fmt::format("input batch: sample {} feature {} is {} (inputs must be finite)",
                                  i / per, i % per, inputs[i]));
    }
  }
  // FP16 inputs are stored in FP16: a value past its largest finite one would become infinite,
  // every step would overflow and be skipped, and the divergence report would blame gradients.
  if (plan->input.dtype == DType::F16) {
    constexpr float kF16Max = 65504.0f;
    for (std::int64_t i = 0; i < n; ++i) {
      if (std::fabs(inputs[i]) > kF16Max) {
        throw DataError(fmt::format(
            "input batch: sample {} feature {} is {}, beyond FP16's largest finite value {} "
            "(FP16 stores the inputs in FP16): normalise the inputs (mixtrain::Normalizer) or "
            "train in BF16",
            i / per, i % per, inputs[i], kF16Max));
      }
    }
  }
}

void Trainer::Impl::check_labels(const std::int32_t* labels, const Shape& shape,
                                 std::int64_t n) const {
  if (labels == nullptr) throw ShapeError("labels pointer is null");
  const std::int64_t expected = n * rows_per_sample;
  if (numel(shape) != expected || shape.empty() || shape[0] != n) {
    throw ShapeError(fmt::format("labels have shape {}, expected {} labels for a batch of {}",
                                 shape_str(shape), expected, n));
  }
  const std::int64_t limit = uses_labels ? loss_cols : 2;
  for (std::int64_t i = 0; i < expected; ++i) {
    if (labels[i] < 0 || labels[i] >= limit) {
      throw DataError(
          fmt::format("label {} of the batch is {}, outside [0, {}) ({} with {} output(s))", i,
                      labels[i], limit, loss_name(config.loss), loss_cols));
    }
  }
}

void Trainer::Impl::check_targets(const float* targets, const Shape& shape, std::int64_t n) const {
  if (targets == nullptr) throw ShapeError("targets pointer is null");
  const std::int64_t per = numel(model.graph().nodes[static_cast<std::size_t>(loss_node)].shape);
  if (shape.empty() || shape[0] != n || numel(shape) != n * per) {
    throw ShapeError(fmt::format("targets have shape {}, expected [{}, {}] to match the output",
                                 shape_str(shape), n, per));
  }
  for (std::int64_t i = 0; i < n * per; ++i) {
    if (!std::isfinite(targets[i])) {
      throw DataError(
          fmt::format("target {} of the batch is {} (targets must be finite)", i, targets[i]));
    }
  }
}

void Trainer::Impl::upload_inputs(const float* inputs, std::int64_t n) {
  const std::int64_t count = n * numel(model.graph().sample_shape);
  if (plan->input.dtype == DType::F32) {
    backend->upload(plan->input.ptr, inputs, static_cast<std::size_t>(count) * sizeof(float));
  } else {
    backend->upload(plan->input_staging, inputs, static_cast<std::size_t>(count) * sizeof(float));
    backend->convert(CBuf(plan->input_staging, DType::F32), plan->input, count, false);
  }
}

void Trainer::Impl::forward(std::int64_t n, bool training) {
  const graph::Graph& g = model.graph();
  for (std::size_t i = 0; i < g.nodes.size(); ++i) {
    if (training && !in_forward[i]) continue;
    const auto& node = g.nodes[i];
    ForwardArgs a{*backend, plan->control,    training, n, {}, plan->nodes[i].activation,
                  {},       policy.allow_tf32};
    for (int src : node.inputs) a.inputs.push_back(plan->activation_of(src));
    for (auto off : plan->nodes[i].param_offsets) a.params.push_back(plan->param(off));
    a.buffers = plan->nodes[i].buffers;
    node.layer->forward(a);
  }
}

void Trainer::Impl::backward(std::int64_t n) {
  const graph::Graph& g = model.graph();
  for (std::size_t i = g.nodes.size(); i-- > 0;) {
    if (!in_backward[i]) continue;
    const auto& node = g.nodes[i];
    const Plan::NodeMemory& mem = plan->nodes[i];
    BackwardArgs a{*backend, plan->control,    n, {}, mem.activation, mem.gradient, {}, {}, {},
                   {},       policy.allow_tf32};
    for (std::size_t k = 0; k < node.inputs.size(); ++k) {
      const int src = node.inputs[k];
      a.inputs.push_back(plan->activation_of(src));
      a.grad_inputs.push_back(grad_input[i][k] ? plan->nodes[static_cast<std::size_t>(src)].gradient
                                               : Buf{});
      a.accumulate_inputs.push_back(accumulate_input[i][k]);
    }
    for (auto off : mem.param_offsets) {
      a.params.push_back(plan->param(off));
      a.grad_params.push_back(plan->grad_of(off));
    }
    a.buffers = mem.buffers;
    node.layer->backward(a);
  }
}

void Trainer::Impl::run_loss(std::int64_t n, bool with_gradient, float* out) {
  const Plan::NodeMemory& mem = plan->nodes[static_cast<std::size_t>(loss_node)];
  LossDesc d;
  d.kind = loss_kind;
  d.huber_delta = config.huber_delta;
  d.pred = mem.activation;
  d.rows = n * rows_per_sample;
  d.cols = loss_cols;
  d.labels = uses_labels ? plan->labels : nullptr;
  d.targets = uses_labels ? nullptr : plan->targets;
  d.loss = out;
  if (with_gradient) {
    d.dpred = mem.gradient;
    d.control = plan->control;
  }
  backend->loss(d);
}

OptimizerDesc Trainer::Impl::optimizer_desc() const {
  OptimizerDesc od;
  od.hyper = hyper;
  od.count = plan->param_count;
  od.master = plan->master;
  od.grad = plan->grads();
  for (int s = 0; s < kMaxOptimizerSlots; ++s) od.state[s] = plan->state[s];
  od.working = plan->working;
  od.max_grad_norm = config.clip_grad_norm;
  od.control = plan->control;
  return od;
}

bool Trainer::Impl::run_dense_chain(std::int64_t n) {
  chain.rows = n;
  chain.input = plan->input;  // a stored batch's, for its own steps
  chain.labels = plan->labels;
  return backend->dense_chain_step(chain);
}

StepResult Trainer::Impl::step(std::int64_t n, const std::string& key) {
  backend->run_step(key, [&] {
    // run_step calls this when it plans or captures the step (not on a replay): remember how.
    const bool fused = !chain.layers.empty() && run_dense_chain(n);
    fused_keys[key] = fused;
    if (fused) return;
    forward(n, true);
    run_loss(n, true, &plan->control->loss);
    backward(n);
    backend->check_gradients(plan->grads(), plan->param_count, plan->control);
    const graph::Graph& g = model.graph();
    for (std::size_t i = 0; i < g.nodes.size(); ++i) {
      if (in_forward[i] && g.nodes[i].layer->has_after_check()) {
        g.nodes[i].layer->after_check(
            AfterCheckArgs{*backend, plan->control, n, plan->nodes[i].buffers});
      }
    }
    backend->optimizer_step_and_finish(optimizer_desc(), plan->control, scaler, plan->history);
  });
  if (fused_keys[key]) ++fused_steps;
  const std::int64_t index = steps_issued++;
  const auto pending = steps_issued - static_cast<std::int64_t>(history.size());
  if (pending >= std::min<std::int64_t>(config.sync_interval, plan->options.history_size)) {
    drain();
  }
  return StepResult(weak_from_this(), index);
}

void Trainer::Impl::drain() {
  const std::int64_t pending = steps_issued - static_cast<std::int64_t>(history.size());
  backend->download(&last_control, plan->control, sizeof last_control);
  if (pending > 0) {
    const int size = plan->options.history_size;
    std::vector<StepRecord> ring(static_cast<std::size_t>(size));
    backend->download(ring.data(), plan->history, ring.size() * sizeof(StepRecord));
    for (std::int64_t s = static_cast<std::int64_t>(history.size()); s < steps_issued; ++s) {
      const StepRecord& r = ring[static_cast<std::size_t>(s % size)];
      history.push_back(StepStats{r.loss, r.loss_scale, r.grad_norm, r.skipped != 0.0f});
    }
  }
  check_divergence();
}

void Trainer::Impl::check_divergence() const {
  const StepControl& c = last_control;
  const LossScaleConfig& ls = config.loss_scale;
  if (c.nonfinite_loss >= ls.nonfinite_loss_patience) {
    throw DivergenceError(fmt::format(
        "training diverged: the loss has not been finite for the last {} steps (step {}, loss "
        "scale {}). The loss scale does not change the forward pass, so this is not a "
        "gradient overflow: the activations overflow or the weights blew up. Try a lower "
        "learning rate, gradient clipping (clip_grad_norm), normalised inputs, or BF16, whose "
        "range is that of FP32.",
        c.nonfinite_loss, c.iteration, c.loss_scale));
  }
  if (scaler.dynamic != 0 && c.scale_at_floor >= ls.floor_patience) {
    throw DivergenceError(fmt::format(
        "training diverged: gradients overflowed for {} consecutive steps with the loss scale at "
        "its floor {} (step {}, {} of {} steps skipped). Lowering the scale further cannot help. "
        "Try a lower learning rate, gradient clipping (clip_grad_norm), or BF16.",
        c.scale_at_floor, ls.min_scale, c.iteration, c.skipped_steps, c.iteration));
  }
}

Trainer::Trainer(const Model& model, TrainerConfig config)
    : impl_(std::make_shared<Impl>(model, config)) {}

Trainer::~Trainer() = default;
Trainer::Trainer(Trainer&&) noexcept = default;
Trainer& Trainer::operator=(Trainer&&) noexcept = default;

Trainer::Impl& Trainer::impl() const {
  if (!impl_) throw Error("this Trainer was moved from: use the trainer it was moved into");
  return *impl_;
}

void Trainer::Impl::upload_labels(const std::int32_t* labels, const Shape& shape, std::int64_t n) {
  check_labels(labels, shape, n);
  const std::int64_t count = n * rows_per_sample;
  if (uses_labels) {
    backend->upload(plan->labels, labels, static_cast<std::size_t>(count) * sizeof(std::int32_t));
    return;
  }
  // Binary losses: 0/1 labels become float targets.
  if (loss_cols != 1) {
    throw ShapeError(fmt::format(
        "integer labels fit a single-output model; this one has {} outputs: pass float targets "
        "[n, {}]",
        loss_cols, loss_cols));
  }
  for (std::int64_t i = 0; i < count; ++i) host_targets[i] = static_cast<float>(labels[i]);
  backend->upload(plan->targets, host_targets, static_cast<std::size_t>(count) * sizeof(float));
}

void Trainer::Impl::upload_targets(const float* targets, const Shape& shape, std::int64_t n) {
  if (uses_labels) {
    throw ShapeError(
        fmt::format("loss {} takes integer labels, not float targets", loss_name(config.loss)));
  }
  check_targets(targets, shape, n);
  backend->upload(plan->targets, targets, static_cast<std::size_t>(numel(shape)) * sizeof(float));
}

DeviceBatch Trainer::Impl::store_batch(std::int64_t n) {
  const graph::Graph& g = model.graph();
  StoredBatch b{};
  b.n = n;
  b.input_bytes =
      static_cast<std::size_t>(n * numel(g.sample_shape)) * dtype_size(plan->input.dtype);
  b.in_place = device_batches.size() < kDirectBatches;
  b.step_key = b.in_place ? fmt::format("train/{}/stored{}", n, device_batches.size())
                          : fmt::format("train/{}", n);
  b.expected_bytes =
      uses_labels ? static_cast<std::size_t>(n * rows_per_sample) * sizeof(std::int32_t)
                  : static_cast<std::size_t>(n * rows_per_sample * loss_cols) * sizeof(float);
  b.inputs = backend->alloc(b.input_bytes);
  b.expected = backend->alloc(b.expected_bytes);
  backend->copy(b.inputs, plan->input.ptr, b.input_bytes);
  backend->copy(b.expected, uses_labels ? static_cast<void*>(plan->labels) : plan->targets,
                b.expected_bytes);
  backend->synchronize();
  device_batches.push_back(b);
  return DeviceBatch{device_batches.size() - 1, n};
}

StepResult Trainer::train_batch(const float* inputs, const Shape& input_shape,
                                const std::int32_t* labels, const Shape& label_shape) {
  Impl& m = impl();
  m.check_batch(inputs, input_shape);
  const std::int64_t n = input_shape[0];
  m.upload_labels(labels, label_shape, n);  // validates before anything is uploaded
  m.upload_inputs(inputs, n);
  return m.step(n, fmt::format("train/{}", n));
}

StepResult Trainer::train_batch(const float* inputs, const Shape& input_shape, const float* targets,
                                const Shape& target_shape) {
  Impl& m = impl();
  m.check_batch(inputs, input_shape);
  const std::int64_t n = input_shape[0];
  m.upload_targets(targets, target_shape, n);  // validates before anything is uploaded
  m.upload_inputs(inputs, n);
  return m.step(n, fmt::format("train/{}", n));
}

DeviceBatch Trainer::upload_batch(const float* inputs, const Shape& input_shape,
                                  const std::int32_t* labels, const Shape& label_shape) {
  Impl& m = impl();
  m.check_batch(inputs, input_shape);
  const std::int64_t n = input_shape[0];
  m.upload_labels(labels, label_shape, n);
  m.upload_inputs(inputs, n);
  return m.store_batch(n);
}

DeviceBatch Trainer::upload_batch(const float* inputs, const Shape& input_shape,
                                  const float* targets, const Shape& target_shape) {
  Impl& m = impl();
  m.check_batch(inputs, input_shape);
  const std::int64_t n = input_shape[0];
  m.upload_targets(targets, target_shape, n);
  m.upload_inputs(inputs, n);
  return m.store_batch(n);
}

StepResult Trainer::train_batch(const DeviceBatch& batch) {
  Impl& m = impl();
  if (batch.index >= m.device_batches.size() || m.device_batches[batch.index].n != batch.size) {
    throw ConfigError(fmt::format("device batch {} was not uploaded by this trainer", batch.index));
  }
  const Impl::StoredBatch& b = m.device_batches[batch.index];
  Plan& plan = *m.plan;
  if (!b.in_place) {
    m.backend->copy(plan.input.ptr, b.inputs, b.input_bytes);
    m.backend->copy(m.uses_labels ? static_cast<void*>(plan.labels) : plan.targets, b.expected,
                    b.expected_bytes);
    return m.step(b.n, b.step_key);
  }
  // The plan's input and label (or target) buffers point at the batch for its step.
  struct Restore {
    Plan& plan;
    void* input;
    std::int32_t* labels;
    float* targets;
    ~Restore() {
      plan.input.ptr = input;
      plan.labels = labels;
      plan.targets = targets;
    }
  } restore{plan, plan.input.ptr, plan.labels, plan.targets};
  plan.input.ptr = b.inputs;
  if (m.uses_labels) {
    plan.labels = static_cast<std::int32_t*>(b.expected);
  } else {
    plan.targets = static_cast<float*>(b.expected);
  }
  return m.step(b.n, b.step_key);
}

namespace {

// A span handed with a shape must hold exactly the shape's elements.
template <typename T>
const T* checked(std::span<const T> data, const Shape& shape, const char* what) {
  if (static_cast<std::int64_t>(data.size()) != numel(shape)) {
    throw ShapeError(fmt::format("{} hold {} values, but their shape {} needs {}", what,
                                 data.size(), shape_str(shape), numel(shape)));
  }
  return data.data();
}

}  // namespace

StepResult Trainer::train_batch(std::span<const float> inputs, const Shape& input_shape,
                                std::span<const std::int32_t> labels, const Shape& label_shape) {
  return train_batch(checked(inputs, input_shape, "inputs"), input_shape,
                     checked(labels, label_shape, "labels"), label_shape);
}

StepResult Trainer::train_batch(std::span<const float> inputs, const Shape& input_shape,
                                std::span<const float> targets, const Shape& target_shape) {
  return train_batch(checked(inputs, input_shape, "inputs"), input_shape,
                     checked(targets, target_shape, "targets"), target_shape);
}

DeviceBatch Trainer::upload_batch(std::span<const float> inputs, const Shape& input_shape,
                                  std::span<const std::int32_t> labels, const Shape& label_shape) {
  return upload_batch(checked(inputs, input_shape, "inputs"), input_shape,
                      checked(labels, label_shape, "labels"), label_shape);
}

DeviceBatch Trainer::upload_batch(std::span<const float> inputs, const Shape& input_shape,
                                  std::span<const float> targets, const Shape& target_shape) {
  return upload_batch(checked(inputs, input_shape, "inputs"), input_shape,
                      checked(targets, target_shape, "targets"), target_shape);
}

std::vector<float> Trainer::predict(std::span<const float> inputs, const Shape& input_shape) {
  return predict(checked(inputs, input_shape, "inputs"), input_shape);
}

std::vector<float> Trainer::predict(const float* inputs, const Shape& input_shape) {
  Impl& m = impl();
  m.check_batch(inputs, input_shape);
  const std::int64_t n = input_shape[0];
  m.upload_inputs(inputs, n);
  m.forward(n, false);
  const graph::Graph& g = m.model.graph();
  const Buf out = m.plan->nodes[static_cast<std::size_t>(g.output)].activation;
  const std::int64_t count = n * m.output_numel();
  std::vector<float> result(static_cast<std::size_t>(count));
  if (out.dtype == DType::F32) {
    m.backend->download(result.data(), out.ptr, result.size() * sizeof(float));
  } else {
    m.backend->convert(out, Buf{m.plan->output_staging, DType::F32}, count, false);
    m.backend->download(result.data(), m.plan->output_staging, result.size() * sizeof(float));
  }
  return result;
}

float StepResult::loss() const {
  return stats().loss;
}
float StepResult::loss_scale() const {
  return stats().loss_scale;
}
float StepResult::grad_norm() const {
  return stats().grad_norm;
}
bool StepResult::skipped() const {
  return stats().skipped;
}
StepStats StepResult::stats() const {
  const std::shared_ptr<Trainer::Impl> trainer = trainer_.lock();
  if (!trainer) {
    throw Error(
        fmt::format("the result of step {} is gone with its Trainer: read a StepResult "
                    "while the trainer that returned it exists",
                    step_));
  }
  return trainer->step_stats(step_);
}

StepStats Trainer::step_stats(std::int64_t step) {
  return impl().step_stats(step);
}

StepStats Trainer::Impl::step_stats(std::int64_t step) {
  if (step < 0 || step >= steps_issued) {
    throw ConfigError(fmt::format("step {} has not run (steps so far: {})", step, steps_issued));
  }
  if (step >= static_cast<std::int64_t>(history.size())) drain();
  return history[static_cast<std::size_t>(step)];
}

const std::vector<StepStats>& Trainer::history() {
  impl().drain();
  return impl().history;
}

TrainerStats Trainer::stats() {
  Impl& m = impl();
  m.drain();
  const StepControl& c = m.last_control;
  TrainerStats s;
  s.steps = c.iteration;
  s.applied_steps = c.optimizer_steps;
  s.skipped_steps = c.skipped_steps;
  s.overflow_rate = c.iteration > 0 ? static_cast<double>(c.skipped_steps) / c.iteration : 0.0;
  s.loss_scale = c.loss_scale;
  if (!m.history.empty()) {
    s.last_loss = m.history.back().loss;
    s.last_grad_norm = m.history.back().grad_norm;
  }
  s.peak_memory_bytes = m.backend->peak_memory();
  s.fused_steps = m.fused_steps;
  return s;
}

void Trainer::set_learning_rate(float lr) {
  if (!(std::isfinite(lr) && lr > 0.0f)) {
    throw ConfigError(fmt::format("learning rate must be positive and finite, got {}", lr));
  }
  impl().config.learning_rate = lr;
  impl().backend->upload(&impl().plan->control->learning_rate, &lr, sizeof lr);
}

float Trainer::learning_rate() const {
  return impl().config.learning_rate;
}
const TrainerConfig& Trainer::config() const {
  return impl().config;
}
const Model& Trainer::model() const {
  return impl().model;
}
std::string Trainer::device() const {
  return impl().backend->name();
}
PrecisionPolicy Trainer::policy() const {
  return impl().policy;
}

std::vector<float> Trainer::weights() {
  const Plan& p = *impl().plan;
  std::vector<float> slots(static_cast<std::size_t>(p.param_count));
  impl().backend->download(slots.data(), p.master, slots.size() * 4);
  // Declaration order, then the layer state.
  std::vector<float> w;
  w.reserve(static_cast<std::size_t>(p.graph.parameter_count + p.persistent_count));
  for (const auto& [offset, count] : p.param_spans) {
    w.insert(w.end(), slots.begin() + offset, slots.begin() + offset + count);
  }
  w.resize(static_cast<std::size_t>(p.graph.parameter_count + p.persistent_count));
  if (p.persistent_count > 0) {
    impl().backend->download(w.data() + p.graph.parameter_count, p.persistent,
                             static_cast<std::size_t>(p.persistent_count) * 4);
  }
  return w;
}

void Trainer::set_weights(const std::vector<float>& w) {
  Impl& m = impl();
  const Plan& p = *m.plan;
  if (static_cast<std::int64_t>(w.size()) != p.graph.parameter_count + p.persistent_count) {
    throw ShapeError(fmt::format(
        "set_weights: got {} values, the model has {} parameters and {} values of layer state",
        w.size(), p.graph.parameter_count, p.persistent_count));
  }
  std::vector<float> slots(static_cast<std::size_t>(p.param_count), 0.0f);
  std::int64_t next = 0;
  for (const auto& [offset, count] : p.param_spans) {
    std::copy_n(w.begin() + next, count, slots.begin() + offset);
    next += count;
  }
  m.backend->upload(p.master, slots.data(), slots.size() * 4);
  if (p.persistent_count > 0) {
    m.backend->upload(p.persistent, w.data() + p.graph.parameter_count,
                      static_cast<std::size_t>(p.persistent_count) * 4);
  }
  if (m.plan->working) {
    m.backend->convert(CBuf(m.plan->master, DType::F32), m.plan->working, m.plan->param_count,
                       false);
  }
  m.backend->synchronize();
}

namespace {

// The architecture a weights file records: the layers with parameters or persistent state, in
// graph order, under the spec's names and types (a fused node is its first layer).
WeightsArchitecture architecture_of(const graph::Graph& g) {
  WeightsArchitecture out;
  for (const graph::Node& node : g.nodes) {
    WeightsLayer layer;
    for (const ParamDecl& p : node.params) layer.params.push_back({p.name, p.shape});
    for (const BufferDecl& b : node.buffers) {
      if (b.persistent) layer.state.push_back({b.name, b.shape});
    }
    if (layer.params.empty() && layer.state.empty()) continue;
    const LayerSpec& spec = g.spec.layers.at(node.spec_layer);
    layer.name = spec.name;
    layer.type = spec.type;
    out.push_back(std::move(layer));
  }
  return out;
}

}  // namespace

void Trainer::save_weights(const std::filesystem::path& path) {
  write_file_atomic(path, serialize_weights_file(architecture_of(impl_->plan->graph), weights()));
}

void Trainer::load_weights(const std::filesystem::path& path) {
  const WeightsArchitecture model = architecture_of(impl_->plan->graph);
  const WeightsFile file = parse_weights_file(read_file(path), path.string(), &model);
  set_weights(file.values);
}

}  // namespace mixtrain
