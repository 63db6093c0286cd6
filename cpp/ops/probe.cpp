// Peak-rate probe for benchmarks: FMAs on 12 independent vector accumulators (enough to
// cover FMA latency x throughput on every ISA here), so flops / second ~ the core's peak.
#include <cstdint>

#include "simd/vec.h"

namespace seqcore {
namespace SEQCORE_ISA {

volatile float probe_sink;

double fma_probe(int64_t iters) {
  using V = Vec<float>;
  constexpr int NA = 12;
  volatile float seed = 1.0f;
  typename V::R acc[NA];
  for (int j = 0; j < NA; ++j) acc[j] = V::set1(seed * float(j + 1) * 1e-3f);
  const auto b = V::set1(seed * 0.999999f), c = V::set1(seed * 1e-6f);
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int j = 0; j < NA; ++j) acc[j] = V::fma(acc[j], b, c);
  }
  auto s = acc[0];
  for (int j = 1; j < NA; ++j) s = V::add(s, acc[j]);
  probe_sink = V::reduce_add(s);
  return double(iters) * NA * V::W * 2.0;
}

}  // namespace SEQCORE_ISA
}  // namespace seqcore
