// Batch-norm (PyTorch's conventions): y = (x - mean) / sqrt(var + eps) * gamma + beta with the
// batch's mean and biased variance in training; running = (1 - momentum) * running + momentum *
// batch (unbiased variance), only on steps that are not skipped; inference uses the running
// statistics.
#include "layers/batch_norm.hpp"

#include <cmath>

namespace mixtrain {

namespace {
enum Buffer : std::size_t { kRunningMean, kRunningVar, kBatchMean, kBatchInvstd };
}

Shape BatchNorm::output_shape(const std::vector<Shape>& in) const {
  if (in[0].empty()) shape_error("needs at least one (channel) dimension per sample");
  if (!(momentum_ >= 0.0f && momentum_ <= 1.0f)) {
    config_error("momentum must be in [0, 1], got " + std::to_string(momentum_));
  }
  if (!(epsilon_ > 0.0f && std::isfinite(epsilon_))) {
    config_error("epsilon must be positive, got " + std::to_string(epsilon_));
  }
  return in[0];
}

std::vector<ParamDecl> BatchNorm::params(const std::vector<Shape>& in) const {
  const std::int64_t c = in[0].back();
  ParamDecl gamma{"gamma", {c}, Init::Ones, c, c};
  ParamDecl beta{"beta", {c}, Init::Zeros, c, c};
  gamma.keep_fp32 = beta.keep_fp32 = true;
  return {gamma, beta};
}

std::vector<BufferDecl> BatchNorm::buffers(const std::vector<Shape>& in,
                                           std::int64_t /*max_batch*/) const {
  const Shape c{in[0].back()};
  return {{"running_mean", c, DType::F32, true, 0.0f},
          {"running_var", c, DType::F32, true, 1.0f},
          {"batch_mean", c, DType::F32, false, 0.0f},
          {"batch_invstd", c, DType::F32, false, 0.0f}};
}

void BatchNorm::forward(const ForwardArgs& a) const {
  if (a.training) {
    a.backend.batch_norm_forward_training(a.inputs[0], a.params[0], a.params[1], a.output,
                                          a.buffers[kBatchMean], a.buffers[kBatchInvstd],
                                          rows(a.batch), channels(), epsilon_, relu_);
  } else {
    a.backend.batch_norm_forward_inference(a.inputs[0], a.params[0], a.params[1],
                                           a.buffers[kRunningMean], a.buffers[kRunningVar],
                                           a.output, rows(a.batch), channels(), epsilon_, relu_);
  }
}

void BatchNorm::backward(const BackwardArgs& a) const {
  a.backend.batch_norm_backward(a.inputs[0], a.grad_output, a.params[0], a.buffers[kBatchMean],
                                a.buffers[kBatchInvstd], a.grad_inputs[0], a.grad_params[0],
                                a.grad_params[1], rows(a.batch), channels(), a.accumulate_inputs[0],
                                relu_ ? a.output : CBuf());
}

void BatchNorm::after_check(const AfterCheckArgs& a) const {
  a.backend.batch_norm_update_running(a.buffers[kBatchMean], a.buffers[kBatchInvstd],
                                      a.buffers[kRunningMean], a.buffers[kRunningVar], channels(),
                                      momentum_, rows(a.batch), epsilon_, a.control);
}

}  // namespace mixtrain
