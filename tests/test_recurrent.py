"""Recurrent layers (RNN tanh/relu, LSTM, GRU) with backprop through time.

The C++ kernels (``seqcore.functional``) against their NumPy twins (``seqcore.reference``)
and float64 central finite differences; the layers (``seqcore.nn``) against PyTorch
(modules with a loaded torch state_dict, packed sequences, cells); truncated BPTT by carried
state; bitwise thread-count invariance; inference mode; bad input; state_dict.

Float comparisons use the ("recurrent", dtype) tolerance of conftest.TOLERANCES, norm-wise
per array (``scale`` = the largest |element| of the expected array): errors compound over
the steps and the gradient sums cancel, so an element-wise relative bound would be
meaningless for the small elements of an array. float32 results are compared with a float64
evaluation (twin or PyTorch) of the same float32 values.
"""
import math

import numpy as np
import pytest

from seqcore import functional as F
from seqcore import nn
from seqcore import reference as R

from conftest import assert_close, assert_fd, assert_thread_invariant, check_output

KINDS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}
WKEYS = ("w_ih", "w_hh", "b_ih", "b_hh")
FLOATS = (np.float32, np.float64)
# Not multiples of the units per gate block, U = NR / G (NR = 64 float32 / 32 float64 columns
# on AVX-512, 16 / 8 on AVX2, 4 scalar; G = 1, 4, 3 gates): 65 crosses even the widest block.
HIDDEN = (1, 7, 13, 17, 33, 65)


# ----------------------------------------------------------------------------- helpers
def make_weights(rng, kind, I, H, bias=True, dtype=np.float64):
    """PyTorch-style U(-1/sqrt(H), 1/sqrt(H)) weights of one layer and direction."""
    G, s = GATES[kind] * H, 1.0 / math.sqrt(H)
    w = {"w_ih": rng.uniform(-s, s, (G, I)), "w_hh": rng.uniform(-s, s, (G, H)),
         "b_ih": rng.uniform(-s, s, G) if bias else None, "b_hh": rng.uniform(-s, s, G) if bias else None}
    return {k: None if v is None else v.astype(dtype) for k, v in w.items()}


def as64(v):
    return None if v is None else np.asarray(v, np.float64)


def forward(mod, kind, x, h0, c0, w, lengths=None, reverse=False, **kw):
    """Run ``mod.rnn/lstm/gru`` (mod is F or R); returns (outputs tuple, ctx) with outputs
    (y, h_n) or, for LSTM, (y, h_n, c_n)."""
    w = {k: w.get(k) for k in WKEYS}
    if kind == "lstm":
        y, h, c, ctx = mod.lstm(x, h0, c0, **w, lengths=lengths, reverse=reverse, **kw)
        return (y, h, c), ctx
    if kind == "gru":
        y, h, ctx = mod.gru(x, h0, **w, lengths=lengths, reverse=reverse, **kw)
        return (y, h), ctx
    y, h, ctx = mod.rnn(x, h0, **w, nonlinearity=kind[4:], lengths=lengths, reverse=reverse, **kw)
    return (y, h), ctx


def backward(mod, kind, ctx, douts, **kw):
    """``douts`` = (dy, dh_n) or, for LSTM, (dy, dh_n, dc_n)."""
    fn = {"lstm": mod.lstm_backward, "gru": mod.gru_backward}.get(kind, mod.rnn_backward)
    return fn(ctx, *douts, **kw)


def close(actual, expected, dtype, what):
    """Norm-wise comparison: atol scaled by max |expected| (1 for an all-zero array)."""
    e = np.asarray(expected, np.float64)
    m = float(np.max(np.abs(e), initial=0.0))
    assert_close(actual, expected, "recurrent", dtype, scale=m if m > 0 else 1.0, what=what)


def grad_names(kind):
    return ["x", "h0"] + (["c0"] if kind == "lstm" else []) + list(WKEYS)


def padded(lengths, T, B):
    """Boolean (T, B): step t is past the end of sequence b."""
    if lengths is None:
        return np.zeros((T, B), bool)
    return np.arange(T)[:, None] >= np.asarray(lengths)[None, :]


# ----------------------------------------------------------------------------- 1. vs twin
# (label, I, B, T, bias, lengths, reverse, initial state given, which output grads)
# douts: 'all' = dy, dh_n (, dc_n); 'dy' = dy only; 'state' = dy None; 'h' = dy, dh_n, no dc_n.
SCENARIOS = [
    ("plain", 5, 3, 6, True, None, False, True, "all"),
    ("single_step", 1, 1, 1, True, None, False, False, "all"),
    ("lengths_nobias", 5, 3, 6, False, [6, 1, 3], False, True, "all"),
    ("lengths_reverse", 1, 3, 6, True, [2, 6, 1], True, True, "all"),
    ("reverse_dy_only", 5, 3, 6, True, None, True, False, "dy"),
    ("reverse_lengths_B1_dy_none", 5, 1, 6, False, [4], True, True, "state"),
    ("T1_lengths", 1, 3, 1, True, [1, 1, 1], False, True, "all"),
    ("lengths_no_dc", 5, 3, 6, True, [1, 6, 4], False, True, "h"),
    ("lengths_all_T_reverse", 5, 3, 6, True, [6, 6, 6], True, True, "all"),
]


def _douts(rng, kind, T, B, H, dtype, mode):
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    dh = rng.standard_normal((B, H)).astype(dtype)
    dc = rng.standard_normal((B, H)).astype(dtype)
    d = {"all": (dy, dh, dc), "dy": (dy, None, None), "state": (None, dh, dc), "h": (dy, dh, None)}[mode]
    return d if kind == "lstm" else d[:2]


