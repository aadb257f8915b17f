"""The fast path: the reference's functions, backed by Cython kernels.

Same signatures, shapes and results as :mod:`rnncore.reference` (up to
floating-point rounding), with the time loop inside one ``nogil`` kernel call
per sequence. Layout conventions (cs231n's ``rnn_layers.py``)::

    x  (N, T, D)   h0 (N, H)   Wx (D, G*H)   Wh (H, G*H)   h (N, T, H)

``Wx``/``Wh`` may be C-ordered arrays or transposed views of C-ordered arrays
(e.g. PyTorch's ``weight_ih.T``): the kernels hand BLAS a transpose flag
instead of copying. float32 and float64 are supported; all arguments of one
call must share the dtype. Inputs are never modified.

Caches are small objects with named fields holding only what BPTT needs:
the inputs (by reference) and the hidden states.

Every kernel call goes through :mod:`rnncore._bindings` (the one owner of the
kernels' argument order), both GRU candidates (``reset_after``) included.

One module per cell: :mod:`.rnn` (Elman 1990), :mod:`.gru` (Cho et al.
2014), :mod:`.lstm` (Hochreiter & Schmidhuber 1997); every name is
re-exported here, so ``rnncore.functional.gru_forward`` is the API.
"""
from .gru import GRUCache, gru_backward, gru_forward, gru_step_backward, gru_step_forward
from .lstm import (LSTMCache, lstm_backward, lstm_forward, lstm_step_backward,
                   lstm_step_forward)
from .rnn import RNNCache, rnn_backward, rnn_forward, rnn_step_backward, rnn_step_forward

__all__ = [
    "rnn_step_forward", "rnn_step_backward", "rnn_forward", "rnn_backward", "RNNCache",
    "gru_step_forward", "gru_step_backward", "gru_forward", "gru_backward", "GRUCache",
    "lstm_step_forward", "lstm_step_backward", "lstm_forward", "lstm_backward", "LSTMCache",
]
