"""seqcore: fast CPU kernels for sequence models behind a NumPy API."""
from seqcore import _core
from seqcore._core import get_num_threads, set_num_threads, set_flush_denormal, PackedMatrix
from seqcore import functional, reference, nn
from seqcore.functional import matmul, gemm
from seqcore import init, monitor
from seqcore.serialization import save, load

__version__ = _core.info()["version"]


def info():
    """Build and runtime facts: ``version``, ``isa`` (the kernels in use), ``available_isas``
    (what this CPU can run of ``built_isas``, the ISAs compiled in), ``num_threads``, ``openmp``,
    ``compiler``, ``build_type``."""
    return dict(_core.info())


__all__ = ["info", "get_num_threads", "set_num_threads", "set_flush_denormal", "matmul", "gemm", "PackedMatrix",
           "functional", "reference", "nn"]
