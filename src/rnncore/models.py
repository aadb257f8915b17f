"""Sequence models with PyTorch's interface: :class:`RNN`, :class:`GRU`, :class:`LSTM`.

This is the only layer that knows about stacking, bidirectional merging,
``batch_first``, dropout between layers and variable ``lengths``; each
(layer, direction) is one kernel call that runs all T steps.

Layouts. The kernels read sequences in place through strides, so the layout
of ``x`` is kept end to end: with ``batch_first=False`` everything is
time-major (T, N, F), with ``batch_first=True`` batch-major (N, T, F), and
``out`` is returned in the caller's layout without a transposing copy. The
two directions of a bidirectional layer write straight into the two halves
of one (…, 2H) buffer.

Variable lengths. With ``lengths`` the batch is sorted once by decreasing
length (skipped when already sorted); step t then updates only the
``batch_sizes[t]`` sequences that are still running, so padding costs no
recurrent work, never reaches the outputs (they are zero there, as PyTorch's
``pad_packed_sequence`` gives) and never leaks into gradients.
"""
from __future__ import annotations

import numbers
import threading
from collections import OrderedDict

import numpy as np

from . import _validation as V
from . import _bindings as B
from ._runtime.threads import run_pair
from .module import Module, register_module

__all__ = ["RNN", "GRU", "LSTM"]

MERGE_MODES = ("concat", "sum", "mul", "ave")


class _Saved:
    """What one training-mode forward keeps for backward (named, not a tuple)."""

    __slots__ = ("inputs", "outputs", "states0", "kernel", "masks", "merged_from",
                 "perm", "inv", "batch_sizes", "lengths", "unbatched", "N", "T")


