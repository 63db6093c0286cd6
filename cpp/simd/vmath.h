// Vector transcendental functions on Vec<T>, written once for every ISA.
//
// float32: polynomial/rational approximations, max relative error < 2e-6 against float64
// over the whole float range (tests/test_vmath.py): exact at 0, saturating correctly at
// +-inf, NaN in -> NaN out, no spurious overflow for large inputs. float64: libm per lane.
#pragma once
#include "simd/vec.h"
#if defined(__AVX512F__)
#include "simd/vmath_tables.h"
#endif

namespace seqcore {
namespace SEQCORE_ISA {

namespace vm {

template <class V, class F>
inline typename V::R per_lane(typename V::R x, F f) {
  alignas(64) typename V::T buf[V::W];
  V::store(buf, x);
  for (int i = 0; i < V::W; ++i) buf[i] = f(buf[i]);
  return V::load(buf);
}

#if defined(__AVX512F__)
// The piecewise polynomial of a generated table (vmath_tables.h, tools/gen_vmath_tables.py)
// at a in [Tab::kLo, Tab::kHi): interval j = floor((a - lo) / step) clamped to [0, 31] (a at
// lo may round to just below it; a lane outside the range or NaN gets the end interval's
// value, for the caller to replace), Horner in u = a - c_j.
// Each coefficient comes from the table's two registers by one 32-entry permute (vpermt2ps).
template <class Tab>
inline Vec<float>::R lut_poly(const float (&c)[Tab::kDeg + 1][32], Vec<float>::R a) {
  using V = Vec<float>;
  const V::R t = V::fma(a, V::set1(1.0f / Tab::kStep), V::set1(-Tab::kLo / Tab::kStep));
  const V::R jf = _mm512_roundscale_ps(V::min(V::max(t, V::zero()), V::set1(31.0f)),
                                       _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512i j = _mm512_cvttps_epi32(jf);
  const V::R u = V::sub(a, V::fma(jf, V::set1(Tab::kStep), V::set1(Tab::kLo + 0.5f * Tab::kStep)));
  V::R p = _mm512_permutex2var_ps(V::load(c[Tab::kDeg]), j, V::load(c[Tab::kDeg] + 16));
#pragma GCC unroll 8
  for (int d = Tab::kDeg - 1; d >= 0; --d)
    p = V::fma(p, u, _mm512_permutex2var_ps(V::load(c[d]), j, V::load(c[d] + 16)));
  return p;
}
#endif

// exp(x) = p * 2^n: n = round(x / ln2), r = x - n ln2 (two-constant Cody-Waite), e^r by a
// degree-7 polynomial (Cephes expf) p. The scaling by 2^n (Vec::scale2) rounds once, so
// subnormal results and overflow to +inf come out right without special cases. Keeping
// the parts lets callers apply a factor before the scaling (exp_mul), so m * e^x is
// accurate even where e^x alone would be subnormal.
struct ExpParts {
  Vec<float>::R p, n;
};
// For |x| <= 160 (no clamping): n = round(x / ln2) by adding and removing 1.5 * 2^23,
// which also folds the multiply into one FMA.
inline ExpParts exp_parts_near(Vec<float>::R x) {
  using V = Vec<float>;
  const V::R shift = V::set1(12582912.0f);
  V::R n = V::sub(V::fma(x, V::set1(1.44269504088896341f), shift), shift);
  V::R r = V::fnma(n, V::set1(0.693359375f), x);
  r = V::fnma(n, V::set1(-2.12194440e-4f), r);
  // Estrin's scheme: the callers are throughput-bound only if several of these chains
  // overlap, so depth (4 instead of Horner's 7 dependent operations) matters more than
  // the one extra multiply.
  V::R r2 = V::mul(r, r);
  V::R q01 = V::fma(V::set1(1.6666665459E-1f), r, V::set1(5.0000001201E-1f));
  V::R q23 = V::fma(V::set1(8.3334519073E-3f), r, V::set1(4.1665795894E-2f));
  V::R q45 = V::fma(V::set1(1.9875691500E-4f), r, V::set1(1.3981999507E-3f));
  V::R p = V::fma(q45, V::mul(r2, r2), V::fma(q23, r2, q01));
  p = V::fma(p, r2, V::add(r, V::set1(1.0f)));
  return {p, n};
}
inline ExpParts exp_parts(Vec<float>::R x) {
  using V = Vec<float>;
  return exp_parts_near(V::min(V::max(x, V::set1(-160.0f)), V::set1(100.0f)));
}
// m * p * 2^n for the parts of e^x.
inline Vec<float>::R exp_scale(const ExpParts& e, Vec<float>::R m) {
  return Vec<float>::scale2(Vec<float>::mul(m, e.p), e.n);
}

// m * e^x with the binary scaling last. NaN in x gives NaN.
inline Vec<float>::R exp_mul(Vec<float>::R x, Vec<float>::R m) {
  using V = Vec<float>;
  V::R y = exp_scale(exp_parts(x), m);
  return V::select(V::isnan(x), x, y);
}

inline Vec<float>::R exp(Vec<float>::R x) { return exp_mul(x, Vec<float>::set1(1.0f)); }

inline Vec<double>::R exp(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return std::exp(v); });
}

// tanh(x): |x| < 0.625: odd polynomial (Cephes tanhf); otherwise 1 - 2e/(1+e), e = e^{-2|x|},
// with the sign restored. 1 + e lies in (1, 1.3], so a refined reciprocal (V::rcp) replaces
// the division (a division per vector costs more than the rest of tanh on 512-bit units).
// |x| is clamped to 10 first: tanh rounds to exactly 1 from 9.02 on, and e = e^{-20} or more
// stays a normal float, so its scaling by 2^n is one exact multiply (no clamping, NaN or
// subnormal handling inside the exponential: a quarter of the work on Zen 3).
// AVX-512: tanh(x) = x T(|x|) with T(a) = tanh(a) / a, a degree-5 polynomial on each of 32
// intervals of [0, 9.125) (lut_poly, relative error < 1e-7, exact in relative terms down to
// the tiniest x), and +-1 from 9.125 on (tanh rounds to 1 from 9.02): ~8 multiply-class
// operations and 6 permutes per vector instead of ~25 operations with the small-|x|
// polynomial, the exponential and the reciprocal.
inline Vec<float>::R tanh(Vec<float>::R x) {
  using V = Vec<float>;
  V::R a = V::abs(x);
#if defined(__AVX512F__)
  const V::R one = V::copysign(V::set1(1.0f), x);
  return V::select(V::le(V::set1(TanhRatioTable::kHi), a), one, V::mul(x, lut_poly<TanhRatioTable>(kTanhRatio, a)));
#else
  V::R z = V::mul(x, x);
  V::R p = V::set1(-5.70498872745E-3f);
  p = V::fma(p, z, V::set1(2.06390887954E-2f));
  p = V::fma(p, z, V::set1(-5.37397155531E-2f));
  p = V::fma(p, z, V::set1(1.33314422036E-1f));
  p = V::fma(p, z, V::set1(-3.33332819422E-1f));
  V::R small = V::fma(V::mul(p, z), x, x);
  const ExpParts ep = exp_parts_near(V::mul(V::min(a, V::set1(10.0f)), V::set1(-2.0f)));  // NaN: min gives 10
  V::R e = V::mul(ep.p, V::pow2i(ep.n));  // n in [-29, 0]
  V::R big = V::fnma(V::add(e, e), V::rcp(V::add(e, V::set1(1.0f))), V::set1(1.0f));
  V::R y = V::select(V::lt(a, V::set1(0.625f)), small, V::copysign(big, x));
  return V::select(V::isnan(x), x, y);
#endif
}
inline Vec<double>::R tanh(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return std::tanh(v); });
}

