"""Benchmark suites beyond the foundation: recurrent layers, LayerNorm, BatchNorm, optimizers,
losses, attention and the Transformer encoder layer.

Registered into :mod:`seqcore.bench` (imported at its end); run them with
``python -m seqcore bench --suite rnn,layernorm,batchnorm,optim,losses,attention,transformer``. Same rules as there:
seqcore, the NumPy twin and PyTorch in one process, interleaved, medians.
"""
import math

import numpy as np

import seqcore
from seqcore import functional as F, nn, optim
from seqcore import reference as R
from seqcore.bench import Case, Contender, _randn, suite

_GATES = {"RNN": 1, "LSTM": 4, "GRU": 3}


def _torch_saved_bytes(torch, fn):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def _rnn_train_case(cfg, kind, T, B, H, repeats_hint=""):
    torch = cfg.torch
    G = _GATES[kind]
    rng = np.random.default_rng(0)
    sm = getattr(nn, kind)(H, H, rng=rng)
    x = _randn((T, B, H))
    dy = np.ones((T, B, H), np.float32)  # loss = output.sum()

    def sc():
        sm.forward(x)
        return sm.backward(dy, need_input_grad=False)[1]

    weights = [p.data for p in sm.parameters()]
    twin_f = {"RNN": R.rnn, "LSTM": R.lstm, "GRU": R.gru}[kind]
    twin_b = {"RNN": R.rnn_backward, "LSTM": R.lstm_backward, "GRU": R.gru_backward}[kind]

    def twin():
        if kind == "LSTM":
            *_, ctx = twin_f(x, None, None, *weights)
        else:
            *_, ctx = twin_f(x, None, *weights)
        return twin_b(ctx, dy)["h0"]

    con = {"seqcore": Contender(sc, f"nn.{kind}: forward + backward(need_input_grad=False)"),
           "numpy": Contender(twin, f"reference.{kind.lower()} + _backward (NumPy twin)")}
    notes = ""
    sm.forward(x)
    ctxs = sm._cache[0]
    sc_bytes = sum(c.nbytes for c in ctxs)
    if torch is not None:
        tm = getattr(torch.nn, kind)(H, H)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in sm.state_dict().items()})
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)

        def tt():
            out, _ = tm(tx)
            out.backward(tdy)
            return None

        con["torch"] = Contender(tt, f"torch.nn.{kind}: forward + backward (input needs no grad)")
        t_bytes, _ = _torch_saved_bytes(torch, lambda: tm(tx))
        notes = (f"activations kept for backward: seqcore {sc_bytes / T / 1024:.0f} KiB/step, "
                 f"torch {t_bytes / T / 1024:.0f} KiB/step")
    else:
        notes = f"activations kept for backward: seqcore {sc_bytes / T / 1024:.0f} KiB/step"
    flops = 2.0 * T * B * G * H * (H + H) + 2.0 * T * B * G * H * (2 * H + H)
    return Case("rnn", f"{kind} train T={T} B={B} H={H}", (T, B, H), "float32", con, flops=flops,
                peak="fma32", check=False, targets={}, notes=notes)


def _rnn_infer_case(cfg, kind, T, B, H):
    torch = cfg.torch
    G = _GATES[kind]
    sm = getattr(nn, kind)(H, H, rng=np.random.default_rng(0)).eval()
    x = _randn((T, B, H))
    con = {"seqcore": Contender(lambda: sm.forward(x)[0], f"nn.{kind} eval forward (training=False)")}
    weights = [p.data for p in sm.parameters()]
    if kind == "LSTM":
        con["numpy"] = Contender(lambda: R.lstm(x, None, None, *weights)[0], "reference.lstm forward")
    else:
        fn = R.rnn if kind == "RNN" else R.gru
        con["numpy"] = Contender(lambda: fn(x, None, *weights)[0], f"reference.{kind.lower()} forward")
    if torch is not None:
        tm = getattr(torch.nn, kind)(H, H)
        tm.load_state_dict({k: torch.from_numpy(v) for k, v in sm.state_dict().items()})
        tx = torch.from_numpy(x)

        def tt():
            with torch.no_grad():
                return tm(tx)[0].numpy()

        con["torch"] = Contender(tt, f"torch.nn.{kind} under no_grad")
    return Case("rnn", f"{kind} inference T={T} B={B} H={H}", (T, B, H), "float32", con,
                flops=2.0 * T * B * G * H * 2 * H, peak="fma32", check=True)


