"""Sampling from a char-level checkpoint (``seqcore generate``).

The prompt runs through the trained whole-sequence layer once (``nn.LSTM.forward`` in eval
mode, giving the state after the prompt); then each new character is one streaming step per
layer, ``nn.LSTMCell`` / ``GRUCell`` / ``RNNCell.step`` on the trained layer's weights (packed
once, reused for every character), and the linear read-out. The next character is drawn from
``softmax(logits / temperature)`` with a seeded generator (``temperature = 0``: argmax).
"""
import numpy as np

from seqcore import functional as F
from seqcore.models import RecurrentModel, one_hot
from seqcore.tasks import TaskError, encode_chars
from seqcore.trainer import CheckpointError, model_from_checkpoint

__all__ = ["generate", "load_charlm"]


def load_charlm(ck, path="checkpoint"):
    """(model, vocab) of a charlm checkpoint (CheckpointError if it is another kind)."""
    cfg, tcfg = ck.get("config", {}), ck.get("task", {})
    if cfg.get("task") != "charlm" or "vocab" not in tcfg:
        raise CheckpointError(f"{path} holds a model of the {cfg.get('task')!r} task, not a char-level language "
                              f"model (train one with: seqcore train --task charlm --save CKPT)")
    vocab = tcfg["vocab"]
    info_task = _VocabTask(vocab, int(cfg.get("seq_len", 1)))
    model = model_from_checkpoint(ck, info_task, path)
    return model, vocab


class _VocabTask:
    """The task facts a char-level model is built from, without the text."""

    input_kind, readout = "tokens", "all"

    def __init__(self, vocab, seq_len):
        self.vocab, self.seq_len = vocab, seq_len
        self.input_size = self.output_size = len(vocab)


def _sample(logits, temperature, rng):
    z = np.asarray(logits, np.float64).reshape(-1)
    if temperature == 0:
        return int(np.argmax(z))
    z = z / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(p.size, p=p))


def generate(ck, path="checkpoint", prompt="\n", length=300, temperature=0.8, seed=0):
    """Yields ``length`` generated characters (after ``prompt``) one at a time."""
    model, vocab = load_charlm(ck, path)
    bad = sorted(set(prompt) - set(vocab))
    if bad:
        raise TaskError(f"--prompt has characters the model never saw: {''.join(bad)!r} "
                        f"(its vocabulary: {vocab!r})")
    if not prompt:
        raise TaskError("--prompt must not be empty")
    if temperature < 0:
        raise TaskError(f"--temperature must be >= 0, got {temperature}")
    prompt_ids = encode_chars(prompt, vocab)
    rng = np.random.default_rng(seed)
    model.eval()
    V = len(vocab)
    if isinstance(model, RecurrentModel):
        yield from _generate_recurrent(model, prompt_ids, V, length, temperature, rng, vocab)
    else:
        yield from _generate_window(model, prompt_ids, length, temperature, rng, vocab)


def _generate_recurrent(model, prompt_ids, V, length, temperature, rng, vocab):
    logits = model.forward(prompt_ids[:, None])[-1, 0]  # whole prompt in one call
    state = model.last_state
    L = model.rnn.num_layers
    if model.kind == "lstm":
        h_n, c_n = state
        states = [(h_n[k, 0], c_n[k, 0]) for k in range(L)]
    else:
        states = [state[k, 0] for k in range(L)]
    cells = model.cells()
    w, b = model.head.weight.data, model.head.bias.data
    for _ in range(length):
        nxt = _sample(logits, temperature, rng)
        yield vocab[nxt]
        x = one_hot(nxt, V)
        for k, cell in enumerate(cells):
            states[k] = cell.step(x, states[k])
            x = states[k][0] if model.kind == "lstm" else states[k]
        logits = F.linear(x, w, b)


def _generate_window(model, prompt_ids, length, temperature, rng, vocab):
    """Models without a recurrent state (the Transformer): one forward over the last
    ``seq_len`` characters per generated character."""
    T = int(model.info["seq_len"])
    ctx = list(prompt_ids[-T:])
    for _ in range(length):
        logits = model.forward(np.asarray(ctx, np.int64)[:, None])[-1, 0]
        nxt = _sample(logits, temperature, rng)
        yield vocab[nxt]
        ctx = (ctx + [nxt])[-T:]
