// GEMM engine (compiled once per ISA). Loop nest, BLIS-style with the A micro-panel in L1:
//   jc over n by NC -> pc over k by KC -> pack B block (kc x nc, stays in L2)
//   -> row panels of <= MR rows: pack the A micro-panel (mr x kc, stays in L1)
//   -> jr over NR-wide B panels -> microkernel (mr x NR tile in registers) -> epilogue.
// Against a pre-packed B, products with few rows go B panel by B panel instead (each panel
// comes from memory once and serves every row panel, of up to 2 MR rows, while in L2).
// Packed A micro-panel: a[k*MR + i] (2 MR for the tall panels); packed B panel: b[k*NR + j],
// zero-padded to NR columns.
#include "gemm/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "simd/act.h"
#include "simd/transpose.h"
#include "simd/vec.h"
#include "simd/workspace.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

// Register tile MR x (NV vectors) and cache blocks per ISA and dtype. The loop nest keeps
// one packed A micro-panel (MR x KC) in L1 and streams the packed B block (KC x NC) from L2
// past it, so KC * NC * sizeof(T) is sized for the L2 (~1 MiB of a 2 MiB L2) and
// KC * NR * sizeof(T) (one B micro-panel) streams through L1 per tile.
//   AVX-512: 6 x 64 floats (6 x 32 doubles): 24 accumulators hide 2 FMA ports x 4 cycles of
//   latency three times over; per k step 4 vector loads + 6 broadcasts for 24 FMAs (under
//   the 2 loads/cycle limit).  AVX2: the classic 6 x 16 (12 accumulators, 15 of 16 ymm).
//   Scalar: 4 x 4.
template <class T> struct Cfg;
#if defined(__AVX512F__)
template <> struct Cfg<float> { static constexpr int MR = 6, NV = 4, KC = 256, NC = 1024; };
template <> struct Cfg<double> { static constexpr int MR = 6, NV = 4, KC = 256, NC = 512; };
#elif defined(__AVX2__)
template <> struct Cfg<float> { static constexpr int MR = 6, NV = 2, KC = 256, NC = 1024; };
template <> struct Cfg<double> { static constexpr int MR = 6, NV = 2, KC = 256, NC = 512; };
#else
template <> struct Cfg<float> { static constexpr int MR = 4, NV = 4, KC = 256, NC = 1024; };
template <> struct Cfg<double> { static constexpr int MR = 4, NV = 4, KC = 256, NC = 512; };
#endif

template <class T> constexpr int NR = Cfg<T>::NV * Vec<T>::W;

thread_local Scratch tls_a, tls_b;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------- microkernel
// C[0:MB, 0:nb] = alpha * sum_k a[:,k] b[k,:] + beta * C   (beta == 0: C is not read).
// a: packed A micro-panel a[k*AS + i] (i < MB); b: packed B micro-panel b[k*NR + j], zero
// padded to NR columns (a tall tile starts at column NR/2 of its panel for its second half).
// Wide tiles: MB <= MR rows by NVB <= NV vectors (AS = MR); tall tiles: MR < MB <= 2 MR rows by
// NVB <= NV/2 vectors, half a B panel (AS = 2 MR), for few rows against a B that streams from
// L2 once per row panel: twice the rows per B byte. MASK: the last vector has only `cnt`
// valid lanes (the tile's right edge). Every element of C sees the same arithmetic
// (one FMA chain over k in ascending order, then the same alpha/beta step) whatever the tile
// shape, so edge tiles and any split over threads give bitwise the same numbers as full tiles.
// The C tile is prefetched during the last MB k steps (earlier, the streaming B panel would
// evict it from L1 again). pf, npf: npf cache lines from pf on are prefetched into L2 during
// the first npf k steps (the next B panel, when B streams from memory; npf = 0: none).
template <class T, int MB, int NVB, bool MASK, int AS>
void ukr(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c, int64_t ldc, T alpha, T beta,
         int cnt, const T* pf, int64_t npf) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W, NRv = NR<T>;
  R acc[MB][NVB];
