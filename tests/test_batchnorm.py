"""BatchNorm (``functional.batch_norm`` / ``batch_norm_backward``, ``nn.BatchNorm1d``): the C++
kernels against the NumPy twin (float64 evaluation), float64 central finite differences, and
PyTorch; odd sizes around the vector widths and the kernel's tile edges (1024 columns, 16384
elements per tile), strided input, bitwise equality for 1 and 2 threads, constant channels,
and bad input.

Error scales (see ``("batchnorm", ...)`` in conftest.TOLERANCES): a float32 mean can only be
held to half an ulp of |mu|, so a channel whose mean is large next to its spread
(kappa = |mu| rstd >> 1) is only as accurate as kappa ulp -- the input itself is quantised at
that level. Every check scales its atol by that condition number: y by
``|w| rstd (|x| + |mu| + std) + |b|``, dx by ``max|dy| max(|w| rstd) (1 + kappa)``, dweight by
``(1 + kappa) sum |dy xhat|``, dbias by ``sum |dy|`` (per channel), the statistics by their
own size.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import seqcore
from seqcore import functional as F
from seqcore import nn
from seqcore import reference as R

from conftest import assert_close, assert_fd, assert_thread_invariant, run_fuzz_child

FLOATS = (np.float32, np.float64)
FIDS = ["f32", "f64"]
BN_SIZES = st.sampled_from(tuple(range(1, 18)) + (31, 33))
EPS = 1e-5


def _axes(ndim):
    return (0,) if ndim == 2 else (0, 2)


def _bshape(C, ndim):
    return (1, C) + (1,) * (ndim - 2)


def make_case(shape, dtype, rng, offset=1.0, spread=1.0):
    """x with per-channel offsets (size ``offset``) and spreads; dy; weight, bias; running stats."""
    C, nd = shape[1], len(shape)
    bs = _bshape(C, nd)
    x = (rng.standard_normal(shape) * (spread * rng.uniform(0.3, 2, C)).reshape(bs)
         + offset * rng.standard_normal(C).reshape(bs)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.5 * rng.standard_normal(C)).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    return x, dy, w, b, rm, rv


def stats64(x, training, rm, rv):
    """(mu, var) in float64 that normalize x: the batch's (biased) or the running ones."""
    if training:
        x64 = x.astype(np.float64)
        return x64.mean(axis=_axes(x.ndim)), x64.var(axis=_axes(x.ndim))
    return rm.astype(np.float64), rv.astype(np.float64)


