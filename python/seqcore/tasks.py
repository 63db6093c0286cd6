"""Built-in sequence tasks for ``seqcore train`` / ``seqcore demo``, generated on the fly.

Every task draws its training batches from a NumPy ``Generator`` handed in by the caller
(the training loop keeps it and saves its state in checkpoints, so a resumed run sees the
same batches), and evaluates on a fixed held-out set made from its own seed.

Shapes are time-major (T time, B batch). A task gives

- ``x``: float features ``(T, B, input_size)`` (``input_kind == 'features'``) or integer
  token ids ``(T, B)`` in ``[0, vocab_size)`` (``input_kind == 'tokens'``);
- ``y``: the targets, ``(B, 1)`` floats for a regression read at the last step
  (``readout == 'last'``), or ``(T, B)`` integer classes for a prediction at every step
  (``readout == 'all'``; ``IGNORE`` marks steps without a target);
- ``loss_and_grad(out, y)``: the loss (a float) and ``d loss / d out``, and ``metrics`` with
  the loss and an accuracy.

Tasks
-----
adding (Hochreiter & Schmidhuber 1997): two input channels, values ``u_t ~ U(0, 1)`` and a
    marker that is 1 at exactly two steps, one in each half of the sequence; the target is the
    sum of the two marked values, read at the last step (MSE). Predicting the mean (1.0) gives
    MSE 1/6 ~ 0.167, the level a model that cannot carry information over T steps stays at.
    Accuracy: the fraction of predictions within 0.04 of the target.
copy (copy-memory): ``S`` symbols from an alphabet of 8 (ids 1..8), blanks (0), a delimiter
    (9) ``S`` steps before the end, then the model must output the ``S`` symbols in order.
    ``T`` is the whole length (``>= 2 S + 1``); cross-entropy over the last ``S`` steps only.
    Chance: loss ln 8 ~ 2.08, accuracy 1/8.
charlm: next-character prediction on a text (default: the corpus shipped in the package, the
    opening of Shakespeare's *Coriolanus*, public domain). The vocabulary is the text's
    sorted set of characters; training windows of ``T`` characters are drawn at random from
    the first 90 %, the held-out set from the last 10 %. Loss in nats per character.
"""
import hashlib
import os
from importlib import resources

import numpy as np

from seqcore import functional as F

__all__ = ["TASKS", "make_task", "encode_chars", "AddingTask", "CopyTask", "CharLMTask", "default_corpus", "IGNORE",
           "TaskError"]

IGNORE = -100  # target id without a loss (cross-entropy's ignore_index)
DEFAULT_CORPUS = "coriolanus.txt"


class TaskError(ValueError):
    """A task cannot be built with these arguments (too short a sequence, a bad text file)."""


def default_corpus():
    """The text shipped in the package (``seqcore/data/coriolanus.txt``)."""
    return resources.files("seqcore").joinpath("data").joinpath(DEFAULT_CORPUS).read_text(encoding="utf-8")


def encode_chars(text, vocab):
    """Indices into ``vocab`` of every character of ``text`` (all must be in ``vocab``)."""
    cps = np.frombuffer(text.encode("utf-32-le"), np.uint32)
    vcp = np.frombuffer(vocab.encode("utf-32-le"), np.uint32)
    order = np.argsort(vcp, kind="stable")
    return order[np.searchsorted(vcp, cps, sorter=order)].astype(np.int64)