#pragma GCC unroll 16
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NVB; ++j) acc[i][j] = V::zero();
  auto step = [&](int64_t k) __attribute__((always_inline)) {
    R bv[NVB];
#pragma GCC unroll 4
    for (int j = 0; j < NVB; ++j) bv[j] = V::load(b + k * NRv + j * W);
#pragma GCC unroll 16
    for (int i = 0; i < MB; ++i) {
      R av = V::set1(a[k * AS + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NVB; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  };
  const int64_t kp = kc > MB ? kc - MB : 0, kq = std::min(npf, kp);
  int64_t k = 0;
#pragma GCC unroll 4
  for (; k < kq; ++k) {
    __builtin_prefetch(pf + k * (64 / sizeof(T)), 0, 2);
    step(k);
  }
#pragma GCC unroll 4
  for (; k < kp; ++k) step(k);
  for (; k < kc; ++k) {
    const T* row = c + (k - kp) * ldc;
#pragma GCC unroll 4
    for (int j = 0; j < NVB; ++j) __builtin_prefetch(row + j * W, 0, 3);
    step(k);
  }
  const R va = V::set1(alpha);
  if (beta == T(0)) {
#pragma GCC unroll 16
    for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NVB; ++j) {
        T* p = c + i * ldc + j * W;
        if (MASK && j == NVB - 1) V::store_n(p, V::mul(va, acc[i][j]), cnt);
        else V::store(p, V::mul(va, acc[i][j]));
      }
  } else {
    const R vb = V::set1(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NVB; ++j) {
        T* p = c + i * ldc + j * W;
        if (MASK && j == NVB - 1) V::store_n(p, V::fma(va, acc[i][j], V::mul(vb, V::load_n(p, cnt))), cnt);
        else V::store(p, V::fma(va, acc[i][j], V::mul(vb, V::load(p))));
      }
  }
}

template <class T> using UkrFn = void (*)(int64_t, const T*, const T*, T*, int64_t, T, T, int, const T*, int64_t);

// Tall tiles: MRT rows by NVT vectors (same accumulator count as the wide MR x NV tile).
template <class T> constexpr int MRT = 2 * Cfg<T>::MR;
template <class T> constexpr int NVT = Cfg<T>::NV / 2;

// Tables of microkernels by tile shape: kUkr<T>.wide[mb][nv][masked] (1 <= mb <= MR,
// 1 <= nv <= NV) and kUkr<T>.tall[mb - MR][nv][masked] (MR < mb <= 2 MR, 1 <= nv <= NV/2).
template <class T, int MB, int NVB, int AS> constexpr void put_ukr(UkrFn<T> (&slot)[2]) {
  slot[0] = &ukr<T, MB, NVB, false, AS>;
  slot[1] = &ukr<T, MB, NVB, true, AS>;
}
template <class T> struct UkrTable {
  static constexpr int MR = Cfg<T>::MR, NV = Cfg<T>::NV;
  UkrFn<T> wide[MR + 1][NV + 1][2] = {};
  UkrFn<T> tall[MR + 1][NVT<T> + 1][2] = {};
  template <int MB, int... NVs> constexpr void wide_row(std::integer_sequence<int, NVs...>) {
    (put_ukr<T, MB, NVs + 1, MR>(wide[MB][NVs + 1]), ...);
  }
  template <int MB, int... NVs> constexpr void tall_row(std::integer_sequence<int, NVs...>) {
    (put_ukr<T, MR + MB, NVs + 1, MRT<T>>(tall[MB][NVs + 1]), ...);
  }
  template <int... MBs> constexpr void fill(std::integer_sequence<int, MBs...>) {
    (wide_row<MBs + 1>(std::make_integer_sequence<int, NV>{}), ...);
    if constexpr (NVT<T> > 0) (tall_row<MBs + 1>(std::make_integer_sequence<int, NVT<T>>{}), ...);
  }
  constexpr UkrTable() { fill(std::make_integer_sequence<int, MR>{}); }
};
template <class T> constexpr UkrTable<T> kUkr{};

// Runs the microkernels on an mb x nb tile (nb <= NR) of a row panel packed with stride AS
// (MR: mb <= MR; 2 MR: MR < mb <= 2 MR, as two tall half-panel tiles); meanwhile npf cache
// lines from pf on are prefetched into L2 (one per k step).
template <class T>
inline void run_tile(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta, int64_t mb, int64_t nb,
                     const T* pf = nullptr, int64_t npf = 0) {
  constexpr int W = Vec<T>::W, MR = Cfg<T>::MR, HALF = NVT<T> * W;
  if (mb <= MR) {
    const int nv = int((nb + W - 1) / W), cnt = int(nb - (nv - 1) * W);
    kUkr<T>.wide[mb][nv][cnt != W](kc, a, b, c, ldc, alpha, beta, cnt, pf, npf);
    return;
  }
  for (int64_t h = 0; h < nb; h += HALF) {
    const int64_t nbh = std::min<int64_t>(HALF, nb - h), lines = h == 0 ? npf / 2 : npf - npf / 2;
    const int nv = int((nbh + W - 1) / W), cnt = int(nbh - (nv - 1) * W);
    kUkr<T>.tall[mb - MR][nv][cnt != W](kc, a, b + h, c + h, ldc, alpha, beta, cnt,
                                         pf + (h == 0 ? 0 : npf / 2) * (64 / sizeof(T)), lines);
  }
}

// Row panels: np panels of at most `rows` rows over m rows, balanced (sizes differ by at most
// one, so no panel is left with a row or two).
struct Panels {
  int64_t m, np;
  Panels(int64_t m_, int64_t rows) : m(m_), np((m_ + rows - 1) / rows) {}
  int64_t begin(int64_t p) const { return m * p / np; }
  int64_t size(int64_t p) const { return m * (p + 1) / np - m * p / np; }
};

// ---------------------------------------------------------------- epilogue
// Bias and activation of one finished tile (tile_fn runs per span: see span_cols).
template <class T>
void tile_bias_act(const Epilogue<T>& ep, T* c, int64_t ldc, int64_t j0, int64_t mb, int64_t nb) {
  using V = Vec<T>;
  constexpr int W = V::W;
  if (ep.bias || ep.act != Act::none) {
    for (int64_t i = 0; i < mb; ++i) {
      T* row = c + i * ldc;
      for (int64_t j = 0; j < nb; j += W) {
        int cnt = int(std::min<int64_t>(W, nb - j));
        auto x = V::load_n(row + j, cnt);
        if (ep.bias) x = V::add(x, V::load_n(ep.bias + j0 + j, cnt));
        x = act_v<V>(ep.act, x);
        V::store_n(row + j, x, cnt);
      }
    }
  }
}

// Columns per tile_fn call of an epilogue (a multiple of NR): column ranges that threads and
// column blocks take are multiples of it, so every span lies inside one of them.
template <class T> int64_t span_cols(const Epilogue<T>* ep) {
  return ep && ep->tile_fn && ep->tile_cols > NR<T> ? ep->tile_cols : NR<T>;
}

// ---------------------------------------------------------------- packing
#if defined(__AVX2__)
// Six rows of a row-major matrix (stride lds), columns [0, cols) -> d[c * ldd + r]: the A
// micro-panel layout for MR = 6 (ldd = 6, or 12 for a tall panel). Rows 0-3 go through 4 x 8
// (4 x 4) transposes, rows 4-5 through one interleave. Returns the columns done (a multiple
// of 8 / 4); the caller packs the rest.
inline int64_t pack_rows6(const float* s, int64_t lds, int64_t cols, float* d, int64_t ldd) {
  int64_t c0 = 0;
  for (; c0 + 8 <= cols; c0 += 8) {
    const float* p = s + c0;
    __m256 r0 = _mm256_loadu_ps(p), r1 = _mm256_loadu_ps(p + lds), r2 = _mm256_loadu_ps(p + 2 * lds);
    __m256 r3 = _mm256_loadu_ps(p + 3 * lds), r4 = _mm256_loadu_ps(p + 4 * lds), r5 = _mm256_loadu_ps(p + 5 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);  // cols 0|4, 1|5
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);  // cols 2|6, 3|7
    __m256 v0 = _mm256_unpacklo_ps(r4, r5), v1 = _mm256_unpackhi_ps(r4, r5);            // cols 0,1|4,5; 2,3|6,7
    float* q = d + c0 * ldd;
    const __m256 u[4] = {u0, u1, u2, u3};
    for (int c = 0; c < 4; ++c) {
      _mm_storeu_ps(q + c * ldd, _mm256_castps256_ps128(u[c]));
      _mm_storeu_ps(q + (c + 4) * ldd, _mm256_extractf128_ps(u[c], 1));
    }
    const __m128 v0l = _mm256_castps256_ps128(v0), v0h = _mm256_extractf128_ps(v0, 1);
    const __m128 v1l = _mm256_castps256_ps128(v1), v1h = _mm256_extractf128_ps(v1, 1);
    _mm_storel_pi(reinterpret_cast<__m64*>(q + 0 * ldd + 4), v0l);
    _mm_storeh_pi(reinterpret_cast<__m64*>(q + 1 * ldd + 4), v0l);
    _mm_storel_pi(reinterpret_cast<__m64*>(q + 2 * ldd + 4), v1l);
    _mm_storeh_pi(reinterpret_cast<__m64*>(q + 3 * ldd + 4), v1l);
    _mm_storel_pi(reinterpret_cast<__m64*>(q + 4 * ldd + 4), v0h);
    _mm_storeh_pi(reinterpret_cast<__m64*>(q + 5 * ldd + 4), v0h);
    _mm_storel_pi(reinterpret_cast<__m64*>(q + 6 * ldd + 4), v1h);
    _mm_storeh_pi(reinterpret_cast<__m64*>(q + 7 * ldd + 4), v1h);
  }
  return c0;
}
inline int64_t pack_rows6(const double* s, int64_t lds, int64_t cols, double* d, int64_t ldd) {
  int64_t c0 = 0;
  for (; c0 + 4 <= cols; c0 += 4) {
    double* q = d + c0 * ldd;
    transpose4x4(s + c0, lds, q, ldd);
    __m256d r4 = _mm256_loadu_pd(s + 4 * lds + c0), r5 = _mm256_loadu_pd(s + 5 * lds + c0);
    __m256d v0 = _mm256_unpacklo_pd(r4, r5), v1 = _mm256_unpackhi_pd(r4, r5);  // cols 0|2, 1|3
    _mm_storeu_pd(q + 0 * ldd + 4, _mm256_castpd256_pd128(v0));
    _mm_storeu_pd(q + 1 * ldd + 4, _mm256_castpd256_pd128(v1));
    _mm_storeu_pd(q + 2 * ldd + 4, _mm256_extractf128_pd(v0, 1));
    _mm_storeu_pd(q + 3 * ldd + 4, _mm256_extractf128_pd(v1, 1));
  }
  return c0;
}
#endif

