"""backward without the input gradient (``input_grad=False``; the kernels' ``dx=None``).

An input that needs no gradient (data: PyTorch's ``requires_grad=False``) need not
pay for dx = dA Wx^T, 2*T*N*G*H*D flops of the first layer (an LSTM's (100, 32,
256, 256) forward + backward: 17 % of its flops). Skipping it must change nothing
else: every other gradient is bitwise the one of a backward that computes dx, on
every path dx can take (in the loop's steps on a packed Wx^T, one GEMM after the
loop, the LSTM's unit split, the layer-normalised cells' after-loop product), and
those gradients are the reference's.
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f64, make_model, run_forward
from test_models import reference_model

import rnncore
from rnncore import nn
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as K

CELLS = ["rnn_tanh", "gru", "lstm"]


def _backward(model, dout, dstates, input_grad):
    if isinstance(model, rnncore.LSTM):
        dx, (dh0, dc0) = model.backward(dout, tuple(dstates), input_grad=input_grad)
        return dx, [dh0, dc0]
    dx, dh0 = model.backward(dout, dstates[0], input_grad=input_grad)
    return dx, [dh0]


def _both_ways(cell, T, N, D, H, rng, dtype=np.float32, lengths=None, **kw):
    """(dx, initial-state grads, grads) with input_grad True, then False, one model's
    parameters and data."""
    x = rng.standard_normal((T, N, D)).astype(dtype)
    seed = int(rng.integers(1 << 30))
    res = []
    for input_grad in (True, False):
        m = make_model(cell, D, H, dtype=dtype, seed=seed, **kw)
        out, st = run_forward(m, x if not m.batch_first else x.transpose(1, 0, 2).copy(),
                              lengths=lengths)
        g = np.random.default_rng(7)
        dout = g.standard_normal(out.shape).astype(dtype)
        dstates = [g.standard_normal(s.shape).astype(dtype) for s in st]
        dx, ds0 = _backward(m, dout, dstates, input_grad)
        res.append((dx, ds0, {k: v.copy() for k, v in m.grads.items()}))
    return res


def _assert_same_but_dx(res):
    (dx, ds0, grads), (dx_off, ds0_off, grads_off) = res
    assert dx is not None and dx_off is None
    for a, b in zip(ds0, ds0_off):
        np.testing.assert_array_equal(a, b)
    assert list(grads) == list(grads_off)
    for name in grads:
        np.testing.assert_array_equal(grads[name], grads_off[name], err_msg=name)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kw", [{}, {"num_layers": 2, "bidirectional": True},
                                {"batch_first": True}, {"bias": False}],
                         ids=["plain", "2-layer-bidir", "batch_first", "no-bias"])
def test_other_gradients_are_bitwise_those_with_dx(cell, dtype, kw, rng):
    _assert_same_but_dx(_both_ways(cell, 6, 3, 5, 7, rng, dtype, **kw))


@pytest.mark.parametrize("cell, kw", [("rnn_relu", {}), ("gru", {"reset_after": False})],
                         ids=["rnn-relu", "gru-reset-before"])
def test_relu_rnn_and_reset_before_gru(cell, kw, rng):
    _assert_same_but_dx(_both_ways(cell, 6, 3, 5, 7, rng, np.float64, num_layers=2,
                                   bidirectional=True, **kw))


@pytest.mark.parametrize("cell", CELLS)
def test_with_lengths(cell, rng):
    lengths = np.array([6, 2, 4, 0])
    _assert_same_but_dx(_both_ways(cell, 6, 4, 5, 7, rng, lengths=lengths,
                                   bidirectional=True))


@pytest.mark.parametrize("in_steps", [True, False], ids=["dx-in-steps", "dx-after-loop"])
@pytest.mark.parametrize("cell", CELLS)
def test_both_places_dx_is_computed(cell, in_steps, rng):
    """A shape whose backward computes dx_t in its steps (packed Wx^T) and, with the
    hook's bound at 0, the same shape with dx one GEMM after the loop: skipping dx
    skips either, and packs no Wx^T."""
    if in_steps and not HAVE_PACKED:
        pytest.skip("no packed GEMM layout for this CPU: dx is never in the steps")
    T, N, D, H = 10, 16, 64, 128
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell.split("_")[0]]
    assert K._steps_input_grad(N, D, H, G * H, T) == (HAVE_PACKED and True)
    mods = [rnncore._kernels.rnn, rnncore._kernels.gru, KL]
    try:
        if not in_steps:
            for mod in mods:
                mod._set_step_dx_max(0)
        _assert_same_but_dx(_both_ways(cell, T, N, D, H, rng))
    finally:
        for mod in mods:
            mod._set_step_dx_max()


@pytest.mark.skipif(not HAVE_PACKED, reason="no packed GEMM layout: no unit split")
def test_lstm_unit_split_backward(rng):
    KL._set_unit_split(1, 2)
    try:
        _assert_same_but_dx(_both_ways("lstm", 5, 4, 6, 64, rng))
    finally:
        KL._set_unit_split(0)


def test_projected_lstm(rng):
    _assert_same_but_dx(_both_ways("lstm", 5, 3, 4, 8, rng, proj_size=3, num_layers=2))


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_layer_norm_cells(cell, rng):
    _assert_same_but_dx(_both_ways(cell, 5, 3, 4, 8, rng, layer_norm=True))


def test_regularised_model(rng):
    _assert_same_but_dx(_both_ways("lstm", 5, 3, 4, 8, rng, num_layers=2, dropout=0.3,
                                   weight_drop=0.2, variational_dropout=0.25))


def test_unbatched_input(rng):
    for input_grad in (True, False):
        m = rnncore.GRU(4, 6, seed=1)
        out, _ = m(rng.standard_normal((5, 4)).astype(np.float32))
        dx, dh0 = m.backward(np.ones_like(out), input_grad=input_grad)
        assert (dx is None) == (not input_grad) and dh0.shape == (1, 6)


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_the_reference(cell, rng):
    """float64, 2 layers, bidirectional: every parameter gradient and dh0 (dc0) against
    the reference composition, with dx not computed."""
    T, N, D, H = 4, 3, 5, 6
    m = make_model(cell, D, H, num_layers=2, bidirectional=True, dtype=np.float64,
                   seed=int(rng.integers(1 << 30)))
    ns = 2 if cell == "lstm" else 1
    x = rng.standard_normal((T, N, D))
    states0 = [rng.standard_normal((4, N, H)) for _ in range(ns)]
    dout = rng.standard_normal((T, N, 2 * H))
    dstates = [rng.standard_normal((4, N, H)) for _ in range(ns)]
    run_forward(m, x, states0)
    dx, ds0 = _backward(m, dout, dstates, False)
    want = reference_model(cell, {k: v.copy() for k, v in m.params.items()}, x, states0,
                           None, 2, True, "concat", dout=dout, dstates_n=dstates)
    assert dx is None
    for si in range(ns):
        assert_close_f64(ds0[si], want["dstates0"][si], name=f"dstate0[{si}]")
    for name, g in want["grads"].items():
        assert_close_f64(m.grads[name], g, name="d" + name)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernels_take_dx_none(dtype, rng):
    """The kernel modules themselves: dx=None writes every other output bitwise as a
    call with a dx array does, and refuses nothing else."""
    T, N, D, H = 7, 3, 5, 8
    f = dtype
    x = rng.standard_normal((T, N, D)).astype(f)
    Wx = (0.3 * rng.standard_normal((D, 4 * H))).astype(f)
    Wh = (0.3 * rng.standard_normal((H, 4 * H))).astype(f)
    h0, c0 = (rng.standard_normal((N, H)).astype(f) for _ in range(2))
    b = rng.standard_normal(4 * H).astype(f)
    h, c = np.empty((T, N, H), f), np.empty((T, N, H), f)
    saved = KL.forward(x, h0, c0, Wx, Wh, b, h, c)
    dh = rng.standard_normal((T, N, H)).astype(f)
    dhn, dcn = (rng.standard_normal((N, H)).astype(f) for _ in range(2))
    outs = []
    for dx in (np.full_like(x, np.nan), None):
        o = [np.empty((N, H), f), np.empty((N, H), f), np.zeros_like(Wx), np.zeros_like(Wh),
             np.zeros_like(b)]
        KL.backward(dh, dhn, dcn, x, h0, c0, Wx, Wh, h, c, saved, dx, *o)
        outs.append(o)
    for a, bb in zip(*outs):
        np.testing.assert_array_equal(a, bb)
    assert np.isfinite(outs[0][2]).all()


def test_kernels_take_dx_none_for_an_empty_batch(rng):
    """N = 0: nothing to compute, nothing written, no dx to zero."""
    f = np.float32
    x = np.empty((3, 0, 4), f)
    Wx, Wh = np.zeros((4, 20), f), np.zeros((5, 20), f)
    z = np.empty((0, 5), f)
    h, c = np.empty((3, 0, 5), f), np.empty((3, 0, 5), f)
    saved = KL.forward(x, z, z, Wx, Wh, np.zeros(20, f), h, c)
    KL.backward(np.empty((3, 0, 5), f), z, z, x, z, z, Wx, Wh, h, c, saved, None,
                np.empty((0, 5), f), np.empty((0, 5), f), np.zeros_like(Wx), np.zeros_like(Wh),
                np.zeros(20, f))


def test_torch_parity_without_input_grad(rng):
    """PyTorch with x.requires_grad=False: the same parameter gradients."""
    torch = pytest.importorskip("torch")
    T, N, D, H = 6, 3, 5, 7
    tm = torch.nn.LSTM(D, H, num_layers=2).double()
    m = rnncore.LSTM(D, H, num_layers=2, dtype=np.float64)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((T, N, D))
    dout = rng.standard_normal((T, N, H))
    out, _ = m(x)
    dx, _ = m.backward(dout, input_grad=False)
    tout, _ = tm(torch.from_numpy(x))
    tout.backward(torch.from_numpy(dout))
    assert dx is None
    for name, p in tm.named_parameters():
        np.testing.assert_allclose(m.grads[name], p.grad.numpy(), rtol=1e-10, atol=1e-10,
                                   err_msg=name)


# ---------------------------------------------------------------- nn containers
def _container_both_ways(make, x):
    """A fresh module from make() each way: backward with and without the input
    gradient; dx None only without, every parameter gradient bitwise the same."""
    res = []
    for input_grad in (True, False):
        m = make()
        y = m.forward(x, train=True)
        dx = m.backward(np.ones_like(y), input_grad=input_grad)
        res.append((dx, {k: v.copy() for k, v in m.grads.items()}))
    assert res[0][0].shape == x.shape and res[1][0] is None
    assert list(res[0][1]) == list(res[1][1])
    for k in res[0][1]:
        np.testing.assert_array_equal(res[0][1][k], res[1][1][k])


def test_linear_without_input_grad(rng):
    _container_both_ways(lambda: nn.Linear(5, 2, seed=0),
                         rng.standard_normal((4, 3, 5)).astype(np.float32))


def test_dropout_and_embedding_take_input_grad(rng):
    _container_both_ways(lambda: nn.Dropout(0.3, seed=0),
                         rng.standard_normal((4, 3, 5)).astype(np.float32))
    emb = nn.Embedding(10, 4, seed=0)
    y = emb.forward(np.array([[1, 2], [3, 1]]), train=True)
    assert emb.backward(np.ones_like(y), input_grad=False) is None
    assert emb.grads["weight"][1].sum() == 2 * 4


@pytest.mark.parametrize("first", ["lstm", "linear", "dropout", "nested"])
def test_sequential_without_input_grad(first, rng):
    head = {"lstm": lambda: rnncore.LSTM(5, 8, seed=0),
            "linear": lambda: nn.Linear(5, 8, seed=0),
            "dropout": lambda: nn.Dropout(0.2, seed=0),
            "nested": lambda: nn.Sequential(nn.Linear(5, 8, seed=0))}[first]
    width = 5 if first == "dropout" else 8
    _container_both_ways(lambda: nn.Sequential(head(), nn.Linear(width, 3, seed=1)),
                         rng.standard_normal((6, 3, 5)).astype(np.float32))


# ---------------------------------------------------------------- functional API
def _functional(cell, rng, dtype, N=5, T=7, D=6, H=4):
    """(forward output, backward, args, dh) of one rnncore.functional cell."""
    from rnncore import functional as F
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    x = rng.standard_normal((N, T, D)).astype(dtype)
    h0 = rng.standard_normal((N, H)).astype(dtype)
    Wx = (rng.standard_normal((D, G * H)) * 0.4).astype(dtype)
    Wh = (rng.standard_normal((H, G * H)) * 0.4).astype(dtype)
    bs = [rng.standard_normal(G * H).astype(dtype) for _ in range(2 if cell == "gru" else 1)]
    out = getattr(F, f"{cell}_forward")(x, h0, Wx, Wh, *bs)
    dh = rng.standard_normal((N, T, H)).astype(dtype)
    return out, getattr(F, f"{cell}_backward"), (x, h0, Wx, Wh, *bs), dh


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_functional_backward_without_input_grad(cell, dtype, rng):
    """rnncore.functional.*_backward(..., input_grad=False): dx None, every other
    gradient bitwise the one computed beside dx, and those match the reference."""
    from rnncore import reference as R
    out, backward, args, dh = _functional(cell, rng, dtype)
    cache = out[-1]
    full = backward(dh, cache)
    part = backward(dh, cache, input_grad=False)
    assert full[0] is not None and full[0].shape == args[0].shape and part[0] is None
    assert len(full) == len(part)
    for i, (a, b) in enumerate(zip(full[1:], part[1:])):
        np.testing.assert_array_equal(a, b, err_msg=f"{cell}: output {i + 1}")
    if dtype == np.float64:
        rcache = getattr(R, f"{cell}_forward")(*args)[-1]
        want = getattr(R, f"{cell}_backward")(dh, rcache)
        for i, (a, b) in enumerate(zip(part[1:], want[1:])):
            assert_close_f64(a, b, name=f"{cell}: output {i + 1}")


@pytest.mark.parametrize("bad", ["no", 0, None, np.array([False])])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_functional_input_grad_must_be_a_bool(cell, bad, rng):
    out, backward, _, dh = _functional(cell, rng, np.float32)
    with pytest.raises(TypeError, match="input_grad"):
        backward(dh, out[-1], input_grad=bad)
    assert backward(dh, out[-1], input_grad=np.bool_(False))[0] is None   # the cache is intact


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad", ["no", 0, None, np.array([False])])
def test_input_grad_must_be_a_bool_and_consumes_nothing(bad, rng):
    m = rnncore.LSTM(4, 5, seed=0)
    out, _ = m(rng.standard_normal((3, 2, 4)).astype(np.float32))
    with pytest.raises(TypeError, match="input_grad"):
        m.backward(np.ones_like(out), input_grad=bad)
    dx, _ = m.backward(np.ones_like(out), input_grad=np.bool_(False))   # still there
    assert dx is None
    lin = nn.Linear(4, 2, seed=0)
    y = lin.forward(rng.standard_normal((3, 4)).astype(np.float32), train=True)
    with pytest.raises(TypeError, match="input_grad"):
        lin.backward(np.ones_like(y), input_grad=bad)
    s = nn.Sequential(nn.Linear(4, 2, seed=0))
    y = s.forward(rng.standard_normal((3, 4)).astype(np.float32), train=True)
    with pytest.raises(TypeError, match="input_grad"):
        s.backward(np.ones_like(y), input_grad=bad)
    for mod in (nn.Dropout(0.5, seed=0), nn.Embedding(5, 2, seed=0)):
        y = mod.forward(np.array([[1, 2]]) if isinstance(mod, nn.Embedding)
                        else np.ones((2, 3), np.float32), train=True)
        with pytest.raises(TypeError, match="input_grad"):
            mod.backward(np.ones_like(y, dtype=np.float32), input_grad=bad)
