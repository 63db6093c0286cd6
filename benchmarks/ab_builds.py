"""Compare two builds of seqcore's extension module in one process, interleaved.

On a shared host the speed of the machine drifts by 10-30% within minutes, so timing build A,
then rebuilding and timing build B, mostly measures the drift. This script loads two copies of
``seqcore._core`` (each .so is loaded on its own; their C++ code does not mix) and times the
same case on A and B in alternation, so both see the same host.

    cp build/<dir>/.../seqcore/_core*.so /tmp/old.so      # before the change
    (edit, rebuild)
    cp build/<dir>/.../seqcore/_core*.so /tmp/new.so
    python benchmarks/ab_builds.py /tmp/old.so /tmp/new.so --case matmul --threads 1

Cases: matmul (sgemm 1024^3 and 2048^3), packed (h @ W.T against a PackedMatrix, RNN-step
shapes M x K x N from 16x128x512 to 64x1024x4096), softmax (16384 x 1024), layer_norm (forward +
backward, 8192 x 1024), cell_step (LSTM, B=1, H=128 and 256), elementwise (tanh, sigmoid,
gelu on 1M floats, in cache; an Adam step over 10M parameters), lstm (forward + BPTT at
T=50, B=16, H=128 and inference at T=100, B=64, H=512). Prints the median and the best
time of each build and the ratio of the medians (> 1: B faster).
"""
import argparse
import importlib.machinery
import importlib.util
import time

import numpy as np


def load(path, tag):
    # A distinct package name per copy: under one name CPython hands back the module it has
    # already initialised, and both "builds" would be the first one.
    name = f"{tag}._core"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def cases(name, rng):
    """(label, make(core) -> callable) pairs of one case."""
    f32 = np.float32
    if name == "matmul":
        for n in (1024, 2048):
            a = rng.standard_normal((n, n), dtype=f32)
            b = rng.standard_normal((n, n), dtype=f32)
            # Into a reused output, as the benchmark suite does: a fresh 4-16 MiB result costs
            # page faults that are not the GEMM's.
            yield f"sgemm {n}^3", lambda core, a=a, b=b: (lambda o=np.empty((n, n), f32): core.matmul(a, b, o))
    elif name == "softmax":
        x = rng.standard_normal((16384, 1024), dtype=f32)
        yield "softmax 16384x1024", lambda core: (lambda: core.softmax(x, -1))
        yield "log_softmax 16384x1024", lambda core: (lambda: core.log_softmax(x, -1))
    elif name == "layer_norm":
        m, f = 8192, 1024
        x = rng.standard_normal((m, f), dtype=f32)
        dy = rng.standard_normal((m, f), dtype=f32)
        w, b = np.ones(f, f32), np.zeros(f, f32)

        def make(core):
            def run():
                _, mean, rstd = core.layer_norm(x, f, w, b, 1e-5)
                return core.layer_norm_backward(dy, x, mean, rstd, f, w, True, True, True)
            return run
        yield "layer_norm fwd+bwd 8192x1024", make
    elif name == "cell_step":
        for h in (128, 256):
            wi = (0.05 * rng.standard_normal((4 * h, h))).astype(f32)
            wh = (0.05 * rng.standard_normal((4 * h, h))).astype(f32)
            bi, bh = np.zeros(4 * h, f32), np.zeros(4 * h, f32)
            x = rng.standard_normal((1, h)).astype(f32)
            s = np.zeros((1, h), f32)

            def make(core, wi=wi, wh=wh, bi=bi, bh=bh, x=x, s=s):
                packed = core.PackedRecurrent("lstm", wi, wh, bi, bh)

                def run():
                    for _ in range(200):
                        packed.step(x, s, s)
                return run
            yield f"LSTMCell step B=1 H={h} (200 calls)", make
    elif name == "packed":
        for m, k, n in ((16, 128, 512), (64, 512, 2048), (32, 256, 1024), (64, 1024, 4096)):
            w = rng.standard_normal((n, k), dtype=f32)
            h = rng.standard_normal((m, k), dtype=f32)
            o = np.empty((m, n), f32)

            def make(core, w=w, h=h, o=o, reps=max(1, (1 << 27) // (m * n * k))):
                pm = core.PackedMatrix(w, True)

                def run():
                    for _ in range(reps):
                        pm.matmul(h, o)
                return run
            yield f"packed {m}x{k}x{n} ({max(1, (1 << 27) // (m * n * k))} calls)", make
    elif name == "elementwise":
        x = rng.standard_normal(1 << 20, dtype=f32)
        for op in ("tanh", "sigmoid"):
            yield f"{op} 1M", lambda core, op=op: (lambda: getattr(core, op)(x, None))
        yield "gelu 1M", lambda core: (lambda: core.gelu(x, "none", None))
        n = 10_000_000

        def make_adam(core):
            p, g = rng.standard_normal(n, dtype=f32), rng.standard_normal(n, dtype=f32)
            m, v = np.zeros(n, f32), np.zeros(n, f32)
            return lambda: core.adam_step(p, g, m, v, None, 1, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False)
        yield "Adam step 10M", make_adam
    elif name == "lstm":
        for t, b, h, train in ((50, 16, 128, True), (100, 64, 512, False)):
            x = rng.standard_normal((t, b, h), dtype=f32)
            w = [(0.05 * rng.standard_normal(s)).astype(f32) for s in ((4 * h, h), (4 * h, h))]
            bias = [np.zeros(4 * h, f32), np.zeros(4 * h, f32)]
            s = np.zeros((b, h), f32)
            dy = np.ones((t, b, h), f32)

            def make(core, x=x, w=w, bias=bias, s=s, dy=dy, train=train):
                def run():
                    out = core.recurrent_forward("lstm", x, s, s, w[0], w[1], bias[0], bias[1], None, False, train)
                    if train:
                        core.recurrent_backward(out[3], dy, None, None, True, True)
                return run
            yield f"LSTM {'train' if train else 'inference'} T={t} B={b} H={h}", make
    else:
        raise SystemExit(f"unknown case {name!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="path of build A's _core*.so")
    ap.add_argument("b", help="path of build B's _core*.so")
    ap.add_argument("--case", default="matmul", choices=["matmul", "packed", "softmax", "layer_norm", "cell_step", "elementwise", "lstm"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    cores = [load(args.a, "seqcore_ab_a"), load(args.b, "seqcore_ab_b")]
    for core in cores:
        core.set_num_threads(args.threads)
    for label, make in cases(args.case, np.random.default_rng(0)):
        fns = [make(core) for core in cores]
        for fn in fns:
            fn()  # warm-up: workspaces, packed weights, page faults
        times = [[], []]
        for r in range(args.rounds):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                t0 = time.perf_counter()
                fns[i]()
                times[i].append(time.perf_counter() - t0)
        med = [float(np.median(t)) for t in times]
        print(f"{label}: A {med[0] * 1e3:.3f} ms (best {min(times[0]) * 1e3:.3f})  "
              f"B {med[1] * 1e3:.3f} ms (best {min(times[1]) * 1e3:.3f})  A/B {med[0] / med[1]:.3f}")


if __name__ == "__main__":
    main()
