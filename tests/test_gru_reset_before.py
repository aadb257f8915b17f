"""The reset-before GRU (``reset_after=False``): n = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn).

Kernel (``gru.forward/backward(reset_after=False)``) against the reference run
per sequence (float64 and float32; reverse, lengths, both layout kinds, both
weight layouts, N on the small, panel and BLAS per-step paths); the functional
API against finite differences; ``GRU(reset_after=False)`` (stacked,
bidirectional, lengths) against the model oracle; ``GRUCell(reset_after=False)``
fast and validated paths against the reference step; state dicts, config,
errors; Keras's ``GRU(reset_after=False)`` where installed.
"""
import numpy as np
import pytest
from _oracle import reference_run
from conftest import (DTYPE_IDS, DTYPES, GRAD_NAMES, assert_close, assert_close_f64,
                      draw_sequence, numerical_gradient)
from test_kernels import _batch_sizes, _gather_final, _time_major, reference_per_row, run_kernel

import rnncore
from rnncore import functional as F
from rnncore import reference as ref

#: (N, T, D, H) by per-step GEMM path: the small-M kernel (N <= 4), the panel
#: kernel (5..32 rows; H40 puts backward's H-column products on it too) and
#: BLAS (> 32 rows)
SIZES = {"small": (3, 5, 4, 6), "panel": (13, 6, 5, 11), "panel-H40": (13, 4, 5, 40),
         "blas": (40, 4, 3, 9)}


def _lengths(N, T, kind):
    if kind == "full":
        return None
    lens = np.linspace(T, 0 if kind == "with-empty" else 1, N).round().astype(int)
    return np.sort(lens)[::-1].copy()