class Task:
    name = ""
    input_kind = "features"  # or 'tokens'
    readout = "last"  # or 'all'
    loss_kind = "mse"  # or 'ce'
    input_size = 0  # features, or vocab size for tokens
    output_size = 0

    def __init__(self, seq_len, seed=0, eval_size=256):
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.eval_size = int(eval_size)
        self._eval = None

    # ------------------------------------------------------------------ data
    def batch(self, rng, batch_size):
        raise NotImplementedError

    def eval_set(self):
        """The held-out set (fixed by the task's seed, independent of the training stream)."""
        if self._eval is None:
            self._eval = self.batch(np.random.default_rng([self.seed, 0xE7A1]), self.eval_size)
        return self._eval

    # ------------------------------------------------------------------ loss
    def loss_and_grad(self, out, y):
        """``(loss, d loss / d out)`` for model outputs ``out``."""
        if self.loss_kind == "mse":
            return float(F.mse_loss(out, y)), F.mse_loss_backward(1.0, out, y)
        C = out.shape[-1]
        flat, t = out.reshape(-1, C), y.reshape(-1)
        loss, lse = F.cross_entropy(flat, t, ignore_index=IGNORE, return_lse=True)
        d = F.cross_entropy_backward(1.0, flat, t, ignore_index=IGNORE, lse=lse)
        return float(loss), d.reshape(out.shape)

    def metrics(self, out, y):
        """``{'loss': float, 'acc': float}`` of outputs ``out`` against ``y``."""
        if self.loss_kind == "mse":
            return {"loss": float(F.mse_loss(out, y)), "acc": float(np.mean(np.abs(out - y) < 0.04))}
        C = out.shape[-1]
        flat, t = out.reshape(-1, C), y.reshape(-1)
        keep = t != IGNORE
        loss = float(F.cross_entropy(flat, t, ignore_index=IGNORE))
        acc = float(np.mean(np.argmax(flat[keep], axis=1) == t[keep])) if keep.any() else float("nan")
        return {"loss": loss, "acc": acc}

    # ------------------------------------------------------------------ description
    def config(self):
        """What a checkpoint needs to rebuild the task (plain values only)."""
        return {"task": self.name, "seq_len": self.seq_len, "seed": self.seed}

    def chance(self):
        """Loss of the best input-blind prediction (for the summary)."""
        return float("nan")

    def solved(self, metrics):
        """Whether evaluation metrics count as having solved the task."""
        return False


class AddingTask(Task):
    name = "adding"
    input_kind, readout, loss_kind = "features", "last", "mse"
    input_size, output_size = 2, 1

    def __init__(self, seq_len=100, seed=0, eval_size=512):
        if int(seq_len) < 2:
            raise TaskError(f"the adding task needs --seq-len >= 2, got {seq_len}")
        super().__init__(seq_len, seed, eval_size)

    def batch(self, rng, batch_size):
        T, B = self.seq_len, int(batch_size)
        half = T // 2
        values = rng.random((T, B), dtype=np.float32)
        first = rng.integers(0, half, size=B)
        second = rng.integers(half, T, size=B)
        marks = np.zeros((T, B), np.float32)
        cols = np.arange(B)
        marks[first, cols] = 1.0
        marks[second, cols] = 1.0
        x = np.stack([values, marks], axis=2)
        y = (values[first, cols] + values[second, cols]).reshape(B, 1).astype(np.float32)
        return x, y

    def chance(self):
        return 1.0 / 6.0

    def solved(self, metrics):
        return metrics["loss"] < 0.01


class CopyTask(Task):
    name = "copy"
    input_kind, readout, loss_kind = "tokens", "all", "ce"
    ALPHABET = 8
    BLANK, DELIM = 0, 9
    input_size = output_size = 10

    def __init__(self, seq_len=60, seed=0, n_symbols=10, eval_size=256):
        n_symbols = int(n_symbols)
        if n_symbols < 1 or int(seq_len) < 2 * n_symbols + 1:
            raise TaskError(f"the copy task needs --seq-len >= 2 * {n_symbols} + 1 = {2 * n_symbols + 1} "
                            f"({n_symbols} symbols, a delimiter, {n_symbols} recall steps), got {seq_len}")
        self.n_symbols = n_symbols
        super().__init__(seq_len, seed, eval_size)

    def batch(self, rng, batch_size):
        T, B, S = self.seq_len, int(batch_size), self.n_symbols
        sym = rng.integers(1, self.ALPHABET + 1, size=(S, B))
        x = np.zeros((T, B), np.int64)
        x[:S] = sym
        x[T - S - 1] = self.DELIM
        y = np.full((T, B), IGNORE, np.int64)
        y[T - S:] = sym
        return x, y

    def config(self):
        return dict(super().config(), n_symbols=self.n_symbols)

    def chance(self):
        return float(np.log(self.ALPHABET))

    def solved(self, metrics):
        return metrics["acc"] > 0.99


