"""``export``: an rnncore RNN/GRU/LSTM model -> an ONNX graph that computes the same.

The graph, for L layers and dirs = 1 or 2 directions (time-major names)::

    x (T, N, D)                       [Transpose from (N, T, D) if batch_first]
    layer k: RNN/GRU/LSTM node, direction forward|bidirectional, layout 0
             (GRU: linear_before_reset = 1 if reset_after else 0)
        X (T, N, D_k) -> Y (T, dirs, N, H), Y_h (dirs, N, H) [, Y_c]
        Y -> Transpose (T, N, dirs, H) -> Reshape (T, N, dirs*H)   (PyTorch's concat)
    last layer, merge_mode sum/mul/ave: Gather both directions -> Add / Mul / Add*0.5
    lengths: out masked to 0 past each length; rows of length 0 keep h0 (as rnncore)
    h_n = Concat(Y_h of each layer) (L*dirs, N, H) [, c_n]
    out (T, N, F)                     [Transpose to (N, T, F) if batch_first]

ONNX Runtime's CPU kernels refuse ``layout=1``, so ``batch_first`` is two
Transposes around layout-0 nodes.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .._version import __version__
from ._layout import DEFAULT_ACTIVATIONS, layer_to_onnx

__all__ = ["export", "DEFAULT_OPSET", "METADATA_KEY"]

#: Default opset: 17 is read by every ONNX Runtime since 1.13 and by torch.onnx.
DEFAULT_OPSET = 17
#: Oldest opset accepted (the ``layout`` attribute of RNN/GRU/LSTM and Squeeze's axes input).
MIN_OPSET = 14
#: ``metadata_props`` key holding the model's class and config (JSON).
METADATA_KEY = "rnncore"

_ONNX_DTYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


class _Graph:
    """Collects nodes and initializers with unique, readable names."""

    def __init__(self):
        self.nodes, self.inits, self._names = [], [], set()

    def const(self, name, value):
        """An initializer ``name`` (written once; later calls reuse it)."""
        if name not in self._names:
            self._names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, outputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs


def _cell_of(model):
    from ..models import GRU, LSTM, RNN
    for cls in (LSTM, GRU, RNN):
        if isinstance(model, cls):
            return cls.__name__
    raise TypeError(f"model: expected an rnncore RNN, GRU or LSTM, got {type(model).__name__}")


def _cell_attrs(model, cell, nd):
    """ONNX attributes that make the node compute the rnncore cell."""
    if cell == "RNN":
        act = "Relu" if getattr(model, "nonlinearity", "tanh") == "relu" else "Tanh"
        return {"activations": [act] * nd}
    attrs = {"activations": [a.capitalize() for a in DEFAULT_ACTIVATIONS[cell]] * nd}
    if cell == "GRU":
        # PyTorch's GRU (reset after the recurrent product, b_hn inside it) is
        # linear_before_reset=1; GRU(reset_after=False) (reset before it) is 0.
        attrs["linear_before_reset"] = int(model.reset_after)
    return attrs


def _refuse_projection(model):
    """ONNX's LSTM op has no projection: an LSTM(proj_size=P) cannot be one LSTM node."""
    P = getattr(model, "proj_size", 0)
    if P:
        raise NotImplementedError(
            f"rnncore.onnx.export: LSTM(proj_size={P}) cannot be exported: ONNX's LSTM op "
            "has no projection (no weight_hr; its recurrence reads the unprojected "
            f"h of size hidden_size={model.hidden_size}, not h W_hr^T of size {P}); "
            "export an LSTM with proj_size=0")


def _refuse_layer_norm(model):
    """ONNX's LSTM/GRU ops have no layer normalisation inside the recurrence."""
    if getattr(model, "layer_norm", False):
        raise NotImplementedError(
            f"rnncore.onnx.export: {type(model).__name__}(layer_norm=True) cannot be exported: "
            "ONNX's LSTM and GRU ops have no layer normalisation of the pre-activations or "
            "of the cell state; export a model with layer_norm=False")


