// LayerNorm and BatchNorm kernels (compiled once per ISA). Formulas: norm.h. LayerNorm: one
// pass to read each row for the statistics (rows stay in cache), one to write; backward fuses
// dx with the partial weight/bias gradient sums of its chunk of rows. BatchNorm: one read of
// x for the statistics (fixed tiles, each re-read from cache), one pass to write y; backward:
// one read of dy and x for the sums, one pass to write dx.
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

// Rows ahead whose lines are prefetched while a row is processed. A row is read in a burst
// and then worked on in cache, so the hardware prefetchers (which also restart at every 4 KiB
// page, and a 1024-float row is one page) leave the memory idle between bursts: on one
// thread LayerNorm ran at ~55% of copy bandwidth without this.
constexpr int64_t kAhead = 2;
// Outputs of at least kStreamBytes (vec.h; y in forward, dx in backward) are written with
// non-temporal stores. Measured on one thread at (8192, 1024) float32, forward + backward:
// 12 ms with normal stores, 8.2 ms streaming (NumPy's x*2 -> y plus x+dy -> dx, the same five
// passes over the same arrays: 11.8 ms).

// The running sum of a row, in one fixed order: whole vector pairs (j, j + W) into two
// chains, the vectors past the last whole pair into the first; total() adds the chains.
// row_sum and the LayerNorm forward's fused loop (which feeds a row in while it writes the
// previous one) both go through it, so a row's sum has the same bits either way.
template <class T> struct RowSum {
  using V = Vec<T>;
  typename V::R s0 = V::zero(), s1 = V::zero();
  void pair(const T* p) {
    s0 = V::add(s0, V::load(p));
    s1 = V::add(s1, V::load(p + V::W));
  }
  void rest(const T* p, int cnt) { s0 = V::add(s0, V::load_n(p, cnt)); }
  T total() const { return V::reduce_add(V::add(s0, s1)); }
};

// Sum of a row; pf (or null): the row whose lines to prefetch meanwhile, a line per vector.
template <class T> inline T row_sum(const T* x, int64_t F, const T* pf = nullptr) {
  constexpr int W = Vec<T>::W;
  RowSum<T> sum;
  int64_t j = 0;
  for (; j + 2 * W <= F; j += 2 * W) {
    if (pf && line_start<T, W>(j)) __builtin_prefetch(pf + j, 0, 3);
    if (pf && line_start<T, W>(j + W)) __builtin_prefetch(pf + j + W, 0, 3);
    sum.pair(x + j);
  }
  if (pf)
    for (int64_t l = j; l < F; l += 64 / int64_t(sizeof(T))) __builtin_prefetch(pf + l, 0, 3);
  for (; j < F; j += W) sum.rest(x + j, int(std::min<int64_t>(W, F - j)));
  return sum.total();
}

}  // namespace

template <class T>
void layer_norm_forward(const T* x, const T* w, const T* b, int64_t M, int64_t F, double eps, T* y, T* mean, T* rstd) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const bool stream = double(M) * double(F) * sizeof(T) >= double(kStreamBytes);
  // Streaming rows on the 64-byte grid (the usual large case: F a multiple of 64 bytes and
  // y from the output pool): the write of row i and the read of row i + 1 (its sum, as
  // row_sum forms it: the same bits) share one loop, so loads and non-temporal stores go
  // to memory together instead of in alternating bursts of a row each.
  const bool fused = stream && (F * int64_t(sizeof(T))) % 64 == 0 && reinterpret_cast<uintptr_t>(y) % 64 == 0;
