"""GRU (Cho et al. 2014), PyTorch's equations (gates r, z, n), kernel-backed.

Specification: :func:`rnncore.reference.gru_forward` (and ``_backward``,
``gru_step_*``); kernel: ``src/_kernels/gru.pyx`` through
:data:`rnncore._bindings.GRU` (``reset_after=False``:
:data:`rnncore._bindings.GRU_RESET_BEFORE`, the same kernel with the
recurrent product split).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _bindings as B
from .. import _validation as V
from ._args import (cell_args, fill_doc, grad_arrays, run_sequence, seq_grads, step_grads,
                    time_major)

__all__ = ["gru_step_forward", "gru_step_backward", "gru_forward", "gru_backward", "GRUCache"]


@dataclass(frozen=True, eq=False)
class GRUCache:
    """What :func:`gru_backward` / :func:`gru_step_backward` need.

    The inputs (by reference), the hidden states and what the kernel saved.
    Shapes are those of the API: ``(N, T, ·)`` for a sequence, ``(N, ·)`` for
    a step (``step=True``).
    """

    x: np.ndarray  # (N, T, D) | (N, D)
    h0: np.ndarray  # (N, H) initial / previous hidden state
    Wx: np.ndarray  # (D, 3H)
    Wh: np.ndarray  # (H, 3H)
    bh: np.ndarray  # (3H,)
    h: np.ndarray  # (N, T, H) | (N, H) hidden states
    gates: np.ndarray  # (N, T, 3H) | (N, 3H) activations [r | z | n]
    hidden_n: np.ndarray  # (N, T, H) | (N, H) h_prev W_hn + b_hn (reset-before: r ⊙ h_prev)
    step: bool = False
    reset_after: bool = True


def _gru_args(x, h0, Wx, Wh, bx, bh, x_letters):
    """Validate the forward arguments of the GRU functions."""
    return tuple(cell_args(3, x, h0, Wx, Wh, [("bx", bx), ("bh", bh)], x_letters))


def _gru_saved(cache):
    """The kernel's (T, N, ·) views of what a GRUCache holds."""
    if cache.step:
        return cache.x[None], cache.h[None], B.GRU.Saved(cache.gates[None],
                                                        cache.hidden_n[None])
    return (cache.x.transpose(1, 0, 2), cache.h.transpose(1, 0, 2),
            B.GRU.Saved(cache.gates.transpose(1, 0, 2), cache.hidden_n.transpose(1, 0, 2)))


def _gru_grads(cache, dh, dhn, input_grad=True):
    """Run the GRU kernel backward on (T, N, H) upstream gradients."""
    x, h, saved = _gru_saved(cache)
    dx, ds0, dW = grad_arrays(cache, x, 1, 2, input_grad)
    B.gru_binding(cache.reset_after).kernel_backward(
        dh, [dhn], x, [cache.h0], cache.Wx, cache.Wh, (None, cache.bh), [h], saved,
        time_major(dx), ds0, dW)
    return (dx, *ds0, *dW)


