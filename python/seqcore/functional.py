"""Stateless ops backed by the C++ kernels.

Every function takes array-likes (any strides; one contiguous copy at most) and returns new
C-contiguous NumPy arrays of the input's float dtype (float32 or float64). The math of each
op is stated in its NumPy twin in :mod:`seqcore.reference`; tests check the two agree.
Backward functions return gradients; they never modify their inputs.
"""
from seqcore import _core

__all__ = [
    "matmul", "gemm", "linear", "linear_backward",
    "tanh", "tanh_backward", "sigmoid", "sigmoid_backward", "relu", "relu_backward",
    "leaky_relu", "leaky_relu_backward", "prelu", "prelu_backward", "silu", "silu_backward",
    "swish", "swish_backward", "gelu", "gelu_backward", "softmax", "softmax_backward",
    "log_softmax", "log_softmax_backward",
    "rnn", "rnn_backward", "lstm", "lstm_backward", "gru", "gru_backward",
    "cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward",
    "layer_norm", "layer_norm_backward",
    "batch_norm", "batch_norm_backward",
    "scaled_dot_product_attention", "scaled_dot_product_attention_backward",
    "multi_head_attention", "multi_head_attention_backward",
    "embedding", "embedding_backward", "dropout", "dropout_backward", "sinusoidal_positional_encoding",
    "feed_forward", "feed_forward_backward",
]

# ----------------------------------------------------------------------------- dense


def matmul(a, b, out=None):
    """Matrix product with :func:`numpy.matmul` semantics.

    ``a`` (..., m, k) @ ``b`` (..., k, n) -> (..., m, n); batch dims broadcast; a 1-D operand
    is promoted as in NumPy. Transposed or sliced 2-D views are read in place (no copy).
    """
    return _core.matmul(a, b, out)


def gemm(a, b, c, alpha=1.0, beta=0.0, trans_a=False, trans_b=False):
    """BLAS-style ``c = alpha * op(a) @ op(b) + beta * c`` in place; returns ``c``.

    ``op(a)`` is (m, k), ``op(b)`` is (k, n), ``c`` (m, n) writeable with contiguous rows.
    """
    return _core.gemm(a, b, c, alpha, beta, trans_a, trans_b)


def linear(x, weight, bias=None, activation=None):
    """``y = act(x @ weight.T + bias)`` over any leading dims (PyTorch ``F.linear``).

    x (..., in_features); weight (out_features, in_features); bias (out_features,) or None;
    activation: None, 'relu', 'gelu', 'gelu_tanh', 'tanh', 'sigmoid', 'silu' (fused into the
    GEMM epilogue). Returns (..., out_features).
    """
    return _core.linear(x, weight, bias, activation)


def linear_backward(dy, x, weight, need_bias=True, need_input_grad=True):
    """Gradients of ``y = x @ weight.T + b``: ``dx = dy @ weight``, ``dweight = dy^T x``
    (summed over all leading dims), ``dbias = sum(dy)``. Returns ``(dx, dweight, dbias)``;
    ``dbias`` is None when ``need_bias`` is False, ``dx`` when ``need_input_grad`` is False.
    """
    return _core.linear_backward(dy, x, weight, need_bias, need_input_grad)


# ----------------------------------------------------------------------------- activations


def tanh(x, out=None):
    """``y = tanh(x)``."""
    return _core.tanh(x, out)


def tanh_backward(dy, y):
    """``dx = dy * (1 - y**2)`` from the forward output ``y``."""
    return _core.tanh_backward(dy, y)


def sigmoid(x, out=None):
    """``y = 1 / (1 + exp(-x))``."""
    return _core.sigmoid(x, out)


def sigmoid_backward(dy, y):
    """``dx = dy * y * (1 - y)`` from the forward output ``y``."""
    return _core.sigmoid_backward(dy, y)


def relu(x, out=None):
    """``y = max(x, 0)`` (NaN propagates)."""
    return _core.relu(x, out)


def relu_backward(dy, x):
    """``dx = dy where x > 0 else 0``."""
    return _core.relu_backward(dy, x)


def leaky_relu(x, negative_slope=0.01, out=None):
    """``y = x if x > 0 else negative_slope * x``."""
    return _core.leaky_relu(x, negative_slope, out)


def leaky_relu_backward(dy, x, negative_slope=0.01):
    """``dx = dy if x > 0 else negative_slope * dy``."""
    return _core.leaky_relu_backward(dy, x, negative_slope)


def prelu(x, weight):
    """``y = x if x > 0 else weight[c] * x`` with a learnable slope per channel.

    The channel axis is 1 when ``x.ndim >= 2`` (PyTorch); ``weight`` has shape (C,) or (1,).
    """
    return _core.prelu(x, weight)


def prelu_backward(dy, x, weight):
    """``dx = dy if x > 0 else weight[c] * dy``; ``dweight[c] = sum(dy * x where x <= 0)``
    over every axis but the channel axis. Returns ``(dx, dweight)``."""
    return _core.prelu_backward(dy, x, weight)


def silu(x, out=None):
    """``y = x * sigmoid(x)`` (also called swish)."""
    return _core.silu(x, out)


def silu_backward(dy, x):
    """``dx = dy * s * (1 + x * (1 - s))`` with ``s = sigmoid(x)``."""
    return _core.silu_backward(dy, x)


swish = silu
swish_backward = silu_backward


def gelu(x, approximate="none", out=None):
    """``y = x * Phi(x)``, Phi the standard normal CDF (``approximate='none'``), or
    ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (``approximate='tanh'``)."""
    return _core.gelu(x, approximate, out)


def gelu_backward(dy, x, approximate="none"):
    """``dx = dy * (Phi(x) + x * phi(x))`` (exact) or the derivative of the tanh form."""
    return _core.gelu_backward(dy, x, approximate)


