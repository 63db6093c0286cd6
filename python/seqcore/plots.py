"""PNG figures for the command line (matplotlib, optional: ``pip install 'seqcore[plot]'``).

Figures are drawn on a :class:`matplotlib.figure.Figure` with the Agg canvas directly, so no
GUI backend (and no pyplot state) is ever involved.
"""
import math

import numpy as np

__all__ = ["PlotUnavailable", "have_matplotlib", "plot_losses", "plot_dh_norms"]


class PlotUnavailable(ImportError):
    """matplotlib is not installed."""


def have_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(figsize):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailable("plots need matplotlib: pip install 'seqcore[plot]'") from e
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _smooth(y, n):
    """Moving average over ``n`` steps (valid part), computed with a cumulative sum."""
    y = np.asarray(y, np.float64)
    if n <= 1 or y.size < n:
        return np.arange(1, y.size + 1), y
    c = np.cumsum(np.insert(y, 0, 0.0))
    return np.arange(n, y.size + 1), (c[n:] - c[:-n]) / n


def plot_losses(runs, path, title="training loss", chance=None, ylabel="loss"):
    """Loss curves: ``runs`` maps a label to ``{'loss': per-step losses, 'evals': [{'step',
    'loss'}, ...]}``; training loss smoothed (moving average), held-out points marked."""
    fig = _figure((7.5, 4.2))
    ax = fig.subplots()
    for j, (label, h) in enumerate(runs.items()):
        losses = np.asarray(h.get("loss", []), np.float64)
        color = f"C{j % 10}"
        if losses.size:
            x, y = _smooth(losses, max(1, losses.size // 50))
            ok = np.isfinite(y) & (y > 0)
            ax.plot(x[ok], y[ok], color=color, lw=1.4, label=f"{label} (train)")
        ev = [(e["step"], e["loss"]) for e in h.get("evals", []) if e.get("loss") is not None
              and math.isfinite(e["loss"]) and e["loss"] > 0]
        if ev:
            ax.plot(*zip(*ev), "o", color=color, ms=3.5, label=f"{label} (held out)")
    if chance is not None and math.isfinite(chance) and chance > 0:
        ax.axhline(chance, color="0.5", ls=":", lw=1, label=f"mean predictor ({chance:.3g})")
    ax.set_yscale("log")
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path, format="png", dpi=110)
    return path


def plot_dh_norms(curves, path, title="gradient through time: ||dL/dh_t|| (loss at the last step)"):
    """``curves`` maps a label to a (T,) array (or to ``{'first': arr, 'last': arr}`` to draw
    the first training step dashed and the last solid). Log scale."""
    fig = _figure((7.5, 4.2))
    ax = fig.subplots()
    for j, (label, c) in enumerate(curves.items()):
        color = f"C{j % 10}"
        parts = c.items() if isinstance(c, dict) else [(None, c)]
        for which, arr in parts:
            arr = np.asarray(arr, np.float64)
            t = np.arange(arr.size)
            ok = np.isfinite(arr) & (arr > 0)
            if not ok.any():
                continue
            style = "--" if which == "first" else "-"
            lab = label if which is None else f"{label} ({'step 1' if which == 'first' else 'end of training'})"
            ax.semilogy(t[ok], arr[ok], style, color=color, lw=1.4, label=lab)
    ax.set(title=title, xlabel="time step t", ylabel="||dL/dh_t||")
    ax.grid(True, which="both", alpha=0.25)
    if curves:
        ax.legend(loc="best", fontsize="small")
    fig.savefig(path, format="png", dpi=110)
    return path
