"""LSTM inference keeps one (N, H) array of cell states, not (T, N, H).

An inference forward (``eval()``; the kernel's ``save=False``) hands the LSTM
kernel its c as a running state -- a (T, N, H) view of ONE (N, H) array with
step stride 0 (_checks.pxd: running_seq) -- updated in place, never zeroed at
padding, so it ends holding each row's state after its last step. The final
states must be those of the training forward (which keeps every step), for
every layout, direction, length pattern, projection and thread split; the
call's memory must not hold a cell-state sequence; and the kernel must refuse
a stride-0 c where it would be wrong.
"""
import tracemalloc

import numpy as np
import pytest

import rnncore
from rnncore._kernels import lstm as KL

from conftest import HAVE_PACKED


def _run(m, x, lengths):
    out, (h, c) = m(x, lengths=lengths)
    return out.copy(), h.copy(), c.copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("lengths", [None, [9, 9, 7, 4, 1]], ids=["full", "lengths"])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("proj, units", [(0, False), (5, False), (0, True)],
                         ids=["plain", "proj", "unit-split"])
def test_inference_final_states_equal_the_training_forward(dtype, batch_first, lengths, bidir,
                                                           proj, units):
    if units and not HAVE_PACKED:
        pytest.skip("the unit split needs the packed layout (AVX2 or AVX-512 builds)")
    T, N, D, H = 9, 5, 6, 12
    rng = np.random.default_rng(7)
    m = rnncore.LSTM(D, H, num_layers=2, bidirectional=bidir, batch_first=batch_first,
                     proj_size=proj, seed=3, dtype=dtype)
    x = rng.standard_normal((N, T, D) if batch_first else (T, N, D)).astype(dtype)
    lens = None if lengths is None else np.array(lengths)
    if units:
        KL._set_unit_split(1, 2)
    try:
        m.train()
        want = _run(m, x, lens)
        m.eval()
        got = _run(m, x, lens)
    finally:
        KL._set_unit_split(0)    # the default: the shape rule
    for g, w, name in zip(got, want, ("out", "h_n", "c_n")):
        np.testing.assert_array_equal(g, w, err_msg=name)


def test_inference_memory_holds_no_cell_state_sequence():
    # output (T, N, H) float32 = 410 KB; a (T, N, H) c beside it would double the peak
    T, N, D, H = 400, 8, 8, 32
    m = rnncore.LSTM(D, H, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((T, N, D)).astype(np.float32)
    out_bytes = T * N * H * 4
    m(x)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        y, _ = m(x)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert y.nbytes == out_bytes
    assert peak < 1.5 * out_bytes, f"peak {peak} bytes for a {out_bytes}-byte output"


def _kernel_args(T, N, D, H, dtype=np.float32):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((T, N, D)).astype(dtype)
    h0 = np.zeros((N, H), dtype)
    c0 = rng.standard_normal((N, H)).astype(dtype)
    Wx = (rng.standard_normal((D, 4 * H)) * 0.3).astype(dtype)
    Wh = (rng.standard_normal((H, 4 * H)) * 0.3).astype(dtype)
    b = (rng.standard_normal(4 * H) * 0.1).astype(dtype)
    return x, h0, c0, Wx, Wh, b


def _running(N, H, T, dtype=np.float32, row_stride=None):
    a = np.empty((N, max(H, row_stride or H)), dtype)
    isz = a.itemsize
    return a, np.lib.stride_tricks.as_strided(
        a, shape=(T, N, H), strides=(0, (row_stride if row_stride is not None else H) * isz, isz),
        writeable=True)


def test_kernel_running_state_matches_a_full_sequence_and_is_checked():
    T, N, D, H = 8, 4, 3, 6
    x, h0, c0, Wx, Wh, b = _kernel_args(T, N, D, H)
    bs = np.array([4, 4, 3, 3, 2, 2, 1, 1])
    h = np.empty((T, N, H), np.float32)
    c = np.empty((T, N, H), np.float32)
    KL.forward(x, h0, c0, Wx, Wh, b, h, c, False, bs, None, False)
    h2 = np.empty((T, N, H), np.float32)
    buf, run = _running(N, H, T)
    KL.forward(x, h0, c0, Wx, Wh, b, h2, run, False, bs, None, False)
    np.testing.assert_array_equal(h2, h)
    steps = np.array([(bs > n).sum() for n in range(N)])              # steps per row
    assert steps.tolist() == [8, 6, 4, 2]
    np.testing.assert_array_equal(buf, c[steps - 1, np.arange(N)])     # each row's last c
    # a running state where backward needs every step, or with overlapping rows: refused
    with pytest.raises(ValueError, match="c: "):
        KL.forward(x, h0, c0, Wx, Wh, b, h2, _running(N, H, T)[1], False, bs, None, True)
    with pytest.raises(ValueError, match="c: "):
        KL.forward(x, h0, c0, Wx, Wh, b, h2, _running(N, H, T, row_stride=0)[1], False, bs,
                   None, False)
