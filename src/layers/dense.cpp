// Dense (fully connected) over the last dimension: y = act(x W^T + b), W [units, in], b [units].
#include "layers/dense.hpp"

#include "mixtrain/error.hpp"

namespace mixtrain {

Shape Dense::output_shape(const std::vector<Shape>& in) const {
  const Shape& x = in[0];
  if (x.empty()) shape_error("needs at least one feature dimension, got a scalar per sample");
  if (units_ <= 0) config_error("units must be positive, got " + std::to_string(units_));
  Shape y = x;
  y.back() = units_;
  return y;
}

std::vector<ParamDecl> Dense::params(const std::vector<Shape>& in) const {
  const std::int64_t fan_in = in[0].back();
  std::vector<ParamDecl> p{{"weight", {units_, fan_in}, Init::GlorotUniform, fan_in, units_}};
  p[0].grad_in_compute_dtype = true;  // the dW GEMM's output
  if (bias_) p.push_back({"bias", {units_}, Init::Zeros, fan_in, units_});
  return p;
}

std::vector<BufferDecl> Dense::buffers(const std::vector<Shape>& in, std::int64_t max_batch) const {
  if (activation_ == Activation::Identity) return {};
  const std::int64_t per_sample = numel(in[0]) / in[0].back();
  return {{"pre_activation", {max_batch * per_sample, units_}, DType::F32, false, 0.0f}};
}

Buf Dense::scratch(const std::vector<Buf>& buffers, DType dtype) const {
  if (buffers.empty() || !buffers[0] || dtype_size(buffers[0].dtype) < dtype_size(dtype)) {
    throw Error("internal: dense layer '" + name() +
                "' has a fused activation and needs its pre_activation buffer for " +
                std::string(dtype_name(dtype)) + " values");
  }
  return Buf{buffers[0].ptr, dtype};
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
  g.epilogue = activation_;
  // GELU's derivative needs the pre-activation; ReLU's comes from the output (y > 0).
  if (activation_ == Activation::GELUTanh && a.training) {
    g.aux = scratch(a.buffers, a.output.dtype);
  }
  a.backend.gemm(g);
}

void Dense::backward(const BackwardArgs& a) const {
  const std::int64_t in = in_shape().back();
  const std::int64_t m = rows(a.batch);
  // The gradient of the pre-activation z: dy itself, or dy * act'(z) in the scratch buffer.
  // With an activation and a bias, the bias gradient (the column sums of dz) comes out of the
  // pass that computes dz; otherwise from the dW product's epilogue.
  CBuf dz = a.grad_output;
  const bool db_with_dz = bias_ && activation_ != Activation::Identity;
  if (activation_ != Activation::Identity) {
    const Buf s = scratch(a.buffers, a.grad_output.dtype);
    // ReLU: relu'(z) = (z > 0) = (y > 0), the output stands in for z (bit-identical derivative).
    // GELU: in place over the pre-activation the forward pass stored.
    const CBuf z = activation_ == Activation::ReLU ? a.output : CBuf(s);
    if (db_with_dz) {
      a.backend.activation_backward_bias_grad(activation_, 0.0f, z, a.output, a.grad_output, s,
                                              a.grad_params[1], m, units_);
    } else {
      a.backend.activation_backward(activation_, 0.0f, z, a.output, a.grad_output, s, m * units_,
                                    false);
    }
    dz = s;
  }
  GemmDesc dw;  // dW = dz^T x in the gradient's dtype from compute-dtype operands; db fused
  dw.trans_a = true;
  dw.m = units_;
  dw.n = in;
  dw.k = m;
  dw.a = dz;
  dw.lda = units_;
  dw.b = a.inputs[0];
  dw.ldb = in;
  dw.c = a.grad_params[0];
  dw.ldc = in;
  dw.allow_tf32 = a.allow_tf32;
  if (bias_ && !db_with_dz) {  // db = sum over rows of dz: the column sums of A
    dw.bias_grad = a.grad_params[1];
    dw.bias_grad_operand = GemmOperand::A;
  }
  a.backend.gemm(dw);
  if (a.grad_inputs[0]) {
    GemmDesc dx;  // dx = dz W
    dx.m = m;
    dx.n = in;
    dx.k = units_;
    dx.a = dz;
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
