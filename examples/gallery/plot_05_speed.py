"""
Speed: rnncore vs PyTorch (stored figures)
==========================================

The figures of one stored ``python bench/compare.py --quick --json`` run
(``bench/compare-results/2026-11-23-f11c9b5-quick-run1.json``: 2-core AMD EPYC,
Zen 4, 2 threads for both libraries, float32, ``batch_first`` models, forward +
backward with a fixed random ``dout``). They are read, not measured, when the
documentation is built; run ``bench/compare.py`` on your machine for your own.
Between runs on that shared VM a ratio moved by up to ±40 %: compare figures
from one run only (see :doc:`/guide/performance`).
"""
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

try:
    here = Path(__file__).resolve().parent
except NameError:                                     # run interactively
    here = Path.cwd()
RESULT = here.parents[1] / "bench" / "compare-results" / "2026-11-23-f11c9b5-quick-run1.json"
run = json.loads(RESULT.read_text())
h = run["header"]
print(f"{h['cpu']}, {h['threads']} threads, rnncore {h['rnncore_git']}, torch {h['torch']}, "
      f"OpenBLAS {h['blas_version']} ({h['blas_architecture']})")

# %%
# Forward + backward time per model call, one bar pair per cell and shape.
rows = [r for r in run["records"] if r.get("group") == "core" and r.get("pass") == "fb"]
ms = {(r["cell"], r["T"], r["N"], r["D"], r["H"], r["impl"]): r["median_ms"] for r in rows}
shapes = sorted({k[:5] for k in ms}, key=lambda k: (["rnn", "gru", "lstm"].index(k[0]), k[4]))
labels = [f"{c.upper()}\n{T},{N},\n{D},{H}" for c, T, N, D, H in shapes]
rc = np.array([ms[s + ("rnncore-model",)] for s in shapes])
pt = np.array([ms[s + ("torch",)] for s in shapes])

fig, ax = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
i = np.arange(len(shapes))
ax[0].bar(i - 0.2, rc, 0.4, label="rnncore")
ax[0].bar(i + 0.2, pt, 0.4, label=f"PyTorch {h['torch']}")
ax[0].set_yscale("log")
ax[0].set_ylabel("forward + backward (ms)")
ax[0].legend()
ax[0].set_title("(T, N, D, H): median time per call, one run")
ax[1].bar(i, pt / rc, 0.6, color=np.where(pt / rc >= 1, "C2", "C3"))
ax[1].axhline(1, color="0.3", lw=1)
ax[1].set_yscale("log")
ax[1].set_ylabel("PyTorch time / rnncore time")
ax[1].set_xticks(i, labels, fontsize=8)
for k, v in enumerate(pt / rc):
    ax[1].text(k, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
fig.tight_layout()

# %%
# Ratios above 1 (green) mean rnncore is faster. The small shapes are where the
# per-call overhead and per-step products dominate; at the largest LSTM shapes
# PyTorch's oneDNN LSTM wins (see :doc:`/guide/performance` for why).
