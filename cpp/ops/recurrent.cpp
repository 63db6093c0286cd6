// Recurrent layers (compiled once per ISA). Formulas and algorithm: recurrent.h.
#include "ops/recurrent.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gemm/gemm.h"
#include "simd/vec.h"
#include "simd/vmath.h"
#include "simd/workspace.h"

namespace seqcore {
namespace SEQCORE_ISA {
namespace {

inline int gates_of(Cell c) { return c == Cell::lstm ? 4 : c == Cell::gru ? 3 : 1; }

// The blocked gate-column order (see recurrent.h): blocks of NB columns (NB a multiple of the
// GEMM's NR) hold every gate of U = NB / G hidden units. One NR panel per block where it gives
// each gate at least a vector of units; otherwise (AVX2: 16 columns, so 4 LSTM units or 5 GRU
// units per panel, half-vector loads and stores in the gate math) the fewest panels that give
// each gate whole vectors (LSTM 2 panels: 8 units; GRU 3: 16).
struct Layout {
  int G;
  int64_t H, NB, U, nblk, N;
  Layout(Cell cell, int64_t h, int64_t nr, int w) : G(gates_of(cell)), H(h), NB(nr) {
    if (nr / G < w) {
      int k = 1;
      while (k < 8 && (k * nr) % (int64_t(G) * w) != 0) ++k;
      NB = k * nr;
    }
    U = std::max<int64_t>(1, NB / G);
    nblk = (H + U - 1) / U;
    N = nblk == 0 ? 0 : (nblk - 1) * NB + G * ub(nblk - 1);
  }
  int64_t ub(int64_t blk) const { return blk == nblk - 1 ? H - blk * U : U; }
  int64_t col(int64_t u, int g) const {
    int64_t blk = u / U;
    return blk * NB + g * ub(blk) + (u - blk * U);
  }
};
template <class T> Layout layout_of(Cell cell, int64_t H) { return Layout(cell, H, gemm_nr<T>(), Vec<T>::W); }

inline int pool_threads(int64_t work) {
  if (omp_in_parallel()) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), work / 16384)));
}

// Rows of a PyTorch-ordered (G*H, K) matrix -> blocked (N, K); padding rows zero.
template <class T> void block_rows(const Layout& L, const T* w, int64_t K, T* wb) {
  std::memset(wb, 0, size_t(L.N * K) * sizeof(T));
  for (int g = 0; g < L.G; ++g)
    for (int64_t u = 0; u < L.H; ++u) std::memcpy(wb + L.col(u, g) * K, w + (g * L.H + u) * K, size_t(K) * sizeof(T));
}
template <class T> void unblock_rows(const Layout& L, const T* wb, int64_t K, T* w) {
  for (int g = 0; g < L.G; ++g)
    for (int64_t u = 0; u < L.H; ++u) std::memcpy(w + (g * L.H + u) * K, wb + L.col(u, g) * K, size_t(K) * sizeof(T));
}

// Biases in blocked order: bx joins b_ih and b_hh (GRU: all but b_hn, which stays with the
// recurrent product inside r * (W_hn h + b_hn)); bh holds GRU's b_hn, zeros elsewhere.
template <class T> void block_biases(const Layout& L, Cell cell, const T* b_ih, const T* b_hh, T* bx, T* bh) {
  std::memset(bx, 0, size_t(L.N) * sizeof(T));
  std::memset(bh, 0, size_t(L.N) * sizeof(T));
  for (int g = 0; g < L.G; ++g)
    for (int64_t u = 0; u < L.H; ++u) {
      T bi = b_ih ? b_ih[g * L.H + u] : T(0), bhh = b_hh ? b_hh[g * L.H + u] : T(0);
      if (cell == Cell::gru && g == 2) { bx[L.col(u, g)] = bi; bh[L.col(u, g)] = bhh; }
      else bx[L.col(u, g)] = bi + bhh;
    }
}

inline int64_t seq_len(const RecurrentShape& s, int64_t b) { return s.lengths ? s.lengths[b] : s.T; }

// Reverse direction: the run processes step `st` of sequence b at time len_b - 1 - st.
// gather: dst[st, b] = src[len_b - 1 - st, b] (zeros past the end); scatter is its inverse
// (zeros where no step wrote).
template <class T> void reverse_gather(const RecurrentShape& s, const T* src, T* dst, int64_t F) {
  const int64_t T_ = s.T, B = s.B;
#pragma omp parallel for num_threads(pool_threads(T_ * B * F)) schedule(static)
  for (int64_t st = 0; st < T_; ++st)
    for (int64_t b = 0; b < B; ++b) {
      int64_t len = seq_len(s, b);
      T* d = dst + (st * B + b) * F;
      if (st < len) std::memcpy(d, src + ((len - 1 - st) * B + b) * F, size_t(F) * sizeof(T));
      else std::memset(d, 0, size_t(F) * sizeof(T));
    }
}
template <class T> void reverse_scatter(const RecurrentShape& s, const T* src, T* dst, int64_t F) {
  // The map st <-> len-1-st is an involution on [0, len), identity-free past len: same loop.
  reverse_gather(s, src, dst, F);
}

// ---------------------------------------------------------------- forward step epilogue
template <class T> struct StepCtx {
  const Layout* L;
  Cell cell;
  int64_t step;
  const int64_t* len;
  const T* h_prev;  // (B,H)
  T* h_next;
  const T* c_prev;  // LSTM
  T* c_next;
  T* y;             // (B,H) output row block of this step; == h_next: not written twice
  T* zx;            // (B,N) this step's input projection (GRU reads it; gates stored there)
  T* hn;            // (B,H) GRU: W_hn h + b_hn, or null
  bool proj;        // LSTM with a projection: h_next is o * tanh(c) (B,H); h_prev has P columns
};

