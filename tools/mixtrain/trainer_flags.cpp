// The flags that make a TrainerConfig, shared by train, compare and eval.
#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <string>

#include "common.hpp"
#include "mixtrain/error.hpp"

namespace mixtrain::cli {

CLI::Validator parsed_by(std::function<void(const std::string&)> parse, std::string description) {
  return CLI::Validator(
      [parse = std::move(parse)](std::string& value) -> std::string {
        try {
          parse(value);
          return {};
        } catch (const Error& e) {
          return e.what();
        }
      },
      std::move(description));
}

CLI::Validator positive_integer() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        long long n = 0;
        std::size_t used = 0;
        try {
          n = std::stoll(value, &used);
        } catch (const std::exception&) {
          used = 0;
        }
        if (used != value.size() || used == 0 || n < 1) {
          return "must be a positive integer, got '" + value + "'";
        }
        return {};
      },
      "POSITIVE");
}

void add_trainer_flags(CLI::App& app, TrainerFlags& f, bool with_precision) {
  if (with_precision) {
    app.add_option("--precision", f.precision,
                   "fp32 (strict), tf32 (TF32 GEMMs on CUDA, fp32 on the CPU), fp16 or bf16 "
                   "(mixed precision: fp32 master weights)")
        ->capture_default_str()
        ->check(parsed_by([](const std::string& s) { parse_precision(s); }, "fp32|tf32|fp16|bf16"));
  }
  app.add_option("--optimizer", f.optimizer, "optimizer (default hyper-parameters besides --lr)")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_optimizer(s); },
                        "sgd|adam|adamw|rmsprop|adagrad|adadelta|nadam"));
  app.add_option("--lr", f.learning_rate, "learning rate")->capture_default_str();
  app.add_option("--weight-decay", f.weight_decay, "L2 weight decay added to the gradient")
      ->capture_default_str();
  app.add_option("--seed", f.seed, "seed of the weights, dropout and shuffling")
      ->capture_default_str();
  app.add_option("--device", f.device,
                 "auto (CUDA when this build has it and a GPU is present, else the CPU), cpu or "
                 "cuda")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_device(s); }, "auto|cpu|cuda"));
  app.add_option("--loss-scale", f.loss_scale,
                 "loss scaling: dynamic (grow after --growth-interval clean steps, halve and skip "
                 "the step on overflow), static (fixed at --initial-scale), none, or auto "
                 "(dynamic for fp16, none otherwise)")
      ->capture_default_str()
      ->check(parsed_by([](const std::string& s) { parse_loss_scale_mode(s); },
                        "dynamic|static|none|auto"));
  app.add_option("--initial-scale", f.initial_scale,
                 "first loss scale (a power of two) for dynamic and static scaling")
      ->capture_default_str();
  app.add_option("--growth-interval", f.growth_interval,
                 "dynamic scaling: clean steps before the scale doubles")
      ->capture_default_str();
  app.add_option("--lr-schedule", f.lr_schedule,
                 "learning-rate schedule over the run: constant, cosine (decays to 0 by the last "
                 "step) or step (x0.1 every third of the run)")
      ->capture_default_str()
      ->check(
          parsed_by([](const std::string& s) { parse_lr_schedule(s); }, "constant|cosine|step"));
  app.add_option("--warmup-steps", f.warmup_steps,
                 "linear learning-rate warm-up over this many steps; 0: none")
      ->capture_default_str();
  app.add_option("--clip-grad-norm", f.clip_grad_norm,
                 "clip the global L2 norm of the (unscaled) gradients to this value; 0: off")
      ->capture_default_str();
}

TrainerConfig make_config(const TrainerFlags& f) {
  TrainerConfig c;
  c.precision = parse_precision(f.precision);
  c.optimizer = parse_optimizer(f.optimizer);
  c.learning_rate = f.learning_rate;
  c.weight_decay = f.weight_decay;
  c.seed = f.seed;
  c.device = parse_device(f.device);
  c.loss_scale.mode = parse_loss_scale_mode(f.loss_scale);
  c.loss_scale.initial = f.initial_scale;
  c.loss_scale.growth_interval = f.growth_interval;
  c.clip_grad_norm = f.clip_grad_norm;
  c.schedule.warmup_steps = f.warmup_steps;
  parse_lr_schedule(f.lr_schedule);  // the schedule itself is set once the run length is known
  c.validate();
  return c;
}

void apply_schedule(TrainerConfig& c, const TrainerFlags& f, std::int64_t steps) {
  c.schedule.kind = parse_lr_schedule(f.lr_schedule);
  const auto total = static_cast<std::int32_t>(std::max<std::int64_t>(steps, 1));
  c.schedule.total_steps = total;
  c.schedule.step_size = std::max(1, total / 3);
  c.validate();
}

std::string describe_config(const TrainerConfig& c, const std::string& device) {
  const Precision p = c.effective_precision();
  const LossScaleMode mode = c.loss_scale.resolved(p);
  std::string scale(loss_scale_mode_name(mode));
  if (mode == LossScaleMode::Dynamic) {
    scale += fmt::format("(initial {:g}, growth interval {})", c.loss_scale.initial,
                         c.loss_scale.growth_interval);
  } else if (mode == LossScaleMode::Static) {
    scale += fmt::format("({:g})", c.loss_scale.initial);
  }
  return fmt::format(
      "device={} precision={} loss-scale={} optimizer={} lr={:g} lr-schedule={} weight-decay={:g} "
      "clip-grad-norm={} seed={}",
      device, precision_name(p), scale, optimizer_name(c.optimizer), c.learning_rate,
      lr_schedule_name(c.schedule.kind), c.weight_decay,
      c.clip_grad_norm > 0 ? fmt::format("{:g}", c.clip_grad_norm) : "off", c.seed);
}

}  // namespace mixtrain::cli