def export(model, path, *, lengths=False, initial_states=False, opset=DEFAULT_OPSET,
           graph_name=None):
    """Write ``model`` as an ONNX graph that computes ``model(x, ...)`` in inference mode.

    Parameters
    ----------
    model : rnncore.RNN, GRU or LSTM
    path : str, path-like or None
        Where to write the ``.onnx`` file; None only returns the ModelProto.
    lengths : bool, default False
        Add an int64 input ``lengths`` (N,) (the model's ``lengths=``), fed to
        the nodes' ``sequence_lens``; ``out`` is 0 past each length.
    initial_states : bool, default False
        Add inputs ``h0`` (and ``c0`` for LSTM), (L*dirs, N, H); without them
        the states start at zero.
    opset : int, default 17
        ONNX opset of the graph, 14 or newer.
    graph_name : str, optional

    Returns
    -------
    onnx.ModelProto
        Inputs ``x`` (T, N, D) ((N, T, D) if ``batch_first``) [, ``lengths``]
        [, ``h0`` [, ``c0``]]; outputs ``out``, ``h_n`` [, ``c_n``] with the
        model's shapes and dtype. T and N are dynamic.

    Raises
    ------
    TypeError
        ``model`` is not an rnncore RNN/GRU/LSTM.
    ValueError
        ``opset`` out of range.
    NotImplementedError
        An ``LSTM(proj_size=P)`` with P > 0: ONNX's LSTM op has no projection;
        a model with ``layer_norm=True``: ONNX's ops have no layer normalisation.

    Notes
    -----
    Dropout is a training-time operation and is not exported. Unbatched
    (2-D) inputs are not part of the graph: add a batch axis of 1.

    Examples
    --------
    >>> import rnncore, rnncore.onnx                             # doctest: +SKIP
    >>> rnncore.onnx.export(rnncore.LSTM(8, 16), "lstm.onnx")     # doctest: +SKIP
    """
    cell = _cell_of(model)
    _refuse_projection(model)
    _refuse_layer_norm(model)
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not (
            MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()):
        raise ValueError(f"opset: expected an int in [{MIN_OPSET}, "
                         f"{onnx.defs.onnx_opset_version()}], got {opset!r}")
    dtype = np.dtype(model.dtype)
    et = _ONNX_DTYPE[dtype]
    H, L, nd = model.hidden_size, model.num_layers, model.num_directions
    state_names = ["h", "c"] if cell == "LSTM" else ["h"]
    merge = model.merge_mode if nd == 2 else "concat"
    g = _Graph()
    inputs, x, seq_lens, states0 = _graph_inputs(g, model, et, state_names, lengths,
                                                 initial_states)
    attrs = _cell_attrs(model, cell, nd)
    finals = [[] for _ in state_names]  # per state: each layer's (dirs, N, H)
    layer_in = x
    for k in range(L):
        node_in = [layer_in] + _weights(g, model, cell, k, dtype) + [seq_lens]
        node_in += [_layer_slice(g, s, k, nd) if L > 1 else s for s in states0]
        while node_in[-1] == "":
            node_in.pop()
        node_out = [f"Y_l{k}"] + [f"Y_{s}_l{k}" for s in state_names]
        g.node(cell, node_in, node_out, f"{cell}_l{k}", hidden_size=H,
               direction="bidirectional" if nd == 2 else "forward", **attrs)
        for i in range(len(state_names)):
            finals[i].append(node_out[1 + i])
        layer_in = _layer_output(g, node_out[0], k, nd, merge if k == L - 1 else "concat",
                                 dtype)

    out = _mask_padding(g, layer_in, "lengths", dtype) if lengths else layer_in
    F = nd * H if merge == "concat" else H
    if model.batch_first:
        g.node("Transpose", [out], ["out"], "out_to_batch_first", perm=[1, 0, 2])
        outputs = [helper.make_tensor_value_info("out", et, ["N", "T", F])]
    else:
        g.node("Identity", [out], ["out"], "out")
        outputs = [helper.make_tensor_value_info("out", et, ["T", "N", F])]
    for i, s in enumerate(state_names):
        fin = g.node("Concat", finals[i], [f"{s}_n_layers"], f"{s}_n", axis=0)
        if lengths and states0:
            # rnncore (and PyTorch) keep h0 for a sequence of length 0; ONNX Runtime gives 0
            fin = _keep_initial_for_empty(g, fin, states0[i], "lengths", s)
        g.node("Identity", [fin], [f"{s}_n"], f"{s}_n_out")
        outputs.append(helper.make_tensor_value_info(f"{s}_n", et, [L * nd, "N", H]))

    graph = helper.make_graph(g.nodes, graph_name or f"rnncore_{cell}", inputs, outputs,
                              initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="rnncore", producer_version=__version__)
    proto.ir_version = min(proto.ir_version, _max_ir_version(int(opset)))
    meta = {"class": cell, "config": model.get_config(),
            "lengths": bool(lengths), "initial_states": bool(initial_states)}
    helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(proto, full_check=True)
    if path is not None:
        onnx.save(proto, path)
    return proto


def _graph_inputs(g, model, et, state_names, lengths, initial_states):
    """Graph inputs; the time-major x, sequence_lens ("" if none) and state input names."""
    L, nd, H, D = model.num_layers, model.num_directions, model.hidden_size, model.input_size
    if model.batch_first:
        inputs = [helper.make_tensor_value_info("x", et, ["N", "T", D])]
        x = g.node("Transpose", ["x"], ["x_time_major"], "x_to_time_major", perm=[1, 0, 2])
    else:
        inputs = [helper.make_tensor_value_info("x", et, ["T", "N", D])]
        x = "x"
    seq_lens = ""
    if lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT64, ["N"]))
        seq_lens = g.node("Cast", ["lengths"], ["sequence_lens"], "lengths_to_int32",
                          to=TensorProto.INT32)
    states0 = [f"{s}0" for s in state_names] if initial_states else []
    for s in states0:
        inputs.append(helper.make_tensor_value_info(s, et, [L * nd, "N", H]))
    return inputs, x, seq_lens, states0