def softmax(x, axis=-1):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis`` (stable for any logits)."""
    return _core.softmax(x, axis)


def softmax_backward(dy, y, axis=-1):
    """``dx = y * (dy - sum(dy * y, axis))`` from the forward output ``y``."""
    return _core.softmax_backward(dy, y, axis)


def log_softmax(x, axis=-1):
    """``y = x - max - log(sum(exp(x - max)))`` along ``axis``."""
    return _core.log_softmax(x, axis)


def log_softmax_backward(dy, y, axis=-1):
    """``dx = dy - exp(y) * sum(dy, axis)`` from the forward output ``y``."""
    return _core.log_softmax_backward(dy, y, axis)


# ----------------------------------------------------------------------------- recurrent
# One layer, one direction, a whole sequence per call. Time-major: x (T, B, I); states
# (B, H); weights in PyTorch's layout and gate order (w_ih (G*H, I), w_hh (G*H, H),
# b_ih / b_hh (G*H,); LSTM gates i, f, g, o; GRU r, z, n). See seqcore.reference.recurrent
# for the formulas. ``lengths`` (B,) gives each sequence's valid steps (1..T): outputs past
# the end are 0 and the final states are taken at the last valid step. ``reverse=True`` runs
# each sequence backwards over its own valid steps (a bidirectional layer's second
# direction). ``training=False`` keeps nothing for backward and returns ctx None.
# Backward returns a dict of gradients: 'x', 'h0' (and 'c0'), 'w_ih', 'w_hh', 'b_ih',
# 'b_hh' (None without bias) and 'dh_norms' (T,): ||dL/dh_t|| over the batch for each t.
# Do not modify the returned outputs in place before backward: ctx may share their memory.


def _grads(mode, out):
    dx, dh0, dc0, dwih, dwhh, dbih, dbhh, norms, dwhr = out
    g = {"x": dx, "h0": dh0, "w_ih": dwih, "w_hh": dwhh, "b_ih": dbih, "b_hh": dbhh, "dh_norms": norms}
    if mode == "lstm":
        g["c0"] = dc0
        if dwhr is not None:
            g["w_hr"] = dwhr
    return g


def rnn(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", lengths=None, reverse=False,
        training=True):
    """Elman RNN over a sequence: ``h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)``,
    act tanh or relu. Returns ``(y (T,B,H), h_n (B,H), ctx)``."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    y, h_n, _, ctx = _core.recurrent_forward("rnn_" + nonlinearity, x, h0, None, w_ih, w_hh, b_ih, b_hh,
                                             lengths, reverse, training)
    return y, h_n, ctx


def rnn_backward(ctx, dy, dh_n=None, need_input_grad=True):
    """Backprop through time for :func:`rnn`; ``dy`` (T,B,H) or None, ``dh_n`` (B,H) or None.
    ``need_input_grad=False`` skips ``dx`` (returned as None)."""
    return _grads("rnn", _core.recurrent_backward(ctx, dy, dh_n, None, True, need_input_grad))


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, training=True, w_hr=None):
    """LSTM over a sequence: ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` of
    ``W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` (row blocks i, f, g, o),
    ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``. With a projection ``w_hr`` (P, H),
    P < H (PyTorch's ``proj_size``): ``h_t = W_hr (o tanh(c_t))``, so h0, h_n, y and the
    columns of ``w_hh`` (4H, P) have P values; c stays H wide. Returns ``(y, h_n, c_n, ctx)``;
    the backward's gradients then include ``"w_hr"``."""
    y, h_n, c_n, ctx = _core.recurrent_forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                               training, w_hr)
    return y, h_n, c_n, ctx


def lstm_backward(ctx, dy, dh_n=None, dc_n=None, need_input_grad=True):
    """Backprop through time for :func:`lstm` (``dh_n``, ``dc_n`` carry truncated BPTT)."""
    return _grads("lstm", _core.recurrent_backward(ctx, dy, dh_n, dc_n, True, need_input_grad))


def gru(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, training=True):
    """GRU over a sequence: ``r, z = sigmoid(W_i. x + b_i. + W_h. h + b_h.)``,
    ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``, ``h_t = (1 - z) n + z h_{t-1}``.
    Returns ``(y, h_n, ctx)``."""
    y, h_n, _, ctx = _core.recurrent_forward("gru", x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                             training)
    return y, h_n, ctx


def gru_backward(ctx, dy, dh_n=None, need_input_grad=True):
    """Backprop through time for :func:`gru`."""
    return _grads("gru", _core.recurrent_backward(ctx, dy, dh_n, None, True, need_input_grad))


# ----------------------------------------------------------------------------- losses

def _ce_layout(logits, target):
    """(N, C) or (N, C, d1, ...) logits -> (rows, C) with class last, and flat targets."""
    import numpy as np

    x = logits if hasattr(logits, "ndim") else np.asarray(logits)
    t = np.asarray(target)
    if x.ndim == 1:  # one sample: (C,) with a 0-d target
        return x[None, :], t.reshape(1), ()
    if x.ndim < 1:
        raise ValueError(f"argument 'logits' must have shape (N, C) or (N, C, d1, ...), got {x.shape}")
    if x.ndim == 2:
        if t.shape != (x.shape[0],):
            raise ValueError(f"argument 'target' must have shape ({x.shape[0]},), got {t.shape}")
        return x, t, (x.shape[0],)
    spatial = (x.shape[0],) + x.shape[2:]
    if t.shape != spatial:
        raise ValueError(f"argument 'target' must have shape {spatial}, got {t.shape}")
    xl = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return xl, t.reshape(-1), spatial


def _ce_reduce(loss_rows, target_flat, ignore_index, reduction, out_shape):
    import numpy as np

    if reduction == "none":
        return loss_rows.reshape(out_shape)
    total = loss_rows.sum(dtype=loss_rows.dtype)
    if reduction == "sum":
        return total
    count = int(np.count_nonzero(target_flat != ignore_index))
    return (total / loss_rows.dtype.type(count)) if count else loss_rows.dtype.type(np.nan)


