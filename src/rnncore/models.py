"""Sequence models with PyTorch's interface: :class:`RNN`, :class:`GRU`, :class:`LSTM`.

The classes, their parameters and docstrings; the composition of layers,
directions, variable ``lengths``, dropout and ``batch_first`` they run is in
:mod:`rnncore._stack`, each (layer, direction) one kernel call through
:mod:`rnncore._bindings`.
"""
from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import numpy as np

from . import _bindings as B
from . import _regularise as R
from . import _stack
from . import _validation as V
from ._model_docs import COMMON_CALL as _COMMON_CALL
from ._model_docs import COMMON_PARAMS as _COMMON_PARAMS
from .module import Module, check_device, register_module

__all__ = ["RNN", "GRU", "LSTM"]

MERGE_MODES = ("concat", "sum", "mul", "ave")


class _RNNBase(Module):
    """Shared machinery of RNN, GRU and LSTM (stacking, directions, lengths)."""

    #: gates per cell (1, 3, 4) and number of state arrays (h; or h, c)
    G = 1
    n_states = 1
    weight_drop, variational_dropout = R.OFF  # (also for models pickled before the options)

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, merge_mode="concat", dtype=np.float32,
                 seed=None, *, device=None, weight_drop=0.0, variational_dropout=0.0):
        super().__init__()
        check_device(device)
        R.set_options(self, weight_drop, variational_dropout)
        self.input_size = V.check_int(input_size, "input_size", 0)
        self.hidden_size = V.check_int(hidden_size, "hidden_size", 1)
        self.num_layers = V.check_int(num_layers, "num_layers", 1)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = V.check_probability(dropout, "dropout")
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(  # PyTorch's warning, word for word
                "dropout option adds dropout after all but last recurrent layer, so non-zero "
                f"dropout expects num_layers greater than 1, but got dropout={self.dropout} "
                f"and num_layers={self.num_layers}", UserWarning, stacklevel=3)
        self.bidirectional = bool(bidirectional)
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {MERGE_MODES}, got {merge_mode!r}")
        self.merge_mode = merge_mode
        self.dtype = np.dtype(dtype)
        if self.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.seed = seed
        self._rng = V.rng_from_seed(seed)
        self._init_transient()
        self.reset_parameters()

    #: dropped by deepcopy/pickle, recreated empty (Module.__getstate__)
    _transient = ("_saved", "_lock", "_input_copy")
    #: forward returns (out, state); Sequential passes out on
    _sequential_output = "pair"
    #: backward(input_grad=False) computes no dx
    _skips_input_grad = True

    def _init_transient(self) -> None:
        self._saved = None
        self._lock = threading.Lock()
        #: where a training forward copies a caller's x for backward (reused; _stack.forward)
        self._input_copy = V.CopyBuffer()

    # ------------------------------------------------------------ parameters
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _h_size(self) -> int:
        """The width of h (and of each direction's output): ``proj_size`` or H."""
        # the instance dict, not getattr: a missing attribute goes through
        # Module.__getattr__ and an AttributeError, ~1 us each, many times a call
        return self.__dict__.get("proj_size", 0) or self.hidden_size

    @property
    def _state_sizes(self) -> list:
        """The width of each state: [h] or [h, c] (LSTM's c keeps H with a projection)."""
        return [self._h_size] + [self.hidden_size] * (self.n_states - 1)

    def _layer_input_size(self, k: int) -> int:
        return self.input_size if k == 0 else self._h_size * self.num_directions

    @staticmethod
    def _suffix(d: int) -> str:
        return "_reverse" if d == 1 else ""

    def reset_parameters(self) -> None:
        """PyTorch's default init: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), from ``seed``."""
        H, GH = self.hidden_size, self.G * self.hidden_size
        bound = 1.0 / np.sqrt(H)
        self.params = OrderedDict()
        self.grads = OrderedDict()
        #: parameter names of (layer k, direction d) at index k * num_directions + d
        self._names = []
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = f"_l{k}{self._suffix(d)}"
                shapes = [("weight_ih" + sfx, (GH, self._layer_input_size(k))),
                          ("weight_hh" + sfx, (GH, self._h_size))]
                if self.bias:
                    shapes += [("bias_ih" + sfx, (GH,)), ("bias_hh" + sfx, (GH,))]
                if self._h_size != H:
                    shapes += [("weight_hr" + sfx, (self._h_size, H))]   # PyTorch's order
                for name, shape in shapes:
                    w = self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                    self._add_param(name, w)
                names = [name for name, _ in shapes]
                if getattr(self, "layer_norm", False):
                    # gains 1, biases 0 (Ba et al. 2016; torch.nn.LayerNorm); no draws
                    for name, size in self._layer_norm_shapes():
                        self._add_param(name + sfx, (np.ones if name.endswith("weight")
                                                     else np.zeros)(size, self.dtype))
                        names.append(name + sfx)
                self._names.append(names)

    def _layer_norm_shapes(self):
        """(name without suffix, size) of each layer-norm parameter of one layer/direction."""
        GH = self.G * self.hidden_size
        shapes = [("layer_norm_ih_weight", GH), ("layer_norm_ih_bias", GH),
                  ("layer_norm_hh_weight", GH), ("layer_norm_hh_bias", GH)]
        if self.n_states == 2:
            shapes += [("layer_norm_c_weight", self.hidden_size),
                       ("layer_norm_c_bias", self.hidden_size)]
        return shapes

    def _weights(self, k, d):
        """(W_ih (GH, D_k), W_hh (GH, H), b_ih, b_hh[, W_hr (P, H)][, the layer norms'
        gains and biases]) and their gradients."""
        names = self._names[k * self.num_directions + d]
        g = [self.grads[n] for n in names]
        if not self.bias:
            g = g[:2] + [None, None] + g[2:]
        return self._params_of(k, d), g

    def _params_of(self, k, d):
        """The parameters of :meth:`_weights` alone (for the calls that do not touch
        the gradients: forward, step)."""
        params = self.params
        p = [params[n] for n in self._names[k * self.num_directions + d]]
        if not self.bias:
            z = np.zeros(self.G * self.hidden_size, dtype=self.dtype)
            p = p[:2] + [z, z] + p[2:]
        return p

    def get_config(self) -> dict:
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                   num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   dropout=self.dropout, bidirectional=self.bidirectional,
                   merge_mode=self.merge_mode, dtype=self.dtype.name, seed=self.seed)
        return dict(cfg, **R.config(self))

    def __repr__(self) -> str:
        s = f"{type(self).__name__}({self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        extra = self._repr_extra()
        if extra:
            s += ", " + extra
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        s += "".join(f", {k}={v!r}" for k, v in R.config(self, as_given=True).items())
        if self.bidirectional:
            s += ", bidirectional=True"
            if self.merge_mode != "concat":
                s += f", merge_mode={self.merge_mode!r}"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s + ")"

    def _repr_extra(self) -> str:
        return ""

    # ------------------------------------------------- forward, step, backward
    def _forward(self, x, states0, lengths, train):
        training, saving = self._mode(train)
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"this {type(self).__name__} is in use by another thread; a model keeps the "
                "activations of its last forward for backward, so give each thread its own "
                "model (weights can be shared via load_state_dict)")
        try:
            self._saved = None  # a failed forward leaves nothing to back-propagate
            y, finals, self._saved = _stack.forward(self, x, states0, lengths, training, saving)
            return y, finals
        finally:
            self._lock.release()

    def _step(self, x, states):
        """One time step of every layer (inference only; see the subclasses' ``step``)."""
        return _stack.step(self, x, states)

    def _backward(self, dout, dstates_n, input_grad=True):
        input_grad = V.check_bool(input_grad, "input_grad")
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"this {type(self).__name__} is in use by another thread; give each thread "
                "its own model")
        try:
            sv = self._saved
            if sv is None:
                raise RuntimeError(
                    f"{type(self).__name__}.backward() needs a preceding forward in "
                    "training mode (model.train() or train=True; not inside rnncore.no_grad()); "
                    "each forward's activations can be back-propagated once")
            checked = _stack.check_backward(self, sv, dout, dstates_n)  # before consuming
            self._saved = None  # activations are freed, as PyTorch frees its graph
            return _stack.backward(self, sv, dout, dstates_n, checked, input_grad)
        finally:
            self._lock.release()


