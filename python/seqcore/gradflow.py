"""Gradient flow through time (``seqcore gradflow``): ``||dL/dh_t||`` for t = 0..T-1.

One forward and one backward pass (BPTT in C++) of a loss placed on the *last* step only, so
``dL/dh_{T-1}`` is the loss's own gradient and ``dL/dh_t`` for earlier t is what reaches back
through ``T-1-t`` recurrent steps. The recurrent layers record these norms themselves
(``last_dh_norms[(layer, direction)]``, the 2-norm over the batch and hidden units). For a
tanh RNN the curve falls geometrically towards t = 0 (vanishing gradients); the LSTM's
additive cell state and the GRU's gated update keep it within a few orders of magnitude.
"""
import numpy as np

from seqcore.models import build_model, task_info
from seqcore.tasks import make_task
from seqcore.trainer import CheckpointError, load_checkpoint, model_from_checkpoint

__all__ = ["gradient_flow", "dh_norms_of"]


def dh_norms_of(model, task, x, y):
    """Runs one forward/backward of ``task``'s loss restricted to the last step; returns
    ``{(layer, direction): (T,) norms}``."""
    model.zero_grad()
    out = model.forward(x)
    _, d_out = task.loss_and_grad(out, y)
    if task.readout == "all":  # keep only the last step's part of the loss
        d_out = d_out.copy()
        d_out[:-1] = 0
    model.backward(d_out)
    model.zero_grad()
    norms = {}
    for label, m in model.recurrent_layers().items():
        for key, curve in sorted(m.last_dh_norms.items()):
            norms[key] = np.array(curve, np.float64)
    return norms


def _label(name, key, n_layers):
    layer, d = key
    if n_layers == 1 and d == 0:
        return name
    return f"{name}[layer {layer}{', reverse' if d else ''}]"


def gradient_flow(models=("rnn", "lstm", "gru"), checkpoints=(), seq_len=100, hidden=64, batch=32, seed=0):
    """A list of ``{'label', 'model', 'norms'}``: fresh ``models`` on the adding problem of
    length ``seq_len`` (one batch of ``batch``), or the models saved in ``checkpoints`` on
    the first ``batch`` sequences of their own task's held-out set."""
    results = []
    if checkpoints:
        for path in checkpoints:
            ck = load_checkpoint(path)
            cfg, tcfg = ck["config"], ck.get("task", {})
            if ck.get("model_name") not in ("rnn", "lstm", "gru"):
                raise CheckpointError(f"{path} holds a {ck.get('model_name')} model, which has no recurrent state")
            extra = {"n_symbols": tcfg["n_symbols"]} if "n_symbols" in tcfg else {}
            task = make_task(cfg["task"], cfg["seq_len"], cfg["seed"], text_path=cfg.get("text"),
                             vocab=tcfg.get("vocab"), **extra)
            model = model_from_checkpoint(ck, task, path)
            x, y = task.eval_set()
            x, y = (x[:, :batch], y[:batch]) if task.readout == "last" else (x[:, :batch], y[:, :batch])
            norms = dh_norms_of(model, task, x, y)
            for key, n in norms.items():
                results.append({"label": _label(f"{ck['model_name']} ({path})", key, model.rnn.num_layers),
                                "model": ck["model_name"], "norms": n})
        return results
    task = make_task("adding", seq_len, seed)
    x, y = task.batch(np.random.default_rng([seed, 0x6F]), batch)
    for name in models:
        model = build_model(name, task_info(task), hidden, 1, seed)
        for key, n in dh_norms_of(model, task, x, y).items():
            results.append({"label": _label(name, key, 1), "model": name, "norms": n})
    return results
