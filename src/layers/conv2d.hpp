// 2-D convolution over channels-last activations: [H, W, C] -> [P, Q, filters] per sample,
// weight [filters, kernel_h, kernel_w, C / groups], optional bias [filters].
#pragma once

#include "layers/layer.hpp"
#include "layers/spatial.hpp"

namespace mixtrain {

struct Conv2dConfig {
  std::int64_t filters = 0;
  Hw kernel;
  Hw stride{1, 1};
  PaddingAttr padding;
  Hw dilation{1, 1};
  std::int64_t groups = 1;
  bool bias = true;
};

class Conv2d final : public Layer {
 public:
  Conv2d(std::string name, std::uint64_t salt, Conv2dConfig config)
      : Layer(std::move(name), salt), c_(config) {}
  std::string type() const override { return "conv2d"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  std::vector<ParamDecl> params(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

 private:
  // The op descriptor for input shape `in` and `batch` samples (validates, naming the layer).
  ConvDesc desc(const Shape& in, std::int64_t batch) const;
  Conv2dConfig c_;
};

}  // namespace mixtrain