// m * sigmoid(x + xlo) for a value given as a float plus a small correction xlo, accurate
// on both tails: with e = e^{-|x|} (never overflows), sigmoid = 1 / (1 + e) for x >= 0 and
// e / (1 + e) for x < 0, where m e is formed before the final binary scaling so a tiny
// sigmoid times a large m stays accurate. Far left (x < -200) the result is m * 0. 1 + e lies
// in [1, 2]: a refined reciprocal (V::rcp) replaces the division.
inline Vec<float>::R mul_sigmoid2(Vec<float>::R m, Vec<float>::R x, Vec<float>::R xlo) {
  using V = Vec<float>;
  const V::M neg = V::lt(x, V::zero());
  V::R na = V::sub(V::zero(), V::abs(x));
  V::R nlo = V::select(neg, xlo, V::sub(V::zero(), xlo));  // -|x| = x (x < 0) or -x
  ExpParts ep = exp_parts(na);
  V::R corr = V::add(V::set1(1.0f), nlo);
  V::R e = exp_scale(ep, corr);
  V::R me = exp_scale(ep, V::mul(m, corr));
  V::R inv = V::rcp(V::add(V::set1(1.0f), e));
  V::R y = V::mul(V::select(neg, me, m), inv);
  y = V::select(V::lt(x, V::set1(-200.0f)), V::mul(m, V::zero()), y);
  return V::select(V::isnan(x), x, y);
}
// m * sigmoid(x). AVX-512: for |x| < 16 (nearly every input in practice), S(a) = sigmoid(-a)
// is a degree-5 polynomial on each of 32 intervals of [0, 16) (lut_poly, relative error
// ~1e-8): sigmoid(x) = S(|x|) for x < 0, 1 - S(|x|) otherwise. ~8 multiply-class operations and
// 6 permutes per vector instead of ~18 with the exponential and the reciprocal. A vector with
// a lane past 16 (or NaN) also takes mul_sigmoid2, blended per lane, so a result never depends
// on its neighbours.
inline Vec<float>::R mul_sigmoid(Vec<float>::R m, Vec<float>::R x) {
#if defined(__AVX512F__)
  using V = Vec<float>;
  const V::R a = V::abs(x);
  const V::M ok = V::lt(a, V::set1(SigmoidNegTable::kHi));
  const V::R s = lut_poly<SigmoidNegTable>(kSigmoidNeg, a);
  const V::R y = V::mul(m, V::select(V::lt(x, V::zero()), s, V::sub(V::set1(1.0f), s)));
  if (__builtin_expect(ok == V::M(0xFFFF), 1)) return y;
  return V::select(ok, y, mul_sigmoid2(m, x, V::zero()));
#else
  return mul_sigmoid2(m, x, Vec<float>::zero());
#endif
}
inline Vec<double>::R mul_sigmoid(Vec<double>::R m, Vec<double>::R x) {
  using V = Vec<double>;
  V::R s = per_lane<V>(x, [](double v) {
    return v >= 0 ? 1.0 / (1.0 + std::exp(-v)) : std::exp(v) / (1.0 + std::exp(v));
  });
  return V::mul(m, s);
}
template <class V>
inline typename V::R sigmoid(typename V::R x) {
  return mul_sigmoid(V::set1(typename V::T(1)), x);
}

