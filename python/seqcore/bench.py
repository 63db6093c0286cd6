"""Benchmark harness: seqcore vs its NumPy twin / plain NumPy vs PyTorch, in one process.

Usage::

    python -m seqcore.bench --suite gemm,activations,overhead --threads 1,2 \\
        --json results.json --md results.md --plot ratios.png

or ``seqcore.bench.run(...)`` from Python. Run it with OpenBLAS tuned for the real CPU::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m seqcore.bench ...

How things are measured
-----------------------
* All contenders of a case run in the same process, **interleaved**: every repeat is one
  round over the contenders (the starting contender rotates each round), so a slow phase
  of the host hits every contender alike. Each contender is warmed up first (one untimed
  call, which also pays first-touch page faults of its output, then one timed call that
  calibrates ``number``, the calls per sample, so that a sample lasts >= ``min_time``).
  The reported time is the **median** of the samples (per call). A contender whose single
  call exceeds 0.25 s (the slow NumPy twins) gets ``max(3, ceil(2 s / t))`` samples
  instead of ``repeats``, to keep the run short; the sample count is in the JSON.
* Machine limits are measured in the same run, for each thread count, once at the start
  of that thread count's block and again after every case (so they interleave with the
  kernels): the FP32 FMA peak by ``seqcore._core._fma_peak(threads=t)`` and the memory
  bandwidth by ``np.copyto`` of a 256 MiB float32 array (bytes = read + write; with
  ``t`` threads, ``t`` Python threads copy separate slices at once -- NumPy releases the
  GIL in the copy -- and the bytes are summed). For bandwidth the **maximum** over the
  probes is used (the median is stored too). For the FMA peak, a case compared with it
  also runs the FMA probe (best of three short runs) as one more member of its rounds, so
  that probe samples interleave with the kernel's samples and see the same host:
  ``% peak`` is the kernel's median rate over the median of those paired probe samples
  (host contention on this VM moves both by up to 20%, and comparing a median kernel
  sample with the best probe of the whole run would charge the kernel for the host's slow
  moments). The fraction of the run's maximum probe is reported beside it
  (``frac_peak_of_max``), as the stricter figure.
  The FP64 peak is taken as half the FP32 one (half the lanes per FMA).
* With more than one thread, every sample (and probe) is preceded by a 0.15 s pause and,
  for short calls, one untimed call: idle thread pools spin after a call (OpenBLAS ~0.1 s)
  and would otherwise slow down whichever library runs next on this 2-CPU machine.
* CPU time used by *other* processes is measured per case (/proc/stat minus our own
  CPU time); cases where it exceeds 0.2 CPUs are flagged (JSON ``load``, ⚠ in markdown).
* Threads: for each count ``t``: ``threadpoolctl.threadpool_limits(t)`` (NumPy's BLAS and
  every OpenMP runtime), ``seqcore.set_num_threads(t)``, ``torch.set_num_threads(t)``.
* Ratios ``seqcore/X`` are **speed** ratios, ``time_X / time_seqcore``: above 1 means
  seqcore is faster. ``time/copy`` is a **time** ratio, ``time_seqcore / time_copy`` of
  the same bytes (target <= 1.3).

Adding a suite
--------------
Write ``def suite_x(cfg) -> iterable of Case`` (a generator, so big arrays live only while
their case runs) and register it with ``@suite("x")``. ``cfg`` has ``quick`` and ``torch``
(the module, or None when PyTorch is not importable).
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import timeit
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

import seqcore
from seqcore import _core
from seqcore import functional as F
from seqcore import reference as R

__all__ = ["run", "main", "suite", "SUITES", "Case", "Contender"]

DEFAULT_SUITES = ("gemm", "activations", "overhead")
OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SLOW_CALL_S = 0.25        # a call longer than this gets fewer samples ...
SLOW_BUDGET_S = 2.0       # ... about this much time in total, but at least 3 samples
MIN_SLOW_SAMPLES = 3
SETTLE_S = 0.15           # pause before each sample when threads > 1 (see _measure)
BUSY_CPUS = 0.2           # other processes using more CPUs than this: flag the case


# ============================================================================ data model


@dataclass
class Contender:
    """One implementation of a case. Give ``fn`` (a zero-argument callable returning the
    result) or ``stmt`` + ``env`` (timed with :mod:`timeit`, no wrapper call: for
    overhead measurements)."""
    fn: Optional[Callable] = None
    desc: str = ""
    stmt: Optional[str] = None
    env: Optional[dict] = None

    def timer(self) -> timeit.Timer:
        if self.stmt is not None:
            return timeit.Timer(self.stmt, globals=self.env)
        return timeit.Timer(self.fn)

    def call(self):
        if self.stmt is not None:
            return eval(self.stmt, self.env)  # noqa: S307 - our own statement
        return self.fn()


@dataclass
class Case:
    """A benchmark case. ``flops`` or ``nbytes`` is the work of one call (sets GFLOP/s or
    GB/s); ``peak`` is 'fma32', 'fma64' or 'bw' (the machine limit to compare with);
    ``baseline`` names a contender whose time the seqcore time is divided by (time ratio);
    ``ref`` the contender the others' results are checked against; ``targets`` maps a
    ratio name or 'us_per_call' to an upper limit for seqcore, or to ``('>=', x)`` for a lower one (speed ratios). A 'bw' case whose
    ``working_set`` fits in the last-level cache is compared with its ``baseline``'s
    bandwidth (an in-cache copy) instead of the DRAM copy probe."""
    suite: str
    name: str
    shape: tuple
    dtype: str
    contenders: Dict[str, Contender]
    flops: Optional[float] = None
    nbytes: Optional[float] = None
    peak: Optional[str] = None
    baseline: Optional[str] = None
    ref: Optional[str] = "numpy"
    check: bool = True
    per_call_us: bool = False
    targets: Dict[str, float] = field(default_factory=dict)
    notes: str = ""
    working_set: Optional[float] = None   # bytes touched per call (default: nbytes)


class _Cfg:
    def __init__(self, quick, torch):
        self.quick = quick
        self.torch = torch


SUITES: Dict[str, Callable[[_Cfg], Iterable[Case]]] = {}


def suite(name):
    """Register ``fn(cfg) -> iterable of Case`` as suite ``name``."""
    def deco(fn):
        SUITES[name] = fn
        return fn
    return deco


# ============================================================================ helpers


def _rng():
    return np.random.default_rng(1234)


def _randn(shape, dtype=np.float32, scale=1.0):
    return (_rng().standard_normal(shape) * scale).astype(dtype)


def _import_torch():
    try:
        import torch  # noqa: PLC0415 - optional, lazy
    except Exception:  # ImportError, or a broken install
        return None
    return torch


def _has_out(fn) -> bool:
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# ============================================================================ suites


@suite("gemm")
def suite_gemm(cfg: _Cfg):
    torch = cfg.torch
    q = cfg.quick

    def square(n, dtype):
        a, b = _randn((n, n), dtype), _randn((n, n), dtype)
        outs = {k: np.zeros((n, n), dtype) for k in ("seqcore", "numpy", "torch")}
        con = {
            "seqcore": Contender(lambda: seqcore.matmul(a, b, out=outs["seqcore"]),
                                 "seqcore.matmul(a, b, out=c)"),
            "numpy": Contender(lambda: np.matmul(a, b, out=outs["numpy"]),
                               "np.matmul(a, b, out=c) (NumPy's BLAS)"),
        }
        if torch is not None:
            ta, tb, tc = (torch.from_numpy(v) for v in (a, b, outs["torch"]))
            con["torch"] = Contender(lambda: torch.mm(ta, tb, out=tc), "torch.mm(a, b, out=c)")
        tag = "sgemm" if dtype == np.float32 else "dgemm"
        return Case("gemm", f"{tag} {n}^3", (n, n, n), np.dtype(dtype).name, con,
                    flops=2.0 * n ** 3, peak="fma32" if dtype == np.float32 else "fma64")

    def rnn(m, k, n):
        h, w = _randn((m, k)), _randn((n, k), scale=1 / math.sqrt(k))  # w: (out, in)
        P = seqcore.PackedMatrix(w, trans=True)                        # packed once, untimed
        wT = np.ascontiguousarray(w.T)                                 # (K, N): NumPy's best
        outs = {c: np.zeros((m, n), np.float32) for c in ("seqcore", "numpy", "torch")}
        con = {
            "seqcore": Contender(lambda: P.matmul(h, out=outs["seqcore"]),
                                 "PackedMatrix(w, trans=True).matmul(h, out=o); packed once"),
            "numpy": Contender(lambda: np.matmul(h, wT, out=outs["numpy"]),
                               "np.matmul(h, wT, out=o), wT C-contiguous (K,N)"),
        }
        if torch is not None:
            th, twT, to = (torch.from_numpy(v) for v in (h, wT, outs["torch"]))
            con["torch"] = Contender(lambda: torch.mm(th, twT, out=to),
                                     "torch.mm(h, wT, out=o)")
        return Case("gemm", f"rnn {m}x{k}x{n} packed", (m, k, n), "float32", con,
                    flops=2.0 * m * k * n, peak="fma32",
                    notes="M x K x N, h (M,K) @ w(N,K).T with w pre-packed")

    for n in ((128, 256) if q else (1024, 2048)):
        yield square(n, np.float32)
    for mkn in (((16, 64, 256), (8, 32, 128)) if q else
                ((64, 512, 2048), (32, 256, 1024), (64, 1024, 4096))):
        yield rnn(*mkn)
    yield square(128 if q else 1024, np.float64)


_ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu", "silu", "softmax")


@suite("activations")
def suite_activations(cfg: _Cfg):
    torch = cfg.torch
    sizes = ((1 << 16, 64), (1 << 12, 4)) if cfg.quick else ((1 << 24, 16384), (1 << 20, 1024))
    for n, rows in sizes:
        for op in _ACTIVATIONS:
            shape = (rows, n // rows) if op == "softmax" else (n,)
            x = _randn(shape, scale=3.0)
            ys = {c: np.zeros_like(x) for c in ("seqcore", "torch", "copy")}
            sc_fn = getattr(F, op)
            twin = getattr(R, op)
            if _has_out(sc_fn):
                sc = Contender(lambda f=sc_fn: f(x, out=ys["seqcore"]),
                               f"seqcore.functional.{op}(x, out=y)")
            else:  # no out= in the API (yet): the call allocates its output
                sc = Contender(lambda f=sc_fn: f(x), f"seqcore.functional.{op}(x) (allocates)")
            con = {
                "seqcore": sc,
                "numpy": Contender(lambda f=twin: f(x),
                                   f"seqcore.reference.{op}(x) (NumPy twin, allocates)"),
            }
            if torch is not None:
                tx, ty = torch.from_numpy(x), torch.from_numpy(ys["torch"])
                tfn, tdesc = {
                    "relu": (lambda: torch.clamp_min(tx, 0, out=ty),
                             "torch.clamp_min(x, 0, out=y) (torch.relu has no out=)"),
                    "tanh": (lambda: torch.tanh(tx, out=ty), "torch.tanh(x, out=y)"),
                    "sigmoid": (lambda: torch.sigmoid(tx, out=ty), "torch.sigmoid(x, out=y)"),
                    "gelu": (lambda: torch._C._nn.gelu(tx, out=ty),
                             "torch._C._nn.gelu(x, out=y) (= F.gelu)"),
                    "silu": (lambda: torch._C._nn.silu(tx, out=ty),
                             "torch._C._nn.silu(x, out=y) (= F.silu)"),
                    "softmax": (lambda: torch.softmax(tx, -1, out=ty),
                                "torch.softmax(x, -1, out=y)"),
                }[op]
                con["torch"] = Contender(tfn, tdesc)
            con["copy"] = Contender(lambda: np.copyto(ys["copy"], x),
                                    "np.copyto(y, x): memory-copy baseline, same bytes")
            yield Case("activations", f"{op} {'x'.join(map(str, shape))}", shape, "float32",
                       con, nbytes=2.0 * x.nbytes, peak="bw", baseline="copy",
                       targets={"time/copy": 1.3},
                       notes="bytes = read + write; softmax over the last axis")


@suite("overhead")
def suite_overhead(cfg: _Cfg):
    torch = cfg.torch
    x = _randn((16,))
    y = np.zeros_like(x)
    con = {
        "seqcore": Contender(stmt="relu(x)", env={"relu": F.relu, "x": x},
                             desc="seqcore.functional.relu(x), 16 float32"),
        "seqcore(out=)": Contender(stmt="relu(x, out=y)", env={"relu": F.relu, "x": x, "y": y},
                                   desc="seqcore.functional.relu(x, out=y)"),
        "numpy": Contender(stmt="maximum(x, 0)", env={"maximum": np.maximum, "x": x},
                           desc="np.maximum(x, 0)"),
    }
    if torch is not None:
        con["torch"] = Contender(stmt="relu(t)", env={"relu": torch.relu,
                                                       "t": torch.from_numpy(x)},
                                 desc="torch.relu(t)")
    yield Case("overhead", "relu 16", (16,), "float32", con, per_call_us=True, check=False,
               targets={"us_per_call": 2.0}, notes="Python call overhead, timeit loops")


# ============================================================================ machine limits


class _Probe:
    """FMA-peak and copy-bandwidth probes, sampled repeatedly during a run."""

    def __init__(self, quick):
        self.fma_seconds = 0.01 if quick else 0.05
        n = (32 << 20 if quick else 256 << 20) // 4
        self.src = np.ones(n, np.float32)   # touched
        self.dst = np.zeros(n, np.float32)
        np.copyto(self.dst, self.src)       # touch the destination pages too
        self.fma: Dict[int, List[float]] = {}
        self.bw: Dict[int, List[float]] = {}

    def _copy_parallel(self, t):
        if t == 1:
            t0 = time.perf_counter()
            np.copyto(self.dst, self.src)
            return time.perf_counter() - t0
        bounds = np.linspace(0, self.src.size, t + 1).astype(int)
        barrier = threading.Barrier(t + 1)

        def work(i):
            barrier.wait()
            np.copyto(self.dst[bounds[i]:bounds[i + 1]], self.src[bounds[i]:bounds[i + 1]])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(t)]
        for th in threads:
            th.start()
        barrier.wait()
        t0 = time.perf_counter()
        for th in threads:
            th.join()
        return time.perf_counter() - t0

    def sample(self, t, n=1, settle=0.0):
        for _ in range(n):
            if settle > 0:
                time.sleep(settle)
            self.fma.setdefault(t, []).append(
                float(_core._fma_peak(seconds=self.fma_seconds, threads=t)))
            best = min(self._copy_parallel(t) for _ in range(2))
            self.bw.setdefault(t, []).append(2.0 * self.src.nbytes / best)

    def summary(self, t):
        f, b = self.fma.get(t, []), self.bw.get(t, [])
        return {
            "fma_gflops_max": max(f) / 1e9, "fma_gflops_median": statistics.median(f) / 1e9,
            "fma_gflops_samples": [v / 1e9 for v in f],
            "copy_gbps_max": max(b) / 1e9, "copy_gbps_median": statistics.median(b) / 1e9,
            "copy_gbps_samples": [v / 1e9 for v in b],
            "fma_method": f"seqcore._core._fma_peak(seconds={self.fma_seconds}, threads={t})",
            "copy_method": (f"np.copyto on {self.src.nbytes >> 20} MiB float32, bytes = 2 x "
                            f"size, {t} Python thread(s) on separate slices, best of 2"),
        }


class _CpuMonitor:
    """CPUs used by *other* processes (and stolen by the host) between start() and stop():
    /proc/stat busy time minus this process's own CPU time. Linux only; else None."""

    def __init__(self):
        self.clk = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _stat():
        try:
            with open("/proc/stat") as fh:
                v = [int(x) for x in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        v += [0] * (8 - len(v))
        busy = v[0] + v[1] + v[2] + v[5] + v[6]   # user nice system irq softirq
        return busy, v[7]                          # steal

    def start(self):
        t = os.times()
        self.t0, self.own0, self.s0 = time.perf_counter(), t.user + t.system, self._stat()
        return self

    def stop(self):
        t = os.times()
        wall = time.perf_counter() - self.t0
        s1 = self._stat()
        if self.s0 is None or s1 is None or wall <= 0:
            return {"others_cpus": None, "steal_cpus": None}
        own = t.user + t.system - self.own0
        others = (s1[0] - self.s0[0]) / self.clk - own
        return {"others_cpus": round(max(0.0, others) / wall, 3),
                "steal_cpus": round((s1[1] - self.s0[1]) / self.clk / wall, 3)}


# ============================================================================ machine info


def _cpu_info():
    out = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        out["affinity_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
        for line in text.splitlines():
            key, _, val = line.partition(":")
            key, val = key.strip(), val.strip()
            if key == "model name" and "model_raw" not in out:
                out["model"] = out["model_raw"] = val
            elif key == "cache size" and "cache" not in out:
                out["cache"] = val
            elif key == "flags" and "simd_flags" not in out:
                flags = set(val.split())
                out["simd_flags"] = sorted(f for f in flags if f.startswith(("avx", "fma")))
        out.pop("model_raw", None)
    except OSError:
        pass
    out["llc_bytes"] = _llc_bytes()
    return out


def _llc_bytes():
    """Size of the largest CPU cache of cpu0 (bytes) from sysfs, or None."""
    best = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for d in sorted(os.listdir(base)):
            if not d.startswith("index"):
                continue
            with open(f"{base}/{d}/level") as fh:
                level = int(fh.read())
            with open(f"{base}/{d}/size") as fh:
                txt = fh.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1:].upper(), 1)
            size = int(txt.rstrip("KMGkmg")) * mult
            if best is None or level > best[0] or (level == best[0] and size > best[1]):
                best = (level, size)
    except (OSError, ValueError):
        return None
    return best[1] if best else None


