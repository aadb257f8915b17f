"""A row split's own buffers, each thread's rows together (_loop.pxd: loop_share).

When a time loop splits the batch rows over threads (rows k, k+P, ... to thread
k), the rows of the loop's own per-row buffers -- the (N, G*H) scratch of the GRU
and the layer-normalised cells, and in inference one step's gates (and the GRU's
hidden_n, the LSTM's m) and the backward's dh and dc carries (copied from and back
to the caller's dh0/dc0 rows) -- are stored as one block per thread instead of every
P-th row, so two cores never write rows that share a page. The callers' arrays
(x, h, the saved activations, the states) keep their rows in place.

1. Every cell and variant on a split loop, float32, inference and forward +
   backward, with lengths and both directions: bitwise the same outputs and
   gradients with the rows together and with the hook putting them every P-th row
   (the same arithmetic, only where the rows live), and bitwise the loop on one
   thread.
2. The same models in float64 against the reference.
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f64
from test_models import check_against_reference

import rnncore
from rnncore._kernels import gru as KG
from rnncore._kernels import lngru as KLG
from rnncore._kernels import lnlstm as KLL
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as K
from rnncore._runtime import threads as _threads

pytestmark = pytest.mark.skipif(not HAVE_PACKED,
                                reason="no packed GEMM layout for this CPU (no row split)")

MODULES = (K, KG, KL, KLG, KLL)
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

#: name -> (class, constructor keywords, gates, its kernel module)
VARIANTS = {
    "rnn": (rnncore.RNN, {}, 1, K),
    "gru": (rnncore.GRU, {}, 3, KG),
    "gru-reset-before": (rnncore.GRU, {"reset_after": False}, 3, KG),
    "lstm": (rnncore.LSTM, {}, 4, KL),
    "lstm-proj": (rnncore.LSTM, {"proj_size": 17}, 4, KL),
    "gru-ln": (rnncore.GRU, {"layer_norm": True}, 3, KLG),
    "lstm-ln": (rnncore.LSTM, {"layer_norm": True}, 4, KLL),
}
#: odd N: the two shares have 12 and 11 rows; N >= 8 fuses x_t Wx into inference's
#: steps (one step of gates: the buffers this is about)
T, N, D, H = 60, 23, 9, 40


def _set_together(on):
    for mod in MODULES:
        mod._set_private_rows(on)


def _needs_split():
    if not _threads.row_split_enabled():
        pytest.skip("row split not allowed in this process (SciPy's BLAS loaded first)")


def _run(variant, x, dout, lengths, bidirectional, train):
    cls, kw = VARIANTS[variant][:2]
    m = cls(D, H, batch_first=True, bidirectional=bidirectional, dtype=np.float32, seed=3,
            **kw)
    if not train:
        m.eval()
        out, states = m(x, lengths=lengths)
        return [out] + [np.asarray(s) for s in (states if isinstance(states, tuple)
                                                 else (states,))]
    out, states = m(x, lengths=lengths)
    states = states if isinstance(states, tuple) else (states,)
    # a gradient for the final states too: the carries start from it (and end as dh0)
    dst = [np.full_like(np.asarray(s), 0.5) for s in states]
    dx, dst0 = m.backward(dout[..., :out.shape[-1]], dst if len(dst) > 1 else dst[0])
    dst0 = dst0 if isinstance(dst0, tuple) else (dst0,)
    return [out, dx] + [np.asarray(d) for d in dst0] + [g.copy() for g in m.grads.values()]


def _three_ways(mod, loops, run):
    """run() with the rows together (asserting `loops` split loops of `mod`), with them
    every P-th row, and with the row split off (asserting none); compared bitwise."""
    before = mod._row_split_runs()
    together = run()
    assert mod._row_split_runs() - before == loops   # every loop really split
    _set_together(False)
    try:
        interleaved = run()
    finally:
        _set_together(True)
    rnncore.set_row_split(False)
    try:
        before = mod._row_split_runs()
        one = run()
        assert mod._row_split_runs() == before
    finally:
        rnncore.set_row_split(True)
    assert len(together) == len(interleaved) == len(one)
    for i, (t, r, o) in enumerate(zip(together, interleaved, one)):
        assert np.array_equal(t, r), f"result {i} differs with the rows interleaved"
        assert np.array_equal(t, o), f"result {i} differs on one thread"


def test_the_hook_defaults_to_rows_together_in_every_module():
    for mod in MODULES:
        assert mod._private_rows() is True
    _set_together(False)
    try:
        assert not any(mod._private_rows() for mod in MODULES)
    finally:
        _set_together(True)
    assert all(mod._private_rows() for mod in MODULES)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "fb"])
@pytest.mark.parametrize("case", ["full", "lengths-bidir"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rows_together_are_bitwise_rows_interleaved_and_one_thread(variant, case, train, rng):
    """lengths-bidir: both directions in turn (parallel directions off), each on the
    two threads -- the reverse direction and lengths on a split loop, its carries
    starting from the final-state gradients."""
    _needs_split()
    from threadpoolctl import threadpool_limits
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    dout = rng.standard_normal((N, T, 2 * H)).astype(np.float32)
    lengths = rng.integers(1, T + 1, N) if case != "full" else None
    bidir = case != "full"
    gh, mod = VARIANTS[variant][2] * H, VARIANTS[variant][3]
    loops = (2 if bidir else 1) * (2 if train else 1)   # directions x (forward, backward)
    with threadpool_limits(2, user_api="blas"):
        assert K._row_threads(N, N * gh * H, T) == 2        # the rule splits this shape
        was = _threads.parallel_directions_enabled()
        rnncore.set_parallel_directions(False)
        try:
            _three_ways(mod, loops, lambda: _run(variant, x, dout, lengths, bidir, train))
        finally:
            rnncore.set_parallel_directions(was)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_split_models_with_rows_together_match_reference(cell, rng):
    """float64, forward + backward with lengths on a split loop, against the reference;
    and inference's outputs (one step of gates, rows together) against the training
    forward's."""
    _needs_split()
    from threadpoolctl import threadpool_limits
    kind = cell.split("_")[0]
    with threadpool_limits(2, user_api="blas"):
        assert K._row_threads(N, N * GATES[kind] * H * H, T) == 2
        check_against_reference(rng, cell, T, N, D, H, batch_first=True,
                                lengths=rng.integers(1, T + 1, N))
        cls = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[kind]
        m = cls(D, H, batch_first=True, dtype=np.float64, seed=5)
        x = rng.standard_normal((N, T, D))
        trained, _ = m(x)
        m.eval()
        inferred, _ = m(x)
    assert_close_f64(inferred, trained, name=f"{cell} inference vs training forward")


@pytest.mark.parametrize("variant", ["gru", "lstm", "lstm-proj"])
def test_chunked_inference_rows_together_is_bitwise_interleaved_and_one_thread(variant, rng):
    """Inference that computes x Wx a chunk of steps at a time (not in its steps: the
    hook forces chunks of 7): its hidden_n / m one-step buffers are the shares' own
    blocks; outputs and final states bitwise the interleaved layout's and one thread's."""
    _needs_split()
    from threadpoolctl import threadpool_limits
    mod = VARIANTS[variant][3]
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    dout = np.zeros((N, T, 2 * H), np.float32)
    lengths = rng.integers(1, T + 1, N)
    mod._set_packing(True, fuse=0, chunk=7)
    try:
        with threadpool_limits(2, user_api="blas"):
            _three_ways(mod, 1, lambda: _run(variant, x, dout, lengths, False, False))
    finally:
        mod._set_packing(True)