@pytest.mark.parametrize("H", HIDDEN)
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_functional_matches_twin(kind, dtype, H):
    rng = np.random.default_rng(1000 + 10 * H + GATES[kind])
    for label, I, B, T, bias, lengths, reverse, state, dmode in SCENARIOS:
        case = f"{kind} {np.dtype(dtype).name} H={H} {label} (I={I}, B={B}, T={T})"
        w = make_weights(rng, kind, I, H, bias, dtype)
        x = (0.5 * rng.standard_normal((T, B, I))).astype(dtype)
        h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if state else None
        c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if state and kind == "lstm" else None
        # any integer dtype for lengths
        lens = None if lengths is None else np.array(lengths, np.int32 if reverse else np.int64)
        outs, ctx = forward(F, kind, x, h0, c0, w, lens, reverse)
        with np.errstate(all="ignore"):
            eouts, ectx = forward(R, kind, as64(x), as64(h0), as64(c0),
                                  {k: as64(v) for k, v in w.items()}, lens, reverse)
        assert len(outs) == len(eouts)
        for j, (a, e) in enumerate(zip(outs, eouts)):
            check_output(a, dtype, e.shape, f"{case}: output {j}")
            close(a, e, dtype, f"{case}: output {j}")
        pad = padded(lens, T, B)
        assert not np.any(outs[0][pad]), f"{case}: outputs past the end of a sequence are not 0"

        douts = _douts(rng, kind, T, B, H, dtype, dmode)
        g = backward(F, kind, ctx, douts)
        with np.errstate(all="ignore"):
            eg = backward(R, kind, ectx, [as64(d) for d in douts])
        assert set(g) == set(eg), f"{case}: gradient keys {sorted(g)} != {sorted(eg)}"
        for k, e in eg.items():
            if e is None:
                assert g[k] is None, f"{case}: gradient {k!r} should be None (no bias)"
                continue
            check_output(g[k], dtype, e.shape, f"{case}: gradient {k}")
            close(g[k], e, dtype, f"{case}: gradient {k}")


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_backward_without_input_grad(kind, dtype):
    """need_input_grad=False returns 'x' None and every other gradient unchanged (bitwise)."""
    rng = np.random.default_rng(2)
    T, B, I, H = 5, 3, 5, 13
    w = make_weights(rng, kind, I, H, True, dtype)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    lens = np.array([3, 5, 1])
    for reverse in (False, True):
        _, ctx = forward(F, kind, x, None, None, w, lens, reverse)
        douts = _douts(rng, kind, T, B, H, dtype, "all")
        full = backward(F, kind, ctx, douts)
        part = backward(F, kind, ctx, douts, need_input_grad=False)
        assert part["x"] is None
        for k in full:
            if k != "x":
                np.testing.assert_array_equal(part[k], full[k], err_msg=f"{kind} reverse={reverse} {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_functional_matches_twin_medium_sizes(kind, num_threads):
    """Sizes where the batch and gate columns are split into several tiles and threads
    (odd B, H and I around the tile widths), with 1 and 2 threads."""
    rng = np.random.default_rng(28)
    for dtype in FLOATS:
        for (T, B, I, H) in [(5, 16, 64, 97), (3, 37, 129, 65)]:
            for lengths, reverse in [(None, False), (rng.integers(1, T + 1, B), True)]:
                case = f"{kind} {np.dtype(dtype).name} T={T} B={B} I={I} H={H} reverse={reverse}"
                w = make_weights(rng, kind, I, H, True, dtype)
                x = (0.5 * rng.standard_normal((T, B, I))).astype(dtype)
                h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
                c0 = h0[::-1].copy() if kind == "lstm" else None
                outs, ctx = forward(F, kind, x, h0, c0, w, lengths, reverse)
                w64 = {k: as64(v) for k, v in w.items()}
                eouts, ectx = forward(R, kind, as64(x), as64(h0), as64(c0), w64, lengths, reverse)
                for j, (a, e) in enumerate(zip(outs, eouts)):
                    close(a, e, dtype, f"{case}: output {j}")
                douts = _douts(rng, kind, T, B, H, dtype, "all")
                g = backward(F, kind, ctx, douts)
                eg = backward(R, kind, ectx, [as64(d) for d in douts])
                for k, e in eg.items():
                    close(g[k], e, dtype, f"{case}: gradient {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_any_strides_and_array_likes(kind):
    """Strided views, Fortran-ordered weights and lists give the same bits as C-contiguous
    arrays; the caller's arrays are not modified."""
    rng = np.random.default_rng(3)
    T, B, I, H = 4, 3, 5, 7
    w = make_weights(rng, kind, I, H, True, np.float64)
    big = rng.standard_normal((2 * T, B, 2 * I))
    x_view = big[::2, :, ::2]
    x = np.ascontiguousarray(x_view)
    h0 = rng.standard_normal((B, H))
    c0 = rng.standard_normal((B, H)) if kind == "lstm" else None
    lens = [4, 1, 2]
    ref_outs, ref_ctx = forward(F, kind, x, h0, c0, w, np.array(lens), True)
    wf = {k: np.asfortranarray(v) for k, v in w.items()}
    saved = big.copy()
    outs, ctx = forward(F, kind, x_view, h0.T.copy().T, c0, wf, lens, True)
    np.testing.assert_array_equal(big, saved)
    for a, e in zip(outs, ref_outs):
        np.testing.assert_array_equal(a, e)
    douts = _douts(rng, kind, T, B, H, np.float64, "all")
    dstrided = tuple(np.asfortranarray(d) for d in douts)
    g, eg = backward(F, kind, ctx, dstrided), backward(F, kind, ref_ctx, douts)
    for k in eg:
        np.testing.assert_array_equal(g[k], eg[k], err_msg=k)


@pytest.mark.parametrize("kind", ("rnn_tanh", "lstm", "gru"))
def test_large_outputs_from_reused_buffers(kind):
    """Outputs of >= 1 MiB come from a pool of reused blocks: with lengths (padding must be
    written as 0) after unrelated calls of the same size, results still match the twin."""
    rng = np.random.default_rng(4)
    T, B, I, H = 16, 64, 8, 256
    w = make_weights(rng, kind, I, H, True, np.float32)
    for _ in range(2):  # leave non-zero blocks in the pool
        junk = forward(F, kind, rng.standard_normal((T, B, I)).astype(np.float32), None, None, w)
        backward(F, kind, junk[1], _douts(rng, kind, T, B, H, np.float32, "all"))
        del junk
    x = (0.5 * rng.standard_normal((T, B, I))).astype(np.float32)
    lens = rng.integers(1, T + 1, B)
    outs, ctx = forward(F, kind, x, None, None, w, lens, True)
    eouts, ectx = forward(R, kind, as64(x), None, None, {k: as64(v) for k, v in w.items()}, lens, True)
    assert not np.any(outs[0][padded(lens, T, B)]), "padding of y is not 0"
    for j, (a, e) in enumerate(zip(outs, eouts)):
        close(a, e, np.float32, f"output {j}")
    douts = _douts(rng, kind, T, B, H, np.float32, "all")
    g = backward(F, kind, ctx, douts)
    eg = backward(R, kind, ectx, [as64(d) for d in douts])
    assert not np.any(g["x"][padded(lens, T, B)]), "dx past the end of a sequence is not 0"
    for k in eg:
        close(g[k], eg[k], np.float32, f"gradient {k}")


@pytest.mark.parametrize("kind", KINDS)
def test_ctx_survives_other_calls_and_repeated_backward(kind):
    """A ctx is not disturbed by later forward/backward calls (shared workspaces, pooled
    blocks), and backward can be called on it twice with identical results."""
    rng = np.random.default_rng(5)
    for (T, B, I, H) in [(6, 3, 5, 17), (16, 64, 8, 256)]:
        w = make_weights(rng, kind, I, H, True, np.float32)
        xa, xb = (rng.standard_normal((2, T, B, I)) * 0.5).astype(np.float32)
        da = _douts(rng, kind, T, B, H, np.float32, "all")
        db = _douts(rng, kind, T, B, H, np.float32, "all")
        outs_a, ctx_a = forward(F, kind, xa, None, None, w)
        fresh = [np.array(o) for o in outs_a]
        ga = backward(F, kind, ctx_a, da)
        _, ctx_b = forward(F, kind, xb, None, None, w)
        backward(F, kind, ctx_b, db)
        _, ctx_c = forward(F, kind, xb, None, None, w, rng.integers(1, T + 1, B), True)
        backward(F, kind, ctx_c, db)
        for j, (o, f) in enumerate(zip(outs_a, fresh)):
            np.testing.assert_array_equal(o, f, err_msg=f"H={H}: output {j} changed by later calls")
        ga2 = backward(F, kind, ctx_a, da)
        for k in ga:
            np.testing.assert_array_equal(ga2[k], ga[k], err_msg=f"H={H}: second backward, {k}")


# ----------------------------------------------------------------------------- 2. finite differences
@pytest.mark.parametrize("lengths, reverse", [(None, False), (None, True), ([4, 2], False), ([1, 4], True)],
                         ids=["fwd", "rev", "len", "len_rev"])
@pytest.mark.parametrize("kind", KINDS)
def test_finite_differences(kind, lengths, reverse):
    """float64: the kernel's gradients of sum(y*dy) + sum(h_n*dh) (+ sum(c_n*dc)) w.r.t. x,
    h0, c0 and every weight and bias equal central differences of the kernel's forward."""
    rng = np.random.default_rng(6)
    T, B, I, H = 4, 2, 3, 5
    w = make_weights(rng, kind, I, H, True, np.float64)
    vals = dict(w, x=rng.standard_normal((T, B, I)), h0=0.5 * rng.standard_normal((B, H)),
                c0=0.5 * rng.standard_normal((B, H)) if kind == "lstm" else None)
    lens = None if lengths is None else np.array(lengths)
    douts = _douts(rng, kind, T, B, H, np.float64, "all")
    _, ctx = forward(F, kind, vals["x"], vals["h0"], vals["c0"], w, lens, reverse)
    g = backward(F, kind, ctx, douts)
    dflat = np.concatenate([d.ravel() for d in douts])
    for name in grad_names(kind):
        def f(v, name=name):
            a = dict(vals, **{name: v})
            outs, c = forward(F, kind, a["x"], a["h0"], a["c0"], a, lens, reverse, training=False)
            assert c is None
            return np.concatenate([o.ravel() for o in outs])
        assert_fd(g[name], f, vals[name], dflat, what=f"{kind} lengths={lengths} reverse={reverse}: d{name}")


# ----------------------------------------------------------------------------- 3. vs PyTorch
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def torch_module(torch, kind, I, H, L, bias, batch_first, bidir):
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidir, dtype=torch.float64)
    if kind == "lstm":
        return torch.nn.LSTM(I, H, **kw)
    if kind == "gru":
        return torch.nn.GRU(I, H, **kw)
    return torch.nn.RNN(I, H, nonlinearity=kind[4:], **kw)


def seqcore_module(kind, I, H, L, bias, batch_first, bidir, dtype, rng=99):
    kw = dict(num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidir, dtype=dtype, rng=rng)
    if kind == "lstm":
        return nn.LSTM(I, H, **kw)
    if kind == "gru":
        return nn.GRU(I, H, **kw)
    return nn.RNN(I, H, nonlinearity=kind[4:], **kw)


def round_torch_params(torch, m, dtype):
    """Round a float64 torch module's parameters to ``dtype`` values (kept in float64)."""
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.from_numpy(p.detach().numpy().astype(dtype).astype(np.float64)))


# (kind, num_layers, bidirectional, batch_first, bias, I, H, T, B (None: unbatched),
#  lengths, hx given, d_h_n: 'all' | 'none' | 'h' (LSTM: dc_n None))
MODULE_CASES = [
    ("rnn_tanh", 1, False, False, True, 5, 7, 6, 3, None, True, "all"),
    ("rnn_relu", 2, True, False, False, 1, 13, 5, 3, None, True, "all"),
    ("rnn_tanh", 3, True, True, True, 5, 1, 6, 2, [6, 1], False, "all"),
    ("rnn_relu", 1, True, False, True, 5, 7, 6, 3, [4, 6, 1], True, "none"),
    ("lstm", 1, False, False, False, 1, 1, 6, 1, None, True, "all"),
    ("lstm", 3, True, True, True, 5, 17, 4, 3, None, True, "none"),
    ("lstm", 2, True, False, True, 5, 7, 6, 3, [3, 6, 1], True, "all"),
    ("lstm", 2, False, True, False, 5, 33, 5, 3, [5, 2, 1], False, "h"),
    ("gru", 2, True, True, True, 5, 33, 6, 3, None, False, "all"),
    ("gru", 1, False, False, False, 1, 13, 1, 3, None, True, "all"),
    ("gru", 2, False, True, True, 5, 7, 6, 3, [2, 1, 6], True, "all"),
    ("rnn_tanh", 2, True, False, True, 5, 7, 6, None, None, True, "all"),
    ("lstm", 1, True, False, True, 5, 13, 5, None, None, True, "h"),
    ("gru", 2, False, True, True, 1, 17, 4, None, None, False, "all"),
]


