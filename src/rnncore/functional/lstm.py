"""LSTM (Hochreiter & Schmidhuber 1997, with the forget gate; Graves 2013), kernel-backed.

PyTorch's equations (gates i, f, g, o). Specification:
:func:`rnncore.reference.lstm_forward` (and ``_backward``, ``lstm_step_*``);
kernel: ``src/_kernels/lstm.pyx`` through :data:`rnncore._bindings.LSTM`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _bindings as B
from .. import _validation as V
from ._args import (cell_args, fill_doc, final_grad, grad_arrays, run_sequence, seq_grads,
                    step_grads, time_major)

__all__ = ["lstm_step_forward", "lstm_step_backward", "lstm_forward", "lstm_backward",
           "LSTMCache"]


@dataclass(frozen=True, eq=False)
class LSTMCache:
    """What :func:`lstm_backward` / :func:`lstm_step_backward` need.

    The inputs (by reference), the hidden and cell states and the gate
    activations the kernel saved. Shapes are those of the API: ``(N, T, ·)``
    for a sequence, ``(N, ·)`` for a step (``step=True``).
    """

    x: np.ndarray  # (N, T, D) | (N, D)
    h0: np.ndarray  # (N, H) initial / previous hidden state
    c0: np.ndarray  # (N, H) initial / previous cell state (zeros if c0=None)
    Wx: np.ndarray  # (D, 4H)
    Wh: np.ndarray  # (H, 4H)
    h: np.ndarray  # (N, T, H) | (N, H) hidden states
    c: np.ndarray  # (N, T, H) | (N, H) cell states
    gates: np.ndarray  # (N, T, 4H) | (N, 4H) activations [i | f | g | o]
    step: bool = False


def _lstm_args(x, h0, c0, Wx, Wh, b, x_letters):
    """Validate the forward arguments of the LSTM functions (c0 may be None)."""
    x, h0, Wx, Wh, b = cell_args(4, x, h0, Wx, Wh, [("b", b)], x_letters)
    N, H = h0.shape
    c0 = final_grad(c0, "c0" if x_letters == "(N, T, D)" else "prev_c", N, H, x.dtype)
    return x, h0, c0, Wx, Wh, b


def _lstm_grads(cache, dh, dhn, dcn, input_grad=True):
    """Run the LSTM kernel backward on (T, N, H) upstream gradients."""
    if cache.step:
        x, h, c, gates = cache.x[None], cache.h[None], cache.c[None], cache.gates[None]
    else:
        x, h, c, gates = (a.transpose(1, 0, 2) for a in (cache.x, cache.h, cache.c, cache.gates))
    dx, ds0, dW = grad_arrays(cache, x, 2, 1, input_grad)
    B.LSTM.kernel_backward(dh, [dhn, dcn], x, [cache.h0, cache.c0], cache.Wx, cache.Wh, (),
                           [h, c], B.LSTM.Saved(gates), time_major(dx), ds0, dW)
    return (dx, *ds0, *dW)


@fill_doc
def lstm_forward(x, h0, Wx, Wh, b, c0=None):
    """Run an LSTM over a whole sequence (kernel-backed).

    Parameters
    ----------
    $seq_inputs
    Wx : ndarray, shape (D, 4H)
        Input weights, gates ``i, f, g, o`` (PyTorch ``weight_ih.T``).
    Wh : ndarray, shape (H, 4H)
        Hidden weights, gates ``i, f, g, o`` (PyTorch ``weight_hh.T``).
    b : ndarray, shape (4H,)
        Bias, PyTorch's ``bias_ih + bias_hh``.
    c0 : ndarray, shape (N, H), optional
        Initial cell state; None means zeros.

    Returns
    -------
    h : ndarray, shape (N, T, H)
        Hidden states of all steps.
    c : ndarray, shape (N, T, H)
        Cell states of all steps.
    cache : LSTMCache
        For :func:`lstm_backward`.

    $raises.

    Notes
    -----
    ::

        i, f, g, o = σ, σ, tanh, σ of the blocks of x_t Wx + h_{t-1} Wh + b
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)

    $gemm_note

    Examples
    --------
    $example_setup
    >>> Wx, Wh = rng.standard_normal((3, 16)), rng.standard_normal((4, 16))
    >>> h, c, cache = F.lstm_forward(x, np.zeros((2, 4)), Wx, Wh, np.zeros(16))
    >>> h.shape, c.shape
    ((2, 5, 4), (2, 5, 4))
    """
    x, h0, c0, Wx, Wh, b = _lstm_args(x, h0, c0, Wx, Wh, b, "(N, T, D)")
    x, (h, c), saved = run_sequence(B.LSTM, x, [h0, c0], Wx, Wh, (b,), n_outs=2)
    return h, c, LSTMCache(x=x, h0=h0, c0=c0, Wx=Wx, Wh=Wh, h=h, c=c,
                           gates=saved.gates.transpose(1, 0, 2))


@fill_doc(cache="LSTMCache", forward="lstm_forward")
def lstm_backward(dh, cache, dhn=None, dcn=None, *, input_grad=True):
    """Backward pass of :func:`lstm_forward` (BPTT, kernel-backed).

    $seq_grads
    dcn : ndarray, shape (N, H), optional
        Gradient of the final cell state ``c[:, -1]``.
    $input_grad

    Returns
    -------
    dx, dh0, dc0 : ndarray, shapes (N, T, D), (N, H), (N, H)
        (dx None with ``input_grad=False``)
    dWx, dWh, db : ndarray, shapes (D, 4H), (H, 4H), (4H,)
    """
    dh, dhn = seq_grads(cache, LSTMCache, "lstm_forward", dh, dhn)
    N, H = cache.h0.shape
    return _lstm_grads(cache, dh, dhn, final_grad(dcn, "dcn", N, H, cache.x.dtype), input_grad)


@fill_doc
def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One LSTM step (PyTorch's equations, gates i, f, g, o); see :func:`lstm_forward`.

    Parameters
    ----------
    x, prev_h, prev_c : ndarray, shapes (N, D), (N, H), (N, H)
    Wx, Wh, b : ndarray, shapes (D, 4H), (H, 4H), (4H,)

    Returns
    -------
    next_h, next_c : ndarray, shape (N, H)
    cache : LSTMCache
        For :func:`lstm_step_backward`.
    """
    if prev_c is None:
        raise TypeError("prev_c: expected a float32 or float64 array, got None")
    x, prev_h, prev_c, Wx, Wh, b = _lstm_args(x, prev_h, prev_c, Wx, Wh, b, "(N, D)")
    N, _ = x.shape
    H = Wh.shape[0]
    x = V.rows_view(x)
    h = np.empty((N, H), dtype=x.dtype)
    c = np.empty((N, H), dtype=x.dtype)
    saved = B.LSTM.kernel_forward(x[None], [prev_h, prev_c], Wx, Wh, (b,), [h[None], c[None]])
    return h, c, LSTMCache(x=x, h0=prev_h, c0=prev_c, Wx=Wx, Wh=Wh, h=h, c=c,
                           gates=saved.gates[0], step=True)


@fill_doc
def lstm_step_backward(dnext_h, dnext_c, cache):
    """Backward pass of :func:`lstm_step_forward`.

    Parameters
    ----------
    $dnext_h
    dnext_c : ndarray, shape (N, H)
        Gradient of the loss with respect to ``next_c``.
    cache : LSTMCache
        From :func:`lstm_step_forward`.

    Returns
    -------
    dx, dprev_h, dprev_c : ndarray, shapes (N, D), (N, H), (N, H)
    dWx, dWh, db : ndarray, shapes (D, 4H), (H, 4H), (4H,)
    """
    dnext_h, dhn = step_grads(cache, LSTMCache, "lstm_step_forward", dnext_h)
    if dnext_c is None:
        raise TypeError("dnext_c: expected a float32 or float64 array, got None")
    dnext_c = final_grad(dnext_c, "dnext_c", *dhn.shape, dhn.dtype)
    dx, dprev_h, dprev_c, dWx, dWh, db = _lstm_grads(cache, dnext_h, dhn, dnext_c)
    return dx[:, 0], dprev_h, dprev_c, dWx, dWh, db

