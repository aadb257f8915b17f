"""Loss functions returning ``(loss, dinput)`` and many-to-one helpers.

Every loss returns the loss and its gradient w.r.t. the first argument, for
the *returned* loss: a scalar for ``reduction='mean'`` / ``'sum'``; for
``reduction='none'`` the loss is per element and the gradient is that of
``loss.sum()`` (i.e. the upstream ``dloss`` is all ones). Scale the
gradient yourself for any other upstream gradient.

Shape letters: ``N`` batch, ``T`` steps, ``C`` classes, ``F`` features.
Gradients have the dtype of the (floating) input; integer inputs are
computed in float64.
"""
from __future__ import annotations

import numpy as np

from ._validation import as_index, as_real

__all__ = [
    "cross_entropy",
    "mse_loss",
    "binary_cross_entropy_with_logits",
    "last_step",
    "last_step_backward",
]

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: np.ndarray, dloss: np.ndarray, reduction: str, count=None):
    """Apply the reduction to elementwise ``loss`` and its gradient ``dloss``.

    ``count`` is the divisor of ``'mean'`` (default: ``loss.size``).
    Returns ``(loss, d)`` with ``d`` scaled in place.
    """
    if reduction == "none":
        return loss, dloss
    total = loss.sum(dtype=np.float64)
    if reduction == "sum":
        return float(total), dloss
    count = loss.size if count is None else count
    if count == 0:  # PyTorch: 0/0 -> nan loss; the gradient is all zeros
        return float("nan"), dloss
    dloss *= dloss.dtype.type(1.0 / count)
    return float(total / count), dloss


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}")


def cross_entropy(logits, target, mask=None, reduction="mean", ignore_index=None):
    """Softmax cross-entropy over the last axis, with masking.

    ``loss[j] = logsumexp(logits[j, :]) - logits[j, target[j]]`` for every
    position ``j`` of the leading axes, computed stably (max subtracted).

    Parameters
    ----------
    logits : ndarray, shape (..., C)
        Unnormalised scores (e.g. (N, T, C)); classes on the *last* axis
        (PyTorch puts them on axis 1).
    target : int ndarray, shape (...)
        Class ids in ``[0, C)`` (except where ignored).
    mask : bool ndarray, shape (...), optional
        ``False`` (or 0) marks positions to leave out (e.g. padding).
    reduction : {'mean', 'sum', 'none'}, default 'mean'
        ``'mean'`` averages over the *counted* positions only -- those with
        ``mask`` true and ``target != ignore_index`` -- like PyTorch's
        ``ignore_index``; when none is counted the mean is nan (0/0, as in
        PyTorch) and the gradient is zero. ``'none'`` returns the
        per-position loss, 0 where not counted.
    ignore_index : int, optional
        Target value to leave out (e.g. -100); such targets may lie outside
        ``[0, C)``.

    Returns
    -------
    loss : float or ndarray of shape (...)
    dlogits : ndarray, shape (..., C)
        ``(softmax(logits) - onehot(target)) * counted / n_counted`` for
        'mean' (no division for 'sum' and 'none').

    Raises
    ------
    TypeError
        For non-integer ``target`` or non-numeric ``logits``.
    ValueError
        For mismatched shapes, out-of-range targets or a bad ``reduction``.
    """
    return _cross_entropy(logits, target, mask, reduction, ignore_index)


def _cross_entropy(logits, target, mask=None, reduction="mean", ignore_index=None, out=None):
    """:func:`cross_entropy`, with ``dlogits`` written into ``out`` when given.

    ``out`` (shape and dtype of ``logits``, C-contiguous) may be ``logits``
    itself: a caller that owns its logits and needs only the gradient (e.g.
    :meth:`rnncore.charlm.CharLM.loss`) saves an allocation and its page
    faults. The arithmetic is the same either way.
    """
    _check_reduction(reduction)
    logits = as_real(logits, "logits")
    if logits.ndim == 0:
        raise ValueError("logits must have shape (..., C), got a scalar")
    C = logits.shape[-1]
    target = as_index(target, "target")
    if target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target must have shape {logits.shape[:-1]} (logits.shape[:-1]), "
            f"got {target.shape}")
    counted = None  # every position counts (no mask, no ignore_index): the fast path
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != target.shape:
            raise ValueError(f"mask must have shape {target.shape}, got {mask.shape}")
        if mask.dtype != bool:
            if mask.dtype.kind not in "iuf" or not np.isin(mask, (0, 1)).all():
                raise ValueError("mask must be boolean (or 0/1)")
            mask = mask.astype(bool)
        counted = mask
    if ignore_index is not None:
        keep = target != ignore_index
        counted = keep if counted is None else counted & keep
    if counted is None:
        if target.size and (target.min() < 0 or target.max() >= C):
            bad = target[(target < 0) | (target >= C)]
            raise ValueError(f"target values must lie in [0, {C}) (C = logits.shape[-1]), "
                             f"got {int(bad[0])}")
        safe_target = target.reshape(-1)                       # (M,)
    else:
        bad = counted & ((target < 0) | (target >= C))
        if bad.any():
            raise ValueError(
                f"target values must lie in [0, {C}) (C = logits.shape[-1]), got "
                f"{int(target[bad][0])}")
        safe_target = np.where(counted, target, 0).reshape(-1)  # (M,)
    z = logits.reshape(-1, C)                                  # (M, C)
    rows = np.arange(z.shape[0])
    z_target = z[rows, safe_target]                            # before out= may overwrite z
    zmax = z.max(axis=1, keepdims=True)
    if out is not None and out.shape == logits.shape and out.dtype == z.dtype \
            and out.flags.c_contiguous and out.flags.writeable:
        dz = out.reshape(z.shape)                              # a view of out
    else:
        dz = np.empty(z.shape, dtype=z.dtype)
    np.subtract(z, zmax, out=dz)
    np.exp(dz, out=dz)                                         # e = exp(z - max)
    s = dz.sum(axis=1, keepdims=True)
    # loss = log(sum exp(z - max)) + max - z[target]
    loss = np.log(s[:, 0]) + zmax[:, 0] - z_target
    dz /= s                                                    # softmax, (M, C)
    dz[rows, safe_target] -= 1
    if counted is None:
        n_counted = loss.size
    else:
        flat_counted = counted.reshape(-1)
        loss[~flat_counted] = 0   # assignment, not a product: padding may hold inf/nan
        dz[~flat_counted] = 0
        n_counted = int(flat_counted.sum())
    loss, dz = _reduce(loss, dz, reduction, n_counted)
    if reduction == "none":
        loss = loss.reshape(target.shape)
    return loss, dz.reshape(logits.shape)


