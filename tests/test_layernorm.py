"""LayerNorm: the fused C++ kernels (F.layer_norm / layer_norm_backward, nn.LayerNorm) against the
NumPy twin (float32 and float64), float64 central finite differences and PyTorch, at odd sizes,
with strided inputs, 1 vs 2 threads bitwise, and bad input."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import seqcore
from seqcore import functional as F, nn, reference as R

from conftest import ODD_SIZES, assert_close, assert_fd, assert_thread_invariant, as64

FLOATS = (np.float32, np.float64)


def close(actual, expected, dtype, what, op="attention"):
    e = np.asarray(expected, np.float64)
    assert_close(actual, e, op, dtype, scale=max(1.0, float(np.max(np.abs(e), initial=0.0))), what=what)


def _case(rng, shape, ns, dtype, affine=True, bias=True):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    nshape = (ns,) if isinstance(ns, int) else tuple(ns)
    w = rng.standard_normal(nshape).astype(dtype) if affine else None
    b = rng.standard_normal(nshape).astype(dtype) if (affine and bias) else None
    return x, w, b


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("F_", ODD_SIZES + (1024,))
def test_layer_norm_matches_twin(F_, dtype, rng):
    x, w, b = _case(rng, (7, F_), F_, dtype)
    y, ctx = F.layer_norm(x, F_, w, b)
    assert y.dtype == dtype and y.flags.c_contiguous
    ry, rctx = R.layer_norm(as64(x), F_, as64(w), as64(b))
    close(y, ry, dtype, "y")
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = F.layer_norm_backward(ctx, dy)
    want = R.layer_norm_backward(rctx, as64(dy))
    for name, g, e in zip(("dx", "dweight", "dbias"), got, want):
        close(g, e, dtype, name)


@given(shape=st.lists(st.sampled_from([1, 2, 3, 5, 15, 16, 17, 33]), min_size=1, max_size=3),
       k=st.integers(1, 3), affine=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_layer_norm_property_shapes(shape, k, affine, bias, seed):
    rng = np.random.default_rng(seed)
    k = min(k, len(shape))
    ns = tuple(shape[-k:])
    x, w, b = _case(rng, tuple(shape), ns, np.float32, affine, bias)
    y, ctx = F.layer_norm(x, ns, w, b)
    ry, rctx = R.layer_norm(as64(x), ns, as64(w), as64(b))
    close(y, ry, np.float32, "y")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    got = F.layer_norm_backward(ctx, dy)
    want = R.layer_norm_backward(rctx, as64(dy))
    for name, g, e in zip(("dx", "dweight", "dbias"), got, want):
        if e is None:
            assert g is None, name
        else:
            close(g, e, np.float32, name)


@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_finite_differences(affine, bias, rng):
    x, w, b = _case(rng, (3, 2, 5), (2, 5), np.float64, affine, bias)
    y, ctx = F.layer_norm(x, (2, 5), w, b)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = F.layer_norm_backward(ctx, dy)
    assert_fd(dx, lambda xx: F.layer_norm(xx, (2, 5), w, b)[0], x, dy, "dx")
    if affine:
        assert_fd(dw, lambda ww: F.layer_norm(x, (2, 5), ww, b)[0], w, dy, "dweight")
    if bias:
        assert_fd(db, lambda bb: F.layer_norm(x, (2, 5), w, bb)[0], b, dy, "dbias")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True)])
def test_layer_norm_module_matches_torch(affine, bias, dtype, rng):
    torch = pytest.importorskip("torch")
    tl = torch.nn.LayerNorm((4, 9), eps=1e-4, elementwise_affine=affine, bias=bias)
    tl = tl.double() if dtype == np.float64 else tl
    if affine:
        with torch.no_grad():
            tl.weight.uniform_(-2, 2)
            if bias:
                tl.bias.uniform_(-1, 1)
    sl = nn.LayerNorm((4, 9), eps=1e-4, elementwise_affine=affine, bias=bias, dtype=dtype)
    assert list(sl.state_dict()) == list(tl.state_dict())
    sl.load_state_dict(tl.state_dict())
    x = (rng.standard_normal((3, 5, 4, 9)) * 2).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = tl(tx)
    y = sl.forward(x)
    op = "torch" if dtype == np.float64 else "attention"
    close(y, ty.detach().numpy(), dtype, "y", op=op)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    close(sl.backward(dy), tx.grad.numpy(), dtype, "dx", op=op)
    for (name, p), (_, tp) in zip(sl.named_parameters(), tl.named_parameters()):
        close(p.grad, tp.grad.numpy(), dtype, "grad " + name, op=op)


def test_layer_norm_strided_constant_rows_and_empty(rng):
    base = rng.standard_normal((6, 40)).astype(np.float32)
    x = base[::2, ::2]  # strided view
    y, _ = F.layer_norm(x, 20)
    close(y, R.layer_norm(as64(np.ascontiguousarray(x)), 20)[0], np.float32, "strided")
    c = np.full((3, 8), -2.5, np.float32)
    yc, ctx = F.layer_norm(c, 8)
    assert np.array_equal(yc, np.zeros_like(c)), "constant rows: variance 0, y = 0"
    assert np.isfinite(F.layer_norm_backward(ctx, np.ones_like(c))[0]).all()
    e, ectx = F.layer_norm(np.zeros((0, 5), np.float32), 5, np.ones(5, np.float32), np.zeros(5, np.float32))
    assert e.shape == (0, 5)
    dx, dw, db = F.layer_norm_backward(ectx, np.zeros((0, 5), np.float32))
    assert dx.shape == (0, 5) and not dw.any() and not db.any()


def test_layer_norm_bitwise_across_threads(rng):
    x, w, b = _case(rng, (3000, 65), 65, np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)

    def run():
        y, ctx = F.layer_norm(x, 65, w, b)
        return (y,) + tuple(F.layer_norm_backward(ctx, dy))

    assert_thread_invariant(run)


@pytest.mark.parametrize("F_, dtype", [(1024, np.float32), (1000, np.float32), (512, np.float64)])
def test_layer_norm_large_streams_dx(F_, dtype, rng):
    """Past 16 MiB, forward writes y and backward dx with non-temporal stores from each row's first
    vector boundary on (rows off the boundary when F_ = 1000: masked head and tail; rows on the
    64-byte grid: the forward reads row i + 1 while it writes row i): same values as the twin,
    same bits for 1 and 2 threads and as the normal-store path (a few rows at a time)."""
    x, w, b = _case(rng, (4300, F_), F_, dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert x.nbytes >= 16 << 20

    def run():
        y, ctx = F.layer_norm(x, F_, w, b)
        return (y,) + tuple(F.layer_norm_backward(ctx, dy))

    got = assert_thread_invariant(run)
    for rows in (slice(0, 5), slice(2001, 2010)):
        y, ctx = F.layer_norm(x[rows], F_, w, b)
        np.testing.assert_array_equal(got[0][rows], y)
        np.testing.assert_array_equal(got[1][rows], F.layer_norm_backward(ctx, dy[rows])[0])
    ry, rctx = R.layer_norm(as64(x), F_, as64(w), as64(b))
    close(got[0], ry, dtype, "y")
    for name, g, e in zip(("dx", "dweight", "dbias"), got[1:], R.layer_norm_backward(rctx, as64(dy))):
        close(g, e, dtype, name)


def test_layer_norm_bad_input(rng):
    x = rng.standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match="x"):
        F.layer_norm(x, 5)
    with pytest.raises(ValueError, match="weight"):
        F.layer_norm(x, 6, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="mixed"):
        F.layer_norm(x, 6, np.ones(6, np.float64))
    with pytest.raises(TypeError, match="x"):
        F.layer_norm(x.astype(np.int32), 6)
    with pytest.raises(ValueError):
        F.layer_norm(x, 0)
    y, ctx = F.layer_norm(x, 6)
    with pytest.raises(ValueError, match="dy"):
        F.layer_norm_backward(ctx, np.ones((4, 5), np.float32))
    with pytest.raises(RuntimeError):
        nn.LayerNorm(6).backward(x)
