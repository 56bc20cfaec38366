// A layer: shape rule, parameters, forward and backward, written once against the Backend op
// interface. Shapes here are per sample (no batch dimension); the batch of a call is `batch`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mixtrain/shape.hpp"
#include "ops/backend.hpp"

namespace mixtrain {

enum class Init : std::uint8_t {
  Zeros,
  Ones,
  GlorotUniform,  // U(-a, a), a = sqrt(6 / (fan_in + fan_out))
  HeUniform,      // U(-a, a), a = sqrt(6 / fan_in)
};

// The most elements one tensor of a model may hold (2^40: 4 TiB of fp32), for the whole batch:
// compile() rejects larger inputs, activations, parameters and buffers, so that no size computed
// from a model (in bytes, times the batch) can overflow.
inline constexpr std::int64_t kMaxTensorElements = std::int64_t{1} << 40;

struct ParamDecl {
  std::string name;  // "weight", "bias"
  Shape shape;
  Init init = Init::Zeros;
  std::int64_t fan_in = 1;
  std::int64_t fan_out = 1;
  // The layer reads the fp32 master copy even in mixed precision, not the FP16/BF16 working copy
  // (batch-norm's gamma and beta: fp32 parameters with low-precision activations).
  bool keep_fp32 = false;
  // The gradient is a GEMM or convolution product (weight matrices, filters): in mixed precision
  // it is stored in the compute dtype, as that product comes out (PyTorch's autocast computes it
  // so, then widens it into an fp32 .grad). Otherwise it is fp32 (biases, normalisation parameters:
  // sums the layer keeps in fp32).
  bool grad_in_compute_dtype = false;
};

// Memory a layer keeps besides its parameters. Persistent buffers are model state that is not
// trained by gradients (batch-norm running statistics): initialised once and saved with the
// weights. The others are per-step scratch shared by forward and backward (batch statistics),
// sized for the largest batch.
struct BufferDecl {
  std::string name;
  Shape shape;
  DType dtype = DType::F32;
  bool persistent = false;
  float init = 0.0f;  // initial value of a persistent buffer
};

struct ForwardArgs {
  Backend& backend;
  const StepControl* control;
  bool training;
  std::int64_t batch;
  std::vector<CBuf> inputs;  // [batch, input_shapes[i]...]
  Buf output;                // [batch, output_shape...]
  std::vector<CBuf> params;  // compute-dtype copies, in declaration order
  bool allow_tf32;
  std::vector<Buf> buffers = {};  // in declaration order
};

struct BackwardArgs {
  Backend& backend;
  const StepControl* control;
  std::int64_t batch;
  std::vector<CBuf> inputs;
  CBuf output;
  CBuf grad_output;
  std::vector<Buf> grad_inputs;         // null where no gradient is needed
  std::vector<bool> accumulate_inputs;  // add into grad_inputs[i] instead of overwriting
  std::vector<CBuf> params;
  // One per parameter, overwritten: F32, or the compute dtype for a parameter declared
  // grad_in_compute_dtype in mixed precision; F64 when the float64 gradient tests run a layer on
  // the CPU backend.
  std::vector<Buf> grad_params;
  bool allow_tf32;
  std::vector<Buf> buffers = {};
};

// After the gradients were checked: control->found_inf tells whether this step will be skipped.
struct AfterCheckArgs {
  Backend& backend;
  const StepControl* control;
  std::int64_t batch;
  std::vector<Buf> buffers;
};

class Layer {
 public:
  Layer(std::string name, std::uint64_t salt) : name_(std::move(name)), salt_(salt) {}
  virtual ~Layer() = default;
  Layer(const Layer&) = delete;
  Layer& operator=(const Layer&) = delete;

  const std::string& name() const { return name_; }
  // Distinct per layer; keys the layer's random numbers.
  std::uint64_t salt() const { return salt_; }

  virtual std::string type() const = 0;
  virtual std::size_t input_count() const { return 1; }
  // Checks the inputs' per-sample shapes; throws ShapeError naming this layer.
  virtual Shape output_shape(const std::vector<Shape>& inputs) const = 0;
  virtual std::vector<ParamDecl> params(const std::vector<Shape>& /*inputs*/) const { return {}; }
  virtual std::vector<BufferDecl> buffers(const std::vector<Shape>& /*inputs*/,
                                          std::int64_t /*max_batch*/) const {
    return {};
  }
  virtual void forward(const ForwardArgs& args) const = 0;
  virtual void backward(const BackwardArgs& args) const = 0;
  // Runs in training after the gradient check and before the optimizer, for state that must not
  // change on a skipped step (batch-norm running statistics). Only called when has_after_check().
  virtual bool has_after_check() const { return false; }
  virtual void after_check(const AfterCheckArgs& /*args*/) const {}

  // Records the inferred per-sample shapes (called once by compile()).
  void bind_shapes(std::vector<Shape> inputs, Shape output) {
    in_shapes_ = std::move(inputs);
    out_shape_ = std::move(output);
  }
  const Shape& in_shape(std::size_t i = 0) const { return in_shapes_[i]; }
  const Shape& out_shape() const { return out_shape_; }

 protected:
  [[noreturn]] void shape_error(const std::string& what) const;
  // A layer option out of range (units, rate, kernel...): ConfigError naming this layer.
  [[noreturn]] void config_error(const std::string& what) const;
  // Elements of one sample's input i / output.
  std::int64_t in_numel(std::size_t i = 0) const { return numel(in_shapes_[i]); }
  std::int64_t out_numel() const { return numel(out_shape_); }

 private:
  std::string name_;
  std::uint64_t salt_;
  std::vector<Shape> in_shapes_;
  Shape out_shape_;
};

// Builds a layer from its spec; throws ConfigError naming the layer on a bad type or attribute.
std::unique_ptr<Layer> make_layer(const std::string& name, const std::string& type,
                                  const nlohmann::json& attrs, std::uint64_t salt);

}  // namespace mixtrain
