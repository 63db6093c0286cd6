"""Recurrent layers (one layer, one direction): pure-NumPy twins with backprop through time.

Shape letters: T time, B batch, I input features, H hidden size, G = gates*H
(RNN G=H, LSTM G=4H with row blocks i,f,g,o, GRU G=3H with row blocks r,z,n).
Layout is time-major ``x (T, B, I)``; weights use PyTorch's names, shapes and gate order.

Variable lengths: ``lengths (B,)`` with ``1 <= lengths[b] <= T``. Step ``t`` is *valid* for
sequence ``b`` when ``t < lengths[b]``. Invalid steps leave the state unchanged and output 0,
so ``h_n``/``c_n`` are the states after each sequence's last valid step. ``reverse=True``
walks t = T-1 .. 0; a sequence's state stays at ``h0`` until its own last valid step
``lengths[b]-1``, so each sequence is processed backwards over its own steps (as the reverse
direction of PyTorch's packed bidirectional layers). Outputs stay at their time index.

The forward functions return a ``ctx`` dict holding what the backward pass needs. Backward
functions return a dict of gradients plus ``'dh_norms' (T,)``: for each time index t, the
Frobenius norm over the batch of the total gradient dL/dh_t reaching the state computed at
step t (from ``dy[t]`` and from later steps; rows where step t is invalid count as 0).
"""
import numpy as np

from .activations import sigmoid

__all__ = [
    "rnn_cell", "lstm_cell", "gru_cell",
    "rnn", "rnn_backward",
    "lstm", "lstm_backward",
    "gru", "gru_backward",
]


# ----------------------------------------------------------------------------- helpers
def _affine(x, w, b):
    """``x @ w.T + b`` (b may be None)."""
    y = x @ w.T
    return y if b is None else y + b


def _valid_mask(lengths, T, B):
    """Boolean ``(T, B, 1)``: step t is valid for sequence b (``t < lengths[b]``)."""
    if lengths is None:
        return np.ones((T, B, 1), dtype=bool)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"lengths: expected an integer array of shape ({B},), "
                         f"got {lengths.dtype} {lengths.shape}")
    if B and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(f"lengths: values must lie in [1, T={T}]")
    return (np.arange(T)[:, None] < lengths[None, :])[:, :, None]


def _order(T, reverse):
    """Processing order of the time indices."""
    return range(T - 1, -1, -1) if reverse else range(T)


def _state(s, B, H, dtype):
    """Initial state: zeros when None."""
    return np.zeros((B, H), dtype) if s is None else np.asarray(s, dtype)


def _check_x(x, w_ih, w_hh, gates):
    """Check ``x (T,B,I)``, ``w_ih (gates*H, I)``, ``w_hh (gates*H, H)``; return T, B, H."""
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (T, B, I), got {x.shape}")
    H = w_hh.shape[1]
    if w_hh.shape != (gates * H, H) or w_ih.shape != (gates * H, x.shape[2]):
        raise ValueError(f"weights: expected w_ih ({gates * H}, {x.shape[2]}) and "
                         f"w_hh ({gates * H}, {H}), got {w_ih.shape} and {w_hh.shape}")
    return x.shape[0], x.shape[1], H


def _weight_grads(ctx, dg_ih, dg_hh, hprev):
    """Bulk weight/bias gradients from the pre-activation gradients of all steps.

    ``dW_ih = sum_t dg_ih[t]^T x[t]``, ``dW_hh = sum_t dg_hh[t]^T h_{t-1}``,
    ``db_ih = sum_{t,b} dg_ih``, ``db_hh = sum_{t,b} dg_hh``; ``dx[t] = dg_ih[t] W_ih``.
    """
    x = ctx["x"]
    G = dg_ih.shape[-1]
    has_bias = ctx["has_bias"]
    return {
        "x": dg_ih @ ctx["w_ih"],
        "w_ih": dg_ih.reshape(-1, G).T @ x.reshape(-1, x.shape[-1]),
        "w_hh": dg_hh.reshape(-1, G).T @ hprev.reshape(-1, hprev.shape[-1]),
        "b_ih": dg_ih.sum(axis=(0, 1)) if has_bias else None,
        "b_hh": dg_hh.sum(axis=(0, 1)) if has_bias else None,
    }