class _RNNBase(Module):
    """Shared machinery of RNN, GRU and LSTM (stacking, directions, lengths)."""

    #: gates per cell (1, 3, 4) and number of state arrays (h; or h, c)
    G = 1
    n_states = 1

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, merge_mode="concat", dtype=np.float32,
                 seed=None):
        super().__init__()
        self.input_size = V.check_int(input_size, "input_size", 0)
        self.hidden_size = V.check_int(hidden_size, "hidden_size", 1)
        self.num_layers = V.check_int(num_layers, "num_layers", 1)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not (
                0.0 <= float(dropout) < 1.0):
            raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode: expected one of {MERGE_MODES}, got {merge_mode!r}")
        self.merge_mode = merge_mode
        self.dtype = np.dtype(dtype)
        if self.dtype not in V.FLOAT_DTYPES:
            raise TypeError(f"dtype: expected float32 or float64, got {self.dtype}")
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._saved = None
        self._lock = threading.Lock()
        self.reset_parameters()

    # ------------------------------------------------------------ parameters
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _layer_input_size(self, k: int) -> int:
        return self.input_size if k == 0 else self.hidden_size * self.num_directions

    @staticmethod
    def _suffix(d: int) -> str:
        return "_reverse" if d == 1 else ""

    def reset_parameters(self) -> None:
        """PyTorch's default init: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), from ``seed``."""
        H, GH = self.hidden_size, self.G * self.hidden_size
        bound = 1.0 / np.sqrt(H)
        self.params = OrderedDict()
        self.grads = OrderedDict()
        for k in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = f"_l{k}{self._suffix(d)}"
                shapes = [("weight_ih" + sfx, (GH, self._layer_input_size(k))),
                          ("weight_hh" + sfx, (GH, H))]
                if self.bias:
                    shapes += [("bias_ih" + sfx, (GH,)), ("bias_hh" + sfx, (GH,))]
                for name, shape in shapes:
                    w = self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)
                    self._add_param(name, w)

    def _weights(self, k, d):
        """(W_ih (GH, D_k), W_hh (GH, H), b_ih, b_hh) and their gradients."""
        sfx = f"_l{k}{self._suffix(d)}"
        names = ["weight_ih" + sfx, "weight_hh" + sfx]
        if self.bias:
            names += ["bias_ih" + sfx, "bias_hh" + sfx]
        p = [self.params[n] for n in names]
        g = [self.grads[n] for n in names]
        if not self.bias:
            z = np.zeros(self.G * self.hidden_size, dtype=self.dtype)
            p += [z, z]
            g += [None, None]
        return p, g

    def get_config(self) -> dict:
        cfg = dict(input_size=self.input_size, hidden_size=self.hidden_size,
                   num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                   dropout=self.dropout, bidirectional=self.bidirectional,
                   merge_mode=self.merge_mode, dtype=self.dtype.name, seed=self.seed)
        return cfg

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
        if self.bidirectional:
            s += ", bidirectional=True"
            if self.merge_mode != "concat":
                s += f", merge_mode={self.merge_mode!r}"
        if self.dtype != np.float32:
            s += f", dtype={self.dtype.name}"
        return s + ")"

    def _repr_extra(self) -> str:
        return ""

    # ------------------------------------------------------------- helpers
    def _check_states(self, states, name, N, unbatched):
        """User (L*dirs, N, H) state -> C-contiguous array in the model dtype, or None."""
        if states is None:
            return None
        L = self.num_layers * self.num_directions
        H = self.hidden_size
        arr = V.as_float(states, name, self.dtype)
        if unbatched:
            V.check_shape(arr, name, (L, H), "(num_layers * num_directions, H)")
            arr = arr[:, None, :]
        else:
            V.check_shape(arr, name, (L, N, H), "(num_layers * num_directions, N, H)")
        return arr

    def _seq_alloc(self, T, N, F):
        """An uninitialised (T, N, F) view in this call's layout kind."""
        if self.batch_first:
            return np.empty((N, T, F), dtype=self.dtype).transpose(1, 0, 2)
        return np.empty((T, N, F), dtype=self.dtype)

    # ------------------------------------------------------------- forward
    def _forward(self, x, states0, lengths, train):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"this {type(self).__name__} is in use by another thread; a model keeps the "
                "activations of its last forward for backward, so give each thread its own "
                "model (weights can be shared via load_state_dict)")
        try:
            return self._forward_locked(x, states0, lengths, train)
        finally:
            self._lock.release()

    def _forward_locked(self, x, states0, lengths, train):
        x = V.as_float(x, "x", self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(
                f"x: expected shape {'(N, T, D)' if self.batch_first else '(T, N, D)'} "
                f"or unbatched (T, D), got {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :] if not self.batch_first else x[None]
        xt = x.transpose(1, 0, 2) if self.batch_first else x  # logical (T, N, D)
        T, N, D = xt.shape
        if D != self.input_size:
            raise ValueError(f"x: expected input_size D = {self.input_size} features on the last "
                             f"axis, got {D}")
        H, L, nd = self.hidden_size, self.num_layers, self.num_directions
        st0 = [self._check_states(s, n, N, unbatched) for s, n in states0]
        # lengths -> sorted batch
        perm = inv = bs = lens = None
        if lengths is not None:
            if unbatched:
                lengths = np.reshape(lengths, (1,))
            lens = V.check_lengths(lengths, N, T)
            if np.any(np.diff(lens) > 0):
                perm = np.argsort(-lens, kind="stable")
                inv = np.empty_like(perm)
                inv[perm] = np.arange(N)
            sl = lens if perm is None else lens[perm]
            bs = (sl[None, :] > np.arange(T)[:, None]).sum(axis=1)
        # input in the kernels' layout (copy only if strides do not fit, or to sort);
        # sorting gathers along the batch axis of the caller's layout, so the
        # gathered copy is already contiguous in that layout (one copy, not two)
        if perm is not None:
            xt = x[perm].transpose(1, 0, 2) if self.batch_first else x[:, perm]
            st0 = [None if s is None else s[:, perm] for s in st0]
        xin = V.seq_view(xt.transpose(1, 0, 2), time_major=False) if self.batch_first \
            else V.seq_view(xt, time_major=True)
        zeros = None
        states_full = []
        for s in st0:
            if s is None:
                if zeros is None:
                    zeros = np.zeros((L * nd, N, H), dtype=self.dtype)
                states_full.append(zeros)
            else:
                states_full.append(np.ascontiguousarray(s))
        states_kernel = states_full
        if lens is not None:
            # Padding must not reach any product: the all-steps weight-gradient
            # GEMMs run over every row, and 0 * NaN = NaN. So the kernels see
            # x with its padding zeroed (a copy; the caller's x is untouched)
            # and zero initial states for empty sequences (whose final state
            # is still the caller's h0, below).
            sl = lens if perm is None else lens[perm]
            pad = np.arange(T)[:, None] >= sl[None, :]  # (T, N), sorted order
            if pad.any():
                if np.may_share_memory(xin, x):
                    # .copy(), not ascontiguousarray: that returns the caller's
                    # (possibly read-only) array itself when already contiguous
                    xin = (xin.transpose(1, 0, 2).copy().transpose(1, 0, 2)
                           if self.batch_first else xin.copy())
                xin[pad] = 0
            empty = sl == 0
            if empty.any():
                states_kernel = []
                for s in states_full:
                    s = s.copy()
                    s[:, empty] = 0
                    states_kernel.append(s)

        inputs, buffers, outputs, kern, masks = [], [], [], [], []
        layer_in = xin
        for k in range(L):
            out = self._seq_alloc(T, N, nd * H)

            def run(d, k=k, layer_in=layer_in, out=out):
                p, _ = self._weights(k, d)
                s0 = [s[k * nd + d] for s in states_kernel]
                outs = self._direction_outputs(out, d, T, N)
                saved = self._kernel.forward(layer_in, s0, p, outs, d == 1, bs)
                return outs, saved

            per_dir = run_pair(run, nd, work=T * N * H * (H + layer_in.shape[2]))
            inputs.append(layer_in)
            buffers.append(out)
            outputs.append([o for o, _ in per_dir])
            kern.append([s for _, s in per_dir])
            if k < L - 1 and train and self.dropout > 0:
                keep = self._rng.random(out.shape) >= self.dropout
                scale = np.asarray(1.0 / (1.0 - self.dropout), dtype=self.dtype)
                dropped = self._seq_alloc(T, N, nd * H)
                np.multiply(out, keep, out=dropped)
                dropped *= scale
                masks.append(keep)
                layer_in = dropped
            else:
                masks.append(None)
                layer_in = out

        # final states, PyTorch order: index k * num_directions + d
        finals = []
        for si in range(self.n_states):
            fin = np.empty((L * nd, N, H), dtype=self.dtype)
            for k in range(L):
                for d in range(nd):
                    seq = outputs[k][d][si]
                    s0 = states_full[si][k * nd + d]
                    fin[k * nd + d] = self._final_state(seq, s0, d == 1, lens, perm, T)
            finals.append(fin)

        # merge the last layer's directions
        y = self._merge(buffers[-1], outputs[-1])
        if perm is not None:
            y = y[:, inv]
            finals = [f[:, inv] for f in finals]
        if self.batch_first:
            y = y.transpose(1, 0, 2)
        if unbatched:
            y = y[:, 0] if not self.batch_first else y[0]
            finals = [f[:, 0] for f in finals]
        if train:
            if y.base is not None or y is buffers[-1]:
                # `out` shares memory with the activations backward reads: hand
                # it out read-only, so an in-place edit fails loudly instead of
                # silently corrupting the gradients (PyTorch refuses it too).
                y = y.view()
                y.flags.writeable = False
            sv = _Saved()
            sv.inputs, sv.outputs, sv.kernel, sv.masks = inputs, outputs, kern, masks
            sv.states0 = states_kernel
            sv.perm, sv.inv, sv.batch_sizes, sv.lengths = perm, inv, bs, lens
            sv.unbatched, sv.N, sv.T = unbatched, N, T
            self._saved = sv
        else:
            self._saved = None
        return y, finals

    def _direction_outputs(self, out, d, T, N):
        """Per-direction output views (h, and c for LSTM) for one layer."""
        H = self.hidden_size
        h = out[:, :, d * H:(d + 1) * H]
        extra = [self._seq_alloc(T, N, H) for _ in range(self.n_states - 1)]
        return [h] + extra

    def _final_state(self, seq, s0, reverse, lens, perm, T):
        """State after each row's last valid step (sorted order), (N, H)."""
        if T == 0:
            return s0
        if lens is None:
            return seq[0] if reverse else seq[T - 1]
        sl = lens if perm is None else lens[perm]
        N = sl.shape[0]
        res = np.array(s0, copy=True)
        ok = sl > 0
        idx = np.arange(N)
        t = np.zeros(N, dtype=np.int64) if reverse else np.maximum(sl - 1, 0)
        res[ok] = seq[t[ok], idx[ok]]
        return res

    def _merge(self, buffer, last):
        """The last layer's output from its (…, nd*H) buffer and direction views."""
        if self.num_directions == 1 or self.merge_mode == "concat":
            return buffer  # PyTorch layout: the directions already side by side
        a, b = last[0][0], last[1][0]
        if self.merge_mode == "sum":
            return a + b
        if self.merge_mode == "mul":
            return a * b
        return (a + b) * np.asarray(0.5, dtype=self.dtype)

    # ---------------------------------------------------------------- step
    def _step(self, x, states):
        """One time step of every layer (inference only; see the subclasses' ``step``)."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional model (the reverse direction "
                             "needs the whole sequence)")
        x = V.as_float(x, "x", self.dtype)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (N, D) or (D,) with D = {self.input_size}, "
                             f"got {x.shape}")
        unbatched = x.ndim == 1
        x = V.rows_view(x[None] if unbatched else x)
        N, H, L = x.shape[0], self.hidden_size, self.num_layers
        st = [self._check_states(s, n, N, unbatched) for s, n in states]
        new = [np.empty((L, 1, N, H), dtype=self.dtype) for _ in range(self.n_states)]
        zero = np.zeros((N, H), dtype=self.dtype) if any(s is None for s in st) else None
        inp = x[None]
        for k in range(L):
            p, _ = self._weights(k, 0)
            s0 = [zero if s is None else np.ascontiguousarray(s[k]) for s in st]
            outs = [n[k] for n in new]
            self._kernel.forward(inp, s0, p, outs, False, None)
            inp = outs[0]
        y = new[0][L - 1, 0]
        finals = [n[:, 0] for n in new]
        if unbatched:
            return y[0], [f[:, 0] for f in finals]
        return y, finals

    # ------------------------------------------------------------ backward
    def _backward(self, dout, dstates_n):
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"this {type(self).__name__} is in use by another thread; give each thread "
                "its own model")
        try:
            return self._backward_locked(dout, dstates_n)
        finally:
            self._lock.release()

    def _backward_locked(self, dout, dstates_n):
        sv = self._saved
        if sv is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() needs a preceding forward with train=True "
                "(and each forward's activations can be back-propagated once)")
        self._saved = None  # activations are freed, as PyTorch frees its graph
        H, L, nd, N, T = self.hidden_size, self.num_layers, self.num_directions, sv.N, sv.T
        F_out = H * nd if (nd == 1 or self.merge_mode == "concat") else H
        dout = V.as_float(dout, "dout", self.dtype)
        want = (T, N, F_out)
        if sv.unbatched:
            want_user = (T, F_out)
            V.check_shape(dout, "dout", want_user, "the shape of out")
            dout = dout[:, None, :] if not self.batch_first else dout[None]
        else:
            V.check_shape(dout, "dout", (N, T, F_out) if self.batch_first else want,
                          "the shape of out")
        # (T, N, F) view in the kernels' layout (a copy only for odd strides)
        dt = V.seq_view(dout, time_major=not self.batch_first)
        dsn = []
        for si, (ds, name) in enumerate(dstates_n):
            if ds is None:
                dsn.append(None)
                continue
            arr = self._check_states(ds, name, N, sv.unbatched)
            if sv.perm is not None:
                arr = arr[:, sv.perm]
            dsn.append(np.ascontiguousarray(arr))
        if sv.perm is not None:
            dt = dt[:, sv.perm]
        # gradient w.r.t. each direction's h of the last layer
        dlast = self._merge_backward(dt, sv.outputs[-1])

        dstates0 = [np.zeros((L * nd, N, H), dtype=self.dtype) for _ in range(self.n_states)]
        zeros_nh = np.zeros((N, H), dtype=self.dtype)
        dx = None
        for k in reversed(range(L)):
            x_in = sv.inputs[k]
            Dk = x_in.shape[2]

            def run(d, k=k, x_in=x_in, Dk=Dk):
                p, g = self._weights(k, d)
                s0 = [s[k * nd + d] for s in sv.states0]
                dn = [zeros_nh if s is None else s[k * nd + d] for s in dsn]
                ds0 = [s[k * nd + d] for s in dstates0]
                dxd = self._seq_alloc(T, N, Dk)
                gb = g
                if not self.bias:
                    gb = g[:2] + [np.zeros(self.G * H, self.dtype)] * 2
                self._kernel.backward(dlast[d], dn, x_in, s0, p, sv.outputs[k][d],
                                      sv.kernel[k][d], dxd, ds0, gb, d == 1, sv.batch_sizes,
                                      overwrite_saved=True)
                return dxd

            dxs = run_pair(run, nd, work=T * N * H * (H + Dk))
            dx = dxs[0]
            if nd == 2:
                dx += dxs[1]
            if k > 0:
                # dx is the gradient of layer k-1's (dropped-out) output
                if sv.masks[k - 1] is not None:
                    dx *= sv.masks[k - 1]
                    dx *= np.asarray(1.0 / (1.0 - self.dropout), dtype=self.dtype)
                dlast = [dx[:, :, d * H:(d + 1) * H] for d in range(nd)]
        if sv.perm is not None:
            dx = dx[:, sv.inv]
            dstates0 = [s[:, sv.inv] for s in dstates0]
        if self.batch_first:
            dx = dx.transpose(1, 0, 2)
        if sv.unbatched:
            dx = dx[:, 0] if not self.batch_first else dx[0]
            dstates0 = [s[:, 0] for s in dstates0]
        return dx, dstates0

    def _merge_backward(self, dt, last):
        """Per-direction gradients of the last layer's h, (T, N, H) views each."""
        H, nd = self.hidden_size, self.num_directions
        if nd == 1 or self.merge_mode == "concat":
            return [dt[:, :, d * H:(d + 1) * H] for d in range(nd)]
        if self.merge_mode == "sum":
            return [dt, dt]
        if self.merge_mode == "ave":
            half = dt * np.asarray(0.5, dtype=self.dtype)
            return [half, half]
        a, b = last[0][0], last[1][0]
        return [dt * b, dt * a]


_COMMON_PARAMS = """
    input_size : int
        D, the number of features of ``x``.
    hidden_size : int
        H, the number of features of the hidden state.
    num_layers : int, default 1
        Stacked layers; layer k > 0 reads layer k-1's output (2H wide when
        bidirectional, whatever ``merge_mode``).
    bias : bool, default True
        With False, no ``bias_ih``/``bias_hh`` parameters.
    batch_first : bool, default False
        ``x`` and ``out`` are (N, T, ·) instead of (T, N, ·). **The states
        ``h0``/``h_n`` (and ``c0``/``c_n``) are (num_layers * num_directions,
        N, H) either way**, as in PyTorch.
    dropout : float in [0, 1), default 0
        Dropout on each layer's output except the last, in training mode only,
        drawn from the model's seeded generator; the mask is reused in backward.
    bidirectional : bool, default False
        Add a reverse direction with its own ``*_reverse`` weights.
    merge_mode : {'concat', 'sum', 'mul', 'ave'}, default 'concat'
        How the last layer's two directions are combined into ``out`` (the
        seed's y = g(V A + V' A'); Keras' names). 'concat' is PyTorch's layout
        (2H features); the others give H features. Intermediate layers always
        concatenate, so parameter shapes match PyTorch for every mode.
    dtype : {np.float32, np.float64}, default np.float32
    seed : int or None
        Seeds the parameter initialisation and the dropout masks.
"""

_COMMON_CALL = """
    Calling: ``model(x, {state}=None, lengths=None, train=True)`` is
    :meth:`forward`; ``model.backward(dout, {dstate}=None)`` back-propagates the
    last training-mode forward and *accumulates* parameter gradients into
    ``model.grads`` (clear them with :meth:`zero_grad`).

    ``lengths`` (N ints in [0, T], any order) on a zero-padded batch gives
    what PyTorch gives for ``pack_padded_sequence(x, lengths,
    enforce_sorted=False)`` followed by ``pad_packed_sequence``: ``out`` is
    zero past each length, the final state is each sequence's own last valid
    step, the reverse direction starts at it, and padding never reaches a
    gradient. It is computed without packing: the kernels shrink the active
    batch step by step.

    Not thread-safe per instance: a model holds its last forward's
    activations; give each thread its own model (a second thread calling a
    busy model gets a RuntimeError).
"""


class _HiddenStateRNN(_RNNBase):
    """Models whose state is one array h (RNN, GRU): forward, backward, step."""

    def forward(self, x, h0=None, lengths=None, train=True):
        """Run the model over the sequence (all layers and directions).

        Parameters
        ----------
        x : ndarray, shape (T, N, D), (N, T, D) if batch_first, or (T, D) unbatched
        h0 : ndarray, shape (num_layers * num_directions, N, H), optional
            Initial states (zeros by default); (L * dirs, H) when unbatched.
        lengths : array of N ints, optional
            Valid length of each sequence in a zero-padded batch.
        train : bool, default True
            Keep activations for :meth:`backward` and apply dropout.

        Returns
        -------
        out : ndarray, shape (T, N, dirs * H) (or (N, T, ·); (·, H) for merge
            modes other than 'concat')
        h_n : ndarray, shape (num_layers * num_directions, N, H)
        """
        y, (hn,) = self._forward(x, [(h0, "h0")], lengths, train)
        return y, hn

    def backward(self, dout, dh_n=None):
        """Back-propagate through time.

        Parameters
        ----------
        dout : ndarray, shape of ``out``
        dh_n : ndarray, shape of ``h_n``, optional

        Returns
        -------
        dx : ndarray, shape of ``x``
        dh0 : ndarray, shape of ``h_n``
        """
        dx, (dh0,) = self._backward(dout, [(dh_n, "dh_n")])
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
                 dtype=np.float32, seed=None):
        self._relu = V.check_nonlinearity(nonlinearity)
        self.nonlinearity = nonlinearity
        self._kernel = B.rnn_binding(self._relu)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, merge_mode, dtype, seed)

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

    Parameters
    ----------""" + _COMMON_PARAMS + """
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
    _kernel = B.GRU


