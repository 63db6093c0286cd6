"""Pure-NumPy reference twins of every seqcore op.

Readable math, not speed: each function states its formula and the shape of every argument
in its docstring, computes in the dtype of its inputs (float32 or float64), and matches
PyTorch's semantics unless its docstring says otherwise. The C++ kernels are tested against
these twins, the twins against float64 finite differences and PyTorch.

Backward functions take the upstream gradient and return input/parameter gradients (they
never accumulate into existing arrays). Forward functions that need saved state return it as
a ``ctx`` dict for the matching ``*_backward``.
"""
from .activations import *  # noqa: F401,F403
from .attention import *  # noqa: F401,F403
from .dense import *  # noqa: F401,F403
from .init import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .optim import *  # noqa: F401,F403
from .recurrent import *  # noqa: F401,F403
from .transformer import *  # noqa: F401,F403
from . import activations, attention, dense, init, losses, norm, optim, recurrent, transformer

__all__ = sorted(
    name
    for module in (activations, attention, dense, init, losses, norm, optim, recurrent,
                   transformer)
    for name in module.__all__
)
