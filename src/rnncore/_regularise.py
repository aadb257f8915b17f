"""AWD-LSTM's recurrent regularisers: weight drop and variational (locked) dropout.

Used by :mod:`rnncore._stack` for the ``weight_drop=`` and
``variational_dropout=`` options of :class:`rnncore.RNN`, ``GRU`` and ``LSTM``
(Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM Language
Models", sections 4.1-4.2; Gal & Ghahramani 2016, "A Theoretically Grounded
Application of Dropout in Recurrent Neural Networks").

Weight drop (DropConnect, Wan et al. 2013, on the recurrent weights): one
Bernoulli mask ``M`` per ``weight_hh`` and forward call, with inverted
scaling as AWD-LSTM's ``WeightDrop`` (``F.dropout`` on the raw weight)::

    W_eff = W_hh * M / (1 - p)            M ~ Bernoulli(1 - p), shape of W_hh
    dW_hh += dW_eff * M / (1 - p)

``W_eff`` is what the kernel receives (it packs it once per call, so every
step uses the same dropped weight at no per-step cost). The saved mask is the
scaled ``M / (1 - p)`` (one array per weight).

Variational dropout: one mask per sequence, shape (N, F), reused at every
step: ``x'_t = x_t * m / (1 - p)`` for all t. Applied to the input of layer 0
(``p_input``), to the input of every later layer (``p_hidden``) and to the
model's output (``p_output``); backward multiplies the gradients by the same
masks. The masks are drawn in the caller's batch order (so they do not depend
on how a ``lengths`` batch is sorted) and kept on the saved state.
"""
from __future__ import annotations

import numpy as np

from ._validation import check_probability

__all__ = ["OFF", "PARAMS_DOC", "check_weight_drop", "check_variational", "set_options",
           "config", "Masks", "draw", "effective_weight", "weight_grads", "apply_locked",
           "locked_grad"]

#: (weight_drop, variational_dropout) of a model without them
OFF = (0.0, (0.0, 0.0, 0.0))

#: the two options in the models' numpydoc Parameters section
PARAMS_DOC = """    weight_drop : float in [0, 1), default 0, keyword-only
        DropConnect on the recurrent weights, AWD-LSTM's ``WeightDrop`` (Merity,
        Keskar & Socher 2017, section 4.1; Wan et al. 2013): every forward that
        keeps activations (training mode, outside :func:`rnncore.no_grad`) draws
        one Bernoulli mask M per ``weight_hh_l*`` (all layers and directions) and
        runs all T steps with ``weight_hh * M / (1 - p)``; backward gives
        ``weight_hh`` the masked gradient. No cost per step, no extra
        parameters; off in eval mode.
    variational_dropout : float or (p_input, p_hidden, p_output), default 0, keyword-only
        Variational ("locked") dropout (Gal & Ghahramani 2016; AWD-LSTM's
        ``LockedDropout``): one mask of shape (N, F) per sequence, reused at
        every time step, scaled by 1 / (1 - p), on the input of layer 0
        (``p_input``), the input of every later layer (``p_hidden``) and the
        model's output (``p_output``; the merged output when bidirectional). A
        float sets all three. Applied when ``weight_drop`` is; independent of
        (and combined with) ``dropout``, whose masks change at every step.
"""


def check_weight_drop(p) -> float:
    """``weight_drop`` as a float in [0, 1)."""
    return check_probability(p, "weight_drop")


def check_variational(p) -> tuple:
    """``variational_dropout`` (a float, or (p_input, p_hidden, p_output)) as a 3-tuple."""
    if isinstance(p, (tuple, list)):
        if len(p) != 3:
            raise ValueError("variational_dropout: expected a number in [0, 1) or a tuple "
                             f"(p_input, p_hidden, p_output), got {len(p)} values: {p!r}")
        names = ("p_input", "p_hidden", "p_output")
        return tuple(check_probability(v, f"variational_dropout ({n})") for v, n in zip(p, names))
    q = check_probability(p, "variational_dropout")
    return (q, q, q)


def set_options(m, weight_drop, variational_dropout) -> None:
    """Check the two constructor options and set them on the model ``m``."""
    m.weight_drop = check_weight_drop(weight_drop)
    m.variational_dropout = check_variational(variational_dropout)


