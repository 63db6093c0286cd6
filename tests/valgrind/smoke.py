"""Every kernel family once, at odd small sizes, for valgrind memcheck (invalid reads/writes,
uninitialised values) on the AVX2 path (valgrind has no AVX-512):

    SEQCORE_ISA=avx2 valgrind --leak-check=no --error-exitcode=9 \\
        --suppressions=tests/valgrind/python.supp python tests/valgrind/smoke.py

CI runs exactly this. The whole test suite can run the same way (slow, ~50x):
``... python -m pytest tests/test_attention.py -x -q`` in place of the script.
"""
import numpy as np

import seqcore
from seqcore import functional as F, nn, optim

rng = np.random.default_rng(0)


def r(*shape, dt=np.float32):
    return rng.standard_normal(shape).astype(dt)


for dt in (np.float32, np.float64):
    a, b = r(13, 17, dt=dt), r(17, 11, dt=dt)
    seqcore.matmul(a, b)
    seqcore.matmul(a.T.copy().T, b[:, ::2])
    c = np.zeros((13, 11), dt)
    seqcore.gemm(a, b, c, alpha=0.5, beta=1.0)
    seqcore.PackedMatrix(b.T.copy(), trans=True).matmul(a, bias=r(11, dt=dt), activation="gelu")
    y = F.linear(r(3, 5, 17, dt=dt), r(9, 17, dt=dt), r(9, dt=dt), activation="relu")
    F.linear_backward(np.ones_like(y), r(3, 5, 17, dt=dt), r(9, 17, dt=dt))
    x = r(37, dt=dt)
    for name in ("tanh", "sigmoid", "relu", "silu", "gelu"):
        out = getattr(F, name)(x)
        getattr(F, name + "_backward")(x, out if name in ("tanh", "sigmoid") else x)
    F.softmax_backward(x.reshape(1, -1), F.softmax(x.reshape(1, -1)))
    F.log_softmax(r(5, 19, dt=dt), axis=0)
    F.prelu_backward(r(4, 3, 5, dt=dt), r(4, 3, 5, dt=dt), r(3, dt=dt))
    xs = r(7, 3, 5, dt=dt)
    for mode, G in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        w = [r(G * 9, 5, dt=dt), r(G * 9, 9, dt=dt), r(G * 9, dt=dt), r(G * 9, dt=dt)]
        lens = np.array([7, 2, 5])
        if mode == "lstm":
            yy, hn, cn, ctx = F.lstm(xs, None, None, *w, lengths=lens, reverse=True)
            F.lstm_backward(ctx, np.ones_like(yy), hn, cn)
        elif mode == "gru":
            yy, hn, ctx = F.gru(xs, None, *w, lengths=lens)
            F.gru_backward(ctx, np.ones_like(yy), hn)
        else:
            yy, hn, ctx = F.rnn(xs, None, *w)
            F.rnn_backward(ctx, np.ones_like(yy))
    cell = nn.LSTMCell(5, 9, dtype=dt)
    cell.step(r(2, 5, dt=dt), (r(2, 9, dt=dt), r(2, 9, dt=dt)))
    yl, ctx = F.layer_norm(r(6, 21, dt=dt), 21, r(21, dt=dt), r(21, dt=dt))
    F.layer_norm_backward(ctx, np.ones_like(yl))
    bn = nn.BatchNorm1d(5, dtype=dt)
    yb = bn.forward(r(4, 5, 3, dt=dt))
    bn.backward(np.ones_like(yb))
    q, k, v = r(2, 19, 7, dt=dt), r(2, 23, 7, dt=dt), r(2, 23, 5, dt=dt)
    for kw in ({}, {"is_causal": True}, {"attn_mask": rng.random((19, 23)) > 0.3}, {"dropout_p": 0.2, "rng": 1}):
        o, ctx = F.scaled_dot_product_attention(q, k, v, return_ctx=True, **kw)
        F.scaled_dot_product_attention_backward(ctx, np.ones_like(o))
    m = nn.MultiheadAttention(6, 2, dropout=0.1, dtype=dt)
    xm = r(5, 3, 6, dt=dt)
    om, wm = m.forward(xm, xm, xm, key_padding_mask=rng.random((3, 5)) > 0.7, need_weights=True)
    m.backward(np.ones_like(om))
    ids = rng.integers(0, 11, size=(4, 3))
    e = F.embedding(ids, r(11, 6, dt=dt), padding_idx=2)
    F.embedding_backward(np.ones_like(e), ids, 11, padding_idx=2)
    F.dropout(r(1001, dt=dt), 0.3, rng=2)
    lg = r(9, 13, dt=dt)
    t = rng.integers(0, 13, size=9)
    t[3] = -100
    F.cross_entropy_backward(1.0, lg, t, label_smoothing=0.1)
    ps = [nn.Parameter(r(37, dt=dt)), nn.Parameter(r(5, 3, dt=dt))]
    for p in ps:
        p.grad[...] = r(*p.shape, dt=dt)
    for o in (optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True), optim.Adam(ps, amsgrad=True), optim.AdamW(ps),
              optim.RMSprop(ps, centered=True, momentum=0.5)):
        o.step()
    optim.clip_grad_norm_(ps, 0.5)
    optim.clip_grad_value_(ps, 0.1)
print("smoke", seqcore.info()["isa"], "ok")
