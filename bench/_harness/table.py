"""Formatting: figures as table cells, and fixed-width tables printed row by row."""
from __future__ import annotations

import math


def fmt_ms(r):
    if r is None:
        return "-"
    if "error" in r:
        return "ERR"
    v = r["median_ms"]
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def fmt_num(v, nd=1):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


def speed_ratio(other, rc, key="median_ms"):
    """other / rc of their ``key`` times (the medians; "mean_ms": total time over calls)."""
    if not other or not rc or key not in other or key not in rc:
        return None
    return other[key] / rc[key]


def gflops_of(r, flops):
    if not r or "median_ms" not in r:
        return None
    return flops / (r["median_ms"] * 1e-3) / 1e9


class Table:
    """Fixed-width columns, printed line by line as rows complete."""

    def __init__(self, out, columns):
        self.out = out
        self.columns = columns  # (title, width, align)

    def header(self):
        self.line([c[0] for c in self.columns])
        self.out.write("-" * (sum(c[1] + 1 for c in self.columns) - 1) + "\n")

    def line(self, values):
        cells = []
        for (title, w, align), v in zip(self.columns, values):
            s = str(v)
            cells.append(s.ljust(w) if align == "<" else s.rjust(w))
        self.out.write(" ".join(cells).rstrip() + "\n")
        self.out.flush()
