"""Transformer parts: positional encoding, position-wise FFN, embedding, dropout.

Shape letters: ``*`` leading dims, E model dim, F hidden (feed-forward) dim, V vocabulary
(num_embeddings).
"""
import numpy as np

from .activations import gelu, gelu_backward

__all__ = [
    "sinusoidal_positional_encoding",
    "feed_forward", "feed_forward_backward",
    "embedding", "embedding_backward",
    "dropout",
]


def sinusoidal_positional_encoding(max_len, d_model, dtype=np.float32):
    r"""Sinusoidal positional encoding of "Attention Is All You Need".

    Parameters
    ----------
    max_len : int
    d_model : int
        Odd values are allowed (the last column is then a sine).
    dtype : numpy dtype

    Returns
    -------
    pe : ndarray, shape (max_len, d_model)

    Notes
    -----
    Computed in float64, then cast:

    .. math::

        PE_{pos, 2i} = \sin\left(pos / 10000^{2i/d}\right), \qquad
        PE_{pos, 2i+1} = \cos\left(pos / 10000^{2i/d}\right)
    """
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    two_i = (np.arange(d_model) // 2 * 2).astype(np.float64)
    angle = pos / 10000.0 ** (two_i / d_model)
    pe = np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))
    return pe.astype(dtype)


def _rows(m):
    """Merge all leading axes: (*, F) -> (rows, F)."""
    return m.reshape(-1, m.shape[-1])


def feed_forward(x, w1, b1, w2, b2, activation="relu"):
    r"""Position-wise feed-forward block, weights in PyTorch ``Linear`` layout.

    Parameters
    ----------
    x : ndarray, shape (*, E)
    w1 : ndarray, shape (F, E)
    b1 : ndarray, shape (F,), or None
    w2 : ndarray, shape (E, F)
    b2 : ndarray, shape (E,), or None
    activation : {'relu', 'gelu'}
        'gelu' is the exact (erf) GELU.

    Returns
    -------
    y : ndarray, shape (*, E)
    ctx : dict
        Saved for :func:`feed_forward_backward`.

    Notes
    -----
    .. math:: h = x W_1^\top + b_1, \qquad a = \phi(h), \qquad y = a W_2^\top + b_2
    """
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
    x, w1, w2 = np.asarray(x), np.asarray(w1), np.asarray(w2)
    h = x @ w1.T
    if b1 is not None:
        h = h + b1
    a = np.maximum(h, 0).astype(h.dtype, copy=False) if activation == "relu" else gelu(h)
    y = a @ w2.T
    if b2 is not None:
        y = y + b2
    ctx = dict(x=x, w1=w1, w2=w2, h=h, a=a, activation=activation,
               has_b1=b1 is not None, has_b2=b2 is not None)
    return y, ctx


def feed_forward_backward(ctx, dy):
    r"""Gradients of :func:`feed_forward`.

    Parameters
    ----------
    ctx : dict
        From :func:`feed_forward`.
    dy : ndarray, shape (*, E)

    Returns
    -------
    grads : dict
        ``'x' (*,E)``, ``'w1' (F,E)``, ``'b1' (F,)``, ``'w2' (E,F)``, ``'b2' (E,)``; bias
        grads are None when the bias was None.

    Notes
    -----
    With rows ``n`` over the leading dims:

    .. math::

        da = dy\, W_2, \quad dW_2 = \sum_n dy_n^\top a_n, \quad db_2 = \sum_n dy_n, \quad
        dh = da \odot \phi'(h) \\
        dx = dh\, W_1, \quad dW_1 = \sum_n dh_n^\top x_n, \quad db_1 = \sum_n dh_n
    """
    dy = np.asarray(dy)
    x, h, a = ctx["x"], ctx["h"], ctx["a"]
    da = dy @ ctx["w2"]
    if ctx["activation"] == "relu":
        dh = np.where(h > 0, da, 0).astype(da.dtype, copy=False)
    else:
        dh = gelu_backward(da, h)
    return {
        "x": dh @ ctx["w1"],
        "w1": _rows(dh).T @ _rows(x),
        "b1": _rows(dh).sum(axis=0) if ctx["has_b1"] else None,
        "w2": _rows(dy).T @ _rows(a),
        "b2": _rows(dy).sum(axis=0) if ctx["has_b2"] else None,
    }


def _padding_idx(padding_idx, num_embeddings):
    """Normalize a negative ``padding_idx`` as PyTorch does."""
    if padding_idx is None:
        return None
    if not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"padding_idx must be within [-{num_embeddings}, {num_embeddings})")
    return padding_idx % num_embeddings


def embedding(ids, weight, padding_idx=None):
    r"""Embedding lookup (PyTorch ``F.embedding``).

    Parameters
    ----------
    ids : int ndarray, shape (*)
        Values in ``[0, V)``.
    weight : ndarray, shape (V, E)
    padding_idx : int, optional
        Only affects the backward pass (its row gets no gradient), as in PyTorch.

    Returns
    -------
    y : ndarray, shape (*, E)

    Notes
    -----
    .. math:: y_{\dots} = W_{\,\text{ids}_{\dots}}
    """
    weight = np.asarray(weight)
    _padding_idx(padding_idx, weight.shape[0])
    return weight[np.asarray(ids)]


def embedding_backward(dy, ids, num_embeddings, padding_idx=None):
    r"""Gradient of :func:`embedding` with respect to the weight.

    Parameters
    ----------
    dy : ndarray, shape (*, E)
    ids : int ndarray, shape (*)
    num_embeddings : int
        V.
    padding_idx : int, optional

    Returns
    -------
    dweight : ndarray, shape (V, E)

    Notes
    -----
    Scatter-add of the rows of ``dy`` (repeated ids accumulate):

    .. math:: dW_v = \sum_{\text{ids}_{\dots} = v} dy_{\dots}, \qquad
        dW_{\text{padding\_idx}} = 0
    """
    dy = np.asarray(dy)
    dw = np.zeros((num_embeddings, dy.shape[-1]), dy.dtype)
    np.add.at(dw, np.asarray(ids).reshape(-1), dy.reshape(-1, dy.shape[-1]))
    p = _padding_idx(padding_idx, num_embeddings)
    if p is not None:
        dw[p] = 0
    return dw


def dropout(x, p, rng):
    r"""Inverted dropout with an explicit random generator.

    Parameters
    ----------
    x : ndarray, shape (*)
    p : float
        Drop probability in ``[0, 1]``.
    rng : numpy.random.Generator

    Returns
    -------
    y : ndarray, shape (*)
    mask : bool ndarray, shape (*)
        True where the element is kept. The backward pass is ``dx = dy * mask / (1 - p)``.

    Notes
    -----
    .. math:: m \sim \text{Bernoulli}(1 - p), \qquad y = \frac{m \odot x}{1 - p}

    ``p = 1`` gives all zeros (as PyTorch).
    """
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    x = np.asarray(x)
    mask = rng.random(x.shape) >= p
    if p == 1:
        return np.zeros_like(x), mask
    return np.where(mask, x * x.dtype.type(1 / (1 - p)), 0).astype(x.dtype, copy=False), mask
