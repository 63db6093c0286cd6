// GEMM engine (compiled once per ISA). Loop nest, BLIS-style:
//   jc over n by NC -> pc over k by KC -> pack B (kc x nc) -> ic over m by MC -> pack A (mc x kc)
//   -> jr over NR panels -> ir over MR panels -> microkernel (MR x NR tile in registers).
// Packed A panel: a[k*MR + i]; packed B panel: b[k*NR + j]; zero-padded at the edges.
#include "gemm/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "simd/act.h"
#include "simd/vec.h"
#include "simd/workspace.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

// Register tile MR x (NV vectors) and cache blocks per ISA and dtype.
template <class T> struct Cfg;
#if defined(__AVX512F__)
template <> struct Cfg<float> { static constexpr int MR = 8, NV = 2, KC = 384, MC = 96, NC = 3072; };
template <> struct Cfg<double> { static constexpr int MR = 8, NV = 2, KC = 256, MC = 96, NC = 1536; };
#elif defined(__AVX2__)
template <> struct Cfg<float> { static constexpr int MR = 6, NV = 2, KC = 384, MC = 96, NC = 3072; };
template <> struct Cfg<double> { static constexpr int MR = 6, NV = 2, KC = 256, MC = 96, NC = 1536; };
#else
template <> struct Cfg<float> { static constexpr int MR = 4, NV = 4, KC = 256, MC = 64, NC = 1024; };
template <> struct Cfg<double> { static constexpr int MR = 4, NV = 4, KC = 256, MC = 64, NC = 1024; };
#endif

template <class T> constexpr int NR = Cfg<T>::NV * Vec<T>::W;

thread_local Scratch tls_a, tls_b, tls_tile;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------- microkernel
// C[0:MR, 0:NR] = alpha * sum_k a[:,k] b[k,:] + beta * C   (beta == 0: C is not read)
template <class T>
inline void ukr(int64_t kc, const T* __restrict a, const T* __restrict b, T* __restrict c,
                int64_t ldc, T alpha, T beta) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int MR = Cfg<T>::MR, NV = Cfg<T>::NV, W = V::W, NRv = NR<T>;
  R acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    __builtin_prefetch(c + i * ldc, 1, 3);  // the C tile is needed at the end: start fetching
    __builtin_prefetch(c + i * ldc + NRv - 1, 1, 3);
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  }
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    R bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = V::load(b + k * NRv + j * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      R av = V::set1(a[k * MR + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  }
  R va = V::set1(alpha);
  if (beta == T(0)) {
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) V::store(c + i * ldc + j * W, V::mul(va, acc[i][j]));
  } else {
    R vb = V::set1(beta);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        T* p = c + i * ldc + j * W;
        V::store(p, V::fma(va, acc[i][j], V::mul(vb, V::load(p))));
      }
  }
}

// Edge tile (mb < MR or nb < NR): run the same microkernel on a scratch tile so every element
// sees exactly the arithmetic of a full tile.
template <class T>
inline void ukr_edge(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, T alpha, T beta,
                     int64_t mb, int64_t nb) {
  constexpr int MR = Cfg<T>::MR, NRv = NR<T>;
  alignas(64) T tile[MR * NRv];
  if (beta != T(0)) {
    std::memset(tile, 0, sizeof tile);
    for (int64_t i = 0; i < mb; ++i) std::memcpy(tile + i * NRv, c + i * ldc, nb * sizeof(T));
  }
  ukr<T>(kc, a, b, tile, NRv, alpha, beta);
  for (int64_t i = 0; i < mb; ++i) std::memcpy(c + i * ldc, tile + i * NRv, nb * sizeof(T));
}

// Few rows (m <= kSmallM, a GEMV-like product such as a streaming recurrent step): A is read
// in place (no packing) and the B panel streams once; two accumulator sets over even/odd k
// hide FMA latency. C[0:MS, 0:nb] = alpha * A B + beta * C.
constexpr int kSmallM = 4;

