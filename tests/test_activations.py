"""Activations: every forward/backward against its NumPy twin (float32, float64), float64
finite differences and PyTorch; sizes around the vector widths, empty, strided, lists,
``out=``; accuracy of the vectorised float32 math over the whole float range; prelu;
softmax/log_softmax on every axis; bitwise equality for 1 and 2 threads; bad input."""
import math
import warnings

import numpy as np
import pytest

import seqcore
from seqcore import _core
from seqcore import functional as F
from seqcore import reference as R

from conftest import (FLOAT_DTYPES, LARGE_SIZE, ODD_SIZES, assert_close, assert_fd,
                      assert_thread_invariant, check_output, compare_with_torch,
                      compare_with_twin, require_no_crash, run_fuzz_child, tol)


def _torch_fns():
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    return {
        "tanh": lambda t: torch.tanh(t),
        "sigmoid": lambda t: torch.sigmoid(t),
        "relu": lambda t: tf.relu(t),
        "leaky_relu": lambda t: tf.leaky_relu(t, 0.01),
        "leaky_relu_0.2": lambda t: tf.leaky_relu(t, 0.2),
        "silu": lambda t: tf.silu(t),
        "gelu": lambda t: tf.gelu(t),
        "gelu_tanh": lambda t: tf.gelu(t, approximate="tanh"),
    }


class Op:
    """One elementwise op: seqcore forward/backward, the twin's, what backward takes."""

    def __init__(self, name, fwd, bwd, twin, twin_bwd, saved, family, kink, kwargs=None):
        self.name, self.fwd, self.bwd, self.twin, self.twin_bwd = name, fwd, bwd, twin, twin_bwd
        self.saved, self.family, self.kink, self.kwargs = saved, family, kink, kwargs or {}

    def __repr__(self):
        return self.name

    def forward(self, x, **kw):
        return self.fwd(x, **self.kwargs, **kw)

    def saved_of(self, x):
        """What backward takes besides dy: the forward output y, or the input x."""
        return self.forward(x) if self.saved == "y" else x

    def backward(self, dy, s):
        return self.bwd(dy, s, **self.kwargs)


UNARY = [
    Op("tanh", F.tanh, F.tanh_backward, R.tanh, R.tanh_backward, "y", "activation", False),
    Op("sigmoid", F.sigmoid, F.sigmoid_backward, R.sigmoid, R.sigmoid_backward, "y", "activation",
       False),
    Op("relu", F.relu, F.relu_backward, R.relu, R.relu_backward, "x", "piecewise", True),
    Op("leaky_relu", F.leaky_relu, F.leaky_relu_backward, R.leaky_relu, R.leaky_relu_backward, "x",
       "piecewise", True),
    Op("leaky_relu_0.2", F.leaky_relu, F.leaky_relu_backward, R.leaky_relu, R.leaky_relu_backward,
       "x", "piecewise", True, {"negative_slope": 0.2}),
    Op("silu", F.silu, F.silu_backward, R.silu, R.silu_backward, "x", "activation", False),
    Op("gelu", F.gelu, F.gelu_backward, R.gelu, R.gelu_backward, "x", "activation", False),
    Op("gelu_tanh", F.gelu, F.gelu_backward, R.gelu, R.gelu_backward, "x", "activation", False,
       {"approximate": "tanh"}),
]
OPS = pytest.mark.parametrize("op", UNARY, ids=[o.name for o in UNARY])
DTYPES = pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=["f32", "f64"])
SIZES = pytest.mark.parametrize("n", ODD_SIZES + (LARGE_SIZE,))


def inputs(rng, shape, dtype, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


# ----------------------------------------------------------------------------- vs twin


@OPS
@DTYPES
@SIZES
def test_forward_vs_twin(op, dtype, n, rng):
    x, _ = inputs(rng, n, dtype)
    compare_with_twin(op.fwd, op.twin, (x,), op.family, dtype, kwargs=op.kwargs)


@OPS
@DTYPES
@SIZES
def test_backward_vs_twin(op, dtype, n, rng):
    x, dy = inputs(rng, n, dtype)
    s = op.saved_of(x)
    compare_with_twin(op.bwd, op.twin_bwd, (dy, s), op.family, dtype, kwargs=op.kwargs)


@OPS
@DTYPES
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 17), (4, 1, 2, 33)])
def test_multidim_vs_twin(op, dtype, shape, rng):
    x, dy = inputs(rng, shape, dtype)
    compare_with_twin(op.fwd, op.twin, (x,), op.family, dtype, kwargs=op.kwargs)
    compare_with_twin(op.bwd, op.twin_bwd, (dy, op.saved_of(x)), op.family, dtype, kwargs=op.kwargs)


# ----------------------------------------------------------------------------- finite differences


@OPS
@pytest.mark.parametrize("shape", [(1,), (11,), (3, 4)])
def test_backward_finite_differences(op, shape, rng):
    x, dy = inputs(rng, shape, np.float64, scale=2.0)
    if op.kink:  # keep central differences away from the kink at 0
        x = np.where(np.abs(x) < 0.1, np.sign(x + 1e-300) * 0.5, x)
    dx = op.backward(dy, op.saved_of(x))
    assert_fd(dx, op.forward, x, dy, f"{op.name} dx")


# ----------------------------------------------------------------------------- vs torch


