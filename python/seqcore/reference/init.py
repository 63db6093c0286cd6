"""Weight initializers: pure-NumPy twins of ``torch.nn.init`` (same formulas, NumPy RNG).

Shapes follow PyTorch: ``(fan_out_maps, fan_in_maps, *receptive_field)``, e.g. a Linear
weight ``(O, I)`` has fan_in = I, fan_out = O. Every initializer returns a new array of
the given ``shape`` and ``dtype`` drawn from ``rng`` (a ``numpy.random.Generator``; a fresh
unseeded one when None).
"""
import math

import numpy as np

__all__ = [
    "calculate_gain", "calculate_fan_in_and_fan_out",
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
]

_LINEAR = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
           "conv_transpose3d", "sigmoid")


def calculate_gain(nonlinearity, param=None):
    r"""Recommended gain for a nonlinearity (``torch.nn.init.calculate_gain``).

    Parameters
    ----------
    nonlinearity : str
        'linear', 'conv*', 'sigmoid', 'tanh', 'relu', 'leaky_relu' or 'selu'.
    param : float, optional
        Negative slope for 'leaky_relu' (default 0.01).

    Returns
    -------
    gain : float

    Notes
    -----
    linear/conv/sigmoid: 1; tanh: 5/3; relu: :math:`\sqrt2`; leaky_relu:
    :math:`\sqrt{2 / (1 + a^2)}`; selu: 3/4.
    """
    if nonlinearity in _LINEAR:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float)) and not isinstance(param, bool):
            slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity}")


def calculate_fan_in_and_fan_out(shape):
    r"""Fan-in and fan-out of a weight shape (``torch.nn.init._calculate_fan_in_and_fan_out``).

    Parameters
    ----------
    shape : tuple of int, length >= 2

    Returns
    -------
    fan_in, fan_out : int

    Notes
    -----
    .. math:: r = \prod_{k \ge 2} \text{shape}_k, \quad
        \text{fan\_in} = \text{shape}_1\, r, \quad \text{fan\_out} = \text{shape}_0\, r
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for a shape with fewer "
                         "than 2 dimensions")
    r = math.prod(shape[2:])
    return shape[1] * r, shape[0] * r


def _rng(rng):
    return np.random.default_rng() if rng is None else rng


def xavier_uniform(shape, gain=1.0, rng=None, dtype=np.float32):
    r"""Glorot uniform initialization.

    Parameters
    ----------
    shape : tuple of int, length >= 2
    gain : float
    rng : numpy.random.Generator, optional
    dtype : numpy dtype

    Returns
    -------
    w : ndarray, shape ``shape``

    Notes
    -----
    .. math:: w \sim U(-a, a), \quad a = \text{gain}\sqrt{\frac{6}{\text{fan\_in} +
        \text{fan\_out}}}
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _rng(rng).uniform(-a, a, size=shape).astype(dtype)


def xavier_normal(shape, gain=1.0, rng=None, dtype=np.float32):
    r"""Glorot normal initialization.

    Parameters
    ----------
    shape : tuple of int, length >= 2
    gain : float
    rng : numpy.random.Generator, optional
    dtype : numpy dtype

    Returns
    -------
    w : ndarray, shape ``shape``

    Notes
    -----
    .. math:: w \sim \mathcal N(0, \sigma^2), \quad \sigma = \text{gain}
        \sqrt{\frac{2}{\text{fan\_in} + \text{fan\_out}}}
    """
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out))
    return _rng(rng).normal(0.0, std, size=shape).astype(dtype)


def _kaiming_std(shape, a, mode, nonlinearity):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calculate_fan_in_and_fan_out(shape)
    return calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def kaiming_uniform(shape, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None,
                    dtype=np.float32):
    r"""He uniform initialization.

    Parameters
    ----------
    shape : tuple of int, length >= 2
    a : float
        Negative slope of the following leaky_relu (only used with it).
    mode : {'fan_in', 'fan_out'}
    nonlinearity : str
        As :func:`calculate_gain`.
    rng : numpy.random.Generator, optional
    dtype : numpy dtype

    Returns
    -------
    w : ndarray, shape ``shape``

    Notes
    -----
    .. math:: w \sim U(-b, b), \quad b = \sqrt3\,\frac{\text{gain}}{\sqrt{\text{fan}}}
    """
    bound = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity)
    return _rng(rng).uniform(-bound, bound, size=shape).astype(dtype)


def kaiming_normal(shape, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None,
                   dtype=np.float32):
    r"""He normal initialization.

    Parameters
    ----------
    shape : tuple of int, length >= 2
    a : float
    mode : {'fan_in', 'fan_out'}
    nonlinearity : str
    rng : numpy.random.Generator, optional
    dtype : numpy dtype

    Returns
    -------
    w : ndarray, shape ``shape``

    Notes
    -----
    .. math:: w \sim \mathcal N(0, \sigma^2), \quad \sigma = \frac{\text{gain}}
        {\sqrt{\text{fan}}}
    """
    std = _kaiming_std(shape, a, mode, nonlinearity)
    return _rng(rng).normal(0.0, std, size=shape).astype(dtype)


def orthogonal(shape, gain=1.0, rng=None, dtype=np.float32):
    r"""(Semi-)orthogonal initialization (``torch.nn.init.orthogonal_``).

    Parameters
    ----------
    shape : tuple of int, length >= 2
        Viewed as a matrix (rows = shape[0], cols = the product of the rest).
    gain : float
    rng : numpy.random.Generator, optional
    dtype : numpy dtype

    Returns
    -------
    w : ndarray, shape ``shape``
        Rows orthonormal (rows <= cols) or columns orthonormal (rows > cols), times gain.

    Notes
    -----
    Draw :math:`A \sim \mathcal N(0,1)` of shape (max(rows, cols), min(rows, cols)),
    factor :math:`A = QR`, fix signs :math:`Q \leftarrow Q\,\operatorname{diag}(\operatorname{sign}
    R_{ii})` (Haar-uniform Q), transpose back when rows < cols, and scale by gain.
    """
    shape = tuple(shape)
    if len(shape) < 2:
        raise ValueError("Only shapes with 2 or more dimensions are supported")
    rows = shape[0]
    cols = math.prod(shape) // rows if rows else 0
    if rows * cols == 0:
        return np.zeros(shape, dtype)
    a = _rng(rng).standard_normal((rows, cols))
    if rows < cols:
        a = a.T
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return (gain * q).reshape(shape).astype(dtype)