def cross_entropy(logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0, return_lse=False):
    """Softmax cross-entropy fused with log-softmax (PyTorch ``F.cross_entropy``).

    logits (N, C) or (N, C, d1, ...) (or (C,) with a 0-d target); target integer class ids
    of shape (N,) / (N, d1, ...). Per element with lse = log sum_j exp(x_j):
    ``loss = (1 - e)(lse - x_t) + e (lse - mean_j x_j)`` (e = label_smoothing); targets equal
    to ``ignore_index`` give 0 and are not counted; ``reduction`` 'mean' (over counted
    elements), 'sum' or 'none'. ``return_lse=True`` also returns the per-row log-sum-exp
    (float64, one per row), which :func:`cross_entropy_backward` takes to skip recomputing it.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    x, t, shape = _ce_layout(logits, target)
    loss_rows, lse = _core.cross_entropy_forward(x, t, int(ignore_index), float(label_smoothing))
    out = _ce_reduce(loss_rows, t, int(ignore_index), reduction, shape)
    if reduction == "none" and getattr(logits, "ndim", 2) == 1:
        out = out.reshape(())
    return (out, lse) if return_lse else out


def cross_entropy_backward(dloss, logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                           lse=None):
    """Gradient of :func:`cross_entropy` w.r.t. the logits:
    ``dx_j = s (softmax_j - (1 - e)[j = t] - e / C)`` per element, s = dloss (/count for
    'mean'; per element for 'none'); 0 for ignored targets. Returns logits' shape. ``lse``:
    the per-row log-sum-exp from ``cross_entropy(..., return_lse=True)`` (else recomputed)."""
    import numpy as np

    x, t, shape = _ce_layout(logits, target)
    xa = np.asarray(x)
    dt = xa.dtype if xa.dtype.kind == "f" else np.float64
    if lse is None:
        _, lse = _core.cross_entropy_forward(x, t, int(ignore_index), float(label_smoothing))
    n = t.shape[0]
    valid = t != int(ignore_index)
    if reduction == "none":
        s = np.asarray(dloss, dtype=dt).reshape(-1)
        if s.shape != (n,):
            raise ValueError(f"argument 'dloss' must have shape {shape}, got {np.shape(dloss)}")
    elif reduction in ("mean", "sum"):
        d = float(np.asarray(dloss))
        if reduction == "mean":
            count = int(np.count_nonzero(valid))
            d = d / count if count else 0.0
        s = np.full(n, d, dtype=dt)
    else:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    s = np.where(valid, s, 0).astype(dt)
    dx = _core.cross_entropy_backward(x, t, lse, s, int(ignore_index), float(label_smoothing))
    lg = logits if hasattr(logits, "ndim") else np.asarray(logits)
    if lg.ndim == 1:
        return dx.reshape(lg.shape)
    if lg.ndim > 2:
        moved = (lg.shape[0],) + lg.shape[2:] + (lg.shape[1],)
        return np.ascontiguousarray(np.moveaxis(dx.reshape(moved), -1, 1))
    return dx


def mse_loss(input, target, reduction="mean"):
    """``mean((input - target)^2)`` (or 'sum' / 'none'), as PyTorch ``F.mse_loss``."""
    import numpy as np

    a, b = np.asarray(input), np.asarray(target)
    if a.shape != b.shape:
        raise ValueError(f"argument 'target' must have the input's shape {a.shape}, got {b.shape}")
    d = a - b
    if reduction == "none":
        return d * d
    s = np.vdot(d.ravel(), d.ravel()) if d.size else d.dtype.type(0)
    if reduction == "sum":
        return s
    if reduction == "mean":
        return s / d.dtype.type(d.size) if d.size else d.dtype.type(np.nan)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def mse_loss_backward(dloss, input, target, reduction="mean"):
    """``d input = 2 (input - target) dloss`` (/ numel for 'mean')."""
    import numpy as np

    a, b = np.asarray(input), np.asarray(target)
    d = a - b
    if reduction == "none":
        return 2 * d * np.asarray(dloss, dtype=d.dtype)
    scale = 2.0 * float(np.asarray(dloss))
    if reduction == "mean":
        scale /= max(d.size, 1)
    return d * d.dtype.type(scale)


# ----------------------------------------------------------------------------- normalisation

def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the trailing ``normalized_shape`` dims (PyTorch ``F.layer_norm``):
    ``y = (x - mu) / sqrt(var + eps) * weight + bias`` with the mean and biased variance of
    each row. Returns ``(y, ctx)``; ctx keeps x, the per-row mean and 1/std for backward."""
    y, mean, rstd = _core.layer_norm(x, normalized_shape, weight, bias, eps)
    return y, {"x": x, "mean": mean, "rstd": rstd, "normalized_shape": normalized_shape, "weight": weight,
               "has_bias": bias is not None}