// The gate math of one row block for RG rows at once (rows b[0..RG), tile rows z[k], one
// vector of units at u): the stages of the RG rows are independent chains, written stage by
// stage so the core overlaps them (one row alone is a ~100-cycle dependency chain per vector).
template <class T, int RG>
inline void lstm_rows(const StepCtx<T>& s, T* const* z, const int64_t* b, int64_t u0, int64_t ub, int64_t u, int cnt,
                      bool write_y) {
  using V = Vec<T>;
  using R = typename V::R;
  const int64_t H = s.L->H;
  // Stage by stage over the RG rows, keeping few vectors live (i g, then the new cell): with
  // i, f, g, o of every row live at once the vector math spilled to the stack.
  R a[RG];
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    const R i = vm::sigmoid<V>(V::load_n(z[k] + u, cnt));
    V::store_n(z[k] + u, i, cnt);
    a[k] = i;
  }
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    const R g = vm::tanh(V::load_n(z[k] + 2 * ub + u, cnt));
    V::store_n(z[k] + 2 * ub + u, g, cnt);
    a[k] = V::mul(a[k], g);
  }
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    const R f = vm::sigmoid<V>(V::load_n(z[k] + ub + u, cnt));
    V::store_n(z[k] + ub + u, f, cnt);
    a[k] = V::fma(f, V::load_n(s.c_prev + b[k] * H + u0 + u, cnt), a[k]);  // c' = f c + i g
    V::store_n(s.c_next + b[k] * H + u0 + u, a[k], cnt);
  }
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    const R o = vm::sigmoid<V>(V::load_n(z[k] + 3 * ub + u, cnt));
    V::store_n(z[k] + 3 * ub + u, o, cnt);
    const R h = V::mul(o, vm::tanh(a[k]));
    V::store_n(s.h_next + b[k] * H + u0 + u, h, cnt);
    if (write_y) V::store_n(s.y + b[k] * H + u0 + u, h, cnt);
  }
}

template <class T, int RG>
inline void gru_rows(const StepCtx<T>& s, T* const* z, const int64_t* b, int64_t ldc, int64_t j0, int64_t u0,
                     int64_t ub, int64_t u, int cnt, bool write_y) {
  using V = Vec<T>;
  using R = typename V::R;
  const int64_t H = s.L->H;
  T* zx[RG];
  R rr[RG], zz[RG], hnv[RG], nn[RG], h[RG];
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) zx[k] = s.zx + b[k] * ldc + j0;  // same tile position in the input projection
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) rr[k] = vm::sigmoid<V>(V::add(V::load_n(zx[k] + u, cnt), V::load_n(z[k] + u, cnt)));
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) zz[k] = vm::sigmoid<V>(V::add(V::load_n(zx[k] + ub + u, cnt), V::load_n(z[k] + ub + u, cnt)));
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    hnv[k] = V::load_n(z[k] + 2 * ub + u, cnt);
    nn[k] = vm::tanh(V::fma(rr[k], hnv[k], V::load_n(zx[k] + 2 * ub + u, cnt)));
  }
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    R hpv = V::load_n(s.h_prev + b[k] * H + u0 + u, cnt);
    h[k] = V::fma(zz[k], V::sub(hpv, nn[k]), nn[k]);  // (1 - z) n + z h = n + z (h - n)
  }
#pragma GCC unroll 4
  for (int k = 0; k < RG; ++k) {
    V::store_n(zx[k] + u, rr[k], cnt);
    V::store_n(zx[k] + ub + u, zz[k], cnt);
    V::store_n(zx[k] + 2 * ub + u, nn[k], cnt);
    if (s.hn) V::store_n(s.hn + b[k] * H + u0 + u, hnv[k], cnt);
    V::store_n(s.h_next + b[k] * H + u0 + u, h[k], cnt);
    if (write_y) V::store_n(s.y + b[k] * H + u0 + u, h[k], cnt);
  }
}