template <class T, int MS>
inline void ukr_small(int64_t kc, const T* __restrict a, int64_t lda, const T* __restrict b, T* c, int64_t ldc,
                      T alpha, T beta, int64_t nb) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int NV = Cfg<T>::NV, W = V::W, NRv = NR<T>;
  R acc0[MS][NV], acc1[MS][NV];
  for (int i = 0; i < MS; ++i)
    for (int j = 0; j < NV; ++j) acc0[i][j] = acc1[i][j] = V::zero();
  int64_t k = 0;
  for (; k + 2 <= kc; k += 2) {
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      R b0 = V::load(b + k * NRv + j * W), b1 = V::load(b + (k + 1) * NRv + j * W);
#pragma GCC unroll 4
      for (int i = 0; i < MS; ++i) {
        acc0[i][j] = V::fma(V::set1(a[i * lda + k]), b0, acc0[i][j]);
        acc1[i][j] = V::fma(V::set1(a[i * lda + k + 1]), b1, acc1[i][j]);
      }
    }
  }
  if (k < kc)
    for (int j = 0; j < NV; ++j) {
      R b0 = V::load(b + k * NRv + j * W);
      for (int i = 0; i < MS; ++i) acc0[i][j] = V::fma(V::set1(a[i * lda + k]), b0, acc0[i][j]);
    }
  const R va = V::set1(alpha), vb = V::set1(beta);
  for (int i = 0; i < MS; ++i)
    for (int j = 0; j < NV; ++j) {
      int64_t cnt = std::min<int64_t>(W, nb - j * W);
      if (cnt <= 0) break;
      T* p = c + i * ldc + j * W;
      R r = V::mul(va, V::add(acc0[i][j], acc1[i][j]));
      if (beta != T(0)) r = V::fma(vb, V::load_n(p, int(cnt)), r);
      V::store_n(p, r, int(cnt));
    }
}

template <class T>
void ukr_small_any(int ms, int64_t kc, const T* a, int64_t lda, const T* b, T* c, int64_t ldc, T alpha, T beta,
                   int64_t nb) {
  switch (ms) {
    case 1: return ukr_small<T, 1>(kc, a, lda, b, c, ldc, alpha, beta, nb);
    case 2: return ukr_small<T, 2>(kc, a, lda, b, c, ldc, alpha, beta, nb);
    case 3: return ukr_small<T, 3>(kc, a, lda, b, c, ldc, alpha, beta, nb);
    default: return ukr_small<T, 4>(kc, a, lda, b, c, ldc, alpha, beta, nb);
  }
}

// ---------------------------------------------------------------- epilogue
template <class T>
void apply_epilogue(const Epilogue<T>& ep, T* c, int64_t ldc, int64_t i0, int64_t j0, int64_t mb,
                    int64_t nb) {
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
  if (ep.tile_fn) ep.tile_fn(ep.tile_ctx, c, ldc, i0, j0, mb, nb);
}

// ---------------------------------------------------------------- packing
#if defined(__AVX2__)
// dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block of floats.
inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r0 = _mm256_loadu_ps(src + 0 * lds), r1 = _mm256_loadu_ps(src + 1 * lds);
  __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
  __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
  __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}
#endif

// Generic strided transpose: dst[c * ldd + r] = src[r * lds + c], rows x cols, 8x8 blocks
// through SIMD where the ISA has them.
template <class T>
inline void transpose_block(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  int64_t c0 = 0;
#if defined(__AVX2__)
  if constexpr (std::is_same_v<T, float>) {
    if (rows == 8) {
      for (; c0 + 8 <= cols; c0 += 8) transpose8x8(src + c0, lds, dst + c0 * ldd, ldd);
    }
  }
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}
template <class T>
void pack_a_block(bool ta, int64_t mc, int64_t kc, const T* a, int64_t lda, T* dst) {
  constexpr int MR = Cfg<T>::MR;
  for (int64_t i0 = 0; i0 < mc; i0 += MR) {
    int64_t mb = std::min<int64_t>(MR, mc - i0);
    T* d = dst + i0 * kc;
    if (!ta) {
      transpose_block<T>(a + i0 * lda, lda, mb, kc, d, MR);
      for (int64_t i = mb; i < MR; ++i)
        for (int64_t k = 0; k < kc; ++k) d[k * MR + i] = T(0);
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = a + k * lda + i0;
        int64_t i = 0;
        for (; i < mb; ++i) d[k * MR + i] = s[i];
        for (; i < MR; ++i) d[k * MR + i] = T(0);
      }
    }
  }
}