def _case_id(c):
    kind, L, bidir, bf, bias, I, H, T, B, lengths, hx, dh = c
    return (f"{kind}-L{L}{'-bi' if bidir else ''}{'-bf' if bf else ''}{'' if bias else '-nobias'}"
            f"-I{I}H{H}T{T}{'B' + str(B) if B else '-unbatched'}{'-len' if lengths else ''}"
            f"{'' if hx else '-nohx'}-dh_{dh}")


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", MODULE_CASES, ids=[_case_id(c) for c in MODULE_CASES])
def test_module_matches_torch(torch, case, dtype):
    """nn.RNN/LSTM/GRU with a torch state_dict loaded: output, h_n (, c_n), d_input, d_hx
    and every parameter's .grad against torch autograd (float64), with packed sequences
    (enforce_sorted=False, padded back to T) when lengths are given."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    kind, L, bidir, bf, bias, I, H, T, B, lengths, hx_given, dh_mode = case
    lstm = kind == "lstm"
    nd = 2 if bidir else 1
    rng = np.random.default_rng(7)
    torch.manual_seed(7)
    tm = torch_module(torch, kind, I, H, L, bias, bf, bidir)
    round_torch_params(torch, tm, dtype)
    sm = seqcore_module(kind, I, H, L, bias, bf, bidir, dtype)
    sm.load_state_dict(tm.state_dict())

    bshape = (T,) if B is None else ((B, T) if bf else (T, B))
    sshape = (L * nd,) + (() if B is None else (B,)) + (H,)
    x = (0.7 * rng.standard_normal(bshape + (I,))).astype(dtype)
    h0 = (0.5 * rng.standard_normal(sshape)).astype(dtype)
    c0 = (0.5 * rng.standard_normal(sshape)).astype(dtype)
    dy = rng.standard_normal(bshape + (nd * H,)).astype(dtype)
    dh = rng.standard_normal(sshape).astype(dtype)
    dc = rng.standard_normal(sshape).astype(dtype)
    if not hx_given:
        h0, c0 = np.zeros_like(h0), np.zeros_like(c0)

    # torch, float64 on the same values
    t64 = lambda a: torch.from_numpy(np.array(a, np.float64)).requires_grad_(True)
    xt, h0t, c0t = t64(x), t64(h0), t64(c0)
    hxt = (h0t, c0t) if lstm else h0t
    if lengths is None:
        out_t, st = tm(xt, hxt)
    else:
        packed = pack_padded_sequence(xt, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
        out_p, st = tm(packed, hxt)
        out_t, _ = pad_packed_sequence(out_p, batch_first=bf, total_length=T)
    hn_t, cn_t = st if lstm else (st, None)
    loss = (out_t * torch.from_numpy(as64(dy))).sum()
    if dh_mode != "none":
        loss = loss + (hn_t * torch.from_numpy(as64(dh))).sum()
        if lstm and dh_mode == "all":
            loss = loss + (cn_t * torch.from_numpy(as64(dc))).sum()
    loss.backward()

    # seqcore
    hx = ((h0, c0) if lstm else h0) if hx_given else None
    out, st = sm.forward(x, hx, lengths=lengths)
    hn, cn = st if lstm else (st, None)
    if dh_mode == "none":
        d_h_n = None
    elif lstm:
        d_h_n = (dh, dc if dh_mode == "all" else None)
    else:
        d_h_n = dh
    dx, dhx = sm.backward(dy, d_h_n)
    dh0, dc0 = dhx if lstm else (dhx, None)

    name = _case_id(case) + f" {np.dtype(dtype).name}"
    close(out, out_t.detach().numpy(), dtype, f"{name}: output")
    assert out.dtype == dtype and out.shape == tuple(out_t.shape)
    close(hn, hn_t.detach().numpy(), dtype, f"{name}: h_n")
    if lstm:
        close(cn, cn_t.detach().numpy(), dtype, f"{name}: c_n")
    close(dx, xt.grad.numpy(), dtype, f"{name}: d_input")
    close(dh0, h0t.grad.numpy(), dtype, f"{name}: d_h0")
    if lstm:
        close(dc0, c0t.grad.numpy(), dtype, f"{name}: d_c0")
    tparams = dict(tm.named_parameters())
    sparams = dict(sm.named_parameters())
    assert list(sparams) == list(tparams)
    for pname, p in sparams.items():
        assert p.grad.dtype == dtype
        close(p.grad, tparams[pname].grad.numpy(), dtype, f"{name}: grad of {pname}")


CELL_CASES = [
    ("rnn_tanh", True, 5, 13, 3, True),
    ("rnn_relu", False, 1, 7, None, True),
    ("rnn_relu", True, 5, 33, 3, False),
    ("lstm", True, 5, 17, 3, True),
    ("lstm", False, 5, 1, None, False),
    ("gru", True, 1, 33, 3, True),
    ("gru", False, 5, 7, None, False),
]


def torch_cell(torch, kind, I, H, bias):
    if kind == "lstm":
        return torch.nn.LSTMCell(I, H, bias=bias, dtype=torch.float64)
    if kind == "gru":
        return torch.nn.GRUCell(I, H, bias=bias, dtype=torch.float64)
    return torch.nn.RNNCell(I, H, bias=bias, nonlinearity=kind[4:], dtype=torch.float64)


def seqcore_cell(kind, I, H, bias, dtype, rng=5):
    if kind == "lstm":
        return nn.LSTMCell(I, H, bias=bias, dtype=dtype, rng=rng)
    if kind == "gru":
        return nn.GRUCell(I, H, bias=bias, dtype=dtype, rng=rng)
    return nn.RNNCell(I, H, bias=bias, nonlinearity=kind[4:], dtype=dtype, rng=rng)


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CELL_CASES,
                         ids=lambda c: f"{c[0]}-bias{int(c[1])}-I{c[2]}H{c[3]}-B{c[4]}-hx{int(c[5])}")
def test_cells_match_torch(torch, case, dtype):
    """RNNCell/LSTMCell/GRUCell: h' (, c') of forward() and step(), d_input, d_hx and
    parameter grads vs torch."""
    kind, bias, I, H, B, hx_given = case
    lstm = kind == "lstm"
    rng = np.random.default_rng(8)
    torch.manual_seed(8)
    tc = torch_cell(torch, kind, I, H, bias)
    round_torch_params(torch, tc, dtype)
    sc = seqcore_cell(kind, I, H, bias, dtype)
    sc.load_state_dict(tc.state_dict())
    lead = () if B is None else (B,)
    x = rng.standard_normal(lead + (I,)).astype(dtype)
    h = (0.5 * rng.standard_normal(lead + (H,))).astype(dtype) if hx_given else np.zeros(lead + (H,), dtype)
    c = (0.5 * rng.standard_normal(lead + (H,))).astype(dtype) if hx_given else np.zeros(lead + (H,), dtype)
    dh = rng.standard_normal(lead + (H,)).astype(dtype)
    dc = rng.standard_normal(lead + (H,)).astype(dtype)

    t64 = lambda a: torch.from_numpy(np.array(a, np.float64)).requires_grad_(True)
    xt, ht, ct = t64(x), t64(h), t64(c)
    if lstm:
        h1t, c1t = tc(xt, (ht, ct))
        loss = (h1t * torch.from_numpy(as64(dh))).sum() + (c1t * torch.from_numpy(as64(dc))).sum()
    else:
        h1t = tc(xt, ht)
        loss = (h1t * torch.from_numpy(as64(dh))).sum()
    loss.backward()

    hx = ((h, c) if lstm else h) if hx_given else None
    stepped = sc.step(x, hx)  # the packed streaming path
    res = sc.forward(x, hx)
    for what, r in (("forward", res), ("step", stepped)):
        h1, c1 = r if lstm else (r, None)
        check_output(h1, dtype, lead + (H,), f"{what}: h'")
        close(h1, h1t.detach().numpy(), dtype, f"{what}: h'")
        if lstm:
            check_output(c1, dtype, lead + (H,), f"{what}: c'")
            close(c1, c1t.detach().numpy(), dtype, f"{what}: c'")
    if lstm:
        dx, (dh0, dc0) = sc.backward(dh, dc)
        close(dc0, ct.grad.numpy(), dtype, "d_c")
    else:
        dx, dh0 = sc.backward(dh)
    close(dx, xt.grad.numpy(), dtype, "d_input")
    close(dh0, ht.grad.numpy(), dtype, "d_h")
    tparams = dict(tc.named_parameters())
    sparams = dict(sc.named_parameters())
    assert list(sparams) == list(tparams)
    for pname, p in sparams.items():
        close(p.grad, tparams[pname].grad.numpy(), dtype, f"grad of {pname}")


def twin_stack(kind, m, x, h0, c0, lengths, dy, dhn, dcn):
    """The multi-layer, multi-direction layer ``m`` (time-major, no dropout) built from the
    NumPy twins: returns (output, h_n list, d_input, {(layer, direction): dh_norms})."""
    lstm = kind == "lstm"
    L, nd, H = m.num_layers, m.num_directions, m.hidden_size
    sd = m.state_dict()
    layer_in, ctxs, hns = x, {}, []
    for layer in range(L):
        outs = []
        for d in range(nd):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = {"w_ih": sd["weight_ih" + sfx], "w_hh": sd["weight_hh" + sfx],
                 "b_ih": sd.get("bias_ih" + sfx), "b_hh": sd.get("bias_hh" + sfx)}
            i = layer * nd + d
            o, ctxs[layer, d] = forward(R, kind, layer_in, h0[i], c0[i] if lstm else None, w, lengths, bool(d))
            outs.append(o[0])
            hns.append(o[1])
        layer_in = np.concatenate(outs, axis=2)
    output, grad_out, norms = layer_in, dy, {}
    for layer in reversed(range(L)):
        d_in = 0
        for d in range(nd):
            i = layer * nd + d
            douts = (grad_out[..., d * H:(d + 1) * H], dhn[i]) + ((dcn[i],) if lstm else ())
            g = backward(R, kind, ctxs[layer, d], douts)
            norms[layer, d] = g["dh_norms"]
            d_in = d_in + g["x"]
        grad_out = d_in
    return output, hns, grad_out, norms


@pytest.mark.parametrize("kind, L, bidir, lengths", [
    ("rnn_tanh", 3, True, None), ("rnn_relu", 1, False, [3, 6, 1]), ("lstm", 2, True, [5, 1, 6]),
    ("gru", 2, True, None), ("gru", 1, True, [6, 6, 2])])
def test_module_dh_norms_and_values_match_twin_stack(kind, L, bidir, lengths):
    """last_dh_norms[(layer, direction)] (and output, h_n, d_input) equal the NumPy twins
    chained layer by layer (float64)."""
    rng = np.random.default_rng(9)
    T, B, I, H = 6, 3, 5, 7
    nd = 2 if bidir else 1
    m = seqcore_module(kind, I, H, L, True, False, bidir, np.float64)
    x = rng.standard_normal((T, B, I))
    h0, c0 = 0.5 * rng.standard_normal((2, L * nd, B, H))
    dy = rng.standard_normal((T, B, nd * H))
    dhn, dcn = rng.standard_normal((2, L * nd, B, H))
    lens = None if lengths is None else np.array(lengths)
    out, st = m.forward(x, (h0, c0) if kind == "lstm" else h0, lengths=lens)
    dx, _ = m.backward(dy, (dhn, dcn) if kind == "lstm" else dhn)
    e_out, e_hn, e_dx, e_norms = twin_stack(kind, m, x, h0, c0, lens, dy, dhn, dcn)
    close(out, e_out, np.float64, "output")
    close(st[0] if kind == "lstm" else st, np.stack(e_hn), np.float64, "h_n")
    close(dx, e_dx, np.float64, "d_input")
    assert set(m.last_dh_norms) == set(e_norms)
    for key, e in e_norms.items():
        check_output(m.last_dh_norms[key], np.float64, (T,), f"dh_norms{key}")
        close(m.last_dh_norms[key], e, np.float64, f"dh_norms{key}")


@pytest.mark.parametrize("kind", KINDS)
def test_module_backward_without_d_output(kind):
    """backward(None, d_h_n) equals backward(zeros, d_h_n); backward(d_output) equals
    backward(d_output, zeros)."""
    rng = np.random.default_rng(25)
    T, B, I, H, L = 5, 3, 4, 6, 2
    lstm = kind == "lstm"
    m = seqcore_module(kind, I, H, L, True, False, True, np.float64)
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, 2 * H))
    dhn, dcn = rng.standard_normal((2, 2 * L, B, H))
    zeros = np.zeros((2 * L, B, H))

    def run(d_out, d_state):
        m.zero_grad()
        m.forward(x, lengths=[5, 1, 3])
        dx, dhx = m.backward(d_out, d_state)
        return [dx] + list(dhx if lstm else (dhx,)) + [p.grad.copy() for p in m.parameters()]

    for a, b in [(run(None, (dhn, dcn) if lstm else dhn), run(np.zeros_like(dy), (dhn, dcn) if lstm else dhn)),
                 (run(dy, None), run(dy, (zeros, zeros) if lstm else zeros))]:
        for j, (u, v) in enumerate(zip(a, b)):
            close(u, v, np.float64, f"array {j}")


@pytest.mark.parametrize("kind", KINDS)
def test_module_backward_without_input_grad(kind):
    """need_input_grad=False: d_input None; d_hx and every .grad unchanged (bitwise)."""
    rng = np.random.default_rng(29)
    T, B, I, H, L = 5, 3, 4, 6, 2
    m = seqcore_module(kind, I, H, L, True, True, True, np.float32)
    x = rng.standard_normal((B, T, I)).astype(np.float32)
    dy = rng.standard_normal((B, T, 2 * H)).astype(np.float32)
    res = []
    for need in (True, False):
        m.zero_grad()
        m.forward(x, lengths=[2, 5, 1])
        dx, dhx = m.backward(dy, need_input_grad=need)
        res.append((dx, dhx if kind == "lstm" else (dhx,), [p.grad.copy() for p in m.parameters()]))
    assert res[0][0].shape == x.shape and res[1][0] is None
    for a, b in zip(res[0][1] + tuple(res[0][2]), res[1][1] + tuple(res[1][2])):
        np.testing.assert_array_equal(b, a)


@pytest.mark.parametrize("kind", KINDS)
def test_module_dropout(kind):
    """Dropout between layers: eval() ignores it; in training the gradients are those of the
    (masked) forward, by finite differences with the same masks (same rng state)."""
    rng = np.random.default_rng(26)
    T, B, I, H, L = 3, 2, 3, 4, 2
    m = seqcore_module(kind, I, H, L, True, False, True, np.float64)
    plain = seqcore_module(kind, I, H, L, True, False, True, np.float64)
    m.dropout = 0.4
    plain.load_state_dict(m.state_dict())
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, 2 * H))
    m.eval()
    np.testing.assert_array_equal(m.forward(x)[0], plain.eval().forward(x)[0])
    m.train()

    def f(v):
        m._rng = np.random.default_rng(77)  # the layer draws its masks from its own rng
        return m.forward(v)[0]

    out = f(x)
    assert not np.allclose(out, plain.forward(x)[0]), "dropout had no effect in training mode"
    m.zero_grad()
    dx, _ = m.backward(dy)
    assert_fd(dx, f, x, dy, what=f"{kind} dropout: d_input")
    w = m.weight_ih_l0.data.copy()

    def fw(v):
        m.weight_ih_l0.data = v
        return f(x)

    grad = m.weight_ih_l0.grad.copy()
    assert_fd(grad, fw, w, dy, what=f"{kind} dropout: grad of weight_ih_l0")


@pytest.mark.parametrize("kind", KINDS)
def test_nan_propagates_like_twin(kind):
    """A NaN in one sequence's input makes that sequence's later outputs NaN (as the twin);
    the other sequences are untouched (bitwise)."""
    rng = np.random.default_rng(27)
    T, B, I, H = 5, 3, 4, 9
    w = make_weights(rng, kind, I, H, True, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    xn = x.copy()
    xn[2, 1, 0] = np.nan
    for reverse in (False, True):
        clean, _ = forward(F, kind, x, None, None, w, reverse=reverse, training=False)
        got, _ = forward(F, kind, xn, None, None, w, reverse=reverse, training=False)
        with np.errstate(all="ignore"):
            exp, _ = forward(R, kind, as64(xn), None, None, {k: as64(v) for k, v in w.items()}, reverse=reverse)
        for j, (g, e, c) in enumerate(zip(got, exp, clean)):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(e), err_msg=f"reverse={reverse} output {j}")
            assert np.isnan(g).any()
            np.testing.assert_array_equal(g[..., [0, 2], :], c[..., [0, 2], :])


# ----------------------------------------------------------------------------- 4. truncated BPTT
@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bptt_functional(kind):
    """Two chunks with carried state, backpropagated with carried (dh_n, dc_n), give the
    gradients of one long sequence (float64)."""
    rng = np.random.default_rng(10)
    T, T1, B, I, H = 7, 3, 3, 4, 9
    lstm = kind == "lstm"
    w = make_weights(rng, kind, I, H, True, np.float64)
    x = rng.standard_normal((T, B, I))
    h0, c0 = 0.5 * rng.standard_normal((2, B, H))
    c0 = c0 if lstm else None
    douts = _douts(rng, kind, T, B, H, np.float64, "all")

    full, fctx = forward(F, kind, x, h0, c0, w)
    gf = backward(F, kind, fctx, douts)

    o1, ctx1 = forward(F, kind, x[:T1], h0, c0, w)
    o2, ctx2 = forward(F, kind, x[T1:], o1[1], o1[2] if lstm else None, w)
    close(np.concatenate([o1[0], o2[0]]), full[0], np.float64, "y")
    for j in range(1, len(full)):
        close(o2[j], full[j], np.float64, f"final state {j}")
    g2 = backward(F, kind, ctx2, (douts[0][T1:],) + douts[1:])
    g1 = backward(F, kind, ctx1, (douts[0][:T1], g2["h0"]) + ((g2["c0"],) if lstm else ()))
    close(np.concatenate([g1["x"], g2["x"]]), gf["x"], np.float64, "dx")
    close(np.concatenate([g1["dh_norms"], g2["dh_norms"]]), gf["dh_norms"], np.float64, "dh_norms")
    for k in ["h0"] + (["c0"] if lstm else []):
        close(g1[k], gf[k], np.float64, f"d{k}")
    for k in WKEYS:
        close(g1[k] + g2[k], gf[k], np.float64, f"d{k}")


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_bptt_module(kind):
    """nn layers (2 layers, batch_first): chunk 2 run with chunk 1's h_n, backward of chunk 2,
    then chunk 1 again with d_h_n = chunk 2's d_hx; the .grad accumulated over both calls
    equals one backward over the whole sequence."""
    rng = np.random.default_rng(11)
    T, T1, B, I, H, L = 7, 4, 2, 3, 6, 2
    lstm = kind == "lstm"
    m = seqcore_module(kind, I, H, L, True, True, False, np.float64)
    x = rng.standard_normal((B, T, I))
    h0, c0 = 0.5 * rng.standard_normal((2, L, B, H))
    hx = (h0, c0) if lstm else h0
    dy = rng.standard_normal((B, T, H))
    dhn, dcn = rng.standard_normal((2, L, B, H))
    d_state = (dhn, dcn) if lstm else dhn

    m.zero_grad()
    out, _ = m.forward(x, hx)
    dx_full, dhx_full = m.backward(dy, d_state)
    g_full = {n: p.grad.copy() for n, p in m.named_parameters()}

    m.zero_grad()
    _, st1 = m.forward(x[:, :T1], hx)
    out2, _ = m.forward(x[:, T1:], st1)
    dx2, dhx2 = m.backward(dy[:, T1:], d_state)
    out1, _ = m.forward(x[:, :T1], hx)
    dx1, dhx1 = m.backward(dy[:, :T1], dhx2)
    close(np.concatenate([out1, out2], axis=1), out, np.float64, "output")
    close(np.concatenate([dx1, dx2], axis=1), dx_full, np.float64, "d_input")
    for a, e in zip(dhx1 if lstm else (dhx1,), dhx_full if lstm else (dhx_full,)):
        close(a, e, np.float64, "d_hx")
    for n, p in m.named_parameters():
        close(p.grad, g_full[n], np.float64, f"grad of {n}")


def test_module_backward_accumulates_and_zero_grad():
    rng = np.random.default_rng(12)
    m = nn.GRU(3, 5, num_layers=2, bidirectional=True, dtype=np.float64, rng=1)
    x, dy = rng.standard_normal((4, 2, 3)), rng.standard_normal((4, 2, 10))
    m.forward(x)
    m.backward(dy)
    once = {n: p.grad.copy() for n, p in m.named_parameters()}
    assert all(np.any(g) for g in once.values())
    m.backward(dy)
    for n, p in m.named_parameters():
        np.testing.assert_array_equal(p.grad, 2 * once[n], err_msg=n)
    m.zero_grad()
    assert not any(np.any(p.grad) for p in m.parameters())


# ----------------------------------------------------------------------------- 5. threads
@pytest.mark.parametrize("kind", KINDS)
def test_thread_count_bitwise(kind):
    """Outputs and every gradient are bitwise identical with 1 and 2 threads."""
    rng = np.random.default_rng(13)
    T, B, I, H = 5, 16, 64, 96
    w = make_weights(rng, kind, I, H, True, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = (0.5 * rng.standard_normal((2, B, H))).astype(np.float32)
    c0 = c0 if kind == "lstm" else None
    lens = rng.integers(1, T + 1, B)
    douts = _douts(rng, kind, T, B, H, np.float32, "all")

    def run(lengths, reverse):
        def fn():
            outs, ctx = forward(F, kind, x, h0, c0, w, lengths, reverse)
            g = backward(F, kind, ctx, douts)
            return tuple(outs) + tuple(g[k] for k in sorted(g))
        return fn

    for lengths, reverse in [(None, False), (lens, True), (lens, False)]:
        assert_thread_invariant(run(lengths, reverse))


def test_thread_count_bitwise_module():
    rng = np.random.default_rng(14)
    T, B, I, H = 5, 16, 64, 96
    m = nn.LSTM(I, H, num_layers=2, bidirectional=True, dtype=np.float32, rng=3)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    lens = rng.integers(1, T + 1, B)

    def fn():
        m.zero_grad()
        out, (hn, cn) = m.forward(x, lengths=lens)
        dx, (dh0, dc0) = m.backward(dy, (hn, cn))
        return (out, hn, cn, dx, dh0, dc0) + tuple(p.grad.copy() for p in m.parameters())

    assert_thread_invariant(fn)


# ----------------------------------------------------------------------------- 6. inference mode
@pytest.mark.parametrize("kind", KINDS)
def test_training_false(kind):
    """training=False: same outputs as training=True, ctx None."""
    rng = np.random.default_rng(15)
    for dtype in FLOATS:
        T, B, I, H = 6, 3, 5, 17
        w = make_weights(rng, kind, I, H, True, dtype)
        x = rng.standard_normal((T, B, I)).astype(dtype)
        h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
        c0 = h0[::-1].copy() if kind == "lstm" else None
        for lengths, reverse in [(None, False), (None, True), (np.array([6, 1, 3]), False),
                                 (np.array([2, 6, 1]), True)]:
            a, ctx = forward(F, kind, x, h0, c0, w, lengths, reverse, training=True)
            b, nctx = forward(F, kind, x, h0, c0, w, lengths, reverse, training=False)
            assert ctx is not None and nctx is None
            for j, (u, v) in enumerate(zip(a, b)):
                check_output(v, dtype, u.shape, f"output {j}")
                np.testing.assert_array_equal(v, u, err_msg=f"{kind} {np.dtype(dtype).name} "
                                              f"lengths={lengths} reverse={reverse}: output {j}")


@pytest.mark.parametrize("kind", KINDS)
def test_module_eval_keeps_no_cache(kind):
    rng = np.random.default_rng(16)
    m = seqcore_module(kind, 4, 6, 2, True, False, True, np.float32)
    x = rng.standard_normal((5, 2, 4)).astype(np.float32)
    dy = np.ones((5, 2, 12), np.float32)
    m.eval()
    assert not m.training
    out_eval, st_eval = m.forward(x)
    with pytest.raises(RuntimeError):
        m.backward(dy)
    m.train()
    out_train, st_train = m.forward(x)
    np.testing.assert_array_equal(out_eval, out_train)
    for a, b in zip(st_eval if kind == "lstm" else (st_eval,), st_train if kind == "lstm" else (st_train,)):
        np.testing.assert_array_equal(a, b)
    m.backward(dy)  # works in training mode

    cell = seqcore_cell(kind, 4, 6, True, np.float32)
    cell.eval()
    cell.forward(x[0])
    with pytest.raises(RuntimeError):
        cell.backward(np.ones((2, 6), np.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_cell_step_does_not_disturb_backward(kind):
    """step() keeps nothing for backward, so backward still differentiates the last
    training-mode forward (documented: 'backward differentiates the last training-mode
    forward; step is forward without any caching')."""
    rng = np.random.default_rng(17)
    B, I, H = 2, 3, 5
    lstm = kind == "lstm"
    cell = seqcore_cell(kind, I, H, True, np.float64)
    x, x2 = rng.standard_normal((2, B, I))
    dh, dc = rng.standard_normal((2, B, H))
    cell.forward(x)
    expected = cell.backward(dh, dc) if lstm else cell.backward(dh)
    cell.zero_grad()
    cell.forward(x)
    cell.step(x2)
    got = cell.backward(dh, dc) if lstm else cell.backward(dh)
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("kind", KINDS)
def test_cell_step_follows_parameter_updates(kind):
    """step() packs the weights once and reuses them; assigning .data, load_state_dict and
    refresh() after an in-place edit all make it use the current weights."""
    rng = np.random.default_rng(23)
    B, I, H = 3, 5, 13
    lstm = kind == "lstm"
    cell = seqcore_cell(kind, I, H, True, np.float64)
    x = rng.standard_normal((B, I))
    hx = tuple(0.5 * rng.standard_normal((2, B, H))) if lstm else 0.5 * rng.standard_normal((B, H))

    def expected():
        w = {"w_ih": cell.weight_ih.data, "w_hh": cell.weight_hh.data,
             "b_ih": cell.bias_ih.data, "b_hh": cell.bias_hh.data}
        outs, _ = forward(R, kind, x[None], hx[0] if lstm else hx, hx[1] if lstm else None, w)
        return outs[1:]

    def check(what):
        got = cell.step(x, hx)
        for a, e in zip(got if lstm else (got,), expected()):
            close(a, e, np.float64, what)

    check("initial weights")
    cell.weight_hh.data = cell.weight_hh.data * -1.5
    check("after assigning .data")
    other = seqcore_cell(kind, I, H, True, np.float64, rng=6)
    other.bias_ih.data = other.bias_ih.data + 1.0
    cell.load_state_dict(other.state_dict())
    check("after load_state_dict")
    cell.weight_ih.data[...] *= 2.0
    cell.refresh()
    check("after an in-place edit and refresh()")


def test_cell_step_thread_count_bitwise():
    rng = np.random.default_rng(24)
    B, I, H = 16, 64, 96
    for kind in KINDS:
        cell = seqcore_cell(kind, I, H, True, np.float32)
        x = rng.standard_normal((B, I)).astype(np.float32)
        h = rng.standard_normal((B, H)).astype(np.float32)
        hx = (h, h[::-1].copy()) if kind == "lstm" else h
        assert_thread_invariant(lambda: cell.step(x, hx))


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_cell_step_small_batches_match_twin(kind, dtype):
    """The streaming step for B = 1..8 (B <= 4 runs a GEMV-shaped kernel, more rows the GEMM's
    tall tiles), input sizes past one K block (300 > 256), hidden sizes that end mid-vector:
    vs the NumPy twin; repeated calls (which alternate the order of the weight blocks) and
    1 vs 2 threads give the same bits."""
    rng = np.random.default_rng(31)
    twin = {"lstm": R.lstm_cell, "gru": R.gru_cell}.get(kind)
    for I, H in ((300, 37), (5, 130), (600, 130)):  # the last one runs on 2 threads
        cell = seqcore_cell(kind, I, H, True, dtype)
        w = [p.data for p in cell.parameters()]
        for B in range(1, 9):
            x = rng.standard_normal((B, I)).astype(dtype)
            h = (0.5 * rng.standard_normal((B, H))).astype(dtype)
            c = (0.5 * rng.standard_normal((B, H))).astype(dtype)
            hx = (h, c) if kind == "lstm" else h
            got = assert_thread_invariant(lambda: cell.step(x, hx))
            again = cell.step(x, hx)
            assert np.array_equal(np.asarray(got), np.asarray(again)), f"B={B}: a repeated step differs"
            if kind == "lstm":
                want = twin(x, h, c, *w)
                close(got[0], want[0], dtype, f"B={B} h'")
                close(got[1], want[1], dtype, f"B={B} c'")
            elif kind == "gru":
                close(got, twin(x, h, *w), dtype, f"B={B} h'")
            else:
                close(got, R.rnn_cell(x, h, *w, nonlinearity=kind[4:]), dtype, f"B={B} h'")


# ----------------------------------------------------------------------------- 7. bad input
@pytest.mark.parametrize("kind", KINDS)
def test_functional_rejects_bad_input(kind):
    rng = np.random.default_rng(18)
    T, B, I, H = 4, 2, 3, 5
    G = GATES[kind]
    w = make_weights(rng, kind, I, H, True, np.float64)
    x = rng.standard_normal((T, B, I))
    lstm = kind == "lstm"
    c0 = np.zeros((B, H)) if lstm else None

    def run(x=x, h0=None, c0=c0, lengths=None, **ws):
        return forward(F, kind, x, h0, c0, dict(w, **ws), lengths)

    with pytest.raises(ValueError, match="'x'"):
        run(x=rng.standard_normal((T, B, I + 1)))
    with pytest.raises(ValueError, match="'x'"):
        run(x=rng.standard_normal((T, I)))
    with pytest.raises(ValueError, match="'h0'"):
        run(h0=np.zeros((B, H + 1)))
    with pytest.raises(ValueError, match="'h0'"):
        run(h0=np.zeros((B + 1, H)))
    if lstm:
        with pytest.raises(ValueError, match="'c0'"):
            run(c0=np.zeros((B, H - 1)))
    for bad in ([5, 1], [0, 1], [2, -1]):
        with pytest.raises(ValueError, match="lengths"):
            run(lengths=np.array(bad))
    for bad in ([1, 1, 1], [[1, 1]]):
        with pytest.raises(ValueError, match="lengths"):
            run(lengths=np.array(bad))
    with pytest.raises(TypeError, match="lengths"):
        run(lengths=np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="'x'"):
        run(x=np.ones((T, B, I), dtype=np.int64))
    with pytest.raises(TypeError):
        run(x=x.astype(np.float32))
    with pytest.raises(TypeError):
        run(h0=np.zeros((B, H), np.float32))
    with pytest.raises(ValueError, match="'w_hh'"):
        run(w_hh=np.zeros((G * H, H + 1)))
    with pytest.raises(ValueError, match="'w_hh'"):
        run(w_hh=np.zeros(((G + 1) * H, H)))
    with pytest.raises(ValueError, match="'w_hh'"):
        run(w_hh=np.zeros((G * H,)))
    with pytest.raises(ValueError, match="'w_ih'"):
        run(w_ih=np.zeros((G * H + 1, I)))
    with pytest.raises(ValueError, match="'b_ih'"):
        run(b_ih=np.zeros(G * H - 1))
    with pytest.raises(ValueError, match="'b_hh'"):
        run(b_hh=np.zeros((1, G * H)))
    if not lstm:
        with pytest.raises(ValueError, match="c0"):
            F._core.recurrent_forward("gru" if kind == "gru" else kind, x, None, np.zeros((B, H)),
                                      w["w_ih"], w["w_hh"], None, None, None, False, True)
    if kind == "rnn_tanh":
        with pytest.raises(ValueError, match="nonlinearity"):
            F.rnn(x, None, w["w_ih"], w["w_hh"], nonlinearity="sigmoid")

    _, ctx = run()
    good = _douts(rng, kind, T, B, H, np.float64, "all")
    with pytest.raises(ValueError, match="'dy'"):
        backward(F, kind, ctx, (np.zeros((T, B, H + 1)),) + good[1:])
    with pytest.raises(ValueError, match="'dh_n'"):
        backward(F, kind, ctx, (good[0], np.zeros((B + 1, H))) + good[2:])
    if lstm:
        with pytest.raises(ValueError, match="'dc_n'"):
            backward(F, kind, ctx, (good[0], good[1], np.zeros((B, H + 1))))
    with pytest.raises(TypeError):
        backward(F, kind, ctx, (good[0].astype(np.float32),) + good[1:])
    with pytest.raises(TypeError):
        backward(F, kind, ctx, (np.zeros((T, B, H), np.int64),) + good[1:])
    # the ctx is still usable after the rejected calls
    g = backward(F, kind, ctx, good)
    assert g["x"].shape == (T, B, I)


@pytest.mark.parametrize("kind", KINDS)
def test_module_rejects_bad_input(kind):
    rng = np.random.default_rng(19)
    T, B, I, H, L = 4, 2, 3, 5, 2
    lstm = kind == "lstm"
    m = seqcore_module(kind, I, H, L, True, False, True, np.float64)
    x = rng.standard_normal((T, B, I))
    hx_good = (np.zeros((2 * L, B, H)), np.zeros((2 * L, B, H))) if lstm else np.zeros((2 * L, B, H))
    with pytest.raises(ValueError, match="input"):
        m.forward(rng.standard_normal((T, B, I + 1)))
    with pytest.raises(ValueError, match="input"):
        m.forward(rng.standard_normal((1, T, B, I)))
    bad_h = np.zeros((2 * L, B, H + 1))
    with pytest.raises(ValueError):
        m.forward(x, (bad_h, hx_good[1]) if lstm else bad_h)
    with pytest.raises(ValueError):
        m.forward(x, (hx_good[0], np.zeros((L, B, H))) if lstm else np.zeros((L, B, H)))
    if lstm:
        with pytest.raises(ValueError):
            m.forward(x, hx_good[0])  # not a tuple
    for bad in ([5, 1], [0, 1], [1, 1, 1]):
        with pytest.raises(ValueError, match="lengths"):
            m.forward(x, lengths=np.array(bad))
    with pytest.raises(TypeError):
        m.forward(np.ones((T, B, I), dtype=np.int32))
    with pytest.raises(TypeError):
        m.forward(x.astype(np.float32))
    m.forward(x, hx_good)
    with pytest.raises(ValueError, match="d_output"):
        m.backward(np.zeros((T, B, H)))
    with pytest.raises(ValueError):
        m.backward(np.zeros((T, B, 2 * H)), (np.zeros((L, B, H)), None) if lstm else np.zeros((L, B, H)))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(I, H, nonlinearity="sigmoid")
    with pytest.raises(ValueError):
        nn.RNNCell(I, H, nonlinearity="gelu")


@pytest.mark.parametrize("kind", KINDS)
def test_cell_rejects_bad_input(kind):
    rng = np.random.default_rng(30)
    B, I, H = 3, 4, 5
    lstm = kind == "lstm"
    cell = seqcore_cell(kind, I, H, True, np.float64)
    x = rng.standard_normal((B, I))
    bad_h = np.zeros((B, H + 1))
    for run in (cell.forward, cell.step):
        with pytest.raises(ValueError):
            run(rng.standard_normal((B, I + 1)))
        with pytest.raises(ValueError):
            run(rng.standard_normal((2, B, I)))
        with pytest.raises(ValueError):
            run(x, (bad_h, np.zeros((B, H))) if lstm else bad_h)
        with pytest.raises(ValueError):
            run(x[0], (np.zeros(H + 1), np.zeros(H)) if lstm else np.zeros(H + 1))
        if lstm:
            with pytest.raises(ValueError):
                run(x, np.zeros((B, H)))  # not a tuple
        with pytest.raises(TypeError):
            run(x.astype(np.float32))
        with pytest.raises(TypeError):
            run(np.ones((B, I), np.int64))


@pytest.mark.parametrize("kind", KINDS)
def test_functional_empty_sizes(kind):
    """T=0: y (0,B,H), h_n = h0, backward passes dh_n (dc_n) straight to dh0 (dc0) and gives
    zero weight gradients; B=0: empty everything; no crash."""
    rng = np.random.default_rng(20)
    B, I, H = 3, 2, 5
    lstm = kind == "lstm"
    for dtype in FLOATS:
        w = make_weights(rng, kind, I, H, True, dtype)
        h0 = rng.standard_normal((B, H)).astype(dtype)
        c0 = rng.standard_normal((B, H)).astype(dtype) if lstm else None
        outs, ctx = forward(F, kind, np.zeros((0, B, I), dtype), h0, c0, w)
        check_output(outs[0], dtype, (0, B, H), "y")
        np.testing.assert_array_equal(outs[1], h0)
        if lstm:
            np.testing.assert_array_equal(outs[2], c0)
        douts = _douts(rng, kind, 0, B, H, dtype, "all")
        g = backward(F, kind, ctx, douts)
        assert g["x"].shape == (0, B, I) and g["dh_norms"].shape == (0,)
        np.testing.assert_array_equal(g["h0"], douts[1])
        if lstm:
            np.testing.assert_array_equal(g["c0"], douts[2])
        for k in WKEYS:
            check_output(g[k], dtype, w[k].shape, k)
            assert not np.any(g[k]), f"T=0: d{k} is not 0"

        for lengths in (None, np.zeros(0, np.int64)):
            outs, ctx = forward(F, kind, np.zeros((4, 0, I), dtype), None, None, w, lengths, True)
            check_output(outs[0], dtype, (4, 0, H), "y")
            check_output(outs[1], dtype, (0, H), "h_n")
            g = backward(F, kind, ctx, _douts(rng, kind, 4, 0, H, dtype, "all"))
            assert g["x"].shape == (4, 0, I) and g["h0"].shape == (0, H)
            for k in WKEYS:
                check_output(g[k], dtype, w[k].shape, k)
                assert not np.any(g[k]), f"B=0: d{k} is not 0"
            assert not np.any(g["dh_norms"]) and g["dh_norms"].shape == (4,)

        outs, nctx = forward(F, kind, np.zeros((0, 0, I), dtype), None, None, w, training=False)
        assert outs[0].shape == (0, 0, H) and nctx is None


@pytest.mark.parametrize("kind", KINDS)
def test_module_empty_sizes(kind):
    rng = np.random.default_rng(21)
    T, B, I, H, L = 4, 2, 3, 5, 2
    lstm = kind == "lstm"
    m = seqcore_module(kind, I, H, L, True, True, True, np.float64)
    h0, c0 = rng.standard_normal((2, 2 * L, B, H))
    out, st = m.forward(np.zeros((B, 0, I)), (h0, c0) if lstm else h0)
    assert out.shape == (B, 0, 2 * H)
    np.testing.assert_array_equal(st[0] if lstm else st, h0)
    dhn, dcn = rng.standard_normal((2, 2 * L, B, H))
    dx, dhx = m.backward(np.zeros((B, 0, 2 * H)), (dhn, dcn) if lstm else dhn)
    assert dx.shape == (B, 0, I)
    np.testing.assert_array_equal(dhx[0] if lstm else dhx, dhn)
    if lstm:
        np.testing.assert_array_equal(dhx[1], dcn)
    assert not any(np.any(p.grad) for p in m.parameters())

    out, st = m.forward(np.zeros((0, T, I)))
    assert out.shape == (0, T, 2 * H)
    assert (st[0] if lstm else st).shape == (2 * L, 0, H)
    dx, dhx = m.backward(np.zeros((0, T, 2 * H)))
    assert dx.shape == (0, T, I)
    assert (dhx[0] if lstm else dhx).shape == (2 * L, 0, H)


# ----------------------------------------------------------------------------- 8. state_dict
def expected_keys(L, bidir, bias):
    keys = []
    for layer in range(L):
        for sfx in ["", "_reverse"] if bidir else [""]:
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if bias else [])
            keys += [f"{n}_l{layer}{sfx}" for n in names]
    return keys


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_and_errors(kind):
    rng = np.random.default_rng(22)
    I, H, L = 3, 5, 2
    G = GATES[kind]
    m = seqcore_module(kind, I, H, L, True, False, True, np.float32)
    sd = m.state_dict()
    assert list(sd) == expected_keys(L, True, True)
    assert sd["weight_ih_l0"].shape == (G * H, I) and sd["weight_ih_l1_reverse"].shape == (G * H, 2 * H)
    assert sd["weight_hh_l1"].shape == (G * H, H) and sd["bias_hh_l0_reverse"].shape == (G * H,)
    assert all(v.dtype == np.float32 for v in sd.values())
    assert list(seqcore_module(kind, I, H, 1, False, False, False, np.float32).state_dict()) == \
        expected_keys(1, False, False)

    other = seqcore_module(kind, I, H, L, True, False, True, np.float32, rng=100)
    assert not np.array_equal(other.state_dict()["weight_hh_l0"], sd["weight_hh_l0"])
    other.load_state_dict(sd)
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, sd[k], err_msg=k)
    x = rng.standard_normal((4, 2, I)).astype(np.float32)
    a, b = m.forward(x)[0], other.forward(x)[0]
    np.testing.assert_array_equal(a, b)
    # state_dict returns copies
    sd["weight_hh_l0"][...] = 0
    assert np.any(m.state_dict()["weight_hh_l0"])
    # a float64 state_dict is cast to the module's dtype
    other.load_state_dict({k: v.astype(np.float64) for k, v in m.state_dict().items()})
    assert other.weight_hh_l0.dtype == np.float32

    good = m.state_dict()
    missing = dict(good)
    del missing["bias_hh_l1_reverse"]
    with pytest.raises(KeyError, match="bias_hh_l1_reverse"):
        other.load_state_dict(missing)
    with pytest.raises(KeyError, match="weight_ih_l2"):
        other.load_state_dict(dict(good, weight_ih_l2=good["weight_ih_l1"]))
    with pytest.raises(ValueError, match="weight_hh_l1"):
        other.load_state_dict(dict(good, weight_hh_l1=np.zeros((G * H, H + 1), np.float32)))
    with pytest.raises(ValueError, match="weight_ih_l0"):
        other.load_state_dict(dict(good, weight_ih_l0=np.zeros((G * H, I + 1), np.float32)))

    cell = seqcore_cell(kind, I, H, True, np.float64)
    csd = cell.state_dict()
    assert list(csd) == ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    cell2 = seqcore_cell(kind, I, H, True, np.float64, rng=6)
    assert not np.array_equal(cell2.weight_hh.data, cell.weight_hh.data)
    cell2.load_state_dict(csd)
    for k, v in cell2.state_dict().items():
        np.testing.assert_array_equal(v, csd[k])
    with pytest.raises(KeyError, match="bias_ih"):
        cell2.load_state_dict({k: v for k, v in csd.items() if k != "bias_ih"})