template <class T>
void step_tile(void* vctx, T* c, int64_t ldc, int64_t i0, int64_t j0, int64_t mb, int64_t nb) {
  using V = Vec<T>;
  constexpr int W = V::W, RG = 4;
  const StepCtx<T>& s = *static_cast<const StepCtx<T>*>(vctx);
  const Layout& L = *s.L;
  const int64_t H = L.H, blk = j0 / L.NB, u0 = blk * L.U, ub = L.ub(blk);
  const bool write_y = s.y != s.h_next;
  // Rows still running, in groups of RG; rows past their sequence's end are frozen here.
  int64_t rows[RG];
  T* zr[RG];
  int n = 0;
  auto flush = [&](int cnt_rows) {
    for (int64_t u = 0; u < ub; u += W) {
      const int cnt = int(std::min<int64_t>(W, ub - u));
      if (s.cell == Cell::lstm) {
        if (cnt_rows == RG) lstm_rows<T, RG>(s, zr, rows, u0, ub, u, cnt, write_y);
        else for (int k = 0; k < cnt_rows; ++k) lstm_rows<T, 1>(s, zr + k, rows + k, u0, ub, u, cnt, write_y);
      } else if (s.cell == Cell::gru) {
        if (cnt_rows == RG) gru_rows<T, RG>(s, zr, rows, ldc, j0, u0, ub, u, cnt, write_y);
        else for (int k = 0; k < cnt_rows; ++k) gru_rows<T, 1>(s, zr + k, rows + k, ldc, j0, u0, ub, u, cnt, write_y);
      } else {
        for (int k = 0; k < cnt_rows; ++k) {
          auto zv = V::load_n(zr[k] + u, cnt);
          auto h = s.cell == Cell::rnn_tanh ? vm::tanh(zv)
                                            : V::select(V::gt(zv, V::zero()), zv, V::select(V::isnan(zv), zv, V::zero()));
          V::store_n(s.h_next + rows[k] * H + u0 + u, h, cnt);
          if (write_y) V::store_n(s.y + rows[k] * H + u0 + u, h, cnt);
        }
      }
    }
  };
  for (int64_t r = 0; r < mb; ++r) {
    const int64_t b = i0 + r;
    if (s.len && s.step >= s.len[b]) {  // past this sequence's end: state frozen, output 0
      if (s.proj) std::memset(s.h_next + b * H + u0, 0, size_t(ub) * sizeof(T));  // h itself: after the projection
      else std::memmove(s.h_next + b * H + u0, s.h_prev + b * H + u0, size_t(ub) * sizeof(T));
      if (s.cell == Cell::lstm) std::memmove(s.c_next + b * H + u0, s.c_prev + b * H + u0, size_t(ub) * sizeof(T));
      if (write_y) std::memset(s.y + b * H + u0, 0, size_t(ub) * sizeof(T));
      continue;
    }
    rows[n] = b;
    zr[n] = c + r * ldc;
    if (++n == RG) { flush(RG); n = 0; }
  }
  if (n) flush(n);
}

// Threads for the one-team path of small steps (recurrent_forward): 1 unless a step alone stays
// on one thread while the whole recurrence deserves more; at most `units`, the pieces a step
// is shared out in.
template <class T> int small_step_team(bool eligible, int64_t steps, double step_flops, int64_t units) {
  if (!eligible || steps < 2 || gemm_threads<T>(step_flops) != 1) return 1;
  return int(std::min<int64_t>(gemm_threads<T>(step_flops * double(steps)), units));
}
// Columns [c0, c1) of team member p of parts: blocks of nr of the n columns, in order.
inline void team_cols(int64_t n, int64_t nr, int p, int parts, int64_t* c0, int64_t* c1) {
  const int64_t nblk = (n + nr - 1) / nr;
  *c0 = std::min(n, nblk * p / parts * nr);
  *c1 = std::min(n, nblk * (p + 1) / parts * nr);
}

// Workspace carving: a bump allocator over the caller's buffer (64-byte aligned pieces).
template <class T> struct Carve {
  T* p;
  T* take(int64_t n) {
    T* r = p;
    p += (n + 15) / 16 * 16;
    return r;
  }
};
template <class T> int64_t carve_size(int64_t n) { return (n + 15) / 16 * 16; }

}  // namespace

template <class T> int64_t recurrent_gate_cols(Cell cell, int64_t H) { return layout_of<T>(cell, H).N; }

template <class T> int64_t recurrent_workspace_size(const RecurrentShape& s, bool training, bool backward) {
  Layout L = layout_of<T>(s.cell, s.H);
  const int64_t N = L.N, T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, HS = P ? P : H;
  int64_t n = carve_size<T>(N * I) + carve_size<T>(N * HS) + 16;
  if (!backward) {
    n += 2 * carve_size<T>(N) + carve_size<T>(packed_b_size<T>(HS, N));
    if (s.cell == Cell::gru) n += carve_size<T>(B * N);
    if (s.reverse) n += carve_size<T>(T_ * B * I) + carve_size<T>(T_ * B * HS);
    if (!training) n += carve_size<T>(T_ * B * N) + 2 * carve_size<T>(B * HS) + 2 * carve_size<T>(B * H);
    if (P) n += carve_size<T>(packed_b_size<T>(H, P)) + carve_size<T>(B * H);
  } else {
    n += carve_size<T>(packed_b_size<T>(N, HS));
    n += carve_size<T>(T_ * B * N) * (s.cell == Cell::gru ? 2 : 1);
    n += carve_size<T>(B * HS) + carve_size<T>(B * H) + carve_size<T>(N * I) + carve_size<T>(N * HS) + 2 * carve_size<T>(N);
    n += carve_size<T>(T_ * B * 2);  // sq: doubles
    if (s.reverse) n += 2 * carve_size<T>(T_ * B * I) + carve_size<T>(T_ * B * HS);
    if (P) n += carve_size<T>(packed_b_size<T>(P, H)) + carve_size<T>(T_ * B * P) + carve_size<T>(B * H);
  }
  return n;
}