@register_module
class LSTM(_RNNBase):
    __doc__ = """Multi-layer long short-term memory, PyTorch's ``torch.nn.LSTM`` in NumPy.

    For each layer and direction (gates i, f, g, o, in that order)::

        i, f, o = sigmoid(x W_i*^T + b_i* + h W_h*^T + b_h*)
        g = tanh(x W_ig^T + b_ig + h W_hg^T + b_hg)
        c' = f * c + i * g
        h' = o * tanh(c')

    Parameters
    ----------""" + _COMMON_PARAMS + """
    Attributes
    ----------
    params, grads : OrderedDict of str -> ndarray
        ``weight_ih_l{k}`` (4H, D_k) = [W_ii | W_if | W_ig | W_io],
        ``weight_hh_l{k}`` (4H, H), ``bias_ih_l{k}``/``bias_hh_l{k}`` (4H,),
        ``_reverse`` for the reverse direction: PyTorch's names and packing.

    Notes
    -----
    The state is a pair, as in PyTorch: ``out, (h_n, c_n) = lstm(x, (h0, c0))``
    and ``dx, (dh0, dc0) = lstm.backward(dout, (dh_n, dc_n))``; either member
    of a pair may be None.
    """ + _COMMON_CALL.format(state="(h0, c0)", dstate="(dh_n, dc_n)")

    G = 4
    n_states = 2
    _kernel = B.LSTM

    @staticmethod
    def _pair(state, name):
        if state is None:
            return None, None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays or None")
        return state

    def forward(self, x, hx=None, lengths=None, train=True):
        """Run the LSTM.

        Parameters
        ----------
        x : ndarray, shape (T, N, D), (N, T, D) if batch_first, or (T, D) unbatched
        hx : pair (h0, c0) of arrays (num_layers * num_directions, N, H), optional
        lengths : array of N ints, optional
        train : bool, default True

        Returns
        -------
        out : ndarray, shape (T, N, dirs * H)
        (h_n, c_n) : pair of ndarrays, shape (num_layers * num_directions, N, H)
        """
        h0, c0 = self._pair(hx, "hx")
        y, (hn, cn) = self._forward(x, [(h0, "h0"), (c0, "c0")], lengths, train)
        return y, (hn, cn)

    def backward(self, dout, dstate=None):
        """Back-propagate through time.

        Returns
        -------
        dx : ndarray, shape of ``x``
        (dh0, dc0) : pair of ndarrays, shape (num_layers * num_directions, N, H)
        """
        dhn, dcn = self._pair(dstate, "dstate")
        dx, (dh0, dc0) = self._backward(dout, [(dhn, "dh_n"), (dcn, "dc_n")])
        return dx, (dh0, dc0)

    def step(self, x, hx=None):
        """Advance one time step from ``hx = (h, c)`` (inference; unidirectional).

        Returns ``y`` (N, H) and the new ``(h, c)``, each (num_layers, N, H).
        """
        h0, c0 = self._pair(hx, "hx")
        y, (hn, cn) = self._step(x, [(h0, "h"), (c0, "c")])
        return y, (hn, cn)
