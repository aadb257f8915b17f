"""rnncore.nn: Embedding, Linear, Dropout, Sequential.

Each layer against explicit NumPy formulas, central finite differences
(float64) and PyTorch (when installed); every error path with its message.
"""
import numpy as np
import pytest
from conftest import TOL, assert_close_f32, assert_close_f64, numerical_gradient

from rnncore.module import Module, module_registry
from rnncore.nn import Dropout, Embedding, Linear, Sequential

FD = dict(rtol=TOL["fd_rtol"], atol=TOL["fd_atol"])


# ---------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 3, 2)], ids=["scalar", "N", "NT", "NTx"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_forward_matches_row_lookup(rng, shape, dtype):
    emb = Embedding(7, 4, dtype=dtype, seed=0)
    idx = rng.integers(0, 7, shape)
    out = emb.forward(idx)
    assert out.shape == shape + (4,)
    assert out.dtype == dtype
    expected = np.empty(shape + (4,), dtype=dtype)
    for ix in np.ndindex(*shape):
        expected[ix] = emb.params["weight"][idx[ix]]
    np.testing.assert_array_equal(out, expected)


def test_embedding_backward_accumulates_repeated_rows(rng):
    emb = Embedding(5, 3, dtype=np.float64, seed=1)
    idx = np.array([[0, 2, 2], [4, 0, 2]])
    dout = rng.standard_normal((2, 3, 3))
    emb.forward(idx)
    assert emb.backward(dout) is None
    expected = np.zeros((5, 3))
    for n in range(2):
        for t in range(3):
            expected[idx[n, t]] += dout[n, t]
    assert_close_f64(emb.grads["weight"], expected, name="dweight")
    assert np.all(emb.grads["weight"][[1, 3]] == 0)
    emb.backward(dout)  # accumulates
    assert_close_f64(emb.grads["weight"], 2 * expected, name="dweight x2")


@pytest.mark.parametrize("shape", [(32, 100), (0, 5), (1, 1)])
def test_embedding_backward_matches_add_at(rng, shape):
    """The sorted reduceat accumulation equals np.add.at (random ids, unused rows
    untouched, empty input a no-op)."""
    emb = Embedding(96, 8, dtype=np.float64, seed=3)
    idx = rng.integers(0, 96, shape)
    dout = rng.standard_normal(shape + (8,))
    emb.forward(idx)
    emb.grads["weight"][...] = 1.5
    emb.backward(dout)
    want = np.full((96, 8), 1.5)
    np.add.at(want, idx.reshape(-1), dout.reshape(-1, 8))
    np.testing.assert_allclose(emb.grads["weight"], want, rtol=1e-13, atol=1e-13)


def test_embedding_finite_differences(rng):
    emb = Embedding(6, 2, dtype=np.float64, seed=2)
    idx = rng.integers(0, 6, (3, 4))
    dout = rng.standard_normal((3, 4, 2))
    emb.forward(idx)
    emb.backward(dout)
    num = numerical_gradient(lambda: emb.forward(idx), emb.params["weight"], dout)
    np.testing.assert_allclose(emb.grads["weight"], num, **FD)


def test_embedding_init_is_standard_normal_and_seeded():
    w = Embedding(400, 50, seed=3).params["weight"]
    assert w.dtype == np.float32
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02
    np.testing.assert_array_equal(w, Embedding(400, 50, seed=3).params["weight"])
    assert not np.array_equal(w, Embedding(400, 50, seed=4).params["weight"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_matches_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    emb = Embedding(9, 4, dtype=dtype, seed=5)
    ref = torch.nn.Embedding(9, 4).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(emb.params["weight"]))
    idx = rng.integers(0, 9, (3, 5))
    dout = rng.standard_normal((3, 5, 4)).astype(dtype)
    out = emb.forward(idx)
    tout = ref(torch.from_numpy(idx))
    tout.backward(torch.from_numpy(dout))
    emb.backward(dout)
    assert_close_f64(out, tout.detach().numpy(), name="out")
    check = assert_close_f64 if dtype == np.float64 else assert_close_f32
    check(emb.grads["weight"], ref.weight.grad.numpy(), name="dweight")


def test_embedding_bad_inputs():
    emb = Embedding(10, 3, seed=0)
    with pytest.raises(TypeError, match=r"idx must be an integer array, got dtype float64"):
        emb.forward(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, 10\), got 10"):
        emb.forward(np.array([1, 10]))
    with pytest.raises(ValueError, match=r"idx values must lie in \[0, 10\), got -1"):
        emb.forward(np.array([-1, 2]))
    with pytest.raises(RuntimeError, match=r"Embedding.backward called without a preceding "
                                           r"training-mode forward"):
        emb.backward(np.zeros((2, 3)))
    emb.forward(np.array([1, 2]))
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 3\)"):
        emb.backward(np.zeros((2, 4)))
    emb.forward(np.array([1, 2]), train=False)  # eval forward drops the saved ids
    with pytest.raises(RuntimeError, match="without a preceding training-mode forward"):
        emb.backward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="num_embeddings must be a positive int"):
        Embedding(0, 3)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        Embedding(3, 3, dtype=np.int32)