// Writes the first n (<= W) lanes of v to p. spill: the W - n elements after them may be
// overwritten too (they lie inside the packed panel, at the next k, written after this one),
// so a whole-vector store does; else a masked one. On Zen 3 a masked store to memory (vmaskmovps) is
// microcoded, and one per k made 10% of the time of an LSTM's backward at H = 128.
template <class T> inline void put_run(T* p, typename Vec<T>::R v, int n, bool spill) {
  if (spill) Vec<T>::store(p, v);
  else Vec<T>::store_n(p, v, n);
}

// Rows [0, mb) of op(A)[:, 0:kc] -> the micro-panel layout dst[k * ld + i] (ld = MR for
// mb <= MR, 2 MR for a tall panel). Rows mb..ld-1 are left alone: the microkernel for mb rows
// never reads them.
template <class T>
void pack_a_panel(bool ta, int64_t mb, int64_t kc, const T* a, int64_t lda, T* dst, int64_t ld) {
  if (ta) {  // op(A)[i, k] = a[k * lda + i]: already k-major, a run of mb values per k
    using V = Vec<T>;
    if (mb <= V::W) {
      const int n = int(mb);
      for (int64_t k = 0; k < kc; ++k) put_run<T>(dst + k * ld, V::load_n(a + k * lda, n), n, k * ld + V::W <= kc * ld);
      return;
    }
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t i = 0; i < mb; ++i) dst[k * ld + i] = a[k * lda + i];
    return;
  }
  int64_t i0 = 0;
#if defined(__AVX2__)
  if constexpr (Cfg<T>::MR == 6) {
    for (; i0 + 6 <= mb; i0 += 6) {
      const int64_t k0 = pack_rows6(a + i0 * lda, lda, kc, dst + i0, ld);
      for (int64_t i = i0; i < i0 + 6; ++i)
        for (int64_t k = k0; k < kc; ++k) dst[k * ld + i] = a[i * lda + k];
    }
  }
#endif
  for (int64_t i = i0; i < mb; ++i)
    for (int64_t k = 0; k < kc; ++k) dst[k * ld + i] = a[i * lda + k];
}

// Packs op(B)[0:kc, 0:nc] into ceil(nc/NR) panels of kc x NR (zero-padded to NR columns).
// Row-major B goes 8 rows at a time: those rows stay in L1 while each panel gets its 8 rows
// as one contiguous piece, and the next 8 rows are prefetched meanwhile (panel by panel over
// all k, the source would jump a row stride every NR columns; row by row over all panels, the
// writes would go to nc/NR streams that lie a multiple of 4 KiB apart and fight over the same
// cache sets).
template <class T>
void pack_b_block(bool tb, int64_t kc, int64_t nc, const T* b, int64_t ldb, T* dst) {
  constexpr int NRv = NR<T>, KB = 8;
  if (!tb) {
    const int64_t nfull = nc / NRv * NRv, tail = nc - nfull;
    for (int64_t k0 = 0; k0 < kc; k0 += KB) {
      const int64_t kb = std::min<int64_t>(KB, kc - k0);
      const T* s = b + k0 * ldb;
      const int64_t kbn = std::min<int64_t>(KB, kc - k0 - kb);  // rows of the next chunk
      for (int64_t j0 = 0; j0 < nfull; j0 += NRv) {
        T* d = dst + j0 * kc + k0 * NRv;
        for (int64_t k = 0; k < kbn; ++k)
          for (int64_t j = 0; j < NRv; j += 64 / sizeof(T)) __builtin_prefetch(s + (KB + k) * ldb + j0 + j, 0, 3);
        for (int64_t k = 0; k < kb; ++k) std::memcpy(d + k * NRv, s + k * ldb + j0, NRv * sizeof(T));
      }
      if (tail) {
        T* d = dst + nfull * kc + k0 * NRv;
        for (int64_t k = 0; k < kb; ++k) {
          std::memcpy(d + k * NRv, s + k * ldb + nfull, tail * sizeof(T));
          std::memset(d + k * NRv + tail, 0, (NRv - tail) * sizeof(T));
        }
      }
    }
    return;
  }
  for (int64_t j0 = 0; j0 < nc; j0 += NRv) {
    int64_t nb = std::min<int64_t>(NRv, nc - j0);
    T* d = dst + j0 * kc;
    for (int64_t j = 0; j < nb; j += kTransRows<T>) {
      int64_t rows = std::min<int64_t>(kTransRows<T>, nb - j);
      transpose_block<T>(b + (j0 + j) * ldb, ldb, rows, kc, d + j, NRv);
    }
    for (int64_t j = nb; j < NRv; ++j)
      for (int64_t k = 0; k < kc; ++k) d[k * NRv + j] = T(0);
  }
}

