"""Tests of :mod:`rnncore.reference`, the pure-NumPy specification.

What is checked, for every cell variant (RNN tanh / relu, GRU with
``reset_after`` True / False, LSTM):

* every gradient of every step and sequence function against central finite
  differences (float64, tiny sizes, edge cases T=1, N=1, H=1, D≠H), including
  the optional ``dhn`` / ``dcn`` final-state gradients;
* the forward equations, restated independently with explicit per-gate weights;
* sequence functions == stepping the step functions by hand, and two chunks
  with the state carried == one run (forward and backward);
* inputs never modified, outputs never aliasing inputs, float32 stays float32;
* the output layer and the masked softmax loss (explicit loops, masks,
  stability, finite differences).

PyTorch parity of the sequence functions is in ``test_torch_parity.py``.
"""
import warnings

import numpy as np
import pytest
from conftest import FD_SHAPE_IDS, FD_SHAPES, TOL, assert_close_f32, numerical_gradient

from rnncore import reference as ref

# ---------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------
VARIANTS = ["rnn-tanh", "rnn-relu", "gru", "gru-reset-before", "lstm"]

#: Weight scale keeping gates out of saturation, so gradients are not tiny.
SCALE = 0.5


def _randn(rng, *shape):
    return SCALE * rng.standard_normal(shape)


def _relu_preactivations(x, h0, Wx, Wh, b):
    """All pre-activations a_t = x_t Wx + h_{t-1} Wh + b of a relu RNN, (N, T, H)."""
    a = np.empty((x.shape[0], x.shape[1], h0.shape[1]))
    h = h0
    for t in range(x.shape[1]):
        a[:, t] = x[:, t] @ Wx + h @ Wh + b
        h = np.maximum(a[:, t], 0)
    return a


def _draw(variant, rng, N, T, D, H):
    """Random float64 sequence inputs of a variant, as a dict named like the API.

    For relu, redraw until every pre-activation is at least 1e-3 away from 0,
    so that central differences (h = 1e-6) never straddle the kink.
    """
    G = {"rnn": 1, "gru": 3, "lstm": 4}[variant.split("-")[0]]
    for _ in range(100):
        inputs = {"x": rng.standard_normal((N, T, D)), "h0": _randn(rng, N, H)}
        if G == 4:
            inputs["c0"] = _randn(rng, N, H)
        inputs["Wx"] = _randn(rng, D, G * H)
        inputs["Wh"] = _randn(rng, H, G * H)
        if G == 3:
            inputs["bx"] = _randn(rng, G * H)
            inputs["bh"] = _randn(rng, G * H)
        else:
            inputs["b"] = _randn(rng, G * H)
        if variant != "rnn-relu":
            return inputs
        a = _relu_preactivations(inputs["x"], inputs["h0"], inputs["Wx"], inputs["Wh"],
                                 inputs["b"])
        if a.size == 0 or (np.min(np.abs(a)) > 1e-3 and np.any(a > 0)):
            return inputs
    raise AssertionError("could not draw relu-safe inputs")  # pragma: no cover


def _step_inputs(seq_inputs):
    """Step inputs (x (N, D), prev_h, [prev_c], weights) from sequence inputs."""
    step = {}
    for name, value in seq_inputs.items():
        if name == "x":
            step["x"] = value[:, 0].copy()
        elif name in ("h0", "c0"):
            step["prev_" + name[0]] = value.copy()
        else:
            step[name] = value.copy()
    return step