def _cell_step_case(cfg, H=256):
    torch = cfg.torch
    cell = nn.LSTMCell(H, H, rng=np.random.default_rng(0)).eval()
    x = _randn((1, H))
    h = np.zeros((1, H), np.float32)
    c = np.zeros((1, H), np.float32)
    con = {"seqcore": Contender(lambda: cell.step(x, (h, c))[0], "LSTMCell.step(x, (h, c)), B=1"),
           "numpy": Contender(lambda: R.lstm_cell(x, h, c, *[p.data for p in cell.parameters()])[0],
                              "reference.lstm_cell")}
    if torch is not None:
        tc = torch.nn.LSTMCell(H, H)
        tc.load_state_dict({k: torch.from_numpy(v) for k, v in cell.state_dict().items()})
        tx, th, tcc = (torch.from_numpy(a) for a in (x, h, c))

        def tt():
            with torch.no_grad():
                return tc(tx, (th, tcc))[0].numpy()

        con["torch"] = Contender(tt, "torch.nn.LSTMCell under no_grad, B=1")
    return Case("rnn", f"LSTMCell step B=1 H={H}", (1, H), "float32", con, flops=2.0 * 4 * H * 2 * H,
                peak="fma32", per_call_us=True, check=True, notes="streaming: one step per call")


@suite("rnn")
def suite_rnn(cfg):
    if cfg.quick:
        sizes = [("LSTM", 8, 4, 32), ("GRU", 8, 4, 32), ("RNN", 8, 4, 32)]
        small = [("LSTM", 6, 2, 16)]
    else:
        sizes = [("LSTM", 100, 64, 512), ("GRU", 100, 64, 512), ("RNN", 100, 64, 512)]
        small = [("LSTM", 50, 16, 128)]
    for kind, T, B, H in sizes + small:
        yield _rnn_train_case(cfg, kind, T, B, H)
    for kind, T, B, H in sizes + small:  # issue 3: inference at the same configs, all three cells
        yield _rnn_infer_case(cfg, kind, T, B, H)
    yield _cell_step_case(cfg, 32 if cfg.quick else 256)


@suite("rnn_large")
def suite_rnn_large(cfg):
    """LSTM T=200, B=64, I=H=1024: a few seconds per call (run on its own)."""
    yield _rnn_train_case(cfg, "LSTM", *((10, 8, 64) if cfg.quick else (200, 64, 1024)))


@suite("layernorm")
def suite_layernorm(cfg):
    torch = cfg.torch
    M, F_ = (256, 128) if cfg.quick else (8192, 1024)
    x = _randn((M, F_))
    dy = _randn((M, F_))
    w = np.ones(F_, np.float32)
    b = np.zeros(F_, np.float32)

    def sc():
        y, ctx = F.layer_norm(x, F_, w, b)
        return F.layer_norm_backward(ctx, dy)[0]

    def twin():
        y, ctx = R.layer_norm(x, F_, w, b)
        return R.layer_norm_backward(ctx, dy)[0]

    con = {"seqcore": Contender(sc, "functional.layer_norm + layer_norm_backward"),
           "numpy": Contender(twin, "reference.layer_norm + backward")}
    if torch is not None:
        ln = torch.nn.LayerNorm(F_)
        tx = torch.from_numpy(x).requires_grad_()
        tdy = torch.from_numpy(dy)

        def tt():
            tx.grad = None
            ln(tx).backward(tdy)
            return tx.grad.numpy()

        con["torch"] = Contender(tt, "torch.nn.LayerNorm forward + backward")
    # bytes: forward reads x, writes y; backward reads dy and x, writes dx
    nbytes = 5.0 * x.nbytes
    yield Case("layernorm", f"layer_norm fwd+bwd {M}x{F_}", (M, F_), "float32", con, nbytes=nbytes,
               peak="bw", check=True, notes="bytes = x, y, dy, x, dx (5 passes of M*F floats)")


@suite("batchnorm")
def suite_batchnorm(cfg):
    """BatchNorm1d training step on (N, C, L): forward (statistics, running-stat update, y)
    + backward (dx, dweight, dbias)."""
    torch = cfg.torch
    N, C, L = (16, 64, 32) if cfg.quick else (256, 512, 128)
    x = _randn((N, C, L))
    dy = _randn((N, C, L), scale=0.5)
    w = np.ones(C, np.float32)
    b = np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    rm_t, rv_t = rm.copy(), rv.copy()

    def sc():
        y, ctx = F.batch_norm(x, rm, rv, w, b, training=True)
        return F.batch_norm_backward(ctx, dy)[0]

    def twin():
        y, ctx = R.batch_norm(x, rm_t, rv_t, w, b, training=True)
        return R.batch_norm_backward(ctx, dy)[0]

    con = {"seqcore": Contender(sc, "functional.batch_norm(training=True) + batch_norm_backward"),
           "numpy": Contender(twin, "reference.batch_norm + backward")}
    if torch is not None:
        bn = torch.nn.BatchNorm1d(C)
        tx = torch.from_numpy(x).requires_grad_()
        tdy = torch.from_numpy(dy)

        def tt():
            tx.grad = None
            bn.weight.grad = bn.bias.grad = None
            bn(tx).backward(tdy)
            return tx.grad.numpy()

        con["torch"] = Contender(tt, "torch.nn.BatchNorm1d (train) forward + backward")
    # bytes: forward reads x twice (statistics, then y) and writes y; backward reads dy and x
    # twice (sums, then dx) and writes dx
    yield Case("batchnorm", f"batch_norm fwd+bwd {N}x{C}x{L}", (N, C, L), "float32", con, nbytes=8.0 * x.nbytes,
               peak="bw", check=True, notes="bytes = x, x, y, dy, x, dy, x, dx (8 passes of N*C*L floats)")


