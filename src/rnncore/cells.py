"""Single-step cells with PyTorch's interface: RNNCell, GRUCell, LSTMCell.

For generation and hand-written loops. Parameters use PyTorch's names and
layouts (``weight_ih`` (G*H, D), ``weight_hh`` (G*H, H), ``bias_ih``,
``bias_hh``), so ``torch.nn.RNNCell(...).state_dict()`` loads 1:1.

Backward through a hand-written loop: every training-mode ``forward`` pushes
what its backward needs on a stack; ``backward`` pops the most recent step
(last in, first out), so a loop forward over t = 0..T-1 followed by a loop of
``backward`` calls over t = T-1..0 is BPTT::

    h = np.zeros((N, H), np.float32)
    for t in range(T):
        h = cell(x[t], h)
        hs.append(h)
    dh_next = np.zeros_like(h)
    for t in reversed(range(T)):
        dx[t], dh_next = cell.backward(dh[t] + dh_next)

Parameter gradients accumulate into ``cell.grads``. ``clear_saved()`` drops
pending steps (e.g. after an inference loop run with ``train=True``);
``forward(..., train=False)`` saves nothing.
"""
from __future__ import annotations

import numpy as np

from . import _bindings as B
from . import _validation as V
from .module import Module, register_module

__all__ = ["RNNCell", "GRUCell", "LSTMCell"]


class _CellBase(Module):
    #: the cell's binding to its kernels (rnncore._bindings)
    _kernel = None
    G = 1
    n_states = 1

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None):
        super().__init__()
        self.input_size = V.check_int(input_size, "input_size", 0)
        self.hidden_size = V.check_int(hidden_size, "hidden_size", 1)
        self.bias = bool(bias)
        self.dtype = np.dtype(dtype)
        if self.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.seed = seed
        rng = np.random.default_rng(seed)
        H, GH = self.hidden_size, self.G * self.hidden_size
        bound = 1.0 / np.sqrt(H)
        shapes = [("weight_ih", (GH, self.input_size)), ("weight_hh", (GH, H))]
        if self.bias:
            shapes += [("bias_ih", (GH,)), ("bias_hh", (GH,))]
        for name, shape in shapes:
            self._add_param(name, rng.uniform(-bound, bound, size=shape).astype(self.dtype))
        self._zero_bias = np.zeros(GH, dtype=self.dtype)
        self._stack = []

    def get_config(self) -> dict:
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, bias=self.bias,
                    dtype=self.dtype.name, seed=self.seed)

    def __repr__(self) -> str:
        s = f"{type(self).__name__}({self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        return s + ")"

    def clear_saved(self) -> None:
        """Forget the steps saved for backward."""
        self._stack.clear()

    def _p(self):
        if self.bias:
            return [self.params["weight_ih"], self.params["weight_hh"],
                    self.params["bias_ih"], self.params["bias_hh"]]
        return [self.params["weight_ih"], self.params["weight_hh"],
                self._zero_bias, self._zero_bias]

    def _g(self):
        g = [self.grads["weight_ih"], self.grads["weight_hh"]]
        if self.bias:
            return g + [self.grads["bias_ih"], self.grads["bias_hh"]]
        GH = self.G * self.hidden_size
        return g + [np.zeros(GH, self.dtype), np.zeros(GH, self.dtype)]

    def _input(self, x):
        x = V.as_float(x, "input", self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected shape (N, D) or (D,) with D = {self.input_size}, "
                             f"got {x.shape}")
        unbatched = x.ndim == 1
        return V.rows_view(x[None] if unbatched else x), unbatched

    def _state(self, s, name, N, unbatched):
        H = self.hidden_size
        if s is None:
            return np.zeros((N, H), dtype=self.dtype)
        s = V.as_float(s, name, self.dtype)
        want = (H,) if unbatched else (N, H)
        V.check_shape(s, name, want, "(H,)" if unbatched else "(N, H)")
        return V.rows_view(s[None] if unbatched else s)

    def _run(self, x, states, names, train):
        """One step: the kernels' fast entry point, else the validated path."""
        res = self._fast_step(x, states, train)
        if res is None:
            res = self._step(x, list(zip(states, names)), train)
        return res

    def _step(self, x, states, train):
        x, unbatched = self._input(x)
        N = x.shape[0]
        s0 = [self._state(s, n, N, unbatched) for s, n in states]
        outs = [np.empty((1, N, self.hidden_size), dtype=self.dtype)
                for _ in range(self.n_states)]
        saved = self._kernel.forward(x[None], s0, self._p(), outs, False, None)
        if train:
            self._stack.append((x, s0, outs, saved, unbatched))
        res = [o[0] for o in outs]
        return [r[0] for r in res] if unbatched else res

    def _fast_step(self, x, states, train):  # noqa: C901  (kept flat: it is the hot path)
        """The kernels' single-step entry point for well-formed arrays.

        Returns None (nothing done) unless x and the states are C-contiguous
        arrays of the cell's dtype and shape; `_step` then converts, validates
        and raises the clear errors. Saves for backward exactly what `_step`
        saves.
        """
        dt = self.dtype
        if type(x) is not np.ndarray or x.dtype != dt:
            return None
        nd = x.ndim
        if nd == 2:
            shape = (x.shape[0], self.hidden_size)
        elif nd == 1:
            shape = (self.hidden_size,)
        else:
            return None
        s0 = []
        for s in states:
            if s is None:
                s = np.zeros(shape, dt)
            elif type(s) is not np.ndarray:
                return None
            s0.append(s)
        # the kernel takes (N, F) and (F,) alike; outputs in the caller's shape
        outs = [np.empty(shape, dt)]
        if self.n_states == 2:
            outs.append(np.empty(shape, dt))
        saved = (self._kernel.step_saved(shape[0] if nd == 2 else 1, self.hidden_size, dt)
                 if train else None)
        if not self._kernel.step(x, s0, outs, saved, self.params, self.input_size,
                                 self.hidden_size, None if self.bias else self._zero_bias):
            return None
        if train:
            if nd == 1:
                x, s0 = x[None], [s[None] for s in s0]
            self._stack.append((x, s0, [o.reshape((1,) + x.shape[:1] + shape[-1:])
                                        for o in outs], saved, nd == 1))
        return outs

    def _step_backward(self, dstates):
        if not self._stack:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a preceding forward "
                               "with train=True (one backward per saved step)")
        x, s0, outs, saved, unbatched = self._stack[-1]
        N = x.shape[0]
        ds = [self._state(d, n, N, unbatched) for d, n in dstates]
        dx = np.empty((1, N, self.input_size), dtype=self.dtype)
        ds0 = [np.empty((N, self.hidden_size), dtype=self.dtype) for _ in range(self.n_states)]
        zero_dh = np.zeros((1, N, self.hidden_size), dtype=self.dtype)
        self._kernel.backward(zero_dh, ds, x[None], s0, self._p(), outs, saved, dx, ds0,
                              self._g(), overwrite_saved=True)
        self._stack.pop()
        if unbatched:
            return dx[0, 0], [d[0] for d in ds0]
        return dx[0], ds0


