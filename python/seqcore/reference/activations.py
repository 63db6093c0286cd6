"""Elementwise activations and (log-)softmax: pure-NumPy twins.

Shape letters: ``*`` any shape (elementwise ops); ``C`` channels (prelu).
Every function keeps the input dtype and computes in it. Backward functions take the
upstream gradient ``dy`` plus whatever the formula needs (the forward output ``y`` where
the derivative is cheapest in terms of it, else the input ``x``).
"""
import math

import numpy as np

__all__ = [
    "erf",
    "tanh", "tanh_backward",
    "sigmoid", "sigmoid_backward",
    "relu", "relu_backward",
    "leaky_relu", "leaky_relu_backward",
    "prelu", "prelu_backward",
    "silu", "silu_backward",
    "gelu", "gelu_backward",
    "softmax", "softmax_backward",
    "log_softmax", "log_softmax_backward",
]


def _float(x):
    """Return ``x`` as a float array, keeping float32/float64 and promoting the rest."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


# ----------------------------------------------------------------------------- erf
# W. J. Cody, "Rational Chebyshev approximations for the error function",
# Math. Comp. 23 (1969) 631-638; coefficients of the CALERF routine (netlib specfun).
_ERF_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
          3.20937758913846947e03, 1.85777706184603153e-1)
_ERF_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
          2.84423683343917062e03)
_ERF_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
          2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
          2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_ERF_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
          1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
          3.43936767414372164e03, 1.23033935480374942e03)
_ERF_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
          1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_ERF_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
          6.05183413124413191e-2, 2.33520497626869185e-3)


def _ratio(num, den, lead, z):
    """Cody's rational function in Horner form: ``num[-1]`` is the leading numerator
    coefficient, the denominator is monic, ``num[lead]``/``den[lead]`` are the constants."""
    xnum, xden = num[-1] * z, z
    for a, b in zip(num[:lead], den[:lead]):
        xnum, xden = (xnum + a) * z, (xden + b) * z
    return (xnum + num[lead]) / (xden + den[lead])


def _exp_neg_sq(y):
    """``exp(-y*y)`` without the rounding error of forming ``y*y`` (Cody's split)."""
    y16 = np.trunc(y * 16) / 16
    return np.exp(-y16 * y16) * np.exp(-(y - y16) * (y + y16))


def erf(x):
    r"""Error function, accurate to about 1e-16 relative in float64.

    Parameters
    ----------
    x : ndarray, shape (*)

    Returns
    -------
    ndarray, shape (*), dtype of ``x``

    Notes
    -----
    .. math::

        \operatorname{erf}(x) = \frac{2}{\sqrt\pi}\int_0^x e^{-t^2}\,dt

    Cody's rational approximations on three intervals of ``y = |x|``:
    ``y <= 0.46875``: ``erf = x R_1(y^2)``; ``0.46875 < y <= 4``:
    ``erfc = e^{-y^2} R_2(y)``; ``y > 4``: ``erfc = e^{-y^2}/y (1/sqrt(pi) + R_3(1/y^2)/y^2)``;
    then ``erf = sign(x)(1 - erfc)``. NaN propagates.
    """
    x = _float(x)
    dt = x.dtype.type
    y = np.abs(x)
    out = np.full_like(x, np.nan)

    s = y <= 0.46875
    ys = y[s] * y[s]
    out[s] = x[s] * _ratio([dt(c) for c in _ERF_A], [dt(c) for c in _ERF_B], 3, ys)

    m = (y > 0.46875) & (y <= 4)
    ym = y[m]
    erfc = _exp_neg_sq(ym) * _ratio([dt(c) for c in _ERF_C], [dt(c) for c in _ERF_D], 7, ym)
    out[m] = np.sign(x[m]) * ((dt(0.5) - erfc) + dt(0.5))

    b = y > 4
    yb = np.minimum(y[b], dt(27))  # erfc(y) underflows to 0 beyond ~26.5
    z = 1 / (yb * yb)
    r = z * _ratio([dt(c) for c in _ERF_P], [dt(c) for c in _ERF_Q], 4, z)
    erfc = _exp_neg_sq(yb) * ((dt(1 / math.sqrt(math.pi)) - r) / yb)
    out[b] = np.sign(x[b]) * ((dt(0.5) - erfc) + dt(0.5))
    return out


# ----------------------------------------------------------------------------- tanh, sigmoid
def tanh(x):
    r"""Hyperbolic tangent.

    Parameters
    ----------
    x : ndarray, shape (*)

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y = \tanh x
    """
    return np.tanh(_float(x))


def tanh_backward(dy, y):
    r"""Gradient of :func:`tanh` from its output.

    Parameters
    ----------
    dy : ndarray, shape (*)
        Upstream gradient dL/dy.
    y : ndarray, shape (*)
        Forward output ``tanh(x)``.

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x} = dy\,(1 - y^2)
    """
    y = _float(y)
    return dy * (1 - y * y)


def sigmoid(x):
    r"""Logistic sigmoid, overflow-free for large ``|x|``.

    Parameters
    ----------
    x : ndarray, shape (*)

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y = \sigma(x) = \frac{1}{1 + e^{-x}}

    Evaluated with ``e = exp(-|x|)`` as ``1/(1+e)`` for ``x >= 0`` and ``e/(1+e)`` otherwise.
    """
    x = _float(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_backward(dy, y):
    r"""Gradient of :func:`sigmoid` from its output.

    Parameters
    ----------
    dy : ndarray, shape (*)
    y : ndarray, shape (*)
        Forward output ``sigmoid(x)``.

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x} = dy\,y\,(1 - y)
    """
    y = _float(y)
    return dy * y * (1 - y)


# ----------------------------------------------------------------------------- relu family
def relu(x):
    r"""Rectified linear unit.

    Parameters
    ----------
    x : ndarray, shape (*)

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y = \max(x, 0)
    """
    x = _float(x)
    return np.maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward(dy, x):
    r"""Gradient of :func:`relu` (subgradient 0 at ``x = 0``, as PyTorch).

    Parameters
    ----------
    dy : ndarray, shape (*)
    x : ndarray, shape (*)
        Forward input.

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x} = dy\,[x > 0]
    """
    dy = _float(dy)
    return np.where(np.asarray(x) > 0, dy, 0).astype(dy.dtype, copy=False)


def leaky_relu(x, negative_slope=0.01):
    r"""Leaky ReLU.

    Parameters
    ----------
    x : ndarray, shape (*)
    negative_slope : float

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y = x \text{ if } x > 0 \text{ else } a x, \qquad a = \text{negative\_slope}
    """
    x = _float(x)
    return np.where(x > 0, x, x * x.dtype.type(negative_slope))


def leaky_relu_backward(dy, x, negative_slope=0.01):
    r"""Gradient of :func:`leaky_relu`.

    Parameters
    ----------
    dy : ndarray, shape (*)
    x : ndarray, shape (*)
        Forward input.
    negative_slope : float

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x} = dy \text{ if } x > 0 \text{ else } a\,dy
    """
    dy = _float(dy)
    return np.where(np.asarray(x) > 0, dy, dy * dy.dtype.type(negative_slope))


def _prelu_slope(x, weight):
    """Broadcast the PReLU weight against ``x`` (channel axis 1 when ``x.ndim >= 2``)."""
    weight = _float(weight).reshape(-1)
    if x.ndim < 2 or weight.size == 1:
        if x.ndim < 2 and weight.size != 1:
            raise ValueError(f"prelu: weight must have 1 element for x.ndim < 2, got {weight.size}")
        return weight.reshape((1,) * x.ndim) if x.ndim else weight[0]
    if weight.size != x.shape[1]:
        raise ValueError(f"prelu: weight must have shape (1,) or (C,)=({x.shape[1]},), "
                         f"got ({weight.size},)")
    return weight.reshape((1, -1) + (1,) * (x.ndim - 2))


def prelu(x, weight):
    r"""Parametric ReLU with a learnable slope per channel (PyTorch semantics).

    Parameters
    ----------
    x : ndarray, shape (N, C, *) or (*) with ndim < 2
        Channel axis is 1 when ``x.ndim >= 2``; there is no channel axis otherwise.
    weight : ndarray, shape (C,) or (1,)
        Slopes; a single slope is shared by all channels. Must have 1 element when
        ``x.ndim < 2``.

    Returns
    -------
    y : ndarray, shape of ``x``

    Notes
    -----
    .. math:: y_{n,c,\dots} = x \text{ if } x > 0 \text{ else } w_c\,x
    """
    x = _float(x)
    return np.where(x > 0, x, _prelu_slope(x, weight) * x)


def prelu_backward(dy, x, weight):
    r"""Gradients of :func:`prelu`.

    Parameters
    ----------
    dy : ndarray, shape of ``x``
    x : ndarray, shape (N, C, *) or (*) with ndim < 2
    weight : ndarray, shape (C,) or (1,)

    Returns
    -------
    dx : ndarray, shape of ``x``
    dweight : ndarray, shape of ``weight``

    Notes
    -----
    .. math::

        \frac{\partial L}{\partial x} = dy \text{ if } x > 0 \text{ else } w_c\,dy,
        \qquad
        \frac{\partial L}{\partial w_c} = \sum_{\text{all but } c} dy\,x\,[x \le 0]

    (the sum runs over every element when ``weight`` has one element).
    """
    x, dy = _float(x), _float(dy)
    w = _float(weight)
    pos = x > 0
    dx = np.where(pos, dy, _prelu_slope(x, w) * dy)
    contrib = np.where(pos, 0, dy * x)
    if w.size == 1 or x.ndim < 2:
        dw = np.sum(contrib).reshape(w.shape)
    else:
        dw = contrib.sum(axis=(0,) + tuple(range(2, x.ndim))).reshape(w.shape)
    return dx, dw.astype(w.dtype, copy=False)


# ----------------------------------------------------------------------------- silu, gelu
def silu(x):
    r"""SiLU / swish.

    Parameters
    ----------
    x : ndarray, shape (*)

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y = x\,\sigma(x)
    """
    x = _float(x)
    return x * sigmoid(x)


def silu_backward(dy, x):
    r"""Gradient of :func:`silu`.

    Parameters
    ----------
    dy : ndarray, shape (*)
    x : ndarray, shape (*)
        Forward input.

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x} = dy\,\sigma(x)\,(1 + x\,(1 - \sigma(x)))
    """
    x = _float(x)
    s = sigmoid(x)
    return dy * s * (1 + x * (1 - s))


_GELU_K = math.sqrt(2 / math.pi)
_GELU_C = 0.044715


def gelu(x, approximate="none"):
    r"""Gaussian error linear unit, exact (erf) or tanh approximation, as PyTorch.

    Parameters
    ----------
    x : ndarray, shape (*)
    approximate : {'none', 'tanh'}

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math::

        \text{none:}\quad y = x\,\Phi(x) = \tfrac12 x\left(1 + \operatorname{erf}(x/\sqrt2)\right)

        \text{tanh:}\quad y = \tfrac12 x\left(1 + \tanh u\right),\quad
        u = \sqrt{2/\pi}\,(x + 0.044715\,x^3)
    """
    x = _float(x)
    dt = x.dtype.type
    if approximate == "none":
        return dt(0.5) * x * (1 + erf(x * dt(1 / math.sqrt(2))))
    if approximate == "tanh":
        return dt(0.5) * x * (1 + np.tanh(dt(_GELU_K) * (x + dt(_GELU_C) * x ** 3)))
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


def gelu_backward(dy, x, approximate="none"):
    r"""Gradient of :func:`gelu`.

    Parameters
    ----------
    dy : ndarray, shape (*)
    x : ndarray, shape (*)
        Forward input.
    approximate : {'none', 'tanh'}

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math::

        \text{none:}\quad \frac{\partial y}{\partial x} = \Phi(x) + x\,\varphi(x),
        \quad \varphi(x) = e^{-x^2/2}/\sqrt{2\pi}

        \text{tanh:}\quad \frac{\partial y}{\partial x} = \tfrac12(1 + t)
        + \tfrac12 x (1 - t^2)\sqrt{2/\pi}\,(1 + 3\cdot0.044715\,x^2),\quad t = \tanh u
    """
    x = _float(x)
    dt = x.dtype.type
    if approximate == "none":
        cdf = dt(0.5) * (1 + erf(x * dt(1 / math.sqrt(2))))
        pdf = np.exp(dt(-0.5) * x * x) * dt(1 / math.sqrt(2 * math.pi))
        return dy * (cdf + x * pdf)
    if approximate == "tanh":
        t = np.tanh(dt(_GELU_K) * (x + dt(_GELU_C) * x ** 3))
        du = dt(_GELU_K) * (1 + dt(3 * _GELU_C) * x * x)
        return dy * (dt(0.5) * (1 + t) + dt(0.5) * x * (1 - t * t) * du)
    raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")


# ----------------------------------------------------------------------------- softmax
def softmax(x, axis=-1):
    r"""Softmax along ``axis`` (max-subtracted for stability).

    Parameters
    ----------
    x : ndarray, shape (*)
    axis : int

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}, \qquad m = \max_j x_j
    """
    x = _float(x)
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def softmax_backward(dy, y, axis=-1):
    r"""Gradient of :func:`softmax` from its output.

    Parameters
    ----------
    dy : ndarray, shape (*)
    y : ndarray, shape (*)
        Forward output.
    axis : int

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x_i} = y_i\left(dy_i - \sum_j dy_j\,y_j\right)
    """
    y = _float(y)
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    r"""Log-softmax along ``axis``.

    Parameters
    ----------
    x : ndarray, shape (*)
    axis : int

    Returns
    -------
    y : ndarray, shape (*)

    Notes
    -----
    .. math:: y_i = x_i - m - \log\sum_j e^{x_j - m}, \qquad m = \max_j x_j
    """
    x = _float(x)
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def log_softmax_backward(dy, y, axis=-1):
    r"""Gradient of :func:`log_softmax` from its output.

    Parameters
    ----------
    dy : ndarray, shape (*)
    y : ndarray, shape (*)
        Forward output (log-probabilities).
    axis : int

    Returns
    -------
    dx : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x_i} = dy_i - e^{y_i} \sum_j dy_j
    """
    y = _float(y)
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)
