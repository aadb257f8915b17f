"""PyTorch's module habits (issue 15): modes, parameters, attributes, dtype, repr, copies.

Each compared with what PyTorch does where it applies (behind importorskip).
"""
import copy
import pickle
import warnings

import numpy as np
import pytest

import rnncore
from rnncore import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, nn

MODELS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}
CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}


def _x(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _every_module():
    """One of each public class, configured off the defaults where it matters."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [
            RNN(3, 4, num_layers=2, nonlinearity="relu", dropout=0.3, seed=0),
            GRU(3, 4, bidirectional=True, batch_first=True, seed=1),
            LSTM(3, 4, num_layers=2, bidirectional=True, dropout=0.5, dtype=np.float64, seed=2),
            RNNCell(3, 4, bias=False, seed=3), GRUCell(3, 4, seed=4), LSTMCell(3, 4, seed=5),
            nn.Embedding(7, 3, seed=6), nn.Linear(3, 5, seed=7), nn.Dropout(0.2, seed=8),
            nn.Sequential(nn.Embedding(7, 3, seed=9), GRU(3, 4, batch_first=True, seed=10),
                          nn.Linear(4, 7, seed=11)),
        ]


# --------------------------------------------------------------------- modes
@pytest.mark.parametrize("kind", MODELS)
def test_eval_is_deterministic_with_dropout_and_saves_nothing(rng, kind):
    m = MODELS[kind](3, 5, num_layers=3, dropout=0.5, seed=0)
    x = _x(rng, 6, 2, 3)
    assert m.training
    assert m.eval() is m and not m.training
    a, b = m(x)[0], m(x)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, m(x, train=False)[0])   # eval == the old train=False
    with pytest.raises(RuntimeError, match="preceding forward"):
        m.backward(np.ones_like(a))
    assert m.train() is m and m.training
    t1, t2 = m(x)[0], m(x)[0]
    assert not np.array_equal(t1, t2)                          # dropout is on again
    m.backward(np.ones_like(t2))                              # and it saved


@pytest.mark.parametrize("ctx", [rnncore.no_grad, rnncore.inference_mode])
def test_no_grad_saves_nothing_in_training_mode(rng, ctx):
    m, cell, lin = LSTM(3, 4, seed=0), GRUCell(3, 4, seed=0), nn.Linear(3, 2, seed=0)
    x = _x(rng, 5, 2, 3)
    with ctx():
        assert not rnncore.grad_enabled()
        out, _ = m(x)
        cell(x[0])
        y = lin(x)
    assert rnncore.grad_enabled()
    assert m._saved is None and not cell._stack and lin._x2 is None
    with pytest.raises(RuntimeError, match="preceding forward"):
        m.backward(np.ones_like(out))
    with pytest.raises(RuntimeError):
        lin.backward(np.ones_like(y))


def test_train_eval_recurse_like_torch():
    seq = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), GRU(3, 3))
    assert seq.eval() is seq
    assert [m.training for _, m in seq.named_modules()] == [False] * 4
    seq.train()
    assert all(m.training for _, m in seq.named_modules())
    assert [n for n, _ in seq.named_modules()] == ["", "0", "1", "2"]
    assert seq.children() == list(seq)
    with pytest.raises(ValueError, match="mode must be a bool"):
        seq.train("no")


def test_dropout_layer_follows_mode(rng):
    d = nn.Dropout(0.5, seed=0)
    x = _x(rng, 4, 5)
    assert not np.array_equal(d(x), x)
    np.testing.assert_array_equal(d.eval()(x), x)


# ---------------------------------------------------------------- parameters
def test_named_parameters_are_views_with_grad(rng):
    m = GRU(3, 4, num_layers=2, seed=0)
    named = list(m.named_parameters())
    assert [k for k, _ in named] == list(m.state_dict())
    for k, p in named:
        assert isinstance(p, rnncore.Parameter) and np.shares_memory(p, m.params[k])
        assert p.grad is m.grads[k]
    p = next(m.parameters())
    p[...] = 0.25                                       # in place through the view
    assert np.all(m.params["weight_ih_l0"] == 0.25)


def test_parameters_and_gradients_as_attributes():
    m = LSTM(3, 4, bidirectional=True)
    assert m.weight_hh_l0_reverse is m.params["weight_hh_l0_reverse"]
    assert m.grad.bias_ih_l0 is m.grads["bias_ih_l0"]
    assert "weight_ih_l0" in dir(m) and "bias_hh_l0" in dir(m.grad)
    with pytest.raises(AttributeError, match="weight_ih_l1"):
        m.weight_ih_l1
    with pytest.raises(AttributeError, match="no gradient"):
        m.grad.nothing
    seq = nn.Sequential(nn.Linear(2, 3))
    assert seq[0].weight is seq.params["0.weight"]


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_named_parameters_match_torch(kind, num_layers, bidirectional, bias):
    torch = pytest.importorskip("torch")
    tcls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind]
    t = tcls(3, 5, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    m = MODELS[kind](3, 5, num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    assert [(k, tuple(p.shape)) for k, p in t.named_parameters()] == \
        [(k, p.shape) for k, p in m.named_parameters()]
    assert repr(m) == repr(t)
    assert m.training == t.training and m.eval().training == t.eval().training


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_named_parameters_match_torch(kind, bias):
    torch = pytest.importorskip("torch")
    tcls = {"rnn": torch.nn.RNNCell, "gru": torch.nn.GRUCell, "lstm": torch.nn.LSTMCell}[kind]
    t, c = tcls(3, 5, bias=bias), CELLS[kind](3, 5, bias=bias)
    assert [(k, tuple(p.shape)) for k, p in t.named_parameters()] == \
        [(k, p.shape) for k, p in c.named_parameters()]
    assert repr(c) == repr(t)


def test_container_repr_and_names_match_torch():
    torch = pytest.importorskip("torch")
    t = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.GRU(4, 8, batch_first=True),
                            torch.nn.Linear(8, 10), torch.nn.Linear(10, 2, bias=False))
    m = nn.Sequential(nn.Embedding(10, 4), GRU(4, 8, batch_first=True), nn.Linear(8, 10),
                      nn.Linear(10, 2, bias=False))
    assert repr(m) == repr(t)
    assert [(k, tuple(p.shape)) for k, p in t.named_parameters()] == \
        [(k, p.shape) for k, p in m.named_parameters()]
    assert repr(nn.Dropout(0.25)) == "Dropout(p=0.25)"


# ----------------------------------------------------------------- dtype
@pytest.mark.parametrize("module", _every_module(), ids=lambda m: type(m).__name__)
def test_to_float64_and_back_keeps_values(module):
    before = module.state_dict()
    assert module.double() is module
    for k, v in module.params.items():
        assert v.dtype == np.float64 and module.grads[k].dtype == np.float64
        np.testing.assert_array_equal(v, before[k])
    assert getattr(module, "dtype", np.float64) == np.float64
    module.float()
    for k, v in module.state_dict().items():
        assert v.dtype == np.float32
        np.testing.assert_array_equal(v, before[k].astype(np.float32))
    assert module.to("cpu") is module and module.to(device="cpu") is module
    with pytest.raises(ValueError, match="device='cuda' is not supported"):
        module.to(device="cuda")


def test_to_float64_runs_in_float64(rng):
    seq = nn.Sequential(nn.Linear(3, 4, seed=0), GRU(4, 4, seed=1))
    cell = LSTMCell(3, 4, seed=0).double()
    x = _x(rng, 5, 2, 3, dtype=np.float64)
    out = seq.double()(x)
    assert out.dtype == np.float64 and seq[0].weight is seq.params["0.weight"]
    seq.backward(np.ones_like(out))
    h, c = cell(x[0])
    assert h.dtype == np.float64
    cell.backward(np.ones_like(h))


# ---------------------------------------------------------- copy and pickle
def _equal_modules(a, b, rng):
    assert type(a) is type(b) and repr(a) == repr(b) and a.training == b.training
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])
        assert not np.shares_memory(a.params[k], b.params[k])
    a.eval(), b.eval()
    if isinstance(a, (nn.Embedding, nn.Sequential)):
        x = rng.integers(0, 7, (2, 5))
    elif isinstance(a, (RNNCell, GRUCell, LSTMCell)):
        x = _x(rng, 2, 3)
    else:
        x = _x(rng, 2, 5, 3, dtype=getattr(a, "dtype", np.float32))
    ya, yb = _flat(a(x)), _flat(b(x))
    assert len(ya) == len(yb)
    for u, v in zip(ya, yb):
        np.testing.assert_array_equal(u, v)


def _flat(y):
    """The arrays of a nested (out, (h, c)) result, in order."""
    if isinstance(y, (tuple, list)):
        return [a for item in y for a in _flat(item)]
    return [y]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("index", range(len(_every_module())))
def test_deepcopy_and_pickle_round_trip(rng, how, index):
    module = _every_module()[index]
    x = rng.integers(0, 7, (2, 5)) if isinstance(module, (nn.Embedding, nn.Sequential)) \
        else _x(rng, 2, 3) if isinstance(module, (RNNCell, GRUCell, LSTMCell)) \
        else _x(rng, 2, 5, 3, dtype=getattr(module, "dtype", np.float32))
    module(x)                                   # pending activations / a held lock state
    dup = copy.deepcopy(module) if how == "deepcopy" else pickle.loads(pickle.dumps(module))
    if isinstance(module, nn.Sequential):       # the container shares its children's arrays
        assert dup.params["1.weight_ih_l0"] is dup[1].params["weight_ih_l0"]
    for attr in module._transient:              # recreated empty
        assert attr in vars(dup)
    _equal_modules(module, dup, rng)


def test_charlm_round_trips():
    from rnncore.charlm import CharLM

    m = CharLM(11, 4, 8, cell="gru", seed=0)
    dup = pickle.loads(pickle.dumps(m))
    idx = np.arange(10).reshape(2, 5)
    np.testing.assert_array_equal(m.eval()(idx)[0], dup.eval()(idx)[0])
    assert [n for n, _ in dup.named_modules()] == ["", "embedding", "rnn", "head"]


# ----------------------------------------------------- refusals and messages
DEVICE_CLASSES = [lambda **k: RNN(3, 4, **k), lambda **k: GRU(3, 4, **k),
                  lambda **k: LSTM(3, 4, **k), lambda **k: RNNCell(3, 4, **k),
                  lambda **k: GRUCell(3, 4, **k), lambda **k: LSTMCell(3, 4, **k),
                  lambda **k: nn.Linear(3, 4, **k), lambda **k: nn.Embedding(3, 4, **k)]


@pytest.mark.parametrize("make", DEVICE_CLASSES)
def test_device_other_than_cpu_is_refused(make):
    make(device="cpu")
    make(device=None)
    with pytest.raises(ValueError, match=r"device='cuda:0' is not supported"):
        make(device="cuda:0")


def test_dropout_with_one_layer_warns_as_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") \
            as ours:
        GRU(3, 4, dropout=0.5)
    torch = pytest.importorskip("torch")
    with pytest.warns(UserWarning) as theirs:
        torch.nn.GRU(3, 4, dropout=0.5)
    assert str(ours[0].message) == str(theirs[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GRU(3, 4, num_layers=2, dropout=0.5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_list_input_names_the_models_dtype(dtype):
    name = np.dtype(dtype).name
    with pytest.raises(TypeError, match=rf"x: got a list, .* the model's dtype is {name}: pass "
                                        rf"np.asarray\(x, dtype=np.{name}\)"):
        GRU(2, 3, dtype=dtype)([[[1.0, 2.0]]] if dtype == np.float32 else [[[1, 2]]])
    with pytest.raises(TypeError, match=rf"input: got a list, .* the cell's dtype is {name}"):
        LSTMCell(2, 3, dtype=dtype)([1, 2])
    with pytest.raises(TypeError, match=r"x: dtype float64 does not match the model's dtype "
                                        r"float32: cast with x.astype\(np.float32\) or convert "
                                        r"the model with model.to\(np.float64\)"):
        RNN(2, 3)(np.zeros((1, 1, 2)))


# ---------------------------------------------------------------- Sequential
def test_sequential_takes_the_recurrent_output(rng):
    emb, gru, head = nn.Embedding(7, 3, seed=0), GRU(3, 4, batch_first=True, seed=1), \
        nn.Linear(4, 7, seed=2)
    seq = nn.Sequential(*(copy.deepcopy(m) for m in (emb, gru, head)))
    idx = rng.integers(0, 7, (2, 5))
    y = seq(idx)
    out, h_n = gru(emb(idx))
    np.testing.assert_array_equal(y, head(out))
    np.testing.assert_array_equal(seq.state, h_n)
    dy = _x(rng, *y.shape)
    seq.backward(dy)
    emb.backward(gru.backward(head.backward(dy))[0])
    for k, v in seq.grads.items():
        i, _, name = k.partition(".")
        np.testing.assert_array_equal(v, (emb, gru, head)[int(i)].grads[name], err_msg=k)


def test_sequential_refuses_cells_and_non_modules():
    with pytest.raises(TypeError, match=r"item 1: LSTMCell is a single-step cell.*write the "
                                        r"loop: `for t in range\(T\)"):
        nn.Sequential(nn.Linear(2, 3), LSTMCell(3, 3))
    with pytest.raises(TypeError, match="item 0 must be a Module, got function"):
        nn.Sequential(lambda x: x)
