"""Attention: pure-NumPy twins (the naive softmax(Q K^T) V, with the full score matrix).

Shape letters: L query length, S key length, E embed (model) dim, D head dim, N heads,
B batch, ``...`` any batch dims.

Mask conventions differ between the two PyTorch entry points, and we follow each:

* :func:`scaled_dot_product_attention`: boolean ``attn_mask`` True = **keep** (may attend).
* :func:`multi_head_attention`: boolean ``attn_mask`` and ``key_padding_mask`` True =
  **masked out** (may not attend / ignore this key).

In both, a float mask is *added* to the scores (use ``-inf`` to block). Unlike PyTorch, a
query row whose keys are all masked out yields zeros (output and gradients), not NaN.
"""
import math

import numpy as np

__all__ = [
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "multi_head_attention", "multi_head_attention_backward",
]


def _t(a):
    """Swap the last two axes."""
    return np.swapaxes(a, -1, -2)


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (undo NumPy broadcasting of the leading dims)."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape)))) if g.ndim > len(shape) else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _masked_scores(q, k, scale, keep=None, add=None):
    """Scores ``scale * q k^T``, plus ``add``, set to -inf where ``keep`` is False."""
    s = (q @ _t(k)) * q.dtype.type(scale)
    if add is not None:
        s = s + add
    if keep is not None:
        s = np.where(keep, s, -np.inf)
    return s


def _softmax_rows(s):
    """Row softmax over the last axis; rows that are entirely -inf give zeros."""
    m = np.max(s, axis=-1, keepdims=True, initial=-np.inf)
    p = np.exp(s - np.where(np.isfinite(m), m, 0))
    den = np.sum(p, axis=-1, keepdims=True)
    return p / np.where(den == 0, 1, den)


def _attention_grads(dout, q, k, v, p, scale):
    """Gradients of ``out = softmax(scale q k^T + mask) v`` given the probabilities ``p``."""
    dv = _t(p) @ dout
    dp = dout @ _t(v)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True))
    sc = q.dtype.type(scale)
    return (ds @ k) * sc, (_t(ds) @ q) * sc, dv


def _causal_keep(L, S):
    """Top-left aligned causal mask: query i may attend to key j iff j <= i."""
    return np.tril(np.ones((L, S), dtype=bool))


def _sdpa_probs(q, k, attn_mask, is_causal, scale):
    q, k = np.asarray(q), np.asarray(k)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    keep = _causal_keep(q.shape[-2], k.shape[-2]) if is_causal else None
    add = None
    if attn_mask is not None:
        attn_mask = np.asarray(attn_mask)
        if attn_mask.dtype == bool:
            keep = attn_mask if keep is None else keep & attn_mask
        else:
            add = attn_mask.astype(q.dtype, copy=False)
    return _softmax_rows(_masked_scores(q, k, scale, keep, add)), scale


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    r"""Scaled dot-product attention, PyTorch ``F.scaled_dot_product_attention`` semantics.

    Parameters
    ----------
    q : ndarray, shape (..., L, E)
    k : ndarray, shape (..., S, E)
    v : ndarray, shape (..., S, Ev)
    attn_mask : ndarray, optional, broadcastable to (..., L, S)
        Boolean: True = **keep** (query may attend to key). Float: added to the scores.
    is_causal : bool
        Keep only keys ``j <= i`` (top-left aligned: the ``tril`` of an (L, S) ones matrix,
        as PyTorch). Combined (logical and) with ``attn_mask`` when both are given; PyTorch
        refuses that combination.
    scale : float, optional
        Defaults to ``1/sqrt(E)``.

    Returns
    -------
    out : ndarray, shape (..., L, Ev)

    Notes
    -----
    .. math::

        S = \text{scale}\; Q K^\top + M, \qquad P = \operatorname{softmax}_{\text{rows}}(S),
        \qquad O = P V

    where ``M`` is the float mask, or 0 / -inf from the boolean and causal masks. Rows with
    every key masked give ``P = 0`` and so ``O = 0`` (PyTorch gives NaN there).
    """
    p, _ = _sdpa_probs(q, k, attn_mask, is_causal, scale)
    return p @ np.asarray(v)


