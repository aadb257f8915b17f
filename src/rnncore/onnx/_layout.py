"""Gate orders and weight packing: rnncore (PyTorch) <-> ONNX, in one place.

One ONNX node holds one layer, both directions::

    W (dirs, G*H, D_k)   R (dirs, G*H, H)   B (dirs, 2*G*H) = [Wb | Rb]

with the G gate blocks of each in ONNX's order; rnncore keeps PyTorch's names
(``weight_ih_l{k}[_reverse]`` (G*H, D_k), ``weight_hh_l{k}`` (G*H, H),
``bias_ih_l{k}``/``bias_hh_l{k}`` (G*H,)) and gate orders.
"""
from __future__ import annotations

import numpy as np

#: rnncore class name -> ONNX op type (the same names)
CELLS = ("RNN", "GRU", "LSTM")
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}

#: For each ONNX gate block, in ONNX's order, the index of that block in PyTorch's packing:
#: LSTM ONNX i, o, f, c  <-  PyTorch i, f, g, o;  GRU ONNX z, r, h  <-  PyTorch r, z, n.
TORCH_BLOCK_OF_ONNX = {"RNN": (0,), "GRU": (1, 0, 2), "LSTM": (0, 3, 1, 2)}

#: ONNX's default activations, which rnncore computes (RNN: Tanh or Relu)
DEFAULT_ACTIVATIONS = {"RNN": ("tanh",), "GRU": ("sigmoid", "tanh"),
                       "LSTM": ("sigmoid", "tanh", "tanh")}


def _reorder(a, blocks, H):
    """Gate blocks of ``a`` (G*H, ...) picked in the order ``blocks``."""
    return np.concatenate([a[b * H:(b + 1) * H] for b in blocks], axis=0)


def torch_to_onnx_gates(a, cell, H):
    """(G*H, ...) in PyTorch's gate order -> ONNX's gate order."""
    return _reorder(a, TORCH_BLOCK_OF_ONNX[cell], H)


def onnx_to_torch_gates(a, cell, H):
    """(G*H, ...) in ONNX's gate order -> PyTorch's gate order."""
    return _reorder(a, np.argsort(TORCH_BLOCK_OF_ONNX[cell]), H)


def _suffix(k, d):
    return f"_l{k}" + ("_reverse" if d == 1 else "")


def layer_to_onnx(params, cell, k, num_directions, H, bias):
    """rnncore parameters of layer ``k`` -> ONNX (W, R, B or None)."""
    W, R, B = [], [], []
    for d in range(num_directions):
        s = _suffix(k, d)
        W.append(torch_to_onnx_gates(params["weight_ih" + s], cell, H))
        R.append(torch_to_onnx_gates(params["weight_hh" + s], cell, H))
        if bias:
            B.append(np.concatenate([torch_to_onnx_gates(params["bias_ih" + s], cell, H),
                                     torch_to_onnx_gates(params["bias_hh" + s], cell, H)]))
    return np.stack(W), np.stack(R), (np.stack(B) if bias else None)


def layer_from_onnx(W, R, B, cell, k, H):
    """ONNX (W, R, B or None) of layer ``k`` -> rnncore parameter dict."""
    GH = GATES[cell] * H
    out = {}
    for d in range(W.shape[0]):
        s = _suffix(k, d)
        out["weight_ih" + s] = onnx_to_torch_gates(W[d], cell, H)
        out["weight_hh" + s] = onnx_to_torch_gates(R[d], cell, H)
        if B is not None:
            out["bias_ih" + s] = onnx_to_torch_gates(B[d, :GH], cell, H)
            out["bias_hh" + s] = onnx_to_torch_gates(B[d, GH:], cell, H)
    return out
