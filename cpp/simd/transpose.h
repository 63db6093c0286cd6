// Out-of-place transposes for packing (per ISA): dst[c * ldd + r] = src[r * lds + c].
// Blocks of 8 float rows (8 x 8) or 4 double rows (4 x 4) go through AVX2 shuffles where the ISA
// has them; edges are plain loops. Shared by the GEMM's packing and attention's K^T / V^T.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef SEQCORE_ISA
#error "transpose.h is for per-ISA translation units"
#endif

namespace seqcore {
namespace SEQCORE_ISA {

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

// dst[c * ldd + r] = src[r * lds + c] for a 4 x 4 block of doubles.
inline void transpose4x4(const double* src, int64_t lds, double* dst, int64_t ldd) {
  __m256d r0 = _mm256_loadu_pd(src + 0 * lds), r1 = _mm256_loadu_pd(src + 1 * lds);
  __m256d r2 = _mm256_loadu_pd(src + 2 * lds), r3 = _mm256_loadu_pd(src + 3 * lds);
  __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
  __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(dst + 0 * ldd, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(dst + 1 * ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
}

#endif

// Generic strided transpose: dst[c * ldd + r] = src[r * lds + c], rows x cols; blocks of
// 8 float rows / 4 double rows go through SIMD where the ISA has it.
template <class T> constexpr int kTransRows = std::is_same_v<T, float> ? 8 : 4;
template <class T>
inline void transpose_block(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  int64_t c0 = 0;
#if defined(__AVX2__)
  if (rows == kTransRows<T>) {
    if constexpr (std::is_same_v<T, float>) {
      for (; c0 + 8 <= cols; c0 += 8) transpose8x8(src + c0, lds, dst + c0 * ldd, ldd);
    } else {
      for (; c0 + 4 <= cols; c0 += 4) transpose4x4(src + c0, lds, dst + c0 * ldd, ldd);
    }
  }
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = c0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// Any number of rows: blocks of kTransRows<T> rows through transpose_block.
template <class T>
inline void transpose_rows(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  constexpr int64_t R = kTransRows<T>;
  for (int64_t r0 = 0; r0 < rows; r0 += R)
    transpose_block<T>(src + r0 * lds, lds, std::min<int64_t>(R, rows - r0), cols, dst + r0, ldd);
}

}  // namespace SEQCORE_ISA
}  // namespace seqcore
