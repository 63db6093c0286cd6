"""Attention and the Transformer block: the flash-style SDPA kernel, MultiheadAttention,
FeedForward, Embedding, Dropout, positional encoding and the encoder layers, against the
NumPy twins (float32 and float64), float64 central finite differences, and PyTorch.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

import seqcore
from seqcore import functional as F, nn, reference as R

from conftest import assert_close, assert_fd, assert_thread_invariant, as64, run_fuzz_child

FLOATS = (np.float32, np.float64)
SIZES = (1, 2, 3, 15, 16, 17, 31, 33, 63, 65)


def close(actual, expected, dtype, what, op="attention"):
    """Compare with atol relative to the largest expected magnitude of the array."""
    e = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
    assert_close(actual, e, op, dtype, scale=scale, what=what)


def rand(rng, shape, dtype, s=1.0):
    return (rng.standard_normal(shape) * s).astype(dtype)


def sdpa_twin(q, k, v, mask=None, causal=False, scale=None):
    return R.scaled_dot_product_attention(as64(q), as64(k), as64(v), attn_mask=mask, is_causal=causal, scale=scale)


def sdpa_grads_twin(dout, q, k, v, mask=None, causal=False, scale=None):
    return R.scaled_dot_product_attention_backward(as64(dout), as64(q), as64(k), as64(v), attn_mask=mask,
                                                   is_causal=causal, scale=scale)


# ----------------------------------------------------------------------------- SDPA vs twin
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("L,S,E,Ev", [(1, 1, 1, 1), (5, 7, 3, 4), (17, 16, 15, 33), (65, 31, 16, 17),
                                      (130, 129, 64, 64), (33, 300, 8, 5), (70, 65, 63, 1)])
def test_sdpa_matches_twin(L, S, E, Ev, causal, dtype, rng):
    q, k, v = rand(rng, (2, L, E), dtype), rand(rng, (2, S, E), dtype), rand(rng, (2, S, Ev), dtype)
    out, ctx = F.scaled_dot_product_attention(q, k, v, is_causal=causal, return_ctx=True)
    assert out.dtype == dtype and out.shape == (2, L, Ev) and out.flags.c_contiguous
    close(out, sdpa_twin(q, k, v, causal=causal), dtype, "out")
    dout = rand(rng, out.shape, dtype)
    for name, got, want in zip("qkv", F.scaled_dot_product_attention_backward(ctx, dout),
                               sdpa_grads_twin(dout, q, k, v, causal=causal)):
        assert got.dtype == dtype
        close(got, want, dtype, "d" + name)


@given(L=st.sampled_from(SIZES), S=st.sampled_from(SIZES), E=st.sampled_from(SIZES),
       Ev=st.sampled_from(SIZES), causal=st.booleans(), masked=st.sampled_from([None, "bool", "float"]),
       seed=st.integers(0, 2 ** 16))
def test_sdpa_property_sizes_and_masks(L, S, E, Ev, causal, masked, seed):
    rng = np.random.default_rng(seed)
    q, k, v = rand(rng, (L, E), np.float32), rand(rng, (S, E), np.float32), rand(rng, (S, Ev), np.float32)
    mask = None
    if masked == "bool":
        mask = rng.random((L, S)) > 0.3
    elif masked == "float":
        mask = rand(rng, (L, S), np.float32)
    out, ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, return_ctx=True)
    close(out, sdpa_twin(q, k, v, mask, causal), np.float32, "out")
    dout = rand(rng, out.shape, np.float32)
    for name, got, want in zip("qkv", F.scaled_dot_product_attention_backward(ctx, dout),
                               sdpa_grads_twin(dout, q, k, v, mask, causal)):
        close(got, want, np.float32, "d" + name)


@pytest.mark.parametrize("dtype", FLOATS)
def test_sdpa_masks_broadcast_scale_and_fully_masked_rows(dtype, rng):
    q, k, v = rand(rng, (2, 3, 9, 8), dtype), rand(rng, (1, 3, 12, 8), dtype), rand(rng, (2, 1, 12, 5), dtype)
    keep = rng.random((2, 1, 9, 12)) > 0.4
    keep[0, 0, 4] = False  # a query row that sees no key at all
    for mask in (keep, np.where(keep, 0.0, -np.inf).astype(dtype), rand(rng, (9, 12), dtype)):
        out, ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.37, return_ctx=True)
        assert out.shape == (2, 3, 9, 5)
        assert np.isfinite(out).all()
        close(out, sdpa_twin(q, k, v, mask, scale=0.37), dtype, "out")
        dout = rand(rng, out.shape, dtype)
        grads = F.scaled_dot_product_attention_backward(ctx, dout)
        for name, got, want, src in zip("qkv", grads, sdpa_grads_twin(dout, q, k, v, mask, scale=0.37), (q, k, v)):
            assert got.shape == src.shape and np.isfinite(got).all()
            close(got, want, dtype, "d" + name)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert np.all(out[0, :, 4] == 0), "a fully masked row gives zeros"


def test_sdpa_strided_lists_and_empty(rng):
    base = rand(rng, (4, 20, 2, 16), np.float32)
    q = base[::2, :, 0]  # strided, non-contiguous
    k = base[1::2, ::-1, 1]  # negative strides
    v = np.ascontiguousarray(base[1::2, :, 1, :7])
    close(F.scaled_dot_product_attention(q, k, v), sdpa_twin(q, k, v), np.float32, "strided")
    ql = [[0.5, -1.0], [2.0, 0.0]]
    out = F.scaled_dot_product_attention(ql, ql, ql)
    assert out.dtype == np.float64
    close(out, sdpa_twin(np.array(ql), np.array(ql), np.array(ql)), np.float64, "lists")
    # empty: no keys -> zeros; no queries -> empty output
    z = F.scaled_dot_product_attention(rand(rng, (2, 3, 4), np.float32), np.zeros((2, 0, 4), np.float32),
                                       np.zeros((2, 0, 6), np.float32))
    assert z.shape == (2, 3, 6) and not z.any()
    e, ctx = F.scaled_dot_product_attention(np.zeros((2, 0, 4)), rand(rng, (2, 5, 4), np.float64),
                                            rand(rng, (2, 5, 3), np.float64), return_ctx=True)
    assert e.shape == (2, 0, 3)
    dq, dk, dv = F.scaled_dot_product_attention_backward(ctx, np.zeros((2, 0, 3)))
    assert dq.shape == (2, 0, 4) and not dk.any() and not dv.any()


# ----------------------------------------------------------------------------- finite differences
@pytest.mark.parametrize("causal,masked,dropout", [(False, None, 0.0), (True, None, 0.0), (False, "bool", 0.0),
                                                   (False, "float", 0.0), (True, None, 0.3)])
def test_sdpa_finite_differences(causal, masked, dropout, rng):
    L, S, E, Ev = 5, 6, 3, 4
    q, k, v = rand(rng, (2, L, E), np.float64), rand(rng, (2, S, E), np.float64), rand(rng, (2, S, Ev), np.float64)
    mask = None
    if masked == "bool":
        mask = rng.random((L, S)) > 0.3
    elif masked == "float":
        mask = rng.standard_normal((L, S))
    kw = dict(attn_mask=mask, is_causal=causal, dropout_p=dropout)
    out, ctx = F.scaled_dot_product_attention(q, k, v, return_ctx=True, rng=7, **kw)
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = F.scaled_dot_product_attention_backward(ctx, dout)
    # the same seed -> the same dropout mask: the function is deterministic for differencing
    f = lambda qq, kk, vv: F.scaled_dot_product_attention(qq, kk, vv, rng=7, **kw)
    assert_fd(dq, lambda x: f(x, k, v), q, dout, "dq")
    assert_fd(dk, lambda x: f(q, x, v), k, dout, "dk")
    assert_fd(dv, lambda x: f(q, k, x), v, dout, "dv")


# ----------------------------------------------------------------------------- PyTorch
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", ["plain", "causal", "bool", "float", "scale"])
def test_sdpa_matches_torch(case, dtype, rng):
    torch = pytest.importorskip("torch")
    q, k, v = rand(rng, (2, 3, 33, 16), dtype), rand(rng, (2, 3, 47, 16), dtype), rand(rng, (2, 3, 47, 9), dtype)
    mask, kw = None, {}
    if case == "causal":
        kw["is_causal"] = True
    elif case == "bool":
        mask = rng.random((2, 1, 33, 47)) > 0.3
        mask[..., 0] = True  # torch gives NaN on fully masked rows; keep every row alive
    elif case == "float":
        mask = rand(rng, (33, 47), dtype)
    elif case == "scale":
        kw["scale"] = 0.05
    out, ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, return_ctx=True, **kw)
    tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))
    tm = None if mask is None else torch.from_numpy(mask)
    to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, **kw)
    dout = rand(rng, out.shape, dtype)
    to.backward(torch.from_numpy(dout))
    close(out, to.detach().numpy(), dtype, "out vs torch", op="torch" if dtype == np.float64 else "attention")
    for name, got, t in zip("qkv", F.scaled_dot_product_attention_backward(ctx, dout), (tq, tk, tv)):
        close(got, t.grad.numpy(), dtype, "d" + name + " vs torch", op="torch" if dtype == np.float64 else "attention")


# ----------------------------------------------------------------------------- dropout
def test_attention_dropout_reproducible_and_unbiased(rng):
    q, k, v = rand(rng, (4, 64, 8), np.float32), rand(rng, (4, 64, 8), np.float32), np.ones((4, 64, 1), np.float32)
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=3)
    b = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=3)
    c = F.scaled_dot_product_attention(q, k, v, dropout_p=0.25, rng=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # out = sum_j p~_ij * 1: E[out] = 1 under inverted dropout
    assert abs(float(a.mean()) - 1.0) < 0.05
    assert not F.scaled_dot_product_attention(q, k, v, dropout_p=1.0).any()
    # the weights MHA returns are the dropped ones, and out = weights @ v per head
    m = nn.MultiheadAttention(8, 2, dropout=0.5, rng=0)
    x = rand(rng, (10, 3, 8), np.float32)
    out, w = m.forward(x, x, x, need_weights=True, average_attn_weights=False)
    assert w.shape == (3, 2, 10, 10)
    kept = (w > 0).mean()
    assert 0.35 < kept < 0.65


@pytest.mark.parametrize("dtype", FLOATS)
def test_dropout_module_and_functional(dtype, rng):
    x = rand(rng, (1000, 37), dtype)
    d = nn.Dropout(0.3, rng=5)
    y = d.forward(x)
    keep = y != 0
    assert 0.65 < keep.mean() < 0.75
    assert_close(y[keep], x[keep] / 0.7, "activation", dtype)
    dx = d.backward(np.ones_like(x))
    assert np.array_equal(dx != 0, keep)
    d.eval()
    assert d.forward(x) is x
    d2 = nn.Dropout(0.3, rng=5)
    assert np.array_equal(d2.forward(x), y), "the same seed gives the same mask"
    y1, s1 = F.dropout(x, 0.5, rng=1, return_seed=True)
    assert np.array_equal(F.dropout_backward(x, 0.5, s1), y1)
    with pytest.raises(ValueError):
        nn.Dropout(1.5)


# ----------------------------------------------------------------------------- threads, ISA
@pytest.mark.parametrize("BH,causal,masked,dropout", [(1, False, False, 0.0), (1, True, True, 0.0),
                                                      (5, False, True, 0.2), (4, True, False, 0.0)])
def test_attention_bitwise_across_threads(BH, causal, masked, dropout, rng):
    L, S, E = 150, 700, 32
    q, k, v = rand(rng, (BH, L, E), np.float32), rand(rng, (BH, S, E), np.float32), rand(rng, (BH, S, 24), np.float32)
    mask = (rng.random((L, S)) > 0.2) if masked else None
    dout = rand(rng, (BH, L, 24), np.float32)

    def run():
        out, ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout,
                                                  return_ctx=True, rng=11)
        return (out, ctx["lse"]) + tuple(F.scaled_dot_product_attention_backward(ctx, dout))

    assert_thread_invariant(run)


def test_memory_grows_linearly_with_length():
    """Forward + backward at T = 4096 (one head group) must not build a T x T buffer: the
    peak resident memory added by the call stays far below T*T*4 bytes = 64 MiB."""
    code = r"""