template <class T> void recurrent_forward(const RecurrentShape& s, const RecurrentForwardArgs<T>& a) {
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, HS = P ? P : H;
  const Layout L = layout_of<T>(s.cell, H);
  const int64_t N = L.N, BH = B * H, BS = B * HS;
  const bool training = a.states != nullptr;
  const bool gru = s.cell == Cell::gru, lstm = s.cell == Cell::lstm;
  Carve<T> ws{a.work};
  T* wih_b = ws.take(N * I);
  T* whh_b = ws.take(N * HS);
  T* bx = ws.take(N);
  T* bh = ws.take(N);
  T* packed = ws.take(packed_b_size<T>(HS, N));
  T* zh = gru ? ws.take(B * N) : nullptr;
  T* xrev = s.reverse ? ws.take(T_ * B * I) : nullptr;
  T* yrev = s.reverse ? ws.take(T_ * B * HS) : nullptr;
  T* zx = training ? a.gates : ws.take(T_ * B * N);
  T* ping[2] = {nullptr, nullptr};
  T* cping[2] = {nullptr, nullptr};
  if (!training) { ping[0] = ws.take(BS); ping[1] = ws.take(BS); cping[0] = ws.take(BH); cping[1] = ws.take(BH); }
  // Projection: W_hr packed as the B operand of h = h~ W_hr^T; h~ of the step (inference).
  T* packed_hr = P ? ws.take(packed_b_size<T>(H, P)) : nullptr;
  T* ht_step = P ? ws.take(BH) : nullptr;

  // Weights and biases in blocked order. GRU: b_hr, b_hz join the input bias; b_hn stays
  // with the recurrent product (it sits inside r * (W_hn h + b_hn)).
  block_rows(L, a.w_ih, I, wih_b);
  block_rows(L, a.w_hh, HS, whh_b);
  const bool has_bias = a.b_ih || a.b_hh;
  block_biases(L, s.cell, a.b_ih, a.b_hh, bx, bh);

  // Input projection of every step at once.
  const T* xin = a.x;
  if (s.reverse) { reverse_gather(s, a.x, xrev, I); xin = xrev; }
  Epilogue<T> ep_in;
  ep_in.bias = bx;
  gemm<T>(false, true, T_ * B, N, I, T(1), xin, std::max<int64_t>(I, 1), wih_b, std::max<int64_t>(I, 1), T(0), zx,
          N, has_bias ? &ep_in : nullptr);
  pack_b<T>(true, HS, N, whh_b, HS, packed);
  if (P) pack_b<T>(true, H, P, a.w_hr, H, packed_hr);

  auto state = [&](int64_t st) -> T* { return training ? a.states + st * BS : ping[st & 1]; };
  auto cell = [&](int64_t st) -> T* { return !lstm ? nullptr : training ? a.cells + st * BH : cping[st & 1]; };
  if (a.h0) std::memcpy(state(0), a.h0, size_t(BS) * sizeof(T)); else std::memset(state(0), 0, size_t(BS) * sizeof(T));
  if (lstm) { if (a.c0) std::memcpy(cell(0), a.c0, size_t(BH) * sizeof(T)); else std::memset(cell(0), 0, size_t(BH) * sizeof(T)); }

  T* yout = s.reverse ? yrev : a.y;
  StepCtx<T> ctx{&L, s.cell, 0, s.lengths, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, P > 0};
  Epilogue<T> ep;
  ep.tile_fn = &step_tile<T>;
  ep.tile_ctx = &ctx;
  ep.tile_cols = L.NB;
  if (gru && has_bias) ep.bias = bh;
  auto set_step = [&](StepCtx<T>& c, int64_t st) {
    c.step = st;
    c.h_prev = state(st);
    c.h_next = state(st + 1);
    c.c_prev = cell(st);
    c.c_next = cell(st + 1);
    T* y_st = yout + st * BS;
    c.y = (!s.reverse && y_st == state(st + 1)) ? state(st + 1) : y_st;
    c.zx = zx + st * B * N;
    c.hn = (gru && training) ? a.hn + st * BH : nullptr;
  };
  // Steps too small for a second thread on their own (below the GEMM's threshold) in a
  // recurrence that deserves more: one team for all steps, each thread on a fixed range of
  // gate-column blocks, a barrier per step. Measured, LSTM T=50 B=16 H=128 inference on 2
  // threads: 2.48 ms one thread per step, 2.43 ms forking every step (threshold lowered),
  // 1.84 ms with the team. gemm_packed_cols gives each block exactly what gemm_packed gives
  // it, so the results do not depend on the path or the thread count.
  const int team = small_step_team<T>(P == 0, T_, 2.0 * double(B) * double(HS) * double(N), (N + L.NB - 1) / L.NB);
  if (team > 1) {
    FirstError err;
#pragma omp parallel num_threads(team)
    {
      int64_t c0, c1;
      team_cols(N, L.NB, omp_get_thread_num(), omp_get_num_threads(), &c0, &c1);
      StepCtx<T> mine = ctx;
      Epilogue<T> my_ep = ep;
      my_ep.tile_ctx = &mine;
      for (int64_t st = 0; st < T_; ++st) {
        set_step(mine, st);
        if (c0 < c1)
          err.run([&] {
            if (gru) gemm_packed_cols<T>(false, B, N, c0, c1, HS, T(1), state(st), HS, packed, T(0), zh, N, &my_ep);
            else gemm_packed_cols<T>(false, B, N, c0, c1, HS, T(1), state(st), HS, packed, T(1), zx + st * B * N, N, &my_ep);
          });
#pragma omp barrier
      }
    }
    err.rethrow();
  }
  for (int64_t st = 0; team == 1 && st < T_; ++st) {
    set_step(ctx, st);
    T* y_st = yout + st * BS;
    T* ht = P ? (training ? a.htilde + st * BH : ht_step) : nullptr;
    if (P) ctx.h_next = ctx.y = ht;  // the epilogue writes h~; h and y come from the projection
    if (gru)
      gemm_packed<T>(false, B, N, HS, T(1), state(st), HS, packed, T(0), zh, N, &ep);
    else
      gemm_packed<T>(false, B, N, HS, T(1), state(st), HS, packed, T(1), zx + st * B * N, N, &ep);
    if (P) {
      T* hnext = state(st + 1);
      gemm_packed<T>(false, B, P, H, T(1), ht, H, packed_hr, T(0), hnext, P, nullptr);
      for (int64_t b = 0; b < B; ++b) {
        const bool frozen = s.lengths && st >= s.lengths[b];
        if (frozen) std::memcpy(hnext + b * P, state(st) + b * P, size_t(P) * sizeof(T));
        if (y_st != hnext) {
          if (frozen) std::memset(y_st + b * P, 0, size_t(P) * sizeof(T));
          else std::memcpy(y_st + b * P, hnext + b * P, size_t(P) * sizeof(T));
        }
      }
    }
  }
  if (s.reverse) reverse_scatter(s, yrev, a.y, HS);
  if (a.h_n) std::memcpy(a.h_n, state(T_), size_t(BS) * sizeof(T));
  if (lstm && a.c_n) std::memcpy(a.c_n, cell(T_), size_t(BH) * sizeof(T));
}

