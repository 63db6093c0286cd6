"""Data-parallel step time split into compute and communication, and the Allreduce cost per MB.

    mpiexec -n 1 python benchmarks/distributed.py      # baseline: the whole batch on one rank
    mpiexec -n 2 python benchmarks/distributed.py      # the same global batch split over 2 ranks

Model: LSTM(512 -> 1024) + Linear(1024 -> 4096), 10.5M float32 parameters (42 MB of gradients),
global batch 32 x 32 steps. Prints (rank 0) medians over the timed steps; OMP_NUM_THREADS=1 per
rank is set by the script so that 2 ranks use the 2 cores.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

import seqcore  # noqa: E402
from seqcore import distributed as dist  # noqa: E402
from seqcore import nn  # noqa: E402

T, B, I, H, O = 32, 32, 512, 1024, 4096
STEPS = 8


def main():
    world = dist.init()
    lstm, head = nn.LSTM(I, H, rng=0), nn.Linear(H, O, rng=1)
    model = nn.Sequential(lstm, head)
    nparam = model.num_parameters()
    dist.broadcast_parameters(model, world)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    xs = dist.shard(x, world, axis=1)
    comp, comm = [], []
    for step in range(STEPS + 2):
        model.zero_grad()
        world.barrier()
        t0 = time.perf_counter()
        out, _ = lstm.forward(xs)
        y = head.forward(out)
        d = head.backward(np.ones_like(y) / (T * B))
        lstm.backward(d, need_input_grad=False)
        t1 = time.perf_counter()
        sent = dist.allreduce_gradients(model.parameters(), world, average=False)
        t2 = time.perf_counter()
        if step >= 2:
            comp.append(t1 - t0)
            comm.append(t2 - t1)
    # Allreduce cost per MB
    sizes = [1, 4, 16, 64]
    per_mb = {}
    if world.comm is not None:
        from mpi4py import MPI

        for mb in sizes:
            buf = np.ones(mb * (1 << 20) // 4, np.float32)
            ts = []
            for _ in range(5):
                world.barrier()
                t = time.perf_counter()
                world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
                ts.append(time.perf_counter() - t)
            per_mb[mb] = float(np.median(ts))
    cm, cc = float(np.median(comp)), float(np.median(comm))
    world.print(f"ranks={world.size} params={nparam / 1e6:.1f}M grad bytes={sent / 1e6 if sent else nparam * 4e-6:.1f} MB "
                f"per-rank batch={xs.shape[1]}")
    world.print(f"step: compute {cm * 1e3:.1f} ms, allreduce {cc * 1e3:.1f} ms, total {(cm + cc) * 1e3:.1f} ms")
    for mb, t in per_mb.items():
        world.print(f"Allreduce {mb:3d} MB: {t * 1e3:7.2f} ms ({t * 1e3 / mb:.2f} ms/MB, {2 * mb / t / 1e3:.2f} GB/s bus)")


if __name__ == "__main__":
    main()