constexpr int kTaGroup = 8;  // panels packed together for a transposed A (MR <= W)
// Transposed A, panels [p0, p1) of rp at once into dst (one MR x kc panel after another).
// op(A) = a^T: row k of `a` holds the runs of every panel; a sweep over k reads each line of
// the A block once. Packed panel by panel instead, each line (16 floats) is read again for
// two or three panels, by then evicted to L2 (profile of a 512x800x128 product, one thread:
// packing 20% of the time panel by panel, 13% this way).
template <class T>
void pack_a_group_t(const Panels& rp, int64_t p0, int64_t p1, int64_t kc, const T* a, int64_t lda, T* dst) {
  using V = Vec<T>;
  constexpr int MR = Cfg<T>::MR, LINE = 64 / sizeof(T);
  const int np = int(p1 - p0);
  int64_t at[kTaGroup];
  int cnt[kTaGroup];
  for (int q = 0; q < np; ++q) { at[q] = rp.begin(p0 + q); cnt[q] = int(rp.size(p0 + q)); }
  const int64_t first = at[0], width = at[np - 1] + cnt[np - 1] - first;
  for (int64_t k = 0; k < kc; ++k) {
    const T* row = a + k * lda;
    if (k + 8 < kc)  // eight rows ahead: each row is a new page for the hardware prefetcher
      for (int64_t i = 0; i < width; i += LINE) __builtin_prefetch(row + 8 * lda + first + i, 0, 3);
    const bool spill = k * MR + V::W <= kc * MR;  // the whole vector stays inside the panel
    for (int q = 0; q < np; ++q) put_run<T>(dst + q * MR * kc + k * MR, V::load_n(row + at[q], cnt[q]), cnt[q], spill);
  }
}
template <class T> constexpr bool ta_grouped() { return Cfg<T>::MR <= Vec<T>::W; }
template <class T> int64_t apanel_size() { return int64_t(Cfg<T>::KC) * Cfg<T>::MR * (ta_grouped<T>() ? kTaGroup : 1); }

// ---------------------------------------------------------------- blocked product
// Packed A panel stride for a row panel of mb rows (tall panels: more than MR rows).
template <class T> constexpr int64_t panel_ld(int64_t mb) { return mb > Cfg<T>::MR ? MRT<T> : Cfg<T>::MR; }

// C[0:m, 0:nc] = alpha * op(A)[0:m, kblock] * Bblock + beta * C for one packed B block (panels
// of kc x NR); `a` points at op(A)[0, k0]. Row panels of up to MR rows (wide tiles: the A
// micro-panel stays in L1 and is reused over all of nc, where the wide tile's load mix is
// the better one); each one's A micro-panel is packed into `apanel` (MR x KC) and then the B
// panels stream past it. ep (or null): applied to each tile as it is finished. i0/j0:
// absolute position of this C block in the whole product.
template <class T>
void block_product(bool ta, int64_t m, int64_t nc, int64_t kc, const T* a, int64_t lda, const T* bp, T* c,
                   int64_t ldc, T alpha, T beta, const Epilogue<T>* ep, int64_t i0, int64_t j0, T* apanel) {
  constexpr int NRv = NR<T>, LINE = 64 / sizeof(T);
  const Panels rp(m, Cfg<T>::MR);
  const bool group = ta && ta_grouped<T>();
  for (int64_t p = 0; p < rp.np; ++p) {
    const int64_t ir = rp.begin(p), mb = rp.size(p);
    const T* ap = apanel;
    if (group) {
      if (p % kTaGroup == 0) pack_a_group_t<T>(rp, p, std::min(rp.np, p + kTaGroup), kc, a, lda, apanel);
      ap = apanel + (p % kTaGroup) * Cfg<T>::MR * kc;
    } else {
      pack_a_panel<T>(ta, mb, kc, ta ? a + ir : a + ir * lda, lda, apanel, Cfg<T>::MR);
    }
    // The next panel's rows of A, into L2 while this panel computes (the packing would
    // otherwise wait on each line: every row is a new page for the hardware prefetcher).
    if (p + 1 < rp.np && !ta) {
      const int64_t irn = rp.begin(p + 1), mbn = rp.size(p + 1);
      for (int64_t i = 0; i < mbn; ++i)
        for (int64_t kk = 0; kk < kc; kk += LINE) __builtin_prefetch(a + (irn + i) * lda + kk, 0, 2);
    }
    for (int64_t jr = 0; jr < nc; jr += NRv) {
      const int64_t nb = std::min<int64_t>(NRv, nc - jr);
      T* ct = c + ir * ldc + jr;
      // The next tile of C (same rows, next NR columns), into L2.
      if (jr + NRv < nc)
        for (int64_t i = 0; i < mb; ++i)
          for (int64_t j = 0; j < NRv; j += LINE) __builtin_prefetch(ct + i * ldc + NRv + j, 0, 2);
      run_tile<T>(kc, ap, bp + jr * kc, ct, ldc, alpha, beta, mb, nb);
      if (ep) {
        tile_bias_act<T>(*ep, ct, ldc, j0 + jr, mb, nb);
        // A span is done with its last tile (c starts at a multiple of the span).
        const int64_t span = span_cols<T>(ep), je = jr + nb;
        if (ep->tile_fn && (je % span == 0 || je == nc)) {
          const int64_t js = jr / span * span;
          ep->tile_fn(ep->tile_ctx, c + ir * ldc + js, ldc, i0 + ir, j0 + js, mb, je - js);
        }
      }
    }
  }
}

