// Names, parsing and validation of the configuration values.
#include <cmath>
#include <string>

#include "mixtrain/error.hpp"
#include "mixtrain/trainer.hpp"
#include "train/names.hpp"

namespace mixtrain {

std::string_view precision_name(Precision p) {
  switch (p) {
    case Precision::FP32:
      return "fp32";
    case Precision::TF32:
      return "tf32";
    case Precision::FP16:
      return "fp16";
    case Precision::BF16:
      return "bf16";
  }
  return "?";
}

Precision parse_precision(std::string_view name) {
  return parse_name<Precision>("precision", name,
                               {{"fp32", Precision::FP32},
                                {"tf32", Precision::TF32},
                                {"fp16", Precision::FP16},
                                {"bf16", Precision::BF16}});
}

PrecisionPolicy PrecisionPolicy::for_precision(Precision p) {
  PrecisionPolicy policy;
  policy.compute = p == Precision::FP16   ? DType::F16
                   : p == Precision::BF16 ? DType::BF16
                                          : DType::F32;
  policy.allow_tf32 = p == Precision::TF32;
  return policy;
}

std::string_view loss_scale_mode_name(LossScaleMode m) {
  switch (m) {
    case LossScaleMode::Auto:
      return "auto";
    case LossScaleMode::Dynamic:
      return "dynamic";
    case LossScaleMode::Static:
      return "static";
    case LossScaleMode::None:
      return "none";
  }
  return "?";
}

LossScaleMode parse_loss_scale_mode(std::string_view name) {
  return parse_name<LossScaleMode>("loss-scale mode", name,
                                   {{"auto", LossScaleMode::Auto},
                                    {"dynamic", LossScaleMode::Dynamic},
                                    {"static", LossScaleMode::Static},
                                    {"none", LossScaleMode::None}});
}

namespace {

bool power_of_two(float v) {
  if (!(v > 0.0f) || !std::isfinite(v)) return false;
  int exp = 0;
  return std::frexp(v, &exp) == 0.5f;
}

void require(bool ok, const std::string& message) {
  if (!ok) throw ConfigError(message);
}

std::string num(double v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

}  // namespace

void LossScaleConfig::validate() const {
  require(power_of_two(initial),
          "loss_scale.initial must be a positive power of two, got " + num(initial));
  require(power_of_two(growth_factor) && growth_factor > 1.0f,
          "loss_scale.growth_factor must be a power of two above 1, got " + num(growth_factor));
  require(power_of_two(backoff_factor) && backoff_factor < 1.0f,
          "loss_scale.backoff_factor must be a power of two below 1 (e.g. 0.5), got " +
              num(backoff_factor));
  require(growth_interval >= 1,
          "loss_scale.growth_interval must be at least 1, got " + std::to_string(growth_interval));
  require(hysteresis >= 1,
          "loss_scale.hysteresis must be at least 1, got " + std::to_string(hysteresis));
  require(power_of_two(min_scale),
          "loss_scale.min_scale must be a positive power of two, got " + num(min_scale));
  require(power_of_two(max_scale),
          "loss_scale.max_scale must be a positive power of two, got " + num(max_scale));
  require(min_scale <= initial && initial <= max_scale,
          "loss_scale.initial " + num(initial) + " must lie within [min_scale " + num(min_scale) +
              ", max_scale " + num(max_scale) + "]");
  require(floor_patience >= 1, "loss_scale.floor_patience must be at least 1");
  require(nonfinite_loss_patience >= 1, "loss_scale.nonfinite_loss_patience must be at least 1");
}

LossScaleMode LossScaleConfig::resolved(Precision p) const {
  if (mode != LossScaleMode::Auto) return mode;
  return p == Precision::FP16 ? LossScaleMode::Dynamic : LossScaleMode::None;
}

std::string_view loss_name(Loss l) {
  switch (l) {
    case Loss::SparseCrossEntropy:
      return "sparse_cross_entropy";
    case Loss::CrossEntropy:
      return "cross_entropy";
    case Loss::BinaryCrossEntropy:
      return "bce";
    case Loss::BinaryCrossEntropyWithLogits:
      return "bce_with_logits";
    case Loss::MeanSquaredError:
      return "mse";
    case Loss::MeanAbsoluteError:
      return "mae";
    case Loss::Huber:
      return "huber";
  }
  return "?";
}

Loss parse_loss(std::string_view name) {
  return parse_name<Loss>("loss", name,
                          {{"sparse_cross_entropy", Loss::SparseCrossEntropy},
                           {"cross_entropy", Loss::CrossEntropy},
                           {"bce", Loss::BinaryCrossEntropy},
                           {"bce_with_logits", Loss::BinaryCrossEntropyWithLogits},
                           {"mse", Loss::MeanSquaredError},
                           {"mae", Loss::MeanAbsoluteError},
                           {"huber", Loss::Huber}});
}

std::string_view lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::Constant:
      return "constant";
    case LrSchedule::Cosine:
      return "cosine";
    case LrSchedule::StepDecay:
      return "step";
  }
  return "?";
}

