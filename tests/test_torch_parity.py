"""RNN, GRU and LSTM against PyTorch (``nn.RNN`` / ``nn.GRU`` / ``nn.LSTM`` and the
cells), layer by layer; the whole file skips without torch.

* the sequence functions of :mod:`rnncore.reference` and :mod:`rnncore.functional`
  (float64), every cell: outputs, final states and every gradient, with ``dhn`` /
  ``dcn`` given;
* the cells stepped by hand through BPTT (float32, float64), their names and repr;
* the models (``pack_padded_sequence`` for ``lengths``, float32 and float64):
  outputs, states, every gradient; parameter names, shapes and repr.

Tolerances: ``TOL["torch_f64_atol"]`` (float64) and ``assert_close_f32``
(float32) from conftest. The training utilities (losses, optimizers, layers,
clipping) are compared with PyTorch beside their formula checks, in their own files.
"""
import numpy as np
import pytest
from conftest import (CELLS, GATES, TOL, assert_close_f32, assert_close_f64, call_cell,
                      draw_sequence, kind_of, make_cell, make_model, n_states, randn,
                      run_backward, run_forward)

import rnncore
from rnncore import functional as F
from rnncore import reference as ref

torch = pytest.importorskip("torch")


def torch_model(cell, D, H, **kw):
    """torch's nn.RNN / nn.GRU / nn.LSTM for ``cell`` in CELLS."""
    kind = kind_of(cell)
    if kind == "rnn":
        return torch.nn.RNN(D, H, nonlinearity=cell.split("_")[1], **kw)
    return {"gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](D, H, **kw)


# ---------------------------------------------------------------------------
# Sequence functions: the reference and the functional API, float64
# ---------------------------------------------------------------------------
def _torch_run(module, a, up):
    """Run a batch_first torch module, backprop Σ out⊙dh + Σ h_n⊙dhn [+ Σ c_n⊙dcn]."""
    x = torch.tensor(a["x"], requires_grad=True)
    h0 = torch.tensor(a["h0"][None], requires_grad=True)
    dh, dhn = torch.tensor(up["dh"]), torch.tensor(up["dhn"])
    if "c0" not in a:
        out, h_n = module(x, h0)
        loss = (out * dh).sum() + (h_n[0] * dhn).sum()
    else:
        c0 = torch.tensor(a["c0"][None], requires_grad=True)
        out, (h_n, c_n) = module(x, (h0, c0))
        loss = (out * dh).sum() + (h_n[0] * dhn).sum() + (c_n[0] * torch.tensor(up["dcn"])).sum()
    loss.backward()
    result = {"h": out, "h_n": h_n[0], "dx": x.grad, "dh0": h0.grad[0],
              "dWx": module.weight_ih_l0.grad.T, "dWh": module.weight_hh_l0.grad.T,
              "dbias_ih": module.bias_ih_l0.grad, "dbias_hh": module.bias_hh_l0.grad}
    if "c0" in a:
        result.update(c_n=c_n[0], dc0=c0.grad[0])
    return {k: v.detach().numpy() for k, v in result.items()}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("api", ["reference", "functional"])
def test_sequence_functions_match_torch(rng, api, cell):
    N, T, D, H = 3, 4, 5, 6
    kind = kind_of(cell)
    mod = ref if api == "reference" else F
    a, up = draw_sequence(kind, rng, N, T, D, H)
    if kind == "gru":
        bias_ih, bias_hh = a["bx"], a["bh"]
    else:
        bias_ih = randn(rng, GATES[kind] * H)
        bias_hh = a["b"] - bias_ih  # ours: b = bias_ih + bias_hh
    module = torch_model(cell, D, H, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        for name, w in [("weight_ih_l0", a["Wx"].T), ("weight_hh_l0", a["Wh"].T),
                        ("bias_ih_l0", bias_ih), ("bias_hh_l0", bias_hh)]:
            getattr(module, name).copy_(torch.tensor(w))
    expected = _torch_run(module, a, up)

    if kind == "rnn":
        got = dict(zip(["h", "cache"], mod.rnn_forward(**a, nonlinearity=cell[4:])))
        grads = mod.rnn_backward(up["dh"], got.pop("cache"), dhn=up["dhn"])
        names = ["dx", "dh0", "dWx", "dWh", "dbias_ih"]
        got["dbias_hh"] = grads[-1]
    elif kind == "gru":
        got = dict(zip(["h", "cache"], mod.gru_forward(**a)))
        grads = mod.gru_backward(up["dh"], got.pop("cache"), dhn=up["dhn"])
        names = ["dx", "dh0", "dWx", "dWh", "dbias_ih", "dbias_hh"]
    else:
        got = dict(zip(["h", "c", "cache"], mod.lstm_forward(**a)))
        grads = mod.lstm_backward(up["dh"], got.pop("cache"), dhn=up["dhn"], dcn=up["dcn"])
        names = ["dx", "dh0", "dc0", "dWx", "dWh", "dbias_ih"]
        got["dbias_hh"] = grads[-1]
        got["c_n"] = got.pop("c")[:, -1]
    got.update(zip(names, grads), h_n=got["h"][:, -1])
    assert sorted(got) == sorted(expected)
    for name, e in expected.items():
        np.testing.assert_allclose(got[name], e, rtol=0, atol=TOL["torch_f64_atol"],
                                   err_msg=name)


# ---------------------------------------------------------------------------
# Cells
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", CELLS)
def test_cell_loop_bptt_matches_torch(rng, kind, dtype):
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
        st = call_cell(kind, cell, x[t], st)
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


def test_cell_names_match_torch():
    for ours, theirs in [(rnncore.RNNCell(3, 4), torch.nn.RNNCell(3, 4)),
                         (rnncore.GRUCell(3, 4), torch.nn.GRUCell(3, 4)),
                         (rnncore.LSTMCell(3, 4, bias=False), torch.nn.LSTMCell(3, 4, bias=False))]:
        assert {k: v.shape for k, v in ours.params.items()} == \
            {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
        assert repr(ours) == repr(theirs)


# ---------------------------------------------------------------------------
# Models: outputs, states and gradients, float32 and float64
# ---------------------------------------------------------------------------
TORCH_CONFIGS = {  # name: (constructor kwargs, unbatched)
    "plain": (dict(), False),
    "bf-bi-L2": (dict(batch_first=True, bidirectional=True, num_layers=2), False),
    "bi-L2-nobias": (dict(bidirectional=True, num_layers=2, bias=False), False),
    "L2-bf": (dict(num_layers=2, batch_first=True), False),
    "unbatched-bi-L2": (dict(bidirectional=True, num_layers=2), True),
    "unbatched-bf": (dict(batch_first=True), True),
}


def _torch_cases():
    cases = []
    for cell in CELLS:
        for cname, (_, unbatched) in TORCH_CONFIGS.items():
            for use_len in ([False] if unbatched else [False, True]):
                for dtype in ("float32", "float64"):
                    cases.append(pytest.param(
                        cell, cname, use_len, dtype,
                        id=f"{cell}-{cname}-{'len' if use_len else 'full'}-{dtype}"))
    return cases


def _torch_module(cell, D, H, dtype, rng, **kw):
    """A torch RNN/GRU/LSTM with weights drawn from ``rng`` (no global torch seed)."""
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    m = torch_model(cell, D, H, dtype=tdt, **kw)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.7, 0.7, size=tuple(p.shape))))
    return m


