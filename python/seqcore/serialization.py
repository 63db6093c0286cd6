"""Checkpoints: ``save(obj, path)`` / ``load(path)`` as one ``.npz`` file, without pickle.

``obj`` is a state dict (name -> array), or a (nested) dict of them and of plain values, e.g.
``{'model': model.state_dict(), 'optimizer': opt.state_dict(), 'step': 10}``. Supported
values: NumPy arrays (any non-object dtype) and NumPy scalars, ``int``, ``float``, ``bool``,
``str``, ``None``, and dicts (str or int keys), lists and tuples of these. Anything else raises
``TypeError`` (nothing is ever pickled).

Dict types are kept (an ``OrderedDict`` such as ``Module.state_dict()`` comes back as one).
File layout: every array is stored as its own ``.npy`` member named by its path of keys
joined with ``/`` (``model/lstm.weight_ih_l0``, ``optimizer/state/0/exp_avg``), so the model's
PyTorch names are kept under the ``model/`` prefix and the file opens with plain
``numpy.load``. One more member, ``__seqcore_checkpoint__``, holds the JSON structure: the
container types (dict/list/tuple, int or str keys, order) and the plain values. Writing is
atomic: a temporary file in the same directory, flushed and fsync'ed, then ``os.replace``.
On load, a truncated or corrupted file raises ``ValueError`` naming the file: every member's
CRC-32 is checked, so damaged content never loads silently (damage confined to zip metadata
that is not used, such as timestamps, loads the intact content).
"""
import json
import os
import tempfile
from collections import OrderedDict

import numpy as np

__all__ = ["save", "load"]

_META = "__seqcore_checkpoint__"
_FORMAT = "seqcore-checkpoint"
_VERSION = 1


def _escape(key):
    return str(key).replace("%", "%25").replace("/", "%2F")


class _Writer:
    def __init__(self):
        self.arrays = {}

    def _array_node(self, arr, path):
        if arr.dtype.hasobject:
            raise TypeError(f"save: {'/'.join(path) or 'obj'} is an object array; only plain dtypes are saved "
                            f"(no pickle)")
        name = "/".join(_escape(p) for p in path) or "_"
        base, i = name, 1
        while name in self.arrays or name == _META:
            name = f"{base}~{i}"
            i += 1
        self.arrays[name] = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)  # keeps 0-d
        return {"t": "array", "k": name}

    def node(self, v, path):
        if isinstance(v, np.ndarray):
            return self._array_node(v, path)
        if isinstance(v, np.generic):  # NumPy scalar: keep its dtype as a 0-d array
            return dict(self._array_node(np.asarray(v), path), scalar=True)
        if hasattr(v, "detach") and hasattr(v, "numpy"):  # a torch tensor
            return self._array_node(v.detach().cpu().numpy(), path)
        if v is None or isinstance(v, (bool, str)):
            return {"t": "value", "v": v}
        if isinstance(v, int):
            return {"t": "int", "v": str(v)}  # exact for any size
        if isinstance(v, float):
            return {"t": "float", "v": v.hex()}  # exact, NaN/inf included
        if isinstance(v, dict):
            keys, items = [], []
            for k, x in v.items():
                if isinstance(k, bool) or not isinstance(k, (str, int, np.integer)):
                    raise TypeError(f"save: dict keys must be str or int, got {type(k).__name__} "
                                    f"at {'/'.join(map(str, path)) or 'obj'}")
                keys.append(["s", k] if isinstance(k, str) else ["i", int(k)])
                items.append(self.node(x, path + [str(k)]))
            return {"t": "odict" if isinstance(v, OrderedDict) else "dict", "keys": keys, "items": items}
        if isinstance(v, (list, tuple)):
            return {"t": "tuple" if isinstance(v, tuple) else "list",
                    "items": [self.node(x, path + [str(i)]) for i, x in enumerate(v)]}
        raise TypeError(f"save: cannot store a {type(v).__name__} at {'/'.join(map(str, path)) or 'obj'} "
                        f"(arrays, numbers, bools, str, None, dicts, lists and tuples only)")


def _umask():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def save(obj, path):
    """Saves ``obj`` (a state dict, or a nested dict of state dicts and plain values) to
    ``path`` as one ``.npz`` file, atomically (temp file in the same directory, flush, fsync,
    ``os.replace``). The path is used exactly as given (no suffix is added)."""
    path = os.fspath(path)
    w = _Writer()
    tree = w.node(obj, [])
    meta = json.dumps({"format": _FORMAT, "version": _VERSION, "tree": tree}, allow_nan=False)
    members = dict(w.arrays)
    members[_META] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (best effort: not every platform/filesystem allows it)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


class _Reader:
    def __init__(self, npz, path):
        self.npz, self.path = npz, path

    def node(self, n):
        t = n["t"]
        if t == "array":
            a = self.npz[n["k"]]
            return a[()] if n.get("scalar") else a
        if t == "value":
            return n["v"]
        if t == "int":
            return int(n["v"])
        if t == "float":
            return float.fromhex(n["v"])
        if t in ("dict", "odict"):
            d = OrderedDict() if t == "odict" else {}
            for (kind, k), x in zip(n["keys"], n["items"]):
                d[k if kind == "s" else int(k)] = self.node(x)
            return d
        if t in ("list", "tuple"):
            items = [self.node(x) for x in n["items"]]
            return tuple(items) if t == "tuple" else items
        raise ValueError(f"unknown node type {t!r}")


def load(path):
    """Loads what :func:`save` wrote: the same nested structure (dicts with their str/int
    keys in order, lists, tuples, ints, floats, bools, str, None) with NumPy arrays.
    Never unpickles. A truncated, corrupted or foreign file raises ``ValueError`` naming it;
    a missing file raises ``FileNotFoundError``."""
    path = os.fspath(path)
    with open(path, "rb") as f:  # FileNotFoundError / PermissionError propagate as they are
        try:
            return _load(f, path)
        except Exception as e:  # BadZipFile (bad CRC, truncated), zlib/format errors, bad JSON, ...
            raise ValueError(f"{path}: not a readable seqcore checkpoint (truncated or corrupted?): "
                             f"{type(e).__name__}: {e}") from e


def _load(f, path):
    npz = np.load(f, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive")
    with npz:
        if _META not in npz.files:
            raise ValueError(f"no {_META} member (not written by seqcore.save)")
        meta = json.loads(bytes(npz[_META]).decode("utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"unknown format {meta.get('format')!r}")
        if meta.get("version") != _VERSION:
            raise ValueError(f"unsupported checkpoint version {meta.get('version')!r}")
        return _Reader(npz, path).node(meta["tree"])
