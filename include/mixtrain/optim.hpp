// Optimizers. Each has its own options struct with its own named hyper-parameters; the learning
// rate and L2 weight decay live in TrainerConfig. All optimizers update fp32 master weights and
// fp32 state; in mixed precision the same pass writes the FP16/BF16 working copy of the weights.
#pragma once

#include <cstdint>
#include <string_view>

namespace mixtrain {

enum class Optimizer : std::uint8_t { SGD, Adam, AdamW, RMSProp, AdaGrad, AdaDelta, Nadam };

std::string_view optimizer_name(Optimizer o);
// Parses "sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "nadam" (case-insensitive);
// throws ConfigError listing the valid names otherwise.
Optimizer parse_optimizer(std::string_view name);

// p -= lr * v, v = momentum * v + (1 - dampening) * g; Nesterov uses g + momentum * v.
struct SgdOptions {
  float momentum = 0.0f;
  float dampening = 0.0f;
  bool nesterov = false;
};

// Kingma & Ba with bias correction.
struct AdamOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
};

// Adam with decoupled weight decay (Loshchilov & Hutter): p -= lr * decoupled_weight_decay * p.
struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  float decoupled_weight_decay = 0.01f;
};

// s = rho * s + (1 - rho) * g^2; centered also tracks mean gradient m and uses s - m^2.
struct RmspropOptions {
  float rho = 0.99f;
  float epsilon = 1e-8f;
  float momentum = 0.0f;
  bool centered = false;
};

// s += g^2; p -= lr * g / (sqrt(s) + epsilon).
struct AdagradOptions {
  float initial_accumulator = 0.0f;
  float epsilon = 1e-10f;
};

// Zeiler's AdaDelta; the learning rate scales the update (1.0 reproduces the paper).
struct AdadeltaOptions {
  float rho = 0.9f;
  float epsilon = 1e-6f;
};

// Adam with Nesterov momentum (Dozat), with the momentum-decay schedule of PyTorch's NAdam.
struct NadamOptions {
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float epsilon = 1e-8f;
  float momentum_decay = 4e-3f;
};

}  // namespace mixtrain