def scaled_dot_product_attention_backward(dout, q, k, v, attn_mask=None, is_causal=False,
                                          scale=None):
    r"""Gradients of :func:`scaled_dot_product_attention` (recomputes ``P``).

    Parameters
    ----------
    dout : ndarray, shape (..., L, Ev)
    q, k, v, attn_mask, is_causal, scale
        As in the forward call.

    Returns
    -------
    dq : ndarray, shape of ``q``
    dk : ndarray, shape of ``k``
    dv : ndarray, shape of ``v``

    Notes
    -----
    .. math::

        dV = P^\top dO, \quad dP = dO\, V^\top, \quad
        dS = P \odot (dP - \operatorname{rowsum}(dP \odot P)), \quad
        dQ = \text{scale}\; dS\, K, \quad dK = \text{scale}\; dS^\top Q

    summed over any broadcast batch dims.
    """
    q, k, v = np.asarray(q), np.asarray(k), np.asarray(v)
    p, scale = _sdpa_probs(q, k, attn_mask, is_causal, scale)
    dq, dk, dv = _attention_grads(np.asarray(dout), q, k, v, p, scale)
    return _unbroadcast(dq, q.shape), _unbroadcast(dk, k.shape), _unbroadcast(dv, v.shape)


def _split_heads(x, N):
    """(T, B, E) -> (B*N, T, D), batch-head index ``b*N + h`` (PyTorch's layout)."""
    T, B, E = x.shape
    return x.reshape(T, B * N, E // N).transpose(1, 0, 2)


def _flat(a):
    """Merge all leading axes: (..., F) -> (rows, F)."""
    return a.reshape(-1, a.shape[-1])


def _merge_heads(x, B):
    """(B*N, T, D) -> (T, B, E)."""
    BN, T, D = x.shape
    return x.transpose(1, 0, 2).reshape(T, B, (BN // B) * D)


def multi_head_attention(query, key, value, in_proj_weight, in_proj_bias, out_proj_weight,
                         out_proj_bias, num_heads, key_padding_mask=None, attn_mask=None,
                         is_causal=False):
    r"""Multi-head attention with a packed QKV projection, as PyTorch's
    ``F.multi_head_attention_forward`` (``batch_first=False``, no dropout).

    Parameters
    ----------
    query : ndarray, shape (L, B, E)
    key : ndarray, shape (S, B, E)
    value : ndarray, shape (S, B, E)
    in_proj_weight : ndarray, shape (3E, E)
        Row blocks ``W_q, W_k, W_v``.
    in_proj_bias : ndarray, shape (3E,), or None
    out_proj_weight : ndarray, shape (E, E)
    out_proj_bias : ndarray, shape (E,), or None
    num_heads : int
        N, must divide E; head dim ``D = E / N``.
    key_padding_mask : ndarray, shape (B, S), optional
        Boolean: True = **ignore** this key (PyTorch's convention). Float: added to scores.
    attn_mask : ndarray, shape (L, S) or (B*N, L, S), optional
        Boolean: True = **not allowed** to attend (PyTorch MHA convention, the opposite of
        :func:`scaled_dot_product_attention`). Float: added to the scores. The (B*N, L, S)
        form is indexed by ``b*N + h``.
    is_causal : bool
        Also block keys ``j > i`` (combined with any ``attn_mask``). In PyTorch this flag is
        only a hint that needs ``attn_mask``; here it applies the causal mask itself.

    Returns
    -------
    out : ndarray, shape (L, B, E)
    ctx : dict
        Saved for :func:`multi_head_attention_backward`; ``ctx['probs'] (B*N, L, S)`` are the
        per-head attention weights.

    Notes
    -----
    .. math::

        Q = x_q W_q^\top + b_q,\quad K = x_k W_k^\top + b_k,\quad V = x_v W_v^\top + b_v \\
        \text{head}_h = \operatorname{softmax}\left(\frac{Q_h K_h^\top}{\sqrt D} + M\right) V_h \\
        \text{out} = [\text{head}_1, \dots, \text{head}_N]\, W_o^\top + b_o

    Fully masked query rows give zero heads (PyTorch gives NaN).
    """
    query, key, value = np.asarray(query), np.asarray(key), np.asarray(value)
    L, B, E = query.shape
    S = key.shape[0]
    if E % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the embed dim E={E}")
    D = E // num_heads
    w_q, w_k, w_v = np.split(np.asarray(in_proj_weight), 3)
    b_q, b_k, b_v = (None,) * 3 if in_proj_bias is None else np.split(np.asarray(in_proj_bias), 3)
    q = _split_heads(query @ w_q.T + (0 if b_q is None else b_q), num_heads)
    k = _split_heads(key @ w_k.T + (0 if b_k is None else b_k), num_heads)
    v = _split_heads(value @ w_v.T + (0 if b_v is None else b_v), num_heads)

    keep = _causal_keep(L, S) if is_causal else np.ones((L, S), dtype=bool)
    add = np.zeros((1, L, S), query.dtype)
    if attn_mask is not None:
        attn_mask = np.asarray(attn_mask)
        if attn_mask.dtype == bool:
            keep = keep & ~attn_mask
        else:
            add = add + attn_mask
    if key_padding_mask is not None:
        kpm = np.repeat(np.asarray(key_padding_mask), num_heads, axis=0)[:, None, :]  # (B*N,1,S)
        if kpm.dtype == bool:
            keep = keep & ~kpm
        else:
            add = add + kpm
    scale = 1 / math.sqrt(D)
    p = _softmax_rows(_masked_scores(q, k, scale, keep, add.astype(query.dtype, copy=False)))
    heads = _merge_heads(p @ v, B)  # (L, B, E)
    out = heads @ np.asarray(out_proj_weight).T
    if out_proj_bias is not None:
        out = out + out_proj_bias
    ctx = dict(query=query, key=key, value=value, w_q=w_q, w_k=w_k, w_v=w_v,
               has_in_bias=in_proj_bias is not None, has_out_bias=out_proj_bias is not None,
               out_proj_weight=np.asarray(out_proj_weight), num_heads=num_heads, scale=scale,
               q=q, k=k, v=v, probs=p, heads=heads)
    return out, ctx


def multi_head_attention_backward(ctx, dout):
    r"""Gradients of :func:`multi_head_attention`.

    Parameters
    ----------
    ctx : dict
        From :func:`multi_head_attention`.
    dout : ndarray, shape (L, B, E)

    Returns
    -------
    grads : dict
        ``'query' (L,B,E)``, ``'key' (S,B,E)``, ``'value' (S,B,E)``,
        ``'in_proj_weight' (3E,E)``, ``'in_proj_bias' (3E,)``, ``'out_proj_weight' (E,E)``,
        ``'out_proj_bias' (E,)``; bias grads are None when the bias was None. For
        self-attention (one array passed as query, key and value) add the three input grads.

    Notes
    -----
    .. math::

        d\text{heads} = dO\, W_o, \quad dW_o = \sum dO^\top \text{heads}, \quad
        db_o = \sum dO

    then per head the attention gradients of :func:`scaled_dot_product_attention_backward`,
    and for each projection ``P = x W^T + b``: ``dx = dP W``, ``dW = sum dP^T x``,
    ``db = sum dP``.
    """
    dout = np.asarray(dout)
    B = dout.shape[1]
    dheads = dout @ ctx["out_proj_weight"]
    dq, dk, dv = _attention_grads(_split_heads(dheads, ctx["num_heads"]), ctx["q"], ctx["k"],
                                  ctx["v"], ctx["probs"], ctx["scale"])
    grads = {"out_proj_weight": _flat(dout).T @ _flat(ctx["heads"]),
             "out_proj_bias": _flat(dout).sum(axis=0) if ctx["has_out_bias"] else None}
    dws, dbs = [], []
    for name, d, w in (("query", dq, ctx["w_q"]), ("key", dk, ctx["w_k"]),
                       ("value", dv, ctx["w_v"])):
        dp = _merge_heads(d, B)
        grads[name] = dp @ w
        dws.append(_flat(dp).T @ _flat(ctx[name]))
        dbs.append(_flat(dp).sum(axis=0))
    grads["in_proj_weight"] = np.concatenate(dws)
    grads["in_proj_bias"] = np.concatenate(dbs) if ctx["has_in_bias"] else None
    return grads
