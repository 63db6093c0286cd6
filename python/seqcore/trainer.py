"""The training loop behind ``seqcore train`` and ``seqcore demo``.

One step: draw a batch from the task's random stream, ``model.forward`` (whole sequences in
C++), the loss and its gradient, ``model.backward`` (BPTT in C++), optional
``clip_grad_norm_``, ``optimizer.step()``. Every ``eval_every`` steps the model is evaluated
on the task's fixed held-out set, and a checkpoint is written when a path is given.

Checkpoints (:func:`seqcore.save`, atomic: temp file, fsync, rename) hold everything the run
depends on: the configuration, the model's ``state_dict``, the optimizer's, the state of the
data stream's bit generator, the step and the history so far. Resuming restores all of them,
so a resumed run computes exactly the same numbers as an uninterrupted one (seqcore's
kernels give the same bits for any thread count).

Ctrl-C (SIGINT) while :meth:`Trainer.run` is running finishes the current step, writes a
checkpoint when a path is given (the previous one stays valid until the new one has replaced
it) and raises :class:`Interrupted`; a second Ctrl-C stops at once.
"""
import contextlib
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

import seqcore
from seqcore import optim
from seqcore.models import build_model, task_info
from seqcore.optim.clip import total_norm
from seqcore.tasks import make_task

__all__ = ["TrainConfig", "Trainer", "Interrupted", "TrainingError", "CheckpointError", "TASK_DEFAULTS",
           "OPTIMIZERS", "load_checkpoint", "atomic_write_text", "CHECKPOINT_FORMAT", "LOG_SCHEMA"]

CHECKPOINT_FORMAT = "seqcore-train-checkpoint"
CHECKPOINT_VERSION = 1
LOG_SCHEMA = "seqcore-train-log/1"

# Per-task defaults (``seqcore train`` uses them for every option not given).
TASK_DEFAULTS = {
    "adding": dict(seq_len=100, hidden=64, layers=1, batch=32, steps=3000, lr=3e-3, clip=1.0),
    "copy": dict(seq_len=40, hidden=64, layers=1, batch=32, steps=3000, lr=3e-3, clip=1.0),
    "charlm": dict(seq_len=64, hidden=128, layers=1, batch=32, steps=1200, lr=3e-3, clip=1.0),
}