# ---------------------------------------------------------------------------
# Adapters: one calling convention for all variants (names match the inputs)
# ---------------------------------------------------------------------------
def _step_forward(variant, a):
    """Returns ({'next_h': ..., ['next_c': ...]}, cache)."""
    if variant.startswith("rnn"):
        next_h, cache = ref.rnn_step_forward(a["x"], a["prev_h"], a["Wx"], a["Wh"], a["b"],
                                             nonlinearity=variant.split("-")[1])
        return {"next_h": next_h}, cache
    if variant.startswith("gru"):
        next_h, cache = ref.gru_step_forward(a["x"], a["prev_h"], a["Wx"], a["Wh"], a["bx"],
                                             a["bh"], reset_after=(variant == "gru"))
        return {"next_h": next_h}, cache
    next_h, next_c, cache = ref.lstm_step_forward(a["x"], a["prev_h"], a["prev_c"], a["Wx"],
                                                  a["Wh"], a["b"])
    return {"next_h": next_h, "next_c": next_c}, cache


def _step_backward(variant, cache, dnext_h, dnext_c=None):
    """Returns the gradients as a dict keyed by the step input names."""
    if variant.startswith("rnn"):
        names = ("x", "prev_h", "Wx", "Wh", "b")
        return dict(zip(names, ref.rnn_step_backward(dnext_h, cache), strict=True))
    if variant.startswith("gru"):
        names = ("x", "prev_h", "Wx", "Wh", "bx", "bh")
        return dict(zip(names, ref.gru_step_backward(dnext_h, cache), strict=True))
    names = ("x", "prev_h", "prev_c", "Wx", "Wh", "b")
    return dict(zip(names, ref.lstm_step_backward(dnext_h, dnext_c, cache), strict=True))


def _forward(variant, a):
    """Returns ({'h': ..., ['c': ...]}, cache)."""
    if variant.startswith("rnn"):
        h, cache = ref.rnn_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"],
                                   nonlinearity=variant.split("-")[1])
        return {"h": h}, cache
    if variant.startswith("gru"):
        h, cache = ref.gru_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["bx"], a["bh"],
                                   reset_after=(variant == "gru"))
        return {"h": h}, cache
    h, c, cache = ref.lstm_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"], c0=a["c0"])
    return {"h": h, "c": c}, cache


def _backward(variant, cache, dh, dhn=None, dcn=None):
    """Returns the gradients as a dict keyed by the sequence input names."""
    if variant.startswith("rnn"):
        names = ("x", "h0", "Wx", "Wh", "b")
        return dict(zip(names, ref.rnn_backward(dh, cache, dhn=dhn), strict=True))
    if variant.startswith("gru"):
        names = ("x", "h0", "Wx", "Wh", "bx", "bh")
        return dict(zip(names, ref.gru_backward(dh, cache, dhn=dhn), strict=True))
    names = ("x", "h0", "c0", "Wx", "Wh", "b")
    return dict(zip(names, ref.lstm_backward(dh, cache, dhn=dhn, dcn=dcn), strict=True))


def _assert_fd(f, df, arrays, grads):
    """Every analytic gradient in ``grads`` equals the central difference of sum(f() * df)."""
    assert set(grads) == set(arrays)
    for name, array in arrays.items():
        expected = numerical_gradient(f, array, df)
        assert np.any(expected != 0), f"d{name}: the check is vacuous (all zero)"
        np.testing.assert_allclose(grads[name], expected, rtol=TOL["fd_rtol"],
                                   atol=TOL["fd_atol"], err_msg=f"d{name}")


def _assert_f64(actual, expected, name):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOL["f64_atol"], err_msg=name)


