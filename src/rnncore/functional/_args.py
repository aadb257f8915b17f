"""What the three cells' functional APIs share: argument checks, docstring fragments."""
from __future__ import annotations

from string import Template

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


def run_sequence(binding, x, s0, Wx, Wh, biases, n_outs=1):
    """A cell's kernel forward over a batch-major sequence ``x`` (N, T, D).

    Returns ``x`` as the cache keeps it (the view the kernel read), the
    ``n_outs`` outputs (N, T, H) (h; or h, c) and what the kernel saved (in its
    (T, N, ·) layout).
    """
    N, T, _ = x.shape
    H = Wh.shape[0]
    xv = V.seq_view(x, time_major=False)
    outs = [np.empty((N, T, H), dtype=x.dtype) for _ in range(n_outs)]
    saved = binding.kernel_forward(xv, s0, Wx, Wh, biases, [o.transpose(1, 0, 2) for o in outs])
    return xv.transpose(1, 0, 2), outs, saved


def grad_arrays(cache, x, n_states, n_biases, input_grad=True):
    """The outputs of a kernel backward for ``cache``, ``x`` its (T, N, D) view:
    dx (N, T, D), or None where ``input_grad`` is False (a bool, checked here), and
    the ``n_states`` state gradients (N, H), to be written, and dWx, dWh and
    ``n_biases`` bias gradients (G*H,), zeros (accumulated into)."""
    T, N, D = x.shape
    H, GH = cache.h0.shape[1], cache.Wh.shape[1]
    dt = x.dtype
    dx = np.empty((N, T, D), dtype=dt) if V.check_bool(input_grad, "input_grad") else None
    ds0 = [np.empty((N, H), dtype=dt) for _ in range(n_states)]
    dW = (np.zeros(cache.Wx.shape, dtype=dt), np.zeros(cache.Wh.shape, dtype=dt),
          *(np.zeros(GH, dtype=dt) for _ in range(n_biases)))
    return dx, ds0, dW


def time_major(a):
    """The kernels' (T, N, .) view of an (N, T, .) array; None stays None (no dx)."""
    return None if a is None else a.transpose(1, 0, 2)


def final_grad(d, name, N, H, dt):
    """An optional (N, H) state or state gradient as a C-contiguous array (zeros if None)."""
    if d is None:
        return np.zeros((N, H), dtype=dt)
    d = V.as_float(d, name, dt)
    V.check_shape(d, name, (N, H), "(N, H)")
    return V.rows_view(d)


def seq_grads(cache, cache_type, forward, dh, dhn):
    """Check a sequence backward's cache, ``dh`` (N, T, H) and ``dhn`` (N, H) or None.

    Returns ``dh`` as the kernels' (T, N, H) view and ``dhn`` (zeros if None).
    """
    if not isinstance(cache, cache_type) or cache.step:
        raise TypeError(f"cache: expected the {cache_type.__name__} returned by {forward}")
    N, T, _ = cache.x.shape
    H = cache.h0.shape[1]
    dt = cache.x.dtype
    dh = V.as_float(dh, "dh", dt)
    V.check_shape(dh, "dh", (N, T, H), "(N, T, H)")
    return V.seq_view(dh, time_major=False), final_grad(dhn, "dhn", N, H, dt)


def step_grads(cache, cache_type, forward, dnext_h):
    """Check a step backward's cache and ``dnext_h`` (N, H).

    Returns ``dnext_h`` as a (1, N, H) sequence and the zero gradient of the
    final state, (N, H): a step is a sequence of length 1.
    """
    if not isinstance(cache, cache_type) or not cache.step:
        raise TypeError(f"cache: expected the {cache_type.__name__} returned by {forward}")
    N, H = cache.h0.shape
    dt = cache.x.dtype
    dnext_h = V.as_float(dnext_h, "dnext_h", dt)
    V.check_shape(dnext_h, "dnext_h", (N, H), "(N, H)")
    return V.rows_view(dnext_h)[None], np.zeros((N, H), dtype=dt)


#: docstring fragments every cell's functions use (``$name`` in a docstring)
DOC_FRAGMENTS = {
    "seq_inputs": """x : ndarray, shape (N, T, D)
        Input sequence.
    h0 : ndarray, shape (N, H)
        Initial hidden state.""",
    "raises": """Raises
    ------
    TypeError
        For a non-float array or mixed float32/float64 arguments.
    ValueError
        For a wrong shape (the message names the argument and the expected
        shape)""",
    "seq_grads": """Parameters
    ----------
    dh : ndarray, shape (N, T, H)
        Upstream gradients of all hidden states.
    cache : ${cache}
        From :func:`${forward}`.
    dhn : ndarray, shape (N, H), optional
        Extra gradient of the final state ``h[:, -1]``.""",
    "input_grad": """input_grad : bool, default True
        False: ``dx`` is not computed and returned as None (an input that
        needs no gradient, such as data), which skips its product
        (``2 T N G H D`` flops of the ``G`` gates).""",
    "dnext_h": """dnext_h : ndarray, shape (N, H)
        Gradient of the loss with respect to ``next_h``.""",
    "step_grads": """Parameters
    ----------
    $dnext_h
    cache : ${cache}
        From :func:`${forward}`.""",
    "gemm_note": """The input projection of all N*T rows is one GEMM before the loop; each
    step is one GEMM with ``Wh`` (all the gates at once) and one fused
    elementwise pass.""",
    "example_setup": """>>> import numpy as np
    >>> from rnncore import functional as F
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((2, 5, 3))""",
}


def fill_doc(func=None, **fields):
    """Decorator: put the :data:`DOC_FRAGMENTS`, then ``fields``, into a docstring.

    ``@fill_doc`` or ``@fill_doc(cache="GRUCache", forward="gru_forward")``
    (the names some fragments leave open).
    """
    def fill(f):
        # two passes: a fragment may name another fragment or a field
        doc = Template(f.__doc__).safe_substitute(DOC_FRAGMENTS)
        f.__doc__ = Template(doc).safe_substitute(DOC_FRAGMENTS, **fields)
        return f
    return fill(func) if func is not None else fill
