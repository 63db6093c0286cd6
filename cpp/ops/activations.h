// Activations, per ISA. Sizes: n elements (flat); PReLU and softmax see x as (outer, C|n, inner)
// with the channel/softmax axis in the middle and `inner` contiguous elements after it.
//   unary_forward:   y = f(x)
//   unary_backward:  dx = dy * f'(x)   (saved = y for tanh/sigmoid, x otherwise)
//   prelu:           y = x > 0 ? x : w[c] x;  dw[c] += sum over (outer, inner) of (x <= 0 ? x dy : 0)
//   softmax:         y = exp(x - max) / sum exp(x - max);   log: y = x - max - log(sum exp(x - max))
//   softmax_backward dx = y (dy - sum(dy y));               log: dx = dy - exp(y) sum(dy)
#pragma once
#include <cstdint>
#include "runtime/kernels.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class T> void unary_forward(Unary op, T param, const T* x, T* y, int64_t n);
template <class T> void unary_backward(Unary op, T param, const T* dy, const T* saved, T* dx, int64_t n);
template <class T> void prelu_forward(const T* x, const T* w, T* y, int64_t outer, int64_t c, int64_t inner);
// dw is overwritten (not accumulated) with the per-channel sums.
template <class T>
void prelu_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, int64_t outer, int64_t c, int64_t inner);
template <class T> void softmax_forward(bool log, const T* x, T* y, int64_t outer, int64_t n, int64_t inner);
template <class T>
void softmax_backward(bool log, const T* dy, const T* y, T* dx, int64_t outer, int64_t n, int64_t inner);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
