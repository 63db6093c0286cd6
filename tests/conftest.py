"""Shared test machinery: the one tolerance table, comparison helpers (twin, PyTorch, finite
differences), hypothesis profiles, thread-count fixtures.

Every tolerance used by the suite lives in :data:`TOLERANCES`. A check passes when, per
element, ``|actual - expected| <= atol * scale + rtol * |expected|`` where ``scale`` is 1 unless
the caller passes the natural magnitude of the computation (``|A| @ |B|`` for a GEMM: the
classical forward-error bound of a dot product is proportional to it, not to the result).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

try:
    from hypothesis import HealthCheck, Phase, settings
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    settings = None

import seqcore

# ----------------------------------------------------------------------------- sizes
#: Sizes around the vector widths (4/8/16 lanes) and GEMM register tiles (6/8 rows,
#: 8..32 columns): every length 1..17, then one below/above 32, 64 and 128.
ODD_SIZES = tuple(range(1, 18)) + (31, 33, 63, 65, 127, 129)
#: One size larger than three parallel work items of the elementwise kernels (2**14 each),
#: with a vector tail, so that 2 threads really split the work.
LARGE_SIZE = 3 * 2 ** 14 + 7

FLOAT_DTYPES = (np.float32, np.float64)

# ----------------------------------------------------------------------------- tolerances
# (op family, dtype name) -> (rtol, atol). float32 results are compared with a float64
# evaluation of the same (float32) inputs, so the table states the accuracy of the kernel
# itself, not of a float32 twin.
TOLERANCES = {
    # GEMM family (matmul, gemm, linear, PackedMatrix, linear_backward): atol is relative to
    # the scale |A| @ |B| (+ |beta C| + |bias|) of each element.
    ("gemm", "float32"): (2e-6, 1e-5),
    ("gemm", "float64"): (1e-14, 1e-13),
    # Piecewise-linear ops (relu, leaky_relu, prelu): one rounding at most.
    ("piecewise", "float32"): (3e-7, 0.0),
    ("piecewise", "float64"): (3e-16, 0.0),
    # Smooth elementwise ops and their backward (tanh, sigmoid, silu, gelu). The backward
    # formulas cancel (1 - y*y near |y| = 1), hence the absolute part for O(1) inputs.
    ("activation", "float32"): (1e-5, 1e-6),
    ("activation", "float64"): (1e-12, 1e-14),
    # Accuracy of the vectorised float32 math over the whole float range (relative only).
    ("simd_math", "float32"): (2e-6, 0.0),
    # float64 (for gradient checks): the far tails of gelu are conditioned like x^2, so a
    # float64 evaluation there is only good to ~x^2 * 1.1e-16 (1e-13 at |x| = 30).
    ("simd_math", "float64"): (1e-12, 0.0),
    # softmax / log_softmax and their backward. In float32 the sum of n exponentials has a
    # relative error of ~sqrt(n) eps, which log_softmax turns into an absolute error (NumPy's
    # float32 twin and PyTorch are 5e-6 off for n = 1000).
    ("softmax", "float32"): (1e-5, 1e-5),
    ("softmax", "float64"): (1e-12, 1e-14),
    # Sums over many elements (prelu dweight, linear dbias): atol relative to sum |terms|.
    ("reduction", "float32"): (1e-6, 1e-5),
    ("reduction", "float64"): (1e-14, 1e-13),
    # Analytic float64 gradient vs central finite differences (eps = 1e-6): truncation
    # error ~eps^2 f''' and rounding ~1e-16/eps, relative to the scale of the sum.
    ("fd", "float64"): (1e-6, 1e-7),
    # PyTorch vs seqcore (both computed in the same dtype: two roundings).
    ("torch", "float32"): (2e-5, 2e-6),
    ("torch", "float64"): (1e-11, 1e-13),
    # Recurrent layers vs a float64 evaluation (twin or PyTorch): errors compound over the
    # steps and gradient sums cancel, so atol is relative to max |expected| of each array
    # (worst seen over ~1000 random small cases, NumPy float32 twin alike: 2.6e-5 / 1e-13;
    # then 6.1e-5 for a one-element dx, GRU H=65 T=B=I=1, a sum of 195 terms that cancel to
    # 1/50 of their size, where the float32 twin was 2.8e-5 off).
    ("recurrent", "float32"): (2e-6, 1e-4),
    ("recurrent", "float64"): (4e-15, 2e-13),
    # Optimizer trajectories vs torch.optim fed the same gradients, 25 steps: parameters and
    # state arrays, atol relative to max |expected| of each array (worst seen 2.3e-6 / 2.9e-15).
    ("optim", "float32"): (1e-6, 1e-5),
    ("optim", "float64"): (1e-14, 2e-14),
    # Attention and transformer blocks (SDPA, MHA, encoder layers, FFN, embedding) vs a
    # float64 evaluation: atol relative to max |expected| of each array (sums over S keys and
    # D features; worst seen 2.4e-6 relative for float32 at S = 600).
    ("attention", "float32"): (1e-5, 2e-5),
    ("attention", "float64"): (1e-12, 1e-12),
    # BatchNorm (tests/test_batchnorm.py) vs a float64 evaluation, atol relative to the
    # condition of each value: |w| rstd (|x| + |mu| + std) + |b| for y, max|dy| max(|w| rstd)
    # (1 + kappa) for dx, (1 + kappa) sum |dy xhat| for dweight, sum |dy| for dbias, with
    # kappa = |mu| rstd (a float32 mean is held to half an ulp of |mu|). Worst seen over 3000 random cases, sizes
    # 1..3000 per axis, offsets up to 1000 x the spread: 4.1e-7 (y) / 1.9e-7 (running_var);
    # float64 1.5e-15 (the float64 twin is itself only that good for large offsets).
    ("batchnorm", "float32"): (1e-6, 2e-6),
    ("batchnorm", "float64"): (1e-14, 1e-14),
    # End-to-end training vs PyTorch (LSTM LM, 30 Adam steps with clipping): losses, gradient
    # norms, and parameters norm-wise (worst seen 1.1e-6 / 2.9e-15).
    ("train", "float32"): (1e-5, 1e-5),
    ("train", "float64"): (1e-13, 2e-14),
}


def tol(op, dtype):
    """(rtol, atol) for an op family and dtype from :data:`TOLERANCES`."""
    return TOLERANCES[(op, np.dtype(dtype).name)]


def _fmt(idx):
    return tuple(int(i) for i in idx)


def assert_close(actual, expected, op, dtype, scale=None, what="result"):
    """Assert ``actual`` is within the tolerance of ``(op, dtype)`` of ``expected``.

    NaNs must be in the same places; infinities must match exactly; finite elements must
    satisfy ``|a - e| <= atol * scale + rtol * |e|``. The message gives the number of bad
    elements and the worst one (index, actual, expected, allowed error).
    """
    rtol, atol = tol(op, dtype)
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != expected {expected.shape}"
    if actual.size == 0:
        return
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if not np.array_equal(nan_a, nan_e):
        i = np.argwhere(nan_a != nan_e)[0]
        raise AssertionError(f"{what}: NaN mismatch at {_fmt(i)}: actual {a[tuple(i)]!r}, "
                             f"expected {e[tuple(i)]!r} ({int((nan_a != nan_e).sum())} elements)")
    inf = np.isinf(a) | np.isinf(e)
    if not np.array_equal(a[inf], e[inf]):
        i = np.argwhere(inf & (a != e))[0]
        raise AssertionError(f"{what}: infinity mismatch at {_fmt(i)}: actual {a[tuple(i)]!r}, "
                             f"expected {e[tuple(i)]!r}")
    fin = ~(nan_a | inf)
    s = np.ones_like(e) if scale is None else np.broadcast_to(np.asarray(scale, np.float64), e.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.where(fin, np.abs(a - e), 0.0)
    allowed = atol * s + rtol * np.abs(e)
    bad = fin & (err > allowed)
    if bad.any():
        excess = np.where(bad, err - allowed, -np.inf)
        i = np.unravel_index(np.argmax(excess), e.shape)
        raise AssertionError(
            f"{what} ({op}, {np.dtype(dtype).name}, rtol={rtol}, atol={atol}): {int(bad.sum())} of "
            f"{e.size} elements differ; worst at {_fmt(i)}: actual {a[i]!r}, expected {e[i]!r}, "
            f"|err| {err[i]:.3g} > allowed {allowed[i]:.3g}")


def as64(v):
    """float arrays -> float64 copies (the accurate evaluation); other values unchanged."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "f":
        return v.astype(np.float64)
    return v