template <class T> void recurrent_backward(const RecurrentShape& s, const RecurrentBackwardArgs<T>& a) {
  using V = Vec<T>;
  using R = typename V::R;
  constexpr int W = V::W;
  const int64_t T_ = s.T, B = s.B, I = s.I, H = s.H, P = s.P, HS = P ? P : H;
  const Layout L = layout_of<T>(s.cell, H);
  const int64_t N = L.N, BH = B * H, BS = B * HS;
  const bool gru = s.cell == Cell::gru, lstm = s.cell == Cell::lstm;
  Carve<T> ws{a.work};
  T* wih_b = ws.take(N * I);
  T* whh_b = ws.take(N * HS);
  T* packed = ws.take(packed_b_size<T>(N, HS));
  T* dzx = ws.take(T_ * B * N);
  T* dzh = gru ? ws.take(T_ * B * N) : dzx;
  T* dh = ws.take(BS);
  T* dc = ws.take(BH);
  T* dwih_b = ws.take(N * I);
  T* dwhh_b = ws.take(N * HS);
  T* dbx = ws.take(N);
  T* dbh = ws.take(N);
  double* sq = reinterpret_cast<double*>(ws.take(T_ * B * 2));  // squared ||dL/dh|| per (step, row)
  T* xrev = s.reverse ? ws.take(T_ * B * I) : nullptr;
  T* dxrev = s.reverse ? ws.take(T_ * B * I) : nullptr;
  T* dyrev = s.reverse ? ws.take(T_ * B * HS) : nullptr;
  // Projection: dL/dh of every step (for dW_hr), dL/dh~ of the step, W_hr packed for dh~ = dh W_hr.
  T* packed_hr = P ? ws.take(packed_b_size<T>(P, H)) : nullptr;
  T* dhall = P ? ws.take(T_ * B * P) : nullptr;
  T* dht = P ? ws.take(BH) : nullptr;

  block_rows(L, a.w_ih, I, wih_b);
  block_rows(L, a.w_hh, HS, whh_b);
  pack_b<T>(false, N, HS, whh_b, HS, packed);  // dh_prev = dZ (B,N) @ whh_b (N,HS)
  if (P) pack_b<T>(false, P, H, a.w_hr, H, packed_hr);
  const T* xin = a.x;
  const T* dyin = a.dy;
  if (s.reverse) {
    reverse_gather(s, a.x, xrev, I);
    xin = xrev;
    if (a.dy) { reverse_gather(s, a.dy, dyrev, HS); dyin = dyrev; }
  }
  if (a.dh_n) std::memcpy(dh, a.dh_n, size_t(BS) * sizeof(T)); else std::memset(dh, 0, size_t(BS) * sizeof(T));
  if (lstm) { if (a.dc_n) std::memcpy(dc, a.dc_n, size_t(BH) * sizeof(T)); else std::memset(dc, 0, size_t(BH) * sizeof(T)); }
  const R one = V::set1(T(1));
  // Squares of dL/dh summed twice: as they are, and scaled by 2^120 (float) so that gradients
  // that vanish below ~1e-19, whose squares underflow float, still get a norm.
  const R up = V::set1(sizeof(T) == 4 ? T(1152921504606846976.0) : T(1));  // 2^60
  auto squares = [&](R d, R& acc, R& accs) {
    acc = V::fma(d, d, acc);
    if constexpr (sizeof(T) == 4) {
      const R du = V::mul(d, up);
      accs = V::fma(du, du, accs);
    }
  };
  auto norm_sq = [](R acc, R accs) {
    const double plain = double(V::reduce_add(acc));
    const double scaled = sizeof(T) == 4 ? double(V::reduce_add(accs)) : 0.0;
    return (sizeof(T) == 4 && plain < 1e-30 && std::isfinite(scaled)) ? scaled * 0x1p-120 : plain;
  };

  // The fused pointwise pass of one row b of step st (see the step loop).
  auto gate_row = [&](int64_t st, int64_t b) {
    T* dzx_r = dzx + (st * B + b) * N;
    T* dzh_r = dzh + (st * B + b) * N;
    T* dhb = P ? dht + b * H : dh + b * H;
    if (s.lengths && st >= s.lengths[b]) {  // frozen: gradients pass straight through
      std::memset(dzx_r, 0, size_t(N) * sizeof(T));
      if (gru) std::memset(dzh_r, 0, size_t(N) * sizeof(T));
      sq[st * B + b] = 0.0;
      return;
    }
    const T* dyb = dyin && !P ? dyin + (st * B + b) * H : nullptr;
    const T* gb = a.gates ? a.gates + (st * B + b) * N : nullptr;
    R acc = V::zero(), accs = V::zero();
    for (int64_t blk = 0; blk < L.nblk; ++blk) {
      const int64_t u0 = blk * L.U, ub = L.ub(blk), c0 = blk * L.NB;
      if (gru && ub * 3 < L.NB && blk + 1 < L.nblk) {  // padding columns of the block
        std::memset(dzx_r + c0 + 3 * ub, 0, size_t(L.NB - 3 * ub) * sizeof(T));
        std::memset(dzh_r + c0 + 3 * ub, 0, size_t(L.NB - 3 * ub) * sizeof(T));
      }
      for (int64_t u = 0; u < ub; u += W) {
        const int cnt = int(std::min<int64_t>(W, ub - u));
        const int64_t hu = b * H + u0 + u;
        R d = V::load_n(dhb + u0 + u, cnt);
        if (dyb) d = V::add(d, V::load_n(dyb + u0 + u, cnt));
        if (!P) squares(d, acc, accs);
        if (lstm) {
          const T* g = gb + c0;
          R i = V::load_n(g + u, cnt), f = V::load_n(g + ub + u, cnt);
          R gg = V::load_n(g + 2 * ub + u, cnt), o = V::load_n(g + 3 * ub + u, cnt);
          R ct = V::load_n(a.cells + (st + 1) * BH + hu, cnt);
          R cp = V::load_n(a.cells + st * BH + hu, cnt);
          R tc = vm::tanh(ct);
          R dcv = V::fma(V::mul(d, o), V::fnma(tc, tc, one), V::load_n(dc + hu, cnt));
          R d_o = V::mul(d, tc);
          T* dz = dzx_r + c0;
          V::store_n(dz + u, V::mul(V::mul(dcv, gg), V::mul(i, V::sub(one, i))), cnt);
          V::store_n(dz + ub + u, V::mul(V::mul(dcv, cp), V::mul(f, V::sub(one, f))), cnt);
          V::store_n(dz + 2 * ub + u, V::mul(V::mul(dcv, i), V::fnma(gg, gg, one)), cnt);
          V::store_n(dz + 3 * ub + u, V::mul(d_o, V::mul(o, V::sub(one, o))), cnt);
          V::store_n(dc + hu, V::mul(dcv, f), cnt);
          V::store_n(dhb + u0 + u, V::zero(), cnt);
        } else if (gru) {
          const T* g = gb + c0;
          R r = V::load_n(g + u, cnt), z = V::load_n(g + ub + u, cnt), n = V::load_n(g + 2 * ub + u, cnt);
          R hp = V::load_n(a.states + st * BH + hu, cnt);
          R zhn = V::load_n(a.hn + st * BH + hu, cnt);
          R dn = V::mul(d, V::sub(one, z));
          R dzn = V::mul(dn, V::fnma(n, n, one));
          R dzr = V::mul(V::mul(dzn, zhn), V::mul(r, V::sub(one, r)));
          R dzz = V::mul(V::mul(d, V::sub(hp, n)), V::mul(z, V::sub(one, z)));
          T* dx_ = dzx_r + c0;
          T* dh_ = dzh_r + c0;
          V::store_n(dx_ + u, dzr, cnt);
          V::store_n(dx_ + ub + u, dzz, cnt);
          V::store_n(dx_ + 2 * ub + u, dzn, cnt);
          V::store_n(dh_ + u, dzr, cnt);
          V::store_n(dh_ + ub + u, dzz, cnt);
          V::store_n(dh_ + 2 * ub + u, V::mul(dzn, r), cnt);
          V::store_n(dhb + u0 + u, V::mul(d, z), cnt);
        } else {
          R h = V::load_n(a.states + (st + 1) * BH + hu, cnt);
          R dz = s.cell == Cell::rnn_tanh ? V::mul(d, V::fnma(h, h, one))
                                          : V::select(V::gt(h, V::zero()), d, V::zero());
          V::store_n(dzx_r + c0 + u, dz, cnt);
          V::store_n(dhb + u0 + u, V::zero(), cnt);
        }
      }
    }
    if (!P) sq[st * B + b] = norm_sq(acc, accs);
  };

  // As in forward: steps too small to split in a recurrence worth more threads run on one
  // team, rows of the pointwise pass and column blocks of dh's product shared out, two
  // barriers per step. Same arithmetic per row and per block as the path below.
  const int team = small_step_team<T>(P == 0, T_, 2.0 * double(B) * double(HS) * double(N),
                                      std::min((HS + gemm_nr<T>() - 1) / gemm_nr<T>(), B));
  if (team > 1) {
    FirstError err;
#pragma omp parallel num_threads(team)
    {
      int64_t c0, c1;
      team_cols(HS, gemm_nr<T>(), omp_get_thread_num(), omp_get_num_threads(), &c0, &c1);
      for (int64_t st = T_ - 1; st >= 0; --st) {
#pragma omp for schedule(static)
        for (int64_t b = 0; b < B; ++b) gate_row(st, b);
        if (c0 < c1)
          err.run([&] {
            gemm_packed_cols<T>(false, B, HS, c0, c1, N, T(1), dzh + st * B * N, N, packed, T(1), dh, HS, nullptr);
          });
#pragma omp barrier
      }
    }
    err.rethrow();
  }
  for (int64_t st = T_ - 1; team == 1 && st >= 0; --st) {
    if (P) {
      // Projection: dL/dh_t (P values) = what reached h plus dy, kept for dW_hr; then
      // dL/dh~_t = dL/dh_t W_hr feeds the gate pass. Frozen rows carry dh unchanged.
      for (int64_t b = 0; b < B; ++b) {
        T* dst = dhall + (st * B + b) * P;
        if (s.lengths && st >= s.lengths[b]) {
          std::memset(dst, 0, size_t(P) * sizeof(T));
          continue;
        }
        const T* dyb = dyin ? dyin + (st * B + b) * P : nullptr;
        R acc = V::zero(), accs = V::zero();
        for (int64_t u = 0; u < P; u += W) {
          const int cnt = int(std::min<int64_t>(W, P - u));
          R d = V::load_n(dh + b * P + u, cnt);
          if (dyb) d = V::add(d, V::load_n(dyb + u, cnt));
          squares(d, acc, accs);
          V::store_n(dst + u, d, cnt);
          V::store_n(dh + b * P + u, V::zero(), cnt);
        }
        sq[st * B + b] = norm_sq(acc, accs);
      }
      gemm_packed<T>(false, B, H, P, T(1), dhall + st * B * P, P, packed_hr, T(0), dht, H, nullptr);
    }
    // Fused pointwise pass: gradient reaching h_t (h~_t with a projection), then dZ for every
    // gate; the direct (non-matmul) part of dh_{t-1} is left in dh for the GEMM to add to.
#pragma omp parallel for num_threads(pool_threads(BH * 8)) schedule(static)
    for (int64_t b = 0; b < B; ++b) gate_row(st, b);
    gemm_packed<T>(false, B, HS, N, T(1), dzh + st * B * N, N, packed, T(1), dh, HS, nullptr);
  }
  if (a.dh0) std::memcpy(a.dh0, dh, size_t(BS) * sizeof(T));
  if (lstm && a.dc0) std::memcpy(a.dc0, dc, size_t(BH) * sizeof(T));

  if (a.dh_norms) {  // original time order; per-row squares summed in batch order
    for (int64_t t = 0; t < T_; ++t) {
      double acc = 0.0;
      for (int64_t b = 0; b < B; ++b) {
        int64_t len = seq_len(s, b);
        if (t >= len) continue;
        acc += sq[(s.reverse ? len - 1 - t : t) * B + b];
      }
      a.dh_norms[t] = T(std::sqrt(acc));
    }
  }

  // Weight and input gradients: one GEMM each over all T*B rows.
  const int64_t TB = T_ * B;
  gemm<T>(true, false, N, HS, TB, T(1), dzh, N, a.states, HS, T(0), dwhh_b, HS, nullptr);
  if (P) gemm<T>(true, false, P, H, TB, T(1), dhall, P, a.htilde, H, T(0), a.dw_hr, H, nullptr);
  gemm<T>(true, false, N, I, TB, T(1), dzx, N, xin, std::max<int64_t>(I, 1), T(0), dwih_b, std::max<int64_t>(I, 1), nullptr);
  if (a.dx) {  // skipped when the caller does not need the input gradient
    T* dxout = s.reverse ? dxrev : a.dx;
    gemm<T>(false, false, TB, I, N, T(1), dzx, N, wih_b, std::max<int64_t>(I, 1), T(0), dxout, std::max<int64_t>(I, 1), nullptr);
    if (s.reverse) reverse_scatter(s, dxrev, a.dx, I);
  }
  unblock_rows(L, dwih_b, I, a.dw_ih);
  unblock_rows(L, dwhh_b, HS, a.dw_hh);
  if (a.db_ih || a.db_hh) {
    col_sum<T>(dzx, TB, N, dbx, false);
    if (gru) col_sum<T>(dzh, TB, N, dbh, false);
    const T* dbh_src = gru ? dbh : dbx;
    for (int g = 0; g < L.G; ++g)
      for (int64_t u = 0; u < H; ++u) {
        if (a.db_ih) a.db_ih[g * H + u] = dbx[L.col(u, g)];
        if (a.db_hh) a.db_hh[g * H + u] = dbh_src[L.col(u, g)];
      }
  }
}

