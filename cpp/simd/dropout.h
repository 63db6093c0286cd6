// Counter-based dropout masks shared by the attention and dropout kernels (per ISA).
// keep(key, j) = mix32(key, j) >= thr, thr = p 2^32, where key is derived from the seed and a
// row index (row_key): a stream that backward regenerates instead of storing a mask. The
// multiplier is keep / (1 - p). Same bits on every ISA (the vector paths compute mix32 exactly).
#pragma once
#include <algorithm>
#include <cstdint>

#include "simd/vec.h"

namespace seqcore {
namespace SEQCORE_ISA {

// keep(h, i, j) = hash(row_key(seed, h, i), j) >= thr with thr = p 2^32: a counter-based
// stream, so backward regenerates forward's mask; multiplier keep / (1 - p).
struct Dropout {
  bool on = false;
  uint32_t thr = 0;
  double inv_keep = 1.0;
  uint64_t seed = 0;
};
inline Dropout make_dropout(double p, uint64_t seed) {
  Dropout d;
  if (!(p > 0.0)) return d;
  d.on = true;
  d.thr = uint32_t(std::min(p * 4294967296.0, 4294967295.0));
  d.inv_keep = 1.0 / (1.0 - p);
  d.seed = seed;
  return d;
}
inline uint32_t row_key(uint64_t seed, int64_t h, int64_t L, int64_t i) {
  uint64_t z = seed + 0x9E3779B97F4A7C15ull * uint64_t(h * L + i + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return uint32_t(z ^ (z >> 31));
}
inline uint32_t mix32(uint32_t key, uint32_t j) {
  uint32_t x = key + j * 0x9E3779B9u;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return x;
}
// Per-lane multiplier (keep / (1 - p), or 0) for keys j .. j + W - 1.
template <class V>
inline typename V::R dropout_mult(const Dropout& d, uint32_t key, int64_t j) {
  using T = typename V::T;
#if defined(__AVX512F__)
  if constexpr (sizeof(T) == 4) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512i jv = _mm512_add_epi32(_mm512_set1_epi32(int(uint32_t(j))), iota);
    __m512i x = _mm512_add_epi32(_mm512_set1_epi32(int(key)), _mm512_mullo_epi32(jv, _mm512_set1_epi32(int(0x9E3779B9u))));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(int(0x85EBCA6Bu)));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 13));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32(int(0xC2B2AE35u)));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    __mmask16 keep = _mm512_cmpge_epu32_mask(x, _mm512_set1_epi32(int(d.thr)));
    return _mm512_maskz_mov_ps(keep, _mm512_set1_ps(float(d.inv_keep)));
  }
#elif defined(__AVX2__)
  if constexpr (sizeof(T) == 4) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i jv = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(j))), iota);
    __m256i x = _mm256_add_epi32(_mm256_set1_epi32(int(key)), _mm256_mullo_epi32(jv, _mm256_set1_epi32(int(0x9E3779B9u))));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(int(0x85EBCA6Bu)));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 13));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(int(0xC2B2AE35u)));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    const __m256i flip = _mm256_set1_epi32(int(0x80000000u));
    // unsigned x >= thr  <=>  !(thr > x) with the sign bit flipped for a signed compare
    __m256i lt = _mm256_cmpgt_epi32(_mm256_xor_si256(_mm256_set1_epi32(int(d.thr)), flip), _mm256_xor_si256(x, flip));
    return _mm256_andnot_ps(_mm256_castsi256_ps(lt), _mm256_set1_ps(float(d.inv_keep)));
  }
#endif
  alignas(64) T m[V::W];
  for (int l = 0; l < V::W; ++l) m[l] = mix32(key, uint32_t(j + l)) >= d.thr ? T(d.inv_keep) : T(0);
  return V::load(m);
}

}  // namespace SEQCORE_ISA
}  // namespace seqcore
