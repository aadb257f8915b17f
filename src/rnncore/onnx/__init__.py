"""ONNX export and import of rnncore's RNN, GRU and LSTM models.

``export(model, path)`` writes a graph of ONNX ``RNN``/``GRU``/``LSTM`` nodes
(one per layer, both directions in one node) that computes what the model
computes; ``load(path)`` builds an rnncore model from such a graph, whether
``export`` or ``torch.onnx.export`` of a ``torch.nn.RNN``/``GRU``/``LSTM``
wrote it, and refuses any graph it cannot represent exactly, naming the node.

Needs the ``onnx`` package (``pip install "rnncore[onnx]"``, which also brings
``onnxruntime`` to run the graphs); ``import rnncore`` never imports it.

Gate orders (the reordering is done in one place, :mod:`rnncore.onnx._layout`)::

    PyTorch / rnncore   LSTM i, f, g, o    GRU r, z, n    biases b_ih, b_hh
    ONNX                LSTM i, o, f, c    GRU z, r, h    B = [Wb, Rb]

PyTorch's GRU (``rnncore.GRU``'s default ``reset_after=True``) applies the
reset gate after the recurrent product (``b_hn`` inside it): ONNX's
``linear_before_reset=1``. ``rnncore.GRU(reset_after=False)`` (reset before
it, Cho et al. 2014, Keras's ``reset_after=False``) is ONNX's default
``linear_before_reset=0``; ``export`` and ``load`` map one to the other.

``LSTM(proj_size=P)`` is not exported (``NotImplementedError``): ONNX's LSTM
op has no projection.
"""
try:
    import onnx as _onnx  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without onnx
    raise ImportError(
        "rnncore.onnx needs the 'onnx' package: pip install \"rnncore[onnx]\" "
        "(which also installs onnxruntime to run the exported graphs)") from exc

from ._export import DEFAULT_OPSET, export  # noqa: E402
from ._load import load  # noqa: E402

__all__ = ["export", "load", "DEFAULT_OPSET"]