def _tuplify(v):
    return v if isinstance(v, tuple) else (v,)


def check_output(out, dtype, shape=None, what="result"):
    """Outputs are new C-contiguous arrays of the call's dtype."""
    assert isinstance(out, np.ndarray), f"{what}: expected an ndarray, got {type(out).__name__}"
    assert out.dtype == np.dtype(dtype), f"{what}: dtype {out.dtype} != {np.dtype(dtype)}"
    assert out.flags.c_contiguous, f"{what}: not C-contiguous"
    if shape is not None:
        assert out.shape == tuple(shape), f"{what}: shape {out.shape} != {tuple(shape)}"


def compare_with_twin(fn, twin, args, op, dtype, kwargs=None, twin_kwargs=None, scales=None,
                      ops=None):
    """Run seqcore ``fn(*args, **kwargs)`` and the NumPy twin on float64 copies of ``args``;
    compare every output (tuples element-wise; ``None`` must match ``None``).

    ``scales`` / ``ops`` optionally give a scale and an op family per output. Returns the
    seqcore result.
    """
    kwargs = kwargs or {}
    twin_kwargs = kwargs if twin_kwargs is None else twin_kwargs
    actual = fn(*args, **kwargs)
    with np.errstate(all="ignore"):  # the twin is only the oracle here
        expected = twin(*[as64(a) for a in args], **twin_kwargs)
    acts, exps = _tuplify(actual), _tuplify(expected)
    assert len(acts) == len(exps), f"{len(acts)} outputs, twin gives {len(exps)}"
    for j, (a, e) in enumerate(zip(acts, exps)):
        what = f"output {j} of {getattr(fn, '__name__', fn)}"
        if e is None:
            assert a is None, f"{what}: expected None, got {type(a).__name__}"
            continue
        e = np.asarray(e)
        check_output(a, dtype, e.shape, what)
        assert_close(a, e, ops[j] if ops else op, dtype,
                     scale=None if scales is None else scales[j], what=what)
    return actual