@OPS
@DTYPES
def test_vs_torch(op, dtype, rng):
    fns = _torch_fns()
    x, dy = inputs(rng, (7, 33), dtype)
    x[0, :5] = 0.0  # the derivative convention at the kink (PyTorch: the x <= 0 branch)
    y = op.forward(x)
    dx = op.backward(dy, op.saved_of(x))
    compare_with_torch(y, fns[op.name], (x,), "torch", dtype, dout=dy, grads=[dx])


# ----------------------------------------------------------------------------- layouts


@OPS
@DTYPES
@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 2)])
def test_empty(op, dtype, shape):
    x = np.ones(shape, dtype)
    y = op.forward(x)
    check_output(y, dtype, shape)
    check_output(op.backward(np.ones(shape, dtype), op.saved_of(x)), dtype, shape)
    out = np.ones(shape, dtype)
    assert op.forward(x, out=out) is out


def _strided_views(base):
    return {
        "step2": base[::2],
        "reversed": base[::-1],
        "transposed": base.T,
        "columns": base[:, 1::3],
        "fortran": np.asfortranarray(base),
        "byteswapped": base.astype(base.dtype.newbyteorder(">")),
        "readonly": np.lib.stride_tricks.as_strided(base, writeable=False),
        "broadcast": np.broadcast_to(base[0], base.shape),
    }


@OPS
@DTYPES
def test_strided_inputs_match_contiguous_bitwise(op, dtype, rng):
    base, dybase = inputs(rng, (40, 37), dtype)
    xs, dys, ss = (_strided_views(v) for v in (base, dybase, op.saved_of(base)))
    for name in xs:
        x, dy, s = xs[name], dys[name], ss[name]
        y = op.forward(x)
        check_output(y, dtype, x.shape, name)
        np.testing.assert_array_equal(y, op.forward(np.ascontiguousarray(x, dtype)), err_msg=name)
        dx = op.backward(dy, s)
        check_output(dx, dtype, x.shape, name)
        expected = op.backward(np.ascontiguousarray(dy, dtype), np.ascontiguousarray(s, dtype))
        np.testing.assert_array_equal(dx, expected, err_msg=name)


@OPS
def test_lists(op):
    x = [[-1.5, -0.25, 0.0, 0.5], [1.0, 2.0, -3.0, 4.0]]
    y = op.forward(x)
    check_output(y, np.float64, (2, 4))
    np.testing.assert_array_equal(y, op.forward(np.array(x)))
    dx = op.backward([[1.0] * 4] * 2, x if op.saved == "x" else y.tolist())
    check_output(dx, np.float64, (2, 4))
    np.testing.assert_array_equal(dx, op.backward(np.ones((2, 4)), op.saved_of(np.array(x))))
    # integers are read as float64; with a float32 array a list follows it
    np.testing.assert_array_equal(op.forward([1, -2, 3]), op.forward(np.array([1.0, -2.0, 3.0])))
    if op.saved == "x":
        dx = op.backward(np.ones(3, np.float32), [1.0, -2.0, 3.0])
        check_output(dx, np.float32, (3,))


@OPS
@pytest.mark.parametrize("value", [0.5, np.float32(0.5), np.float64(-1.25), np.array(2.0, np.float32)])
def test_scalar_input_keeps_shape(op, value):
    """A 0-d input gives a 0-d output, as NumPy (np.tanh(0.5) has shape ())."""
    x = np.asarray(value)
    y = op.forward(value)
    assert y.shape == (), f"{op.name}({value!r}) has shape {y.shape}"
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, op.forward(x.reshape(1))[0])
    dx = op.backward(value, value if op.saved == "x" else y)
    assert dx.shape == (), f"{op.name}_backward on 0-d inputs has shape {dx.shape}"


# ----------------------------------------------------------------------------- out=


@OPS
@DTYPES
@pytest.mark.parametrize("n", [1, 17, LARGE_SIZE])
def test_out(op, dtype, n, rng):
    x, _ = inputs(rng, (n,), dtype)
    expected = op.forward(x)
    out = np.full(n, np.nan, dtype)
    assert op.forward(x, out=out) is out
    np.testing.assert_array_equal(out, expected)
    # in place
    x2 = x.copy()
    assert op.forward(x2, out=x2) is x2
    np.testing.assert_array_equal(x2, expected)
    # out a C-contiguous window of a bigger array: nothing outside it is written
    big = np.full(n + 8, -7.0, dtype)
    op.forward(x, out=big[4:-4])
    np.testing.assert_array_equal(big[4:-4], expected)
    np.testing.assert_array_equal(big[:4], -7.0)
    np.testing.assert_array_equal(big[-4:], -7.0)


@OPS
@pytest.mark.parametrize("shift", [1, -1, 5, -17])
def test_out_partially_overlapping_input(op, shift, rng):
    """``out`` overlapping ``x`` at an offset behaves as if it did not (NumPy's rule)."""
    n = LARGE_SIZE
    buf = (rng.standard_normal(n + abs(shift)) * 3).astype(np.float32)
    if shift > 0:
        x, out = buf[shift:], buf[:-shift]
    else:
        x, out = buf[:shift], buf[-shift:]
    expected = op.forward(x.copy())
    op.forward(x, out=out)
    bad = np.flatnonzero(out != expected)
    assert bad.size == 0, (f"{op.name}: out overlapping x at offset {shift}: {bad.size} wrong "
                           f"elements, first at {bad[0]}: {out[bad[0]]!r} != {expected[bad[0]]!r}")