def layer_norm_backward(ctx, dy):
    """``dx = rstd (g - mean(g) - xhat mean(g xhat))`` with ``g = dy * weight``;
    ``dweight = sum dy xhat``, ``dbias = sum dy`` over the leading dims (fixed-order sums).
    Returns ``(dx, dweight or None, dbias or None)``."""
    return _core.layer_norm_backward(dy, ctx["x"], ctx["mean"], ctx["rstd"], ctx["normalized_shape"],
                                     ctx["weight"], ctx["weight"] is not None, ctx["has_bias"], True)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalization over channel axis 1 of x (N, C) or (N, C, L) (PyTorch
    ``F.batch_norm``, same arguments and defaults): ``y = (x - mu) / sqrt(var + eps) * weight +
    bias`` per channel, over its n = N (or N L) values.

    ``training=True``: mu and the biased var of the batch; ``running_mean`` / ``running_var``
    (C,), when given, are updated **in place** (float ndarrays of x's dtype, C-contiguous):
    ``r = (1 - momentum) r + momentum s`` with s = mu, and s = the unbiased var n/(n-1) var; n
    must be > 1. ``training=False``: mu, var = running_mean, running_var (required). weight,
    bias (C,) or None. Returns ``(y, ctx)``; ctx keeps x, the per-channel mean and 1/std for
    :func:`batch_norm_backward`. The statistics are fixed-order sums (same bits for any thread
    count); the twin is :func:`seqcore.reference.batch_norm`."""
    y, mean, rstd = _core.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return y, {"x": x, "mean": mean, "rstd": rstd, "weight": weight, "has_bias": bias is not None,
               "training": bool(training)}


def batch_norm_backward(ctx, dy):
    """Gradients of :func:`batch_norm` with ``xhat = (x - mu) rstd``: ``dbias = sum dy``,
    ``dweight = sum dy xhat`` (over the batch and length axes) and, in training,
    ``dx = weight rstd / n (n dy - sum dy - xhat sum dy xhat)`` (eval: ``dx = weight rstd dy``).
    Returns ``(dx, dweight or None, dbias or None)``."""
    return _core.batch_norm_backward(dy, ctx["x"], ctx["mean"], ctx["rstd"], ctx["weight"], ctx["training"],
                                     ctx["weight"] is not None, ctx["has_bias"], True)


# ----------------------------------------------------------------------------- attention
# Shape letters: L query length, S key length, E embed dim, Ev value dim, N heads, D = E / N,
# B batch, ``...`` any batch dims. The C++ kernel is flash-style: tiles of queries x keys
# with an online softmax, the per-row log-sum-exp saved for backward, probabilities
# recomputed there, never an L x S buffer. Fully masked query rows give zeros, not NaN.

_ATTN_RNG = None


def _seed_from(rng):
    """A 63-bit seed for the counter-based dropout streams, drawn from ``rng`` (None: a
    process-wide generator seeded from fresh entropy; an int: ``default_rng(int)``)."""
    import numpy as np

    global _ATTN_RNG
    if rng is None:
        if _ATTN_RNG is None:
            _ATTN_RNG = np.random.default_rng()
        rng = _ATTN_RNG
    elif not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    return int(rng.integers(0, 2 ** 63))


def _float_arrays(named):
    """Array-likes -> arrays: ndarrays kept as they are (views, strides: the kernels read them
    in place); other inputs take the float dtype of the ndarrays (float64 when none); None is
    a TypeError naming the argument."""
    import numpy as np

    dts = [x.dtype for _, x in named if isinstance(x, np.ndarray) and x.dtype.kind == "f"]
    dt = dts[0] if dts and dts[0] in (np.float32, np.float64) else np.float64
    out = []
    for name, x in named:
        if x is None:
            raise TypeError(f"argument '{name}' must be an array, got None")
        if isinstance(x, np.ndarray):
            out.append(x)
            continue
        try:
            out.append(np.asarray(x, dtype=dt))
        except (TypeError, ValueError) as e:
            raise TypeError(f"argument '{name}' is not a float array-like: {e}") from None
    return out


def _unbroadcast(g, shape):
    """Sum ``g`` down to ``shape`` (undo broadcasting of leading dims)."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _broadcast_mask(mask, batch, L, S, name):
    """A mask broadcast (as a view) to batch + (L, S)."""
    import numpy as np

    m = np.asarray(mask)
    try:
        return np.broadcast_to(m, tuple(batch) + (L, S))
    except ValueError:
        raise ValueError(f"argument '{name}' must be broadcastable to {tuple(batch) + (L, S)}, got {m.shape}") from None


def _mask_kind(m, bool_kind, name):
    if m.dtype == bool:
        return bool_kind
    if m.dtype.kind == "f":
        return "add"
    raise TypeError(f"argument '{name}' must be a bool or float array, got {m.dtype}")


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, *,
                                 return_ctx=False, rng=None):
    r"""Scaled dot-product attention with PyTorch's semantics (``F.scaled_dot_product_attention``).

    query (..., L, E), key (..., S, E), value (..., S, Ev); batch dims broadcast. Returns
    (..., L, Ev), and with ``return_ctx=True`` also the context for
    :func:`scaled_dot_product_attention_backward`.

    ``S = scale Q K^T + M``, ``P = softmax(S)`` over keys, ``out = dropout(P) V``; ``scale``
    defaults to ``1/sqrt(E)``. ``attn_mask`` broadcastable to (..., L, S): bool = **keep**
    where True, float = added. ``is_causal`` keeps keys ``j <= i`` (combined with a mask).
    ``dropout_p`` drops probabilities with a counter-based stream seeded from ``rng`` (a
    Generator, an int, or None), regenerated in backward. Rows with every key masked give 0.
    """
    import math

    import numpy as np

    nd = np.ndarray
    if type(query) is nd and type(key) is nd and type(value) is nd:
        q, k, v = query, key, value
    else:
        q, k, v = _float_arrays([("query", query), ("key", key), ("value", value)])
    for name, a, want in (("query", q, "(..., L, E)"), ("key", k, "(..., S, E)"), ("value", v, "(..., S, Ev)")):
        if a.ndim < 2:
            raise ValueError(f"argument '{name}' must have shape {want}, got {a.shape}")
    L, E, S = q.shape[-2], q.shape[-1], k.shape[-2]
    if k.shape[-1] != E:
        raise ValueError(f"argument 'key' must have shape (..., S, {E}), got {k.shape}")
    if v.shape[-2] != S:
        raise ValueError(f"argument 'value' must have shape (..., {S}, Ev), got {v.shape}")
    mask = None if attn_mask is None else np.asarray(attn_mask)
    batch = q.shape[:-2]
    if mask is not None or k.shape[:-2] != batch or v.shape[:-2] != batch:
        shapes = [q.shape[:-2], k.shape[:-2], v.shape[:-2]] + ([mask.shape[:-2]] if mask is not None else [])
        try:
            batch = np.broadcast_shapes(*shapes)
        except ValueError:
            raise ValueError(f"batch dims of query {q.shape}, key {k.shape}, value {v.shape}"
                             + (f", attn_mask {mask.shape}" if mask is not None else "") + " do not broadcast") from None
    if not 0.0 <= float(dropout_p) <= 1.0:
        raise ValueError(f"dropout_p must be in [0, 1], got {dropout_p}")
    scale = (1.0 / math.sqrt(E) if E > 0 else 1.0) if scale is None else float(scale)
    qb = q if q.shape[:-2] == batch else np.broadcast_to(q, batch + q.shape[-2:])
    kb = k if k.shape[:-2] == batch else np.broadcast_to(k, batch + k.shape[-2:])
    vb = v if v.shape[:-2] == batch else np.broadcast_to(v, batch + v.shape[-2:])
    kind, mb = "keep", None
    if mask is not None:
        kind = _mask_kind(mask, "keep", "attn_mask")
        mb = _broadcast_mask(mask, batch, L, S, "attn_mask")
    p = float(dropout_p)
    seed = _seed_from(rng) if 0.0 < p < 1.0 else 0
    if p >= 1.0:  # every probability dropped
        out = np.zeros(batch + (L, v.shape[-1]), dtype=np.result_type(q, k, v))
        lse = None
    else:
        out, lse, _ = _core.attention_forward(qb, kb, vb, mb, kind, None, "block", bool(is_causal), scale, p, seed,
                                              bool(return_ctx), False, None)
    if not return_ctx:
        return out
    ctx = dict(q=qb, k=kb, v=vb, out=out, lse=lse, mask=mb, kind=kind, causal=bool(is_causal), scale=scale,
               dropout_p=p, seed=seed, shapes=(q.shape, k.shape, v.shape))
    return out, ctx


