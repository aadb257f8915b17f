"""rnncore.clip, rnncore.gradcheck and rnncore.io (checkpoints)."""
import json
import os

import numpy as np
import pytest
from conftest import TOL, assert_close_f64

from rnncore import io as rio
from rnncore.module import Module, register_module
from rnncore.nn import Dropout, Embedding, Linear, Sequential
from rnncore.optim import Adam
from rnncore.clip import clip_grad_norm_, clip_grad_value_
from rnncore.gradcheck import gradcheck

GC = dict(rtol=TOL["fd_rtol"], atol=TOL["fd_atol"])


def _grads(rng):
    return {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5),
            "c": rng.standard_normal((2, 2, 2))}


# ---------------------------------------------------------------------------
# clip_grad_norm_ / clip_grad_value_
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_clip_grad_norm_formula(rng, norm_type):
    grads = _grads(rng)
    flat = np.concatenate([g.ravel() for g in grads.values()])
    expected = (np.max(np.abs(flat)) if np.isinf(norm_type)
                else np.sum(np.abs(flat) ** norm_type) ** (1 / norm_type))
    before = {k: g.copy() for k, g in grads.items()}
    total = clip_grad_norm_(grads, max_norm=0.5, norm_type=norm_type)
    np.testing.assert_allclose(total, expected, rtol=1e-13)
    for k in grads:
        assert_close_f64(grads[k], before[k] * 0.5 / (expected + 1e-6), name=k)
    # already small enough: untouched, same total returned
    small = {k: g.copy() for k, g in grads.items()}
    clip_grad_norm_(small, max_norm=1e3, norm_type=norm_type)
    for k in grads:
        np.testing.assert_array_equal(small[k], grads[k])


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
def test_clip_grad_norm_matches_torch(rng, norm_type):
    torch = pytest.importorskip("torch")
    grads = _grads(rng)
    tparams = []
    for g in grads.values():
        t = torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
        t.grad = torch.from_numpy(g.copy())
        tparams.append(t)
    ref = torch.nn.utils.clip_grad_norm_(tparams, max_norm=0.7, norm_type=norm_type)
    total = clip_grad_norm_(list(grads.values()), 0.7, norm_type=norm_type)
    np.testing.assert_allclose(total, ref.item(), rtol=1e-13)
    for g, t in zip(grads.values(), tparams):
        assert_close_f64(g, t.grad.numpy(), atol=TOL["torch_f64_atol"])


def test_clip_grad_norm_inputs_and_nonfinite(rng):
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    lin.grads["weight"][...] = 3.0
    lin.grads["bias"][...] = 4.0
    total = clip_grad_norm_(lin, 1.0)  # a Module: its grads, in place
    assert_close_f64(total, np.sqrt(6 * 9 + 2 * 16))
    np.testing.assert_allclose(np.sqrt(sum((g ** 2).sum() for g in lin.grads.values())), 1.0,
                               rtol=1e-5)
    single = np.full(4, 2.0)
    assert clip_grad_norm_(single, 1.0) == 4.0 and np.allclose(single, 0.5, rtol=1e-5)
    assert clip_grad_norm_([], 1.0) == 0.0
    bad = {"a": np.array([1.0, np.nan])}
    with pytest.raises(RuntimeError, match="total norm of order 2.0 for gradients is non-finite"):
        clip_grad_norm_(bad, 1.0, error_if_nonfinite=True)
    assert bad["a"][0] == 1.0  # untouched when raising
    assert np.isnan(clip_grad_norm_(bad, 1.0))  # as in PyTorch: scaled by nan
    assert np.isnan(bad["a"][0])
    with pytest.raises(ValueError, match="norm_type must be > 0 or inf, got 0.0"):
        clip_grad_norm_(single, 1.0, norm_type=0)
    with pytest.raises(TypeError, match=r"grads\[0\] must be a floating np.ndarray"):
        clip_grad_norm_([np.arange(3)], 1.0)
    with pytest.raises(TypeError, match="grads must be a Module, a dict of arrays"):
        clip_grad_norm_(3.0, 1.0)


