"""rnncore: fast, verified recurrent neural networks on the CPU.

Vanilla (Elman) RNN, GRU and LSTM — one- or two-directional, stacked —
trained with backpropagation through time. The time loops, forward and
backward, run in Cython ``nogil`` kernels over SciPy's BLAS; the API takes and
returns NumPy arrays and follows PyTorch's conventions (names, shapes, gate
orders), so a PyTorch ``state_dict`` loads 1:1.

Modules
-------
reference   the pure-NumPy specification every kernel is tested against
functional  the same functions, kernel-backed
models      RNN, GRU, LSTM (also importable from the top level)
cells       RNNCell, GRUCell, LSTMCell (single steps)
nn          Embedding, Linear, Dropout, Sequential
losses      cross_entropy, mse_loss, binary_cross_entropy_with_logits, last_step
optim       SGD, Adam, AdamW, Adagrad, RMSprop, StepLR, CosineAnnealingLR
clip, gradcheck, io   clipping, gradient checks, save/load
charlm      the character-level language model (loaded on first use, like the rest below)
onnx        ONNX export and import;  interop: Keras and cs231n weights
distributed, dask_inference   scale-out (MPI, Dask)
"""
from ._version import __version__
from ._runtime.blas import select_blas_kernels as _select_blas_kernels

_select_blas_kernels()  # before the kernels load SciPy's BLAS; see rnncore._runtime.blas

from . import cells, functional, losses, nn, optim, reference  # noqa: E402
from ._runtime.blas import threadpool_limits  # noqa: E402
from ._runtime.config import show_config  # noqa: E402
from ._bindings import cache_info, empty_cache, set_cache_limit  # noqa: E402
from ._runtime.threads import (set_loop_parallel_min, set_parallel_directions,  # noqa: E402
                               set_row_split)
from .cells import GRUCell, LSTMCell, RNNCell  # noqa: E402
from .io import load, load_checkpoint, save  # noqa: E402
from .models import GRU, LSTM, RNN  # noqa: E402
from .module import Module, Parameter  # noqa: E402
from ._grad_mode import (enable_grad, grad_enabled, inference_mode, no_grad,  # noqa: E402
                         set_grad_enabled)
from .clip import clip_grad_norm_, clip_grad_value_  # noqa: E402
from .gradcheck import gradcheck  # noqa: E402

__all__ = [
    "RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell", "Module", "Parameter", "cells",
    "no_grad", "enable_grad", "inference_mode", "set_grad_enabled", "grad_enabled",
    "functional", "reference", "nn", "losses", "optim",
    "clip_grad_norm_", "clip_grad_value_", "gradcheck",
    "save", "load", "load_checkpoint",
    "show_config", "threadpool_limits", "set_parallel_directions", "set_loop_parallel_min",
    "set_row_split", "empty_cache", "set_cache_limit", "cache_info",
    "__version__",
]

#: applications and optional integrations, imported on first attribute access
#: (PEP 562) so that ``import rnncore`` loads none of them
_LAZY_SUBMODULES = ("charlm", "cli", "distributed", "dask_inference", "interop", "onnx")


def __getattr__(name):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