def _blas_info():
    try:
        from threadpoolctl import threadpool_info  # noqa: PLC0415
    except ImportError:
        return [{"error": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "architecture", "version", "num_threads",
            "threading_layer", "filepath", "prefix")
    return [{k: d.get(k) for k in keep if k in d} for d in threadpool_info()]


def _numpy_blas(blas):
    """The BLAS entries that belong to NumPy (its bundled OpenBLAS), else all BLAS ones."""
    b = [d for d in blas if d.get("user_api") == "blas"]
    mine = [d for d in b if "numpy" in (d.get("filepath") or "")]
    return mine or b


def _machine(torch):
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_info(),
        "seqcore": seqcore.info(),
        "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None),
        "env": {k: os.environ[k] for k in sorted(os.environ)
                if k.startswith(("OPENBLAS", "OMP_", "MKL_", "SEQCORE_", "GOMP_"))},
    }
    if torch is not None:
        try:
            info["torch_parallel"] = torch.__config__.parallel_info().splitlines()[:8]
        except Exception:  # noqa: BLE001 - informational only
            pass
    blas = _blas_info()
    info["numpy_blas"] = _numpy_blas(blas)
    info["threadpools"] = blas
    return info


# ============================================================================ measuring


def _as_array(r):
    if r is None:
        return None
    if hasattr(r, "detach"):  # torch tensor
        r = r.detach().numpy()
    return np.asarray(r)