class _HiddenStateRNN(_RNNBase):
    """Models whose state is one array h (RNN, GRU): forward, backward, step."""

    def forward(self, x, h0=None, lengths=None, train=None):
        """Run the model over the sequence (all layers and directions).

        Parameters
        ----------
        x : ndarray, shape (T, N, D), (N, T, D) if batch_first, or (T, D) unbatched
        h0 : ndarray, shape (num_layers * num_directions, N, H), optional
            Initial states (zeros by default); (L * dirs, H) when unbatched.
        lengths : array of N ints, optional
            Valid length of each sequence in a zero-padded batch.
        train : bool, optional
            Override the module's mode (:attr:`training`) for this call:
            keep activations for :meth:`backward` and apply dropout.

        Returns
        -------
        out : ndarray, shape (T, N, dirs * H) (or (N, T, ·); (·, H) for merge
            modes other than 'concat')
        h_n : ndarray, shape (num_layers * num_directions, N, H)
        """
        y, (hn,) = self._forward(x, [(h0, "h0")], lengths, train)
        return y, hn

    def backward(self, dout, dh_n=None, *, input_grad=True):
        """Back-propagate through time.

        Parameters
        ----------
        dout : ndarray, shape of ``out``
        dh_n : ndarray, shape of ``h_n``, optional
        input_grad : bool, default True
            False: ``dx`` is not computed (None is returned; see the class docstring).

        Returns
        -------
        dx : ndarray, shape of ``x``, or None
        dh0 : ndarray, shape of ``h_n``
        """
        dx, (dh0,) = self._backward(dout, [(dh_n, "dh_n")], input_grad)
        return dx, dh0

    def step(self, x, h=None):
        """Advance one time step from state ``h`` (inference; unidirectional models).

        Parameters
        ----------
        x : ndarray, shape (N, D) or (D,)
        h : ndarray, shape (num_layers, N, H) or (num_layers, H), optional (zeros)

        Returns
        -------
        y : ndarray, shape (N, H)
            The last layer's output at this step.
        h : ndarray, shape (num_layers, N, H)
            The new state, to pass to the next call.
        """
        y, (hn,) = self._step(x, [(h, "h")])
        return y, hn


