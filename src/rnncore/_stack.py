"""Layers x directions x lengths x dropout: the composition behind RNN, GRU and LSTM.

The only place that knows about stacking, bidirectional merging,
``batch_first``, dropout between layers (and AWD-LSTM's weight drop and
variational dropout, :mod:`rnncore._regularise`) and variable ``lengths``;
each (layer, direction) is one call through the model's binding (:mod:`rnncore._bindings`)
that runs all T steps. :mod:`rnncore.models` keeps the PyTorch-facing classes
and calls :func:`forward`, :func:`backward` and :func:`step` here with itself
as ``m`` (read: ``hidden_size``, ``num_layers``, ``num_directions``, ``bidirectional``,
``batch_first``, ``dropout``, ``merge_mode``, ``input_size``, ``dtype``,
``n_states``, ``G``, ``bias``, ``_rng``, ``weight_drop``, ``variational_dropout``,
``_kernel``, ``_weights(k, d)`` (parameters and gradients; ``_params_of(k, d)`` the
parameters alone), ``_h_size`` (h's width: H, or the LSTM's
``proj_size``), ``_state_sizes`` (each state's) and ``_input_copy`` (the
:class:`~rnncore._validation.CopyBuffer` a training forward copies a caller's x into)).

Layouts. The kernels read sequences in place through strides, so the layout
of ``x`` is kept end to end: with ``batch_first=False`` everything is
time-major (T, N, F), with ``batch_first=True`` batch-major (N, T, F), and
``out`` is returned in the caller's layout without a transposing copy. The
two directions of a bidirectional layer write straight into the two halves
of one (…, 2H) buffer; the last layer's are combined by ``merge_mode``
(concat as PyTorch; sum/mul/ave as Keras' ``Bidirectional``; Graves 2013).

Variable lengths. With ``lengths`` the batch is sorted once by decreasing
length (skipped when already sorted); step t then updates only the
``batch_sizes[t]`` sequences that are still running, so padding costs no
recurrent work, never reaches the outputs (they are zero there, as PyTorch's
``pad_packed_sequence`` gives) and never leaks into gradients.

Forward, as named steps: :func:`_check_input`, :func:`_sort_by_length`,
:func:`_kernel_input`, :func:`_initial_states`, :func:`_run_layers`,
:func:`_final_states`, :func:`_merge`, :func:`_to_caller` (an inference call of one
layer and direction without lengths takes :func:`_forward_one`: the same steps
without the ones that have nothing to do there); backward mirrors
them (:func:`_check_dout`, :func:`_final_state_grads`, :func:`_merge_backward`,
:func:`_layers_backward`, :func:`_to_caller`).
"""
from __future__ import annotations

import numpy as np

from . import _regularise as R
from . import _validation as V
from ._bindings import workspace_empty
from ._runtime.threads import run_pair


class Saved:
    """What one training-mode forward keeps for backward (named, not a tuple)."""

    __slots__ = ("inputs", "outputs", "states0", "kernel", "masks", "reg",
                 "perm", "inv", "batch_sizes", "lengths", "unbatched", "N", "T")


class _Order:
    """A variable-length batch: lengths, the sort by decreasing length, batch sizes.

    ``lens`` (N,) in the caller's order, ``perm``/``inv`` the sort and its
    inverse (None when already sorted), ``sorted`` the lengths in sorted
    order, ``batch_sizes`` (T,) the rows still running at each step. All None
    without lengths.
    """

    __slots__ = ("lens", "perm", "inv", "sorted", "batch_sizes")

    def __init__(self, lens=None, perm=None, inv=None, sorted_lens=None, batch_sizes=None):
        self.lens, self.perm, self.inv = lens, perm, inv
        self.sorted, self.batch_sizes = sorted_lens, batch_sizes


#: the order of a batch without lengths (shared, never modified)
_FULL_LENGTHS = _Order()


# ------------------------------------------------------------------ helpers
def check_states(m, states, name, N, unbatched, H):
    """User (L*dirs, N, H) state -> array in the model dtype ((L*dirs, 1, H) if unbatched)."""
    if states is None:
        return None
    L = m.num_layers * m.num_directions
    arr = V.as_float(states, name, m.dtype, owner="model")
    if unbatched:
        V.check_shape(arr, name, (L, H), "(num_layers * num_directions, H)")
        return arr[:, None, :]
    V.check_shape(arr, name, (L, N, H), "(num_layers * num_directions, N, H)")
    return arr


