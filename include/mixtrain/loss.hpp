// Losses. All are means over the batch, computed in fp32 whatever the precision.
#pragma once

#include <cstdint>
#include <string_view>

namespace mixtrain {

enum class Loss : std::uint8_t {
  SparseCrossEntropy,  // integer labels [batch]; the model outputs logits (or ends in softmax)
  CrossEntropy,        // one-hot or probability targets [batch, classes]; logits or softmax
  BinaryCrossEntropy,  // targets in [0, 1] [batch, outputs]; outputs are probabilities (sigmoid)
  BinaryCrossEntropyWithLogits,  // targets in [0, 1]; outputs are logits
  MeanSquaredError,
  MeanAbsoluteError,
  Huber,  // quadratic within huber_delta, linear outside
};

std::string_view loss_name(Loss l);
// "sparse_cross_entropy", "cross_entropy", "bce", "bce_with_logits", "mse", "mae", "huber".
Loss parse_loss(std::string_view name);

// True when the loss takes integer class labels (the others take float targets). Binary losses
// also accept integer labels 0/1 for a single-output model.
bool loss_takes_labels(Loss l);

}  // namespace mixtrain
