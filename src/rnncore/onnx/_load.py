"""``load``: an ONNX graph of RNN/GRU/LSTM nodes -> the rnncore model it holds.

What is read: the cell nodes (one per layer, in graph order; each must read
the previous one's ``Y``), their constant ``W``, ``R``, ``B`` and their
attributes. What else may be in the graph: nodes that only move data around
(Transpose, Reshape, Squeeze, Concat, Shape, ...: what ``torch.onnx.export``
writes around its LSTM/GRU/RNN nodes), not interpreted; a graph written by
:func:`rnncore.onnx.export` (its ``metadata_props`` say so) may also hold the
merge and padding nodes export writes, and its ``batch_first``, ``merge_mode``
and ``dropout`` come from that metadata. Anything that would compute
something rnncore does not is refused with an error naming the node.
"""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import numpy_helper

from ._export import METADATA_KEY
from ._layout import CELLS, DEFAULT_ACTIVATIONS, GATES, layer_from_onnx

__all__ = ["load"]

#: Nodes that only move or reshape data, allowed in any graph (not interpreted).
PLUMBING = frozenset({"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat",
                      "Slice", "Gather", "Shape", "Constant", "ConstantOfShape", "Expand",
                      "Cast", "Split"})
#: Further nodes ``export`` writes (merge modes, padding, empty sequences).
EXPORT_NODES = frozenset({"Add", "Mul", "Range", "Less", "Equal", "Where"})