# ---------------------------------------------------------------------------
# Linear
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("lead", [(), (4,), (2, 3)], ids=["D", "ND", "NTD"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_backward_formulas(rng, lead, bias):
    lin = Linear(3, 5, bias=bias, dtype=np.float64, seed=0)
    W = lin.params["weight"]
    assert W.shape == (5, 3) and ("bias" in lin.params) == bias
    b = lin.params["bias"] if bias else np.zeros(5)
    x = rng.standard_normal(lead + (3,))
    dy = rng.standard_normal(lead + (5,))
    y = lin.forward(x)
    assert_close_f64(y, np.einsum("...d,fd->...f", x, W) + b, name="y")
    dx = lin.backward(dy)
    assert_close_f64(dx, np.einsum("...f,fd->...d", dy, W), name="dx")
    x2, dy2 = x.reshape(-1, 3), dy.reshape(-1, 5)
    assert_close_f64(lin.grads["weight"], sum(np.outer(dy2[m], x2[m]) for m in range(len(x2))),
                     name="dweight")
    if bias:
        assert_close_f64(lin.grads["bias"], dy2.sum(0), name="dbias")
    lin.backward(dy)  # accumulates
    assert_close_f64(lin.grads["weight"], 2 * sum(np.outer(dy2[m], x2[m])
                                                  for m in range(len(x2))), name="dweight x2")


@pytest.mark.parametrize("bias", [True, False])
def test_linear_finite_differences(rng, bias):
    lin = Linear(3, 2, bias=bias, dtype=np.float64, seed=1)
    x = rng.standard_normal((2, 3, 3))
    dy = rng.standard_normal((2, 3, 2))
    lin.forward(x)
    dx = lin.backward(dy)
    np.testing.assert_allclose(dx, numerical_gradient(lambda: lin.forward(x), x, dy), **FD)
    for k in lin.params:
        num = numerical_gradient(lambda: lin.forward(x), lin.params[k], dy)
        np.testing.assert_allclose(lin.grads[k], num, **FD, err_msg=k)


def test_linear_init_range_and_seed():
    lin = Linear(16, 300, seed=7)
    k = 1 / np.sqrt(16)
    for name in ("weight", "bias"):
        p = lin.params[name]
        assert p.dtype == np.float32
        assert p.min() >= -k and p.max() <= k
    # U(-k, k) has variance k^2 / 3
    assert abs(lin.params["weight"].var() - k * k / 3) < 0.1 * k * k / 3
    np.testing.assert_array_equal(lin.params["weight"], Linear(16, 300, seed=7).params["weight"])


def test_linear_casts_inputs_to_its_dtype(rng):
    lin = Linear(3, 2, seed=0)  # float32
    y = lin.forward(rng.standard_normal((4, 3)))  # float64 input
    assert y.dtype == np.float32
    assert lin.forward(np.arange(6).reshape(2, 3)).dtype == np.float32  # ints are cast
    assert lin.backward(np.ones((2, 2))).dtype == np.float32
    x = rng.standard_normal((3, 4))
    y64 = Linear(3, 2, dtype=np.float64, seed=0).forward(x.T)  # non-contiguous input
    assert_close_f32(lin.forward(x.T), y64, name="float32 vs float64")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_matches_torch(rng, dtype):
    torch = pytest.importorskip("torch")
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    lin = Linear(4, 3, dtype=dtype, seed=2)
    ref = torch.nn.Linear(4, 3).to(tdtype)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(lin.params["weight"]))
        ref.bias.copy_(torch.from_numpy(lin.params["bias"]))
    x = rng.standard_normal((2, 5, 4)).astype(dtype)
    dy = rng.standard_normal((2, 5, 3)).astype(dtype)
    tx = torch.from_numpy(x).requires_grad_(True)
    ty = ref(tx)
    ty.backward(torch.from_numpy(dy))
    y = lin.forward(x)
    dx = lin.backward(dy)
    if dtype == np.float64:
        for a, e, n in [(y, ty, "y"), (dx, tx.grad, "dx"),
                        (lin.grads["weight"], ref.weight.grad, "dweight"),
                        (lin.grads["bias"], ref.bias.grad, "dbias")]:
            assert_close_f64(a, e.detach().numpy(), atol=TOL["torch_f64_atol"], name=n)
    else:
        for a, e in [(y, ty), (dx, tx.grad), (lin.grads["weight"], ref.weight.grad),
                     (lin.grads["bias"], ref.bias.grad)]:
            np.testing.assert_allclose(a, e.detach().numpy(), rtol=TOL["torch_f32_rtol"],
                                       atol=TOL["torch_f32_atol"])


def test_linear_bad_inputs():
    lin = Linear(4, 2, seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\) \(in_features=4\), "
                                         r"got shape \(3, 5\)"):
        lin.forward(np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 4\)"):
        lin.forward(np.float32(1.0))
    with pytest.raises(TypeError, match="x must be a real numeric array, got dtype complex128"):
        lin.forward(np.zeros((3, 4), dtype=complex))
    with pytest.raises(TypeError, match="x must be a real numeric array, got dtype bool"):
        lin.forward(np.zeros((3, 4), dtype=bool))
    with pytest.raises(RuntimeError, match="Linear.backward called without a preceding"):
        lin.backward(np.zeros((3, 2)))
    lin.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"dout must have shape \(3, 2\)"):
        lin.backward(np.zeros((3, 4)))
    lin.forward(np.zeros((3, 4)), train=False)
    with pytest.raises(RuntimeError, match="without a preceding training-mode forward"):
        lin.backward(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        Linear(0, 2)
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got float16"):
        Linear(2, 2, dtype=np.float16)


# ---------------------------------------------------------------------------
# Dropout
# ---------------------------------------------------------------------------
def test_dropout_is_inverted_and_reuses_its_mask(rng):
    p = 0.3
    drop = Dropout(p, seed=0)
    x = rng.standard_normal((200, 50)) + 5.0  # no zeros in x
    y = drop.forward(x)
    kept = y != 0
    assert abs(1 - kept.mean() - p) < 0.02
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-15)
    dout = rng.standard_normal(x.shape)
    dx = drop.backward(dout)
    np.testing.assert_allclose(dx, np.where(kept, dout / (1 - p), 0.0), rtol=1e-15)
    # a second forward draws a new mask
    assert not np.array_equal(drop.forward(x) != 0, kept)


