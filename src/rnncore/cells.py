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

Parameter gradients accumulate into ``cell.grads``. Only training-mode calls
save (a new cell is in training mode, as in PyTorch); for generation use
``cell.eval()`` or ``with rnncore.no_grad():`` -- nothing is saved and memory
stays constant. ``clear_saved()`` drops pending steps; ``train=`` overrides
the mode for one call. A saved step keeps copies of ``input`` and ``hx``, so
refilling one buffer every step (``buf[:] = x[t]``) is safe. The saved steps
belong to one thread at a time: a training-mode forward or a backward from
another thread while steps are pending raises ``RuntimeError`` (give each
thread its own cell); eval-mode calls may run from any number of threads.
"""
from __future__ import annotations

import threading

import numpy as np

from . import _bindings as B
from . import _validation as V
from ._grad_mode import grad_enabled
from .module import Module, check_device, register_module

__all__ = ["RNNCell", "GRUCell", "LSTMCell"]


class _CellBase(Module):
    #: the cell's binding to its kernels (rnncore._bindings)
    _kernel = None
    G = 1
    n_states = 1
    #: the layer-normalised cell (LSTMCell(layer_norm=True)); its parameter names
    layer_norm = False
    _LN_NAMES = ("layer_norm_ih_weight", "layer_norm_ih_bias", "layer_norm_hh_weight",
                 "layer_norm_hh_bias", "layer_norm_c_weight", "layer_norm_c_bias")

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None, *,
                 device=None):
        super().__init__()
        check_device(device)
        self.input_size = V.check_int(input_size, "input_size", 0)
        self.hidden_size = V.check_int(hidden_size, "hidden_size", 1)
        self.bias = bool(bias)
        self.dtype = np.dtype(dtype)
        if self.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.seed = seed
        rng = V.rng_from_seed(seed)
        H, GH = self.hidden_size, self.G * self.hidden_size
        bound = 1.0 / np.sqrt(H)
        shapes = [("weight_ih", (GH, self.input_size)), ("weight_hh", (GH, H))]
        if self.bias:
            shapes += [("bias_ih", (GH,)), ("bias_hh", (GH,))]
        for name, shape in shapes:
            self._add_param(name, rng.uniform(-bound, bound, size=shape).astype(self.dtype))
        if self.layer_norm:
            # gains 1, biases 0 (Ba et al. 2016; torch.nn.LayerNorm); no draws
            for name in self._ln_names():
                size = H if "_c_" in name else GH
                self._add_param(name, (np.ones if name.endswith("weight") else np.zeros)(
                    size, self.dtype))
        self._init_transient()

    #: dropped by deepcopy/pickle and recreated (Module.__getstate__)
    _transient = ("_stack", "_lock", "_owner", "_zero_bias")
    #: refused by Sequential: one step needs its state
    _sequential_output = None

    def _init_transient(self) -> None:
        self._zero_bias = np.zeros(self.G * self.hidden_size, dtype=self.dtype)
        self._stack = []          # saved steps, last in first out
        self._lock = threading.Lock()
        self._owner = None        # the thread whose steps are on the stack

    def _claim(self) -> None:
        """Take the cell's lock for a saving forward or a backward (RuntimeError if busy)."""
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"this {type(self).__name__} is in use by another thread; give "
                               "each thread its own cell (weights can be shared via "
                               "load_state_dict)")
        tid = threading.get_ident()
        if self._stack and self._owner != tid:
            self._lock.release()
            raise RuntimeError(
                f"this {type(self).__name__} holds steps saved by another thread; a cell's "
                "saved steps belong to one thread (give each thread its own cell, or call "
                "clear_saved() first)")
        self._owner = tid

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

    def to(self, dtype=None, *, device=None):
        self.clear_saved()
        return super().to(dtype, device=device)

    def _ln_names(self):
        """The layer-norm parameter names of this cell (no LN(c) without a cell state)."""
        return self._LN_NAMES if self.n_states == 2 else self._LN_NAMES[:4]

    def _p(self):
        ln = [self.params[n] for n in self._ln_names()] if self.layer_norm else []
        if self.bias:
            return [self.params["weight_ih"], self.params["weight_hh"],
                    self.params["bias_ih"], self.params["bias_hh"]] + ln
        return [self.params["weight_ih"], self.params["weight_hh"],
                self._zero_bias, self._zero_bias] + ln

    def _g(self):
        g = [self.grads["weight_ih"], self.grads["weight_hh"]]
        ln = [self.grads[n] for n in self._ln_names()] if self.layer_norm else []
        if self.bias:
            return g + [self.grads["bias_ih"], self.grads["bias_hh"]] + ln
        GH = self.G * self.hidden_size
        return g + [np.zeros(GH, self.dtype), np.zeros(GH, self.dtype)] + ln

    def _input(self, x):
        x = V.as_float(x, "input", self.dtype, owner="cell")
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"input: expected shape (N, D) or (D,) with D = {self.input_size}, "
                             f"got {x.shape}")
        unbatched = x.ndim == 1
        return V.rows_view(x[None] if unbatched else x), unbatched

    def _state(self, s, name, N, unbatched):
        H = self.hidden_size
        if s is None:
            return np.zeros((N, H), dtype=self.dtype)
        s = V.as_float(s, name, self.dtype, owner="cell")
        want = (H,) if unbatched else (N, H)
        V.check_shape(s, name, want, "(H,)" if unbatched else "(N, H)")
        return V.rows_view(s[None] if unbatched else s)

    def _run(self, x, states, names, train):
        """One step: the kernels' fast entry point, else the validated path."""
        save = (self.training if train is None else bool(train)) and grad_enabled()
        if not save:  # inference: nothing saved, nothing shared, no lock
            res = self._fast_step(x, states, False)
            return self._step(x, list(zip(states, names)), False) if res is None else res
        self._claim()
        try:
            res = self._fast_step(x, states, True)
            return self._step(x, list(zip(states, names)), True) if res is None else res
        finally:
            self._lock.release()

    def _step(self, x, states, train):
        x, unbatched = self._input(x)
        N = x.shape[0]
        s0 = [self._state(s, n, N, unbatched) for s, n in states]
        outs = [np.empty((1, N, self.hidden_size), dtype=self.dtype)
                for _ in range(self.n_states)]
        saved = self._kernel.forward(x[None], s0, self._p(), outs, False, None, train)
        if train:  # own copies: the caller may refill x or h before backward
            self._stack.append((x.copy(), [s.copy() for s in s0], outs, saved, unbatched))
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
        if train:  # own copies: the caller may refill x or h before backward
            if nd == 1:
                x, s0 = x[None], [s[None] for s in s0]
            self._stack.append((x.copy(), [s.copy() for s in s0], [o.reshape((1,) + x.shape[:1] + shape[-1:])
                                        for o in outs], saved, nd == 1))
        return outs

    def _step_backward(self, dstates):
        self._claim()
        try:
            return self._step_backward_locked(dstates)
        finally:
            self._lock.release()

    def _step_backward_locked(self, dstates):
        if not self._stack:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a preceding "
                               "forward in training mode (cell.train() or train=True; not "
                               "inside rnncore.no_grad()); one backward per saved step")
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
                 dtype=np.float32, seed=None, *, device=None):
        relu = V.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self._kernel = B.rnn_binding(relu)
        super().__init__(input_size, hidden_size, bias, dtype, seed, device=device)

    def get_config(self) -> dict:
        return dict(super().get_config(), nonlinearity=self.nonlinearity)

    def __repr__(self) -> str:
        r = super().__repr__()
        return r[:-1] + ", nonlinearity='relu')" if self._kernel.relu else r

    def forward(self, input, hx=None, train=None):
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
    of PyTorch's cell) and ``layer_norm`` (keyword-only, default False; True:
    the layer-normalised GRU of :class:`rnncore.GRU`, with the parameters
    ``layer_norm_ih_weight``, ``layer_norm_ih_bias``, ``layer_norm_hh_weight``,
    ``layer_norm_hh_bias`` (3H,); needs ``reset_after=True``).
    """

    G = 3
    n_states = 1
    _kernel = B.GRU

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None,
                 reset_after=True, *, layer_norm=False, device=None):
        self.reset_after = V.check_bool(reset_after, "reset_after")
        self.layer_norm = V.check_bool(layer_norm, "layer_norm")
        if self.layer_norm and not self.reset_after:
            raise ValueError("layer_norm=True with reset_after=False: the layer-normalised GRU "
                             "is PyTorch's candidate (use reset_after=True)")
        self._kernel = B.LN_GRU if self.layer_norm else B.gru_binding(self.reset_after)
        super().__init__(input_size, hidden_size, bias, dtype, seed, device=device)

    def get_config(self) -> dict:
        cfg = dict(super().get_config(), reset_after=self.reset_after)
        return dict(cfg, layer_norm=True) if self.layer_norm else cfg

    def __repr__(self) -> str:
        r = super().__repr__()
        r = r if self.reset_after else r[:-1] + ", reset_after=False)"
        return r[:-1] + ", layer_norm=True)" if self.layer_norm else r

    def forward(self, input, hx=None, train=None):
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

    Parameters
    ----------
    input_size, hidden_size : int
    bias : bool, default True
    dtype : {np.float32, np.float64}
    seed : int or None
    layer_norm : bool, default False, keyword-only
        The layer-normalised cell of Ba, Kiros & Hinton (2016, §3.1), as
        :class:`rnncore.LSTM` with ``layer_norm=True``::

            a  = LN_G(x W_ih^T) + LN_G(h W_hh^T) + b_ih + b_hh
            c' = f * c + i * g,    h' = o * tanh(LN(c'))

        with the parameters ``layer_norm_ih_weight``, ``layer_norm_ih_bias``,
        ``layer_norm_hh_weight``, ``layer_norm_hh_bias`` (4H,) and
        ``layer_norm_c_weight``, ``layer_norm_c_bias`` (H,) (gains 1, biases 0
        at init).
    """

    G = 4
    n_states = 2

    def __init__(self, input_size, hidden_size, bias=True, dtype=np.float32, seed=None, *,
                 layer_norm=False, device=None):
        self.layer_norm = V.check_bool(layer_norm, "layer_norm")
        self._kernel = B.LN_LSTM if self.layer_norm else B.LSTM
        super().__init__(input_size, hidden_size, bias, dtype, seed, device=device)

    def get_config(self) -> dict:
        cfg = super().get_config()
        return dict(cfg, layer_norm=True) if self.layer_norm else cfg

    def __repr__(self) -> str:
        r = super().__repr__()
        return r[:-1] + ", layer_norm=True)" if self.layer_norm else r

    def forward(self, input, hx=None, train=None):
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
