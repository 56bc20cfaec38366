// Layers without parameters: element-wise activations, softmax, dropout, reshape and add.
#pragma once

#include "layers/layer.hpp"

namespace mixtrain {

class ActivationLayer final : public Layer {
 public:
  ActivationLayer(std::string name, std::uint64_t salt, std::string type, Activation act,
                  float alpha)
      : Layer(std::move(name), salt), type_(std::move(type)), act_(act), alpha_(alpha) {}
  std::string type() const override { return type_; }
  Activation activation() const { return act_; }
  Shape output_shape(const std::vector<Shape>& in) const override { return in[0]; }
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

 private:
  std::string type_;
  Activation act_;
  float alpha_;
};

// Softmax over the last dimension, computed in fp32.
class Softmax final : public Layer {
 public:
  using Layer::Layer;
  std::string type() const override { return "softmax"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;
};

class Dropout final : public Layer {
 public:
  Dropout(std::string name, std::uint64_t salt, float rate)
      : Layer(std::move(name), salt), rate_(rate) {}
  std::string type() const override { return "dropout"; }
  float rate() const { return rate_; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

 private:
  float rate_;
};

// Flatten and reshape: the same elements under another per-sample shape.
class Reshape final : public Layer {
 public:
  Reshape(std::string name, std::uint64_t salt, std::string type, Shape target)
      : Layer(std::move(name), salt), type_(std::move(type)), target_(std::move(target)) {}
  std::string type() const override { return type_; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

 private:
  std::string type_;
  Shape target_;  // empty: flatten
};

// Element-wise sum of two inputs of the same shape (residual connections).
class Add final : public Layer {
 public:
  using Layer::Layer;
  std::string type() const override { return "add"; }
  std::size_t input_count() const override { return 2; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;
};

}  // namespace mixtrain