import resource, numpy as np, seqcore
from seqcore import functional as F
T, E = int(__import__('sys').argv[1]), 64
rng = np.random.default_rng(0)
q, k, v = (rng.standard_normal((1, T, E)).astype(np.float32) for _ in range(3))
dout = rng.standard_normal((1, T, E)).astype(np.float32)
warm = F.scaled_dot_product_attention(q[:, :64], k[:, :64], v[:, :64], return_ctx=True)
F.scaled_dot_product_attention_backward(warm[1], dout[:, :64])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, ctx = F.scaled_dot_product_attention(q, k, v, return_ctx=True)
g = F.scaled_dot_product_attention_backward(ctx, dout)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    extra = {}
    for T in (1024, 4096):
        r = subprocess.run([sys.executable, "-c", code, str(T)], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert r.returncode == 0, r.stderr
        extra[T] = int(r.stdout.split()[-1]) * 1024  # ru_maxrss is in KiB
    tt = 4096 * 4096 * 4
    assert extra[4096] < tt / 4, f"extra bytes at T=4096: {extra[4096]} (a T x T float32 buffer is {tt})"
    # linear: 4x the length costs at most ~4x the bytes (+ slack for allocator granularity)
    assert extra[4096] <= 4 * extra[1024] + (8 << 20), extra


# ----------------------------------------------------------------------------- bad input
def test_sdpa_bad_input(rng):
    q, k, v = rand(rng, (2, 5, 4), np.float32), rand(rng, (2, 6, 4), np.float32), rand(rng, (2, 6, 3), np.float32)
    with pytest.raises(ValueError, match="key"):
        F.scaled_dot_product_attention(q, rand(rng, (2, 6, 5), np.float32), v)
    with pytest.raises(ValueError, match="value"):
        F.scaled_dot_product_attention(q, k, rand(rng, (2, 7, 3), np.float32))
    with pytest.raises(ValueError, match="query"):
        F.scaled_dot_product_attention(np.ones(4, np.float32), k, v)
    with pytest.raises(ValueError, match="broadcast"):
        F.scaled_dot_product_attention(q, rand(rng, (3, 6, 4), np.float32), v)
    with pytest.raises(ValueError, match="attn_mask"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((5, 7), bool))
    with pytest.raises(TypeError, match="attn_mask"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((5, 6), np.int32))
    with pytest.raises(TypeError):
        F.scaled_dot_product_attention(q.astype(np.int64), k, v)
    with pytest.raises(TypeError, match="mixed"):
        F.scaled_dot_product_attention(q, k.astype(np.float64), v)
    with pytest.raises(ValueError, match="dropout"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=1.5)
    out, ctx = F.scaled_dot_product_attention(q, k, v, return_ctx=True)
    with pytest.raises(ValueError, match="dout"):
        F.scaled_dot_product_attention_backward(ctx, np.ones((2, 5, 4), np.float32))


def test_mha_bad_input(rng):
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(10, 3)
    m = nn.MultiheadAttention(8, 2)
    x = rand(rng, (5, 2, 8), np.float32)
    with pytest.raises(ValueError, match="key_padding_mask"):
        m.forward(x, x, x, key_padding_mask=np.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="attn_mask"):
        m.forward(x, x, x, attn_mask=np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="key"):
        m.forward(x, rand(rng, (5, 3, 8), np.float32), rand(rng, (5, 3, 8), np.float32))
    with pytest.raises(TypeError):
        m.forward(x.astype(np.float64), x.astype(np.float64), x.astype(np.float64))
    with pytest.raises(RuntimeError):
        nn.MultiheadAttention(8, 2).backward(x)
    with pytest.raises(ValueError, match="together"):
        F.multi_head_attention(x, x, x, 2, m.in_proj_weight.data, m.in_proj_bias.data, m.out_proj.weight.data,
                               m.out_proj.bias.data, bias_k=np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="bias_k"):
        F.multi_head_attention(x, x, x, 2, m.in_proj_weight.data, m.in_proj_bias.data, m.out_proj.weight.data,
                               m.out_proj.bias.data, bias_k=np.zeros(7, np.float32), bias_v=np.zeros(8, np.float32))


# ----------------------------------------------------------------------------- MHA
def _mha_twin(m, q, k, v, kpm=None, am=None, causal=False):
    return R.multi_head_attention(as64(q), as64(k), as64(v), as64(m.in_proj_weight.data),
                                  as64(m.in_proj_bias.data), as64(m.out_proj.weight.data),
                                  as64(m.out_proj.bias.data), m.num_heads, key_padding_mask=kpm, attn_mask=am,
                                  is_causal=causal)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", ["self", "kv", "cross"])
@pytest.mark.parametrize("masks", [None, "bool", "float", "causal"])
def test_mha_matches_twin(mode, masks, dtype, rng):
    E, N, L, S, B = 12, 3, 7, 9, 2
    m = nn.MultiheadAttention(E, N, dtype=dtype, rng=1)
    m.in_proj_bias.data = rand(rng, (3 * E,), dtype)
    m.out_proj.bias.data = rand(rng, (E,), dtype)
    q = rand(rng, (L, B, E), dtype)
    if mode == "self":
        k = v = q
        S = L
    elif mode == "kv":
        k = v = rand(rng, (S, B, E), dtype)
    else:
        k, v = rand(rng, (S, B, E), dtype), rand(rng, (S, B, E), dtype)
    kpm = am = None
    causal = masks == "causal"
    if masks == "bool":
        kpm = rng.random((B, S)) > 0.7
        kpm[:, 0] = False
        am = rng.random((B * N, L, S)) > 0.8
    elif masks == "float":
        kpm = rand(rng, (B, S), dtype)
        am = rand(rng, (L, S), dtype)
    out, w = m.forward(q, k, v, key_padding_mask=kpm, attn_mask=am, is_causal=causal)
    assert w is None and out.shape == (L, B, E) and out.dtype == dtype
    ref, rctx = _mha_twin(m, q, k, v, kpm, am, causal)
    close(out, ref, dtype, "out")
    dout = rand(rng, out.shape, dtype)
    dq, dk, dv = m.backward(dout)
    g = R.multi_head_attention_backward(rctx, as64(dout))
    if mode == "self":
        assert dk is None and dv is None
        close(dq, g["query"] + g["key"] + g["value"], dtype, "dx")
    elif mode == "kv":
        assert dv is None
        close(dq, g["query"], dtype, "dq")
        close(dk, g["key"] + g["value"], dtype, "dkv")
    else:
        for name, got in (("query", dq), ("key", dk), ("value", dv)):
            close(got, g[name], dtype, "d" + name)
    close(m.in_proj_weight.grad, g["in_proj_weight"], dtype, "d in_proj_weight")
    close(m.in_proj_bias.grad, g["in_proj_bias"], dtype, "d in_proj_bias")
    close(m.out_proj.weight.grad, g["out_proj_weight"], dtype, "d out_proj.weight")
    close(m.out_proj.bias.grad, g["out_proj_bias"], dtype, "d out_proj.bias")


def _torch_mha(torch, m, dtype, **kw):
    tm = torch.nn.MultiheadAttention(m.embed_dim, m.num_heads, **kw)
    tm = tm.double() if dtype == np.float64 else tm
    m.load_state_dict(tm.state_dict())
    return tm


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_matches_torch(batch_first, dtype, rng):
    torch = pytest.importorskip("torch")
    E, N, L, S, B = 16, 4, 6, 11, 3
    m = nn.MultiheadAttention(E, N, batch_first=batch_first, dtype=dtype)
    tm = _torch_mha(torch, m, dtype, batch_first=batch_first)
    shp = lambda T: (B, T, E) if batch_first else (T, B, E)
    q = rand(rng, shp(L), dtype)
    kv = rand(rng, shp(S), dtype)
    kpm = rng.random((B, S)) > 0.6
    kpm[:, 0] = False
    op = "torch" if dtype == np.float64 else "attention"
    for need, avg in ((False, True), (True, True), (True, False)):
        tq, tkv = torch.from_numpy(q.copy()).requires_grad_(), torch.from_numpy(kv.copy()).requires_grad_()
        to, tw = tm(tq, tkv, tkv, key_padding_mask=torch.from_numpy(kpm), need_weights=need,
                    average_attn_weights=avg)
        m.zero_grad()
        out, w = m.forward(q, kv, kv, key_padding_mask=kpm, need_weights=need, average_attn_weights=avg)
        close(out, to.detach().numpy(), dtype, "out", op=op)
        if need:
            close(w, tw.detach().numpy(), dtype, "weights", op=op)
        dout = rand(rng, out.shape, dtype)
        tm.zero_grad()
        to.backward(torch.from_numpy(dout))
        dq, dkv, dv = m.backward(dout)
        assert dv is None
        close(dq, tq.grad.numpy(), dtype, "dq", op=op)
        close(dkv, tkv.grad.numpy(), dtype, "dkv", op=op)
        for (name, p), (_, tp) in zip(m.named_parameters(), tm.named_parameters()):
            close(p.grad, tp.grad.numpy(), dtype, "grad " + name, op=op)


def test_mha_kdim_vdim_unbatched_and_state_dict(rng):
    torch = pytest.importorskip("torch")
    m = nn.MultiheadAttention(8, 2, kdim=5, vdim=3, dtype=np.float64)
    tm = _torch_mha(torch, m, np.float64, kdim=5, vdim=3)
    assert list(m.state_dict()) == list(tm.state_dict())
    q, k, v = rand(rng, (4, 8), np.float64), rand(rng, (6, 5), np.float64), rand(rng, (6, 3), np.float64)
    tq, tk, tv = (torch.from_numpy(a.copy()).requires_grad_() for a in (q, k, v))
    to, tw = tm(tq, tk, tv, attn_mask=torch.from_numpy(np.triu(np.ones((4, 6), bool), 1)))
    out, w = m.forward(q, k, v, attn_mask=np.triu(np.ones((4, 6), bool), 1), need_weights=True)
    close(out, to.detach().numpy(), np.float64, "out", op="torch")
    close(w, tw.detach().numpy(), np.float64, "weights", op="torch")
    dout = rand(rng, out.shape, np.float64)
    to.backward(torch.from_numpy(dout))
    for name, got, t in zip("qkv", m.backward(dout), (tq, tk, tv)):
        close(got, t.grad.numpy(), np.float64, "d" + name, op="torch")
    for (name, p), (_, tp) in zip(m.named_parameters(), tm.named_parameters()):
        close(p.grad, tp.grad.numpy(), np.float64, "grad " + name, op="torch")


def test_mha_finite_differences(rng):
    m = nn.MultiheadAttention(6, 2, dtype=np.float64, rng=3)
    m.in_proj_bias.data = rng.standard_normal(18)
    x = rng.standard_normal((4, 2, 6))
    kpm = np.array([[False, False, True, False], [False, True, False, False]])
    out, _ = m.forward(x, x, x, key_padding_mask=kpm)
    dout = rng.standard_normal(out.shape)
    dx, _, _ = m.backward(dout)
    f = lambda xx: m.forward(xx, xx, xx, key_padding_mask=kpm)[0]
    assert_fd(dx, f, x, dout, "dx")
    _assert_param_fd(m, m.in_proj_weight, x, kpm, dout, "d in_proj_weight")


def _assert_param_fd(m, p, x, kpm, dout, what):
    """p.grad (from the last backward) against central differences of self-attention on x."""
    gp = p.grad.copy()

    def fp(pp):
        old = p.data
        p.data = pp
        try:
            return m.forward(x, x, x, key_padding_mask=kpm)[0]
        finally:
            p.data = old

    assert_fd(gp, fp, p.data, dout, what)


# PyTorch's add_bias_kv (a learned key and value appended to every sequence) and add_zero_attn.
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kw, self_attn, masks, causal, need", [
    (dict(add_bias_kv=True), True, False, False, False),
    (dict(add_zero_attn=True), False, True, False, True),
    (dict(add_bias_kv=True, add_zero_attn=True), True, True, False, False),
    (dict(add_bias_kv=True, add_zero_attn=True), True, False, True, False),
    (dict(add_bias_kv=True), True, True, True, True),
    (dict(add_bias_kv=True, kdim=6, vdim=5, batch_first=True), False, True, False, False),
], ids=["bias_kv", "zero_attn", "both", "both_causal", "bias_kv_causal_kpm", "kdim_vdim"])
def test_mha_bias_kv_zero_attn_match_torch(kw, self_attn, masks, causal, need, dtype, rng):
    torch = pytest.importorskip("torch")
    E, N, L, S, B = 16, 4, 5, 7, 3
    m = nn.MultiheadAttention(E, N, dtype=dtype, **kw)
    tm = _torch_mha(torch, m, dtype, **kw)
    assert list(m.state_dict()) == list(tm.state_dict())
    bf = kw.get("batch_first", False)
    shp = lambda T, F_: (B, T, F_) if bf else (T, B, F_)
    if self_attn:
        q = k = v = rand(rng, shp(S, E), dtype)
        Lq = S
    else:
        q, k, v = rand(rng, shp(L, E), dtype), rand(rng, shp(S, kw.get("kdim", E)), dtype), \
            rand(rng, shp(S, kw.get("vdim", E)), dtype)
        Lq = L
    kpm = None
    if masks:
        kpm = rng.random((B, S)) < 0.3
        kpm[:, 0] = False
    am = np.triu(np.ones((Lq, S), bool), 1) if causal else None
    tq = torch.from_numpy(q.copy()).requires_grad_()
    tk, tv = (tq, tq) if self_attn else (torch.from_numpy(k.copy()).requires_grad_(),
                                         torch.from_numpy(v.copy()).requires_grad_())
    to, tw = tm(tq, tk, tv, key_padding_mask=None if kpm is None else torch.from_numpy(kpm),
                attn_mask=None if am is None else torch.from_numpy(am), need_weights=need, is_causal=causal)
    out, w = m.forward(q, k, v, key_padding_mask=kpm, attn_mask=am, need_weights=need, is_causal=causal)
    close(out, to.detach().numpy(), dtype, "out", op="torch")
    if need:
        close(w, tw.detach().numpy(), dtype, "weights", op="torch")
    dout = rand(rng, out.shape, dtype)
    to.backward(torch.from_numpy(dout))
    dq, dk, dv = m.backward(dout)
    close(dq, tq.grad.numpy(), dtype, "dq", op="torch")
    if not self_attn:
        close(dk, tk.grad.numpy(), dtype, "dk", op="torch")
        close(dv, tv.grad.numpy(), dtype, "dv", op="torch")
    for (name, p), (tname, tp) in zip(m.named_parameters(), tm.named_parameters()):
        assert name == tname
        close(p.grad, tp.grad.numpy(), dtype, "grad " + name, op="torch")


