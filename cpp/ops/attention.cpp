// Flash-style attention kernels (compiled once per ISA). Formulas and algorithm: attention.h.
// Sizes: BH heads, L queries, S keys, D = q/k dim, Dv = v dim; Br x Bc query x key tiles.
// Buffers: Kt (D, Sp) = K^T per head, zero past S; Vt (Dv, Sp) = V^T; Qn/Kn/dOn the natural
// rows padded to Dp/Dvp columns (read in place when D, Dv are multiples of the tile width).
#include "ops/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "simd/dropout.h"
#include "simd/transpose.h"
#include "simd/vec.h"
#include "simd/vmath.h"
#include "simd/workspace.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

// Register tiles of the block products, per ISA and dtype: MR x (NV vectors) is the small tile
// whose width NR every padded buffer is a multiple of; MRB x (NVB vectors) the big tile used
// for as many whole column panels as fit (on AVX-512 6 x 64 floats: 24 accumulators, 10 loads
// per 24 FMAs, measured 8-10% faster here than 8 x 32).
template <class T> struct ACfg;
#if defined(__AVX512F__)
template <> struct ACfg<float> { static constexpr int MR = 8, NV = 2, MRB = 6, NVB = 4; };
template <> struct ACfg<double> { static constexpr int MR = 8, NV = 2, MRB = 6, NVB = 4; };
#elif defined(__AVX2__)
template <> struct ACfg<float> { static constexpr int MR = 6, NV = 2, MRB = 6, NVB = 2; };
template <> struct ACfg<double> { static constexpr int MR = 6, NV = 2, MRB = 6, NVB = 2; };
#else
template <> struct ACfg<float> { static constexpr int MR = 4, NV = 4, MRB = 4, NVB = 4; };
template <> struct ACfg<double> { static constexpr int MR = 4, NV = 4, MRB = 4, NVB = 4; };
#endif
template <class T> constexpr int NR = ACfg<T>::NV * Vec<T>::W;

constexpr int64_t kBr = 60;        // queries per tile (a multiple of every ISA's row tile)
constexpr int64_t kBcFwd = 256;    // keys per tile, forward
constexpr int64_t kBcBwd = 96;     // keys per tile, backward (rows of the dk, dv products)
constexpr int64_t kAttnChunks = 4; // at most this many key chunks per head for dq (see header)

thread_local Scratch tls_head, tls_block;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------- lane helpers
// Lanes [0, n) set (0 <= n <= W).
template <class V> inline typename V::M first_lanes(int n);
// Lanes whose byte p[lane] (lane < n) is nonzero.
template <class V> inline typename V::M nonzero_u8(const uint8_t* p, int n);
#if defined(__AVX512F__)
template <> inline Vec<float>::M first_lanes<Vec<float>>(int n) { return Vec<float>::tail(n); }
template <> inline Vec<double>::M first_lanes<Vec<double>>(int n) { return Vec<double>::tail(n); }
template <> inline Vec<float>::M nonzero_u8<Vec<float>>(const uint8_t* p, int n) {
  __m128i b = _mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1u), p);
  return _mm_test_epi8_mask(b, b);
}
template <> inline Vec<double>::M nonzero_u8<Vec<double>>(const uint8_t* p, int n) {
  __m128i b = _mm_maskz_loadu_epi8((__mmask16)((1u << n) - 1u), p);
  return (__mmask8)_mm_test_epi8_mask(b, b);
}
#elif defined(__AVX2__)
template <> inline Vec<float>::M first_lanes<Vec<float>>(int n) { return _mm256_castsi256_ps(Vec<float>::tail(n)); }
template <> inline Vec<double>::M first_lanes<Vec<double>>(int n) { return _mm256_castsi256_pd(Vec<double>::tail(n)); }
template <> inline Vec<float>::M nonzero_u8<Vec<float>>(const uint8_t* p, int n) {
  uint64_t bits = 0;
  if (n == 8) std::memcpy(&bits, p, 8); else std::memcpy(&bits, p, size_t(n));
  __m256i w = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)bits));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(w, _mm256_setzero_si256()));
}
template <> inline Vec<double>::M nonzero_u8<Vec<double>>(const uint8_t* p, int n) {
  uint32_t bits = 0;
  if (n == 4) std::memcpy(&bits, p, 4); else std::memcpy(&bits, p, size_t(n));
  __m256i w = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(int(bits)));
  return _mm256_castsi256_pd(_mm256_cmpgt_epi64(w, _mm256_setzero_si256()));
}
#else
template <> inline bool first_lanes<Vec<float>>(int n) { return n > 0; }
template <> inline bool first_lanes<Vec<double>>(int n) { return n > 0; }
template <> inline bool nonzero_u8<Vec<float>>(const uint8_t* p, int n) { return n > 0 && p[0] != 0; }
template <> inline bool nonzero_u8<Vec<double>>(const uint8_t* p, int n) { return n > 0 && p[0] != 0; }
#endif