@suite("optim")
def suite_optim(cfg):
    torch = cfg.torch
    n = 1 << 16 if cfg.quick else 10_000_000

    def adam_case(shapes, label):
        rng = np.random.default_rng(0)
        params = [nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
        for p in params:
            p.grad[...] = rng.standard_normal(p.shape).astype(np.float32)
        opt = optim.Adam(params, lr=1e-3)
        tw = [(p.data.copy(), p.grad.copy(), np.zeros_like(p.data), np.zeros_like(p.data)) for p in params]
        step = [0]

        def twin():
            step[0] += 1
            for d, g, m, v in tw:
                R.adam_step(d, g, m, v, None, step[0])

        con = {"seqcore": Contender(opt.step, "optim.Adam.step (one fused pass per parameter)"),
               "numpy": Contender(twin, "reference.adam_step per parameter (NumPy in-place ufuncs)")}
        if torch is not None:
            for impl in ("fused", "foreach"):
                tps = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in params]
                for tp, p in zip(tps, params):
                    tp.grad = torch.from_numpy(p.grad.copy())
                to = torch.optim.Adam(tps, lr=1e-3, **{impl: True})
                con[f"torch_{impl}"] = Contender(to.step, f"torch.optim.Adam({impl}=True).step")
        total = sum(int(np.prod(s)) for s in shapes)
        return Case("optim", f"Adam step {label}", (total,), "float32", con, nbytes=7.0 * 4 * total,
                    peak="bw", check=False, ref=None,
                    notes="bytes: read p, g, m, v; write p, m, v")

    yield adam_case([(n,)], f"{n} params")
    yield adam_case([(n // 100,)] * 100, f"100 x {n // 100}")

    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(n // 100).astype(np.float32) for _ in range(100)]

    def sc_clip():
        return optim.clip_grad_norm_(grads, 1e9)

    con = {"seqcore": Contender(sc_clip, "optim.clip_grad_norm_ over 100 arrays (one C++ call)"),
           "numpy": Contender(lambda: R.clip_grad_norm(grads, 1e9), "reference.clip_grad_norm")}
    if torch is not None:
        tgs = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
        for tp, g in zip(tgs, grads):
            tp.grad = torch.from_numpy(g)
        con["torch"] = Contender(lambda: float(torch.nn.utils.clip_grad_norm_(tgs, 1e9, foreach=True)),
                                 "torch.nn.utils.clip_grad_norm_(foreach=True)")
    yield Case("optim", f"clip_grad_norm_ 100 x {n // 100}", (n,), "float32", con, nbytes=4.0 * n, peak="bw",
               check=False, ref=None, notes="max_norm large: measures the norm (scaling skipped)")


@suite("losses")
def suite_losses(cfg):
    torch = cfg.torch
    N, C = (256, 1000) if cfg.quick else (4096, 32000)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((N, C)) * 2).astype(np.float32)
    t = rng.integers(0, C, N)

    def sc():
        loss, lse = F.cross_entropy(x, t, return_lse=True)
        return F.cross_entropy_backward(1.0, x, t, lse=lse)

    con = {"seqcore": Contender(sc, "functional.cross_entropy + cross_entropy_backward"),
           "numpy": Contender(lambda: R.cross_entropy_backward(1.0, x, t), "reference.cross_entropy_backward")}
    if torch is not None:
        tx = torch.from_numpy(x).requires_grad_()
        tt_ = torch.from_numpy(t)

        def tt():
            tx.grad = None
            torch.nn.functional.cross_entropy(tx, tt_).backward()
            return tx.grad.numpy()

        con["torch"] = Contender(tt, "F.cross_entropy forward + backward")
    yield Case("losses", f"cross_entropy fwd+bwd {N}x{C}", (N, C), "float32", con, nbytes=3.0 * x.nbytes,
               peak="bw", check=True, notes="bytes: logits read twice, dlogits written once")


@suite("attention")
def suite_attention(cfg):
    """SDPA forward and forward+backward, B=8, heads=8, D=64 (the issue's configurations).
    flops count every product, backward's recomputation of Q K^T included: forward
    4 BH L S D, forward+backward 14 BH L S D (halved for causal)."""
    torch = cfg.torch
    B, H, D = (2, 2, 32) if cfg.quick else (8, 8, 64)
    lengths = (128,) if cfg.quick else (512, 1024)
    for T in lengths:
        for causal in (False, True):
            q, k, v = (_randn((B, H, T, D)) for _ in range(3))
            dout = _randn((B, H, T, D))
            frac = 0.5 if causal else 1.0
            tag = "causal" if causal else "full"
            con = {"seqcore": Contender(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                                        "functional.scaled_dot_product_attention"),
                   "numpy": Contender(lambda: R.scaled_dot_product_attention(q, k, v, is_causal=causal),
                                      "reference.scaled_dot_product_attention (naive softmax(QK^T)V)")}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(a) for a in (q, k, v))

                def tf():
                    with torch.no_grad():
                        return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal).numpy()

                con["torch"] = Contender(tf, "torch.nn.functional.scaled_dot_product_attention, no_grad")
            yield Case("attention", f"sdpa fwd T={T} {tag}", (B, H, T, D), "float32", con,
                       flops=4.0 * B * H * T * T * D * frac, peak="fma32",
                       targets={"seqcore/torch": (">=", 1.3), "seqcore/numpy": (">=", 5.0)})

            def sc_fb():
                out, ctx = F.scaled_dot_product_attention(q, k, v, is_causal=causal, return_ctx=True)
                return F.scaled_dot_product_attention_backward(ctx, dout)[0]

            def tw_fb():
                R.scaled_dot_product_attention(q, k, v, is_causal=causal)
                return R.scaled_dot_product_attention_backward(dout, q, k, v, is_causal=causal)[0]

            con = {"seqcore": Contender(sc_fb, "scaled_dot_product_attention + _backward"),
                   "numpy": Contender(tw_fb, "reference twin forward + backward")}
            if torch is not None:
                tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))
                tdo = torch.from_numpy(dout)

                def tfb():
                    tq.grad = None
                    torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal).backward(tdo)
                    return tq.grad.numpy()

                con["torch"] = Contender(tfb, "torch SDPA forward + backward")
            yield Case("attention", f"sdpa fwd+bwd T={T} {tag}", (B, H, T, D), "float32", con,
                       flops=14.0 * B * H * T * T * D * frac, peak="fma32",
                       targets={"seqcore/torch": (">=", 1.4), "seqcore/numpy": (">=", 5.0)},
                       notes="saved for backward: out + lse (T floats per head), no T x T buffer")


