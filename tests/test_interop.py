"""rnncore.interop: Keras layers (run on the torch backend) and the cs231n assignment's
arrays converted to rnncore models, compared with Keras's own outputs, with the values
published in cs231n's notebooks, and with ``rnncore.reference``.
"""
import os

import numpy as np
import pytest

import rnncore
from rnncore import interop
from rnncore import reference as R

#: Keras 3.15 on torch: its own NumPy-2 DeprecationWarnings (not ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
#: rnncore (float32) against Keras (float32 on the torch backend)
KERAS_TOL = dict(rtol=1e-5, atol=1e-5)
#: float64 against values printed to 8 decimals in cs231n's notebooks
CS231N_TOL = dict(rtol=0, atol=1e-8)
N, T, D, H = 3, 6, 4, 5


# ------------------------------------------------------------------------ cs231n
def _cs231n_lstm_step(x, prev_h, prev_c, Wx, Wh, b):
    """The assignment's lstm_step_forward: gates i, f, o, g along 4H."""
    a = x @ Wx + prev_h @ Wh + b
    i, f, o, g = np.split(a, 4, axis=1)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c = sig(f) * prev_c + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(c), c


def _lstm_from(Wx, Wh, b, D, H):
    model = rnncore.LSTM(D, H, batch_first=True, dtype=np.float64)
    model.load_state_dict(interop.from_cs231n("lstm", Wx, Wh, b))
    return model


def test_cs231n_lstm_step_published_values():
    """LSTM_Captioning.ipynb, 'LSTM: step forward' (cs231n assignment 3)."""
    N, D, H = 3, 4, 5
    x = np.linspace(-0.4, 1.2, num=N * D).reshape(N, D)
    prev_h = np.linspace(-0.3, 0.7, num=N * H).reshape(N, H)
    prev_c = np.linspace(-0.4, 0.9, num=N * H).reshape(N, H)
    Wx = np.linspace(-2.1, 1.3, num=4 * D * H).reshape(D, 4 * H)
    Wh = np.linspace(-0.7, 2.2, num=4 * H * H).reshape(H, 4 * H)
    b = np.linspace(0.3, 0.7, num=4 * H)
    expected_next_h = np.asarray([
        [0.24635157, 0.28610883, 0.32240467, 0.35525807, 0.38474904],
        [0.49223563, 0.55611431, 0.61507696, 0.66844003, 0.7159181],
        [0.56735664, 0.66310127, 0.74419266, 0.80889665, 0.858299]])
    expected_next_c = np.asarray([
        [0.32986176, 0.39145139, 0.451556, 0.51014116, 0.56717407],
        [0.66382255, 0.76674007, 0.87195994, 0.97902709, 1.08751345],
        [0.74192008, 0.90592151, 1.07717006, 1.25120233, 1.42395676]])
    out, (h, c) = _lstm_from(Wx, Wh, b, D, H)(x[:, None], (prev_h[None], prev_c[None]),
                                              train=False)
    np.testing.assert_allclose(h[0], expected_next_h, **CS231N_TOL)
    np.testing.assert_allclose(c[0], expected_next_c, **CS231N_TOL)
    np.testing.assert_allclose(out[:, 0], expected_next_h, **CS231N_TOL)
    # the reference with the permuted arrays, and the mistake the converter prevents
    h_ref, c_ref, _ = R.lstm_forward(x[:, None], prev_h, *interop.cs231n_lstm_to_reference(
        Wx, Wh, b), c0=prev_c)
    np.testing.assert_allclose(h_ref[:, 0], expected_next_h, **CS231N_TOL)
    h_bad, _, _ = R.lstm_forward(x[:, None], prev_h, Wx, Wh, b, c0=prev_c)
    assert np.abs(h_bad[:, 0] - expected_next_h).max() > 1e-2  # 4.0e-2: o and g swapped


def test_cs231n_lstm_forward_published_values():
    """LSTM_Captioning.ipynb, 'LSTM: forward'."""
    N, D, H, T = 2, 5, 4, 3
    x = np.linspace(-0.4, 0.6, num=N * T * D).reshape(N, T, D)
    h0 = np.linspace(-0.4, 0.8, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.2, 0.9, num=4 * D * H).reshape(D, 4 * H)
    Wh = np.linspace(-0.3, 0.6, num=4 * H * H).reshape(H, 4 * H)
    b = np.linspace(0.2, 0.7, num=4 * H)
    expected_h = np.asarray([
        [[0.01764008, 0.01823233, 0.01882671, 0.0194232],
         [0.11287491, 0.12146228, 0.13018446, 0.13902939],
         [0.31358768, 0.33338627, 0.35304453, 0.37250975]],
        [[0.45767879, 0.4761092, 0.4936887, 0.51041945],
         [0.6704845, 0.69350089, 0.71486014, 0.7346449],
         [0.81733511, 0.83677871, 0.85403753, 0.86935314]]])
    out, _ = _lstm_from(Wx, Wh, b, D, H)(x, (h0[None], None), train=False)
    np.testing.assert_allclose(out, expected_h, **CS231N_TOL)