// Packs op(B)[0:kc, 0:nc] into ceil(nc/NR) panels of kc x NR.
template <class T>
void pack_b_block(bool tb, int64_t kc, int64_t nc, const T* b, int64_t ldb, T* dst) {
  constexpr int NRv = NR<T>;
  for (int64_t j0 = 0; j0 < nc; j0 += NRv) {
    int64_t nb = std::min<int64_t>(NRv, nc - j0);
    T* d = dst + j0 * kc;
    if (!tb) {
      for (int64_t k = 0; k < kc; ++k) {
        const T* s = b + k * ldb + j0;
        if (nb == NRv) {
          std::memcpy(d + k * NRv, s, NRv * sizeof(T));
        } else {
          std::memcpy(d + k * NRv, s, nb * sizeof(T));
          std::memset(d + k * NRv + nb, 0, (NRv - nb) * sizeof(T));
        }
      }
    } else {
      for (int64_t j = 0; j < nb; j += 8) {
        int64_t rows = std::min<int64_t>(8, nb - j);
        transpose_block<T>(b + (j0 + j) * ldb, ldb, rows, kc, d + j, NRv);
      }
      for (int64_t j = nb; j < NRv; ++j)
        for (int64_t k = 0; k < kc; ++k) d[k * NRv + j] = T(0);
    }
  }
}

// ---------------------------------------------------------------- macro kernel
// C block (mc x nc) += packed A (mc x kc) * packed B panels (kc x nc). i0/j0: absolute
// position of the block in C (for the epilogue).
template <class T>
void macro_kernel(int64_t mc, int64_t nc, int64_t kc, const T* ap, const T* bp, T* c, int64_t ldc,
                  T alpha, T beta, const Epilogue<T>* ep, int64_t i0, int64_t j0) {
  constexpr int MR = Cfg<T>::MR, NRv = NR<T>;
  for (int64_t jr = 0; jr < nc; jr += NRv) {
    int64_t nb = std::min<int64_t>(NRv, nc - jr);
    const T* bpanel = bp + jr * kc;
    for (int64_t ir = 0; ir < mc; ir += MR) {
      int64_t mb = std::min<int64_t>(MR, mc - ir);
      T* ct = c + ir * ldc + jr;
      if (mb == MR && nb == NRv)
        ukr<T>(kc, ap + ir * kc, bpanel, ct, ldc, alpha, beta);
      else
        ukr_edge<T>(kc, ap + ir * kc, bpanel, ct, ldc, alpha, beta, mb, nb);
      if (ep) apply_epilogue<T>(*ep, ct, ldc, i0 + ir, j0 + jr, mb, nb);
    }
  }
}

// k == 0: C = beta * C, then the epilogue.
template <class T>
void scale_only(int64_t m, int64_t n, T beta, T* c, int64_t ldc, const Epilogue<T>* ep,
                int64_t i0, int64_t j0) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
  if (ep) apply_epilogue<T>(*ep, c, ldc, i0, j0, m, n);
}

// Single-threaded GEMM on a sub-problem whose C starts at absolute (i0, j0).
template <class T>
void gemm_st(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
             const T* b, int64_t ldb, T beta, T* c, int64_t ldc, const Epilogue<T>* ep,
             int64_t i0, int64_t j0) {
  constexpr int KC = Cfg<T>::KC, MC = Cfg<T>::MC, NC = Cfg<T>::NC, NRv = NR<T>;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return scale_only<T>(m, n, beta, c, ldc, ep, i0, j0);
  T* bbuf = tls_b.get<T>(size_t(KC) * round_up(std::min<int64_t>(NC, n), NRv));
  T* abuf = tls_a.get<T>(size_t(KC) * round_up(std::min<int64_t>(MC, m), Cfg<T>::MR));
  for (int64_t jc = 0; jc < n; jc += NC) {
    int64_t nc = std::min<int64_t>(NC, n - jc);
    for (int64_t pc = 0; pc < k; pc += KC) {
      int64_t kc = std::min<int64_t>(KC, k - pc);
      const T* bsrc = tb ? b + jc * ldb + pc : b + pc * ldb + jc;
      pack_b_block<T>(tb, kc, nc, bsrc, ldb, bbuf);
      T beta_eff = pc == 0 ? beta : T(1);
      const Epilogue<T>* ep_eff = (pc + kc >= k) ? ep : nullptr;
      for (int64_t ic = 0; ic < m; ic += MC) {
        int64_t mc = std::min<int64_t>(MC, m - ic);
        const T* asrc = ta ? a + pc * lda + ic : a + ic * lda + pc;
        pack_a_block<T>(ta, mc, kc, asrc, lda, abuf);
        macro_kernel<T>(mc, nc, kc, abuf, bbuf, c + ic * ldc + jc, ldc, alpha, beta_eff, ep_eff,
                        i0 + ic, j0 + jc);
      }
    }
  }
}