# ----------------------------------------------------------------------------- cells
def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    r"""One Elman RNN step (PyTorch ``RNNCell``).

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h : ndarray, shape (B, H)
    w_ih : ndarray, shape (H, I)
    w_hh : ndarray, shape (H, H)
    b_ih, b_hh : ndarray, shape (H,), optional
    nonlinearity : {'tanh', 'relu'}

    Returns
    -------
    h_new : ndarray, shape (B, H)

    Notes
    -----
    .. math:: h' = \phi(W_{ih} x + b_{ih} + W_{hh} h + b_{hh}), \qquad \phi = \tanh
        \text{ or } \max(\cdot, 0)
    """
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.maximum(a, 0).astype(a.dtype, copy=False)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def _lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh):
    """Activated LSTM gates i, f, g, o, each (B, H)."""
    a = _affine(x, w_ih, b_ih) + _affine(h, w_hh, b_hh)
    ai, af, ag, ao = np.split(a, 4, axis=-1)
    return sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None):
    r"""One LSTM step (PyTorch ``LSTMCell``, gate order i, f, g, o).

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h, c : ndarray, shape (B, H)
    w_ih : ndarray, shape (4H, I)
    w_hh : ndarray, shape (4H, H)
    b_ih, b_hh : ndarray, shape (4H,), optional

    Returns
    -------
    h_new, c_new : ndarray, shape (B, H)

    Notes
    -----
    .. math::

        i &= \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f &= \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g &= \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o &= \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' &= f \odot c + i \odot g, \qquad h' = o \odot \tanh c'
    """
    i, f, g, o = _lstm_gates(x, h, w_ih, w_hh, b_ih, b_hh)
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new


def _gru_parts(x, h, w_ih, w_hh, b_ih, b_hh):
    """GRU step pieces: r, z, n, the hidden part of n's pre-activation, and h'."""
    ir, iz, in_ = np.split(_affine(x, w_ih, b_ih), 3, axis=-1)
    hr, hz, hn = np.split(_affine(h, w_hh, b_hh), 3, axis=-1)
    r = sigmoid(ir + hr)
    z = sigmoid(iz + hz)
    n = np.tanh(in_ + r * hn)
    return r, z, n, hn, (1 - z) * n + z * h


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    r"""One GRU step (PyTorch ``GRUCell``, gate order r, z, n).

    Parameters
    ----------
    x : ndarray, shape (B, I)
    h : ndarray, shape (B, H)
    w_ih : ndarray, shape (3H, I)
    w_hh : ndarray, shape (3H, H)
    b_ih, b_hh : ndarray, shape (3H,), optional

    Returns
    -------
    h_new : ndarray, shape (B, H)

    Notes
    -----
    .. math::

        r &= \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z &= \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n &= \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' &= (1 - z) \odot n + z \odot h
    """
    return _gru_parts(x, h, w_ih, w_hh, b_ih, b_hh)[-1]


# ----------------------------------------------------------------------------- RNN
def rnn(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", lengths=None,
        reverse=False):
    r"""Elman RNN over a whole sequence (one layer, one direction).

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    h0 : ndarray, shape (B, H), or None for zeros
    w_ih : ndarray, shape (H, I)
    w_hh : ndarray, shape (H, H)
    b_ih, b_hh : ndarray, shape (H,), optional (both or neither)
    nonlinearity : {'tanh', 'relu'}
    lengths : int ndarray, shape (B,), optional
        Valid steps per sequence (see module docstring).
    reverse : bool
        Process each sequence from its last valid step down to step 0.

    Returns
    -------
    y : ndarray, shape (T, B, H)
        ``y[t] = h_t`` at valid steps, 0 elsewhere.
    h_n : ndarray, shape (B, H)
        State after each sequence's last processed step.
    ctx : dict
        Saved for :func:`rnn_backward`.

    Notes
    -----
    .. math:: h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    with ``t-1`` read as ``t+1`` when ``reverse``.
    """
    x = np.asarray(x)
    T, B, H = _check_x(x, w_ih, w_hh, 1)
    valid = _valid_mask(lengths, T, B)
    h = _state(h0, B, H, x.dtype)
    y = np.zeros((T, B, H), x.dtype)
    hnew = np.zeros((T, B, H), x.dtype)
    hprev = np.zeros((T, B, H), x.dtype)
    for t in _order(T, reverse):
        hprev[t] = h
        hnew[t] = rnn_cell(x[t], h, w_ih, w_hh, b_ih, b_hh, nonlinearity)
        h = np.where(valid[t], hnew[t], h)
        y[t] = np.where(valid[t], hnew[t], 0)
    ctx = dict(x=x, w_ih=np.asarray(w_ih), w_hh=np.asarray(w_hh), has_bias=b_ih is not None,
               nonlinearity=nonlinearity, valid=valid, reverse=reverse, hprev=hprev, hnew=hnew)
    return y, h, ctx


