#include "layers/simple_layers.hpp"

namespace mixtrain {

namespace {

// Passes a gradient through unchanged (or adds it where another consumer already wrote).
void pass_gradient(const BackwardArgs& a, std::size_t i, std::int64_t n) {
  if (!a.grad_inputs[i]) return;
  a.backend.convert(a.grad_output, a.grad_inputs[i], n, a.accumulate_inputs[i]);
}

}  // namespace

void ActivationLayer::forward(const ForwardArgs& a) const {
  a.backend.activation_forward(act_, alpha_, a.inputs[0], a.output, a.batch * out_numel());
}

void ActivationLayer::backward(const BackwardArgs& a) const {
  if (!a.grad_inputs[0]) return;
  a.backend.activation_backward(act_, alpha_, a.inputs[0], a.output, a.grad_output,
                                a.grad_inputs[0], a.batch * out_numel(), a.accumulate_inputs[0]);
}

Shape Softmax::output_shape(const std::vector<Shape>& in) const {
  if (in[0].empty()) shape_error("needs at least one dimension per sample");
  return in[0];
}

void Softmax::forward(const ForwardArgs& a) const {
  const std::int64_t cols = out_shape().back();
  a.backend.softmax_forward(a.inputs[0], a.output, a.batch * out_numel() / cols, cols);
}

void Softmax::backward(const BackwardArgs& a) const {
  if (!a.grad_inputs[0]) return;
  const std::int64_t cols = out_shape().back();
  a.backend.softmax_backward(a.output, a.grad_output, a.grad_inputs[0],
                             a.batch * out_numel() / cols, cols, a.accumulate_inputs[0]);
}

Shape Dropout::output_shape(const std::vector<Shape>& in) const {
  if (!(rate_ >= 0.0f && rate_ < 1.0f)) {
    config_error("rate must be in [0, 1), got " + std::to_string(rate_));
  }
  return in[0];
}

void Dropout::forward(const ForwardArgs& a) const {
  const std::int64_t n = a.batch * out_numel();
  if (!a.training || rate_ == 0.0f) {
    a.backend.convert(a.inputs[0], a.output, n, false);
    return;
  }
  a.backend.dropout_forward(rate_, salt(), a.inputs[0], a.output, n, a.control);
}

void Dropout::backward(const BackwardArgs& a) const {
  if (!a.grad_inputs[0]) return;
  const std::int64_t n = a.batch * out_numel();
  if (rate_ == 0.0f) {
    pass_gradient(a, 0, n);
    return;
  }
  a.backend.dropout_backward(rate_, salt(), a.grad_output, a.grad_inputs[0], n, a.control,
                             a.accumulate_inputs[0]);
}

Shape Reshape::output_shape(const std::vector<Shape>& in) const {
  const std::int64_t total = numel(in[0]);
  if (target_.empty()) return Shape{total};
  Shape out = target_;
  std::int64_t known = 1;
  int inferred = -1;
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (out[i] == -1) {
      if (inferred >= 0) config_error("at most one dimension may be -1 in " + shape_str(target_));
      inferred = static_cast<int>(i);
    } else if (out[i] <= 0) {
      config_error("dimensions must be positive or -1, got " + shape_str(target_));
    } else if (__builtin_mul_overflow(known, out[i], &known)) {
      config_error("target shape " + shape_str(target_) +
                   " has more elements than 64 bits can count");
    }
  }
  if (inferred >= 0) {
    if (total % known != 0) {
      shape_error("cannot reshape " + shape_str(in[0]) + " to " + shape_str(target_));
    }
    out[static_cast<std::size_t>(inferred)] = total / known;
  }
  if (numel(out) != total) {
    shape_error("cannot reshape " + shape_str(in[0]) + " (" + std::to_string(total) +
                " elements) to " + shape_str(out) + " (" + std::to_string(numel(out)) +
                " elements)");
  }
  return out;
}

void Reshape::forward(const ForwardArgs& a) const {
  a.backend.convert(a.inputs[0], a.output, a.batch * out_numel(), false);
}

void Reshape::backward(const BackwardArgs& a) const {
  pass_gradient(a, 0, a.batch * out_numel());
}

Shape Add::output_shape(const std::vector<Shape>& in) const {
  if (in[0] != in[1]) {
    shape_error("inputs differ in shape: " + shape_str(in[0]) + " and " + shape_str(in[1]));
  }
  return in[0];
}

void Add::forward(const ForwardArgs& a) const {
  a.backend.add(a.inputs[0], a.inputs[1], a.output, a.batch * out_numel());
}

void Add::backward(const BackwardArgs& a) const {
  pass_gradient(a, 0, a.batch * out_numel());
  pass_gradient(a, 1, a.batch * out_numel());
}

}  // namespace mixtrain