// erfc(z) = coef * e^s for z >= 0, relative error ~1e-7: erfc(z) = t exp(-z^2 + P(t)),
// t = 1/(1+z/2) (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7 everywhere). z^2
// arrives as an exact sum h (hi + lo), and what rounding -z^2 + P loses is folded into coef,
// so the exponent keeps full relative accuracy for large z. d = 1 + z/2.
struct ErfcParts {
  Vec<float>::R coef, s;
};
inline ErfcParts erfc_parts(Vec<float>::R d, Vec<float>::R hi, Vec<float>::R lo, Vec<float>::R h) {
  using V = Vec<float>;
  V::R t = V::rcp(d);  // d in [1, 7]: no division needed
  // P(t) = sum c_i t^i, i = 0..9, by Estrin's scheme (dependency depth 5, not 10).
  V::R t2 = V::mul(t, t);
  V::R t4 = V::mul(t2, t2);
  V::R q01 = V::fma(V::set1(1.00002368f), t, V::set1(-1.26551223f));
  V::R q23 = V::fma(V::set1(0.09678418f), t, V::set1(0.37409196f));
  V::R q45 = V::fma(V::set1(0.27886807f), t, V::set1(-0.18628806f));
  V::R q67 = V::fma(V::set1(1.48851587f), t, V::set1(-1.13520398f));
  V::R q89 = V::fma(V::set1(0.17087277f), t, V::set1(-0.82215223f));
  V::R q03 = V::fma(q23, t2, q01);
  V::R q47 = V::fma(q67, t2, q45);
  V::R p = V::fma(q89, V::mul(t4, t4), V::fma(q47, t4, q03));
  // z^2 = h (hi + lo) with h a power of two. s = p - h hi, and err = what its rounding lost,
  // minus h lo. Fast2Sum is exact where h hi >= |p| (large z, where the exponent's absolute
  // error matters); elsewhere |s| < 4 and its error is a few 1e-8, far below the polynomial's.
  V::R s = V::fnma(hi, h, p);
  V::R err = V::fnma(lo, h, V::sub(p, V::fma(hi, h, s)));
  return {V::fma(t, err, t), s};
}
// z*z = hi + lo exactly (z clamped to 12: erfc(12) ~ 1e-64 is 0 in float; keeps z*z finite).
inline ErfcParts erfc_parts(Vec<float>::R z) {
  using V = Vec<float>;
  z = V::min(z, V::set1(12.0f));
  V::R hi = V::mul(z, z);
  return erfc_parts(V::fma(z, V::set1(0.5f), V::set1(1.0f)), hi, V::fms(z, z, hi), V::set1(1.0f));
}
inline Vec<float>::R erfc_pos(Vec<float>::R z) {
  ErfcParts e = erfc_parts(z);
  return exp_mul(e.s, e.coef);
}

