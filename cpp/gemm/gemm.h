// GEMM engine, per ISA (namespace seqcore::<isa>): BLIS-style packing, cache blocking and a
// register-tiled microkernel. C = alpha * op(A) op(B) + beta * C, then the epilogue.
// Sizes: op(A) is (m, k), op(B) is (k, n), C is (m, n) row-major with leading dims lda/ldb/ldc.
//
// Determinism: every element of C is reduced over k in the same order (fixed KC blocks,
// ascending k) whatever the thread count or tile position; threads split m or n, never k.
#pragma once
#include <cstdint>
#include "gemm/gemm_types.h"

namespace seqcore {
namespace SEQCORE_ISA {

template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, const Epilogue<T>* ep);

// Pre-packed right operand (a weight reused across many products, e.g. every time step).
template <class T> int64_t packed_b_size(int64_t k, int64_t n);
template <class T> void pack_b(bool trans_b, int64_t k, int64_t n, const T* b, int64_t ldb, T* packed);
template <class T>
void gemm_packed(bool trans_a, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
                 const T* packed_b, T beta, T* c, int64_t ldc, const Epilogue<T>* ep);

// gemm_packed restricted to columns [j0, j1) of the packed B (of n_total columns; j0 a
// multiple of gemm_nr()), on the calling thread: C's columns j0..j1 (c points at column 0)
// get exactly the values gemm_packed would give them. For callers that own the loop over
// column blocks (a recurrent step: two products and the gate math per block).
template <class T>
void gemm_packed_cols(bool trans_a, int64_t m, int64_t n_total, int64_t j0, int64_t j1, int64_t k, T alpha,
                      const T* a, int64_t lda, const T* packed_b, T beta, T* c, int64_t ldc, const Epilogue<T>* ep);

// Few rows (m <= gemv_max_rows()) against packed B columns [j0, j1): C = A B (+ C when
// accumulate) (+ bias[col]), on the calling thread. A GEMV-shaped kernel that sums over k in
// interleaved chains (it hides the FMA latency with one row): its last bits may differ from
// gemm_packed's, but never with the thread count or the column range.
template <class T> int gemv_max_rows();
template <class T>
void gemv_packed_cols(int64_t m, int64_t n_total, int64_t j0, int64_t j1, int64_t k, const T* a, int64_t lda,
                      const T* packed_b, bool accumulate, const T* bias, T* c, int64_t ldc);

// The GEMM's thread policy for work worth `flops` (or flop-equivalents of memory traffic):
// at most the pool, fewer while the host has been starting workers late. And its fork-join:
// fn(ctx, part, parts) on nt threads (the caller is part 0); an exception is rethrown after.
template <class T> int gemm_threads(double flops);
void gemm_parallel(int nt, void (*fn)(void* ctx, int part, int parts), void* ctx);

// Width of the GEMM's register tile in columns (tiles handed to Epilogue::tile_fn start at
// multiples of it and are at most this wide).
template <class T> int gemm_nr();

// Column sums of a row-major (rows, cols) matrix: out[j] (+)= sum_i x[i, j], i ascending.
template <class T> void col_sum(const T* x, int64_t rows, int64_t cols, T* out, bool accumulate);

}  // namespace SEQCORE_ISA
}  // namespace seqcore