def rnn_backward(ctx, dy, dh_n=None):
    r"""Backprop through time for :func:`rnn`.

    Parameters
    ----------
    ctx : dict
        From :func:`rnn`.
    dy : ndarray, shape (T, B, H), or None for zeros
    dh_n : ndarray, shape (B, H), optional

    Returns
    -------
    grads : dict
        ``'x' (T,B,I)``, ``'h0' (B,H)``, ``'w_ih' (H,I)``, ``'w_hh' (H,H)``,
        ``'b_ih' (H,)`` and ``'b_hh' (H,)`` (None without bias), ``'dh_norms' (T,)``.

    Notes
    -----
    Walking the steps in reverse processing order with ``dh`` the gradient carried from
    later steps (starting at ``dh_n``), at a valid step:

    .. math::

        \bar h_t = dh + dy_t, \qquad da_t = \bar h_t \odot \phi'(a_t), \qquad
        dh \leftarrow da_t W_{hh}

    with ``tanh' = 1 - h_t^2`` and ``relu' = [h_t > 0]``; at an invalid step ``dh`` passes
    through unchanged. Then ``dx_t = da_t W_ih``, ``dW_ih = sum_t da_t^T x_t``,
    ``dW_hh = sum_t da_t^T h_{t-1}``, ``db_ih = db_hh = sum_{t,b} da_t``, ``dh_0 = dh``.
    """
    valid, hnew = ctx["valid"], ctx["hnew"]
    T, B, H = hnew.shape
    dy = np.zeros_like(hnew) if dy is None else np.asarray(dy)
    dh = _state(dh_n, B, H, hnew.dtype).copy()
    da = np.zeros_like(hnew)
    norms = np.zeros(T, hnew.dtype)
    for t in reversed(_order(T, ctx["reverse"])):
        g = np.where(valid[t], dh + dy[t], 0)
        norms[t] = np.linalg.norm(g)
        dphi = 1 - hnew[t] ** 2 if ctx["nonlinearity"] == "tanh" else (hnew[t] > 0)
        da[t] = g * dphi
        dh = np.where(valid[t], da[t] @ ctx["w_hh"], dh)
    grads = _weight_grads(ctx, da, da, ctx["hprev"])
    grads.update(h0=dh, dh_norms=norms)
    return grads


# ----------------------------------------------------------------------------- LSTM
def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, w_hr=None):
    r"""LSTM over a whole sequence (one layer, one direction, PyTorch gate order i,f,g,o).

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    h0 : ndarray, shape (B, H) ((B, P) with a projection), or None for zeros
    c0 : ndarray, shape (B, H), or None for zeros
    w_ih : ndarray, shape (4H, I)
    w_hh : ndarray, shape (4H, H), or (4H, P) with a projection
    b_ih, b_hh : ndarray, shape (4H,), optional (both or neither)
    lengths : int ndarray, shape (B,), optional
    reverse : bool
    w_hr : ndarray, shape (P, H), P < H, optional: the projection (PyTorch's ``proj_size``)

    Returns
    -------
    y : ndarray, shape (T, B, H) ((T, B, P) with a projection)
    h_n : ndarray, shape (B, H) or (B, P); c_n : ndarray, shape (B, H)
    ctx : dict
        Saved for :func:`lstm_backward`.

    Notes
    -----
    At each valid step (see :func:`lstm_cell` for the gates):

    .. math:: c_t = f_t \odot c_{t-1} + i_t \odot g_t, \qquad h_t = o_t \odot \tanh c_t,
        \qquad y_t = h_t

    With a projection, :math:`\tilde h_t = o_t \odot \tanh c_t` and :math:`h_t = \tilde h_t W_{hr}^T`.
    """
    x = np.asarray(x)
    if w_hr is None:
        T, B, H = _check_x(x, w_ih, w_hh, 4)
        HS = H
    else:
        w_hr = np.asarray(w_hr)
        (HS, H), T, B = w_hr.shape, x.shape[0], x.shape[1]
        if x.ndim != 3 or w_hh.shape != (4 * H, HS) or w_ih.shape != (4 * H, x.shape[2]):
            raise ValueError(f"expected x (T, B, I), w_ih ({4 * H}, I), w_hh ({4 * H}, {HS}); got "
                             f"{x.shape}, {w_ih.shape}, {w_hh.shape}")
    valid = _valid_mask(lengths, T, B)
    h, c = _state(h0, B, HS, x.dtype), _state(c0, B, H, x.dtype)
    y = np.zeros((T, B, HS), x.dtype)
    saved = {k: np.zeros((T, B, H), x.dtype) for k in ("i", "f", "g", "o", "c", "cprev", "ht")}
    saved["hprev"] = np.zeros((T, B, HS), x.dtype)
    for t in _order(T, reverse):
        i, f, g, o = _lstm_gates(x[t], h, w_ih, w_hh, b_ih, b_hh)
        c_new = f * c + i * g
        ht = o * np.tanh(c_new)
        h_new = ht if w_hr is None else ht @ w_hr.T
        for k, v in dict(i=i, f=f, g=g, o=o, c=c_new, hprev=h, cprev=c, ht=ht).items():
            saved[k][t] = v
        h = np.where(valid[t], h_new, h)
        c = np.where(valid[t], c_new, c)
        y[t] = np.where(valid[t], h_new, 0)
    ctx = dict(x=x, w_ih=np.asarray(w_ih), w_hh=np.asarray(w_hh), has_bias=b_ih is not None,
               valid=valid, reverse=reverse, w_hr=w_hr, **saved)
    return y, h, c, ctx