@register_module
class RNN(_HiddenStateRNN):
    __doc__ = """Multi-layer Elman RNN with tanh or ReLU, PyTorch's ``torch.nn.RNN`` in NumPy.

    The simple recurrent network of Elman (1990), stacked and optionally
    bidirectional.

    For each layer and direction, ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Parameters
    ----------""" + _COMMON_PARAMS + """    nonlinearity : {'tanh', 'relu'}, default 'tanh'

    Attributes
    ----------
    params, grads : OrderedDict of str -> ndarray
        PyTorch's names and shapes: ``weight_ih_l{k}`` (H, D_k),
        ``weight_hh_l{k}`` (H, H), ``bias_ih_l{k}`` (H,), ``bias_hh_l{k}``
        (H,), with ``_reverse`` for the reverse direction. A PyTorch
        ``state_dict`` loads 1:1 with :meth:`load_state_dict`.

    Notes
    -----""" + _COMMON_CALL.format(state="h0", dstate="dh_n") + """
    Examples
    --------
    >>> import numpy as np, rnncore
    >>> rnn = rnncore.RNN(10, 20, num_layers=2, bidirectional=True, seed=0)
    >>> x = np.random.default_rng(0).standard_normal((5, 3, 10)).astype(np.float32)
    >>> out, h_n = rnn(x)                 # out (T, N, 2H), h_n (L*2, N, H)
    >>> out.shape, h_n.shape
    ((5, 3, 40), (4, 3, 20))
    >>> dx, dh0 = rnn.backward(np.ones_like(out))
    """

    G = 1
    n_states = 1

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, merge_mode="concat",
                 dtype=np.float32, seed=None, *, device=None, weight_drop=0.0,
                 variational_dropout=0.0):
        self._relu = V.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self._kernel = B.rnn_binding(self._relu)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, merge_mode, dtype, seed, device=device,
                         weight_drop=weight_drop, variational_dropout=variational_dropout)

    def get_config(self) -> dict:
        return dict(super().get_config(), nonlinearity=self.nonlinearity)

    def _repr_extra(self) -> str:
        return "nonlinearity='relu'" if self._relu else ""


