"""What optimizers and gradient clipping accept as "the parameters", resolved once.

PyTorch's habits, all accepted by :mod:`rnncore.optim` and
:func:`rnncore.clip_grad_norm_`:

- a :class:`~rnncore.module.Module` (its ``params``/``grads``, names as in its
  ``state_dict``);
- a list of modules (names ``"<i>.<name>"``, as a ``Sequential`` of them);
- ``module.named_parameters()`` (names as given) or ``module.parameters()``
  (names ``"0"``, ``"1"``, ...): :class:`~rnncore.module.Parameter` views that
  carry ``.grad``;
- parameter groups, ``[{"params": <any of the above>, "lr": ...}, ...]`` (with
  several groups, names get the prefix ``"<group>."``).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .module import Module


class Entry:
    """One parameter: its name, and where its array and gradient live.

    ``module``/``key`` when it came from a module (the arrays are read from
    the module's dicts at each use, so they are the module's current ones);
    else the arrays themselves.
    """

    __slots__ = ("name", "module", "key", "_p", "_g")

    def __init__(self, name, module=None, key=None, p=None, g=None):
        self.name, self.module, self.key, self._p, self._g = name, module, key, p, g

    @property
    def p(self) -> np.ndarray:
        return self._p if self.module is None else self.module.params[self.key]

    @property
    def g(self) -> np.ndarray:
        return self._g if self.module is None else self.module.grads[self.key]


def _is_module(obj) -> bool:
    return isinstance(obj, Module) or (
        hasattr(obj, "params") and hasattr(obj, "grads")
        and isinstance(obj.params, Mapping) and isinstance(obj.grads, Mapping))


def _module_entries(m, prefix=""):
    return [Entry(prefix + k, m, k) for k in m.params]


def refuse(who, detail):
    """The TypeError for anything that is not a parameter set."""
    return TypeError(f"{who} expects a Module (an object with .params and .grads dicts), a "
                     "list of modules, module.parameters() / named_parameters(), or parameter "
                     f"groups [{{'params': ...}}]; {detail}")


def _array_entry(name, arr, who, where):
    g = getattr(arr, "grad", None)
    if not isinstance(arr, np.ndarray) or g is None:
        raise refuse(who, f"{where} is a {type(arr).__name__} without .grad")
    return Entry(name, p=np.asarray(arr), g=g)


def entries(params, who, where="params") -> list:
    """The :class:`Entry` list of one group's ``params`` (no groups here)."""
    if _is_module(params):
        return _module_entries(params)
    if isinstance(params, np.ndarray) or not hasattr(params, "__iter__"):
        raise refuse(who, f"got {type(params).__name__}")
    items = list(params)
    if all(_is_module(m) for m in items):
        return [e for i, m in enumerate(items) for e in _module_entries(m, f"{i}.")]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(_array_entry(item[0], item[1], who, f"{where}[{i}]"))
        else:
            out.append(_array_entry(str(i), item, who, f"{where}[{i}]"))
    return out


def resolve(params, who):
    """``(entries, groups)``: every :class:`Entry`, and each group as ``(names, options)``.

    ``params`` is anything the module docstring lists; ``who`` names the
    caller in messages. ``options`` are a group's keys besides ``"params"``
    (e.g. its own ``lr``).
    """
    if _is_module(params):
        items = None
    elif isinstance(params, (np.ndarray, Mapping, str)) or not hasattr(params, "__iter__"):
        raise refuse(who, f"got {type(params).__name__}")
    else:
        items = list(params)
    if items is not None and items and all(isinstance(g, Mapping) for g in items):
        groups, found = [], []
        for gi, group in enumerate(items):
            if "params" not in group:
                raise ValueError(f"{who}: parameter group {gi} has no 'params' key")
            prefix = f"{gi}." if len(items) > 1 else ""
            es = entries(group["params"], who, f"group {gi}'s params")
            for e in es:
                e.name = prefix + e.name
            found += es
            groups.append(([e.name for e in es],
                           {k: v for k, v in group.items() if k != "params"}))
    else:
        found = entries(params if items is None else items, who)
        groups = [([e.name for e in found], {})]
    if not found:
        raise ValueError(f"{who} got an empty parameter list")
    names = [e.name for e in found]
    if len(set(names)) != len(names):
        raise ValueError(f"{who}: parameter names repeat ({names}); a parameter may appear "
                         "once")
    return found, groups
