"""Dense ops: matmul, gemm, linear (+ fused activations), PackedMatrix, linear_backward.

Expected values are float64 products of the (float32 or float64) inputs; the error allowed
per element is relative to ``|A| @ |B|`` (see conftest.TOLERANCES['gemm'])."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import seqcore
from seqcore import functional as F
from seqcore import reference as R

from conftest import (FLOAT_DTYPES, ODD_SIZES, assert_close, assert_fd, assert_thread_invariant,
                      check_output, compare_with_torch, compare_with_twin, run_fuzz_child)

SIZES = st.sampled_from(ODD_SIZES)
SIZES0 = st.sampled_from((0,) + ODD_SIZES)
DTYPES = st.sampled_from(FLOAT_DTYPES)
ACTIVATIONS = [None, "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu"]
# Largest |derivative| of each activation: an error in the pre-activation is amplified by it.
ACT_GAIN = {None: 1.0, "relu": 1.0, "gelu": 1.13, "gelu_tanh": 1.13, "tanh": 1.0, "sigmoid": 0.25,
            "silu": 1.1}


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def act64(name, z):
    """The twin's activation, in float64."""
    if name is None:
        return z
    if name == "gelu":
        return R.gelu(z, "none")
    if name == "gelu_tanh":
        return R.gelu(z, "tanh")
    return getattr(R, name)(z)


