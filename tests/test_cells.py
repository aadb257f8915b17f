"""Single-step cells (RNNCell, GRUCell, LSTMCell) and the models' step()."""
import numpy as np
import pytest

from conftest import CELLS, assert_close_f64, call_cell, make_cell
import rnncore
from rnncore import reference as R


def ref_step(kind, cell, x, state):
    """The reference step function for ``cell``'s parameters (PyTorch layout)."""
    p = cell.params
    Wx, Wh = p["weight_ih"].T, p["weight_hh"].T
    bi = p.get("bias_ih", np.zeros(Wx.shape[1]))
    bh = p.get("bias_hh", np.zeros(Wx.shape[1]))
    if kind.startswith("rnn"):
        h, cache = R.rnn_step_forward(x, state[0], Wx, Wh, bi + bh, nonlinearity=kind[4:])
        return [h], cache
    if kind == "gru":
        h, cache = R.gru_step_forward(x, state[0], Wx, Wh, bi, bh)
        return [h], cache
    h, c, cache = R.lstm_step_forward(x, state[0], state[1], Wx, Wh, bi + bh)
    return [h, c], cache


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", CELLS)
def test_cell_step_matches_reference(rng, kind, bias):
    N, D, H = 3, 4, 5
    cell = make_cell(kind, D, H, bias=bias, dtype=np.float64, seed=1)
    ns = 2 if kind == "lstm" else 1
    x = rng.standard_normal((N, D))
    st = [rng.standard_normal((N, H)) for _ in range(ns)]
    got = call_cell(kind, cell, x, st)
    want, cache = ref_step(kind, cell, x, st)
    for g, w in zip(got, want):
        assert_close_f64(g, w, name="state")
    d = [rng.standard_normal((N, H)) for _ in range(ns)]
    if kind == "lstm":
        dx, (dh, dc) = cell.backward(d[0], d[1])
        rdx, rdh, rdc, rdWx, rdWh, rdb = R.lstm_step_backward(d[0], d[1], cache)
        assert_close_f64(dc, rdc, name="dc")
        rdbi = rdbh = rdb
    elif kind == "gru":
        dx, dh = cell.backward(d[0])
        rdx, rdh, rdWx, rdWh, rdbi, rdbh = R.gru_step_backward(d[0], cache)
    else:
        dx, dh = cell.backward(d[0])
        rdx, rdh, rdWx, rdWh, rdbi = R.rnn_step_backward(d[0], cache)
        rdbh = rdbi
    assert_close_f64(dx, rdx, name="dx")
    assert_close_f64(dh, rdh, name="dh")
    assert_close_f64(cell.grads["weight_ih"], rdWx.T, name="dweight_ih")
    assert_close_f64(cell.grads["weight_hh"], rdWh.T, name="dweight_hh")
    if bias:
        assert_close_f64(cell.grads["bias_ih"], rdbi, name="dbias_ih")
        assert_close_f64(cell.grads["bias_hh"], rdbh, name="dbias_hh")


