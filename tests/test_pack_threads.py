"""Weights packed on the loops' threads (rc_gemm_packed.h: rc_pack_par_*).

A time loop packs its weights once per call before its steps; from 1 MiB up the
panels are shared out over the loop's threads (column ranges starting at panel
boundaries), where the row split is allowed. Packing is a copy, so:

1. Forced on at every size (``_set_pack_threads(0)``) with 2 and 3 BLAS threads,
   every cell's training step (forward keeping its activations: [Wx; Wh] packed,
   or Wh with the reset-before GRU's column split; backward: Wh^T and Wx^T) and
   inference give results bitwise those of serial packing (``-1``), in both dtypes,
   uni- and bidirectional, with lengths, and for hidden sizes that leave the last
   panel part-filled.
2. The same with more threads than panels (one task per panel at most).
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import HAVE_PACKED

import rnncore
from rnncore._kernels import gru as KG, lstm as KL, rnn as KR
from rnncore._runtime.threads import row_split_enabled

pytestmark = pytest.mark.skipif(not HAVE_PACKED,
                                reason="no packed GEMM layout for this CPU (nothing is packed)")

MODULES = {"rnn": KR, "gru": KG, "gru-rb": KG, "lstm": KL}


def _model(cell, D, H, dtype, bidirectional):
    kw = dict(num_layers=2, bidirectional=bidirectional, batch_first=True, seed=3, dtype=dtype)
    if cell == "rnn":
        return rnncore.RNN(D, H, **kw)
    if cell == "lstm":
        return rnncore.LSTM(D, H, **kw)
    return rnncore.GRU(D, H, reset_after=(cell == "gru"), **kw)


def _step(cell, threads, min_bytes, dtype, bidirectional, lengths, D=24, H=45, T=9, N=12):
    """One training step (forward, backward) and one inference: the outputs and grads."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, T, D)).astype(dtype)
    m = _model(cell, D, H, dtype, bidirectional)
    mod = MODULES[cell]
    mod._set_pack_threads(min_bytes)
    try:
        with threadpool_limits(threads, user_api="blas"):
            y, state = m(x, lengths=lengths)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx = m.backward(dy)[0]
            grads = {k: v.copy() for k, v in m.grads.items()}
            m.eval()
            yi, _ = m(x, lengths=lengths)
    finally:
        mod._set_pack_threads()
    return [y, dx, yi] + [grads[k] for k in sorted(grads)]


@pytest.mark.skipif(not row_split_enabled(), reason="the row split is off: nothing packs on threads")
@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("bidirectional, lengths",
                         [(False, None), (True, None), (True, np.array([9, 3] * 6))],
                         ids=["uni", "bidir", "bidir-lengths"])
def test_threaded_packing_gives_the_serial_results_bitwise(cell, dtype, threads, bidirectional,
                                                           lengths):
    serial = _step(cell, threads, -1, dtype, bidirectional, lengths)
    threaded = _step(cell, threads, 0, dtype, bidirectional, lengths)
    for a, b in zip(serial, threaded):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(a).all() for a in serial)


@pytest.mark.skipif(not row_split_enabled(), reason="the row split is off: nothing packs on threads")
@pytest.mark.parametrize("H", [32, 64, 100])
def test_threaded_packing_with_more_threads_than_panels(H):
    """float32 panels are 32 wide: H = 32, every weight of an RNN is one panel (one
    task); 64: two panels on three threads; 100: a part-filled last panel."""
    serial = _step("rnn", 3, -1, np.float32, False, None, D=5, H=H)
    threaded = _step("rnn", 3, 0, np.float32, False, None, D=5, H=H)
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