// 2^y for y <= 0 (or -inf, NaN): n = round(y), f = y - n in [-1/2, 1/2], 2^f by its Taylor
// series in f ln2 to degree 6 (relative error < 1.3e-7), then one rounding scaling by 2^n
// (results below the float range become 0). The lower clamp keeps NaN: max returns its second
// operand when unordered. Scores are kept in base-2 units (scale log2(e) folded in) so the
// softmax pays no extra multiply. float64: libm.
inline Vec<float>::R exp2_nonpos(Vec<float>::R y) {
  using V = Vec<float>;
  V::R yc = V::max(V::set1(-200.0f), y);
  V::R n = V::round(yc);
  V::R f = V::sub(yc, n);
  V::R p = V::set1(1.5403530393381606e-4f);
  p = V::fma(p, f, V::set1(1.3333558146428443e-3f));
  p = V::fma(p, f, V::set1(9.6181291076284772e-3f));
  p = V::fma(p, f, V::set1(5.5504108664821580e-2f));
  p = V::fma(p, f, V::set1(2.4022650695910071e-1f));
  p = V::fma(p, f, V::set1(6.9314718055994531e-1f));
  p = V::fma(p, f, V::set1(1.0f));
  return V::scale2(p, n);
}
inline Vec<double>::R exp2_nonpos(Vec<double>::R y) {
  return vm::per_lane<Vec<double>>(y, [](double v) { return std::exp2(v); });
}
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.69314718055994530942;

// ---------------------------------------------------------------- block products
// C[0:MRv, 0:NR] (= or +=) sum_k A[i, k] B[k, 0:NR]; A(i, k) at a[i*lda + k] (AROW) or
// a[k*lda + i]; B(k, j) at b[k*ldb + j]. The k sum runs in ascending order from zero and is
// added to C at the end (ACC), so every element sees the same arithmetic wherever it sits.
template <class T, int MRv, int NV, bool AROW, bool ACC>
inline void tile(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b, int64_t ldb,
                 T* __restrict c, int64_t ldc) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  R acc[MRv][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MRv; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  if constexpr (AROW) {
    const T* ar[MRv];
#pragma GCC unroll 16
    for (int i = 0; i < MRv; ++i) ar[i] = a + i * lda;
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k) {
      R bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bv[j] = V::load(b + k * ldb + j * W);
#pragma GCC unroll 16
      for (int i = 0; i < MRv; ++i) {
        R av = V::set1(ar[i][k]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
      }
    }
  } else {
#pragma GCC unroll 2
    for (int64_t k = 0; k < kc; ++k) {
      R bv[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) bv[j] = V::load(b + k * ldb + j * W);
      const T* ak = a + k * lda;
#pragma GCC unroll 16
      for (int i = 0; i < MRv; ++i) {
        R av = V::set1(ak[i]);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MRv; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      T* p = c + i * ldc + j * W;
      V::store(p, ACC ? V::add(V::load(p), acc[i][j]) : acc[i][j]);
    }
}

template <class T, int MRv, int NV, bool AROW, bool ACC>
inline void tile_rows(int mr, int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
  if constexpr (MRv == 1) {
    tile<T, 1, NV, AROW, ACC>(kc, a, lda, b, ldb, c, ldc);
  } else {
    if (mr == MRv) return tile<T, MRv, NV, AROW, ACC>(kc, a, lda, b, ldb, c, ldc);
    tile_rows<T, MRv - 1, NV, AROW, ACC>(mr, kc, a, lda, b, ldb, c, ldc);
  }
}

template <class T, int MR, int NV, bool AROW, bool ACC>
void mm_panels(int64_t m, int64_t j_begin, int64_t j_end, int64_t kc, const T* a, int64_t lda, const T* b,
               int64_t ldb, T* c, int64_t ldc) {
  constexpr int NB = NV * Vec<T>::W;
  for (int64_t jr = j_begin; jr + NB <= j_end; jr += NB)
    for (int64_t ir = 0; ir < m; ir += MR) {
      const int mr = int(std::min<int64_t>(MR, m - ir));
      const T* ai = AROW ? a + ir * lda : a + ir;
      tile_rows<T, MR, NV, AROW, ACC>(mr, kc, ai, lda, b + jr, ldb, c + ir * ldc + jr, ldc);
    }
}

// C (m x n) (=|+=) A (m x kc) B (kc x n); n a multiple of NR (C and B padded to it). Column
// panels outer, row tiles inner: each B panel stays in L1 while A streams.
template <class T, bool AROW, bool ACC>
void mm(int64_t m, int64_t n, int64_t kc, const T* a, int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc) {
  using C = ACfg<T>;
  constexpr int NBB = C::NVB * Vec<T>::W;
  const int64_t nbig = n / NBB * NBB;
  mm_panels<T, C::MRB, C::NVB, AROW, ACC>(m, 0, nbig, kc, a, lda, b, ldb, c, ldc);
  mm_panels<T, C::MR, C::NV, AROW, ACC>(m, nbig, n, kc, a, lda, b, ldb, c, ldc);
}

// ---------------------------------------------------------------- packing
// dst (cols x ldd) = src^T for src (rows x cols) with row stride lds; dst columns rows..ldd zero.
template <class T>
void pack_transposed(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  transpose_rows<T>(src, lds, rows, cols, dst, ldd);
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = rows; r < ldd; ++r) dst[c * ldd + r] = T(0);
}
// dst (rows x ldd) = src (rows x cols, row stride lds), zero-padded to ldd columns.
template <class T>
void pack_rows(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(dst + r * ldd, src + r * lds, size_t(cols) * sizeof(T));
    std::memset(dst + r * ldd + cols, 0, size_t(ldd - cols) * sizeof(T));
  }
}