#pragma omp parallel num_threads(pool_threads(M * F))
  {
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t r0 = M * me / nt, r1 = M * (me + 1) / nt;  // this thread's rows
    T next_sum = T(0);
    for (int64_t i = r0; i < r1; ++i) {
      const T* xr = x + i * F;
      T* yr = y + i * F;
      const T mu = (fused && i > r0 ? next_sum : row_sum(xr, F, i + kAhead < M ? xr + kAhead * F : nullptr)) / T(F);
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
      auto val = [&](int64_t j, int cnt) {
        auto xh = V::mul(V::sub(V::load_n(xr + j, cnt), vmu), vrs);
        if (w && b) return V::fma(xh, V::load_n(w + j, cnt), V::load_n(b + j, cnt));
        if (w) return V::mul(xh, V::load_n(w + j, cnt));
        if (b) return V::add(xh, V::load_n(b + j, cnt));
        return xh;
      };
      if (fused) {
        const T* xn = i + 1 < r1 ? xr + F : nullptr;  // the next row of this thread, if any
        RowSum<T> sum;
        int64_t j = 0;  // F is a multiple of W here (64 bytes)
        for (; j + 2 * W <= F; j += 2 * W) {
          V::stream(yr + j, val(j, W));
          V::stream(yr + j + W, val(j + W, W));
          if (xn) sum.pair(xn + j);
        }
        for (; j < F; j += W) {
          V::stream(yr + j, val(j, W));
          if (xn) sum.rest(xn + j, W);
        }
        if (xn) next_sum = sum.total();
      } else if (stream) {
        store_row<V, true>(yr, F, val);
      } else {
        store_row<V, false>(yr, F, val);
      }
    }
    if (stream) stream_fence();
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
  const bool stream = dx && double(M) * double(F) * sizeof(T) >= double(kStreamBytes);
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
      const bool pf = i + kAhead < M;  // rows i + kAhead of dy and x: a line per vector of pass 1
      // sums of g = dy w and g xhat over the row
      auto s_g = V::zero(), s_gx = V::zero();
      for (int64_t j = 0; j < F; j += W) {
        const int cnt = int(std::min<int64_t>(W, F - j));
        if (pf && line_start<T, W>(j)) {
          __builtin_prefetch(g + kAhead * F + j, 0, 3);
          __builtin_prefetch(xr + kAhead * F + j, 0, 3);
        }
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
      // dx = rs (gw - a - xhat c) = gw rs + ((x - mu) k1 + k0) with k1 = -rs^2 c, k0 = -rs a:
      // two FMAs after the subtraction (x - mu stays exact where x is far from zero).
      const T inv_f = T(1) / T(F), rs = rstd[i];
      const T a = V::reduce_add(s_g) * inv_f, c = V::reduce_add(s_gx) * inv_f;
      const auto k1 = V::set1(-rs * rs * c), k0 = V::set1(-rs * a);
      auto val = [&](int64_t j, int cnt) {
        auto gy = V::load_n(g + j, cnt);
        auto gw = w ? V::mul(gy, V::load_n(w + j, cnt)) : gy;
        return V::fma(gw, vrs, V::fma(V::sub(V::load_n(xr + j, cnt), vmu), k1, k0));
      };
      if (stream) store_row<V, true>(d, F, val);
      else store_row<V, false>(d, F, val);
    }
    if (stream) stream_fence();
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

// ---------------------------------------------------------------------------- BatchNorm
// x is the matrix X (N, K = C L); channel c owns columns [c L, c L + L). Work is cut into
// fixed tiles: rows [r0, r0 + rows) x a block of columns. For L <= kBnCols a block holds cpb
// whole channels; for longer L each channel is split into nsub blocks of kBnCols columns.
// The geometry depends on (N, C, L) only, never on the thread count.
namespace {

constexpr int64_t kBnCols = 1024;   // columns per tile (at most)
constexpr int64_t kBnTile = 16384;  // elements per tile (rows = kBnTile / columns) ...
constexpr int64_t kBnRows = 64;     // ... but at most this many rows: each column is summed
                                    // sequentially over the rows of a tile, in T
// Tile rows are K apart (usually another 4 KiB page, where the hardware prefetchers stop):
// the streaming passes prefetch the next row of the tile while working on one (measured on
// the 256x512x128 pattern: ~14% faster).

struct BnGeom {
  int64_t N, C, L, K, cpb, nsub, nblk, rows, nrc;
  BnGeom(int64_t n, int64_t c, int64_t l) : N(n), C(c), L(l), K(c * l) {
    if (L <= kBnCols) {
      cpb = std::max<int64_t>(1, std::min<int64_t>(C, kBnCols / std::max<int64_t>(L, 1)));
      nsub = 1;
      nblk = (C + cpb - 1) / cpb;
    } else {
      cpb = 1;
      nsub = (L + kBnCols - 1) / kBnCols;
      nblk = C * nsub;
    }
    const int64_t width = L <= kBnCols ? cpb * L : kBnCols;
    rows = std::max<int64_t>(1, std::min(kBnRows, kBnTile / std::max<int64_t>(width, 1)));
    nrc = (N + rows - 1) / rows;
  }
  int64_t tiles() const { return nrc * nblk; }
  int64_t parts() const { return nrc * C * nsub; }  // partial results, one per (row chunk, channel, sub-block)
  int64_t part(int64_t rc, int64_t c, int64_t s) const { return (rc * C + c) * nsub + s; }
};

// Tile t: rows [r0, r1), columns [k0, k0 + width); channels c0 .. c0 + nch - 1, channel c0 + i
// in columns [i seg, (i + 1) seg) of the tile; sub-block s of its channel.
struct BnTile {
  int64_t rc, r0, r1, k0, width, c0, nch, s, seg;
};

inline BnTile bn_tile(const BnGeom& g, int64_t t) {
  BnTile u;
  u.rc = t / g.nblk;
  const int64_t blk = t % g.nblk;
  u.r0 = u.rc * g.rows;
  u.r1 = std::min(g.N, u.r0 + g.rows);
  if (g.nsub == 1) {
    u.c0 = blk * g.cpb;
    u.nch = std::min(g.C - u.c0, g.cpb);
    u.s = 0;
    u.seg = g.L;
    u.k0 = u.c0 * g.L;
    u.width = u.nch * g.L;
  } else {
    u.c0 = blk / g.nsub;
    u.nch = 1;
    u.s = blk % g.nsub;
    u.k0 = u.c0 * g.L + u.s * kBnCols;
    u.width = std::min(kBnCols, g.L - u.s * kBnCols);
    u.seg = u.width;
  }
  return u;
}

// buf[i seg .. (i + 1) seg) = v[c0 + i] for each channel of the tile.
template <class T> inline void bn_expand(T* buf, const BnTile& u, const T* v) {
  for (int64_t i = 0; i < u.nch; ++i) std::fill(buf + i * u.seg, buf + (i + 1) * u.seg, v[u.c0 + i]);
}

// Number of doubles of the coefficient arrays (3 C elements of T) after the partials.
inline int64_t bn_coef_doubles(int64_t C) { return 3 * C; }

}  // namespace

template <class T> int64_t batch_norm_work(int64_t N, int64_t C, int64_t L) {
  const BnGeom g(N, C, L);
  return 3 * g.parts() + bn_coef_doubles(C);
}

template <class T>
void batch_norm_forward(const T* x, const T* w, const T* b, T* running_mean, T* running_var, int64_t N, int64_t C,
                        int64_t L, bool training, double momentum, double eps, T* y, T* mean, T* rstd, double* work) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const BnGeom g(N, C, L);
  const int64_t K = g.K;
  const int nt = pool_threads(N * K);
  double* parts = work;  // (count, mean, M2) per partial
  T* scale = reinterpret_cast<T*>(work + 3 * g.parts());  // (C): w rstd
  T* shift = scale + C;                                    // (C): b
  if (training) {
    // Per tile and channel: two passes over the tile while it is in cache (sum -> tile mean m,
    // then sum (x - m) and sum (x - m)^2: corrected two-pass).
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < g.tiles(); ++t) {
      const BnTile u = bn_tile(g, t);
      alignas(64) T sb[kBnCols], qb[kBnCols], mb[kBnCols];
      const int64_t wd = u.width;
      std::fill(sb, sb + wd, T(0));
      for (int64_t r = u.r0; r < u.r1; ++r) {
        const T* xr = x + r * K + u.k0;
        const bool pf = r + 1 < u.r1;  // prefetch the next row of the tile
        int64_t j = 0;
        for (; j + W <= wd; j += W) {
          if (pf && line_start<T, W>(j)) __builtin_prefetch(xr + K + j, 0);
          V::store(sb + j, V::add(V::load(sb + j), V::load(xr + j)));
        }
        if (j < wd) {
          const int cnt = int(wd - j);
          V::store_n(sb + j, V::add(V::load_n(sb + j, cnt), V::load_n(xr + j, cnt)), cnt);
        }
      }
      const double cnt_seg = double(u.r1 - u.r0) * double(u.seg);
      for (int64_t i = 0; i < u.nch; ++i) {
        const T m = T(double(row_sum(sb + i * u.seg, u.seg)) / cnt_seg);
        std::fill(mb + i * u.seg, mb + (i + 1) * u.seg, m);
      }
      // second pass, register-blocked over 4 vectors of columns (the tile is in L1/L2)
      int64_t j = 0;
      for (; j + 4 * W <= wd; j += 4 * W) {
        const auto m0 = V::load(mb + j), m1 = V::load(mb + j + W), m2 = V::load(mb + j + 2 * W),
                   m3 = V::load(mb + j + 3 * W);
        auto d0 = V::zero(), d1 = V::zero(), d2 = V::zero(), d3 = V::zero();
        auto q0 = V::zero(), q1 = V::zero(), q2 = V::zero(), q3 = V::zero();
        for (int64_t r = u.r0; r < u.r1; ++r) {
          const T* xr = x + r * K + u.k0 + j;
          const auto e0 = V::sub(V::load(xr), m0), e1 = V::sub(V::load(xr + W), m1);
          const auto e2 = V::sub(V::load(xr + 2 * W), m2), e3 = V::sub(V::load(xr + 3 * W), m3);
          d0 = V::add(d0, e0); d1 = V::add(d1, e1); d2 = V::add(d2, e2); d3 = V::add(d3, e3);
          q0 = V::fma(e0, e0, q0); q1 = V::fma(e1, e1, q1); q2 = V::fma(e2, e2, q2); q3 = V::fma(e3, e3, q3);
        }
        V::store(sb + j, d0); V::store(sb + j + W, d1); V::store(sb + j + 2 * W, d2); V::store(sb + j + 3 * W, d3);
        V::store(qb + j, q0); V::store(qb + j + W, q1); V::store(qb + j + 2 * W, q2); V::store(qb + j + 3 * W, q3);
      }
      for (; j < wd; j += W) {
        const int cnt = int(std::min<int64_t>(W, wd - j));
        const auto m0 = V::load_n(mb + j, cnt);
        auto d0 = V::zero(), q0 = V::zero();
        for (int64_t r = u.r0; r < u.r1; ++r) {
          const auto e0 = V::sub(V::load_n(x + r * K + u.k0 + j, cnt), m0);
          d0 = V::add(d0, e0);
          q0 = V::fma(e0, e0, q0);
        }
        V::store_n(sb + j, d0, cnt);
        V::store_n(qb + j, q0, cnt);
      }
      for (int64_t i = 0; i < u.nch; ++i) {
        const double d = double(row_sum(sb + i * u.seg, u.seg)), q = double(row_sum(qb + i * u.seg, u.seg));
        double* p = parts + 3 * g.part(u.rc, u.c0 + i, u.s);
        p[0] = cnt_seg;
        p[1] = double(mb[i * u.seg]) + d / cnt_seg;
        p[2] = std::max(0.0, q - d * d / cnt_seg);
      }
    }
    // Merge the partials of each channel in tile order (Chan et al.), in double.
#pragma omp parallel for num_threads(pool_threads(g.parts() * 64)) schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      double n = 0, mu = 0, m2 = 0;
      for (int64_t rc = 0; rc < g.nrc; ++rc)
        for (int64_t s = 0; s < g.nsub; ++s) {
          const double* p = parts + 3 * g.part(rc, c, s);
          const double nb = p[0];
          if (nb == 0) continue;
          const double tot = n + nb, delta = p[1] - mu;
          mu += delta * (nb / tot);
          m2 += p[2] + delta * delta * (n * nb / tot);
          n = tot;
        }
      const double var = n > 0 ? m2 / n : 0.0;
      const double rs = 1.0 / std::sqrt(var + eps);
      mean[c] = T(mu);
      rstd[c] = T(rs);
      scale[c] = T(w ? double(w[c]) * rs : rs);
      shift[c] = b ? b[c] : T(0);
      if (running_mean) running_mean[c] = T((1.0 - momentum) * double(running_mean[c]) + momentum * mu);
      if (running_var && n > 1)
        running_var[c] = T((1.0 - momentum) * double(running_var[c]) + momentum * (m2 / (n - 1)));
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const double rs = 1.0 / std::sqrt(double(running_var[c]) + eps);
      mean[c] = running_mean[c];
      rstd[c] = T(rs);
      scale[c] = T(w ? double(w[c]) * rs : rs);
      shift[c] = b ? b[c] : T(0);
    }
  }
  // y = (x - mean) scale + shift
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < g.tiles(); ++t) {
    const BnTile u = bn_tile(g, t);
    alignas(64) T mb[kBnCols], ab[kBnCols], bb[kBnCols];
    bn_expand(mb, u, mean);
    bn_expand(ab, u, scale);
    bn_expand(bb, u, shift);
    const int64_t wd = u.width;
    for (int64_t r = u.r0; r < u.r1; ++r) {
      const T* xr = x + r * K + u.k0;
      T* yr = y + r * K + u.k0;
      const bool pf = r + 1 < u.r1;
      int64_t j = 0;
      for (; j + W <= wd; j += W) {
        if (pf && line_start<T, W>(j)) {
          __builtin_prefetch(xr + K + j, 0);
          __builtin_prefetch(yr + K + j, 1);
        }
        V::store(yr + j, V::fma(V::sub(V::load(xr + j), V::load(mb + j)), V::load(ab + j), V::load(bb + j)));
      }
      if (j < wd) {
        const int cnt = int(wd - j);
        V::store_n(yr + j, V::fma(V::sub(V::load_n(xr + j, cnt), V::load_n(mb + j, cnt)), V::load_n(ab + j, cnt),
                                  V::load_n(bb + j, cnt)),
                   cnt);
      }
    }
  }
}

