"""Data-parallel training over MPI (optional: ``pip install seqcore[mpi]``, i.e. mpi4py plus an MPI
such as the ``mpich`` wheel).

Every rank holds a full copy of the model and runs forward/backward on its share of the global
batch; gradients are then averaged across ranks with **one** fused Allreduce over a contiguous
buffer per dtype (not one call per tensor), so every rank takes the same optimizer step and the
parameters stay identical. Without MPI, or when the program was not started by ``mpiexec``, the
world is a single process and every call here is a cheap no-op.

Typical loop::

    from seqcore import distributed as dist
    world = dist.init()
    model = ...; opt = seqcore.optim.Adam(model.parameters())
    dist.broadcast_parameters(model, world)        # same start on every rank
    dp = dist.DataParallel(model, world)
    for step in range(steps):
        xb, yb = dist.shard(global_x, world), dist.shard(global_y, world)
        out = dp.forward(xb); ...; dp.backward(dout)   # backward averages the gradients
        seqcore.optim.clip_grad_norm_(model.parameters(), 1.0)  # sees the averaged grads
        opt.step(); opt.zero_grad()
        world.print(f"step {step}")                    # rank 0 only

``deterministic=True`` replaces MPI's Allreduce (whose summation order depends on the MPI
library and the number of ranks) with an Allgather followed by a sum in rank order, so the
result is bitwise reproducible and equals single-process gradient accumulation over the same
shards in the same order.
"""
import os
import sys

import numpy as np

__all__ = ["World", "init", "broadcast_parameters", "allreduce_gradients", "DataParallel", "shard"]

# Environment variables that MPI launchers set in the processes they start.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE",
                  "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")


