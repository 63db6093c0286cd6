"""Transformer parts with PyTorch's names: Embedding, Dropout, FeedForward,
SinusoidalPositionalEncoding, TransformerEncoderLayer, TransformerEncoder.

Shape letters: T (or L) sequence length, B batch, E = d_model, F = dim_feedforward,
V = num_embeddings. Time-major ``(T, B, E)`` unless ``batch_first``.
"""
import copy

import numpy as np

from seqcore import functional as F
from seqcore import init
from seqcore.nn.attention import MultiheadAttention
from seqcore.nn.layers import Linear
from seqcore.nn.module import Module, ModuleList, Parameter, make_rng
from seqcore.nn.norm import LayerNorm

__all__ = ["Embedding", "Dropout", "FeedForward", "SinusoidalPositionalEncoding", "TransformerEncoderLayer",
           "TransformerEncoder"]


def _cached(module, what="forward"):
    if module._cache is None:
        raise RuntimeError(f"{type(module).__name__}.backward needs a preceding {what}")
    return module._cache


class Embedding(Module):
    r"""``y[...] = weight[input[...]]`` (``torch.nn.Embedding``); ``weight`` (V, E) ~ N(0, 1)
    with row ``padding_idx`` zeroed (it also gets no gradient). ``max_norm``: rows looked up
    are first rescaled in place to norm at most ``max_norm`` (``norm_type``-norm);
    ``scale_grad_by_freq``: each row's gradient is divided by its count in the batch.

    ``forward(input)``: integer ids (*) -> (*, E). ``backward(dy)``: adds the scatter-sum of
    dy into ``weight.grad`` (in position order: the same bits for any thread count); returns
    None (ids have no gradient).
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, *, dtype=np.float32, rng=None):
        super().__init__()
        V, E = int(num_embeddings), int(embedding_dim)
        if V < 1 or E < 0:
            raise ValueError(f"num_embeddings must be >= 1 and embedding_dim >= 0, got {num_embeddings}, {embedding_dim}")
        if sparse:
            raise NotImplementedError("Embedding: sparse gradients are not supported (gradients are dense)")
        if padding_idx is not None:
            if not -V <= int(padding_idx) < V:
                raise ValueError(f"padding_idx must be within [-{V}, {V}), got {padding_idx}")
            padding_idx = int(padding_idx) % V
        self.num_embeddings, self.embedding_dim, self.padding_idx = V, E, padding_idx
        self.max_norm = None if max_norm is None else float(max_norm)
        self.norm_type, self.scale_grad_by_freq = float(norm_type), bool(scale_grad_by_freq)
        self.weight = Parameter(np.empty((V, E), dtype))
        init.normal_(self.weight, rng=make_rng(rng))
        if padding_idx is not None:
            self.weight.data[padding_idx] = 0
        self._cache = None

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, **kw):
        e = np.asarray(embeddings)
        m = cls(e.shape[0], e.shape[1], padding_idx=padding_idx, dtype=e.dtype, **kw)
        m.weight.data = e.copy()
        m.freeze = bool(freeze)
        return m

    def forward(self, input):
        ids = np.asarray(input)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"argument 'input' must be an integer array, got {ids.dtype}")
        if self.max_norm is not None and ids.size:
            rows = np.unique(ids)
            if rows.min() < 0 or rows.max() >= self.num_embeddings:
                raise ValueError(f"argument 'input' has indices out of range [0, {self.num_embeddings})")
            w = self.weight.data
            norms = np.linalg.norm(w[rows], ord=self.norm_type, axis=1)
            scale = np.where(norms > self.max_norm, self.max_norm / (norms + 1e-7), 1.0).astype(w.dtype)
            w[rows] *= scale[:, None]
            self.weight.version += 1
        y = F.embedding(ids, self.weight.data, self.padding_idx)
        self._cache = ids
        return y

    def backward(self, dy):
        ids = _cached(self)
        dw = F.embedding_backward(dy, ids, self.num_embeddings, self.padding_idx)
        if self.scale_grad_by_freq:
            counts = np.bincount(ids.reshape(-1), minlength=self.num_embeddings)
            dw /= np.maximum(counts, 1).astype(dw.dtype)[:, None]
        if not getattr(self, "freeze", False):
            self.weight.grad += dw
        return None

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}" + (
            f", padding_idx={self.padding_idx}" if self.padding_idx is not None else "")


class Dropout(Module):
    r"""Inverted dropout (``torch.nn.Dropout``): in training ``y = x keep / (1 - p)``,
    keep ~ Bernoulli(1 - p) from a counter-based stream seeded by the module's generator
    (``rng``: int seed or Generator, so runs are reproducible); identity in eval mode.
    ``backward(dy)`` regenerates the same mask from the saved seed."""

    def __init__(self, p=0.5, inplace=False, *, rng=None):
        super().__init__()
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = float(p)
        self.rng = make_rng(rng)
        self._seed = None

    def forward(self, x):
        y, self._seed = F.dropout(x, self.p, training=self.training, rng=self.rng, return_seed=True)
        return y

    def backward(self, dy):
        return F.dropout_backward(dy, self.p, self._seed)

    def extra_repr(self):
        return f"p={self.p}"


def _activation_name(activation):
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
    return activation


class _FFN:
    """Linear -> activation -> dropout -> Linear on two Linear modules (shared by FeedForward
    and TransformerEncoderLayer, which keeps PyTorch's flat names linear1 / linear2)."""

    @staticmethod
    def forward(owner, x):
        l1, l2 = owner.linear1, owner.linear2
        y, ctx = F.feed_forward(x, l1.weight.data, None if l1.bias is None else l1.bias.data, l2.weight.data,
                                None if l2.bias is None else l2.bias.data, owner.activation,
                                owner.dropout.p if owner.training else 0.0, rng=owner.dropout.rng)
        return y, ctx

    @staticmethod
    def backward(owner, ctx, dy):
        g = F.feed_forward_backward(ctx, dy)
        l1, l2 = owner.linear1, owner.linear2
        l1.weight.grad += g["w1"]
        l2.weight.grad += g["w2"]
        if l1.bias is not None:
            l1.bias.grad += g["b1"]
        if l2.bias is not None:
            l2.bias.grad += g["b2"]
        return g["x"]


class FeedForward(Module):
    r"""Position-wise feed-forward block ``y = dropout(act(x W_1^T + b_1)) W_2^T + b_2`` with
    sub-modules ``linear1`` (E -> F) and ``linear2`` (F -> E); act 'relu' (fused into the
    first GEMM's epilogue) or 'gelu'. x (*, E) -> (*, E)."""

    def __init__(self, d_model, dim_feedforward=2048, activation="relu", dropout=0.0, bias=True, *,
                 dtype=np.float32, rng=None):
        super().__init__()
        rng = make_rng(rng)
        self.activation = _activation_name(activation)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, rng=rng.integers(2 ** 63))
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype, rng=rng)
        self._cache = None

    def forward(self, x):
        y, self._cache = _FFN.forward(self, x)
        return y

    def backward(self, dy):
        return _FFN.backward(self, _cached(self), dy)