# ---------------------------------------------------------------------------
# sigmoid
# ---------------------------------------------------------------------------
def test_sigmoid_matches_definition():
    x = np.linspace(-30, 30, 601)
    np.testing.assert_allclose(ref.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-14, atol=0)
    np.testing.assert_allclose(ref.sigmoid(-x), 1 - ref.sigmoid(x), rtol=0, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_for_large_inputs(dtype):
    x = np.array([-1e4, -1000, -50, 0, 50, 1000, 1e4], dtype=dtype)
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        out = ref.sigmoid(x)
    assert out.dtype == dtype
    with np.errstate(over="ignore"):
        expected = 1 / (1 + np.exp(-x.astype(np.float64)))  # exp(1e4) = inf is fine here
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(out, expected, rtol=rtol, atol=0)
    assert out[2] > 0  # σ(-50) = 1.9e-22 must not flush to 0


# ---------------------------------------------------------------------------
# Forward equations, restated with explicit per-gate weights
# ---------------------------------------------------------------------------
def _sigma(a):
    return 1 / (1 + np.exp(-a))


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_step_forward_formula(rng, nonlinearity):
    a = _step_inputs(_draw("rnn-" + nonlinearity, rng, 3, 1, 4, 5))
    pre = a["x"] @ a["Wx"] + a["prev_h"] @ a["Wh"] + a["b"]
    expected = np.tanh(pre) if nonlinearity == "tanh" else np.maximum(pre, 0)
    next_h, _ = ref.rnn_step_forward(a["x"], a["prev_h"], a["Wx"], a["Wh"], a["b"],
                                     nonlinearity=nonlinearity)
    _assert_f64(next_h, expected, "next_h")


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_step_forward_formula(rng, reset_after):
    a = _step_inputs(_draw("gru", rng, 3, 1, 4, 5))
    x, h, Wx, Wh, bx, bh = a["x"], a["prev_h"], a["Wx"], a["Wh"], a["bx"], a["bh"]
    H = h.shape[1]
    W_ir, W_iz, W_in = Wx[:, :H], Wx[:, H:2 * H], Wx[:, 2 * H:]
    W_hr, W_hz, W_hn = Wh[:, :H], Wh[:, H:2 * H], Wh[:, 2 * H:]
    b_ir, b_iz, b_in = bx[:H], bx[H:2 * H], bx[2 * H:]
    b_hr, b_hz, b_hn = bh[:H], bh[H:2 * H], bh[2 * H:]
    r = _sigma(x @ W_ir + b_ir + h @ W_hr + b_hr)
    z = _sigma(x @ W_iz + b_iz + h @ W_hz + b_hz)
    if reset_after:
        n = np.tanh(x @ W_in + b_in + r * (h @ W_hn + b_hn))
    else:
        n = np.tanh(x @ W_in + b_in + (r * h) @ W_hn + b_hn)
    expected = (1 - z) * n + z * h
    next_h, _ = ref.gru_step_forward(x, h, Wx, Wh, bx, bh, reset_after=reset_after)
    _assert_f64(next_h, expected, "next_h")


def test_gru_reset_after_variants_differ(rng):
    a = _step_inputs(_draw("gru", rng, 3, 1, 4, 5))
    args = (a["x"], a["prev_h"], a["Wx"], a["Wh"], a["bx"], a["bh"])
    after, _ = ref.gru_step_forward(*args, reset_after=True)
    before, _ = ref.gru_step_forward(*args, reset_after=False)
    assert np.max(np.abs(after - before)) > 1e-3


def test_lstm_step_forward_formula(rng):
    a = _step_inputs(_draw("lstm", rng, 3, 1, 4, 5))
    x, h, c, Wx, Wh, b = a["x"], a["prev_h"], a["prev_c"], a["Wx"], a["Wh"], a["b"]
    H = h.shape[1]
    block = {name: slice(k * H, (k + 1) * H) for k, name in enumerate("ifgo")}
    i = _sigma(x @ Wx[:, block["i"]] + h @ Wh[:, block["i"]] + b[block["i"]])
    f = _sigma(x @ Wx[:, block["f"]] + h @ Wh[:, block["f"]] + b[block["f"]])
    g = np.tanh(x @ Wx[:, block["g"]] + h @ Wh[:, block["g"]] + b[block["g"]])
    o = _sigma(x @ Wx[:, block["o"]] + h @ Wh[:, block["o"]] + b[block["o"]])
    expected_c = f * c + i * g
    expected_h = o * np.tanh(expected_c)
    next_h, next_c, _ = ref.lstm_step_forward(x, h, c, Wx, Wh, b)
    _assert_f64(next_h, expected_h, "next_h")
    _assert_f64(next_c, expected_c, "next_c")


@pytest.mark.parametrize("bad", ["sigmoid", "Tanh", None])
def test_rnn_rejects_unknown_nonlinearity(rng, bad):
    a = _draw("rnn-tanh", rng, 2, 3, 4, 5)
    s = _step_inputs(a)
    with pytest.raises(ValueError, match="nonlinearity"):
        ref.rnn_step_forward(s["x"], s["prev_h"], s["Wx"], s["Wh"], s["b"], nonlinearity=bad)
    with pytest.raises(ValueError, match="nonlinearity"):
        ref.rnn_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"], nonlinearity=bad)


# ---------------------------------------------------------------------------
# Finite differences: every gradient of every step and sequence function
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("N,T,D,H", FD_SHAPES, ids=FD_SHAPE_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_step_backward_matches_finite_differences(rng, variant, N, T, D, H):
    a = _step_inputs(_draw(variant, rng, N, 1, D, H))
    outputs, cache = _step_forward(variant, a)
    dnext_h = rng.standard_normal((N, H))
    dnext_c = rng.standard_normal((N, H)) if "next_c" in outputs else None
    grads = _step_backward(variant, cache, dnext_h, dnext_c)

    if dnext_c is None:
        def f():
            return _step_forward(variant, a)[0]["next_h"]
        df = dnext_h
    else:
        def f():
            out = _step_forward(variant, a)[0]
            return np.concatenate([out["next_h"].ravel(), out["next_c"].ravel()])
        df = np.concatenate([dnext_h.ravel(), dnext_c.ravel()])
    _assert_fd(f, df, a, grads)


@pytest.mark.parametrize("with_final", [False, True], ids=["dh-only", "with-dhn-dcn"])
@pytest.mark.parametrize("N,T,D,H", FD_SHAPES, ids=FD_SHAPE_IDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_backward_matches_finite_differences(rng, variant, N, T, D, H, with_final):
    """L = Σ h ⊙ dh [+ Σ h_n ⊙ dhn] [+ Σ c_n ⊙ dcn] (LSTM), gradients wrt every input."""
    a = _draw(variant, rng, N, T, D, H)
    outputs, cache = _forward(variant, a)
    is_lstm = "c" in outputs
    dh = rng.standard_normal((N, T, H))
    dhn = rng.standard_normal((N, H)) if with_final else None
    dcn = rng.standard_normal((N, H)) if with_final and is_lstm else None
    grads = _backward(variant, cache, dh, dhn=dhn, dcn=dcn)

    def f():
        out = _forward(variant, a)[0]
        parts = [out["h"].ravel()]
        if dhn is not None:
            parts.append(out["h"][:, -1].ravel())
        if dcn is not None:
            parts.append(out["c"][:, -1].ravel())
        return np.concatenate(parts)

    df = np.concatenate([g.ravel() for g in (dh, dhn, dcn) if g is not None])
    _assert_fd(f, df, a, grads)


def test_lstm_c0_none_means_zeros(rng):
    a = _draw("lstm", rng, 2, 3, 4, 5)
    h_none, c_none, cache_none = ref.lstm_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"])
    zeros = np.zeros_like(a["h0"])
    h_zero, c_zero, cache_zero = ref.lstm_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"],
                                                  c0=zeros)
    np.testing.assert_array_equal(h_none, h_zero)
    np.testing.assert_array_equal(c_none, c_zero)
    dh = rng.standard_normal(h_none.shape)
    for g_none, g_zero in zip(ref.lstm_backward(dh, cache_none), ref.lstm_backward(dh, cache_zero),
                              strict=True):
        np.testing.assert_array_equal(g_none, g_zero)
    # the gradient of the (implicit) zero c0 is still returned and nonzero
    assert np.any(ref.lstm_backward(dh, cache_none)[2] != 0)


# ---------------------------------------------------------------------------
# Softmax loss and output layer
# ---------------------------------------------------------------------------
def _loss_by_loop(x, y, mask):
    """cs231n's temporal softmax loss written as plain loops (float64)."""
    N, T, V = x.shape
    loss, dx = 0.0, np.zeros_like(x)
    for n in range(N):
        for t in range(T):
            if not mask[n, t]:
                continue
            shifted = x[n, t] - x[n, t].max()
            p = np.exp(shifted) / np.exp(shifted).sum()
            loss -= shifted[y[n, t]] - np.log(np.exp(shifted).sum())  # -log p[y]
            dx[n, t] = p
            dx[n, t, y[n, t]] -= 1
    return loss / N, dx / N


def _loss_data(rng, N=3, T=4, V=6):
    x = rng.standard_normal((N, T, V))
    y = rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) < 0.6
    mask[0, 0], mask[0, 1] = True, False  # at least one of each
    return x, y, mask


def test_temporal_softmax_loss_matches_loop(rng):
    x, y, mask = _loss_data(rng)
    loss, dx = ref.temporal_softmax_loss(x, y, mask)
    expected_loss, expected_dx = _loss_by_loop(x, y, mask)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-13, atol=0)
    _assert_f64(dx, expected_dx, "dx")


