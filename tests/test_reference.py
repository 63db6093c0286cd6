"""The pure-NumPy reference twins (python/seqcore/reference) against PyTorch in float64
(values and autograd gradients) and against float64 central finite differences.

The twins are loaded straight from the source tree, so this file runs before the C++
extension (and the rest of the ``seqcore`` package) is built or installed.
"""
import importlib.util
import math
import pathlib
import sys

import numpy as np
import pytest

_REF_DIR = pathlib.Path(__file__).resolve().parents[1] / "python" / "seqcore" / "reference"


def _load_reference():
    """Import python/seqcore/reference as a standalone package (no seqcore/__init__)."""
    name = "_seqcore_reference_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, _REF_DIR / "__init__.py", submodule_search_locations=[str(_REF_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ref = _load_reference()

# Tolerances, in one place: twin vs torch (both float64), twin vs finite differences,
# float32 twin vs float64 twin.
TOL = {
    "torch": dict(rtol=1e-9, atol=1e-11),
    "fd": dict(rtol=1e-6, atol=1e-7),
    "f32": dict(rtol=2e-4, atol=2e-5),
}
FD_STEP = 1e-6


# ----------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def close(actual, expected, kind="torch"):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), **TOL[kind])


def as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def fd_check(f, inputs, dout):
    """Central finite differences of ``L = sum_k (f(*inputs)[k] * dout[k]).sum()``.

    ``inputs`` are float64 arrays, perturbed in place one element at a time (and restored);
    ``f`` returns an array or a tuple of arrays matching ``dout``. Returns dL/d input, one
    array per input.
    """
    douts = as_tuple(dout)

    def loss():
        return sum(float(np.sum(o * d)) for o, d in zip(as_tuple(f(*inputs)), douts))

    grads = []
    for x in inputs:
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + FD_STEP
            lp = loss()
            x[i] = old - FD_STEP
            lm = loss()
            x[i] = old
            g[i] = (lp - lm) / (2 * FD_STEP)
        grads.append(g)
    return grads


def assert_fd(f, inputs, dout, analytic):
    """Check analytic gradients (one per input, None to skip) against :func:`fd_check`."""
    for num, ana in zip(fd_check(f, inputs, dout), analytic):
        if ana is not None:
            close(ana, num, "fd")


def tt(torch, a, grad=True):
    """float64 torch leaf tensor from an array."""
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64,
                        requires_grad=grad)


def tgrads(torch, outs, douts, wrt):
    """Gradients of ``sum_k (outs[k] * douts[k]).sum()`` with respect to ``wrt``."""
    loss = sum((o * torch.as_tensor(np.asarray(d, dtype=np.float64))).sum()
               for o, d in zip(as_tuple(outs), as_tuple(douts)))
    return [g.numpy() for g in torch.autograd.grad(loss, wrt)]


def tn(t):
    return t.detach().numpy()


def away_from_zero(rng, shape, gap=0.1):
    """Normal samples pushed at least ``gap`` away from 0 (kinks of relu-like functions)."""
    x = np.asarray(rng.standard_normal(shape))
    return np.asarray(x + gap * np.where(x >= 0, 1.0, -1.0))