def _rel_err(a, b):
    if a is None or b is None or a.shape != b.shape:
        return None
    d = np.abs(a.astype(np.float64, copy=False) - b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return float(np.max(d)) / max(scale, np.finfo(np.float64).tiny) if d.size else 0.0


def _measure(case: Case, repeats: int, min_time: float, settle: float = 0.0,
             probe: Optional[Callable[[], float]] = None) -> dict:
    """Warm up, calibrate and time the contenders of ``case`` in interleaved rounds.

    ``probe`` (or None): a machine-limit probe returning a rate; it runs once per round,
    after the contenders, and its samples are returned as ``probe_samples``.

    ``settle`` > 0: before each timed sample, sleep that long and make one untimed call
    (when a call is short). Idle thread pools keep spinning after a call (OpenBLAS for
    ~0.1 s, libgomp for a few ms) and steal the CPUs from whichever library runs next --
    measured here: up to 3x slower calls right after a NumPy sgemm with 2 threads on 2
    CPUs. The pause lets them park, so every contender starts from the same state.
    """
    names = list(case.contenders)
    timers = {n: case.contenders[n].timer() for n in names}
    # warm-up 1: one untimed call each (first-touch, lazy init); results checked vs ref.
    errors = {}
    if case.check and case.ref in names:
        results = {n: _as_array(case.contenders[n].call()) for n in names}
        ref = results[case.ref]
        errors = {n: _rel_err(results[n], ref) for n in names
                  if n != case.ref and results[n] is not None}
        del results, ref
    else:
        for n in names:
            case.contenders[n].call()
    # warm-up 2: calibrate calls per sample so a sample lasts >= min_time.
    number, nrep, per_call_est = {}, {}, {}
    for n in names:
        if settle > 0:
            time.sleep(settle)
        k = 1
        while True:
            t = timers[n].timeit(k)
            if t >= 0.2 * min_time or k >= 10 ** 7:
                break
            k *= 10
        per_call = per_call_est[n] = t / k
        number[n] = max(1, math.ceil(min_time / per_call))
        nrep[n] = repeats
        if per_call * number[n] > SLOW_CALL_S:
            nrep[n] = min(repeats, max(MIN_SLOW_SAMPLES, math.ceil(SLOW_BUDGET_S / per_call)))
    # interleaved rounds, rotating the starting contender.
    samples = {n: [] for n in names}
    probe_samples: List[float] = []
    for r in range(max(nrep.values())):
        for j in range(len(names)):
            n = names[(r + j) % len(names)]
            if r < nrep[n]:
                if settle > 0:
                    time.sleep(settle)
                    if per_call_est[n] < 0.01:
                        timers[n].timeit(1)
                samples[n].append(timers[n].timeit(number[n]) / number[n])
        if probe is not None:
            if settle > 0:
                time.sleep(settle)
            probe_samples.append(probe())
    out = {}
    for n in names:
        med = statistics.median(samples[n])
        d = {"median_s": med, "min_s": min(samples[n]), "samples": len(samples[n]),
             "number": number[n], "desc": case.contenders[n].desc}
        if case.flops:
            d["gflops"] = case.flops / med / 1e9
        if case.nbytes:
            d["gbps"] = case.nbytes / med / 1e9
        if case.per_call_us:
            d["us_per_call"] = med * 1e6
        out[n] = d
    res = {"contenders": out, "check_max_rel_err": errors}
    if probe_samples:
        res["probe_samples"] = probe_samples
    return res


def _ratios(case: Case, cont: dict) -> dict:
    ratios = {}
    if "seqcore" not in cont:
        return ratios
    ts = cont["seqcore"]["median_s"]
    for n, d in cont.items():
        if n == "seqcore" or n.startswith("seqcore(") or n == case.baseline:
            continue
        ratios[f"seqcore/{n}"] = d["median_s"] / ts          # speed ratio, > 1: seqcore faster
    if case.baseline in cont:
        ratios[f"time/{case.baseline}"] = ts / cont[case.baseline]["median_s"]
    return ratios


def _targets(case: Case, cont: dict, ratios: dict) -> dict:
    res = {}
    for key, limit in case.targets.items():
        if key in ratios:
            v = ratios[key]
        elif "seqcore" in cont and key in cont["seqcore"]:
            v = cont["seqcore"][key]
        else:
            continue
        op, lim = limit if isinstance(limit, tuple) else ("<=", limit)
        res[key] = {"value": v, "limit": lim, "op": op, "met": bool(v >= lim if op == ">=" else v <= lim)}
    return res


def _fill_fractions(rec: dict, mach: dict):
    peak = rec.pop("_peak", None)
    if peak in ("fma32", "fma64"):
        div = 2.0 if peak == "fma64" else 1.0
        pmax = mach["fma_gflops_max"] / div
        paired = rec.get("probe_samples")
        p = statistics.median(paired) / 1e9 / div if paired else pmax
        rec["peak_used"] = {"gflops": p, "gflops_max_of_run": pmax, "kind": peak + (
            " (median of the probe samples interleaved with this case's rounds)" if paired
            else " (max of probes)")}
        rec["frac_peak"] = {n: d["gflops"] / p for n, d in rec["contenders"].items()
                            if "gflops" in d}
        rec["frac_peak_of_max"] = {n: d["gflops"] / pmax for n, d in rec["contenders"].items()
                                   if "gflops" in d}
    elif peak == "bw":
        p = mach["copy_gbps_max"]
        rec["peak_used"] = {"gbps": p, "kind": "DRAM copy bandwidth (max of probes)"}
        ws, llc, base = rec.pop("_working_set", None), rec.pop("_llc", None), rec.get("_baseline")
        if ws and llc and ws <= llc and base in rec["contenders"]:
            p = rec["contenders"][base]["gbps"]
            rec["peak_used"] = {"gbps": p, "kind": f"'{base}' of the same bytes: the working "
                                "set fits in the last-level cache, so DRAM bandwidth does "
                                "not apply", "cache_resident": True}
        rec["frac_bw"] = {n: d["gbps"] / p for n, d in rec["contenders"].items()
                          if "gbps" in d}
    rec.pop("_baseline", None)
    rec.pop("_working_set", None)
    rec.pop("_llc", None)


class _ThreadScope:
    """Set every library to ``t`` threads; restore on exit."""

    def __init__(self, t, torch):
        self.t, self.torch = t, torch
        self.limiter = None

    def __enter__(self):
        self.old_sc = seqcore.get_num_threads()
        self.old_torch = self.torch.get_num_threads() if self.torch is not None else None
        try:
            from threadpoolctl import threadpool_limits  # noqa: PLC0415
            self.limiter = threadpool_limits(limits=self.t)
        except ImportError:
            print("warning: threadpoolctl not installed: NumPy's BLAS threads not limited",
                  file=sys.stderr)
        seqcore.set_num_threads(self.t)
        if self.torch is not None:
            self.torch.set_num_threads(self.t)
        return self

    def actual(self):
        d = {"seqcore": seqcore.get_num_threads()}
        if self.torch is not None:
            d["torch"] = self.torch.get_num_threads()
        d["numpy_blas"] = [b.get("num_threads") for b in _numpy_blas(_blas_info())]
        return d

    def __exit__(self, *exc):
        if self.limiter is not None:
            self.limiter.restore_original_limits()
        seqcore.set_num_threads(self.old_sc)
        if self.torch is not None:
            self.torch.set_num_threads(self.old_torch)
        return False


# ============================================================================ reporting


def _fmt_time(s):
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_cell(d):
    if "us_per_call" in d:
        return f"{d['us_per_call']:.2f} µs"
    if "gflops" in d:
        return f"{d['gflops']:.1f} GF/s ({_fmt_time(d['median_s'])})"
    if "gbps" in d:
        return f"{d['gbps']:.1f} GB/s ({_fmt_time(d['median_s'])})"
    return _fmt_time(d["median_s"])


def _markdown(records, meta) -> str:
    m = meta["machine"]
    lines = [f"# seqcore benchmarks ({m['date']})", ""]
    blas = ", ".join(f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
                     for b in m.get("numpy_blas", []) if "internal_api" in b) or "unknown"
    sc = m["seqcore"]
    lines += [
        f"- CPU: {m['cpu'].get('model')} ({m['cpu'].get('logical_cpus')} logical CPUs)",
        f"- seqcore {sc.get('version')} isa={sc.get('isa')} ({sc.get('compiler')}, "
        f"{sc.get('build_type')}); numpy {m['numpy']} BLAS: {blas}; torch {m['torch']}",
        f"- repeats={meta['config']['repeats']} (median; slow NumPy twins: >= "
        f"{MIN_SLOW_SAMPLES}), interleaved round-robin, quick={meta['config']['quick']}, "
        f"wall time {meta['elapsed_s']:.0f} s",
    ]
    if meta.get("warnings"):
        lines += [f"- **warning**: {w}" for w in meta["warnings"]]
    lines += ["", "Machine limits measured in this run (max of the probes; median). `% peak` "
              "divides seqcore's median rate by the median of FMA-probe samples run in the "
              "same rounds as the case (interleaved with its samples); in brackets, the "
              "fraction of the run's maximum probe.", "",
              "| threads | FP32 FMA peak GFLOP/s | copy bandwidth GB/s | probes |",
              "|---:|---:|---:|---:|"]
    for t, p in meta["limits"].items():
        lines.append(f"| {t} | {p['fma_gflops_max']:.1f} ({p['fma_gflops_median']:.1f}) | "
                     f"{p['copy_gbps_max']:.1f} ({p['copy_gbps_median']:.1f}) | "
                     f"{len(p['fma_gflops_samples'])} |")
    lines += ["", "| threads | other processes' CPU use (avg) | host steal |", "|---:|---:|---:|"]
    for t, p in meta["limits"].items():
        lines.append(f"| {t} | {p.get('others_cpus')} | {p.get('steal_cpus')} |")
    lines += ["", "`seqcore/X` = time_X / time_seqcore (speed ratio, > 1: seqcore faster); "
              "`time/copy` = time_seqcore / time of `np.copyto` of the same bytes "
              "(target <= 1.3); ✓/✗ = target met; ⚠ = other processes used more than "
              f"{BUSY_CPUS} CPUs during that case (disturbed); `% bw (c)`: the data fit in the "
              "last-level cache, so the fraction is of an in-cache `np.copyto` of the same "
              "bytes, not of DRAM bandwidth.", ""]
    for s in dict.fromkeys(r["suite"] for r in records):
        rs = [r for r in records if r["suite"] == s]
        cons = list(dict.fromkeys(n for r in rs for n in r["contenders"]))
        rats = list(dict.fromkeys(k for r in rs for k in r["ratios"]))
        frac = "frac_peak" if any("frac_peak" in r for r in rs) else (
            "frac_bw" if any("frac_bw" in r for r in rs) else None)
        extra = ["seqcore µs target"] if any("us_per_call" in r["targets"] for r in rs) else []
        head = ["case", "dtype", "thr"] + cons + rats
        if frac:
            head.append("seqcore % peak" if frac == "frac_peak" else "seqcore % bw")
        head += extra
        lines += [f"## {s}", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
        for r in rs:
            oc = (r.get("load") or {}).get("others_cpus")
            busy = oc is not None and oc > BUSY_CPUS
            row = [r["name"] + (" ⚠" if busy else ""), r["dtype"], str(r["threads"])]
            row += [_fmt_cell(r["contenders"][n]) if n in r["contenders"] else "–"
                    for n in cons]
            for k in rats:
                if k not in r["ratios"]:
                    row.append("–")
                    continue
                cell = f"{r['ratios'][k]:.2f}×"
                if k in r["targets"]:
                    cell += " ✓" if r["targets"][k]["met"] else " ✗"
                row.append(cell)
            if frac:
                v = r.get(frac, {}).get("seqcore")
                c = " (c)" if r.get("peak_used", {}).get("cache_resident") else ""
                vm = r.get("frac_peak_of_max", {}).get("seqcore") if frac == "frac_peak" else None
                m = "" if vm is None else f" ({100 * vm:.0f}%)"
                row.append("–" if v is None else f"{100 * v:.0f}%{m}{c}")
            if extra:
                tg = r["targets"].get("us_per_call")
                row.append("–" if tg is None else
                           f"<= {tg['limit']:g} µs {'✓' if tg['met'] else '✗'}")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def _plot(records, path):
    try:
        import matplotlib  # noqa: PLC0415
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        print("matplotlib not installed: skipping the plot", file=sys.stderr)
        return False
    keys = list(dict.fromkeys(k for r in records for k in r["ratios"] if k.startswith("seqcore/")))
    labels = [f"{r['name']} [{r['threads']}t]" for r in records]
    width = 0.8 / max(1, len(keys))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(records) + 2), 5.5))
    for i, k in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(records))]
        vals = [r["ratios"].get(k, float("nan")) for r in records]
        ax.bar(xs, vals, width, label=k)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("speed ratio (time_X / time_seqcore), > 1: seqcore faster")
    ax.set_xticks(range(len(records)))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    ax.legend()
    ax.set_title("seqcore speed ratios")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# ============================================================================ entry points


