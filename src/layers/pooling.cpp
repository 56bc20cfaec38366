#include "layers/pooling.hpp"

namespace mixtrain {

PoolDesc Pool2d::desc(const Shape& in, std::int64_t batch) const {
  if (in.size() != 3) {
    shape_error("needs [height, width, channels] per sample (channels-last), got " + shape_str(in));
  }
  if (kernel_.h <= 0 || kernel_.w <= 0 || stride_.h <= 0 || stride_.w <= 0) {
    config_error("kernel " + hw_str(kernel_) + " and stride " + hw_str(stride_) +
                 " must be positive");
  }
  // Every window must hold an input pixel: padding at most half the window (PyTorch's rule).
  if (padding_.size.h < 0 || padding_.size.w < 0 || 2 * padding_.size.h > kernel_.h ||
      2 * padding_.size.w > kernel_.w) {
    config_error("padding " + hw_str(padding_.size) + " must be between 0 and half the kernel " +
                 hw_str(kernel_));
  }
  const Extent eh = spatial_extent(in[0], kernel_.h, stride_.h, padding_.same, padding_.size.h);
  const Extent ew = spatial_extent(in[1], kernel_.w, stride_.w, padding_.same, padding_.size.w);
  if (eh.out < 1 || ew.out < 1) {
    shape_error("kernel " + hw_str(kernel_) + " is larger than the padded input " +
                hw_str({eh.padded_in, ew.padded_in}) + " (input " + shape_str(in) + ")");
  }
  PoolDesc d;
  d.N = batch;
  d.H = in[0];
  d.W = in[1];
  d.C = in[2];
  d.R = kernel_.h;
  d.S = kernel_.w;
  d.stride_h = stride_.h;
  d.stride_w = stride_.w;
  d.pad_h = eh.pad_before;
  d.pad_w = ew.pad_before;
  d.P = eh.out;
  d.Q = ew.out;
  return d;
}

Shape Pool2d::output_shape(const std::vector<Shape>& in) const {
  const PoolDesc d = desc(in[0], 1);
  return {d.P, d.Q, d.C};
}

void Pool2d::forward(const ForwardArgs& a) const {
  const PoolDesc d = desc(in_shape(), a.batch);
  if (kind_ == Kind::Max) {
    a.backend.max_pool2d_forward(d, a.inputs[0], a.output);
  } else {
    a.backend.avg_pool2d_forward(d, a.inputs[0], a.output);
  }
}

void Pool2d::backward(const BackwardArgs& a) const {
  if (!a.grad_inputs[0]) return;
  const PoolDesc d = desc(in_shape(), a.batch);
  if (kind_ == Kind::Max) {
    a.backend.max_pool2d_backward(d, a.inputs[0], a.output, a.grad_output, a.grad_inputs[0],
                                  a.accumulate_inputs[0]);
  } else {
    a.backend.avg_pool2d_backward(d, a.grad_output, a.grad_inputs[0], a.accumulate_inputs[0]);
  }
}

Shape GlobalAvgPool::output_shape(const std::vector<Shape>& in) const {
  if (in[0].size() < 2) {
    shape_error(
        "needs [height, width, channels] (or at least [pixels, channels]) per sample, "
        "got " +
        shape_str(in[0]));
  }
  return {in[0].back()};
}

void GlobalAvgPool::forward(const ForwardArgs& a) const {
  const std::int64_t c = in_shape().back();
  a.backend.global_avg_pool_forward(a.inputs[0], a.output, a.batch, in_numel() / c, c);
}

void GlobalAvgPool::backward(const BackwardArgs& a) const {
  if (!a.grad_inputs[0]) return;
  const std::int64_t c = in_shape().back();
  a.backend.global_avg_pool_backward(a.grad_output, a.grad_inputs[0], a.batch, in_numel() / c, c,
                                     a.accumulate_inputs[0]);
}

}  // namespace mixtrain
