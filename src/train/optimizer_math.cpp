#include "train/optimizer_math.hpp"

#include <array>
#include <cctype>
#include <string>

#include "mixtrain/error.hpp"

namespace mixtrain {

namespace {

constexpr std::array kOptimizers = {Optimizer::SGD,     Optimizer::Adam,    Optimizer::AdamW,
                                    Optimizer::RMSProp, Optimizer::AdaGrad, Optimizer::AdaDelta,
                                    Optimizer::Nadam};

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

}  // namespace

std::string_view optimizer_name(Optimizer o) {
  switch (o) {
    case Optimizer::SGD:
      return "sgd";
    case Optimizer::Adam:
      return "adam";
    case Optimizer::AdamW:
      return "adamw";
    case Optimizer::RMSProp:
      return "rmsprop";
    case Optimizer::AdaGrad:
      return "adagrad";
    case Optimizer::AdaDelta:
      return "adadelta";
    case Optimizer::Nadam:
      return "nadam";
  }
  return "?";
}

Optimizer parse_optimizer(std::string_view name) {
  for (Optimizer o : kOptimizers) {
    if (equals_ignoring_case(name, optimizer_name(o))) return o;
  }
  std::string message = "unknown optimizer '" + std::string(name) + "'; valid optimizers are ";
  for (std::size_t i = 0; i < kOptimizers.size(); ++i) {
    if (i > 0) message += ", ";
    message += optimizer_name(kOptimizers[i]);
  }
  throw ConfigError(message);
}

int optimizer_state_slots(const OptimizerHyper& hyper) {
  switch (hyper.kind) {
    case Optimizer::SGD:
      return hyper.sgd.momentum > 0.0f ? 1 : 0;
    case Optimizer::Adam:
    case Optimizer::AdamW:
    case Optimizer::Nadam:
    case Optimizer::AdaDelta:
      return 2;
    case Optimizer::RMSProp:
      return 1 + (hyper.rmsprop.momentum > 0.0f ? 1 : 0) + (hyper.rmsprop.centered ? 1 : 0);
    case Optimizer::AdaGrad:
      return 1;
  }
  return 0;
}

float optimizer_state_init(const OptimizerHyper& hyper, int slot) {
  if (hyper.kind == Optimizer::AdaGrad && slot == 0) return hyper.adagrad.initial_accumulator;
  return 0.0f;
}

}  // namespace mixtrain