def test_torch_state_dict_keys_match(torch):
    for kind in KINDS:
        for L, bidir, bias in [(1, False, True), (3, True, False)]:
            tm = torch_module(torch, kind, 3, 4, L, bias, False, bidir)
            sm = seqcore_module(kind, 3, 4, L, bias, False, bidir, np.float64)
            assert list(sm.state_dict()) == list(tm.state_dict())
            for k, v in sm.state_dict().items():
                assert v.shape == tuple(tm.state_dict()[k].shape), k


def test_dh_norms_do_not_underflow_in_float32():
    """||dL/dh_t|| far below 1e-19 (squares below the float range) still match float64."""
    x = np.random.default_rng(0).random((100, 8, 2))
    d = np.zeros((100, 8, 64))
    d[-1] = 1.0
    norms = {}
    for dt in (np.float32, np.float64):
        m = nn.GRU(2, 64, rng=0, dtype=dt)
        m.forward(x.astype(dt))
        m.backward(d.astype(dt))
        norms[dt] = m.last_dh_norms[(0, 0)].astype(np.float64)
    ref = norms[np.float64]
    keep = ref > 1e-35
    assert keep[:5].all() and ref[0] < 1e-15, ref[:3]
    np.testing.assert_allclose(norms[np.float32][keep], ref[keep], rtol=1e-3)