@OPS
def test_out_errors(op):
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    ro = np.zeros((3, 4))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="'out' is read-only"):
        op.forward(x, out=ro)
    assert not ro.any()
    ro_inplace = x.copy()
    ro_inplace.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        op.forward(ro_inplace, out=ro_inplace)
    with pytest.raises(ValueError, match=r"'out'.*\(3, 4\).*\(4, 3\)"):
        op.forward(x, out=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"'out'.*\(3, 4\).*\(12,\)"):
        op.forward(x, out=np.zeros(12))
    with pytest.raises(ValueError, match="C-contiguous"):
        op.forward(x, out=np.zeros((4, 3)).T)
    with pytest.raises(TypeError, match="'out'"):
        op.forward(x, out=np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="'out'"):
        op.forward(x, out=np.zeros((3, 4), np.int64))
    with pytest.raises(TypeError, match="'out'"):
        op.forward(x, out=[[0.0] * 4] * 3)


# ----------------------------------------------------------------------------- bad input


@OPS
@pytest.mark.parametrize("bad", [np.int8, np.int32, np.int64, np.uint16, np.bool_, np.float16,
                                 np.longdouble, np.complex64, np.complex128, object, "U3"])
def test_dtype_errors(op, bad):
    x = np.ones((2, 3), dtype=bad)
    good = np.ones((2, 3))
    with pytest.raises(TypeError, match="'x'"):
        op.forward(x)
    with pytest.raises(TypeError, match="'dy'"):
        op.backward(x, good)
    with pytest.raises(TypeError, match=f"'{op.saved}'"):
        op.backward(good, x)


@OPS
def test_mixed_float_dtypes(op):
    a32, a64 = np.ones(4, np.float32), np.ones(4, np.float64)
    with pytest.raises(TypeError, match="mixed"):
        op.backward(a32, a64)
    with pytest.raises(TypeError, match="mixed"):
        op.backward(a64, a32)
    with pytest.raises(TypeError, match="'out'"):
        op.forward(a32, out=np.ones(4, np.float64))


@OPS
def test_backward_shape_errors(op):
    with pytest.raises(ValueError, match=rf"'{op.saved}'.*\(2, 3\).*\(3, 2\)"):
        op.backward(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=rf"'{op.saved}'.*\(6,\).*\(2, 3\)"):
        op.backward(np.ones(6), np.ones((2, 3)))


@OPS
@pytest.mark.parametrize("bad", [None, "abc", [[1.0, 2.0], [3.0]], {"a": 1}, [1 + 2j]])
def test_non_numeric_input(op, bad):
    with pytest.raises((TypeError, ValueError)):
        op.forward(bad)
    with pytest.raises((TypeError, ValueError)):
        op.backward(bad, np.ones(2))


def test_gelu_approximate_must_be_known():
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(np.ones(3), approximate="erf")
    with pytest.raises(ValueError, match="approximate"):
        F.gelu_backward(np.ones(3), np.ones(3), approximate="sigmoid")


def test_swish_is_silu():
    assert F.swish is F.silu and F.swish_backward is F.silu_backward


# ----------------------------------------------------------------------------- threads


@OPS
@DTYPES
def test_bitwise_1_vs_2_threads(op, dtype, rng):
    x, dy = inputs(rng, (LARGE_SIZE,), dtype)
    s = op.saved_of(x)
    assert_thread_invariant(lambda: op.forward(x))
    assert_thread_invariant(lambda: op.backward(dy, s))


# ----------------------------------------------------------------------------- SIMD math accuracy

F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 1.18e-38
F32_MAX = float(np.finfo(np.float32).max)
SQRT1_2 = 1 / math.sqrt(2)
_erf64 = np.frompyfunc(math.erf, 1, 1)
_erfc64 = np.frompyfunc(math.erfc, 1, 1)


def _sweep():
    """float32 test points over the whole range: a dense grid on [-100, 100], +-logspace
    from 1e-38 to 1e38, the float32 neighbours of a few special points, subnormals."""
    grid = np.linspace(-100, 100, 400_001)
    logs = np.logspace(-38, 38, 40_001)
    special = [0.0, 1.0, 2.0, 0.5, 88.72, 88.7228, 89.0, -87.33, -103.97, -104.0, 9.0, 10.0,
               F32_TINY, F32_MAX, 1e-45, 1e-40]
    x = np.concatenate([grid, logs, -logs, special, np.negative(special)]).astype(np.float32)
    with np.errstate(over="ignore"):  # nextafter(max, inf) is inf
        near = np.concatenate([np.nextafter(x[-2 * len(special):], np.float32(np.inf)),
                               np.nextafter(x[-2 * len(special):], np.float32(-np.inf))])
    return np.unique(np.concatenate([x, near]))


SWEEP = _sweep()


