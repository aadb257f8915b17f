"""rnncore.functional (RNN, GRU, LSTM) against rnncore.reference.

* every output and every gradient, step and sequence functions, over the shape
  grid of conftest (edge cases T=1, N=1, H=1, D=1, D≠H), both nonlinearities,
  in float64 (1e-10 abs, against the float64 reference) and float32 (1e-5
  relative, against the float64 reference of the same inputs);
* the GRU's ``reset_after=False`` (the kernel's reset-before candidate);
* two chunks with the state carried == one run (forward and backward);
* Fortran-ordered, non-contiguous, transposed and read-only inputs; inputs never
  modified; T=0;
* errors: bad shapes and dtypes raise ValueError / TypeError naming the argument;
* NaN input propagates to NaN output of its own row only, without a crash.

The kernels themselves are called directly in ``test_kernels.py``.
"""
import numpy as np
import pytest
from conftest import (DTYPE_IDS, DTYPES, GATED, GRAD_NAMES, SHAPE_IDS, SHAPES, assert_close,
                      assert_close_f32, assert_close_f64, draw_sequence)

from rnncore import functional as F
from rnncore import reference as ref


# ---------------------------------------------------------------------------
# RNN (tanh, relu)
# ---------------------------------------------------------------------------
def _params(rng, N, T, D, H, dtype=np.float64, scale=0.5):
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H)) * 0.5
    Wx = rng.standard_normal((D, H)) * scale
    Wh = rng.standard_normal((H, H)) * scale
    b = rng.standard_normal(H) * 0.1
    return [a.astype(dtype) for a in (x, h0, Wx, Wh, b)]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_sequence_float64_matches_reference(rng, shape, nonlinearity):
    N, T, D, H = shape
    args = _params(rng, N, T, D, H)
    h, cache = F.rnn_forward(*args, nonlinearity=nonlinearity)
    h_ref, cache_ref = ref.rnn_forward(*args, nonlinearity=nonlinearity)
    assert_close_f64(h, h_ref, name="h")
    dh = rng.standard_normal((N, T, H))
    dhn = rng.standard_normal((N, H))
    got = F.rnn_backward(dh, cache, dhn=dhn)
    want = ref.rnn_backward(dh, cache_ref, dhn=dhn)
    for name, g, w in zip(["dx", "dh0", "dWx", "dWh", "db"], got, want):
        assert_close_f64(g, w, name=name)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES + [(16, 50, 32, 64)], ids=SHAPE_IDS + ["N16-T50-D32-H64"])
def test_sequence_float32_matches_reference(rng, shape, nonlinearity):
    N, T, D, H = shape
    args64 = _params(rng, N, T, D, H, scale=1 / np.sqrt(H))
    args32 = [a.astype(np.float32) for a in args64]
    h, cache = F.rnn_forward(*args32, nonlinearity=nonlinearity)
    assert h.dtype == np.float32
    h_ref, cache_ref = ref.rnn_forward(*args64, nonlinearity=nonlinearity)
    assert_close_f32(h, h_ref, name="h")
    dh = rng.standard_normal((N, T, H))
    got = F.rnn_backward(dh.astype(np.float32), cache)
    want = ref.rnn_backward(dh, cache_ref)
    for name, g, w in zip(["dx", "dh0", "dWx", "dWh", "db"], got, want):
        assert g.dtype == np.float32, name
        assert_close_f32(g, w, name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_step_functions_match_reference(rng, dtype, nonlinearity):
    N, D, H = 3, 4, 5
    x, h0, Wx, Wh, b = _params(rng, N, 1, D, H, dtype)
    x = x[:, 0]
    nh, cache = F.rnn_step_forward(x, h0, Wx, Wh, b, nonlinearity=nonlinearity)
    nh_ref, cache_ref = ref.rnn_step_forward(x, h0, Wx, Wh, b, nonlinearity=nonlinearity)
    check = assert_close_f64 if dtype == np.float64 else assert_close_f32
    check(nh, nh_ref, name="next_h")
    d = rng.standard_normal((N, H)).astype(dtype)
    for name, g, w in zip(["dx", "dprev_h", "dWx", "dWh", "db"],
                          F.rnn_step_backward(d, cache), ref.rnn_step_backward(d, cache_ref)):
        check(g, w, name=name)


def test_fortran_and_noncontiguous_inputs_give_same_result(rng):
    N, T, D, H = 3, 4, 5, 6
    x, h0, Wx, Wh, b = _params(rng, N, T, D, H)
    h, _ = F.rnn_forward(x, h0, Wx, Wh, b)
    big = np.zeros((N, 2 * T, D))
    big[:, ::2] = x
    h2, _ = F.rnn_forward(big[:, ::2], np.asfortranarray(h0), np.asfortranarray(Wx),
                          Wh[:, ::-1][:, ::-1], b)
    assert_close_f64(h2, h, atol=1e-13)
    # Fortran-ordered x, a strided (non-contiguous) bias
    h3, _ = F.rnn_forward(np.asfortranarray(x), h0, Wx, Wh, np.repeat(b, 2)[::2])
    assert_close_f64(h3, h, atol=1e-13)


def test_read_only_inputs_and_inputs_unchanged(rng):
    N, T, D, H = 2, 3, 4, 5
    args = _params(rng, N, T, D, H)
    copies = [a.copy() for a in args]
    for a in args:
        a.setflags(write=False)
    h, cache = F.rnn_forward(*args)
    dh = rng.standard_normal((N, T, H))
    dh.setflags(write=False)
    dh_copy = dh.copy()
    F.rnn_backward(dh, cache)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dh, dh_copy)