# ----------------------------------------------------------------------------- LSTM projection
# PyTorch's proj_size: h_t = W_hr (o * tanh(c_t)), P < H values of h (and of the output).
PROJ_CASES = [  # (I, B, T, H, P, bias, lengths, reverse)
    (5, 3, 6, 13, 4, True, None, False),
    (5, 3, 6, 17, 16, False, [6, 1, 3], False),
    (1, 3, 6, 65, 7, True, [2, 6, 1], True),
    (3, 1, 1, 2, 1, True, None, True),
]


def proj_weights(rng, I, H, P, bias, dtype):
    w = make_weights(rng, "lstm", I, H, bias, dtype)
    s = 1.0 / math.sqrt(H)
    w["w_hh"] = rng.uniform(-s, s, (4 * H, P)).astype(dtype)
    w["w_hr"] = rng.uniform(-s, s, (P, H)).astype(dtype)
    return w


def lstm_proj(mod, x, h0, c0, w, lengths=None, reverse=False, **kw):
    y, h, c, ctx = mod.lstm(x, h0, c0, w["w_ih"], w["w_hh"], w["b_ih"], w["b_hh"], lengths=lengths,
                            reverse=reverse, w_hr=w["w_hr"], **kw)
    return (y, h, c), ctx


@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
@pytest.mark.parametrize("case", PROJ_CASES, ids=[f"H{c[3]}P{c[4]}" for c in PROJ_CASES])
def test_lstm_projection_matches_twin(case, dtype):
    I, B, T, H, P, bias, lengths, reverse = case
    rng = np.random.default_rng(70 + H + P)
    w = proj_weights(rng, I, H, P, bias, dtype)
    x = (0.5 * rng.standard_normal((T, B, I))).astype(dtype)
    h0 = (0.5 * rng.standard_normal((B, P))).astype(dtype)
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype)
    lens = None if lengths is None else np.array(lengths)
    outs, ctx = lstm_proj(F, x, h0, c0, w, lens, reverse)
    eouts, ectx = lstm_proj(R, as64(x), as64(h0), as64(c0), {k: as64(v) for k, v in w.items()}, lens, reverse)
    for j, (a, e) in enumerate(zip(outs, eouts)):
        check_output(a, dtype, e.shape, f"output {j}")
        close(a, e, dtype, f"output {j}")
    assert outs[0].shape == (T, B, P) and outs[1].shape == (B, P) and outs[2].shape == (B, H)
    assert not np.any(outs[0][padded(lens, T, B)])
    douts = (rng.standard_normal((T, B, P)).astype(dtype), rng.standard_normal((B, P)).astype(dtype),
             rng.standard_normal((B, H)).astype(dtype))
    g = F.lstm_backward(ctx, *douts)
    eg = R.lstm_backward(ectx, *[as64(d) for d in douts])
    assert set(g) == set(eg) and "w_hr" in g
    for k, e in eg.items():
        if e is None:
            assert g[k] is None
            continue
        check_output(g[k], dtype, e.shape, f"gradient {k}")
        close(g[k], e, dtype, f"gradient {k}")