def test_temporal_softmax_loss_divides_by_batch_size_not_mask_count(rng):
    N, T, V = 4, 3, 5
    x = np.zeros((N, T, V))  # uniform softmax: every counted position costs log V
    y = rng.integers(0, V, size=(N, T))
    mask = np.zeros((N, T), dtype=bool)
    mask[0, :2] = True  # 2 positions counted
    loss, _ = ref.temporal_softmax_loss(x, y, mask)
    np.testing.assert_allclose(loss, 2 * np.log(V) / N, rtol=1e-14)


def test_temporal_softmax_loss_mask_forms(rng):
    x, y, mask = _loss_data(rng)
    loss_bool, dx_bool = ref.temporal_softmax_loss(x, y, mask)
    for other in (mask.astype(int), mask.astype(float)):
        loss_other, dx_other = ref.temporal_softmax_loss(x, y, other)
        assert loss_other == loss_bool
        np.testing.assert_array_equal(dx_other, dx_bool)
    # None means all positions
    loss_none, dx_none = ref.temporal_softmax_loss(x, y)
    loss_ones, dx_ones = ref.temporal_softmax_loss(x, y, np.ones_like(mask))
    assert loss_none == loss_ones
    np.testing.assert_array_equal(dx_none, dx_ones)
    assert loss_none > loss_bool
    # masked-out positions get no gradient, and their scores do not matter
    assert np.all(dx_bool[~mask] == 0)
    assert np.any(dx_bool[mask] != 0)
    x_changed = x.copy()
    x_changed[~mask] += 100 * rng.standard_normal(x[~mask].shape)
    assert ref.temporal_softmax_loss(x_changed, y, mask)[0] == loss_bool
    # nothing counted: zero loss, zero gradient
    loss_empty, dx_empty = ref.temporal_softmax_loss(x, y, np.zeros_like(mask))
    assert loss_empty == 0
    assert np.all(dx_empty == 0)