def test_mha_bias_kv_finite_differences(rng):
    m = nn.MultiheadAttention(6, 2, add_bias_kv=True, add_zero_attn=True, dtype=np.float64, rng=4)
    x = rng.standard_normal((4, 2, 6))
    kpm = np.array([[False, False, True, False], [False, True, False, False]])
    out, _ = m.forward(x, x, x, key_padding_mask=kpm)
    dout = rng.standard_normal(out.shape)
    dx, _, _ = m.backward(dout)
    assert_fd(dx, lambda xx: m.forward(xx, xx, xx, key_padding_mask=kpm)[0], x, dout, "dx")
    _assert_param_fd(m, m.bias_k, x, kpm, dout, "d bias_k")
    _assert_param_fd(m, m.bias_v, x, kpm, dout, "d bias_v")


# ----------------------------------------------------------------------------- transformer layers
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first,activation", [(False, "relu"), (True, "gelu")])
def test_encoder_layer_matches_torch(norm_first, batch_first, activation, dtype, rng):
    torch = pytest.importorskip("torch")
    E, N, Fd, T, B = 24, 4, 40, 9, 3
    tl = torch.nn.TransformerEncoderLayer(E, N, Fd, dropout=0.0, activation=activation, batch_first=batch_first,
                                          norm_first=norm_first)
    tl = (tl.double() if dtype == np.float64 else tl).eval()
    sl = nn.TransformerEncoderLayer(E, N, Fd, dropout=0.0, activation=activation, batch_first=batch_first,
                                    norm_first=norm_first, dtype=dtype)
    assert list(sl.state_dict()) == list(tl.state_dict())
    sl.load_state_dict(tl.state_dict())
    sl.eval()
    x = rand(rng, (B, T, E) if batch_first else (T, B, E), dtype)
    kpm = rng.random((B, T)) > 0.7
    kpm[:, 0] = False
    op = "torch" if dtype == np.float64 else "attention"
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = tl(tx, src_key_padding_mask=torch.from_numpy(kpm))
    y = sl.forward(x, src_key_padding_mask=kpm)
    close(y, ty.detach().numpy(), dtype, "out", op=op)
    dy = rand(rng, y.shape, dtype)
    ty.backward(torch.from_numpy(dy))
    close(sl.backward(dy), tx.grad.numpy(), dtype, "dx", op=op)
    for (name, p), (_, tp) in zip(sl.named_parameters(), tl.named_parameters()):
        close(p.grad, tp.grad.numpy(), dtype, "grad " + name, op=op)