class SinusoidalPositionalEncoding(Module):
    r"""Adds ``PE[pos, 2i] = sin(pos / 10000^{2i/d})``, ``PE[pos, 2i+1] = cos(pos / 10000^{2i/d})``
    to x (T, B, E) (``batch_first``: (B, T, E); or (T, E)), for T <= max_len.
    ``backward(dy) = dy``. The table is :func:`seqcore.functional.sinusoidal_positional_encoding`."""

    def __init__(self, d_model, max_len=5000, batch_first=False, *, dtype=np.float32):
        super().__init__()
        self.d_model, self.max_len, self.batch_first = int(d_model), int(max_len), bool(batch_first)
        self.pe = F.sinusoidal_positional_encoding(self.max_len, self.d_model, dtype)

    def forward(self, x):
        x = np.asarray(x)
        if x.ndim not in (2, 3) or x.shape[-1] != self.d_model:
            raise ValueError(f"argument 'x' must have shape (T, B, {self.d_model}), (B, T, {self.d_model}) or "
                             f"(T, {self.d_model}), got {x.shape}")
        T = x.shape[1] if (self.batch_first and x.ndim == 3) else x.shape[0]
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.max_len}")
        pe = self.pe[:T].astype(x.dtype, copy=False)
        if x.ndim == 3:
            pe = pe[None] if self.batch_first else pe[:, None]
        return x + pe

    def backward(self, dy):
        return dy

    def extra_repr(self):
        return f"d_model={self.d_model}, max_len={self.max_len}"


