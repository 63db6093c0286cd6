// Activation functions on whole vectors, shared by the activation kernels and the GEMM
// epilogue so both compute bit-identical values.
#pragma once
#include "gemm/gemm_types.h"
#include "simd/vmath.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class V>
inline typename V::R gelu_tanh_v(typename V::R x) {
  // 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3): no cancellation.
  using T = typename V::T;
  typename V::R x3 = V::mul(V::mul(x, x), x);
  typename V::R u2 = V::mul(V::set1(T(2 * 0.79788456080286535588)), V::fma(V::set1(T(0.044715)), x3, x));
  return V::mul(x, vm::sigmoid<V>(u2));
}

template <class V>
inline typename V::R act_v(Act a, typename V::R x) {
  using T = typename V::T;
  switch (a) {
    case Act::none: return x;
    case Act::relu: return V::select(V::gt(x, V::zero()), x, V::select(V::isnan(x), x, V::zero()));
    case Act::tanh: return vm::tanh(x);
    case Act::sigmoid: return vm::sigmoid<V>(x);
    case Act::silu: return V::mul(x, vm::sigmoid<V>(x));
    case Act::gelu: return V::mul(x, vm::normal_cdf(x));
    case Act::gelu_tanh: return gelu_tanh_v<V>(x);
  }
  (void)sizeof(T);
  return x;
}

}  // namespace SEQCORE_ISA
}  // namespace seqcore