def compare_with_torch(actual, torch_fn, inputs, op, dtype, dout=None, grads=None,
                       grad_inputs=None):
    """Compare ``actual`` with ``torch_fn(*tensors)`` and, when ``dout`` is given, the
    gradients ``grads`` with PyTorch autograd's gradients of ``sum(out * dout)`` with respect
    to ``inputs[i]`` for ``i`` in ``grad_inputs`` (default: every array input, in order).

    Inputs that are ndarrays become tensors of the same dtype; anything else is passed as is.
    """
    torch = pytest.importorskip("torch")
    tensors = []
    for v in inputs:
        if isinstance(v, np.ndarray):
            t = torch.from_numpy(np.array(v, dtype=dtype, copy=True))
            t.requires_grad_(dout is not None)
            tensors.append(t)
        else:
            tensors.append(v)
    out = torch_fn(*tensors)
    assert_close(actual, out.detach().numpy(), "torch", dtype, what="forward vs torch")
    if dout is None:
        return
    out.backward(torch.from_numpy(np.array(dout, dtype=dtype, copy=True)))
    if grad_inputs is None:
        grad_inputs = [i for i, v in enumerate(inputs) if isinstance(v, np.ndarray)]
    assert len(grads) == len(grad_inputs)
    for g, i in zip(grads, grad_inputs):
        tg = tensors[i].grad
        tg = np.zeros(inputs[i].shape, dtype) if tg is None else tg.numpy()
        assert_close(g, tg, "torch", dtype, what=f"gradient of input {i} vs torch")