// The same product for few rows against a B block that comes from memory (pre-packed, used
// once per call): B panel by B panel, each one multiplied by every row panel of A while it
// is in L2, so B is read from memory exactly once; meanwhile (prefetch) the next B panel is
// prefetched, its lines shared out over the row panels. Row panels of up to 2 MR rows (tall
// tiles) where a tall tile is at least two vectors wide (AVX-512: 12 x 32 floats): each B
// panel streams from L2 once per row panel, so taller panels halve that traffic. AVX2's tall
// tile would be one vector wide, 8 rows x 8 floats for B = 16 (too few accumulators for the
// FMA latency, a load per FMA): MR panels there (Zen 3, A/B: 1.25-1.35x faster for RNN-step
// shapes 16x128x512 to 64x1024x4096). ablock: the packed A block (stream_panels(m) panels,
// stride 2 MR x KC).
template <class T> constexpr bool kTallStream = NVT<T> > 1;
template <class T> int64_t stream_panels(int64_t m) { return Panels(m, kTallStream<T> ? MRT<T> : Cfg<T>::MR).np; }
template <class T>
void block_product_bstream(bool ta, int64_t m, int64_t nc, int64_t kc, const T* a, int64_t lda, const T* bp,
                           T* c, int64_t ldc, T alpha, T beta, const Epilogue<T>* ep, int64_t i0, int64_t j0,
                           T* ablock, bool prefetch) {
  constexpr int NRv = NR<T>;
  const Panels rp(m, kTallStream<T> ? MRT<T> : Cfg<T>::MR);
  const int64_t stride = int64_t(MRT<T>) * kc;
  for (int64_t p = 0; p < rp.np; ++p) {
    const int64_t ir = rp.begin(p), mb = rp.size(p);
    pack_a_panel<T>(ta, mb, kc, ta ? a + ir : a + ir * lda, lda, ablock + p * stride, panel_ld<T>(mb));
  }
  // By spans of the epilogue (one B panel unless tile_fn wants wider ones): each row panel
  // runs over the span's panels, then tile_fn gets the finished span. While a tile of panel
  // jr computes, its share of the lines of panel jr + span (the next span's) is prefetched.
  const int64_t span = span_cols<T>(ep);
  const int64_t lines = (kc * NRv * int64_t(sizeof(T)) + 63) / 64, per = (lines + rp.np - 1) / rp.np;
  for (int64_t js = 0; js < nc; js += span) {
    const int64_t je = std::min(nc, js + span);
    for (int64_t p = 0; p < rp.np; ++p) {
      const int64_t ir = rp.begin(p), mb = rp.size(p);
      for (int64_t jr = js; jr < je; jr += NRv) {
        const int64_t nb = std::min<int64_t>(NRv, nc - jr);
        const bool more = prefetch && jr + span < nc;
        const T* next = more ? bp + (jr + span) * kc : bp;
        const int64_t l0 = more ? std::min(lines, p * per) : 0, nl = more ? std::min(lines, l0 + per) - l0 : 0;
        T* ct = c + ir * ldc + jr;
        run_tile<T>(kc, ablock + p * stride, bp + jr * kc, ct, ldc, alpha, beta, mb, nb, next + l0 * (64 / sizeof(T)),
                    nl);
        if (ep) tile_bias_act<T>(*ep, ct, ldc, j0 + jr, mb, nb);
      }
      if (ep && ep->tile_fn) ep->tile_fn(ep->tile_ctx, c + ir * ldc + js, ldc, i0 + ir, j0 + js, mb, je - js);
    }
  }
}

// k == 0: C = beta * C, then the epilogue.
template <class T>
void scale_only(int64_t m, int64_t n, T beta, T* c, int64_t ldc, const Epilogue<T>* ep,
                int64_t i0, int64_t j0) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
  if (!ep) return;
  tile_bias_act<T>(*ep, c, ldc, j0, m, n);
  if (ep->tile_fn)
    for (int64_t js = 0, span = span_cols<T>(ep); js < n; js += span)
      ep->tile_fn(ep->tile_ctx, c + js, ldc, i0, j0 + js, m, std::min(span, n - js));
}

// Products against a pre-packed B with at most this many rows stream B panel by panel
// (block_product_bstream); more rows reuse each L2-sized B block over many row panels.
constexpr int64_t kStreamRows = 192;
constexpr int64_t kL2Bytes = int64_t(2) << 20;  // per core, the cache the blocks are sized for

// Width of the column blocks for n columns: about NC at most, a multiple of unit (NR or the
// epilogue's span), balanced.
template <class T> int64_t col_block(int64_t n, int64_t unit) {
  const int64_t nc = std::max<int64_t>(unit, Cfg<T>::NC / unit * unit);
  const int64_t blocks = (n + nc - 1) / nc;
  return round_up((n + blocks - 1) / blocks, unit);
}

// Single-threaded GEMM on a sub-problem whose C starts at absolute (i0, j0).
template <class T>
void gemm_st(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
             const T* b, int64_t ldb, T beta, T* c, int64_t ldc, const Epilogue<T>* ep,
             int64_t i0, int64_t j0) {
  constexpr int KC = Cfg<T>::KC;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return scale_only<T>(m, n, beta, c, ldc, ep, i0, j0);
  const int64_t ncb = col_block<T>(n, span_cols<T>(ep));
  T* bbuf = tls_b.get<T>(size_t(KC) * size_t(ncb));
  T* apanel = tls_a.get<T>(size_t(apanel_size<T>()));
  for (int64_t jc = 0; jc < n; jc += ncb) {
    int64_t nc = std::min<int64_t>(ncb, n - jc);
    for (int64_t pc = 0; pc < k; pc += KC) {
      int64_t kc = std::min<int64_t>(KC, k - pc);
      const T* bsrc = tb ? b + jc * ldb + pc : b + pc * ldb + jc;
      pack_b_block<T>(tb, kc, nc, bsrc, ldb, bbuf);
      T beta_eff = pc == 0 ? beta : T(1);
      const Epilogue<T>* ep_eff = (pc + kc >= k) ? ep : nullptr;
      block_product<T>(ta, m, nc, kc, ta ? a + pc * lda : a + pc, lda, bbuf, c + jc, ldc, alpha, beta_eff, ep_eff,
                       i0, j0 + jc, apanel);
    }
  }
}