def test_encoder_stack_causal_matches_torch(rng):
    torch = pytest.importorskip("torch")
    E, N, T, B = 16, 2, 8, 2
    tl = torch.nn.TransformerEncoderLayer(E, N, 32, dropout=0.0).double()
    te = torch.nn.TransformerEncoder(tl, 2, norm=torch.nn.LayerNorm(E).double(), enable_nested_tensor=False).eval()
    se = nn.TransformerEncoder(nn.TransformerEncoderLayer(E, N, 32, dropout=0.0, dtype=np.float64), 2,
                               norm=nn.LayerNorm(E, dtype=np.float64))
    assert list(se.state_dict()) == list(te.state_dict())
    se.load_state_dict(te.state_dict())
    x = rand(rng, (T, B, E), np.float64)
    causal = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    ty = te(tx, mask=causal, is_causal=True)
    y = se.forward(x, mask=causal.numpy(), is_causal=True)
    close(y, ty.detach().numpy(), np.float64, "out", op="torch")
    # the causal flag alone gives the same result as the float mask
    close(se.forward(x, is_causal=True), y, np.float64, "is_causal", op="torch")
    dy = rand(rng, y.shape, np.float64)
    ty.backward(torch.from_numpy(dy))
    close(se.backward(dy), tx.grad.numpy(), np.float64, "dx", op="torch")
    for (name, p), (_, tp) in zip(se.named_parameters(), te.named_parameters()):
        close(p.grad, tp.grad.numpy(), np.float64, "grad " + name, op="torch")


