"""The projected LSTM (PyTorch's ``proj_size``): h_t = (o ⊙ tanh(c_t)) W_hr^T.

The reference against finite differences (float64); the kernel
(``lstm.forward(Wr=...)``, ``lstm.backward(proj=(Wr, dWr))``) against the
reference run per sequence (reverse, lengths, both layout kinds, both weight
layouts, N on the small, panel and BLAS per-step paths); ``LSTM(proj_size=P)``
(stacked, bidirectional, lengths, batch_first) against ``torch.nn.LSTM`` in
float32 and float64, every output and gradient; state dicts both ways; step;
config; errors. ``LSTMCell`` has no ``proj_size`` (PyTorch's has none either).
"""
import numpy as np
import pytest
from conftest import assert_close, assert_close_f64, numerical_gradient, randn
from test_kernels import _batch_sizes, _empty_seq, _mat, _seq

import rnncore
from rnncore import reference as ref
from rnncore._kernels import lstm as klstm

GRADS = ("dx", "dh0", "dc0", "dWx", "dWh", "db", "dWr")
#: (N, T, D, H, P) by per-step GEMM path: small-M (N <= 4), panel (5..32), BLAS (> 32)
SIZES = {"small": (3, 5, 4, 6, 2), "panel": (13, 6, 5, 11, 7), "blas": (40, 4, 3, 9, 4)}


def _draw(rng, N, T, D, H, P, dtype=np.float64):
    """Time-major inputs (x (T, N, D), h0 (N, P), c0 (N, H), Wx, Wh (P, 4H), b, Wr (H, P))
    and upstream gradients (dh (T, N, P), dhn, dcn)."""
    inp = dict(x=rng.standard_normal((T, N, D)), h0=randn(rng, N, P), c0=randn(rng, N, H),
               Wx=randn(rng, D, 4 * H), Wh=randn(rng, P, 4 * H), b=randn(rng, 4 * H),
               Wr=randn(rng, H, P))
    up = dict(dh=rng.standard_normal((T, N, P)), dhn=rng.standard_normal((N, P)),
              dcn=rng.standard_normal((N, H)))
    return ({k: v.astype(dtype) for k, v in inp.items()},
            {k: v.astype(dtype) for k, v in up.items()})


def _kernel(inp, up, reverse, bs, batch_major, transposed):
    x = _seq(inp["x"], batch_major)
    T, N, D = x.shape
    H, P = inp["Wr"].shape
    dt = x.dtype
    Wx, Wh, Wr = (_mat(inp[k], transposed) for k in ("Wx", "Wh", "Wr"))
    h, c = _empty_seq(T, N, P, dt, batch_major), _empty_seq(T, N, H, dt, batch_major)
    out = dict(dx=_empty_seq(T, N, D, dt, batch_major), dh0=np.full((N, P), np.nan),
               dc0=np.full((N, H), np.nan), dWx=_mat(np.zeros((D, 4 * H)), transposed),
               dWh=_mat(np.zeros((P, 4 * H)), transposed), db=np.zeros(4 * H),
               dWr=_mat(np.zeros((H, P)), transposed))
    out = {k: v.astype(dt) for k, v in out.items()}
    saved = klstm.forward(x, inp["h0"], inp["c0"], Wx, Wh, inp["b"], h, c, reverse, bs, Wr)
    klstm.backward(_seq(up["dh"], batch_major), up["dhn"], up["dcn"], x, inp["h0"],
                   inp["c0"], Wx, Wh, h, c, saved, out["dx"], out["dh0"], out["dc0"],
                   out["dWx"], out["dWh"], out["db"], reverse, bs, proj=(Wr, out["dWr"]))
    return dict(out, h=np.array(h), c=np.array(c))


def _reference(inp, up, lens, reverse):
    """The reference per sequence on its valid prefix (reversed in reverse), float64."""
    T, N, D = inp["x"].shape
    H, P = inp["Wr"].shape
    f = {k: np.asarray(v, np.float64) for k, v in inp.items()}
    want = dict(h=np.zeros((T, N, P)), c=np.zeros((T, N, H)), dx=np.zeros((T, N, D)),
                dh0=np.zeros((N, P)), dc0=np.zeros((N, H)))
    want.update(dWx=0, dWh=0, db=0, dWr=0)
    for n, L in enumerate(lens):
        steps = np.arange(L)[::-1] if reverse else np.arange(L)
        h, c, cache = ref.lstm_forward(f["x"][steps, n][None], f["h0"][n:n + 1], f["Wx"],
                                       f["Wh"], f["b"], c0=f["c0"][n:n + 1], Wr=f["Wr"])
        g = dict(zip(GRADS, ref.lstm_backward(up["dh"][steps, n][None].astype(np.float64),
                                              cache, dhn=up["dhn"][n:n + 1],
                                              dcn=up["dcn"][n:n + 1])))
        want["h"][steps, n], want["c"][steps, n], want["dx"][steps, n] = h[0], c[0], g["dx"][0]
        want["dh0"][n], want["dc0"][n] = g["dh0"][0], g["dc0"][0]
        for k in ("dWx", "dWh", "db", "dWr"):
            want[k] = want[k] + g[k]
    return want


