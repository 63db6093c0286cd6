// Activation kernels (compiled once per ISA). See activations.h for the formulas.
#include "ops/activations.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "simd/act.h"
#include "simd/vec.h"
#include "simd/vmath.h"
#include "simd/workspace.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per parallel work item
thread_local Scratch tls_row;     // softmax: a row of exponentials when the output streams

inline int pool_threads(int64_t items) {
  if (omp_in_parallel() || items <= 1) return 1;
  return int(std::min<int64_t>(omp_get_max_threads(), items));
}

// y[i] = f(x[i]) over n elements, vectorised with a masked tail, parallel in fixed chunks.
// Outputs of kStreamBytes or more are written with non-temporal stores from the first
// 64-byte boundary of each chunk on. Flattened: f is inlined into each of its (three) uses
// here, whatever GCC's size limits would otherwise decide for the larger vector functions
// (an out-of-line vm::gelu costs a call and the spills of every live vector around it).
template <class V, bool NT, class F>
__attribute__((flatten)) inline void map1_chunk(const typename V::T* x, typename V::T* y, int64_t i,
                                                int64_t end, F f) {
  constexpr int W = V::W;
  if (NT) {
    if (int64_t head = until_aligned<typename V::T, typename V::R>(y + i, end - i)) {
      V::store_n(y + i, f(V::load_n(x + i, int(head))), int(head));
      i += head;
    }
  }
  // U independent vectors per iteration: the long dependency chains of the vector math
  // (exp, erfc: ~40 dependent operations) overlap instead of waiting on each other. Four on
  // AVX2 too, although its 16 registers spill some constants (Zen 3, A/B: two chains were
  // 5-10% slower for tanh, sigmoid and gelu).
  constexpr int U = 4;
  for (; i + U * W <= end; i += U * W) {
    typename V::R r[U];
    for (int u = 0; u < U; ++u) r[u] = f(V::load(x + i + u * W));
    for (int u = 0; u < U; ++u) {
      if constexpr (NT) V::stream(y + i + u * W, r[u]);
      else V::store(y + i + u * W, r[u]);
    }
  }
  // The rest (under U vectors), the last one masked; the stores here are normal ones.
  for (; i < end; i += W) {
    const int cnt = int(std::min<int64_t>(W, end - i));
    V::store_n(y + i, f(V::load_n(x + i, cnt)), cnt);
  }
}

template <class V, class F>
void map1(const typename V::T* x, typename V::T* y, int64_t n, F f) {
  int64_t chunks = (n + kGrain - 1) / kGrain;
  const bool nt = n * int64_t(sizeof(typename V::T)) >= kStreamBytes && x != y;
#pragma omp parallel num_threads(pool_threads(chunks))
  {
#pragma omp for schedule(static) nowait
    for (int64_t ch = 0; ch < chunks; ++ch) {
      int64_t i = ch * kGrain, end = std::min(n, i + kGrain);
      if (nt) map1_chunk<V, true>(x, y, i, end, f);
      else map1_chunk<V, false>(x, y, i, end, f);
    }
    if (nt) stream_fence();
  }
}

template <class V, class F>
void map2(const typename V::T* a, const typename V::T* b, typename V::T* y, int64_t n, F f) {
  constexpr int W = V::W;
  int64_t chunks = (n + kGrain - 1) / kGrain;
#pragma omp parallel for num_threads(pool_threads(chunks)) schedule(static)
  for (int64_t ch = 0; ch < chunks; ++ch) {
    int64_t i = ch * kGrain, end = std::min(n, i + kGrain);
    for (; i + W <= end; i += W) V::store(y + i, f(V::load(a + i), V::load(b + i)));
    if (i < end) {
      int cnt = int(end - i);
      V::store_n(y + i, f(V::load_n(a + i, cnt), V::load_n(b + i, cnt)), cnt);
    }
  }
}

}  // namespace

