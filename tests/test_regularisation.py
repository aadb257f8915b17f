"""AWD-LSTM's regularisers: ``weight_drop``, ``variational_dropout``, ``Embedding(dropout=)``.

Merity, Keskar & Socher 2017 (weight drop, locked dropout, embedding dropout);
Gal & Ghahramani 2016 (variational dropout). The references are plain models
without the options: a weight-dropped forward must equal a p = 0 model whose
``weight_hh`` is ``W * M / (1 - p)`` with the mask the forward kept (so the
mask is one matrix for all T steps), and its ``weight_hh`` gradient is that
model's times the mask (checked against finite differences too); a
variational forward must equal single-layer models composed by hand with the
masked inputs and output. Mask statistics, determinism under ``seed``, eval /
no_grad, state_dict, config round trip, bad input, PyTorch's ``WeightDrop``.
"""
import numpy as np
import pytest

import rnncore
from conftest import TOL, make_model, run_backward, run_forward
from rnncore import nn
from rnncore.models import GRU, LSTM

MODELS = ["rnn_tanh", "gru", "lstm"]


def _x(rng, T, N, D, batch_first=False):
    return rng.standard_normal((N, T, D) if batch_first else (T, N, D))


def _plain_copy(m, **kw):
    """A model like ``m`` without the regularisers, with ``m``'s weights (or ``kw`` changes)."""
    cfg = m.get_config()
    cfg.pop("weight_drop", None)
    cfg.pop("variational_dropout", None)
    cfg.update(kw)
    plain = type(m)(**cfg)
    plain.load_state_dict(m.state_dict())
    return plain


def _layer(m, k):
    """Layer k of ``m`` as its own single-layer model (same directions and layout)."""
    nd = m.num_directions
    D = m.input_size if k == 0 else m.hidden_size * nd
    cfg = m.get_config()
    for key in ("weight_drop", "variational_dropout"):
        cfg.pop(key, None)
    cfg.update(input_size=D, num_layers=1, dropout=0.0)
    if k < m.num_layers - 1:
        cfg["merge_mode"] = "concat"   # only the last layer merges its directions
    one = type(m)(**cfg)
    for name in one.params:
        src = name.replace("_l0", f"_l{k}")
        one.params[name][...] = m.params[src]
    return one


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "0.5", None, True, float("nan")])
def test_bad_weight_drop_raises_naming_it(bad):
    with pytest.raises(ValueError, match="weight_drop"):
        LSTM(3, 4, weight_drop=bad)


@pytest.mark.parametrize("bad", [1.0, -0.2, "x", None, False, (0.1, 0.2), [0.1] * 4,
                                 (0.1, 0.2, 1.0), (0.1, "a", 0.2)])
def test_bad_variational_dropout_raises_naming_it(bad):
    with pytest.raises(ValueError, match="variational_dropout"):
        GRU(3, 4, variational_dropout=bad)


def test_bad_embedding_dropout_raises_naming_it():
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="dropout"):
            nn.Embedding(5, 3, dropout=bad)


# ------------------------------------------------------------ the API surface
@pytest.mark.parametrize("cell", MODELS)
def test_options_add_no_parameters_and_round_trip(cell, tmp_path):
    kw = dict(num_layers=2, bidirectional=True, seed=3)
    m = make_model(cell, 3, 4, weight_drop=0.25, variational_dropout=(0.1, 0.2, 0.3), **kw)
    plain = make_model(cell, 3, 4, **kw)
    assert list(m.state_dict()) == list(plain.state_dict())
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, plain.state_dict()[k])  # same init draws
    assert "weight_drop=0.25" in repr(m) and "variational_dropout=(0.1, 0.2, 0.3)" in repr(m)
    assert "weight_drop" not in repr(plain) and "variational" not in repr(plain)
    rnncore.save(tmp_path / "m.npz", m)
    back = rnncore.load(tmp_path / "m.npz")
    assert back.weight_drop == 0.25 and back.variational_dropout == (0.1, 0.2, 0.3)
    assert "variational_dropout" not in plain.get_config()
    one_p = make_model(cell, 3, 4, variational_dropout=0.2)
    assert one_p.variational_dropout == (0.2, 0.2, 0.2)
    assert one_p.get_config()["variational_dropout"] == 0.2


