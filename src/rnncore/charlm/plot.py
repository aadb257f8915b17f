"""The loss plot of a char-LM run: train and validation bits per character against the step."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_history", "y_range"]

_LN2 = math.log(2.0)


def y_range(bits, val_bits=()):
    """(low, high) of the loss plot's y axis, in bits per character, or None.

    The first steps of a run sit far above the rest (~log2(V) bits at step 1,
    7.4 for the default corpus, against 1.5-2.5 later), and an axis that shows
    them squeezes the part of the curve that matters into a strip. So the range
    follows the steps after the first tenth of the run (the last 90 %, all of
    them for runs under 20 steps), up to their 99th percentile, plus every
    validation point, with a 5 % margin.
    """
    bits = np.asarray(bits, dtype=np.float64)
    bits = bits[np.isfinite(bits)]
    if bits.size < 20:
        return None
    later = bits[bits.size // 10:]
    vals = np.asarray(val_bits, dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    lo = min(later.min(), vals.min() if vals.size else np.inf)
    hi = max(np.percentile(later, 99), vals.max() if vals.size else -np.inf)
    pad = 0.05 * max(hi - lo, 1e-3)
    return lo - pad, hi + pad


def plot_history(train_loss, val_history, path, title="") -> bool:
    """Train and validation loss (bits/char) against the step, as an image.

    The y axis follows the later part of the run (:func:`y_range`): the first
    steps' much larger losses run off the top.

    Parameters
    ----------
    train_loss : sequence of float
        Per-step mean cross-entropy in nats (nan entries are skipped steps).
    val_history : sequence of (step, bits per char)
    path : str
        Output file (PNG by its suffix).
    title : str

    Returns
    -------
    bool
        False when matplotlib is not installed (nothing written).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    bits = np.asarray(train_loss, dtype=np.float64) / _LN2
    steps = np.arange(1, bits.shape[0] + 1)
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    ax = fig.add_subplot(1, 1, 1)
    if bits.size:
        ax.plot(steps, bits, color="tab:blue", alpha=0.25, linewidth=0.8)
        ok = np.isfinite(bits)
        if ok.sum() > 1:  # trailing mean over a window of ~1/40 of the run
            w = int(min(50, max(2, ok.sum() // 40)))
            c = np.concatenate([[0.0], np.cumsum(bits[ok])])
            k = np.arange(1, c.shape[0])
            mean = (c[k] - c[np.maximum(k - w, 0)]) / np.minimum(k, w)
            ax.plot(steps[ok], mean, color="tab:blue", linewidth=1.6,
                    label=f"train (mean of {w} steps)")
    if len(val_history):
        v = np.asarray(val_history, dtype=np.float64)
        ax.plot(v[:, 0], v[:, 1], "o-", color="tab:orange", linewidth=1.6, markersize=4,
                label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    lim = y_range(bits, np.asarray(val_history, dtype=np.float64).reshape(-1, 2)[:, 1]
                  if len(val_history) else ())
    if lim is not None:
        ax.set_ylim(*lim)
        ax.set_ylabel("bits per character (first steps above the axis)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True
