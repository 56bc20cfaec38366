// Pooling over channels-last activations: max and average windows ([H, W, C] -> [P, Q, C]) and
// the global average ([H, W, C] -> [C]).
#pragma once

#include "layers/layer.hpp"
#include "layers/spatial.hpp"

namespace mixtrain {

class Pool2d final : public Layer {
 public:
  enum class Kind { Max, Average };
  // stride {0, 0}: the kernel (non-overlapping windows).
  Pool2d(std::string name, std::uint64_t salt, Kind kind, Hw kernel, Hw stride, PaddingAttr padding)
      : Layer(std::move(name), salt),
        kind_(kind),
        kernel_(kernel),
        stride_(stride.h == 0 && stride.w == 0 ? kernel : stride),
        padding_(padding) {}
  std::string type() const override { return kind_ == Kind::Max ? "max_pool2d" : "avg_pool2d"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;

 private:
  PoolDesc desc(const Shape& in, std::int64_t batch) const;
  Kind kind_;
  Hw kernel_;
  Hw stride_;
  PaddingAttr padding_;
};

// The mean over every dimension but the last: [H, W, C] -> [C].
class GlobalAvgPool final : public Layer {
 public:
  using Layer::Layer;
  std::string type() const override { return "global_avg_pool"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;
};

}  // namespace mixtrain