def test_dropout_seed_reseed_eval_and_dtype(rng):
    x = rng.standard_normal((10, 10)).astype(np.float32)
    a, b = Dropout(0.5, seed=1), Dropout(0.5, seed=1)
    ya = a.forward(x)
    assert ya.dtype == np.float32
    np.testing.assert_array_equal(ya, b.forward(x))
    a.reseed()
    np.testing.assert_array_equal(a.forward(x), ya)
    np.testing.assert_array_equal(a.forward(x, train=False), x)
    with pytest.raises(RuntimeError, match="Dropout.backward called without a preceding"):
        a.backward(x)
    np.testing.assert_array_equal(Dropout(0.0).forward(x), x)
    np.testing.assert_array_equal(Dropout(1.0).forward(x), np.zeros_like(x))


def test_dropout_finite_differences_with_fixed_mask(rng):
    drop = Dropout(0.4, seed=3)
    x = rng.standard_normal((3, 4))
    dout = rng.standard_normal((3, 4))

    def f():
        drop.reseed(11)
        return drop.forward(x)

    f()
    dx = drop.backward(dout)
    np.testing.assert_allclose(dx, numerical_gradient(f, x, dout), **FD)


def test_dropout_matches_torch_semantics(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((50, 40)) + 3.0
    ref = torch.nn.functional.dropout(torch.from_numpy(x), p=0.25, training=True).numpy()
    ours = Dropout(0.25, seed=0).forward(x)
    # same set of possible values: 0 or x / (1 - p)
    for y in (ref, ours):
        kept = y != 0
        np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-15)


def test_dropout_bad_inputs():
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        Dropout(1.5)
    drop = Dropout(0.5, seed=0)
    with pytest.raises(TypeError, match="x must be a real numeric array, got dtype <U1"):
        drop.forward(np.array(["a"]))
    drop.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"dout must have shape \(2, 3\)"):
        drop.backward(np.ones((3, 2)))


