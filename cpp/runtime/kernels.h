// The dispatch table: one function pointer per kernel, per dtype. Each ISA's copy of the
// kernels (namespace seqcore::scalar / avx2 / avx512) fills one table; the runtime picks one
// at import from cpuid (or SEQCORE_ISA). Bindings call kernels only through this table.
#pragma once
#include <cstdint>
#include "gemm/gemm_types.h"

namespace seqcore {

// Elementwise activations. Backward takes the forward *output* for tanh/sigmoid and the
// forward *input* for the rest (what each derivative is cheapest from).
enum class Unary : int {
  identity = 0, tanh, sigmoid, relu, leaky_relu, silu, gelu, gelu_tanh,
  exp, erf,  // exposed for accuracy tests only
};

// ---- recurrent layers (cpp/ops/recurrent.h has the formulas and the algorithm)
enum class Cell : int { rnn_tanh = 0, rnn_relu, lstm, gru };

struct RecurrentShape {
  Cell cell;
  int64_t T, B, I, H;
  bool reverse;
  const int64_t* lengths;  // (B) or null
  // LSTM with a projection (PyTorch's proj_size): h_t = W_hr (o * tanh(c_t)), P < H values;
  // 0: none. The recurrent state h (h0, h_n, y, states, W_hh's columns) then has P values.
  int64_t P = 0;
};

template <class T>
struct RecurrentForwardArgs {
  const T *x = nullptr, *h0 = nullptr, *c0 = nullptr;  // h0/c0 null: zeros
  const T *w_ih = nullptr, *w_hh = nullptr, *b_ih = nullptr, *b_hh = nullptr;  // biases null: none
  T *y = nullptr, *h_n = nullptr, *c_n = nullptr;
  // Saved for backward; all null in inference. gates (T,B,N) activated gates (LSTM, GRU);
  // states (T+1,B,H) and cells (T+1,B,H) in the order the recurrence ran (step 0 = initial);
  // hn (T,B,H) GRU's W_hn h + b_hn. y may alias states + B*H (no lengths, no reverse).
  T *gates = nullptr, *states = nullptr, *cells = nullptr, *hn = nullptr;
  const T* w_hr = nullptr;  // (P, H) with a projection
  T* htilde = nullptr;      // (T, B, H) saved o * tanh(c_t) before the projection (training, P > 0)
  T* work = nullptr;  // recurrent_workspace_size(..., false) elements
};

template <class T>
struct RecurrentBackwardArgs {
  const T *x = nullptr, *w_ih = nullptr, *w_hh = nullptr;
  const T *gates = nullptr, *states = nullptr, *cells = nullptr, *hn = nullptr;  // from forward
  const T *dy = nullptr, *dh_n = nullptr, *dc_n = nullptr;                      // null: zeros
  T *dx = nullptr, *dh0 = nullptr, *dc0 = nullptr;  // dx null: not computed
  T *dw_ih = nullptr, *dw_hh = nullptr, *db_ih = nullptr, *db_hh = nullptr;  // overwritten
  T* dh_norms = nullptr;  // (T): ||dL/dh_t|| over the batch, original time order; or null
  const T *w_hr = nullptr, *htilde = nullptr;  // with a projection (P > 0)
  T* dw_hr = nullptr;                          // (P, H), overwritten
  T* work = nullptr;      // recurrent_workspace_size(..., true) elements
};

// ---- training (cpp/ops/optim.cpp)
struct SgdHyper {
  double lr, momentum, dampening, weight_decay;
  bool nesterov, maximize, first_step;
};
struct AdamHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // t >= 1
  bool amsgrad, decoupled, maximize;
};
struct RmspropHyper {
  double lr, alpha, eps, weight_decay, momentum;
  bool centered, maximize;
};