// erf(x): |x| < 0.5 by its Taylor series (x P(x^2), error < 1e-8); otherwise 1 - erfc(|x|).
inline Vec<float>::R erf(Vec<float>::R x) {
  using V = Vec<float>;
  V::R z = V::mul(x, x);
  // 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), n = 0..7, in Horner form over x^2
  const float c = 1.12837916709551257f;
  V::R p = V::set1(-c / 75600.0f);
  p = V::fma(p, z, V::set1(c / 9360.0f));
  p = V::fma(p, z, V::set1(-c / 1320.0f));
  p = V::fma(p, z, V::set1(c / 216.0f));
  p = V::fma(p, z, V::set1(-c / 42.0f));
  p = V::fma(p, z, V::set1(c / 10.0f));
  p = V::fma(p, z, V::set1(-c / 3.0f));
  p = V::fma(p, z, V::set1(c));
  V::R small = V::mul(p, x);
  V::R a = V::abs(x);
  V::R big = V::copysign(V::sub(V::set1(1.0f), erfc_pos(a)), x);
  V::R y = V::select(V::lt(a, V::set1(0.5f)), small, big);
  return V::select(V::isnan(x), x, y);
}
inline Vec<double>::R erf(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return std::erf(v); });
}

// erfc(|x| / sqrt 2) as parts, with z^2 = x^2 / 2 taken exactly from x (not from a
// rounded x / sqrt 2, whose error would be amplified by z^2 in the exponent).
inline ErfcParts erfc_parts_normal(Vec<float>::R x) {
  using V = Vec<float>;
  V::R a = V::min(V::abs(x), V::set1(17.0f));
  V::R hi = V::mul(a, a);
  V::R d = V::fma(a, V::set1(0.35355339059327376f), V::set1(1.0f));  // 1 + (a / sqrt 2) / 2
  return erfc_parts(d, hi, V::fms(a, a, hi), V::set1(0.5f));
}

// Phi(x) = P(N(0,1) <= x) = erfc(-x/sqrt 2) / 2, accurate in relative terms on both tails.
inline Vec<float>::R normal_cdf(Vec<float>::R x) {
  using V = Vec<float>;
  ErfcParts e = erfc_parts_normal(x);
  V::R half_erfc = exp_mul(e.s, V::mul(V::set1(0.5f), e.coef));
  V::R y = V::select(V::lt(x, V::zero()), half_erfc, V::sub(V::set1(1.0f), half_erfc));
  return V::select(V::isnan(x), x, y);
}
inline Vec<double>::R normal_cdf(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return 0.5 * std::erfc(-v * 0.70710678118654752440); });
}