@suite("transformer")
def suite_transformer(cfg):
    """TransformerEncoderLayer training step (forward + backward, dropout 0, post-norm)."""
    torch = cfg.torch
    E, N, Fd, T, B = (64, 4, 128, 32, 4) if cfg.quick else (512, 8, 2048, 256, 16)
    layer = nn.TransformerEncoderLayer(E, N, Fd, dropout=0.0, rng=0)
    x = _randn((T, B, E))
    dy = _randn((T, B, E))

    def sc():
        layer.forward(x)
        return layer.backward(dy)

    con = {"seqcore": Contender(sc, "nn.TransformerEncoderLayer forward + backward")}
    if torch is not None:
        tl = torch.nn.TransformerEncoderLayer(E, N, Fd, dropout=0.0)
        layer.load_state_dict(tl.state_dict())
        tx = torch.from_numpy(x.copy()).requires_grad_()
        tdy = torch.from_numpy(dy)

        def tt():
            tx.grad = None
            tl(tx).backward(tdy)
            return tx.grad.numpy()

        con["torch"] = Contender(tt, "torch.nn.TransformerEncoderLayer forward + backward")
    # GEMM flops: QKV 3E^2, out-proj E^2, FFN 2 E F per token, x3 for forward + 2 backward
    # products; attention 14 B N T^2 D
    tok = T * B
    flops = 3 * 2.0 * tok * (4 * E * E + 2 * E * Fd) + 14.0 * B * N * T * T * (E // N)
    yield Case("transformer", f"encoder layer train step d={E} h={N} ff={Fd} T={T} B={B}", (T, B, E), "float32",
               con, flops=flops, peak="fma32", ref="torch", check=torch is not None,
               targets={"seqcore/torch": (">=", 1.3)})