def test_nan_propagates_without_crash(rng):
    x, h0, Wx, Wh, b = _params(rng, 2, 4, 3, 3)
    x[0, 1, 0] = np.nan
    h, cache = F.rnn_forward(x, h0, Wx, Wh, b)
    assert np.all(np.isnan(h[0, 1:])) and np.all(np.isfinite(h[1]))
    dx, *_ = F.rnn_backward(np.ones_like(h), cache)
    assert np.isnan(dx[0]).any() and np.all(np.isfinite(dx[1]))


def test_zero_length_sequence(rng):
    x, h0, Wx, Wh, b = _params(rng, 2, 0, 3, 4)
    h, cache = F.rnn_forward(x, h0, Wx, Wh, b)
    assert h.shape == (2, 0, 4)
    dhn = rng.standard_normal((2, 4))
    dx, dh0, dWx, dWh, db = F.rnn_backward(np.zeros((2, 0, 4)), cache, dhn=dhn)
    assert dx.shape == (2, 0, 3)
    np.testing.assert_array_equal(dh0, dhn)
    assert not dWx.any() and not dWh.any() and not db.any()


@pytest.mark.parametrize("bad, exc, match", [
    (dict(x=np.zeros((2, 3))), ValueError, r"x: expected shape \(N, T, D\)"),
    (dict(h0=np.zeros((3, 5))), ValueError, r"h0: expected shape \(N, H\) = \(2, 5\)"),
    (dict(Wx=np.zeros((5, 5))), ValueError, r"Wx: expected shape \(D, H\) = \(4, 5\)"),
    (dict(Wh=np.zeros((5, 4))), ValueError, r"Wh: expected shape \(H, H\)"),
    (dict(b=np.zeros(4)), ValueError, r"b: expected shape \(H,\) = \(5,\)"),
    (dict(x=np.zeros((2, 3, 4), dtype=np.int64)), TypeError, r"x: expected a float32 or float64"),
    (dict(h0=np.zeros((2, 5), dtype=np.float32)), TypeError, r"h0: dtype float32 does not match"),
    (dict(x=np.zeros((2, 3, 4), dtype=np.complex128)), TypeError, r"x: expected a float32"),
    (dict(x=np.zeros((2, 3, 4), dtype=np.float16)), TypeError, r"x: expected a float32"),
    (dict(nonlinearity="sigmoid"), ValueError, r"nonlinearity: expected 'tanh' or 'relu'"),
])
def test_bad_input(rng, bad, exc, match):
    N, T, D, H = 2, 3, 4, 5
    x, h0, Wx, Wh, b = _params(rng, N, T, D, H)
    kw = dict(x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        F.rnn_forward(**kw)


def test_bad_backward_input(rng):
    x, h0, Wx, Wh, b = _params(rng, 2, 3, 4, 5)
    h, cache = F.rnn_forward(x, h0, Wx, Wh, b)
    with pytest.raises(ValueError, match=r"dh: expected shape \(N, T, H\) = \(2, 3, 5\)"):
        F.rnn_backward(np.zeros((2, 3, 4)), cache)
    with pytest.raises(ValueError, match=r"dhn: expected shape \(N, H\)"):
        F.rnn_backward(np.zeros((2, 3, 5)), cache, dhn=np.zeros(5))
    with pytest.raises(TypeError, match="cache"):
        F.rnn_backward(np.zeros((2, 3, 5)), (1, 2))
    _, step_cache = F.rnn_step_forward(x[:, 0], h0, Wx, Wh, b)
    with pytest.raises(TypeError, match="rnn_forward"):
        F.rnn_backward(np.zeros((2, 3, 5)), step_cache)


def _f64(d):
    return {k: np.asarray(v, dtype=np.float64) for k, v in d.items()}


def _sequence(mod, cell, inp, up):
    """Outputs and gradients of a whole sequence through ``mod`` (the reference or
    rnncore.functional: the same signatures), as a dict."""
    if cell == "gru":
        h, cache = mod.gru_forward(**inp)
        out = {"h": h}
        grads = mod.gru_backward(up["dh"], cache, dhn=up["dhn"])
    else:
        h, c, cache = mod.lstm_forward(**inp)
        out = {"h": h, "c": c}
        grads = mod.lstm_backward(up["dh"], cache, dhn=up["dhn"], dcn=up["dcn"])
    out.update(zip(GRAD_NAMES[cell], grads))
    return out


def _ref_sequence(cell, inp, up):
    return _sequence(ref, cell, inp, up)


def _functional_sequence(cell, inp, up):
    return _sequence(F, cell, inp, up)


def _wrong(a):
    """The same kind of array with one axis one longer."""
    shape = list(a.shape)
    shape[-1] += 1
    return np.zeros(shape, dtype=a.dtype)


# ---------------------------------------------------------------------------
# GRU and LSTM
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("cell", GATED)
def test_sequence_matches_reference(cell, shape, dtype, rng):
    inp, up = draw_sequence(cell, rng, *shape, dtype=dtype)
    got = _functional_sequence(cell, inp, up)
    want = _ref_sequence(cell, _f64(inp), _f64(up))
    assert set(got) == set(want)
    for name in want:
        assert got[name].dtype == dtype, name
        assert_close(got[name], want[name], name)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("cell", GATED)
def test_step_matches_reference(cell, shape, dtype, rng):
    N, _, D, H = shape
    inp, up = draw_sequence(cell, rng, N, 1, D, H, dtype=dtype)
    x, dnext_h = inp["x"][:, 0], up["dh"][:, 0]
    r64 = _f64(inp)
    if cell == "gru":
        args = (inp["h0"], inp["Wx"], inp["Wh"], inp["bx"], inp["bh"])
        h, cache = F.gru_step_forward(x, *args)
        h_r, cache_r = ref.gru_step_forward(r64["x"][:, 0], *(r64[k] for k in
                                            ("h0", "Wx", "Wh", "bx", "bh")))
        got = (h,) + F.gru_step_backward(dnext_h, cache)
        want = (h_r,) + ref.gru_step_backward(dnext_h.astype(np.float64), cache_r)
        names = ("next_h",) + GRAD_NAMES["gru"]
    else:
        dnext_c = up["dcn"]
        args = (inp["h0"], inp["c0"], inp["Wx"], inp["Wh"], inp["b"])
        h, c, cache = F.lstm_step_forward(x, *args)
        h_r, c_r, cache_r = ref.lstm_step_forward(r64["x"][:, 0], *(r64[k] for k in
                                                  ("h0", "c0", "Wx", "Wh", "b")))
        got = (h, c) + F.lstm_step_backward(dnext_h, dnext_c, cache)
        want = (h_r, c_r) + ref.lstm_step_backward(dnext_h.astype(np.float64),
                                                   dnext_c.astype(np.float64), cache_r)
        names = ("next_h", "next_c") + GRAD_NAMES["lstm"]
    for name, a, e in zip(names, got, want):
        assert a.dtype == dtype, name
        # step gradients come back in the step's shapes: dx (N, D), dprev_h (N, H)
        assert_close(a, e, name)


@pytest.mark.parametrize("cell", GATED)
def test_final_state_gradients_default_to_zero(cell, rng):
    inp, up = draw_sequence(cell, rng, 2, 4, 3, 5)
    if cell == "gru":
        _, cache = F.gru_forward(**inp)
        got = F.gru_backward(up["dh"], cache)
        want = ref.gru_backward(up["dh"], ref.gru_forward(**inp)[1])
    else:
        _, _, cache = F.lstm_forward(**inp)
        got = F.lstm_backward(up["dh"], cache)
        want = ref.lstm_backward(up["dh"], ref.lstm_forward(**inp)[2])
    for name, a, e in zip(GRAD_NAMES[cell], got, want):
        assert_close(a, e, name)


def test_lstm_c0_none_means_zeros(rng):
    inp, up = draw_sequence("lstm", rng, 3, 4, 2, 3)
    inp.pop("c0")
    h, c, cache = F.lstm_forward(**inp)
    h_r, c_r, cache_r = ref.lstm_forward(**inp)
    assert_close(h, h_r, "h")
    assert_close(c, c_r, "c")
    got = F.lstm_backward(up["dh"], cache, dcn=up["dcn"])
    want = ref.lstm_backward(up["dh"], cache_r, dcn=up["dcn"])
    for name, a, e in zip(GRAD_NAMES["lstm"], got, want):
        assert_close(a, e, name)


@pytest.mark.parametrize("step", [False, True], ids=["sequence", "step"])
def test_gru_reset_before_matches_reference(step, rng):
    """reset_after=False (the kernel's reset-before path) equals the reference."""
    inp, up = draw_sequence("gru", rng, 2, 3, 4, 5)
    if step:
        x, dnext_h = inp.pop("x")[:, 0], up["dh"][:, 0]
        h, cache = F.gru_step_forward(x, *inp.values(), reset_after=False)
        h_r, cache_r = ref.gru_step_forward(x, *inp.values(), reset_after=False)
        got = (h,) + F.gru_step_backward(dnext_h, cache)
        want = (h_r,) + ref.gru_step_backward(dnext_h, cache_r)
    else:
        h, cache = F.gru_forward(**inp, reset_after=False)
        h_r, cache_r = ref.gru_forward(**inp, reset_after=False)
        got = (h,) + F.gru_backward(up["dh"], cache, dhn=up["dhn"])
        want = (h_r,) + ref.gru_backward(up["dh"], cache_r, dhn=up["dhn"])
    # and it is really the other variant
    h_after = F.gru_step_forward(x, *inp.values())[0] if step else F.gru_forward(**inp)[0]
    assert not np.allclose(h, h_after)
    for name, a, e in zip(("h",) + GRAD_NAMES["gru"], got, want):
        assert_close(a, e, name)


@pytest.mark.parametrize("cell", GATED)
def test_two_chunks_equal_one_run(cell, rng):
    """Karpathy's check: the state carried across a split, forward and backward."""
    inp, up = draw_sequence(cell, rng, 3, 7, 4, 5)
    full = _functional_sequence(cell, inp, up)
    a, b = slice(0, 3), slice(3, 7)
    first = dict(inp, x=inp["x"][:, a])
    if cell == "gru":
        h1, c1 = F.gru_forward(**first)
        h2, c2 = F.gru_forward(**dict(inp, x=inp["x"][:, b], h0=h1[:, -1]))
        g2 = F.gru_backward(up["dh"][:, b], c2, dhn=up["dhn"])
        g1 = F.gru_backward(up["dh"][:, a], c1, dhn=g2[1])
    else:
        h1, cc1, c1 = F.lstm_forward(**first)
        h2, cc2, c2 = F.lstm_forward(**dict(inp, x=inp["x"][:, b], h0=h1[:, -1],
                                            c0=cc1[:, -1]))
        g2 = F.lstm_backward(up["dh"][:, b], c2, dhn=up["dhn"], dcn=up["dcn"])
        g1 = F.lstm_backward(up["dh"][:, a], c1, dhn=g2[1], dcn=g2[2])
        assert_close(np.concatenate([cc1, cc2], axis=1), full["c"], "c")
    assert_close(np.concatenate([h1, h2], axis=1), full["h"], "h")
    names = GRAD_NAMES[cell]
    assert_close(np.concatenate([g1[0], g2[0]], axis=1), full["dx"], "dx")
    for i, name in enumerate(names[1:], start=1):
        # states: from the first chunk; weights: summed over the chunks
        want = full[name]
        got = g1[i] if name in ("dh0", "dc0") else g1[i] + g2[i]
        assert_close(got, want, name)


@pytest.mark.parametrize("cell", GATED)
def test_functional_read_only_and_unmodified(cell, rng):
    inp, up = draw_sequence(cell, rng, 2, 3, 4, 3)
    want = _functional_sequence(cell, inp, up)
    before = {k: v.copy() for k, v in {**inp, **up}.items()}
    for v in {**inp, **up}.values():
        v.flags.writeable = False
    got = _functional_sequence(cell, inp, up)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    for k, v in before.items():
        assert np.array_equal({**inp, **up}[k], v), f"{k} was modified"


@pytest.mark.parametrize("cell", GATED)
def test_functional_non_contiguous_and_transposed_inputs(cell, rng):
    inp, up = draw_sequence(cell, rng, 3, 4, 5, 2)
    want = _ref_sequence(cell, inp, up)
    odd = dict(inp)
    odd["x"] = np.asfortranarray(inp["x"])
    odd["Wx"] = np.ascontiguousarray(inp["Wx"].T).T   # transposed views
    odd["Wh"] = np.ascontiguousarray(inp["Wh"].T).T
    odd["h0"] = np.asfortranarray(inp["h0"])
    wide = np.zeros((inp["Wx"].shape[0], 2 * inp["Wx"].shape[1]))
    wide[:, ::2] = inp["Wx"]
    odd["Wx"] = wide[:, ::2]   # strided: copied by the API
    got = _functional_sequence(cell, odd, dict(up, dh=np.asfortranarray(up["dh"])))
    for k in want:
        assert_close(got[k], want[k], k)


@pytest.mark.parametrize("cell", GATED)
def test_functional_bad_arguments(cell, rng):
    inp, up = draw_sequence(cell, rng, 2, 3, 4, 5)
    fwd = F.gru_forward if cell == "gru" else F.lstm_forward
    for name in inp:
        wrong = inp["x"][0] if name == "x" else _wrong(inp[name])
        with pytest.raises(ValueError, match=rf"^{name}: expected shape"):
            fwd(**dict(inp, **{name: wrong}))
    with pytest.raises(TypeError, match="^Wh: dtype"):
        fwd(**dict(inp, Wh=inp["Wh"].astype(np.float32)))
    with pytest.raises(TypeError, match="^x: expected a float"):
        fwd(**dict(inp, x=inp["x"].astype(int)))
    out = fwd(**inp)
    cache = out[-1]
    if cell == "gru":
        with pytest.raises(ValueError, match="^dh: expected shape"):
            F.gru_backward(_wrong(up["dh"]), cache)
        with pytest.raises(ValueError, match="^dhn: expected shape"):
            F.gru_backward(up["dh"], cache, dhn=_wrong(up["dhn"]))
        with pytest.raises(TypeError, match="^cache"):
            F.gru_step_backward(up["dh"][:, 0], cache)
        step_args = (inp["x"][:, 0], inp["h0"], inp["Wx"], inp["Wh"], inp["bx"], inp["bh"])
        with pytest.raises(ValueError, match="^prev_h: expected shape"):
            F.gru_step_forward(step_args[0], _wrong(inp["h0"]), *step_args[2:])
        _, scache = F.gru_step_forward(*step_args)
        with pytest.raises(ValueError, match="^dnext_h: expected shape"):
            F.gru_step_backward(_wrong(up["dhn"]), scache)
    else:
        with pytest.raises(ValueError, match="^dcn: expected shape"):
            F.lstm_backward(up["dh"], cache, dcn=_wrong(up["dcn"]))
        with pytest.raises(TypeError, match="^cache"):
            F.lstm_backward(up["dh"], "not a cache")
        step_args = (inp["x"][:, 0], inp["h0"], inp["c0"], inp["Wx"], inp["Wh"], inp["b"])
        with pytest.raises(ValueError, match="^prev_c: expected shape"):
            F.lstm_step_forward(*step_args[:2], _wrong(inp["c0"]), *step_args[3:])
        _, _, scache = F.lstm_step_forward(*step_args)
        with pytest.raises(ValueError, match="^dnext_c: expected shape"):
            F.lstm_step_backward(up["dhn"], _wrong(up["dcn"]), scache)


# ---------------------------------------------------------------------------
# NaN
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("cell", GATED)
def test_nan_input_propagates_to_its_row(cell, dtype, rng):
    N, T, D, H = 3, 5, 4, 6
    inp, up = draw_sequence(cell, rng, N, T, D, H, dtype)
    inp["x"][1, 2, 0] = np.nan
    out = _functional_sequence(cell, inp, up)
    h = out["h"]
    assert np.all(np.isnan(h[1, 2:])), "NaN must reach every later state of its row"
    assert np.all(np.isfinite(h[1, :2])) and np.all(np.isfinite(h[[0, 2]]))
    # backward ran; the NaN reaches its row's input gradients, not the other rows'
    assert np.all(np.isnan(out["dx"][1]))
    assert np.all(np.isfinite(out["dx"][[0, 2]]))
    assert np.all(np.isnan(out["dWx"]).any(axis=0))
