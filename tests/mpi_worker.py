"""Worker for tests/test_distributed.py, started by ``mpiexec -n N python tests/mpi_worker.py
MODE OUT``: trains a small LSTM + Linear regressor data-parallel and writes, on rank 0, the
parameters after every step (and whether all ranks agreed) to OUT (.npz).

MODE: 'allreduce' (MPI's Allreduce), 'deterministic' (Allgather + rank-order sum), or
'fail' (rank 1 raises at step 2: the job must abort, not hang).
"""
import sys

import numpy as np

import seqcore
from seqcore import distributed as dist
from seqcore import nn, optim

STEPS, T, B, I, H = 4, 6, 12, 3, 8


def make_model():
    return nn.LSTM(I, H, rng=0), nn.Linear(H, 1, rng=1)


def data(step):
    rng = np.random.default_rng(100 + step)
    return rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((B, 1)).astype(np.float32)


def step_grads(lstm, head, x, y, global_b):
    """Forward + backward of mean squared error over the global batch, on this shard."""
    out, _ = lstm.forward(x)
    pred = head.forward(out[-1])
    d = (2.0 / global_b) * (pred - y)  # d(mean over the global batch)/d pred
    dh = head.backward(d.astype(np.float32))
    dout = np.zeros_like(out)
    dout[-1] = dh
    lstm.backward(dout, need_input_grad=False)


def main():
    mode, out_path = sys.argv[1], sys.argv[2]
    world = dist.init()
    lstm, head = make_model()
    model = nn.Sequential(lstm, head)  # for parameters()
    if world.rank != 0:  # different starting points: broadcast must fix them
        for p in model.parameters():
            p.data = p.data + 1.0
    dist.broadcast_parameters(model, world)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    history, agree = [], []
    for step in range(STEPS):
        x, y = data(step)
        xs, ys = dist.shard(x, world, axis=1), dist.shard(y, world)
        model.zero_grad()
        if mode == "fail" and world.rank == 1 and step == 2:
            raise RuntimeError("injected failure on rank 1")
        step_grads(lstm, head, xs, ys, B)
        # the per-shard grads are partial sums of the global mean: sum, do not average
        dist.allreduce_gradients(model.parameters(), world, average=False, deterministic=(mode == "deterministic"))
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        flat = np.concatenate([p.data.reshape(-1) for p in model.parameters()])
        every = world.comm.allgather(flat.tobytes())
        agree.append(all(e == every[0] for e in every))
        history.append(flat)
    if world.is_root:
        np.savez(out_path, params=np.stack(history), agree=np.array(agree), size=world.size)


if __name__ == "__main__":
    main()