@pytest.mark.parametrize("lengths, reverse", [(None, False), ([4, 2], True)], ids=["fwd", "len_rev"])
def test_lstm_projection_finite_differences(lengths, reverse):
    rng = np.random.default_rng(71)
    T, B, I, H, P = 4, 2, 3, 5, 3
    w = proj_weights(rng, I, H, P, True, np.float64)
    vals = dict(w, x=rng.standard_normal((T, B, I)), h0=0.5 * rng.standard_normal((B, P)),
                c0=0.5 * rng.standard_normal((B, H)))
    lens = None if lengths is None else np.array(lengths)
    douts = (rng.standard_normal((T, B, P)), rng.standard_normal((B, P)), rng.standard_normal((B, H)))
    _, ctx = lstm_proj(F, vals["x"], vals["h0"], vals["c0"], w, lens, reverse)
    g = F.lstm_backward(ctx, *douts)
    dflat = np.concatenate([d.ravel() for d in douts])
    for name in ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]:
        def f(v, name=name):
            a = dict(vals, **{name: v})
            outs, _ = lstm_proj(F, a["x"], a["h0"], a["c0"], a, lens, reverse, training=False)
            return np.concatenate([o.ravel() for o in outs])
        assert_fd(g[name], f, vals[name], dflat, what=f"projection lengths={lengths}: d{name}")


