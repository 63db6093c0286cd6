"""Training monitor: loss, gradient norms, update/weight ratios and gradient flow through time.

Typical loop::

    mon = seqcore.monitor.TrainingMonitor(model)
    for step in range(n):
        loss = ...forward...; ...backward...          # gradients in p.grad
        mon.record(loss, step)                         # after backward, before clipping/step
        seqcore.optim.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        mon.after_step()                               # optional, see below
    print(mon.summary())
    mon.plot("train.png")

What ``record`` measures (all norms are 2-norms, computed by the C++ multi-tensor reduction
:func:`seqcore.optim.clip.total_norm`):

- the loss and the global gradient norm ``||(g_1, ..., g_k)||``;
- each parameter's gradient norm ``||g_i||``;
- for every sub-module with ``last_dh_norms`` (RNN, LSTM, GRU after ``backward``), the curve
  ``||dL/dh_t||`` (t = 0..T-1) per (layer, direction).

Update/weight ratios ``||p_after - p_before|| / ||p_before||`` need the parameters on both
sides of the optimizer step. ``record`` keeps a copy of the parameters (``track_updates``,
default True; twice the parameter memory); the ratio of that step is computed by
``after_step()`` when you call it, else lazily at the next ``record``/``summary`` once a
parameter's ``version`` shows that an update happened (``Parameter.version`` is bumped by
every seqcore optimizer step). Either way it is attributed to the step it belongs to.

Flags, listed in ``summary()`` for every step where they hold, and raised as a
:class:`GradientWarning` (when ``warn``) at their onset: on the first step of each run of
consecutive steps with that kind of flag (so a long run of bad steps warns once):

- ``'vanishing'``: for a recurrent layer, the gradient reaching the start of the sequence
  has both (1) fallen below ``vanish_ratio`` (default 1e-3) of the one at its end,
  ``r = ||dL/dh_0|| / ||dL/dh_{T-1}|| < vanish_ratio`` (reverse direction: ``h_{T-1}`` vs
  ``h_0``), and (2) fallen *fast*: its mean decay per step ``r^(1/(T-1))`` is below
  ``vanish_per_step`` (default 0.7: it loses 30% or more per step, 10x in fewer than 6.5
  steps). (1) says the start barely gets any gradient; (2) says why -- the recurrence itself
  forgets within a few steps -- so a long sequence over which a well-behaved layer loses
  gradient only slowly is not flagged, and neither is a short one (where even a steep decay
  leaves the start usable gradient). ``vanish_per_step=1`` leaves only the ratio test.
  Meaningful when the loss sits at the end of the sequence (a loss at every step feeds every
  ``dL/dh_t`` directly, so r stays ~1).

  Why 0.7: measured at PyTorch's default initialisation, loss on the last output, H = 16..128,
  T = 25..200, 4 seeds each (float64), the mean per-step factor is 0.48-0.65 for a tanh RNN,
  0.55-0.66 for an LSTM with its default biases (forget gate ~0.5), 0.59-0.67 for a GRU, and
  0.74-0.86 for an LSTM whose forget-gate bias is 1 -- the forget gate sigma(1) = 0.73 that
  carries its cell state is what sets it. The end-to-start ratios over T = 100 are 1e-19 to
  1e-31 (tanh RNN) against 1e-7 to 1e-9 (LSTM, forget bias 1): a plain ratio threshold would
  have to be chosen per sequence length (1e-3 flags both at T = 100), while the per-step
  factor depends little on T. It estimates the contraction of the backward recurrence
  ``||prod_t dh_t/dh_{t-1}||^(1/T)``, whose being < 1 is what makes gradients vanish
  exponentially (Bengio et al. 1994; Pascanu et al. 2013);
- ``'exploding'``: global gradient norm > ``explode_norm``;
- ``'nonfinite'``: a NaN/Inf loss or gradient norm.
"""
import math
import warnings

import numpy as np

from seqcore.optim.clip import total_norm

__all__ = ["TrainingMonitor", "GradientWarning", "MonitorSummary"]


class GradientWarning(UserWarning):
    """Vanishing, exploding or non-finite gradients seen by :class:`TrainingMonitor`."""


class MonitorSummary(dict):
    """The dict returned by :meth:`TrainingMonitor.summary`; ``str()`` gives the text
    (also in ``['text']``)."""

    def __str__(self):
        return self["text"]