// Same, with B already packed for all of (k, n_total); this sub-problem covers packed
// columns [jb, jb + n) (jb a multiple of NR).
template <class T>
void gemm_packed_st(bool ta, int64_t m, int64_t n, int64_t n_total, int64_t k, T alpha, const T* a,
                    int64_t lda, const T* packed, int64_t jb, T beta, T* c, int64_t ldc,
                    const Epilogue<T>* ep, int64_t i0) {
  constexpr int KC = Cfg<T>::KC, MC = Cfg<T>::MC, NRv = NR<T>;
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return scale_only<T>(m, n, beta, c, ldc, ep, i0, jb);
  const int64_t npad = round_up(n_total, NRv);
  if (!ta && m <= kSmallM) {
    for (int64_t pc = 0; pc < k; pc += KC) {
      int64_t kc = std::min<int64_t>(KC, k - pc);
      const T* bblock = packed + pc * npad + jb * kc;
      T beta_eff = pc == 0 ? beta : T(1);
      const bool last = pc + kc >= k;
      for (int64_t jr = 0; jr < n; jr += NRv) {
        int64_t nb = std::min<int64_t>(NRv, n - jr);
        ukr_small_any<T>(int(m), kc, a + pc, lda, bblock + jr * kc, c + jr, ldc, alpha, beta_eff, nb);
        if (last && ep) apply_epilogue<T>(*ep, c + jr, ldc, i0, jb + jr, m, nb);
      }
    }
    return;
  }
  T* abuf = tls_a.get<T>(size_t(KC) * round_up(std::min<int64_t>(MC, m), Cfg<T>::MR));
  for (int64_t pc = 0; pc < k; pc += KC) {
    int64_t kc = std::min<int64_t>(KC, k - pc);
    const T* bblock = packed + pc * npad + jb * kc;
    T beta_eff = pc == 0 ? beta : T(1);
    const Epilogue<T>* ep_eff = (pc + kc >= k) ? ep : nullptr;
    for (int64_t ic = 0; ic < m; ic += MC) {
      int64_t mc = std::min<int64_t>(MC, m - ic);
      const T* asrc = ta ? a + pc * lda + ic : a + ic * lda + pc;
      pack_a_block<T>(ta, mc, kc, asrc, lda, abuf);
      macro_kernel<T>(mc, n, kc, abuf, bblock, c + ic * ldc, ldc, alpha, beta_eff, ep_eff, i0 + ic, jb);
    }
  }
}

// How many threads a product deserves: ~1 per 2 MFLOP of work, at most the pool size.
inline int threads_for(int64_t m, int64_t n, int64_t k) {
  if (omp_in_parallel()) return 1;
  int nt = omp_get_max_threads();
  double flops = 2.0 * double(m) * double(n) * double(std::max<int64_t>(k, 1));
  int by_work = int(std::min<double>(nt, std::max(1.0, flops / 2e6)));
  return std::max(1, by_work);
}

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
  constexpr int MR = Cfg<T>::MR, NRv = NR<T>;
  int nt = threads_for(m, n, k);
  bool split_n = (n / NRv) >= (m / MR);
  int64_t units = split_n ? (n + NRv - 1) / NRv : (m + MR - 1) / MR;
  nt = int(std::min<int64_t>(nt, units));
  if (nt <= 1) return gemm_st<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, ep, 0, 0);