def test_temporal_softmax_loss_is_stable_for_huge_scores(rng):
    x, y, mask = _loss_data(rng)
    big = 1e4 * x
    with warnings.catch_warnings(), np.errstate(over="raise", divide="raise", invalid="raise"):
        warnings.simplefilter("error")
        loss, dx = ref.temporal_softmax_loss(big, y, mask)
        loss_shifted, dx_shifted = ref.temporal_softmax_loss(x + 1e4, y, mask)
    assert np.isfinite(loss) and np.all(np.isfinite(dx))
    expected_loss, expected_dx = _loss_by_loop(big, y, mask)  # the loop also shifts by the max
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    _assert_f64(dx, expected_dx, "dx")
    # softmax is shift-invariant: adding 1e4 to every score changes nothing
    loss_ref, dx_ref = ref.temporal_softmax_loss(x, y, mask)
    np.testing.assert_allclose(loss_shifted, loss_ref, rtol=1e-9)
    np.testing.assert_allclose(dx_shifted, dx_ref, rtol=0, atol=1e-9)


def test_temporal_softmax_loss_gradient_matches_finite_differences(rng):
    x, y, mask = _loss_data(rng)
    _, dx = ref.temporal_softmax_loss(x, y, mask)
    _assert_fd(lambda: ref.temporal_softmax_loss(x, y, mask)[0], 1.0, {"x": x}, {"x": dx})


