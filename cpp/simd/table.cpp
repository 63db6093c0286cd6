// Fills this ISA's dispatch table (compiled once per ISA like every kernel source).
#include "gemm/gemm.h"
#include "ops/attention.h"
#include "ops/layers.h"
#include "ops/activations.h"
#include "ops/norm.h"
#include "ops/optim.h"
#include "ops/recurrent.h"
#include "runtime/kernels.h"

namespace seqcore {
namespace SEQCORE_ISA {

double fma_probe(int64_t iters);

namespace {
template <class T> void fill(KernelsT<T>& k) {
  k.gemm = &gemm<T>;
  k.packed_b_size = &packed_b_size<T>;
  k.pack_b = &pack_b<T>;
  k.gemm_packed = &gemm_packed<T>;
  k.col_sum = &col_sum<T>;
  k.unary_forward = &unary_forward<T>;
  k.unary_backward = &unary_backward<T>;
  k.prelu_forward = &prelu_forward<T>;
  k.prelu_backward = &prelu_backward<T>;
  k.softmax_forward = &softmax_forward<T>;
  k.softmax_backward = &softmax_backward<T>;
  k.recurrent_gate_cols = &recurrent_gate_cols<T>;
  k.recurrent_workspace_size = &recurrent_workspace_size<T>;
  k.recurrent_forward = &recurrent_forward<T>;
  k.recurrent_backward = &recurrent_backward<T>;
  k.recurrent_packed_size = &recurrent_packed_size<T>;
  k.recurrent_pack = &recurrent_pack<T>;
  k.recurrent_step = &recurrent_step<T>;
  k.sgd_step = &sgd_step<T>;
  k.adam_step = &adam_step<T>;
  k.rmsprop_step = &rmsprop_step<T>;
  k.norm_partials = &norm_partials<T>;
  k.scale_inplace = &scale_inplace<T>;
  k.clamp_inplace = &clamp_inplace<T>;
  k.cross_entropy_forward = &cross_entropy_forward<T>;
  k.cross_entropy_backward = &cross_entropy_backward<T>;
  k.layer_norm_forward = &layer_norm_forward<T>;
  k.layer_norm_backward_work = &layer_norm_backward_work<T>;
  k.layer_norm_backward = &layer_norm_backward<T>;
  k.batch_norm_work = &batch_norm_work<T>;
  k.batch_norm_forward = &batch_norm_forward<T>;
  k.batch_norm_backward = &batch_norm_backward<T>;
  k.attention_forward = &attention_forward<T>;
  k.attention_backward = &attention_backward<T>;
  k.attention_probs = &attention_probs<T>;
  k.embedding_forward = &embedding_forward<T>;
  k.embedding_backward = &embedding_backward<T>;
  k.dropout_apply = &dropout_apply<T>;
}
}  // namespace

void fill_table(Kernels& t) {
  t.isa = SEQCORE_ISA_NAME;
  fill(t.f32);
  fill(t.f64);
  t.fma_probe = &fma_probe;
}

}  // namespace SEQCORE_ISA
}  // namespace seqcore
