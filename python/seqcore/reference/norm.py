"""Normalization layers: pure-NumPy twins.

Shape letters: ``*`` leading dims, ``F`` the normalized (trailing) dims of LayerNorm;
N batch, C channels, L length for BatchNorm1d.
"""
import numpy as np

__all__ = ["layer_norm", "layer_norm_backward", "batch_norm", "batch_norm_backward"]


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    r"""Layer normalization over the trailing ``normalized_shape`` dims (PyTorch semantics).

    Parameters
    ----------
    x : ndarray, shape (*, F...)
    normalized_shape : int or tuple of int
        F..., the trailing shape of ``x`` to normalize over.
    weight, bias : ndarray, shape normalized_shape, optional
    eps : float

    Returns
    -------
    y : ndarray, shape of ``x``
    ctx : dict
        Saved for :func:`layer_norm_backward` (``xhat``, ``rstd (*, 1...)``, ``weight``).

    Notes
    -----
    With mean and biased variance over the normalized dims:

    .. math::

        \mu = \frac1F\sum x, \quad \sigma^2 = \frac1F\sum (x-\mu)^2, \quad
        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad y = \hat x \odot w + b
    """
    x = np.asarray(x)
    shape = (normalized_shape,) if np.isscalar(normalized_shape) else tuple(normalized_shape)
    if x.shape[x.ndim - len(shape):] != shape:
        raise ValueError(f"x: trailing dims must be {shape}, got shape {x.shape}")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    mu = x.mean(axis=axes, keepdims=True)
    rstd = 1 / np.sqrt(((x - mu) ** 2).mean(axis=axes, keepdims=True) + x.dtype.type(eps))
    xhat = (x - mu) * rstd
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias
    ctx = dict(xhat=xhat, rstd=rstd, axes=axes, weight=weight, has_bias=bias is not None)
    return y, ctx


def layer_norm_backward(ctx, dy):
    r"""Gradients of :func:`layer_norm`.

    Parameters
    ----------
    ctx : dict
        From :func:`layer_norm`.
    dy : ndarray, shape of ``x``

    Returns
    -------
    dx : ndarray, shape of ``x``
    dweight : ndarray, shape normalized_shape, or None without weight
    dbias : ndarray, shape normalized_shape, or None without bias

    Notes
    -----
    With ``g = dy * w`` and means over the normalized dims:

    .. math::

        dx = \frac{1}{\sqrt{\sigma^2+\epsilon}}\left(g - \overline{g}
        - \hat x\, \overline{g \hat x}\right), \qquad
        dw = \sum_{*} dy \odot \hat x, \qquad db = \sum_{*} dy
    """
    dy = np.asarray(dy)
    xhat, rstd, axes, w = ctx["xhat"], ctx["rstd"], ctx["axes"], ctx["weight"]
    g = dy if w is None else dy * w
    dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                 - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    lead = tuple(range(dy.ndim - len(axes)))
    dw = (dy * xhat).sum(axis=lead) if w is not None else None
    db = dy.sum(axis=lead) if ctx["has_bias"] else None
    return dx, dw, db


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=True,
               momentum=0.1, eps=1e-5):
    r"""Batch normalization over channel axis 1 (PyTorch ``BatchNorm1d`` semantics).

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, L)
    running_mean, running_var : ndarray, shape (C,), or None
        Running statistics. In training they are updated **in place** (when not None);
        in eval mode they normalize ``x`` and must be given.
    weight, bias : ndarray, shape (C,), optional
    training : bool
        Normalize with batch statistics (True) or running statistics (False).
    momentum : float
    eps : float

    Returns
    -------
    y : ndarray, shape of ``x``
    ctx : dict
        Saved for :func:`batch_norm_backward`.

    Notes
    -----
    Training, statistics per channel over the ``n = N`` (or ``N L``) values:

    .. math::

        \mu = \frac1n \sum x, \quad \sigma^2 = \frac1n \sum (x - \mu)^2, \quad
        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad y = w \hat x + b \\
        \text{rm} \leftarrow (1-m)\,\text{rm} + m\,\mu, \qquad
        \text{rv} \leftarrow (1-m)\,\text{rv} + m\,\frac{n}{n-1}\sigma^2

    (the running variance takes the unbiased estimate). Eval: ``mu = rm``,
    ``sigma^2 = rv``, no update. Training needs ``n > 1``, as in PyTorch.
    """
    x = np.asarray(x)
    if x.ndim not in (2, 3):
        raise ValueError(f"x: expected shape (N, C) or (N, C, L), got {x.shape}")
    C = x.shape[1]
    axes = (0,) if x.ndim == 2 else (0, 2)
    bshape = (1, C) + (1,) * (x.ndim - 2)
    dt = x.dtype.type
    if training:
        n = x.shape[0] * (x.shape[2] if x.ndim == 3 else 1)  # values per channel
        if n <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when "
                             f"training, got input of shape {x.shape}")
        mu = x.mean(axis=axes)
        var = ((x - mu.reshape(bshape)) ** 2).mean(axis=axes)
        m = momentum
        if running_mean is not None:
            running_mean *= 1 - m
            running_mean += m * mu
        if running_var is not None:
            running_var *= 1 - m
            running_var += m * var * (n / (n - 1))
    else:
        mu, var = np.asarray(running_mean, x.dtype), np.asarray(running_var, x.dtype)
    rstd = (1 / np.sqrt(var + dt(eps))).reshape(bshape)
    xhat = (x - mu.reshape(bshape)) * rstd
    y = xhat if weight is None else xhat * np.reshape(weight, bshape)
    if bias is not None:
        y = y + np.reshape(bias, bshape)
    ctx = dict(xhat=xhat, rstd=rstd, axes=axes, bshape=bshape, weight=weight,
               has_bias=bias is not None, training=training)
    return y, ctx


def batch_norm_backward(ctx, dy):
    r"""Gradients of :func:`batch_norm` (training mode or eval mode).

    Parameters
    ----------
    ctx : dict
        From :func:`batch_norm`.
    dy : ndarray, shape of ``x``

    Returns
    -------
    dx : ndarray, shape of ``x``
    dweight : ndarray, shape (C,), or None without weight
    dbias : ndarray, shape (C,), or None without bias

    Notes
    -----
    With ``g = dy * w`` and means over the batch (and length) axes:

    .. math::

        \text{training:}\quad dx = \frac{1}{\sqrt{\sigma^2+\epsilon}}\left(g - \overline g
        - \hat x\,\overline{g \hat x}\right) \qquad
        \text{eval:}\quad dx = \frac{g}{\sqrt{\text{rv}+\epsilon}} \\
        dw = \sum dy \odot \hat x, \qquad db = \sum dy
    """
    dy = np.asarray(dy)
    xhat, rstd, axes, w = ctx["xhat"], ctx["rstd"], ctx["axes"], ctx["weight"]
    g = dy if w is None else dy * np.reshape(w, ctx["bshape"])
    if ctx["training"]:
        dx = rstd * (g - g.mean(axis=axes, keepdims=True)
                     - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    else:
        dx = g * rstd
    dw = (dy * xhat).sum(axis=axes) if w is not None else None
    db = dy.sum(axis=axes) if ctx["has_bias"] else None
    return dx, dw, db
