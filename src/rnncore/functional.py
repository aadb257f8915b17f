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
kernels' argument order); ``gru_*`` with ``reset_after=False`` is routed there
too (see the note at the end of that module).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _bindings as B
from . import _validation as V

__all__ = [
    "rnn_step_forward",
    "rnn_step_backward",
    "rnn_forward",
    "rnn_backward",
    "RNNCache",
]


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


def _cell_args(G, x, h0, Wx, Wh, biases, x_letters):
    """Validate the forward arguments shared by the cell functions.

    ``G`` gates; ``biases`` is a list of (name, array) each of shape (G*H,);
    ``x_letters`` is "(N, T, D)" for the sequence functions, "(N, D)" for the
    step functions (where the state is called prev_h). Returns x, h0 and the
    weights as views the kernels read in place, then the biases.
    """
    seq = x_letters == "(N, T, D)"
    g = "" if G == 1 else str(G)
    x = V.as_float(x, "x")
    dt = x.dtype
    h0 = V.as_float(h0, "h0" if seq else "prev_h", dt)
    Wx = V.as_float(Wx, "Wx", dt)
    Wh = V.as_float(Wh, "Wh", dt)
    biases = [(name, V.as_float(v, name, dt)) for name, v in biases]
    V.check_shape(Wh, "Wh", (None, None), f"(H, {g}H)")
    H = Wh.shape[0]
    V.check_shape(Wh, "Wh", (H, G * H), f"(H, {g}H)")
    V.check_shape(x, "x", (None,) * len(x_letters.split(",")), x_letters)
    N, D = x.shape[0], x.shape[-1]
    V.check_shape(Wx, "Wx", (D, G * H), f"(D, {g}H)")
    V.check_shape(h0, "h0" if seq else "prev_h", (N, H), "(N, H)")
    for name, v in biases:
        V.check_shape(v, name, (G * H,), f"({g}H,)")
    return ([x, V.rows_view(h0), V.matrix_view(Wx), V.matrix_view(Wh)]
            + [V.rows_view(v) for _, v in biases])


def _rnn_args(x, h0, Wx, Wh, b, nonlinearity, x_letters):
    """Validate the forward arguments of the RNN functions."""
    relu = V.check_nonlinearity(nonlinearity)
    return (*_cell_args(1, x, h0, Wx, Wh, [("b", b)], x_letters), relu)


def rnn_forward(x, h0, Wx, Wh, b, nonlinearity="tanh"):
    """Run a vanilla RNN over a whole sequence (kernel-backed).

    Parameters
    ----------
    x : ndarray, shape (N, T, D)
        Input sequence.
    h0 : ndarray, shape (N, H)
        Initial hidden state.
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

    Raises
    ------
    TypeError
        For a non-float array or mixed float32/float64 arguments.
    ValueError
        For a wrong shape (the message names the argument and the expected
        shape) or an unknown nonlinearity.

    Notes
    -----
    ``h_t = act(x_t Wx + h_{t-1} Wh + b)``. The input projection of all N*T
    rows is one GEMM before the loop; each step is one GEMM with ``Wh`` and a
    fused bias + activation pass.

    Examples
    --------
    >>> import numpy as np
    >>> from rnncore import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 3))
    >>> Wx, Wh, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 4)), np.zeros(4)
    >>> h, cache = F.rnn_forward(x, np.zeros((2, 4)), Wx, Wh, b)
    >>> h.shape
    (2, 5, 4)
    """
    x, h0, Wx, Wh, b, relu = _rnn_args(x, h0, Wx, Wh, b, nonlinearity, "(N, T, D)")
    N, T, _ = x.shape
    H = Wh.shape[0]
    xv = V.seq_view(x, time_major=False)
    h = np.empty((N, T, H), dtype=x.dtype)
    B.rnn_binding(relu).kernel_forward(xv, [h0], Wx, Wh, (b,), [h.transpose(1, 0, 2)])
    return h, RNNCache(x=xv.transpose(1, 0, 2), h0=h0, Wx=Wx, Wh=Wh, h=h, relu=relu)