def config(m, as_given=False) -> dict:
    """The options of ``m`` that are on, for ``get_config`` (JSON) or ``repr`` (``as_given``).

    ``variational_dropout`` is one float when its three p agree.
    """
    cfg = {"weight_drop": m.weight_drop} if m.weight_drop else {}
    p = m.variational_dropout
    if any(p):
        cfg["variational_dropout"] = p[0] if p[0] == p[1] == p[2] else (
            p if as_given else list(p))
    return cfg


def _scaled_mask(rng, shape, p, dtype):
    """``M / (1 - p)`` with ``M ~ Bernoulli(1 - p)`` of ``shape``, or None for p = 0."""
    if p == 0.0:
        return None
    keep = rng.random(shape) >= p                       # P(keep) = 1 - p
    return keep.astype(dtype) * np.asarray(1.0 / (1.0 - p), dtype=dtype)


class Masks:
    """The masks of one training-mode forward, kept for backward (and for tests).

    ``weight``: one scaled mask per ``weight_hh`` (index k * num_directions + d)
    or None; ``input`` (N, D), ``hidden`` [(N, F) per layer k >= 1] and
    ``output`` (N, F_out): the variational masks, each None when its p is 0.
    All in the caller's batch order.
    """

    __slots__ = ("weight", "input", "hidden", "output")

    def __init__(self, weight=None, input=None, hidden=None, output=None):
        self.weight, self.input, self.output = weight, input, output
        self.hidden = hidden or []

    def hidden_mask(self, k):
        """The variational mask on layer k's input (k >= 1), or None."""
        return self.hidden[k - 1] if 0 < k <= len(self.hidden) else None


#: no regularisation (eval mode, or both options 0); shared, never modified
NONE = Masks()


def draw(m, N, on) -> Masks:
    """This forward's masks from the model's generator (:data:`NONE` when ``on`` is false).

    Nothing is drawn for a p of 0, so a model with both options off draws
    exactly what it drew before they existed.
    """
    if not on or (m.weight_drop == 0.0 and not any(m.variational_dropout)):
        return NONE
    return Masks(_weight_masks(m), *_variational_masks(m, N))


def _weight_masks(m) -> list | None:
    """One scaled mask per ``weight_hh`` (index k * num_directions + d), or None (p = 0)."""
    if m.weight_drop == 0.0:
        return None
    shape = (m.G * m.hidden_size, m._h_size)
    return [_scaled_mask(m._rng, shape, m.weight_drop, m.dtype)
            for _ in range(m.num_layers * m.num_directions)]


def effective_weight(p, masks, i):
    """The weights ``p`` of (layer, direction) ``i`` with ``weight_hh`` dropped (a new list)."""
    if masks is None:
        return p
    return [p[0], p[1] * masks[i]] + p[2:]


def weight_grads(g, masks, i):
    """(the gradient list the kernel accumulates into, a finish() that folds it back).

    With weight drop the kernel gets a zeroed ``dW_eff`` in place of
    ``dweight_hh``; ``finish`` then adds ``dW_eff * M / (1 - p)`` to it.
    """
    if masks is None:
        return g, lambda: None
    dw_eff = np.zeros_like(masks[i])

    def finish():
        g[1] += dw_eff * masks[i]
    return [g[0], dw_eff] + g[2:], finish


def _variational_masks(m, N) -> tuple:
    """(input (N, D) or None, [per later layer (N, F) or None], output (N, F_out) or None)."""
    p_in, p_hid, p_out = m.variational_dropout
    nd = m.num_directions
    F_hidden = m._h_size * nd
    F_out = F_hidden if (nd == 1 or m.merge_mode == "concat") else m._h_size
    inp = _scaled_mask(m._rng, (N, m.input_size), p_in, m.dtype)
    hidden = [_scaled_mask(m._rng, (N, F_hidden), p_hid, m.dtype)
              for _ in range(m.num_layers - 1)]
    out = _scaled_mask(m._rng, (N, F_out), p_out, m.dtype)
    return inp, hidden, out


def apply_locked(seq, mask, perm):
    """``seq * mask`` for every step: (T, N, F) view times (N, F) (sorted by ``perm``).

    Returns a new array in ``seq``'s memory layout (``seq`` is never changed);
    ``seq`` itself when ``mask`` is None.
    """
    if mask is None:
        return seq
    if perm is not None:
        mask = mask[perm]
    out = np.empty_like(seq)  # keeps a batch-major view batch-major
    np.multiply(seq, mask[None], out=out)
    return out


def locked_grad(dseq, mask, perm):
    """``dseq *= mask`` at every step, in place (an array backward owns)."""
    if mask is not None:
        dseq *= (mask if perm is None else mask[perm])[None]