def scaled_dot_product_attention_backward(ctx, dout):
    r"""Gradients of :func:`scaled_dot_product_attention`: returns ``(dq, dk, dv)`` in the
    shapes of query, key, value (summed over broadcast batch dims).

    ``dV = P~^T dO``, ``dP = dO V^T`` (times the dropout mask / (1 - p)),
    ``dS = P (dP - rowsum(dO * O))``, ``dQ = scale dS K``, ``dK = scale dS^T Q``; P is
    recomputed from the saved log-sum-exp, tile by tile.
    """
    import numpy as np

    qs, ks, vs = ctx["shapes"]
    if ctx["lse"] is None:  # dropout_p == 1: the output did not depend on anything
        return (np.zeros(qs, ctx["out"].dtype), np.zeros(ks, ctx["out"].dtype), np.zeros(vs, ctx["out"].dtype))
    (dout,) = _float_arrays([("dout", dout)])
    if dout.shape != ctx["out"].shape:
        raise ValueError(f"argument 'dout' must have shape {ctx['out'].shape}, got {dout.shape}")
    dq, dk, dv = _core.attention_backward(dout, ctx["q"], ctx["k"], ctx["v"], ctx["out"], ctx["lse"], ctx["mask"],
                                          ctx["kind"], None, "block", ctx["causal"], ctx["scale"], ctx["dropout_p"],
                                          ctx["seed"], None, None, None)
    return _unbroadcast(dq, qs), _unbroadcast(dk, ks), _unbroadcast(dv, vs)


def _split_heads(a, part, nparts, N, batch_first):
    """(T, B, nparts*E) (or (B, T, nparts*E)) -> the (B, N, T, D) view of row block ``part``."""
    if batch_first:
        B, T, W = a.shape
    else:
        T, B, W = a.shape
    D = W // nparts // N
    if batch_first:
        return a.reshape(B, T, nparts, N, D)[:, :, part].transpose(0, 2, 1, 3)
    return a.reshape(T, B, nparts, N, D)[:, :, part].transpose(1, 2, 0, 3)