def test_cs231n_rnn_step_published_values():
    """RNN_Captioning.ipynb, 'Vanilla RNN: step forward'."""
    N, D, H = 3, 10, 4
    x = np.linspace(-0.4, 0.7, num=N * D).reshape(N, D)
    prev_h = np.linspace(-0.2, 0.5, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.1, 0.9, num=D * H).reshape(D, H)
    Wh = np.linspace(-0.3, 0.7, num=H * H).reshape(H, H)
    b = np.linspace(-0.2, 0.4, num=H)
    expected_next_h = np.asarray([
        [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
        [0.66854692, 0.79562378, 0.87755553, 0.92795967],
        [0.97934501, 0.99144213, 0.99646691, 0.99854353]])
    model = rnncore.RNN(D, H, batch_first=True, dtype=np.float64)
    model.load_state_dict(interop.from_cs231n("rnn", Wx, Wh, b))
    out, _ = model(x[:, None], prev_h[None], train=False)
    np.testing.assert_allclose(out[:, 0], expected_next_h, **CS231N_TOL)


def test_cs231n_lstm_many_steps_against_the_assignment_step(rng):
    """Random weights, T steps of the assignment's own step function."""
    x = rng.standard_normal((N, T, D))
    Wx, Wh = rng.standard_normal((D, 4 * H)) * 0.5, rng.standard_normal((H, 4 * H)) * 0.5
    b = rng.standard_normal(4 * H) * 0.5
    h, c = np.zeros((N, H)), np.zeros((N, H))
    hs = []
    for t in range(T):
        h, c = _cs231n_lstm_step(x[:, t], h, c, Wx, Wh, b)
        hs.append(h)
    out, (h_n, c_n) = _lstm_from(Wx, Wh, b, D, H)(x, train=False)
    np.testing.assert_allclose(out, np.stack(hs, 1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_n[0], c, rtol=1e-12, atol=1e-12)


def test_cs231n_errors():
    with pytest.raises(ValueError, match="the cs231n assignment has 'rnn' and 'lstm'"):
        interop.from_cs231n("gru", np.zeros((2, 9)), np.zeros((3, 9)), np.zeros(9))
    with pytest.raises(ValueError, match=r"Wh: expected shape \(H, 4\*H\)"):
        interop.from_cs231n("lstm", np.zeros((2, 8)), np.zeros((3, 8)), np.zeros(8))
    with pytest.raises(ValueError, match=r"b: expected shape \(12,\)"):
        interop.from_cs231n("lstm", np.zeros((2, 12)), np.zeros((3, 12)), np.zeros(3))


# ------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


def _randomize(layer, x, rng):
    """Build ``layer`` on ``x`` and give it random weights (biases too)."""
    layer(x)
    layer.set_weights([rng.uniform(-0.6, 0.6, w.shape).astype(np.float32)
                       for w in layer.get_weights()])


def _np(keras, v):
    return keras.ops.convert_to_numpy(v)


def _make(keras, kind, *, bidirectional=False, merge_mode="concat", use_bias=True,
          activation="tanh", reset_after=True, return_sequences=True, return_state=True):
    L = keras.layers
    kw = dict(return_sequences=return_sequences, return_state=return_state, use_bias=use_bias)
    if kind == "rnn":
        layer = L.SimpleRNN(H, activation=activation, **kw)
    elif kind in ("gru", "gru_rb"):
        layer = L.GRU(H, reset_after=reset_after and kind == "gru", **kw)
    else:
        layer = L.LSTM(H, **kw)
    return L.Bidirectional(layer, merge_mode=merge_mode) if bidirectional else layer


def _keras_states(keras, res, kind, bidirectional):
    """Keras's [out, states...] -> (out, [h_n (dirs, N, H), c_n ...]) in rnncore's order."""
    out, states = _np(keras, res[0]), [_np(keras, s) for s in res[1:]]
    ns = 2 if kind == "lstm" else 1
    per_dir = [states[d * ns:(d + 1) * ns] for d in range(2 if bidirectional else 1)]
    return out, [np.stack([p[i] for p in per_dir]) for i in range(ns)]


def _model_states(model, x, lengths=None):
    out, s = model(x, lengths=lengths, train=False)
    return out, list(s) if isinstance(s, tuple) else [s]


#: "gru_rb": Keras GRU(reset_after=False) -> rnncore.GRU(reset_after=False)
KERAS_CASES = [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"), ("gru_rb", "tanh"),
               ("lstm", "tanh")]


@pytest.mark.parametrize("bidirectional,merge_mode", [(False, "concat"), (True, "concat"),
                                                      (True, "sum"), (True, "mul"),
                                                      (True, "ave")],
                         ids=["uni", "bi-concat", "bi-sum", "bi-mul", "bi-ave"])
@pytest.mark.parametrize("kind,activation", KERAS_CASES, ids=["rnn_tanh", "rnn_relu", "gru",
                                                               "gru_reset_before", "lstm"])
def test_keras_layer_outputs_equal(keras, kind, activation, bidirectional, merge_mode, rng):
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    for use_bias in (True, False):
        layer = _make(keras, kind, bidirectional=bidirectional, merge_mode=merge_mode,
                      use_bias=use_bias, activation=activation)
        _randomize(layer, x, rng)
        want_out, want_states = _keras_states(keras, layer(x), kind, bidirectional)
        model = interop.from_keras(layer)
        assert model.batch_first and model.bias == use_bias
        assert model.merge_mode == merge_mode and model.bidirectional == bidirectional
        assert getattr(model, "reset_after", None) == {"gru": True, "gru_rb": False}.get(kind)
        out, states = _model_states(model, x)
        np.testing.assert_allclose(out, want_out, **KERAS_TOL)
        for s, w in zip(states, want_states):
            np.testing.assert_allclose(s, w, **KERAS_TOL)


def test_keras_stacked_and_right_padded_mask(keras, rng):
    """A stack of Bidirectional LSTMs; a right-padded mask is lengths=mask.sum(1)."""
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    mask = np.arange(T)[None, :] < np.array([T, 2, 4])[:, None]
    x[~mask] = 0
    L = keras.layers
    l1 = L.Bidirectional(L.LSTM(H, return_sequences=True))
    l2 = L.Bidirectional(L.LSTM(H, return_sequences=True, return_state=True), merge_mode="sum")
    _randomize(l1, x, rng)
    _randomize(l2, _np(keras, l1(x)), rng)
    want_out, want_states = _keras_states(keras, l2(l1(x, mask=mask), mask=mask), "lstm", True)
    model = interop.from_keras([l1, l2])
    assert model.num_layers == 2 and model.merge_mode == "sum"
    out, states = _model_states(model, x, lengths=interop.lengths_from_mask(mask))
    np.testing.assert_allclose(out, want_out, **KERAS_TOL)  # zeros past each length in both
    for s, w in zip(states, want_states):
        np.testing.assert_allclose(s[2:], w, **KERAS_TOL)  # the top layer's final states
    # a plain Keras layer repeats its last valid output on masked steps; final state equal
    gru = _make(keras, "gru")
    _randomize(gru, x, rng)
    k_out, (k_h,) = _keras_states(keras, gru(x, mask=mask), "gru", False)
    out, (h_n,) = _model_states(interop.from_keras(gru), x, lengths=mask.sum(1))
    np.testing.assert_allclose(h_n, k_h, **KERAS_TOL)
    np.testing.assert_allclose(out[mask], k_out[mask], **KERAS_TOL)
    with pytest.raises(ValueError, match=r"mask: rows \[1\] have holes"):
        interop.lengths_from_mask([[1, 1, 1], [1, 0, 1]])


def test_keras_reset_before_gru(keras, rng):
    """reset_after=False: one bias (3H,) -> bias_ih, bias_hh = 0; stacked and with a
    right-padded mask; the reset-after model with the same weights is far off; the
    reference's reset-before GRU agrees too."""
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    mask = np.arange(T)[None, :] < np.array([T, 2, 4])[:, None]
    L = keras.layers
    l1 = L.Bidirectional(L.GRU(H, reset_after=False, return_sequences=True))
    l2 = L.Bidirectional(L.GRU(H, reset_after=False, return_sequences=True,
                               return_state=True), merge_mode="ave")
    _randomize(l1, x, rng)
    _randomize(l2, _np(keras, l1(x)), rng)
    assert [w.shape for w in l1.get_weights()] == [(D, 3 * H), (H, 3 * H), (3 * H,)] * 2
    state = interop.keras_state_dict("gru", l1.get_weights(), reset_after=False,
                                     bidirectional=True)
    np.testing.assert_array_equal(state["bias_hh_l0_reverse"], np.zeros(3 * H, np.float32))
    np.testing.assert_array_equal(state["bias_ih_l0_reverse"][:H],  # r, Keras's 2nd block
                                  l1.get_weights()[5][H:2 * H])
    want_out, want_states = _keras_states(keras, l2(l1(x, mask=mask), mask=mask), "gru", True)
    model = interop.from_keras([l1, l2])
    assert model.reset_after is False and model.num_layers == 2 and model.bidirectional
    assert model.merge_mode == "ave"
    out, (h_n,) = _model_states(model, x, lengths=interop.lengths_from_mask(mask))
    np.testing.assert_allclose(out, want_out, **KERAS_TOL)
    np.testing.assert_allclose(h_n[2:], want_states[0], **KERAS_TOL)
    # the same weights in the reset-after GRU: the error the issue measured (0.24)
    layer = _make(keras, "gru_rb", return_state=False)
    _randomize(layer, x, rng)
    want = _np(keras, layer(x))
    wrong = rnncore.GRU(D, H, batch_first=True)
    wrong.load_state_dict(interop.keras_state_dict("gru", layer.get_weights(),
                                                   reset_after=False))
    assert np.abs(wrong(x, train=False)[0] - want).max() > 1e-2
    np.testing.assert_allclose(interop.from_keras(layer)(x, train=False)[0], want, **KERAS_TOL)
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    h, _ = R.gru_forward(x.astype(np.float64), np.zeros((N, H)),
                         *interop.keras_gru_to_reference(weights), reset_after=False)
    np.testing.assert_allclose(h, want, **KERAS_TOL)
    # and reset_after=True through the reference too
    layer = _make(keras, "gru", return_state=False)
    _randomize(layer, x, rng)
    weights = [w.astype(np.float64) for w in layer.get_weights()]
    h, _ = R.gru_forward(x.astype(np.float64), np.zeros((N, H)),
                         *interop.keras_gru_to_reference(weights))
    np.testing.assert_allclose(h, _np(keras, layer(x)), **KERAS_TOL)


def test_keras_swapped_gate_is_caught(keras, rng, monkeypatch):
    """The tolerance is sensitive: the GRU converted without its z, r swap fails it."""
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    layer = _make(keras, "gru", return_state=False)
    _randomize(layer, x, rng)
    monkeypatch.setitem(interop.KERAS_BLOCK_OF_TORCH, "gru", (0, 1, 2))
    out, _ = interop.from_keras(layer)(x, train=False)
    assert np.abs(out - _np(keras, layer(x))).max() > 1e3 * KERAS_TOL["atol"]


def test_keras_refusals(keras, rng):
    L = keras.layers
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    cases = [
        (L.SimpleRNN(H, activation="sigmoid", name="s"), r"'s': activation 'sigmoid'"),
        (L.LSTM(H, recurrent_activation="hard_sigmoid", name="l"),
         r"'l': activation='tanh', recurrent_activation='hard_sigmoid'"),
        (L.GRU(H, go_backwards=True, name="g"), r"'g': go_backwards=True"),
        (L.Bidirectional(L.GRU(H, return_sequences=True), merge_mode=None),
         r"merge_mode=None"),
        (L.Dense(H, name="dense"), r"'dense': expected SimpleRNN, GRU, LSTM"),
    ]
    for layer, msg in cases:
        layer(x)
        with pytest.raises(ValueError, match=msg):
            interop.from_keras(layer)
    l1, l2 = L.LSTM(H, return_sequences=False), L.LSTM(H)
    l1(x)
    l2(x[:, :, :1].repeat(H, axis=2))
    with pytest.raises(ValueError, match=r"layers\[0\]: a layer below another must have "
                                         "return_sequences=True"):
        interop.from_keras([l1, l2])
    with pytest.raises(ValueError, match=r"weights: expected 2 or 3 arrays"):
        interop.keras_state_dict("lstm", [np.zeros((2, 8))])
    # a GRU's bias must fit its reset_after; a stack must not mix them
    w = [np.zeros((D, 3 * H)), np.zeros((H, 3 * H))]
    with pytest.raises(ValueError, match=r"bias: expected shape \(15,\) for a GRU with "
                                         r"reset_after=False, got \(2, 15\)"):
        interop.keras_state_dict("gru", w + [np.zeros((2, 3 * H))], reset_after=False)
    with pytest.raises(ValueError, match=r"bias: expected shape \(2, 15\) for a GRU with "
                                         r"reset_after=True, got \(15,\)"):
        interop.keras_state_dict("gru", w + [np.zeros(3 * H)])
    g1, g2 = L.GRU(H, return_sequences=True), L.GRU(H, reset_after=False)
    g2(g1(x))
    with pytest.raises(ValueError, match=r"layers\[1\]: reset_after False differs from "
                                         r"layers\[0\]'s True"):
        interop.from_keras([g1, g2])