def check_kernel_lengths_reverse(rng, N, T, D, H, P):
    """The kernel (PyTorch-layout weights) against the reference in float64, both
    directions: all rows full (time-major), and sorted random lengths (batch-major)."""
    inp, up = _draw(rng, N, T, D, H, P)
    lens = np.sort(rng.integers(1, T + 1, N))[::-1].copy()
    for reverse in (False, True):
        for lengths in (np.full(N, T), lens):
            bs = None if lengths is not lens else _batch_sizes(lens, T)
            got = _kernel(inp, up, reverse, bs, lengths is lens, True)
            for name, w in _reference(inp, up, lengths, reverse).items():
                assert_close_f64(got[name], w, name=name)


@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor-W", "pytorch-W"])
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", list(SIZES))
def test_kernel_matches_reference(size, reverse, lengths, batch_major, transposed, rng):
    N, T, D, H, P = SIZES[size]
    inp, up = _draw(rng, N, T, D, H, P)
    lens = np.full(N, T)
    if lengths:
        lens = np.sort(np.linspace(0, T, N).round().astype(int))[::-1].copy()
        for n, L in enumerate(lens):
            up["dh"][L:, n] = np.nan        # padded upstream gradients are never read
    bs = _batch_sizes(lens, T) if lengths else None
    got = _kernel(inp, up, reverse, bs, batch_major, transposed)
    want = _reference(inp, up, lens, reverse)
    for name, w in want.items():
        assert_close(got[name], w, name)


@pytest.mark.parametrize("size", ["small", "blas"])
def test_kernel_float32(size, rng):
    N, T, D, H, P = SIZES[size]
    inp, up = _draw(rng, N, T, D, H, P, np.float32)
    got = _kernel(inp, up, False, None, False, True)
    want = _reference(inp, up, np.full(N, T), False)
    for name, w in want.items():
        assert_close(got[name], w, name)


def test_kernel_refuses_bad_projection(rng):
    inp, up = _draw(rng, 2, 3, 4, 5, 2)
    h, c = np.empty((3, 2, 2)), np.empty((3, 2, 5))
    args = (inp["x"], inp["h0"], inp["c0"], inp["Wx"], inp["Wh"], inp["b"], h, c, False, None)
    with pytest.raises(ValueError, match="Wr"):
        klstm.forward(*args, np.zeros((5, 3)))
    saved = klstm.forward(*args, inp["Wr"])
    with pytest.raises(ValueError, match="saved"):
        klstm.backward(up["dh"], up["dhn"], up["dcn"], inp["x"], inp["h0"], inp["c0"],
                       inp["Wx"], inp["Wh"], h, c, klstm.LSTMSaved(saved.gates),
                       np.empty((3, 2, 4)), np.empty((2, 2)), np.empty((2, 5)),
                       np.zeros((4, 20)), np.zeros((2, 20)), np.zeros(20),
                       proj=(inp["Wr"], np.zeros((5, 2))))


@pytest.mark.parametrize("N, T, D, H, P", [(2, 3, 4, 5, 2), (1, 2, 3, 4, 3)])
def test_reference_matches_finite_differences(N, T, D, H, P, rng):
    inp, up = _draw(rng, N, T, D, H, P)
    a = {k: v for k, v in inp.items()}
    a["x"] = np.ascontiguousarray(a["x"].transpose(1, 0, 2))        # (N, T, D)
    dh = up["dh"].transpose(1, 0, 2).copy()

    def run():
        return ref.lstm_forward(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"], c0=a["c0"],
                                Wr=a["Wr"])
    h, c, cache = run()
    grads = dict(zip(GRADS, ref.lstm_backward(dh, cache, dcn=up["dcn"])))
    for name, key in [("dx", "x"), ("dh0", "h0"), ("dc0", "c0"), ("dWx", "Wx"),
                      ("dWh", "Wh"), ("db", "b"), ("dWr", "Wr")]:
        # the loss sum(h * dh) + sum(c_T * dcn), as a function of one input
        def f():
            h, c, _ = run()
            return np.concatenate([h.ravel(), c[:, -1].ravel()])
        num = numerical_gradient(f, a[key], np.concatenate([dh.ravel(), up["dcn"].ravel()]))
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-8, err_msg=name)


