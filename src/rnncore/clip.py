"""Gradient clipping in place, as PyTorch's ``clip_grad_norm_`` and ``clip_grad_value_``.

Over a :class:`~rnncore.module.Module` (its ``grads``), a dict of gradient
arrays, an iterable of gradient arrays, and PyTorch's forms: a list of modules,
``module.parameters()`` / ``named_parameters()`` (each parameter's ``.grad``)
or parameter groups ``[{"params": ...}]``. Clipping the global norm is the remedy for exploding
gradients in BPTT that Graves (2013) and Karpathy's min-char-rnn use.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _item_grads(item) -> list:
    """The gradient arrays one item of an iterable stands for."""
    if hasattr(item, "grads") and isinstance(getattr(item, "grads"), Mapping):
        return list(item.grads.values())                     # a module
    if isinstance(item, Mapping) and "params" in item:       # a parameter group
        return _grad_arrays(item["params"])
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        item = item[1]                                       # (name, parameter or gradient)
    grad = getattr(item, "grad", None)
    return [item if grad is None else grad]                  # a Parameter's .grad, else itself


def _grad_arrays(grads, name: str = "grads") -> list[np.ndarray]:
    """Gradient arrays from a Module, a mapping, one array, or an iterable."""
    if hasattr(grads, "grads") and isinstance(getattr(grads, "grads"), Mapping):
        arrays = list(grads.grads.values())
    elif isinstance(grads, Mapping):
        arrays = list(grads.values())
    elif isinstance(grads, np.ndarray):
        arrays = _item_grads(grads)
    else:
        try:
            items = list(grads)
        except TypeError:
            raise TypeError(
                f"{name} must be a Module, a dict of arrays or an iterable of arrays, "
                f"got {type(grads).__name__}"
            ) from None
        arrays = [g for item in items for g in _item_grads(item)]
    for i, g in enumerate(arrays):
        if not isinstance(g, np.ndarray) or g.dtype.kind != "f":
            what = f"dtype {g.dtype}" if isinstance(g, np.ndarray) else type(g).__name__
            raise TypeError(
                f"{name}[{i}] must be a floating np.ndarray (clipped in place), got {what}"
            )
    return arrays


def clip_grad_norm_(grads, max_norm, norm_type=2.0, error_if_nonfinite=False) -> float:
    """Scale gradients in place so that their global norm is at most ``max_norm``.

    Same semantics as :func:`torch.nn.utils.clip_grad_norm_`: the norm is taken
    over all gradients together, as if they were concatenated into one vector,
    and every gradient is multiplied by ``max_norm / (total_norm + 1e-6)`` when
    that factor is below 1.

    Parameters
    ----------
    grads : Module, dict of str -> ndarray, ndarray or iterable of ndarray
        The gradients (a Module's ``grads`` are used; also modules,
        ``parameters()``, ``named_parameters()`` or parameter groups, as the
        optimizers take them). Modified in place.
    max_norm : float
        Largest allowed global norm.
    norm_type : float, default 2.0
        Order ``p > 0`` of the norm; ``float('inf')`` for the max-abs norm.
    error_if_nonfinite : bool, default False
        Raise ``RuntimeError`` when the total norm is nan or inf (gradients
        untouched). Otherwise the gradients are scaled by a nan/zero factor,
        as in PyTorch.

    Returns
    -------
    total_norm : float
        The global norm *before* clipping.

    Raises
    ------
    ValueError
        For ``norm_type <= 0`` or negative ``max_norm``.
    RuntimeError
        With ``error_if_nonfinite=True`` and a non-finite total norm.

    Notes
    -----
    ``total = (sum_i ||g_i||_p^p)^(1/p)``; for ``p = inf``, ``max_i max|g_i|``.
    """
    arrays = _grad_arrays(grads)
    norm_type = float(norm_type)
    max_norm = float(max_norm)
    if not norm_type > 0:
        raise ValueError(f"norm_type must be > 0 or inf, got {norm_type}")
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if not arrays:
        return 0.0
    if math.isinf(norm_type):
        total = max(float(np.max(np.abs(g))) if g.size else 0.0 for g in arrays)
    else:
        norms = [float(np.linalg.norm(g.ravel(), ord=norm_type)) if g.size else 0.0
                 for g in arrays]
        total = float(np.linalg.norm(np.asarray(norms), ord=norm_type))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients is non-finite "
            f"({total}), so it cannot be clipped. Pass error_if_nonfinite=False "
            "to scale the gradients anyway."
        )
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # also true for nan, as PyTorch's clamp propagates nan
        for g in arrays:
            np.multiply(g, coef, out=g)
    return total


def clip_grad_value_(grads, clip_value) -> None:
    """Clip every gradient element into ``[-clip_value, clip_value]`` in place.

    Parameters
    ----------
    grads : Module, dict of str -> ndarray, ndarray or iterable of ndarray
        The gradients, modified in place.
    clip_value : float
        Non-negative bound.

    Raises
    ------
    ValueError
        For a negative ``clip_value``.
    """
    arrays = _grad_arrays(grads)
    clip_value = float(clip_value)
    if not clip_value >= 0:
        raise ValueError(f"clip_value must be >= 0, got {clip_value}")
    for g in arrays:
        np.clip(g, -clip_value, clip_value, out=g)