// ---- attention (cpp/ops/attention.h has the formulas and the algorithm)
// Where a head's rows live: head h's row i starts at base + off[h] + i * rs (elements); the
// last dim is contiguous.
struct AttnLayout {
  const int64_t* off = nullptr;  // (BH)
  int64_t rs = 0;
};
// keep_u8: nonzero = may attend; block_u8: nonzero = masked out; add: T added to the score.
enum class MaskKind : int { none = 0, keep_u8, block_u8, add };
struct AttnMask {
  MaskKind kind = MaskKind::none;
  const void* base = nullptr;    // uint8_t or T
  const int64_t* off = nullptr;  // (BH) offset of each head's (L, S) mask
  int64_t rs = 0;                // query-row stride (0: one row for every query); key stride 1
};
struct AttnShape {
  int64_t BH, L, S, D, Dv;
  double scale;
  bool causal;        // keep j <= i (top-left aligned)
  double dropout_p;   // in [0, 1); 0: none
  uint64_t seed;
};
template <class T>
struct AttnForwardArgs {
  const T *q = nullptr, *k = nullptr, *v = nullptr;
  AttnLayout ql, kl, vl;
  AttnMask m1, m2;  // combined: both apply
  T* out = nullptr;
  AttnLayout ol;
  T* lse = nullptr;  // (BH, L) or null (inference)
};
template <class T>
struct AttnBackwardArgs {
  const T *q = nullptr, *k = nullptr, *v = nullptr, *out = nullptr, *dout = nullptr, *lse = nullptr;
  AttnLayout ql, kl, vl, ol, dol;
  AttnMask m1, m2;
  T *dq = nullptr, *dk = nullptr, *dv = nullptr;  // written
  AttnLayout dql, dkl, dvl;
};