@pytest.mark.parametrize("cell, config, use_len, dtype", _torch_cases())
def test_model_matches_torch(rng, cell, config, use_len, dtype):
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    kw, unbatched = TORCH_CONFIGS[config]
    dtype = np.dtype(dtype)
    T, N, D, H = 5, 3, 4, 3
    L, nd, ns = kw.get("num_layers", 1), 2 if kw.get("bidirectional") else 1, n_states(cell)
    bf = kw.get("batch_first", False)
    tm = _torch_module(cell, D, H, dtype, rng, **kw)
    model = make_model(cell, D, H, dtype=dtype, seed=0, **kw)
    model.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})

    if unbatched:
        xshape, sshape, oshape = (T, D), (L * nd, H), (T, nd * H)
    else:
        xshape = (N, T, D) if bf else (T, N, D)
        sshape, oshape = (L * nd, N, H), xshape[:2] + (nd * H,)
    x = rng.standard_normal(xshape).astype(dtype)
    states0 = [rng.standard_normal(sshape).astype(dtype) for _ in range(ns)]
    dout = rng.standard_normal(oshape).astype(dtype)
    dstates_n = [rng.standard_normal(sshape).astype(dtype) for _ in range(ns)]
    lengths = np.array([3, 1, 5]) if use_len else None

    # torch
    xt = torch.tensor(x, requires_grad=True)
    st_t = [torch.tensor(s, requires_grad=True) for s in states0]
    hx = tuple(st_t) if ns == 2 else st_t[0]
    if use_len:
        packed = pack_padded_sequence(xt, torch.as_tensor(lengths), batch_first=bf,
                                      enforce_sorted=False)
        out_p, sn_t = tm(packed, hx)
        out_t, _ = pad_packed_sequence(out_p, batch_first=bf, total_length=T)
    else:
        out_t, sn_t = tm(xt, hx)
    sn_t = list(sn_t) if ns == 2 else [sn_t]
    loss = (out_t * torch.from_numpy(dout)).sum()
    for s, ds in zip(sn_t, dstates_n):
        loss = loss + (s * torch.from_numpy(ds)).sum()
    loss.backward()

    # rnncore
    out, sn = run_forward(model, x, states0, lengths=lengths)
    dx, ds0 = run_backward(model, dout, dstates_n)

    close = assert_close_f32 if dtype == np.float32 else (
        lambda a, e, name: assert_close_f64(a, e, atol=TOL["torch_f64_atol"], name=name))
    assert out.dtype == dtype and dx.dtype == dtype
    close(out, out_t.detach().numpy(), name="out")
    for si in range(ns):
        close(sn[si], sn_t[si].detach().numpy(), name=["h_n", "c_n"][si])
        close(ds0[si], st_t[si].grad.numpy(), name=["dh0", "dc0"][si])
    close(dx, xt.grad.numpy(), name="dx")
    tparams = dict(tm.named_parameters())
    assert list(model.grads) == list(tparams)
    for name, p in tparams.items():
        assert model.grads[name].dtype == dtype
        close(model.grads[name], p.grad.numpy(), name="d" + name)