def test_clip_grad_value(rng):
    grads = _grads(rng)
    before = {k: g.copy() for k, g in grads.items()}
    clip_grad_value_(grads, 0.5)
    for k in grads:
        np.testing.assert_array_equal(grads[k], np.minimum(np.maximum(before[k], -0.5), 0.5))
    torch = pytest.importorskip("torch")
    t = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    t.grad = torch.from_numpy(before["a"].copy())
    torch.nn.utils.clip_grad_value_([t], 0.5)
    np.testing.assert_array_equal(grads["a"], t.grad.numpy())
    with pytest.raises(ValueError, match="clip_value must be >= 0, got -1.0"):
        clip_grad_value_(grads, -1)


# ---------------------------------------------------------------------------
# gradcheck
# ---------------------------------------------------------------------------
class TanhRNN(Module):
    """A tiny user-written recurrent module: forward returns (out, h_n).

    h_t = tanh(scale * x_t W^T + h_{t-1} U^T), x (N, T, D), out (N, T, H).
    ``scale`` is a required keyword of forward (needs ``forward_kwargs``).
    """

    def __init__(self, D, H, rng, bug=None):
        super().__init__()
        self._add_param("W", rng.standard_normal((H, D)) * 0.5)
        self._add_param("U", rng.standard_normal((H, H)) * 0.5)
        self.bug = bug

    def forward(self, x, h0, *, scale, train=True):
        N, T, _ = x.shape
        hs = np.zeros((N, T + 1, self.params["U"].shape[0]))
        hs[:, 0] = h0
        for t in range(T):
            hs[:, t + 1] = np.tanh(scale * x[:, t] @ self.params["W"].T
                                   + hs[:, t] @ self.params["U"].T)
        if train:
            self.saved = (x, hs, scale)
        return hs[:, 1:].copy(), hs[:, -1].copy()

    def backward(self, dout):
        x, hs, scale = self.saved
        dx = np.zeros_like(x)
        dh = np.zeros_like(hs[:, 0])
        for t in reversed(range(x.shape[1])):
            da = (dout[:, t] + dh) * (1 - hs[:, t + 1] ** 2)
            dW = scale * da.T @ x[:, t]
            if self.bug == "overwrite":
                self.grads["W"][...] = dW if t == x.shape[1] - 1 else self.grads["W"] + dW
            else:
                self.grads["W"] += dW
            self.grads["U"] += da.T @ hs[:, t]
            dx[:, t] = scale * da @ self.params["W"]
            dh = da @ self.params["U"]
        if self.bug == "dx":
            dx[:, 0] *= 1.1
        if self.bug == "dU":
            self.grads["U"] *= 1.01
        return dx, dh


def _rnn_case(rng, bug=None):
    m = TanhRNN(3, 2, rng, bug=bug)
    return m, (rng.standard_normal((2, 3, 3)), rng.standard_normal((2, 2)))


def test_gradcheck_tuple_output_and_forward_kwargs(rng):
    m, inputs = _rnn_case(rng)
    x_before = inputs[0].copy()
    m.grads["W"][...] = 7.0  # stale gradients: gradcheck must zero_grad first
    report = gradcheck(m, inputs, forward_kwargs={"scale": 0.7}, **GC)
    assert report.passed
    assert [e.name for e in report.entries] == ["inputs[0]", "inputs[1]", "grads['W']",
                                                "grads['U']"]
    assert report["grads['U']"].max_abs_err < 1e-8
    np.testing.assert_array_equal(inputs[0], x_before)  # inputs are not modified
    assert np.all(m.grads["W"] == 7.0)  # grads restored
    with pytest.raises(TypeError, match="scale"):
        gradcheck(m, inputs, **GC)  # the keyword is required: forward_kwargs reach forward


