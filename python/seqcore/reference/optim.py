"""Optimizer steps and gradient clipping: pure-NumPy twins of ``torch.optim``'s
single-tensor (for-loop) algorithms.

Every step updates ``param`` and its state arrays **in place** (all of the same shape,
``*``). The step count ``t`` starts at 1 for the first step.
"""
import math

import numpy as np

__all__ = ["sgd_step", "adam_step", "rmsprop_step", "clip_grad_norm", "clip_grad_value"]


def sgd_step(param, grad, buf, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False,
             maximize=False):
    r"""One SGD step (``torch.optim.SGD``).

    Parameters
    ----------
    param : ndarray, shape (*)
        Updated in place.
    grad : ndarray, shape (*)
    buf : ndarray, shape (*), or None
        Momentum buffer, updated in place; None before the first step (it is then created
        as a copy of the first direction).
    lr, momentum, dampening, weight_decay : float
    nesterov, maximize : bool

    Returns
    -------
    buf : ndarray, shape (*), or None when ``momentum == 0``
        Pass it to the next step.

    Notes
    -----
    .. math::

        g &= \pm\nabla + \lambda\,\theta \quad (- \text{ when maximize}) \\
        b &= g \text{ (first step)}, \quad b \leftarrow \mu b + (1 - \tau) g
        \text{ (later)} \\
        g &= g + \mu b \text{ (nesterov)} \text{ or } b, \qquad
        \theta \leftarrow \theta - \eta\, g
    """
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        if buf is None:
            buf = np.array(g, dtype=param.dtype, copy=True)
        else:
            buf *= momentum
            buf += (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    param -= lr * g
    return buf


def adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr=1e-3,
              betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
              decoupled=False):
    r"""One Adam / AdamW step (``torch.optim.Adam``, ``torch.optim.AdamW``).

    Parameters
    ----------
    param : ndarray, shape (*)
        Updated in place.
    grad : ndarray, shape (*)
    exp_avg, exp_avg_sq : ndarray, shape (*)
        First and second moment estimates (zeros before step 1), updated in place.
    max_exp_avg_sq : ndarray, shape (*), or None
        Running max of ``exp_avg_sq`` (zeros before step 1), required when ``amsgrad``.
    step : int
        t, starting at 1.
    lr, eps, weight_decay : float
    betas : (float, float)
    amsgrad : bool
    decoupled : bool
        True gives AdamW's decoupled weight decay.

    Notes
    -----
    .. math::

        &\text{Adam: } g = \nabla + \lambda\theta \qquad
        \text{AdamW: } g = \nabla,\ \theta \leftarrow \theta(1 - \eta\lambda) \\
        &m \leftarrow \beta_1 m + (1 - \beta_1) g, \qquad
        v \leftarrow \beta_2 v + (1 - \beta_2) g^2 \\
        &\hat v = \max(\hat v_{\text{old}}, v) \text{ (amsgrad) else } v, \qquad
        \theta \leftarrow \theta - \frac{\eta}{1 - \beta_1^t}\,
        \frac{m}{\sqrt{\hat v} / \sqrt{1 - \beta_2^t} + \epsilon}
    """
    beta1, beta2 = betas
    g = grad
    if weight_decay != 0:
        if decoupled:
            param *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * param
    exp_avg += (1 - beta1) * (g - exp_avg)
    exp_avg_sq *= beta2
    exp_avg_sq += (1 - beta2) * g * g
    v = exp_avg_sq
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    step_size = lr / (1 - beta1 ** step)
    denom = np.sqrt(v) / math.sqrt(1 - beta2 ** step) + eps
    param -= step_size * exp_avg / denom


def rmsprop_step(param, grad, square_avg, grad_avg, momentum_buffer, lr=1e-2, alpha=0.99,
                 eps=1e-8, weight_decay=0, momentum=0, centered=False):
    r"""One RMSprop step (``torch.optim.RMSprop``).

    Parameters
    ----------
    param : ndarray, shape (*)
        Updated in place.
    grad : ndarray, shape (*)
    square_avg : ndarray, shape (*)
        Running mean of squared gradients (zeros before step 1), updated in place.
    grad_avg : ndarray, shape (*), or None
        Running mean of gradients (zeros before step 1), required when ``centered``.
    momentum_buffer : ndarray, shape (*), or None
        Zeros before step 1, required when ``momentum > 0``.
    lr, alpha, eps, weight_decay, momentum : float
    centered : bool

    Notes
    -----
    .. math::

        g &= \nabla + \lambda\theta, \qquad s \leftarrow \alpha s + (1 - \alpha) g^2 \\
        \bar g &\leftarrow \alpha \bar g + (1 - \alpha) g, \quad
        d = \sqrt{s - \bar g^2} + \epsilon \text{ (centered) else } \sqrt{s} + \epsilon \\
        b &\leftarrow \mu b + g / d,\ \theta \leftarrow \theta - \eta b
        \text{ (momentum) else } \theta \leftarrow \theta - \eta\, g / d
    """
    g = grad
    if weight_decay != 0:
        g = g + weight_decay * param
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    if centered:
        grad_avg += (1 - alpha) * (g - grad_avg)
        avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        momentum_buffer *= momentum
        momentum_buffer += g / avg
        param -= lr * momentum_buffer
    else:
        param -= lr * g / avg


def clip_grad_norm(grads, max_norm, norm_type=2.0):
    r"""Scale gradients in place so their global norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``).

    Parameters
    ----------
    grads : list of ndarray, any shapes
        Scaled in place.
    max_norm : float
    norm_type : float
        p of the p-norm; ``inf`` for the max-abs norm.

    Returns
    -------
    total_norm : float
        Norm of all gradients taken together, before clipping.

    Notes
    -----
    .. math::

        N = \left\| \left(\|g_1\|_p, \dots, \|g_k\|_p\right) \right\|_p, \qquad
        g_i \leftarrow g_i \cdot \min\left(1, \frac{\text{max\_norm}}{N + 10^{-6}}\right)
    """
    if not grads:
        return 0.0
    p = float(norm_type)
    norms = np.array([np.linalg.norm(np.ravel(g), ord=p) for g in grads])
    total = float(np.linalg.norm(norms, ord=p))
    coef = min(1.0, max_norm / (total + 1e-6))
    for g in grads:
        g *= coef
    return total


def clip_grad_value(grads, clip_value):
    r"""Clamp gradients in place to ``[-clip_value, clip_value]``
    (``torch.nn.utils.clip_grad_value_``).

    Parameters
    ----------
    grads : list of ndarray, any shapes
    clip_value : float

    Notes
    -----
    .. math:: g \leftarrow \min(\max(g, -c), c)
    """
    for g in grads:
        np.clip(g, -clip_value, clip_value, out=g)
