"""A zero initial state: the first step's products from it are left out.

For T <= 4 steps, when h0 is all zeros (the models' default) and the recurrent
weight finite, a forward loop's first step computes x_t Wx alone instead of
x_t Wx + h0 Wh, and backward leaves out dWh's h0^T dz term when those dz rows are
finite (_loop.pxd: zero_start, h0_term_zero). The results are those of the full
products -- against the float64 reference, with and without lengths, in both
directions, packed (T >= 2, fused for 8 rows or more) or not (T = 1), and T = 5
(the full products) beside them -- and a non-finite factor still gives NaN where
0 * inf or 0 * NaN would: the shortcut never hides it.
"""
import numpy as np
import pytest

from _oracle import reference_run
from test_models import check_against_reference

import rnncore
from rnncore import reference as R


@pytest.mark.parametrize("N", [3, 10], ids=["N3", "N10"])
@pytest.mark.parametrize("T", [1, 2, 4, 5])
@pytest.mark.parametrize("bidirectional, with_lengths",
                         [(False, False), (True, False), (True, True)],
                         ids=["uni", "bidir", "bidir-lengths"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_zero_initial_state_matches_the_reference(cell, bidirectional, with_lengths, T, N, rng):
    lengths = rng.integers(1, T + 1, N) if with_lengths else None
    check_against_reference(rng, cell, T, N, 7, 12, num_layers=2, bidirectional=bidirectional,
                            lengths=lengths, give_h0=False, batch_first=True)


@pytest.mark.parametrize("T", [1, 3])
def test_zero_initial_state_reset_before_gru(T, rng):
    """The reset-before GRU (its n block multiplies r h_prev: zero from h0 too)."""
    m = rnncore.GRU(7, 12, reset_after=False, dtype=np.float64, seed=6)
    x, dout = rng.standard_normal((T, 10, 7)), rng.standard_normal((T, 10, 12))
    out, _ = m(x)
    dx, _ = m.backward(dout)
    want, _, want_dx, _, want_grads = reference_run(m, x, [None], None, dout)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=1e-11)
    for k, g in want_grads.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=0, atol=1e-10, err_msg=k)


def _model(cell, D, H, proj=0):
    if cell == "rnn":
        return rnncore.RNN(D, H, dtype=np.float64, seed=4)
    if cell in ("gru", "gru-rb"):
        return rnncore.GRU(D, H, reset_after=cell == "gru", dtype=np.float64, seed=4)
    return rnncore.LSTM(D, H, proj_size=proj, dtype=np.float64, seed=4)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("cell, proj", [("rnn", 0), ("gru", 0), ("gru-rb", 0), ("lstm", 0),
                                        ("lstm", 3)],
                         ids=["rnn", "gru", "gru-rb", "lstm", "lstm-proj"])
