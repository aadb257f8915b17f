"""Leaks: long loops of small calls keep the resident set flat.

10,000 forward+backward calls per model class (bidirectional, with and without
``lengths``), 10,000 functional forward+backward calls per cell, 10,000 cell
steps, and 10,000 refused calls (the error path) are measured with psutil
after a warm-up: RSS may not grow by more than ``RSS_BUDGET`` bytes. Reference
counts of the input arrays are also checked to come back exactly (a leaked
memoryview or buffer would keep them raised). Each test takes ~1-4 s.
"""
from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

import rnncore
from rnncore import functional as F

from _reliability import count

psutil = pytest.importorskip("psutil")

CALLS = 10_000
WARMUP = 500
RSS_BUDGET = 4 * 2**20  # 4 MiB


def _malloc_trim():
    """glibc's malloc_trim(0), or a no-op elsewhere."""
    try:
        import ctypes
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return lambda pad: 0


_TRIM = _malloc_trim()


def _rss():
    """The resident set after handing the heap's free memory back to the system.

    Without the trim, what earlier tests left free in the heap hides growth: glibc
    raises its mmap threshold after freeing a large block (up to 32 MiB), so later
    blocks of that size come from the heap and stay there when freed (the kernels'
    per-call buffers, e.g. a section's own-GEMM packing, did so in CI). A leak is
    memory still allocated, which no trim can return."""
    gc.collect()
    _TRIM(0)
    return psutil.Process().memory_info().rss


def _measure(step, calls=CALLS, warmup=WARMUP):
    for _ in range(warmup):
        step()
    r0 = _rss()
    for _ in range(calls):
        step()
    return _rss() - r0


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
def test_model_forward_backward_rss_flat(cls):
    m = getattr(rnncore, cls)(3, 4, bidirectional=True, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    lengths = np.array([5, 3])
    i = [0]

    def step():
        i[0] += 1
        out, _ = m(x, lengths=lengths if i[0] % 2 else None)
        m.backward(out)

    refs = sys.getrefcount(x), sys.getrefcount(lengths)
    growth = _measure(step)
    assert growth < RSS_BUDGET, f"{cls}: RSS grew by {growth / 2**20:.2f} MiB over {CALLS} calls"
    m._saved = None
    assert (sys.getrefcount(x), sys.getrefcount(lengths)) == refs, "input references leaked"
    count(f"leaks.models.{cls} (forward+backward calls)", "ok")
    _record(f"models.{cls}", growth)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
def test_functional_forward_backward_rss_flat(name):
    rng = np.random.default_rng(0)
    N, T, D, H = 2, 5, 3, 4
    G = {"rnn": 1, "gru": 3, "lstm": 4}[name]
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, G * H)), rng.standard_normal((H, G * H))
    args = {"rnn": (x, h0, Wx, Wh, np.zeros(H)),
            "gru": (x, h0, Wx, Wh, np.zeros(G * H), np.zeros(G * H)),
            "lstm": (x, h0, Wx, Wh, np.zeros(G * H))}[name]
    fwd, bwd = getattr(F, f"{name}_forward"), getattr(F, f"{name}_backward")
    dh = np.ones((N, T, H))

    def step():
        res = fwd(*args)
        bwd(dh, res[-1])

    refs = [sys.getrefcount(a) for a in args]
    growth = _measure(step)
    assert growth < RSS_BUDGET, f"{name}: RSS grew by {growth / 2**20:.2f} MiB"
    assert [sys.getrefcount(a) for a in args] == refs, "input references leaked"
    count(f"leaks.functional.{name} (forward+backward calls)", "ok")
    _record(f"functional.{name}", growth)


def test_cells_and_error_paths_rss_flat():
    cells = [rnncore.RNNCell(3, 4, seed=0), rnncore.GRUCell(3, 4, seed=0),
             rnncore.LSTMCell(3, 4, seed=0)]
    x = np.ones((2, 3), np.float32)
    bad = np.ones((2, 3), np.int64)
    m = rnncore.LSTM(3, 4, seed=0)

    def step():
        for c in cells:
            h = c(x)
            c.backward(h if isinstance(h, np.ndarray) else h[0])
        for call in (lambda: m(bad), lambda: m(np.ones((2, 2, 5), np.float32)),
                     lambda: F.rnn_forward(x, x, x, x, x)):
            try:
                call()
            except (TypeError, ValueError):
                pass
            else:  # pragma: no cover
                raise AssertionError("bad input accepted")

    growth = _measure(step, calls=CALLS // 2, warmup=WARMUP // 2)
    assert growth < RSS_BUDGET, f"RSS grew by {growth / 2**20:.2f} MiB"
    count("leaks.cells+error paths (iterations)", "ok")
    _record("cells+errors", growth)


def test_the_rss_probe_detects_a_leak():
    """Control: the same measurement sees a deliberate 16 KiB-per-call leak (160 MiB;
    the heap's free memory is trimmed before each reading, so earlier tests' free
    blocks cannot absorb it)."""
    hoard = []
    growth = _measure(lambda: hoard.append(np.ones(2048)), warmup=10)
    assert growth > RSS_BUDGET, f"the probe missed a {16 * CALLS} KiB leak ({growth} bytes)"
    del hoard


def test_tracemalloc_sees_no_growth_in_model_calls():
    """Independent of the heap's free pool: Python/NumPy allocations still alive
    after 500 more rounds of forward+backward on three models (tracemalloc) stay
    under 64 KiB, i.e. under ~40 bytes per call."""
    import tracemalloc
    models = [getattr(rnncore, c)(3, 4, bidirectional=True, seed=0) for c in ("RNN", "GRU", "LSTM")]
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    lengths = np.array([5, 3])

    def step():
        for m in models:
            out, _ = m(x, lengths=lengths)
            m.backward(out)
    for _ in range(100):
        step()
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(500):
            step()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes still allocated after 500 x 3 calls"
    count("leaks.models (tracemalloc, 3 x 500 calls)", "ok")
    _record("tracemalloc.models", grown)


GROWTH = {}


def _record(key, growth):
    GROWTH[key] = growth
    import json
    import os
    path = os.environ.get("RNNCORE_RELIABILITY_RSS")
    if path:
        with open(path, "w") as f:
            json.dump({k: round(v / 2**20, 3) for k, v in GROWTH.items()}, f, indent=1)