# ----------------------------------------------------------------------------- erf
def test_erf_matches_math_erf():
    x = np.concatenate([np.linspace(-7, 7, 2801), [0.0, 1e-300, -1e-20, 0.46875, -4.0, 4.0,
                                                    26.0, -30.0, 1e200, np.inf, -np.inf]])
    expected = np.array([math.erf(v) for v in x])
    got = ref.erf(x)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=2e-15, atol=1e-300)
    assert np.isnan(ref.erf(np.array([np.nan])))[0]
    x32 = x[:2801].astype(np.float32)
    assert ref.erf(x32).dtype == np.float32
    np.testing.assert_allclose(ref.erf(x32), expected[:2801], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- activations
# name -> (forward(x), backward(dy, x, y), torch forward(torch, x), relu-like kink at 0)
ELEMENTWISE = {
    "tanh": (ref.tanh, lambda dy, x, y: ref.tanh_backward(dy, y),
             lambda th, x: th.tanh(x), False),
    "sigmoid": (ref.sigmoid, lambda dy, x, y: ref.sigmoid_backward(dy, y),
                lambda th, x: th.sigmoid(x), False),
    "relu": (ref.relu, lambda dy, x, y: ref.relu_backward(dy, x),
             lambda th, x: th.relu(x), True),
    "leaky_relu": (ref.leaky_relu, lambda dy, x, y: ref.leaky_relu_backward(dy, x),
                   lambda th, x: th.nn.functional.leaky_relu(x), True),
    "leaky_relu_0.2": (lambda x: ref.leaky_relu(x, 0.2),
                       lambda dy, x, y: ref.leaky_relu_backward(dy, x, 0.2),
                       lambda th, x: th.nn.functional.leaky_relu(x, 0.2), True),
    "silu": (ref.silu, lambda dy, x, y: ref.silu_backward(dy, x),
             lambda th, x: th.nn.functional.silu(x), False),
    "gelu": (ref.gelu, lambda dy, x, y: ref.gelu_backward(dy, x),
             lambda th, x: th.nn.functional.gelu(x), False),
    "gelu_tanh": (lambda x: ref.gelu(x, "tanh"),
                  lambda dy, x, y: ref.gelu_backward(dy, x, "tanh"),
                  lambda th, x: th.nn.functional.gelu(x, approximate="tanh"), False),
    "softmax_last": (ref.softmax, lambda dy, x, y: ref.softmax_backward(dy, y),
                     lambda th, x: th.softmax(x, -1), False),
    "softmax_0": (lambda x: ref.softmax(x, 0), lambda dy, x, y: ref.softmax_backward(dy, y, 0),
                  lambda th, x: th.softmax(x, 0), False),
    "softmax_1": (lambda x: ref.softmax(x, 1), lambda dy, x, y: ref.softmax_backward(dy, y, 1),
                  lambda th, x: th.softmax(x, 1), False),
    "log_softmax_last": (ref.log_softmax, lambda dy, x, y: ref.log_softmax_backward(dy, y),
                         lambda th, x: th.log_softmax(x, -1), False),
    "log_softmax_1": (lambda x: ref.log_softmax(x, 1),
                      lambda dy, x, y: ref.log_softmax_backward(dy, y, 1),
                      lambda th, x: th.log_softmax(x, 1), False),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_vs_torch(torch, name):
    fwd, bwd, tfwd, kink = ELEMENTWISE[name]
    rng = np.random.default_rng(1)
    x = away_from_zero(rng, (3, 5, 7)) * 2 if kink else rng.standard_normal((3, 5, 7)) * 2
    dy = rng.standard_normal(x.shape)
    y = fwd(x)
    xt = tt(torch, x)
    yt = tfwd(torch, xt)
    close(y, tn(yt))
    close(bwd(dy, x, y), tgrads(torch, yt, dy, [xt])[0])


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_finite_differences(name):
    fwd, bwd, _, kink = ELEMENTWISE[name]
    rng = np.random.default_rng(2)
    x = away_from_zero(rng, (3, 4, 5)) if kink else rng.standard_normal((3, 4, 5))
    dy = rng.standard_normal(x.shape)
    assert_fd(fwd, [x.copy()], dy, [bwd(dy, x, fwd(x))])


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_float32(name):
    fwd, bwd, _, _ = ELEMENTWISE[name]
    x = np.random.default_rng(3).standard_normal((4, 6)) * 2
    dy = np.ones_like(x)
    y32, y64 = fwd(x.astype(np.float32)), fwd(x)
    dx32 = bwd(dy.astype(np.float32), x.astype(np.float32), y32)
    assert y32.dtype == np.float32 and dx32.dtype == np.float32
    assert y64.dtype == np.float64
    close(y32, y64, "f32")
    close(dx32, bwd(dy, x, y64), "f32")


def test_sigmoid_extremes_do_not_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    np.testing.assert_array_equal(ref.sigmoid(x)[[0, 2, 4]], [0.0, 0.5, 1.0])
    assert np.all(np.isfinite(ref.silu(x)))


PRELU_CASES = [((4, 3, 5), (3,)), ((4, 3), (3,)), ((4, 3, 5), (1,)), ((5,), (1,)), ((), (1,))]


@pytest.mark.parametrize("xshape,wshape", PRELU_CASES)
def test_prelu_vs_torch_and_fd(torch, xshape, wshape):
    rng = np.random.default_rng(4)
    x = away_from_zero(rng, xshape)
    w = rng.uniform(0.05, 0.5, wshape)
    dy = rng.standard_normal(xshape)
    y = ref.prelu(x, w)
    dx, dw = ref.prelu_backward(dy, x, w)
    assert dw.shape == w.shape
    xt, wt = tt(torch, x), tt(torch, w)
    yt = torch.nn.functional.prelu(xt, wt)
    close(y, tn(yt))
    gx, gw = tgrads(torch, yt, dy, [xt, wt])
    close(dx, gx)
    close(dw, gw)
    assert_fd(ref.prelu, [x.copy(), w.copy()], dy, [dx, dw])


def test_prelu_rejects_channel_weight_without_channel_axis():
    with pytest.raises(ValueError, match="1 element"):
        ref.prelu(np.ones(5), np.ones(3))
    with pytest.raises(ValueError, match="prelu"):
        ref.prelu(np.ones((2, 4)), np.ones(3))


# ----------------------------------------------------------------------------- dense
@pytest.mark.parametrize("xshape", [(2, 3, 5), (7, 5), (5,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_vs_torch_and_fd(torch, xshape, bias):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(xshape)
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(3) if bias else None
    y = ref.linear(x, w, b)
    dy = rng.standard_normal(y.shape)
    dx, dw, db = ref.linear_backward(dy, x, w, need_bias=bias)
    xt, wt = tt(torch, x), tt(torch, w)
    bt = tt(torch, b) if bias else None
    yt = torch.nn.functional.linear(xt, wt, bt)
    close(y, tn(yt))
    grads = tgrads(torch, yt, dy, [xt, wt] + ([bt] if bias else []))
    close(dx, grads[0])
    close(dw, grads[1])
    if bias:
        close(db, grads[2])
        assert_fd(ref.linear, [x.copy(), w.copy(), b.copy()], dy, [dx, dw, db])
    else:
        assert db is None
        assert_fd(ref.linear, [x.copy(), w.copy()], dy, [dx, dw])


def test_matmul_broadcasts_like_torch(torch):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((2, 1, 3, 4)), rng.standard_normal((5, 4, 2))
    close(ref.matmul(a, b), tn(torch.matmul(tt(torch, a), tt(torch, b))))
    v = rng.standard_normal(4)
    close(ref.matmul(a, v), np.matmul(a, v))


# ----------------------------------------------------------------------------- recurrent
RNN_KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def twin_forward(kind, x, h0, c0, w, lengths=None, reverse=False):
    """Run the twin of ``kind``; returns (outputs tuple, ctx)."""
    if kind == "lstm":
        y, h, c, ctx = ref.lstm(x, h0, c0, **w, lengths=lengths, reverse=reverse)
        return (y, h, c), ctx
    if kind == "gru":
        y, h, ctx = ref.gru(x, h0, **w, lengths=lengths, reverse=reverse)
        return (y, h), ctx
    y, h, ctx = ref.rnn(x, h0, **w, nonlinearity=kind[4:], lengths=lengths, reverse=reverse)
    return (y, h), ctx


def twin_backward(kind, ctx, douts):
    fn = {"lstm": ref.lstm_backward, "gru": ref.gru_backward}.get(kind, ref.rnn_backward)
    return fn(ctx, *douts)


def gates(kind):
    return {"lstm": 4, "gru": 3}.get(kind, 1)


def random_weights(rng, kind, I, H, bias=True):
    G = gates(kind) * H
    s = 1 / math.sqrt(H)
    w = dict(w_ih=rng.uniform(-s, s, (G, I)), w_hh=rng.uniform(-s, s, (G, H)))
    if bias:
        w.update(b_ih=rng.uniform(-s, s, G), b_hh=rng.uniform(-s, s, G))
    return w


def torch_module(torch, kind, I, H, bias):
    if kind == "lstm":
        cls = torch.nn.LSTM
    elif kind == "gru":
        cls = torch.nn.GRU
    else:
        return torch.nn.RNN(I, H, nonlinearity=kind[4:], bias=bias, bidirectional=True,
                            dtype=torch.float64)
    return cls(I, H, bias=bias, bidirectional=True, dtype=torch.float64)


def direction_weights(module, sfx, bias):
    """Twin weight dict of one direction (``sfx`` '' or '_reverse') of a torch layer."""
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
    keys = ["w_ih", "w_hh", "b_ih", "b_hh"]
    return {k: tn(getattr(module, f"{n}_l0{sfx}")) for k, n in zip(keys, names)}


@pytest.mark.parametrize("kind", RNN_KINDS)
@pytest.mark.parametrize("lengths", [None, [5, 2, 4, 1], [6, 3, 6, 2]])
@pytest.mark.parametrize("bias", [True, False])
def test_recurrent_vs_torch_bidirectional_packed(torch, kind, lengths, bias):
    """Both directions of a torch bidirectional layer (packed with enforce_sorted=False when
    lengths are given) equal the twin run forward and with reverse=True."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, B, I, H = 6, 4, 3, 5
    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    m = torch_module(torch, kind, I, H, bias)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2, B, H)) * 0.5
    c0 = rng.standard_normal((2, B, H)) * 0.5
    dy = rng.standard_normal((T, B, 2 * H))
    dh = rng.standard_normal((2, B, H))
    dc = rng.standard_normal((2, B, H))

    xt, h0t, c0t = tt(torch, x), tt(torch, h0), tt(torch, c0)
    hx = (h0t, c0t) if kind == "lstm" else h0t
    if lengths is None:
        out, hn = m(xt, hx)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        out_p, hn = m(packed, hx)
        out, _ = pad_packed_sequence(out_p, total_length=T)
    touts = (out,) + (hn if kind == "lstm" else (hn,))
    tdouts = (dy, dh, dc) if kind == "lstm" else (dy, dh)
    params = list(m.named_parameters())
    wrt = [xt, h0t] + ([c0t] if kind == "lstm" else []) + [p for _, p in params]
    tg = dict(zip(["x", "h0"] + (["c0"] if kind == "lstm" else []) + [n for n, _ in params],
                  tgrads(torch, touts, tdouts, wrt)))

    lens = None if lengths is None else np.array(lengths)
    grads_x = np.zeros_like(x)
    for d, sfx in enumerate(["", "_reverse"]):
        w = direction_weights(m, sfx, bias)
        outs, ctx = twin_forward(kind, x, h0[d], c0[d], w, lens, reverse=bool(d))
        close(outs[0], tn(out)[..., d * H:(d + 1) * H])
        close(outs[1], tn(touts[1])[d])
        if kind == "lstm":
            close(outs[2], tn(touts[2])[d])
        douts = (dy[..., d * H:(d + 1) * H], dh[d]) + ((dc[d],) if kind == "lstm" else ())
        g = twin_backward(kind, ctx, douts)
        grads_x += g["x"]
        close(g["h0"], tg["h0"][d])
        if kind == "lstm":
            close(g["c0"], tg["c0"][d])
        for key, name in [("w_ih", "weight_ih"), ("w_hh", "weight_hh"),
                          ("b_ih", "bias_ih"), ("b_hh", "bias_hh")]:
            if bias or key.startswith("w"):
                close(g[key], tg[f"{name}_l0{sfx}"])
            else:
                assert g[key] is None
    close(grads_x, tg["x"])


def torch_cell_loop_dh_norms(torch, kind, x, h0, c0, w, lengths, reverse, douts):
    """Unrolled torch loop over the functional cells with the same masking; returns the
    outputs and ||dL/dh_t|| per time index (h_t the state computed at step t)."""
    T, B, _ = x.shape
    wt = [tt(torch, w[k], grad=False) if k in w else None for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    valid = torch.as_tensor(np.arange(T)[:, None, None] < np.asarray(lengths)[None, :, None])
    h, c = tt(torch, h0), tt(torch, c0)  # h0 requires grad, so every h_t does
    xt = tt(torch, x, grad=False)
    ys, hnews = [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if kind == "lstm":
            h_new, c_new = torch.lstm_cell(xt[t], (h, c), *wt)
            c = torch.where(valid[t], c_new, c)
        elif kind == "gru":
            h_new = torch.gru_cell(xt[t], h, *wt)
        else:
            h_new = getattr(torch, f"{kind}_cell")(xt[t], h, *wt)
        h_new.retain_grad()
        hnews[t] = h_new
        h = torch.where(valid[t], h_new, h)
        ys[t] = torch.where(valid[t], h_new, torch.zeros_like(h_new))
    outs = (torch.stack(ys), h) + ((c,) if kind == "lstm" else ())
    loss = sum((o * torch.as_tensor(d)).sum() for o, d in zip(outs, douts))
    loss.backward()
    return outs, np.array([float(torch.linalg.norm(hn.grad)) for hn in hnews])


@pytest.mark.parametrize("kind", RNN_KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_dh_norms_vs_torch_unrolled(torch, kind, reverse):
    T, B, I, H = 6, 4, 3, 5
    rng = np.random.default_rng(8)
    w = random_weights(rng, kind, I, H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = np.array([5, 2, 6, 1])
    douts = (rng.standard_normal((T, B, H)), rng.standard_normal((B, H)),
             rng.standard_normal((B, H)))[:3 if kind == "lstm" else 2]
    outs, ctx = twin_forward(kind, x, h0, c0, w, lengths, reverse)
    g = twin_backward(kind, ctx, douts)
    touts, norms = torch_cell_loop_dh_norms(torch, kind, x, h0, c0, w, lengths, reverse, douts)
    for o, to in zip(outs, touts):
        close(o, tn(to))
    assert g["dh_norms"].shape == (T,)
    close(g["dh_norms"], norms)


@pytest.mark.parametrize("kind", RNN_KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_finite_differences(kind, reverse):
    T, B, I, H = 4, 3, 2, 3
    rng = np.random.default_rng(9)
    w = random_weights(rng, kind, I, H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, B, H)) * 0.5
    lengths = np.array([4, 1, 3])
    lstm = kind == "lstm"
    douts = (rng.standard_normal((T, B, H)), rng.standard_normal((B, H)),
             rng.standard_normal((B, H)))[:3 if lstm else 2]
    _, ctx = twin_forward(kind, x, h0, c0, w, lengths, reverse)
    g = twin_backward(kind, ctx, douts)
    names = ["x", "h0"] + (["c0"] if lstm else []) + ["w_ih", "w_hh", "b_ih", "b_hh"]
    inputs = [x.copy(), h0.copy()] + ([c0.copy()] if lstm else []) + \
        [w[k].copy() for k in ("w_ih", "w_hh", "b_ih", "b_hh")]

    def f(*args):
        a = dict(zip(names, args))
        wd = {k: a[k] for k in ("w_ih", "w_hh", "b_ih", "b_hh")}
        return twin_forward(kind, a["x"], a["h0"], a.get("c0"), wd, lengths, reverse)[0]

    assert_fd(f, inputs, douts, [g[n] for n in names])


@pytest.mark.parametrize("kind", RNN_KINDS)
def test_recurrent_cells_vs_torch(torch, kind):
    B, I, H = 3, 4, 5
    rng = np.random.default_rng(10)
    w = random_weights(rng, kind, I, H)
    x, h, c = rng.standard_normal((B, I)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    wt = [tt(torch, w[k], grad=False) for k in ("w_ih", "w_hh", "b_ih", "b_hh")]
    xt, ht, ct = (tt(torch, a, grad=False) for a in (x, h, c))
    if kind == "lstm":
        h1, c1 = ref.lstm_cell(x, h, c, **w)
        th1, tc1 = torch.lstm_cell(xt, (ht, ct), *wt)
        close(h1, tn(th1))
        close(c1, tn(tc1))
    elif kind == "gru":
        close(ref.gru_cell(x, h, **w), tn(torch.gru_cell(xt, ht, *wt)))
    else:
        close(ref.rnn_cell(x, h, **w, nonlinearity=kind[4:]),
              tn(getattr(torch, f"{kind}_cell")(xt, ht, *wt)))


@pytest.mark.parametrize("kind", RNN_KINDS)
def test_recurrent_empty_sizes(kind):
    rng = np.random.default_rng(11)
    w = random_weights(rng, kind, 2, 3)
    h0 = rng.standard_normal((4, 3))
    outs, ctx = twin_forward(kind, np.zeros((0, 4, 2)), h0, h0, w)
    assert outs[0].shape == (0, 4, 3)
    np.testing.assert_array_equal(outs[1], h0)
    g = twin_backward(kind, ctx, (np.zeros((0, 4, 3)),) + (None,) * (len(outs) - 1))
    assert g["x"].shape == (0, 4, 2) and g["dh_norms"].shape == (0,)
    assert not np.any(g["w_ih"]) and not np.any(g["h0"])
    outs, _ = twin_forward(kind, np.zeros((5, 0, 2)), np.zeros((0, 3)), np.zeros((0, 3)), w)
    assert outs[0].shape == (5, 0, 3)


def test_recurrent_rejects_bad_lengths():
    w = random_weights(np.random.default_rng(0), "gru", 2, 3)
    for lengths in ([0, 2], [1, 5], [1, 2, 3]):
        with pytest.raises(ValueError, match="lengths"):
            ref.gru(np.zeros((4, 2, 2)), None, **w, lengths=np.array(lengths))


# ----------------------------------------------------------------------------- attention
def sdpa_masks(rng, L, S):
    keep = rng.random((L, S)) < 0.7
    keep[:, 0] = True  # no fully masked rows here (torch gives NaN there)
    return {
        "none": (None, False),
        "bool": (keep, False),
        "bool_batched": (np.broadcast_to(keep, (2, 1, L, S)) & (rng.random((2, 1, L, S)) < 0.8)
                         | (np.arange(S) == 0), False),
        "float": (rng.standard_normal((L, S)), False),
        "causal": (None, True),
    }


@pytest.mark.parametrize("L,S", [(5, 7), (7, 5), (1, 3)])
@pytest.mark.parametrize("mask", ["none", "bool", "bool_batched", "float", "causal"])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_sdpa_vs_torch(torch, L, S, mask, scale):
    rng = np.random.default_rng(12)
    E, Ev = 4, 3
    q, k, v = (rng.standard_normal((2, 3, n, e)) for n, e in ((L, E), (S, E), (S, Ev)))
    attn_mask, is_causal = sdpa_masks(rng, L, S)[mask]
    out = ref.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, scale)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = ref.scaled_dot_product_attention_backward(dout, q, k, v, attn_mask, is_causal,
                                                           scale)
    qt, kt, vt = tt(torch, q), tt(torch, k), tt(torch, v)
    mt = None
    if attn_mask is not None:
        mt = torch.as_tensor(np.ascontiguousarray(attn_mask))
    ot = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mt,
                                                          is_causal=is_causal, scale=scale)
    close(out, tn(ot))
    for a, b in zip((dq, dk, dv), tgrads(torch, ot, dout, [qt, kt, vt])):
        close(a, b)


def test_sdpa_causal_combined_with_mask_is_logical_and(torch):
    rng = np.random.default_rng(13)
    q, k, v = (rng.standard_normal((2, 5, 4)) for _ in range(3))
    keep = rng.random((5, 5)) < 0.6
    keep[:, 0] = True
    out = ref.scaled_dot_product_attention(q, k, v, keep, is_causal=True)
    both = torch.as_tensor(keep & np.tril(np.ones((5, 5), bool)))
    ot = torch.nn.functional.scaled_dot_product_attention(
        *(tt(torch, a, grad=False) for a in (q, k, v)), attn_mask=both)
    close(out, tn(ot))


@pytest.mark.parametrize("mask", ["bool", "float", "causal", "bool_batched"])
def test_sdpa_finite_differences(mask):
    rng = np.random.default_rng(14)
    L, S = 3, 4
    q, k, v = (rng.standard_normal(s) for s in [(2, L, 3), (2, S, 3), (2, S, 2)])
    attn_mask, is_causal = sdpa_masks(rng, L, S)[mask]
    if mask == "bool_batched":
        attn_mask = attn_mask[0]  # (1, L, S) against batch (2,)
    dout = rng.standard_normal((2, L, 2))
    grads = ref.scaled_dot_product_attention_backward(dout, q, k, v, attn_mask, is_causal)
    f = lambda q, k, v: ref.scaled_dot_product_attention(q, k, v, attn_mask, is_causal)  # noqa
    assert_fd(f, [q.copy(), k.copy(), v.copy()], dout, grads)


def test_sdpa_broadcast_batch_dims_finite_differences():
    rng = np.random.default_rng(15)
    q = rng.standard_normal((2, 3, 4, 3))
    k, v = rng.standard_normal((3, 5, 3)), rng.standard_normal((1, 5, 2))
    dout = rng.standard_normal((2, 3, 4, 2))
    grads = ref.scaled_dot_product_attention_backward(dout, q, k, v)
    assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]
    assert_fd(ref.scaled_dot_product_attention, [q.copy(), k.copy(), v.copy()], dout, grads)


def test_sdpa_fully_masked_rows_are_zero(torch):
    rng = np.random.default_rng(16)
    q, k, v = (rng.standard_normal(s) for s in [(2, 4, 3), (2, 5, 3), (2, 5, 2)])
    keep = rng.random((4, 5)) < 0.7
    keep[:, 0] = True
    keep[2] = False  # query row 2 may attend to nothing
    for mask in (keep, np.where(keep, 0.0, -np.inf)):
        out = ref.scaled_dot_product_attention(q, k, v, mask)
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(out[:, 2], 0)
        ot = tn(torch.nn.functional.scaled_dot_product_attention(
            *(tt(torch, a, grad=False) for a in (q, k, v)), attn_mask=torch.as_tensor(mask)))
        rows = [0, 1, 3]
        close(out[:, rows], ot[:, rows])
        dout = rng.standard_normal(out.shape)
        dq, dk, dv = ref.scaled_dot_product_attention_backward(dout, q, k, v, mask)
        np.testing.assert_array_equal(dq[:, 2], 0)
        f = lambda q, k, v: ref.scaled_dot_product_attention(q, k, v, mask)  # noqa: E731
        assert_fd(f, [q.copy(), k.copy(), v.copy()], dout, [dq, dk, dv])


def mha_inputs(rng, L, S, B, E, N, bias=True):
    s = 1 / math.sqrt(E)
    return dict(
        query=rng.standard_normal((L, B, E)), key=rng.standard_normal((S, B, E)),
        value=rng.standard_normal((S, B, E)),
        in_proj_weight=rng.uniform(-s, s, (3 * E, E)),
        in_proj_bias=rng.uniform(-s, s, 3 * E) if bias else None,
        out_proj_weight=rng.uniform(-s, s, (E, E)),
        out_proj_bias=rng.uniform(-s, s, E) if bias else None,
    )


def mha_masks(rng, name, L, S, B, N):
    """(key_padding_mask, attn_mask, is_causal) in the MHA convention (True = blocked)."""
    kpm = rng.random((B, S)) < 0.4
    kpm[:, 0] = False
    blocked = rng.random((L, S)) < 0.4
    blocked[:, 0] = False
    return {
        "none": (None, None, False),
        "kpm_bool": (kpm, None, False),
        "attn_bool": (None, blocked, False),
        "attn_float_3d": (None, rng.standard_normal((B * N, L, S)), False),
        "both_bool": (kpm, blocked, False),
        "both_float": (np.where(kpm, -np.inf, 0.0), rng.standard_normal((L, S)), False),
        "causal": (None, None, True),
        "causal_kpm": (kpm, None, True),
    }[name]


MHA_MASKS = ["none", "kpm_bool", "attn_bool", "attn_float_3d", "both_bool", "both_float",
             "causal", "causal_kpm"]


@pytest.mark.parametrize("E,N", [(8, 2), (9, 3)])
@pytest.mark.parametrize("mask", MHA_MASKS)
@pytest.mark.parametrize("bias", [True, False])
def test_mha_vs_torch(torch, E, N, mask, bias):
    rng = np.random.default_rng(17)
    B = 3
    L, S = (6, 6) if mask.startswith("causal") else (5, 6)
    a = mha_inputs(rng, L, S, B, E, N, bias)
    kpm, attn_mask, is_causal = mha_masks(rng, mask, L, S, B, N)
    out, ctx = ref.multi_head_attention(**a, num_heads=N, key_padding_mask=kpm,
                                        attn_mask=attn_mask, is_causal=is_causal)
    dout = rng.standard_normal(out.shape)
    g = ref.multi_head_attention_backward(ctx, dout)

    ta = {k: (tt(torch, v) if v is not None else None) for k, v in a.items()}
    t_attn = attn_mask
    if is_causal:  # torch treats is_causal as a hint only: pass the mask explicitly
        t_attn = np.triu(np.ones((L, S), bool), 1)
    ot, wt = torch.nn.functional.multi_head_attention_forward(
        ta["query"], ta["key"], ta["value"], E, N, ta["in_proj_weight"], ta["in_proj_bias"],
        None, None, False, 0.0, ta["out_proj_weight"], ta["out_proj_bias"], training=False,
        key_padding_mask=None if kpm is None else torch.as_tensor(kpm),
        need_weights=True,
        attn_mask=None if t_attn is None else torch.as_tensor(t_attn),
        average_attn_weights=False)
    close(out, tn(ot))
    close(ctx["probs"].reshape(B, N, L, S), tn(wt))
    names = [k for k, v in ta.items() if v is not None]
    for name, tg in zip(names, tgrads(torch, ot, dout, [ta[n] for n in names])):
        close(g[name], tg)
    if not bias:
        assert g["in_proj_bias"] is None and g["out_proj_bias"] is None


@pytest.mark.parametrize("mask", ["none", "both_bool", "attn_float_3d", "causal_kpm"])
def test_mha_finite_differences(mask):
    rng = np.random.default_rng(18)
    L, S, B, E, N = 4, 4, 2, 4, 2
    a = mha_inputs(rng, L, S, B, E, N)
    kpm, attn_mask, is_causal = mha_masks(rng, mask, L, S, B, N)
    kw = dict(num_heads=N, key_padding_mask=kpm, attn_mask=attn_mask, is_causal=is_causal)
    out, ctx = ref.multi_head_attention(**a, **kw)
    dout = rng.standard_normal(out.shape)
    g = ref.multi_head_attention_backward(ctx, dout)
    names = list(a)
    f = lambda *args: ref.multi_head_attention(**dict(zip(names, args)), **kw)[0]  # noqa
    assert_fd(f, [a[n].copy() for n in names], dout, [g[n] for n in names])


def test_mha_fully_masked_query_rows_give_zero_heads():
    rng = np.random.default_rng(19)
    a = mha_inputs(rng, 3, 4, 2, 4, 2)
    blocked = np.zeros((3, 4), bool)
    blocked[1] = True
    out, ctx = ref.multi_head_attention(**a, num_heads=2, attn_mask=blocked)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(ctx["probs"][:, 1], 0)
    np.testing.assert_allclose(out[1], np.broadcast_to(a["out_proj_bias"], (2, 4)))


# ----------------------------------------------------------------------------- norm
@pytest.mark.parametrize("shape,normalized", [((3, 4, 5), 5), ((3, 4, 5), (4, 5)), ((7,), 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_vs_torch_and_fd(torch, shape, normalized, affine):
    rng = np.random.default_rng(20)
    nshape = (normalized,) if isinstance(normalized, int) else normalized
    x = rng.standard_normal(shape) * 3 + 1
    w = rng.standard_normal(nshape) if affine else None
    b = rng.standard_normal(nshape) if affine else None
    y, ctx = ref.layer_norm(x, normalized, w, b)
    dy = rng.standard_normal(shape)
    dx, dw, db = ref.layer_norm_backward(ctx, dy)
    xt = tt(torch, x)
    wt, bt = (tt(torch, w), tt(torch, b)) if affine else (None, None)
    yt = torch.nn.functional.layer_norm(xt, nshape, wt, bt)
    close(y, tn(yt))
    tg = tgrads(torch, yt, dy, [xt] + ([wt, bt] if affine else []))
    close(dx, tg[0])
    if affine:
        close(dw, tg[1])
        close(db, tg[2])
        f = lambda x, w, b: ref.layer_norm(x, normalized, w, b)[0]  # noqa: E731
        assert_fd(f, [x.copy(), w.copy(), b.copy()], dy, [dx, dw, db])
    else:
        assert dw is None and db is None
        assert_fd(lambda x: ref.layer_norm(x, normalized)[0], [x.copy()], dy, [dx])


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_vs_torch(torch, shape, training, affine):
    rng = np.random.default_rng(21)
    C = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    w = rng.standard_normal(C) if affine else None
    b = rng.standard_normal(C) if affine else None
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    rm_ours, rv_ours = rm.copy(), rv.copy()
    y, ctx = ref.batch_norm(x, rm_ours, rv_ours, w, b, training=training, momentum=0.3)
    dy = rng.standard_normal(shape)
    dx, dw, db = ref.batch_norm_backward(ctx, dy)
    xt = tt(torch, x)
    wt, bt = (tt(torch, w), tt(torch, b)) if affine else (None, None)
    yt = torch.nn.functional.batch_norm(xt, rm_t, rv_t, wt, bt, training=training, momentum=0.3)
    close(y, tn(yt))
    close(rm_ours, rm_t.numpy())
    close(rv_ours, rv_t.numpy())
    if not training:
        np.testing.assert_array_equal(rm_ours, rm)
    tg = tgrads(torch, yt, dy, [xt] + ([wt, bt] if affine else []))
    close(dx, tg[0])
    if affine:
        close(dw, tg[1])
        close(db, tg[2])
    else:
        assert dw is None and db is None


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_finite_differences(shape, training):
    rng = np.random.default_rng(22)
    C = shape[1]
    x, w, b = rng.standard_normal(shape), rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    stats = (None, None) if training else (rm, rv)
    y, ctx = ref.batch_norm(x, *stats, w, b, training=training)
    dy = rng.standard_normal(shape)
    grads = ref.batch_norm_backward(ctx, dy)
    f = lambda x, w, b: ref.batch_norm(x, *stats, w, b, training=training)[0]  # noqa: E731
    assert_fd(f, [x.copy(), w.copy(), b.copy()], dy, grads)


def test_batch_norm_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value"):
        ref.batch_norm(np.ones((1, 3)), None, None)
    y, _ = ref.batch_norm(np.ones((1, 3)), np.zeros(3), np.ones(3), training=False)
    assert y.shape == (1, 3)


# ----------------------------------------------------------------------------- transformer
@pytest.mark.parametrize("max_len,d", [(6, 7), (5, 8), (1, 1)])
def test_sinusoidal_positional_encoding(max_len, d):
    pe = ref.sinusoidal_positional_encoding(max_len, d)
    assert pe.shape == (max_len, d) and pe.dtype == np.float32
    expected = np.zeros((max_len, d))
    for pos in range(max_len):
        for j in range(d):
            angle = pos / 10000 ** ((j - j % 2) / d)
            expected[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    close(ref.sinusoidal_positional_encoding(max_len, d, np.float64), expected)
    close(pe, expected, "f32")


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward_vs_torch_and_fd(torch, activation, bias):
    rng = np.random.default_rng(23)
    E, F = 5, 7
    x = rng.standard_normal((2, 3, E))
    w1, w2 = rng.standard_normal((F, E)) * 0.5, rng.standard_normal((E, F)) * 0.5
    b1 = rng.standard_normal(F) if bias else None
    b2 = rng.standard_normal(E) if bias else None
    y, ctx = ref.feed_forward(x, w1, b1, w2, b2, activation)
    dy = rng.standard_normal(y.shape)
    g = ref.feed_forward_backward(ctx, dy)
    T = {k: tt(torch, v) for k, v in dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2).items()
         if v is not None}
    act = getattr(torch.nn.functional, activation)
    Fl = torch.nn.functional.linear
    yt = Fl(act(Fl(T["x"], T["w1"], T.get("b1"))), T["w2"], T.get("b2"))
    close(y, tn(yt))
    names = list(T)
    for n, tg in zip(names, tgrads(torch, yt, dy, [T[n] for n in names])):
        close(g[n], tg)
    if not bias:
        assert g["b1"] is None and g["b2"] is None
    inputs = dict(x=x, w1=w1, b1=b1, w2=w2, b2=b2)
    f = lambda *args: ref.feed_forward(**{**inputs, **dict(zip(names, args))},  # noqa: E731
                                       activation=activation)[0]
    assert_fd(f, [inputs[n].copy() for n in names], dy, [g[n] for n in names])


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_vs_torch(torch, padding_idx):
    rng = np.random.default_rng(24)
    V, E = 7, 5
    ids = np.array([[0, 2, 6, 2], [1, 1, 2, 6], [3, 0, 0, 0]], dtype=np.int32)
    w = rng.standard_normal((V, E))
    y = ref.embedding(ids, w, padding_idx)
    dy = rng.standard_normal(y.shape)
    dw = ref.embedding_backward(dy, ids, V, padding_idx)
    wt = tt(torch, w)
    yt = torch.nn.functional.embedding(torch.as_tensor(ids.astype(np.int64)), wt, padding_idx)
    close(y, tn(yt))
    close(dw, tgrads(torch, yt, dy, [wt])[0])
    if padding_idx is not None:
        assert not np.any(dw[padding_idx])
    f = lambda w: ref.embedding(ids, w, padding_idx)  # noqa: E731
    assert_fd(f, [w.copy()], dy, [dw if padding_idx is None else None])


def test_dropout():
    x = np.random.default_rng(25).standard_normal((200, 300)).astype(np.float32)
    y, mask = ref.dropout(x, 0.3, np.random.default_rng(5))
    assert y.dtype == np.float32 and mask.dtype == bool
    assert abs(mask.mean() - 0.7) < 0.01
    np.testing.assert_allclose(y, np.where(mask, x / np.float32(0.7), 0), rtol=1e-6)
    y2, mask2 = ref.dropout(x, 0.3, np.random.default_rng(5))
    np.testing.assert_array_equal(mask, mask2)
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(ref.dropout(x, 0.0, np.random.default_rng(0))[0], x)
    y1, m1 = ref.dropout(x, 1.0, np.random.default_rng(0))
    assert not np.any(y1) and not np.any(m1)
    with pytest.raises(ValueError):
        ref.dropout(x, 1.5, np.random.default_rng(0))


# ----------------------------------------------------------------------------- losses
def ce_case(rng, name):
    """(logits, target, ignore_index)."""
    if name == "2d":
        t = rng.integers(0, 5, 7)
        t[[1, 4]] = -100
        return rng.standard_normal((7, 5)), t, -100
    if name == "spatial":
        t = rng.integers(0, 4, (3, 2, 3))
        t[0, 1, 2] = t[2, 0, 0] = -100
        return rng.standard_normal((3, 4, 2, 3)), t, -100
    if name == "ignore_class":
        return rng.standard_normal((6, 3)), np.array([0, 2, 1, 2, 0, 1]), 2
    return rng.standard_normal(5), np.array(3), -100  # "unbatched"


CE_CASES = ["2d", "spatial", "ignore_class", "unbatched"]


@pytest.mark.parametrize("case", CE_CASES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.25])
def test_cross_entropy_vs_torch_and_fd(torch, case, reduction, smoothing):
    rng = np.random.default_rng(26)
    logits, target, ii = ce_case(rng, case)
    kw = dict(ignore_index=ii, reduction=reduction, label_smoothing=smoothing)
    loss = ref.cross_entropy(logits, target, **kw)
    dloss = rng.standard_normal(np.shape(loss))
    dlogits = ref.cross_entropy_backward(dloss, logits, target, **kw)
    assert dlogits.shape == logits.shape
    lt = tt(torch, logits)
    loss_t = torch.nn.functional.cross_entropy(lt, torch.as_tensor(target.astype(np.int64)),
                                               **kw)
    close(loss, tn(loss_t))
    close(dlogits, tgrads(torch, loss_t, dloss, [lt])[0])
    assert_fd(lambda z: ref.cross_entropy(z, target, **kw), [logits.copy()], dloss, [dlogits])


def test_cross_entropy_all_ignored_matches_torch(torch):
    logits = np.random.default_rng(27).standard_normal((3, 4))
    target = np.full(3, -100)
    assert np.isnan(ref.cross_entropy(logits, target, label_smoothing=0.1))
    np.testing.assert_array_equal(ref.cross_entropy_backward(1.0, logits, target), 0)
    assert ref.cross_entropy(logits, target, reduction="sum") == 0
    lt = tt(torch, logits)
    torch.nn.functional.cross_entropy(lt, torch.as_tensor(target), label_smoothing=0.1).backward()
    np.testing.assert_array_equal(lt.grad.numpy(), 0)


def test_cross_entropy_rejects_bad_targets():
    with pytest.raises(ValueError, match="class indices"):
        ref.cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integer"):
        ref.cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_vs_torch_and_fd(torch, reduction):
    rng = np.random.default_rng(28)
    x, t = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    loss = ref.mse_loss(x, t, reduction)
    dloss = rng.standard_normal(np.shape(loss))
    dx = ref.mse_loss_backward(dloss, x, t, reduction)
    xt = tt(torch, x)
    lt = torch.nn.functional.mse_loss(xt, tt(torch, t, grad=False), reduction=reduction)
    close(loss, tn(lt))
    close(dx, tgrads(torch, lt, dloss, [xt])[0])
    assert_fd(lambda x: ref.mse_loss(x, t, reduction), [x.copy()], dloss, [dx])


# ----------------------------------------------------------------------------- optim
def grad_sequence(shape, steps=5, seed=29):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(steps)]


def run_torch_optimizer(torch, cls, p0, grads, **kw):
    p = tt(torch, p0)
    opt = cls([p], foreach=False, **kw)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    return tn(p), {k: v.numpy() for k, v in opt.state[p].items() if torch.is_tensor(v)
                   and v.shape == p.shape}


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
    dict(lr=0.1, momentum=0.5, maximize=True),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS, ids=str)
def test_sgd_vs_torch(torch, cfg):
    p0 = np.random.default_rng(30).standard_normal((3, 4))
    grads = grad_sequence(p0.shape)
    tp, state = run_torch_optimizer(torch, torch.optim.SGD, p0, grads, **cfg)
    p, buf = p0.copy(), None
    for g in grads:
        buf = ref.sgd_step(p, g, buf, **cfg)
    close(p, tp)
    if cfg.get("momentum", 0):
        close(buf, state["momentum_buffer"])
    else:
        assert buf is None


ADAM_CONFIGS = [
    dict(),
    dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1),
    dict(lr=0.01, amsgrad=True, weight_decay=0.05),
    dict(lr=0.01, weight_decay=0.05, decoupled=True),
    dict(lr=0.01, amsgrad=True, weight_decay=0.1, decoupled=True),
]


@pytest.mark.parametrize("cfg", ADAM_CONFIGS, ids=str)
def test_adam_vs_torch(torch, cfg):
    p0 = np.random.default_rng(31).standard_normal((3, 4))
    grads = grad_sequence(p0.shape)
    tcfg = {k: v for k, v in cfg.items() if k != "decoupled"}
    cls = torch.optim.AdamW if cfg.get("decoupled") else torch.optim.Adam
    tcfg.setdefault("weight_decay", 0.0)
    tp, state = run_torch_optimizer(torch, cls, p0, grads, **tcfg)
    p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    vmax = np.zeros_like(p0) if cfg.get("amsgrad") else None
    for t, g in enumerate(grads, start=1):
        ref.adam_step(p, g, m, v, vmax, t, **cfg)
    close(p, tp)
    close(m, state["exp_avg"])
    close(v, state["exp_avg_sq"])
    if vmax is not None:
        close(vmax, state["max_exp_avg_sq"])


RMSPROP_CONFIGS = [
    dict(),
    dict(lr=0.01, alpha=0.9, centered=True),
    dict(lr=0.01, momentum=0.9),
    dict(lr=0.005, alpha=0.95, eps=1e-6, weight_decay=0.1, momentum=0.5, centered=True),
]


@pytest.mark.parametrize("cfg", RMSPROP_CONFIGS, ids=str)
def test_rmsprop_vs_torch(torch, cfg):
    p0 = np.random.default_rng(32).standard_normal((3, 4))
    grads = grad_sequence(p0.shape)
    tp, state = run_torch_optimizer(torch, torch.optim.RMSprop, p0, grads, **cfg)
    p, sq = p0.copy(), np.zeros_like(p0)
    gavg = np.zeros_like(p0) if cfg.get("centered") else None
    buf = np.zeros_like(p0) if cfg.get("momentum", 0) > 0 else None
    for g in grads:
        ref.rmsprop_step(p, g, sq, gavg, buf, **cfg)
    close(p, tp)
    close(sq, state["square_avg"])
    if gavg is not None:
        close(gavg, state["grad_avg"])
    if buf is not None:
        close(buf, state["momentum_buffer"])


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_clip_grad_norm_vs_torch(torch, max_norm, norm_type):
    rng = np.random.default_rng(33)
    grads = [rng.standard_normal(s) for s in [(3, 4), (5,), (2, 2, 2)]]
    params = []
    for g in grads:
        p = tt(torch, np.zeros(g.shape))
        p.grad = torch.tensor(g)
        params.append(p)
    total_t = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type, foreach=False)
    ours = [g.copy() for g in grads]
    total = ref.clip_grad_norm(ours, max_norm, norm_type)
    assert isinstance(total, float)
    close(total, total_t.item())
    for g, p in zip(ours, params):
        close(g, p.grad.numpy())
    assert ref.clip_grad_norm([], 1.0) == 0.0


def test_clip_grad_value_vs_torch(torch):
    rng = np.random.default_rng(34)
    grads = [rng.standard_normal((4, 5)), rng.standard_normal(3)]
    params = []
    for g in grads:
        p = tt(torch, np.zeros(g.shape))
        p.grad = torch.tensor(g)
        params.append(p)
    torch.nn.utils.clip_grad_value_(params, 0.4, foreach=False)
    ours = [g.copy() for g in grads]
    ref.clip_grad_value(ours, 0.4)
    for g, p in zip(ours, params):
        close(g, p.grad.numpy())


def test_optimizer_steps_keep_float32():
    p = np.ones((2, 3), np.float32)
    g = np.full((2, 3), 0.5, np.float32)
    states = [np.zeros_like(p) for _ in range(3)]
    ref.adam_step(p, g, states[0], states[1], states[2], 1, amsgrad=True, weight_decay=0.1)
    ref.rmsprop_step(p, g, np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), momentum=0.9,
                     centered=True)
    buf = ref.sgd_step(p, g, None, 0.1, momentum=0.9)
    assert p.dtype == np.float32 and buf.dtype == np.float32
    assert all(s.dtype == np.float32 for s in states)


# ----------------------------------------------------------------------------- init
@pytest.mark.parametrize("nl,param", [("linear", None), ("conv2d", None), ("sigmoid", None),
                                      ("tanh", None), ("relu", None), ("leaky_relu", None),
                                      ("leaky_relu", 0), ("leaky_relu", 0.2), ("selu", None)])
def test_calculate_gain_vs_torch(torch, nl, param):
    assert ref.calculate_gain(nl, param) == pytest.approx(torch.nn.init.calculate_gain(nl, param))


@pytest.mark.parametrize("shape", [(3, 4), (5, 2, 3, 4), (7, 1, 9)])
def test_fans_vs_torch(torch, shape):
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert ref.calculate_fan_in_and_fan_out(shape) == tuple(expected)
    with pytest.raises(ValueError):
        ref.calculate_fan_in_and_fan_out((5,))


def test_initializer_distributions():
    shape = (300, 200)
    fan_in, fan_out = 200, 300

    def rng():
        return np.random.default_rng(35)

    w = ref.xavier_uniform(shape, gain=2.0, rng=rng())
    a = 2.0 * math.sqrt(6 / (fan_in + fan_out))
    assert w.dtype == np.float32 and w.shape == shape
    assert np.abs(w).max() <= a and np.abs(w).max() > 0.99 * a
    np.testing.assert_array_equal(w, ref.xavier_uniform(shape, gain=2.0, rng=rng()))
    w = ref.xavier_normal(shape, rng=rng(), dtype=np.float64)
    assert w.dtype == np.float64
    assert w.std() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    w = ref.kaiming_uniform(shape, rng=rng())
    bound = math.sqrt(3) * math.sqrt(2) / math.sqrt(fan_in)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    w = ref.kaiming_normal(shape, mode="fan_out", nonlinearity="relu", rng=rng())
    assert w.std() == pytest.approx(math.sqrt(2) / math.sqrt(fan_out), rel=0.02)
    w = ref.kaiming_uniform(shape, a=0.2, nonlinearity="leaky_relu", rng=rng())
    bound = math.sqrt(3) * math.sqrt(2 / 1.04) / math.sqrt(fan_in)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound


@pytest.mark.parametrize("shape", [(4, 6), (6, 4), (5, 5), (3, 2, 4)])
def test_orthogonal(shape):
    w = ref.orthogonal(shape, gain=1.5, rng=np.random.default_rng(36), dtype=np.float64)
    assert w.shape == shape
    m = w.reshape(shape[0], -1)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    close(gram, 2.25 * np.eye(gram.shape[0]), "fd")


# ----------------------------------------------------------------------------- dtypes
def _float32_outputs():
    """(name, callable(dtype) -> list of arrays) covering every op family."""
    def rnd(dtype, *shape, seed=0):
        return np.random.default_rng(seed).standard_normal(shape).astype(dtype)

    def recurrent(kind):
        def run(dt):
            w = {k: v.astype(dt) for k, v in
                 random_weights(np.random.default_rng(1), kind, 3, 4).items()}
            x, h0 = rnd(dt, 5, 2, 3), rnd(dt, 2, 4)
            outs, ctx = twin_forward(kind, x, h0, h0, w, np.array([5, 3]), True)
            g = twin_backward(kind, ctx, tuple(np.ones_like(o) for o in outs))
            return list(outs) + [v for v in g.values() if v is not None]
        return run

    def sdpa(dt):
        q, k, v = rnd(dt, 2, 4, 3), rnd(dt, 2, 5, 3, seed=1), rnd(dt, 2, 5, 2, seed=2)
        out = ref.scaled_dot_product_attention(q, k, v, is_causal=True)
        return [out] + list(ref.scaled_dot_product_attention_backward(
            np.ones_like(out), q, k, v, rnd(dt, 4, 5)))

    def mha(dt):
        a = mha_inputs(np.random.default_rng(2), 3, 4, 2, 4, 2)
        a = {k: v.astype(dt) for k, v in a.items()}
        out, ctx = ref.multi_head_attention(**a, num_heads=2,
                                            key_padding_mask=np.array([[0, 0, 1, 0]] * 2, bool))
        return [out] + list(ref.multi_head_attention_backward(ctx, np.ones_like(out)).values())

    def norms(dt):
        x = rnd(dt, 4, 3, 5)
        y, ctx = ref.layer_norm(x, 5, rnd(dt, 5), rnd(dt, 5))
        rm, rv = np.zeros(3, dt), np.ones(3, dt)
        y2, ctx2 = ref.batch_norm(x, rm, rv, rnd(dt, 3), rnd(dt, 3))
        return [y, *ref.layer_norm_backward(ctx, y), y2, rm, rv,
                *ref.batch_norm_backward(ctx2, y2)]

    def ffn(dt):
        y, ctx = ref.feed_forward(rnd(dt, 2, 4), rnd(dt, 6, 4), rnd(dt, 6), rnd(dt, 4, 6),
                                  rnd(dt, 4), "gelu")
        return [y] + list(ref.feed_forward_backward(ctx, y).values())

    def losses(dt):
        z, t = rnd(dt, 4, 3), np.array([0, 2, -100, 1])
        x = rnd(dt, 3, 2)
        return [np.asarray(ref.cross_entropy(z, t, label_smoothing=0.1)),
                ref.cross_entropy_backward(dt(1), z, t, label_smoothing=0.1),
                np.asarray(ref.mse_loss(x, x * 2)), ref.mse_loss_backward(dt(1), x, x * 2)]

    def misc(dt):
        x, w = rnd(dt, 3, 4), rnd(dt, 5, 4)
        ids = np.array([1, 0, 4])
        return [ref.linear(x, w, rnd(dt, 5)), *ref.linear_backward(rnd(dt, 3, 5), x, w),
                *ref.prelu_backward(x, x, rnd(dt, 4)), ref.embedding(ids, w),
                ref.embedding_backward(rnd(dt, 3, 4), ids, 5),
                ref.sinusoidal_positional_encoding(4, 6, dt)]

    return [("rnn", recurrent("rnn_tanh")), ("lstm", recurrent("lstm")),
            ("gru", recurrent("gru")), ("sdpa", sdpa), ("mha", mha), ("norms", norms),
            ("ffn", ffn), ("losses", losses), ("misc", misc)]


@pytest.mark.parametrize("name,run", _float32_outputs(), ids=[n for n, _ in _float32_outputs()])
def test_float32_in_float32_out(name, run):
    out32, out64 = run(np.float32), run(np.float64)
    for a, b in zip(out32, out64):
        assert a.dtype == np.float32, name
        assert b.dtype == np.float64, name
        close(a, b, "f32")