def multi_head_attention(query, key, value, num_heads, in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias,
                         key_padding_mask=None, attn_mask=None, is_causal=False, dropout_p=0.0, need_weights=False,
                         average_attn_weights=True, batch_first=False, q_proj_weight=None, k_proj_weight=None,
                         v_proj_weight=None, rng=None, bias_k=None, bias_v=None, add_zero_attn=False):
    r"""Multi-head attention as PyTorch's ``F.multi_head_attention_forward``.

    query (L, B, E), key (S, B, kdim), value (S, B, vdim) (``batch_first``: (B, L, E), ...;
    unbatched (L, E) works too). Weights in PyTorch's layout: ``in_proj_weight`` (3E, E)
    with row blocks W_q, W_k, W_v (or separate ``q/k/v_proj_weight`` when kdim/vdim differ),
    ``in_proj_bias`` (3E,), ``out_proj_weight`` (E, E), ``out_proj_bias`` (E,).

    .. math::

        Q = x_q W_q^T + b_q,\ K = x_k W_k^T + b_k,\ V = x_v W_v^T + b_v,\quad
        head_h = softmax(Q_h K_h^T / \sqrt D + M) V_h,\quad out = [head_1..head_N] W_o^T + b_o

    ``key_padding_mask`` (B, S) and ``attn_mask`` (L, S) or (B*N, L, S): bool True = **masked
    out** (PyTorch's MHA convention), float = added; ``is_causal`` applies the causal mask.
    When query, key and value are one object (self-attention) the three projections are one
    GEMM, and the heads are read and written in place (no split/merge copies).

    PyTorch's extra keys: ``bias_k``, ``bias_v`` (E,) (or (1, 1, E)) append one learned key
    and value to every sequence (K = [K; b_k], V = [V; b_v]); ``add_zero_attn`` then appends
    a key and value of zeros to every head. The masks get an unmasked column for each. With
    ``is_causal`` PyTorch's rule holds: without ``key_padding_mask`` and ``need_weights`` the
    causal mask covers every key, the appended ones included (so most queries do not see
    them); otherwise ``attn_mask`` (built causal if None) covers the original keys.

    Returns ``(out, weights, ctx)``: weights (B, L, S) averaged over heads (or (B, N, L, S)),
    None unless ``need_weights``; ctx for :func:`multi_head_attention_backward`.
    """
    import math

    import numpy as np

    q_in, k_in, v_in = _float_arrays([("query", query), ("key", key), ("value", value)])
    k_in = q_in if key is query else k_in
    v_in = q_in if value is query else (k_in if value is key else v_in)
    self_attn = key is query and value is query
    kv_same = value is key
    unbatched = q_in.ndim == 2
    if unbatched:
        ax = 0 if batch_first else 1
        q_in, k_in, v_in = (np.expand_dims(a, 1) for a in (q_in, k_in, v_in))
        batch_first = False
        if key_padding_mask is not None:
            key_padding_mask = np.asarray(key_padding_mask)[None]
        del ax
    for name, a in (("query", q_in), ("key", k_in), ("value", v_in)):
        if a.ndim != 3:
            raise ValueError(f"argument '{name}' must have shape (L, B, E), (B, L, E) or (L, E), got {a.shape}")
    if batch_first:
        B, L, E = q_in.shape
        S = k_in.shape[1]
    else:
        L, B, E = q_in.shape
        S = k_in.shape[0]
    bdim = 0 if batch_first else 1
    for name, a in (("key", k_in), ("value", v_in)):
        if a.shape[bdim] != B or a.shape[1 - bdim] != S:
            raise ValueError(f"argument '{name}' must have {S} steps and batch {B} like key, got {a.shape}")
    N = int(num_heads)
    if N < 1 or E % N:
        raise ValueError(f"embed_dim {E} must be divisible by num_heads {num_heads}")
    D = E // N
    separate = in_proj_weight is None
    if separate:
        w_q, w_k, w_v = q_proj_weight, k_proj_weight, v_proj_weight
    else:
        w_in = np.asarray(in_proj_weight)
        if w_in.shape != (3 * E, E):
            raise ValueError(f"argument 'in_proj_weight' must have shape ({3 * E}, {E}), got {w_in.shape}")
        w_q, w_k, w_v = w_in[:E], w_in[E:2 * E], w_in[2 * E:]
    b_in = None if in_proj_bias is None else np.asarray(in_proj_bias)
    b_q, b_k, b_v = (None,) * 3 if b_in is None else (b_in[:E], b_in[E:2 * E], b_in[2 * E:])
    # projections: one GEMM for self-attention, two when key is value, else three
    if self_attn and not separate:
        qkv = linear(q_in, w_in, b_in)
        qh, kh, vh = (_split_heads(qkv, i, 3, N, batch_first) for i in range(3))
        proj = dict(qkv=qkv)
    else:
        qp = linear(q_in, w_q, b_q)
        qh = _split_heads(qp, 0, 1, N, batch_first)
        if kv_same and not separate:
            kvp = linear(k_in, w_in[E:], None if b_in is None else b_in[E:])
            kh, vh = _split_heads(kvp, 0, 2, N, batch_first), _split_heads(kvp, 1, 2, N, batch_first)
            proj = dict(qp=qp, kvp=kvp)
        else:
            kp, vp = linear(k_in, w_k, b_k), linear(v_in, w_v, b_v)
            kh, vh = _split_heads(kp, 0, 1, N, batch_first), _split_heads(vp, 0, 1, N, batch_first)
            proj = dict(qp=qp, kp=kp, vp=vp)
    # extra keys (add_bias_kv, add_zero_attn): K and V copied with the rows appended
    if (bias_k is None) != (bias_v is None):
        raise ValueError("bias_k and bias_v must be given together")
    extra = (bias_k is not None) + bool(add_zero_attn)
    if extra:
        ks, vs = [kh], [vh]
        if bias_k is not None:
            for name, bias, parts in (("bias_k", bias_k, ks), ("bias_v", bias_v, vs)):
                b = np.asarray(bias, dtype=qh.dtype)
                if b.size != E or b.ndim not in (1, 3):
                    raise ValueError(f"argument '{name}' must have shape (1, 1, {E}) or ({E},), got {b.shape}")
                parts.append(np.broadcast_to(b.reshape(N, D)[None, :, None, :], (B, N, 1, D)))
        if add_zero_attn:
            ks.append(np.zeros((B, N, 1, D), qh.dtype))
            vs.append(np.zeros((B, N, 1, D), qh.dtype))
        kh, vh = np.concatenate(ks, axis=2), np.concatenate(vs, axis=2)
        if is_causal:
            if key_padding_mask is None and not need_weights:
                attn_mask = None  # as PyTorch: the causal mask over all keys, the appended ones included
            else:  # as PyTorch: attn_mask (the causal one) over the original keys, padded
                if attn_mask is None:
                    attn_mask = np.triu(np.ones((L, S), bool), 1)
                is_causal = False
    # masks -> (B, N, L, S) views (no copies of an (L, S) or (B, S) mask)
    m1, k1 = None, "block"
    if attn_mask is not None:
        am = np.asarray(attn_mask)
        k1 = _mask_kind(am, "block", "attn_mask")
        if am.ndim == 3:
            if am.shape != (B * N, L, S):
                raise ValueError(f"argument 'attn_mask' must have shape ({L}, {S}) or ({B * N}, {L}, {S}), got {am.shape}")
            am = am.reshape(B, N, L, S)
        elif am.shape != (L, S):
            raise ValueError(f"argument 'attn_mask' must have shape ({L}, {S}) or ({B * N}, {L}, {S}), got {am.shape}")
        if extra:
            am = np.concatenate([am, np.zeros(am.shape[:-1] + (extra,), am.dtype)], axis=-1)
        m1 = np.broadcast_to(am, (B, N, L, S + extra))
    m2, k2 = None, "block"
    if key_padding_mask is not None:
        kpm = np.asarray(key_padding_mask)
        k2 = _mask_kind(kpm, "block", "key_padding_mask")
        if kpm.shape != (B, S):
            raise ValueError(f"argument 'key_padding_mask' must have shape ({B}, {S}), got {kpm.shape}")
        if extra:
            kpm = np.concatenate([kpm, np.zeros((B, extra), kpm.dtype)], axis=-1)
        m2 = np.broadcast_to(kpm[:, None, None, :], (B, N, L, S + extra))
    p = float(dropout_p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout_p}")
    seed = _seed_from(rng) if p > 0.0 else 0
    scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    heads = np.empty(q_in.shape[:2] + (E,), dtype=qh.dtype)  # (L, B, E) or (B, L, E)
    hv = _split_heads(heads, 0, 1, N, batch_first)
    _, lse, probs = _core.attention_forward(qh, kh, vh, m1, k1, m2, k2, bool(is_causal), scale, p, seed, True,
                                            bool(need_weights), hv)
    out = linear(heads, out_proj_weight, out_proj_bias)
    weights = None
    if need_weights:
        weights = probs.mean(axis=1, dtype=probs.dtype) if average_attn_weights else probs
        if unbatched:
            weights = weights[0]
    ctx = dict(q_in=q_in, k_in=k_in, v_in=v_in, self_attn=self_attn, kv_same=kv_same, separate=separate,
               w_q=w_q, w_k=w_k, w_v=w_v, has_in_bias=b_in is not None, has_out_bias=out_proj_bias is not None,
               out_proj_weight=np.asarray(out_proj_weight), N=N, batch_first=batch_first, unbatched=unbatched,
               qh=qh, kh=kh, vh=vh, heads=heads, hv=hv, lse=lse, m1=m1, k1=k1, m2=m2, k2=k2,
               causal=bool(is_causal), scale=scale, p=p, seed=seed, S=S, extra=extra,
               has_bias_kv=bias_k is not None, **proj)
    if unbatched:
        out = out[:, 0]
    return out, weights, ctx


