"""Weights packed on the loops' threads (rc_gemm_packed.h: rc_pack_par_*).

A time loop packs its weights once per call before its steps; when the packed
weight takes 1 MiB or more its panels are shared out over the loop's threads
(column ranges starting at panel boundaries), where the row split is allowed and
outside single-thread sections. Packing is a copy, so:

1. Forced on at every size (``_set_pack_threads(0)``) with 2 and 3 BLAS threads,
   every cell's training step (forward keeping its activations: [Wx; Wh] packed,
   or Wh with the reset-before GRU's column split, or the layer-normalised cells'
   Wh; backward: Wh^T and Wx^T) and inference give results bitwise those of serial
   packing (``-1``), in both dtypes, uni- and bidirectional, with lengths, and for
   hidden sizes that leave the last panel part-filled; each module's count of
   threaded packing calls shows the threads ran (and did not, serially).
2. The same with more threads than panels (one task per panel at most).
3. By default (1 MiB): a weight below it packs serially, one above on threads;
   the two directions of a bidirectional layer, run concurrently inside a
   single-thread section, pack serially even when forced.
4. Models in four concurrent Python threads, packing forced onto threads, get the
   serial results.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import cell_kernel_modules, threaded_kernel_marks

import rnncore
from rnncore._kernels import lstm as KL
from rnncore._kernels import simd

pytestmark = threaded_kernel_marks("nothing packs on threads")

MODULES = cell_kernel_modules()
NR32 = simd._gemm_packed_nr(np.float32)   # panel width: 32 float32 (AVX-512), 16 (AVX2)


def _model(cell, D, H, dtype, bidirectional, layers=2):
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=True, seed=3,
              dtype=dtype)
    if cell == "rnn":
        return rnncore.RNN(D, H, **kw)
    if cell in ("lstm", "ln-lstm"):
        return rnncore.LSTM(D, H, layer_norm=cell == "ln-lstm", **kw)
    return rnncore.GRU(D, H, reset_after=cell != "gru-rb", layer_norm=cell == "ln-gru", **kw)


def _step(cell, threads, min_bytes, dtype, bidirectional, lengths, D=24, H=45, T=9, N=12,
          layers=2):
    """One training step (forward, backward) and one inference: (the outputs and grads,
    the module's threaded packing calls during them)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, T, D)).astype(dtype)
    m = _model(cell, D, H, dtype, bidirectional, layers)
    mod = MODULES[cell]
    mod._set_pack_threads(min_bytes)
    calls = mod._pack_threads_calls()
    try:
        with threadpool_limits(threads, user_api="blas"):
            y, _ = m(x, lengths=lengths)
            dy = rng.standard_normal(y.shape).astype(dtype)
            dx = m.backward(dy)[0]
            grads = {k: v.copy() for k, v in m.grads.items()}
            m.eval()
            yi, _ = m(x, lengths=lengths)
    finally:
        mod._set_pack_threads()
    return [y, dx, yi] + [grads[k] for k in sorted(grads)], mod._pack_threads_calls() - calls


def _same(serial, threaded, dtype):
    for a, b in zip(serial, threaded):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(a).all() for a in serial)


@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("bidirectional, lengths",
                         [(False, None), (True, None), (True, np.array([9, 3] * 6))],
                         ids=["uni", "bidir", "bidir-lengths"])
def test_threaded_packing_gives_the_serial_results_bitwise(cell, dtype, threads, bidirectional,
                                                           lengths):
    serial, n_serial = _step(cell, threads, -1, dtype, bidirectional, lengths)
    threaded, n_threaded = _step(cell, threads, 0, dtype, bidirectional, lengths)
    _same(serial, threaded, dtype)
    assert n_serial == 0
    assert n_threaded > 0   # the threaded path ran (this work is too small for the
    #                         directions to run concurrently: each packs on threads)


@pytest.mark.parametrize("H", [1, 2, 3])
def test_threaded_packing_with_more_threads_than_panels(H):
    """In panels of this CPU's float32 width: every weight of an RNN one panel wide
    (nothing to share: serial), two panels on three threads, a part-filled third."""
    H = NR32 * H - (H == 3) * 7
    serial, _ = _step("rnn", 3, -1, np.float32, False, None, D=5, H=H)
    threaded, n = _step("rnn", 3, 0, np.float32, False, None, D=5, H=H)
    _same(serial, threaded, np.float32)
    assert (n > 0) == (H > NR32)


def test_the_default_threshold_is_one_mebibyte():
    """An LSTM's [Wx; Wh] (D + H, 4H) float32 packed: 2 * 256 * 1024 * 4 B = 2 MiB packs
    on threads by default, (64 + 128, 512) = 384 KiB does not."""
    _, n_small = _step("lstm", 2, None, np.float32, False, None, D=64, H=128, T=3, N=16,
                       layers=1)
    _, n_large = _step("lstm", 2, None, np.float32, False, None, D=256, H=256, T=3, N=16,
                       layers=1)
    assert n_small == 0 and n_large > 0


def test_concurrent_directions_pack_serially():
    """A bidirectional layer whose two directions run on two threads at once (inside a
    single-thread section of each thread: rnncore's own thread count is 1 there) packs
    serially, even when forced;
    one direction alone packs on threads."""
    from rnncore._runtime.threads import parallel_directions_enabled
    kw = dict(D=64, H=64, T=40, N=16, layers=1)   # T N H (H + D) = 5.2 M: concurrent
    was = parallel_directions_enabled()
    rnncore.set_parallel_directions(True)
    try:
        _, n_bi = _step("lstm", 2, 0, np.float32, True, None, **kw)
        _, n_uni = _step("lstm", 2, 0, np.float32, False, None, **kw)
    finally:
        rnncore.set_parallel_directions(was)
    assert n_bi == 0 and n_uni > 0


def test_models_in_concurrent_python_threads_pack_on_threads_correctly():
    """Four Python threads each train and run their own LSTM at once, packing forced
    onto threads wherever rnncore's own thread count allows (a call inside a
    single-thread section packs serially): each gets the results of a serial run
    (packing tasks of different calls never share state)."""
    import threading
    want, _ = _step("lstm", 2, -1, np.float32, False, None, layers=1)
    KL._set_pack_threads(0)
    got, errors = [None] * 4, []

    def run(i):
        try:
            rng = np.random.default_rng(7)
            x = rng.standard_normal((12, 9, 24)).astype(np.float32)
            m = _model("lstm", 24, 45, np.float32, False, layers=1)
            with threadpool_limits(2, user_api="blas"):
                y, _ = m(x)
                dx = m.backward(rng.standard_normal(y.shape).astype(np.float32))[0]
                grads = {k: v.copy() for k, v in m.grads.items()}
                m.eval()
                yi, _ = m(x)
            got[i] = [y, dx, yi] + [grads[k] for k in sorted(grads)]
        except Exception as e:  # reported below
            errors.append(e)
    try:
        workers = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        KL._set_pack_threads()
    assert not errors
    for g in got:
        _same(want, g, np.float32)