# ---------------------------------------------------------------------------
# Sequential
# ---------------------------------------------------------------------------
def _model(dtype=np.float64):
    return Sequential(Embedding(6, 4, dtype=dtype, seed=0), Linear(4, 3, dtype=dtype, seed=1),
                      Dropout(0.0), Linear(3, 5, dtype=dtype, seed=2))


def test_sequential_names_share_child_arrays():
    model = _model()
    assert list(model.params) == ["0.weight", "1.weight", "1.bias", "3.weight", "3.bias"]
    assert list(model.grads) == list(model.params)
    for name in model.params:
        i, k = name.split(".")
        assert model.params[name] is model[int(i)].params[k]
        assert model.grads[name] is model[int(i)].grads[k]
    assert len(model) == 4 and [type(m).__name__ for m in model][2] == "Dropout"
    assert model.num_parameters() == 6 * 4 + 4 * 3 + 3 + 3 * 5 + 5
    nested = Sequential(model, Linear(5, 2, seed=3))
    assert "0.3.bias" in nested.params and nested.params["0.3.bias"] is model.params["3.bias"]


def test_sequential_forward_backward_chain(rng):
    model = _model()
    emb, l1, _, l2 = model
    idx = rng.integers(0, 6, (2, 3))
    dout = rng.standard_normal((2, 3, 5))
    y = model.forward(idx)
    h = emb.params["weight"][idx] @ l1.params["weight"].T + l1.params["bias"]
    assert_close_f64(y, h @ l2.params["weight"].T + l2.params["bias"], name="y")
    assert model.backward(dout) is None
    dh = dout @ l2.params["weight"]
    assert_close_f64(model.grads["3.weight"], np.einsum("ntf,ntd->fd", dout, h), name="d3.w")
    assert_close_f64(model.grads["1.bias"], dh.sum((0, 1)), name="d1.b")
    de = dh @ l1.params["weight"]
    expected = np.zeros((6, 4))
    np.add.at(expected, idx.ravel(), de.reshape(-1, 4))
    assert_close_f64(model.grads["0.weight"], expected, name="d0.w")
    for name in model.params:  # finite differences through the whole chain
        num = numerical_gradient(lambda: model.forward(idx), model.params[name], dout)
        np.testing.assert_allclose(model.grads[name], num, **FD, err_msg=name)


def test_sequential_zero_grad_state_dict_and_train_flag(rng):
    model = Sequential(Linear(3, 3, dtype=np.float64, seed=0), Dropout(0.5, seed=0))
    x = rng.standard_normal((4, 3))
    model.forward(x)
    model.backward(np.ones((4, 3)))
    assert np.any(model[0].grads["weight"] != 0)
    model.zero_grad()
    assert np.all(model[0].grads["weight"] == 0)
    sd = {k: v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    np.testing.assert_array_equal(model[0].params["bias"], sd["0.bias"])
    # train=False reaches the children: dropout is the identity, no backward
    np.testing.assert_allclose(model.forward(x, train=False), model[0].forward(x, train=False))
    with pytest.raises(RuntimeError, match="Sequential.backward called without a preceding"):
        model.backward(np.ones((4, 3)))


def test_sequential_config_rebuilds_through_registry(rng):
    model = _model(np.float32)
    cfg = model.get_config()
    assert cfg["layers"][0] == {"class": "Embedding", "config": {
        "num_embeddings": 6, "embedding_dim": 4, "dtype": "float32", "seed": 0}}
    clone = module_registry["Sequential"](**cfg)
    assert list(clone.params) == list(model.params)
    for k in model.params:  # same seeds: same initial weights
        np.testing.assert_array_equal(clone.params[k], model.params[k])
    idx = rng.integers(0, 6, (2, 2))
    np.testing.assert_array_equal(clone.forward(idx, train=False), model.forward(idx, train=False))
    for cls in (Embedding, Linear, Dropout):
        assert module_registry[cls.__name__] is cls


def test_sequential_bad_inputs():
    with pytest.raises(TypeError, match="Sequential item 1 must be a Module, got int"):
        Sequential(Linear(2, 2), 3)
    with pytest.raises(ValueError, match=r"Sequential layers\[0\] cannot be built"):
        Sequential(layers=[{"class": "NoSuchLayer", "config": {}}])

    class NoInputGrad(Module):  # like Embedding: backward returns None
        def forward(self, x, train=True):
            return x

        def backward(self, dout):
            return None

    chain = Sequential(Linear(2, 2, seed=0), NoInputGrad())
    chain.forward(np.ones((3, 2)))
    with pytest.raises(RuntimeError, match=r"module 1 \(NoInputGrad\) returned no input gradient"):
        chain.backward(np.ones((3, 2)))