# ---------------------------------------------------------------- weight drop
@pytest.mark.parametrize("cell", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["full", "lengths"])
def test_weight_drop_equals_a_model_with_the_masked_weights(cell, bidirectional, lengths, rng):
    """One mask for all T steps: forward and every gradient against the plain model."""
    m = make_model(cell, 3, 5, num_layers=2, bidirectional=bidirectional, dtype=np.float64,
                   seed=1, weight_drop=0.4)
    x = _x(rng, 4, 3, 3)
    out, fin = run_forward(m, x, lengths=lengths)
    masks = m._saved.reg.weight
    assert len(masks) == 2 * m.num_directions
    dout = rng.standard_normal(out.shape)
    dstates = [rng.standard_normal(f.shape) for f in fin]
    dx, d0 = run_backward(m, dout, dstates)

    plain = _plain_copy(m)
    names = [n for n in m.params if n.startswith("weight_hh")]
    for i, n in enumerate(names):
        plain.params[n][...] = m.params[n] * masks[i]
    out_p, fin_p = run_forward(plain, x, lengths=lengths)
    dx_p, d0_p = run_backward(plain, dout, dstates)
    atol = TOL["f64_atol"]
    np.testing.assert_allclose(out, out_p, rtol=0, atol=atol)
    for a, b in zip(fin + [dx] + d0, fin_p + [dx_p] + d0_p):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    for n in m.params:
        want = plain.grads[n] * masks[names.index(n)] if n in names else plain.grads[n]
        np.testing.assert_allclose(m.grads[n], want, rtol=0, atol=atol, err_msg=n)
    # the caller's weights are not changed by the drop
    np.testing.assert_array_equal(m.params[names[0]], _plain_copy(m).params[names[0]])


@pytest.mark.parametrize("cell", MODELS)
def test_weight_drop_gradient_matches_finite_differences(cell, rng):
    """d loss / d weight_hh with the mask held fixed (the mask the forward drew)."""
    m = make_model(cell, 2, 3, num_layers=2, dtype=np.float64, seed=5, weight_drop=0.3)
    x = _x(rng, 3, 2, 2)
    out, _ = run_forward(m, x)
    masks = m._saved.reg.weight
    dout = rng.standard_normal(out.shape)
    m.zero_grad()
    run_backward(m, dout)
    plain = _plain_copy(m)
    for i, name in enumerate(["weight_hh_l0", "weight_hh_l1"]):
        plain.params[name][...] = m.params[name] * masks[i]   # the forward's weights

    def loss(name, i, W):
        plain.params[name][...] = W * masks[i]
        return float(np.sum(run_forward(plain, x, train=False)[0] * dout))

    h = 1e-6
    for i, name in enumerate(["weight_hh_l0", "weight_hh_l1"]):
        W = m.params[name].copy()
        num = np.zeros_like(W)
        for idx in np.ndindex(W.shape):
            Wp, Wm = W.copy(), W.copy()
            Wp[idx] += h
            Wm[idx] -= h
            num[idx] = (loss(name, i, Wp) - loss(name, i, Wm)) / (2 * h)
        plain.params[name][...] = W * masks[i]
        np.testing.assert_allclose(m.grads[name], num, rtol=TOL["fd_rtol"] * 100,
                                   atol=TOL["fd_atol"], err_msg=name)
        assert np.all(num[masks[i] == 0] == 0) and np.all(m.grads[name][masks[i] == 0] == 0)


def test_weight_drop_mask_statistics():
    p = 0.3
    m = GRU(4, 100, seed=0, weight_drop=p)
    m(np.zeros((2, 3, 4), np.float32))
    (mask,) = m._saved.reg.weight
    assert mask.shape == m.params["weight_hh_l0"].shape
    assert set(np.unique(mask)) == {0.0, np.float32(1 / (1 - p))}
    assert abs(np.mean(mask == 0) - p) < 0.01   # 30,000 draws: std ~0.003


