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