template <class T> int64_t recurrent_packed_size(Cell cell, int64_t I, int64_t H) {
  const Layout L = layout_of<T>(cell, H);
  return carve_size<T>(packed_b_size<T>(I, L.N)) + carve_size<T>(packed_b_size<T>(H, L.N)) + 2 * carve_size<T>(L.N);
}

template <class T>
void recurrent_pack(Cell cell, int64_t I, int64_t H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                    T* packed) {
  const Layout L = layout_of<T>(cell, H);
  const int64_t N = L.N;
  Carve<T> out{packed};
  T* pih = out.take(packed_b_size<T>(I, N));
  T* phh = out.take(packed_b_size<T>(H, N));
  T* bx = out.take(N);
  T* bh = out.take(N);
  T* tmp = new T[size_t(N * std::max(I, H))];
  block_rows(L, w_ih, I, tmp);
  pack_b<T>(true, I, N, tmp, I, pih);
  block_rows(L, w_hh, H, tmp);
  pack_b<T>(true, H, N, tmp, H, phh);
  delete[] tmp;
  block_biases(L, cell, b_ih, b_hh, bx, bh);
}

// One streaming step. Threads take contiguous ranges of gate-column blocks (NB columns = every
// gate of U hidden units), so one fork-join per step. Up to gemv_max_rows rows, each block is
// finished on its own: zx = x W_ih^T + b, then h W_hh^T is added (GRU: its own buffer) and the
// cell update runs on the block. backwards: the blocks go in descending order. Calls that
// alternate it leave the blocks used last, which the next call uses first, in cache: with
// ~2 MiB of weights (I = H = 256, LSTM) against a 2 MiB L2, most of them are still there
// (measured, 1 thread: 49 us a step alternating, 72 us not). The order changes nothing in the
// results (each block is computed on its own). More rows take the GEMM path over the whole
// range (the order is kept).
template <class T> struct StepJob {
  const Layout* L;
  Cell cell;
  int64_t B, I, H;
  const T *pih, *phh, *bx, *bh, *x, *h;
  T *zx, *zh;
  StepCtx<T>* ctx;
  bool backwards;
};

