"""The small base class every rnncore layer and model shares.

A :class:`Module` owns two ordered dicts of NumPy arrays with the same keys:
``params`` (the weights) and ``grads`` (their accumulated gradients). Arrays in
``params`` are *updated in place and never rebound*, so optimizers, containers
and users may hold references to them. ``forward`` / ``backward`` are explicit
(there is no autograd): ``backward`` must follow a training-mode ``forward``
and *accumulates* into ``grads`` until :meth:`Module.zero_grad`.

Containers (e.g. :class:`rnncore.nn.Sequential`) expose their children's
arrays under dotted names (``"0.weight"``), sharing the same array objects.
"""
from __future__ import annotations

import importlib
from collections import OrderedDict

import numpy as np

__all__ = ["Module", "register_module", "module_registry", "registered_name"]

#: the rnncore modules whose classes register themselves (imported on a registry miss)
_REGISTERING_MODULES = ("nn", "models", "cells", "charlm")


class _Registry(dict):
    """name -> class. A name not found imports rnncore's own registering modules once.

    So ``rnncore.load`` rebuilds e.g. a ``CharRNN`` although ``import rnncore``
    does not import :mod:`rnncore.charlm`, and this module imports no layer.
    """

    _loaded = False

    def _load_builtin(self) -> bool:
        if self._loaded:
            return False
        self._loaded = True
        for name in _REGISTERING_MODULES:
            importlib.import_module(f"{__package__}.{name}")
        return True

    def __missing__(self, name):
        if self._load_builtin() and name in self:
            return dict.__getitem__(self, name)
        raise KeyError(name)

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


#: name -> class, for :func:`rnncore.load` to rebuild a model from its config.
module_registry: dict[str, type] = _Registry()


def register_module(cls):
    """Class decorator: make ``cls`` reconstructible by :func:`rnncore.load`."""
    module_registry[cls.__name__] = cls
    return cls


def registered_name(model, unregistered: str) -> str:
    """The class name of ``model``, a registered rnncore Module (else TypeError/ValueError).

    ``unregistered`` is the ValueError message, formatted with ``{name}``: what
    cannot be done with an unregistered class, for the caller's purpose.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model must be an rnncore Module, got {type(model).__name__}")
    name = type(model).__name__
    if module_registry.get(name) is not type(model):
        raise ValueError(unregistered.format(name=name))
    return name


class Module:
    """Base class: ``params``/``grads`` dicts, state dicts, parameter count.

    Subclasses fill ``self.params`` and ``self.grads`` (same keys, same shapes)
    and implement ``forward`` and ``backward``. ``__call__`` is ``forward``.
    Subclasses that can be saved implement :meth:`get_config` returning the
    JSON-serialisable keyword arguments of their constructor.
    """

    def __init__(self):
        self.params: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self.grads: "OrderedDict[str, np.ndarray]" = OrderedDict()

    # -- calling -----------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- parameters --------------------------------------------------------
    def _add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register ``value`` as parameter ``name`` with a zero gradient."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def zero_grad(self) -> None:
        """Set every accumulated gradient to zero (in place)."""
        for g in self.grads.values():
            g[...] = 0

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return int(sum(p.size for p in self.params.values()))

    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Copies of all parameters, keyed by name (PyTorch names for RNNs)."""
        return OrderedDict((k, v.copy()) for k, v in self.params.items())

    def load_state_dict(self, state_dict, strict: bool = True) -> None:
        """Copy parameters in place from a mapping of name -> array-like.

        Anything ``np.asarray`` accepts works (a PyTorch ``state_dict`` whose
        tensors were converted with ``.numpy()`` loads unchanged). Values are
        cast to the module's dtype.

        Raises
        ------
        KeyError
            With ``strict=True``, when a key is missing or unexpected.
        ValueError
            When a value has the wrong shape or is not numeric.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(
                f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}"
            )
        missing = [k for k in self.params if k not in state_dict]
        unexpected = [k for k in state_dict if k not in self.params]
        if strict and (missing or unexpected):
            raise KeyError(
                f"load_state_dict for {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {unexpected}"
            )
        staged = {}
        for k, p in self.params.items():
            if k not in state_dict:
                continue
            v = state_dict[k]
            if hasattr(v, "detach") and hasattr(v, "cpu"):  # a torch tensor
                v = v.detach().cpu().numpy()
            v = np.asarray(v)
            if v.dtype.kind not in "fiu":
                raise ValueError(
                    f"state_dict[{k!r}] must be a real numeric array, got dtype {v.dtype}"
                )
            if v.shape != p.shape:
                raise ValueError(
                    f"state_dict[{k!r}] has shape {v.shape}, expected {p.shape}"
                )
            staged[k] = v
        for k, v in staged.items():  # all checked first: no half-loaded model
            self.params[k][...] = v

    # -- saving ------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor keyword arguments, JSON-serialisable (for saving)."""
        raise NotImplementedError(f"{type(self).__name__} does not support saving")