def multi_head_attention_backward(ctx, dout):
    r"""Gradients of :func:`multi_head_attention`.

    Returns a dict: ``'query'``, ``'key'``, ``'value'`` (input gradients; for
    self-attention the total is in ``'query'`` and ``'key'``/``'value'`` are None, and when
    key is value the total for both is in ``'key'``), ``'in_proj_weight'`` (3E, E) (or
    ``'q/k/v_proj_weight'``), ``'in_proj_bias'``, ``'out_proj_weight'``, ``'out_proj_bias'``
    (None without bias), and ``'bias_k'``, ``'bias_v'`` (E,) when they were given.
    ``dheads = dO W_o``, attention backward per head into the projection gradients in place,
    then ``dx = dP W``, ``dW = dP^T x``, ``db = sum dP``.
    """
    import numpy as np

    (dout,) = _float_arrays([("dout", dout)])
    if ctx["unbatched"]:
        dout = np.expand_dims(dout, 1)
    if dout.shape != ctx["heads"].shape:
        want = ctx["heads"].shape[::2] if ctx["unbatched"] else ctx["heads"].shape
        raise ValueError(f"argument 'dout' must have shape {want}, got {dout.shape}")
    N, bf = ctx["N"], ctx["batch_first"]
    dheads, dwo, dbo = linear_backward(dout, ctx["heads"], ctx["out_proj_weight"], need_bias=ctx["has_out_bias"])
    dhv = _split_heads(dheads, 0, 1, N, bf)
    g = {"out_proj_weight": dwo, "out_proj_bias": dbo, "query": None, "key": None, "value": None}
    args = (ctx["m1"], ctx["k1"], ctx["m2"], ctx["k2"], ctx["causal"], ctx["scale"], ctx["p"], ctx["seed"])
    hb = ctx["has_in_bias"]
    S, extra = ctx["S"], ctx["extra"]

    def attn_backward(dq_v, dk_v, dv_v):
        if not extra:
            _core.attention_backward(dhv, ctx["qh"], ctx["kh"], ctx["vh"], ctx["hv"], ctx["lse"], *args,
                                     dq_v, dk_v, dv_v)
            return
        # gradients of the extended K and V; the rows of the original keys go to the projections
        dke, dve = np.empty_like(ctx["kh"]), np.empty_like(ctx["vh"])
        _core.attention_backward(dhv, ctx["qh"], ctx["kh"], ctx["vh"], ctx["hv"], ctx["lse"], *args, dq_v, dke, dve)
        dk_v[...] = dke[:, :, :S]
        dv_v[...] = dve[:, :, :S]
        if ctx["has_bias_kv"]:
            g["bias_k"] = dke[:, :, S].sum(axis=0).reshape(-1)
            g["bias_v"] = dve[:, :, S].sum(axis=0).reshape(-1)

    if "qkv" in ctx:
        dqkv = np.empty_like(ctx["qkv"])
        views = [_split_heads(dqkv, i, 3, N, bf) for i in range(3)]
        attn_backward(*views)
        w_in = np.concatenate([ctx["w_q"], ctx["w_k"], ctx["w_v"]])
        dx, dw, db = linear_backward(dqkv, ctx["q_in"], w_in, need_bias=hb)
        g.update(query=dx, in_proj_weight=dw, in_proj_bias=db)
    else:
        dqp = np.empty_like(ctx["qp"])
        dq_v = _split_heads(dqp, 0, 1, N, bf)
        if "kvp" in ctx:
            dkvp = np.empty_like(ctx["kvp"])
            dk_v, dv_v = _split_heads(dkvp, 0, 2, N, bf), _split_heads(dkvp, 1, 2, N, bf)
        else:
            dkp, dvp = np.empty_like(ctx["kp"]), np.empty_like(ctx["vp"])
            dk_v, dv_v = _split_heads(dkp, 0, 1, N, bf), _split_heads(dvp, 0, 1, N, bf)
        attn_backward(dq_v, dk_v, dv_v)
        dxq, dwq, dbq = linear_backward(dqp, ctx["q_in"], ctx["w_q"], need_bias=hb)
        if "kvp" in ctx:
            w_kv = np.concatenate([ctx["w_k"], ctx["w_v"]])
            dxk, dwkv, dbkv = linear_backward(dkvp, ctx["k_in"], w_kv, need_bias=hb)
            dws, dbs = [dwq, dwkv], [dbq, dbkv]
            g.update(query=dxq, key=dxk)
        else:
            dxk, dwk, dbk = linear_backward(dkp, ctx["k_in"], ctx["w_k"], need_bias=hb)
            dxv, dwv, dbv = linear_backward(dvp, ctx["v_in"], ctx["w_v"], need_bias=hb)
            dws, dbs = [dwq, dwk, dwv], [dbq, dbk, dbv]
            g.update(query=dxq, key=dxk, value=dxv)
        if ctx["separate"]:
            g.update(q_proj_weight=dws[0], k_proj_weight=dws[1], v_proj_weight=dws[2])
        else:
            g["in_proj_weight"] = np.concatenate(dws)
        g["in_proj_bias"] = np.concatenate(dbs) if hb else None
    if ctx["unbatched"]:
        for name in ("query", "key", "value"):
            if g[name] is not None:
                g[name] = g[name][:, 0]
    return g