def _seq_alloc(m, T, N, F, pool=False):
    """An uninitialised (T, N, F) view in this call's layout kind; ``pool``: a training
    call's, from the workspace cache (rnncore._kernels._pool)."""
    empty = workspace_empty if pool else np.empty
    if m.batch_first:
        return empty((N, T, F), m.dtype).transpose(1, 0, 2)
    return empty((T, N, F), m.dtype)


def _direction_outputs(m, out, d, T, N, save, sizes):
    """Per-direction output views (h, and c for LSTM) for one layer.

    Without ``save`` (inference) a binding with ``running_states`` gets the LSTM's
    c as ONE (N, H) array seen as (T, N, H) with step stride 0: the kernel updates
    it in place, and it ends holding each row's state after its last step (what
    :func:`_final_states` reads), instead of T steps of it. ``sizes``: the model's
    ``_state_sizes`` (read once per call by :func:`forward`)."""
    Ho = sizes[0]
    h = out if out.shape[2] == Ho else out[:, :, d * Ho:(d + 1) * Ho]
    if not save and m._kernel.running_states:
        return [h] + [_running_state(m, T, N, H) for H in sizes[1:]]
    return [h] + [_seq_alloc(m, T, N, H, save) for H in sizes[1:]]


def _running_state(m, T, N, H):
    """A (T, N, H) view of one new (N, H) array, step stride 0."""
    a = np.empty((N, H), dtype=m.dtype)
    # the ndarray constructor, not as_strided (5x its cost at the small shapes
    # where a call's Python time shows)
    return np.ndarray((T, N, H), a.dtype, buffer=a, strides=(0,) + a.strides)


def _dropout_scale(m):
    return np.asarray(1.0 / (1.0 - m.dropout), dtype=m.dtype)


# ------------------------------------------------------------------ forward
def _check_input(m, x):
    """x -> (x (3-D, caller's layout), xt (its (T, N, D) view), unbatched)."""
    x = V.as_float(x, "x", m.dtype, owner="model")
    if x.ndim not in (2, 3):
        raise ValueError(
            f"x: expected shape {'(N, T, D)' if m.batch_first else '(T, N, D)'} "
            f"or unbatched (T, D), got {x.shape}")
    unbatched = x.ndim == 2
    if unbatched:
        x = x[:, None, :] if not m.batch_first else x[None]
    xt = x.transpose(1, 0, 2) if m.batch_first else x  # logical (T, N, D)
    if xt.shape[2] != m.input_size:
        raise ValueError(f"x: expected input_size D = {m.input_size} features on the last "
                         f"axis, got {xt.shape[2]}")
    return x, xt, unbatched


def _sort_by_length(lengths, N, T, unbatched):
    """The :class:`_Order` of a batch: sorted by decreasing length (if not already)."""
    if lengths is None:
        return _FULL_LENGTHS
    lens = V.check_lengths(lengths, N, T, unbatched)
    perm = inv = None
    if np.any(np.diff(lens) > 0):
        perm = np.argsort(-lens, kind="stable")
        inv = np.empty_like(perm)
        inv[perm] = np.arange(N)
    sl = lens if perm is None else lens[perm]
    bs = (sl[None, :] > np.arange(T)[:, None]).sum(axis=1)
    return _Order(lens, perm, inv, sl, bs)


def _kernel_input(m, x, xt, st0, order):
    """x as a (T, N, D) view the kernels read, and the states, both in sorted order.

    Copies only if the strides do not fit, or to sort: sorting gathers along
    the batch axis of the caller's layout, so the gathered copy is already
    contiguous in that layout (one copy, not two).
    """
    perm = order.perm
    if perm is not None:
        xt = x[perm].transpose(1, 0, 2) if m.batch_first else x[:, perm]
        st0 = [None if s is None else s[:, perm] for s in st0]
    if m.batch_first:
        return V.seq_view(xt.transpose(1, 0, 2), time_major=False), st0
    return V.seq_view(xt, time_major=True), st0