@register_module
class GRU(_HiddenStateRNN):
    __doc__ = """Multi-layer gated recurrent unit, PyTorch's ``torch.nn.GRU`` in NumPy.

    For each layer and direction (gates r, z, n, in that order)::

        r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
        h' = (1 - z) * n + z * h

    or, with ``reset_after=False`` (Cho et al. 2014; Keras's and ONNX's default)::

        n = tanh(x W_in^T + b_in + (r * h) W_hn^T + b_hn)

    Parameters
    ----------""" + _COMMON_PARAMS + """
    reset_after : bool, default True
        Where the reset gate applies: after the recurrent product (True,
        PyTorch's form) or before it (False). Same parameters and names.
    layer_norm : bool, default False
        The layer-normalised GRU (Ba, Kiros & Hinton 2016, §3.1, on PyTorch's
        candidate): each gate group of the input and of the recurrent
        pre-activations normalised on its own (mean and biased variance over H
        units, eps = 1e-5, per-unit gain and bias, 1 and 0 at init)::

            r = sigmoid(LN(x W_ir^T) + b_ir + LN(h W_hr^T) + b_hr)    (z alike)
            n = tanh(LN(x W_in^T) + b_in + r * (LN(h W_hn^T) + b_hn))

        Adds ``layer_norm_ih_weight_l{k}``, ``layer_norm_ih_bias_l{k}``,
        ``layer_norm_hh_weight_l{k}``, ``layer_norm_hh_bias_l{k}`` (3H,). Needs
        ``reset_after=True`` (ValueError otherwise); not exportable to ONNX.

    Attributes
    ----------
    params, grads : OrderedDict of str -> ndarray
        ``weight_ih_l{k}`` (3H, D_k) = [W_ir | W_iz | W_in] stacked on axis 0,
        ``weight_hh_l{k}`` (3H, H), ``bias_ih_l{k}``/``bias_hh_l{k}`` (3H,),
        ``_reverse`` for the reverse direction: PyTorch's names and packing.

    Notes
    -----""" + _COMMON_CALL.format(state="h0", dstate="dh_n")

    G = 3
    n_states = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, merge_mode="concat", dtype=np.float32,
                 seed=None, reset_after=True, *, layer_norm=False, device=None, weight_drop=0.0,
                 variational_dropout=0.0):
        self.reset_after = V.check_bool(reset_after, "reset_after")
        self.layer_norm = V.check_bool(layer_norm, "layer_norm")
        if self.layer_norm and not self.reset_after:
            raise ValueError("layer_norm=True with reset_after=False: the layer-normalised GRU "
                             "is PyTorch's candidate (use reset_after=True)")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, merge_mode, dtype, seed, device=device,
                         weight_drop=weight_drop, variational_dropout=variational_dropout)

    @property
    def _kernel(self):
        """The binding of this candidate (rnncore._bindings.GRU, GRU_RESET_BEFORE or LN_GRU)."""
        return B.LN_GRU if self.layer_norm else B.gru_binding(self.reset_after)

    def get_config(self) -> dict:
        cfg = dict(super().get_config(), reset_after=self.reset_after)
        return dict(cfg, layer_norm=True) if self.layer_norm else cfg

    def _repr_extra(self) -> str:
        extra = [] if self.reset_after else ["reset_after=False"]
        return ", ".join(extra + (["layer_norm=True"] if self.layer_norm else []))