LrSchedule parse_lr_schedule(std::string_view name) {
  return parse_name<LrSchedule>("learning-rate schedule", name,
                                {{"constant", LrSchedule::Constant},
                                 {"cosine", LrSchedule::Cosine},
                                 {"step", LrSchedule::StepDecay}});
}

bool loss_takes_labels(Loss l) {
  return l == Loss::SparseCrossEntropy;
}

std::string_view device_name(Device d) {
  switch (d) {
    case Device::Auto:
      return "auto";
    case Device::CPU:
      return "cpu";
    case Device::CUDA:
      return "cuda";
  }
  return "?";
}

Device parse_device(std::string_view name) {
  return parse_name<Device>("device", name,
                            {{"auto", Device::Auto}, {"cpu", Device::CPU}, {"cuda", Device::CUDA}});
}

Precision TrainerConfig::effective_precision() const {
  return mixed_precision && precision == Precision::FP32 ? Precision::FP16 : precision;
}

void TrainerConfig::validate() const {
  require(std::isfinite(learning_rate) && learning_rate > 0.0f,
          "learning_rate must be positive and finite, got " + num(learning_rate));
  require(std::isfinite(weight_decay) && weight_decay >= 0.0f,
          "weight_decay must be >= 0, got " + num(weight_decay));
  require(std::isfinite(clip_grad_norm) && clip_grad_norm >= 0.0f,
          "clip_grad_norm must be >= 0 (0 disables clipping), got " + num(clip_grad_norm));
  require(huber_delta > 0.0f, "huber_delta must be positive, got " + num(huber_delta));
  require(sync_interval >= 1, "sync_interval must be at least 1");
  require(schedule.warmup_steps >= 0, "schedule.warmup_steps must be >= 0");
  require(schedule.kind != LrSchedule::Cosine || schedule.total_steps > 0,
          "schedule.total_steps must be positive for the cosine schedule (e.g. epochs x batches)");
  require(schedule.min_factor >= 0.0f && schedule.min_factor <= 1.0f,
          "schedule.min_factor must be in [0, 1], got " + num(schedule.min_factor));
  require(schedule.kind != LrSchedule::StepDecay || schedule.step_size > 0,
          "schedule.step_size must be positive for the step schedule");
  require(schedule.gamma > 0.0f && schedule.gamma <= 1.0f,
          "schedule.gamma must be in (0, 1], got " + num(schedule.gamma));
  auto beta = [](float b, const char* name) {
    require(b >= 0.0f && b < 1.0f, std::string(name) + " must be in [0, 1), got " + num(b));
  };
  auto positive = [](float v, const char* name) {
    require(v > 0.0f, std::string(name) + " must be positive, got " + num(v));
  };
  switch (optimizer) {
    case Optimizer::SGD:
      require(sgd.momentum >= 0.0f, "sgd.momentum must be >= 0, got " + num(sgd.momentum));
      require(!sgd.nesterov || (sgd.momentum > 0.0f && sgd.dampening == 0.0f),
              "sgd.nesterov needs momentum > 0 and dampening 0");
      break;
    case Optimizer::Adam:
      beta(adam.beta1, "adam.beta1");
      beta(adam.beta2, "adam.beta2");
      positive(adam.epsilon, "adam.epsilon");
      break;
    case Optimizer::AdamW:
      beta(adamw.beta1, "adamw.beta1");
      beta(adamw.beta2, "adamw.beta2");
      positive(adamw.epsilon, "adamw.epsilon");
      require(adamw.decoupled_weight_decay >= 0.0f, "adamw.decoupled_weight_decay must be >= 0");
      break;
    case Optimizer::RMSProp:
      beta(rmsprop.rho, "rmsprop.rho");
      positive(rmsprop.epsilon, "rmsprop.epsilon");
      require(rmsprop.momentum >= 0.0f, "rmsprop.momentum must be >= 0");
      break;
    case Optimizer::AdaGrad:
      require(adagrad.initial_accumulator >= 0.0f, "adagrad.initial_accumulator must be >= 0");
      positive(adagrad.epsilon, "adagrad.epsilon");
      break;
    case Optimizer::AdaDelta:
      beta(adadelta.rho, "adadelta.rho");
      positive(adadelta.epsilon, "adadelta.epsilon");
      break;
    case Optimizer::Nadam:
      beta(nadam.beta1, "nadam.beta1");
      beta(nadam.beta2, "nadam.beta2");
      positive(nadam.epsilon, "nadam.epsilon");
      break;
  }
  loss_scale.validate();
}

}  // namespace mixtrain