@pytest.mark.parametrize("cell", MODELS)
def test_off_in_eval_and_no_grad_and_deterministic_under_seed(cell, rng):
    kw = dict(num_layers=2, dtype=np.float64, seed=7)
    m = make_model(cell, 3, 4, weight_drop=0.5, variational_dropout=0.3, **kw)
    plain = make_model(cell, 3, 4, **kw)
    x = _x(rng, 5, 2, 3)
    ref = run_forward(plain, x, train=False)[0]
    np.testing.assert_array_equal(run_forward(m, x, train=False)[0], ref)
    m.eval()   # (run_forward's default is train=True: call the model itself)
    np.testing.assert_array_equal(m(x)[0], ref)
    m.train()
    with rnncore.no_grad():
        np.testing.assert_array_equal(m(x)[0], ref)
    a = run_forward(m, x)[0]
    assert np.abs(a - ref).max() > 1e-3        # training mode: dropped
    b = run_forward(make_model(cell, 3, 4, weight_drop=0.5, variational_dropout=0.3, **kw),
                    x)[0]
    np.testing.assert_array_equal(a, b)         # same seed, same masks
    c = run_forward(m, x)[0]
    assert np.abs(a - c).max() > 1e-3           # a new mask per call


@pytest.mark.parametrize("cell", MODELS)
def test_torch_weight_drop_equivalent(cell, rng):
    """AWD-LSTM's WeightDrop: torch with weight_hh = W * M / (1 - p) gives the same out and
    the same gradient of the raw W."""
    torch = pytest.importorskip("torch")
    from torch.func import functional_call

    m = make_model(cell, 3, 4, num_layers=2, dtype=np.float64, seed=2, weight_drop=0.5)
    x = _x(rng, 5, 2, 3)
    out, _ = run_forward(m, x)
    masks = m._saved.reg.weight
    dout = rng.standard_normal(out.shape)
    run_backward(m, dout)
    cls = {"rnn_tanh": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[cell]
    t = cls(3, 4, num_layers=2).double()
    raw = {k: torch.tensor(v, requires_grad=True) for k, v in m.state_dict().items()}
    eff = dict(raw)
    for i, k in enumerate(["weight_hh_l0", "weight_hh_l1"]):
        eff[k] = raw[k] * torch.tensor(masks[i])
    tout = functional_call(t, eff, (torch.tensor(x),))[0]
    (tout * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=0, atol=1e-10)
    for k in raw:
        np.testing.assert_allclose(m.grads[k], raw[k].grad.numpy(), rtol=0, atol=1e-10,
                                   err_msg=k)


# -------------------------------------------------------- variational dropout
def _compose(m, x, reg, lengths, dout):
    """The variational model by hand: single-layer plain models and the kept masks."""
    L, bf = m.num_layers, m.batch_first
    ax = 0 if bf else 1                    # the batch axis of (x, out)

    def lock(seq, mask):
        return seq if mask is None else seq * np.expand_dims(mask, 1 - ax)

    layers = [_layer(m, k) for k in range(L)]
    inp, ys = lock(x, reg.input), []
    for k, one in enumerate(layers):
        y = run_forward(one, inp, lengths=lengths)[0]
        ys.append(y)
        inp = lock(y, reg.hidden_mask(k + 1)) if k + 1 < L else y
    out = lock(ys[-1], reg.output)
    grads = {}
    d = lock(dout, reg.output)
    for k in reversed(range(L)):
        d = run_backward(layers[k], d)[0]
        d = lock(d, reg.hidden_mask(k) if k else reg.input)
        for name, g in layers[k].grads.items():
            grads[name.replace("_l0", f"_l{k}")] = g
    return out, d, grads


@pytest.mark.parametrize("cell", MODELS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tnd", "ntd"])
@pytest.mark.parametrize("lengths", [None, [2, 5, 3]], ids=["full", "lengths"])
def test_variational_equals_masked_layers(cell, bidirectional, batch_first, lengths, rng):
    m = make_model(cell, 3, 4, num_layers=3, bidirectional=bidirectional,
                   batch_first=batch_first, dtype=np.float64, seed=11,
                   variational_dropout=(0.3, 0.4, 0.5))
    x = _x(rng, 5, 3, 3, batch_first)
    out, _ = run_forward(m, x, lengths=lengths)
    reg = m._saved.reg
    assert reg.weight is None and reg.input.shape == (3, 3)
    assert [h.shape for h in reg.hidden] == [(3, 4 * m.num_directions)] * 2
    assert reg.output.shape == (3, 4 * m.num_directions)
    dout = rng.standard_normal(out.shape)
    dx, _ = run_backward(m, dout)
    want, dx_want, grads = _compose(m, x, reg, lengths, dout)
    atol = TOL["f64_atol"]
    np.testing.assert_allclose(out, want, rtol=0, atol=atol)
    np.testing.assert_allclose(dx, dx_want, rtol=0, atol=atol)
    for n in m.params:
        np.testing.assert_allclose(m.grads[n], grads[n], rtol=0, atol=atol, err_msg=n)


def test_variational_mask_is_the_same_at_every_step(rng):
    """Output mask only: out[t] is zero at the same (n, feature) for every t."""
    m = LSTM(3, 50, seed=0, variational_dropout=(0.0, 0.0, 0.5))
    out, _ = m(rng.standard_normal((20, 4, 3)).astype(np.float32))
    zero = out == 0
    assert zero[0].any() and (~zero[0]).any()
    assert (zero == zero[0]).all()
    assert abs(zero[0].mean() - 0.5) < 0.1          # 200 draws: std ~0.035
    assert m._saved.reg.input is None and m._saved.reg.hidden == []
    np.testing.assert_array_equal(zero[0], m._saved.reg.output == 0)


def test_variational_unbatched_and_merge_mode(rng):
    m = GRU(3, 4, num_layers=2, bidirectional=True, merge_mode="sum", dtype=np.float64,
            seed=4, variational_dropout=0.4)
    x = rng.standard_normal((6, 3))
    out, _ = m(x)
    reg = m._saved.reg
    assert out.shape == (6, 4) and reg.output.shape == (1, 4) and reg.input.shape == (1, 3)
    dx, _ = m.backward(np.ones_like(out))
    want, dx_want, _ = _compose(m, x[:, None], reg, None, np.ones((6, 1, 4)))
    np.testing.assert_allclose(out, want[:, 0], rtol=0, atol=TOL["f64_atol"])
    np.testing.assert_allclose(dx, dx_want[:, 0], rtol=0, atol=TOL["f64_atol"])


def test_variational_and_weight_drop_leave_the_input_unchanged(rng):
    m = LSTM(3, 4, num_layers=2, batch_first=True, seed=0, weight_drop=0.5,
             variational_dropout=0.5, dropout=0.2)
    x = rng.standard_normal((2, 5, 3)).astype(np.float32)
    x0 = x.copy()
    x.flags.writeable = False
    out, _ = m(x, lengths=[5, 3])
    m.backward(np.ones_like(out))
    np.testing.assert_array_equal(x, x0)


# ----------------------------------------------------------- embedding dropout
def test_embedding_dropout_drops_whole_words(rng):
    p = 0.5
    emb = nn.Embedding(40, 6, dtype=np.float64, seed=0, dropout=p)
    idx = rng.integers(0, 40, size=(8, 30))
    out = emb.forward(idx)
    scale = emb._row_scale
    assert set(np.unique(scale)) == {0.0, 2.0}
    dropped = scale[idx] == 0
    assert dropped.any() and (~dropped).any()
    np.testing.assert_array_equal(out[dropped], 0)                       # every occurrence
    np.testing.assert_allclose(out[~dropped], 2 * emb.params["weight"][idx][~dropped])
    dout = rng.standard_normal(out.shape)
    emb.backward(dout)
    want = np.zeros_like(emb.params["weight"])
    np.add.at(want, idx, dout * scale[idx][..., None])
    np.testing.assert_allclose(emb.grads["weight"], want, rtol=0, atol=1e-12)
    assert np.all(emb.grads["weight"][scale == 0] == 0)
    np.testing.assert_array_equal(emb.forward(idx, train=False), emb.params["weight"][idx])
    emb.eval()
    np.testing.assert_array_equal(emb.forward(idx), emb.params["weight"][idx])


def test_embedding_dropout_statistics_determinism_and_config(tmp_path):
    a = nn.Embedding(20000, 2, seed=3, dropout=0.2)
    b = nn.Embedding(20000, 2, seed=3, dropout=0.2)
    idx = np.arange(20000)
    oa, ob = a.forward(idx), b.forward(idx)
    np.testing.assert_array_equal(oa, ob)
    assert abs(np.mean(a._row_scale == 0) - 0.2) < 0.01
    assert np.abs(a.forward(idx) - oa).max() > 0        # one mask per call
    assert "dropout=0.2" in repr(a) and list(a.state_dict()) == ["weight"]
    rnncore.save(tmp_path / "e.npz", a)
    assert rnncore.load(tmp_path / "e.npz").dropout == 0.2
    assert "dropout" not in nn.Embedding(3, 2).get_config()


# ------------------------------------------------------------------- char-LM
def test_charlm_passes_the_options_and_rebuilds_them(tmp_path):
    from rnncore.charlm import CharLM

    m = CharLM(7, 4, 6, 2, "gru", seed=0, weight_drop=0.3, variational_dropout=0.2)
    assert m.rnn.weight_drop == 0.3 and m.rnn.variational_dropout == (0.2,) * 3
    assert "weight_drop=0.3" in repr(m)
    rnncore.save(tmp_path / "c.npz", m)
    back = rnncore.load(tmp_path / "c.npz")
    assert back.rnn.weight_drop == 0.3 and back.get_config() == m.get_config()
    with pytest.raises(ValueError, match="layer_norm"):
        CharLM(7, cell="rnn", layer_norm=True)
    with pytest.raises(ValueError, match="weight_drop"):
        CharLM(7, weight_drop=1.0)


def test_charlm_layer_norm_reaches_the_model():
    """Needs the models' ``layer_norm=`` option (the layernorm branch)."""
    from rnncore.charlm import CharLM

    m = CharLM(7, 4, 6, 1, "lstm", seed=0, layer_norm=True)
    assert m.rnn.layer_norm is True and m.get_config()["layer_norm"] is True


# -------------------------------------------------------------- edge cases
@pytest.mark.parametrize("cell", MODELS)
@pytest.mark.parametrize("shape,batch_first", [((0, 3, 4), False), ((3, 0, 4), False),
                                               ((3, 2, 0), False), ((2, 0, 4), True)],
                         ids=["T0", "N0", "D0", "bf-T0"])
def test_zero_sized_inputs_with_both_regularisers(cell, shape, batch_first):
    m = make_model(cell, shape[2], 3, num_layers=2, bidirectional=True,
                   batch_first=batch_first, seed=0, weight_drop=0.3, variational_dropout=0.3)
    x = np.zeros(shape, np.float32)
    out, _ = run_forward(m, x)
    assert out.shape == shape[:2] + (6,)
    dx, _ = run_backward(m, np.ones_like(out))
    assert dx.shape == x.shape and all(np.isfinite(g).all() for g in m.grads.values())


@pytest.mark.parametrize("cell", MODELS)
def test_padding_never_reaches_gradients_with_the_masks(cell, rng):
    m = make_model(cell, 2, 3, num_layers=2, seed=0, weight_drop=0.3, variational_dropout=0.3)
    x = rng.standard_normal((4, 2, 2)).astype(np.float32)
    x[3:, 1] = np.nan
    out, _ = run_forward(m, x, lengths=[4, 3])
    dx, _ = run_backward(m, np.ones_like(out))
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    assert all(np.isfinite(g).all() for g in m.grads.values())


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_charlm_resume_with_the_masks_is_bit_identical(tmp_path, cell):
    from rnncore.charlm import Corpus, Trainer, TrainConfig

    text = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40
    cfg = dict(cell=cell, hidden=16, embed=8, layers=2, seq_len=12, batch_size=4, lr=1e-2,
               seed=0, weight_drop=0.4, variational_dropout=0.3)
    straight = Trainer(Corpus(text, "files"), TrainConfig(**cfg))
    straight.fit(10)
    first = Trainer(Corpus(text, "files"), TrainConfig(**cfg))
    first.fit(5)
    first.save(tmp_path / "ck.npz")
    resumed = Trainer.from_checkpoint(tmp_path / "ck.npz", Corpus(text, "files"))
    assert resumed.model.rnn.weight_drop == 0.4
    resumed.fit(10)
    assert resumed.train_loss == straight.train_loss   # the same masks, step for step
    plain = Trainer(Corpus(text, "files"), TrainConfig(**dict(cfg, weight_drop=0.0)))
    plain.fit(10)
    assert plain.train_loss[1:] != straight.train_loss[1:]
    # a damaged mask generator state is refused with a message, not used
    ck = rnncore.io.load_checkpoint(tmp_path / "ck.npz")
    ck["extra"]["mask_rng"] = {"bit_generator": "MT19937", "state": {}}
    rnncore.save(tmp_path / "bad.npz", ck["model"], extra=ck["extra"],
                 optimizer=first.optimizer)
    with pytest.raises(ValueError, match="PCG64"):
        Trainer.from_checkpoint(tmp_path / "bad.npz", Corpus(text, "files"))