@pytest.mark.parametrize("kind", CELLS)
def test_unbatched_and_default_state(rng, kind):
    cell = make_cell(kind, 3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal(3)
    out = call_cell(kind, cell, x, [None] * (2 if kind == "lstm" else 1), train=False)
    ref = call_cell(kind, cell, x[None], [np.zeros((1, 4))] * (2 if kind == "lstm" else 1),
               train=False)
    for a, b in zip(out, ref):
        assert a.shape == (4,)
        assert_close_f64(a, b[0])


def _slow_view(a):
    """The same values in a layout the fast step path refuses (not C-contiguous)."""
    b = np.empty(a.shape + (2,), a.dtype)[..., 0]
    b[...] = a
    return b


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("unbatched", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", CELLS)
def test_fast_step_path_equals_validated_path(rng, kind, dtype, bias, unbatched, train):
    """Well-formed arrays take the kernels' single-step entry point (no memoryviews);
    anything else the validated path. Both must give bitwise the same states and,
    through backward, the same gradients."""
    N, D, H = 3, 5, 6
    ns = 2 if kind == "lstm" else 1
    shape = (lambda *s: s[1:]) if unbatched else (lambda *s: s)
    x = rng.standard_normal(shape(N, D)).astype(dtype)
    st = [(rng.standard_normal(shape(N, H)) * 0.5).astype(dtype) for _ in range(ns)]
    d = [rng.standard_normal(shape(N, H)).astype(dtype) for _ in range(ns)]
    fast, slow = (make_cell(kind, D, H, bias=bias, dtype=dtype, seed=3) for _ in range(2))
    calls = []
    orig = type(slow._kernel).forward

    def spy(self, *a):
        calls.append(1)
        return orig(self, *a)
    type(slow._kernel).forward = spy
    try:
        out_f = call_cell(kind, fast, x, st, train=train)
        n_fast = len(calls)
        out_s = call_cell(kind, slow, _slow_view(x), [_slow_view(s) for s in st], train=train)
    finally:
        type(slow._kernel).forward = orig
    assert n_fast == 0 and len(calls) == 1      # the paths really were the two paths
    for a, b in zip(out_f, out_s):
        assert a.shape == shape(N, H) and a.dtype == dtype
        np.testing.assert_array_equal(a, b)
    if not train:
        with pytest.raises(RuntimeError, match="preceding forward"):
            fast.backward(*d)
        return
    (dx_f, ds_f), (dx_s, ds_s) = fast.backward(*d), slow.backward(*d)
    np.testing.assert_array_equal(dx_f, dx_s)
    np.testing.assert_array_equal(np.asarray(ds_f), np.asarray(ds_s))
    for k in fast.grads:
        np.testing.assert_array_equal(fast.grads[k], slow.grads[k], err_msg=k)


@pytest.mark.parametrize("kind", CELLS)
def test_fast_step_default_state_and_reference(rng, kind):
    """hx=None on the fast path: zeros; checked against the reference in float64."""
    N, D, H = 2, 3, 4
    cell = make_cell(kind, D, H, dtype=np.float64, seed=5)
    x = rng.standard_normal((N, D))
    ns = 2 if kind == "lstm" else 1
    got = cell(x, None, train=False)
    got = list(got) if kind == "lstm" else [got]
    want, _ = ref_step(kind, cell, x, [np.zeros((N, H))] * ns)
    for g, w in zip(got, want):
        assert_close_f64(g, w, name="state")


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_kernel_step_refuses_without_touching(rng, kind):
    """The kernels' step entry points return False, writing nothing, for anything
    that is not C-contiguous, non-empty, one dtype, of the right shapes."""
    from rnncore._kernels import gru, lstm, rnn
    N, D, H = 2, 3, 4
    G = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    f32 = np.float32

    def args(**over):
        a = dict(x=np.ones((N, D), f32), h0=np.ones((N, H), f32), c0=np.ones((N, H), f32),
                 w_ih=np.ones((G * H, D), f32), w_hh=np.ones((G * H, H), f32),
                 b_ih=np.ones(G * H, f32), b_hh=np.ones(G * H, f32),
                 h=np.full((N, H), 7, f32), c=np.full((N, H), 7, f32),
                 gates=np.full((1, N, G * H), 7, f32), hidden_n=np.full((1, N, H), 7, f32))
        a.update(over)
        return a

    def run(a):
        if kind == "rnn":
            return rnn.step(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                            a["h"], D, H)
        if kind == "gru":
            return gru.step(a["x"], a["h0"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"],
                            a["h"], a["gates"], a["hidden_n"], D, H)
        return lstm.step(a["x"], a["h0"], a["c0"], a["w_ih"], a["w_hh"], a["b_ih"],
                         a["b_hh"], a["h"], a["c"], a["gates"], D, H)

    ro = np.full((N, H), 7, f32)
    ro.flags.writeable = False
    bad = {
        "x": [np.ones((N, D)), np.ones((N, D + 1), f32), np.ones((D, N), f32).T,
              np.ones((0, D), f32), [[1.0] * D] * N, None, np.ones((1, N, D), f32)],
        "h0": [np.ones((N + 1, H), f32), np.ones(H, f32), np.ones((N, H))],
        "w_ih": [np.ones((D, G * H), f32), np.ones((G * H, D), f32).T.copy().T],
        "w_hh": [np.ones((G * H, H + 1), f32)],
        "b_hh": [np.ones(G * H + 1, f32), np.ones((1, G * H), f32)],
        "h": [ro, np.ones((N, H), f32)[::-1]],
        "gates": [np.ones((N, G * H + 1), f32)] if kind != "rnn" else [],
    }
    assert run(args()) is True
    for name, values in bad.items():
        for v in values:
            a = args(**{name: v})
            assert run(a) is False, (name, v)
            for out in ("h", "c", "gates", "hidden_n"):
                if out != name:
                    assert np.all(a[out] == 7), (name, out)


def test_cell_errors(rng):
    cell = rnncore.RNNCell(3, 4)
    with pytest.raises(ValueError, match=r"input: expected shape \(N, D\) or \(D,\) with D = 3"):
        cell(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"hx: expected shape \(N, H\)"):
        cell(np.zeros((2, 3), np.float32), np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="input: dtype float64 does not match"):
        cell(np.zeros((2, 3)))
    with pytest.raises(RuntimeError, match="preceding forward"):
        cell.backward(np.zeros((2, 4), np.float32))
    cell(np.zeros((2, 3), np.float32), train=False)
    with pytest.raises(RuntimeError, match="preceding forward"):
        cell.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="nonlinearity"):
        rnncore.RNNCell(3, 4, nonlinearity="gelu")
    with pytest.raises(TypeError, match="hx: expected a pair"):
        rnncore.LSTMCell(3, 4)(np.zeros((1, 3), np.float32), np.zeros((1, 4), np.float32))


@pytest.mark.parametrize("cls", [rnncore.RNN, rnncore.GRU, rnncore.LSTM])
def test_model_step_equals_forward(rng, cls):
    m = cls(3, 4, num_layers=3, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 2, 3))
    ns = 2 if cls is rnncore.LSTM else 1
    s0 = [rng.standard_normal((3, 2, 4)) for _ in range(ns)]
    if cls is rnncore.LSTM:
        out, (hn, cn) = m(x, tuple(s0), train=False)
        fin = [hn, cn]
        s = tuple(s0)
    else:
        out, hn = m(x, s0[0], train=False)
        fin = [hn]
        s = s0[0]
    ys = []
    for t in range(6):
        y, s = m.step(x[t], s)
        ys.append(y)
    assert_close_f64(np.stack(ys), out, name="out")
    for a, b in zip(s if cls is rnncore.LSTM else [s], fin):
        assert_close_f64(a, b, name="state")


def test_model_step_errors():
    with pytest.raises(ValueError, match="unidirectional"):
        rnncore.GRU(3, 4, bidirectional=True).step(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"x: expected shape \(N, D\)"):
        rnncore.RNN(3, 4).step(np.zeros((1, 2), np.float32))
