// Embedding and dropout kernels (compiled once per ISA). Formulas: layers.h.
#include "ops/layers.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "simd/dropout.h"
#include "simd/vec.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

inline int threads_for_bytes(double bytes) {
  if (omp_in_parallel()) return 1;
  return int(std::max<double>(1, std::min<double>(omp_get_max_threads(), bytes / (1 << 20))));
}

constexpr int64_t kDropBlock = int64_t(1) << 20;  // elements per dropout stream key

}  // namespace

template <class T> void embedding_forward(const int64_t* ids, int64_t N, const T* w, int64_t E, T* y) {
  const int nt = threads_for_bytes(double(N) * double(E) * sizeof(T));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < N; ++t) std::memcpy(y + t * E, w + ids[t] * E, size_t(E) * sizeof(T));
}

template <class T>
void embedding_backward(const int64_t* ids, int64_t N, const T* dy, int64_t E, int64_t V, int64_t padding_idx, T* dw) {
  using Vt = Vec<T>;
  constexpr int W = Vt::W;
  constexpr int64_t CB = 64;  // columns per work item
  const int64_t nblk = (E + CB - 1) / CB;
  const int nt = std::max(1, std::min<int>(threads_for_bytes(double(N + V) * double(E) * sizeof(T)), int(nblk)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t c0 = blk * CB, c1 = std::min(E, c0 + CB);
    for (int64_t v = 0; v < V; ++v) std::memset(dw + v * E + c0, 0, size_t(c1 - c0) * sizeof(T));
    for (int64_t t = 0; t < N; ++t) {
      const int64_t v = ids[t];
      if (v == padding_idx) continue;
      T* d = dw + v * E;
      const T* g = dy + t * E;
      for (int64_t c = c0; c < c1; c += W) {
        const int cnt = int(std::min<int64_t>(W, c1 - c));
        Vt::store_n(d + c, Vt::add(Vt::load_n(d + c, cnt), Vt::load_n(g + c, cnt)), cnt);
      }
    }
  }
}

template <class T> void dropout_apply(const T* x, int64_t n, double p, uint64_t seed, T* y) {
  using Vt = Vec<T>;
  constexpr int W = Vt::W;
  const Dropout d = make_dropout(p, seed);
  const int64_t nblk = (n + kDropBlock - 1) / kDropBlock;
  const int nt = std::max(1, std::min<int>(threads_for_bytes(double(n) * 2 * sizeof(T)), int(nblk)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    const int64_t i0 = blk * kDropBlock, i1 = std::min(n, i0 + kDropBlock);
    const uint32_t key = row_key(seed, 0, 0, blk);
    for (int64_t i = i0; i < i1; i += W) {
      const int cnt = int(std::min<int64_t>(W, i1 - i));
      auto v = Vt::load_n(x + i, cnt);
      if (d.on) v = Vt::mul(v, dropout_mult<Vt>(d, key, i - i0));
      Vt::store_n(y + i, v, cnt);
    }
  }
}

#define SEQCORE_INSTANTIATE(T)                                                                          \
  template void embedding_forward<T>(const int64_t*, int64_t, const T*, int64_t, T*);                   \
  template void embedding_backward<T>(const int64_t*, int64_t, const T*, int64_t, int64_t, int64_t, T*); \
  template void dropout_apply<T>(const T*, int64_t, double, uint64_t, T*);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
