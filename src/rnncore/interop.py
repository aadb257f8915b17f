"""Weights from other conventions: Keras layers and the cs231n assignment's arrays.

Every converter returns rnncore's (PyTorch's) names, layouts and gate orders,
so its result loads with ``model.load_state_dict``. Pure NumPy; Keras is never
imported (a Keras layer is read through ``get_config`` and ``get_weights``).

The conventions (``x @ W`` layouts keep the gates on the last axis)::

                 input weights   recurrent      bias               gate order
    rnncore      (G*H, D)        (G*H, H)       b_ih, b_hh (G*H,)  LSTM i,f,g,o  GRU r,z,n
    Keras        kernel (D, G*H) (H, G*H)       (G*H,); GRU        LSTM i,f,c,o  GRU z,r,h
                                                reset_after: (2, G*H) = [input; recurrent]
    cs231n       Wx (D, G*H)     Wh (H, G*H)    b (G*H,)           LSTM i,f,o,g
    rnncore.reference / functional: Wx (D, G*H), Wh (H, G*H), PyTorch's gate order.

Keras's ``c`` is PyTorch's ``g`` (no reordering for the LSTM); its GRU puts
the update gate first, and both compute ``h' = z ⊙ h + (1 - z) ⊙ n``.
Keras's ``GRU(reset_after=True)`` is ``rnncore.GRU()``; ``reset_after=False``
(``n = tanh(x W_in + b_in + (r ⊙ h) W_hn)``, one bias (3H,) added to the
input projection) is ``rnncore.GRU(reset_after=False)`` with that bias as
``bias_ih`` and ``bias_hh = 0`` (in the reset-before GRU ``b_hn`` sits outside
the reset product, so one bias per gate is all the model needs).
cs231n's LSTM puts ``o`` before ``g``: passing cs231n arrays to
``rnncore.reference.lstm_forward`` unpermuted is wrong (error ~4e-2 at small
weights) — use :func:`cs231n_lstm_to_reference`.

Keras masks. rnncore takes ``lengths`` instead of a mask: a right-padded
mask ``mask`` (N, T) (True on the valid steps, then False to the end) is
``lengths=mask.sum(axis=1)``; masks with holes (False then True again) have
no rnncore equivalent. The final states then equal Keras's; the outputs past
each length are 0 in rnncore, 0 in a Keras ``Bidirectional`` layer, but the
last valid output repeated in a plain Keras layer (``zero_output_for_mask=
False``).
"""
from __future__ import annotations

import numpy as np

__all__ = ["from_keras", "keras_state_dict", "keras_gru_to_reference", "from_cs231n",
           "cs231n_lstm_to_reference", "lengths_from_mask"]

#: For each PyTorch gate block, the index of that block in the other convention.
KERAS_BLOCK_OF_TORCH = {"rnn": (0,), "gru": (1, 0, 2), "lstm": (0, 1, 2, 3)}
CS231N_BLOCK_OF_TORCH = {"rnn": (0,), "lstm": (0, 1, 3, 2)}
_GATES = {"rnn": 1, "gru": 3, "lstm": 4}
_KERAS_KINDS = {"SimpleRNN": "rnn", "GRU": "gru", "LSTM": "lstm"}


def _blocks(a, order, H):
    """Gate blocks of ``a`` along its last axis, picked in ``order``."""
    return np.concatenate([a[..., b * H:(b + 1) * H] for b in order], axis=-1)


def _kind(kind):
    k = str(kind).lower()
    if k not in _GATES:
        raise ValueError(f"kind: expected 'rnn', 'gru' or 'lstm', got {kind!r}")
    return k


def _check_xw(kind, Wx, Wh, b, names):
    """Shapes of an ``x @ W`` triple: Wx (D, G*H), Wh (H, G*H), b (G*H,) or None."""
    Wx, Wh = np.asarray(Wx), np.asarray(Wh)
    G = _GATES[kind]
    if Wh.ndim != 2 or Wh.shape[1] != G * Wh.shape[0]:
        raise ValueError(f"{names[1]}: expected shape (H, {G}*H) for a {kind.upper()}, "
                         f"got {Wh.shape}")
    H = Wh.shape[0]
    if Wx.ndim != 2 or Wx.shape[1] != G * H:
        raise ValueError(f"{names[0]}: expected shape (D, {G * H}), got {Wx.shape}")
    if b is not None:
        b = np.asarray(b)
    return Wx, Wh, b, H


