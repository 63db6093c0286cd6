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
    dx, dh0, dc0, dwih, dwhh, dbih, dbhh, norms = out
    g = {"x": dx, "h0": dh0, "w_ih": dwih, "w_hh": dwhh, "b_ih": dbih, "b_hh": dbhh, "dh_norms": norms}
    if mode == "lstm":
        g["c0"] = dc0
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


def lstm(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, training=True):
    """LSTM over a sequence: ``i, f, o = sigmoid(.)``, ``g = tanh(.)`` of
    ``W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` (row blocks i, f, g, o),
    ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``. Returns ``(y, h_n, c_n, ctx)``."""
    y, h_n, c_n, ctx = _core.recurrent_forward("lstm", x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                                               training)
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