// Row stride of a B operand of the block products, which are read down NR-wide column
// panels (a tile reads one panel over up to 256 rows): a multiple of NR that is an odd number
// of panels, so the rows of a panel spread over every L1 set. A stride of 2^k cache lines
// keeps them in a few sets (4 KiB: one set, 8 lines, for 64 rows or more) and the panel is
// read from L2 again at every tile. Zen 3, AVX2, T = 1024: K^T with 1024 + 16 columns
// instead of 1024 (and V copied to 64 + 16 columns) took the forward from 49 to 56 GF/s (T = 512: 50 to 62).
template <class T> int64_t panel_ld(int64_t cols) {
  int64_t ld = round_up(std::max<int64_t>(cols, 1), NR<T>);
  return (ld / NR<T>) % 2 == 0 ? ld + NR<T> : ld;
}

// A natural-layout operand used as B of a block product: in place when its width is a
// multiple of NR (loads stay inside each row) and its row stride is a panel_ld (an odd
// number of panels), else a padded copy (rows x panel_ld(cols) of buf).
template <class T> struct RowsView {
  const T* p;
  int64_t ld;
};
template <class T>
RowsView<T> rows_view(const T* src, int64_t lds, int64_t rows, int64_t cols, T* buf) {
  if (cols % NR<T> == 0 && lds % NR<T> == 0 && (lds / NR<T>) % 2 == 1) return {src, lds};
  const int64_t ldp = panel_ld<T>(cols);
  pack_rows<T>(src, lds, rows, cols, buf, ldp);
  return {buf, ldp};
}

// ---------------------------------------------------------------- masks
template <class T> struct MaskRow {
  MaskKind kind;
  const void* p;  // this query row's mask at key 0
};
template <class T>
inline MaskRow<T> mask_row(const AttnMask& m, int64_t h, int64_t i) {
  if (m.kind == MaskKind::none) return {MaskKind::none, nullptr};
  const int64_t o = m.off[h] + i * m.rs;
  if (m.kind == MaskKind::add) return {m.kind, static_cast<const T*>(m.base) + o};
  return {m.kind, static_cast<const uint8_t*>(m.base) + o};
}
// x with the mask applied at keys [j, j + cnt).
template <class V>
inline typename V::R apply_mask(typename V::R x, const MaskRow<typename V::T>& m, int64_t j, int cnt) {
  using T = typename V::T;
  switch (m.kind) {
    case MaskKind::none: return x;
    case MaskKind::add: return V::add(x, V::load_n(static_cast<const T*>(m.p) + j, cnt));
    case MaskKind::keep_u8:
      return V::select(nonzero_u8<V>(static_cast<const uint8_t*>(m.p) + j, cnt), x,
                       V::set1(-std::numeric_limits<T>::infinity()));
    case MaskKind::block_u8:
      return V::select(nonzero_u8<V>(static_cast<const uint8_t*>(m.p) + j, cnt),
                       V::set1(-std::numeric_limits<T>::infinity()), x);
  }
  return x;
}