template <class T>
void batch_norm_backward(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t N, int64_t C,
                         int64_t L, bool training, T* dx, T* dw, T* db, double* work) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const BnGeom g(N, C, L);
  const int64_t K = g.K;
  const int nt = pool_threads(N * K);
  double* parts = work;  // (sum dy, sum dy (x - mean)) per partial
  T* ca = reinterpret_cast<T*>(work + 3 * g.parts());  // dx = ca dy + cb (x - mean) + cd
  T* cb = ca + C;
  T* cd = cb + C;
  const bool sums = dw || db || (training && dx);
  if (sums) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < g.tiles(); ++t) {
      const BnTile u = bn_tile(g, t);
      alignas(64) T sb[kBnCols], xb[kBnCols], mb[kBnCols];
      const int64_t wd = u.width;
      std::fill(sb, sb + wd, T(0));
      std::fill(xb, xb + wd, T(0));
      bn_expand(mb, u, mean);
      for (int64_t r = u.r0; r < u.r1; ++r) {
        const T* gr = dy + r * K + u.k0;
        const T* xr = x + r * K + u.k0;
        const bool pf = r + 1 < u.r1;
        for (int64_t j = 0; j < wd; j += W) {
          const int cnt = int(std::min<int64_t>(W, wd - j));
          if (pf && line_start<T, W>(j)) {
            __builtin_prefetch(gr + K + j, 0);
            __builtin_prefetch(xr + K + j, 0);
          }
          if (cnt == W) {
            const auto gv = V::load(gr + j);
            V::store(sb + j, V::add(V::load(sb + j), gv));
            V::store(xb + j, V::fma(gv, V::sub(V::load(xr + j), V::load(mb + j)), V::load(xb + j)));
          } else {
            const auto gv = V::load_n(gr + j, cnt);
            V::store_n(sb + j, V::add(V::load_n(sb + j, cnt), gv), cnt);
            V::store_n(xb + j, V::fma(gv, V::sub(V::load_n(xr + j, cnt), V::load_n(mb + j, cnt)), V::load_n(xb + j, cnt)),
                       cnt);
          }
        }
      }
      for (int64_t i = 0; i < u.nch; ++i) {
        double* p = parts + 2 * g.part(u.rc, u.c0 + i, u.s);
        p[0] = double(row_sum(sb + i * u.seg, u.seg));
        p[1] = double(row_sum(xb + i * u.seg, u.seg));
      }
    }
  }
  const double n = double(N) * double(L);