// gelu(x) = x Phi(x), one exp. With q = Phi(-|x|) = erfc(|x|/sqrt 2) / 2: x q for x < 0,
// where the factor x joins before the final binary scaling (x q stays accurate where q alone
// would be subnormal), and x (1 - q) for x >= 0. ~37 multiply-class operations per vector.
inline Vec<float>::R gelu_exact(Vec<float>::R x) {
  using V = Vec<float>;
  ErfcParts e = erfc_parts_normal(x);
  ExpParts ep = exp_parts_near(e.s);  // s lies in [-146, 0]
  const V::M neg = V::lt(x, V::zero());
  V::R hc = V::mul(V::set1(0.5f), e.coef);
  V::R q = exp_scale(ep, V::select(neg, V::mul(hc, x), hc));
  V::R y = V::select(neg, q, V::mul(x, V::sub(V::set1(1.0f), q)));  // x (1 - q): inf at +inf
  // x < -20 (|x Phi(x)| < 1e-87, where the clamped erfc no longer follows x), NaN and -inf
  // give x * 0: -0, NaN, NaN (PyTorch's -inf * Phi(-inf)).
  return V::select(V::nge(x, V::set1(-20.0f)), V::mul(x, V::zero()), y);
}

// gelu(x) = x Phi(x). AVX-512: with a = |x| and q = Phi(-a) = R(a) e^{-a^2/2}, where
// R(a) = erfcx(a/sqrt2)/2 is smooth and slowly varying, R comes from a degree-5 polynomial
// on each of 32 intervals of [0, 14) (lut_poly, relative error ~1e-7), and e^{-a^2/2} from the
// vector exp, with a^2 = hi + lo exact and e^{-lo/2} = 1 - lo/2 folded into the factor. That
// is ~27 multiply-class operations against gelu_exact's ~37 (its erfc's reciprocal, degree-9
// polynomial and error terms go), which is what bounds gelu on 512-bit units. As in
// gelu_exact, x < 0 gives x q with x joined before the final binary scaling, x >= 0 gives
// x (1 - q), and x < -14 (|gelu| < 1e-43), NaN and -inf give x * 0. Other ISAs: gelu_exact.
inline Vec<float>::R gelu(Vec<float>::R x) {
#if defined(__AVX512F__)
  using V = Vec<float>;
  const V::R a = V::min(V::abs(x), V::set1(GeluRTable::kHi));  // NaN -> 14 (replaced at the end)
  const V::R hi = V::mul(a, a), lo = V::fms(a, a, hi);
  const ExpParts ep = exp_parts_near(V::mul(hi, V::set1(-0.5f)));  // exponent in [-98, 0]
  V::R r = lut_poly<GeluRTable>(kGeluR, a);
  r = V::fnma(V::mul(lo, V::set1(0.5f)), r, r);  // R e^{-lo/2}
  const V::M neg = V::lt(x, V::zero());
  const V::R q = exp_scale(ep, V::select(neg, V::mul(r, x), r));  // x q (x < 0) or q
  const V::R y = V::select(neg, q, V::mul(x, V::sub(V::set1(1.0f), q)));
  return V::select(V::nge(x, V::set1(-GeluRTable::kHi)), V::mul(x, V::zero()), y);
#else
  return gelu_exact(x);
#endif
}
inline Vec<double>::R gelu(Vec<double>::R x) { return Vec<double>::mul(x, normal_cdf(x)); }

