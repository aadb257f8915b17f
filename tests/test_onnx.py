"""rnncore.onnx: export against ONNX Runtime and ONNX's reference evaluator, load of
rnncore's and torch.onnx's graphs, round trips, and every refusal naming its node.

ONNX Runtime (1.32) has no float64 RNN/GRU/LSTM kernels ("does not support double
yet"), so float64 graphs are checked with ``onnx.reference.ReferenceEvaluator``,
which ignores ``sequence_lens`` (no ``lengths`` there) and has no Relu for RNN.
"""
import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import rnncore  # noqa: E402
import rnncore.onnx as ronnx  # noqa: E402
from rnncore.onnx import _layout  # noqa: E402

from conftest import make_model  # noqa: E402

T, N, D, H = 5, 4, 3, 4
#: ONNX Runtime against rnncore, float32 (the issue's 1e-5)
ORT_TOL = dict(rtol=1e-5, atol=1e-5)
#: ONNX's reference evaluator (NumPy) against rnncore, float64
REF64_TOL = dict(rtol=1e-10, atol=1e-12)
DIRECTIONS = [(False, "concat"), (True, "concat"), (True, "sum"), (True, "mul"), (True, "ave")]
DIR_IDS = ["uni", "bi-concat", "bi-sum", "bi-mul", "bi-ave"]
#: "gru_rb" is GRU(reset_after=False), exported as linear_before_reset=0
CELLS = ["rnn_tanh", "rnn_relu", "gru", "gru_rb", "lstm"]


def _make(cell, **kw):
    """make_model, with "gru_rb" the reset-before GRU."""
    if cell == "gru_rb":
        return make_model("gru", D, H, reset_after=False, **kw)
    return make_model(cell, D, H, **kw)


def _lbr(proto):
    """linear_before_reset of each GRU node."""
    return [onnx.helper.get_attribute_value(a) for n in proto.graph.node if n.op_type == "GRU"
            for a in n.attribute if a.name == "linear_before_reset"]


def _inputs(model, rng, lengths, initial_states):
    """x in the model's layout, lengths (with a 0 and a full row) and the states."""
    L, nd = model.num_layers, model.num_directions
    x = rng.standard_normal((T, N, D)).astype(model.dtype)
    # with states a row of length 0 keeps h0; without, the longest row ends before T
    lens = (np.array([T, 0, 2, 1]) if initial_states else np.array([T - 2, 0, 3, 1])
            ) if lengths else None
    if lengths:
        x[np.arange(T)[:, None] >= lens[None, :]] = 0
    if model.batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    n_states = 2 if isinstance(model, rnncore.LSTM) else 1
    states = [rng.standard_normal((L * nd, N, H)).astype(model.dtype)
              for _ in range(n_states)] if initial_states else []
    return x, lens, states


def _model_outputs(model, x, lens, states):
    if isinstance(model, rnncore.LSTM):
        y, (h, c) = model(x, tuple(states) if states else None, lengths=lens, train=False)
        return [y, h, c]
    y, h = model(x, states[0] if states else None, lengths=lens, train=False)
    return [y, h]


def _feeds(x, lens, states):
    feeds = {"x": x}
    if lens is not None:
        feeds["lengths"] = lens.astype(np.int64)
    for name, s in zip(("h0", "c0"), states):
        feeds[name] = s
    return feeds