// Same, with B already packed for all of (k, n_total); this sub-problem covers packed
// columns [jb, jb + n) (jb a multiple of NR).
template <class T>
void gemm_packed_st(bool ta, int64_t m, int64_t n, int64_t n_total, int64_t k, T alpha, const T* a,
                    int64_t lda, const T* packed, int64_t jb, T beta, T* c, int64_t ldc,
                    const Epilogue<T>* ep, int64_t i0) {
  constexpr int KC = Cfg<T>::KC, NRv = NR<T>;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return scale_only<T>(m, n, beta, c, ldc, ep, i0, jb);
  const int64_t npad = round_up(n_total, NRv);
  if (m <= kStreamRows) {
    T* ablock = tls_a.get<T>(size_t(KC) * MRT<T> * size_t(stream_panels<T>(m)));
    // A B that fits in half the L2 is likely still there from the last call (a recurrent
    // weight used at every time step): prefetching it again would only cost issue slots.
    const bool prefetch = double(k) * double(n) * sizeof(T) > double(kL2Bytes / 2);
    for (int64_t pc = 0; pc < k; pc += KC) {
      int64_t kc = std::min<int64_t>(KC, k - pc);
      T beta_eff = pc == 0 ? beta : T(1);
      const Epilogue<T>* ep_eff = (pc + kc >= k) ? ep : nullptr;
      block_product_bstream<T>(ta, m, n, kc, ta ? a + pc * lda : a + pc, lda, packed + pc * npad + jb * kc, c, ldc,
                               alpha, beta_eff, ep_eff, i0, jb, ablock, prefetch);
    }
    return;
  }
  const int64_t ncb = col_block<T>(n, span_cols<T>(ep));
  T* apanel = tls_a.get<T>(size_t(apanel_size<T>()));
  for (int64_t jc = 0; jc < n; jc += ncb) {
    int64_t nc = std::min<int64_t>(ncb, n - jc);
    for (int64_t pc = 0; pc < k; pc += KC) {
      int64_t kc = std::min<int64_t>(KC, k - pc);
      const T* bblock = packed + pc * npad + (jb + jc) * kc;
      T beta_eff = pc == 0 ? beta : T(1);
      const Epilogue<T>* ep_eff = (pc + kc >= k) ? ep : nullptr;
      block_product<T>(ta, m, nc, kc, ta ? a + pc * lda : a + pc, lda, bblock, c + jc, ldc, alpha, beta_eff, ep_eff,
                       i0, jb + jc, apanel);
    }
  }
}

// ---------------------------------------------------------------- threads
// A fork-join on a busy host can stall a whole product: a worker that is not scheduled
// promptly holds up the join. Measured here with the other CPU busy with another process:
// back-to-back parallel regions found their worker ~3 ms late (it had spun away its time
// slice at the previous join), so an 80 us product took ~10 ms on 2 threads. Every parallel
// region records how much later than usual its workers started; a product runs on more
// threads only while the time that saves is at least twice that recent excess lateness. The
// estimate rises at once and decays (halves every kLateHalfLifeNs), so a host that has become
// quiet again is noticed. "Usual": a worker that has been idle for more than ~3 ms sleeps,
// and waking it takes 1-4 ms on this VM even when the host is quiet (paid once per burst of
// products), so a start that follows a recent region (kWarmNs) may be kWarmLateNs late, any
// other kColdLateNs. The thread count never changes the results.
constexpr double kWarmNs = 1e6, kWarmLateNs = 100e3, kColdLateNs = 4e6, kLateHalfLifeNs = 50e6;
std::atomic<int64_t> g_late_ns{0}, g_late_stamp_ns{0}, g_region_end_ns{0};

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline double recent_late_ns(int64_t now) {
  const int64_t late = g_late_ns.load(std::memory_order_relaxed);
  if (late == 0) return 0.0;
  const double age = double(now - g_late_stamp_ns.load(std::memory_order_relaxed));
  return double(late) * std::exp2(-std::max(0.0, age) / kLateHalfLifeNs);
}
inline void record_late(double late_ns, bool warm) {
  const int64_t now = now_ns();
  const double excess = std::max(0.0, late_ns - (warm ? kWarmLateNs : kColdLateNs)), prev = recent_late_ns(now);
  const double v = excess >= prev ? excess : 0.75 * prev + 0.25 * excess;
  g_late_ns.store(int64_t(v), std::memory_order_relaxed);
  g_late_stamp_ns.store(now, std::memory_order_relaxed);
  g_region_end_ns.store(now, std::memory_order_relaxed);
}

// Runs body(part, parts) on nt threads (the caller is part 0); records how late the others
// started. An exception (a failed scratch allocation) is rethrown here, after the region.
template <class F> void run_parallel(int nt, const F& body) {
  const int64_t t0 = now_ns();
  const bool warm = double(t0 - g_region_end_ns.load(std::memory_order_relaxed)) < kWarmNs;
  int64_t late = 0;
  FirstError err;
#pragma omp parallel num_threads(nt) reduction(max : late)
  {
    const int p = omp_get_thread_num();
    if (p != 0) late = now_ns() - t0;
    err.run([&] { body(p, omp_get_num_threads()); });
  }
  record_late(double(late), warm);
  err.rethrow();
}