def mm_expected(a, b):
    """float64 product and its error scale |a| @ |b|."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.matmul(a64, b64), np.matmul(np.abs(a64), np.abs(b64))


def check_matmul(a, b, dtype, out=None):
    exp, scale = mm_expected(a, b)
    got = F.matmul(a, b, out=out)
    check_output(got, dtype, exp.shape)
    assert_close(got, exp, "gemm", dtype, scale=scale)
    return got


def operand(rng, rows, cols, dtype, transposed):
    """A (rows, cols) operand, stored row-major or as the transpose of a (cols, rows) array."""
    if transposed:
        return randn(rng, (cols, rows), dtype).T
    return randn(rng, (rows, cols), dtype)


# ----------------------------------------------------------------------------- matmul


@given(m=SIZES0, n=SIZES0, k=SIZES0, dtype=DTYPES, ta=st.booleans(), tb=st.booleans(),
       seed=st.integers(0, 2 ** 32 - 1))
def test_matmul_sizes_and_layouts(m, n, k, dtype, ta, tb, seed):
    rng = np.random.default_rng(seed)
    a = operand(rng, m, k, dtype, ta)
    b = operand(rng, k, n, dtype, tb)
    check_matmul(a, b, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_large_crosses_every_block(dtype, ta, tb, rng):
    # m > MC, k > KC, n > NC for float32 and float64 on every ISA: every blocking edge.
    m, n, k = 131, 3100, 401
    a = operand(rng, m, k, dtype, ta)
    b = operand(rng, k, n, dtype, tb)
    check_matmul(a, b, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m,n,k", [(s, s, s) for s in ODD_SIZES] + [(1, 129, 65), (129, 1, 63),
                                                                      (65, 127, 1), (33, 31, 300)])
def test_matmul_odd_sizes(m, n, k, dtype, rng):
    check_matmul(randn(rng, (m, k), dtype), randn(rng, (k, n), dtype), dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matmul_strided_views(dtype, rng):
    big = randn(rng, (40, 50), dtype)
    views = [
        big[3:20, 5:30],          # row stride > cols (sub-matrix)
        big[::2, 1:26][:17],      # every other row
        big[3:20, ::2][:, :25],   # column stride 2: needs a copy
        big[::-1, :25][:17],      # negative row stride
        big[:17, ::-1][:, :25],   # negative column stride
        big[:25, :17].T,          # transposed sub-matrix (column-major with ld > rows)
        np.asfortranarray(big[:17, :25]),
    ]
    bbig = randn(rng, (60, 70), dtype)
    rhs = [bbig[:25, :19], bbig[1:51:2, 3:22], bbig[:19, :25].T, bbig[:25, ::3][:, :19],
           np.asfortranarray(bbig[:25, :19])]
    for a in views:
        assert a.shape == (17, 25)
        for b in rhs:
            assert b.shape == (25, 19)
            got = check_matmul(a, b, dtype)
            # the same numbers from contiguous copies: identical except for summation layout
            again = F.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b))
            assert_close(got, again, "gemm", dtype, scale=mm_expected(a, b)[1])


def test_matmul_byteswapped_input(rng):
    a = randn(rng, (7, 5), np.float64)
    b = randn(rng, (5, 3), np.float64)
    got = F.matmul(a.astype(">f8"), b.astype(">f8"))
    check_output(got, np.float64, (7, 3))
    assert_close(got, a @ b, "gemm", np.float64, scale=mm_expected(a, b)[1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("sa,sb", [
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((2, 1, 3, 4), (5, 4, 6)),
    ((1, 3, 4), (7, 4, 2)),
    ((7, 1, 3, 4), (1, 6, 4, 2)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
    ((3, 2, 17, 33), (33, 9)),
    ((0, 3, 4), (0, 4, 5)),
    ((2, 0, 4), (4, 5)),
    ((2, 3, 0), (2, 0, 5)),
    ((2, 3, 4), (2, 4, 0)),
])
def test_matmul_batched_broadcast(sa, sb, dtype, rng):
    a, b = randn(rng, sa, dtype), randn(rng, sb, dtype)
    got = check_matmul(a, b, dtype)
    assert got.shape == np.matmul(a, b).shape
    compare_with_twin(F.matmul, R.matmul, (a, b), "gemm", dtype, scales=[mm_expected(a, b)[1]])


EMPTY_BATCH_CASES = [((0, 3, 4), (4, 5)), ((1, 3, 4), (0, 4, 5)), ((0, 3, 4), (1, 4, 5)),
                     ((2, 0, 3, 4), (4, 5)), ((4,), (0, 4, 5)), ((0, 3, 4), (4,)),
                     ((3, 1, 2, 4), (0, 4, 5))]


def test_matmul_empty_batch_broadcast():
    """A zero-size batch dim broadcast against 1 (or a missing dim) gives an empty result, as
    NumPy. Run in a child interpreter: a wrong batch size here reads outside the inputs."""
    code = (
        "import numpy as np, seqcore\n"
        f"for sa, sb in {EMPTY_BATCH_CASES!r}:\n"
        "    for dt in (np.float32, np.float64):\n"
        "        a, b = np.ones(sa, dt), np.ones(sb, dt)\n"
        "        want = np.matmul(a, b).shape\n"
        "        got = seqcore.matmul(a, b)\n"
        "        assert got.shape == want and got.dtype == dt, (sa, sb, got.shape, want)\n"
        "        out = np.empty(want, dt)\n"
        "        assert seqcore.matmul(a, b, out=out) is out\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (
        f"exit code {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matmul_batched_views(dtype, rng):
    a = randn(rng, (6, 9, 7), dtype)   # batches of (9, 7)
    b = randn(rng, (6, 7, 5), dtype)   # batches of (7, 5)
    bt = randn(rng, (6, 5, 7), dtype)  # stored transposed
    cases = [
        (a[::2], bt[::2].swapaxes(-1, -2)),               # strided batch, transposed right
        (a.swapaxes(-1, -2)[1:4], randn(rng, (3, 9, 4), dtype)),  # transposed left
        (a[:, 1:8, 2:6], b[:, :4, 1:5]),                  # sub-matrices of each batch
        (a[::-1, :, :5], np.ones((5, 3), dtype)),          # negative batch stride, 2-D right
        (a[:, ::2], b[0]),                                  # strided rows, 2-D right
        (a[:, :, ::2], b[0, :4]),                           # strided columns: copy
        (np.broadcast_to(a[0], (4, 9, 7)), b[0]),           # zero batch stride
        (a[0], np.broadcast_to(b[1], (3, 7, 5))),
    ]
    for x, y in cases:
        check_matmul(x, y, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("k", [0, 1, 7, 33, 129])
def test_matmul_vectors(k, dtype, rng):
    v, w = randn(rng, k, dtype), randn(rng, k, dtype)
    got = check_matmul(v, w, dtype)
    assert got.shape == ()
    check_matmul(v, randn(rng, (k, 5), dtype), dtype)
    check_matmul(randn(rng, (5, k), dtype), w, dtype)


def test_matmul_lists():
    a = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    b = [[1.0, 0.5], [0.0, -1.0], [2.0, 3.0]]
    got = F.matmul(a, b)
    check_output(got, np.float64, (2, 2))
    np.testing.assert_array_equal(got, np.array(a) @ np.array(b))
    # integer lists are read as float64; with a float32 array the list follows it
    got = F.matmul([[1, 2], [3, 4]], [[1], [1]])
    check_output(got, np.float64, (2, 1))
    np.testing.assert_array_equal(got, [[3.0], [7.0]])
    got = F.matmul(np.eye(2, dtype=np.float32), [[1, 2], [3, 4]])
    check_output(got, np.float32, (2, 2))
    np.testing.assert_array_equal(got, [[1, 2], [3, 4]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matmul_out(dtype, rng):
    a, b = randn(rng, (17, 33), dtype), randn(rng, (33, 9), dtype)
    out = np.full((17, 9), np.nan, dtype)
    got = F.matmul(a, b, out=out)
    assert got is out
    assert_close(out, a.astype(np.float64) @ b, "gemm", dtype, scale=mm_expected(a, b)[1])
    # batched out
    a3, b3 = randn(rng, (3, 5, 4), dtype), randn(rng, (4, 6), dtype)
    out3 = np.empty((3, 5, 6), dtype)
    assert F.matmul(a3, b3, out=out3) is out3
    assert_close(out3, mm_expected(a3, b3)[0], "gemm", dtype, scale=mm_expected(a3, b3)[1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("which", ["a", "b", "both"])
def test_matmul_out_aliases_input(which, dtype, rng):
    n = 33
    a, b = randn(rng, (n, n), dtype), randn(rng, (n, n), dtype)
    if which == "both":
        b = a
    expected, scale = mm_expected(a, b)
    out = a if which in ("a", "both") else b
    got = F.matmul(a, b, out=out)
    assert got is out
    assert_close(out, expected, "gemm", dtype, scale=scale)


def test_matmul_out_partial_overlap(rng):
    buf = randn(rng, (20, 8), np.float64)
    a = buf[:8]          # (8, 8)
    b = buf[4:12]        # overlaps a and out
    out = buf[6:14]      # C-contiguous (8, 8) window overlapping both
    expected, scale = mm_expected(a, b)
    F.matmul(a, b, out=out)
    assert_close(buf[6:14], expected, "gemm", np.float64, scale=scale)


def test_matmul_out_errors():
    a, b = np.ones((3, 4)), np.ones((4, 5))
    with pytest.raises(ValueError, match=r"'out'.*\(3, 5\).*\(5, 3\)"):
        F.matmul(a, b, out=np.empty((5, 3)))
    with pytest.raises(TypeError, match="'out'"):
        F.matmul(a, b, out=np.empty((3, 5), np.float32))
    with pytest.raises(TypeError, match="'out'"):
        F.matmul(a, b, out=[[0.0] * 5] * 3)
    ro = np.zeros((3, 5))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        F.matmul(a, b, out=ro)
    assert not ro.any()
    with pytest.raises(ValueError, match="C-contiguous"):
        F.matmul(a, b, out=np.empty((5, 3)).T)
    with pytest.raises(ValueError):
        F.matmul(a, b, out=np.empty((3, 10))[:, ::2])


@pytest.mark.parametrize("a_shape,b_shape,pattern", [
    ((3, 4), (5, 6), r"'a'.*\(3, 4\).*'b'.*\(5, 6\)"),
    ((4,), (5,), r"'a'.*'b'"),
    ((2, 3, 4), (3, 4, 5), r"'a'.*\(2, 3, 4\).*'b'.*\(3, 4, 5\)"),
    ((), (3,), r"'a'"),
    ((3,), (), r"'b'"),
])
def test_matmul_shape_errors(a_shape, b_shape, pattern):
    with pytest.raises(ValueError, match=pattern):
        F.matmul(np.ones(a_shape), np.ones(b_shape))


@pytest.mark.parametrize("bad", [np.int32, np.int64, np.uint8, np.float16, np.complex64,
                                 np.complex128, np.bool_, np.longdouble, object])
def test_matmul_dtype_errors(bad):
    good = np.ones((3, 3))
    x = np.ones((3, 3), dtype=bad)
    with pytest.raises(TypeError, match="'a'"):
        F.matmul(x, good)
    with pytest.raises(TypeError, match="'b'"):
        F.matmul(good, x)


def test_matmul_mixed_float_dtypes():
    with pytest.raises(TypeError, match="'a'.*'b'|mixed"):
        F.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float64))
    with pytest.raises(TypeError):
        F.matmul(np.ones((2, 2)), np.ones((2, 2)), out=np.empty((2, 2), np.float32))
    with pytest.raises(TypeError, match="'a'"):
        F.matmul([["x", "y"]], np.ones((2, 2)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matmul_vs_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    a, b = randn(rng, (3, 17, 33), dtype), randn(rng, (33, 31), dtype)
    compare_with_torch(F.matmul(a, b), torch.matmul, (a, b), "torch", dtype)


# ----------------------------------------------------------------------------- gemm

SCALARS = st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.5, -0.75])


@given(m=SIZES0, n=SIZES0, k=SIZES0, dtype=DTYPES, ta=st.booleans(), tb=st.booleans(),
       alpha=SCALARS, beta=SCALARS, seed=st.integers(0, 2 ** 32 - 1))
def test_gemm(m, n, k, dtype, ta, tb, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    a = randn(rng, (k, m) if ta else (m, k), dtype)
    b = randn(rng, (n, k) if tb else (k, n), dtype)
    c = randn(rng, (m, n), dtype)
    c0 = c.astype(np.float64)
    opa = a.T if ta else a
    opb = b.T if tb else b
    prod, scale = mm_expected(opa, opb)
    expected = alpha * prod + beta * c0
    scale = abs(alpha) * scale + abs(beta) * np.abs(c0)
    got = seqcore.gemm(a, b, c, alpha, beta, ta, tb)
    assert got is c
    assert_close(c, expected, "gemm", dtype, scale=scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_gemm_large_with_beta(ta, tb, dtype, rng):
    m, n, k = 130, 300, 520
    a = randn(rng, (k, m) if ta else (m, k), dtype)
    b = randn(rng, (n, k) if tb else (k, n), dtype)
    c = randn(rng, (m, n), dtype)
    prod, scale = mm_expected(a.T if ta else a, b.T if tb else b)
    expected = 0.5 * prod - 2.0 * c.astype(np.float64)
    F.gemm(a, b, c, alpha=0.5, beta=-2.0, trans_a=ta, trans_b=tb)
    assert_close(c, expected, "gemm", dtype, scale=0.5 * scale + 2.0 * np.abs(expected))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gemm_beta_zero_ignores_c(dtype, rng):
    # BLAS convention: with beta == 0, C is written, not read (NaN/Inf in C do not leak).
    a, b = randn(rng, (9, 5), dtype), randn(rng, (5, 7), dtype)
    c = np.full((9, 7), np.nan, dtype)
    c[0, 0] = np.inf
    seqcore.gemm(a, b, c, 1.0, 0.0)
    assert_close(c, mm_expected(a, b)[0], "gemm", dtype, scale=mm_expected(a, b)[1])
    c = np.full((9, 7), np.nan, dtype)
    seqcore.gemm(np.ones((9, 0), dtype), np.ones((0, 7), dtype), c, 1.0, 0.0)
    np.testing.assert_array_equal(c, 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gemm_alpha_zero_and_k_zero_scale_c(dtype, rng):
    a, b = randn(rng, (6, 5), dtype), randn(rng, (5, 4), dtype)
    c = randn(rng, (6, 4), dtype)
    c0 = c.copy()
    seqcore.gemm(a, b, c, 0.0, 0.5)
    assert_close(c, 0.5 * c0.astype(np.float64), "gemm", dtype)
    c = c0.copy()
    seqcore.gemm(np.ones((6, 0), dtype), np.ones((0, 4), dtype), c, 1.0, 2.0)
    assert_close(c, 2.0 * c0.astype(np.float64), "gemm", dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gemm_into_row_strided_c(dtype, rng):
    # c is a window of a bigger array: contiguous rows, row stride > n. The rest is untouched.
    big = randn(rng, (12, 20), dtype)
    before = big.copy()
    a, b = randn(rng, (5, 7), dtype), randn(rng, (7, 9), dtype)
    c = big[2:7, 3:12]
    seqcore.gemm(a, b, c, 1.0, 1.0)
    expected = before[2:7, 3:12].astype(np.float64) + mm_expected(a, b)[0]
    assert_close(big[2:7, 3:12], expected, "gemm", dtype,
                 scale=mm_expected(a, b)[1] + np.abs(before[2:7, 3:12]))
    mask = np.ones(big.shape, bool)
    mask[2:7, 3:12] = False
    np.testing.assert_array_equal(big[mask], before[mask])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_gemm_strided_inputs(dtype, rng):
    big = randn(rng, (30, 30), dtype)
    a = big[1:20:2, 2:15:3]   # (10, 5) non-contiguous both ways
    b = big[::-3, 5:13][:5]   # (5, 8) negative row stride
    c = np.zeros((10, 8), dtype)
    seqcore.gemm(a, b, c)
    assert_close(c, mm_expected(a, b)[0], "gemm", dtype, scale=mm_expected(a, b)[1])
    c2 = np.zeros((10, 8), dtype)
    seqcore.gemm(a.T.copy().T, np.asfortranarray(b), c2)
    assert_close(c2, c, "gemm", dtype, scale=mm_expected(a, b)[1])


def test_gemm_errors():
    a, b = np.ones((3, 4)), np.ones((4, 5))
    with pytest.raises(ValueError, match=r"'c'.*\(3, 5\).*\(5, 3\)"):
        seqcore.gemm(a, b, np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"'b'.*\(4, n\).*\(3, 5\)"):
        seqcore.gemm(a, np.ones((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"'b'.*\(n, 4\)"):
        seqcore.gemm(a, b, np.zeros((3, 5)), trans_b=True)
    with pytest.raises(ValueError, match=r"'a'.*\(m, k\).*\(3, 4, 1\)"):
        seqcore.gemm(np.ones((3, 4, 1)), b, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"'c'.*\(m, n\)"):
        seqcore.gemm(a, b, np.zeros(15))
    ro = np.zeros((3, 5))
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        seqcore.gemm(a, b, ro)
    assert not ro.any()
    with pytest.raises(ValueError, match="contiguous rows"):
        seqcore.gemm(a, b, np.zeros((5, 3)).T)
    with pytest.raises(ValueError, match="contiguous rows"):
        seqcore.gemm(a, b, np.zeros((3, 10))[:, ::2])
    with pytest.raises(TypeError, match="'c'"):
        seqcore.gemm(a, b, [[0.0] * 5] * 3)
    with pytest.raises(TypeError, match="'c'"):
        seqcore.gemm(a, b, np.zeros((3, 5), np.int64))
    with pytest.raises(TypeError):
        seqcore.gemm(a, b, np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="'a'"):
        seqcore.gemm(a.astype(np.complex128), b, np.zeros((3, 5)))
    square = np.ones((4, 4))
    with pytest.raises(ValueError, match="share memory"):
        seqcore.gemm(square, np.ones((4, 4)), square)


# ----------------------------------------------------------------------------- linear


@given(lead=st.sampled_from([(), (0,), (1,), (5,), (3, 4), (2, 0, 3), (2, 3, 5)]),
       nin=SIZES0, nout=SIZES, bias=st.booleans(), act=st.sampled_from(ACTIVATIONS),
       dtype=DTYPES, seed=st.integers(0, 2 ** 32 - 1))
def test_linear(lead, nin, nout, bias, act, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, lead + (nin,), dtype)
    w = randn(rng, (nout, nin), dtype)
    b = randn(rng, nout, dtype) if bias else None
    z = R.linear(x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64))
    expected = act64(act, z)
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    if b is not None:
        scale = scale + np.abs(b)
    got = F.linear(x, w, b, activation=act)
    check_output(got, dtype, lead + (nout,))
    assert_close(got, expected, "gemm", dtype, scale=ACT_GAIN[act] * scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_large(act, dtype, rng):
    x = randn(rng, (4, 65, 400), dtype)
    w = randn(rng, (257, 400), dtype) * dtype(0.05)
    b = randn(rng, 257, dtype)
    expected = act64(act, x.astype(np.float64) @ w.astype(np.float64).T + b)
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + np.abs(b)
    got = F.linear(x, w, b, act)
    assert_close(got, expected, "gemm", dtype, scale=ACT_GAIN[act] * scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_twin_and_views(dtype, rng):
    xb = randn(rng, (9, 40), dtype)
    wb = randn(rng, (30, 20), dtype)
    x = xb[::2, 3:20]            # (5, 17) strided
    w = wb[::2, 1:18]            # (15, 17) strided
    b = randn(rng, 30, dtype)[::2]
    scale = np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64)).T + np.abs(b)
    compare_with_twin(F.linear, R.linear, (x, w, b), "gemm", dtype, scales=[scale])
    compare_with_twin(F.linear, R.linear, (x.T.copy().T, np.asfortranarray(w)), "gemm", dtype,
                      scales=[scale])


def test_linear_lists():
    got = F.linear([[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], [0.5, 0.0, -1.0])
    check_output(got, np.float64, (2, 3))
    np.testing.assert_array_equal(got, [[1.5, 2.0, 2.0], [3.5, 4.0, 6.0]])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", [None, "relu", "tanh"])
def test_linear_zero_in_features(act, dtype):
    # x @ W.T over an empty inner dim is 0: y = act(bias), or act(0) without a bias.
    x = np.ones((4, 0), dtype)
    w = np.ones((3, 0), dtype)
    got = F.linear(x, w, None, act)
    np.testing.assert_array_equal(got, act64(act, np.zeros((4, 3))).astype(dtype))
    b = np.array([-1.0, 0.5, 2.0], dtype)
    got = F.linear(x, w, b, act)
    assert_close(got, np.broadcast_to(act64(act, b.astype(np.float64)), (4, 3)), "activation", dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_linear_vs_torch(act, dtype, rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    fns = {None: lambda z: z, "relu": tf.relu, "gelu": tf.gelu,
           "gelu_tanh": lambda z: tf.gelu(z, approximate="tanh"), "tanh": torch.tanh,
           "sigmoid": torch.sigmoid, "silu": tf.silu}
    x, w, b = randn(rng, (3, 5, 33), dtype), randn(rng, (17, 33), dtype), randn(rng, 17, dtype)
    compare_with_torch(F.linear(x, w, b, act), lambda x, w, b: fns[act](tf.linear(x, w, b)),
                       (x, w, b), "torch", dtype)


def test_linear_errors():
    x, w = np.ones((2, 3)), np.ones((4, 3))
    with pytest.raises(ValueError, match=r"'x'.*\(\.\.\., 5\).*\(2, 3\)"):
        F.linear(x, np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"'weight'.*\(out_features, in_features\).*\(3,\)"):
        F.linear(x, np.ones(3))
    with pytest.raises(ValueError, match=r"'bias'.*\(4,\).*\(3,\)"):
        F.linear(x, w, np.ones(3))
    with pytest.raises(ValueError, match=r"'bias'.*\(4,\).*\(1, 4\)"):
        F.linear(x, w, np.ones((1, 4)))
    with pytest.raises(ValueError, match=r"'x'"):
        F.linear(np.float64(1.0), w)
    with pytest.raises(ValueError, match="activation"):
        F.linear(x, w, None, "softmax")
    with pytest.raises(TypeError, match="'x'"):
        F.linear(x.astype(np.int32), w)
    with pytest.raises(TypeError, match="'weight'"):
        F.linear(x, w.astype(np.complex64))
    with pytest.raises(TypeError, match="'bias'"):
        F.linear(x, w, np.ones(4, np.float16))
    with pytest.raises(TypeError, match="mixed"):
        F.linear(x.astype(np.float32), w)
    with pytest.raises(TypeError, match="mixed"):
        F.linear(x, w, np.ones(4, np.float32))


# ----------------------------------------------------------------------------- linear_backward


def linear_backward_scales(dy, x, w):
    dy64, x64, w64 = (np.abs(np.asarray(v, np.float64)) for v in (dy, x, w))
    rows = int(np.prod(x.shape[:-1]))
    dy2 = dy64.reshape(rows, w.shape[0])
    x2 = x64.reshape(rows, w.shape[1])
    return [dy64 @ w64, dy2.T @ x2, dy2.sum(axis=0)]


@given(lead=st.sampled_from([(), (0,), (1,), (7,), (3, 5), (2, 0, 3)]), nin=SIZES, nout=SIZES,
       need_bias=st.booleans(), dtype=DTYPES, seed=st.integers(0, 2 ** 32 - 1))
def test_linear_backward_vs_twin(lead, nin, nout, need_bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x = randn(rng, lead + (nin,), dtype)
    w = randn(rng, (nout, nin), dtype)
    dy = randn(rng, lead + (nout,), dtype)
    compare_with_twin(F.linear_backward, R.linear_backward, (dy, x, w, need_bias), "gemm", dtype,
                      scales=linear_backward_scales(dy, x, w), ops=["gemm", "gemm", "reduction"])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_backward_flags(dtype, rng):
    x, w, dy = randn(rng, (6, 5), dtype), randn(rng, (4, 5), dtype), randn(rng, (6, 4), dtype)
    full = F.linear_backward(dy, x, w)
    dx, dw, db = F.linear_backward(dy, x, w, need_bias=False)
    assert db is None
    np.testing.assert_array_equal(dx, full[0])
    np.testing.assert_array_equal(dw, full[1])
    dx, dw, db = F.linear_backward(dy, x, w, need_bias=True, need_input_grad=False)
    assert dx is None
    np.testing.assert_array_equal(dw, full[1])
    np.testing.assert_array_equal(db, full[2])
    dx, dw, db = F.linear_backward(dy, x, w, False, False)
    assert dx is None and db is None
    np.testing.assert_array_equal(dw, full[1])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_backward_large(dtype, rng):
    x, w = randn(rng, (3, 110, 129), dtype), randn(rng, (300, 129), dtype)
    dy = randn(rng, (3, 110, 300), dtype)
    compare_with_twin(F.linear_backward, R.linear_backward, (dy, x, w, True), "gemm", dtype,
                      scales=linear_backward_scales(dy, x, w), ops=["gemm", "gemm", "reduction"])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("lead", [(), (3,), (2, 0)])
@pytest.mark.parametrize("nin,nout", [(0, 3), (4, 0), (0, 0)])
def test_linear_backward_zero_features(nin, nout, lead, dtype, rng):
    x = randn(rng, lead + (nin,), dtype)
    w = randn(rng, (nout, nin), dtype)
    dy = randn(rng, lead + (nout,), dtype)
    dx, dw, db = F.linear_backward(dy, x, w)
    check_output(dx, dtype, x.shape)
    check_output(dw, dtype, w.shape)
    check_output(db, dtype, (nout,))
    np.testing.assert_array_equal(dx, np.zeros(x.shape))  # sum over an empty out dim
    np.testing.assert_array_equal(dw, np.zeros(w.shape))  # w has no elements or no rows
    dy2 = dy.astype(np.float64).reshape(int(np.prod(lead)), nout)
    assert_close(db, dy2.sum(axis=0), "reduction", dtype, scale=np.abs(dy2).sum(axis=0))


def test_linear_backward_empty_rows_gives_zero_grads():
    x, w, dy = np.ones((0, 5)), np.ones((4, 5)), np.ones((0, 4))
    dx, dw, db = F.linear_backward(dy, x, w)
    check_output(dx, np.float64, (0, 5))
    np.testing.assert_array_equal(dw, np.zeros((4, 5)))
    np.testing.assert_array_equal(db, np.zeros(4))


@pytest.mark.parametrize("lead", [(), (4,), (2, 3)])
def test_linear_backward_finite_differences(lead, rng):
    nin, nout = 5, 3
    x = rng.standard_normal(lead + (nin,))
    w = rng.standard_normal((nout, nin))
    b = rng.standard_normal(nout)
    dy = rng.standard_normal(lead + (nout,))
    dx, dw, db = F.linear_backward(dy, x, w)
    assert_fd(dx, lambda v: F.linear(v, w, b), x, dy, "dx")
    assert_fd(dw, lambda v: F.linear(x, v, b), w, dy, "dweight")
    assert_fd(db, lambda v: F.linear(x, w, v), b, dy, "dbias")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_backward_vs_torch(dtype, rng):
    torch = pytest.importorskip("torch")
    x, w, b = randn(rng, (2, 7, 33), dtype), randn(rng, (17, 33), dtype), randn(rng, 17, dtype)
    dy = randn(rng, (2, 7, 17), dtype)
    compare_with_torch(F.linear(x, w, b), torch.nn.functional.linear, (x, w, b), "torch", dtype,
                       dout=dy, grads=F.linear_backward(dy, x, w))


def test_linear_backward_errors():
    x, w, dy = np.ones((2, 3)), np.ones((4, 3)), np.ones((2, 4))
    with pytest.raises(ValueError, match=r"'dy'.*\(2, 4\).*\(2, 5\)"):
        F.linear_backward(np.ones((2, 5)), x, w)
    with pytest.raises(ValueError, match=r"'dy'.*\(2, 4\).*\(3, 4\)"):
        F.linear_backward(np.ones((3, 4)), x, w)
    with pytest.raises(ValueError, match=r"'x'.*\(\.\.\., 3\).*\(2, 2\)"):
        F.linear_backward(dy, np.ones((2, 2)), w)
    with pytest.raises(ValueError, match=r"'weight'"):
        F.linear_backward(dy, x, np.ones((4, 3, 1)))
    with pytest.raises(TypeError, match="'dy'"):
        F.linear_backward(dy.astype(np.int64), x, w)
    with pytest.raises(TypeError, match="mixed"):
        F.linear_backward(dy, x.astype(np.float32), w)


# ----------------------------------------------------------------------------- PackedMatrix


@given(m=SIZES0, n=SIZES0, k=SIZES0, trans=st.booleans(), dtype=DTYPES,
       lead=st.sampled_from([(), (2,), (2, 3)]), seed=st.integers(0, 2 ** 32 - 1))
def test_packed_matrix(m, n, k, trans, dtype, lead, seed):
    rng = np.random.default_rng(seed)
    b = randn(rng, (n, k) if trans else (k, n), dtype)
    p = seqcore.PackedMatrix(b, trans=trans)
    assert p.shape == (k, n)
    assert p.dtype == np.dtype(dtype)
    assert isinstance(p.nbytes, int) and p.nbytes >= k * n * np.dtype(dtype).itemsize
    a = randn(rng, lead + (m, k), dtype)
    bb = b.T if trans else b
    got = p.matmul(a)
    check_output(got, dtype, lead + (m, n))
    expected, scale = mm_expected(a, bb)
    assert_close(got, expected, "gemm", dtype, scale=scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_packed_matrix_epilogue(act, trans, dtype, rng):
    k, n = 129, 65
    b = randn(rng, (n, k) if trans else (k, n), dtype)
    bb = (b.T if trans else b).astype(np.float64)
    bias = randn(rng, n, dtype)
    a = randn(rng, (33, k), dtype)
    p = seqcore.PackedMatrix(b, trans)
    expected = act64(act, a.astype(np.float64) @ bb + bias)
    scale = np.abs(a.astype(np.float64)) @ np.abs(bb) + np.abs(bias)
    assert_close(p.matmul(a, bias=bias, activation=act), expected, "gemm", dtype,
                 scale=ACT_GAIN[act] * scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_packed_matrix_beta_accumulates_into_out(dtype, rng):
    b = randn(rng, (17, 9), dtype)
    a = randn(rng, (5, 17), dtype)
    p = seqcore.PackedMatrix(b)
    out = randn(rng, (5, 9), dtype)
    out0 = out.astype(np.float64)
    prod, scale = mm_expected(a, b)
    got = p.matmul(a, out=out, beta=0.5)
    assert got is out
    assert_close(out, prod + 0.5 * out0, "gemm", dtype, scale=scale + 0.5 * np.abs(out0))
    out = np.full((5, 9), np.nan, dtype)
    p.matmul(a, out=out)  # beta = 0: out is written, not read
    assert_close(out, prod, "gemm", dtype, scale=scale)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_packed_matrix_reuse_and_independence(dtype, rng):
    b = randn(rng, (33, 31), dtype)
    p = seqcore.PackedMatrix(b)
    a = randn(rng, (7, 33), dtype)
    first = p.matmul(a)
    b[:] = 0  # packing copied the data
    for _ in range(3):
        np.testing.assert_array_equal(p.matmul(a), first)
    # same bits as the plain GEMM engine on the same operands
    b2 = randn(rng, (33, 31), dtype)
    assert_close(seqcore.PackedMatrix(b2).matmul(a), F.matmul(a, b2), "gemm", dtype,
                 scale=mm_expected(a, b2)[1])


def test_packed_matrix_empty_inner_dim_gives_zeros():
    for trans in (False, True):
        b = np.ones((3, 0)) if trans else np.ones((0, 3))
        p = seqcore.PackedMatrix(b, trans=trans)
        assert p.shape == (0, 3)
        got = p.matmul(np.ones((2, 0)))
        np.testing.assert_array_equal(got, np.zeros((2, 3)))
        got = p.matmul(np.ones((2, 0)), bias=np.array([1.0, -2.0, 0.0]), activation="relu")
        np.testing.assert_array_equal(got, [[1.0, 0.0, 0.0]] * 2)


def test_packed_matrix_lists():
    p = seqcore.PackedMatrix([[1.0, 2.0], [3.0, 4.0]])
    assert p.dtype == np.float64
    np.testing.assert_array_equal(p.matmul([[1.0, 1.0]]), [[4.0, 6.0]])


def test_packed_matrix_errors():
    with pytest.raises(ValueError, match=r"'b'.*\(k, n\).*\(3,\)"):
        seqcore.PackedMatrix(np.ones(3))
    with pytest.raises(ValueError, match=r"'b'.*\(n, k\)"):
        seqcore.PackedMatrix(np.ones((2, 3, 4)), trans=True)
    with pytest.raises(TypeError, match="'b'"):
        seqcore.PackedMatrix(np.ones((3, 3), np.int32))
    p = seqcore.PackedMatrix(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"'a'.*\(\.\.\., 4\).*\(2, 5\)"):
        p.matmul(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="float32"):
        p.matmul(np.ones((2, 4), np.float64))
    with pytest.raises(TypeError, match="'a'"):
        p.matmul(np.ones((2, 4), np.complex64))
    with pytest.raises(ValueError, match=r"'bias'.*\(5,\)"):
        p.matmul(np.ones((2, 4), np.float32), bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="beta"):
        p.matmul(np.ones((2, 4), np.float32), beta=1.0)
    with pytest.raises(ValueError, match="activation"):
        p.matmul(np.ones((2, 4), np.float32), activation="elu")
    ro = np.zeros((2, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        p.matmul(np.ones((2, 4), np.float32), out=ro)
    with pytest.raises(ValueError, match=r"'out'.*\(2, 5\)"):
        p.matmul(np.ones((2, 4), np.float32), out=np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError, match="'out'"):
        p.matmul(np.ones((2, 4), np.float32), out=np.zeros((2, 5)))
    sq = seqcore.PackedMatrix(np.ones((4, 4), np.float32))
    a = np.ones((2, 4), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        sq.matmul(a, out=a)


# ----------------------------------------------------------------------------- tile edges
# The register tile is 6 rows (row panels balanced to 5..6 rows; fewer for m < 5) by NR
# columns: 64 float32 / 32 float64 on AVX-512, 16 / 8 on AVX2, 4 scalar; k blocks of 256.
# Pre-packed products with up to 32 row panels (m <= 192) stream B panel by panel, larger
# ones go through L2-sized B blocks.
TILE_M = (1, 4, 5, 6, 7, 11, 12, 13, 191, 192, 193)
TILE_N = (15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129)
TILE_K = (1, 255, 256, 257)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("m", TILE_M)
def test_matmul_and_packed_around_tile_sizes(m, dtype, rng):
    for n in TILE_N:
        for k in TILE_K:
            a, b = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype)
            check_matmul(a, b, dtype)
            exp, scale = mm_expected(a, b)
            assert_close(seqcore.PackedMatrix(b).matmul(a), exp, "gemm", dtype, scale=scale)
    for ta, tb in [(True, False), (False, True), (True, True)]:
        a, b = operand(rng, m, 257, dtype, ta), operand(rng, 257, 65, dtype, tb)
        check_matmul(a, b, dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_element_bits_do_not_depend_on_tile_or_path(dtype, rng):
    """Each element of C is one FMA chain over k (fixed 256-deep blocks) whatever tile shape,
    row panel, column block or code path computes it, so sub-products are bitwise slices of
    the full product, and the pre-packed engine gives the same bits as the plain one."""
    m, n, k = 200, 130, 300
    a, b = randn(rng, (m, k), dtype), randn(rng, (k, n), dtype)
    full = F.matmul(a, b)
    for rows in (slice(0, 1), slice(0, 4), slice(3, 10), slice(5, 200), slice(199, 200)):
        np.testing.assert_array_equal(F.matmul(a[rows], b), full[rows], err_msg=str(rows))
    for cols in (slice(0, 1), slice(7, 70), slice(64, 130)):
        np.testing.assert_array_equal(F.matmul(a, np.ascontiguousarray(b[:, cols])), full[:, cols],
                                      err_msg=str(cols))
    p = seqcore.PackedMatrix(b)
    np.testing.assert_array_equal(p.matmul(a), full)
    for rows in (slice(0, 1), slice(0, 4), slice(10, 60), slice(0, 192)):
        np.testing.assert_array_equal(p.matmul(a[rows]), full[rows], err_msg=str(rows))
    pt = seqcore.PackedMatrix(np.ascontiguousarray(b.T), trans=True)
    np.testing.assert_array_equal(pt.matmul(a), full)


# ----------------------------------------------------------------------------- threads


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_bitwise_1_vs_2_threads(ta, tb, dtype, rng):
    m, n, k = 300, 257, 129
    a = randn(rng, (k, m) if ta else (m, k), dtype)
    b = randn(rng, (n, k) if tb else (k, n), dtype)
    c0 = randn(rng, (m, n), dtype)

    def run():
        c = c0.copy()
        seqcore.gemm(a, b, c, 0.75, 0.5, ta, tb)
        return c

    assert_thread_invariant(run)
    assert_thread_invariant(lambda: F.matmul(a.T if ta else a, b.T if tb else b))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_matmul_bitwise_1_vs_2_threads_k_blocks(dtype, rng):
    # k spans several KC blocks: the split must never be over k.
    a, b = randn(rng, (97, 1100), dtype), randn(rng, (1100, 75), dtype)
    assert_thread_invariant(lambda: F.matmul(a, b))
    a3 = randn(rng, (4, 40, 300), dtype)
    assert_thread_invariant(lambda: F.matmul(a3, randn(np.random.default_rng(1), (4, 300, 50), dtype)))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", [None, "gelu", "sigmoid"])
def test_linear_and_packed_bitwise_1_vs_2_threads(act, dtype, rng):
    x, w, b = randn(rng, (300, 129), dtype), randn(rng, (257, 129), dtype), randn(rng, 257, dtype)
    assert_thread_invariant(lambda: F.linear(x, w, b, act))
    p = seqcore.PackedMatrix(w, trans=True)
    assert_thread_invariant(lambda: p.matmul(x, bias=b, activation=act))
    assert_thread_invariant(lambda: seqcore.PackedMatrix(w, trans=True).matmul(x[:7]))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_linear_backward_bitwise_1_vs_2_threads(dtype, rng):
    # dweight and dbias reduce over the 300 rows; out_features 257 > one column block.
    x, w = randn(rng, (300, 129), dtype), randn(rng, (257, 129), dtype)
    dy = randn(rng, (300, 257), dtype)
    assert_thread_invariant(lambda: F.linear_backward(dy, x, w))
    x3, dy3 = randn(rng, (3, 500, 129), dtype), randn(rng, (3, 500, 257), dtype)
    assert_thread_invariant(lambda: F.linear_backward(dy3, x3, w))


def test_dense_results_do_not_depend_on_thread_fixture(num_threads, rng):
    # The whole small-size path under 1 and 2 threads (fixture): results agree with NumPy.
    for m, n, k in [(1, 1, 1), (17, 33, 65), (129, 127, 31)]:
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        check_matmul(a, b, np.float64)


# ----------------------------------------------------------------------------- bad input fuzz

DENSE_FUZZ = """
k = int(rng.integers(6))
if k == 0:
    a = arr()
    b = fit((int(rng.choice(DIMS)),) * int(rng.integers(0, 2)) + (a.shape[-1], int(rng.choice(DIMS))), a.dtype) \\
        if isinstance(a, np.ndarray) and a.ndim >= 1 else arr()
    call("matmul", F.matmul, a, b)