@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor-W", "pytorch-W"])
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("lengths", ["full", "ragged", "with-empty"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", list(SIZES))
def test_kernel_matches_reference(size, reverse, lengths, batch_major, transposed, rng):
    N, T, D, H = SIZES[size]
    inp, up = _time_major("gru", rng, N, T, D, H)
    lens = _lengths(N, T, lengths)
    bs = None if lens is None else _batch_sizes(lens, T)
    if lens is None:
        lens = np.full(N, T)
    for n, L in enumerate(lens):
        up["dh"][L:, n] = np.nan       # padded upstream gradients are never read
    got = run_kernel("gru", inp, up, reverse=reverse, batch_sizes=bs, batch_major=batch_major,
                     transposed=transposed, reset_after=False)
    want = reference_per_row("gru", inp, up, lens, reverse, reset_after=False)
    for name in got:
        assert_close(got[name], want[name], name)
    assert_close(_gather_final(got["h"], lens, reverse, inp["h0"]), want["hn"], "h_n")
    for n, L in enumerate(lens):
        assert np.all(got["h"][L:, n] == 0) and np.all(got["dx"][L:, n] == 0)
    # really the other candidate
    other = reference_per_row("gru", inp, up, lens, reverse)
    assert np.max(np.abs(other["h"] - want["h"])) > 1e-3


@pytest.mark.parametrize("size", ["small", "blas"])
def test_kernel_float32(size, rng):
    N, T, D, H = SIZES[size]
    inp, up = _time_major("gru", rng, N, T, D, H, np.float32)
    lens = _lengths(N, T, "ragged")
    got = run_kernel("gru", inp, up, batch_sizes=_batch_sizes(lens, T), reset_after=False)
    want = reference_per_row("gru", inp, up, lens, False, reset_after=False)
    for name in got:
        assert_close(got[name], want[name], name)


@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", ["small", "panel"])
def test_kernel_overwrite_saved_and_accumulate(size, reverse, batch_major, rng):
    """overwrite_saved (dG over the saved gates; reset_h kept) is bitwise the default;
    weight gradients accumulate into what the arrays held."""
    N, T, D, H = SIZES[size]
    inp, up = _time_major("gru", rng, N, T, D, H)
    bs = _batch_sizes(_lengths(N, T, "ragged"), T)
    kw = dict(reverse=reverse, batch_sizes=bs, batch_major=batch_major, reset_after=False)
    want = run_kernel("gru", inp, up, **kw)
    got = run_kernel("gru", inp, up, once=True, **kw)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    preset = {k: rng.standard_normal(want[k].shape) for k in ("dWx", "dWh", "dbx", "dbh")}
    expected = {k: want[k] + v for k, v in preset.items()}   # (run_kernel may add in place)
    acc = run_kernel("gru", inp, up, preset=preset, **kw)
    for k, v in expected.items():
        assert_close_f64(acc[k], v, name=k)


def test_kernel_saved_of_the_other_layout_kind(rng):
    """A saved reset_h in the other layout kind than h (copied for the dWh pairing)."""
    from rnncore._kernels import gru as kgru
    N, T, D, H = 4, 5, 3, 6
    inp, up = _time_major("gru", rng, N, T, D, H)
    want = run_kernel("gru", inp, up, reset_after=False)
    x, h0 = inp["x"], inp["h0"]
    h = np.empty((T, N, H))
    saved = kgru.forward(x, h0, inp["Wx"], inp["Wh"], inp["bx"], inp["bh"], h,
                         reset_after=False)
    hn_bm = np.ascontiguousarray(saved.hidden_n.transpose(1, 0, 2)).transpose(1, 0, 2)
    dx, dh0 = np.empty_like(x), np.empty_like(h0)
    g = [np.zeros_like(inp["Wx"]), np.zeros_like(inp["Wh"]), np.zeros(3 * H), np.zeros(3 * H)]
    kgru.backward(up["dh"], up["dhn"], x, h0, inp["Wx"], inp["Wh"], inp["bh"], h,
                  kgru.GRUSaved(saved.gates, hn_bm), dx, dh0, *g, reset_after=False)
    for name, a in zip(("dx", "dh0", "dWx", "dWh", "dbx", "dbh"), [dx, dh0] + g):
        assert_close_f64(a, want[name], name=name)


# ---------------------------------------------------------------- functional API
@pytest.mark.parametrize("N, T, D, H", [(2, 3, 4, 5), (1, 1, 2, 1), (3, 4, 2, 3)])
def test_functional_matches_finite_differences(N, T, D, H, rng):
    inp, up = draw_sequence("gru", rng, N, T, D, H)
    h, cache = F.gru_forward(**inp, reset_after=False)
    grads = dict(zip(GRAD_NAMES["gru"], F.gru_backward(up["dh"], cache, dhn=up["dhn"])))
    dout = up["dh"].copy()
    dout[:, -1] += up["dhn"]           # h_n is h[:, -1]: its gradient adds there

    def f():
        return F.gru_forward(**inp, reset_after=False)[0]
    for name, key in [("dx", "x"), ("dh0", "h0"), ("dWx", "Wx"), ("dWh", "Wh"),
                      ("dbx", "bx"), ("dbh", "bh")]:
        num = numerical_gradient(f, inp[key], dout)
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_functional_step_is_the_kernel_and_matches_reference(rng):
    inp, up = draw_sequence("gru", rng, 3, 1, 4, 5)
    x = inp.pop("x")[:, 0]
    h, cache = F.gru_step_forward(x, *inp.values(), reset_after=False)
    assert isinstance(cache, F.GRUCache) and cache.reset_after is False
    h_r, cache_r = ref.gru_step_forward(x, *inp.values(), reset_after=False)
    assert_close_f64(h, h_r, name="h")
    got = F.gru_step_backward(up["dh"][:, 0], cache)
    want = ref.gru_step_backward(up["dh"][:, 0], cache_r)
    for name, a, e in zip(GRAD_NAMES["gru"], got, want):
        assert_close_f64(a, e, name=name)


# ---------------------------------------------------------------- models and cells
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_model_matches_oracle(dtype, batch_first, rng):
    T, N, D, H = 5, 4, 3, 6
    m = rnncore.GRU(D, H, num_layers=2, bidirectional=True, batch_first=batch_first,
                    dtype=dtype, seed=1, reset_after=False)
    x = rng.standard_normal((T, N, D)).astype(dtype)
    h0 = rng.standard_normal((4, N, H)).astype(dtype)
    lengths = np.array([5, 2, 4, 0])
    dout = rng.standard_normal((T, N, 2 * H)).astype(dtype)
    dhn = rng.standard_normal((4, N, H)).astype(dtype)
    xin = x.transpose(1, 0, 2) if batch_first else x
    out, hn = m(xin, h0, lengths=lengths)
    dx, dh0 = m.backward(dout.transpose(1, 0, 2) if batch_first else dout, dhn)
    want_out, finals, want_dx, want_ds0, grads = reference_run(m, x, [h0], lengths, dout, [dhn])
    if batch_first:
        out, dx = out.transpose(1, 0, 2), dx.transpose(1, 0, 2)
    assert_close(out, want_out, "out")
    assert_close(hn, finals[0], "h_n")
    assert_close(dx, want_dx, "dx")
    assert_close(dh0, want_ds0[0], "dh0")
    for name, g in grads.items():
        assert_close(m.grads[name], g, name)


def test_model_step_equals_forward(rng):
    m = rnncore.GRU(3, 5, num_layers=2, dtype=np.float64, seed=0, reset_after=False)
    x = rng.standard_normal((4, 2, 3))
    out, hn = m(x, train=False)
    h = None
    for t in range(4):
        y, h = m.step(x[t], h)
        assert_close_f64(y, out[t], name=f"y[{t}]")
    assert_close_f64(h, hn, name="h_n")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("fast", [True, False], ids=["fast-step", "validated"])
@pytest.mark.parametrize("N", [1, 7, 40])
def test_cell_matches_reference(N, fast, dtype, rng):
    D, H = 4, 6
    cell = rnncore.GRUCell(D, H, dtype=dtype, seed=2, reset_after=False)
    p = {k: v.astype(np.float64) for k, v in cell.params.items()}
    x = rng.standard_normal((N, D)).astype(dtype)
    h = rng.standard_normal((N, H)).astype(dtype)
    # a non-contiguous input skips the kernel's single-step entry point
    xin = x if fast else np.asfortranarray(x)
    h1 = cell(xin, h)
    dh = rng.standard_normal((N, H))
    dx, dhp = cell.backward(dh.astype(dtype))
    want, cache = ref.gru_step_forward(x.astype(np.float64), h.astype(np.float64),
                                       p["weight_ih"].T, p["weight_hh"].T, p["bias_ih"],
                                       p["bias_hh"], reset_after=False)
    gw = ref.gru_step_backward(dh, cache)
    assert_close(h1, want, "h")
    assert_close(dx, gw[0], "dx")
    assert_close(dhp, gw[1], "dh")
    for name, g in zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"),
                       (gw[2].T, gw[3].T, gw[4], gw[5])):
        assert_close(cell.grads[name], g, name)


def test_state_dict_config_and_repr():
    a = rnncore.GRU(3, 4, num_layers=2, seed=0, reset_after=False)
    b = rnncore.GRU(3, 4, num_layers=2, seed=5, reset_after=False)
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == rnncore.GRU(3, 4, num_layers=2).state_dict().keys()
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    assert a.get_config()["reset_after"] is False
    assert "reset_after=False" in repr(a) and "reset_after" not in repr(rnncore.GRU(3, 4))
    c = rnncore.GRUCell(3, 4, reset_after=False)
    assert c.get_config()["reset_after"] is False and "reset_after=False" in repr(c)
    # the same weights, the other candidate: different outputs
    d = rnncore.GRU(3, 4, num_layers=2)
    d.load_state_dict(a.state_dict())
    assert np.max(np.abs(d(x)[0] - a(x)[0])) > 1e-4


@pytest.mark.parametrize("bad", ["False", 0, None])
def test_reset_after_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="reset_after"):
        rnncore.GRU(3, 4, reset_after=bad)
    with pytest.raises(TypeError, match="reset_after"):
        rnncore.GRUCell(3, 4, reset_after=bad)


# ---------------------------------------------------------------- Keras
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_keras_gru_reset_before(rng, monkeypatch):
    """Keras's GRU(reset_after=False) (gates z, r, h; kernel (D, 3H)), weights mapped."""
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    N, T, D, H = 3, 6, 4, 5
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    layer = keras.layers.GRU(H, reset_after=False, return_sequences=True)
    y_keras = np.asarray(keras.ops.convert_to_numpy(layer(x)))
    kernel, recurrent, bias = [np.asarray(w, np.float64) for w in layer.get_weights()]

    def rzn(w):   # Keras packs z, r, h along the last axis
        z, r, n = np.split(w, 3, axis=-1)
        return np.concatenate([r, z, n], axis=-1)
    m = rnncore.GRU(D, H, batch_first=True, dtype=np.float64, reset_after=False)
    m.load_state_dict({"weight_ih_l0": rzn(kernel).T, "weight_hh_l0": rzn(recurrent).T,
                       "bias_ih_l0": rzn(bias), "bias_hh_l0": np.zeros(3 * H)})
    y, _ = m(x.astype(np.float64))
    np.testing.assert_allclose(y, y_keras, atol=2e-6)
