"""Grad mode: whether calls keep activations for backward (PyTorch's ``no_grad``).

rnncore has no autograd graph; "grad mode" here means only this: inside
``with rnncore.no_grad():`` (or ``rnncore.inference_mode()``) no module call
keeps what ``backward`` needs, whatever its mode, so inference loops run in
constant memory. The flag is per thread, as PyTorch's is.
"""
from __future__ import annotations

import functools
import threading

__all__ = ["no_grad", "enable_grad", "inference_mode", "grad_enabled", "set_grad_enabled"]

_state = threading.local()
#: number of set_grad_enabled(False) contexts open in any thread: while it is 0
#: (nearly always, outside inference loops) the per-thread flag need not be read,
#: which keeps this check off a cell step's few-microsecond budget
_disabled = [0]
_count_lock = threading.Lock()


def grad_enabled() -> bool:
    """True unless the calling thread is inside :func:`no_grad` / :func:`inference_mode`."""
    return not _disabled[0] or getattr(_state, "enabled", True)


class set_grad_enabled:
    """Context manager (and decorator): calls keep activations iff ``mode``."""

    def __init__(self, mode: bool = True):
        self.mode = bool(mode)
        self._prev = []

    def __enter__(self):
        self._prev.append(getattr(_state, "enabled", True))
        _state.enabled = self.mode
        if not self.mode:
            with _count_lock:
                _disabled[0] += 1
        return self

    def __exit__(self, *exc):
        _state.enabled = self._prev.pop()
        if not self.mode:
            with _count_lock:
                _disabled[0] -= 1
        return False

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with type(self)(self.mode):
                return func(*args, **kwargs)
        return wrapper


class no_grad(set_grad_enabled):
    """``with rnncore.no_grad():`` calls keep nothing for backward (PyTorch's ``no_grad``)."""

    def __init__(self):
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Undo an enclosing :class:`no_grad` (PyTorch's ``enable_grad``)."""

    def __init__(self):
        super().__init__(True)


class inference_mode(set_grad_enabled):
    """PyTorch's ``inference_mode(mode=True)``; here the same as :class:`no_grad`."""

    def __init__(self, mode: bool = True):
        super().__init__(not mode)