template <class T> void step_blocks(void* vjob, int part, int parts) {
  const StepJob<T>& j = *static_cast<const StepJob<T>*>(vjob);
  const int64_t N = j.L->N, NRv = j.L->NB, nblk = (N + NRv - 1) / NRv;
  const int64_t b0 = nblk * part / parts, b1 = nblk * (part + 1) / parts;
  const bool gru = j.cell == Cell::gru;
  if (b0 >= b1) return;
  if (j.B <= gemv_max_rows<T>()) {
    for (int64_t i = b0; i < b1; ++i) {
      const int64_t blk = j.backwards ? b0 + b1 - 1 - i : i;
      const int64_t c0 = blk * NRv, c1 = std::min(N, c0 + NRv);
      gemv_packed_cols<T>(j.B, N, c0, c1, j.I, j.x, j.I, j.pih, false, j.bx, j.zx, N);
      T* z = gru ? j.zh : j.zx;
      gemv_packed_cols<T>(j.B, N, c0, c1, j.H, j.h, j.H, j.phh, !gru, gru ? j.bh : nullptr, z, N);
      step_tile<T>(j.ctx, z + c0, N, 0, c0, j.B, c1 - c0);
    }
    return;
  }
  // More rows: the GEMM's tiles over this part's whole column range, x and h packed once each;
  // the gate math runs as the epilogue of each finished tile of the recurrent product.
  const int64_t c0 = b0 * NRv, c1 = std::min(N, b1 * NRv);
  Epilogue<T> ep_in;
  ep_in.bias = j.bx;
  Epilogue<T> ep;
  ep.tile_fn = &step_tile<T>;
  ep.tile_ctx = j.ctx;
  ep.tile_cols = j.L->NB;
  if (gru) ep.bias = j.bh;
  gemm_packed_cols<T>(false, j.B, N, c0, c1, j.I, T(1), j.x, j.I, j.pih, T(0), j.zx, N, &ep_in);
  if (gru) gemm_packed_cols<T>(false, j.B, N, c0, c1, j.H, T(1), j.h, j.H, j.phh, T(0), j.zh, N, &ep);
  else gemm_packed_cols<T>(false, j.B, N, c0, c1, j.H, T(1), j.h, j.H, j.phh, T(1), j.zx, N, &ep);
}

