"""The one model oracle: what an RNN/GRU/LSTM model must compute, composed
only from the single-sequence functions of :mod:`rnncore.reference`.

Layers stacked by concatenation, the reverse direction as the reference run on
the time-reversed valid part of each sequence, ``lengths`` as one reference run
per sequence on its valid prefix (a zero length passes the state through),
``merge_mode`` applied at the end; forward and backward.

``reference_model`` takes the configuration and PyTorch-named weights;
``reference_run`` reads them from an rnncore model and computes in its dtype.
"""
import numpy as np

from conftest import kind_of
from rnncore import reference as R

WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _names(k, d):
    sfx = f"_l{k}" + ("_reverse" if d else "")
    return [w + sfx for w in WEIGHTS]


def _ref_cell_forward(cell, x, states0, p):
    """One reference run. x (1, l, Dk), states0 [(1, H)...], p PyTorch-layout weights."""
    w_ih, w_hh, b_ih, b_hh = p
    kind = kind_of(cell)
    if kind == "rnn":
        h, cache = R.rnn_forward(x, states0[0], w_ih.T, w_hh.T, b_ih + b_hh,
                                 nonlinearity=cell.split("_")[1])
        return [h], cache
    if kind == "gru":
        h, cache = R.gru_forward(x, states0[0], w_ih.T, w_hh.T, b_ih, b_hh,
                                 reset_after=cell != "gru_rb")
        return [h], cache
    h, c, cache = R.lstm_forward(x, states0[0], w_ih.T, w_hh.T, b_ih + b_hh, c0=states0[1])
    return [h, c], cache


def _ref_cell_backward(cell, dh, cache, dstates_n):
    """Reference BPTT; returns dx (1, l, Dk), [dstate0 (1, H)...], PyTorch-layout grads."""
    kind = kind_of(cell)
    if kind == "rnn":
        dx, dh0, dWx, dWh, db = R.rnn_backward(dh, cache, dhn=dstates_n[0])
        return dx, [dh0], [dWx.T, dWh.T, db, db]
    if kind == "gru":
        dx, dh0, dWx, dWh, dbx, dbh = R.gru_backward(dh, cache, dhn=dstates_n[0])
        return dx, [dh0], [dWx.T, dWh.T, dbx, dbh]
    dx, dh0, dc0, dWx, dWh, db = R.lstm_backward(dh, cache, dhn=dstates_n[0],
                                                  dcn=dstates_n[1])
    return dx, [dh0, dc0], [dWx.T, dWh.T, db, db]