class PairState(Module):
    """forward(x, (h, c)) -> (w * x * h + c^2, c): a state given as a tuple, like an LSTM's."""

    def __init__(self, rng, bug=False):
        super().__init__()
        self._add_param("w", rng.standard_normal(3))
        self.bug = bug

    def forward(self, x, state, train=True):
        h, c = state
        if train:
            self.saved = (x, h, c)
        return self.params["w"] * x * h + c ** 2, c

    def backward(self, dout):
        x, h, c = self.saved
        self.grads["w"] += (dout * x * h).sum(0)
        dc = 2 * c * dout * (1.5 if self.bug else 1.0)
        return dout * self.params["w"] * h, (dout * self.params["w"] * x, dc)


def test_gradcheck_tuple_inputs(rng):
    x, h, c = (rng.standard_normal((2, 3)) for _ in range(3))
    rep = gradcheck(PairState(rng), (x, (h, c)), **GC)
    assert [e.name for e in rep.entries] == ["inputs[0]", "inputs[1][0]", "inputs[1][1]",
                                             "grads['w']"]
    with pytest.raises(AssertionError, match=r"inputs\[1\]\[1\]: max abs err"):
        gradcheck(PairState(rng, bug=True), (x, (h, c)), **GC)


@pytest.mark.parametrize("bug,name", [("dx", r"inputs\[0\]"), ("dU", r"grads\['U'\]"),
                                      ("overwrite", r"accumulation of grads\['W'\]")])
def test_gradcheck_names_the_offending_tensor(rng, bug, name):
    m, inputs = _rnn_case(rng, bug=bug)
    with pytest.raises(AssertionError, match=name + r": max abs err [0-9.e-]+ at \("):
        gradcheck(m, inputs, forward_kwargs={"scale": 1.0}, **GC)
    report = gradcheck(m, inputs, forward_kwargs={"scale": 1.0}, raise_exception=False, **GC)
    assert not report.passed and report.failures


def test_gradcheck_library_layers(rng):
    lin = Linear(3, 2, dtype=np.float64, seed=0)
    assert gradcheck(lin, rng.standard_normal((2, 2, 3)), **GC).passed
    emb = Embedding(5, 2, dtype=np.float64, seed=0)
    rep = gradcheck(emb, rng.integers(0, 5, (2, 3)), **GC)  # int inputs are not perturbed
    assert [e.name for e in rep.entries] == ["grads['weight']"]
    model = Sequential(Linear(3, 4, dtype=np.float64, seed=1), Dropout(0.5, seed=0),
                       Linear(4, 2, dtype=np.float64, seed=2))
    x = rng.standard_normal((3, 3))
    with pytest.raises(RuntimeError, match="not deterministic .* before_forward="):
        gradcheck(model, x, **GC)
    rep = gradcheck(model, x, before_forward=lambda m: m[1].reseed(0), **GC)
    assert rep.passed and len(rep.entries) == 5
    with pytest.raises(TypeError, match="gradcheck needs a float64 module: parameter 'weight' "
                                        "has dtype float32"):
        gradcheck(Linear(3, 2), x)


# ---------------------------------------------------------------------------
# io: checkpoints
# ---------------------------------------------------------------------------
def _trained(rng):
    model = Sequential(Embedding(7, 4, dtype=np.float64, seed=0),
                       Linear(4, 5, dtype=np.float64, seed=1), Dropout(0.2, seed=3),
                       Linear(5, 7, bias=False, dtype=np.float64, seed=2))
    opt = Adam(model, lr=0.01, amsgrad=True)
    idx = rng.integers(0, 7, (2, 3))
    for _ in range(2):
        model.zero_grad()
        model.forward(idx)
        model.backward(rng.standard_normal((2, 3, 7)))
        opt.step()
    return model, opt, idx


