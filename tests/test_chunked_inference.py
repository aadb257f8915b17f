"""Inference on long unfused loops: the input projection in chunks of steps.

A GRU or LSTM forward that saves nothing for backward (``eval()``, the kernels'
``save=False``) and does not multiply by Wx in its steps (rc_fuse_input: fewer
than 8 rows, or weights past its 8 MB bound) computes A = X Wx for a chunk of
steps at a time into one reused buffer, each thread its rows as its steps reach
the chunk (_loop.pxd: chunk_input), once all T steps' projections would pass
16 MB (rc_infer_chunk). The hook ``_set_packing(True, 1, chunk)`` forces chunks of
``chunk`` steps at any size (or none: -1).

1. The rule: shapes only; 8 MB chunks of at least 2 steps; none below 16 MB or
   when one chunk would hold every step.
2. Chunked inference against the reference (float64) and against the training
   forward (which keeps every step), for every GRU and LSTM variant: lengths,
   both directions, two layers, batch-first and time-major x, chunks that do not
   divide T, NaN in padded inputs; on the packed [Wx; Wh] and, with packing off,
   on Wx as given (the unpacked kernels or BLAS).
3. Results do not depend on the thread count (rows split over threads within
   each chunk).
4. Memory: at the rule's sizes a forward allocates about a chunk of gates, not
   (T, N, G*H).
"""
import numpy as np
import pytest

from _oracle import reference_run
from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64
from test_fused_input import kernel_inference_peak

import rnncore
from rnncore._kernels import gru as KG
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as K
from rnncore._runtime import threads as _threads

MB = 1 << 20


@pytest.fixture
def chunks():
    """Set the chunk hook of both modules (restored afterwards); packing=False: the
    loops do not pack their weights, so each chunk's projection is on Wx as given
    (the unpacked kernels or BLAS) instead of the packed [Wx; Wh]."""
    def set_(steps, fuse=1, packing=True):
        for mod in (KG, KL):
            mod._set_packing(packing, fuse, steps)
    yield set_
    set_(0)


# ---------------------------------------------------------------------------
# 1. The rule
# ---------------------------------------------------------------------------
def test_chunk_rule_depends_on_shapes_only():
    T, N, D, GH = 50, 64, 512, 4096            # the LSTM at (50, 64, 512, 1024): 52 MB
    # 8 MB for a chunk's gates and gathered inputs, at least 2 steps
    assert K._infer_chunk(T, N, GH, D) == 8 * MB // (N * (GH + D) * 4) == 7
    assert K._infer_chunk(T, N, GH, D, np.float64) == 3
    assert K._infer_chunk(100, 32, 1024, 256) == 0     # 13 MB of gates: all at once
    assert K._infer_chunk(2000, 1, 4096, 8) == 8 * MB // (4104 * 4)
    assert K._infer_chunk(1, 10 ** 6, 4096, 8) == 0    # one step
    assert K._infer_chunk(9, 1024, 4096, 8) == 2       # 16 MB steps: at least 2
    assert K._infer_chunk(2, 1024, 4096, 8) == 0       # one chunk would hold all
    # many inputs, few gates: the gathered x counts (8 MB in all, not 8 MB of gates)
    assert K._infer_chunk(11000, 4, 96, 1024) == 8 * MB // (4 * 1120 * 4)
    assert K._infer_chunk(T, 0, GH, D) == 0
    assert K._infer_chunk(T, N, GH, 0) == 0            # no inputs: nothing to project


# ---------------------------------------------------------------------------
# 2. Against the reference and the training forward
# ---------------------------------------------------------------------------
def _model(kind, D, H, dtype):
    kw = {"gru": dict(cls=rnncore.GRU),
          "gru_rb": dict(cls=rnncore.GRU, reset_after=False),
          "lstm": dict(cls=rnncore.LSTM),
          "lstm_proj": dict(cls=rnncore.LSTM, proj_size=3)}[kind]
    cls = kw.pop("cls")
    return cls(D, H, num_layers=2, bidirectional=True, seed=7, dtype=dtype, **kw)


def _inputs(rng, T, N, D, lengths, batch_first, dtype, fill=0.0):
    x = rng.standard_normal((T, N, D))
    if lengths is not None:
        x[np.arange(T)[:, None] >= lengths[None, :]] = fill     # padded positions
    return (x.transpose(1, 0, 2).copy() if batch_first else x).astype(dtype)