def _norm(a):
    return total_norm([a]) if np.size(a) else 0.0


class TrainingMonitor:
    """Records loss, gradient norms, update ratios and ``dL/dh_t`` curves of ``model``.

    Parameters
    ----------
    model : seqcore.nn.Module
    vanish_ratio : float
        Flag a recurrent layer when ``r = ||dL/dh_start|| / ||dL/dh_end|| < vanish_ratio`` ...
    vanish_per_step : float
        ... and its mean per-step decay ``r^(1/(T-1)) < vanish_per_step`` (see the module
        docstring for the measurements behind the defaults).
    explode_norm : float
        Flag when the global gradient norm exceeds it.
    warn : bool
        Emit a :class:`GradientWarning` when a kind of flag appears (not again while it persists
        on consecutive steps); ``summary()`` lists every flag either way.
    track_updates : bool
        Keep a copy of the parameters at each ``record`` for the update/weight ratios.

    Attributes (one entry per ``record``)
    ----------
    steps, losses, grad_norms : list
    param_grad_norms, update_ratios : dict name -> list (ratio NaN until known)
    dh_norms : dict ``'<module>[layer, direction]'`` -> list of (T,) arrays
    dh_ratios : dict same keys -> list of float (start/end ratio, NaN if undefined)
    dh_per_step : dict same keys -> list of float (mean per-step factor ``ratio^(1/(T-1))``)
    flags : list of dicts ``{'step', 'kind', 'message'}``
    """

    def __init__(self, model, vanish_ratio=1e-3, explode_norm=1e3, warn=True, track_updates=True,
                 vanish_per_step=0.7):
        if not vanish_ratio >= 0 or not explode_norm >= 0 or not vanish_per_step >= 0:
            raise ValueError("vanish_ratio, vanish_per_step and explode_norm must be >= 0")
        self.model = model
        self.vanish_ratio, self.explode_norm = float(vanish_ratio), float(explode_norm)
        self.vanish_per_step = float(vanish_per_step)
        self.warn, self.track_updates = bool(warn), bool(track_updates)
        self.steps, self.losses, self.grad_norms = [], [], []
        self.param_grad_norms, self.update_ratios = {}, {}
        self.dh_norms, self.dh_ratios, self.dh_per_step = {}, {}, {}
        self.flags = []
        self._snapshot = None  # (record index, {name: (param, data copy, version)})
        self._active = set()  # kinds flagged at the previous record

    # ------------------------------------------------------------------ recording
    def _named_params(self):
        return list(self.model.named_parameters())

    def _recurrent(self):
        for mname, m in self.model.named_modules():
            norms = getattr(m, "last_dh_norms", None)
            if norms:
                for (layer, d), curve in sorted(norms.items()):
                    yield f"{mname or type(m).__name__}[{layer}, {d}]", d, np.array(curve, np.float64)

    def _flag(self, step, kind, message, kinds):
        self.flags.append({"step": step, "kind": kind, "message": message})
        kinds.add(kind)
        if self.warn and kind not in self._active:
            warnings.warn(f"step {step}: {message}", GradientWarning, stacklevel=3)

    def record(self, loss, step=None):
        """Records one step; call after ``backward`` and before clipping / ``optimizer.step()``.
        ``step`` defaults to the previous step + 1 (0 first). Returns the global grad norm."""
        self._finish_pending(force=False)
        step = (self.steps[-1] + 1 if self.steps else 0) if step is None else int(step)
        loss = float(np.asarray(loss))
        named = self._named_params()
        grads = [p.grad for _, p in named if p.grad is not None]
        gnorm = total_norm(grads) if grads else 0.0
        i = len(self.steps)
        self.steps.append(step)
        self.losses.append(loss)
        self.grad_norms.append(gnorm)
        nonfinite = []
        for name, p in named:
            n = _norm(p.grad) if p.grad is not None else float("nan")
            self.param_grad_norms.setdefault(name, [float("nan")] * i).append(n)
            self.update_ratios.setdefault(name, [float("nan")] * i).append(float("nan"))
            if p.grad is not None and not math.isfinite(n):
                nonfinite.append(name)
        for lst in list(self.param_grad_norms.values()) + list(self.update_ratios.values()):
            lst.extend([float("nan")] * (i + 1 - len(lst)))  # parameters that disappeared
        vanishing = []
        for key, d, curve in self._recurrent():
            T = curve.shape[0]
            start, end = (curve[0], curve[-1]) if d == 0 else (curve[-1], curve[0])
            ratio = float(start / end) if T and end > 0 and math.isfinite(end) else float("nan")
            per_step = ratio ** (1.0 / (T - 1)) if T > 1 and ratio >= 0 else float("nan")
            self.dh_norms.setdefault(key, []).append(curve)
            self.dh_ratios.setdefault(key, []).append(ratio)
            self.dh_per_step.setdefault(key, []).append(per_step)
            if not np.all(np.isfinite(curve)):
                nonfinite.append(f"dL/dh of {key}")
            elif ratio < self.vanish_ratio and per_step < self.vanish_per_step:
                vanishing.append(f"{key}: ||dL/dh|| at the sequence start is {ratio:.3g} x the end, "
                                 f"{per_step:.3f} x per step (T={T}; thresholds {self.vanish_ratio:g}, "
                                 f"{self.vanish_per_step:g} per step)")
        kinds = set()
        if not math.isfinite(loss) or not math.isfinite(gnorm) or nonfinite:
            what = ([] if math.isfinite(loss) else [f"loss = {loss}"]) + \
                   ([] if math.isfinite(gnorm) else [f"global grad norm = {gnorm}"]) + \
                   ([f"non-finite gradients in {', '.join(nonfinite)}"] if nonfinite else [])
            self._flag(step, "nonfinite", "non-finite values: " + "; ".join(what), kinds)
        elif gnorm > self.explode_norm:
            self._flag(step, "exploding", f"exploding gradients: global grad norm {gnorm:.4g} > "
                                          f"{self.explode_norm:g}", kinds)
        if vanishing:
            self._flag(step, "vanishing", "vanishing gradients through time: " + "; ".join(vanishing), kinds)
        self._active = kinds
        if self.track_updates:
            self._snapshot = (i, {name: (p, p.data.copy(), p.version) for name, p in named})
        return gnorm

    def _finish_pending(self, force):
        """Computes the update ratios of the last record from its parameter snapshot (with
        ``force``, or once some parameter's version changed, i.e. the optimizer stepped)."""
        if self._snapshot is None:
            return
        i, snap = self._snapshot
        if not force and all(p.version == v for p, _, v in snap.values()):
            return
        for name, (p, before, _) in snap.items():
            if p.data.shape != before.shape:
                continue
            wn = _norm(before)
            diff = p.data - before
            dn = _norm(diff)
            self.update_ratios[name][i] = dn / wn if wn > 0 else (0.0 if dn == 0 else float("inf"))
        self._snapshot = None

    def after_step(self):
        """Call right after ``optimizer.step()``: computes this step's update/weight ratios
        ``||p_after - p_before|| / ||p_before||`` (per parameter) now, and frees the copy."""
        self._finish_pending(force=True)

    # ------------------------------------------------------------------ reporting
    def summary(self):
        """A :class:`MonitorSummary` (dict; ``str()`` is printable text) with ``records``,
        ``last_step``, ``loss`` (first/last/min), ``grad_norm`` (last/max/mean),
        ``param_grad_norms`` / ``update_ratios`` (last value per parameter), ``dh_ratio``
        (last start/end ratio per recurrent layer and direction), ``dh_per_step`` (its mean
        per-step factor), ``flags`` (every flag),
        booleans ``vanishing`` / ``exploding`` / ``nonfinite``, and ``text``."""
        self._finish_pending(force=False)
        n = len(self.steps)
        kinds = {f["kind"] for f in self.flags}
        fin = [x for x in self.losses if math.isfinite(x)]
        s = MonitorSummary(
            records=n,
            last_step=self.steps[-1] if n else None,
            loss=dict(first=self.losses[0] if n else None, last=self.losses[-1] if n else None,
                      min=min(fin) if fin else None),
            grad_norm=dict(last=self.grad_norms[-1] if n else None,
                           max=max(self.grad_norms) if n else None,
                           mean=float(np.mean(self.grad_norms)) if n else None),
            param_grad_norms={k: v[-1] for k, v in self.param_grad_norms.items() if v},
            update_ratios={k: v[-1] if not math.isnan(v[-1]) or len(v) < 2 else v[-2]
                           for k, v in self.update_ratios.items() if v},
            dh_ratio={k: v[-1] for k, v in self.dh_ratios.items() if v},
            dh_per_step={k: v[-1] for k, v in self.dh_per_step.items() if v},
            flags=list(self.flags),
            vanishing="vanishing" in kinds, exploding="exploding" in kinds, nonfinite="nonfinite" in kinds,
        )
        s["text"] = self._text(s)
        return s

    def _text(self, s):
        if not s["records"]:
            return "TrainingMonitor: nothing recorded"
        lines = [f"TrainingMonitor: {s['records']} steps recorded (last step {s['last_step']})",
                 f"  loss: first {s['loss']['first']:.6g}, last {s['loss']['last']:.6g}, "
                 f"min {s['loss']['min'] if s['loss']['min'] is None else format(s['loss']['min'], '.6g')}",
                 f"  global grad norm: last {s['grad_norm']['last']:.4g}, max {s['grad_norm']['max']:.4g}, "
                 f"mean {s['grad_norm']['mean']:.4g}"]
        if s["param_grad_norms"]:
            w = max(len(k) for k in s["param_grad_norms"])
            lines.append(f"  {'parameter':<{w}}  grad norm   update/weight")
            for k, g in s["param_grad_norms"].items():
                r = s["update_ratios"].get(k, float("nan"))
                lines.append(f"  {k:<{w}}  {g:<10.4g}  {'n/a' if math.isnan(r) else format(r, '.3g')}")
        for k, r in s["dh_ratio"].items():
            lines.append(f"  dL/dh start/end {k}: {r:.3g} ({s['dh_per_step'].get(k, float('nan')):.3f} per step)")
        if s["flags"]:
            lines.append(f"  {len(s['flags'])} flag(s):")
            for f in s["flags"][-10:]:
                lines.append(f"    [{f['kind']}] step {f['step']}: {f['message']}")
            if len(s["flags"]) > 10:
                lines.append(f"    ... ({len(s['flags']) - 10} earlier)")
        else:
            lines.append("  no gradient problems flagged")
        return "\n".join(lines)

    def plot(self, path):
        """Writes a PNG with three panels: the loss, the global gradient norm (log scale,
        with ``explode_norm``), and ``||dL/dh_t||`` over t for every recurrent layer and
        direction (first and last recorded step). Needs matplotlib (``pip install
        seqcore[plot]``); raises ImportError saying so when it is missing."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:
            raise ImportError("TrainingMonitor.plot needs matplotlib: pip install seqcore[plot]") from e
        fig = Figure(figsize=(12, 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax_loss, ax_norm, ax_dh = fig.subplots(1, 3)
        ax_loss.plot(self.steps, self.losses, color="C0")
        ax_loss.set(title="loss", xlabel="step")
        pos = [(s, g) for s, g in zip(self.steps, self.grad_norms) if g > 0 and math.isfinite(g)]
        if pos:
            ax_norm.semilogy(*zip(*pos), color="C1", label="global grad norm")
        ax_norm.axhline(self.explode_norm, color="C3", linestyle=":", label="explode_norm")
        for f in self.flags:
            ax_norm.axvline(f["step"], color="C3", alpha=0.2)
        ax_norm.set(title="gradient norm", xlabel="step")
        ax_norm.legend(loc="best", fontsize="small")
        for j, (key, curves) in enumerate(self.dh_norms.items()):
            for which, style in ((0, "--"), (-1, "-")):
                c = curves[which]
                t = np.arange(c.shape[0])
                ok = (c > 0) & np.isfinite(c)
                if ok.any():
                    ax_dh.semilogy(t[ok], c[ok], style, color=f"C{j % 10}",
                                   label=f"{key} step {self.steps[0] if which == 0 else self.steps[-1]}")
        ax_dh.set(title="||dL/dh_t|| (gradient through time)", xlabel="t")
        if self.dh_norms:
            ax_dh.legend(loc="best", fontsize="x-small")
        else:
            ax_dh.text(0.5, 0.5, "no recurrent layers", ha="center", va="center", transform=ax_dh.transAxes)
        fig.savefig(path, format="png", dpi=100)
        return path