def lstm_backward(ctx, dy, dh_n=None, dc_n=None):
    r"""Backprop through time for :func:`lstm`.

    Parameters
    ----------
    ctx : dict
        From :func:`lstm`.
    dy : ndarray, shape (T, B, H) ((T, B, P) with a projection), or None for zeros
    dh_n : ndarray, shape (B, H) or (B, P), optional; dc_n : ndarray, shape (B, H), optional

    Returns
    -------
    grads : dict
        ``'x' (T,B,I)``, ``'h0' (B,H)``, ``'c0' (B,H)``, ``'w_ih' (4H,I)``, ``'w_hh' (4H,H)``,
        ``'b_ih'``/``'b_hh' (4H,)`` (None without bias), ``'dh_norms' (T,)``; with a
        projection ``'w_hr' (P,H)`` (and P in place of H for h0, w_hh's columns).

    Notes
    -----
    With ``dh, dc`` carried from later steps, at a valid step:

    .. math::

        \bar h &= dh + dy_t, \qquad \bar c = dc + \bar h \odot o \odot (1 - \tanh^2 c_t) \\
        d o &= \bar h \odot \tanh c_t, \quad d i = \bar c \odot g, \quad
        d f = \bar c \odot c_{t-1}, \quad d g = \bar c \odot i \\
        da &= [d i\, i(1-i),\; d f\, f(1-f),\; d g\,(1-g^2),\; d o\, o(1-o)] \\
        dh &\leftarrow da\, W_{hh}, \qquad dc \leftarrow \bar c \odot f

    With a projection, :math:`\bar h` (P values) is first carried back through it: the gate
    formulas use :math:`\bar h W_{hr}` in its place, and :math:`dW_{hr} = \sum_t \bar h_t^T \tilde h_t`.
    At invalid steps ``dh, dc`` pass through. Weight gradients as in :func:`rnn_backward`.
    """
    valid = ctx["valid"]
    T, B, H = ctx["c"].shape
    HS = ctx["hprev"].shape[2]
    w_hr = ctx["w_hr"]
    dtype = ctx["c"].dtype
    dy = np.zeros((T, B, HS), dtype) if dy is None else np.asarray(dy)
    dh = _state(dh_n, B, HS, dtype).copy()
    dc = _state(dc_n, B, H, dtype).copy()
    da = np.zeros((T, B, 4 * H), dtype)
    norms = np.zeros(T, dtype)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    for t in reversed(_order(T, ctx["reverse"])):
        i, f, g, o = (ctx[k][t] for k in ("i", "f", "g", "o"))
        m = valid[t]
        hbar = np.where(m, dh + dy[t], 0)
        norms[t] = np.linalg.norm(hbar)
        if w_hr is not None:
            dw_hr += hbar.T @ ctx["ht"][t]
            hbar = hbar @ w_hr
        tc = np.tanh(ctx["c"][t])
        cbar = np.where(m, dc, 0) + hbar * o * (1 - tc * tc)
        da[t] = np.concatenate([cbar * g * i * (1 - i), cbar * ctx["cprev"][t] * f * (1 - f),
                                cbar * i * (1 - g * g), hbar * tc * o * (1 - o)], axis=-1)
        dh = np.where(m, da[t] @ ctx["w_hh"], dh)
        dc = np.where(m, cbar * f, dc)
    grads = _weight_grads(ctx, da, da, ctx["hprev"])
    grads.update(h0=dh, c0=dc, dh_norms=norms)
    if w_hr is not None:
        grads["w_hr"] = dw_hr
    return grads


