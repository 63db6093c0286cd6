// Thin SIMD layer: Vec<T> for the ISA this translation unit is compiled for.
// Included only by per-ISA sources (compiled once per ISA with its own flags); everything
// here lives in namespace seqcore::SEQCORE_ISA so no inline copy is shared across ISAs.
//
// Vec<T>::W lanes; R is the register type, M the comparison-mask type. Loads/stores with a
// lane count n (0 <= n <= W) touch only the first n elements (masked tails, no overreads).
// Vec<float> has vector exp/tanh/sigmoid/erf; Vec<double> applies libm per lane (float64 is
// the gradient-checking dtype: accuracy first).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef SEQCORE_ISA
#error "vec.h is for per-ISA translation units (SEQCORE_ISA must be defined)"
#endif

namespace seqcore {
namespace SEQCORE_ISA {

template <class T> struct Vec;

#if defined(__AVX512F__)
// ---------------------------------------------------------------- AVX-512 (F/BW/DQ/VL)
template <> struct Vec<float> {
  using T = float;
  using R = __m512;
  using M = __mmask16;
  static constexpr int W = 16;
  static inline R zero() { return _mm512_setzero_ps(); }
  static inline R set1(T v) { return _mm512_set1_ps(v); }
  static inline R load(const T* p) { return _mm512_loadu_ps(p); }
  static inline void store(T* p, R v) { _mm512_storeu_ps(p, v); }
  static inline M tail(int n) { return (M)((1u << n) - 1u); }
  static inline R load_n(const T* p, int n) { return _mm512_maskz_loadu_ps(tail(n), p); }
  static inline void store_n(T* p, R v, int n) { _mm512_mask_storeu_ps(p, tail(n), v); }
  // Non-temporal store of a whole vector to p aligned to sizeof(R) (call stream_fence after).
  static inline void stream(T* p, R v) { _mm512_stream_ps(p, v); }
  static inline R add(R a, R b) { return _mm512_add_ps(a, b); }
  static inline R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static inline R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static inline R div(R a, R b) { return _mm512_div_ps(a, b); }
  static inline R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }    // a*b+c
  static inline R fnma(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }  // c-a*b
  static inline R fms(R a, R b, R c) { return _mm512_fmsub_ps(a, b, c); }    // a*b-c
  static inline R max(R a, R b) { return _mm512_max_ps(a, b); }
  static inline R min(R a, R b) { return _mm512_min_ps(a, b); }
  static inline R abs(R a) { return _mm512_abs_ps(a); }
  static inline R sqrt(R a) { return _mm512_sqrt_ps(a); }
  // 1/a for normal, finite a: 14-bit estimate + one Newton step in the r + r (1 - a r) form
  // (the residual is formed by one FMA, so exact quotients such as 1/2 come out exact).
  static inline R rcp(R a) {
    R r = _mm512_rcp14_ps(a);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(1.0f)), r);
  }
  static inline R round(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline M lt(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static inline M le(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static inline M gt(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static inline M isnan(R a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
  static inline M nge(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_NGE_UQ); }  // !(a >= b): also NaN
  static inline R select(M m, R a, R b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  static inline R copysign(R mag, R sgn) {
    const __m512i s = _mm512_set1_epi32(0x80000000);
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(mag), _mm512_castps_si512(sgn), s, 0xD8));
  }
  static inline T reduce_add(R a) { return _mm512_reduce_add_ps(a); }
  static inline T reduce_max(R a) { return _mm512_reduce_max_ps(a); }
  // 2^n for integral-valued n in [-126, 127].
  static inline R pow2i(R n) {
    __m512i i = _mm512_cvtps_epi32(n);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(i, _mm512_set1_epi32(127)), 23));
  }
  // v * 2^n for integral-valued n in [-300, 300], one rounding (subnormal results and
  // overflow to inf included): vscalefps.
  static inline R scale2(R v, R n) { return _mm512_scalef_ps(v, n); }
};
template <> struct Vec<double> {
  using T = double;
  using R = __m512d;
  using M = __mmask8;
  static constexpr int W = 8;
  static inline R zero() { return _mm512_setzero_pd(); }
  static inline R set1(T v) { return _mm512_set1_pd(v); }
  static inline R load(const T* p) { return _mm512_loadu_pd(p); }
  static inline void store(T* p, R v) { _mm512_storeu_pd(p, v); }
  static inline M tail(int n) { return (M)((1u << n) - 1u); }
  static inline R load_n(const T* p, int n) { return _mm512_maskz_loadu_pd(tail(n), p); }
  static inline void store_n(T* p, R v, int n) { _mm512_mask_storeu_pd(p, tail(n), v); }
  // Non-temporal store of a whole vector to p aligned to sizeof(R) (call stream_fence after).
  static inline void stream(T* p, R v) { _mm512_stream_pd(p, v); }
  static inline R add(R a, R b) { return _mm512_add_pd(a, b); }
  static inline R sub(R a, R b) { return _mm512_sub_pd(a, b); }
  static inline R mul(R a, R b) { return _mm512_mul_pd(a, b); }
  static inline R div(R a, R b) { return _mm512_div_pd(a, b); }
  static inline R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static inline R fnma(R a, R b, R c) { return _mm512_fnmadd_pd(a, b, c); }
  static inline R fms(R a, R b, R c) { return _mm512_fmsub_pd(a, b, c); }
  static inline R max(R a, R b) { return _mm512_max_pd(a, b); }
  static inline R min(R a, R b) { return _mm512_min_pd(a, b); }
  static inline R abs(R a) { return _mm512_abs_pd(a); }
  static inline R sqrt(R a) { return _mm512_sqrt_pd(a); }
  static inline R rcp(R a) { return _mm512_div_pd(_mm512_set1_pd(1.0), a); }
  static inline M lt(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_LT_OQ); }
  static inline M le(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_LE_OQ); }
  static inline M gt(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_GT_OQ); }
  static inline M isnan(R a) { return _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q); }
  static inline M nge(R a, R b) { return _mm512_cmp_pd_mask(a, b, _CMP_NGE_UQ); }
  static inline R select(M m, R a, R b) { return _mm512_mask_blend_pd(m, b, a); }
  static inline T reduce_add(R a) { return _mm512_reduce_add_pd(a); }
  static inline T reduce_max(R a) { return _mm512_reduce_max_pd(a); }
};
#elif defined(__AVX2__)
// ---------------------------------------------------------------- AVX2 + FMA
namespace detail {
alignas(32) static const int32_t tail_mask_table[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
}
template <> struct Vec<float> {
  using T = float;
  using R = __m256;
  using M = __m256;
  static constexpr int W = 8;
  static inline R zero() { return _mm256_setzero_ps(); }
  static inline R set1(T v) { return _mm256_set1_ps(v); }
  static inline R load(const T* p) { return _mm256_loadu_ps(p); }
  static inline void store(T* p, R v) { _mm256_storeu_ps(p, v); }
  static inline __m256i tail(int n) { return _mm256_loadu_si256((const __m256i*)(detail::tail_mask_table + 8 - n)); }
  // Full vectors take the plain load/store: on Zen 2/3 vmaskmovps to memory is microcoded
  // (tens of cycles), and the branch on n == W is predicted in the loops that call these.
  static inline R load_n(const T* p, int n) { return n == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, tail(n)); }
  static inline void store_n(T* p, R v, int n) {
    if (n == W) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, tail(n), v);
  }
  // Non-temporal store of a whole vector to p aligned to sizeof(R) (call stream_fence after).
  static inline void stream(T* p, R v) { _mm256_stream_ps(p, v); }
  static inline R add(R a, R b) { return _mm256_add_ps(a, b); }
  static inline R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static inline R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static inline R div(R a, R b) { return _mm256_div_ps(a, b); }
  static inline R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static inline R fnma(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static inline R fms(R a, R b, R c) { return _mm256_fmsub_ps(a, b, c); }
  static inline R max(R a, R b) { return _mm256_max_ps(a, b); }
  static inline R min(R a, R b) { return _mm256_min_ps(a, b); }
  static inline R abs(R a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static inline R sqrt(R a) { return _mm256_sqrt_ps(a); }
  // 1/a for normal, finite a: 12-bit estimate + two Newton steps in the r + r (1 - a r) form
  // (no division; the residual is formed by one FMA, so exact quotients such as 1/2 are exact).
  static inline R rcp(R a) {
    const R one = _mm256_set1_ps(1.0f);
    R r = _mm256_rcp_ps(a);
    r = _mm256_fmadd_ps(r, _mm256_fnmadd_ps(a, r, one), r);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(a, r, one), r);
  }
  static inline R round(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static inline M lt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static inline M le(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static inline M gt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static inline M isnan(R a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
  static inline M nge(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_NGE_UQ); }
  static inline R select(M m, R a, R b) { return _mm256_blendv_ps(b, a, m); }
  static inline R copysign(R mag, R sgn) {
    const R s = _mm256_set1_ps(-0.0f);
    return _mm256_or_ps(_mm256_andnot_ps(s, mag), _mm256_and_ps(s, sgn));
  }
  static inline T reduce_add(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline T reduce_max(R a) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static inline R pow2i(R n) {
    __m256i i = _mm256_cvtps_epi32(n);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(i, _mm256_set1_epi32(127)), 23));
  }
  // v * 2^n for integral-valued n in [-252, 254]: two exact power-of-two factors, so only
  // the last product rounds (subnormal results and overflow to inf come out right).
  static inline R scale2(R v, R n) {
    R half = _mm256_mul_ps(n, _mm256_set1_ps(0.5f));
    R n1 = _mm256_floor_ps(half);
    return _mm256_mul_ps(_mm256_mul_ps(v, pow2i(n1)), pow2i(_mm256_sub_ps(n, n1)));
  }
};
template <> struct Vec<double> {
  using T = double;
  using R = __m256d;
  using M = __m256d;
  static constexpr int W = 4;
  static inline R zero() { return _mm256_setzero_pd(); }
  static inline R set1(T v) { return _mm256_set1_pd(v); }
  static inline R load(const T* p) { return _mm256_loadu_pd(p); }
  static inline void store(T* p, R v) { _mm256_storeu_pd(p, v); }
  static inline __m256i tail(int n) {
    alignas(32) static const int64_t t[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i*)(t + 4 - n));
  }
  static inline R load_n(const T* p, int n) { return n == W ? _mm256_loadu_pd(p) : _mm256_maskload_pd(p, tail(n)); }
  static inline void store_n(T* p, R v, int n) {
    if (n == W) _mm256_storeu_pd(p, v);
    else _mm256_maskstore_pd(p, tail(n), v);
  }
  // Non-temporal store of a whole vector to p aligned to sizeof(R) (call stream_fence after).
  static inline void stream(T* p, R v) { _mm256_stream_pd(p, v); }
  static inline R add(R a, R b) { return _mm256_add_pd(a, b); }
  static inline R sub(R a, R b) { return _mm256_sub_pd(a, b); }
  static inline R mul(R a, R b) { return _mm256_mul_pd(a, b); }
  static inline R div(R a, R b) { return _mm256_div_pd(a, b); }
  static inline R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static inline R fnma(R a, R b, R c) { return _mm256_fnmadd_pd(a, b, c); }
  static inline R fms(R a, R b, R c) { return _mm256_fmsub_pd(a, b, c); }
  static inline R max(R a, R b) { return _mm256_max_pd(a, b); }
  static inline R min(R a, R b) { return _mm256_min_pd(a, b); }
  static inline R abs(R a) { return _mm256_andnot_pd(_mm256_set1_pd(-0.0), a); }
  static inline R sqrt(R a) { return _mm256_sqrt_pd(a); }
  static inline R rcp(R a) { return _mm256_div_pd(_mm256_set1_pd(1.0), a); }
  static inline M lt(R a, R b) { return _mm256_cmp_pd(a, b, _CMP_LT_OQ); }
  static inline M le(R a, R b) { return _mm256_cmp_pd(a, b, _CMP_LE_OQ); }
  static inline M gt(R a, R b) { return _mm256_cmp_pd(a, b, _CMP_GT_OQ); }
  static inline M isnan(R a) { return _mm256_cmp_pd(a, a, _CMP_UNORD_Q); }
  static inline M nge(R a, R b) { return _mm256_cmp_pd(a, b, _CMP_NGE_UQ); }
  static inline R select(M m, R a, R b) { return _mm256_blendv_pd(b, a, m); }
  static inline T reduce_add(R a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  static inline T reduce_max(R a) {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
};
#else
// ---------------------------------------------------------------- scalar baseline
template <class TT> struct ScalarVec {
  using T = TT;
  using R = TT;
  using M = bool;
  static constexpr int W = 1;
  static inline R zero() { return T(0); }
  static inline R set1(T v) { return v; }
  static inline R load(const T* p) { return *p; }
  static inline void store(T* p, R v) { *p = v; }
  static inline R load_n(const T* p, int n) { return n > 0 ? *p : T(0); }
  static inline void store_n(T* p, R v, int n) { if (n > 0) *p = v; }
  static inline void stream(T* p, R v) { *p = v; }
  static inline R add(R a, R b) { return a + b; }
  static inline R sub(R a, R b) { return a - b; }
  static inline R mul(R a, R b) { return a * b; }
  static inline R div(R a, R b) { return a / b; }
  static inline R fma(R a, R b, R c) { return std::fma(a, b, c); }
  static inline R fnma(R a, R b, R c) { return std::fma(-a, b, c); }
  static inline R fms(R a, R b, R c) { return std::fma(a, b, -c); }
  // Same NaN behaviour as the x86 max/min instructions: the second operand when unordered.
  static inline R max(R a, R b) { return a > b ? a : b; }
  static inline R min(R a, R b) { return a < b ? a : b; }
  static inline R abs(R a) { return std::fabs(a); }
  static inline R sqrt(R a) { return std::sqrt(a); }
  static inline R rcp(R a) { return T(1) / a; }
  static inline R round(R a) { return std::nearbyint(a); }
  static inline M lt(R a, R b) { return a < b; }
  static inline M le(R a, R b) { return a <= b; }
  static inline M gt(R a, R b) { return a > b; }
  static inline M isnan(R a) { return a != a; }
  static inline M nge(R a, R b) { return !(a >= b); }
  static inline R select(M m, R a, R b) { return m ? a : b; }
  static inline R copysign(R mag, R sgn) { return std::copysign(mag, sgn); }
  static inline T reduce_add(R a) { return a; }
  static inline T reduce_max(R a) { return a; }
  static inline R pow2i(R n) {
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static inline R scale2(R v, R n) {
    R n1 = std::floor(n * R(0.5));
    return (v * pow2i(n1)) * pow2i(n - n1);
  }
};
template <> struct Vec<float> : ScalarVec<float> {};
template <> struct Vec<double> : ScalarVec<double> {};
#endif

// Orders the non-temporal stores (V::stream) of this thread before what follows.
inline void stream_fence() { __builtin_ia32_sfence(); }

// Outputs of at least this many bytes are written with non-temporal stores (V::stream): they
// are far larger than the L2 and come back from memory anyway, and a normal store first
// reads each line (read-for-ownership), a third more memory traffic for a map y = f(x).
constexpr int64_t kStreamBytes = int64_t(16) << 20;

// Elements of T before p reaches a sizeof(R) boundary (0 if aligned, and at most limit).
template <class T, class R> inline int64_t until_aligned(const T* p, int64_t limit) {
  int64_t k = int64_t((sizeof(R) - reinterpret_cast<uintptr_t>(p) % sizeof(R)) % sizeof(R) / sizeof(T));
  return k < limit ? k : limit;
}

// Writes y[0:n) = val(i, cnt) (the vector of elements i .. i + cnt). NT: non-temporal stores
// from the first sizeof(R) boundary on, the head before it and the tail masked (call
// stream_fence after); else normal stores. The values, hence the bits, are the same either way.
template <class V, bool NT, class F> inline void store_row(typename V::T* y, int64_t n, F val) {
  constexpr int W = V::W;
  int64_t i = 0;
  if (NT)
    if (int64_t head = until_aligned<typename V::T, typename V::R>(y, n)) {
      V::store_n(y, val(0, int(head)), int(head));
      i = head;
    }
  for (; i + W <= n; i += W) {
    if constexpr (NT) V::stream(y + i, val(i, W));
    else V::store(y + i, val(i, W));
  }
  if (i < n) V::store_n(y + i, val(i, int(n - i)), int(n - i));
}

// Software prefetch: in a loop over vector indices i (multiples of W), true at the one i per
// 64-byte line, so that a prefetch issued there covers every line of a stream once.
template <class T, int W> inline bool line_start(int64_t i) { return (i & (64 / int64_t(sizeof(T)) - 1)) < W; }

}  // namespace SEQCORE_ISA
}  // namespace seqcore