def test_temporal_softmax_loss_rejects_bad_labels_and_shapes(rng):
    x, y, mask = _loss_data(rng)
    V = x.shape[2]
    for bad in (y + V, y - V):
        with pytest.raises(ValueError, match="labels"):
            ref.temporal_softmax_loss(x, np.where(mask, bad, y), mask)
    with pytest.raises(ValueError, match="y must have shape"):
        ref.temporal_softmax_loss(x, y[:, :-1], mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        ref.temporal_softmax_loss(x, y, mask[:, :-1])


def test_temporal_affine_forward_matches_loop(rng):
    N, T, H, M = 2, 3, 4, 5
    x, w, b = rng.standard_normal((N, T, H)), rng.standard_normal((H, M)), rng.standard_normal(M)
    out, _ = ref.temporal_affine_forward(x, w, b)
    expected = np.empty((N, T, M))
    for n in range(N):
        for t in range(T):
            expected[n, t] = x[n, t] @ w + b
    _assert_f64(out, expected, "out")


@pytest.mark.parametrize("N,T,H,M", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 1, 4)])
def test_temporal_affine_backward_matches_finite_differences(rng, N, T, H, M):
    a = {"x": rng.standard_normal((N, T, H)), "w": rng.standard_normal((H, M)),
         "b": rng.standard_normal(M)}
    out, cache = ref.temporal_affine_forward(a["x"], a["w"], a["b"])
    dout = rng.standard_normal(out.shape)
    grads = dict(zip(("x", "w", "b"), ref.temporal_affine_backward(dout, cache), strict=True))
    _assert_fd(lambda: ref.temporal_affine_forward(a["x"], a["w"], a["b"])[0], dout, a, grads)


