"""Argument checks the three cells' functional APIs share."""
from __future__ import annotations

import numpy as np

from .. import _validation as V


def cell_args(G, x, h0, Wx, Wh, biases, x_letters):
    """Validate the forward arguments shared by the cell functions.

    ``G`` gates; ``biases`` is a list of (name, array) each of shape (G*H,);
    ``x_letters`` is "(N, T, D)" for the sequence functions, "(N, D)" for the
    step functions (where the state is called prev_h). Returns x, h0 and the
    weights as views the kernels read in place, then the biases.
    """
    seq = x_letters == "(N, T, D)"
    g = "" if G == 1 else str(G)
    x = V.as_float(x, "x")
    dt = x.dtype
    h0 = V.as_float(h0, "h0" if seq else "prev_h", dt)
    Wx = V.as_float(Wx, "Wx", dt)
    Wh = V.as_float(Wh, "Wh", dt)
    biases = [(name, V.as_float(v, name, dt)) for name, v in biases]
    V.check_shape(Wh, "Wh", (None, None), f"(H, {g}H)")
    H = Wh.shape[0]
    V.check_shape(Wh, "Wh", (H, G * H), f"(H, {g}H)")
    V.check_shape(x, "x", (None,) * len(x_letters.split(",")), x_letters)
    N, D = x.shape[0], x.shape[-1]
    V.check_shape(Wx, "Wx", (D, G * H), f"(D, {g}H)")
    V.check_shape(h0, "h0" if seq else "prev_h", (N, H), "(N, H)")
    for name, v in biases:
        V.check_shape(v, name, (G * H,), f"({g}H,)")
    return ([x, V.rows_view(h0), V.matrix_view(Wx), V.matrix_view(Wh)]
            + [V.rows_view(v) for _, v in biases])



def final_grad(d, name, N, H, dt):
    """An optional (N, H) state or state gradient as a C-contiguous array (zeros if None)."""
    if d is None:
        return np.zeros((N, H), dtype=dt)
    d = V.as_float(d, name, dt)
    V.check_shape(d, name, (N, H), "(N, H)")
    return V.rows_view(d)
