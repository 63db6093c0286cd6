"""Multi-head attention (``torch.nn.MultiheadAttention``) on the flash-style C++ kernel."""
import numpy as np

from seqcore import functional as F
from seqcore import init
from seqcore.nn.layers import Linear
from seqcore.nn.module import Module, Parameter, make_rng

__all__ = ["MultiheadAttention"]


class MultiheadAttention(Module):
    r"""``out = Concat(head_1, ..., head_N) W_o^T + b_o``,
    ``head_h = softmax(Q_h K_h^T / sqrt(D) + M) V_h``, ``Q = x_q W_q^T + b_q`` (and K, V).

    PyTorch's parameters and initialisation: ``in_proj_weight`` (3E, E) Xavier-uniform with row
    blocks W_q, W_k, W_v (or ``q_proj_weight`` (E, E), ``k_proj_weight`` (E, kdim),
    ``v_proj_weight`` (E, vdim) when kdim/vdim differ from E), ``in_proj_bias`` (3E,) = 0,
    ``out_proj.weight`` (E, E) (``Linear``'s init), ``out_proj.bias`` = 0. ``dropout`` applies
    to the attention weights in training mode (a counter-based mask, regenerated in
    backward). ``add_bias_kv``: ``bias_k``, ``bias_v`` (1, 1, E), Xavier-normal, appended as
    one more key and value of every sequence; ``add_zero_attn``: a key and value of zeros
    appended to every head (see :func:`seqcore.functional.multi_head_attention`).

    ``forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
    average_attn_weights=True, is_causal=False)`` -> ``(attn_output, attn_weights or None)``;
    shapes and mask conventions as :func:`seqcore.functional.multi_head_attention` (bool
    masks: True = masked out). Unlike PyTorch, ``need_weights`` defaults to False: the
    weights are an L x S matrix per head, which the fast path never builds.

    ``backward(d_attn_output)`` -> ``(d_query, d_key, d_value)`` and adds into every
    parameter's ``.grad``. When query, key and value were one array (self-attention) the
    whole input gradient is ``d_query`` and ``d_key = d_value = None``; when only key and
    value were one array, ``d_key`` holds their total and ``d_value`` is None.
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, *, dtype=np.float32, rng=None):
        super().__init__()
        E, N = int(embed_dim), int(num_heads)
        if E < 1 or N < 1 or E % N:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embed_dim, self.num_heads, self.head_dim = E, N, E // N
        self.kdim = E if kdim is None else int(kdim)
        self.vdim = E if vdim is None else int(vdim)
        self._qkv_same_embed_dim = self.kdim == E and self.vdim == E
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        rng = make_rng(rng)
        self._rng = rng
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(np.empty((3 * E, E), dtype))
            init.xavier_uniform_(self.in_proj_weight, rng=rng)
            self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None
        else:
            self.in_proj_weight = None
            self.q_proj_weight = Parameter(np.empty((E, E), dtype))
            self.k_proj_weight = Parameter(np.empty((E, self.kdim), dtype))
            self.v_proj_weight = Parameter(np.empty((E, self.vdim), dtype))
            for p in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(p, rng=rng)
        self.in_proj_bias = Parameter(np.zeros(3 * E, dtype)) if bias else None
        if add_bias_kv:
            self.bias_k = Parameter(np.empty((1, 1, E), dtype))
            self.bias_v = Parameter(np.empty((1, 1, E), dtype))
            init.xavier_normal_(self.bias_k, rng=rng)
            init.xavier_normal_(self.bias_v, rng=rng)
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = bool(add_zero_attn)
        self.out_proj = Linear(E, E, bias=bias, dtype=dtype, rng=rng)
        if bias:
            init.zeros_(self.out_proj.bias)
        self._ctx = None

    def extra_repr(self):
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"batch_first={self.batch_first}")

    def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        p = self.dropout if self.training else 0.0
        wb = None if self.in_proj_bias is None else self.in_proj_bias.data
        ob = None if self.out_proj.bias is None else self.out_proj.bias.data
        sep = dict(q_proj_weight=self.q_proj_weight.data, k_proj_weight=self.k_proj_weight.data,
                   v_proj_weight=self.v_proj_weight.data) if self.in_proj_weight is None else {}
        out, weights, ctx = F.multi_head_attention(
            query, key, value, self.num_heads, None if self.in_proj_weight is None else self.in_proj_weight.data,
            wb, self.out_proj.weight.data, ob, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
            is_causal=is_causal, dropout_p=p, need_weights=need_weights, average_attn_weights=average_attn_weights,
            batch_first=self.batch_first, rng=self._rng, add_zero_attn=self.add_zero_attn,
            bias_k=None if self.bias_k is None else self.bias_k.data,
            bias_v=None if self.bias_v is None else self.bias_v.data, **sep)
        self._ctx = ctx
        return out, weights

    def backward(self, d_attn_output):
        if self._ctx is None:
            raise RuntimeError("MultiheadAttention.backward needs a preceding forward")
        g = F.multi_head_attention_backward(self._ctx, d_attn_output)
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight", "in_proj_bias"):
            p = getattr(self, name)
            if p is not None:
                p.grad += g[name]
        if self.bias_k is not None:
            self.bias_k.grad += g["bias_k"].reshape(self.bias_k.shape)
            self.bias_v.grad += g["bias_v"].reshape(self.bias_v.shape)
        self.out_proj.weight.grad += g["out_proj_weight"]
        if self.out_proj.bias is not None:
            self.out_proj.bias.grad += g["out_proj_bias"]
        return g["query"], g["key"], g["value"]