def _initial_states(m, x, xin, st0, order, T, N, sizes):
    """(xin, the (L*dirs, N, H) initial states as given, the ones the kernels see).

    Padding must not reach any product: the all-steps weight-gradient GEMMs
    run over every row, and 0 * NaN = NaN. So the kernels see x with its
    padding zeroed (a copy; the caller's x is untouched) and zero initial
    states for empty sequences (whose final state is still the caller's h0,
    see :func:`_final_states`). ``sizes``: the model's ``_state_sizes``.
    """
    Ld = m.num_layers * m.num_directions
    zeros = {}
    states_full = []
    for s, H in zip(st0, sizes):
        if s is None:
            if H not in zeros:
                zeros[H] = np.zeros((Ld, N, H), dtype=m.dtype)
            states_full.append(zeros[H])
        else:
            states_full.append(np.ascontiguousarray(s))
    if order.lens is None:
        return xin, states_full, states_full
    pad = np.arange(T)[:, None] >= order.sorted[None, :]  # (T, N), sorted order
    if pad.any():
        if np.may_share_memory(xin, x):
            # .copy(), not ascontiguousarray: that returns the caller's
            # (possibly read-only) array itself when already contiguous
            xin = (xin.transpose(1, 0, 2).copy().transpose(1, 0, 2)
                   if m.batch_first else xin.copy())
        xin[pad] = 0
    empty = order.sorted == 0
    if not empty.any():
        return xin, states_full, states_full
    states_kernel = []
    for s in states_full:
        s = s.copy()
        s[:, empty] = 0
        states_kernel.append(s)
    return xin, states_full, states_kernel


def _run_layers(m, xin, states_kernel, order, train, T, N, reg, save, sizes):
    """Every layer, both directions: (inputs, buffers, outputs, kernel saves, masks).

    ``reg``: this call's :class:`rnncore._regularise.Masks` (the dropped
    ``weight_hh`` each kernel gets; the locked mask on each later layer's input).
    ``save=False``: no backward follows (the kernels may keep nothing). ``sizes``: the
    model's ``_state_sizes``.
    """
    H, nd, Ho = m.hidden_size, m.num_directions, sizes[0]
    inputs, buffers, outputs, kern, masks = [], [], [], [], []
    layer_in = xin
    for k in range(m.num_layers):
        out = _seq_alloc(m, T, N, nd * Ho, save)

        def run(d, k=k, layer_in=layer_in, out=out):
            p = m._params_of(k, d)
            p = R.effective_weight(p, reg.weight, k * nd + d)
            s0 = [s[k * nd + d] for s in states_kernel]
            outs = _direction_outputs(m, out, d, T, N, save, sizes)
            saved = m._kernel.forward(layer_in, s0, p, outs, d == 1, order.batch_sizes,
                                      save)
            return outs, saved

        per_dir = run_pair(run, nd, work=T * N * H * (H + layer_in.shape[2]))
        inputs.append(layer_in)
        buffers.append(out)
        outputs.append([o for o, _ in per_dir])
        kern.append([s for _, s in per_dir])
        if k < m.num_layers - 1 and train and m.dropout > 0:
            keep = m._rng.random(out.shape) >= m.dropout
            dropped = _seq_alloc(m, T, N, nd * Ho, save)
            np.multiply(out, keep, out=dropped)
            dropped *= _dropout_scale(m)
            masks.append(keep)
            layer_in = dropped
        else:
            masks.append(None)
            layer_in = out
        layer_in = R.apply_locked(layer_in, reg.hidden_mask(k + 1), order.perm)
    return inputs, buffers, outputs, kern, masks


def _final_state(seq, s0, reverse, order, T):
    """State after each row's last valid step (sorted order), (N, H)."""
    if T == 0:
        return s0
    if order.lens is None:
        return seq[0] if reverse else seq[T - 1]
    sl = order.sorted
    res = np.array(s0, copy=True)
    ok = sl > 0
    idx = np.arange(sl.shape[0])
    t = np.zeros(sl.shape[0], dtype=np.int64) if reverse else np.maximum(sl - 1, 0)
    res[ok] = seq[t[ok], idx[ok]]
    return res


def _final_states(m, outputs, states_full, order, T, N, sizes):
    """Final states in PyTorch's order (index k * num_directions + d), sorted order."""
    L, nd = m.num_layers, m.num_directions
    if L * nd == 1 and order.lens is None and T > 0:
        # one layer, one direction, no lengths: each state's last step, copied (the
        # LSTM's running c in inference: its only step)
        return [outputs[0][0][si][T - 1:T].copy() for si in range(len(sizes))]
    finals = []
    for si, H in enumerate(sizes):
        fin = np.empty((L * nd, N, H), dtype=m.dtype)
        for k in range(L):
            for d in range(nd):
                fin[k * nd + d] = _final_state(outputs[k][d][si], states_full[si][k * nd + d],
                                               d == 1, order, T)
        finals.append(fin)
    return finals