// Scores of one query row over keys [0, nb) of a tile, in place, in base-2 units:
// y = c s + log2(e) mask (c = scale log2 e), -inf at masked keys and keys >= valid. Returns
// max y (-inf when every key is masked).
template <class T>
inline T scores_row(T* s, int64_t nb, int64_t valid, T c, const MaskRow<T>& m1, const MaskRow<T>& m2, int64_t j0) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const auto vc = V::set1(c), ninf = V::set1(-std::numeric_limits<T>::infinity());
  const bool add1 = m1.kind == MaskKind::add, add2 = m2.kind == MaskKind::add;
  const auto l2e = V::set1(T(kLog2e));
  auto vmax = ninf;
  for (int64_t j = 0; j < nb; j += W) {
    const int cnt = int(std::min<int64_t>(W, nb - j));
    auto x = V::mul(V::load(s + j), vc);
    if (add1) x = V::fma(V::load_n(static_cast<const T*>(m1.p) + j0 + j, cnt), l2e, x);
    else x = apply_mask<V>(x, m1, j0 + j, cnt);
    if (add2) x = V::fma(V::load_n(static_cast<const T*>(m2.p) + j0 + j, cnt), l2e, x);
    else x = apply_mask<V>(x, m2, j0 + j, cnt);
    const int keep = int(std::max<int64_t>(0, std::min<int64_t>(W, valid - j)));
    if (keep < W) x = V::select(first_lanes<V>(keep), x, ninf);
    V::store(s + j, x);
    vmax = V::max(vmax, x);
  }
  return V::reduce_max(vmax);
}
// max over keys [0, nb) of c s for c > 0 without touching the row (no masks).
template <class T> inline T scores_max_plain(const T* s, int64_t nb, T c) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const auto ninf = V::set1(-std::numeric_limits<T>::infinity());
  auto m0 = ninf, m1 = ninf;
  int64_t j = 0;
  for (; j + 2 * W <= nb; j += 2 * W) { m0 = V::max(m0, V::load(s + j)); m1 = V::max(m1, V::load(s + j + W)); }
  for (; j < nb; j += W) {
    const int cnt = int(std::min<int64_t>(W, nb - j));
    m0 = V::max(m0, V::select(first_lanes<V>(cnt), V::load(s + j), ninf));
  }
  return V::reduce_max(V::max(m0, m1)) * c;
}

// Number of keys of tile [j0, j0 + nb) that query i may see under the causal mask.
inline int64_t causal_valid(bool causal, int64_t i, int64_t j0, int64_t nb) {
  if (!causal) return nb;
  return std::max<int64_t>(0, std::min<int64_t>(nb, i - j0 + 1));
}

// ---------------------------------------------------------------- forward
template <class T> struct FwdHead {
  const T* kt;  // (D, Sp)
  int64_t sp;
  RowsView<T> v;  // (S, Dvp)
};

template <class T>
FwdHead<T> pack_fwd_head(const AttnShape& s, const AttnForwardArgs<T>& a, int64_t h) {
  const int64_t Sp = panel_ld<T>(s.S);
  T* buf = tls_head.get<T>(size_t(s.D * Sp + s.S * panel_ld<T>(s.Dv) + 16));
  T* kt = buf;
  pack_transposed<T>(a.k + a.kl.off[h], a.kl.rs, s.S, s.D, kt, Sp);
  RowsView<T> v = rows_view<T>(a.v + a.vl.off[h], a.vl.rs, s.S, s.Dv, buf + s.D * Sp);
  return {kt, Sp, v};
}