// d gelu / dx = Phi(x) + x phi(x), phi(x) = e^{-x^2/2} / sqrt(2 pi), from normal_cdf and exp
// (float64, and float32 on ISAs without the tables).
template <class V> inline typename V::R gelu_grad_generic(typename V::R x) {
  using T = typename V::T;
  const typename V::R phi = V::mul(V::set1(T(0.39894228040143267794)), exp(V::mul(V::set1(T(-0.5)), V::mul(x, x))));
  return V::fma(x, phi, normal_cdf(x));
}
// The same for float32. AVX-512: Phi(-|x|) as in
// gelu (R from the table times e^{-x^2/2}), and phi from the same exponential: ~29
// multiply-class operations instead of an erfc-based Phi and a second exponential (~50).
// x < -14 (|result| < 1e-42), NaN and -inf give x * 0.
inline Vec<float>::R gelu_grad(Vec<float>::R x) {
  using V = Vec<float>;
#if defined(__AVX512F__)
  const V::R a = V::min(V::abs(x), V::set1(GeluRTable::kHi));  // NaN -> 14 (replaced at the end)
  const V::R hi = V::mul(a, a), lo = V::fms(a, a, hi);
  const ExpParts ep = exp_parts_near(V::mul(hi, V::set1(-0.5f)));  // exponent in [-98, 0]
  const V::R corr = V::fnma(lo, V::set1(0.5f), V::set1(1.0f));    // e^{-lo/2}
  const V::R q = exp_scale(ep, V::mul(lut_poly<GeluRTable>(kGeluR, a), corr));  // Phi(-|x|)
  const V::R phi = exp_scale(ep, V::mul(corr, V::set1(0.39894228040143267794f)));
  const V::R cdf = V::select(V::lt(x, V::zero()), q, V::sub(V::set1(1.0f), q));
  return V::select(V::nge(x, V::set1(-GeluRTable::kHi)), V::mul(x, V::zero()), V::fma(x, phi, cdf));
#else
  return gelu_grad_generic<V>(x);
#endif
}
inline Vec<double>::R gelu_grad(Vec<double>::R x) { return gelu_grad_generic<Vec<double>>(x); }

// gelu, tanh form: x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3). 2u reaches -90 where
// the result is still a normal float, so it is carried as a float pair (FMA error-free
// products, split constants): one float of 2u alone would cost ~1e-5 relative there.
inline Vec<float>::R gelu_tanh(Vec<float>::R x) {
  using V = Vec<float>;
  const double k2 = 2 * 0.79788456080286535588, c = 0.044715;
  const V::R k2_hi = V::set1(float(k2)), k2_lo = V::set1(float(k2 - double(float(k2))));
  const V::R c_hi = V::set1(float(c)), c_lo = V::set1(float(c - double(float(c))));
  const V::R one = V::set1(1.0f), zero = V::zero();
  V::R x2 = V::mul(x, x), x2lo = V::fms(x, x, x2);
  V::R t = V::mul(c_hi, x2);
  V::R tlo = V::add(V::fms(c_hi, x2, t), V::fma(c_hi, x2lo, V::mul(c_lo, x2)));
  V::R w = V::add(one, t), bb = V::sub(w, one);
  V::R wlo = V::add(V::add(V::sub(one, V::sub(w, bb)), V::sub(t, bb)), tlo);
  V::R v = V::mul(k2_hi, x), vlo = V::fma(k2_lo, x, V::fms(k2_hi, x, v));
  V::R a = V::mul(v, w);
  V::R alo = V::add(V::fms(v, w, a), V::fma(v, wlo, V::mul(vlo, w)));
  alo = V::select(V::gt(V::abs(x), V::set1(1e4f)), zero, alo);  // far out 2u overflows; sigmoid is 0 or 1
  return mul_sigmoid2(x, a, alo);
}
inline Vec<double>::R gelu_tanh(Vec<double>::R x) {
  using V = Vec<double>;
  V::R x3 = V::mul(V::mul(x, x), x);
  V::R u2 = V::mul(V::set1(2 * 0.79788456080286535588), V::fma(V::set1(0.044715), x3, x));
  return mul_sigmoid(x, u2);
}

template <class V>
inline typename V::R log_lanes(typename V::R x) {
  return per_lane<V>(x, [](typename V::T v) { return std::log(v); });
}

}  // namespace vm
}  // namespace SEQCORE_ISA
}  // namespace seqcore
