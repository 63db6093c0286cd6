"""In-place weight initializers with ``torch.nn.init``'s names, formulas and fan rules.

Every function fills its argument in place and returns it. The argument is a
:class:`seqcore.nn.Parameter` (its ``.data`` is filled and re-assigned, which bumps
``Parameter.version`` so layers drop cached packed weights) or a writeable float ndarray.
``rng`` is None (fresh entropy), an int seed, or a :class:`numpy.random.Generator`.

Fans are PyTorch's: a weight of shape ``(fan_out_maps, fan_in_maps, *receptive_field)`` has
``fan_in = shape[1] * prod(shape[2:])`` and ``fan_out = shape[0] * prod(shape[2:])`` (a Linear
weight ``(O, I)``: fan_in = I, fan_out = O; an RNN ``weight_ih`` ``(G*H, I)``: fan_in = I).
The distributions themselves are the NumPy twins of :mod:`seqcore.reference.init`; the
random streams differ from PyTorch's (NumPy generator), the distributions do not.
"""

import numpy as np

from seqcore.nn.module import Parameter, make_rng
from seqcore.reference import init as _twin
from seqcore.reference.init import calculate_gain, calculate_fan_in_and_fan_out

__all__ = [
    "calculate_gain", "calculate_fan_in_and_fan_out",
    "uniform_", "normal_", "constant_", "zeros_", "ones_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
]


def _target(t):
    """The array to fill (a Parameter's ``.data`` or the ndarray itself), checked."""
    arr = t.data if isinstance(t, Parameter) else t
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"expected a seqcore.nn.Parameter or a numpy.ndarray, got {type(t).__name__}")
    if arr.dtype.kind != "f":
        raise TypeError(f"can only initialize float arrays, got {arr.dtype}")
    if not arr.flags.writeable:
        raise ValueError("the array to initialize is read-only")
    return arr


def _target_2d(t):
    arr = _target(t)
    if arr.ndim < 2:
        raise ValueError(f"Fan in and fan out can not be computed for a tensor with fewer than 2 "
                         f"dimensions (got shape {arr.shape})")
    return arr


def _fill(t, values):
    """Writes ``values`` into ``t`` in place; a Parameter's ``.data`` is re-assigned (same
    array object) so that its ``version`` increases."""
    arr = _target(t)
    arr[...] = values
    if isinstance(t, Parameter):
        if arr.ndim:
            t.data = arr
        else:  # the .data setter would turn a 0-d array into shape (1,)
            t.version += 1
    return t


def uniform_(t, a=0.0, b=1.0, rng=None):
    r"""Fills ``t`` with :math:`U(a, b)`. Returns ``t``."""
    arr = _target(t)
    return _fill(t, make_rng(rng).uniform(a, b, size=arr.shape))


def normal_(t, mean=0.0, std=1.0, rng=None):
    r"""Fills ``t`` with :math:`\mathcal N(\text{mean}, \text{std}^2)`. Returns ``t``."""
    arr = _target(t)
    return _fill(t, make_rng(rng).normal(mean, std, size=arr.shape))


def constant_(t, val):
    """Fills ``t`` with ``val``. Returns ``t``."""
    _target(t)
    return _fill(t, val)


def zeros_(t):
    """Fills ``t`` with 0. Returns ``t``."""
    return constant_(t, 0.0)


def ones_(t):
    """Fills ``t`` with 1. Returns ``t``."""
    return constant_(t, 1.0)


def xavier_uniform_(t, gain=1.0, rng=None):
    r"""Glorot uniform: :math:`U(-a, a)`, :math:`a = \text{gain}\sqrt{6 / (\text{fan\_in} +
    \text{fan\_out})}`; ``t`` has >= 2 dims. Returns ``t``."""
    arr = _target_2d(t)
    if arr.size == 0:  # nothing to fill (PyTorch: a no-op)
        return t
    return _fill(t, _twin.xavier_uniform(arr.shape, gain, make_rng(rng), arr.dtype))


def xavier_normal_(t, gain=1.0, rng=None):
    r"""Glorot normal: :math:`\mathcal N(0, \sigma^2)`, :math:`\sigma = \text{gain}
    \sqrt{2 / (\text{fan\_in} + \text{fan\_out})}`; ``t`` has >= 2 dims. Returns ``t``."""
    arr = _target_2d(t)
    if arr.size == 0:  # nothing to fill (PyTorch: a no-op)
        return t
    return _fill(t, _twin.xavier_normal(arr.shape, gain, make_rng(rng), arr.dtype))


def kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    r"""He uniform: :math:`U(-b, b)`, :math:`b = \text{gain}\sqrt{3 / \text{fan}}` with
    ``gain = calculate_gain(nonlinearity, a)`` and fan = fan_in or fan_out (``mode``).
    ``t`` has >= 2 dims. Returns ``t``. (``a = sqrt(5)`` gives PyTorch's default Linear
    weight init, :math:`U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})`.)"""
    arr = _target_2d(t)
    if arr.size == 0:  # nothing to fill (PyTorch: a no-op)
        return t
    return _fill(t, _twin.kaiming_uniform(arr.shape, a, mode, nonlinearity, make_rng(rng), arr.dtype))


def kaiming_normal_(t, a=0, mode="fan_in", nonlinearity="leaky_relu", rng=None):
    r"""He normal: :math:`\mathcal N(0, \sigma^2)`, :math:`\sigma = \text{gain} /
    \sqrt{\text{fan}}`. ``t`` has >= 2 dims. Returns ``t``."""
    arr = _target_2d(t)
    if arr.size == 0:  # nothing to fill (PyTorch: a no-op)
        return t
    return _fill(t, _twin.kaiming_normal(arr.shape, a, mode, nonlinearity, make_rng(rng), arr.dtype))


def orthogonal_(t, gain=1.0, rng=None):
    r"""(Semi-)orthogonal matrix times ``gain`` (``t`` viewed as (shape[0], prod(rest)),
    >= 2 dims): orthonormal rows when rows <= cols, else orthonormal columns. Returns ``t``."""
    arr = _target_2d(t)
    if arr.size == 0:  # nothing to fill (PyTorch: a no-op)
        return t
    return _fill(t, _twin.orthogonal(arr.shape, gain, make_rng(rng), arr.dtype))