// One query tile [i0, i0 + mb) of head h: online softmax over key tiles.
template <class T>
void forward_tile(const AttnShape& s, const AttnForwardArgs<T>& a, const FwdHead<T>& hd, int64_t h, int64_t i0,
                  int64_t mb, bool probs_only, T* probs) {
  using V = Vec<T>;
  constexpr int W = V::W;
  constexpr int64_t Bc = kBcFwd;
  const int64_t Dvp = round_up(s.Dv, NR<T>);
  const T c = T(s.scale * kLog2e);  // scores in base-2 units
  const T ninf = -std::numeric_limits<T>::infinity();
  const bool no_masks = a.m1.kind == MaskKind::none && a.m2.kind == MaskKind::none && c > T(0);
  const Dropout drop = make_dropout(s.dropout_p, s.seed);
  T* buf = tls_block.get<T>(size_t(kBr * Bc + kBr * Dvp + 2 * kBr + 16));
  T* st = buf;                 // (Br, Bc) scores, then probabilities
  T* o = st + kBr * Bc;        // (Br, Dvp) output accumulator
  T* mrun = o + kBr * Dvp;     // (Br) running max (base 2)
  T* lrun = mrun + kBr;        // (Br) running sum
  if (!probs_only) {
    std::memset(o, 0, size_t(mb * Dvp) * sizeof(T));
    for (int64_t r = 0; r < mb; ++r) { mrun[r] = ninf; lrun[r] = T(0); }
  }
  const T* q = a.q + a.ql.off[h] + i0 * a.ql.rs;
  const int64_t kend = s.causal ? std::min(s.S, i0 + mb) : s.S;
  for (int64_t j0 = 0; j0 < kend; j0 += Bc) {
    const int64_t nb = std::min(Bc, kend - j0), nbp = round_up(nb, NR<T>);
    mm<T, true, false>(mb, nbp, s.D, q, a.ql.rs, hd.kt + j0, hd.sp, st, Bc);
    for (int64_t r = 0; r < mb; ++r) {
      const int64_t i = i0 + r;
      T* sr = st + r * Bc;
      const int64_t valid = causal_valid(s.causal, i, j0, nb);
      // plain rows keep raw scores and fold c into the exponent; others are rewritten in place
      const bool plain = no_masks && valid == nb;
      const T mx = plain ? scores_max_plain<T>(sr, nb, c)
                         : scores_row<T>(sr, nb, valid, c, mask_row<T>(a.m1, h, i), mask_row<T>(a.m2, h, i), j0);
      const auto vc = V::set1(plain ? c : T(1));
      const uint32_t key = drop.on ? row_key(drop.seed, h, s.L, i) : 0u;
      if (probs_only) {
        // probabilities from the final lse (row i of probs, keys j0..)
        const T l = a.lse[h * s.L + i];
        T* pr = probs + (h * s.L + i) * s.S + j0;
        const auto vl = V::set1(l == ninf ? std::numeric_limits<T>::infinity() : T(l * kLog2e));
        for (int64_t j = 0; j < nb; j += W) {
          const int cnt = int(std::min<int64_t>(W, nb - j));
          auto p = exp2_nonpos(V::fnma(vl, V::set1(T(1)), V::mul(V::load(sr + j), vc)));
          if (drop.on) p = V::mul(p, dropout_mult<V>(drop, key, j0 + j));
          V::store_n(pr + j, p, cnt);
        }
        continue;
      }
      const T mnew = std::max(mrun[r], mx);
      if (mnew == ninf) {  // every key so far masked: p = 0, nothing to add
        std::memset(sr, 0, size_t(nb) * sizeof(T));
        continue;
      }
      const T alpha = mrun[r] == ninf ? T(0) : mrun[r] == mnew ? T(1) : T(std::exp2(mrun[r] - mnew));
      const auto vmn = V::set1(-mnew);
      auto sum0 = V::zero(), sum1 = V::zero();
      int64_t j = 0;
      for (; j + 2 * W <= nb; j += 2 * W) {
        auto p0 = exp2_nonpos(V::fma(V::load(sr + j), vc, vmn));
        auto p1 = exp2_nonpos(V::fma(V::load(sr + j + W), vc, vmn));
        sum0 = V::add(sum0, p0);
        sum1 = V::add(sum1, p1);
        if (drop.on) {  // the sum is over p; the product with v uses the dropped p
          p0 = V::mul(p0, dropout_mult<V>(drop, key, j0 + j));
          p1 = V::mul(p1, dropout_mult<V>(drop, key, j0 + j + W));
        }
        V::store(sr + j, p0);
        V::store(sr + j + W, p1);
      }
      for (; j < nb; j += W) {
        const int cnt = int(std::min<int64_t>(W, nb - j));
        auto p = exp2_nonpos(V::fma(V::load(sr + j), vc, vmn));
        if (cnt < W) p = V::select(first_lanes<V>(cnt), p, V::zero());
        sum0 = V::add(sum0, p);
        if (drop.on) p = V::mul(p, dropout_mult<V>(drop, key, j0 + j));
        V::store(sr + j, p);
      }
      lrun[r] = lrun[r] * alpha + V::reduce_add(V::add(sum0, sum1));
      mrun[r] = mnew;
      if (alpha != T(1)) {
        const auto va = V::set1(alpha);
        T* orow = o + r * Dvp;
        for (int64_t d = 0; d < Dvp; d += W) V::store(orow + d, V::mul(V::load(orow + d), va));
      }
    }
    if (!probs_only) mm<T, true, true>(mb, Dvp, nb, st, Bc, hd.v.p + j0 * hd.v.ld, hd.v.ld, o, Dvp);
  }
  if (probs_only) {
    // keys past the causal end of this tile have probability 0
    for (int64_t r = 0; r < mb; ++r) {
      T* pr = probs + (h * s.L + i0 + r) * s.S;
      for (int64_t j = kend; j < s.S; ++j) pr[j] = T(0);
    }
    return;
  }
  for (int64_t r = 0; r < mb; ++r) {
    const int64_t i = i0 + r;
    T* dst = a.out + a.ol.off[h] + i * a.ol.rs;
    const T l = lrun[r];
    const auto inv = V::set1(l > T(0) ? T(1) / l : T(0));
    const T* orow = o + r * Dvp;
    for (int64_t d = 0; d < s.Dv; d += W) {
      const int cnt = int(std::min<int64_t>(W, s.Dv - d));
      V::store_n(dst + d, V::mul(V::load(orow + d), inv), cnt);
    }
    if (a.lse) a.lse[h * s.L + i] = l > T(0) ? T(double(mrun[r]) * kLn2 + std::log(double(l))) : ninf;
  }
}

inline int pool_threads(double work) {
  if (omp_in_parallel()) return 1;
  return int(std::max<double>(1, std::min<double>(omp_get_max_threads(), work / 2e6)));
}