#pragma omp parallel for num_threads(pool_threads(g.parts() * 64)) schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double sdy = 0, sdx = 0;
    if (sums)
      for (int64_t rc = 0; rc < g.nrc; ++rc)
        for (int64_t s = 0; s < g.nsub; ++s) {
          const double* p = parts + 2 * g.part(rc, c, s);
          sdy += p[0];
          sdx += p[1];
        }
    const double rs = double(rstd[c]);
    if (db) db[c] = T(sdy);
    if (dw) dw[c] = T(sdx * rs);
    const double a = (w ? double(w[c]) : 1.0) * rs;
    ca[c] = T(a);
    cb[c] = training && n > 0 ? T(-a * rs * (sdx * rs) / n) : T(0);
    cd[c] = training && n > 0 ? T(-a * sdy / n) : T(0);
  }
  if (!dx) return;
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t t = 0; t < g.tiles(); ++t) {
    const BnTile u = bn_tile(g, t);
    alignas(64) T ab[kBnCols], bb[kBnCols], db_[kBnCols], mb[kBnCols];
    const int64_t wd = u.width;
    bn_expand(ab, u, ca);
    if (training) {
      bn_expand(bb, u, cb);
      bn_expand(db_, u, cd);
      bn_expand(mb, u, mean);
    }
    for (int64_t r = u.r0; r < u.r1; ++r) {
      const T* gr = dy + r * K + u.k0;
      const T* xr = x + r * K + u.k0;
      T* dr = dx + r * K + u.k0;
      const bool pf = r + 1 < u.r1;
      for (int64_t j = 0; j < wd; j += W) {
        const int cnt = int(std::min<int64_t>(W, wd - j));
        if (pf && line_start<T, W>(j)) {
          __builtin_prefetch(gr + K + j, 0);
          if (training) __builtin_prefetch(xr + K + j, 0);
          __builtin_prefetch(dr + K + j, 1);
        }
        if (!training) {
          V::store_n(dr + j, V::mul(V::load_n(ab + j, cnt), V::load_n(gr + j, cnt)), cnt);
        } else if (cnt == W) {
          const auto e = V::sub(V::load(xr + j), V::load(mb + j));
          V::store(dr + j, V::fma(V::load(ab + j), V::load(gr + j), V::fma(V::load(bb + j), e, V::load(db_ + j))));
        } else {
          const auto e = V::sub(V::load_n(xr + j, cnt), V::load_n(mb + j, cnt));
          V::store_n(dr + j,
                     V::fma(V::load_n(ab + j, cnt), V::load_n(gr + j, cnt),
                            V::fma(V::load_n(bb + j, cnt), e, V::load_n(db_ + j, cnt))),
                     cnt);
        }
      }
    }
  }
}

#define SEQCORE_INSTANTIATE(T)                                                                                  \
  template void layer_norm_forward<T>(const T*, const T*, const T*, int64_t, int64_t, double, T*, T*, T*);     \
  template int64_t layer_norm_backward_work<T>(int64_t, int64_t);                                               \
  template void layer_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, T*, \
                                       T*, T*, T*);                                                                  \
  template int64_t batch_norm_work<T>(int64_t, int64_t, int64_t);                                             \
  template void batch_norm_forward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t, bool,  \
                                      double, double, T*, T*, T*, double*);                                    \
  template void batch_norm_backward<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t,    \
                                       int64_t, bool, T*, T*, T*, double*);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