def fd_grad(f, x, dout, eps=1e-6):
    """Central finite differences, in float64, of ``sum(f(x) * dout)`` with respect to ``x``.

    ``f`` maps a float64 array shaped like ``x`` to an array shaped like ``dout``.
    """
    x = np.array(x, dtype=np.float64, copy=True)
    dout = np.asarray(dout, dtype=np.float64)
    g = np.zeros_like(x)
    flat = x.reshape(-1)
    gflat = g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(np.sum(np.asarray(f(x), np.float64) * dout))
        flat[i] = old - eps
        fm = float(np.sum(np.asarray(f(x), np.float64) * dout))
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


def assert_fd(grad, f, x, dout, what="gradient", eps=1e-6):
    """Compare an analytic float64 gradient with :func:`fd_grad`, scaled by the magnitude
    of the terms of the sum (so that a gradient that is ~0 is judged on an absolute basis)."""
    num = fd_grad(f, x, dout, eps)
    scale = max(1.0, float(np.max(np.abs(num), initial=0.0)))
    assert_close(grad, num, "fd", np.float64, scale=scale, what=what)


# ----------------------------------------------------------------------------- crashes
_CRASH_PROBES = {}
_PROBE_PRELUDE = "import numpy as np\nimport seqcore\nfrom seqcore import functional as F\n"


def require_no_crash(label, code):
    """Run ``code`` once per session in a child interpreter (same environment, so the same
    ISA); if the child dies from a signal, fail the calling test with the reproducer instead
    of letting the same call kill the whole test run. Exceptions are not crashes: the test
    itself reports them."""
    if label not in _CRASH_PROBES:
        _CRASH_PROBES[label] = subprocess.run([sys.executable, "-c", _PROBE_PRELUDE + code],
                                              capture_output=True, text=True, timeout=300)
    r = _CRASH_PROBES[label]
    if r.returncode < 0:
        pytest.fail(f"{label}: the interpreter dies with signal {-r.returncode} on:\n{code}\n"
                    f"{r.stderr[-1500:]}", pytrace=False)


_FUZZ_PRELUDE = r"""
import sys
import numpy as np
import seqcore
from seqcore import functional as F

rng = np.random.default_rng(int(sys.argv[1]))
DTYPES = [np.float32, np.float64, np.float32, np.float64, np.int64, np.complex64, np.float16,
          np.bool_]
DIMS = [0, 1, 2, 3, 5]


def shape(max_ndim=4):
    return tuple(int(rng.choice(DIMS)) for _ in range(int(rng.integers(0, max_ndim + 1))))


def arr(shp=None, dtype=None):
    # an array-like of a random (or given) shape/dtype and layout, or a stray non-array
    r = rng.random()
    if r < 0.03:
        return None
    if r < 0.05:
        return "x"
    shp = shape() if shp is None else shp
    dt = DTYPES[int(rng.integers(len(DTYPES)))] if dtype is None else dtype
    a = np.asarray(rng.standard_normal(shp) * 3).astype(dt)
    r = rng.random()
    if r < 0.1 and a.ndim >= 2:
        a = np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2)
    elif r < 0.15:
        a.flags.writeable = False
    elif r < 0.2 and a.ndim >= 1:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    elif r < 0.25:
        a = a.tolist()
    return a


def like(a):
    # often the same shape/dtype as a (so the kernels run), sometimes anything
    if isinstance(a, np.ndarray) and rng.random() < 0.7:
        return arr(a.shape, a.dtype if rng.random() < 0.9 else None)
    return arr()


def call(label, f, *args, **kwargs):
    def desc(a):
        if isinstance(a, np.ndarray):
            return f"ndarray{a.shape}:{a.dtype}:strides={a.strides}:writeable={a.flags.writeable}"
        if isinstance(a, list):
            try:
                return f"list{np.shape(a)}"
            except ValueError:
                return f"list(ragged, {len(a)})"
        return repr(a)
    print(label, [desc(a) for a in args], {k: desc(v) for k, v in kwargs.items()}, flush=True)
    try:
        return f(*args, **kwargs)
    except (ValueError, TypeError, MemoryError):
        return None


def fit(shp, dtype):
    # an array of exactly this shape/dtype most of the time, else anything
    return arr(tuple(shp), dtype) if rng.random() < 0.8 else arr()
"""


