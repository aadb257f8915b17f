"""Optimizers and learning-rate schedulers with PyTorch's update rules.

An optimizer is built on a :class:`~rnncore.module.Module` (anything with
``params`` and ``grads`` dicts sharing keys), a list of modules,
``module.parameters()`` / ``named_parameters()``, or PyTorch's parameter
groups ``[{"params": ..., "lr": ...}, ...]`` (see :mod:`rnncore._paramsets`
for the names each gets); at every :meth:`step` it reads each parameter and
its gradient and updates the parameter *in place*. An optimizer over two
modules steps exactly as two optimizers, one per module. Hyper-parameters carry PyTorch's names and defaults, and the
arithmetic follows ``torch.optim``'s single-tensor code path, so five steps
agree with PyTorch to ~1e-15 in float64.

Memory: all state buffers (``exp_avg``, ``momentum_buffer`` ...) and one
scratch buffer per parameter are allocated in the constructor; rules with
coupled (L2) weight decay also keep one buffer for the decayed gradient
``g + weight_decay * p`` (the ``.grads`` arrays are never modified). A step
then runs only ``out=`` ufuncs and allocates no full-size array.

``lr`` and the other hyper-parameters are plain mutable attributes
(schedulers set ``lr``): the defaults of every group. A group's own value
(``{"params": m, "lr": 0.1}``) wins for that group; ``param_groups`` lists
each group's parameter names and own values. ``state_dict()`` is a flat dict
-- ``"type"``, ``"step"``, the hyper-parameters, ``"group.<i>.<name>"`` for
groups' own values, and ``"state.<param name>.<buffer>"`` arrays -- that
:func:`rnncore.io.save` stores in a checkpoint; loading it continues training
bit-identically.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

from . import _paramsets
from ._lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "Adagrad", "RMSprop",
           "LRScheduler", "StepLR", "CosineAnnealingLR"]


def _lerp_(start: np.ndarray, end: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    """``start += weight * (end - start)`` in place, PyTorch's ``lerp_`` formula.

    ATen uses ``start + w (end - start)`` for ``|w| < 0.5`` and
    ``end - (end - start)(1 - w)`` otherwise; both are kept so results match
    to the last bit.
    """
    np.subtract(end, start, out=scratch)
    if abs(weight) < 0.5:
        scratch *= weight
        start += scratch
    else:
        scratch *= 1.0 - weight
        np.subtract(end, scratch, out=start)


def _scalar(value, kind, key):
    """Convert a (possibly 0-d array) state-dict value back to a Python scalar."""
    try:
        arr = np.asarray(value)
        if kind is tuple:
            return tuple(float(v) for v in arr.reshape(-1))
        if arr.size != 1:
            raise ValueError
        return kind(arr.reshape(()).item())
    except (TypeError, ValueError):
        raise ValueError(f"state_dict[{key!r}] must be a {kind.__name__}, got {value!r}") \
            from None


class Optimizer:
    """Base class: state buffers, the step loop, state dicts.

    Subclasses set ``_hparams`` (name -> type of every constructor
    hyper-parameter besides ``lr``), implement :meth:`_buffer_names` and
    :meth:`_update`, and declare ``_l2_decay`` when the rule adds
    ``weight_decay * p`` to the gradient.

    Attributes
    ----------
    module : Module or None
        The model whose ``params`` are updated, when built on one module.
    param_groups : list of dict
        ``{"params": [names], <the group's own hyper-parameters>}`` per group.
    lr : float
        Learning rate, mutable (the default of groups without their own).
    step_count : int
        Number of :meth:`step` calls so far (PyTorch's ``state['step']``).
    state : dict of str -> OrderedDict of str -> ndarray
        Per-parameter buffers, keyed by parameter name then buffer name.
    """

    _hparams: dict = {}
    _l2_decay = True

    def __init__(self, params, lr, **hparams):
        self.module = params if _paramsets._is_module(params) else None
        found, groups = _paramsets.resolve(params, type(self).__name__)
        self._entries = OrderedDict((e.name, e) for e in found)
        self._names = list(self._entries)
        for k, e in self._entries.items():
            p, g = e.p, e.g
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"parameter {k!r} must be a floating np.ndarray")
            if g is None or g.shape != p.shape:
                raise ValueError(f"grads[{k!r}] must exist with the shape of params[{k!r}] "
                                 f"{p.shape}")
        self.lr = float(lr)
        for name, value in hparams.items():
            setattr(self, name, self._hparams[name](value))
        self._validate()
        self.param_groups = [dict(o, params=names) for names, o in groups]
        for i, group in enumerate(self.param_groups):
            self._check_group(i, group)
        self.step_count = 0
        self._allocate()

    def _check_group(self, i, group) -> None:
        """Convert and validate group ``i``'s own hyper-parameters (ValueError naming them)."""
        kinds = {"lr": float, **self._hparams}
        for k in group:
            if k != "params" and k not in kinds:
                raise ValueError(f"param_groups[{i}]: unknown option {k!r} for "
                                 f"{type(self).__name__} (known: {sorted(kinds)})")
            if k != "params":
                group[k] = _scalar(group[k], kinds[k], f"param_groups[{i}][{k!r}]")
        with self._using(group):
            self._validate()

    @contextmanager
    def _using(self, group):
        """The group's own hyper-parameters as the attributes, for the duration."""
        own = {k: v for k, v in group.items() if k != "params"}
        old = {k: getattr(self, k) for k in own}
        try:
            for k, v in own.items():
                setattr(self, k, v)
            yield
        finally:
            for k, v in old.items():
                setattr(self, k, v)

    # -- hyper-parameters -----------------------------------------------------
    def _validate(self) -> None:
        """Raise ValueError for out-of-range hyper-parameters (PyTorch's checks)."""
        if not self.lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {self.lr}")
        if getattr(self, "weight_decay", 0.0) < 0.0:
            raise ValueError(f"Invalid weight_decay value: {self.weight_decay}")
        if getattr(self, "eps", 0.0) < 0.0:
            raise ValueError(f"Invalid epsilon value: {self.eps}")

    def _buffer_names(self) -> tuple:
        """Names of the per-parameter state buffers for the current settings."""
        return ()

    def _buffers(self) -> dict:
        """Parameter name -> the names of its state buffers (its group's settings)."""
        out = {}
        for group in self.param_groups:
            with self._using(group):
                out.update((k, self._buffer_names()) for k in group["params"])
        return out

    def _allocate(self) -> None:
        """(Re)create state, scratch and decayed-gradient buffers, zero-filled."""
        self.state = {}
        self._scratch = {}
        self._decayed = {}
        for group in self.param_groups:
            with self._using(group):
                for k in group["params"]:
                    p = self._entries[k].p
                    self.state[k] = OrderedDict(
                        (b, self._init_buffer(b, p)) for b in self._buffer_names())
                    self._scratch[k] = np.empty_like(p)
                    if self._l2_decay and self.weight_decay != 0:
                        self._decayed[k] = np.empty_like(p)

    def _init_buffer(self, name: str, p: np.ndarray) -> np.ndarray:
        return np.zeros_like(p)

    def _grad(self, k: str, p: np.ndarray, g: np.ndarray) -> np.ndarray:
        """The gradient the rule uses: ``g`` or ``g + weight_decay * p`` (L2)."""
        if not self._l2_decay or self.weight_decay == 0:
            return g
        d = self._decayed.get(k)
        if d is None:  # weight_decay switched on after construction: allocate once
            d = self._decayed[k] = np.empty_like(p)
        np.multiply(p, self.weight_decay, out=d)
        d += g
        return d

    # -- stepping ---------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter in place from its accumulated gradient."""
        for e in self._entries.values():
            if e.module is not None and e.key not in e.module.params:
                raise RuntimeError(
                    f"{type(self).__name__}: the module's parameters changed since the "
                    "optimizer was built")
        if self.module is not None and list(self.module.params) != self._names:
            raise RuntimeError(
                f"{type(self).__name__}: the module's parameters changed since the optimizer "
                "was built")
        self.step_count += 1
        for group in self.param_groups:
            with self._using(group):
                for k in group["params"]:
                    e = self._entries[k]
                    p, g = e.p, e.g
                    if g.shape != p.shape or self._scratch[k].shape != p.shape \
                            or self._scratch[k].dtype != p.dtype:
                        raise RuntimeError(f"{type(self).__name__}: shape or dtype of {k!r} "
                                           "changed since the optimizer was built")
                    self._update(p, self._grad(k, p, g), self.state[k], self._scratch[k])

    def _update(self, p, g, state, s) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Zero the gradients of every parameter the optimizer updates."""
        for e in self._entries.values():
            e.g[...] = 0

    # -- state dicts --------------------------------------------------------------
    def state_dict(self) -> dict:
        """A flat copy of the optimizer state.

        Returns
        -------
        dict
            ``"type"`` (class name), ``"step"`` (int), ``"lr"`` and every
            hyper-parameter (Python scalars; ``betas`` a tuple), and
            ``"state.<param>.<buffer>"`` -> ndarray copies.
        """
        sd = {"type": type(self).__name__, "step": int(self.step_count), "lr": float(self.lr)}
        for name, kind in self._hparams.items():
            sd[name] = kind(getattr(self, name))
        for i, group in enumerate(self.param_groups):
            sd.update((f"group.{i}.{k}", v) for k, v in group.items() if k != "params")
        for k, bufs in self.state.items():
            for b, arr in bufs.items():
                sd[f"state.{k}.{b}"] = arr.copy()
        return sd

    def load_state_dict(self, state_dict) -> None:
        """Restore the state written by :meth:`state_dict` (in place).

        Scalars may come back as 0-d arrays (as from an ``.npz`` file).

        Raises
        ------
        ValueError
            For a state of another optimizer type, a bad scalar, or a buffer
            of the wrong shape.
        KeyError
            For missing or unexpected keys.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        kind = state_dict.get("type")
        if kind is not None and str(np.asarray(kind)) != type(self).__name__:
            raise ValueError(f"state_dict is for optimizer {np.asarray(kind)}, "
                             f"not {type(self).__name__}")
        scalars = {"step": int, "lr": float, **self._hparams}
        missing = [k for k in scalars if k not in state_dict]
        if missing:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}")
        staged = {k: _scalar(state_dict[k], t, k) for k, t in scalars.items()}
        groups = [{"params": g["params"]} for g in self.param_groups]
        for key in state_dict:
            i, _, name = key[6:].partition(".") if key.startswith("group.") else ("", "", "")
            if not (i.isdigit() and int(i) < len(groups) and name in scalars and name != "step"):
                continue
            groups[int(i)][name] = state_dict[key]
        old = {k: getattr(self, k) for k in ("lr", *self._hparams)}
        old_groups = self.param_groups
        try:  # validate the new settings and derive their buffers, then undo
            for k in old:
                setattr(self, k, staged[k])
            self._validate()
            self.param_groups = groups
            for i, group in enumerate(groups):
                self._check_group(i, group)
            buffers = self._buffers()
        finally:
            for k, v in old.items():
                setattr(self, k, v)
            self.param_groups = old_groups
        expected = {f"state.{k}.{b}": (k, b) for k in self._names for b in buffers[k]}
        own = {f"group.{i}.{k}" for i, g in enumerate(groups) for k in g if k != "params"}
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected and k not in scalars
                      and k != "type" and k not in own]
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        arrays = {}
        for key, (k, _) in expected.items():
            v = np.asarray(state_dict[key])
            p = self._entries[k].p
            if v.shape != p.shape or v.dtype.kind not in "fiu":
                raise ValueError(f"state_dict[{key!r}] must be a real array of shape "
                                 f"{p.shape}, got {v.dtype} {v.shape}")
            arrays[key] = v
        # everything checked: apply
        self.step_count = staged.pop("step")
        self.lr = staged.pop("lr")
        for k, v in staged.items():
            setattr(self, k, v)
        self.param_groups = groups
        self._allocate()
        for key, (k, b) in expected.items():
            self.state[k][b][...] = arrays[key]

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("lr", *self._hparams))
        return f"{type(self).__name__}({hp})"