template <class T>
void recurrent_step(Cell cell, int64_t B, int64_t I, int64_t H, const T* packed, const T* x, const T* h, const T* c,
                    T* h_out, T* c_out, T* work, bool backwards) {
  const Layout L = layout_of<T>(cell, H);
  const int64_t N = L.N;
  if (B <= 0 || N <= 0) return;
  Carve<T> in{const_cast<T*>(packed)};
  const T* pih = in.take(packed_b_size<T>(I, N));
  const T* phh = in.take(packed_b_size<T>(H, N));
  const T* bx = in.take(N);
  const T* bh = in.take(N);
  StepCtx<T> ctx{&L, cell, 0, nullptr, h, h_out, c, c_out, h_out, work, nullptr};
  StepJob<T> job{&L, cell, B, I, H, pih, phh, bx, bh, x, h, work, work + B * N, &ctx, backwards};
  // Threads by bytes of weight streamed, as gemm_packed does for few rows.
  const int64_t nblk = (N + L.NB - 1) / L.NB;
  const int nt = int(std::min<int64_t>(gemm_threads<T>(2.0 * double(I + H) * double(N) * double(std::max<int64_t>(B, 8))),
                                       nblk));
  gemm_parallel(nt, &step_blocks<T>, &job);
}

#define SEQCORE_INSTANTIATE(T)                                                                   \
  template int64_t recurrent_gate_cols<T>(Cell, int64_t);                                        \
  template int64_t recurrent_workspace_size<T>(const RecurrentShape&, bool, bool);               \
  template void recurrent_forward<T>(const RecurrentShape&, const RecurrentForwardArgs<T>&);     \
  template void recurrent_backward<T>(const RecurrentShape&, const RecurrentBackwardArgs<T>&);     \
  template int64_t recurrent_packed_size<T>(Cell, int64_t, int64_t);                             \
  template void recurrent_pack<T>(Cell, int64_t, int64_t, const T*, const T*, const T*, const T*, T*); \
  template void recurrent_step<T>(Cell, int64_t, int64_t, int64_t, const T*, const T*, const T*, const T*, T*, T*, T*, \
                                  bool);
SEQCORE_INSTANTIATE(float)
SEQCORE_INSTANTIATE(double)
#undef SEQCORE_INSTANTIATE

}  // namespace SEQCORE_ISA
}  // namespace seqcore