def reference_model(cell, params, x, states0, lengths, num_layers, bidirectional,
                    merge_mode="concat", dout=None, dstates_n=None):
    """What a model must compute, composed from the reference cell functions.

    Parameters
    ----------
    cell : str in CELLS
    params : mapping name -> array, PyTorch names and layouts (no bias keys = bias=False)
    x : ndarray (T, N, D), time-major whatever the model's batch_first; its dtype
        is the dtype of the computation and of every result
    states0 : list of ndarray (L * dirs, N, H), one per state (h; or h, c)
    lengths : ndarray (N,) of int or None
    num_layers, bidirectional, merge_mode : as the model
    dout : ndarray (T, N, F_out), time-major, optional (then no backward)
    dstates_n : list of ndarray (L * dirs, N, H) or None entries, optional

    Returns
    -------
    dict with ``out`` (T, N, F_out), ``states`` (list), and with ``dout``:
    ``dx`` (T, N, D), ``dstates0`` (list), ``grads`` (name -> array).
    """
    T, N, _ = x.shape
    H = states0[0].shape[-1]
    L, nd, ns = num_layers, (2 if bidirectional else 1), len(states0)
    lens = np.full(N, T) if lengths is None else np.asarray(lengths)

    def weights(k, d):
        names = _names(k, d)
        GH = params[names[0]].shape[0]
        return [params[n] if n in params else np.zeros(GH, dt) for n in names]

    dt = x.dtype
    layer_in, caches, outs = x, [], []
    states_n = [np.zeros((L * nd, N, H), dt) for _ in range(ns)]
    for k in range(L):
        out = np.zeros((T, N, nd * H), dt)
        caches_k = []
        for d in range(nd):
            p = weights(k, d)
            caches_kd = []
            for n in range(N):
                ln = int(lens[n])
                s0 = [s[k * nd + d, n][None] for s in states0]
                if ln == 0:  # nothing runs: the final state is the initial one
                    for si in range(ns):
                        states_n[si][k * nd + d, n] = s0[si][0]
                    caches_kd.append(None)
                    continue
                xs = layer_in[:ln, n]
                if d == 1:
                    xs = xs[::-1]
                seqs, cache = _ref_cell_forward(cell, xs[None], s0, p)
                h = seqs[0][0]
                out[:ln, n, d * H:(d + 1) * H] = h[::-1] if d == 1 else h
                for si in range(ns):
                    states_n[si][k * nd + d, n] = seqs[si][0, -1]
                caches_kd.append(cache)
            caches_k.append(caches_kd)
        caches.append(caches_k)
        outs.append(out)
        layer_in = out

    last = outs[-1]
    merged = nd == 2 and merge_mode != "concat"
    if merged:
        a, b = last[..., :H], last[..., H:]
        y = {"sum": a + b, "mul": a * b, "ave": 0.5 * (a + b)}[merge_mode]
    else:
        y = last
    result = dict(out=y, states=states_n)
    if dout is None:
        return result

    dstates_n = [np.zeros((L * nd, N, H), dt) if s is None else s
                 for s in (dstates_n or [None] * ns)]
    if merged:
        a, b = last[..., :H], last[..., H:]
        da, db = {"sum": (dout, dout), "ave": (0.5 * dout, 0.5 * dout),
                  "mul": (dout * b, dout * a)}[merge_mode]
        dlayer = np.concatenate([da, db], axis=-1)
    else:
        dlayer = dout
    grads = {}
    dstates0 = [np.zeros((L * nd, N, H), dt) for _ in range(ns)]
    for k in reversed(range(L)):
        Dk = x.shape[2] if k == 0 else nd * H
        dx = np.zeros((T, N, Dk), dt)
        for d in range(nd):
            gsum = [np.zeros_like(w) for w in weights(k, d)]
            for n in range(N):
                ln = int(lens[n])
                dn = [s[k * nd + d, n][None] for s in dstates_n]
                if ln == 0:
                    for si in range(ns):
                        dstates0[si][k * nd + d, n] = dn[si][0]
                    continue
                dh = dlayer[:ln, n, d * H:(d + 1) * H]
                if d == 1:
                    dh = dh[::-1]
                dxs, ds0, gw = _ref_cell_backward(cell, dh[None], caches[k][d][n], dn)
                dxs = dxs[0][::-1] if d == 1 else dxs[0]
                dx[:ln, n] += dxs
                for si in range(ns):
                    dstates0[si][k * nd + d, n] = ds0[si][0]
                for acc, g in zip(gsum, gw):
                    acc += g
            for name, g in zip(_names(k, d), gsum):
                if name in params:
                    grads[name] = g
        dlayer = dx
    result.update(dx=dlayer, dstates0=dstates0, grads=grads)
    return result


def model_cell(model):
    """The CELLS name of an rnncore model ('rnn_tanh', 'rnn_relu', 'gru', 'lstm'), or
    'gru_rb' for a GRU with reset_after=False."""
    kind = type(model).__name__.lower()
    if kind == "rnn":
        return "rnn_relu" if getattr(model, "_relu", False) else "rnn_tanh"
    if kind == "gru" and not getattr(model, "reset_after", True):
        return "gru_rb"
    return kind


def reference_run(model, x_tnd, states0, lengths, dout_tnd=None, dstates=None):
    """``reference_model`` for an rnncore model, in the model's dtype.

    ``x_tnd`` (T, N, D); ``states0``: list (h0[, c0]) of (L*nd, N, H) arrays or
    None; ``lengths`` (N,) or None; ``dout_tnd`` (T, N, F_out) for backward and
    ``dstates`` like ``states0``.
    Returns ``(out (T, N, F), finals, dx (T, N, D) | None, dstates0 | None, grads | None)``.
    """
    dt = model.dtype
    L, nd, H = model.num_layers, model.num_directions, model.hidden_size
    N = np.shape(x_tnd)[1]
    st0 = [np.zeros((L * nd, N, H), dt) if s is None else np.asarray(s, dt) for s in states0]
    want = reference_model(
        model_cell(model), model.params, np.asarray(x_tnd, dtype=np.float64).astype(dt), st0,
        lengths, L, nd == 2, model.merge_mode,
        dout=None if dout_tnd is None else np.asarray(dout_tnd, dt),
        dstates_n=None if dstates is None else [None if s is None else np.asarray(s, dt)
                                                 for s in dstates])
    if dout_tnd is None:
        return want["out"], want["states"], None, None, None
    return want["out"], want["states"], want["dx"], want["dstates0"], want["grads"]