def _state(kind, Wx, Wh, bx, bh, order, H, sfx):
    """``x @ W`` arrays in another gate order -> rnncore parameters for one direction."""
    out = {f"weight_ih{sfx}": _blocks(Wx, order, H).T.copy(),
           f"weight_hh{sfx}": _blocks(Wh, order, H).T.copy()}
    if bx is not None:
        out[f"bias_ih{sfx}"] = _blocks(bx, order, H)
        out[f"bias_hh{sfx}"] = (np.zeros_like(out[f"bias_ih{sfx}"]) if bh is None
                                else _blocks(bh, order, H))
    return out


# ------------------------------------------------------------------------ Keras
def keras_state_dict(kind, weights, *, bidirectional=False, reset_after=True, layer=0):
    """rnncore parameters from a Keras layer's ``get_weights()``.

    Parameters
    ----------
    kind : {'rnn', 'gru', 'lstm'}
        Keras ``SimpleRNN``, ``GRU`` or ``LSTM``.
    weights : list of arrays
        ``[kernel (D, G*H), recurrent_kernel (H, G*H), bias]`` (no bias with
        ``use_bias=False``); a ``Bidirectional`` layer's list is the forward
        layer's followed by the backward layer's.
    bidirectional : bool
        ``weights`` come from a ``Bidirectional`` wrapper.
    reset_after : bool, default True
        The Keras GRU's ``reset_after``: True, bias (2, 3H) = [input; recurrent]
        (for ``rnncore.GRU()``); False, bias (3H,) (for
        ``rnncore.GRU(reset_after=False)``: it becomes ``bias_ih``, with
        ``bias_hh = 0``).
    layer : int
        Layer index k of the names (``weight_ih_l{k}``), for stacking.

    Returns
    -------
    dict of str -> ndarray
        ``weight_ih_l{k}[_reverse]`` (G*H, D), ``weight_hh_l{k}`` (G*H, H),
        ``bias_ih_l{k}``/``bias_hh_l{k}`` (G*H,) (a Keras layer with one bias
        gives it as ``bias_ih`` and zeros as ``bias_hh``).
    """
    kind = _kind(kind)
    weights = [np.asarray(w) for w in weights]
    nd = 2 if bidirectional else 1
    if len(weights) % nd or len(weights) // nd not in (2, 3):
        raise ValueError(f"weights: expected {2 * nd} or {3 * nd} arrays (kernel, "
                         f"recurrent_kernel[, bias]{' for each direction' if nd == 2 else ''}), "
                         f"got {len(weights)}")
    per = len(weights) // nd
    out = {}
    for d in range(nd):
        kernel, rec, *bias = weights[d * per:(d + 1) * per]
        Wx, Wh, b, H = _check_xw(kind, kernel, rec, bias[0] if bias else None,
                                 ("kernel", "recurrent_kernel"))
        bx = bh = None
        if b is not None:
            if kind == "gru" and reset_after:
                if b.shape != (2, 3 * H):
                    raise ValueError(f"bias: expected shape (2, {3 * H}) for a GRU with "
                                     f"reset_after=True, got {b.shape}")
                bx, bh = b[0], b[1]
            else:
                if b.shape != (_GATES[kind] * H,):
                    raise ValueError(f"bias: expected shape ({_GATES[kind] * H},)"
                                     + (" for a GRU with reset_after=False" * (kind == "gru"))
                                     + f", got {b.shape}")
                bx = b
        sfx = f"_l{layer}" + ("_reverse" if d == 1 else "")
        out.update(_state(kind, Wx, Wh, bx, bh, KERAS_BLOCK_OF_TORCH[kind], H, sfx))
    return out


def keras_gru_to_reference(weights):
    """Keras GRU weights -> ``(Wx, Wh, bx, bh)`` for ``rnncore.reference.gru_forward``.

    Either ``reset_after`` setting: pass the same ``reset_after`` to
    ``gru_forward``. Gates reordered z, r, h -> r, z, n; a one-row bias
    (``reset_after=False``) becomes ``bx`` with ``bh = 0``.
    """
    kernel, rec, *bias = [np.asarray(w) for w in weights]
    Wx, Wh, b, H = _check_xw("gru", kernel, rec, bias[0] if bias else None,
                             ("kernel", "recurrent_kernel"))
    o = KERAS_BLOCK_OF_TORCH["gru"]
    if b is None:
        b = np.zeros((2, 3 * H), Wx.dtype)
    b = b.reshape(-1, 3 * H)
    bx = _blocks(b[0], o, H)
    bh = _blocks(b[1], o, H) if b.shape[0] == 2 else np.zeros_like(bx)
    return _blocks(Wx, o, H), _blocks(Wh, o, H), bx, bh


