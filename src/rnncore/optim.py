"""Optimizers and learning-rate schedulers with PyTorch's update rules.

An optimizer is built on a :class:`~rnncore.module.Module` (anything with
``params`` and ``grads`` dicts sharing keys) and, at every :meth:`step`, reads
``module.params[k]`` and ``module.grads[k]`` and updates the parameter
*in place*. Hyper-parameters carry PyTorch's names and defaults, and the
arithmetic follows ``torch.optim``'s single-tensor code path, so five steps
agree with PyTorch to ~1e-15 in float64.

Memory: all state buffers (``exp_avg``, ``momentum_buffer`` ...) and one
scratch buffer per parameter are allocated in the constructor; rules with
coupled (L2) weight decay also keep one buffer for the decayed gradient
``g + weight_decay * p`` (the ``.grads`` arrays are never modified). A step
then runs only ``out=`` ufuncs and allocates no full-size array.

``lr`` is a plain mutable attribute (schedulers set it). ``state_dict()`` is
a flat dict -- ``"type"``, ``"step"``, the hyper-parameters, and
``"state.<param name>.<buffer>"`` arrays -- that :func:`rnncore.io.save`
stores in a checkpoint; loading it continues training bit-identically.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from ._validation import positive_int

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
    module : Module
        The model whose ``params`` are updated.
    lr : float
        Learning rate, mutable.
    step_count : int
        Number of :meth:`step` calls so far (PyTorch's ``state['step']``).
    state : dict of str -> OrderedDict of str -> ndarray
        Per-parameter buffers, keyed by parameter name then buffer name.
    """

    _hparams: dict = {}
    _l2_decay = True

    def __init__(self, params, lr, **hparams):
        if not (hasattr(params, "params") and hasattr(params, "grads")
                and isinstance(params.params, Mapping) and isinstance(params.grads, Mapping)):
            raise TypeError(
                f"{type(self).__name__} expects a Module (an object with .params and .grads "
                f"dicts), got {type(params).__name__}")
        self.module = params
        self._names = list(params.params)
        for k in self._names:
            p, g = params.params[k], params.grads.get(k)
            if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
                raise TypeError(f"parameter {k!r} must be a floating np.ndarray")
            if g is None or g.shape != p.shape:
                raise ValueError(f"grads[{k!r}] must exist with the shape of params[{k!r}] "
                                 f"{p.shape}")
        self.lr = float(lr)
        for name, value in hparams.items():
            setattr(self, name, self._hparams[name](value))
        self._validate()
        self.step_count = 0
        self._allocate()

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

    def _allocate(self) -> None:
        """(Re)create state, scratch and decayed-gradient buffers, zero-filled."""
        self.state = {}
        self._scratch = {}
        self._decayed = {}
        for k in self._names:
            p = self.module.params[k]
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
        params, grads = self.module.params, self.module.grads
        if list(params) != self._names:
            raise RuntimeError(
                f"{type(self).__name__}: the module's parameters changed since the optimizer "
                "was built")
        self.step_count += 1
        for k in self._names:
            p, g = params[k], grads[k]
            if g.shape != p.shape or self._scratch[k].shape != p.shape:
                raise RuntimeError(f"{type(self).__name__}: shape of {k!r} changed")
            self._update(p, self._grad(k, p, g), self.state[k], self._scratch[k])

    def _update(self, p, g, state, s) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Zero the module's gradients (``module.zero_grad()``)."""
        if hasattr(self.module, "zero_grad"):
            self.module.zero_grad()
        else:
            for g in self.module.grads.values():
                g[...] = 0

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
        old = {k: getattr(self, k) for k in ("lr", *self._hparams)}
        try:  # validate the new settings and derive their buffers, then undo
            for k in old:
                setattr(self, k, staged[k])
            self._validate()
            buffer_names = self._buffer_names()
        finally:
            for k, v in old.items():
                setattr(self, k, v)
        expected = {f"state.{k}.{b}": (k, b) for k in self._names for b in buffer_names}
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict
                      if k not in expected and k not in scalars and k != "type"]
        if missing or unexpected:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
        arrays = {}
        for key, (k, _) in expected.items():
            v = np.asarray(state_dict[key])
            p = self.module.params[k]
            if v.shape != p.shape or v.dtype.kind not in "fiu":
                raise ValueError(f"state_dict[{key!r}] must be a real array of shape "
                                 f"{p.shape}, got {v.dtype} {v.shape}")
            arrays[key] = v
        # everything checked: apply
        self.step_count = staged.pop("step")
        self.lr = staged.pop("lr")
        for k, v in staged.items():
            setattr(self, k, v)
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


# ---------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------
class LRScheduler:
    """Base class: sets ``optimizer.lr`` from a closed form of the epoch count.

    Construction records ``base_lr = optimizer.lr`` and sets ``last_epoch =
    0``; every :meth:`step` increments ``last_epoch`` and sets
    ``optimizer.lr = self.get_lr(last_epoch)`` (PyTorch's closed-form
    semantics: call it after ``optimizer.step()``, once per epoch).
    """

    _hparams: tuple = ()

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__} needs an optimizer with an lr attribute")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0
        self.optimizer.lr = self.get_lr(0)

    def get_lr(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and set the optimizer's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.get_lr(self.last_epoch)

    def get_last_lr(self) -> float:
        """The learning rate set by the last :meth:`step` (or construction)."""
        return self.optimizer.lr

    def state_dict(self) -> dict:
        """``{"last_epoch", "base_lr", <hyper-parameters>}``."""
        sd = {"last_epoch": self.last_epoch, "base_lr": self.base_lr}
        sd.update({k: getattr(self, k) for k in self._hparams})
        return sd

    def load_state_dict(self, state_dict) -> None:
        """Restore :meth:`state_dict` and set the optimizer's lr accordingly."""
        self.last_epoch = int(np.asarray(state_dict["last_epoch"]))
        self.base_lr = float(np.asarray(state_dict["base_lr"]))
        for k in self._hparams:
            setattr(self, k, type(getattr(self, k))(np.asarray(state_dict[k]).item()))
        self.optimizer.lr = self.get_lr(self.last_epoch)


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)``.

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int
        Epochs between decays (> 0).
    gamma : float, default 0.1
    """

    _hparams = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        self.step_size = positive_int(step_size, "step_size")
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def get_lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) (1 + cos(pi epoch / T_max)) / 2``.

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int
        Half period in epochs (> 0).
    eta_min : float, default 0
    """

    _hparams = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0):
        self.T_max = positive_int(T_max, "T_max")
        self.eta_min = float(eta_min)
        super().__init__(optimizer)

    def get_lr(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2