template <class T>
struct KernelsT {
  // ---- GEMM: C = alpha * op(A) op(B) + beta * C, then the epilogue (bias, activation).
  void (*gemm)(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
               const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc,
               const Epilogue<T>* ep);
  // Pre-packed right operand: size in elements, then pack into caller memory (64-B aligned).
  int64_t (*packed_b_size)(int64_t k, int64_t n);
  void (*pack_b)(bool trans_b, int64_t k, int64_t n, const T* b, int64_t ldb, T* packed);
  void (*gemm_packed)(bool trans_a, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
                      int64_t lda, const T* packed_b, T beta, T* c, int64_t ldc,
                      const Epilogue<T>* ep);
  // ---- dense helpers
  void (*col_sum)(const T* x, int64_t rows, int64_t cols, T* out, bool accumulate);
  // ---- activations (cpp/ops/activations.cpp)
  void (*unary_forward)(Unary op, T param, const T* x, T* y, int64_t n);
  void (*unary_backward)(Unary op, T param, const T* dy, const T* saved, T* dx, int64_t n);
  void (*prelu_forward)(const T* x, const T* w, T* y, int64_t outer, int64_t c, int64_t inner);
  void (*prelu_backward)(const T* dy, const T* x, const T* w, T* dx, T* dw, int64_t outer,
                         int64_t c, int64_t inner);
  void (*softmax_forward)(bool log, const T* x, T* y, int64_t outer, int64_t n, int64_t inner);
  void (*softmax_backward)(bool log, const T* dy, const T* y, T* dx, int64_t outer, int64_t n,
                           int64_t inner);
  // ---- recurrent (cpp/ops/recurrent.cpp)
  int64_t (*recurrent_gate_cols)(Cell cell, int64_t H);
  int64_t (*recurrent_workspace_size)(const RecurrentShape& s, bool training, bool backward);
  void (*recurrent_forward)(const RecurrentShape& s, const RecurrentForwardArgs<T>& a);
  void (*recurrent_backward)(const RecurrentShape& s, const RecurrentBackwardArgs<T>& a);
  // Streaming: weights blocked and packed once (recurrent_pack into recurrent_packed_size
  // elements), then one step for a small batch: (h, c) -> (h_out, c_out); work: 2*B*N.
  // backwards: the weight blocks in descending order (alternate it: see recurrent.cpp).
  int64_t (*recurrent_packed_size)(Cell cell, int64_t I, int64_t H);
  void (*recurrent_pack)(Cell cell, int64_t I, int64_t H, const T* w_ih, const T* w_hh, const T* b_ih,
                         const T* b_hh, T* packed);
  void (*recurrent_step)(Cell cell, int64_t B, int64_t I, int64_t H, const T* packed, const T* x, const T* h,
                         const T* c, T* h_out, T* c_out, T* work, bool backwards);
  // ---- training (cpp/ops/optim.cpp)
  void (*sgd_step)(T* p, const T* grad, T* buf, int64_t n, const SgdHyper& h);
  void (*adam_step)(T* p, const T* grad, T* m, T* v, T* vmax, int64_t n, const AdamHyper& h);
  void (*rmsprop_step)(T* p, const T* grad, T* sq, T* gavg, T* buf, int64_t n, const RmspropHyper& h);
  // partial[item] for items = (tensor k, chunk of 2^14 elements) in order: sum |x|^p (p = 2,
  // any p) or max |x| (p = inf), in double; the caller combines them in order.
  void (*norm_partials)(const T* const* xs, const int64_t* ns, int64_t count, double p, double* partial);
  void (*scale_inplace)(T* x, int64_t n, T s);
  void (*clamp_inplace)(T* x, int64_t n, T lo, T hi);
  void (*cross_entropy_forward)(const T* x, const int64_t* target, int64_t N, int64_t C, int64_t ignore_index,
                                double smoothing, T* loss, double* lse);
  void (*cross_entropy_backward)(const T* x, const int64_t* target, const double* lse, const T* row_scale, int64_t N,
                                 int64_t C, int64_t ignore_index, double smoothing, T* dx);
  // ---- LayerNorm (cpp/ops/norm.h)
  void (*layer_norm_forward)(const T* x, const T* w, const T* b, int64_t M, int64_t F, double eps, T* y, T* mean,
                             T* rstd);
  int64_t (*layer_norm_backward_work)(int64_t M, int64_t F);
  void (*layer_norm_backward)(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t M, int64_t F,
                              T* dx, T* dw, T* db, T* work);
  // ---- BatchNorm over axis 1 of x (N, C, L) (cpp/ops/norm.h); work: batch_norm_work doubles
  int64_t (*batch_norm_work)(int64_t N, int64_t C, int64_t L);
  void (*batch_norm_forward)(const T* x, const T* w, const T* b, T* running_mean, T* running_var, int64_t N,
                             int64_t C, int64_t L, bool training, double momentum, double eps, T* y, T* mean,
                             T* rstd, double* work);
  void (*batch_norm_backward)(const T* dy, const T* x, const T* mean, const T* rstd, const T* w, int64_t N, int64_t C,
                              int64_t L, bool training, T* dx, T* dw, T* db, double* work);
  // ---- attention (cpp/ops/attention.h)
  void (*attention_forward)(const AttnShape& s, const AttnForwardArgs<T>& a);
  void (*attention_backward)(const AttnShape& s, const AttnBackwardArgs<T>& a);
  void (*attention_probs)(const AttnShape& s, const AttnForwardArgs<T>& a, T* probs);
  // ---- embedding, dropout (cpp/ops/layers.h)
  void (*embedding_forward)(const int64_t* ids, int64_t N, const T* w, int64_t E, T* y);
  void (*embedding_backward)(const int64_t* ids, int64_t N, const T* dy, int64_t E, int64_t V, int64_t padding_idx,
                             T* dw);
  void (*dropout_apply)(const T* x, int64_t n, double p, uint64_t seed, T* y);
};

struct Kernels {
  const char* isa;
  KernelsT<float> f32;
  KernelsT<double> f64;
  // Peak-rate probe for benchmarks: runs FMAs on independent accumulators for ~iters
  // iterations on the calling thread; returns the flop count performed.
  double (*fma_probe)(int64_t iters);
};

// The table chosen at import (runtime/dispatch.cpp).
const Kernels& kernels();
template <class T> inline const KernelsT<T>& K();
template <> inline const KernelsT<float>& K<float>() { return kernels().f32; }
template <> inline const KernelsT<double>& K<double>() { return kernels().f64; }

}  // namespace seqcore
