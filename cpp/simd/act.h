// Activation functions on whole vectors, shared by the activation kernels and the GEMM
// epilogue so both compute bit-identical values.
#pragma once
#include "gemm/gemm_types.h"
#include "simd/vmath.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class V>
inline typename V::R act_v(Act a, typename V::R x) {
  using T = typename V::T;
  switch (a) {
    case Act::none: return x;
    case Act::relu: return V::select(V::gt(x, V::zero()), x, V::select(V::isnan(x), x, V::zero()));
    case Act::tanh: return vm::tanh(x);
    case Act::sigmoid: return vm::sigmoid<V>(x);
    case Act::silu: return vm::mul_sigmoid(x, x);
    case Act::gelu: return vm::gelu(x);
    case Act::gelu_tanh: return vm::gelu_tanh(x);
  }
  (void)sizeof(T);
  return x;
}

}  // namespace SEQCORE_ISA
}  // namespace seqcore