def test_an_infinite_recurrent_weight_still_gives_nan_from_a_zero_state(cell, proj, T):
    """0 * inf is NaN: with h0 = 0 and one infinite entry of Wh, the first step's
    outputs are NaN where the full product makes them NaN (the reference's)."""
    D, H, N = 4, 5, 10
    m = _model(cell, D, H, proj)
    m.params["weight_hh_l0"][1, 2] = np.inf
    x = np.random.default_rng(1).standard_normal((T, N, D))
    out, _ = m(x)
    if proj:   # (the model oracle has no projection: the reference LSTM itself)
        p = m.params
        want = R.lstm_forward(x.transpose(1, 0, 2), np.zeros((N, proj)), p["weight_ih_l0"].T,
                              p["weight_hh_l0"].T, p["bias_ih_l0"] + p["bias_hh_l0"],
                              Wr=p["weight_hr_l0"].T)[0].transpose(1, 0, 2)
    else:
        want, *_ = reference_run(m, x, [None] * m.n_states, None)
    assert np.isnan(want[0]).any()                       # the case this test is about
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
    np.testing.assert_allclose(out[~np.isnan(out)], want[~np.isnan(want)], rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_a_nan_gradient_still_reaches_dwh_from_a_zero_state(cell, T):
    """0 * NaN is NaN: an input NaN at the first step makes dz_0 NaN in its row, and
    dWh's h0^T dz_0 term -- left out for finite dz only -- NaN as in the reference."""
    D, H, N = 4, 5, 10
    m = _model(cell, D, H)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((T, N, D))
    x[0, 3, 1] = np.nan
    dout = rng.standard_normal((T, N, H))
    out, _ = m(x)
    m.backward(dout)
    *_, want_grads = reference_run(m, x, [None] * m.n_states, None, dout)
    got, want = m.grads["weight_hh_l0"], want_grads["weight_hh_l0"]
    assert np.isnan(want).any()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_reset_before_gru_keeps_a_nan_reset_gate():
    """The reset-before GRU's n block multiplies r h0: zero only for a finite r. A NaN
    input-side bias of the r gate makes r, hence r h0 = NaN * 0, NaN -- and the whole
    n block of every row with it, as in the reference."""
    m = rnncore.GRU(4, 5, reset_after=False, dtype=np.float64, seed=4)
    m.params["bias_ih_l0"][0] = np.nan
    x = np.random.default_rng(3).standard_normal((1, 6, 4))
    out, _ = m(x)
    want, *_ = reference_run(m, x, [None], None)
    assert np.isnan(want).all()
    np.testing.assert_array_equal(np.isnan(out), np.isnan(want))


@pytest.mark.parametrize("T, N", [(2, 64), (4, 32)])
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_zero_initial_state_on_the_row_split(cell, T, N, rng):
    """Rows split over 2 threads (T * N / 2 >= 64 row-steps a thread): each share
    starts from its own rows of the zero h0."""
    from threadpoolctl import threadpool_limits

    from conftest import HAVE_PACKED
    from rnncore._kernels import rnn as K
    from rnncore._runtime.threads import row_split_enabled
    if not (HAVE_PACKED and row_split_enabled()):
        pytest.skip("no packed layout or row split here: no threaded loops")
    G = {"rnn_tanh": 1, "gru": 3, "lstm": 4}[cell]
    H = 128
    with threadpool_limits(2, user_api="blas"):
        assert K._row_threads(N, N * G * H * H, T) == 2
        check_against_reference(rng, cell, T, N, 16, H, give_h0=False, batch_first=True)


@pytest.mark.parametrize("T", [1, 3])
def test_zero_initial_state_with_a_projection(T):
    """LSTM with proj_size: h0 (N, P) zeros, Wh (P, 4H) finite: the forward against
    the reference LSTM."""
    D, H, P, N = 4, 6, 3, 10
    m = _model("lstm", D, H, P)
    x = np.random.default_rng(5).standard_normal((T, N, D))
    out, _ = m(x)
    p = m.params
    want = R.lstm_forward(x.transpose(1, 0, 2), np.zeros((N, P)), p["weight_ih_l0"].T,
                          p["weight_hh_l0"].T, p["bias_ih_l0"] + p["bias_hh_l0"],
                          Wr=p["weight_hr_l0"].T)[0].transpose(1, 0, 2)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
def test_one_nonzero_entry_of_h0_takes_the_full_products(cell, T):
    """h0 zero but for its last entry (the scan must cover all of it): the full
    products, forward and backward, against the reference."""
    D, H, N = 4, 5, 10
    m = _model(cell, D, H)
    rng = np.random.default_rng(6)
    x, dout = rng.standard_normal((T, N, D)), rng.standard_normal((T, N, H))
    states = [np.zeros((1, N, H)) for _ in range(m.n_states)]
    states[0][0, -1, -1] = 1.0
    out, _ = m(x, states[0] if m.n_states == 1 else tuple(states))
    dx, _ = m.backward(dout)
    want, _, want_dx, _, want_grads = reference_run(m, x, states, None, dout)
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=0, atol=1e-11)
    for k, g in want_grads.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=0, atol=1e-10, err_msg=k)


@pytest.mark.parametrize("T", [2, 4])
def test_zero_initial_state_on_the_unit_split(T, rng):
    """The LSTM's unit split (forced on, 2 threads): each thread's units of the
    first step from the zero h0, forward and backward against the reference."""
    from conftest import HAVE_PACKED
    from rnncore._kernels import lstm as KL
    if not HAVE_PACKED:
        pytest.skip("no packed layout here: no unit split")
    KL._set_unit_split(1, 2)
    try:
        check_against_reference(rng, "lstm", T, 8, 5, 40, give_h0=False, batch_first=True)
    finally:
        KL._set_unit_split(0)    # the default: the shape rule
