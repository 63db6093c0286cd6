"""Command line: ``python -m seqcore {info,demo,bench}`` (also the ``seqcore`` script).

``demo`` is a short tour on built-in data: the kernels against NumPy and the
vanishing-gradient picture (||dL/dh_t|| through time for a plain RNN, an LSTM and a GRU).
``bench`` runs the C++-vs-Python benchmarks.
"""
import argparse
import sys
import time

import numpy as np

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _median_time(fn, repeats=5):
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def cmd_info(args):
    import seqcore

    for k, v in seqcore.info().items():
        print(f"{k:15s} {v}")
    return EXIT_OK


def cmd_demo(args):
    import seqcore
    from seqcore import functional as F, nn, reference as R

    rng = np.random.default_rng(args.seed)
    info = seqcore.info()
    print(f"seqcore {info['version']} | ISA {info['isa']} | {info['num_threads']} threads")

    print("\n1. Kernels against NumPy (median of 5, same process)")
    a = rng.standard_normal((1024, 1024)).astype(np.float32)
    b = rng.standard_normal((1024, 1024)).astype(np.float32)
    t_sc, t_np = _median_time(lambda: seqcore.matmul(a, b)), _median_time(lambda: a @ b)
    print(f"   sgemm 1024^3      seqcore {2 * 1024 ** 3 / t_sc / 1e9:6.1f} GFLOP/s   NumPy {2 * 1024 ** 3 / t_np / 1e9:6.1f} GFLOP/s")
    x = rng.standard_normal((50, 16, 128)).astype(np.float32)
    lstm = nn.LSTM(128, 128, rng=rng)
    w = [p.data for p in lstm.parameters()]
    dy = np.ones((50, 16, 128), np.float32)

    def sc_step():
        lstm.forward(x)
        lstm.backward(dy)

    def twin_step():
        y, hn, cn, ctx = R.lstm(x, None, None, *w)
        R.lstm_backward(ctx, dy)

    t_sc, t_tw = _median_time(sc_step, 3), _median_time(twin_step, 3)
    print(f"   LSTM T=50 B=16 H=128 forward+BPTT: seqcore {t_sc * 1e3:6.1f} ms   NumPy twin {t_tw * 1e3:6.1f} ms"
          f"   ({t_tw / t_sc:.1f}x)")

    print(f"\n2. Vanishing gradients: ||dL/dh_t|| through {args.seq_len} steps (loss on the last step)")
    T = args.seq_len
    xg = rng.standard_normal((T, 8, 16)).astype(np.float32)
    for kind in ("RNN", "LSTM", "GRU"):
        m = getattr(nn, kind)(16, 64, rng=np.random.default_rng(args.seed))
        if kind == "LSTM":
            m.bias_hh_l0.data[64:128] = 1.0
        out, _ = m.forward(xg)
        d = np.zeros_like(out)
        d[-1] = 1.0
        m.backward(d)
        norms = m.last_dh_norms[(0, 0)]
        print(f"   {kind:5s} ||dL/dh_0|| / ||dL/dh_T-1|| = {norms[0] / norms[-1]:.2e}")

    return EXIT_OK


def cmd_bench(args, rest):
    from seqcore import bench

    return bench.main(rest)


def build_parser():
    p = argparse.ArgumentParser(prog="seqcore", description="Fast CPU kernels for sequence models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("info", help="version, ISA chosen and available, threads")
    d = sub.add_parser("demo", help="a short tour on built-in data")
    d.add_argument("--seq-len", type=int, default=100, help="sequence length for the gradient picture")
    d.add_argument("--seed", type=int, default=0)
    sub.add_parser("bench", help="C++-vs-Python benchmarks (see 'seqcore bench --help')", add_help=False)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return cmd_bench(None, argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return {"info": cmd_info, "demo": cmd_demo}[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