def _keras_layer(layer, k):
    """(config dict, rnncore parameters) of one Keras layer at stack index k."""
    name = type(layer).__name__
    bidirectional = name == "Bidirectional"
    if bidirectional:
        merge = layer.get_config().get("merge_mode")
        if merge not in ("concat", "sum", "mul", "ave"):
            raise ValueError(f"Bidirectional merge_mode={merge!r}: rnncore merges with "
                             "'concat', 'sum', 'mul' or 'ave'")
        inner, back = layer.forward_layer, layer.backward_layer
        name = type(inner).__name__
        if type(back).__name__ != name or back.get_config()["units"] != inner.get_config()[
                "units"]:
            raise ValueError("Bidirectional with different forward and backward layers")
    else:
        merge, inner = "concat", layer
    if name not in _KERAS_KINDS:
        raise ValueError(f"Keras layer {layer.name!r}: expected SimpleRNN, GRU, LSTM or "
                         f"Bidirectional of one of them, got {type(layer).__name__}")
    kind, cfg = _KERAS_KINDS[name], inner.get_config()
    if cfg.get("go_backwards") and not bidirectional:
        raise ValueError(f"Keras layer {layer.name!r}: go_backwards=True has no rnncore "
                         "equivalent (rnncore's reverse direction exists only in a "
                         "bidirectional model)")
    act = cfg.get("activation")
    if kind == "rnn":
        if act not in ("tanh", "relu"):
            raise ValueError(f"Keras layer {layer.name!r}: activation {act!r}; rnncore.RNN has "
                             "'tanh' or 'relu'")
    elif act != "tanh" or cfg.get("recurrent_activation") != "sigmoid":
        raise ValueError(f"Keras layer {layer.name!r}: activation={act!r}, recurrent_activation="
                         f"{cfg.get('recurrent_activation')!r}; rnncore computes 'tanh' and "
                         "'sigmoid'")
    reset_after = bool(cfg.get("reset_after", True))
    state = keras_state_dict(kind, layer.get_weights(), bidirectional=bidirectional,
                             reset_after=reset_after, layer=k)
    w = state[f"weight_ih_l{k}"]
    info = dict(kind=kind, D=w.shape[1], H=cfg["units"], bidirectional=bidirectional,
                merge_mode=merge, bias=bool(cfg.get("use_bias", True)),
                nonlinearity=act if kind == "rnn" else None,
                return_sequences=bool(cfg.get("return_sequences")), dtype=w.dtype,
                reset_after=reset_after if kind == "gru" else None)
    return info, state


