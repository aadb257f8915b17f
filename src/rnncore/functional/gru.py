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
from ._args import cell_args, final_grad

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


def gru_forward(x, h0, Wx, Wh, bx, bh, reset_after=True):
    """Run a GRU over a whole sequence (kernel-backed).

    Parameters
    ----------
    x : ndarray, shape (N, T, D)
        Input sequence.
    h0 : ndarray, shape (N, H)
        Initial hidden state.
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

    Raises
    ------
    TypeError
        For a non-float array or mixed float32/float64 arguments.
    ValueError
        For a wrong shape (the message names the argument and the expected
        shape).

    Notes
    -----
    ::

        r  = σ(x W_ir + b_ir + h W_hr + b_hr)
        z  = σ(x W_iz + b_iz + h W_hz + b_hz)
        n  = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))    reset_after=True
        n  = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)    reset_after=False
        h' = (1 - z) ⊙ n + z ⊙ h

    The input projection of all N*T rows is one GEMM before the loop; each
    step is one GEMM with ``Wh`` (all three gates) and one fused pass.

    Examples
    --------
    >>> import numpy as np
    >>> from rnncore import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 3))
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


def gru_backward(dh, cache, dhn=None):
    """Backward pass of :func:`gru_forward` (BPTT, kernel-backed).

    Parameters
    ----------
    dh : ndarray, shape (N, T, H)
        Upstream gradients of all hidden states.
    cache : GRUCache
        From :func:`gru_forward`.
    dhn : ndarray, shape (N, H), optional
        Extra gradient of the final state ``h[:, -1]``.

    Returns
    -------
    dx : ndarray, shape (N, T, D)
    dh0 : ndarray, shape (N, H)
    dWx : ndarray, shape (D, 3H)
    dWh : ndarray, shape (H, 3H)
    dbx : ndarray, shape (3H,)
    dbh : ndarray, shape (3H,)
    """
    if isinstance(cache, B.ResetBeforeCache):  # reset_after=False
        N, H = cache.h0.shape
        dh = V.as_float(dh, "dh", cache.h0.dtype)
        V.check_shape(dh, "dh", (N, len(cache.steps), H), "(N, T, H)")
        dhn = final_grad(dhn, "dhn", N, H, cache.h0.dtype)
        return B.gru_reset_before_backward(dh, cache, dhn)
    if not isinstance(cache, GRUCache) or cache.step:
        raise TypeError("cache: expected the GRUCache returned by gru_forward")
    N, T, _ = cache.x.shape
    H = cache.h0.shape[1]
    dt = cache.x.dtype
    dh = V.as_float(dh, "dh", dt)
    V.check_shape(dh, "dh", (N, T, H), "(N, T, H)")
    dhn = final_grad(dhn, "dhn", N, H, dt)
    return _gru_grads(cache, V.seq_view(dh, time_major=False), dhn)


def gru_step_forward(x, prev_h, Wx, Wh, bx, bh, reset_after=True):
    """One GRU step (PyTorch's equations, gates r, z, n); see :func:`gru_forward`.

    Parameters
    ----------
    x : ndarray, shape (N, D)
    prev_h : ndarray, shape (N, H)
    Wx : ndarray, shape (D, 3H)
    Wh : ndarray, shape (H, 3H)
    bx : ndarray, shape (3H,)
    bh : ndarray, shape (3H,)
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


def gru_step_backward(dnext_h, cache):
    """Backward pass of :func:`gru_step_forward`.

    Parameters
    ----------
    dnext_h : ndarray, shape (N, H)
        Gradient of the loss with respect to ``next_h``.
    cache : GRUCache
        From :func:`gru_step_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dprev_h : ndarray, shape (N, H)
    dWx : ndarray, shape (D, 3H)
    dWh : ndarray, shape (H, 3H)
    dbx : ndarray, shape (3H,)
    dbh : ndarray, shape (3H,)
    """
    if isinstance(cache, B.ResetBeforeStepCache):  # reset_after=False
        dnext_h = V.as_float(dnext_h, "dnext_h", cache.prev_h.dtype)
        V.check_shape(dnext_h, "dnext_h", cache.prev_h.shape, "(N, H)")
        return B.gru_reset_before_step_backward(dnext_h, cache)
    if not isinstance(cache, GRUCache) or not cache.step:
        raise TypeError("cache: expected the GRUCache returned by gru_step_forward")
    N, H = cache.h0.shape
    dt = cache.x.dtype
    dnext_h = V.as_float(dnext_h, "dnext_h", dt)
    V.check_shape(dnext_h, "dnext_h", (N, H), "(N, H)")
    dx, dprev_h, dWx, dWh, dbx, dbh = _gru_grads(
        cache, V.rows_view(dnext_h)[None], np.zeros((N, H), dtype=dt))
    return dx[:, 0], dprev_h, dWx, dWh, dbx, dbh