def check_bn(x, dy, w, b, rm, rv, training, momentum=0.1, eps=EPS, what=""):
    """seqcore vs the twin in float64 (same float inputs): y, saved mean/rstd, running stats
    (updated in place in training), dx, dweight, dbias. Returns the seqcore results."""
    dtype = x.dtype
    nd, C = x.ndim, x.shape[1]
    bs = _bshape(C, nd)
    mu, var = stats64(x, training, rm, rv)  # before the in-place update
    rs = 1 / np.sqrt(var + eps)
    rm64 = None if rm is None else rm.astype(np.float64)
    rv64 = None if rv is None else rv.astype(np.float64)
    w64 = None if w is None else w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    y, ctx = F.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum, eps=eps)
    dx, dw, db = F.batch_norm_backward(ctx, dy)
    ye, ce = R.batch_norm(x.astype(np.float64), rm64, rv64, w64, b64, training=training, momentum=momentum, eps=eps)
    dxe, dwe, dbe = R.batch_norm_backward(ce, dy.astype(np.float64))
    for a, shape in ((y, x.shape), (dx, x.shape), (ctx["mean"], (C,)), (ctx["rstd"], (C,))):
        assert a.dtype == dtype and a.shape == shape and a.flags.c_contiguous, what
    wa = np.ones(C) if w is None else np.abs(w.astype(np.float64))
    ba = np.zeros(C) if b is None else np.abs(b.astype(np.float64))
    kappa = 1 + rs * np.abs(mu)
    ysc = (wa * rs).reshape(bs) * (np.abs(x.astype(np.float64)) + (np.abs(mu) + 1 / rs).reshape(bs)) + ba.reshape(bs)
    assert_close(y, ye, "batchnorm", dtype, scale=ysc, what=f"{what} y")
    assert_close(ctx["mean"], mu, "batchnorm", dtype, scale=np.abs(mu) + 1 / rs, what=f"{what} mean")
    assert_close(ctx["rstd"], rs, "batchnorm", dtype, scale=rs, what=f"{what} rstd")
    if rm is not None:
        assert rm.dtype == dtype and rv.dtype == dtype
        assert_close(rm, rm64, "batchnorm", dtype, scale=np.abs(rm64) + np.sqrt(var), what=f"{what} running_mean")
        assert_close(rv, rv64, "batchnorm", dtype, scale=np.abs(rv64), what=f"{what} running_var")
    if dx.size:
        dsc = float(np.max(np.abs(dy)) * np.max(wa * rs * kappa))
        assert_close(dx, dxe, "batchnorm", dtype, scale=dsc, what=f"{what} dx")
    ax = _axes(nd)
    if w is None:
        assert dw is None and db is None
    else:
        sdx = np.abs(dy.astype(np.float64) * ce["xhat"]).sum(axis=ax)
        assert_close(dw, dwe, "batchnorm", dtype, scale=kappa * sdx, what=f"{what} dweight")
        assert_close(db, dbe, "batchnorm", dtype, scale=np.abs(dy.astype(np.float64)).sum(axis=ax),
                     what=f"{what} dbias")
    return y, ctx, dx, dw, db


