"""The small base class every rnncore layer and model shares.

A :class:`Module` owns two ordered dicts of NumPy arrays with the same keys:
``params`` (the weights) and ``grads`` (their accumulated gradients). Arrays in
``params`` are *updated in place and never rebound*, so optimizers, containers
and users may hold references to them. ``forward`` / ``backward`` are explicit
(there is no autograd): ``backward`` must follow a training-mode ``forward``
and *accumulates* into ``grads`` until :meth:`Module.zero_grad`.

Containers (e.g. :class:`rnncore.nn.Sequential`) expose their children's
arrays under dotted names (``"0.weight"``), sharing the same array objects.

PyTorch's module habits: a ``training`` flag set by :meth:`Module.train` /
:meth:`Module.eval` (recursively), ``parameters()`` / ``named_parameters()``
(:class:`Parameter` views carrying ``.grad``), ``named_modules()`` /
``children()``, parameters as attributes (``lstm.weight_ih_l0``; gradients as
``lstm.grad.weight_ih_l0``), ``to(dtype)`` / ``float()`` / ``double()``,
PyTorch-style ``repr``, ``copy.deepcopy`` and pickling. Whether a call saves
for backward is decided by :func:`grad_enabled` and the mode (see
:mod:`rnncore._grad_mode`).
"""
from __future__ import annotations

import importlib
from collections import OrderedDict

import numpy as np

from ._grad_mode import grad_enabled

__all__ = ["Module", "Parameter", "register_module", "module_registry", "registered_name"]

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


def check_device(device) -> None:
    """Accept ``device=None`` or ``"cpu"`` (PyTorch's argument); refuse any other device."""
    if device is None or str(device) == "cpu":
        return
    raise ValueError(f"device={device!r} is not supported: rnncore runs on the CPU only "
                     "(device=None or 'cpu')")


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


class Parameter(np.ndarray):
    """A view of a parameter array (same memory) that carries its gradient as ``.grad``.

    What :meth:`Module.parameters` / :meth:`Module.named_parameters` yield, so
    PyTorch's habits work: ``clip_grad_norm_(model.parameters(), 5.0)``,
    ``Adam(model.named_parameters())``, ``p.grad``. In-place updates of the
    view update the module's parameter.
    """

    grad = None

    def __array_finalize__(self, obj):
        self.grad = getattr(obj, "grad", None)


class _GradNamespace:
    """``module.grad.<name>``: the gradient arrays as attributes."""

    __slots__ = ("_grads",)

    def __init__(self, grads):
        self._grads = grads

    def __getattr__(self, name):
        try:
            return self._grads[name]
        except KeyError:
            raise AttributeError(f"no gradient named {name!r}") from None

    def __dir__(self):
        return list(self._grads)


