// LayerNorm over the last F elements of each of M rows, per ISA.
//   forward:  mu = mean(x), rstd = 1/sqrt(mean((x - mu)^2) + eps), y = (x - mu) rstd w + b
//   backward: xhat = (x - mu) rstd, g = dy w, dx = rstd (g - mean(g) - xhat mean(g xhat)),
//             dw = sum_rows dy xhat, db = sum_rows dy
// dw/db are reduced in fixed chunks of rows summed in chunk order (same bits for any thread
// count). w, b may be null (no affine); dw, db may be null (not needed). work: see size fn.
#pragma once
#include <cstdint>

namespace seqcore {
namespace SEQCORE_ISA {

template <class T>
void layer_norm_forward(const T* x, const T* w, const T* b, int64_t M, int64_t F, double eps, T* y, T* mean, T* rstd);
template <class T> int64_t layer_norm_backward_work(int64_t M, int64_t F);
template <class T>
void layer_norm_backward(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t M, int64_t F,
                         T* dx, T* dw, T* db, T* work);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