def _merge(m, buffer, last):
    """The last layer's output from its (…, nd*H) buffer and direction views."""
    if m.num_directions == 1 or m.merge_mode == "concat":
        return buffer  # PyTorch layout: the directions already side by side
    a, b = last[0][0], last[1][0]
    if m.merge_mode == "sum":
        return a + b
    if m.merge_mode == "mul":
        return a * b
    return (a + b) * np.asarray(0.5, dtype=m.dtype)


def _to_caller(m, seq, states, inv, unbatched):
    """(T, N, F) sequence (or None) and (L*dirs, N, H) states: unsorted, caller's layout
    and rank."""
    if inv is not None:
        seq = None if seq is None else seq[:, inv]
        states = [s[:, inv] for s in states]
    if m.batch_first and seq is not None:
        seq = seq.transpose(1, 0, 2)
    if unbatched:
        if seq is not None:
            seq = seq[:, 0] if not m.batch_first else seq[0]
        states = [s[:, 0] for s in states]
    return seq, states


def forward(m, x, states0, lengths, train, save=None):
    """(out, final states, :class:`Saved` or None); ``states0`` is [(array|None, name)].

    ``train`` applies dropout; ``save`` (default: ``train``) keeps the
    activations for :func:`backward`. Weight drop and variational dropout
    (:mod:`rnncore._regularise`) apply when both are true.
    """
    save = train if save is None else save
    if not save and lengths is None and m.num_layers == 1 and not m.bidirectional:
        short = _forward_one(m, x, states0)
        if short is not None:
            return short
    x, xt, unbatched = _check_input(m, x)
    T, N, _ = xt.shape
    sizes = m._state_sizes
    st0 = [check_states(m, s, n, N, unbatched, H) for (s, n), H in zip(states0, sizes)]
    order = _sort_by_length(lengths, N, T, unbatched)
    xin, st0 = _kernel_input(m, x, xt, st0, order)
    xin, states_full, states_kernel = _initial_states(m, x, xin, st0, order, T, N, sizes)
    reg = R.draw(m, N, train and save)
    xin = R.apply_locked(xin, reg.input, order.perm)
    inputs, buffers, outputs, kern, masks = _run_layers(m, xin, states_kernel, order, train,
                                                        T, N, reg, save, sizes)
    finals = _final_states(m, outputs, states_full, order, T, N, sizes)
    merged = R.apply_locked(_merge(m, buffers[-1], outputs[-1]), reg.output, order.perm)
    y, finals = _to_caller(m, merged, finals, order.inv, unbatched)
    if not save:
        return y, finals, None
    # what backward reads must not change with the caller's arrays: x's copy goes
    # into the model's reusable buffer (free once the last forward's saves are gone)
    callers = [x] + [s for s, _ in states0 if s is not None]
    inputs[0] = V.owned(inputs[0], callers, m._input_copy)
    states_kernel = [V.owned(s, callers) for s in states_kernel]
    if y.base is not None or y is buffers[-1]:
        # `out` shares memory with the activations backward reads: hand it
        # out read-only, so an in-place edit fails loudly instead of silently
        # corrupting the gradients (PyTorch refuses it too).
        y = y.view()
        y.flags.writeable = False
    sv = Saved()
    sv.inputs, sv.outputs, sv.kernel, sv.masks, sv.reg = inputs, outputs, kern, masks, reg
    sv.states0 = states_kernel
    sv.perm, sv.inv, sv.batch_sizes, sv.lengths = (order.perm, order.inv, order.batch_sizes,
                                                   order.lens)
    sv.unbatched, sv.N, sv.T = unbatched, N, T
    return y, finals, sv


