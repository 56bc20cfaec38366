#pragma once

#include "layers/layer.hpp"

namespace mixtrain {

class Dense final : public Layer {
 public:
  Dense(std::string name, std::uint64_t salt, std::int64_t units, bool bias)
      : Layer(std::move(name), salt), units_(units), bias_(bias) {}
  std::string type() const override { return "dense"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  std::vector<ParamDecl> params(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

 private:
  // Rows of the product: the batch times every dimension before the last.
  std::int64_t rows(std::int64_t batch) const { return batch * in_numel() / in_shape().back(); }
  std::int64_t units_;
  bool bias_;
};

}  // namespace mixtrain
