"""Single-step cells (RNNCell, GRUCell, LSTMCell) and the models' step()."""
import numpy as np
import pytest

from conftest import TOL, assert_close_f32, assert_close_f64
import rnncore
from rnncore import reference as R

CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]


def make_cell(kind, D, H, **kw):
    if kind.startswith("rnn"):
        return rnncore.RNNCell(D, H, nonlinearity=kind[4:], **kw)
    return {"gru": rnncore.GRUCell, "lstm": rnncore.LSTMCell}[kind](D, H, **kw)


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


def call(kind, cell, x, state, train=True):
    if kind == "lstm":
        return list(cell(x, tuple(state), train=train))
    return [cell(x, state[0], train=train)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", CELLS)
def test_cell_step_matches_reference(rng, kind, bias):
    N, D, H = 3, 4, 5
    cell = make_cell(kind, D, H, bias=bias, dtype=np.float64, seed=1)
    ns = 2 if kind == "lstm" else 1
    x = rng.standard_normal((N, D))
    st = [rng.standard_normal((N, H)) for _ in range(ns)]
    got = call(kind, cell, x, st)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", CELLS)
def test_cell_loop_bptt_matches_torch(rng, kind, dtype):
    torch = pytest.importorskip("torch")
    T, N, D, H = 5, 2, 3, 4
    cell = make_cell(kind, D, H, dtype=dtype, seed=0)
    tcls = {"gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}.get(kind)
    tcell = (tcls(D, H) if tcls else torch.nn.RNNCell(D, H, nonlinearity=kind[4:]))
    tcell = tcell.double() if dtype == np.float64 else tcell
    cell.load_state_dict({k: v.detach().numpy() for k, v in tcell.state_dict().items()})
    ns = 2 if kind == "lstm" else 1
    x = rng.standard_normal((T, N, D)).astype(dtype)
    dh = rng.standard_normal((T, N, H)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    st = [np.zeros((N, H), dtype) for _ in range(ns)]
    tst = [torch.zeros(N, H, dtype=xt.dtype, requires_grad=True) for _ in range(ns)]
    hs, ths, cur = [], [], tst
    for t in range(T):
        st = call(kind, cell, x[t], st)
        hs.append(st[0])
        cur = list(tcell(xt[t], tuple(cur))) if kind == "lstm" else [tcell(xt[t], cur[0])]
        ths.append(cur[0])
    (torch.stack(ths) * torch.tensor(dh)).sum().backward()
    dnext = [np.zeros((N, H), dtype) for _ in range(ns)]
    dx = np.zeros_like(x)
    for t in reversed(range(T)):
        if kind == "lstm":
            dx[t], (a, b) = cell.backward(dh[t] + dnext[0], dnext[1])
            dnext = [a, b]
        else:
            dx[t], a = cell.backward(dh[t] + dnext[0])
            dnext = [a]
    check = (lambda a, b, name: assert_close_f64(a, b, atol=TOL["torch_f64_atol"], name=name)) \
        if dtype == np.float64 else (lambda a, b, name: assert_close_f32(a, b, name=name))
    check(np.stack(hs), torch.stack(ths).detach().numpy(), "h")
    check(dx, xt.grad.numpy(), "dx")
    for a, t0 in zip(dnext, tst):
        check(a, t0.grad.numpy(), "dstate0")
    for k, p in tcell.named_parameters():
        check(cell.grads[k], p.grad.numpy(), "d" + k)


@pytest.mark.parametrize("kind", CELLS)
def test_unbatched_and_default_state(rng, kind):
    cell = make_cell(kind, 3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal(3)
    out = call(kind, cell, x, [None] * (2 if kind == "lstm" else 1), train=False)
    ref = call(kind, cell, x[None], [np.zeros((1, 4))] * (2 if kind == "lstm" else 1),
               train=False)
    for a, b in zip(out, ref):
        assert a.shape == (4,)
        assert_close_f64(a, b[0])


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


def test_cell_names_match_torch():
    torch = pytest.importorskip("torch")
    for ours, theirs in [(rnncore.RNNCell(3, 4), torch.nn.RNNCell(3, 4)),
                         (rnncore.GRUCell(3, 4), torch.nn.GRUCell(3, 4)),
                         (rnncore.LSTMCell(3, 4, bias=False), torch.nn.LSTMCell(3, 4, bias=False))]:
        assert {k: v.shape for k, v in ours.params.items()} == \
            {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert repr(ours) == repr(theirs)


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