def _forward_one(m, x, states0):
    """:func:`forward` of one layer and direction, without lengths, keeping nothing
    (inference): the same steps with nothing to sort, merge or regularise (dropout
    acts between layers; weight drop and variational dropout only on a forward that
    saves), so none of their bookkeeping, and no gradient list (``_params_of``).
    Each Python call and temporary costs ~0.1-0.7 us, and an RNN at (T, N, D, H) =
    (50, 1, 32, 64) runs ~18 us of kernel: the general path's ~10 us around it were
    a third of the call. ``x`` goes through forward's first check (``as_float``: a
    torch tensor, a list or an ndarray subclass becomes an array, a wrong dtype
    raises its error); then None (nothing done) unless it is 2-D or 3-D with T > 0
    steps of ``input_size`` features: the general path checks it again and raises
    what is wrong."""
    if type(x) is not np.ndarray or x.dtype != m.dtype:
        x = V.as_float(x, "x", m.dtype, owner="model")
    if not 2 <= x.ndim <= 3:
        return None
    bf = m.batch_first
    unbatched = x.ndim == 2
    if unbatched:
        x = x[None] if bf else x[:, None]
    T, N, D = (x.shape[1], x.shape[0], x.shape[2]) if bf else x.shape
    if T == 0 or D != m.input_size:
        return None
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)      # a layout the kernels read (V.seq_view's rule)
    xin = x.transpose(1, 0, 2) if bf else x     # (T, N, D), nothing to sort
    dt = m.dtype
    sizes = m._state_sizes
    # _initial_states' arrays, (N, H) each (no padding to zero)
    s0 = []
    for (s, name), H in zip(states0, sizes):
        s = check_states(m, s, name, N, unbatched, H)
        s0.append(np.zeros((N, H), dt) if s is None else np.ascontiguousarray(s[0]))
    # _seq_alloc's and _direction_outputs' arrays, inlined (one direction, keeping nothing)
    out = np.empty((N, T, sizes[0]), dt) if bf else np.empty((T, N, sizes[0]), dt)
    outs = [out.transpose(1, 0, 2) if bf else out]
    if len(sizes) > 1:
        outs += [_running_state(m, T, N, H) if m._kernel.running_states
                 else _seq_alloc(m, T, N, H) for H in sizes[1:]]
    m._kernel.forward(xin, s0, m._params_of(0, 0), outs, False, None, False)
    # _final_states and _to_caller of one layer and direction: each state's last step,
    # copied (the running c: its only step), (1, N, H); out in the caller's layout
    finals = [o[T - 1:T].copy() for o in outs]
    if unbatched:
        return (out[0] if bf else out[:, 0]), [f[:, 0] for f in finals], None
    return out, finals, None


# ----------------------------------------------------------------- backward
def _check_dout(m, sv, dout):
    """dout -> its (T, N, F) view in the kernels' layout (a copy only for odd strides)."""
    H, nd, N, T = m._h_size, m.num_directions, sv.N, sv.T
    F_out = H * nd if (nd == 1 or m.merge_mode == "concat") else H
    dout = V.as_float(dout, "dout", m.dtype)
    if sv.unbatched:
        V.check_shape(dout, "dout", (T, F_out), "the shape of out")
        dout = dout[:, None, :] if not m.batch_first else dout[None]
    else:
        V.check_shape(dout, "dout", (N, T, F_out) if m.batch_first else (T, N, F_out),
                      "the shape of out")
    dt = V.seq_view(dout, time_major=not m.batch_first)
    return dt if sv.perm is None else dt[:, sv.perm]


def _final_state_grads(m, sv, dstates_n):
    """The final-state gradients [(array|None, name)] -> sorted, C-contiguous, or None."""
    dsn = []
    for (ds, name), H in zip(dstates_n, m._state_sizes):
        if ds is None:
            dsn.append(None)
            continue
        arr = check_states(m, ds, name, sv.N, sv.unbatched, H)
        if sv.perm is not None:
            arr = arr[:, sv.perm]
        dsn.append(np.ascontiguousarray(arr))
    return dsn


def _merge_backward(m, dt, last):
    """Per-direction gradients of the last layer's h, (T, N, H) views each."""
    H, nd = m._h_size, m.num_directions
    if nd == 1 or m.merge_mode == "concat":
        return [dt[:, :, d * H:(d + 1) * H] for d in range(nd)]
    if m.merge_mode == "sum":
        return [dt, dt]
    if m.merge_mode == "ave":
        half = dt * np.asarray(0.5, dtype=m.dtype)
        return [half, half]
    a, b = last[0][0], last[1][0]
    return [dt * b, dt * a]


