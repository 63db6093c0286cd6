// Types shared by every ISA's GEMM and its callers (no ISA-specific code here).
#pragma once
#include <cstdint>

namespace seqcore {

enum class Act : int { none = 0, relu, gelu, gelu_tanh, tanh, sigmoid, silu };

// Applied to each finished tile of C while it is still in cache: C = act(C + bias[col]).
// tile_fn, when set, runs after that on the tile (rows i0.., cols j0.., mb x nb) — used to
// fuse recurrent gate math into the GEMM. It must only touch that tile's rows and columns.
template <class T>
struct Epilogue {
  const T* bias = nullptr;  // length n (one per output column), or null
  Act act = Act::none;
  void (*tile_fn)(void* ctx, T* c, int64_t ldc, int64_t i0, int64_t j0, int64_t mb, int64_t nb) = nullptr;
  void* tile_ctx = nullptr;
};

}  // namespace seqcore
