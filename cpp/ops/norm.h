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

// BatchNorm over channel axis 1 of x (N, C, L) (L = 1 for (N, C)), per ISA. Letters: N batch,
// C channels, L length; every channel has n = N L values; x, y, dy, dx (N, C, L) contiguous;
// w, b, mean, rstd, running_mean, running_var, dw, db (C).
//   training: mu = mean(x), var = mean((x - mu)^2) (biased), rstd = 1/sqrt(var + eps);
//             running_mean = (1-m) running_mean + m mu, running_var = (1-m) running_var +
//             m n/(n-1) var (unbiased) when the running arrays are given (in place);
//   eval:     mu = running_mean, rstd = 1/sqrt(running_var + eps) (running arrays required);
//   forward:  y = (x - mu) rstd w + b; mean/rstd are saved for backward.
//   backward: xhat = (x - mu) rstd, db = sum dy, dw = sum dy xhat,
//             training: dx = w rstd / n (n dy - sum dy - xhat sum dy xhat), eval: dx = w rstd dy.
// The statistics come from one read of x: fixed tiles (rows x columns of the (N, C L) matrix)
// each give (count, mean, M2) per channel from a two-pass over the tile while it is in cache,
// merged in tile order (Chan et al.) in double, so the bits do not depend on the thread count;
// backward's sums likewise. w, b may be null (no affine); dx, dw, db may be null (not needed);
// dw, db are overwritten. work: batch_norm_work(...) doubles.
namespace seqcore {
namespace SEQCORE_ISA {

template <class T> int64_t batch_norm_work(int64_t N, int64_t C, int64_t L);
template <class T>
void batch_norm_forward(const T* x, const T* w, const T* b, T* running_mean, T* running_var, int64_t N, int64_t C,
                        int64_t L, bool training, double momentum, double eps, T* y, T* mean, T* rstd, double* work);
template <class T>
void batch_norm_backward(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t N, int64_t C,
                         int64_t L, bool training, T* dx, T* dw, T* db, double* work);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
