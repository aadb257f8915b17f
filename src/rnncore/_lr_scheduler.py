"""Learning-rate schedulers with PyTorch's closed forms (exported by :mod:`rnncore.optim`).

A scheduler sets the optimizer's ``lr`` and, for parameter groups with their
own ``lr``, each of those from its own base value.
"""
from __future__ import annotations

import math

import numpy as np

from ._validation import positive_int

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR"]


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
        #: group index -> base lr, for the groups with their own lr
        self._group_base_lrs = {i: float(g["lr"]) for i, g in
                                enumerate(getattr(optimizer, "param_groups", ())) if "lr" in g}
        self.last_epoch = 0
        self._set_lr()

    def _set_lr(self) -> None:
        """The optimizer's lr, and each group's own lr, for ``last_epoch``."""
        self.optimizer.lr = self.get_lr(self.last_epoch)
        base = self.base_lr
        try:  # the same closed form from each group's own base lr
            for i, b in self._group_base_lrs.items():
                self.base_lr = b
                self.optimizer.param_groups[i]["lr"] = self.get_lr(self.last_epoch)
        finally:
            self.base_lr = base

    def get_lr(self, epoch: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self) -> None:
        """Advance one epoch and set the optimizer's learning rate."""
        self.last_epoch += 1
        self._set_lr()

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
        self._set_lr()


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
        Its ``lr`` now (and each group's own ``lr``) is ``base_lr``.
    T_max : int
        Half period in epochs (> 0).
    eta_min : float, default 0
        The lowest lr, reached at epoch ``T_max``.
    """

    _hparams = ("T_max", "eta_min")

    def __init__(self, optimizer, T_max, eta_min=0):
        self.eta_min = float(eta_min)
        self.T_max = positive_int(T_max, "T_max")
        super().__init__(optimizer)

    def get_lr(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2
