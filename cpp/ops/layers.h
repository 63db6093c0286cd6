// Embedding lookup and dropout, per ISA. Sizes: N tokens (ids flattened), V vocabulary rows,
// E embedding width; n elements for dropout.
//   embedding:  y[t, :] = w[ids[t], :]            (ids already checked to lie in [0, V))
//   backward:   dw[v, :] = sum_{t: ids[t] = v} dy[t, :] in ascending t (written, not added),
//               row padding_idx (>= 0) left at 0; threads split the E columns, so the sum order
//               never depends on the thread count.
//   dropout:    y[i] = x[i] keep(i) / (1 - p), keep from the counter-based stream of
//               simd/dropout.h keyed by (seed, i): calling it again on dy with the same seed is
//               the backward pass (dx = dy keep / (1 - p)).
#pragma once
#include <cstdint>

namespace seqcore {
namespace SEQCORE_ISA {

template <class T> void embedding_forward(const int64_t* ids, int64_t N, const T* w, int64_t E, T* y);
template <class T>
void embedding_backward(const int64_t* ids, int64_t N, const T* dy, int64_t E, int64_t V, int64_t padding_idx, T* dw);
template <class T> void dropout_apply(const T* x, int64_t n, double p, uint64_t seed, T* y);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