OPTIMIZERS = {
    "adam": lambda params, lr: optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: optim.AdamW(params, lr=lr),
    "rmsprop": lambda params, lr: optim.RMSprop(params, lr=lr),
    "sgd": lambda params, lr: optim.SGD(params, lr=lr, momentum=0.9),
}


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit what was asked."""


class Interrupted(Exception):
    """Training was stopped by Ctrl-C (SIGINT); ``saved`` is the checkpoint path or None."""

    def __init__(self, step, saved=None):
        super().__init__(f"interrupted at step {step}")
        self.step, self.saved = step, saved


@dataclass
class TrainConfig:
    model: str = "lstm"
    task: str = "adding"
    seq_len: int = 100
    hidden: int = 64
    layers: int = 1
    batch: int = 32
    steps: int = 3000
    lr: float = 3e-3
    clip: float = 1.0  # 0: no clipping
    optimizer: str = "adam"
    seed: int = 0
    eval_every: int = 0  # 0: steps // 10
    text: Optional[str] = None  # charlm: a text file (None: the shipped corpus)

    def validate(self):
        for name in ("seq_len", "hidden", "layers", "batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"--steps must be >= 0, got {self.steps}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"--lr must be a positive number, got {self.lr}")
        if not (self.clip >= 0 and math.isfinite(self.clip)):
            raise ValueError(f"--clip must be >= 0 (0: no clipping), got {self.clip}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r} (choose from {', '.join(OPTIMIZERS)})")
        if self.eval_every < 0:
            raise ValueError(f"--eval-every must be >= 0, got {self.eval_every}")
        return self

    def eval_interval(self):
        return self.eval_every or max(1, self.steps // 10)


# ============================================================================ files
def atomic_write_text(path, text):
    """Writes ``text`` to ``path`` atomically (temp file in the same directory, fsync, rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _sigint_deferred():
    """Holds back SIGINT while a file is written (re-raised as KeyboardInterrupt after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda s, f: got.append(s))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:  # deliver it now to whoever handled SIGINT before
        if callable(old) and old is not signal.default_int_handler:
            old(signal.SIGINT, None)
        elif old != signal.SIG_IGN:
            raise KeyboardInterrupt


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN/inf
    return x


def load_checkpoint(path):
    """Reads a checkpoint written by :class:`Trainer` (CheckpointError with a clear message
    for a missing, unreadable or foreign file)."""
    if not os.path.exists(path):
        raise CheckpointError(f"no such checkpoint: {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a seqcore checkpoint (not an .npz archive)")
    try:
        ck = seqcore.load(path)
    except (ValueError, OSError) as e:
        msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
        raise CheckpointError(f"cannot read checkpoint {msg}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint written by 'seqcore train'")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {ck.get('version')!r}")
    return ck


# ============================================================================ progress
class _Progress:
    """A tqdm bar (loss, eval, steps/s), or plain lines when tqdm is missing or disabled."""

    def __init__(self, desc, total, initial, enabled, stream=None):
        self.stream = stream or sys.stderr
        self.desc, self.total, self.n = desc, total, initial
        self.bar, self.enabled = None, enabled
        self._t0, self._n0, self._last_print = time.perf_counter(), initial, 0.0
        self._post = {}
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", file=self.stream,
                            dynamic_ncols=True, mininterval=0.25, smoothing=0.1, leave=True)

    def update(self, n, **post):
        self.n += n
        self._post.update({k: v for k, v in post.items() if v is not None})
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if post:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in self._post.items()}, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_print >= 2.0 or self.n >= self.total:
            self._last_print = now
            rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
            post = " ".join(f"{k}={v:.4g}" for k, v in self._post.items())
            print(f"{self.desc}: step {self.n}/{self.total} {rate:.1f} steps/s {post}", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ============================================================================ trainer
def _rng_from_state(state):
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    return rng


class Trainer:
    """Model, optimizer, task, data stream and history of one training run."""

    def __init__(self, cfg, task, model, optimizer, rng, step=0, history=None):
        self.cfg, self.task, self.model, self.optimizer, self.rng = cfg, task, model, optimizer, rng
        self.step = int(step)
        h = history or {}
        self.losses = list(np.asarray(h.get("loss", []), np.float64))
        self.grad_norms = list(np.asarray(h.get("grad_norm", []), np.float64))
        self.evals = [dict(e) for e in h.get("evals", [])]
        self.dh_first = {k: np.asarray(v) for k, v in h.get("dh_first", {}).items()}
        self.dh_last = {k: np.asarray(v) for k, v in h.get("dh_last", {}).items()}
        self.train_time = float(h.get("train_time", 0.0))
        self._stop = False
        self.world = None  # a seqcore.distributed.World for data-parallel runs (set_world)

    def set_world(self, world):
        """Train data-parallel over ``world`` (seqcore.distributed): every rank draws the same
        global batch, runs forward/backward on its contiguous share of it, and the gradients
        are averaged with one fused Allreduce before clipping and the optimizer step, so the
        parameters stay identical on every rank. The batch must divide evenly."""
        if world is not None and world.size > 1 and self.cfg.batch % world.size:
            raise ValueError(f"--batch {self.cfg.batch} must be divisible by the number of ranks ({world.size})")
        self.world = world if world is not None and world.size > 1 else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, cfg):
        """A fresh run from a :class:`TrainConfig`."""
        cfg.validate()
        task = make_task(cfg.task, cfg.seq_len, cfg.seed, text_path=cfg.text)
        model = build_model(cfg.model, task_info(task), cfg.hidden, cfg.layers, cfg.seed)
        opt = OPTIMIZERS[cfg.optimizer](model.parameters(), cfg.lr)
        rng = np.random.default_rng([cfg.seed, 0xDA7A])
        return cls(cfg, task, model, opt, rng)

    @classmethod
    def from_checkpoint(cls, ck, path="checkpoint", overrides=None, text=None):
        """Restores a run from :func:`load_checkpoint`'s dict. ``overrides``: options given on
        the command line; those that define the model or the data must equal the
        checkpoint's (CheckpointError otherwise), ``steps``/``eval_every``/``lr``/``clip``/
        ``batch`` replace the saved ones."""
        try:
            saved = TrainConfig(**ck["config"])
        except (TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: checkpoint has no usable configuration ({e})") from None
        cfg = TrainConfig(**asdict(saved))
        for k, v in (overrides or {}).items():
            if v is None:
                continue
            if k in ("steps", "eval_every", "lr", "clip", "batch"):
                setattr(cfg, k, v)
            elif k == "text":
                continue
            elif getattr(saved, k) != v:
                flag = "--" + k.replace("_", "-")
                raise CheckpointError(f"{path} was trained with {flag} {getattr(saved, k)}; it cannot be resumed "
                                      f"with {flag} {v} (leave {flag} out to use the checkpoint's)")
        try:
            cfg.validate()
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        tcfg = ck.get("task", {})
        text_path = text
        if cfg.task == "charlm" and text_path is None and saved.text is not None:
            text_path = saved.text
            if not os.path.exists(text_path):
                raise CheckpointError(f"{path} was trained on {text_path}, which no longer exists; pass --text FILE")
        task = make_task(cfg.task, cfg.seq_len, cfg.seed, text_path=text_path, vocab=tcfg.get("vocab"),
                         **({"n_symbols": tcfg["n_symbols"]} if "n_symbols" in tcfg else {}))
        if cfg.task == "charlm" and task.text_sha256 != tcfg.get("text_sha256"):
            raise CheckpointError(f"{path} was trained on another text ({tcfg.get('text_name')}); resuming on "
                                  f"{task.text_name} would not continue the same run")
        cfg.text = text_path
        model = model_from_checkpoint(ck, task, path)
        opt = OPTIMIZERS[cfg.optimizer](model.parameters(), cfg.lr)
        try:
            opt.load_state_dict(ck["optimizer"])
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise CheckpointError(f"{path}: optimizer state does not fit the model ({e})") from None
        for g in opt.param_groups:  # an --lr given on resume wins over the saved one
            g["lr"] = cfg.lr
        try:
            rng = _rng_from_state(ck["rng"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: bad data-stream state ({e})") from None
        return cls(cfg, task, model, opt, rng, step=int(ck["step"]), history=ck.get("history"))

    # ------------------------------------------------------------------ one step
    def train_step(self):
        """One update; returns (loss, global grad norm before clipping)."""
        x, y = self.task.batch(self.rng, self.cfg.batch)
        world = self.world
        if world is not None:  # this rank's share of the global batch (time-major x)
            from seqcore import distributed as dist

            x = dist.shard(x, world, axis=1)
            y = dist.shard(y, world, axis=0 if self.task.readout == "last" else 1)
        model = self.model
        model.zero_grad()
        out = model.forward(x)
        loss, d_out = self.task.loss_and_grad(out, y)
        model.backward(d_out)
        params = model.parameters()
        if world is not None:
            dist.allreduce_gradients(params, world, owner=self)
            loss = world.allreduce_scalar(loss) / world.size
        if self.cfg.clip > 0:
            gnorm = optim.clip_grad_norm_(params, self.cfg.clip)
        else:
            gnorm = total_norm([p.grad for p in params])
        if not (math.isfinite(loss) and math.isfinite(gnorm)):
            raise TrainingError(f"the loss or gradient became non-finite at step {self.step + 1} "
                                f"(loss {loss}, grad norm {gnorm}); try a smaller --lr or --clip 1")
        self.optimizer.step()
        self.step += 1
        self.losses.append(loss)
        self.grad_norms.append(float(gnorm))
        return loss, gnorm

    def dh_norms(self):
        """The latest ``||dL/dh_t||`` curves: ``{'<layer>[l, d]': (T,) array}``."""
        out = {}
        for label, m in self.model.recurrent_layers().items():
            for (layer, d), curve in sorted(getattr(m, "last_dh_norms", {}).items()):
                out[f"{label}[{layer},{d}]"] = np.array(curve, np.float64)
        return out

    def evaluate(self):
        """Metrics on the held-out set (eval mode; the training stream is not touched)."""
        x, y = self.task.eval_set()
        self.model.eval()
        try:
            out = self.model.forward(x)
        finally:
            self.model.train()
        m = self.task.metrics(out, y)
        m["step"] = self.step
        return m

    # ------------------------------------------------------------------ loop
    def run(self, progress=True, save=None, desc=None, on_eval=None):
        """Trains up to ``cfg.steps`` steps (from the current step). ``save``: checkpoint path,
        written at every evaluation and at the end. Returns the final evaluation."""
        cfg = self.cfg
        every = cfg.eval_interval()
        bar = _Progress(desc or f"{cfg.model}/{cfg.task}", cfg.steps, self.step, progress)
        in_main = threading.current_thread() is threading.main_thread()
        old_handler = None
        self._stop = False

        def on_sigint(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        if in_main:
            old_handler = signal.signal(signal.SIGINT, on_sigint)
        last_eval = None
        try:
            ema = None
            while self.step < cfg.steps and not self._stop:
                t0 = time.perf_counter()
                first = self.step == 0
                loss, _ = self.train_step()
                self.train_time += time.perf_counter() - t0
                if first:
                    self.dh_first = self.dh_norms()
                ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                post = {"loss": ema}
                if self.step % every == 0 or self.step == cfg.steps:
                    last_eval = self.evaluate()
                    self.evals.append(last_eval)
                    self.dh_last = self.dh_norms()
                    post["eval"] = last_eval["loss"]
                    if save:
                        self.save(save)
                    if on_eval:
                        on_eval(self, last_eval)
                bar.update(1, **post)
            if self._stop:
                saved = None
                if save:
                    self.dh_last = self.dh_norms() or self.dh_last
                    self.save(save)
                    saved = save
                raise Interrupted(self.step, saved)
        finally:
            bar.close()
            if in_main:
                signal.signal(signal.SIGINT, old_handler)
        if last_eval is None:
            if self.evals and self.evals[-1]["step"] == self.step:
                last_eval = self.evals[-1]
            else:
                last_eval = self.evaluate()
                self.evals.append(last_eval)
            if save:
                self.save(save)
        return last_eval

    # ------------------------------------------------------------------ state
    def history(self):
        return {"loss": np.asarray(self.losses, np.float64), "grad_norm": np.asarray(self.grad_norms, np.float64),
                "evals": [dict(e) for e in self.evals], "dh_first": dict(self.dh_first),
                "dh_last": dict(self.dh_last), "train_time": float(self.train_time)}

    def checkpoint(self):
        cfg = asdict(self.cfg)
        if cfg["text"] is not None:
            cfg["text"] = os.path.abspath(cfg["text"])
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "seqcore": seqcore.__version__,
                "config": cfg, "task": self.task.config(), "model_name": self.cfg.model,
                "model_config": dict(self.model.config), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "rng": self.rng.bit_generator.state,
                "step": self.step, "history": self.history()}

    def save(self, path):
        """Writes the checkpoint atomically (SIGINT is held back while it is written)."""
        ck = self.checkpoint()
        with _sigint_deferred():
            seqcore.save(ck, path)

    def num_parameters(self):
        return self.model.num_parameters()

    def summary(self, final=None):
        """A plain dict for tables and JSON."""
        final = final or (self.evals[-1] if self.evals else self.evaluate())
        tail = self.losses[-max(1, min(50, len(self.losses))):] if self.losses else [float("nan")]
        return {"model": self.cfg.model, "task": self.cfg.task, "step": self.step,
                "train_loss": float(np.mean(tail)), "eval_loss": final["loss"], "eval_acc": final["acc"],
                "solved": bool(self.task.solved(final)), "chance_loss": self.task.chance(),
                "time_s": self.train_time, "steps_per_s": (len(self.losses) / self.train_time
                                                           if self.train_time > 0 else float("nan")),
                "parameters": self.num_parameters()}

    def log_dict(self, final=None, interrupted=False):
        """The ``--log-json`` document (schema ``seqcore-train-log/1``)."""
        info = seqcore.info()
        return _jsonable({
            "schema": LOG_SCHEMA,
            "config": asdict(self.cfg),
            "task": self.task.config(),
            "model": {"name": self.cfg.model, "parameters": self.num_parameters(), "config": dict(self.model.config)},
            "seqcore": {"version": info["version"], "isa": info["isa"], "threads": seqcore.get_num_threads()},
            "steps": [{"step": i + 1, "loss": l, "grad_norm": g}
                      for i, (l, g) in enumerate(zip(self.losses, self.grad_norms))],
            "evals": self.evals,
            "dh_norms": {"first": self.dh_first, "last": self.dh_last},
            "final": self.summary(final),
            "interrupted": bool(interrupted),
        })

    def write_log(self, path, final=None, interrupted=False):
        atomic_write_text(path, json.dumps(self.log_dict(final, interrupted), indent=1) + "\n")


def model_from_checkpoint(ck, task, path="checkpoint"):
    """Rebuilds the checkpoint's model for ``task`` and loads its weights."""
    name = ck.get("model_name")
    mc = dict(ck.get("model_config", {}))
    try:
        hidden, layers, seed = mc.pop("hidden"), mc.pop("layers"), mc.pop("seed")
        model = build_model(name, task_info(task), hidden, layers, seed, **mc)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: checkpoint has no usable model description ({e})") from None
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights do not fit a {name} model of this shape: {e}") from None
    return model