@pytest.mark.parametrize("L, bidir, batch_first, bias, lengths", [
    (1, False, False, True, None), (2, True, False, True, None), (2, True, True, False, [5, 3, 1]),
    (3, False, False, True, [2, 5, 4])])
@pytest.mark.parametrize("dtype", FLOATS, ids=["f32", "f64"])
def test_lstm_projection_module_matches_torch(torch, L, bidir, batch_first, bias, lengths, dtype):
    T, B, I, H, P = 5, 3, 7, 11, 4
    torch.manual_seed(5)
    tm = torch.nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidir,
                       proj_size=P).double()
    m = nn.LSTM(I, H, num_layers=L, bias=bias, batch_first=batch_first, bidirectional=bidir, proj_size=P,
                dtype=dtype)
    sd = {k: v.detach().numpy().astype(dtype) for k, v in tm.state_dict().items()}
    assert list(m.state_dict()) == list(sd)
    m.load_state_dict(sd)
    tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in sd.items()})
    rng = np.random.default_rng(72)
    D = 2 if bidir else 1
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(dtype)
    h0 = rng.standard_normal((L * D, B, P)).astype(dtype)
    c0 = rng.standard_normal((L * D, B, H)).astype(dtype)
    y, (hn, cn) = m.forward(x, (h0, c0), lengths=None if lengths is None else np.array(lengths))
    tx, th0, tc0 = (torch.tensor(a.astype(np.float64), requires_grad=True) for a in (x, h0, c0))
    if lengths is None:
        ty, (thn, tcn) = tm(tx, (th0, tc0))
    else:
        pk = torch.nn.utils.rnn.pack_padded_sequence(tx, torch.tensor(lengths), batch_first=batch_first,
                                                     enforce_sorted=False)
        ty, (thn, tcn) = tm(pk, (th0, tc0))
        ty, _ = torch.nn.utils.rnn.pad_packed_sequence(ty, batch_first=batch_first, total_length=T)
    dy, dhn, dcn = (rng.standard_normal(a.shape).astype(dtype) for a in (y, hn, cn))
    ((ty * torch.from_numpy(dy.astype(np.float64))).sum() + (thn * torch.from_numpy(dhn.astype(np.float64))).sum()
     + (tcn * torch.from_numpy(dcn.astype(np.float64))).sum()).backward()
    dx, (dh0, dc0) = m.backward(dy, (dhn, dcn))
    for what, a, e in [("output", y, ty), ("h_n", hn, thn), ("c_n", cn, tcn), ("dx", dx, tx.grad),
                       ("dh0", dh0, th0.grad), ("dc0", dc0, tc0.grad)]:
        close(a, e.detach().numpy(), dtype, what)
    for name, p in tm.named_parameters():
        close(getattr(m, name).grad, p.grad.numpy(), dtype, f"grad of {name}")


