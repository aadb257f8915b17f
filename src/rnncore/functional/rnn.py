"""Elman (1990) RNN, kernel-backed: ``h_t = act(x_t Wx + h_{t-1} Wh + b)``.

Specification: :func:`rnncore.reference.rnn_forward` (and ``_backward``,
``rnn_step_*``); kernel: ``src/_kernels/rnn.pyx`` through
:data:`rnncore._bindings.RNN_TANH` / ``RNN_RELU``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _bindings as B
from .. import _validation as V
from ._args import (cell_args, fill_doc, grad_arrays, run_sequence, seq_grads, step_grads,
                    time_major)

__all__ = ["rnn_step_forward", "rnn_step_backward", "rnn_forward", "rnn_backward", "RNNCache"]


@dataclass(frozen=True)
class RNNCache:
    """What :func:`rnn_backward` needs: inputs by reference, hidden states."""

    x: np.ndarray  # (N, T, D)
    h0: np.ndarray  # (N, H)
    Wx: np.ndarray  # (D, H)
    Wh: np.ndarray  # (H, H)
    h: np.ndarray  # (N, T, H) hidden states (the stored activations)
    relu: bool
    step: bool = False  # made by rnn_step_forward (x, h are (N, D), (N, H))


def _rnn_args(x, h0, Wx, Wh, b, nonlinearity, x_letters):
    """Validate the forward arguments of the RNN functions."""
    relu = V.check_nonlinearity(nonlinearity)
    return (*cell_args(1, x, h0, Wx, Wh, [("b", b)], x_letters), relu)


@fill_doc
def rnn_forward(x, h0, Wx, Wh, b, nonlinearity="tanh"):
    """Run a vanilla RNN over a whole sequence (kernel-backed).

    Parameters
    ----------
    $seq_inputs
    Wx : ndarray, shape (D, H)
        Input-to-hidden weights.
    Wh : ndarray, shape (H, H)
        Hidden-to-hidden weights.
    b : ndarray, shape (H,)
        Bias.
    nonlinearity : {'tanh', 'relu'}

    Returns
    -------
    h : ndarray, shape (N, T, H)
        Hidden states of all steps.
    cache : RNNCache
        For :func:`rnn_backward`.

    $raises or an unknown nonlinearity.

    Notes
    -----
    ``h_t = act(x_t Wx + h_{t-1} Wh + b)``.

    $gemm_note

    Examples
    --------
    $example_setup
    >>> Wx, Wh, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 4)), np.zeros(4)
    >>> h, cache = F.rnn_forward(x, np.zeros((2, 4)), Wx, Wh, b)
    >>> h.shape
    (2, 5, 4)
    """
    x, h0, Wx, Wh, b, relu = _rnn_args(x, h0, Wx, Wh, b, nonlinearity, "(N, T, D)")
    x, (h,), _ = run_sequence(B.rnn_binding(relu), x, [h0], Wx, Wh, (b,))
    return h, RNNCache(x=x, h0=h0, Wx=Wx, Wh=Wh, h=h, relu=relu)


@fill_doc(cache="RNNCache", forward="rnn_forward")
def rnn_backward(dh, cache, dhn=None, *, input_grad=True):
    """Backward pass of :func:`rnn_forward` (BPTT, kernel-backed).

    $seq_grads
    $input_grad

    Returns
    -------
    dx, dh0 : ndarray, shapes (N, T, D), (N, H)
        (dx None with ``input_grad=False``)
    dWx, dWh, db : ndarray, shapes (D, H), (H, H), (H,)
    """
    dh, dhn = seq_grads(cache, RNNCache, "rnn_forward", dh, dhn)
    x = cache.x.transpose(1, 0, 2)
    dx, ds0, dW = grad_arrays(cache, x, 1, 1, input_grad)
    B.rnn_binding(cache.relu).kernel_backward(
        dh, [dhn], x, [cache.h0], cache.Wx, cache.Wh, (), [cache.h.transpose(1, 0, 2)],
        None, time_major(dx), ds0, dW)
    return (dx, *ds0, *dW)


@fill_doc
def rnn_step_forward(x, prev_h, Wx, Wh, b, nonlinearity="tanh"):
    """One vanilla-RNN step: ``next_h = act(x Wx + prev_h Wh + b)``.

    Parameters
    ----------
    x, prev_h : ndarray, shapes (N, D), (N, H)
    Wx, Wh, b : ndarray, shapes (D, H), (H, H), (H,)
    nonlinearity : {'tanh', 'relu'}

    Returns
    -------
    next_h : ndarray, shape (N, H)
    cache : RNNCache
        For :func:`rnn_step_backward`.
    """
    x, prev_h, Wx, Wh, b, relu = _rnn_args(x, prev_h, Wx, Wh, b, nonlinearity, "(N, D)")
    N, D = x.shape
    H = Wh.shape[0]
    x1 = V.rows_view(x)[None]  # (T=1, N, D)
    h = np.empty((1, N, H), dtype=x.dtype)
    B.rnn_binding(relu).kernel_forward(x1, [prev_h], Wx, Wh, (b,), [h])
    return h[0], RNNCache(x=x1, h0=prev_h, Wx=Wx, Wh=Wh, h=h, relu=relu, step=True)


@fill_doc(cache="RNNCache", forward="rnn_step_forward")
def rnn_step_backward(dnext_h, cache):
    """Backward pass of :func:`rnn_step_forward`.

    $step_grads

    Returns
    -------
    dx, dprev_h : ndarray, shapes (N, D), (N, H)
    dWx, dWh, db : ndarray, shapes (D, H), (H, H), (H,)
    """
    dnext_h, dhn = step_grads(cache, RNNCache, "rnn_step_forward", dnext_h)
    dx, ds0, dW = grad_arrays(cache, cache.x, 1, 1)   # dx (N, 1, D)
    B.rnn_binding(cache.relu).kernel_backward(
        dnext_h, [dhn], cache.x, [cache.h0], cache.Wx, cache.Wh, (), [cache.h], None,
        dx.transpose(1, 0, 2), ds0, dW)
    return (dx[:, 0], *ds0, *dW)