class SGD(Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's rule).

    ``g = grad + wd p``; with momentum ``b = m b + (1 - dampening) g``
    (``b = g`` on the first step) and ``g = g + m b`` (Nesterov) or
    ``g = b``; then ``p -= lr g``.

    Parameters
    ----------
    params : Module
    lr : float
    momentum, dampening, weight_decay : float, default 0
    nesterov : bool, default False
        Needs ``momentum > 0`` and ``dampening = 0``.
    """

    _hparams = {"momentum": float, "dampening": float, "weight_decay": float,
                "nesterov": bool}

    def __init__(self, params, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False):
        super().__init__(params, lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov)

    def _validate(self):
        super()._validate()
        if self.momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {self.momentum}")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _buffer_names(self):
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def _update(self, p, g, state, s):
        if self.momentum != 0:
            buf = state["momentum_buffer"]
            if self.step_count == 1:
                buf[...] = g
            else:
                buf *= self.momentum
                if self.dampening == 0:
                    buf += g
                else:
                    np.multiply(g, 1 - self.dampening, out=s)
                    buf += s
            if self.nesterov:
                np.multiply(buf, self.momentum, out=s)
                s += g
                g = s
            else:
                g = buf
        np.multiply(g, self.lr, out=s)          # s may alias g: elementwise, safe
        p -= s


class Adam(Optimizer):
    """Adam (Kingma & Ba), PyTorch's rule; L2 weight decay added to the gradient.

    ``m = lerp(m, g, 1 - b1)``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``; with
    ``amsgrad`` the running max of ``v`` replaces ``v`` in the denominator.

    Parameters
    ----------
    params : Module
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0
    amsgrad : bool, default False
    """

    _hparams = {"betas": tuple, "eps": float, "weight_decay": float, "amsgrad": bool}
    _l2_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False):
        super().__init__(params, lr, betas=tuple(float(b) for b in betas), eps=eps,
                         weight_decay=weight_decay, amsgrad=amsgrad)

    def _validate(self):
        super()._validate()
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair, got {self.betas}")
        for i, b in enumerate(self.betas):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")

    def _buffer_names(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _decay_weights(self, p):
        """Hook for AdamW's decoupled decay (nothing for Adam)."""

    def _update(self, p, g, state, s):
        beta1, beta2 = self.betas
        t = self.step_count
        self._decay_weights(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        _lerp_(m, g, 1 - beta1, s)                       # m = lerp(m, g, 1 - b1)
        v *= beta2                                       # v = b2 v + (1 - b2) g^2
        np.multiply(g, g, out=s)
        s *= 1 - beta2
        v += s
        if self.amsgrad:
            vmax = state["max_exp_avg_sq"]
            np.maximum(vmax, v, out=vmax)
            v = vmax
        step_size = self.lr / (1 - beta1 ** t)
        np.sqrt(v, out=s)                                # denom = sqrt(v)/sqrt(bc2) + eps
        s /= (1 - beta2 ** t) ** 0.5
        s += self.eps
        np.divide(m, s, out=s)                           # p += -step_size * m / denom
        s *= -step_size
        p += s


class AdamW(Adam):
    """Adam with decoupled weight decay: ``p *= 1 - lr wd`` before the Adam step.

    Same parameters as :class:`Adam`; ``weight_decay`` defaults to ``1e-2``.
    """

    _l2_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad)

    def _decay_weights(self, p):
        if self.weight_decay != 0:
            p *= 1 - self.lr * self.weight_decay


class Adagrad(Optimizer):
    """Adagrad, PyTorch's rule.

    ``g = grad + wd p``; ``clr = lr / (1 + (t - 1) lr_decay)``;
    ``sum += g^2``; ``p -= clr g / (sqrt(sum) + eps)``.

    Parameters
    ----------
    params : Module
    lr : float, default 1e-2
    lr_decay, weight_decay, initial_accumulator_value : float, default 0
    eps : float, default 1e-10
    """

    _hparams = {"lr_decay": float, "weight_decay": float,
                "initial_accumulator_value": float, "eps": float}

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10):
        super().__init__(params, lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    def _validate(self):
        super()._validate()
        if self.lr_decay < 0:
            raise ValueError(f"Invalid lr_decay value: {self.lr_decay}")
        if self.initial_accumulator_value < 0:
            raise ValueError(
                f"Invalid initial_accumulator_value value: {self.initial_accumulator_value}")

    def _buffer_names(self):
        return ("sum",)

    def _init_buffer(self, name, p):
        return np.full_like(p, self.initial_accumulator_value)

    def _update(self, p, g, state, s):
        clr = self.lr / (1 + (self.step_count - 1) * self.lr_decay)
        acc = state["sum"]
        np.multiply(g, g, out=s)                         # sum += g^2
        acc += s
        np.sqrt(acc, out=s)                              # std = sqrt(sum) + eps
        s += self.eps
        np.divide(g, s, out=s)                           # p += -clr * g / std
        s *= -clr
        p += s


class RMSprop(Optimizer):
    """RMSprop, PyTorch's rule.

    ``g = grad + wd p``; ``v = alpha v + (1 - alpha) g^2``; centered:
    ``ga = lerp(ga, g, 1 - alpha)`` and ``avg = sqrt(v - ga^2) + eps``, else
    ``avg = sqrt(v) + eps``; with momentum ``b = m b + g / avg``,
    ``p -= lr b``, else ``p -= lr g / avg``.

    Parameters
    ----------
    params : Module
    lr : float, default 1e-2
    alpha : float, default 0.99
    eps : float, default 1e-8
    weight_decay, momentum : float, default 0
    centered : bool, default False
    """

    _hparams = {"alpha": float, "eps": float, "weight_decay": float, "momentum": float,
                "centered": bool}

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False):
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered)

    def _validate(self):
        super()._validate()
        if self.momentum < 0:
            raise ValueError(f"Invalid momentum value: {self.momentum}")
        if self.alpha < 0:
            raise ValueError(f"Invalid alpha value: {self.alpha}")

    def _buffer_names(self):
        return (("square_avg",) + (("grad_avg",) if self.centered else ())
                + (("momentum_buffer",) if self.momentum > 0 else ()))

    def _update(self, p, g, state, s):
        v = state["square_avg"]
        v *= self.alpha                                  # v = alpha v + (1 - alpha) g^2
        np.multiply(g, g, out=s)
        s *= 1 - self.alpha
        v += s
        if self.centered:
            ga = state["grad_avg"]
            _lerp_(ga, g, 1 - self.alpha, s)
            np.multiply(ga, ga, out=s)                   # avg = sqrt(v - ga^2)
            np.subtract(v, s, out=s)
            np.sqrt(s, out=s)
        else:
            np.sqrt(v, out=s)
        s += self.eps
        np.divide(g, s, out=s)                           # g / avg
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += s
            np.multiply(buf, self.lr, out=s)
            p -= s
        else:
            s *= -self.lr
            p += s