def test_encoder_layer_finite_differences(rng):
    layer = nn.TransformerEncoderLayer(6, 2, 10, dropout=0.0, dtype=np.float64, rng=2)
    x = rng.standard_normal((3, 2, 6))
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    assert_fd(layer.backward(dy), lambda xx: layer.forward(xx), x, dy, "dx")


def test_encoder_layer_dropout_trains_and_is_reproducible(rng):
    x = rand(rng, (6, 2, 8), np.float32)
    a = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, rng=4)
    b = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, rng=4)
    ya, yb = a.forward(x), b.forward(x)
    assert np.array_equal(ya, yb)
    dx = a.backward(np.ones_like(ya))
    assert np.isfinite(dx).all()
    a.eval()
    assert not np.array_equal(a.forward(x), ya)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, rng=1), 2, rng=9)
    s0 = enc.layers[0].dropout.rng.integers(1 << 30)
    s1 = enc.layers[1].dropout.rng.integers(1 << 30)
    assert s0 != s1, "stacked copies get their own dropout streams"


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_matches_twin_and_fd(activation, dtype, rng):
    ff = nn.FeedForward(7, 13, activation=activation, dtype=dtype, rng=0)
    x = rand(rng, (4, 3, 7), dtype)
    y = ff.forward(x)
    l1, l2 = ff.linear1, ff.linear2
    ref, rctx = R.feed_forward(as64(x), as64(l1.weight.data), as64(l1.bias.data), as64(l2.weight.data),
                               as64(l2.bias.data), activation)
    close(y, ref, dtype, "ffn")
    dy = rand(rng, y.shape, dtype)
    dx = ff.backward(dy)
    g = R.feed_forward_backward(rctx, as64(dy))
    close(dx, g["x"], dtype, "dx")
    for name, p in (("w1", l1.weight), ("b1", l1.bias), ("w2", l2.weight), ("b2", l2.bias)):
        close(p.grad, g[name], dtype, name)
    if dtype == np.float64:
        assert_fd(dx, lambda xx: ff.forward(xx), x, dy, "dx")


