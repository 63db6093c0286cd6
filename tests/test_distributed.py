"""Data-parallel training over MPI (seqcore.distributed): launched with mpiexec from the test
when mpi4py and an MPI launcher are installed; skipped otherwise (CI installs them)."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import seqcore
from seqcore import distributed as dist
from seqcore import nn, optim

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_worker as W  # noqa: E402

from conftest import assert_close  # noqa: E402


def _mpiexec():
    pytest.importorskip("mpi4py")
    exe = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(exe):
        pytest.skip("no mpiexec")
    return exe


def _run(n, mode, tmp_path, timeout=120):
    out = tmp_path / f"{mode}-{n}.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([_mpiexec(), "-n", str(n), sys.executable, os.path.join(HERE, "mpi_worker.py"), mode, str(out)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    return r, out


def _single_process(n_ranks, accumulate_in_rank_order):
    """The reference: one process, the combined batch (or the same shards' gradients added in
    rank order), the same optimizer."""
    lstm, head = W.make_model()
    model = nn.Sequential(lstm, head)
    opt = optim.Adam(model.parameters(), lr=1e-2)
    world1 = dist.World(None)
    hist = []
    for step in range(W.STEPS):
        x, y = W.data(step)
        model.zero_grad()
        if accumulate_in_rank_order:
            xs = np.array_split(x, n_ranks, axis=1)
            ys = np.array_split(y, n_ranks)
            grads = []
            for xr, yr in zip(xs, ys):
                model.zero_grad()
                W.step_grads(lstm, head, xr, yr, W.B)
                grads.append([p.grad.copy() for p in model.parameters()])
            for i, p in enumerate(model.parameters()):
                acc = grads[0][i].copy()
                for g in grads[1:]:
                    acc += g[i]
                p.grad[...] = acc
        else:
            W.step_grads(lstm, head, x, y, W.B)
        dist.allreduce_gradients(model.parameters(), world1)  # no-op on one process
        optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist.append(np.concatenate([p.data.reshape(-1) for p in model.parameters()]))
    return np.stack(hist)


@pytest.mark.parametrize("n", [2, 3])
def test_allreduce_matches_single_process_training(n, tmp_path):
    r, out = _run(n, "allreduce", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = np.load(out)
    assert int(res["size"]) == n
    assert res["agree"].all(), "parameters differ across ranks"
    ref = _single_process(n, accumulate_in_rank_order=False)
    for s in range(W.STEPS):
        assert_close(res["params"][s], ref[s], "train", np.float32, scale=np.abs(ref[s]).max(), what=f"step {s}")


@pytest.mark.parametrize("n", [2, 3])
def test_deterministic_mode_is_bitwise(n, tmp_path):
    r, out = _run(n, "deterministic", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = np.load(out)
    assert res["agree"].all()
    ref = _single_process(n, accumulate_in_rank_order=True)
    assert np.array_equal(res["params"], ref), "deterministic mode differs from rank-order accumulation"


def test_failing_rank_aborts_the_job(tmp_path):
    r, _ = _run(2, "fail", tmp_path, timeout=60)
    assert r.returncode != 0
    assert "injected failure on rank 1" in r.stderr
    assert "aborting all 2 ranks" in r.stderr


def test_single_process_world_is_a_noop():
    w = dist.World(None)
    assert (w.rank, w.size, w.is_root) == (0, 1, True)
    m = nn.Linear(3, 2, rng=0)
    m.weight.grad[...] = 1.5
    before = m.weight.data.copy()
    dist.broadcast_parameters(m, w)
    assert dist.allreduce_gradients(m.parameters(), w) == 0
    assert np.array_equal(m.weight.grad, np.full((2, 3), 1.5, np.float32))
    assert np.array_equal(m.weight.data, before)
    x = np.arange(10)
    assert np.array_equal(dist.shard(x, w), x)
    dp = dist.DataParallel(m, w)
    assert dp.in_features == 3
    y = dp.forward(np.ones((4, 3), np.float32))
    dp.backward(np.ones_like(y))


def test_cli_train_data_parallel_matches_single_process(tmp_path):
    """``mpiexec -n 2 seqcore train`` splits the global batch over the ranks; the trained model
    equals one process training on the whole batch (within float32 tolerance)."""
    exe = _mpiexec()
    args = ["-m", "seqcore", "train", "--model", "gru", "--task", "adding", "--seq-len", "12", "--hidden", "16",
            "--steps", "6", "--batch", "8", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([exe, "-n", "2", sys.executable, *args, "--save", str(tmp_path / "dp.npz")],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r1 = subprocess.run([sys.executable, *args, "--save", str(tmp_path / "sp.npz")], capture_output=True, text=True,
                        timeout=180, env=env)
    assert r1.returncode == 0, r1.stderr
    dp = seqcore.load(str(tmp_path / "dp.npz"))["model"]
    sp = seqcore.load(str(tmp_path / "sp.npz"))["model"]
    assert list(dp) == list(sp)
    for k in sp:
        assert_close(dp[k], sp[k], "train", np.float32, scale=np.abs(sp[k]).max(), what=k)
    bad = subprocess.run([exe, "-n", "3", sys.executable, *args], capture_output=True, text=True, timeout=180, env=env)
    assert bad.returncode == 2 and "divisible" in bad.stderr
