// LayerNorm kernels (compiled once per ISA). Formulas: norm.h. One pass to read each row for
// the statistics (rows stay in cache), one to write; backward fuses dx with the partial
// weight/bias gradient sums of its chunk of rows.
#include "ops/norm.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "simd/vec.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

constexpr int64_t kRowsPerChunk = 32;  // rows per partial sum of dw/db

inline int pool_threads(int64_t work) {
  if (omp_in_parallel()) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), work / 16384)));
}

template <class T> inline T row_sum(const T* x, int64_t F) {
  using V = Vec<T>;
  constexpr int W = V::W;
  auto s0 = V::zero(), s1 = V::zero();
  int64_t j = 0;
  for (; j + 2 * W <= F; j += 2 * W) { s0 = V::add(s0, V::load(x + j)); s1 = V::add(s1, V::load(x + j + W)); }
  for (; j < F; j += W) s0 = V::add(s0, V::load_n(x + j, int(std::min<int64_t>(W, F - j))));
  return V::reduce_add(V::add(s0, s1));
}

}  // namespace

template <class T>
void layer_norm_forward(const T* x, const T* w, const T* b, int64_t M, int64_t F, double eps, T* y, T* mean, T* rstd) {
  using V = Vec<T>;
  constexpr int W = V::W;
#pragma omp parallel for num_threads(pool_threads(M * F)) schedule(static)
  for (int64_t i = 0; i < M; ++i) {
    const T* xr = x + i * F;
    T* yr = y + i * F;
    const T mu = row_sum(xr, F) / T(F);
    const auto vmu = V::set1(mu);
    auto q0 = V::zero(), q1 = V::zero();
    int64_t j = 0;
    for (; j + 2 * W <= F; j += 2 * W) {
      auto d0 = V::sub(V::load(xr + j), vmu), d1 = V::sub(V::load(xr + j + W), vmu);
      q0 = V::fma(d0, d0, q0);
      q1 = V::fma(d1, d1, q1);
    }
    if (j < F) {  // tail: lanes past F load as 0 from both x and the mu vector
      alignas(64) T muv[V::W];
      for (int l = 0; l < W; ++l) muv[l] = mu;
      for (; j < F; j += W) {
        const int cnt = int(std::min<int64_t>(W, F - j));
        auto d = V::sub(V::load_n(xr + j, cnt), V::load_n(muv, cnt));
        q0 = V::fma(d, d, q0);
      }
    }
    const T var = V::reduce_add(V::add(q0, q1)) / T(F);
    const T rs = T(1) / std::sqrt(var + T(eps));
    mean[i] = mu;
    rstd[i] = rs;
    const auto vrs = V::set1(rs);
    for (j = 0; j < F; j += W) {
      const int cnt = int(std::min<int64_t>(W, F - j));
      auto xh = V::mul(V::sub(V::load_n(xr + j, cnt), vmu), vrs);
      if (w) xh = V::mul(xh, V::load_n(w + j, cnt));
      if (b) xh = V::add(xh, V::load_n(b + j, cnt));
      V::store_n(yr + j, xh, cnt);
    }
  }
}

template <class T> int64_t layer_norm_backward_work(int64_t M, int64_t F) {
  const int64_t nch = (M + kRowsPerChunk - 1) / kRowsPerChunk;
  return 2 * nch * F;
}

template <class T>
void layer_norm_backward(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t M, int64_t F,
                         T* dx, T* dw, T* db, T* work) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t nch = (M + kRowsPerChunk - 1) / kRowsPerChunk;
  const bool partial = dw || db;
  T* pdw = work;             // (nch, F)
  T* pdb = work + nch * F;   // (nch, F)
#pragma omp parallel for num_threads(pool_threads(M * F)) schedule(static)
  for (int64_t ch = 0; ch < nch; ++ch) {
    T* cdw = pdw + ch * F;
    T* cdb = pdb + ch * F;
    if (partial) {
      std::memset(cdw, 0, size_t(F) * sizeof(T));
      std::memset(cdb, 0, size_t(F) * sizeof(T));
    }
    const int64_t r1 = std::min(M, (ch + 1) * kRowsPerChunk);
    for (int64_t i = ch * kRowsPerChunk; i < r1; ++i) {
      const T* g = dy + i * F;
      const T* xr = x + i * F;
      T* d = dx ? dx + i * F : nullptr;
      const auto vmu = V::set1(mean[i]), vrs = V::set1(rstd[i]);
      // sums of g = dy w and g xhat over the row
      auto s_g = V::zero(), s_gx = V::zero();
      for (int64_t j = 0; j < F; j += W) {
        const int cnt = int(std::min<int64_t>(W, F - j));
        auto gy = V::load_n(g + j, cnt);
        auto xh = V::mul(V::sub(V::load_n(xr + j, cnt), vmu), vrs);
        if (partial) {
          V::store_n(cdw + j, V::fma(gy, xh, V::load_n(cdw + j, cnt)), cnt);
          V::store_n(cdb + j, V::add(gy, V::load_n(cdb + j, cnt)), cnt);
        }
        auto gw = w ? V::mul(gy, V::load_n(w + j, cnt)) : gy;
        s_g = V::add(s_g, gw);
        s_gx = V::fma(gw, xh, s_gx);
      }
      if (!d) continue;
      const T inv_f = T(1) / T(F);
      const auto a = V::set1(V::reduce_add(s_g) * inv_f), c = V::set1(V::reduce_add(s_gx) * inv_f);
      for (int64_t j = 0; j < F; j += W) {
        const int cnt = int(std::min<int64_t>(W, F - j));
        auto gy = V::load_n(g + j, cnt);
        auto gw = w ? V::mul(gy, V::load_n(w + j, cnt)) : gy;
        auto xh = V::mul(V::sub(V::load_n(xr + j, cnt), vmu), vrs);
        V::store_n(d + j, V::mul(vrs, V::sub(V::sub(gw, a), V::mul(xh, c))), cnt);
      }
    }
  }
  if (!partial) return;
  // Fixed-order combination of the chunk partials (columns in parallel).
#pragma omp parallel for num_threads(pool_threads(nch * F)) schedule(static)
  for (int64_t j0 = 0; j0 < F; j0 += 256) {
    const int64_t j1 = std::min(F, j0 + 256);
    for (int64_t j = j0; j < j1; j += W) {
      const int cnt = int(std::min<int64_t>(W, j1 - j));
      auto sw = V::zero(), sb = V::zero();
      for (int64_t ch = 0; ch < nch; ++ch) {
        sw = V::add(sw, V::load_n(pdw + ch * F + j, cnt));
        sb = V::add(sb, V::load_n(pdb + ch * F + j, cnt));
      }
      if (dw) V::store_n(dw + j, sw, cnt);
      if (db) V::store_n(db + j, sb, cnt);
    }
  }
}

#define SEQCORE_INSTANTIATE(T)                                                                                  \
  template void layer_norm_forward<T>(const T*, const T*, const T*, int64_t, int64_t, double, T*, T*, T*);     \
  template int64_t layer_norm_backward_work<T>(int64_t, int64_t);                                               \
  template void layer_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, T*, \
                                       T*, T*, T*);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