def run(suites=DEFAULT_SUITES, threads=(1, 2), repeats=7, json_path=None, md_path=None,
        plot_path=None, quick=False, verbose=True, min_time=None, settle=None) -> List[dict]:
    """Run the benchmark ``suites`` for each thread count; return one dict per case.

    Each dict: ``suite, name, shape, dtype, threads, contenders`` ({name: {median_s,
    gflops|gbps|us_per_call, samples, number, desc}}), ``ratios``, ``targets``,
    ``frac_peak`` or ``frac_bw`` ({contender: fraction}), ``peak_used``,
    ``check_max_rel_err``. Writes JSON (with machine info and the limits measured per
    thread count), markdown and a PNG when the paths are given. ``quick=True`` uses small
    sizes (for tests); the numbers are then not meaningful. ``min_time``: seconds per
    sample (default 0.05, quick 0.005); ``settle``: pause before each sample (default
    0.15 s when threads > 1, else 0; see ``_measure``).
    """
    t_start = time.perf_counter()
    if isinstance(suites, str):
        suites = [s for s in suites.split(",") if s]
    if isinstance(threads, int):
        threads = (threads,)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {unknown}; known: {sorted(SUITES)}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    min_time = (0.005 if quick else 0.05) if min_time is None else min_time

    def log(msg):
        if verbose:
            print(msg, file=sys.stderr, flush=True)

    warnings = []
    set_env = [f"{k}={os.environ[k]}" for k in OPENBLAS_ENV if k in os.environ]
    if set_env:
        warnings.append(f"{' '.join(set_env)} set: NumPy's OpenBLAS may be slowed; rerun "
                        "with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`")
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if max(threads) > (ncpu or 1):
        warnings.append(f"threads {max(threads)} > {ncpu} usable CPUs: oversubscribed")
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr, flush=True)

    torch = _import_torch()
    if torch is None:
        log("torch not importable: running without the PyTorch contender")
    cfg = _Cfg(quick, torch)
    machine = _machine(torch)
    probe = _Probe(quick)
    records, limits, thread_info = [], {}, {}
    for t in threads:
        st = (SETTLE_S if t > 1 and not quick else 0.0) if settle is None else settle
        with _ThreadScope(t, torch) as scope:
            thread_info[str(t)] = scope.actual()
            load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
            block_mon = _CpuMonitor().start()
            probe.sample(t, n=3, settle=st)
            block = []
            for s in suites:
                for case in SUITES[s](cfg):
                    mon = _CpuMonitor().start()
                    # best of 3 short probes per round: with 2 threads a probe whose second
                    # worker starts late (a spinning pool of another library) reads half the
                    # machine, and one such sample must not become the case's "peak".
                    pr = ((lambda t=t: max(_core._fma_peak(seconds=probe.fma_seconds, threads=t)
                                           for _ in range(3)))
                          if case.peak in ("fma32", "fma64") else None)
                    m = _measure(case, repeats, min_time, settle=st, probe=pr)
                    busy = mon.stop()
                    probe.sample(t, settle=st)
                    rec = {"suite": case.suite, "name": case.name, "shape": list(case.shape),
                           "dtype": case.dtype, "threads": t, **m}
                    rec["ratios"] = _ratios(case, rec["contenders"])
                    rec["targets"] = _targets(case, rec["contenders"], rec["ratios"])
                    rec["notes"] = case.notes
                    rec["load"] = busy
                    rec["settle_s"] = st
                    rec["_peak"] = case.peak
                    rec["_baseline"] = case.baseline
                    rec["_working_set"] = case.working_set or case.nbytes
                    rec["_llc"] = machine["cpu"].get("llc_bytes")
                    block.append(rec)
                    log(f"[{s} t={t}] {case.name}: " + "  ".join(
                        f"{n} {_fmt_cell(d)}" for n, d in rec["contenders"].items()))
                    del case, m
            limits[str(t)] = probe.summary(t)
            limits[str(t)].update(block_mon.stop())
            limits[str(t)]["loadavg_before"] = load0
            limits[str(t)]["loadavg_after"] = (os.getloadavg() if hasattr(os, "getloadavg")
                                               else None)
            oc = limits[str(t)]["others_cpus"]
            if oc is not None and oc > BUSY_CPUS:
                w = (f"threads={t}: other processes used {oc:.2f} CPUs on average during "
                     "the run: numbers are disturbed")
                warnings.append(w)
                print(f"warning: {w}", file=sys.stderr, flush=True)
            log(f"[limits t={t}] FMA peak {limits[str(t)]['fma_gflops_max']:.1f} GFLOP/s, "
                f"copy {limits[str(t)]['copy_gbps_max']:.1f} GB/s (max of probes)")
            for rec in block:
                _fill_fractions(rec, limits[str(t)])
            records += block
    del probe

    meta = {
        "machine": machine,
        "limits": limits,
        "threads_set": thread_info,
        "config": {"suites": list(suites), "threads": list(threads), "repeats": repeats,
                   "quick": quick, "min_time_per_sample_s": min_time,
                   "slow_call_s": SLOW_CALL_S, "slow_budget_s": SLOW_BUDGET_S,
                   "settle_s": settle if settle is not None else
                   f"{SETTLE_S} when threads > 1 (quick: 0), else 0",
                   "statistic": "median of samples; FMA peak: median of the probe samples "
                                "interleaved with each case (frac_peak) and max of all "
                                "probes (frac_peak_of_max); bandwidth: max of probes"},
        "warnings": warnings,
        "elapsed_s": time.perf_counter() - t_start,
    }
    if json_path:
        _mkdir_for(json_path)
        with open(json_path, "w") as fh:
            json.dump({**meta, "cases": records}, fh, indent=1)
        log(f"wrote {json_path}")
    md = _markdown(records, meta)
    if md_path:
        _mkdir_for(md_path)
        with open(md_path, "w") as fh:
            fh.write(md + "\n")
        log(f"wrote {md_path}")
    if plot_path:
        _mkdir_for(plot_path)
        if _plot(records, plot_path):
            log(f"wrote {plot_path}")
    run.last_markdown = md
    return records