template <class T> void unary_forward(Unary op, T param, const T* x, T* y, int64_t n) {
  using V = Vec<T>;
  using R = typename V::R;
  switch (op) {
    case Unary::identity: if (x != y) std::memmove(y, x, size_t(n) * sizeof(T)); return;
    case Unary::tanh: return map1<V>(x, y, n, [](R v) { return act_v<V>(Act::tanh, v); });
    case Unary::sigmoid: return map1<V>(x, y, n, [](R v) { return act_v<V>(Act::sigmoid, v); });
    case Unary::relu: return map1<V>(x, y, n, [](R v) { return act_v<V>(Act::relu, v); });
    case Unary::silu: return map1<V>(x, y, n, [](R v) { return act_v<V>(Act::silu, v); });
    case Unary::gelu: return map1<V>(x, y, n, [](R v) { return act_v<V>(Act::gelu, v); });
    case Unary::gelu_tanh: return map1<V>(x, y, n, [](R v) { return act_v<V>(Act::gelu_tanh, v); });
    case Unary::exp: return map1<V>(x, y, n, [](R v) { return vm::exp(v); });
    case Unary::erf: return map1<V>(x, y, n, [](R v) { return vm::erf(v); });
    case Unary::leaky_relu: {
      R s = V::set1(param);
      return map1<V>(x, y, n, [s](R v) { return V::select(V::gt(v, V::zero()), v, V::mul(v, s)); });
    }
  }
}

template <class T>
void unary_backward(Unary op, T param, const T* dy, const T* saved, T* dx, int64_t n) {
  using V = Vec<T>;
  using R = typename V::R;
  const R one = V::set1(T(1));
  switch (op) {
    case Unary::identity: if (dy != dx) std::memmove(dx, dy, size_t(n) * sizeof(T)); return;
    case Unary::exp:  // saved = y = exp(x)
      return map2<V>(dy, saved, dx, n, [](R g, R y) { return V::mul(g, y); });
    case Unary::tanh:  // saved = y: dx = dy (1 - y^2)
      return map2<V>(dy, saved, dx, n, [one](R g, R y) { return V::mul(g, V::fnma(y, y, one)); });
    case Unary::sigmoid:  // saved = y: dx = dy y (1 - y)
      return map2<V>(dy, saved, dx, n, [one](R g, R y) { return V::mul(V::mul(g, y), V::sub(one, y)); });
    case Unary::relu:  // dx = x <= 0 ? 0 : dy
      return map2<V>(dy, saved, dx, n, [](R g, R x) { return V::select(V::le(x, V::zero()), V::zero(), g); });
    case Unary::leaky_relu: {
      R s = V::set1(param);
      return map2<V>(dy, saved, dx, n, [s](R g, R x) { return V::select(V::gt(x, V::zero()), g, V::mul(g, s)); });
    }
    case Unary::silu:  // s = sigmoid(x): dx = dy s (1 + x (1 - s))
      return map2<V>(dy, saved, dx, n, [one](R g, R x) {
        R s = vm::sigmoid<V>(x);
        return V::mul(V::mul(g, s), V::fma(x, V::sub(one, s), one));
      });
    case Unary::gelu:  // dx = dy (Phi(x) + x phi(x)), phi(x) = exp(-x^2/2) / sqrt(2 pi)
      return map2<V>(dy, saved, dx, n, [](R g, R x) { return V::mul(g, vm::gelu_grad(x)); });
    case Unary::gelu_tanh:  // y = x s(2u), u = k (x + c x^3): dy/dx = s + 2 k x s (1 - s)(1 + 3 c x^2)
      return map2<V>(dy, saved, dx, n, [one](R g, R x) {
        const R k = V::set1(T(0.79788456080286535588)), c = V::set1(T(0.044715));
        R x2 = V::mul(x, x);
        R u2 = V::mul(V::add(k, k), V::fma(V::mul(c, x2), x, x));
        R s = vm::sigmoid<V>(u2);
        R du = V::mul(V::add(k, k), V::fma(V::mul(V::set1(T(3)), c), x2, one));
        R d = V::fma(V::mul(V::mul(x, s), V::sub(one, s)), du, s);
        return V::mul(g, d);
      });
    case Unary::erf:  // d erf = 2/sqrt(pi) exp(-x^2)
      return map2<V>(dy, saved, dx, n, [](R g, R x) {
        return V::mul(g, V::mul(V::set1(T(1.12837916709551257390)), vm::exp(V::sub(V::zero(), V::mul(x, x)))));
      });
  }
}

