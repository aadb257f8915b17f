"""Shared grids and input builders of the asv suite.

The grid is reduced by default (a quick run on a laptop) and full when the
environment variable ``RNNCORE_BENCH_FULL=1`` is set::

    reduced: shapes 50x1x32x64 and 100x32x256x256, float32, directions 1 and 2
    full:    all four shapes, float32 and float64, directions 1 and 2

``RNNCORE_BENCH_THREADS=N`` limits BLAS/OpenMP to N threads (threadpoolctl)
for the whole suite. Shape names are ``TxNxDxH`` (steps, batch, input
features, hidden units). The constants live here rather than in the
comparison harness (``bench/_harness``) so the suite also runs against
commits that predate it.
"""
import os

import numpy as np

import rnncore  # first: it picks SciPy's BLAS kernels before scipy.linalg loads

FULL = os.environ.get("RNNCORE_BENCH_FULL", "") not in ("", "0")

CELLS = ["rnn", "gru", "lstm"]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
MODEL = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
CELL = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}

#: name -> (T, N, D, H)
SHAPES = {
    "50x1x32x64": (50, 1, 32, 64),
    "100x16x64x128": (100, 16, 64, 128),
    "100x32x256x256": (100, 32, 256, 256),
    "50x64x512x1024": (50, 64, 512, 1024),
}
SHAPE_NAMES = list(SHAPES) if FULL else ["50x1x32x64", "100x32x256x256"]
DTYPES = ["float32", "float64"] if FULL else ["float32"]
DIRECTIONS = [1, 2]
STEP_SIZES = [128, 512] if FULL else [128]
#: the variable-length rows: (T, N, D, H), 2 layers
LENGTHS_SHAPE = (100, 32, 256, 256)
LENGTHS_LAYERS = 2

#: seconds; the largest shapes in float64 take a while per call
TIMEOUT = 600

_threads = os.environ.get("RNNCORE_BENCH_THREADS")
if _threads:
    try:
        from threadpoolctl import threadpool_limits

        _LIMITER = threadpool_limits(limits=int(_threads))
    except ImportError:  # pragma: no cover
        _LIMITER = None
    rnncore.set_parallel_directions(int(_threads) > 1)


def rng():
    """The suite's seeded generator (a new one per call: inputs do not depend on order)."""
    return np.random.default_rng(0)


def sequence(N, T, F, dtype):
    """A random (N, T, F) array (batch-first)."""
    return rng().standard_normal((N, T, F)).astype(dtype)


def model(cell, D, H, dtype, directions=1, layers=1):
    """An rnncore model, batch_first, seeded."""
    cls = getattr(rnncore, MODEL[cell])
    return cls(D, H, num_layers=layers, batch_first=True, bidirectional=directions == 2,
               dtype=dtype, seed=0)


def functional_args(cell, N, D, H, dtype):
    """(h0, Wx, Wh, *biases) for ``rnncore.functional.<cell>_forward``."""
    G = GATES[cell]
    r = rng()
    bound = 1.0 / np.sqrt(H)
    Wx = r.uniform(-bound, bound, (D, G * H)).astype(dtype)
    Wh = r.uniform(-bound, bound, (H, G * H)).astype(dtype)
    h0 = np.zeros((N, H), dtype=dtype)
    b = r.uniform(-bound, bound, G * H).astype(dtype)
    if cell == "gru":
        return (h0, Wx, Wh, b, b.copy())
    return (h0, Wx, Wh, b)


def lengths(T, N):
    """Seeded lengths in [T/2, T]."""
    return np.random.default_rng(1).integers(T // 2, T + 1, size=N)