@pytest.mark.parametrize("kind", ["gru", "gru_rb", "lstm"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("steps", [2, 3])
@pytest.mark.parametrize("packing", [True, False], ids=["in-steps", "blas"])
def test_chunked_inference_matches_reference(kind, batch_first, steps, packing, chunks, rng):
    T, N, D, H = 7, 5, 6, 8                      # 5 rows: never fused
    m = _model(kind, D, H, np.float64)
    m.batch_first = batch_first
    m.eval()
    lengths = np.array([7, 6, 6, 3, 1])
    x = _inputs(rng, T, N, D, lengths, batch_first, np.float64)
    chunks(steps, packing=packing)
    out, st = m(x, lengths=lengths)
    x_tnd = x.transpose(1, 0, 2) if batch_first else x
    want, finals, *_ = reference_run(m, x_tnd, [None] * len(finals_of(st)), lengths)
    assert_close_f64(out.transpose(1, 0, 2) if batch_first else out, want, name="out")
    for a, w in zip(finals_of(st), finals):
        assert_close_f64(a, w, name="final state")


def finals_of(st):
    return st if isinstance(st, tuple) else (st,)


@pytest.mark.parametrize("kind", ["gru", "gru_rb", "lstm", "lstm_proj"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("packing", [True, False], ids=["in-steps", "blas"])
def test_chunked_inference_matches_the_training_forward(kind, dtype, batch_first, packing,
                                                       chunks, rng):
    """eval() in chunks of 3 and 4 steps (T = 10: a short last chunk) against train(),
    which keeps every step's gates; NaN in padded inputs is never read."""
    T, N, D, H = 10, 6, 4, 12
    m = _model(kind, D, H, dtype)
    m.batch_first = batch_first
    lengths = np.array([10, 9, 7, 7, 2, 1])
    chunks(-1)
    m.train()
    want_out, want_st = m(_inputs(rng, T, N, D, lengths, batch_first, dtype), lengths=lengths)
    m.eval()
    close = assert_close_f32 if dtype == np.float32 else assert_close_f64
    for steps in (3, 4):
        chunks(steps, packing=packing)
        x = _inputs(np.random.default_rng(0), T, N, D, lengths, batch_first, dtype, np.nan)
        rng_x = _inputs(np.random.default_rng(0), T, N, D, lengths, batch_first, dtype)
        out, st = m(x, lengths=lengths)
        out0, st0 = m(rng_x, lengths=lengths)
        assert np.array_equal(out, out0)                         # padding never read
        m.train()
        chunks(-1, packing=packing)
        ref_out, ref_st = m(rng_x, lengths=lengths)
        m.eval()
        close(out, ref_out, name="out")
        for a, w in zip(finals_of(st), finals_of(ref_st)):
            close(a, w, name="final state")
    assert want_out.shape == out.shape


# ---------------------------------------------------------------------------
# 3. Thread count
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_chunked_inference_does_not_depend_on_threads(cell, chunks, rng):
    """25 rows on an unfused loop (fusing off) split over 2 threads (shares of 13 and
    12 rows: each its own part of the chunk buffers) in every chunk: bitwise the
    one-thread result."""
    from threadpoolctl import threadpool_limits
    if not HAVE_PACKED:
        pytest.skip("no packed layout for this CPU or build: time loops never split rows")
    if not _threads.row_split_enabled():
        pytest.skip("time loops do not split rows here (OPENBLAS_THREAD_TIMEOUT set long)")
    T, N, D, H = 12, 25, 5, 64
    G = {"gru": 3, "lstm": 4}[cell]
    m = {"gru": rnncore.GRU, "lstm": rnncore.LSTM}[cell](D, H, seed=8, dtype=np.float32)
    m.eval()
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    lengths = rng.integers(1, T + 1, N)
    chunks(4, fuse=0)
    outs = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            assert K._row_threads(N, N * G * H * H, T) == threads
            outs.append(m(x, lengths=lengths)[0])
    assert np.array_equal(outs[0], outs[1])


# ---------------------------------------------------------------------------
# 4. Memory
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layout", ["time-major", "batch-major", "reverse-lengths"])
def test_kernel_inference_keeps_a_chunk_of_gates(cell, layout, rng):
    """At the rule's sizes (the whole projection 19-25 MB) save=False allocates about
    an 8 MB chunk of gates and gathered inputs (and one step of the GRU's hidden_n),
    not (T, N, G*H), and writes the same h (and c) as save=True: time-major x (its
    own rows), batch-major x (gathered), and the reverse direction with lengths. On
    more than one thread the LSTM's 4 rows take the unit split (too few rows to
    split: the rule); the next test runs its one-thread row loop."""
    T, N, D, H = 600, 4, 8, 512 if cell == "lstm" else 680
    _chunk_of_gates(cell, layout, rng, T, N, D, H)


@pytest.mark.parametrize("layout", ["time-major", "batch-major", "reverse-lengths"])
def test_lstm_row_loop_keeps_a_chunk_of_gates(layout, rng):
    """The same for the LSTM with the unit split off: its row loop."""
    KL._set_unit_split(-1)
    try:
        _chunk_of_gates("lstm", layout, rng, 600, 4, 8, 512)
    finally:
        KL._set_unit_split(0)


def _chunk_of_gates(cell, layout, rng, T, N, D, H):
    G = {"gru": 3, "lstm": 4}[cell]
    assert not K._fuses_input(N, D, G * H, H, T) and K._infer_chunk(T, N, G * H, D) > 0
    peak, got, want = kernel_inference_peak(cell, T, N, D, H, rng, w_scale=0.05,
                                            batch_major=layout == "batch-major",
                                            reverse_lengths=layout == "reverse-lengths")
    for a, w in zip(got, want):
        assert_close_f32(a, w)
    gates, outputs = T * N * G * H * 4, len(got) * T * N * H * 4
    assert gates > 16 * MB
    # the outputs, the packed weights (and the GRU's scratch) and an 8 MB chunk; not
    # the gates
    assert peak < outputs + 9 * MB + (D + H) * G * H * 4 + 2 * N * G * H * 4 \
        < outputs + gates, (peak, outputs, gates)