// How many threads a product of `flops` (or flop-equivalents of memory traffic) deserves: one
// per kFlopsPerThread, at most the pool size, and one while workers have been late (above).
constexpr double kFlopsPerThread = 2e6;
template <class T> int threads_for(double flops) {
  if (omp_in_parallel()) return 1;
  int nt = int(std::min<double>(omp_get_max_threads(), std::max(1.0, flops / kFlopsPerThread)));
  if (nt > 1) {
    // A rough single-thread time: 8 flop/ns per vector lane, under this core's FMA peak.
    const double t1_ns = flops / (8.0 * Vec<T>::W), saved_ns = t1_ns * (1.0 - 1.0 / nt);
    if (saved_ns < 2.0 * recent_late_ns(now_ns())) nt = 1;
  }
  return nt;
}
inline double gemm_flops(int64_t m, int64_t n, int64_t k) {
  return 2.0 * double(m) * double(n) * double(std::max<int64_t>(k, 1));
}

// Products with at most this many rows stream the packed B (GEMV-like): threads by bytes.
constexpr int kSmallM = 4;
// gemv_packed_cols takes at most this many rows.
constexpr int kGemvRows = 4;

// Split [0, total) in units of `unit` into `parts` contiguous ranges; range of part p.
inline void split_range(int64_t total, int64_t unit, int parts, int p, int64_t* begin, int64_t* end) {
  int64_t units = (total + unit - 1) / unit;
  int64_t lo = units * p / parts, hi = units * (p + 1) / parts;
  *begin = std::min(total, lo * unit);
  *end = std::min(total, hi * unit);
}

}  // namespace

template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc, const Epilogue<T>* ep) {
  if (m <= 0 || n <= 0) return;
  constexpr int MR = Cfg<T>::MR;
  const int64_t NRv = span_cols<T>(ep);  // column ranges: whole spans of the epilogue
  int nt = threads_for<T>(gemm_flops(m, n, k));
  bool split_n = (n / NRv) >= (m / MR);
  int64_t units = split_n ? (n + NRv - 1) / NRv : (m + MR - 1) / MR;
  nt = int(std::min<int64_t>(nt, units));
  if (nt <= 1) return gemm_st<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep, 0, 0);
  run_parallel(nt, [&](int p, int parts) {
    int64_t lo, hi;
    if (split_n) {
      split_range(n, NRv, parts, p, &lo, &hi);
      const T* bs = tb ? b + lo * ldb : b + lo;
      gemm_st<T>(ta, tb, m, hi - lo, k, alpha, a, lda, bs, ldb, beta, c + lo, ldc, ep, 0, lo);
    } else {
      split_range(m, MR, parts, p, &lo, &hi);
      const T* as = ta ? a + lo : a + lo * lda;
      gemm_st<T>(ta, tb, hi - lo, n, k, alpha, as, lda, b, ldb, beta, c + lo * ldc, ldc, ep, lo, 0);
    }
  });
}

template <class T> int gemm_nr() { return NR<T>; }

template <class T> int64_t packed_b_size(int64_t k, int64_t n) {
  return std::max<int64_t>(k, 1) * round_up(std::max<int64_t>(n, 1), NR<T>);
}

template <class T>
void pack_b(bool tb, int64_t k, int64_t n, const T* b, int64_t ldb, T* packed) {
  constexpr int KC = Cfg<T>::KC;
  const int64_t npad = round_up(n, NR<T>);
  int64_t blocks = (k + KC - 1) / KC;
  auto pack = [&](int p, int parts) {
    for (int64_t blk = blocks * p / parts; blk < blocks * (p + 1) / parts; ++blk) {
      int64_t pc = blk * KC;
      int64_t kc = std::min<int64_t>(KC, k - pc);
      const T* bsrc = tb ? b + pc : b + pc * ldb;
      pack_b_block<T>(tb, kc, n, bsrc, ldb, packed + pc * npad);
    }
  };
  int nt = int(std::min<int64_t>(threads_for<T>(gemm_flops(k, n, 1)), blocks));
  if (nt <= 1) return pack(0, 1);
  run_parallel(nt, pack);
}

template <class T>
void gemm_packed(bool ta, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                 const T* packed, T beta, T* c, int64_t ldc, const Epilogue<T>* ep) {
  if (m <= 0 || n <= 0) return;
  constexpr int MR = Cfg<T>::MR;
  const int64_t NRv = span_cols<T>(ep);  // column ranges: whole spans of the epilogue
  // Few rows: the product streams the packed matrix, so threads pay off by bytes, not flops.
  int nt = threads_for<T>(m <= kSmallM ? gemm_flops(k, n, 8) : gemm_flops(m, n, k));
  bool split_n = (n / NRv) >= (m / MR);
  int64_t units = split_n ? (n + NRv - 1) / NRv : (m + MR - 1) / MR;
  nt = int(std::min<int64_t>(nt, units));
  if (nt <= 1) return gemm_packed_st<T>(ta, m, n, n, k, alpha, a, lda, packed, 0, beta, c, ldc, ep, 0);
  run_parallel(nt, [&](int p, int parts) {
    int64_t lo, hi;
    if (split_n) {
      split_range(n, NRv, parts, p, &lo, &hi);
      gemm_packed_st<T>(ta, m, hi - lo, n, k, alpha, a, lda, packed, lo, beta, c + lo, ldc, ep, 0);
    } else {
      split_range(m, MR, parts, p, &lo, &hi);
      const T* as = ta ? a + lo : a + lo * lda;
      gemm_packed_st<T>(ta, hi - lo, n, n, k, alpha, as, lda, packed, 0, beta, c + lo * ldc, ldc, ep, lo);
    }
  });
}

template <class T>
void gemm_packed_cols(bool ta, int64_t m, int64_t n_total, int64_t j0, int64_t j1, int64_t k, T alpha, const T* a,
                      int64_t lda, const T* packed, T beta, T* c, int64_t ldc, const Epilogue<T>* ep) {
  gemm_packed_st<T>(ta, m, j1 - j0, n_total, k, alpha, a, lda, packed, j0, beta, c + j0, ldc, ep, 0);
}