class TransformerEncoderLayer(Module):
    r"""``torch.nn.TransformerEncoderLayer``: self-attention and a feed-forward block, each with a
    residual connection and LayerNorm.

    post-norm (``norm_first=False``, the paper's ``LayerNorm(x + MultiHead(x))``)::

        x = norm1(x + dropout1(self_attn(x, x, x)))
        x = norm2(x + dropout2(linear2(dropout(act(linear1(x))))))

    pre-norm (``norm_first=True``)::

        x = x + dropout1(self_attn(norm1(x)))
        x = x + dropout2(linear2(dropout(act(linear1(norm2(x))))))

    Sub-modules (so a PyTorch state_dict loads unchanged): ``self_attn``
    (:class:`MultiheadAttention`), ``linear1`` (E -> F), ``dropout``, ``linear2`` (F -> E),
    ``norm1``, ``norm2``, ``dropout1``, ``dropout2``. ``forward(src, src_mask=None,
    src_key_padding_mask=None, is_causal=False)`` with src (T, B, E) (or (B, T, E) with
    ``batch_first``, or (T, E)); masks as in MultiheadAttention (bool True = masked out).
    ``backward(d_out)`` returns d_src and adds into every parameter's ``.grad``.
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        rng = make_rng(rng)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            dtype=dtype, rng=rng)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype, rng=rng)
        self.dropout = Dropout(dropout, rng=rng.integers(2 ** 63))
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype, rng=rng)
        self.norm_first = bool(norm_first)
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, dtype=dtype)
        self.dropout1 = Dropout(dropout, rng=rng.integers(2 ** 63))
        self.dropout2 = Dropout(dropout, rng=rng.integers(2 ** 63))
        self.activation = _activation_name(activation)
        self.batch_first = bool(batch_first)
        self._cache = None

    def reseed(self, rng):
        """New dropout streams for this layer's Dropouts and attention (``TransformerEncoder``
        calls it on each deep copy so layers do not share masks)."""
        rng = make_rng(rng)
        for d in (self.dropout, self.dropout1, self.dropout2):
            d.rng = np.random.default_rng(rng.integers(2 ** 63))
        self.self_attn._rng = np.random.default_rng(rng.integers(2 ** 63))

    def _sa(self, x, src_mask, src_key_padding_mask, is_causal):
        a, _ = self.self_attn.forward(x, x, x, key_padding_mask=src_key_padding_mask, attn_mask=src_mask,
                                      need_weights=False, is_causal=is_causal)
        return self.dropout1.forward(a)

    def _sa_backward(self, dy):
        dx, _, _ = self.self_attn.backward(self.dropout1.backward(dy))
        return dx

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        (x,) = F._float_arrays([("src", src)])
        if self.norm_first:
            x = x + self._sa(self.norm1.forward(x), src_mask, src_key_padding_mask, is_causal)
            ff, fctx = _FFN.forward(self, self.norm2.forward(x))
            x = x + self.dropout2.forward(ff)
        else:
            x = self.norm1.forward(x + self._sa(x, src_mask, src_key_padding_mask, is_causal))
            ff, fctx = _FFN.forward(self, x)
            x = self.norm2.forward(x + self.dropout2.forward(ff))
        self._cache = fctx
        return x

    def backward(self, d_out):
        fctx = _cached(self)
        (dy,) = F._float_arrays([("d_out", d_out)])
        if self.norm_first:
            # x2 = x1 + ff(norm2(x1)); x1 = x + sa(norm1(x))
            dx1 = dy + self.norm2.backward(_FFN.backward(self, fctx, self.dropout2.backward(dy)))
            return dx1 + self.norm1.backward(self._sa_backward(dx1))
        # x1 = norm1(x + sa(x)); out = norm2(x1 + ff(x1))
        dz2 = self.norm2.backward(dy)
        dx1 = dz2 + _FFN.backward(self, fctx, self.dropout2.backward(dz2))
        dz1 = self.norm1.backward(dx1)
        return dz1 + self._sa_backward(dz1)

    def extra_repr(self):
        return f"d_model={self.self_attn.embed_dim}, nhead={self.self_attn.num_heads}, norm_first={self.norm_first}"


class TransformerEncoder(Module):
    r"""A stack of ``num_layers`` deep copies of ``encoder_layer`` (``layers.0``, ``layers.1``,
    ...) and an optional final ``norm`` (``torch.nn.TransformerEncoder``). Each copy gets its
    own dropout streams from ``rng``. ``forward(src, mask=None, src_key_padding_mask=None,
    is_causal=False)``; ``backward(d_out)`` runs the layers' backward in reverse."""

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, mask_check=True, *, rng=None):
        super().__init__()
        if int(num_layers) < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        rng = make_rng(rng)
        layers = []
        for _ in range(int(num_layers)):
            layer = copy.deepcopy(encoder_layer)
            if hasattr(layer, "reseed"):
                layer.reseed(rng.integers(2 ** 63))
            layers.append(layer)
        self.layers = ModuleList(layers)
        self.num_layers = int(num_layers)
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        for layer in self.layers:
            x = layer.forward(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal)
        if self.norm is not None:
            x = self.norm.forward(x)
        return x

    def backward(self, d_out):
        d = d_out
        if self.norm is not None:
            d = self.norm.backward(d)
        for layer in reversed(list(self.layers)):
            d = layer.backward(d)
        return d
