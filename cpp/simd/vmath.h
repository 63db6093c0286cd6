// Vector transcendental functions on Vec<T>, written once for every ISA.
//
// float32: polynomial/rational approximations, max relative error < 2e-6 against float64
// over the whole float range (tests/test_vmath.py): exact at 0, saturating correctly at
// +-inf, NaN in -> NaN out, no spurious overflow for large inputs. float64: libm per lane.
#pragma once
#include "simd/vec.h"

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

// exp(x): n = round(x / ln2), r = x - n ln2 (two-constant Cody-Waite), e^r by a degree-7
// polynomial (Cephes expf), scaled by 2^n as 2^(n/2) * 2^(n - n/2) so results in the
// subnormal range and overflow to +inf come out right without special cases.
inline Vec<float>::R exp(Vec<float>::R x) {
  using V = Vec<float>;
  V::R xc = V::min(V::max(x, V::set1(-160.0f)), V::set1(100.0f));
  V::R n = V::round(V::mul(xc, V::set1(1.44269504088896341f)));
  V::R r = V::fnma(n, V::set1(0.693359375f), xc);
  r = V::fnma(n, V::set1(-2.12194440e-4f), r);
  V::R p = V::set1(1.9875691500E-4f);
  p = V::fma(p, r, V::set1(1.3981999507E-3f));
  p = V::fma(p, r, V::set1(8.3334519073E-3f));
  p = V::fma(p, r, V::set1(4.1665795894E-2f));
  p = V::fma(p, r, V::set1(1.6666665459E-1f));
  p = V::fma(p, r, V::set1(5.0000001201E-1f));
  p = V::fma(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  V::R n1 = V::round(V::mul(n, V::set1(0.5f)));
  n1 = V::select(V::gt(n1, V::mul(n, V::set1(0.5f))), V::sub(n1, V::set1(1.0f)), n1);  // floor(n/2)
  V::R n2 = V::sub(n, n1);
  V::R y = V::mul(V::mul(p, V::pow2i(n1)), V::pow2i(n2));
  return V::select(V::isnan(x), x, y);
}
inline Vec<double>::R exp(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return std::exp(v); });
}

// tanh(x): |x| < 0.625: odd polynomial (Cephes tanhf); otherwise 1 - 2/(e^{2|x|}+1) with
// the sign restored. e^{2|x|} overflowing to inf gives exactly 1.
inline Vec<float>::R tanh(Vec<float>::R x) {
  using V = Vec<float>;
  V::R a = V::abs(x);
  V::R z = V::mul(x, x);
  V::R p = V::set1(-5.70498872745E-3f);
  p = V::fma(p, z, V::set1(2.06390887954E-2f));
  p = V::fma(p, z, V::set1(-5.37397155531E-2f));
  p = V::fma(p, z, V::set1(1.33314422036E-1f));
  p = V::fma(p, z, V::set1(-3.33332819422E-1f));
  V::R small = V::fma(V::mul(p, z), x, x);
  V::R e = exp(V::add(a, a));
  V::R big = V::sub(V::set1(1.0f), V::div(V::set1(2.0f), V::add(e, V::set1(1.0f))));
  big = V::copysign(big, x);
  V::R y = V::select(V::lt(a, V::set1(0.625f)), small, big);
  return V::select(V::isnan(x), x, y);
}
inline Vec<double>::R tanh(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return std::tanh(v); });
}

// sigmoid(x) = 1 / (1 + e^{-x}); e^{-x} = inf gives exactly 0.
template <class V>
inline typename V::R sigmoid(typename V::R x) {
  typename V::R one = V::set1(typename V::T(1));
  return V::div(one, V::add(one, exp(V::sub(V::zero(), x))));
}

// erfc(z) for z >= 0 with relative error ~1e-7: erfc(z) = t exp(-z^2 + P(t)), t = 1/(1+z/2)
// (Numerical Recipes' Chebyshev fit, relative error < 1.2e-7 everywhere). z^2 is split into
// an exact high part and a low part so the exponent keeps full relative accuracy for large z.
inline Vec<float>::R erfc_pos(Vec<float>::R z) {
  using V = Vec<float>;
  z = V::min(z, V::set1(12.0f));  // erfc(12) ~ 1e-64: 0 in float; keeps z*z finite
  V::R t = V::div(V::set1(1.0f), V::fma(z, V::set1(0.5f), V::set1(1.0f)));
  V::R p = V::set1(0.17087277f);
  p = V::fma(p, t, V::set1(-0.82215223f));
  p = V::fma(p, t, V::set1(1.48851587f));
  p = V::fma(p, t, V::set1(-1.13520398f));
  p = V::fma(p, t, V::set1(0.27886807f));
  p = V::fma(p, t, V::set1(-0.18628806f));
  p = V::fma(p, t, V::set1(0.09678418f));
  p = V::fma(p, t, V::set1(0.37409196f));
  p = V::fma(p, t, V::set1(1.00002368f));
  p = V::fma(p, t, V::set1(-1.26551223f));
  V::R hi = V::mul(z, z);
  V::R lo = V::fma(z, z, V::sub(V::zero(), hi));  // z*z - hi, exact
  // s = P - hi rounded; TwoSum recovers what the rounding lost, then subtract lo too.
  V::R nhi = V::sub(V::zero(), hi);
  V::R s = V::add(p, nhi);
  V::R bb = V::sub(s, p);
  V::R err = V::add(V::sub(p, V::sub(s, bb)), V::sub(nhi, bb));
  err = V::sub(err, lo);
  V::R e = exp(s);
  return V::mul(t, V::fma(e, err, e));
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

// Phi(x) = P(N(0,1) <= x) = erfc(-x/sqrt 2) / 2, accurate in relative terms on both tails.
inline Vec<float>::R normal_cdf(Vec<float>::R x) {
  using V = Vec<float>;
  V::R z = V::mul(V::abs(x), V::set1(0.70710678118654752f));
  V::R half_erfc = V::mul(V::set1(0.5f), erfc_pos(z));
  V::R y = V::select(V::lt(x, V::zero()), half_erfc, V::sub(V::set1(1.0f), half_erfc));
  return V::select(V::isnan(x), x, y);
}
inline Vec<double>::R normal_cdf(Vec<double>::R x) {
  return per_lane<Vec<double>>(x, [](double v) { return 0.5 * std::erfc(-v * 0.70710678118654752440); });
}

template <class V>
inline typename V::R log_lanes(typename V::R x) {
  return per_lane<V>(x, [](typename V::T v) { return std::log(v); });
}

}  // namespace vm
}  // namespace SEQCORE_ISA
}  // namespace seqcore
