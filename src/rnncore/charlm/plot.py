"""The loss plot of a char-LM run: train and validation bits per character against the step."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["plot_history"]

_LN2 = math.log(2.0)


def plot_history(train_loss, val_history, path, title="") -> bool:
    """Train and validation loss (bits/char) against the step, as an image.

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
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True
