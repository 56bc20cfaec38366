// The rules of GemmDesc's fused epilogues (ops/backend.hpp), checked alike by every backend.
#include <string>

#include "mixtrain/error.hpp"
#include "ops/backend.hpp"

namespace mixtrain {

void check_gemm_epilogue(const GemmDesc& d) {
  const auto fail = [](const std::string& what) {
    throw Error("internal: gemm epilogue: " + what);
  };
  switch (d.epilogue) {
    case Activation::Identity:
    case Activation::ReLU:
    case Activation::GELUTanh:
      break;
    default:
      fail("only identity, relu and tanh-gelu can be fused into a gemm");
  }
  if (d.epilogue != Activation::Identity && (d.batch != 1 || d.beta != 0.0f)) {
    fail("an activation needs batch == 1 and beta == 0");
  }
  if (d.aux) {
    if (d.epilogue == Activation::Identity) fail("aux (the pre-activation) needs an activation");
    if (d.aux.dtype != d.c.dtype) {
      fail("aux must have C's dtype (" + std::string(dtype_name(d.c.dtype)) + "), got " +
           std::string(dtype_name(d.aux.dtype)));
    }
  }
  if (d.bias_grad) {
    if (d.batch != 1) fail("bias_grad needs batch == 1");
    if (d.bias_grad.dtype != DType::F32 && d.bias_grad.dtype != DType::F64) {
      fail("bias_grad is f32 (or f64), not " + std::string(dtype_name(d.bias_grad.dtype)));
    }
    if (d.bias_grad_operand == GemmOperand::A && !(d.trans_a && d.lda == d.m)) {
      fail("bias_grad of A needs A stored as a dense [k, m] matrix (trans_a, lda == m)");
    }
    if (d.bias_grad_operand == GemmOperand::B && !(!d.trans_b && d.ldb == d.n)) {
      fail("bias_grad of B needs B stored as a dense [k, n] matrix (!trans_b, ldb == n)");
    }
  }
}

}  // namespace mixtrain