def _sigmoid64(z):
    """float64 logistic function without overflow: exp(z) / (1 + exp(z)) for z < 0."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _truth(name, x):
    """float64 value of each function at float32 points x (accurate, no cancellation)."""
    x = x.astype(np.float64)
    with np.errstate(all="ignore"):
        if name == "exp":
            return np.exp(x)
        if name == "tanh":
            return np.tanh(x)
        if name == "sigmoid":
            return _sigmoid64(x)
        if name == "erf":
            return _erf64(x).astype(np.float64)
        if name == "gelu":  # x Phi(x) = x/2 erfc(-x/sqrt2): no cancellation for x < 0
            return 0.5 * x * _erfc64(-x * SQRT1_2).astype(np.float64)
        if name == "gelu_tanh":  # x/2 (1 + tanh u) = x sigmoid(2u)
            u = math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)
            return x * _sigmoid64(2 * u)
        if name == "silu":
            return x * _sigmoid64(x)
    raise KeyError(name)


SIMD_FUNCS = {
    "exp": lambda x: _core.exp(x),
    "tanh": F.tanh,
    "sigmoid": F.sigmoid,
    "erf": lambda x: _core.erf(x),
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def _check_relative_accuracy(name, x, got, want, dtype, floor=None):
    """Relative error <= tol('simd_math') wherever floor <= |true value| <= max (floor: the
    smallest normal number unless given); overflow gives inf; underflow gives <= floor."""
    rtol, _ = tol("simd_math", dtype)
    finfo = np.finfo(dtype)
    floor = finfo.tiny if floor is None else floor
    ok_range = np.isfinite(want) & (np.abs(want) >= floor) & (np.abs(want) <= finfo.max)
    rel = np.zeros_like(want)
    with np.errstate(all="ignore"):
        rel[ok_range] = np.abs(got[ok_range].astype(np.float64) - want[ok_range]) / np.abs(want[ok_range])
    rel[ok_range & ~np.isfinite(got)] = np.inf
    bad = rel > rtol
    if bad.any():
        i = int(np.argmax(rel))
        xs = x[bad]
        raise AssertionError(
            f"{name} ({np.dtype(dtype).name}): max relative error {rel[i]:.3g} > {rtol} at "
            f"x={x[i]!r}: got {got[i]!r}, expected {want[i]!r}; {int(bad.sum())} bad points in "
            f"[{xs.min()!r}, {xs.max()!r}]")
    # where the true value overflows the format, the result is +-inf; where it is far below
    # the smallest normal, the result is tiny (0 or subnormal) with the right sign.
    over = np.abs(want) > finfo.max
    assert np.array_equal(got[over], np.sign(want[over]) * np.inf), f"{name}: overflow not saturated to inf"
    under = np.isfinite(want) & (np.abs(want) < floor)
    bad = under & ~(np.abs(got.astype(np.float64)) <= floor)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise AssertionError(f"{name} ({np.dtype(dtype).name}): true value below {floor:.3g} but "
                             f"got {got[i]!r} at x={x[i]!r} (expected {want[i]!r}); "
                             f"{int(bad.sum())} such points")


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "erf", "gelu"])
def test_float32_simd_math_accuracy(name):
    got = SIMD_FUNCS[name](SWEEP)
    assert got.dtype == np.float32 and got.shape == SWEEP.shape
    _check_relative_accuracy(name, SWEEP, got, _truth(name, SWEEP), np.float32)


# AVX-512 evaluates these through a polynomial of |x| per interval of a table (one of 32
# equal intervals of [0, end)): name -> end.
TABLE_RANGES = {"gelu": 14.0, "tanh": 9.125, "sigmoid": 16.0, "silu": 16.0}


@pytest.mark.parametrize("name", sorted(TABLE_RANGES))
def test_float32_accuracy_on_table_ranges(name):
    """Every float32 near each interval edge (where the interval index flips), both signs,
    and a dense grid over the range and a little past its end."""
    end = TABLE_RANGES[name]
    edges = np.float32(end / 32) * np.arange(33, dtype=np.float32)
    near = [edges]
    for direction in (np.float32(np.inf), np.float32(-np.inf)):
        x = edges
        for _ in range(64):
            x = np.nextafter(x, direction)
            near.append(x)
    x = np.concatenate(near + [np.linspace(0, end + 0.5, 2_000_001, dtype=np.float32)])
    x = np.unique(np.concatenate([x, -x]))
    _check_relative_accuracy(name, x, SIMD_FUNCS[name](x), _truth(name, x), np.float32)


def test_gelu_backward_float32_accuracy():
    """d gelu/dx = Phi(x) + x phi(x) in float32 against float64 on a dense grid of [-15, 15]
    (AVX-512 shares one exponential between Phi and phi): absolute error < 5e-7 everywhere and
    relative error < 6e-6 where the derivative is at least 0.02 in size (it crosses zero at
    x = -0.7518, where no float32 evaluation keeps relative accuracy)."""
    x = np.unique(np.concatenate([np.linspace(-15, 15, 1_500_001, dtype=np.float32),
                                  np.float32(0.4375) * np.arange(-34, 35, dtype=np.float32)]))
    got = F.gelu_backward(np.ones_like(x), x).astype(np.float64)
    x64 = x.astype(np.float64)
    want = 0.5 * _erfc64(-x64 * SQRT1_2).astype(np.float64) + x64 * np.exp(-x64 * x64 / 2) / math.sqrt(2 * math.pi)
    err = np.abs(got - want)
    assert err.max() < 5e-7, f"max abs error {err.max():.3g} at x={x[err.argmax()]!r}"
    big = np.abs(want) >= 0.02
    rel = err[big] / np.abs(want[big])
    assert rel.max() < 6e-6, f"max relative error {rel.max():.3g} at x={x[big][rel.argmax()]!r}"
    assert np.isnan(F.gelu_backward(np.ones(2, np.float32), np.array([np.nan, -np.inf], np.float32))).all()


@pytest.mark.parametrize("name", ["gelu", "sigmoid", "silu"])
def test_lane_does_not_depend_on_its_neighbours(name):
    """Each lane's result depends on its value alone: the same value gives the same bits next
    to inputs outside a table's range (sigmoid: |x| >= 16, which also take the exponential
    path) or NaN, and at any offset in the vector."""
    f = SIMD_FUNCS[name]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(4099).astype(np.float32) * 4
    want = f(x)
    for k, far in ((1, -30.0), (3, np.nan), (16, 40.0), (17, -100.0)):
        y = x.copy()
        y[::k] = np.float32(far)
        keep = np.ones(x.size, bool)
        keep[::k] = False
        np.testing.assert_array_equal(f(y)[keep], want[keep])
        for off in (1, 5):  # other alignments of the same values
            np.testing.assert_array_equal(f(y[off:])[keep[off:]], want[off:][keep[off:]])


@pytest.mark.parametrize("name", ["gelu_tanh", "silu"])
def test_float32_accuracy_of_other_activations(name):
    """The same criterion for the remaining transcendental activations."""
    got = SIMD_FUNCS[name](SWEEP)
    _check_relative_accuracy(name, SWEEP, got, _truth(name, SWEEP), np.float32)


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid", "erf", "gelu", "gelu_tanh", "silu"])
def test_float64_math_accuracy(name):
    x = np.concatenate([np.linspace(-40, 40, 40_001), np.logspace(-300, 2.8, 2001),
                        -np.logspace(-300, 2.8, 2001)])
    if name in ("gelu", "gelu_tanh"):
        x = x[x > -30]  # erfc(-x/sqrt2) underflows float64 far left; not a float32 concern
    got = SIMD_FUNCS[name](x)
    assert got.dtype == np.float64
    # float64 kernels exist for gradient checks: judged where the result is >= 1e-290, so that
    # intermediates (exp(2u) of gelu_tanh, ...) are not subnormal just above the threshold.
    _check_relative_accuracy(name, x, got, _truth(name, x), np.float64, floor=1e-290)


@DTYPES
def test_special_values(dtype):
    inf, nan = np.inf, np.nan
    z = np.zeros(5, dtype)
    pinf, ninf = np.full(3, inf, dtype), np.full(3, -inf, dtype)
    assert np.all(_core.exp(z) == 1) and np.all(_core.exp(-z) == 1)
    assert np.all(F.tanh(z) == 0) and np.all(_core.erf(z) == 0)
    assert np.all(F.sigmoid(z) == 0.5)
    for f in (F.relu, F.silu, F.gelu, F.leaky_relu, lambda v: F.gelu(v, approximate="tanh")):
        assert np.all(f(z) == 0)
    assert np.all(F.tanh(pinf) == 1) and np.all(F.tanh(ninf) == -1)
    assert np.all(F.sigmoid(pinf) == 1) and np.all(F.sigmoid(ninf) == 0)
    assert np.all(_core.exp(pinf) == inf) and np.all(_core.exp(ninf) == 0)
    assert np.all(_core.erf(pinf) == 1) and np.all(_core.erf(ninf) == -1)
    assert np.all(F.relu(pinf) == inf) and np.all(F.relu(ninf) == 0)
    assert np.all(F.silu(pinf) == inf) and np.all(F.gelu(pinf) == inf)
    assert np.all(F.gelu(pinf, approximate="tanh") == inf)
    assert np.all(F.leaky_relu(ninf) == -inf)
    big = np.array([1e30, 3e38, -1e30, -3e38], dtype)
    np.testing.assert_array_equal(F.tanh(big), [1, 1, -1, -1])
    np.testing.assert_array_equal(F.sigmoid(big), [1, 1, 0, 0])
    np.testing.assert_array_equal(_core.erf(big), [1, 1, -1, -1])
    np.testing.assert_array_equal(_core.exp(big), [inf, inf, 0, 0])
    np.testing.assert_array_equal(F.gelu(big[:2]), big[:2])
    np.testing.assert_array_equal(F.silu(big[:2]), big[:2])


@DTYPES
def test_nan_propagates(dtype):
    x = np.array([np.nan, 1.0, np.nan, -2.0] * 5, dtype)  # NaN in vector body and tail
    isn = np.isnan(x)
    for name, f in SIMD_FUNCS.items():
        assert np.array_equal(np.isnan(f(x)), isn), name
    for op in UNARY:
        assert np.array_equal(np.isnan(op.forward(x)), isn), f"{op.name} forward"
        s = op.saved_of(x)
        if not op.kink:  # relu-like backward masks by x > 0: a NaN x selects a branch
            assert np.array_equal(np.isnan(op.backward(np.ones_like(x), s)), isn), \
                f"{op.name} backward (NaN {op.saved})"
        assert np.array_equal(np.isnan(op.backward(x, np.full_like(x, 0.5))), isn), f"{op.name} backward (NaN dy)"
    w = np.array([0.25], dtype)
    assert np.array_equal(np.isnan(F.prelu(x, w)), isn)


@DTYPES
def test_no_warnings_for_extreme_inputs(dtype):
    finfo = np.finfo(dtype)
    x = np.array([finfo.max, -finfo.max, finfo.tiny, -finfo.tiny, 1e-45, 0.0, np.inf, -np.inf,
                  np.nan, 100.0, -100.0, 1000.0, -1000.0], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for f in SIMD_FUNCS.values():
            f(x)
        for op in UNARY:
            op.backward(x, op.saved_of(x))
            op.backward(np.ones_like(x), op.saved_of(x))
        F.softmax(x), F.log_softmax(x)
        F.prelu(x, np.array([0.1], dtype))


# ----------------------------------------------------------------------------- prelu

def prelu_backward_safe():
    """prelu_backward must not take the interpreter down (checked once, in a child)."""
    require_no_crash("prelu_backward", "x = np.linspace(-1, 1, 15).reshape(5, 3)\n"
                                       "F.prelu_backward(x, x, np.full(3, 0.25))")
    require_no_crash("prelu_backward (empty x)", "x = np.ones((0, 3))\n"
                                                 "F.prelu_backward(x, x, np.full(3, 0.25))")


PRELU_SHAPES = [((5, 3), 3), ((5, 3), 1), ((4, 7, 33), 7), ((4, 7, 33), 1), ((2, 3, 5, 17), 3),
                ((1, 17), 17), ((17,), 1), ((65, 1), 1), ((3, 129), 129)]


def prelu_dweight_scale(dy, x, w):
    c = np.abs(np.where(x > 0, 0, dy.astype(np.float64) * x))
    if w.size == 1 or x.ndim < 2:
        return np.array([c.sum()])
    return c.sum(axis=(0,) + tuple(range(2, x.ndim)))


def _prelu_inputs(rng, shape, nw, dtype):
    x, dy = inputs(rng, shape, dtype)
    w = rng.uniform(-0.5, 0.5, nw).astype(dtype)
    return x, dy, w


@DTYPES
@pytest.mark.parametrize("shape,nw", PRELU_SHAPES)
def test_prelu_vs_twin(shape, nw, dtype, rng):
    prelu_backward_safe()
    x, dy, w = _prelu_inputs(rng, shape, nw, dtype)
    compare_with_twin(F.prelu, R.prelu, (x, w), "piecewise", dtype)
    compare_with_twin(F.prelu_backward, R.prelu_backward, (dy, x, w), "piecewise", dtype,
                      ops=["piecewise", "reduction"], scales=[None, prelu_dweight_scale(dy, x, w)])


@pytest.mark.parametrize("shape,nw", [((4, 3), 3), ((2, 3, 5), 3), ((2, 3, 5), 1), ((7,), 1)])
def test_prelu_finite_differences(shape, nw, rng):
    prelu_backward_safe()
    x, dy, w = _prelu_inputs(rng, shape, nw, np.float64)
    x = np.where(np.abs(x) < 0.1, 0.5, x)
    dx, dw = F.prelu_backward(dy, x, w)
    assert_fd(dx, lambda v: F.prelu(v, w), x, dy, "prelu dx")
    assert_fd(dw, lambda v: F.prelu(x, v), w, dy, "prelu dweight")


@DTYPES
@pytest.mark.parametrize("shape,nw", [((5, 3), 3), ((4, 7, 33), 7), ((4, 7, 33), 1), ((17,), 1)])
def test_prelu_vs_torch(shape, nw, dtype, rng):
    prelu_backward_safe()
    torch = pytest.importorskip("torch")
    x, dy, w = _prelu_inputs(rng, shape, nw, dtype)
    x.reshape(-1)[:3] = 0.0
    compare_with_torch(F.prelu(x, w), torch.nn.functional.prelu, (x, w), "torch", dtype, dout=dy,
                       grads=list(F.prelu_backward(dy, x, w)))


@DTYPES
@pytest.mark.parametrize("shape,nw", [((0, 3), 3), ((0, 3), 1), ((2, 3, 0), 3), ((0,), 1)])
def test_prelu_empty(shape, nw, dtype):
    prelu_backward_safe()
    x = np.ones(shape, dtype)
    w = np.full(nw, 0.25, dtype)
    check_output(F.prelu(x, w), dtype, shape)
    dx, dw = F.prelu_backward(x, x, w)
    check_output(dx, dtype, shape)
    check_output(dw, dtype, (nw,))
    np.testing.assert_array_equal(dw, 0)


def test_prelu_strided_and_lists(rng):
    prelu_backward_safe()
    base, dyb, w = _prelu_inputs(rng, (6, 8, 10), 8, np.float64)
    for x, dy in [(base[::2], dyb[::2]), (base[:, :, ::-1], dyb[:, :, ::-1]),
                  (np.asfortranarray(base), np.asfortranarray(dyb))]:
        np.testing.assert_array_equal(F.prelu(x, w[::1]), F.prelu(np.ascontiguousarray(x), w))
        for a, b in zip(F.prelu_backward(dy, x, w),
                        F.prelu_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x), w)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(F.prelu([[-1.0, 2.0]], [0.5, 0.25]), [[-0.5, 2.0]])


def test_prelu_errors():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"'weight'.*\(1,\) or \(3,\).*\(2,\)"):
        F.prelu(x, np.ones(2))
    with pytest.raises(ValueError, match=r"'weight'.*\(3, 1\)"):
        F.prelu(x, np.ones((3, 1)))
    with pytest.raises(ValueError, match=r"'weight'.*\(1,\).*\(3,\)"):
        F.prelu(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"'dy'.*\(4, 3\).*\(3, 4\)"):
        F.prelu_backward(np.ones((3, 4)), x, np.ones(3))
    with pytest.raises(ValueError, match=r"'weight'"):
        F.prelu_backward(x, x, np.ones(2))
    with pytest.raises(TypeError, match="'weight'"):
        F.prelu(x, np.ones(3, np.int32))
    with pytest.raises(TypeError, match="'x'"):
        F.prelu(x.astype(np.complex128), np.ones(3))
    with pytest.raises(TypeError, match="mixed"):
        F.prelu(x, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="mixed"):
        F.prelu_backward(x.astype(np.float32), x, np.ones(3))


@DTYPES
def test_prelu_bitwise_1_vs_2_threads(dtype, rng):
    prelu_backward_safe()
    for shape, nw in [((3000, 3, 17), 3), ((5000, 33), 33), ((40000, 2), 1), ((2, 5, 20000), 5)]:
        x, dy, w = _prelu_inputs(rng, shape, nw, dtype)
        assert_thread_invariant(lambda: F.prelu(x, w))
        assert_thread_invariant(lambda: F.prelu_backward(dy, x, w))


# ----------------------------------------------------------------------------- softmax

SOFTMAX = [
    ("softmax", F.softmax, F.softmax_backward, R.softmax, R.softmax_backward),
    ("log_softmax", F.log_softmax, F.log_softmax_backward, R.log_softmax, R.log_softmax_backward),
]
SMX = pytest.mark.parametrize("name,fwd,bwd,twin,twin_bwd", SOFTMAX, ids=[s[0] for s in SOFTMAX])


@SMX
@DTYPES
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2, -3])
def test_softmax_every_axis_vs_twin(name, fwd, bwd, twin, twin_bwd, dtype, axis, rng):
    x, dy = inputs(rng, (5, 7, 33), dtype)
    y = compare_with_twin(fwd, twin, (x, axis), "softmax", dtype)
    compare_with_twin(bwd, twin_bwd, (dy, y, axis), "softmax", dtype)


@SMX
@DTYPES
@pytest.mark.parametrize("n", ODD_SIZES + (1000,))
def test_softmax_sizes_vs_twin(name, fwd, bwd, twin, twin_bwd, dtype, n, rng):
    x, dy = inputs(rng, (3, n), dtype)
    y = compare_with_twin(fwd, twin, (x, -1), "softmax", dtype)
    compare_with_twin(bwd, twin_bwd, (dy, y, -1), "softmax", dtype)
    xt, dyt = inputs(rng, (n, 3), dtype)
    y = compare_with_twin(fwd, twin, (xt, 0), "softmax", dtype)
    compare_with_twin(bwd, twin_bwd, (dyt, y, 0), "softmax", dtype)


@SMX
@DTYPES
def test_softmax_stable_for_huge_logits(name, fwd, bwd, twin, twin_bwd, dtype, rng):
    x = rng.uniform(-1e4, 1e4, (6, 37)).astype(dtype)
    x[0] = 1e4
    x[1] = -1e4
    x[2, ::2], x[2, 1::2] = 1e4, -1e4
    y = fwd(x)
    assert np.all(np.isfinite(y)), f"{name} not finite for logits of +-1e4"
    if name == "softmax":
        assert np.all((y >= 0) & (y <= 1))
        assert_close(y.sum(axis=-1), np.ones(6), "softmax", dtype, what="row sums")
    else:
        assert np.all(y <= 0)
        assert_close(np.exp(y.astype(np.float64)).sum(axis=-1), np.ones(6), "softmax", dtype,
                     what="row sums of exp")
    compare_with_twin(fwd, twin, (x, -1), "softmax", dtype)


@SMX
@DTYPES
def test_softmax_infinite_and_single_entries(name, fwd, bwd, twin, twin_bwd, dtype):
    x = np.array([[-np.inf, 0.0, 1.0], [-np.inf, -np.inf, 2.0]], dtype)
    compare_with_twin(fwd, twin, (x, -1), "softmax", dtype)
    one = fwd(np.array([[3.0], [-1e4], [7.5]], dtype))
    np.testing.assert_array_equal(one, np.full((3, 1), 1.0 if name == "softmax" else 0.0, dtype))
    assert_close(fwd(np.zeros((2, 4), dtype)),
                 np.full((2, 4), 0.25 if name == "softmax" else -math.log(4)), "softmax", dtype)


@SMX
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_softmax_finite_differences(name, fwd, bwd, twin, twin_bwd, axis, rng):
    x, dy = inputs(rng, (3, 4, 5), np.float64, scale=2.0)
    dx = bwd(dy, fwd(x, axis), axis)
    assert_fd(dx, lambda v: fwd(v, axis), x, dy, f"{name} dx (axis {axis})")


@SMX
@DTYPES
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax_vs_torch(name, fwd, bwd, twin, twin_bwd, dtype, axis, rng):
    torch = pytest.importorskip("torch")
    tfn = getattr(torch.nn.functional, name)
    x, dy = inputs(rng, (4, 9, 17), dtype)
    y = fwd(x, axis)
    compare_with_torch(y, lambda t: tfn(t, dim=axis), (x,), "torch", dtype, dout=dy,
                       grads=[bwd(dy, y, axis)])


@SMX
@DTYPES
@pytest.mark.parametrize("shape,axis", [((0, 5), -1), ((5, 0), -1), ((5, 0), 0), ((2, 0, 3), 1),
                                        ((0,), 0)])
def test_softmax_empty(name, fwd, bwd, twin, twin_bwd, dtype, shape, axis):
    x = np.zeros(shape, dtype)
    check_output(fwd(x, axis), dtype, shape)
    check_output(bwd(x, x, axis), dtype, shape)


@SMX
def test_softmax_strided_and_lists(name, fwd, bwd, twin, twin_bwd, rng):
    base, dyb = inputs(rng, (8, 9, 10), np.float32)
    for x, dy in [(base[::2], dyb[::2]), (base.transpose(2, 0, 1), dyb.transpose(2, 0, 1)),
                  (base[:, ::-1, 1::2], dyb[:, ::-1, 1::2])]:
        for axis in (0, -1):
            y = fwd(x, axis)
            np.testing.assert_array_equal(y, fwd(np.ascontiguousarray(x), axis))
            np.testing.assert_array_equal(bwd(dy, y, axis), bwd(np.ascontiguousarray(dy), y, axis))
    y = fwd([[1.0, 2.0, 3.0]])
    check_output(y, np.float64, (1, 3))
    np.testing.assert_array_equal(y, fwd(np.array([[1.0, 2.0, 3.0]])))


@SMX
def test_softmax_errors(name, fwd, bwd, twin, twin_bwd):
    x = np.ones((2, 3))
    for axis in (2, -3, 100):
        with pytest.raises(ValueError, match="axis"):
            fwd(x, axis)
        with pytest.raises(ValueError, match="axis"):
            bwd(x, x, axis)
    with pytest.raises(ValueError):
        fwd(np.array(1.0))
    with pytest.raises(ValueError, match=r"'y'.*\(2, 3\).*\(3, 2\)"):
        bwd(x, np.ones((3, 2)))
    with pytest.raises(TypeError, match="'x'"):
        fwd(x.astype(np.int64))
    with pytest.raises(TypeError, match="'x'"):
        fwd(x.astype(np.complex64))
    with pytest.raises(TypeError, match="'dy'"):
        bwd(x.astype(np.float16), x)
    with pytest.raises(TypeError, match="mixed"):
        bwd(x.astype(np.float32), x)
    with pytest.raises(TypeError):
        fwd(x, axis=1.5)


@SMX
@DTYPES
def test_softmax_bitwise_1_vs_2_threads(name, fwd, bwd, twin, twin_bwd, dtype, rng):
    for shape, axis in [((300, 257), -1), ((257, 300), 0), ((7, 300, 33), 1), ((3, 40000), -1),
                        ((40000, 3), -1)]:
        x, dy = inputs(rng, shape, dtype)
        y = fwd(x, axis)
        assert_thread_invariant(lambda: fwd(x, axis))
        assert_thread_invariant(lambda: bwd(dy, y, axis))


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_large_output_streams(log, rng):
    """Outputs of 16 MiB or more are written with non-temporal stores, rows starting off the
    64-byte grid (odd row length): the same bits as the normal-store path (a few rows at a
    time), the twin's values, and the same bits on 1 and 2 threads."""
    x = (4.0 * rng.standard_normal((4099, 1025))).astype(np.float32)
    fwd, twin = (F.log_softmax, R.log_softmax) if log else (F.softmax, R.softmax)
    y = fwd(x)
    for rows in (slice(0, 16), slice(2000, 2013), slice(4090, 4099)):
        np.testing.assert_array_equal(y[rows], fwd(x[rows]))
    assert_close(y, twin(x.astype(np.float64)), "softmax", np.float32)
    assert_thread_invariant(lambda: fwd(x))