def _weights(g, model, cell, k, dtype):
    """Initializers W, R, B ("" without bias) of layer k, gates in ONNX's order."""
    W, R, B = layer_to_onnx(model.params, cell, k, model.num_directions, model.hidden_size,
                            model.bias)
    return [g.const(f"W_l{k}", W.astype(dtype)), g.const(f"R_l{k}", R.astype(dtype)),
            g.const(f"B_l{k}", B.astype(dtype)) if B is not None else ""]


def _layer_slice(g, s, k, nd):
    """Layer k's rows [k*dirs, (k+1)*dirs) of the state input ``s`` (L*dirs, N, H)."""
    return g.node("Slice", [s, g.const(f"{s}_start_l{k}", np.array([k * nd], np.int64)),
                            g.const(f"{s}_end_l{k}", np.array([(k + 1) * nd], np.int64)),
                            g.const("axis0", np.array([0], np.int64))],
                  [f"{s}_l{k}"], f"{s}_slice_l{k}")


def _layer_output(g, Y, k, nd, merge, dtype):
    """Y (T, dirs, N, H) -> (T, N, dirs*H) (PyTorch's concat), or (T, N, H) merged."""
    if nd == 1:
        return g.node("Squeeze", [Y, g.const("axis1", np.array([1], np.int64))],
                      [f"out_l{k}"], f"squeeze_l{k}")
    if merge == "concat":
        t = g.node("Transpose", [Y], [f"Y_tndh_l{k}"], f"directions_last_l{k}",
                   perm=[0, 2, 1, 3])
        return g.node("Reshape", [t, g.const("tnf", np.array([0, 0, -1], np.int64))],
                      [f"out_l{k}"], f"concat_directions_l{k}")
    a = g.node("Gather", [Y, g.const("forward", np.array(0, np.int64))], ["out_forward"],
               "out_forward", axis=1)
    b = g.node("Gather", [Y, g.const("reverse", np.array(1, np.int64))], ["out_reverse"],
               "out_reverse", axis=1)
    if merge == "mul":
        return g.node("Mul", [a, b], ["out_mul"], "merge_mul")
    total = g.node("Add", [a, b], ["out_sum"], "merge_sum")
    if merge == "sum":
        return total
    return g.node("Mul", [total, g.const("half", np.array(0.5, dtype))], ["out_ave"],
                  "merge_ave")


def _max_ir_version(opset):
    """Oldest IR version that carries ``opset`` (so older runtimes can read the file)."""
    for ir, op in ((8, 17), (8, 18), (9, 20), (10, 21), (10, 22), (11, 23)):
        if opset <= op:
            return ir
    return onnx.IR_VERSION


def _valid_mask(g, lengths, T_like):
    """Bool (T, N, 1): step t < lengths[n]."""
    shape = g.node("Shape", [T_like], ["out_shape"], "out_shape")
    T = g.node("Gather", [shape, g.const("zero", np.array(0, np.int64))], ["T"], "T", axis=0)
    steps = g.node("Range", [g.const("range_start", np.array(0, np.int64)), T,
                             g.const("range_step", np.array(1, np.int64))], ["steps"], "steps")
    t = g.node("Unsqueeze", [steps, g.const("axes_1_2", np.array([1, 2], np.int64))],
               ["steps_T11"], "steps_T11")
    n = g.node("Unsqueeze", [lengths, g.const("axes_0_2", np.array([0, 2], np.int64))],
               ["lengths_1N1"], "lengths_1N1")
    return g.node("Less", [t, n], ["valid"], "valid")


def _mask_padding(g, out, lengths, dtype):
    """out (T, N, F) -> 0 where t >= lengths[n] (rnncore's and pad_packed_sequence's padding)."""
    valid = _valid_mask(g, lengths, out)
    return g.node("Where", [valid, out, g.const("zero_out", np.array(0, dtype))],
                  ["out_masked"], "zero_padding")


def _keep_initial_for_empty(g, fin, s0, lengths, s):
    """(L*dirs, N, H): the initial state for rows of length 0."""
    if "empty" not in {n.name for n in g.nodes}:
        e = g.node("Equal", [lengths, g.const("zero_len", np.array(0, np.int64))], ["empty_N"],
                   "empty_N")
        g.node("Unsqueeze", [e, g.const("axes_0_2e", np.array([0, 2], np.int64))], ["empty"],
               "empty")
    return g.node("Where", ["empty", s0, fin], [f"{s}_n_kept"], f"{s}_n_keep_initial")