@fill_doc
def gru_forward(x, h0, Wx, Wh, bx, bh, reset_after=True):
    """Run a GRU over a whole sequence (kernel-backed).

    Parameters
    ----------
    $seq_inputs
    Wx : ndarray, shape (D, 3H)
        Input weights, gates ``r, z, n`` (PyTorch ``weight_ih.T``).
    Wh : ndarray, shape (H, 3H)
        Hidden weights, gates ``r, z, n`` (PyTorch ``weight_hh.T``).
    bx : ndarray, shape (3H,)
        Input bias (PyTorch ``bias_ih``).
    bh : ndarray, shape (3H,)
        Hidden bias (PyTorch ``bias_hh``).
    reset_after : bool, default True
        PyTorch's candidate (True) or Cho et al. (2014)'s original one, as in
        Keras's ``reset_after=False`` (False); both in the kernel.

    Returns
    -------
    h : ndarray, shape (N, T, H)
        Hidden states of all steps.
    cache : GRUCache
        For :func:`gru_backward`.

    $raises.

    Notes
    -----
    ::

        r  = σ(x W_ir + b_ir + h W_hr + b_hr)
        z  = σ(x W_iz + b_iz + h W_hz + b_hz)
        n  = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))    reset_after=True
        n  = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)    reset_after=False
        h' = (1 - z) ⊙ n + z ⊙ h

    $gemm_note

    Examples
    --------
    $example_setup
    >>> Wx, Wh = rng.standard_normal((3, 12)), rng.standard_normal((4, 12))
    >>> h, cache = F.gru_forward(x, np.zeros((2, 4)), Wx, Wh, np.zeros(12), np.zeros(12))
    >>> h.shape
    (2, 5, 4)
    """
    x, h0, Wx, Wh, bx, bh = _gru_args(x, h0, Wx, Wh, bx, bh, "(N, T, D)")
    reset_after = bool(reset_after)
    x, (h,), saved = run_sequence(B.gru_binding(reset_after), x, [h0], Wx, Wh, (bx, bh))
    return h, GRUCache(x=x, h0=h0, Wx=Wx, Wh=Wh, bh=bh, h=h,
                       gates=saved.gates.transpose(1, 0, 2),
                       hidden_n=saved.hidden_n.transpose(1, 0, 2), reset_after=reset_after)


@fill_doc(cache="GRUCache", forward="gru_forward")
def gru_backward(dh, cache, dhn=None, *, input_grad=True):
    """Backward pass of :func:`gru_forward` (BPTT, kernel-backed; either ``reset_after``).

    $seq_grads
    $input_grad

    Returns
    -------
    dx, dh0 : ndarray, shapes (N, T, D), (N, H)
        (dx None with ``input_grad=False``)
    dWx, dWh, dbx, dbh : ndarray, shapes (D, 3H), (H, 3H), (3H,), (3H,)
    """
    return _gru_grads(cache, *seq_grads(cache, GRUCache, "gru_forward", dh, dhn), input_grad)


@fill_doc
def gru_step_forward(x, prev_h, Wx, Wh, bx, bh, reset_after=True):
    """One GRU step (PyTorch's equations, gates r, z, n); see :func:`gru_forward`.

    Parameters
    ----------
    x, prev_h : ndarray, shapes (N, D), (N, H)
    Wx, Wh, bx, bh : ndarray, shapes (D, 3H), (H, 3H), (3H,), (3H,)
    reset_after : bool, default True

    Returns
    -------
    next_h : ndarray, shape (N, H)
    cache : GRUCache
        For :func:`gru_step_backward`.
    """
    x, prev_h, Wx, Wh, bx, bh = _gru_args(x, prev_h, Wx, Wh, bx, bh, "(N, D)")
    reset_after = bool(reset_after)
    N, _ = x.shape
    H = Wh.shape[0]
    x = V.rows_view(x)
    h = np.empty((N, H), dtype=x.dtype)
    saved = B.gru_binding(reset_after).kernel_forward(x[None], [prev_h], Wx, Wh, (bx, bh),
                                                      [h[None]])
    return h, GRUCache(x=x, h0=prev_h, Wx=Wx, Wh=Wh, bh=bh, h=h, gates=saved.gates[0],
                       hidden_n=saved.hidden_n[0], step=True, reset_after=reset_after)


@fill_doc(cache="GRUCache", forward="gru_step_forward")
def gru_step_backward(dnext_h, cache):
    """Backward pass of :func:`gru_step_forward` (either ``reset_after``).

    $step_grads

    Returns
    -------
    dx, dprev_h : ndarray, shapes (N, D), (N, H)
    dWx, dWh, dbx, dbh : ndarray, shapes (D, 3H), (H, 3H), (3H,), (3H,)
    """
    dx, dprev_h, dWx, dWh, dbx, dbh = _gru_grads(
        cache, *step_grads(cache, GRUCache, "gru_step_forward", dnext_h))
    return dx[:, 0], dprev_h, dWx, dWh, dbx, dbh