def rnn_backward(dh, cache, dhn=None):
    """Backward pass of :func:`rnn_forward` (BPTT, kernel-backed).

    Parameters
    ----------
    dh : ndarray, shape (N, T, H)
        Upstream gradients of all hidden states.
    cache : RNNCache
        From :func:`rnn_forward`.
    dhn : ndarray, shape (N, H), optional
        Extra gradient of the final state ``h[:, -1]``.

    Returns
    -------
    dx : ndarray, shape (N, T, D)
    dh0 : ndarray, shape (N, H)
    dWx : ndarray, shape (D, H)
    dWh : ndarray, shape (H, H)
    db : ndarray, shape (H,)
    """
    if not isinstance(cache, RNNCache) or cache.step:
        raise TypeError("cache: expected the RNNCache returned by rnn_forward")
    x, h = cache.x, cache.h
    N, T, D = x.shape
    H = h.shape[2]
    dt = x.dtype
    dh = V.as_float(dh, "dh", dt)
    V.check_shape(dh, "dh", (N, T, H), "(N, T, H)")
    dhn = _final_grad(dhn, "dhn", N, H, dt)
    dx = np.empty((N, T, D), dtype=dt)
    dh0 = np.empty((N, H), dtype=dt)
    dWx = np.zeros(cache.Wx.shape, dtype=dt)
    dWh = np.zeros((H, H), dtype=dt)
    db = np.zeros(H, dtype=dt)
    B.rnn_binding(cache.relu).kernel_backward(
        V.seq_view(dh, time_major=False), [dhn], x.transpose(1, 0, 2), [cache.h0], cache.Wx,
        cache.Wh, (), [h.transpose(1, 0, 2)], None, dx.transpose(1, 0, 2), [dh0],
        (dWx, dWh, db))
    return dx, dh0, dWx, dWh, db