# ============================================================================ twin
@given(n=BN_SIZES, c=BN_SIZES, l=st.one_of(st.none(), BN_SIZES), dtype=st.sampled_from(FLOATS),
       training=st.booleans(), affine=st.booleans(), stats=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_matches_twin_odd_sizes(n, c, l, dtype, training, affine, stats, seed):
    shape = (n, c) if l is None else (n, c, l)
    if training and n * (l or 1) == 1:
        training = False
    stats = stats or not training
    rng = np.random.default_rng(seed)
    x, dy, w, b, rm, rv = make_case(shape, dtype, rng, offset=3.0)
    check_bn(x, dy, w if affine else None, b if affine else None, rm if stats else None, rv if stats else None,
             training, momentum=0.3, what=f"{shape}")


# Shapes at the tile edges: more than 1024 columns per row (several column blocks), channels
# longer than 1024 (split into sub-blocks, tails), many row chunks, one row, two values.
TILE_SHAPES = [(300, 1500), (40, 1025), (5000, 7), (17, 300, 5), (3, 2, 2500), (2, 1, 1024), (1, 3, 1025),
               (2, 2, 4097), (100, 8, 33), (1, 1100, 2), (2, 1), (65, 1, 257), (1, 2, 16385)]


@pytest.mark.parametrize("dtype", FLOATS, ids=FIDS)
@pytest.mark.parametrize("shape", TILE_SHAPES, ids=[str(s) for s in TILE_SHAPES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_matches_twin_tile_edges(shape, dtype, training):
    rng = np.random.default_rng(sum(shape))
    x, dy, w, b, rm, rv = make_case(shape, dtype, rng, offset=2.0)
    check_bn(x, dy, w, b, rm, rv, training, what=f"{shape}")
    check_bn(x, dy, None, None, None if training else rm, None if training else rv, training,
             what=f"{shape} no affine")


@pytest.mark.parametrize("offset", [1e2, 1e4])
@pytest.mark.parametrize("shape", [(64, 3, 300), (4000, 5)])
def test_float32_statistics_accurate_for_large_offsets(shape, offset):
    """mean 1e4 x the spread, float32: the variance comes from one read of memory but is
    as accurate as a two-pass (a plain sum of squares would lose all of it: 1e8 x eps)."""
    rng = np.random.default_rng(7)
    x, dy, w, b, rm, rv = make_case(shape, np.float32, rng, offset=offset, spread=1.0)
    x += np.float32(offset)
    check_bn(x, dy, w, b, rm, rv, True, what=f"offset {offset}")
    _, var = stats64(x, True, None, None)
    _, ctx = F.batch_norm(x, None, None, training=True, eps=0.0)
    # var = 1/rstd^2: relative error 2 x that of rstd, plus the float32 rounding of rstd
    assert_close(1 / ctx["rstd"].astype(np.float64) ** 2, var, "batchnorm", np.float32, scale=4 * var,
                 what="batch variance")


# ============================================================================ finite differences
FD_SHAPES = [(5, 3), (3, 2, 4), (2, 3, 1), (2, 1), (4, 2, 17)]


@pytest.mark.parametrize("shape", FD_SHAPES, ids=[str(s) for s in FD_SHAPES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_finite_differences(shape, training, affine):
    rng = np.random.default_rng(len(shape) * 10 + shape[0])
    x, dy, w, b, rm, rv = make_case(shape, np.float64, rng, offset=1.0)
    if not affine:
        w = b = None
    st_ = (None, None) if training else (rm, rv)

    def fwd(xv, wv, bv):
        stats = tuple(None if s is None else s.copy() for s in st_)
        return F.batch_norm(xv, *stats, wv, bv, training=training)[0]

    _, ctx = F.batch_norm(x, *st_, w, b, training=training)
    dx, dw, db = F.batch_norm_backward(ctx, dy)
    assert_fd(dx, lambda v: fwd(v, w, b), x, dy, what="d x")
    if affine:
        assert_fd(dw, lambda v: fwd(x, v, b), w, dy, what="d weight")
        assert_fd(db, lambda v: fwd(x, w, v), b, dy, what="d bias")
    else:
        assert dw is None and db is None


# ============================================================================ PyTorch
def _torch_bn(torch, m, dtype):
    tm = torch.nn.BatchNorm1d(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                              track_running_stats=m.track_running_stats, dtype=getattr(torch, np.dtype(dtype).name))
    if m.affine:
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(m.weight.data.copy()))
            tm.bias.copy_(torch.from_numpy(m.bias.data.copy()))
    return tm


def _vs_torch_step(torch, m, tm, x, dy, what):
    dtype = x.dtype
    C = x.shape[1]
    use_batch = m.training or not m.track_running_stats
    mu, var = stats64(x, use_batch, m.running_mean, m.running_var)
    rs = 1 / np.sqrt(var + m.eps)
    kappa = 1 + rs * np.abs(mu)
    bs = _bshape(C, x.ndim)
    wa = np.ones(C) if m.weight is None else np.abs(m.weight.data.astype(np.float64))
    if m.weight is not None:
        m.zero_grad()
        tm.weight.grad = tm.bias.grad = None
    y = m(x)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = tm(tx)
    ysc = (wa * rs).reshape(bs) * (np.abs(x.astype(np.float64)) + np.abs(mu).reshape(bs)) + 1
    assert_close(y, ty.detach().numpy(), "torch", dtype, scale=ysc, what=f"{what}: y")
    dx = m.backward(dy)
    ty.backward(torch.from_numpy(dy.copy()))
    dsc = float(np.max(np.abs(dy)) * np.max(wa * rs * kappa))
    assert_close(dx, tx.grad.numpy(), "torch", dtype, scale=dsc, what=f"{what}: dx")
    ax = _axes(x.ndim)
    if m.weight is not None:
        xhat = (x.astype(np.float64) - mu.reshape(bs)) * rs.reshape(bs)
        assert_close(m.weight.grad, tm.weight.grad.numpy(), "torch", dtype,
                     scale=kappa * np.abs(dy * xhat).sum(axis=ax), what=f"{what}: dweight")
        assert_close(m.bias.grad, tm.bias.grad.numpy(), "torch", dtype, scale=np.abs(dy).sum(axis=ax),
                     what=f"{what}: dbias")
    if m.track_running_stats:
        assert_close(m.running_mean, tm.running_mean.numpy(), "torch", dtype,
                     scale=np.abs(m.running_mean) + np.sqrt(var), what=f"{what}: running_mean")
        assert_close(m.running_var, tm.running_var.numpy(), "torch", dtype, scale=np.abs(m.running_var),
                     what=f"{what}: running_var")
        assert m.num_batches_tracked == int(tm.num_batches_tracked)


TORCH_CASES = [  # shape, affine, momentum, track
    ((7, 33), True, 0.1, True), ((13, 17, 31), True, None, True), ((3, 16, 1), False, 0.25, True),
    ((33, 5, 15), True, 0.1, False), ((2, 31), False, None, True), ((9, 1, 17), True, 0.1, True),
    ((40, 1025), True, None, True), ((3, 2, 2500), False, 0.1, False)]


@pytest.mark.parametrize("dtype", FLOATS, ids=FIDS)
@pytest.mark.parametrize("case", TORCH_CASES, ids=[f"{c[0]}-a{c[1]}-m{c[2]}-t{c[3]}" for c in TORCH_CASES])
def test_module_matches_torch(case, dtype):
    """5 training steps on shifted, scaled batches (running statistics after every step, the
    cumulative average for momentum None), then 2 eval steps, then training again."""
    torch = pytest.importorskip("torch")
    shape, affine, momentum, track = case
    rng = np.random.default_rng(len(TORCH_CASES) + shape[1])
    m = nn.BatchNorm1d(shape[1], momentum=momentum, affine=affine, track_running_stats=track, dtype=dtype)
    if affine:
        m.weight.data = (1 + 0.4 * rng.standard_normal(shape[1])).astype(dtype)
        m.bias.data = rng.standard_normal(shape[1]).astype(dtype)
    tm = _torch_bn(torch, m, dtype)
    for step in range(8):
        if step == 5:
            m.eval()
            tm.eval()
        if step == 7:
            m.train()
            tm.train()
        x, dy, *_ = make_case(shape, dtype, rng, offset=2.0 + step, spread=1 + step)
        _vs_torch_step(torch, m, tm, x, dy, f"step {step}")
    assert list(m.state_dict()) == list(tm.state_dict())


@pytest.mark.parametrize("dtype", FLOATS, ids=FIDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_functional_matches_torch(dtype, training):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    for shape in [(17, 9), (5, 33, 16), (2, 3, 1)]:
        x, dy, w, b, rm, rv = make_case(shape, dtype, rng)
        trm, trv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
        y, ctx = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.2, eps=1e-3)
        ty = torch.nn.functional.batch_norm(torch.from_numpy(x), trm, trv, torch.from_numpy(w), torch.from_numpy(b),
                                            training=training, momentum=0.2, eps=1e-3)
        mu, var = stats64(x, training, trm.numpy() if not training else None, trv.numpy() if not training else None)
        bs = _bshape(shape[1], len(shape))
        ysc = (np.abs(w) / np.sqrt(var + 1e-3)).reshape(bs) * (np.abs(x) + (np.abs(mu) + np.sqrt(var)).reshape(bs)) \
            + np.abs(b).reshape(bs)
        assert_close(y, ty.numpy(), "torch", dtype, scale=ysc, what=f"{shape} y")
        assert_close(rm, trm.numpy(), "torch", dtype, scale=np.abs(rm) + 1, what=f"{shape} running_mean")
        assert_close(rv, trv.numpy(), "torch", dtype, scale=np.abs(rv), what=f"{shape} running_var")


def test_defaults_follow_torch():
    """F.batch_norm's defaults are torch's (training=False: eval needs running statistics)."""
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm(x, None, None)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, _ = F.batch_norm(x, rm, rv)
    np.testing.assert_allclose(y, x / np.sqrt(np.float32(1 + 1e-5)), rtol=1e-6)
    assert np.array_equal(rm, np.zeros(3)) and np.array_equal(rv, np.ones(3))  # eval: untouched


# ============================================================================ layouts and threads
@pytest.mark.parametrize("dtype", FLOATS, ids=FIDS)
def test_strided_input_and_lists(dtype):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((9, 7, 22)).astype(dtype)
    views = [base[:, :, ::2], base.transpose(0, 2, 1)[:, ::2, :], base[::2, 1:6, 3], base.transpose(2, 0, 1)[:, :5]]
    for xv in views:
        assert not xv.flags.c_contiguous
        dyv = rng.standard_normal(xv.shape[::-1]).astype(dtype).T  # strided too
        xc, dyc = np.ascontiguousarray(xv), np.ascontiguousarray(dyv)
        C = xv.shape[1]
        w, b = rng.standard_normal(C).astype(dtype), rng.standard_normal(C).astype(dtype)
        rm1, rv1 = np.zeros(C, dtype), np.ones(C, dtype)
        rm2, rv2 = rm1.copy(), rv1.copy()
        y1, c1 = F.batch_norm(xv, rm1, rv1, w[::-1].copy()[::-1], b, training=True)
        y2, c2 = F.batch_norm(xc, rm2, rv2, w, b, training=True)
        assert y1.flags.c_contiguous and np.array_equal(y1, y2)
        assert np.array_equal(rm1, rm2) and np.array_equal(rv1, rv2)
        for g1, g2 in zip(F.batch_norm_backward(c1, dyv), F.batch_norm_backward(c2, dyc)):
            assert np.array_equal(g1, g2)
    x = [[1.0, 2.0], [3.0, 5.0], [0.5, -1.0]]  # lists follow the float64 default
    y, ctx = F.batch_norm(x, None, None, [1.0, 2.0], None, training=True)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, R.batch_norm(np.array(x), None, None, np.array([1.0, 2.0]), training=True)[0],
                               rtol=1e-14, atol=1e-15)


# Enough elements for 2 threads to split (> 2 x 16384), several tiles each way.
THREAD_SHAPES = [(64, 64, 33), (4, 3, 5000), (20000, 7), (300, 1500), (33, 2048, 1)]


@pytest.mark.parametrize("dtype", FLOATS, ids=FIDS)
@pytest.mark.parametrize("shape", THREAD_SHAPES, ids=[str(s) for s in THREAD_SHAPES])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_bitwise_for_1_and_2_threads(shape, dtype, training):
    rng = np.random.default_rng(11)
    x, dy, w, b, rm, rv = make_case(shape, dtype, rng, offset=3.0)

    def run():
        rm_, rv_ = rm.copy(), rv.copy()
        y, ctx = F.batch_norm(x, rm_, rv_, w, b, training=training, momentum=0.1)
        return (y, ctx["mean"], ctx["rstd"], rm_, rv_) + F.batch_norm_backward(ctx, dy)

    assert_thread_invariant(run)


def test_module_bitwise_for_1_and_2_threads():
    rng = np.random.default_rng(12)
    x, dy, *_ = make_case((128, 40, 17), np.float32, rng)

    def run():
        m = nn.BatchNorm1d(40, momentum=None)
        outs = []
        for _ in range(3):
            outs.append(m(x))
            outs.append(m.backward(dy))
        return tuple(outs) + (m.running_mean, m.running_var, m.weight.grad, m.bias.grad)

    assert_thread_invariant(run)


# ============================================================================ edge cases
@pytest.mark.parametrize("dtype", FLOATS, ids=FIDS)
def test_constant_channels_and_zero_variance(dtype):
    """A constant channel has var 0: y = bias exactly-ish (xhat ~ 0), dx finite (= w/sqrt(eps)
    times the centred dy), running_var decays towards 0; eval with running_var = 0 normalizes by
    sqrt(eps) -- all finite and as torch computes them."""
    C = 4
    vals = np.array([3.7, -2.0, 0.0, 1e3], dtype)
    x = np.broadcast_to(vals.reshape(1, C, 1), (6, C, 5)).copy()
    dy = np.random.default_rng(0).standard_normal(x.shape).astype(dtype)
    m = nn.BatchNorm1d(C, dtype=dtype)
    m.weight.data = np.array([1, 2, 0.5, 3], dtype)
    m.bias.data = np.array([0.1, -0.2, 0.3, 0], dtype)
    y = m(x)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y, np.broadcast_to(m.bias.data.reshape(1, C, 1), y.shape),
                               atol=(3e-3 if dtype == np.float32 else 1e-10))
    dx = m.backward(dy)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(m.weight.grad))
    centred = dy - dy.mean(axis=(0, 2), keepdims=True)
    np.testing.assert_allclose(dx, m.weight.data.reshape(1, C, 1) / np.sqrt(1e-5) * centred,
                               rtol=1e-4, atol=1e-4 * np.abs(centred).max() / np.sqrt(1e-5))
    np.testing.assert_array_equal(m.running_var, np.full(C, 0.9, dtype))
    m.running_var[...] = 0
    m.eval()
    ye = m(x + 1)
    expect = (x + 1 - m.running_mean.reshape(1, C, 1)) / np.sqrt(1e-5) * m.weight.data.reshape(1, C, 1) \
        + m.bias.data.reshape(1, C, 1)
    assert np.all(np.isfinite(ye))
    np.testing.assert_allclose(ye, expect, rtol=1e-5)
    dxe = m.backward(dy)
    np.testing.assert_allclose(dxe, dy * (m.weight.data / np.sqrt(1e-5)).reshape(1, C, 1), rtol=1e-6)


def test_nan_stays_in_its_channel():
    x = np.random.default_rng(1).standard_normal((8, 3, 5)).astype(np.float32)
    x[2, 1, 3] = np.nan
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    y, ctx = F.batch_norm(x, rm, rv, training=True)
    assert np.all(np.isnan(y[:, 1])) and np.all(np.isfinite(y[:, [0, 2]]))
    assert np.isnan(rm[1]) and np.isnan(rv[1]) and np.all(np.isfinite(rm[[0, 2]]))


@pytest.mark.parametrize("shape", [(0, 4), (0, 4, 3), (5, 4, 0), (3, 0), (3, 0, 2)])
def test_empty_inputs(shape):
    C = shape[1]
    x = np.zeros(shape, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, ctx = F.batch_norm(x, rm, rv, np.ones(C, np.float32), np.zeros(C, np.float32), training=False)
    assert y.shape == shape and y.dtype == np.float32
    dx, dw, db = F.batch_norm_backward(ctx, np.zeros(shape, np.float32))
    assert dx.shape == shape and dw.shape == (C,) and db.shape == (C,)
    assert np.all(dw == 0) and np.all(db == 0)
    if C == 0:  # no channels: nothing to normalize, training allowed when N L > 1
        y, _ = F.batch_norm(x, None, None, training=True)
        assert y.shape == shape


# ============================================================================ bad input
def test_bad_input_functional():
    x = np.ones((4, 3, 2), np.float32)
    c3 = np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"'x'.*\(N, C\) or \(N, C, L\).*\(12,\)"):
        F.batch_norm(np.ones(12, np.float32), None, None, training=True)
    with pytest.raises(ValueError, match=r"'x'.*\(2, 2, 3, 1\)"):
        F.batch_norm(np.ones((2, 2, 3, 1), np.float32), None, None, training=True)
    for name, pos in (("running_mean", 1), ("running_var", 2), ("weight", 3), ("bias", 4)):
        args = [x, c3.copy(), c3.copy(), c3, c3]
        args[pos] = np.ones(4, np.float32)
        for training in (True, False):
            with pytest.raises(ValueError, match=rf"'{name}'.*\(3,\).*\(4,\)"):
                F.batch_norm(*args, training=training)
    for shape in ((1, 3), (1, 3, 1)):
        with pytest.raises(ValueError, match=r"'x'.*more than 1 value per channel"):
            F.batch_norm(np.ones(shape, np.float32), c3.copy(), c3.copy(), training=True)
    with pytest.raises(TypeError, match="'x'.*int64"):
        F.batch_norm(np.ones((4, 3), np.int64), None, None, training=True)
    with pytest.raises(TypeError, match="'x'.*float16"):
        F.batch_norm(np.ones((4, 3), np.float16), None, None, training=True)
    with pytest.raises(TypeError, match="mixed float dtypes.*'weight'"):
        F.batch_norm(x, None, None, np.ones(3), None, training=True)
    with pytest.raises(TypeError, match="mixed float dtypes.*'running_mean'"):
        F.batch_norm(x, np.zeros(3), np.ones(3), training=True)
    with pytest.raises(ValueError, match="'running_var' is None"):
        F.batch_norm(x, c3.copy(), None, training=True)
    with pytest.raises(ValueError, match="'running_mean'.*training=False"):
        F.batch_norm(x, None, None, training=False)
    # in training the running statistics are written in place
    ro = c3.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="'running_mean' is read-only"):
        F.batch_norm(x, ro, c3.copy(), training=True)
    with pytest.raises(ValueError, match="'running_var' must be C-contiguous"):
        F.batch_norm(x, c3.copy(), np.ones(6, np.float32)[::2], training=True)
    with pytest.raises(TypeError, match="'running_mean' must be a numpy.ndarray"):
        F.batch_norm(x, [0.0, 0.0, 0.0], c3.copy(), training=True)
    y, _ = F.batch_norm(x, ro, [1.0, 1.0, 1.0], training=False)  # eval: read-only / lists are fine
    assert y.shape == x.shape
    _, ctx = F.batch_norm(x + np.arange(24, dtype=np.float32).reshape(x.shape), None, None, c3, None, training=True)
    with pytest.raises(ValueError, match=r"'dy'.*\(4, 3, 2\).*\(4, 3\)"):
        F.batch_norm_backward(ctx, np.ones((4, 3), np.float32))
    with pytest.raises(TypeError, match="mixed float dtypes"):
        F.batch_norm_backward(ctx, np.ones((4, 3, 2)))
    with pytest.raises(ValueError, match=r"'mean'.*\(3,\)"):
        F.batch_norm_backward(dict(ctx, mean=np.zeros(2, np.float32)), np.ones(x.shape, np.float32))