template <class T>
void forward_impl(const AttnShape& s, const AttnForwardArgs<T>& a, bool probs_only, T* probs) {
  if (s.BH <= 0 || s.L <= 0) return;
  const int64_t nqb = (s.L + kBr - 1) / kBr;
  const int64_t items = s.BH * nqb;
  const double work = 2.0 * double(s.BH) * double(s.L) * double(std::max<int64_t>(s.S, 1)) *
                      double(s.D + s.Dv + 1);
  const int nt = int(std::min<int64_t>(pool_threads(work), items));
  FirstError err;
#pragma omp parallel num_threads(nt)
  err.run([&] {
    const int p = omp_get_thread_num(), np = omp_get_num_threads();
    const int64_t lo = items * p / np, hi = items * (p + 1) / np;
    int64_t packed_h = -1;
    FwdHead<T> hd{};
    for (int64_t it = lo; it < hi; ++it) {
      const int64_t h = it / nqb, i0 = (it % nqb) * kBr;
      if (h != packed_h) {
        hd = pack_fwd_head<T>(s, a, h);
        packed_h = h;
      }
      forward_tile<T>(s, a, hd, h, i0, std::min(kBr, s.L - i0), probs_only, probs);
    }
  });
  err.rethrow();
}

// ---------------------------------------------------------------- backward
template <class T> struct BwdHead {
  const T *kt, *vt;  // (D, Sp), (Dv, Sp)
  int64_t sp;
  RowsView<T> qn, kn, don;  // (L, Dp), (S, Dp), (L, Dvp)
  const T* di;              // (L) dout . out
  const T* lse2;            // (L) lse log2(e), +inf where a row saw no key (p = 0 there)
};

template <class T>
BwdHead<T> pack_bwd_head(const AttnShape& s, const AttnBackwardArgs<T>& a, int64_t h, Scratch& sc) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const int64_t Sp = panel_ld<T>(s.S);
  const int64_t Dp = panel_ld<T>(s.D), Dvp = panel_ld<T>(s.Dv);  // strides of the copies rows_view may make
  const int64_t n_q = s.L * Dp, n_k = s.S * Dp, n_do = s.L * Dvp;
  const int64_t head_sz = (s.D + s.Dv) * Sp + n_q + n_k + n_do + 2 * s.L + 64;
  T* buf = sc.get<T>(size_t(head_sz));
  BwdHead<T> hd{};
  T* kt = buf;
  T* vt = kt + s.D * Sp;
  T* qb = vt + s.Dv * Sp;
  T* kb = qb + n_q;
  T* dob = kb + n_k;
  T* di = dob + n_do;
  T* lse = di + s.L;
  pack_transposed<T>(a.k + a.kl.off[h], a.kl.rs, s.S, s.D, kt, Sp);
  pack_transposed<T>(a.v + a.vl.off[h], a.vl.rs, s.S, s.Dv, vt, Sp);
  hd.kt = kt;
  hd.vt = vt;
  hd.sp = Sp;
  hd.qn = rows_view<T>(a.q + a.ql.off[h], a.ql.rs, s.L, s.D, qb);
  hd.kn = rows_view<T>(a.k + a.kl.off[h], a.kl.rs, s.S, s.D, kb);
  hd.don = rows_view<T>(a.dout + a.dol.off[h], a.dol.rs, s.L, s.Dv, dob);
  const T inf = std::numeric_limits<T>::infinity();
  for (int64_t i = 0; i < s.L; ++i) {
    const T* o = a.out + a.ol.off[h] + i * a.ol.rs;
    const T* g = a.dout + a.dol.off[h] + i * a.dol.rs;
    auto acc = V::zero();
    for (int64_t d = 0; d < s.Dv; d += W) {
      const int cnt = int(std::min<int64_t>(W, s.Dv - d));
      acc = V::fma(V::load_n(o + d, cnt), V::load_n(g + d, cnt), acc);
    }
    di[i] = V::reduce_add(acc);
    const T l = a.lse[h * s.L + i];
    lse[i] = l == -inf ? inf : T(double(l) * kLog2e);
  }
  hd.di = di;
  hd.lse2 = lse;
  return hd;
}

inline int64_t num_chunks(int64_t nkb) { return std::max<int64_t>(1, std::min<int64_t>(nkb, kAttnChunks)); }