def rnn_step_forward(x, prev_h, Wx, Wh, b, nonlinearity="tanh"):
    """One vanilla-RNN step: ``next_h = act(x Wx + prev_h Wh + b)``.

    Parameters
    ----------
    x : ndarray, shape (N, D)
    prev_h : ndarray, shape (N, H)
    Wx : ndarray, shape (D, H)
    Wh : ndarray, shape (H, H)
    b : ndarray, shape (H,)
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


def rnn_step_backward(dnext_h, cache):
    """Backward pass of :func:`rnn_step_forward`.

    Parameters
    ----------
    dnext_h : ndarray, shape (N, H)
        Gradient of the loss with respect to ``next_h``.
    cache : RNNCache
        From :func:`rnn_step_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dprev_h : ndarray, shape (N, H)
    dWx : ndarray, shape (D, H)
    dWh : ndarray, shape (H, H)
    db : ndarray, shape (H,)
    """
    if not isinstance(cache, RNNCache) or not cache.step:
        raise TypeError("cache: expected the RNNCache returned by rnn_step_forward")
    _, N, D = cache.x.shape
    H = cache.h.shape[2]
    dt = cache.x.dtype
    dnext_h = V.as_float(dnext_h, "dnext_h", dt)
    V.check_shape(dnext_h, "dnext_h", (N, H), "(N, H)")
    dx = np.empty((1, N, D), dtype=dt)
    dprev_h = np.empty((N, H), dtype=dt)
    dWx = np.zeros(cache.Wx.shape, dtype=dt)
    dWh = np.zeros((H, H), dtype=dt)
    db = np.zeros(H, dtype=dt)
    B.rnn_binding(cache.relu).kernel_backward(
        V.rows_view(dnext_h)[None], [np.zeros((N, H), dtype=dt)], cache.x, [cache.h0], cache.Wx,
        cache.Wh, (), [cache.h], None, dx, [dprev_h], (dWx, dWh, db))
    return dx[0], dprev_h, dWx, dWh, db


def _final_grad(d, name, N, H, dt):
    """An optional (N, H) state or state gradient as a C-contiguous array (zeros if None)."""
    if d is None:
        return np.zeros((N, H), dtype=dt)
    d = V.as_float(d, name, dt)
    V.check_shape(d, name, (N, H), "(N, H)")
    return V.rows_view(d)


# ---------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------
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
    return tuple(_cell_args(3, x, h0, Wx, Wh, [("bx", bx), ("bh", bh)], x_letters))


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
        dhn = _final_grad(dhn, "dhn", N, H, cache.h0.dtype)
        return B.gru_reset_before_backward(dh, cache, dhn)
    if not isinstance(cache, GRUCache) or cache.step:
        raise TypeError("cache: expected the GRUCache returned by gru_forward")
    N, T, _ = cache.x.shape
    H = cache.h0.shape[1]
    dt = cache.x.dtype
    dh = V.as_float(dh, "dh", dt)
    V.check_shape(dh, "dh", (N, T, H), "(N, T, H)")
    dhn = _final_grad(dhn, "dhn", N, H, dt)
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


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------
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
    x, h0, Wx, Wh, b = _cell_args(4, x, h0, Wx, Wh, [("b", b)], x_letters)
    N, H = h0.shape
    c0 = _final_grad(c0, "c0" if x_letters == "(N, T, D)" else "prev_c", N, H, x.dtype)
    return x, h0, c0, Wx, Wh, b


def _lstm_grads(cache, dh, dhn, dcn):
    """Run the LSTM kernel backward on (T, N, H) upstream gradients."""
    if cache.step:
        x, h, c, gates = cache.x[None], cache.h[None], cache.c[None], cache.gates[None]
    else:
        x, h, c, gates = (a.transpose(1, 0, 2) for a in (cache.x, cache.h, cache.c, cache.gates))
    T, N, D = x.shape
    H = cache.h0.shape[1]
    dt = x.dtype
    dx = np.empty((N, T, D), dtype=dt)
    dh0 = np.empty((N, H), dtype=dt)
    dc0 = np.empty((N, H), dtype=dt)
    dWx = np.zeros(cache.Wx.shape, dtype=dt)
    dWh = np.zeros(cache.Wh.shape, dtype=dt)
    db = np.zeros(4 * H, dtype=dt)
    B.LSTM.kernel_backward(dh, [dhn, dcn], x, [cache.h0, cache.c0], cache.Wx, cache.Wh, (),
                           [h, c], B.LSTM.Saved(gates), dx.transpose(1, 0, 2), [dh0, dc0],
                           (dWx, dWh, db))
    return dx, dh0, dc0, dWx, dWh, db


def lstm_forward(x, h0, Wx, Wh, b, c0=None):
    """Run an LSTM over a whole sequence (kernel-backed).

    Parameters
    ----------
    x : ndarray, shape (N, T, D)
        Input sequence.
    h0 : ndarray, shape (N, H)
        Initial hidden state.
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

        i, f, g, o = σ, σ, tanh, σ of the blocks of x_t Wx + h_{t-1} Wh + b
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)

    The input projection of all N*T rows is one GEMM before the loop; each
    step is one GEMM with ``Wh`` (all four gates) and one fused pass.

    Examples
    --------
    >>> import numpy as np
    >>> from rnncore import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 3))
    >>> Wx, Wh = rng.standard_normal((3, 16)), rng.standard_normal((4, 16))
    >>> h, c, cache = F.lstm_forward(x, np.zeros((2, 4)), Wx, Wh, np.zeros(16))
    >>> h.shape, c.shape
    ((2, 5, 4), (2, 5, 4))
    """
    x, h0, c0, Wx, Wh, b = _lstm_args(x, h0, c0, Wx, Wh, b, "(N, T, D)")
    N, T, _ = x.shape
    H = Wh.shape[0]
    xv = V.seq_view(x, time_major=False)
    h = np.empty((N, T, H), dtype=x.dtype)
    c = np.empty((N, T, H), dtype=x.dtype)
    saved = B.LSTM.kernel_forward(xv, [h0, c0], Wx, Wh, (b,),
                                  [h.transpose(1, 0, 2), c.transpose(1, 0, 2)])
    return h, c, LSTMCache(x=xv.transpose(1, 0, 2), h0=h0, c0=c0, Wx=Wx, Wh=Wh, h=h, c=c,
                           gates=saved.gates.transpose(1, 0, 2))


def lstm_backward(dh, cache, dhn=None, dcn=None):
    """Backward pass of :func:`lstm_forward` (BPTT, kernel-backed).

    Parameters
    ----------
    dh : ndarray, shape (N, T, H)
        Upstream gradients of all hidden states.
    cache : LSTMCache
        From :func:`lstm_forward`.
    dhn : ndarray, shape (N, H), optional
        Extra gradient of the final hidden state ``h[:, -1]``.
    dcn : ndarray, shape (N, H), optional
        Gradient of the final cell state ``c[:, -1]``.

    Returns
    -------
    dx : ndarray, shape (N, T, D)
    dh0 : ndarray, shape (N, H)
    dc0 : ndarray, shape (N, H)
    dWx : ndarray, shape (D, 4H)
    dWh : ndarray, shape (H, 4H)
    db : ndarray, shape (4H,)
    """
    if not isinstance(cache, LSTMCache) or cache.step:
        raise TypeError("cache: expected the LSTMCache returned by lstm_forward")
    N, T, _ = cache.x.shape
    H = cache.h0.shape[1]
    dt = cache.x.dtype
    dh = V.as_float(dh, "dh", dt)
    V.check_shape(dh, "dh", (N, T, H), "(N, T, H)")
    dhn = _final_grad(dhn, "dhn", N, H, dt)
    dcn = _final_grad(dcn, "dcn", N, H, dt)
    return _lstm_grads(cache, V.seq_view(dh, time_major=False), dhn, dcn)


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """One LSTM step (PyTorch's equations, gates i, f, g, o); see :func:`lstm_forward`.

    Parameters
    ----------
    x : ndarray, shape (N, D)
    prev_h : ndarray, shape (N, H)
    prev_c : ndarray, shape (N, H)
    Wx : ndarray, shape (D, 4H)
    Wh : ndarray, shape (H, 4H)
    b : ndarray, shape (4H,)

    Returns
    -------
    next_h : ndarray, shape (N, H)
    next_c : ndarray, shape (N, H)
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


def lstm_step_backward(dnext_h, dnext_c, cache):
    """Backward pass of :func:`lstm_step_forward`.

    Parameters
    ----------
    dnext_h : ndarray, shape (N, H)
        Gradient of the loss with respect to ``next_h``.
    dnext_c : ndarray, shape (N, H)
        Gradient of the loss with respect to ``next_c``.
    cache : LSTMCache
        From :func:`lstm_step_forward`.

    Returns
    -------
    dx : ndarray, shape (N, D)
    dprev_h : ndarray, shape (N, H)
    dprev_c : ndarray, shape (N, H)
    dWx : ndarray, shape (D, 4H)
    dWh : ndarray, shape (H, 4H)
    db : ndarray, shape (4H,)
    """
    if not isinstance(cache, LSTMCache) or not cache.step:
        raise TypeError("cache: expected the LSTMCache returned by lstm_step_forward")
    N, H = cache.h0.shape
    dt = cache.x.dtype
    dnext_h = V.as_float(dnext_h, "dnext_h", dt)
    V.check_shape(dnext_h, "dnext_h", (N, H), "(N, H)")
    if dnext_c is None:
        raise TypeError("dnext_c: expected a float32 or float64 array, got None")
    dnext_c = _final_grad(dnext_c, "dnext_c", N, H, dt)
    dx, dprev_h, dprev_c, dWx, dWh, db = _lstm_grads(
        cache, V.rows_view(dnext_h)[None], np.zeros((N, H), dtype=dt), dnext_c)
    return dx[:, 0], dprev_h, dprev_c, dWx, dWh, db


__all__ += [
    "gru_step_forward",
    "gru_step_backward",
    "gru_forward",
    "gru_backward",
    "GRUCache",
    "lstm_step_forward",
    "lstm_step_backward",
    "lstm_forward",
    "lstm_backward",
    "LSTMCache",
]