def _refuse(node, why, exc=ValueError):
    name = node.name or "(unnamed)"
    return exc(f"rnncore.onnx.load: {node.op_type} node {name!r}: {why}")


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _text(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def load(path):
    """Build the rnncore RNN/GRU/LSTM held by an ONNX graph.

    Parameters
    ----------
    path : str, path-like or onnx.ModelProto
        A graph written by :func:`rnncore.onnx.export`, or by
        ``torch.onnx.export`` of a ``torch.nn.RNN``/``GRU``/``LSTM`` (both of
        torch's exporters), or any graph of the same form.

    Returns
    -------
    rnncore.RNN, GRU or LSTM
        With the graph's weights (gates reordered to PyTorch's order), its
        dtype, ``bidirectional``, ``bias``, ``batch_first`` (a layout-1 node,
        or a (1, 0, 2) Transpose between the input and the first node).

    Raises
    ------
    ValueError
        A node rnncore cannot represent, named with its op type and name: an
        op that is not a cell or data plumbing; a ``reverse``-only direction;
        activations other than ONNX's defaults (RNN: Tanh or Relu); ``clip``;
        LSTM ``input_forget`` or non-zero peepholes; weights that are not
        constants; cells that are not one chain of layers.

    Notes
    -----
    A GRU node's ``linear_before_reset`` gives the model's ``reset_after``:
    1 (PyTorch's GRU, ``torch.onnx.export``) -> ``GRU(reset_after=True)``, 0
    (ONNX's default, the reset-before GRU of Cho et al. 2014 and Keras's
    ``reset_after=False``) -> ``GRU(reset_after=False)``; every layer must agree.
    """
    proto = path if isinstance(path, onnx.ModelProto) else onnx.load(os.fspath(path))
    graph = proto.graph
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else None
    allowed = PLUMBING | (EXPORT_NODES if meta is not None else frozenset())

    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {}
    for n in graph.node:
        for i, o in enumerate(n.output):
            producer[o] = (n, i)
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            a = _attrs(n)
            if "value" in a:
                consts[n.output[0]] = numpy_helper.to_array(a["value"])

    cells = []
    for n in graph.node:
        if n.domain not in ("", "ai.onnx"):
            raise _refuse(n, f"op from domain {n.domain!r} is not an ONNX standard op")
        if n.op_type in CELLS:
            cells.append(n)
        elif n.op_type not in allowed:
            hint = (" (torch.onnx.export's default dynamo exporter unrolls torch.nn.RNN into "
                    "MatMuls; export it with dynamo=False)" if n.op_type in ("MatMul", "Gemm")
                    else "")
            raise _refuse(n, "not an RNN/GRU/LSTM node nor data plumbing "
                             f"({', '.join(sorted(PLUMBING))}); rnncore cannot represent "
                             f"it{hint}")
    if not cells:
        raise ValueError("rnncore.onnx.load: the graph has no RNN, GRU or LSTM node")
    cell = cells[0].op_type
    for n in cells[1:]:
        if n.op_type != cell:
            raise _refuse(n, f"a {n.op_type} layer after {cell} layers; an rnncore model has "
                             "one cell type")

    layers = [_read_node(n, consts, cell) for n in cells]
    nd, H, dtype = layers[0]["nd"], layers[0]["H"], layers[0]["dtype"]
    for k, (n, lay) in enumerate(zip(cells, layers)):
        _check_chain(n, k, cells, producer, consts)
        for key, what in (("nd", "number of directions"), ("H", "hidden_size"),
                          ("dtype", "dtype"), ("act", "activations"), ("layout", "layout"),
                          ("lbr", "linear_before_reset")):
            if lay[key] != layers[0][key]:
                raise _refuse(n, f"{what} {lay[key]} differs from the first layer's "
                                 f"{layers[0][key]}")
        want_D = layers[0]["D"] if k == 0 else nd * H
        if lay["D"] != want_D:
            raise _refuse(n, f"W has input size {lay['D']}, expected {want_D} "
                             "(the previous layer's output)")

    bias = any(lay["B"] is not None for lay in layers)
    state = {}
    for k, lay in enumerate(layers):
        B = lay["B"]
        if bias and B is None:
            B = np.zeros((nd, 2 * GATES[cell] * H), dtype)
        state.update(layer_from_onnx(lay["W"], lay["R"], B, cell, k, H))

    batch_first = layers[0]["layout"] == 1 or _transposed_input(cells[0], producer)
    kwargs = dict(num_layers=len(cells), bias=bias, batch_first=batch_first,
                  bidirectional=nd == 2, dtype=dtype)
    if cell == "RNN":
        kwargs["nonlinearity"] = layers[0]["act"]
    if cell == "GRU":
        kwargs["reset_after"] = layers[0]["lbr"] == 1
    if meta is not None:
        kwargs = _with_metadata(meta, cell, kwargs, layers[0]["D"], H)
    from .. import models
    model = getattr(models, cell)(layers[0]["D"], H, **kwargs)
    model.load_state_dict(state)
    return model


def _read_node(n, consts, cell):
    """Weights and attributes of one cell node, checked."""
    a = _attrs(n)
    ins = list(n.input) + [""] * (8 - len(n.input))
    direction = _text(a.get("direction", b"forward"))
    if direction not in ("forward", "bidirectional"):
        raise _refuse(n, f"direction {direction!r}: rnncore models run forward or "
                         "bidirectional (a reverse-only layer has no rnncore equivalent)")
    nd = 2 if direction == "bidirectional" else 1
    for key in ("clip", "activation_alpha", "activation_beta"):
        if key in a:
            raise _refuse(n, f"attribute {key!r} is not supported (rnncore's cells have no "
                             "cell clipping or parametrised activations)")
    acts = tuple(_text(s).lower() for s in a.get("activations", []))
    default = DEFAULT_ACTIVATIONS[cell]
    if cell == "RNN":
        acts = acts or default * nd
        if len(set(acts)) != 1 or acts[0] not in ("tanh", "relu"):
            raise _refuse(n, f"activations {list(acts)}: rnncore.RNN has Tanh or Relu, the "
                             "same in both directions")
        act = acts[0]
    else:
        if acts and acts != default * nd:
            raise _refuse(n, f"activations {list(acts)}: rnncore.{cell} computes ONNX's "
                             f"defaults {list(default * nd)}")
        act = None
    lbr = a.get("linear_before_reset", 0) if cell == "GRU" else None
    if lbr not in (None, 0, 1):
        raise _refuse(n, f"linear_before_reset={lbr}: expected 0 (reset-before GRU) or 1")
    if cell == "LSTM" and a.get("input_forget", 0):
        raise _refuse(n, "input_forget=1 (coupled input and forget gates) is not supported")
    if cell == "LSTM" and ins[7]:
        P = consts.get(ins[7])
        if P is None or np.any(P != 0):
            raise _refuse(n, "peephole weights P are not supported (rnncore's LSTM has none)")
    W, R = consts.get(ins[1]), consts.get(ins[2])
    B = consts.get(ins[3]) if ins[3] else None
    for name, arr in (("W", W), ("R", R), ("B", B if ins[3] else 0)):
        if arr is None:
            raise _refuse(n, f"input {name} is computed in the graph; rnncore needs it as a "
                             "constant (an initializer or a Constant node)")
    if W.dtype not in (np.float32, np.float64) or R.dtype != W.dtype:
        raise _refuse(n, f"weights of dtype {W.dtype}/{R.dtype}; rnncore models are float32 "
                         "or float64")
    G = GATES[cell]
    H = R.shape[-1] if R.ndim == 3 else -1
    if R.ndim != 3 or R.shape != (nd, G * H, H) or W.ndim != 3 or W.shape[:2] != (nd, G * H):
        raise _refuse(n, f"W {W.shape} and R {R.shape} do not fit {nd} direction(s) of "
                         f"{G} gates")
    if "hidden_size" in a and a["hidden_size"] != H:
        raise _refuse(n, f"hidden_size={a['hidden_size']} but R is {R.shape}")
    if B is not None and B.shape != (nd, 2 * G * H):
        raise _refuse(n, f"B {B.shape}, expected {(nd, 2 * G * H)}")
    return dict(W=W, R=R, B=None if B is None else B.astype(W.dtype), nd=nd, H=H,
                D=W.shape[2], dtype=np.dtype(W.dtype), act=act, layout=a.get("layout", 0),
                lbr=lbr)


def _upstream_cells(name, producer, consts):
    """(cell node, output index) pairs that value ``name`` is computed from, through plumbing."""
    found, seen, todo = set(), set(), [name]
    while todo:
        v = todo.pop()
        if v in seen or v in consts or v not in producer:
            continue
        seen.add(v)
        node, i = producer[v]
        if node.op_type in CELLS:
            found.add((id(node), i))
        else:
            todo.extend(x for x in node.input if x)
    return found


def _check_chain(n, k, cells, producer, consts):
    """Layer k must read layer k-1's Y (and layer 0 no cell's output)."""
    up = _upstream_cells(n.input[0], producer, consts)
    want = set() if k == 0 else {(id(cells[k - 1]), 0)}
    if up != want:
        raise _refuse(n, "its input X is not the previous layer's output Y; rnncore models "
                         "are one chain of layers (stacked), not a general graph" if k else
                         "the first layer reads another cell's output")


def _transposed_input(first, producer):
    """True if the first cell's X is the graph input passed through a (1, 0, 2) Transpose."""
    v = first.input[0]
    while v in producer:
        node, _ = producer[v]
        if node.op_type == "Transpose" and list(_attrs(node).get("perm", [])) == [1, 0, 2]:
            return True
        if node.op_type not in ("Identity", "Cast"):
            return False
        v = node.input[0]
    return False


def _with_metadata(meta, cell, kwargs, D, H):
    """Model arguments from export's metadata, checked against what the graph says."""
    cfg = meta.get("config", {})
    if meta.get("class") != cell or cfg.get("input_size") != D or cfg.get("hidden_size") != H:
        raise ValueError(f"rnncore.onnx.load: the graph's metadata ({meta.get('class')} "
                         f"{cfg.get('input_size')}->{cfg.get('hidden_size')}) disagrees with "
                         f"its nodes ({cell} {D}->{H})")
    for key in ("num_layers", "bias", "bidirectional", "batch_first", "reset_after"):
        if key in cfg and key in kwargs and cfg[key] != kwargs[key]:
            raise ValueError(f"rnncore.onnx.load: the graph's metadata says {key}={cfg[key]!r}, "
                             f"its nodes say {kwargs[key]!r}")
    return dict(kwargs, merge_mode=cfg.get("merge_mode", "concat"),
                dropout=cfg.get("dropout", 0.0), seed=cfg.get("seed"))