// Key chunk c of head h: dk, dv of its keys (written), and its share of dq into dqp (L, Dp).
template <class T>
void backward_chunk(const AttnShape& s, const AttnBackwardArgs<T>& a, const BwdHead<T>& hd, int64_t h, int64_t chunk,
                    T* dqp) {
  using V = Vec<T>;
  constexpr int W = V::W;
  constexpr int64_t Bc = kBcBwd;
  const int64_t Dp = round_up(s.D, NR<T>), Dvp = round_up(s.Dv, NR<T>);
  const int64_t nkb = (s.S + Bc - 1) / Bc, nch = num_chunks(nkb);
  const int64_t kb0 = nkb * chunk / nch, kb1 = nkb * (chunk + 1) / nch;
  const T scale = T(s.scale), c = T(s.scale * kLog2e);
  const bool no_masks = a.m1.kind == MaskKind::none && a.m2.kind == MaskKind::none;
  const Dropout drop = make_dropout(s.dropout_p, s.seed);
  std::memset(dqp, 0, size_t(s.L * Dp) * sizeof(T));
  T* buf = tls_block.get<T>(size_t(2 * kBr * Bc + Bc * (Dp + Dvp) + 16));
  T* st = buf;                // (Br, Bc) scores -> p
  T* dpt = st + kBr * Bc;     // (Br, Bc) dp -> ds
  T* dka = dpt + kBr * Bc;    // (Bc, Dp)
  T* dva = dka + Bc * Dp;     // (Bc, Dvp)
  for (int64_t kb = kb0; kb < kb1; ++kb) {
    const int64_t j0 = kb * Bc, nb = std::min(Bc, s.S - j0), nbp = round_up(nb, NR<T>);
    std::memset(dka, 0, size_t(Bc * Dp) * sizeof(T));
    std::memset(dva, 0, size_t(Bc * Dvp) * sizeof(T));
    const int64_t qstart = s.causal ? (j0 / kBr) * kBr : 0;
    for (int64_t i0 = qstart; i0 < s.L; i0 += kBr) {
      const int64_t mb = std::min(kBr, s.L - i0);
      mm<T, true, false>(mb, nbp, s.D, a.q + a.ql.off[h] + i0 * a.ql.rs, a.ql.rs, hd.kt + j0, hd.sp, st, Bc);
      mm<T, true, false>(mb, nbp, s.Dv, a.dout + a.dol.off[h] + i0 * a.dol.rs, a.dol.rs, hd.vt + j0, hd.sp, dpt,
                         Bc);
      for (int64_t r = 0; r < mb; ++r) {
        const int64_t i = i0 + r;
        T* sr = st + r * Bc;
        T* dr = dpt + r * Bc;
        const int64_t valid = causal_valid(s.causal, i, j0, nb);
        const bool plain = no_masks && valid == nb;
        if (!plain) scores_row<T>(sr, nb, valid, c, mask_row<T>(a.m1, h, i), mask_row<T>(a.m2, h, i), j0);
        const auto vc = V::set1(plain ? c : T(1));
        const auto vl = V::set1(-hd.lse2[i]), vd = V::set1(hd.di[i]), vs = V::set1(scale);
        if (!drop.on) {
          for (int64_t j = 0; j < nbp; j += W) {
            auto p = exp2_nonpos(V::fma(V::load(sr + j), vc, vl));
            if (j + W > nb) p = V::select(first_lanes<V>(int(std::max<int64_t>(0, nb - j))), p, V::zero());
            V::store(sr + j, p);
            V::store(dr + j, V::mul(V::mul(p, V::sub(V::load(dr + j), vd)), vs));
          }
          continue;
        }
        // dropout: dv takes the dropped p~ = p m; ds = p (dp~ m - Di)
        const uint32_t key = row_key(drop.seed, h, s.L, i);
        for (int64_t j = 0; j < nbp; j += W) {
          auto p = exp2_nonpos(V::fma(V::load(sr + j), vc, vl));
          if (j + W > nb) p = V::select(first_lanes<V>(int(std::max<int64_t>(0, nb - j))), p, V::zero());
          const auto m = dropout_mult<V>(drop, key, j0 + j);
          V::store(sr + j, V::mul(p, m));
          V::store(dr + j, V::mul(V::mul(p, V::fnma(vd, V::set1(T(1)), V::mul(V::load(dr + j), m))), vs));
        }
      }
      // dv (nb, Dvp) += p^T dout;  dk (nb, Dp) += ds^T q;  dq (mb, Dp) += ds k
      mm<T, false, true>(nb, Dvp, mb, st, Bc, hd.don.p + i0 * hd.don.ld, hd.don.ld, dva, Dvp);
      mm<T, false, true>(nb, Dp, mb, dpt, Bc, hd.qn.p + i0 * hd.qn.ld, hd.qn.ld, dka, Dp);
      mm<T, true, true>(mb, Dp, nb, dpt, Bc, hd.kn.p + j0 * hd.kn.ld, hd.kn.ld, dqp + i0 * Dp, Dp);
    }
    for (int64_t j = 0; j < nb; ++j) {
      std::memcpy(a.dk + a.dkl.off[h] + (j0 + j) * a.dkl.rs, dka + j * Dp, size_t(s.D) * sizeof(T));
      std::memcpy(a.dv + a.dvl.off[h] + (j0 + j) * a.dvl.rs, dva + j * Dvp, size_t(s.Dv) * sizeof(T));
    }
  }
}

template <class T>
void add_into(T* acc, const T* x, int64_t n) {
  using V = Vec<T>;
  constexpr int W = V::W;
  for (int64_t i = 0; i < n; i += W) {
    const int cnt = int(std::min<int64_t>(W, n - i));
    V::store_n(acc + i, V::add(V::load_n(acc + i, cnt), V::load_n(x + i, cnt)), cnt);
  }
}

