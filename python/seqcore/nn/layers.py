"""Feed-forward layers, activations, losses and BatchNorm1d with PyTorch's names, shapes,
defaults and ``state_dict`` keys; explicit ``forward`` / ``backward``.

Every ``forward`` caches what its ``backward`` needs (in train and eval mode alike: eval-mode
gradients, e.g. for saliency, are allowed as in PyTorch); ``backward(dy)`` returns the input
gradient and *adds* into each ``Parameter.grad``. Shape letters: N batch (any leading dims
``*``), I in_features, O out_features, C channels / classes, L length.
"""
import math
from collections import OrderedDict

import numpy as np

from seqcore import functional as F
from seqcore import init
from seqcore.nn.module import Module, ModuleList, Parameter, make_rng

__all__ = ["Linear", "Identity", "ReLU", "LeakyReLU", "PReLU", "Tanh", "Sigmoid", "SiLU", "GELU",
           "Sequential", "CrossEntropyLoss", "MSELoss", "BatchNorm1d"]


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _cached(module, name="forward"):
    if module._cache is None:
        raise RuntimeError(f"{type(module).__name__}.backward needs a preceding {name}")
    return module._cache


class Linear(Module):
    r"""``y = x W^T + b`` (``torch.nn.Linear``).

    Parameters: ``weight`` (O, I) and ``bias`` (O,), initialised as PyTorch does:
    ``kaiming_uniform_(weight, a=sqrt(5))``, i.e. :math:`U(-1/\sqrt I, 1/\sqrt I)`, and bias
    :math:`U(-1/\sqrt I, 1/\sqrt I)` (0 when I = 0).

    ``forward(x)``: x (*, I) -> (*, O). ``backward(dy)``: dy (*, O) -> dx (*, I); adds
    ``dy^T x`` (summed over *) to ``weight.grad`` and ``sum(dy)`` to ``bias.grad``.
    """

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, rng=None):
        super().__init__()
        if int(in_features) < 0 or int(out_features) < 0:
            raise ValueError(f"in_features and out_features must be >= 0, got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        dtype = _check_dtype(dtype)
        rng = make_rng(rng)
        self.weight = Parameter(np.empty((self.out_features, self.in_features), dtype))
        init.kaiming_uniform_(self.weight, a=math.sqrt(5), rng=rng)
        if bias:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            self.bias = Parameter(np.empty((self.out_features,), dtype))
            init.uniform_(self.bias, -bound, bound, rng=rng)
        else:
            self.bias = None
        self._cache = None

    def forward(self, x):
        b = None if self.bias is None else self.bias.data
        y = F.linear(x, self.weight.data, b)
        self._cache = x
        return y

    def backward(self, dy):
        x = _cached(self)
        dx, dw, db = F.linear_backward(dy, x, self.weight.data, need_bias=self.bias is not None)
        self.weight.grad += dw
        if self.bias is not None:
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Identity(Module):
    """``y = x``; ``dx = dy``."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class _Activation(Module):
    """Elementwise activation: caches its input (or output) for backward."""

    def __init__(self):
        super().__init__()
        self._cache = None


class ReLU(_Activation):
    """``y = max(x, 0)``; ``dx = dy [x > 0]``."""

    def forward(self, x):
        self._cache = x
        return F.relu(x)

    def backward(self, dy):
        return F.relu_backward(dy, _cached(self))


class LeakyReLU(_Activation):
    """``y = x if x > 0 else negative_slope x``."""

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        self._cache = x
        return F.leaky_relu(x, self.negative_slope)

    def backward(self, dy):
        return F.leaky_relu_backward(dy, _cached(self), self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class PReLU(_Activation):
    """``y = x if x > 0 else a_c x`` with a learnable ``weight`` (num_parameters,) = init;
    the channel axis is 1 (x (N, C, ...)) when num_parameters = C > 1."""

    def __init__(self, num_parameters=1, init=0.25, *, dtype=np.float32):
        super().__init__()
        self.num_parameters = int(num_parameters)
        self.weight = Parameter(np.full((self.num_parameters,), init, _check_dtype(dtype)))

    def forward(self, x):
        self._cache = x
        return F.prelu(x, self.weight.data)

    def backward(self, dy):
        dx, dw = F.prelu_backward(dy, _cached(self), self.weight.data)
        self.weight.grad += dw.reshape(self.weight.shape)
        return dx

    def extra_repr(self):
        return f"num_parameters={self.num_parameters}"


class Tanh(_Activation):
    """``y = tanh(x)``; ``dx = dy (1 - y^2)``."""

    def forward(self, x):
        y = F.tanh(x)
        self._cache = y
        return y

    def backward(self, dy):
        return F.tanh_backward(dy, _cached(self))


class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))``; ``dx = dy y (1 - y)``."""

    def forward(self, x):
        y = F.sigmoid(x)
        self._cache = y
        return y

    def backward(self, dy):
        return F.sigmoid_backward(dy, _cached(self))


class SiLU(_Activation):
    """``y = x sigmoid(x)``."""

    def forward(self, x):
        self._cache = x
        return F.silu(x)

    def backward(self, dy):
        return F.silu_backward(dy, _cached(self))


class GELU(_Activation):
    """``y = x Phi(x)`` (``approximate='none'``) or its tanh approximation (``'tanh'``)."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        self._cache = x
        return F.gelu(x, self.approximate)

    def backward(self, dy):
        return F.gelu_backward(dy, _cached(self), self.approximate)

    def extra_repr(self):
        return f"approximate={self.approximate!r}"


class Sequential(ModuleList):
    """Chains modules: ``forward(x) = m_k(...m_1(m_0(x)))``; ``backward(dy)`` runs the
    children's ``backward`` in reverse order and returns the first module's input gradient.

    Children are registered as sub-modules named ``'0'``, ``'1'``, ... (or the keys of an
    OrderedDict), so ``state_dict`` keys match ``torch.nn.Sequential`` (``'0.weight'``).
    Indexing, ``len``, iteration and ``append`` are :class:`ModuleList`'s.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, m in items:
            self.add_module(name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m.forward(x)
        return x

    def backward(self, dy):
        for m in reversed(list(self._modules.values())):
            dy = m.backward(dy)
        return dy


_REDUCTIONS = ("mean", "sum", "none")


class CrossEntropyLoss(Module):
    """Softmax cross-entropy (``torch.nn.CrossEntropyLoss`` without class weights).

    ``forward(input, target)``: input (N, C) or (N, C, d...) logits (or (C,)), target integer
    class ids (N,) / (N, d...); returns the loss (see :func:`seqcore.functional.cross_entropy`).
    ``backward(dloss=1.0)`` returns d input (input's shape).
    """

    def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.ignore_index, self.reduction = int(ignore_index), reduction
        self.label_smoothing = float(label_smoothing)
        self._cache = None

    def forward(self, input, target):
        loss, lse = F.cross_entropy(input, target, self.ignore_index, self.reduction, self.label_smoothing,
                                    return_lse=True)
        self._cache = (input, target, lse)
        return loss

    def backward(self, dloss=1.0):
        x, t, lse = _cached(self)
        return F.cross_entropy_backward(dloss, x, t, self.ignore_index, self.reduction, self.label_smoothing,
                                        lse=lse)


class MSELoss(Module):
    """Mean squared error (``torch.nn.MSELoss``): ``forward(input, target)`` (same shapes)
    -> loss; ``backward(dloss=1.0)`` -> d input."""

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction
        self._cache = None

    def forward(self, input, target):
        loss = F.mse_loss(input, target, self.reduction)
        self._cache = (input, target)
        return loss

    def backward(self, dloss=1.0):
        x, t = _cached(self)
        return F.mse_loss_backward(dloss, x, t, self.reduction)


class BatchNorm1d(Module):
    r"""Batch normalization over channel axis 1 of x (N, C) or (N, C, L)
    (``torch.nn.BatchNorm1d``).

    Training (or ``track_running_stats=False``): per channel, over the n = N (or N L) values,
    :math:`\mu = \bar x`, :math:`\sigma^2 = \overline{(x-\mu)^2}` (biased),
    :math:`y = w (x - \mu)/\sqrt{\sigma^2 + \epsilon} + b`, and the running statistics move
    towards the batch's: ``rm = (1 - m) rm + m mu``, ``rv = (1 - m) rv + m n/(n-1) sigma^2``
    (unbiased), with m = ``momentum``, or ``1 / num_batches_tracked`` (a cumulative average)
    when ``momentum`` is None. Eval with running stats: ``mu = rm``, ``sigma^2 = rv``.

    Parameters ``weight`` (C,) = 1 and ``bias`` (C,) = 0 (``affine``); buffers
    ``running_mean`` (C,) = 0, ``running_var`` (C,) = 1 and ``num_batches_tracked`` (an int;
    a 0-d int64 array in ``state_dict``) when ``track_running_stats``. Computed by the fused
    C++ kernels :func:`seqcore.functional.batch_norm` / ``batch_norm_backward`` (statistics
    from one read of x, bitwise the same for any thread count); the NumPy twin
    :func:`seqcore.reference.batch_norm` states the math.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, *,
                 dtype=np.float32):
        super().__init__()
        if int(num_features) < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features, self.eps = int(num_features), float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self._dtype = _check_dtype(dtype)
        C = self.num_features
        if self.affine:
            self.weight = Parameter(np.ones(C, self._dtype))
            self.bias = Parameter(np.zeros(C, self._dtype))
        else:
            self.weight = self.bias = None
        self.reset_running_stats()
        self._cache = None

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features, self._dtype)
            self.running_var = np.ones(self.num_features, self._dtype)
            self.num_batches_tracked = 0
        else:
            self.running_mean = self.running_var = None
            self.num_batches_tracked = None

    # ------------------------------------------------------------------ buffers
    def _buffers(self):
        if not self.track_running_stats:
            return {}
        return OrderedDict(running_mean=self.running_mean, running_var=self.running_var,
                           num_batches_tracked=np.array(self.num_batches_tracked, dtype=np.int64))

    def _load_buffer(self, name, value):
        value = np.asarray(value)
        if name == "num_batches_tracked":
            if value.size != 1:
                raise ValueError(f"load_state_dict: num_batches_tracked must be a scalar, got shape {value.shape}")
            self.num_batches_tracked = int(value.reshape(()))
            return
        if name not in ("running_mean", "running_var") or not self.track_running_stats:
            raise KeyError(name)
        if value.shape != (self.num_features,):
            raise ValueError(f"load_state_dict: {name}: expected ({self.num_features},), got {value.shape}")
        setattr(self, name, np.array(value, dtype=self._dtype, copy=True))

    def astype(self, dtype):
        super().astype(dtype)
        self._dtype = np.dtype(dtype)
        if self.track_running_stats:
            self.running_mean = self.running_mean.astype(self._dtype)
            self.running_var = self.running_var.astype(self._dtype)
        return self

    # ------------------------------------------------------------------ forward / backward
    def forward(self, x):
        """x (N, C) or (N, C, L) of the layer's dtype -> y (same shape)."""
        x = np.asarray(x)
        if x.dtype != self._dtype:
            raise TypeError(f"argument 'input' is {x.dtype} but the layer is {self._dtype}; "
                            f"convert one (module.float() / .double())")
        if x.ndim not in (2, 3) or x.shape[1] != self.num_features:
            raise ValueError(f"argument 'input' must have shape (N, {self.num_features}) or "
                             f"(N, {self.num_features}, L), got {x.shape}")
        use_batch = self.training or not self.track_running_stats  # normalize by batch statistics
        if use_batch and x.size // self.num_features <= 1:
            raise ValueError(f"BatchNorm1d: expected more than 1 value per channel when training, got input of "
                             f"shape {x.shape}")
        track = self.training and self.track_running_stats  # update the running statistics
        m = 0.0
        if track:
            self.num_batches_tracked += 1
            m = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        w = None if self.weight is None else self.weight.data
        b = None if self.bias is None else self.bias.data
        stats = track or not use_batch
        y, ctx = F.batch_norm(x, self.running_mean if stats else None, self.running_var if stats else None,
                              w, b, training=use_batch, momentum=m, eps=self.eps)
        self._cache = ctx
        return y

    def backward(self, dy):
        """dy (shape of x) -> dx; adds into ``weight.grad`` / ``bias.grad``."""
        ctx = _cached(self)
        dy = np.asarray(dy)
        if dy.shape != ctx["x"].shape:
            raise ValueError(f"argument 'dy' must have the output's shape {ctx['x'].shape}, got {dy.shape}")
        dx, dw, db = F.batch_norm_backward(ctx, dy.astype(self._dtype, copy=False))
        if self.weight is not None:
            self.weight.grad += dw
            self.bias.grad += db
        return dx

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")
