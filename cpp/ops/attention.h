// Scaled dot-product attention, flash-style, per ISA.
// Sizes: BH heads (batch x heads, flattened), L queries, S keys, D query/key dim, Dv value dim.
// Per head h: q (L, D), k (S, D), v (S, Dv), out (L, Dv), lse (L); rows may be strided and a
// head's rows start anywhere (AttnLayout: element offset of each head + row stride; the last
// dim is contiguous), so (B, N, L, D) arrays and MHA's (L, B, E) projections are read in place.
//
//   forward:  s_ij = scale q_i . k_j + mask_ij   (masked: -inf; causal keeps j <= i)
//             p_ij = exp(s_ij - lse_i),  lse_i = log sum_j exp(s_ij),  out_i = sum_j p~_ij v_j
//             (p~ = p with dropout: p keep_ij / (1 - p_drop), keep from a counter-based hash of
//             (seed, head, i, j), so backward regenerates it without storing it)
//   backward: dp~_ij = dout_i . v_j,  dp_ij = dp~_ij keep_ij / (1 - p_drop),
//             Di = dout_i . out_i,  ds_ij = p_ij (dp_ij - Di),
//             dv_j = sum_i p~_ij dout_i,  dk_j = scale sum_i ds_ij q_i,  dq_i = scale sum_j ds_ij k_j
// Rows whose keys are all masked give out = 0 and lse = -inf (and zero gradients).
//
// How it runs: tiles of Br queries x Bc keys; per tile one register-blocked product for the
// scores (K^T packed once per head), an online softmax pass (running max and sum per row), and
// one product into the output accumulator — never an L x S buffer. Backward recomputes p from
// lse (FlashAttention-2 order: key blocks outer, query blocks inner) and accumulates dk, dv per
// key block and dq per query block. Determinism: dq is summed over a fixed split of the keys into
// at most kAttnChunks chunks (depends on S only), combined in chunk order, so any thread count
// gives the same bits; threads split heads, query blocks (forward) or key chunks (backward).
// Gradients are written, not accumulated.
#pragma once
#include <cstdint>

#include "runtime/kernels.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class T> void attention_forward(const AttnShape& s, const AttnForwardArgs<T>& a);
template <class T> void attention_backward(const AttnShape& s, const AttnBackwardArgs<T>& a);
// Attention probabilities p~ (with dropout) of every head, (BH, L, S) rows of length S, from
// lse (for need_weights; this one does build the L x S matrix, by request).
template <class T> void attention_probs(const AttnShape& s, const AttnForwardArgs<T>& a, T* probs);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