# ---------------------------------------------------------------------------
# Sequence == steps; two chunks == one run (Karpathy's self-test)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_sequence_equals_manual_stepping(rng, variant):
    N, T, D, H = 2, 4, 3, 5
    a = _draw(variant, rng, N, T, D, H)
    outputs, cache = _forward(variant, a)
    is_lstm = "c" in outputs
    dh = rng.standard_normal((N, T, H))
    dhn = rng.standard_normal((N, H))
    dcn = rng.standard_normal((N, H)) if is_lstm else None
    grads = _backward(variant, cache, dh, dhn=dhn, dcn=dcn)

    # forward, one step at a time
    step = _step_inputs(a)
    step_caches = []
    for t in range(T):
        step["x"] = a["x"][:, t]
        out, step_cache = _step_forward(variant, step)
        step_caches.append(step_cache)
        _assert_f64(outputs["h"][:, t], out["next_h"], f"h[:, {t}]")
        step["prev_h"] = out["next_h"]
        if is_lstm:
            _assert_f64(outputs["c"][:, t], out["next_c"], f"c[:, {t}]")
            step["prev_c"] = out["next_c"]

    # backward, one step at a time, carrying dh (and dc) back
    dcarry_h, dcarry_c = dhn, dcn
    weight_names = [k for k in a if k not in ("x", "h0", "c0")]
    dweights = {k: 0.0 for k in weight_names}
    for t in reversed(range(T)):
        g = _step_backward(variant, step_caches[t], dh[:, t] + dcarry_h, dcarry_c)
        _assert_f64(grads["x"][:, t], g["x"], f"dx[:, {t}]")
        dcarry_h, dcarry_c = g["prev_h"], g.get("prev_c")
        for k in weight_names:
            dweights[k] = dweights[k] + g[k]
    _assert_f64(grads["h0"], dcarry_h, "dh0")
    if is_lstm:
        _assert_f64(grads["c0"], dcarry_c, "dc0")
    for k in weight_names:
        _assert_f64(grads[k], dweights[k], f"d{k}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_two_chunks_with_carried_state_equal_one_run(rng, variant):
    N, T, D, H, split = 2, 5, 3, 4, 2
    a = _draw(variant, rng, N, T, D, H)
    outputs, cache = _forward(variant, a)
    is_lstm = "c" in outputs

    first = dict(a, x=a["x"][:, :split])
    out1, cache1 = _forward(variant, first)
    second = dict(a, x=a["x"][:, split:], h0=out1["h"][:, -1])
    if is_lstm:
        second["c0"] = out1["c"][:, -1]
    out2, cache2 = _forward(variant, second)
    for key in outputs:
        _assert_f64(outputs[key], np.concatenate([out1[key], out2[key]], axis=1), key)

    # backward: the second chunk's dh0 / dc0 are the first chunk's dhn / dcn
    dh = rng.standard_normal((N, T, H))
    dhn = rng.standard_normal((N, H))
    dcn = rng.standard_normal((N, H)) if is_lstm else None
    grads = _backward(variant, cache, dh, dhn=dhn, dcn=dcn)
    g2 = _backward(variant, cache2, dh[:, split:], dhn=dhn, dcn=dcn)
    g1 = _backward(variant, cache1, dh[:, :split], dhn=g2["h0"], dcn=g2.get("c0"))
    _assert_f64(grads["x"], np.concatenate([g1["x"], g2["x"]], axis=1), "dx")
    _assert_f64(grads["h0"], g1["h0"], "dh0")
    if is_lstm:
        _assert_f64(grads["c0"], g1["c0"], "dc0")
    for k in a:
        if k not in ("x", "h0", "c0"):
            _assert_f64(grads[k], g1[k] + g2[k], f"d{k}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_empty_sequence_passes_final_gradients_to_initial_state(rng, variant):
    N, D, H = 2, 3, 4
    a = _draw(variant, rng, N, 0, D, H)
    outputs, cache = _forward(variant, a)
    assert all(v.shape == (N, 0, H) for v in outputs.values())
    dhn = rng.standard_normal((N, H))
    dcn = rng.standard_normal((N, H)) if "c" in outputs else None
    grads = _backward(variant, cache, np.zeros((N, 0, H)), dhn=dhn, dcn=dcn)
    assert grads["x"].shape == (N, 0, D)
    np.testing.assert_array_equal(grads["h0"], dhn)
    assert not np.shares_memory(grads["h0"], dhn)
    if dcn is not None:
        np.testing.assert_array_equal(grads["c0"], dcn)
        assert not np.shares_memory(grads["c0"], dcn)
    for k in a:
        if k not in ("x", "h0", "c0"):
            assert grads[k].shape == a[k].shape and not np.any(grads[k])


# ---------------------------------------------------------------------------
# Inputs untouched, outputs fresh, dtypes kept
# ---------------------------------------------------------------------------
def _upstream(variant, rng, a):
    """Random upstream gradients dh (N, T, H), dhn (N, H), dcn (N, H) or None."""
    (N, T, _), H, dtype = a["x"].shape, a["h0"].shape[1], a["x"].dtype
    return {"dh": rng.standard_normal((N, T, H)).astype(dtype),
            "dhn": rng.standard_normal((N, H)).astype(dtype),
            "dcn": rng.standard_normal((N, H)).astype(dtype) if variant == "lstm" else None}


def _run_everything(variant, a, step, upstream):
    """Call step and sequence forward/backward; return every output array, named."""
    outputs, cache = _forward(variant, a)
    grads = _backward(variant, cache, upstream["dh"], upstream["dhn"], upstream["dcn"])
    step_outputs, step_cache = _step_forward(variant, step)
    step_grads = _step_backward(variant, step_cache, upstream["dhn"], upstream["dcn"])
    return {**outputs, **{"d" + k: v for k, v in grads.items()},
            **{"step " + k: v for k, v in step_outputs.items()},
            **{"step d" + k: v for k, v in step_grads.items()}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_inputs_are_not_modified_and_outputs_are_new(rng, variant):
    a = _draw(variant, rng, 2, 3, 4, 5)
    step = _step_inputs(a)
    upstream = {k: v for k, v in _upstream(variant, rng, a).items() if v is not None}
    given = {**a, **{"step " + k: v for k, v in step.items()}, **upstream}
    before = {k: v.copy() for k, v in given.items()}

    produced = _run_everything(variant, a, step, dict({"dcn": None}, **upstream))

    for name, value in given.items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} was modified")
    for name, out in produced.items():
        assert not any(np.shares_memory(out, g) for g in given.values()), f"{name} aliases an input"


def test_loss_and_affine_do_not_modify_inputs(rng):
    x, y, mask = _loss_data(rng)
    copies = [x.copy(), y.copy(), mask.copy()]
    _, dx = ref.temporal_softmax_loss(x, y, mask)
    for original, copy in zip((x, y, mask), copies, strict=True):
        np.testing.assert_array_equal(original, copy)
    assert not np.shares_memory(dx, x)

    w, b = rng.standard_normal((6, 2)), rng.standard_normal(2)
    dout = rng.standard_normal((3, 4, 2))
    copies = [x.copy(), w.copy(), b.copy(), dout.copy()]
    out, cache = ref.temporal_affine_forward(x, w, b)
    grads = ref.temporal_affine_backward(dout, cache)
    for original, copy in zip((x, w, b, dout), copies, strict=True):
        np.testing.assert_array_equal(original, copy)
    for result in (out, *grads):
        assert not any(np.shares_memory(result, g) for g in (x, w, b, dout))


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_in_float32_out(rng, variant):
    a64 = _draw(variant, rng, 2, 3, 4, 5)
    a32 = {k: v.astype(np.float32) for k, v in a64.items()}
    up64 = _upstream(variant, rng, a64)
    up32 = {k: None if v is None else v.astype(np.float32) for k, v in up64.items()}
    produced32 = _run_everything(variant, a32, _step_inputs(a32), up32)
    produced64 = _run_everything(variant, a64, _step_inputs(a64), up64)
    for name, value in produced32.items():
        assert value.dtype == np.float32, f"{name} is {value.dtype}"
        assert_close_f32(value, produced64[name], name=name)


def test_float32_loss_and_affine(rng):
    x, y, mask = _loss_data(rng)
    loss, dx = ref.temporal_softmax_loss(x.astype(np.float32), y, mask)
    assert loss.dtype == np.float32 and dx.dtype == np.float32
    loss64, dx64 = ref.temporal_softmax_loss(x, y, mask)
    assert_close_f32(loss, loss64, name="loss")
    assert_close_f32(dx, dx64, name="dx")

    w, b = rng.standard_normal((6, 2)), rng.standard_normal(2)
    out, cache = ref.temporal_affine_forward(*(v.astype(np.float32) for v in (x, w, b)))
    grads = ref.temporal_affine_backward(np.ones(out.shape, np.float32), cache)
    assert all(v.dtype == np.float32 for v in (out, *grads))
