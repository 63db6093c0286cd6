"""Parameter and Module: the small base every layer builds on (PyTorch's names).

A Module's ``forward`` caches what its ``backward`` needs; ``backward`` returns input
gradients and *adds* into each ``Parameter.grad`` (call ``zero_grad()`` between steps).
"""
from collections import OrderedDict

import numpy as np

from seqcore import _arena


class Parameter:
    """A trainable array: ``.data`` (the value) and ``.grad`` (same shape and dtype).

    ``version`` counts updates made through seqcore (optimizer steps, ``load_state_dict``,
    assigning ``.data``) so layers can cache derived forms such as packed weights.
    """

    __slots__ = ("_data", "grad", "version")

    def __init__(self, data, dtype=None):
        arr = np.asarray(data, dtype=dtype)
        if arr.dtype.kind != "f":
            raise TypeError(f"Parameter data must be a float array, got {arr.dtype}")
        self._data = _arena.copy_of(arr)  # a copy, placed for streaming (see seqcore._arena)
        self.grad = _arena.zeros(arr.shape, arr.dtype)
        self.version = 0

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        arr = np.asarray(value, order="C")  # keeps 0-d shapes (ascontiguousarray would not)
        if arr.shape != self._data.shape:
            self.grad = _arena.zeros(arr.shape, arr.dtype)
        self._data = arr
        self.version += 1

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    def zero_grad(self):
        self.grad[...] = 0

    def __repr__(self):
        return f"Parameter(shape={self._data.shape}, dtype={self._data.dtype})"


class Module:
    """Base class: registers Parameters and sub-Modules assigned as attributes."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call Module.__init__() before assigning attributes")
        params, modules = self.__dict__["_parameters"], self.__dict__["_modules"]
        params.pop(name, None)
        modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            modules[name] = value
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ traversal
    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for mname, m in self._modules.items():
            yield from m.named_parameters(prefix + mname + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_modules(self, prefix=""):
        yield prefix.rstrip("."), self
        for mname, m in self._modules.items():
            yield from m.named_modules(prefix + mname + ".")

    def children(self):
        return list(self._modules.values())

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode=True):
        for _, m in self.named_modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def num_parameters(self):
        return int(sum(p.data.size for p in self.parameters()))

    # ------------------------------------------------------------------ state
    def state_dict(self):
        """Copies of every parameter and buffer under PyTorch's key names, in PyTorch's order:
        each module's own parameters, then its own buffers, then its children's (recursively,
        in registration order)."""
        out = OrderedDict()
        for mname, m in self.named_modules():
            prefix = mname + "." if mname else ""
            for name, p in m._parameters.items():
                out[prefix + name] = p.data.copy()
            for bname, buf in m._buffers().items():
                out[prefix + bname] = np.array(buf, copy=True)
        return out

    def _buffers(self):
        """Non-trainable state saved in state_dict (BatchNorm running stats); override."""
        return {}

    def _load_buffer(self, name, value):
        raise KeyError(name)

    def load_state_dict(self, state_dict, strict=True):
        """Loads arrays (NumPy, or anything with ``.numpy()``, e.g. a PyTorch state_dict's
        tensors) into the parameters, casting to each parameter's dtype. With ``strict``,
        missing or unexpected keys raise KeyError naming them; wrong shapes raise ValueError."""
        own = OrderedDict(self.named_parameters())
        buffers = {}
        for mname, m in self.named_modules():
            for bname in m._buffers():
                buffers[(mname + "." if mname else "") + bname] = (m, bname)
        given = OrderedDict()
        for k, v in state_dict.items():
            if hasattr(v, "detach"):
                v = v.detach()
            if hasattr(v, "numpy") and not isinstance(v, np.ndarray):
                v = v.numpy()
            given[k] = np.asarray(v)
        missing = [k for k in list(own) + list(buffers) if k not in given]
        unexpected = [k for k in given if k not in own and k not in buffers and not k.endswith("num_batches_tracked")]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        bad = [f"{k}: expected {own[k].shape}, got {given[k].shape}" for k in own
               if k in given and given[k].shape != own[k].shape]
        if bad:
            raise ValueError("load_state_dict: wrong shapes: " + "; ".join(bad))
        for k, p in own.items():
            if k in given:
                if p.data.flags.writeable and p.data.flags.c_contiguous:  # in place, as torch's copy_
                    p.data[...] = given[k]
                    p.version += 1
                else:
                    p.data = _arena.copy_of(given[k].astype(p.dtype))
        for k, (m, bname) in buffers.items():
            if k in given:
                m._load_buffer(bname, given[k])
        return self

    def astype(self, dtype):
        """Converts every parameter (and its grad) to ``dtype`` (float32 or float64)."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        for p in self.parameters():
            p.data = _arena.copy_of(p.data.astype(dtype))
            p.grad = _arena.copy_of(p.grad.astype(dtype))
        return self

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ""


def make_rng(rng):
    """A NumPy Generator from None (fresh entropy), an int seed, or a Generator."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class ModuleList(Module):
    """A list of sub-modules registered as ``'0'``, ``'1'``, ... (``torch.nn.ModuleList``), so
    ``state_dict`` keys read ``layers.0.weight``. No forward of its own."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def add_module(self, name, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: {name!r} is not a seqcore.nn.Module ({type(module).__name__})")
        setattr(self, str(name), module)

    def append(self, module):
        self.add_module(str(len(self._modules)), module)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self._from_items(list(self._modules.items())[idx])
        return list(self._modules.values())[idx]

    @classmethod
    def _from_items(cls, items):
        out = cls()
        for name, m in items:
            out.add_module(name, m)
        return out