run.last_markdown = ""


def _mkdir_for(path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)


def main(argv=None, prog="python -m seqcore.bench") -> int:
    p = argparse.ArgumentParser(prog=prog, description=(
        "seqcore vs NumPy (twin) vs PyTorch, interleaved in one process; reports medians, "
        "ratios, GFLOP/s or GB/s and the fraction of the peak FMA rate / copy bandwidth "
        "measured in the same run. Run under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`."))
    p.add_argument("--suite", default=",".join(DEFAULT_SUITES),
                   help=f"comma-separated, of: {', '.join(SUITES)} (default: %(default)s)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=7, help="samples per contender (median)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--plot", help="write a bar chart of the speed ratios here (PNG)")
    p.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    p.add_argument("--settle", type=float, default=None,
                   help=f"pause (s) before each sample; default {SETTLE_S} when threads > 1")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per sample (default 0.05; quick 0.005)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = p.parse_args(argv)
    try:
        threads = tuple(int(t) for t in a.threads.split(",") if t.strip())
    except ValueError:
        p.error(f"--threads: expected integers like 1,2, got {a.threads!r}")
    if not threads or min(threads) < 1:
        p.error("--threads: need at least one count >= 1")
    suites = [s.strip() for s in a.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad:
        p.error(f"unknown suite(s) {bad}; known: {', '.join(SUITES)}")
    run(suites=suites, threads=threads, repeats=a.repeats, json_path=a.json, md_path=a.md,
        plot_path=a.plot, quick=a.quick, verbose=not a.quiet, min_time=a.min_time,
        settle=a.settle)
    print(run.last_markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# Suites of the later issues (recurrent, layernorm, optimizers, losses) register themselves.
from seqcore import bench_suites as _bench_suites  # noqa: E402,F401