@register_module
class RNNCell(_CellBase):
    """An Elman (1990) RNN cell, ``torch.nn.RNNCell`` in NumPy.

    ``h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)``, act = tanh or relu.

    Parameters
    ----------
    input_size, hidden_size : int
    bias : bool, default True
    nonlinearity : {'tanh', 'relu'}, default 'tanh'
    dtype : {np.float32, np.float64}
    seed : int or None

    Examples
    --------
    >>> import numpy as np, rnncore
    >>> cell = rnncore.cells.RNNCell(3, 4, seed=0)
    >>> h = cell(np.ones((2, 3), np.float32))          # (N, H), hx defaults to zeros
    >>> dx, dh = cell.backward(np.ones_like(h))
    """

    G = 1
    n_states = 1

    def __init__(self, input_size, hidden_size, bias=True, nonlinearity="tanh",
                 dtype=np.float32, seed=None):
        relu = V.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self._kernel = B.rnn_binding(relu)
        super().__init__(input_size, hidden_size, bias, dtype, seed)

    def get_config(self) -> dict:
        return dict(super().get_config(), nonlinearity=self.nonlinearity)

    def __repr__(self) -> str:
        r = super().__repr__()
        return r[:-1] + ", nonlinearity='relu')" if self._kernel.relu else r

    def forward(self, input, hx=None, train=True):
        """One step. input (N, D) or (D,); hx (N, H) or (H,) (zeros if None) -> h' like hx."""
        return self._run(input, (hx,), ("hx",), train)[0]

    def backward(self, dh):
        """Pop the last saved step; returns ``(dinput, dhx)`` and accumulates grads."""
        dx, (dhx,) = self._step_backward([(dh, "dh")])
        return dx, dhx


@register_module
class GRUCell(_CellBase):
    """A GRU cell, ``torch.nn.GRUCell`` in NumPy (gates r, z, n; see :class:`rnncore.GRU`).

    Parameters as :class:`RNNCell` without ``nonlinearity``, plus
    ``reset_after`` (default True, PyTorch's candidate; False: Cho et al.
    2014's ``n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)``, an extension
    of PyTorch's cell).
    """

    G = 3
    n_states = 1
    _kernel = B.GRU

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None,
                 reset_after=True):
        self.reset_after = V.check_bool(reset_after, "reset_after")
        self._kernel = B.gru_binding(self.reset_after)
        super().__init__(input_size, hidden_size, bias, dtype, seed)

    def get_config(self) -> dict:
        return dict(super().get_config(), reset_after=self.reset_after)

    def __repr__(self) -> str:
        r = super().__repr__()
        return r if self.reset_after else r[:-1] + ", reset_after=False)"

    def forward(self, input, hx=None, train=True):
        """One step. input (N, D) or (D,); hx (N, H) or (H,) (zeros if None) -> h'."""
        return self._run(input, (hx,), ("hx",), train)[0]

    def backward(self, dh):
        """Pop the last saved step; returns ``(dinput, dhx)`` and accumulates grads."""
        dx, (dhx,) = self._step_backward([(dh, "dh")])
        return dx, dhx


@register_module
class LSTMCell(_CellBase):
    """An LSTM cell, ``torch.nn.LSTMCell`` in NumPy (gates i, f, g, o).

    ``h', c' = cell(input, (h, c))``; ``dinput, (dh, dc) = cell.backward(dh', dc')``.
    """

    G = 4
    n_states = 2
    _kernel = B.LSTM

    def forward(self, input, hx=None, train=True):
        """One step. hx = (h, c) or None -> (h', c')."""
        if hx is None:
            hx = (None, None)
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError("hx: expected a pair (h, c) of arrays or None")
        h, c = self._run(input, hx, ("hx[0]", "hx[1]"), train)
        return h, c

    def backward(self, dh, dc=None):
        """Pop the last saved step; returns ``(dinput, (dh_prev, dc_prev))``."""
        dx, (dhp, dcp) = self._step_backward([(dh, "dh"), (dc, "dc")])
        return dx, (dhp, dcp)