@register_module
class LSTM(_RNNBase):
    __doc__ = """Multi-layer long short-term memory, PyTorch's ``torch.nn.LSTM`` in NumPy.

    For each layer and direction (gates i, f, g, o, in that order)::

        i, f, o = sigmoid(x W_i*^T + b_i* + h W_h*^T + b_h*)
        g = tanh(x W_ig^T + b_ig + h W_hg^T + b_hg)
        c' = f * c + i * g
        h' = o * tanh(c')                 (proj_size P > 0: h' = (o * tanh(c')) W_hr^T)

    Parameters
    ----------""" + _COMMON_PARAMS + """
    proj_size : int, default 0
        PyTorch's projection (LSTMP, Sak et al. 2014): h, ``h_n`` and each
        direction's output have P < H features, ``c`` keeps H; the next layer's
        input size is P * num_directions. 0: no projection.
    layer_norm : bool, default False
        The layer-normalised LSTM of Ba, Kiros & Hinton (2016, §3.1), as
        TensorFlow Addons' ``LayerNormLSTMCell``: each gate group of the input
        and of the recurrent pre-activations is normalised on its own, and so
        is the cell state before its tanh (``LN`` below: mean and biased
        variance over the H units of a group, eps = 1e-5, learnable per-unit
        gain and bias, initialised to 1 and 0)::

            a   = LN_G(x W_ih^T) + LN_G(h W_hh^T) + b_ih + b_hh
            i, f, g, o = sigmoid, sigmoid, tanh, sigmoid of the blocks of a
            c'  = f * c + i * g                  (carried un-normalised)
            h'  = o * tanh(LN(c'))

        Not with ``proj_size`` (ValueError); not exportable to ONNX.

    Attributes
    ----------
    params, grads : OrderedDict of str -> ndarray
        ``weight_ih_l{k}`` (4H, D_k) = [W_ii | W_if | W_ig | W_io],
        ``weight_hh_l{k}`` (4H, H) ((4H, P) with a projection),
        ``bias_ih_l{k}``/``bias_hh_l{k}`` (4H,), ``weight_hr_l{k}`` (P, H) with a
        projection, ``_reverse`` for the reverse direction: PyTorch's names and packing.
        With ``layer_norm=True`` also ``layer_norm_ih_weight_l{k}``,
        ``layer_norm_ih_bias_l{k}``, ``layer_norm_hh_weight_l{k}``,
        ``layer_norm_hh_bias_l{k}`` (4H,) (gate groups i, f, g, o) and
        ``layer_norm_c_weight_l{k}``, ``layer_norm_c_bias_l{k}`` (H,).

    Notes
    -----
    The state is a pair, as in PyTorch: ``out, (h_n, c_n) = lstm(x, (h0, c0))``
    and ``dx, (dh0, dc0) = lstm.backward(dout, (dh_n, dc_n))``; either member
    of a pair may be None.
    """ + _COMMON_CALL.format(state="(h0, c0)", dstate="(dh_n, dc_n)")

    G = 4
    n_states = 2

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, merge_mode="concat", dtype=np.float32,
                 seed=None, proj_size=0, *, layer_norm=False, device=None, weight_drop=0.0,
                 variational_dropout=0.0):
        self.proj_size = V.check_int(proj_size, "proj_size", 0)
        if self.proj_size and self.proj_size >= V.check_int(hidden_size, "hidden_size", 1):
            raise ValueError(f"proj_size: expected an int < hidden_size = {hidden_size} "
                             f"(or 0: no projection), got {proj_size}")
        self.layer_norm = V.check_bool(layer_norm, "layer_norm")
        if self.layer_norm and self.proj_size:
            raise ValueError(f"layer_norm=True with proj_size={proj_size}: the layer-normalised "
                             "LSTM has no projection (use proj_size=0 or layer_norm=False)")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, merge_mode, dtype, seed, device=device,
                         weight_drop=weight_drop, variational_dropout=variational_dropout)

    @property
    def _kernel(self):
        """The binding: rnncore._bindings.LN_LSTM with layer_norm, else LSTM."""
        return B.LN_LSTM if self.layer_norm else B.LSTM

    def get_config(self) -> dict:
        return dict(super().get_config(), proj_size=self.proj_size, layer_norm=self.layer_norm)

    def _repr_extra(self) -> str:
        extra = [f"proj_size={self.proj_size}"] if self.proj_size else []
        return ", ".join(extra + (["layer_norm=True"] if self.layer_norm else []))

    @staticmethod
    def _pair(state, name):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays or None")
        return state

    def forward(self, x, hx=None, lengths=None, train=None):
        """Run the LSTM.

        Parameters
        ----------
        x : ndarray, shape (T, N, D), (N, T, D) if batch_first, or (T, D) unbatched
        hx : pair (h0, c0) of arrays (num_layers * num_directions, N, H), optional
        lengths : array of N ints, optional
        train : bool, optional (the module's mode)

        Returns
        -------
        out : ndarray, shape (T, N, dirs * H)
        (h_n, c_n) : pair of ndarrays, shape (num_layers * num_directions, N, H)
        """
        h0, c0 = self._pair(hx, "hx")
        y, (hn, cn) = self._forward(x, [(h0, "h0"), (c0, "c0")], lengths, train)
        return y, (hn, cn)

    def backward(self, dout, dstate=None, *, input_grad=True):
        """Back-propagate through time.

        Parameters
        ----------
        dout : ndarray, shape of ``out``
        dstate : pair (dh_n, dc_n) of arrays, shape of ``(h_n, c_n)``, optional
        input_grad : bool, default True
            False: ``dx`` is not computed (None is returned; see the class docstring).

        Returns
        -------
        dx : ndarray, shape of ``x``, or None
        (dh0, dc0) : pair of ndarrays, shape (num_layers * num_directions, N, H)
        """
        dhn, dcn = self._pair(dstate, "dstate")
        dx, (dh0, dc0) = self._backward(dout, [(dhn, "dh_n"), (dcn, "dc_n")], input_grad)
        return dx, (dh0, dc0)

    def step(self, x, hx=None):
        """Advance one time step from ``hx = (h, c)`` (inference; unidirectional).

        Returns ``y`` (N, H) and the new ``(h, c)``, each (num_layers, N, H).
        """
        h0, c0 = self._pair(hx, "hx")
        y, (hn, cn) = self._step(x, [(h0, "h"), (c0, "c")])
        return y, (hn, cn)
