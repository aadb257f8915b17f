"""GRU (Cho et al. 2014), PyTorch's equations (gates r, z, n), kernel-backed.

Specification: :func:`rnncore.reference.gru_forward` (and ``_backward``,
``gru_step_*``); kernel: ``src/_kernels/gru.pyx`` through
:data:`rnncore._bindings.GRU`. ``reset_after=False`` (not in the kernel yet)
takes the temporary path documented at the end of :mod:`rnncore._bindings`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _bindings as B
from .. import _validation as V
from ._args import cell_args, fill_doc, final_grad, seq_grads, step_grads

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
    hidden_n: np.ndarray  # (N, T, H) | (N, H) h_prev W_hn + b_hn
    step: bool = False


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


def _gru_grads(cache, dh, dhn):
    """Run the GRU kernel backward on (T, N, H) upstream gradients."""
    x, h, saved = _gru_saved(cache)
    T, N, D = x.shape
    H = cache.h0.shape[1]
    dt = x.dtype
    dx = np.empty((N, T, D), dtype=dt)
    dh0 = np.empty((N, H), dtype=dt)
    dWx = np.zeros(cache.Wx.shape, dtype=dt)
    dWh = np.zeros(cache.Wh.shape, dtype=dt)
    dbx = np.zeros(3 * H, dtype=dt)
    dbh = np.zeros(3 * H, dtype=dt)
    B.GRU.kernel_backward(dh, [dhn], x, [cache.h0], cache.Wx, cache.Wh, (None, cache.bh), [h],
                          saved, dx.transpose(1, 0, 2), [dh0], (dWx, dWh, dbx, dbh))
    return dx, dh0, dWx, dWh, dbx, dbh


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
        PyTorch's candidate (True, the kernel) or Cho et al. (2014)'s original
        one, as in Keras v1 (False; until the kernels have it, computed by
        :func:`rnncore.reference.gru_forward` behind ``rnncore._bindings``).

    Returns
    -------
    h : ndarray, shape (N, T, H)
        Hidden states of all steps.
    cache : GRUCache
        For :func:`gru_backward` (a :class:`rnncore.reference.GRUCache` with
        ``reset_after=False``).

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
    if not reset_after:
        return B.gru_reset_before_forward(x, h0, Wx, Wh, bx, bh)
    N, T, _ = x.shape
    H = Wh.shape[0]
    xv = V.seq_view(x, time_major=False)
    h = np.empty((N, T, H), dtype=x.dtype)
    saved = B.GRU.kernel_forward(xv, [h0], Wx, Wh, (bx, bh), [h.transpose(1, 0, 2)])
    return h, GRUCache(x=xv.transpose(1, 0, 2), h0=h0, Wx=Wx, Wh=Wh, bh=bh, h=h,
                       gates=saved.gates.transpose(1, 0, 2),
                       hidden_n=saved.hidden_n.transpose(1, 0, 2))


@fill_doc(cache="GRUCache", forward="gru_forward")
def gru_backward(dh, cache, dhn=None):
    """Backward pass of :func:`gru_forward` (BPTT, kernel-backed).

    The cache of ``reset_after=False`` (a :class:`rnncore.reference.GRUCache`)
    takes the reference's backward (the temporary path of rnncore._bindings).

    $seq_grads

    Returns
    -------
    dx, dh0 : ndarray, shapes (N, T, D), (N, H)
    dWx, dWh, dbx, dbh : ndarray, shapes (D, 3H), (H, 3H), (3H,), (3H,)
    """
    if isinstance(cache, B.ResetBeforeCache):  # reset_after=False
        N, H = cache.h0.shape
        dh = V.as_float(dh, "dh", cache.h0.dtype)
        V.check_shape(dh, "dh", (N, len(cache.steps), H), "(N, T, H)")
        dhn = final_grad(dhn, "dhn", N, H, cache.h0.dtype)
        return B.gru_reset_before_backward(dh, cache, dhn)
    return _gru_grads(cache, *seq_grads(cache, GRUCache, "gru_forward", dh, dhn))


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
        For :func:`gru_step_backward` (a
        :class:`rnncore.reference.GRUStepCache` with ``reset_after=False``).
    """
    x, prev_h, Wx, Wh, bx, bh = _gru_args(x, prev_h, Wx, Wh, bx, bh, "(N, D)")
    if not reset_after:
        return B.gru_reset_before_step_forward(x, prev_h, Wx, Wh, bx, bh)
    N, _ = x.shape
    H = Wh.shape[0]
    x = V.rows_view(x)
    h = np.empty((N, H), dtype=x.dtype)
    saved = B.GRU.kernel_forward(x[None], [prev_h], Wx, Wh, (bx, bh), [h[None]])
    return h, GRUCache(x=x, h0=prev_h, Wx=Wx, Wh=Wh, bh=bh, h=h, gates=saved.gates[0],
                       hidden_n=saved.hidden_n[0], step=True)


@fill_doc(cache="GRUCache", forward="gru_step_forward")
def gru_step_backward(dnext_h, cache):
    """Backward pass of :func:`gru_step_forward`.

    The cache of ``reset_after=False`` (a :class:`rnncore.reference.GRUStepCache`)
    takes the reference's backward (the temporary path of rnncore._bindings).

    $step_grads

    Returns
    -------
    dx, dprev_h : ndarray, shapes (N, D), (N, H)
    dWx, dWh, dbx, dbh : ndarray, shapes (D, 3H), (H, 3H), (3H,), (3H,)
    """
    if isinstance(cache, B.ResetBeforeStepCache):  # reset_after=False
        dnext_h = V.as_float(dnext_h, "dnext_h", cache.prev_h.dtype)
        V.check_shape(dnext_h, "dnext_h", cache.prev_h.shape, "(N, H)")
        return B.gru_reset_before_step_backward(dnext_h, cache)
    dx, dprev_h, dWx, dWh, dbx, dbh = _gru_grads(
        cache, *step_grads(cache, GRUCache, "gru_step_forward", dnext_h))
    return dx[:, 0], dprev_h, dWx, dWh, dbx, dbh