def run_fuzz_child(body, seed=0, cases=1500, timeout=600):
    """Run ``cases`` random calls written in ``body`` (which uses the helpers of
    ``_FUZZ_PRELUDE`` and is run once per case) in a child interpreter. Bad input may only
    raise ValueError/TypeError/MemoryError: any other exception, a crash or a hang fails the
    test, naming the last call started (printed by ``call`` before it runs)."""
    code = _FUZZ_PRELUDE + "\nfor _case in range(%d):\n" % cases + "".join(
        "    " + line + "\n" for line in body.strip().splitlines()) + "print('FUZZ-DONE')\n"
    try:
        r = subprocess.run([sys.executable, "-c", code, str(seed)], capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        pytest.fail(f"fuzz child hung; last call: {out.strip().splitlines()[-1:]}", pytrace=False)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines or lines[-1] != "FUZZ-DONE":
        pytest.fail(f"fuzz child (seed {seed}) exited with {r.returncode}; last call started:\n"
                    f"{lines[-1] if lines else '(none)'}\n{r.stderr[-2000:]}", pytrace=False)


# ----------------------------------------------------------------------------- hypothesis
def pytest_configure(config):
    # When a property fails, hypothesis imports libcst to print a patch; libcst 1.0 uses the
    # deprecated mypy_extensions.TypedDict, and warnings-as-errors would turn the failure
    # report into an INTERNALERROR. Not our code: ignore exactly that warning.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


if settings is not None:
    _common = dict(deadline=None, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                          HealthCheck.data_too_large])
    settings.register_profile("ci", max_examples=20, derandomize=True, **_common)
    settings.register_profile("dev", max_examples=100, **_common)
    # For the per-ISA subprocess runs: same examples, no shrinking (a failure is reported
    # with its unshrunk example; rerun under 'ci' to shrink it).
    settings.register_profile("ci-noshrink", max_examples=20, derandomize=True,
                              phases=[Phase.explicit, Phase.reuse, Phase.generate], **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ----------------------------------------------------------------------------- threads
@pytest.fixture(autouse=True)
def restore_threads():
    """Every test leaves seqcore's thread count as it found it."""
    n = seqcore.get_num_threads()
    yield n
    seqcore.set_num_threads(n)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def num_threads(request, restore_threads):
    """Runs the test once with 1 and once with 2 seqcore threads."""
    seqcore.set_num_threads(request.param)
    return request.param


def _raw_outputs(result):
    out = []
    for r in _tuplify(result):
        if r is None:
            out.append(None)
        else:
            r = np.asarray(r)
            out.append((r.dtype.str, r.shape, np.ascontiguousarray(r).tobytes()))
    return out


def assert_thread_invariant(fn, threads=(1, 2)):
    """Run ``fn()`` with each thread count and require bitwise-identical outputs (raw bytes,
    so NaN payloads and the sign of zero count). Restores the thread count. Returns the
    result of the first run."""
    before = seqcore.get_num_threads()
    results = []
    try:
        for n in threads:
            seqcore.set_num_threads(n)
            results.append(fn())
    finally:
        seqcore.set_num_threads(before)
    ref = _raw_outputs(results[0])
    for n, r in zip(threads[1:], results[1:]):
        got = _raw_outputs(r)
        assert len(got) == len(ref)
        for j, (g, e) in enumerate(zip(got, ref)):
            assert (g is None) == (e is None)
            if g is None:
                continue
            assert g[:2] == e[:2], f"output {j}: dtype/shape differ between thread counts"
            if g[2] != e[2]:
                a = np.frombuffer(e[2], dtype=e[0]).reshape(e[1])
                b = np.frombuffer(g[2], dtype=g[0]).reshape(g[1])
                diff = np.argwhere(a.view(f"u{a.dtype.itemsize}") != b.view(f"u{b.dtype.itemsize}"))
                i = tuple(diff[0])
                raise AssertionError(f"output {j} not bitwise equal with {threads[0]} and {n} threads: "
                                     f"{len(diff)} elements differ, first at {i}: {a[i]!r} vs {b[i]!r}")
    return results[0]


@pytest.fixture
def thread_invariant():
    """The :func:`assert_thread_invariant` helper as a fixture."""
    return assert_thread_invariant


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)