def from_keras(layers, *, batch_first=True, dtype=None):
    """An rnncore model with the weights of Keras recurrent layers.

    Parameters
    ----------
    layers : Keras layer or list of Keras layers
        ``SimpleRNN``, ``GRU`` (either ``reset_after``), ``LSTM``, or
        ``Bidirectional`` of one of them; a list is a stack of layers of one
        kind and width (each but the last with ``return_sequences=True`` and,
        if bidirectional, ``merge_mode='concat'``), built.
    batch_first : bool, default True
        Keras sequences are (N, T, D).
    dtype : optional
        Default: the Keras weights' dtype.

    Returns
    -------
    rnncore.RNN, GRU or LSTM
        (A GRU with the Keras layers' ``reset_after``.) ``model(x)[0]`` equals
        the Keras layer's output with ``return_sequences=True`` (with
        ``False``, Keras returns ``out[:, -1]``
        — or, with ``lengths``, ``h_n[-1]`` — of a unidirectional model). Keras
        masks: see the module docstring (``lengths=mask.sum(1)``).

    Raises
    ------
    ValueError
        Another layer type, activations rnncore does not compute,
        ``go_backwards`` outside ``Bidirectional``, ``merge_mode=None``, a
        stack that does not chain, or GRUs that differ in ``reset_after``.
    """
    from .models import GRU, LSTM, RNN
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    infos, state = [], {}
    for k, layer in enumerate(layers):
        info, s = _keras_layer(layer, k)
        infos.append(info)
        state.update(s)
    first = infos[0]
    for k, info in enumerate(infos[1:], 1):
        for key in ("kind", "H", "bidirectional", "nonlinearity", "reset_after"):
            if info[key] != first[key]:
                raise ValueError(f"layers[{k}]: {key} {info[key]!r} differs from layers[0]'s "
                                 f"{first[key]!r}; an rnncore model stacks one kind of layer")
        prev = infos[k - 1]
        if not prev["return_sequences"] or prev["merge_mode"] != "concat":
            raise ValueError(f"layers[{k - 1}]: a layer below another must have "
                             "return_sequences=True (and merge_mode='concat')")
        if info["D"] != first["H"] * (2 if first["bidirectional"] else 1):
            raise ValueError(f"layers[{k}]: input size {info['D']} is not the previous "
                             "layer's output size")
    bias = any(i["bias"] for i in infos)
    if bias:  # a layer without bias in a stack with biases: zeros
        for k, info in enumerate(infos):
            for sfx in ("", "_reverse")[:2 if info["bidirectional"] else 1]:
                for b in ("bias_ih", "bias_hh"):
                    state.setdefault(f"{b}_l{k}{sfx}", np.zeros(
                        _GATES[info["kind"]] * info["H"], info["dtype"]))
    cls = {"rnn": RNN, "gru": GRU, "lstm": LSTM}[first["kind"]]
    kw = dict(num_layers=len(infos), bias=bias, batch_first=batch_first,
              bidirectional=first["bidirectional"], merge_mode=infos[-1]["merge_mode"],
              dtype=dtype or first["dtype"])
    if first["kind"] == "rnn":
        kw["nonlinearity"] = first["nonlinearity"]
    if first["kind"] == "gru":
        kw["reset_after"] = first["reset_after"]
    model = cls(first["D"], first["H"], **kw)
    model.load_state_dict(state)
    return model


def lengths_from_mask(mask):
    """``lengths`` (N,) for a right-padded Keras mask (N, T); ValueError for masks with holes."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected shape (N, T), got {mask.shape}")
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        rows = np.flatnonzero((mask != (np.arange(mask.shape[1]) < lengths[:, None])).any(1))
        raise ValueError(f"mask: rows {rows.tolist()} have holes (a False step before a True "
                         "one); rnncore supports right-padded masks only (lengths=)")
    return lengths


# ----------------------------------------------------------------------- cs231n
def from_cs231n(kind, Wx, Wh, b, *, layer=0):
    """rnncore parameters from the cs231n assignment's arrays.

    Parameters
    ----------
    kind : {'rnn', 'lstm'}
        ``rnn_forward`` (tanh) or ``lstm_forward``.
    Wx : ndarray (D, G*H)
    Wh : ndarray (H, G*H)
    b : ndarray (G*H,)
        For the LSTM the gate blocks are cs231n's ``i, f, o, g``.

    Returns
    -------
    dict of str -> ndarray
        ``weight_ih_l{k}`` (G*H, D), ``weight_hh_l{k}`` (G*H, H), ``bias_ih_l{k}``
        = b, ``bias_hh_l{k}`` = 0, in PyTorch's order ``i, f, g, o``, for
        ``rnncore.RNN/LSTM(D, H, batch_first=True)`` (cs231n's ``x`` is (N, T, D)).
    """
    kind = _kind(kind)
    if kind not in CS231N_BLOCK_OF_TORCH:
        raise ValueError("kind: the cs231n assignment has 'rnn' and 'lstm' layers")
    Wx, Wh, b, H = _check_xw(kind, Wx, Wh, b, ("Wx", "Wh"))
    if b is None or b.shape != (_GATES[kind] * H,):
        raise ValueError(f"b: expected shape ({_GATES[kind] * H},), got "
                         f"{None if b is None else b.shape}")
    return _state(kind, Wx, Wh, b, None, CS231N_BLOCK_OF_TORCH[kind], H, f"_l{layer}")


def cs231n_lstm_to_reference(Wx, Wh, b):
    """cs231n LSTM arrays (gates i, f, o, g) -> ``(Wx, Wh, b)`` in PyTorch's i, f, g, o,
    for ``rnncore.reference.lstm_forward`` / ``rnncore.functional.lstm_forward``."""
    Wx, Wh, b, H = _check_xw("lstm", Wx, Wh, b, ("Wx", "Wh"))
    o = CS231N_BLOCK_OF_TORCH["lstm"]
    return _blocks(Wx, o, H), _blocks(Wh, o, H), _blocks(b, o, H)
