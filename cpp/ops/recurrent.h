// Recurrent layers over whole sequences, one layer and one direction per call, per ISA.
// Sizes: T time, B batch, I input, H hidden, G gates (RNN 1, LSTM 4, GRU 3), N blocked gate
// columns (recurrent_gate_cols). Time-major: x (T,B,I); y (T,B,H); h0, c0, h_n, c_n (B,H).
// Weights in PyTorch's layout and gate order: w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H);
// LSTM i,f,g,o; GRU r,z,n.
//   RNN:  h' = act(W_ih x + b_ih + W_hh h + b_hh)                    act = tanh | relu
//   LSTM: i,f,o = sigmoid(.), g = tanh(.), c' = f c + i g, h' = o tanh(c')
//   GRU:  r,z = sigmoid(W_i. x + b_i. + W_h. h + b_h.),
//         n = tanh(W_in x + b_in + r (W_hn h + b_hn)),  h' = (1 - z) n + z h
//   LSTM with a projection (s.P > 0, PyTorch's proj_size): h~ = o tanh(c'), h' = W_hr h~ with
//   w_hr (P, H); h0, h_n, y and w_hh's columns then have P values (w_hh (4H, P)); c has H.
//   Each step adds the GEMM h~ W_hr^T after the fused one (backward: dh~ = dh W_hr before the
//   pointwise pass), and dW_hr is one GEMM over all steps from the saved h~ (T,B,H).
// lengths (B) optional, 1 <= lengths[b] <= T: sequence b updates its state only for
// t < lengths[b]; y is 0 after that and h_n / c_n are the states after its last valid step.
// reverse: each sequence runs backwards over its own valid steps (PyTorch's packed reverse
// direction); y stays at its time index.
//
// How it runs: one GEMM projects every time step's input (x W_ih^T + b); W_hh is packed once
// per call and the per-step GEMM h W_hh^T runs on it with the gate math and the cell update
// fused into its epilogue. Gate columns are kept in a "blocked" order so one span of the
// GEMM's epilogue (one register tile's rows by NB columns, NB one or a few of its NR-wide
// panels) holds every gate of a group of hidden units: unit u, gate g -> column
// blk*NB + g*Ub + (u - blk*U), U = NB / G units per block, Ub = units in that block.
// Backward walks time in reverse with one fused pointwise pass and one GEMM (dZ W_hh) per
// step, then computes every weight gradient with one large GEMM over all T*B rows.
// Weight gradients are written (not accumulated): the caller adds them where it keeps sums.
#pragma once
#include <cstdint>

#include "runtime/kernels.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class T> int64_t recurrent_gate_cols(Cell cell, int64_t H);
template <class T> int64_t recurrent_workspace_size(const RecurrentShape& s, bool training, bool backward);
template <class T> void recurrent_forward(const RecurrentShape& s, const RecurrentForwardArgs<T>& a);
template <class T> void recurrent_backward(const RecurrentShape& s, const RecurrentBackwardArgs<T>& a);
template <class T> int64_t recurrent_packed_size(Cell cell, int64_t I, int64_t H);
template <class T>
void recurrent_pack(Cell cell, int64_t I, int64_t H, const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh,
                    T* packed);
template <class T>
void recurrent_step(Cell cell, int64_t B, int64_t I, int64_t H, const T* packed, const T* x, const T* h, const T* c,
                    T* h_out, T* c_out, T* work, bool backwards);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