template <class T> void prelu_forward(const T* x, const T* w, T* y, int64_t outer, int64_t c, int64_t inner) {
  using V = Vec<T>;
  constexpr int W = V::W;
  int64_t rows = outer * c;
#pragma omp parallel for num_threads(pool_threads(rows * inner / kGrain + 1)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    auto s = V::set1(w[r % c]);
    const T* xr = x + r * inner;
    T* yr = y + r * inner;
    for (int64_t i = 0; i < inner; i += W) {
      int cnt = int(std::min<int64_t>(W, inner - i));
      auto v = V::load_n(xr + i, cnt);
      V::store_n(yr + i, V::select(V::gt(v, V::zero()), v, V::mul(v, s)), cnt);
    }
  }
}

template <class T>
void prelu_backward(const T* dy, const T* x, const T* w, T* dx, T* dw, int64_t outer, int64_t c, int64_t inner) {
  using V = Vec<T>;
  constexpr int W = V::W;
  // dw[ch] is reduced over (outer, inner) in fixed chunks of `oc` outer rows, summed in chunk
  // order afterwards: the same bits for any thread count.
  const int64_t oc = std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1));
  const int64_t nchunk = (outer + oc - 1) / oc;
  thread_local Scratch part_buf;
  T* part = part_buf.get<T>(size_t(std::max<int64_t>(nchunk * c, 1)));
  const int64_t items = nchunk * c;
#pragma omp parallel for num_threads(pool_threads(items)) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    int64_t ch = it % c, chunk = it / c;
    auto s = V::set1(w[ch]);
    auto acc = V::zero();
    int64_t o1 = std::min(outer, (chunk + 1) * oc);
    for (int64_t o = chunk * oc; o < o1; ++o) {
      int64_t base = (o * c + ch) * inner;
      for (int64_t i = 0; i < inner; i += W) {
        int cnt = int(std::min<int64_t>(W, inner - i));
        auto g = V::load_n(dy + base + i, cnt);
        auto v = V::load_n(x + base + i, cnt);
        auto pos = V::gt(v, V::zero());
        V::store_n(dx + base + i, V::select(pos, g, V::mul(g, s)), cnt);
        acc = V::add(acc, V::select(pos, V::zero(), V::mul(v, g)));
      }
    }
    part[chunk * c + ch] = V::reduce_add(acc);
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    T s = T(0);
    for (int64_t chunk = 0; chunk < nchunk; ++chunk) s += part[chunk * c + ch];
    dw[ch] = s;
  }
}