class World:
    """The set of cooperating processes: ``rank``, ``size``, ``comm`` (an mpi4py communicator, or
    None for a single process), ``is_root`` (rank 0)."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()

    @property
    def is_root(self):
        return self.rank == 0

    def print(self, *args, **kwargs):
        """``print`` on rank 0 only."""
        if self.is_root:
            print(*args, **kwargs)

    def barrier(self):
        if self.comm is not None:
            self.comm.Barrier()

    def allreduce_scalar(self, value, op="sum"):
        """A float summed (or max'ed) over ranks (for logging losses, counting)."""
        if self.comm is None:
            return float(value)
        from mpi4py import MPI

        return float(self.comm.allreduce(float(value), op=MPI.SUM if op == "sum" else MPI.MAX))

    def __repr__(self):
        return f"World(rank={self.rank}, size={self.size}, mpi={self.comm is not None})"


_WORLD = None


def _launched_by_mpi():
    return os.environ.get("SEQCORE_MPI") == "1" or any(v in os.environ for v in _LAUNCHER_VARS)


def _abort_on_exception(comm):
    """An uncaught exception on one rank would leave the others blocked in a collective forever:
    print it, then MPI_Abort the whole job (mpiexec then exits non-zero)."""
    import time
    import traceback

    def hook(kind, value, tb):
        # one write (traceback + our line), flushed, and a moment for the launcher to forward
        # it before MPI_Abort tears the job down
        msg = "".join(traceback.format_exception(kind, value, tb))
        msg += (f"seqcore.distributed: rank {comm.Get_rank()} failed ({kind.__name__}); aborting all "
                f"{comm.Get_size()} ranks\n")
        sys.stderr.write(msg)
        sys.stderr.flush()
        time.sleep(0.2)
        comm.Abort(1)

    sys.excepthook = hook


def init(comm=None):
    """The process world. With ``comm`` (an mpi4py communicator) use it; otherwise MPI's
    COMM_WORLD when the program was started by an MPI launcher (``mpiexec``; or set
    ``SEQCORE_MPI=1``) and mpi4py is importable, else a single-process world. Under MPI an
    uncaught exception on any rank aborts the whole job instead of hanging it."""
    global _WORLD
    if comm is None and _WORLD is not None:
        return _WORLD
    if comm is None and _launched_by_mpi():
        try:
            from mpi4py import MPI
        except ImportError:
            if os.environ.get("SEQCORE_MPI") == "1":
                raise ImportError("SEQCORE_MPI=1 but mpi4py is not installed (pip install seqcore[mpi])") from None
            MPI = None
        if MPI is not None:
            comm = MPI.COMM_WORLD
    if comm is not None and comm.Get_size() > 1:
        _abort_on_exception(comm)
    world = World(comm if comm is not None and comm.Get_size() > 1 else None)
    if comm is None or world.comm is not None:
        _WORLD = world
    return world


def _params(obj):
    if hasattr(obj, "parameters"):
        return list(obj.parameters())
    return list(obj)


class _FlatBuffers:
    """Contiguous buffers (one per dtype) laid out over a parameter list, reused across steps."""

    def __init__(self, params):
        self.key = self._key(params)
        self.groups = {}
        for p in params:
            self.groups.setdefault(np.dtype(p.dtype), []).append(p)
        self.bufs = {dt: np.empty(sum(p.data.size for p in ps), dt) for dt, ps in self.groups.items()}

    @staticmethod
    def _key(params):
        return tuple((id(p), p.data.shape, p.data.dtype.str) for p in params)

    def matches(self, params):
        return self.key == self._key(params)

    def pack(self, attr):
        for dt, ps in self.groups.items():
            buf, o = self.bufs[dt], 0
            for p in ps:
                a = getattr(p, attr)
                buf[o:o + a.size] = a.reshape(-1)
                o += a.size

    def unpack(self, attr):
        for dt, ps in self.groups.items():
            buf, o = self.bufs[dt], 0
            for p in ps:
                a = getattr(p, attr)
                n = a.size
                if attr == "data":
                    p.data = buf[o:o + n].reshape(a.shape).copy()
                else:
                    a.reshape(-1)[...] = buf[o:o + n]
                o += n


def _buffers_for(obj, params):
    cache = getattr(obj, "_seqcore_flat", None) if obj is not None else None
    if cache is None or not cache.matches(params):
        cache = _FlatBuffers(params)
        if obj is not None:
            try:
                obj._seqcore_flat = cache
            except AttributeError:
                pass
    return cache


def broadcast_parameters(module, world=None, root=0):
    """Copy ``root``'s parameters to every rank (one Bcast per dtype over a fused buffer)."""
    world = world or init()
    if world.comm is None:
        return
    params = _params(module)
    fb = _FlatBuffers(params)
    fb.pack("data")
    for buf in fb.bufs.values():
        world.comm.Bcast(buf, root=root)
    fb.unpack("data")


def allreduce_gradients(parameters, world=None, average=True, deterministic=False, owner=None):
    """Sum (``average``: mean) every parameter's ``.grad`` over the ranks, in place, with one
    fused collective per dtype. ``deterministic``: Allgather + sum in rank order (bitwise
    reproducible, the same bits as accumulating the shards' gradients in rank order in one
    process). Returns the number of bytes each rank sent."""
    world = world or init()
    params = _params(parameters)
    if world.comm is None or not params:
        return 0
    fb = _buffers_for(owner, params)
    fb.pack("grad")
    sent = 0
    for dt, buf in fb.bufs.items():
        if deterministic:
            every = np.empty((world.size, buf.size), dt)
            world.comm.Allgather(buf, every)
            acc = every[0].copy()
            for r in range(1, world.size):
                acc += every[r]
            buf[...] = acc
        else:
            from mpi4py import MPI

            world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if average:
            buf *= dt.type(1.0 / world.size)
        sent += buf.nbytes
    fb.unpack("grad")
    return sent


class DataParallel:
    """Wraps a module: ``forward`` runs the module; ``backward`` runs the module's backward and
    then averages the gradients over the ranks (one fused Allreduce). Everything else
    (``parameters``, ``state_dict``, ``train``/``eval``, attributes) is the module's."""

    def __init__(self, module, world=None, deterministic=False):
        self.module = module
        self.world = world or init()
        self.deterministic = bool(deterministic)
        self.bytes_last_step = 0

    def forward(self, *args, **kwargs):
        return self.module.forward(*args, **kwargs)

    __call__ = forward

    def backward(self, *args, **kwargs):
        out = self.module.backward(*args, **kwargs)
        self.sync_gradients()
        return out

    def sync_gradients(self):
        """Average ``.grad`` over the ranks now (for modules whose backward you call yourself)."""
        self.bytes_last_step = allreduce_gradients(self.module.parameters(), self.world,
                                                   deterministic=self.deterministic, owner=self)

    def __getattr__(self, name):
        return getattr(self.module, name)


def shard(data, world=None, axis=0):
    """This rank's contiguous share of ``data`` along ``axis`` (``np.array_split`` order, so
    shards differ by at most one element and concatenate back to ``data`` in rank order). An
    int ``n`` means ``range(n)``: the rank's indices."""
    world = world or init()
    if isinstance(data, (int, np.integer)):
        data = np.arange(int(data))
    arr = np.asarray(data)
    if world.size == 1:
        return arr
    return np.array_split(arr, world.size, axis=axis)[world.rank]