class CharLMTask(Task):
    name = "charlm"
    input_kind, readout, loss_kind = "tokens", "all", "ce"

    def __init__(self, seq_len=64, seed=0, text=None, text_name=None, vocab=None, eval_size=64):
        if text is None:
            text, text_name = default_corpus(), f"seqcore/data/{DEFAULT_CORPUS}"
        if vocab is None:
            vocab = "".join(sorted(set(text)))
        self.vocab = vocab
        self.text_name = text_name or "<text>"
        self.text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        unknown = sorted(set(text) - set(vocab))
        if unknown:
            raise TaskError(f"the text has characters outside the model's vocabulary: {''.join(unknown[:20])!r}")
        self.ids = encode_chars(text, vocab)
        seq_len = int(seq_len)
        n_train = int(len(self.ids) * 0.9)
        if seq_len < 1 or n_train - seq_len - 1 < 1 or len(self.ids) - n_train - seq_len - 1 < 1:
            raise TaskError(f"the text ({len(text)} characters) is too short for --seq-len {seq_len}: "
                            f"each of its training (90 %) and held-out (10 %) parts needs more than "
                            f"seq-len + 1 characters")
        self.n_train = n_train
        self.input_size = self.output_size = len(vocab)
        super().__init__(seq_len, seed, eval_size)

    def _windows(self, starts):
        offs = starts[None, :] + np.arange(self.seq_len + 1)[:, None]  # (T+1, B)
        w = self.ids[offs]
        return w[:-1], w[1:]

    def batch(self, rng, batch_size):
        starts = rng.integers(0, self.n_train - self.seq_len - 1, size=int(batch_size))
        return self._windows(starts)

    def eval_set(self):
        if self._eval is None:
            lo, hi = self.n_train, len(self.ids) - self.seq_len - 1
            n = min(self.eval_size, hi - lo)
            starts = np.linspace(lo, hi - 1, n).astype(np.int64)
            self._eval = self._windows(starts)
        return self._eval

    def encode(self, s):
        bad = sorted(set(s) - set(self.vocab))
        if bad:
            raise TaskError(f"characters not in the model's vocabulary: {''.join(bad)!r}")
        return encode_chars(s, self.vocab)

    def decode(self, ids):
        return "".join(self.vocab[int(i)] for i in ids)

    def config(self):
        return dict(super().config(), vocab=self.vocab, text_name=self.text_name, text_sha256=self.text_sha256)

    def chance(self):
        counts = np.bincount(self.ids[:self.n_train], minlength=len(self.vocab)).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())  # unigram entropy


TASKS = {"adding": AddingTask, "copy": CopyTask, "charlm": CharLMTask}


def read_text(path):
    """A text file's content (UTF-8), with a clear error when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise TaskError(f"--text: no such file: {path}") from None
    except IsADirectoryError:
        raise TaskError(f"--text: {path} is a directory") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"--text: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TaskError(f"--text: cannot read {path}: {e.strerror}") from None
    if not text:
        raise TaskError(f"--text: {path} is empty")
    return text


def make_task(name, seq_len, seed=0, text_path=None, vocab=None, **kw):
    """Builds task ``name`` (``adding``, ``copy``, ``charlm``). ``text_path``: charlm's text
    file (None: the shipped corpus); ``vocab``: charlm's vocabulary from a checkpoint."""
    if name not in TASKS:
        raise TaskError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    if name == "charlm":
        text = read_text(text_path) if text_path else None
        return CharLMTask(seq_len, seed, text=text, text_name=os.path.basename(text_path) if text_path else None,
                          vocab=vocab, **kw)
    if text_path:
        raise TaskError(f"--text is only used by --task charlm, not {name}")
    return TASKS[name](seq_len, seed, **kw)
