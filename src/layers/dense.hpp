#pragma once

#include "layers/layer.hpp"

namespace mixtrain {

// y = act(x W^T + b) over the last dimension. `activation` is Identity for a "dense" spec layer;
// the graph's fusion pass (graph/fuse.hpp) builds dense layers with ReLU or tanh-GELU fused in,
// which run as one GEMM with the bias and the activation in its epilogue.
class Dense final : public Layer {
 public:
  Dense(std::string name, std::uint64_t salt, std::int64_t units, bool bias,
        Activation activation = Activation::Identity)
      : Layer(std::move(name), salt), units_(units), bias_(bias), activation_(activation) {}
  std::string type() const override { return "dense"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  std::vector<ParamDecl> params(const std::vector<Shape>& in) const override;
  // With a fused activation: one scratch of [max_batch * rows, units] values of the compute dtype
  // (declared F32, the widest training dtype; the float64 tests pass an F64 one). The forward
  // pass of a GELU stores its pre-activation there; the backward pass writes the gradient of the
  // pre-activation there.
  std::vector<BufferDecl> buffers(const std::vector<Shape>& in,
                                  std::int64_t max_batch) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

  std::int64_t units() const { return units_; }
  bool has_bias() const { return bias_; }
  Activation activation() const { return activation_; }
  // Whether the fusion pass may fold this activation into a dense layer.
  static bool fusable(Activation act) {
    return act == Activation::ReLU || act == Activation::GELUTanh;
  }
  // The scratch buffer viewed as `dtype` values; throws when the layer was given none that fits.
  Buf scratch(const std::vector<Buf>& buffers, DType dtype) const;

 private:
  // Rows of the product: the batch times every dimension before the last.
  std::int64_t rows(std::int64_t batch) const { return batch * in_numel() / in_shape().back(); }
  std::int64_t units_;
  bool bias_;
  Activation activation_;
};

}  // namespace mixtrain