def test_round_trip_model_optimizer_extra(rng, tmp_path):
    model, opt, idx = _trained(rng)
    path = tmp_path / "ck.npz"
    rio.save(path, model, opt, extra={"step": 2, "vocab": ["a", "b"]})
    ck = rio.load_checkpoint(path)
    m2 = ck["model"]
    assert type(m2) is Sequential and m2.get_config() == model.get_config()
    for k in model.params:
        np.testing.assert_array_equal(m2.params[k], model.params[k])
        assert m2.params[k].dtype == np.float64
    np.testing.assert_array_equal(m2.forward(idx, train=False), model.forward(idx, train=False))
    assert ck["extra"] == {"step": 2, "vocab": ["a", "b"]}
    opt2 = Adam(m2)
    opt2.load_state_dict(ck["optimizer_state"])
    assert ck["optimizer_state"]["step"] == 2 and opt2.lr == 0.01 and opt2.amsgrad
    for m, o in ((model, opt), (m2, opt2)):  # continue both: bit-identical
        for k, g in m.grads.items():
            g[...] = np.arange(g.size).reshape(g.shape) / 7.0
        o.step()
    for k in model.params:
        np.testing.assert_array_equal(m2.params[k], model.params[k])
    # the file is plain arrays: readable without pickle, JSON header as uint8
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["__rnncore__"].tobytes().decode())
        assert z["__rnncore__"].dtype == np.uint8
        assert "param/0.weight" in z.files and "optim/state.1.bias.exp_avg" in z.files
    assert meta["format_version"] == rio.FORMAT_VERSION == 1 and meta["class"] == "Sequential"
    lin = Linear(3, 2, seed=5)  # float32, no optimizer, no extra
    rio.save(tmp_path / "lin.npz", lin)
    lin2 = rio.load(tmp_path / "lin.npz")
    assert lin2.params["weight"].dtype == np.float32
    np.testing.assert_array_equal(lin2.params["bias"], lin.params["bias"])
    ck = rio.load_checkpoint(tmp_path / "lin.npz")
    assert ck["optimizer_state"] is None and ck["extra"] is None


def test_save_is_atomic(rng, tmp_path, monkeypatch):
    model, opt, idx = _trained(rng)
    path = tmp_path / "ck.npz"
    rio.save(path, model, extra={"version": 1})
    before = path.read_bytes()
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    rio.save(path, model, extra={"version": 2})
    assert events[:2] == ["fsync", "replace"]  # data on disk before the rename
    assert rio.load_checkpoint(path)["extra"] == {"version": 2}
    before = path.read_bytes()

    def failing_savez(file, *args, **kwargs):  # dies half-way through writing
        file.write(b"PK\x03\x04 partial data")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    for k in model.params:
        model.params[k] += 1.0
    with pytest.raises(OSError, match="disk full"):
        rio.save(path, model, extra={"version": 3})
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert rio.load_checkpoint(path)["extra"] == {"version": 2}
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # no temp file left behind
    with pytest.raises(TypeError, match="extra must be JSON-serialisable"):
        rio.save(tmp_path / "other.npz", model, extra={"bad": object()})
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]


def test_load_rejects_bad_files(rng, tmp_path):
    model, opt, _ = _trained(rng)
    good = tmp_path / "good.npz"
    rio.save(good, model, opt)
    data = good.read_bytes()
    cases = {
        "truncated.npz": data[: len(data) // 2],
        "tail_cut.npz": data[:-10],
        "empty.npz": b"",
        "random.bin": np.random.default_rng(0).bytes(2000),
    }
    flipped = bytearray(data)
    mid = len(data) // 3
    flipped[mid:mid + 16] = bytes(16)  # zeroed bytes inside a member: CRC mismatch
    cases["flipped.npz"] = bytes(flipped)
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ValueError, match=r"not an rnncore checkpoint|truncated or corrupted"):
            rio.load_checkpoint(tmp_path / name)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3), b=np.ones(2))
    with pytest.raises(ValueError, match=r"not an rnncore checkpoint: no '__rnncore__' entry"):
        rio.load(tmp_path / "foreign.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single .npy array"):
        rio.load(tmp_path / "single.npy")
    with pytest.raises(FileNotFoundError):
        rio.load(tmp_path / "missing.npz")


def _rewrite(src, dst, **changes):
    """Copy an npz, replacing entries (None removes one)."""
    with np.load(src) as z:
        entries = {k: z[k] for k in z.files}
    for k, v in changes.items():
        entries.pop(k) if v is None else entries.__setitem__(k, v)
    np.savez(dst, **entries)


