// Batch normalisation over the last dimension (the channels of a channels-last image, the
// features of a dense output), with statistics over every other dimension and the batch.
#pragma once

#include "layers/layer.hpp"

namespace mixtrain {

class BatchNorm final : public Layer {
 public:
  // relu: a ReLU fused into the same passes (graph::fuse() merges a batch_norm with the relu
  // that alone reads it; the spec never says it).
  BatchNorm(std::string name, std::uint64_t salt, float momentum, float epsilon, bool relu = false)
      : Layer(std::move(name), salt), momentum_(momentum), epsilon_(epsilon), relu_(relu) {}
  std::string type() const override { return "batch_norm"; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  // gamma [C] (ones) and beta [C] (zeros), read in fp32 in every precision (keep_fp32).
  std::vector<ParamDecl> params(const std::vector<Shape>& in) const override;
  // running_mean [C] (0) and running_var [C] (1): persistent, saved with the weights;
  // batch_mean and batch_invstd [C]: this step's statistics, written by forward, read by
  // backward and by after_check.
  std::vector<BufferDecl> buffers(const std::vector<Shape>& in,
                                  std::int64_t max_batch) const override;
  // Training: batch statistics; inference: the running statistics.
  void forward(const ForwardArgs& a) const override;
  void backward(const BackwardArgs& a) const override;
  // Folds this step's statistics into the running ones, unless the step is skipped (the backend
  // op reads control->found_inf).
  bool has_after_check() const override { return true; }
  float momentum() const { return momentum_; }
  float epsilon() const { return epsilon_; }
  bool fused_relu() const { return relu_; }
  void after_check(const AfterCheckArgs& a) const override;

 private:
  std::int64_t channels() const { return in_shape().back(); }
  std::int64_t rows(std::int64_t batch) const { return batch * in_numel() / channels(); }
  float momentum_;
  float epsilon_;
  bool relu_;
};

}  // namespace mixtrain