# ----------------------------------------------------------------------------- embedding, PE
@pytest.mark.parametrize("dtype", FLOATS)
def test_embedding_matches_torch_and_twin(dtype, rng):
    torch = pytest.importorskip("torch")
    ids = rng.integers(0, 11, size=(5, 7))
    ids[0, :3] = 2  # repeated ids accumulate
    for kw in ({}, {"padding_idx": 2}, {"padding_idx": -1, "scale_grad_by_freq": True}, {"max_norm": 1.0}):
        te = torch.nn.Embedding(11, 6, **kw)
        te = te.double() if dtype == np.float64 else te
        se = nn.Embedding(11, 6, dtype=dtype, **kw)
        se.load_state_dict(te.state_dict())
        ty = te(torch.from_numpy(ids))
        y = se.forward(ids)
        close(y, ty.detach().numpy(), dtype, f"embedding {kw}", op="attention")
        if "max_norm" in kw:
            close(se.weight.data, te.weight.detach().numpy(), dtype, "renormalised weight", op="attention")
        dy = rand(rng, y.shape, dtype)
        ty.backward(torch.from_numpy(dy))
        se.backward(dy)
        close(se.weight.grad, te.weight.grad.numpy(), dtype, f"embedding grad {kw}", op="attention")
    close(F.embedding(ids, se.weight.data), R.embedding(ids, se.weight.data), dtype, "twin")
    close(F.embedding_backward(dy, ids, 11, 3), R.embedding_backward(as64(dy), ids, 11, 3), dtype, "twin grad")
    with pytest.raises(ValueError, match="input"):
        se.forward(np.array([0, 11]))
    with pytest.raises(TypeError, match="input"):
        se.forward(np.array([0.0, 1.0]))


