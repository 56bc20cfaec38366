// Conv2d: y = conv(x, W) + b with stride, padding ("same", "valid" or explicit), dilation and
// groups; the backend does the work (CPU: im2col + GEMM; CUDA: cuDNN).
#include "layers/conv2d.hpp"

namespace mixtrain {

ConvDesc Conv2d::desc(const Shape& in, std::int64_t batch) const {
  if (in.size() != 3) {
    shape_error("needs [height, width, channels] per sample (channels-last), got " + shape_str(in));
  }
  const std::int64_t channels = in[2];
  if (c_.filters <= 0) config_error("filters must be positive, got " + std::to_string(c_.filters));
  if (c_.kernel.h <= 0 || c_.kernel.w <= 0 || c_.stride.h <= 0 || c_.stride.w <= 0 ||
      c_.dilation.h <= 0 || c_.dilation.w <= 0) {
    config_error("kernel " + hw_str(c_.kernel) + ", stride " + hw_str(c_.stride) +
                 " and dilation " + hw_str(c_.dilation) + " must be positive");
  }
  if (c_.padding.size.h < 0 || c_.padding.size.w < 0) {
    config_error("padding " + hw_str(c_.padding.size) + " must not be negative");
  }
  if (c_.groups <= 0 || c_.filters % c_.groups != 0) {
    config_error("groups (" + std::to_string(c_.groups) +
                 ") must be positive and divide the filters (" + std::to_string(c_.filters) + ")");
  }
  if (channels % c_.groups != 0) {
    shape_error("groups (" + std::to_string(c_.groups) + ") must divide both the input channels (" +
                std::to_string(channels) + ", input " + shape_str(in) + ") and the filters (" +
                std::to_string(c_.filters) + ")");
  }
  const Hw window{(c_.kernel.h - 1) * c_.dilation.h + 1, (c_.kernel.w - 1) * c_.dilation.w + 1};
  const Extent eh =
      spatial_extent(in[0], window.h, c_.stride.h, c_.padding.same, c_.padding.size.h);
  const Extent ew =
      spatial_extent(in[1], window.w, c_.stride.w, c_.padding.same, c_.padding.size.w);
  if (eh.out < 1 || ew.out < 1) {
    shape_error("kernel " + hw_str(c_.kernel) +
                (c_.dilation.h > 1 || c_.dilation.w > 1 ? " (dilated to " + hw_str(window) + ")"
                                                        : std::string()) +
                " is larger than the padded input " + hw_str({eh.padded_in, ew.padded_in}) +
                " (input " + shape_str(in) + ", padding " + hw_str(c_.padding.size) + ")");
  }
  ConvDesc d;
  d.N = batch;
  d.H = in[0];
  d.W = in[1];
  d.C = channels;
  d.K = c_.filters;
  d.R = c_.kernel.h;
  d.S = c_.kernel.w;
  d.stride_h = c_.stride.h;
  d.stride_w = c_.stride.w;
  d.pad_h = eh.pad_before;
  d.pad_w = ew.pad_before;
  d.dilation_h = c_.dilation.h;
  d.dilation_w = c_.dilation.w;
  d.groups = c_.groups;
  d.P = eh.out;
  d.Q = ew.out;
  return d;
}

Shape Conv2d::output_shape(const std::vector<Shape>& in) const {
  const ConvDesc d = desc(in[0], 1);
  return {d.P, d.Q, d.K};
}

std::vector<ParamDecl> Conv2d::params(const std::vector<Shape>& in) const {
  const std::int64_t per_group = in[0][2] / c_.groups;
  const Shape weight{c_.filters, c_.kernel.h, c_.kernel.w, per_group};
  // Checked first (numel throws on overflow): the fan products below are then at most this.
  if (numel(weight) > kMaxTensorElements) {
    shape_error("weight " + shape_str(weight) + " has more than 2^40 elements");
  }
  const std::int64_t taps = c_.kernel.h * c_.kernel.w;
  const std::int64_t fan_in = taps * per_group;
  const std::int64_t fan_out = taps * c_.filters / c_.groups;
  std::vector<ParamDecl> p{{"weight", weight, Init::HeUniform, fan_in, fan_out}};
  p[0].grad_in_compute_dtype = true;  // cuDNN's backward-filter output
  if (c_.bias) p.push_back({"bias", {c_.filters}, Init::Zeros, fan_in, fan_out});
  return p;
}

void Conv2d::forward(const ForwardArgs& a) const {
  ConvDesc d = desc(in_shape(), a.batch);
  d.allow_tf32 = a.allow_tf32;
  a.backend.conv2d_forward(d, a.inputs[0], a.params[0], c_.bias ? a.params[1] : CBuf(), a.output);
}

void Conv2d::backward(const BackwardArgs& a) const {
  ConvDesc d = desc(in_shape(), a.batch);
  d.allow_tf32 = a.allow_tf32;
  a.backend.conv2d_backward_filter(d, a.inputs[0], a.grad_output, a.grad_params[0],
                                   c_.bias ? a.grad_params[1] : Buf{});
  if (a.grad_inputs[0]) {
    a.backend.conv2d_backward_data(d, a.grad_output, a.params[0], a.grad_inputs[0],
                                   a.accumulate_inputs[0]);
  }
}

}  // namespace mixtrain