namespace {

// One softmax row of n contiguous elements. NT: y is written with non-temporal stores, and
// the exponentials wait in buf (n elements, in cache) rather than in y, whose lines a normal
// store would first read from memory.
template <class T, bool NT> void softmax_row(bool log, const T* x, T* y, int64_t n, T* buf) {
  using V = Vec<T>;
  constexpr int W = V::W;
  const T ninf = -std::numeric_limits<T>::infinity();
  auto vm_ = V::set1(ninf);
  int64_t i = 0;
  for (; i + W <= n; i += W) vm_ = V::max(V::load(x + i), vm_);
  T mx = V::reduce_max(vm_);
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  // A NaN anywhere makes the sum, hence the whole row, NaN (as NumPy): no separate scan.
  auto vmax = V::set1(mx);
  auto vs = V::zero();
  T tail = T(0);
  i = 0;
  if (!log) {
    T* e = NT ? buf : y;
    for (; i + W <= n; i += W) {
      auto v = vm::exp(V::sub(V::load(x + i), vmax));
      V::store(e + i, v);
      vs = V::add(vs, v);
    }
    if (i < n) {
      int cnt = int(n - i);
      auto v = vm::exp(V::sub(V::load_n(x + i, cnt), vmax));
      V::store_n(e + i, v, cnt);
      tail = V::reduce_add(V::load_n(e + i, cnt));  // lanes past n load as 0
    }
    T sum = V::reduce_add(vs) + tail;
    auto inv = V::set1(T(1) / sum);
    store_row<V, NT>(y, n, [&](int64_t j, int cnt) { return V::mul(V::load_n(e + j, cnt), inv); });
  } else {
    for (; i + W <= n; i += W) vs = V::add(vs, vm::exp(V::sub(V::load(x + i), vmax)));
    if (i < n) {
      int cnt = int(n - i);
      alignas(64) T tb[V::W];
      V::store(tb, vm::exp(V::sub(V::load_n(x + i, cnt), vmax)));
      for (int l = 0; l < cnt; ++l) tail += tb[l];
    }
    T sum = V::reduce_add(vs) + tail;
    // (x - max) - log(sum), not x - (max + log(sum)): max + log(sum) would round at the
    // magnitude of max and cost every output that rounding error.
    auto vl = V::set1(std::log(sum));
    store_row<V, NT>(y, n, [&](int64_t j, int cnt) { return V::sub(V::sub(V::load_n(x + j, cnt), vmax), vl); });
  }
}

// Softmax over a strided axis: x[o, j, i] for j < n, a vector of `cnt` contiguous i's at once.
template <class T>
void softmax_strided(bool log, const T* x, T* y, int64_t n, int64_t inner, int cnt) {
  using V = Vec<T>;
  auto mx = V::set1(-std::numeric_limits<T>::infinity());
  for (int64_t j = 0; j < n; ++j) mx = V::max(V::load_n(x + j * inner, cnt), mx);
  auto s = V::zero();
  for (int64_t j = 0; j < n; ++j) {
    auto e = vm::exp(V::sub(V::load_n(x + j * inner, cnt), mx));
    if (!log) V::store_n(y + j * inner, e, cnt);
    s = V::add(s, e);
  }
  if (!log) {
    auto inv = V::div(V::set1(T(1)), s);
    for (int64_t j = 0; j < n; ++j) V::store_n(y + j * inner, V::mul(V::load_n(y + j * inner, cnt), inv), cnt);
  } else {
    auto vl = vm::log_lanes<V>(s);
    for (int64_t j = 0; j < n; ++j) V::store_n(y + j * inner, V::sub(V::sub(V::load_n(x + j * inner, cnt), mx), vl), cnt);
  }
}

}  // namespace

template <class T> void softmax_forward(bool log, const T* x, T* y, int64_t outer, int64_t n, int64_t inner) {
  using V = Vec<T>;
  constexpr int W = V::W;
  if (outer == 0 || n == 0 || inner == 0) return;
  if (inner == 1) {
    // Large outputs stream (see kStreamBytes); the scratch row stays in L1/L2. Measured on
    // one thread at (16384, 1024) float32: softmax 1.11x, log_softmax 1.37x faster.
    const bool nt = double(outer) * double(n) * sizeof(T) >= double(kStreamBytes) && x != y;
#pragma omp parallel num_threads(pool_threads(outer * n / kGrain + 1))
    {
      T* buf = nullptr;
      if (nt && !log) {
        try { buf = tls_row.get<T>(size_t(n)); } catch (const std::bad_alloc&) { buf = nullptr; }
      }
      const bool stream = nt && (log || buf);
#pragma omp for schedule(static) nowait
      for (int64_t o = 0; o < outer; ++o) {
        if (stream) softmax_row<T, true>(log, x + o * n, y + o * n, n, buf);
        else softmax_row<T, false>(log, x + o * n, y + o * n, n, nullptr);
      }
      if (stream) stream_fence();
    }
    return;
  }
  int64_t iblocks = (inner + W - 1) / W;
  int64_t items = outer * iblocks;
#pragma omp parallel for num_threads(pool_threads(outer * n * inner / kGrain + 1)) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    int64_t o = it / iblocks, ib = (it % iblocks) * W;
    int cnt = int(std::min<int64_t>(W, inner - ib));
    softmax_strided<T>(log, x + o * n * inner + ib, y + o * n * inner + ib, n, inner, cnt);
  }
}

