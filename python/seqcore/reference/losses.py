"""Losses: pure-NumPy twins.

Shape letters: N batch, C classes, ``d...`` optional extra dims (as PyTorch's
``(N, C, d1, ...)`` logits with ``(N, d1, ...)`` targets), ``*`` any shape.
"""
import numpy as np

from .activations import log_softmax

__all__ = ["cross_entropy", "cross_entropy_backward", "mse_loss", "mse_loss_backward"]

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _ce_parts(logits, target, ignore_index):
    """Class-last log-probabilities ``(N, d..., C)``, safe targets, valid mask ``(N, d...)``."""
    logits, target = np.asarray(logits), np.asarray(target)
    z = logits[None] if logits.ndim == 1 else np.moveaxis(logits, 1, -1)
    t = target.reshape(z.shape[:-1])
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"target: expected integer class indices, got {t.dtype}")
    valid = t != ignore_index
    C = z.shape[-1]
    if np.any(valid & ((t < 0) | (t >= C))):
        raise ValueError(f"target: class indices must lie in [0, {C}) or equal ignore_index")
    return log_softmax(z, axis=-1), np.where(valid, t, 0), valid


def cross_entropy(logits, target, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    r"""Softmax cross-entropy with class-index targets (PyTorch ``F.cross_entropy``).

    Parameters
    ----------
    logits : ndarray, shape (N, C), (N, C, d...) or (C,)
    target : int ndarray, shape (N,), (N, d...) or ()
        Class indices in ``[0, C)``, or ``ignore_index``.
    ignore_index : int
        Targets equal to it contribute 0 and are not counted by ``'mean'``.
    reduction : {'mean', 'sum', 'none'}
    label_smoothing : float
        epsilon in ``[0, 1]``.

    Returns
    -------
    loss : scalar (``'mean'``, ``'sum'``) or ndarray shaped like ``target`` (``'none'``)

    Notes
    -----
    With ``p = log_softmax(logits)`` over the class axis, for every non-ignored element:

    .. math::

        \ell = -(1 - \epsilon)\, p_{y} - \frac{\epsilon}{C} \sum_c p_c

    ``'mean'`` divides the sum by the number of non-ignored targets (NaN when there are
    none, as PyTorch).
    """
    _check_reduction(reduction)
    logp, t, valid = _ce_parts(logits, target, ignore_index)
    dt = logp.dtype.type
    eps = dt(label_smoothing)
    nll = -np.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    loss = np.where(valid, (1 - eps) * nll - eps * logp.mean(axis=-1), 0).astype(logp.dtype)
    if reduction == "none":
        return loss.reshape(np.shape(target))
    if reduction == "sum":
        return loss.sum()
    count = np.count_nonzero(valid)
    return loss.sum() / dt(count) if count else dt(np.nan)


def cross_entropy_backward(dloss, logits, target, ignore_index=-100, reduction="mean",
                           label_smoothing=0.0):
    r"""Gradient of :func:`cross_entropy` with respect to the logits.

    Parameters
    ----------
    dloss : scalar, or ndarray shaped like ``target`` for ``reduction='none'``
    logits, target, ignore_index, reduction, label_smoothing
        As in the forward call.

    Returns
    -------
    dlogits : ndarray, shape of ``logits``

    Notes
    -----
    For every non-ignored element, with ``q = softmax(logits)``:

    .. math:: \frac{\partial \ell}{\partial z_c} = q_c - (1 - \epsilon)[c = y]
        - \frac{\epsilon}{C}

    scaled by ``dloss`` (elementwise for ``'none'``, divided by the number of non-ignored
    targets for ``'mean'``); ignored elements get 0 (so an all-ignored ``'mean'`` has a zero
    gradient although its loss is NaN, as PyTorch).
    """
    _check_reduction(reduction)
    logp, t, valid = _ce_parts(logits, target, ignore_index)
    dt = logp.dtype.type
    eps = dt(label_smoothing)
    C = logp.shape[-1]
    onehot = np.arange(C) == t[..., None]
    g = np.exp(logp) - (1 - eps) * onehot - eps / C
    scale = np.asarray(dloss, logp.dtype)
    if reduction == "none":
        scale = scale.reshape(valid.shape)
    elif reduction == "mean":
        scale = scale / max(np.count_nonzero(valid), 1)
    g = np.where(valid[..., None], g * scale[..., None], 0).astype(logp.dtype)
    return g[0] if np.ndim(logits) == 1 else np.moveaxis(g, -1, 1)


def mse_loss(input, target, reduction="mean"):
    r"""Mean squared error (PyTorch ``F.mse_loss``).

    Parameters
    ----------
    input, target : ndarray, shape (*)
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    loss : scalar, or ndarray shape (*) for ``'none'``

    Notes
    -----
    .. math:: \ell_i = (x_i - t_i)^2, \qquad \text{mean: } \frac1n \sum_i \ell_i
    """
    _check_reduction(reduction)
    d = np.asarray(input) - np.asarray(target)
    loss = d * d
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def mse_loss_backward(dloss, input, target, reduction="mean"):
    r"""Gradient of :func:`mse_loss` with respect to ``input``.

    Parameters
    ----------
    dloss : scalar, or ndarray shape (*) for ``'none'``
    input, target : ndarray, shape (*)
    reduction : {'mean', 'sum', 'none'}

    Returns
    -------
    dinput : ndarray, shape (*)

    Notes
    -----
    .. math:: \frac{\partial L}{\partial x_i} = 2\,(x_i - t_i)\; dloss_{(i)}
        \;/\; (n \text{ for mean})
    """
    _check_reduction(reduction)
    d = np.asarray(input) - np.asarray(target)
    g = 2 * d * np.asarray(dloss, d.dtype)
    return g / d.size if reduction == "mean" else g