# ----------------------------------------------------------------------------- GRU
def gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False):
    r"""GRU over a whole sequence (one layer, one direction, PyTorch gate order r,z,n).

    Parameters
    ----------
    x : ndarray, shape (T, B, I)
    h0 : ndarray, shape (B, H), or None for zeros
    w_ih : ndarray, shape (3H, I)
    w_hh : ndarray, shape (3H, H)
    b_ih, b_hh : ndarray, shape (3H,), optional (both or neither)
    lengths : int ndarray, shape (B,), optional
    reverse : bool

    Returns
    -------
    y : ndarray, shape (T, B, H)
    h_n : ndarray, shape (B, H)
    ctx : dict
        Saved for :func:`gru_backward`.

    Notes
    -----
    At each valid step (see :func:`gru_cell`):

    .. math::

        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})), \qquad
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
    """
    x = np.asarray(x)
    T, B, H = _check_x(x, w_ih, w_hh, 3)
    valid = _valid_mask(lengths, T, B)
    h = _state(h0, B, H, x.dtype)
    y = np.zeros((T, B, H), x.dtype)
    saved = {k: np.zeros((T, B, H), x.dtype) for k in ("r", "z", "n", "hn", "hprev")}
    for t in _order(T, reverse):
        r, z, n, hn, h_new = _gru_parts(x[t], h, w_ih, w_hh, b_ih, b_hh)
        for k, v in dict(r=r, z=z, n=n, hn=hn, hprev=h).items():
            saved[k][t] = v
        h = np.where(valid[t], h_new, h)
        y[t] = np.where(valid[t], h_new, 0)
    ctx = dict(x=x, w_ih=np.asarray(w_ih), w_hh=np.asarray(w_hh), has_bias=b_ih is not None,
               valid=valid, reverse=reverse, **saved)
    return y, h, ctx


def gru_backward(ctx, dy, dh_n=None):
    r"""Backprop through time for :func:`gru`.

    Parameters
    ----------
    ctx : dict
        From :func:`gru`.
    dy : ndarray, shape (T, B, H), or None for zeros
    dh_n : ndarray, shape (B, H), optional

    Returns
    -------
    grads : dict
        ``'x' (T,B,I)``, ``'h0' (B,H)``, ``'w_ih' (3H,I)``, ``'w_hh' (3H,H)``,
        ``'b_ih'``/``'b_hh' (3H,)`` (None without bias), ``'dh_norms' (T,)``.

    Notes
    -----
    With ``hn = W_hn h_{t-1} + b_hn`` and ``dh`` carried from later steps, at a valid step:

    .. math::

        \bar h &= dh + dy_t, \quad da_n = \bar h (1 - z)(1 - n^2), \quad
        da_z = \bar h (h_{t-1} - n)\, z (1 - z), \quad da_r = da_n\, hn\, r (1 - r) \\
        dg_{ih} &= [da_r, da_z, da_n], \qquad dg_{hh} = [da_r, da_z, r\, da_n] \\
        dh &\leftarrow \bar h\, z + dg_{hh} W_{hh}

    Then ``dx_t = dg_ih W_ih``, ``dW_ih = sum_t dg_ih^T x_t``, ``dW_hh = sum_t dg_hh^T h_{t-1}``,
    ``db_ih = sum dg_ih``, ``db_hh = sum dg_hh``.
    """
    valid = ctx["valid"]
    T, B, H = ctx["n"].shape
    dtype = ctx["n"].dtype
    dy = np.zeros((T, B, H), dtype) if dy is None else np.asarray(dy)
    dh = _state(dh_n, B, H, dtype).copy()
    dg_ih = np.zeros((T, B, 3 * H), dtype)
    dg_hh = np.zeros((T, B, 3 * H), dtype)
    norms = np.zeros(T, dtype)
    for t in reversed(_order(T, ctx["reverse"])):
        r, z, n, hn, hprev = (ctx[k][t] for k in ("r", "z", "n", "hn", "hprev"))
        m = valid[t]
        hbar = np.where(m, dh + dy[t], 0)
        norms[t] = np.linalg.norm(hbar)
        dan = hbar * (1 - z) * (1 - n * n)
        daz = hbar * (hprev - n) * z * (1 - z)
        dar = dan * hn * r * (1 - r)
        dg_ih[t] = np.concatenate([dar, daz, dan], axis=-1)
        dg_hh[t] = np.concatenate([dar, daz, r * dan], axis=-1)
        dh = np.where(m, hbar * z + dg_hh[t] @ ctx["w_hh"], dh)
    grads = _weight_grads(ctx, dg_ih, dg_hh, ctx["hprev"])
    grads.update(h0=dh, dh_norms=norms)
    return grads