def test_embedding_backward_bitwise_across_threads(rng):
    ids = rng.integers(0, 50, size=20000)
    dy = rand(rng, (20000, 200), np.float32)
    assert_thread_invariant(lambda: F.embedding_backward(dy, ids, 50))


def test_positional_encoding(rng):
    pe = nn.SinusoidalPositionalEncoding(10, max_len=50)
    x = rand(rng, (7, 3, 10), np.float32)
    y = pe.forward(x)
    table = R.sinusoidal_positional_encoding(50, 10)
    close(y, x + table[:7, None], np.float32, "pe")
    pos, i = 5, 3
    assert abs(table[pos, 2 * i] - math.sin(pos / 10000 ** (2 * i / 10))) < 1e-6
    assert abs(table[pos, 2 * i + 1] - math.cos(pos / 10000 ** (2 * i / 10))) < 1e-6
    bf = nn.SinusoidalPositionalEncoding(10, max_len=50, batch_first=True)
    close(bf.forward(x.transpose(1, 0, 2)), y.transpose(1, 0, 2), np.float32, "batch_first")
    assert np.array_equal(pe.backward(x), x)
    with pytest.raises(ValueError, match="max_len"):
        pe.forward(np.zeros((51, 1, 10), np.float32))
    assert np.array_equal(F.sinusoidal_positional_encoding(50, 10), table)