template <class T>
void write_dq(const AttnShape& s, const AttnBackwardArgs<T>& a, int64_t h, const T* dq, int64_t i0, int64_t i1) {
  const int64_t Dp = round_up(s.D, NR<T>);
  for (int64_t i = i0; i < i1; ++i)
    std::memcpy(a.dq + a.dql.off[h] + i * a.dql.rs, dq + i * Dp, size_t(s.D) * sizeof(T));
}

// Keys absent (S == 0): out was 0, every gradient is 0.
template <class T> void zero_grads(const AttnShape& s, const AttnBackwardArgs<T>& a, int64_t h) {
  for (int64_t i = 0; i < s.L; ++i) std::memset(a.dq + a.dql.off[h] + i * a.dql.rs, 0, size_t(s.D) * sizeof(T));
}

}  // namespace

template <class T> void attention_forward(const AttnShape& s, const AttnForwardArgs<T>& a) {
  forward_impl<T>(s, a, false, nullptr);
}

template <class T> void attention_probs(const AttnShape& s, const AttnForwardArgs<T>& a, T* probs) {
  forward_impl<T>(s, a, true, probs);
}

template <class T> void attention_backward(const AttnShape& s, const AttnBackwardArgs<T>& a) {
  if (s.BH <= 0) return;
  if (s.S == 0 || s.L == 0) {
    // dk, dv: rows of S (none when S == 0); with L == 0 they are zero
    for (int64_t h = 0; h < s.BH; ++h) {
      zero_grads<T>(s, a, h);
      for (int64_t j = 0; j < s.S; ++j) {
        std::memset(a.dk + a.dkl.off[h] + j * a.dkl.rs, 0, size_t(s.D) * sizeof(T));
        std::memset(a.dv + a.dvl.off[h] + j * a.dvl.rs, 0, size_t(s.Dv) * sizeof(T));
      }
    }
    return;
  }
  const int64_t Dp = round_up(s.D, NR<T>);
  const int64_t nkb = (s.S + kBcBwd - 1) / kBcBwd, nch = num_chunks(nkb);
  const double work = 2.0 * double(s.BH) * double(s.L) * double(s.S) * double(2 * s.D + 3 * s.Dv);
  const int nt = pool_threads(work);
  if (s.BH >= nt) {
    // heads in parallel; each head's chunks in order on one thread
    FirstError err;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int64_t h = 0; h < s.BH; ++h)
      err.run([&] {
        BwdHead<T> hd = pack_bwd_head<T>(s, a, h, tls_head);
        static thread_local Scratch tls_dq;
        T* dq = tls_dq.get<T>(size_t(2 * s.L * Dp + 16));
        T* dqp = dq + s.L * Dp;
        for (int64_t c = 0; c < nch; ++c) {
          backward_chunk<T>(s, a, hd, h, c, c == 0 ? dq : dqp);
          if (c > 0) add_into<T>(dq, dqp, s.L * Dp);
        }
        write_dq<T>(s, a, h, dq, 0, s.L);
      });
    err.rethrow();
    return;
  }
  // few heads: the key chunks of each head in parallel, dq partials summed in chunk order
  static thread_local Scratch tls_parts;
  T* parts = tls_parts.get<T>(size_t(nch * s.L * Dp + 16));
  for (int64_t h = 0; h < s.BH; ++h) {
    BwdHead<T> hd = pack_bwd_head<T>(s, a, h, tls_head);
    FirstError err;
#pragma omp parallel for num_threads(int(std::min<int64_t>(nt, nch))) schedule(dynamic, 1)
    for (int64_t c = 0; c < nch; ++c) err.run([&] { backward_chunk<T>(s, a, hd, h, c, parts + c * s.L * Dp); });
    err.rethrow();
    const int64_t nrb = (s.L + kBr - 1) / kBr;
#pragma omp parallel for num_threads(int(std::min<int64_t>(nt, nrb))) schedule(static)
    for (int64_t rb = 0; rb < nrb; ++rb) {
      const int64_t i0 = rb * kBr, i1 = std::min(s.L, i0 + kBr);
      T* dq = parts + i0 * Dp;
      for (int64_t c = 1; c < nch; ++c) add_into<T>(dq, parts + c * s.L * Dp + i0 * Dp, (i1 - i0) * Dp);
      write_dq<T>(s, a, h, parts, i0, i1);
    }
  }
}

#define SEQCORE_INSTANTIATE(T)                                                                  \
  template void attention_forward<T>(const AttnShape&, const AttnForwardArgs<T>&);              \
  template void attention_backward<T>(const AttnShape&, const AttnBackwardArgs<T>&);            \
  template void attention_probs<T>(const AttnShape&, const AttnForwardArgs<T>&, T*);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