def _meta_array(**changes):
    meta = {"format": "rnncore-checkpoint", "format_version": 1, "class": "Linear",
            "config": {"in_features": 3, "out_features": 2}, "params": ["weight", "bias"]}
    meta.update(changes)
    return np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


def test_load_rejects_foreign_or_inconsistent_checkpoints(tmp_path):
    src = tmp_path / "lin.npz"
    rio.save(src, Linear(3, 2, seed=0))
    bad = tmp_path / "bad.npz"
    cases = [
        (dict(__rnncore__=_meta_array(**{"class": "NoSuchModel"})),
         "unknown model class 'NoSuchModel'"),
        (dict(__rnncore__=_meta_array(format_version=99)),
         "unsupported checkpoint format_version 99"),
        (dict(__rnncore__=_meta_array(format="other")), "bad '__rnncore__' header"),
        (dict(__rnncore__=np.frombuffer(b"{not json", dtype=np.uint8)), "not valid UTF-8 JSON"),
        (dict(__rnncore__=np.zeros(3)), "must be a 1-D uint8 array"),
        (dict(__rnncore__=_meta_array(config={"in_features": -1, "out_features": 2})),
         "cannot rebuild Linear from its config"),
        # a header that lists every entry catches a missing one first
        ({"param/bias": None}, r"checkpoint is damaged: entries \['param/bias'\] listed"),
        ({"param/bias": np.zeros(5)}, "parameters do not fit Linear"),
    ]
    for changes, message in cases:
        _rewrite(src, bad, **changes)
        with pytest.raises(ValueError, match=message):
            rio.load(bad)


EXECUTED = []


def _record(tag):
    EXECUTED.append(tag)
    return tag


class _Payload:
    def __reduce__(self):
        return (_record, ("unpickled!",))


def test_pickled_object_array_is_refused_without_executing(tmp_path):
    src = tmp_path / "lin.npz"
    rio.save(src, Linear(3, 2, seed=0))
    evil = tmp_path / "evil.npz"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload()
    _rewrite(src, evil, **{"param/bias": payload})
    EXECUTED.clear()
    with pytest.raises(ValueError, match=r"entry 'param/bias' is a pickled object array; "
                                         r"refusing to load it"):
        rio.load_checkpoint(evil)
    assert EXECUTED == []
    with np.load(evil, allow_pickle=True) as z:  # the payload is live when unpickled
        z["param/bias"]
    assert EXECUTED == ["unpickled!"]


def test_save_rejects_unsaveable_models(tmp_path):
    class Unregistered(Linear):
        pass

    with pytest.raises(ValueError, match="model class Unregistered is not registered"):
        rio.save(tmp_path / "x.npz", Unregistered(2, 2))
    with pytest.raises(TypeError, match="model must be an rnncore Module"):
        rio.save(tmp_path / "x.npz", {"weight": np.zeros(2)})
    with pytest.raises(TypeError, match="extra must be a dict"):
        rio.save(tmp_path / "x.npz", Linear(2, 2), extra=[1, 2])
    assert os.listdir(tmp_path) == []


@register_module
class _Scaled(Module):
    """A user model registered for loading, with a non-trivial config."""

    def __init__(self, n, factor=2.0):
        super().__init__()
        self.n, self.factor = n, factor
        self._add_param("w", np.arange(n, dtype=np.float64) * factor)

    def get_config(self):
        return {"n": self.n, "factor": self.factor}


def test_round_trip_user_registered_module(tmp_path):
    m = _Scaled(4, factor=0.5)
    m.params["w"][...] = [9.0, 8.0, 7.0, 6.0]
    rio.save(tmp_path / "s.npz", m, compress=True)
    m2 = rio.load(tmp_path / "s.npz")
    assert type(m2) is _Scaled and m2.factor == 0.5
    np.testing.assert_array_equal(m2.params["w"], [9.0, 8.0, 7.0, 6.0])