def _layers_backward(m, sv, dlast, dsn, input_grad=True):
    """Every layer from the last, both directions: (dx (T, N, D) sorted, dstates0).

    ``input_grad=False``: the first layer computes no dx (None is returned for it).
    """
    H, L, nd, N, T = m.hidden_size, m.num_layers, m.num_directions, sv.N, sv.T
    dstates0 = [np.zeros((L * nd, N, Hs), dtype=m.dtype) for Hs in m._state_sizes]
    zeros_n = [np.zeros((N, Hs), dtype=m.dtype) for Hs in m._state_sizes]
    dx = None
    for k in reversed(range(L)):
        x_in = sv.inputs[k]
        Dk = x_in.shape[2]

        def run(d, k=k, x_in=x_in, Dk=Dk):
            p, g = m._weights(k, d)
            s0 = [s[k * nd + d] for s in sv.states0]
            dn = [z if s is None else s[k * nd + d] for s, z in zip(dsn, zeros_n)]
            ds0 = [s[k * nd + d] for s in dstates0]
            dxd = _seq_alloc(m, T, N, Dk, True) if k > 0 or input_grad else None
            if not m.bias:
                g = g[:2] + [np.zeros(m.G * H, m.dtype)] * 2 + g[4:]
            p = R.effective_weight(p, sv.reg.weight, k * nd + d)
            g, finish = R.weight_grads(g, sv.reg.weight, k * nd + d)
            m._kernel.backward(dlast[d], dn, x_in, s0, p, sv.outputs[k][d], sv.kernel[k][d],
                               dxd, ds0, g, d == 1, sv.batch_sizes, overwrite_saved=True)
            finish()
            return dxd

        dxs = run_pair(run, nd, work=T * N * H * (H + Dk))
        dx = dxs[0]
        if dx is None:
            break   # (the first layer, without an input gradient)
        if nd == 2:
            dx += dxs[1]
        # dx is the gradient of layer k's (variationally masked) input
        R.locked_grad(dx, sv.reg.hidden_mask(k) if k > 0 else sv.reg.input, sv.perm)
        if k > 0:
            # dx is the gradient of layer k-1's (dropped-out) output
            if sv.masks[k - 1] is not None:
                dx *= sv.masks[k - 1]
                dx *= _dropout_scale(m)
            Ho = m._h_size
            dlast = [dx[:, :, d * Ho:(d + 1) * Ho] for d in range(nd)]
    return dx, dstates0


def check_backward(m, sv, dout, dstates_n):
    """The checked ``(dout view, final-state gradients)``; raises before anything is consumed."""
    return _check_dout(m, sv, dout), _final_state_grads(m, sv, dstates_n)


def backward(m, sv, dout, dstates_n, checked=None, input_grad=True):
    """(dx, initial-state gradients) of the forward that saved ``sv``; dx is None
    when not ``input_grad``."""
    dt, dsn = checked if checked is not None else check_backward(m, sv, dout, dstates_n)
    dt = R.apply_locked(dt, sv.reg.output, sv.perm)
    dx, dstates0 = _layers_backward(m, sv, _merge_backward(m, dt, sv.outputs[-1]), dsn,
                                    input_grad)
    return _to_caller(m, dx, dstates0, sv.inv, sv.unbatched)


# --------------------------------------------------------------------- step
def step(m, x, states):
    """One time step of every layer (inference; unidirectional models)."""
    if m.bidirectional:
        raise ValueError("step() needs a unidirectional model (the reverse direction "
                         "needs the whole sequence)")
    x = V.as_float(x, "x", m.dtype, owner="model")
    if x.ndim not in (1, 2) or x.shape[-1] != m.input_size:
        raise ValueError(f"x: expected shape (N, D) or (D,) with D = {m.input_size}, "
                         f"got {x.shape}")
    unbatched = x.ndim == 1
    x = V.rows_view(x[None] if unbatched else x)
    N, L = x.shape[0], m.num_layers
    st = [check_states(m, s, n, N, unbatched, H) for (s, n), H in zip(states, m._state_sizes)]
    new = [np.empty((L, 1, N, H), dtype=m.dtype) for H in m._state_sizes]
    zero = [np.zeros((N, H), dtype=m.dtype) for H in m._state_sizes]
    inp = x[None]
    for k in range(L):
        p = m._params_of(k, 0)
        s0 = [z if s is None else np.ascontiguousarray(s[k]) for s, z in zip(st, zero)]
        outs = [n[k] for n in new]
        m._kernel.forward(inp, s0, p, outs, False, None, False)
        inp = outs[0]
    y = new[0][L - 1, 0]
    finals = [n[:, 0] for n in new]
    if unbatched:
        return y[0], [f[:, 0] for f in finals]
    return y, finals