def test_lstm_projection_thread_count_bitwise():
    rng = np.random.default_rng(73)
    T, B, I, H, P = 5, 16, 64, 96, 40
    w = proj_weights(rng, I, H, P, True, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((B, P)).astype(np.float32)
    c0 = rng.standard_normal((B, H)).astype(np.float32)
    lens = rng.integers(1, T + 1, B)
    douts = (rng.standard_normal((T, B, P)).astype(np.float32), rng.standard_normal((B, P)).astype(np.float32),
             rng.standard_normal((B, H)).astype(np.float32))

    def run(lengths, reverse):
        def fn():
            outs, ctx = lstm_proj(F, x, h0, c0, w, lengths, reverse)
            g = F.lstm_backward(ctx, *douts)
            return tuple(outs) + tuple(g[k] for k in sorted(g))
        return fn

    for lengths, reverse in [(None, False), (lens, True)]:
        assert_thread_invariant(run(lengths, reverse))


def test_lstm_projection_rejects_bad_input():
    rng = np.random.default_rng(74)
    T, B, I, H, P = 3, 2, 4, 6, 3
    w = proj_weights(rng, I, H, P, True, np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)

    def run(**kw):
        a = dict(w, **kw)
        return F.lstm(x, a.get("h0"), a.get("c0"), a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], w_hr=a["w_hr"])

    with pytest.raises(ValueError, match="w_hr"):
        run(w_hr=np.zeros((H, H), np.float32))  # proj_size must be < hidden_size
    with pytest.raises(ValueError, match="w_hr"):
        run(w_hr=np.zeros((P,), np.float32))
    with pytest.raises(ValueError, match="w_hh"):
        run(w_hh=np.zeros((4 * H, H), np.float32))  # columns must be proj_size
    with pytest.raises(ValueError, match="h0"):
        run(h0=np.zeros((B, H), np.float32))  # h has proj_size values
    with pytest.raises(ValueError, match="c0"):
        run(c0=np.zeros((B, P), np.float32))
    with pytest.raises(TypeError):
        run(w_hr=w["w_hr"].astype(np.float64))
    with pytest.raises(ValueError, match="only for LSTM"):
        F._core.recurrent_forward("gru", x, None, None, np.zeros((3 * H, I), np.float32),
                                  np.zeros((3 * H, P), np.float32), None, None, None, False, True, w["w_hr"])
    y, h, c, ctx = run()
    with pytest.raises(ValueError, match="dy"):
        F.lstm_backward(ctx, np.zeros((T, B, H), np.float32))
    with pytest.raises(ValueError, match="dc_n"):
        F.lstm_backward(ctx, None, None, np.zeros((B, P), np.float32))
    for bad in (dict(proj_size=6), dict(proj_size=-1)):
        with pytest.raises(ValueError, match="proj_size"):
            nn.LSTM(I, H, **bad)
    m = nn.LSTM(I, H, proj_size=P)
    with pytest.raises(ValueError, match="h_0"):
        m.forward(x, (np.zeros((1, B, H), np.float32), np.zeros((1, B, H), np.float32)))
    assert "proj_size=3" in repr(m)
