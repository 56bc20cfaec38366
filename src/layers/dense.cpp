// Dense (fully connected) over the last dimension: y = x W^T + b, W [units, in], b [units].
#include "layers/dense.hpp"

namespace mixtrain {

Shape Dense::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in[0];
  if (x.empty()) shape_error("needs at least one feature dimension, got a scalar per sample");
  if (units_ <= 0) shape_error("units must be positive, got " + std::to_string(units_));
  Shape y = x;
  y.back() = units_;
  return y;
}

std::vector<ParamDecl> Dense::params(const std::vector<Shape>& in) const {
  const std::int64_t fan_in = in[0].back();
  std::vector<ParamDecl> p{{"weight", {units_, fan_in}, Init::GlorotUniform, fan_in, units_}};
  if (bias_) p.push_back({"bias", {units_}, Init::Zeros, fan_in, units_});
  return p;
}

void Dense::forward(const ForwardArgs& a) const {
  const std::int64_t in = in_shape().back();
  GemmDesc g;
  g.trans_b = true;
  g.m = rows(a.batch);
  g.n = units_;
  g.k = in;
  g.a = a.inputs[0];
  g.lda = in;
  g.b = a.params[0];
  g.ldb = in;
  g.c = a.output;
  g.ldc = units_;
  if (bias_) g.bias = a.params[1];
  g.allow_tf32 = a.allow_tf32;
  a.backend.gemm(g);
}

void Dense::backward(const BackwardArgs& a) const {
  const std::int64_t in = in_shape().back();
  const std::int64_t m = rows(a.batch);
  GemmDesc dw;  // dW = dy^T x, fp32 (grad_param_dtype) from compute-dtype operands
  dw.trans_a = true;
  dw.m = units_;
  dw.n = in;
  dw.k = m;
  dw.a = a.grad_output;
  dw.lda = units_;
  dw.b = a.inputs[0];
  dw.ldb = in;
  dw.c = Buf{a.grad_params[0], a.grad_param_dtype};
  dw.ldc = in;
  dw.allow_tf32 = a.allow_tf32;
  a.backend.gemm(dw);
  if (bias_) {
    a.backend.bias_grad(a.grad_output, Buf{a.grad_params[1], a.grad_param_dtype}, m, units_, false);
  }
  if (a.grad_inputs[0]) {
    GemmDesc dx;  // dx = dy W
    dx.m = m;
    dx.n = in;
    dx.k = units_;
    dx.a = a.grad_output;
    dx.lda = units_;
    dx.b = a.params[0];
    dx.ldb = in;
    dx.c = a.grad_inputs[0];
    dx.ldc = in;
    dx.beta = a.accumulate_inputs[0] ? 1.0f : 0.0f;
    dx.allow_tf32 = a.allow_tf32;
    a.backend.gemm(dx);
  }
}

}  // namespace mixtrain