def mse_loss(pred, target, reduction="mean"):
    """Mean squared error ``(pred - target)^2``.

    Parameters
    ----------
    pred, target : ndarray, same shape
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    loss : float or ndarray shaped like ``pred``
    dpred : ndarray, shaped like ``pred``
        ``2 (pred - target)``, divided by ``pred.size`` for 'mean'.
    """
    _check_reduction(reduction)
    pred = as_real(pred, "pred")
    target = as_real(target, "target", pred.dtype)
    _same_shape(pred, target, "pred", "target")
    diff = pred - target
    return _reduce(diff * diff, 2 * diff, reduction)


def binary_cross_entropy_with_logits(logits, target, reduction="mean"):
    """Sigmoid + binary cross-entropy, stable for large ``|logits|``.

    ``loss = max(x, 0) - x t + log(1 + exp(-|x|))``, equal to
    ``-[t log s(x) + (1 - t) log(1 - s(x))]``.

    Parameters
    ----------
    logits : ndarray, any shape
    target : ndarray, same shape
        Probabilities in [0, 1] (soft labels allowed).
    reduction : {'mean', 'sum', 'none'}, default 'mean'

    Returns
    -------
    loss : float or ndarray shaped like ``logits``
    dlogits : ndarray, shaped like ``logits``
        ``sigmoid(x) - t``, divided by ``logits.size`` for 'mean'.
    """
    _check_reduction(reduction)
    x = as_real(logits, "logits")
    t = as_real(target, "target", x.dtype)
    _same_shape(x, t, "logits", "target")
    loss = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    # sigmoid(x) = exp(-log(1 + exp(-x))), stable for both signs
    sig = np.exp(-np.logaddexp(0, -x))
    return _reduce(loss, sig - t, reduction)


def _check_lengths(lengths, N: int, T: int) -> np.ndarray:
    lengths = as_index(lengths, "lengths")
    if lengths.shape != (N,):
        raise ValueError(f"lengths must have shape (N,) = ({N},), got {lengths.shape}")
    if N and (lengths.min() < 1 or lengths.max() > T):
        raise ValueError(f"lengths must lie in [1, T] = [1, {T}], got {lengths.tolist()}")
    return lengths


def last_step(h, lengths):
    """The last valid step of each sequence of a batch-first array.

    Parameters
    ----------
    h : ndarray, shape (N, T, F)
        E.g. a batch-first RNN output.
    lengths : int ndarray, shape (N,)
        Valid lengths in ``[1, T]``.

    Returns
    -------
    last : ndarray, shape (N, F)
        ``last[n] = h[n, lengths[n] - 1]``.
    """
    h = np.asarray(h)
    if h.ndim != 3:
        raise ValueError(f"h must have shape (N, T, F), got {h.shape}")
    N, T = h.shape[:2]
    lengths = _check_lengths(lengths, N, T)
    return h[np.arange(N), lengths - 1]


def last_step_backward(dlast, lengths, T):
    """Scatter the gradient of :func:`last_step` back to the full sequence.

    Parameters
    ----------
    dlast : ndarray, shape (N, F)
    lengths : int ndarray, shape (N,)
    T : int
        Number of steps of the forward input.

    Returns
    -------
    dh : ndarray, shape (N, T, F)
        Zero except ``dh[n, lengths[n] - 1] = dlast[n]``.
    """
    dlast = as_real(dlast, "dlast")
    if dlast.ndim != 2:
        raise ValueError(f"dlast must have shape (N, F), got {dlast.shape}")
    N, F = dlast.shape
    lengths = _check_lengths(lengths, N, int(T))
    dh = np.zeros((N, int(T), F), dtype=dlast.dtype)
    dh[np.arange(N), lengths - 1] = dlast
    return dh
