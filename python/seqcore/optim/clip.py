"""Gradient clipping (``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_``)."""
import math

import numpy as np

from seqcore import _core


def _grads(parameters):
    if hasattr(parameters, "grad") and not isinstance(parameters, (list, tuple)):
        parameters = [parameters]
    grads = []
    for p in parameters:
        g = p.grad if hasattr(p, "grad") else p
        if g is not None:
            grads.append(g)
    return grads


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scales the gradients in place so that their global ``norm_type``-norm is at most
    ``max_norm``; returns the total norm before clipping (a float).

    ``total = (sum_i ||g_i||_p^p)^(1/p)`` (``p = inf``: ``max_i max |g_i|``); every gradient
    is multiplied by ``min(1, max_norm / (total + 1e-6))``. Accepts Parameters, a single
    Parameter, or plain gradient arrays. The reduction runs in C++ over all tensors at once,
    in fixed chunks summed in a fixed order (the same result for any thread count).
    """
    max_norm = float(max_norm)
    norm_type = float(norm_type)
    if max_norm < 0 or math.isnan(max_norm):
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    grads = _grads(parameters)
    if not grads:
        return 0.0
    total = _core.total_norm(grads, norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"The total norm of order {norm_type} for gradients is non-finite ({total}), "
                           "so it cannot be clipped; pass error_if_nonfinite=False to scale anyway")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        _core.scale_(grads, coef)
    return total


def clip_grad_value_(parameters, clip_value):
    """Clamps every gradient element to ``[-clip_value, clip_value]`` in place."""
    grads = _grads(parameters)
    if grads:
        _core.clamp_(grads, float(clip_value))


def total_norm(arrays, norm_type=2.0):
    """The ``norm_type``-norm of several arrays taken together (as one flat vector)."""
    return _core.total_norm([np.asarray(a) for a in arrays], float(norm_type))