def test_encoder_layer_bitwise_across_threads(rng):
    layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, rng=3)
    x = rand(rng, (40, 3, 64), np.float32)
    dy = rand(rng, (40, 3, 64), np.float32)

    def run():
        for d in (layer.dropout, layer.dropout1, layer.dropout2):
            d.rng = np.random.default_rng(1)
        layer.self_attn._rng = np.random.default_rng(2)
        layer.zero_grad()
        y = layer.forward(x, is_causal=True)
        dx = layer.backward(dy)
        return (y, dx) + tuple(p.grad.copy() for p in layer.parameters())

    assert_thread_invariant(run)


# ----------------------------------------------------------------------------- bad input fuzz
ATT_FUZZ = """
from seqcore import nn
k = int(rng.integers(6))
dims = lambda: [int(rng.choice([0, 1, 2, 3, 17])) for _ in range(int(rng.integers(1, 4)))]
if k == 0:
    L, S, E = (int(rng.choice([0, 1, 5, 33])) for _ in range(3))
    b = tuple(dims()[:int(rng.integers(0, 3))])
    dt = [np.float32, np.float64, np.int32, np.float16][int(rng.integers(4))]
    q, kk, v = fit(b + (L, E), dt), fit(b + (S, E), dt), fit(b + (S, int(rng.integers(0, 5))), dt)
    m = None
    r = rng.random()
    if r < 0.3:
        m = fit((L, S), [bool, np.float32, np.int8][int(rng.integers(3))])
    res = call("sdpa", F.scaled_dot_product_attention, q, kk, v, attn_mask=m, is_causal=bool(rng.random() < 0.5),
               dropout_p=float(rng.choice([0.0, 0.3, 1.0, -1.0])), return_ctx=True)
    if res is not None:
        out, ctx = res
        call("sdpa_backward", F.scaled_dot_product_attention_backward, ctx, like(out))
elif k == 1:
    E = int(rng.choice([1, 4, 6, 8]))
    N = int(rng.choice([1, 2, 3]))
    try:
        m = nn.MultiheadAttention(E, N, batch_first=bool(rng.random() < 0.5), dropout=float(rng.choice([0.0, 0.2])))
    except ValueError:
        m = None
    if m is not None:
        x = fit((int(rng.integers(0, 5)), int(rng.integers(0, 3)), E), np.float32)
        kpm = arr() if rng.random() < 0.3 else None
        am = arr() if rng.random() < 0.3 else None
        y = call("mha", m.forward, x, x, x, key_padding_mask=kpm, attn_mask=am,
                 need_weights=bool(rng.random() < 0.5), is_causal=bool(rng.random() < 0.3))
        if y is not None:
            call("mha_backward", m.backward, like(y[0]))
elif k == 2:
    w = arr()
    ids = arr(dtype=[np.int64, np.int32, np.uint8, np.float32][int(rng.integers(4))])
    call("embedding", F.embedding, ids, w, padding_idx=[None, 0, -1, 99][int(rng.integers(4))])
    call("embedding_backward", F.embedding_backward, arr(), ids, int(rng.integers(-1, 20)))
elif k == 3:
    x = arr()
    call("dropout", F.dropout, x, float(rng.choice([0.0, 0.5, 1.0, 2.0, -0.1])), rng=int(rng.integers(10)))
elif k == 4:
    x = arr()
    layer = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.1, rng=0)
    y = call("encoder_layer", layer.forward, x, src_key_padding_mask=arr() if rng.random() < 0.3 else None)
    if y is not None:
        call("encoder_layer_backward", layer.backward, like(y))
else:
    call("pe", nn.SinusoidalPositionalEncoding(int(rng.integers(1, 6)), max_len=8).forward, arr())
    call("ffn", nn.FeedForward(3, 5).forward, arr())
"""


@pytest.mark.parametrize("seed", [0, 1])
def test_bad_input_never_crashes(seed):
    """Random shapes, dtypes, masks, layouts and non-arrays: only ValueError/TypeError/MemoryError."""
    run_fuzz_child(ATT_FUZZ, seed=seed, cases=1500)


def test_absurd_sizes_raise_memory_error():
    """A zero-stride view can claim 10^11 keys without memory behind it: the per-head workspace
    cannot exist, and the call must raise MemoryError (not crash inside a parallel region)."""
    q = np.ones((1, 4, 2), np.float32)
    k = np.broadcast_to(np.ones((1, 1, 2), np.float32), (1, 10 ** 11, 2))
    with pytest.raises(MemoryError, match="workspace"):
        F.scaled_dot_product_attention(q, k, k)