# ---------------------------------------------------------------------------
# Models: parameter names, shapes and repr
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_parameter_names_and_shapes_match_torch(cell, L, bidirectional):
    for bias in (True, False):
        kw = dict(num_layers=L, bidirectional=bidirectional, bias=bias)
        ours = make_model(cell, 5, 3, seed=0, **kw)
        tm = torch_model(cell, 5, 3, **kw)
        assert [(k, v.shape) for k, v in ours.params.items()] == \
            [(k, tuple(v.shape)) for k, v in tm.state_dict().items()]
        assert list(ours.grads) == list(ours.params)
        assert ours.num_parameters() == sum(p.numel() for p in tm.parameters())


REPR_CASES = [
    ("rnn_tanh", 10, 20, dict(num_layers=2, bidirectional=True)),
    ("rnn_tanh", 10, 20, dict()),
    ("rnn_tanh", 3, 5, dict(num_layers=2, bias=False, batch_first=True, dropout=0.25)),
    ("gru", 7, 2, dict(num_layers=3, dropout=0.5, bidirectional=True)),
    ("gru", 7, 2, dict(batch_first=True)),
    ("lstm", 4, 8, dict(num_layers=2, bias=False, batch_first=True, dropout=0.1,
                        bidirectional=True)),
    ("lstm", 4, 8, dict()),
]


@pytest.mark.parametrize("cell, D, H, kw", REPR_CASES)
def test_repr_matches_torch(cell, D, H, kw):
    tm = torch_model(cell, D, H, **kw)
    assert repr(make_model(cell, D, H, **kw)) == repr(tm)