def test_bad_input_module():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"'input'.*\(N, 3\)"):
        bn(np.ones((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"'input'"):
        bn(np.ones((4,), np.float32))
    with pytest.raises(ValueError, match=r"'input'"):
        bn(np.ones((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="more than 1 value"):
        bn(np.ones((1, 3, 1), np.float32))
    with pytest.raises(TypeError, match="float64"):
        bn(np.ones((4, 3), np.float64))
    assert bn.num_batches_tracked == 0  # nothing counted for rejected batches
    bn(np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="'dy'"):
        bn.backward(np.ones((4, 4), np.float32))


BN_FUZZ = """
x = arr() if rng.random() < 0.3 else arr(tuple(int(v) for v in rng.integers(0, 6, int(rng.integers(2, 4)))))
dt = getattr(x, "dtype", np.float64)
c = x.shape[1] if isinstance(x, np.ndarray) and x.ndim >= 2 else 3
def chan():
    return fit((c if rng.random() < 0.9 else c + 1,), dt if rng.random() < 0.9 else None) if rng.random() < 0.8 else None
rm, rv, w, b = chan(), chan(), chan(), chan()
training = bool(rng.integers(2))
r = call("batch_norm", F.batch_norm, x, rm, rv, w, b, training=training, momentum=float(rng.normal()),
         eps=float(rng.choice([1e-5, 0.0, -1.0, 1.0])))
if r is not None:
    y, ctx = r
    if rng.random() < 0.3:
        ctx = dict(ctx, mean=like(ctx["mean"]), rstd=like(ctx["rstd"]))
    call("batch_norm_backward", F.batch_norm_backward, ctx, like(y) if rng.random() < 0.9 else arr())
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_bad_input_never_crashes(seed):
    """Random shapes, dtypes, layouts, read-only / strided running statistics and non-arrays:
    only ValueError/TypeError/MemoryError, never a crash."""
    run_fuzz_child(BN_FUZZ, seed=seed, cases=1500)