template <class T>
void softmax_backward(bool log, const T* dy, const T* y, T* dx, int64_t outer, int64_t n, int64_t inner) {
  using V = Vec<T>;
  constexpr int W = V::W;
  if (outer == 0 || n == 0 || inner == 0) return;
  int64_t iblocks = inner == 1 ? 1 : (inner + W - 1) / W;
  int64_t items = outer * iblocks;
#pragma omp parallel for num_threads(pool_threads(outer * n * inner / kGrain + 1)) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    int64_t o = it / iblocks;
    const T* g = dy + o * n * inner;
    const T* yy = y + o * n * inner;
    T* d = dx + o * n * inner;
    if (inner == 1) {
      // s = sum(dy * y) (softmax) or sum(dy) (log_softmax), over the row
      auto vs = V::zero();
      int64_t j = 0;
      for (; j + W <= n; j += W) vs = log ? V::add(vs, V::load(g + j)) : V::fma(V::load(g + j), V::load(yy + j), vs);
      T s = V::reduce_add(vs);
      for (; j < n; ++j) s += log ? g[j] : g[j] * yy[j];
      auto sv = V::set1(s);
      for (j = 0; j < n; j += W) {
        int cnt = int(std::min<int64_t>(W, n - j));
        auto gv = V::load_n(g + j, cnt), yv = V::load_n(yy + j, cnt);
        auto r = log ? V::fnma(vm::exp(yv), sv, gv) : V::mul(yv, V::sub(gv, sv));
        V::store_n(d + j, r, cnt);
      }
    } else {
      int64_t ib = (it % iblocks) * W;
      int cnt = int(std::min<int64_t>(W, inner - ib));
      auto s = V::zero();
      for (int64_t j = 0; j < n; ++j) {
        auto gv = V::load_n(g + j * inner + ib, cnt);
        s = log ? V::add(s, gv) : V::fma(gv, V::load_n(yy + j * inner + ib, cnt), s);
      }
      for (int64_t j = 0; j < n; ++j) {
        auto gv = V::load_n(g + j * inner + ib, cnt), yv = V::load_n(yy + j * inner + ib, cnt);
        auto r = log ? V::fnma(vm::exp(yv), s, gv) : V::mul(yv, V::sub(gv, s));
        V::store_n(d + j * inner + ib, r, cnt);
      }
    }
  }
}

#define SEQCORE_INSTANTIATE(T)                                                                      \
  template void unary_forward<T>(Unary, T, const T*, T*, int64_t);                                 \
  template void unary_backward<T>(Unary, T, const T*, const T*, T*, int64_t);                      \
  template void prelu_forward<T>(const T*, const T*, T*, int64_t, int64_t, int64_t);               \
  template void prelu_backward<T>(const T*, const T*, const T*, T*, T*, int64_t, int64_t, int64_t); \
  template void softmax_forward<T>(bool, const T*, T*, int64_t, int64_t, int64_t);                 \
  template void softmax_backward<T>(bool, const T*, const T*, T*, int64_t, int64_t, int64_t);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
