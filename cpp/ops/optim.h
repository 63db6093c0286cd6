// Training kernels, per ISA: fused optimizer steps, clipping reductions, fused losses.
// Formulas in optim.cpp's header comment. Every step updates its arrays in place.
#pragma once
#include <cstdint>

#include "runtime/kernels.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class T> void sgd_step(T* p, const T* grad, T* buf, int64_t n, const SgdHyper& h);
template <class T> void adam_step(T* p, const T* grad, T* m, T* v, T* vmax, int64_t n, const AdamHyper& h);
template <class T> void rmsprop_step(T* p, const T* grad, T* sq, T* gavg, T* buf, int64_t n, const RmspropHyper& h);
template <class T> void norm_partials(const T* const* xs, const int64_t* ns, int64_t count, double p, double* partial);
template <class T> void scale_inplace(T* x, int64_t n, T s);
template <class T> void clamp_inplace(T* x, int64_t n, T lo, T hi);
template <class T>
void cross_entropy_forward(const T* x, const int64_t* target, int64_t N, int64_t C, int64_t ignore_index,
                           double smoothing, T* loss, double* lse);
template <class T>
void cross_entropy_backward(const T* x, const int64_t* target, const double* lse, const T* row_scale, int64_t N,
                            int64_t C, int64_t ignore_index, double smoothing, T* dx);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