# ----------------------------------------------------------------------------- bad input fuzz

ACT_FUZZ = """
names = ["tanh", "sigmoid", "relu", "silu", "gelu", "leaky_relu"]
name = names[int(rng.integers(len(names)))]
k = int(rng.integers(7))
if k == 0:
    x = arr()
    call(name, getattr(F, name), x, out=like(x) if rng.random() < 0.5 else (x if rng.random() < 0.5 else None))
elif k == 1:
    dy = arr()
    call(name + "_backward", getattr(F, name + "_backward"), dy, like(dy))
elif k == 2:
    x = arr()
    call("gelu", F.gelu, x, approximate=["none", "tanh", "bogus"][int(rng.integers(3))])
    call("leaky_relu_backward", F.leaky_relu_backward, like(x), x, float(rng.normal()))
elif k == 3:
    x = arr()
    c = x.shape[1] if isinstance(x, np.ndarray) and x.ndim >= 2 else 1
    w = fit((c if rng.random() < 0.5 else 1,), getattr(x, "dtype", np.float64))
    call("prelu", F.prelu, x, w)
elif k == 4:
    x = arr()
    c = x.shape[1] if isinstance(x, np.ndarray) and x.ndim >= 2 else 1
    w = fit((c if rng.random() < 0.5 else 1,), getattr(x, "dtype", np.float64))
    call("prelu_backward", F.prelu_backward, like(x), x, w)
elif k == 5:
    f = [F.softmax, F.log_softmax][int(rng.integers(2))]
    call(f.__name__, f, arr(), int(rng.integers(-5, 5)))
else:
    f = [F.softmax_backward, F.log_softmax_backward][int(rng.integers(2))]
    dy = arr()
    call(f.__name__, f, dy, like(dy), int(rng.integers(-5, 5)))
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_bad_input_never_crashes(seed):
    """Random shapes, dtypes, layouts and non-arrays: only ValueError/TypeError/MemoryError."""
    run_fuzz_child(ACT_FUZZ, seed=seed, cases=2000)