class Module:
    """Base class: ``params``/``grads`` dicts, state dicts, parameter count, modes.

    Subclasses fill ``self.params`` and ``self.grads`` (same keys, same shapes)
    and implement ``forward`` and ``backward``. ``__call__`` is ``forward``.
    Subclasses that can be saved implement :meth:`get_config` returning the
    JSON-serialisable keyword arguments of their constructor.

    Attributes
    ----------
    training : bool
        True after construction and :meth:`train`; False after :meth:`eval`.
        In training mode (and outside :func:`rnncore.no_grad`) calls keep
        what ``backward`` needs and apply dropout; in eval mode they keep
        nothing and apply no dropout.

    Notes
    -----
    ``copy.deepcopy`` and ``pickle`` copy parameters, gradients, configuration
    and random generators; locks, workspaces and saved activations (named in
    ``_transient``) are dropped and recreated empty. Unpickling runs code:
    load pickles only from sources you trust; :func:`rnncore.save` /
    :func:`rnncore.load` remain the safe format.
    """

    #: training mode by default, also for subclasses that skip ``Module.__init__``
    training = True
    #: attributes not copied by deepcopy/pickle (recreated by :meth:`_init_transient`)
    _transient: tuple = ()
    #: what forward returns, for Sequential: "array", "pair" ((out, state): out is
    #: passed on), None (refused: a single-step cell)
    _sequential_output = "array"
    #: backward takes ``input_grad=False`` (skip the input gradient, return None): for
    #: Sequential's first module
    _skips_input_grad = False

    def __init__(self):
        self.params: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self.grads: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self.training = True
    # -- calling -----------------------------------------------------------
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _mode(self, train) -> tuple:
        """``(training, saving)`` of one call: dropout on, activations kept.

        ``train=None`` (the default of every ``forward``) follows
        :attr:`training`; an explicit bool overrides the mode for that call.
        Nothing is saved inside :func:`rnncore.no_grad` / ``inference_mode``.
        """
        training = self.training if train is None else bool(train)
        return training, training and grad_enabled()

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- modes -----------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        """Set training mode (``mode=True``) or eval mode, recursively; returns self."""
        if not isinstance(mode, bool):
            raise ValueError(f"train: mode must be a bool, got {type(mode).__name__}")
        self.training = mode
        for _, child in self.named_children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        """Eval mode (``train(False)``): calls keep nothing and apply no dropout."""
        return self.train(False)

    # -- submodules ---------------------------------------------------------------
    def named_children(self):
        """``(name, module)`` of the direct submodules (Module attributes, in order set)."""
        return [(k, v) for k, v in vars(self).items() if isinstance(v, Module)]

    def children(self):
        """The direct submodules."""
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = ""):
        """``(dotted name, module)`` of this module (name ``""``) and every submodule."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    # -- parameters as PyTorch exposes them ----------------------------------------
    def named_parameters(self):
        """``(name, Parameter)`` in ``state_dict`` order: views of the arrays optimizers update.

        Each :class:`Parameter` shares memory with ``params[name]`` and carries
        ``grads[name]`` as ``.grad``.
        """
        for k, p in self.params.items():
            v = p.view(Parameter)
            v.grad = self.grads[k]
            yield k, v

    def parameters(self):
        """The :class:`Parameter` views of :meth:`named_parameters`, in order."""
        for _, p in self.named_parameters():
            yield p

    @property
    def grad(self) -> _GradNamespace:
        """The gradients as attributes: ``lstm.grad.weight_ih_l0``."""
        return _GradNamespace(self.grads)

    def __getattr__(self, name):
        # only called when normal lookup fails: parameters by name (lstm.weight_ih_l0)
        params = self.__dict__.get("params")
        if params is not None and name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("params", ())))

    # -- dtype ------------------------------------------------------------------------
    def to(self, dtype=None, *, device=None) -> "Module":
        """Cast parameters and gradients to ``dtype`` (float32/float64); returns self.

        ``to("cpu")`` / ``device="cpu"`` are accepted (no-ops); other devices are
        not supported. Parameter arrays are *replaced*: build optimizers (and
        take :meth:`parameters`) after calling it. Saved activations are dropped.
        """
        if isinstance(dtype, str) and dtype == "cpu":
            dtype, device = None, "cpu"
        check_device(device)
        if dtype is None:
            return self
        from ._validation import check_dtype

        dt = check_dtype(dtype)
        children = dict(self.named_children())
        for child in children.values():
            child.to(dt)
        for store in ("params", "grads"):
            old = getattr(self, store)
            new = OrderedDict()
            for k, v in old.items():
                head, _, rest = k.partition(".")
                child = children.get(head)
                if child is not None and rest in getattr(child, store):
                    new[k] = getattr(child, store)[rest]
                else:
                    new[k] = v if v.dtype == dt else v.astype(dt)
            setattr(self, store, new)
        if "dtype" in vars(self):
            self.dtype = dt
        self._init_transient()
        return self

    def float(self) -> "Module":
        """``to(np.float32)``."""
        return self.to(np.float32)

    def double(self) -> "Module":
        """``to(np.float64)``."""
        return self.to(np.float64)

    # -- repr, copy, pickle ---------------------------------------------------------------
    def extra_repr(self) -> str:
        """The constructor arguments shown inside ``ClassName(...)``."""
        return ""

    def __repr__(self) -> str:
        children = self.named_children()
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({name}): " + repr(m).replace("\n", "\n  ") for name, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

    def _init_transient(self) -> None:
        """(Re)create the attributes named in ``_transient`` (locks, saved activations)."""

    def __getstate__(self):
        state = self.__dict__.copy()
        for k in self._transient:
            state.pop(k, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_transient()

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
            When a value has the wrong shape, is not numeric or not rectangular,
            or holds finite values the module's dtype cannot represent (float64
            1e300 into a float32 model: refused rather than turned into inf).
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
            try:
                v = np.asarray(v)
            except ValueError as e:  # a ragged nested list
                raise ValueError(f"state_dict[{k!r}] is not a rectangular array: {e}") from None
            if v.dtype.kind not in "fiu":
                raise ValueError(
                    f"state_dict[{k!r}] must be a real numeric array, got dtype {v.dtype}"
                )
            if v.shape != p.shape:
                raise ValueError(
                    f"state_dict[{k!r}] has shape {v.shape}, expected {p.shape}"
                )
            if v.dtype.kind == "f" and v.dtype.itemsize > p.dtype.itemsize:
                with np.errstate(over="ignore"):
                    overflow = np.isfinite(v) & ~np.isfinite(v.astype(p.dtype))
                if overflow.any():
                    raise ValueError(f"state_dict[{k!r}] holds values outside the "
                                     f"{p.dtype} range (e.g. {v[overflow].flat[0]!r})")
            staged[k] = v
        for k, v in staged.items():  # all checked first: no half-loaded model
            self.params[k][...] = v

    # -- saving ------------------------------------------------------------
    def get_config(self) -> dict:
        """Constructor keyword arguments, JSON-serialisable (for saving)."""
        raise NotImplementedError(f"{type(self).__name__} does not support saving")