# ---------------------------------------------------------------- models vs torch
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", ["1-layer", "stacked-bidir-lengths", "bidir-batch-first"])
@pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")
def test_model_matches_torch(config, dtype, rng):
    torch = pytest.importorskip("torch")
    D, H, P, T, N = 3, 6, 4, 5, 4
    kw = dict(num_layers=1 if config == "1-layer" else 2,
              bidirectional=config != "1-layer", batch_first=config == "bidir-batch-first")
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    torch.manual_seed(0)
    tm = torch.nn.LSTM(D, H, proj_size=P, **kw).to(tdt)
    m = rnncore.LSTM(D, H, proj_size=P, dtype=dtype, **kw)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    Ld = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
    x = rng.standard_normal((N, T, D) if kw["batch_first"] else (T, N, D)).astype(dtype)
    h0, c0 = randn(rng, Ld, N, P).astype(dtype), randn(rng, Ld, N, H).astype(dtype)
    lengths = np.array([5, 2, 4, 1]) if "lengths" in config else None
    y, (hn, cn) = m(x, (h0, c0), lengths=lengths)
    assert y.shape[-1] == P * (2 if kw["bidirectional"] else 1)
    assert hn.shape == (Ld, N, P) and cn.shape == (Ld, N, H)
    xt, h0t, c0t = (torch.tensor(a, requires_grad=True) for a in (x, h0, c0))
    xin = xt
    if lengths is not None:
        xin = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths),
                                                      batch_first=kw["batch_first"],
                                                      enforce_sorted=False)
    yt, (hnt, cnt) = tm(xin, (h0t, c0t))
    if lengths is not None:
        yt = torch.nn.utils.rnn.pad_packed_sequence(yt, batch_first=kw["batch_first"],
                                                    total_length=T)[0]
    dy, dhn, dcn = (rng.standard_normal(a.shape).astype(dtype) for a in (y, hn, cn))
    loss = sum((a * torch.tensor(d)).sum() for a, d in ((yt, dy), (hnt, dhn), (cnt, dcn)))
    loss.backward()
    dx, (dh0, dc0) = m.backward(dy, (dhn, dcn))
    tol = dict(atol=1e-10, rtol=0) if dtype == np.float64 else dict(atol=1e-5, rtol=1e-5)
    for name, a, t in [("out", y, yt), ("h_n", hn, hnt), ("c_n", cn, cnt), ("dx", dx, xt.grad),
                       ("dh0", dh0, h0t.grad), ("dc0", dc0, c0t.grad)]:
        np.testing.assert_allclose(a, t.detach().numpy(), err_msg=name, **tol)
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[name], p.grad.numpy(), err_msg=name, **tol)


def test_state_dict_both_ways_and_names():
    torch = pytest.importorskip("torch")
    tm = torch.nn.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2)
    m = rnncore.LSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2, seed=0)
    assert list(m.state_dict()) == list(tm.state_dict())
    for k, v in tm.state_dict().items():
        assert m.state_dict()[k].shape == tuple(v.shape), k
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(m(x)[0], tm(torch.from_numpy(x))[0].detach().numpy(),
                               atol=1e-6)


def test_step_equals_forward_and_config(rng):
    m = rnncore.LSTM(3, 5, num_layers=2, proj_size=2, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 2, 3))
    out, (hn, cn) = m(x, train=False)
    state = None
    for t in range(4):
        y, state = m.step(x[t], state)
        assert_close(y, out[t], f"y[{t}]")
    assert_close(state[0], hn, "h_n")
    assert_close(state[1], cn, "c_n")
    assert m.get_config()["proj_size"] == 2 and "proj_size=2" in repr(m)
    assert "proj_size" not in repr(rnncore.LSTM(3, 5))
    assert "weight_hr_l0" not in rnncore.LSTM(3, 5).params


@pytest.mark.parametrize("proj, err, match", [(5, ValueError, "proj_size"),
                                              (7, ValueError, "proj_size"),
                                              (-1, ValueError, "proj_size"),
                                              (1.5, TypeError, "proj_size"),
                                              (True, TypeError, "proj_size")])
def test_bad_proj_size(proj, err, match):
    with pytest.raises(err, match=match):
        rnncore.LSTM(3, 5, proj_size=proj)


def test_bad_states_and_other_cells():
    m = rnncore.LSTM(3, 5, proj_size=2)
    x = np.zeros((4, 2, 3), np.float32)
    with pytest.raises(ValueError, match="h0"):
        m(x, (np.zeros((1, 2, 5), np.float32), None))      # h0 has P = 2 features
    with pytest.raises(ValueError, match="c0"):
        m(x, (None, np.zeros((1, 2, 2), np.float32)))      # c0 keeps H = 5
    with pytest.raises(TypeError):
        rnncore.GRU(3, 5, proj_size=2)
    with pytest.raises(TypeError):
        rnncore.LSTMCell(3, 5, proj_size=2)