def _run_ort(proto, feeds):
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _assert_outputs(got, want, tol):
    assert len(got) == len(want)
    for name, g, w in zip(("out", "h_n", "c_n"), got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        np.testing.assert_allclose(g, w, err_msg=name, **tol)


def _same_state_dict(a, b):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


@pytest.mark.parametrize("bidirectional,merge_mode", DIRECTIONS, ids=DIR_IDS)
@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("cell", CELLS)
def test_export_matches_onnxruntime_and_round_trips(cell, num_layers, bidirectional,
                                                    merge_mode, rng):
    """Every batch_first x lengths x initial-states variant, float32, in ONNX Runtime."""
    for batch_first, lengths, initial in itertools.product([False, True], repeat=3):
        model = _make(cell, num_layers=num_layers, bidirectional=bidirectional,
                      merge_mode=merge_mode, batch_first=batch_first, seed=3)
        proto = ronnx.export(model, None, lengths=lengths, initial_states=initial)
        if cell.startswith("gru"):
            assert _lbr(proto) == [int(cell == "gru")] * num_layers
        x, lens, states = _inputs(model, rng, lengths, initial)
        want = _model_outputs(model, x, lens, states)
        got = _run_ort(proto, _feeds(x, lens, states))
        _assert_outputs(got, want, ORT_TOL)
        back = ronnx.load(proto)
        assert type(back) is type(model) and back.get_config() == model.get_config()
        _same_state_dict(back.state_dict(), model.state_dict())


@pytest.mark.parametrize("cell,num_layers,bidirectional,merge_mode,batch_first", [
    ("lstm", 2, True, "concat", False), ("gru", 2, True, "ave", True),
    ("rnn_tanh", 1, True, "mul", False), ("rnn_tanh", 2, False, "concat", True),
    ("lstm", 1, True, "sum", True), ("gru", 1, False, "concat", False),
    ("gru_rb", 1, False, "concat", False), ("gru_rb", 2, True, "concat", True),
    ("gru_rb", 1, True, "sum", False), ("gru_rb", 2, True, "mul", False),
    ("gru_rb", 1, True, "ave", True)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_export_matches_reference_evaluator(cell, num_layers, bidirectional, merge_mode,
                                            batch_first, dtype, rng):
    from onnx.reference import ReferenceEvaluator
    model = _make(cell, num_layers=num_layers, bidirectional=bidirectional,
                  merge_mode=merge_mode, batch_first=batch_first, dtype=dtype, seed=5)
    proto = ronnx.export(model, None, initial_states=True)
    x, _, states = _inputs(model, rng, False, True)
    want = _model_outputs(model, x, None, states)
    got = ReferenceEvaluator(proto).run(None, _feeds(x, None, states))
    _assert_outputs(got, want, REF64_TOL if dtype == np.float64 else ORT_TOL)
    _same_state_dict(ronnx.load(proto).state_dict(), model.state_dict())


@pytest.mark.parametrize("cell", ["gru", "gru_rb", "lstm"])
def test_a_swapped_gate_is_caught(cell, rng, monkeypatch):
    """The tolerance is sensitive: exporting with two gate blocks swapped fails it."""
    model = _make(cell, bidirectional=True, seed=0)
    x, _, _ = _inputs(model, rng, False, False)
    want = _model_outputs(model, x, None, [])
    wrong = {"gru": (0, 1, 2), "lstm": (0, 1, 3, 2)}[cell[:4].rstrip("_")]  # r<->z; f<->g
    monkeypatch.setitem(_layout.TORCH_BLOCK_OF_ONNX, cell[:4].rstrip("_").upper(), wrong)
    got = _run_ort(ronnx.export(model, None), {"x": x})
    assert np.abs(got[0] - want[0]).max() > 1e3 * ORT_TOL["atol"]


@pytest.mark.parametrize("reset_after", [True, False])
def test_the_wrong_linear_before_reset_is_caught(reset_after, rng):
    """linear_before_reset is checked by the outputs: flipping it fails the tolerance
    (a bias of 0.5 makes b_hn inside or outside the reset product matter)."""
    model = rnncore.GRU(D, H, reset_after=reset_after, seed=0)
    model.load_state_dict({k: v + 0.5 if k.startswith("bias") else v
                           for k, v in model.state_dict().items()})
    x, _, _ = _inputs(model, rng, False, False)
    proto = ronnx.export(model, None)
    assert _lbr(proto) == [int(reset_after)]
    _set_attr(_cell_node(proto), linear_before_reset=int(not reset_after))
    got = _run_ort(proto, {"x": x})
    assert np.abs(got[0] - _model_outputs(model, x, None, [])[0]).max() > 1e3 * ORT_TOL["atol"]


def test_export_writes_a_file_and_checks_arguments(tmp_path):
    model = rnncore.GRU(D, H, num_layers=2, bidirectional=True, seed=0)
    path = tmp_path / "gru.onnx"
    proto = ronnx.export(model, path)
    assert path.exists()
    g = onnx.load(str(path)).graph
    assert [n.op_type for n in g.node if n.op_type == "GRU"] == ["GRU", "GRU"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in g.node[0].attribute}
    assert attrs["linear_before_reset"] == 1 and attrs["direction"] == b"bidirectional"
    _same_state_dict(ronnx.load(str(path)).state_dict(), model.state_dict())
    assert proto.opset_import[0].version == ronnx.DEFAULT_OPSET
    with pytest.raises(ValueError, match="opset"):
        ronnx.export(model, None, opset=9)
    with pytest.raises(TypeError, match="model: expected an rnncore RNN, GRU or LSTM"):
        ronnx.export(rnncore.nn.Linear(3, 4), None)


def test_bias_false_and_other_opsets_round_trip(rng):
    for cell, opset in (("lstm", 14), ("gru", 18), ("gru_rb", 14), ("rnn_tanh", 20)):
        model = _make(cell, num_layers=2, bias=False, seed=1)
        proto = ronnx.export(model, None, opset=opset, lengths=True)
        assert all(len(n.input) < 4 or n.input[3] == "" for n in proto.graph.node
                   if n.op_type in ("RNN", "GRU", "LSTM"))
        x, lens, _ = _inputs(model, rng, True, False)
        _assert_outputs(_run_ort(proto, _feeds(x, lens, [])),
                        _model_outputs(model, x, lens, []), ORT_TOL)
        back = ronnx.load(proto)
        assert not back.bias
        _same_state_dict(back.state_dict(), model.state_dict())


# --------------------------------------------------------------------- torch.onnx
def _torch_export(module, x, path, dynamo):
    torch = pytest.importorskip("torch")
    if dynamo:
        pytest.importorskip("onnxscript")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), dynamo=dynamo,
                          verbose=False)


@pytest.mark.parametrize("name,batch_first,bias,dynamo", [
    ("LSTM", False, True, False), ("LSTM", True, False, False), ("GRU", True, True, False),
    ("GRU", False, False, False), ("RNN", False, True, False), ("RNN", True, True, False),
    ("LSTM", True, True, True), ("GRU", False, True, True)],
    ids=lambda v: {False: "0", True: "1"}.get(v, v) if isinstance(v, bool) else v)
def test_load_torch_onnx_export(name, batch_first, bias, dynamo, tmp_path, rng):
    """torch.onnx.export -> load -> equal weights and outputs. The TorchScript exporter
    (dynamo=False) for all three; torch 2.13's default dynamo exporter (needs onnxscript)
    for LSTM and GRU (it unrolls nn.RNN: see the refusal test)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    kw = dict(num_layers=2, bidirectional=True, batch_first=batch_first, bias=bias)
    t = getattr(torch.nn, name)(D, H, **kw)
    x = rng.standard_normal((N, T, D) if batch_first else (T, N, D)).astype(np.float32)
    path = tmp_path / "t.onnx"
    _torch_export(t, x, path, dynamo)
    model = ronnx.load(path)
    assert type(model).__name__ == name
    assert (model.num_layers, model.bidirectional, model.batch_first, model.bias) == (
        2, True, batch_first, bias)
    _same_state_dict(model.state_dict(),
                     {k: v.detach().numpy() for k, v in t.state_dict().items()})
    with torch.no_grad():
        y_t, s_t = t(torch.from_numpy(x))
    s_t = s_t if isinstance(s_t, tuple) else (s_t,)
    got = _model_outputs(model, x, None, [])
    _assert_outputs(got, [y_t.numpy()] + [s.numpy() for s in s_t], ORT_TOL)


def test_load_refuses_dynamo_unrolled_rnn(tmp_path, rng):
    torch = pytest.importorskip("torch")
    t = torch.nn.RNN(D, H)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    _torch_export(t, x, tmp_path / "r.onnx", dynamo=True)
    with pytest.raises(ValueError, match=r"MatMul node '.+'.*dynamo=False"):
        ronnx.load(tmp_path / "r.onnx")


def test_load_layout1_node_as_batch_first(rng):
    """A hand-written graph: one bidirectional LSTM node with layout=1 (batch-major), which
    ONNX Runtime's CPU kernels refuse; checked with ONNX's reference evaluator."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator
    W, R, B = (rng.standard_normal(s).astype(np.float32)
               for s in ((2, 4 * H, D), (2, 4 * H, H), (2, 8 * H)))
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y", "Y_h", "Y_c"], name="lstm",
                            hidden_size=H, direction="bidirectional", layout=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", D])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("Y", "Y_h", "Y_c")],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((W, "W"), (R, "R"), (B, "B"))])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ronnx.load(proto)
    assert model.batch_first and model.bidirectional
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    Y, Y_h, Y_c = ReferenceEvaluator(proto).run(None, {"x": x})  # (N, T, 2, H), (N, 2, H)
    out, (h_n, c_n) = model(x, train=False)
    np.testing.assert_allclose(out, Y.reshape(N, T, 2 * H), **ORT_TOL)
    np.testing.assert_allclose(h_n, Y_h.transpose(1, 0, 2), **ORT_TOL)
    np.testing.assert_allclose(c_n, Y_c.transpose(1, 0, 2), **ORT_TOL)


# ------------------------------------------------------------------- refusals
def _exported(cls=rnncore.LSTM, **kw):
    return ronnx.export(cls(D, H, seed=0, **kw), None)


def _cell_node(proto):
    return next(n for n in proto.graph.node if n.op_type in ("RNN", "GRU", "LSTM"))


def _set_attr(node, **attrs):
    for k, v in attrs.items():
        for a in list(node.attribute):
            if a.name == k:
                node.attribute.remove(a)
        node.attribute.append(onnx.helper.make_attribute(k, v))


def test_export_refuses_projected_lstm():
    """ONNX's LSTM op has no projection: refused, naming proj_size and why."""
    for kw in (dict(), dict(num_layers=2, bidirectional=True)):
        model = rnncore.LSTM(D, H, proj_size=2, seed=0, **kw)
        with pytest.raises(NotImplementedError, match=r"LSTM\(proj_size=2\) cannot be "
                                                      r"exported: ONNX's LSTM op has no "
                                                      "projection"):
            ronnx.export(model, None)


def test_load_linear_before_reset_of_foreign_and_mixed_graphs():
    """linear_before_reset=0 without rnncore's metadata is a GRU(reset_after=False); with
    metadata that says otherwise, or with layers that disagree, it is refused."""
    p = _exported(rnncore.GRU, num_layers=2)
    for node in p.graph.node:
        if node.op_type == "GRU":
            _set_attr(node, linear_before_reset=0)
    with pytest.raises(ValueError, match="metadata says reset_after=True, its nodes say False"):
        ronnx.load(p)
    del p.metadata_props[:]
    model = ronnx.load(p)
    assert type(model) is rnncore.GRU and not model.reset_after and model.num_layers == 2
    _set_attr([n for n in p.graph.node if n.op_type == "GRU"][1], linear_before_reset=1)
    with pytest.raises(ValueError, match=r"GRU node 'GRU_l1': linear_before_reset 1 differs"):
        ronnx.load(p)
    _set_attr(_cell_node(p), linear_before_reset=2)
    with pytest.raises(ValueError, match=r"GRU node 'GRU_l0': linear_before_reset=2"):
        ronnx.load(p)


def test_load_refusals_name_the_node():

    cases = [
        (dict(direction="reverse"), r"LSTM node 'LSTM_l0': direction 'reverse'"),
        (dict(clip=3.0), r"LSTM node 'LSTM_l0': attribute 'clip'"),
        (dict(input_forget=1), r"LSTM node 'LSTM_l0': input_forget=1"),
        (dict(activations=["Sigmoid", "Tanh", "Relu"]), r"LSTM node 'LSTM_l0': activations"),
        (dict(hidden_size=H + 1), r"LSTM node 'LSTM_l0': hidden_size=5"),
    ]
    for attrs, msg in cases:
        p = _exported()
        _set_attr(_cell_node(p), **attrs)
        with pytest.raises(ValueError, match=msg):
            ronnx.load(p)

    p = _exported(rnncore.RNN)
    _set_attr(_cell_node(p), activations=["Sigmoid"])
    with pytest.raises(ValueError, match=r"RNN node 'RNN_l0': activations \['sigmoid'\]"):
        ronnx.load(p)

    # peepholes P (non-zero) refused; all-zero peepholes are harmless
    for value, ok in ((0.0, True), (0.5, False)):
        p = _exported()
        node = _cell_node(p)
        p.graph.initializer.append(onnx.numpy_helper.from_array(
            np.full((1, 3 * H), value, np.float32), "P"))
        node.input.extend([""] * (7 - len(node.input)) + ["P"])
        if ok:
            ronnx.load(p)
        else:
            with pytest.raises(ValueError, match=r"LSTM node 'LSTM_l0': peephole"):
                ronnx.load(p)

    # W computed in the graph instead of a constant
    p = _exported()
    node = _cell_node(p)
    init = next(i for i in p.graph.initializer if i.name == "W_l0")
    p.graph.initializer.remove(init)
    p.graph.input.append(onnx.helper.make_tensor_value_info("W_l0", onnx.TensorProto.FLOAT,
                                                            [1, 4 * H, D]))
    with pytest.raises(ValueError, match=r"LSTM node 'LSTM_l0': input W is computed"):
        ronnx.load(p)


def test_load_refuses_foreign_compute_and_non_chains():
    # a MatMul after the LSTM
    p = _exported()
    w = onnx.numpy_helper.from_array(np.eye(H, dtype=np.float32), "proj")
    p.graph.initializer.append(w)
    p.graph.node.append(onnx.helper.make_node("MatMul", ["out", "proj"], ["z"], name="head"))
    with pytest.raises(ValueError, match=r"MatMul node 'head': not an RNN/GRU/LSTM node"):
        ronnx.load(p)
    # merge arithmetic is only accepted in graphs rnncore wrote (metadata), as it is not read
    p = ronnx.export(rnncore.GRU(D, H, bidirectional=True, merge_mode="sum", seed=0), None)
    del p.metadata_props[:]
    with pytest.raises(ValueError, match=r"Add node 'merge_sum'"):
        ronnx.load(p)
    # two layers reading the same input are not a stack
    p = ronnx.export(rnncore.LSTM(D, H, num_layers=2, seed=0), None)
    second = [n for n in p.graph.node if n.op_type == "LSTM"][1]
    second.input[0] = "x"
    second.input[1] = "W_l0"
    with pytest.raises(ValueError, match=r"LSTM node 'LSTM_l1': its input X is not the "
                                         "previous layer's output"):
        ronnx.load(p)
    # a graph with no cell at all
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"], name="id")], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="no RNN, GRU or LSTM node"):
        ronnx.load(onnx.helper.make_model(g))


def test_import_rnncore_never_imports_onnx_and_missing_onnx_is_named():
    code = ("import sys, rnncore; assert 'onnx' not in sys.modules, 'onnx imported'\n"
            "sys.modules['onnx'] = None\n"
            "try:\n    import rnncore.onnx\nexcept ImportError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert 'pip install "rnncore[onnx]"' in res.stdout