#pragma omp parallel num_threads(nt)
  {
    int p = omp_get_thread_num();
    int64_t lo, hi;
    if (split_n) {
      split_range(n, NRv, nt, p, &lo, &hi);
      const T* bs = tb ? b + lo * ldb : b + lo;
      gemm_st<T>(ta, tb, m, hi - lo, k, alpha, a, lda, bs, ldb, beta, c + lo, ldc, ep, 0, lo);
    } else {
      split_range(m, MR, nt, p, &lo, &hi);
      const T* as = ta ? a + lo : a + lo * lda;
      gemm_st<T>(ta, tb, hi - lo, n, k, alpha, as, lda, b, ldb, beta, c + lo * ldc, ldc, ep, lo, 0);
    }
  }
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
  int nt = std::max(1, std::min<int>(threads_for(k, n, 1), int(blocks)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    int64_t pc = blk * KC;
    int64_t kc = std::min<int64_t>(KC, k - pc);
    const T* bsrc = tb ? b + pc : b + pc * ldb;
    pack_b_block<T>(tb, kc, n, bsrc, ldb, packed + pc * npad);
  }
}

template <class T>
void gemm_packed(bool ta, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                 const T* packed, T beta, T* c, int64_t ldc, const Epilogue<T>* ep) {
  if (m <= 0 || n <= 0) return;
  constexpr int MR = Cfg<T>::MR, NRv = NR<T>;
  // Few rows: the product streams the packed matrix, so threads pay off by bytes, not flops.
  int nt = (!ta && m <= kSmallM) ? threads_for(k * n, 8, 1) : threads_for(m, n, k);
  bool split_n = (n / NRv) >= (m / MR);
  int64_t units = split_n ? (n + NRv - 1) / NRv : (m + MR - 1) / MR;
  nt = int(std::min<int64_t>(nt, units));
  if (nt <= 1) return gemm_packed_st<T>(ta, m, n, n, k, alpha, a, lda, packed, 0, beta, c, ldc, ep, 0);
#pragma omp parallel num_threads(nt)
  {
    int p = omp_get_thread_num();
    int64_t lo, hi;
    if (split_n) {
      split_range(n, NRv, nt, p, &lo, &hi);
      gemm_packed_st<T>(ta, m, hi - lo, n, k, alpha, a, lda, packed, lo, beta, c + lo, ldc, ep, 0);
    } else {
      split_range(m, MR, nt, p, &lo, &hi);
      const T* as = ta ? a + lo : a + lo * lda;
      gemm_packed_st<T>(ta, hi - lo, n, n, k, alpha, as, lda, packed, 0, beta, c + lo * ldc, ldc, ep, lo);
    }
  }
}

template <class T> void col_sum(const T* x, int64_t rows, int64_t cols, T* out, bool accumulate) {
  using V = Vec<T>;
  constexpr int W = V::W;
  constexpr int64_t CB = 256;  // columns per work item
  int64_t nblk = (cols + CB - 1) / CB;
  int nt = std::max(1, std::min<int>(threads_for(rows, cols, 1), int(nblk)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    int64_t j0 = blk * CB, j1 = std::min(cols, j0 + CB);
    for (int64_t j = j0; j < j1; j += W) {
      int cnt = int(std::min<int64_t>(W, j1 - j));
      auto s = accumulate ? V::load_n(out + j, cnt) : V::zero();
      for (int64_t i = 0; i < rows; ++i) s = V::add(s, V::load_n(x + i * cols + j, cnt));
      V::store_n(out + j, s, cnt);
    }
  }
}

#define SEQCORE_INSTANTIATE(T)                                                                   \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                        int64_t, T, T*, int64_t, const Epilogue<T>*);                            \
  template int gemm_nr<T>();                                                                    \
  template int64_t packed_b_size<T>(int64_t, int64_t);                                          \
  template void pack_b<T>(bool, int64_t, int64_t, const T*, int64_t, T*);                       \
  template void gemm_packed<T>(bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*, \
                               T, T*, int64_t, const Epilogue<T>*);                              \
  template void col_sum<T>(const T*, int64_t, int64_t, T*, bool);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
