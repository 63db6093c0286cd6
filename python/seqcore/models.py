"""The models behind ``seqcore train`` / ``demo`` / ``generate`` / ``gradflow``: a small
registry of name -> builder, each model a :class:`seqcore.nn.Module` with an explicit
``forward`` / ``backward`` over whole sequences.

A model takes a task's input (float features ``(T, B, I)`` or token ids ``(T, B)``) and
returns ``(B, O)`` (``readout='last'``: read at the last step) or ``(T, B, O)``
(``readout='all'``). ``backward(d_out)`` adds into every ``Parameter.grad``. One training
step is one ``forward`` and one ``backward`` per module; the recurrent layers run the whole
sequence (and its backprop through time) in C++.

Adding a model: write ``build(task_info, hidden, layers, seed, **options) -> Module`` and
register it with ``@register('name', description=..., available=...)``; ``available()``
returns ``None`` when the model can be built, else the reason it cannot (shown to users).
The checkpoint stores the registry name and ``model.config`` (plain values), which are
passed back to the builder to rebuild the model before loading its ``state_dict``.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from seqcore import nn

__all__ = ["MODELS", "register", "build_model", "model_unavailable", "RecurrentModel", "TransformerModel",
           "ModelError", "one_hot"]


class ModelError(ValueError):
    """A model cannot be built (unknown name, missing feature, bad sizes)."""


@dataclass
class ModelSpec:
    name: str
    build: Callable
    description: str
    available: Callable[[], Optional[str]]
    recurrent: bool


MODELS = {}


def register(name, *, description, available=None, recurrent=False):
    def deco(fn):
        MODELS[name] = ModelSpec(name, fn, description, available or (lambda: None), recurrent)
        return fn
    return deco


def model_unavailable(name):
    """None if model ``name`` can be built in this installation, else the reason."""
    if name not in MODELS:
        return f"unknown model {name!r} (choose from {', '.join(MODELS)})"
    return MODELS[name].available()


def build_model(name, task_info, hidden, layers, seed, **options):
    """Builds registered model ``name`` for a task described by ``task_info`` (a dict with
    ``input_kind``, ``input_size``, ``output_size``, ``readout``, ``seq_len``)."""
    why = model_unavailable(name)
    if why:
        raise ModelError(why)
    if int(hidden) < 1 or int(layers) < 1:
        raise ModelError(f"--hidden and --layers must be >= 1, got {hidden} and {layers}")
    return MODELS[name].build(dict(task_info), int(hidden), int(layers), int(seed), **options)


def task_info(task):
    """The part of a task a model depends on."""
    return {"input_kind": task.input_kind, "input_size": int(task.input_size),
            "output_size": int(task.output_size), "readout": task.readout, "seq_len": int(task.seq_len)}


def one_hot(ids, n, dtype=np.float32):
    """``(…)`` integer ids -> ``(…, n)`` one-hot rows (a NumPy gather, no Python loop)."""
    return np.eye(n, dtype=dtype)[np.asarray(ids)]


# ============================================================================ recurrent
def _readout_backward(head, d_out, readout, T):
    """Gradient of the sequence under a Linear head read at the last step ('last': zeros but
    at t = T-1) or at every step ('all')."""
    dh = head.backward(d_out)
    if readout != "last":
        return dh
    d_seq = np.zeros((T,) + dh.shape, dh.dtype)
    d_seq[-1] = dh
    return d_seq


class RecurrentModel(nn.Module):
    """``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` (``layers`` deep, ``hidden`` wide) and a linear
    read-out ``head``: ``out = head(h_T)`` (``readout='last'``) or ``head(h_t)`` for every t.
    Token inputs are one-hot encoded. LSTM forget-gate biases start at ``forget_bias``
    (default 1, Jozefowicz et al. 2015) so that gradients survive long sequences from the
    first step.

    Parameters: ``rnn.weight_ih_l{k}``, ``rnn.weight_hh_l{k}``, ``rnn.bias_ih_l{k}``,
    ``rnn.bias_hh_l{k}`` (PyTorch's names and gate order) and ``head.weight``, ``head.bias``.
    """

    CLASSES = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(self, kind, task_info, hidden, layers, seed, forget_bias=1.0):
        super().__init__()
        rng = np.random.default_rng([int(seed), 0x5EC])
        self.kind, self.info = kind, dict(task_info)
        self.config = {"hidden": hidden, "layers": layers, "seed": seed, "forget_bias": float(forget_bias)}
        self.rnn = self.CLASSES[kind](self.info["input_size"], hidden, num_layers=layers, rng=rng)
        if kind == "lstm":
            for k in range(layers):
                b = getattr(self.rnn, f"bias_ih_l{k}")
                d = b.data.copy()
                d[hidden:2 * hidden] = forget_bias
                b.data = d
                h = getattr(self.rnn, f"bias_hh_l{k}")
                d = h.data.copy()
                d[hidden:2 * hidden] = 0.0
                h.data = d
        self.head = nn.Linear(hidden, self.info["output_size"], rng=rng)
        self._T = None

    def encode(self, x):
        if self.info["input_kind"] == "tokens":
            return one_hot(x, self.info["input_size"])
        return np.asarray(x, np.float32)

    def forward(self, x, hx=None):
        """x: (T, B, I) features or (T, B) ids -> (B, O) or (T, B, O). ``hx``: initial state
        as for the recurrent layer (LSTM: a tuple)."""
        out, self.last_state = self.rnn.forward(self.encode(x), hx)
        self._T = out.shape[0]
        return self.head.forward(out[-1] if self.info["readout"] == "last" else out)

    def backward(self, d_out):
        d_seq = _readout_backward(self.head, d_out, self.info["readout"], self._T)
        self.rnn.backward(d_seq, need_input_grad=False)

    def recurrent_layers(self):
        """``{label: module}`` of the layers that record ``last_dh_norms``."""
        return {"rnn": self.rnn}

    # ------------------------------------------------------------------ streaming
    def cells(self):
        """One ``nn.RNNCell`` / ``LSTMCell`` / ``GRUCell`` per layer holding that layer's
        trained weights, for step-by-step inference (``cell.step``)."""
        cls = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}[self.kind]
        cells = []
        H = self.rnn.hidden_size
        for k in range(self.rnn.num_layers):
            in_size = self.rnn.input_size if k == 0 else H
            cell = cls(in_size, H, rng=0)
            cell.load_state_dict({n: getattr(self.rnn, f"{n}_l{k}").data
                                  for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")})
            cell.eval()
            cells.append(cell)
        return cells


def _recurrent_builder(kind):
    def build(info, hidden, layers, seed, forget_bias=1.0):
        return RecurrentModel(kind, info, hidden, layers, seed, forget_bias=forget_bias)
    return build


register("rnn", description="vanilla (Elman, tanh) RNN + linear read-out", recurrent=True)(_recurrent_builder("rnn"))
register("lstm", description="LSTM + linear read-out", recurrent=True)(_recurrent_builder("lstm"))
register("gru", description="GRU + linear read-out", recurrent=True)(_recurrent_builder("gru"))


# ============================================================================ transformer
_TRANSFORMER_PARTS = ("TransformerEncoderLayer", "TransformerEncoder", "Embedding", "SinusoidalPositionalEncoding")


def _transformer_unavailable():
    missing = [n for n in _TRANSFORMER_PARTS if not hasattr(nn, n)]
    if missing:
        return (f"the transformer model needs seqcore.nn.{', seqcore.nn.'.join(missing)}, which this version of "
                f"seqcore does not have yet")
    return None


def _with_rng(cls, *args, rng=None, **kw):
    """``cls(*args, **kw)``, passing ``rng`` when the constructor takes one (seeded init)."""
    import inspect

    try:
        takes_rng = "rng" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_rng = False
    return cls(*args, rng=rng, **kw) if takes_rng else cls(*args, **kw)


class TransformerModel(nn.Module):
    """A small encoder-only Transformer: input embedding (``nn.Embedding`` for token ids, a
    ``nn.Linear`` for features), sinusoidal positions, ``layers`` post-norm encoder layers
    (``d_model = hidden``, ``nhead`` heads, feed-forward ``4 * hidden``, no dropout), a linear
    read-out at the last position (``readout='last'``) or at every position; causal attention
    for the char-level LM (each position sees only the past).
    """

    def __init__(self, task_info, hidden, layers, seed, nhead=None, dim_feedforward=None):
        super().__init__()
        rng = np.random.default_rng([int(seed), 0x7F])
        self.kind, self.info = "transformer", dict(task_info)
        if nhead is None:
            nhead = 4 if hidden % 4 == 0 else (2 if hidden % 2 == 0 else 1)
        if hidden % nhead:
            raise ModelError(f"--hidden {hidden} must be a multiple of the number of heads ({nhead})")
        dim_feedforward = 4 * hidden if dim_feedforward is None else int(dim_feedforward)
        self.config = {"hidden": hidden, "layers": layers, "seed": seed, "nhead": nhead,
                       "dim_feedforward": dim_feedforward}
        self.tokens = self.info["input_kind"] == "tokens"
        # a causal LM must not see the character it predicts; copy/adding read the whole input
        self.causal = self.tokens and self.info["readout"] == "all" and self.info.get("causal", True)
        if self.tokens:
            self.embed = _with_rng(nn.Embedding, self.info["input_size"], hidden, rng=rng)
        else:
            self.embed = nn.Linear(self.info["input_size"], hidden, rng=rng)
        self.pos = nn.SinusoidalPositionalEncoding(hidden, max(self.info["seq_len"], 1))
        layer = _with_rng(nn.TransformerEncoderLayer, hidden, nhead, dim_feedforward=dim_feedforward,
                          dropout=0.0, rng=rng)
        self.encoder = _with_rng(nn.TransformerEncoder, layer, layers, rng=rng)
        self.head = nn.Linear(hidden, self.info["output_size"], rng=rng)
        self._T = None

    def forward(self, x):
        e = self.embed.forward(np.asarray(x) if self.tokens else np.asarray(x, np.float32))
        h = self.encoder.forward(self.pos.forward(e), is_causal=self.causal)
        self._T = h.shape[0]
        return self.head.forward(h[-1] if self.info["readout"] == "last" else h)

    def backward(self, d_out):
        d_seq = _readout_backward(self.head, d_out, self.info["readout"], self._T)
        self.embed.backward(self.pos.backward(self.encoder.backward(d_seq)))

    def recurrent_layers(self):
        return {}


@register("transformer", description="encoder-only Transformer (embedding, sinusoidal positions, post-norm layers)",
          available=_transformer_unavailable)
def _build_transformer(info, hidden, layers, seed, nhead=None, dim_feedforward=None):
    return TransformerModel(info, hidden, layers, seed, nhead=nhead, dim_feedforward=dim_feedforward)