namespace {
// Few-row products against packed B panels, a GEMV at heart: the wide tile's accumulators would
// be too few to hide the FMA latency (one row: NV chains), so each row's sum over k runs in CH
// interleaved chains (k mod CH, ascending within each), added in chain order at the end.
template <class T, int MB>
void gemv_tile(int64_t k, const T* a, int64_t lda, const T* packed, int64_t npad, int64_t jb, int nb, bool acc_c,
               const T* bias, T* c, int64_t ldc) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W, NV = Cfg<T>::NV, NRv = NR<T>, KC = Cfg<T>::KC;
  constexpr int CH = std::max(1, std::min(4, 8 / (MB * NV)));
  R acc[CH][MB][NV];
#pragma GCC unroll 4
  for (int h = 0; h < CH; ++h)
#pragma GCC unroll 4
    for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[h][i][j] = V::zero();
  for (int64_t pc = 0; pc < k; pc += KC) {
    const int64_t kc = std::min<int64_t>(KC, k - pc);
    const T* panel = packed + pc * npad + jb * kc;
    const T* ak = a + pc;
    int64_t kk = 0;
    auto row = [&](int h, int64_t r) __attribute__((always_inline)) {
      R bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bv[j] = V::load(panel + r * NRv + j * W);
#pragma GCC unroll 4
      for (int i = 0; i < MB; ++i) {
        const R av = V::set1(ak[i * lda + r]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[h][i][j] = V::fma(av, bv[j], acc[h][i][j]);
      }
    };
    // The chain of global row pc + r is (pc + r) mod CH; KC is a multiple of CH.
    for (; kk + CH <= kc; kk += CH) {
#pragma GCC unroll 4
      for (int h = 0; h < CH; ++h) row(h, kk + h);
    }
#pragma GCC unroll 4
    for (int h = 0; h < CH - 1; ++h)
      if (kk + h < kc) row(h, kk + h);
  }
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      if (j * W >= nb) break;
      R r = acc[0][i][j];
#pragma GCC unroll 4
      for (int h = 1; h < CH; ++h) r = V::add(r, acc[h][i][j]);
      const int cnt = int(std::min<int64_t>(W, nb - j * W));
      T* p = c + i * ldc + j * W;
      if (acc_c) r = V::add(V::load_n(p, cnt), r);
      if (bias) r = V::add(r, V::load_n(bias + jb + j * W, cnt));
      V::store_n(p, r, cnt);
    }
}
}  // namespace

template <class T> int gemv_max_rows() { return kGemvRows; }

template <class T>
void gemv_packed_cols(int64_t m, int64_t n_total, int64_t j0, int64_t j1, int64_t k, const T* a, int64_t lda,
                      const T* packed, bool accumulate, const T* bias, T* c, int64_t ldc) {
  constexpr int NRv = NR<T>;
  const int64_t npad = round_up(n_total, NRv);
  for (int64_t jb = j0; jb < j1; jb += NRv) {
    const int nb = int(std::min<int64_t>(NRv, j1 - jb));
    T* ct = c + jb;
    if (k <= 0) {
      for (int64_t i = 0; i < m; ++i)
        for (int j = 0; j < nb; ++j) ct[i * ldc + j] = (accumulate ? ct[i * ldc + j] : T(0)) + (bias ? bias[jb + j] : T(0));
      continue;
    }
    switch (m) {
      case 1: gemv_tile<T, 1>(k, a, lda, packed, npad, jb, nb, accumulate, bias, ct, ldc); break;
      case 2: gemv_tile<T, 2>(k, a, lda, packed, npad, jb, nb, accumulate, bias, ct, ldc); break;
      case 3: gemv_tile<T, 3>(k, a, lda, packed, npad, jb, nb, accumulate, bias, ct, ldc); break;
      case 4: gemv_tile<T, 4>(k, a, lda, packed, npad, jb, nb, accumulate, bias, ct, ldc); break;
      default: break;
    }
  }
}

template <class T> int gemm_threads(double flops) { return threads_for<T>(flops); }

void gemm_parallel(int nt, void (*fn)(void*, int, int), void* ctx) {
  if (nt <= 1) return fn(ctx, 0, 1);
  run_parallel(nt, [&](int p, int parts) { fn(ctx, p, parts); });
}

template <class T> void col_sum(const T* x, int64_t rows, int64_t cols, T* out, bool accumulate) {
  using V = Vec<T>;
  constexpr int W = V::W;
  constexpr int64_t CB = 256;  // columns per work item
  int64_t nblk = (cols + CB - 1) / CB;
  auto sum = [&](int p, int parts) {
    for (int64_t blk = nblk * p / parts; blk < nblk * (p + 1) / parts; ++blk) {
      int64_t j0 = blk * CB, j1 = std::min(cols, j0 + CB);
      for (int64_t j = j0; j < j1; j += W) {
        int cnt = int(std::min<int64_t>(W, j1 - j));
        auto s = accumulate ? V::load_n(out + j, cnt) : V::zero();
        for (int64_t i = 0; i < rows; ++i) s = V::add(s, V::load_n(x + i * cols + j, cnt));
        V::store_n(out + j, s, cnt);
      }
    }
  };
  int nt = int(std::min<int64_t>(threads_for<T>(gemm_flops(rows, cols, 1)), nblk));
  if (nt <= 1) return sum(0, 1);
  run_parallel(nt, sum);
}

#define SEQCORE_INSTANTIATE(T)                                                                   \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                        int64_t, T, T*, int64_t, const Epilogue<T>*);                            \
  template int gemm_nr<T>();                                                                    \
  template int64_t packed_b_size<T>(int64_t, int64_t);                                          \
  template void pack_b<T>(bool, int64_t, int64_t, const T*, int64_t, T*);                       \
  template void gemm_packed<T>(bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                               T, T*, int64_t, const Epilogue<T>*);                              \
  template void gemm_packed_cols<T>(bool, int64_t, int64_t, int64_t, int64_t, int64_t, T, const T*, int64_t, \
                                    const T*, T, T*, int64_t, const Epilogue<T>*);                  \
  template int gemm_threads<T>(double);                                                          \
  template int gemv_max_rows<T>();                                                               \
  template void gemv_packed_cols<T>(int64_t, int64_t, int64_t, int64_t, int64_t, const T*, int64_t, const T*, \
                                    bool, const T*, T*, int64_t);                                 \
  template void col_sum<T>(const T*, int64_t, int64_t, T*, bool);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
