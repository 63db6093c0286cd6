// Types shared by every ISA's GEMM and its callers (no ISA-specific code here).
#pragma once
#include <cstdint>

namespace seqcore {

enum class Act : int { none = 0, relu, gelu, gelu_tanh, tanh, sigmoid, silu };

// Applied to each finished tile of C while it is still in cache: C = act(C + bias[col]).
// tile_fn, when set, runs after that on finished spans of C (rows i0.., cols j0.., mb x nb) —
// used to fuse recurrent gate math into the GEMM. It must only touch that span's rows and
// columns. A span is one register tile's rows by tile_cols columns: spans start at multiples
// of tile_cols counted from column 0 of the whole product (the last one may be narrower).
// tile_cols is 0 (one tile: the GEMM's NR columns) or a multiple of gemm_nr.
template <class T>
struct Epilogue {
  const T* bias = nullptr;  // length n (one per output column), or null
  Act act = Act::none;
  void (*tile_fn)(void* ctx, T* c, int64_t ldc, int64_t i0, int64_t j0, int64_t mb, int64_t nb) = nullptr;
  void* tile_ctx = nullptr;
  int64_t tile_cols = 0;
};

}  // namespace seqcore