elif k == 1:
    a, b = arr(), arr()
    call("matmul out", F.matmul, a, b, out=arr() if rng.random() < 0.7 else a)
elif k == 2:
    call("gemm", F.gemm, arr(), arr(), arr(), float(rng.normal()), float(rng.choice([0.0, 1.0, 0.5])),
         bool(rng.integers(2)), bool(rng.integers(2)))
elif k == 3:
    x = arr()
    ok = isinstance(x, np.ndarray) and x.ndim >= 1
    w = fit((int(rng.choice(DIMS)), x.shape[-1]), x.dtype) if ok else arr()
    b = (fit(w.shape[:1], x.dtype) if ok and isinstance(w, np.ndarray) and w.ndim else arr()) \\
        if rng.random() < 0.5 else None
    call("linear", F.linear, x, w, b, [None, "relu", "gelu", "gelu_tanh", "silu", "bogus"][int(rng.integers(6))])
elif k == 4:
    x = arr()
    ok = isinstance(x, np.ndarray) and x.ndim >= 1
    w = fit((int(rng.choice(DIMS)), x.shape[-1]), x.dtype) if ok else arr()
    okw = ok and isinstance(w, np.ndarray) and w.ndim == 2
    dy = fit(x.shape[:-1] + w.shape[:1], x.dtype) if okw else arr()
    call("linear_backward", F.linear_backward, dy, x, w, bool(rng.integers(2)), bool(rng.integers(2)))
else:
    p = call("PackedMatrix", seqcore.PackedMatrix, arr(), bool(rng.integers(2)))
    if p is not None:
        a = fit(shape(2) + (p.shape[0],), p.dtype)
        call("PackedMatrix.matmul", p.matmul, a, out=arr() if rng.random() < 0.3 else None,
             bias=fit((p.shape[1],), p.dtype) if rng.random() < 0.5 else None,
             activation=[None, "relu", "tanh"][int(rng.integers(3))],
             beta=float(rng.choice([0.0, 1.0])))
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_bad_input_never_crashes(seed):
    """Random shapes, dtypes, layouts and non-arrays: only ValueError/TypeError/MemoryError."""
    run_fuzz_child(DENSE_FUZZ, seed=seed, cases=1500)