# ----------------------------------------------------------------------------- transformer parts

def embedding(input, weight, padding_idx=None):
    """``y[...] = weight[input[...]]`` (PyTorch ``F.embedding``): input integer ids (*) in
    [0, V), weight (V, E) -> (*, E). ``padding_idx`` only matters for the backward pass."""
    return _core.embedding(input, weight, padding_idx)


def embedding_backward(dy, input, num_embeddings, padding_idx=None):
    """``dweight[v] = sum of dy[...] over positions with input[...] == v`` (summed in
    position order, the same bits for any thread count); row ``padding_idx`` stays 0."""
    return _core.embedding_backward(dy, input, int(num_embeddings), padding_idx)


def dropout(x, p=0.5, training=True, rng=None, return_seed=False):
    """Inverted dropout: ``y = x * keep / (1 - p)``, keep ~ Bernoulli(1 - p) from a
    counter-based stream seeded from ``rng`` (Generator, int, or None). ``p = 1`` gives zeros;
    ``training=False`` or ``p = 0`` returns ``x``. With ``return_seed=True`` also returns the
    seed that :func:`dropout_backward` needs (None when nothing was dropped)."""
    import numpy as np

    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return (x, None) if return_seed else x
    if p == 1.0:
        y = np.zeros_like(np.asarray(x))
        return (y, -1) if return_seed else y
    seed = _seed_from(rng)
    y = _core.dropout(x, p, seed)
    return (y, seed) if return_seed else y


def dropout_backward(dy, p, seed):
    """``dx = dy * keep / (1 - p)`` with the forward call's seed (None: identity, -1: zeros)."""
    import numpy as np

    if seed is None:
        return dy
    if seed == -1:
        return np.zeros_like(np.asarray(dy))
    return _core.dropout(dy, float(p), int(seed))


def sinusoidal_positional_encoding(max_len, d_model, dtype=None):
    r"""``PE[pos, 2i] = sin(pos / 10000^{2i/d})``, ``PE[pos, 2i+1] = cos(pos / 10000^{2i/d})``,
    shape (max_len, d_model), computed in float64 then cast (float32 by default)."""
    import numpy as np

    from seqcore.reference.transformer import sinusoidal_positional_encoding as pe

    return pe(int(max_len), int(d_model), np.float32 if dtype is None else dtype)


def feed_forward(x, w1, b1, w2, b2, activation="relu", dropout_p=0.0, rng=None):
    r"""Position-wise FFN ``y = dropout(act(x W_1^T + b_1)) W_2^T + b_2`` (weights in
    ``Linear`` layout: w1 (F, E), w2 (E, F)); act 'relu' (fused into the first GEMM) or
    'gelu' (exact). x (*, E) -> (*, E). Returns ``(y, ctx)``."""
    if activation not in ("relu", "gelu"):
        raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
    if activation == "relu":
        h = None
        a = linear(x, w1, b1, activation="relu")
    else:
        h = linear(x, w1, b1)
        a = gelu(h)
    ad, seed = dropout(a, dropout_p, training=dropout_p > 0, rng=rng, return_seed=True)
    y = linear(ad, w2, b2)
    return y, dict(x=x, w1=w1, w2=w2, h=h, a=a, ad=ad, seed=seed, p=dropout_p, activation=activation,
                   has_b1=b1 is not None, has_b2=b2 is not None)


def feed_forward_backward(ctx, dy):
    """Gradients of :func:`feed_forward`: dict ``'x', 'w1', 'b1', 'w2', 'b2'`` (bias grads
    None without bias). ``da = dy W_2``, ``dh = da act'(h)``, ``dx = dh W_1``,
    ``dW_1 = dh^T x``, ``dW_2 = dy^T a``."""
    dad, dw2, db2 = linear_backward(dy, ctx["ad"], ctx["w2"], need_bias=ctx["has_b2"])
    da = dropout_backward(dad, ctx["p"], ctx["seed"])
    dh = relu_backward(da, ctx["a"]) if ctx["activation"] == "relu" else gelu_backward(da, ctx["h"])
    dx, dw1, db1 = linear_backward(dh, ctx["x"], ctx["w1"], need_bias=ctx["has_b1"])
    return {"x": dx, "w1": dw1, "b1": db1, "w2": dw2, "b2": db2}
