r"""Pure-NumPy specification of the rnncore cells: vanilla RNN, GRU and LSTM.

This module is the *definition* every faster implementation in rnncore is
tested against. It favours clarity over speed: one function per step and one
per sequence (cs231n ``rnn_layers.py`` style), every saved value named, every
formula written once with the textbook equation it implements.

Conventions
-----------
Shape letters: ``T`` steps, ``N`` batch, ``D`` input features, ``H`` hidden
units, ``G`` gates (1 for the RNN, 3 for the GRU, 4 for the LSTM), ``M``
output features, ``V`` vocabulary (classes).

* Sequences are batch-major: ``x`` is ``(N, T, D)``, the hidden states ``h``
  are ``(N, T, H)``, an initial state ``h0`` is ``(N, H)``.
* Weights are stored so that a projection is ``x @ Wx``: ``Wx`` is
  ``(D, G*H)``, ``Wh`` is ``(H, G*H)``, biases are ``(G*H,)``. The ``G`` gate
  blocks of width ``H`` lie along the last axis in PyTorch's order (GRU
  ``r, z, n``; LSTM ``i, f, g, o``), so ``Wx`` is PyTorch's ``weight_ih.T``
  and ``Wh`` is ``weight_hh.T``.
* Every function computes in the floating dtype of its inputs (float32 stays
  float32; nothing is upcast) and returns new arrays; inputs are never
  modified. Caches keep *references* to the inputs, so do not modify the
  inputs between a forward call and its backward call.
* Gradients are named ``d`` + the name of the value (``dx``, ``dh0``, ``dWx``).
* ``σ`` is the logistic sigmoid, ``⊙`` the elementwise product.

Equations
---------
References, cited by short name in the comments below:
[DL] Goodfellow, Bengio & Courville, *Deep Learning* (2016), §10.2 (recurrent
networks, the output layer, softmax cross-entropy, backpropagation through
time; notation ``a_t = b + W h_{t-1} + U x_t``, ``o_t = c + V h_t``);
[d2l] Zhang, Lipton, Li & Smola, *Dive into Deep Learning*, ch. 9-10 (RNN, GRU,
LSTM; notation ``H_t = φ(X_t W_xh + H_{t-1} W_hh + b_h)``); Elman (1990), the
vanilla RNN; Cho et al. (2014), the GRU; Hochreiter & Schmidhuber (1997) with
Gers et al. (2000), the LSTM; Stanford cs231n assignment 3 (``rnn_layers.py``),
the step/sequence function signatures.

Vanilla RNN (Elman 1990; [DL]: ``s_t = f(U x_t + W s_{t-1})``; [d2l]:
``H_t = φ(X_t W_xh + H_{t-1} W_hh + b_h)``)::

    h_t = φ(x_t Wx + h_{t-1} Wh + b),      φ = tanh or relu

Output layer and loss ([DL] §10.2)::

    o_t = h_t V + c                         (temporal_affine_forward)
    L   = -(1/N) Σ_{n,t} mask[n,t] · log softmax(o_t[n])[y[n,t]]

GRU (PyTorch ``nn.GRU``; gates r, z, n along the 3H axis)::

    r   = σ(x W_ir + b_ir + h W_hr + b_hr)
    z   = σ(x W_iz + b_iz + h W_hz + b_hz)
    n   = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))     reset_after=True
    n   = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)     reset_after=False
    h'  = (1 - z) ⊙ n + z ⊙ h

``reset_after=False`` is the variant of Cho et al. (2014) and [d2l]
(``H̃_t = tanh(X_t W_xh + (R_t ⊙ H_{t-1}) W_hh + b_h)``) and of the original
Keras GRU. [d2l]'s update ``H_t = Z_t ⊙ H_{t-1} + (1 - Z_t) ⊙ H̃_t`` is the
same as PyTorch's ``h' = (1 - z) ⊙ n + z ⊙ h``.

LSTM (PyTorch ``nn.LSTM``; gates i, f, g, o along the 4H axis; one bias
``b = b_ih + b_hh``)::

    [a_i, a_f, a_g, a_o] = x Wx + h Wh + b
    i = σ(a_i),  f = σ(a_f),  g = tanh(a_g),  o = σ(a_o)
    c' = f ⊙ c + i ⊙ g
    h' = o ⊙ tanh(c')

Backpropagation through time ([DL] §10.2.2, [d2l] §9.7): the gradient reaching
``h_t`` is the upstream gradient ``dh[:, t]`` plus the gradient carried back
from step ``t + 1``; weight gradients are sums over the steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    # helpers
    "sigmoid",
    # vanilla RNN
    "rnn_step_forward",
    "rnn_step_backward",
    "rnn_forward",
    "rnn_backward",
    # output layer and loss
    "temporal_affine_forward",
    "temporal_affine_backward",
    "temporal_softmax_loss",
    # GRU
    "gru_step_forward",
    "gru_step_backward",
    "gru_forward",
    "gru_backward",
    # LSTM
    "lstm_step_forward",
    "lstm_step_backward",
    "lstm_forward",
    "lstm_backward",
    # layer normalisation and the layer-normalised LSTM (Ba, Kiros & Hinton 2016)
    "layer_norm_forward",
    "layer_norm_backward",
    "ln_lstm_forward",
    "ln_lstm_backward",
    "ln_gru_forward",
    "ln_gru_backward",
    # caches (returned by the forward functions, consumed by the backward ones)
    "RNNStepCache",
    "RNNCache",
    "AffineCache",
    "GRUStepCache",
    "GRUCache",
    "LSTMStepCache",
    "LSTMCache",
    "LayerNormCache",
    "LNLSTMCache",
    "LNGRUCache",
]

_NONLINEARITIES = ("tanh", "relu")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------
def _float_dtype(*arrays):
    """The common floating dtype of ``arrays`` (float64 if none is floating)."""
    dtype = np.result_type(*arrays)
    return dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)


def _as(dtype, *arrays):
    """Return ``arrays`` as ndarrays of ``dtype`` (no copy when already so)."""
    return tuple(np.asarray(a, dtype=dtype) for a in arrays)


def _split_gates(a, G):
    """Split ``a`` (..., G*H) into its ``G`` gate blocks of width H (views)."""
    return np.split(a, G, axis=-1)


def _check_shapes(*named, **sizes):
    """Raise ValueError naming the argument unless every ``(name, array, letters)`` has one
    axis per letter and equal letters have equal sizes (``sizes`` fixes some letters;
    ``K`` is the gates' width G*H). A None array is skipped. Returns the sizes."""
    for name, a, letters in named:
        if a is None:
            continue
        shape = ", ".join(letters).replace("K", "G*H")
        shape = f"({shape},)" if len(letters) == 1 else f"({shape})"
        if a.ndim != len(letters):
            raise ValueError(f"{name}: expected a {len(letters)}-D array {shape}, "
                             f"got shape {a.shape}")
        for letter, n in zip(letters, a.shape):
            if sizes.setdefault(letter, n) != n:
                raise ValueError(f"{name}: expected shape {shape} with "
                                 f"{letter.replace('K', 'G*H')} = {sizes[letter]}, got {a.shape}")
    return sizes


def _check_sequence_args(G, x, h0, Wx, Wh, Wr=None, **more):
    """The shapes of a sequence forward's x (N, T, D), h0 (N, H), Wx (D, G*H),
    Wh (H, G*H), and ``more``: biases (G*H,), c0 (N, H). With an LSTM
    projection ``Wr`` (H, P), h0 and the rows of Wh are P wide."""
    if Wr is None:
        n = _check_shapes(("x", x, "NTD"), ("h0", h0, "NH"))
    else:
        n = _check_shapes(("x", x, "NTD"), ("h0", h0, "NP"), ("Wr", Wr, "HP"))
    _check_shapes(("Wx", Wx, "DK"), ("Wh", Wh, ("HK" if Wr is None else "PK")),
                  *((k, v, "NH" if k == "c0" else "K") for k, v in more.items()),
                  **n, K=G * n["H"])


def _check_grad_args(cache, dh, **finals):
    """The shapes of a sequence backward's dh (N, T, H) and final-state gradients (N, H)
    (with an LSTM projection, dh and dhn are (N, T, P) and (N, P), dcn (N, H))."""
    N, H = cache.h0.shape
    if getattr(cache, "Wr", None) is None:
        _check_shapes(("dh", None if dh is None else np.asarray(dh), "NTH"),
                      *((k, None if v is None else np.asarray(v), "NH")
                        for k, v in finals.items()),
                      N=N, T=len(cache.steps), H=H)
        return
    _check_shapes(("dh", None if dh is None else np.asarray(dh), "NTP"),
                  *((k, None if v is None else np.asarray(v), "NH" if k == "dcn" else "NP")
                    for k, v in finals.items()),
                  N=N, T=len(cache.steps), P=H, H=cache.Wr.shape[0])


def _check_nonlinearity(nonlinearity):
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}"
        )


def sigmoid(x):
    """Logistic sigmoid ``σ(x) = 1 / (1 + exp(-x))``, stable for large ``|x|``.

    Parameters
    ----------
    x : array_like
        Any shape. Floating inputs keep their dtype.

    Returns
    -------
    out : ndarray
        ``σ(x)``, same shape (and floating dtype) as ``x``; a new array.

    Notes
    -----
    Only ``exp(-|x|)`` is ever evaluated, which lies in (0, 1], so nothing
    overflows: ``σ(x) = 1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` for
    ``x < 0``, with ``e = exp(-|x|)``.

    Examples
    --------
    >>> sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    """
    x = np.asarray(x)
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# ---------------------------------------------------------------------------
# Vanilla RNN
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class RNNStepCache:
    """Values saved by :func:`rnn_step_forward` for :func:`rnn_step_backward`.

    Attributes
    ----------
    x : ndarray (N, D)
    prev_h : ndarray (N, H)
    Wx : ndarray (D, H)
    Wh : ndarray (H, H)
    next_h : ndarray (N, H)
        ``φ(a)``; the derivative of ``φ`` is computed from it.
    nonlinearity : str
        ``'tanh'`` or ``'relu'``.
    """

    x: np.ndarray
    prev_h: np.ndarray
    Wx: np.ndarray
    Wh: np.ndarray
    next_h: np.ndarray
    nonlinearity: str


@dataclass(frozen=True, eq=False)
class RNNCache:
    """Values saved by :func:`rnn_forward` for :func:`rnn_backward`.

    Attributes
    ----------
    steps : tuple of RNNStepCache
        One cache per time step, ``steps[t]`` for step ``t`` (length T).
    h0 : ndarray (N, H)
    Wx : ndarray (D, H)
    Wh : ndarray (H, H)
    """

    steps: tuple
    h0: np.ndarray
    Wx: np.ndarray
    Wh: np.ndarray


def rnn_step_forward(x, prev_h, Wx, Wh, b, nonlinearity="tanh"):
    """One time step of a vanilla RNN.

    Parameters
    ----------
    x : ndarray (N, D)
        Input of this step.
    prev_h : ndarray (N, H)
        Hidden state of the previous step.
    Wx : ndarray (D, H)
        Input-to-hidden weights.
    Wh : ndarray (H, H)
        Hidden-to-hidden weights.
    b : ndarray (H,)
        Bias (PyTorch's ``bias_ih + bias_hh``).
    nonlinearity : {'tanh', 'relu'}, default 'tanh'
        The activation ``φ``.

    Returns
    -------
    next_h : ndarray (N, H)
        ``φ(x Wx + prev_h Wh + b)``.
    cache : RNNStepCache
        Values needed by :func:`rnn_step_backward`.

    Raises
    ------
    ValueError
        If ``nonlinearity`` is not ``'tanh'`` or ``'relu'``.

    Notes
    -----
    ``next_h = φ(x Wx + prev_h Wh + b)`` ([DL]: ``s_t = f(U x_t + W s_{t-1})``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> N, D, H = 2, 4, 5
    >>> x, prev_h = rng.standard_normal((N, D)), np.zeros((N, H))
    >>> Wx, Wh, b = rng.standard_normal((D, H)), rng.standard_normal((H, H)), np.zeros(H)
    >>> next_h, cache = rnn_step_forward(x, prev_h, Wx, Wh, b)
    >>> next_h.shape
    (2, 5)
    """
    _check_nonlinearity(nonlinearity)
    dtype = _float_dtype(x, prev_h, Wx, Wh, b)
    x, prev_h, Wx, Wh, b = _as(dtype, x, prev_h, Wx, Wh, b)

    # [DL]: net_t = U x_t + W s_{t-1} (+ b)            (N, H)
    a = x @ Wx + prev_h @ Wh + b
    # [DL]: s_t = f(net_t), f = tanh or relu           (N, H)
    next_h = np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)

    cache = RNNStepCache(x=x, prev_h=prev_h, Wx=Wx, Wh=Wh, next_h=next_h,
                         nonlinearity=nonlinearity)
    return next_h, cache


def rnn_step_backward(dnext_h, cache):
    """Backward pass of one vanilla-RNN step.

    Parameters
    ----------
    dnext_h : ndarray (N, H)
        Gradient of the loss with respect to ``next_h``.
    cache : RNNStepCache
        From :func:`rnn_step_forward`.

    Returns
    -------
    dx : ndarray (N, D)
    dprev_h : ndarray (N, H)
    dWx : ndarray (D, H)
    dWh : ndarray (H, H)
    db : ndarray (H,)

    Notes
    -----
    With ``da = dnext_h ⊙ φ'(a)`` (``φ' = 1 - next_h²`` for tanh,
    ``next_h > 0`` for relu)::

        dx = da Wxᵀ,  dprev_h = da Whᵀ,  dWx = xᵀ da,  dWh = prev_hᵀ da,  db = Σ_N da
    """
    x, prev_h, Wx, Wh, next_h = cache.x, cache.prev_h, cache.Wx, cache.Wh, cache.next_h
    (dnext_h,) = _as(next_h.dtype, dnext_h)

    # [DL]: tanh' = 1 - h²  (relu' = [h > 0])               (N, H)
    # δ_t = ∂L/∂net_t = ∂L/∂s_t ⊙ f'(net_t)                      (N, H)
    if cache.nonlinearity == "tanh":
        da = dnext_h * (1 - next_h**2)
    else:
        # relu: the gradient passes where h > 0 and is exactly 0 elsewhere,
        # also where h is NaN (a select, not a product with 0/1)
        da = np.where(next_h > 0, dnext_h, 0).astype(next_h.dtype)

    # [DL]: δ_{t-1} = δ_t W f'(net_{t-1}) (here the W part)  (N, H) = (N, H)(H, H)ᵀ
    dprev_h = da @ Wh.T
    # [DL], second direction (to the layer below): U ᵀ δ_t   (N, D) = (N, H)(D, H)ᵀ
    dx = da @ Wx.T
    # [d2l]: ∂L/∂W_hx = Σ_t ∂L/∂h_t x_tᵀ (one term)           (D, H)
    dWx = x.T @ da
    # [d2l]: ∂L/∂W_hh = Σ_t ∂L/∂h_t h_{t-1}ᵀ (one term)       (H, H)
    dWh = prev_h.T @ da
    # [DL]: ∂L/∂b = Σ_t diag(1 - h_t²) δ_t (one term)        (H,)
    db = da.sum(axis=0)
    return dx, dprev_h, dWx, dWh, db


def rnn_forward(x, h0, Wx, Wh, b, nonlinearity="tanh"):
    """Run a vanilla RNN over a whole sequence.

    Parameters
    ----------
    x : ndarray (N, T, D)
        Input sequence.
    h0 : ndarray (N, H)
        Initial hidden state.
    Wx : ndarray (D, H)
    Wh : ndarray (H, H)
    b : ndarray (H,)
    nonlinearity : {'tanh', 'relu'}, default 'tanh'

    Returns
    -------
    h : ndarray (N, T, H)
        Hidden states of all steps; ``h[:, -1]`` is the final state.
    cache : RNNCache
        Values needed by :func:`rnn_backward`.

    Raises
    ------
    ValueError
        If ``nonlinearity`` is not ``'tanh'`` or ``'relu'``.

    Notes
    -----
    ``h_t = φ(x_t Wx + h_{t-1} Wh + b)`` for ``t = 0 .. T-1`` with
    ``h_{-1} = h0``, computed by calling :func:`rnn_step_forward` per step.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> N, T, D, H = 2, 3, 4, 5
    >>> x, h0 = rng.standard_normal((N, T, D)), np.zeros((N, H))
    >>> Wx, Wh, b = rng.standard_normal((D, H)), rng.standard_normal((H, H)), np.zeros(H)
    >>> h, cache = rnn_forward(x, h0, Wx, Wh, b, nonlinearity="relu")
    >>> h.shape
    (2, 3, 5)
    """
    _check_nonlinearity(nonlinearity)
    dtype = _float_dtype(x, h0, Wx, Wh, b)
    x, h0, Wx, Wh, b = _as(dtype, x, h0, Wx, Wh, b)
    _check_sequence_args(1, x, h0, Wx, Wh, b=b)
    N, T, _ = x.shape
    H = h0.shape[1]

    h = np.empty((N, T, H), dtype=dtype)
    steps = []
    prev_h = h0
    for t in range(T):
        # [d2l]: H_t = φ(X_t W_xh + H_{t-1} W_hh + b_h)
        next_h, step_cache = rnn_step_forward(x[:, t], prev_h, Wx, Wh, b, nonlinearity)
        h[:, t] = next_h
        steps.append(step_cache)
        prev_h = next_h
    return h, RNNCache(steps=tuple(steps), h0=h0, Wx=Wx, Wh=Wh)


def rnn_backward(dh, cache, dhn=None):
    """Backpropagation through time for a vanilla RNN.

    Parameters
    ----------
    dh : ndarray (N, T, H)
        Upstream gradients of all hidden states ``h``.
    cache : RNNCache
        From :func:`rnn_forward`.
    dhn : ndarray (N, H), optional
        Extra gradient on the final state ``h[:, -1]`` (e.g. from a loss on
        ``h_n``); it is added to ``dh[:, -1]``. None means zero.

    Returns
    -------
    dx : ndarray (N, T, D)
    dh0 : ndarray (N, H)
    dWx : ndarray (D, H)
    dWh : ndarray (H, H)
    db : ndarray (H,)

    Notes
    -----
    [d2l]: ``∂L/∂h_t = dh_t + (gradient carried back from step t+1)``;
    the weight gradients are sums of the per-step gradients. With ``T = 0``
    the final state is ``h0``, so ``dh0 = dhn``.
    """
    Wx, Wh, h0 = cache.Wx, cache.Wh, cache.h0
    dtype = h0.dtype
    N, H = h0.shape
    D = Wx.shape[0]
    T = len(cache.steps)
    _check_grad_args(cache, dh, dhn=dhn)
    (dh,) = _as(dtype, dh)

    dx = np.zeros((N, T, D), dtype=dtype)
    dWx = np.zeros_like(Wx)
    dWh = np.zeros_like(Wh)
    db = np.zeros(H, dtype=dtype)
    # gradient flowing into h_{T-1} from beyond the sequence: dhn
    dcarry_h = np.zeros((N, H), dtype=dtype) if dhn is None else np.array(dhn, dtype=dtype)
    for t in reversed(range(T)):
        # [d2l]: ∂L/∂h_t = W_hhᵀ ∂L/∂h_{t+1} + (upstream gradient of h_t)
        dnext_h = dh[:, t] + dcarry_h
        dx[:, t], dcarry_h, dWx_t, dWh_t, db_t = rnn_step_backward(dnext_h, cache.steps[t])
        # [DL]/[d2l]: the gradient of a shared weight is the sum over steps
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    dh0 = dcarry_h
    return dx, dh0, dWx, dWh, db


# ---------------------------------------------------------------------------
# Output layer and loss
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AffineCache:
    """Values saved by :func:`temporal_affine_forward`.

    Attributes
    ----------
    x : ndarray (N, T, H)
    w : ndarray (H, M)
    """

    x: np.ndarray
    w: np.ndarray


def temporal_affine_forward(x, w, b):
    """Affine output layer applied at every time step.

    Parameters
    ----------
    x : ndarray (N, T, H)
        Hidden states.
    w : ndarray (H, M)
        Weights ([DL]'s ``V``, transposed to the ``x @ w`` layout).
    b : ndarray (M,)
        Bias ([DL]'s ``c``).

    Returns
    -------
    out : ndarray (N, T, M)
        ``x @ w + b``.
    cache : AffineCache
        Values needed by :func:`temporal_affine_backward`.

    Notes
    -----
    [DL]: ``o_t = V h_t + c``, here ``out[:, t] = x[:, t] w + b``.

    Examples
    --------
    >>> out, cache = temporal_affine_forward(np.ones((2, 3, 4)), np.ones((4, 6)), np.zeros(6))
    >>> out.shape
    (2, 3, 6)
    """
    dtype = _float_dtype(x, w, b)
    x, w, b = _as(dtype, x, w, b)
    # [DL]: o_t = V h_t + c                                  (N, T, M)
    out = x @ w + b
    return out, AffineCache(x=x, w=w)


def temporal_affine_backward(dout, cache):
    """Backward pass of :func:`temporal_affine_forward`.

    Parameters
    ----------
    dout : ndarray (N, T, M)
        Upstream gradient of ``out``.
    cache : AffineCache

    Returns
    -------
    dx : ndarray (N, T, H)
    dw : ndarray (H, M)
    db : ndarray (M,)

    Notes
    -----
    ``dx = dout wᵀ``, ``dw = Σ_{N,T} xᵀ dout``, ``db = Σ_{N,T} dout``.
    """
    x, w = cache.x, cache.w
    (dout,) = _as(x.dtype, dout)
    H, M = w.shape
    # [DL]: δ_t gets Vᵀ ∂L/∂o_t                              (N, T, H)
    dx = dout @ w.T
    # [DL]: ∂L/∂V = Σ_t ∂L/∂o_t h_tᵀ                          (H, M)
    dw = x.reshape(-1, H).T @ dout.reshape(-1, M)
    # [DL]: ∂L/∂c = Σ_t ∂L/∂o_t                              (M,)
    db = dout.sum(axis=(0, 1))
    return dx, dw, db


def temporal_softmax_loss(x, y, mask=None):
    """Softmax cross-entropy summed over time steps, averaged over the batch.

    Parameters
    ----------
    x : ndarray (N, T, V)
        Scores (logits) for every class at every step.
    y : ndarray of int (N, T)
        Labels, each in ``[0, V)``.
    mask : ndarray (N, T) of bool or 0/1, optional
        Which positions count towards the loss. None means all of them.

    Returns
    -------
    loss : scalar of x's dtype
        ``-(1/N) Σ_{n,t} mask[n,t] · log softmax(x[n,t])[y[n,t]]``.
    dx : ndarray (N, T, V)
        Gradient of ``loss`` with respect to ``x``.

    Raises
    ------
    ValueError
        If ``y`` or ``mask`` is not ``(N, T)``, or a label is outside ``[0, V)``.

    Notes
    -----
    The sum is divided by the batch size ``N``, *not* by the number of
    masked-in positions (cs231n's convention); a loss per token is
    ``loss * N / mask.sum()``.

    It is computed with the log-sum-exp trick (scores shifted by their
    maximum), so large scores (``~1e4``) give finite values::

        log softmax(x)_k = (x_k - m) - log Σ_j exp(x_j - m),   m = max_j x_j
        dx = mask · (softmax(x) - onehot(y)) / N

    Examples
    --------
    >>> loss, dx = temporal_softmax_loss(np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=int))
    >>> bool(np.isclose(loss, 3 * np.log(4)))
    True
    """
    x = np.asarray(x)
    (x,) = _as(_float_dtype(x), x)
    y = np.asarray(y)
    N, T, V = x.shape
    if y.shape != (N, T):
        raise ValueError(f"y must have shape (N, T) = {(N, T)}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must hold integer labels, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= V):
        raise ValueError(f"labels must lie in [0, {V}), got range [{y.min()}, {y.max()}]")
    if mask is None:
        mask = np.ones((N, T), dtype=x.dtype)
    else:
        mask = np.asarray(mask)
        if mask.shape != (N, T):
            raise ValueError(f"mask must have shape (N, T) = {(N, T)}, got {mask.shape}")
        mask = mask.astype(x.dtype)

    # stable log-softmax: shift each row by its maximum           (N, T, V)
    shifted = x - x.max(axis=-1, keepdims=True)
    log_sum_exp = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    log_probs = shifted - log_sum_exp
    # pick the log-probability of each label                       (N, T)
    log_p_label = np.take_along_axis(log_probs, y[..., None], axis=-1)[..., 0]
    # [DL]: L = Σ_t L_t, L_t = -Σ_i y_i log y'_i; / N (cs231n)
    loss = -(mask * log_p_label).sum() / N

    # [DL]: ∂L_t/∂o_t = y' - y  (softmax minus one-hot)       (N, T, V)
    one_hot = y[..., None] == np.arange(V)
    dx = (np.exp(log_probs) - one_hot) * (mask[..., None] / N)
    return x.dtype.type(loss), dx


# ---------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class GRUStepCache:
    """Values saved by :func:`gru_step_forward` for :func:`gru_step_backward`.

    Attributes
    ----------
    x : ndarray (N, D)
    prev_h : ndarray (N, H)
    Wx : ndarray (D, 3H)
    Wh : ndarray (H, 3H)
    r, z, n : ndarray (N, H)
        Reset gate, update gate and candidate state (after activation).
    hidden_n : ndarray (N, H)
        The hidden term of the candidate: ``h W_hn + b_hn`` with
        ``reset_after=True``, ``(r ⊙ h) W_hn + b_hn`` with ``reset_after=False``.
    reset_h : ndarray (N, H) or None
        ``r ⊙ h`` with ``reset_after=False``; None otherwise.
    reset_after : bool
    """

    x: np.ndarray
    prev_h: np.ndarray
    Wx: np.ndarray
    Wh: np.ndarray
    r: np.ndarray
    z: np.ndarray
    n: np.ndarray
    hidden_n: np.ndarray
    reset_h: np.ndarray | None
    reset_after: bool


@dataclass(frozen=True, eq=False)
class GRUCache:
    """Values saved by :func:`gru_forward` for :func:`gru_backward`.

    Attributes
    ----------
    steps : tuple of GRUStepCache
        One cache per time step (length T).
    h0 : ndarray (N, H)
    Wx : ndarray (D, 3H)
    Wh : ndarray (H, 3H)
    """

    steps: tuple
    h0: np.ndarray
    Wx: np.ndarray
    Wh: np.ndarray


def gru_step_forward(x, prev_h, Wx, Wh, bx, bh, reset_after=True):
    """One time step of a GRU (PyTorch's equations, gates r, z, n).

    Parameters
    ----------
    x : ndarray (N, D)
        Input of this step.
    prev_h : ndarray (N, H)
        Hidden state of the previous step.
    Wx : ndarray (D, 3H)
        Input weights ``[W_ir | W_iz | W_in]`` (PyTorch ``weight_ih.T``).
    Wh : ndarray (H, 3H)
        Hidden weights ``[W_hr | W_hz | W_hn]`` (PyTorch ``weight_hh.T``).
    bx : ndarray (3H,)
        Input bias ``[b_ir | b_iz | b_in]`` (PyTorch ``bias_ih``).
    bh : ndarray (3H,)
        Hidden bias ``[b_hr | b_hz | b_hn]`` (PyTorch ``bias_hh``).
    reset_after : bool, default True
        Where the reset gate is applied in the candidate (see Notes).

    Returns
    -------
    next_h : ndarray (N, H)
    cache : GRUStepCache
        Values needed by :func:`gru_step_backward`.

    Notes
    -----
    ::

        r  = σ(x W_ir + b_ir + h W_hr + b_hr)
        z  = σ(x W_iz + b_iz + h W_hz + b_hz)
        n  = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))   reset_after=True (PyTorch)
        n  = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)   reset_after=False (Cho et al. 2014, Keras v1)
        h' = (1 - z) ⊙ n + z ⊙ h

    [d2l] writes the update as ``H_t = Z ⊙ H_{t-1} + (1 - Z) ⊙ H̃_t``,
    which is the same. ``b_hn`` sits inside the reset product when
    ``reset_after=True``, so it cannot be folded into ``b_in``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> N, D, H = 2, 4, 5
    >>> x, prev_h = rng.standard_normal((N, D)), np.zeros((N, H))
    >>> Wx, Wh = rng.standard_normal((D, 3 * H)), rng.standard_normal((H, 3 * H))
    >>> bx, bh = np.zeros(3 * H), np.zeros(3 * H)
    >>> next_h, cache = gru_step_forward(x, prev_h, Wx, Wh, bx, bh)
    >>> next_h.shape
    (2, 5)
    """
    dtype = _float_dtype(x, prev_h, Wx, Wh, bx, bh)
    x, prev_h, Wx, Wh, bx, bh = _as(dtype, x, prev_h, Wx, Wh, bx, bh)
    reset_after = bool(reset_after)

    # input projections of all three gates                        (N, 3H) = (N, D)(D, 3H)
    ax_r, ax_z, ax_n = _split_gates(x @ Wx + bx, 3)
    Wh_r, Wh_z, Wh_n = _split_gates(Wh, 3)
    bh_r, bh_z, bh_n = _split_gates(bh, 3)

    # [d2l] R_t (torch.nn.GRU): r = σ(x W_ir + b_ir + h W_hr + b_hr)
    r = sigmoid(ax_r + prev_h @ Wh_r + bh_r)
    # [d2l] Z_t (torch.nn.GRU): z = σ(x W_iz + b_iz + h W_hz + b_hz)
    z = sigmoid(ax_z + prev_h @ Wh_z + bh_z)
    if reset_after:
        reset_h = None
        hidden_n = prev_h @ Wh_n + bh_n
        # torch.nn.GRU: n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))
        n = np.tanh(ax_n + r * hidden_n)
    else:
        reset_h = r * prev_h
        hidden_n = reset_h @ Wh_n + bh_n
        # [d2l]: H̃_t = tanh(X_t W_xh + (R_t ⊙ H_{t-1}) W_hh + b_h)
        n = np.tanh(ax_n + hidden_n)
    # [d2l]: H_t = Z_t ⊙ H_{t-1} + (1 - Z_t) ⊙ H̃_t
    next_h = (1 - z) * n + z * prev_h

    cache = GRUStepCache(x=x, prev_h=prev_h, Wx=Wx, Wh=Wh, r=r, z=z, n=n,
                         hidden_n=hidden_n, reset_h=reset_h, reset_after=reset_after)
    return next_h, cache


def gru_step_backward(dnext_h, cache):
    """Backward pass of one GRU step.

    Parameters
    ----------
    dnext_h : ndarray (N, H)
        Gradient of the loss with respect to ``next_h``.
    cache : GRUStepCache
        From :func:`gru_step_forward`.

    Returns
    -------
    dx : ndarray (N, D)
    dprev_h : ndarray (N, H)
    dWx : ndarray (D, 3H)
    dWh : ndarray (H, 3H)
    dbx : ndarray (3H,)
    dbh : ndarray (3H,)

    Notes
    -----
    With ``a_r, a_z, a_n`` the pre-activations of ``r, z, n``::

        dn = dh' ⊙ (1 - z),   dz = dh' ⊙ (h - n),   dh ⊇ dh' ⊙ z
        da_n = dn ⊙ (1 - n²)
        reset_after=True:  dr = da_n ⊙ (h W_hn + b_hn),   d(h W_hn + b_hn) = da_n ⊙ r
        reset_after=False: d(r ⊙ h) = da_n W_hnᵀ,  dr = d(r ⊙ h) ⊙ h,  dh ⊇ d(r ⊙ h) ⊙ r
        da_r = dr ⊙ r (1 - r),   da_z = dz ⊙ z (1 - z)
    """
    x, prev_h, Wx, Wh = cache.x, cache.prev_h, cache.Wx, cache.Wh
    r, z, n, hidden_n = cache.r, cache.z, cache.n, cache.hidden_n
    (dnext_h,) = _as(n.dtype, dnext_h)
    Wh_r, Wh_z, Wh_n = _split_gates(Wh, 3)

    # [d2l]: H_t = Z ⊙ H_{t-1} + (1 - Z) ⊙ H̃_t, differentiated     (N, H)
    dn = dnext_h * (1 - z)
    dz = dnext_h * (prev_h - n)
    dprev_h = dnext_h * z
    # tanh' = 1 - n²                                                   (N, H)
    da_n = dn * (1 - n**2)
    if cache.reset_after:
        # torch.nn.GRU: n = tanh(... + r ⊙ (h W_hn + b_hn))
        dr = da_n * hidden_n
        dhidden_n = da_n * r
        dprev_h += dhidden_n @ Wh_n.T
        dWh_n = prev_h.T @ dhidden_n
    else:
        # [d2l]: H̃_t = tanh(... + (R_t ⊙ H_{t-1}) W_hh + b_h)
        dhidden_n = da_n
        dreset_h = dhidden_n @ Wh_n.T
        dr = dreset_h * prev_h
        dprev_h += dreset_h * r
        dWh_n = cache.reset_h.T @ dhidden_n
    # σ' = σ (1 - σ)                                                   (N, H)
    da_r = dr * r * (1 - r)
    da_z = dz * z * (1 - z)

    # input side: all three gates see x W_i* + b_i*                   (N, 3H)
    dax = np.concatenate([da_r, da_z, da_n], axis=1)
    dx = dax @ Wx.T
    dWx = x.T @ dax
    dbx = dax.sum(axis=0)

    # hidden side: r and z see h W_h* + b_h*; n's hidden term is dhidden_n
    dprev_h += da_r @ Wh_r.T + da_z @ Wh_z.T                                   # (N, H)
    dWh = np.concatenate([prev_h.T @ da_r, prev_h.T @ da_z, dWh_n], axis=1)    # (H, 3H)
    dbh = np.concatenate([da_r.sum(axis=0), da_z.sum(axis=0), dhidden_n.sum(axis=0)])  # (3H,)
    return dx, dprev_h, dWx, dWh, dbx, dbh


def gru_forward(x, h0, Wx, Wh, bx, bh, reset_after=True):
    """Run a GRU over a whole sequence.

    Parameters
    ----------
    x : ndarray (N, T, D)
        Input sequence.
    h0 : ndarray (N, H)
        Initial hidden state.
    Wx : ndarray (D, 3H)
        Input weights, gates ``r, z, n`` (PyTorch ``weight_ih.T``).
    Wh : ndarray (H, 3H)
        Hidden weights, gates ``r, z, n`` (PyTorch ``weight_hh.T``).
    bx : ndarray (3H,)
        Input bias (PyTorch ``bias_ih``).
    bh : ndarray (3H,)
        Hidden bias (PyTorch ``bias_hh``).
    reset_after : bool, default True
        PyTorch's candidate (True) or Cho et al.'s / Keras v1's (False); see
        :func:`gru_step_forward`.

    Returns
    -------
    h : ndarray (N, T, H)
        Hidden states of all steps.
    cache : GRUCache
        Values needed by :func:`gru_backward`.

    Notes
    -----
    Calls :func:`gru_step_forward` for ``t = 0 .. T-1`` with ``h_{-1} = h0``::

        r = σ(x W_ir + b_ir + h W_hr + b_hr)
        z = σ(x W_iz + b_iz + h W_hz + b_hz)
        n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))    reset_after=True
        n = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)    reset_after=False
        h' = (1 - z) ⊙ n + z ⊙ h

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> N, T, D, H = 2, 3, 4, 5
    >>> x, h0 = rng.standard_normal((N, T, D)), np.zeros((N, H))
    >>> Wx, Wh = rng.standard_normal((D, 3 * H)), rng.standard_normal((H, 3 * H))
    >>> h, cache = gru_forward(x, h0, Wx, Wh, np.zeros(3 * H), np.zeros(3 * H))
    >>> h.shape
    (2, 3, 5)
    """
    dtype = _float_dtype(x, h0, Wx, Wh, bx, bh)
    x, h0, Wx, Wh, bx, bh = _as(dtype, x, h0, Wx, Wh, bx, bh)
    _check_sequence_args(3, x, h0, Wx, Wh, bx=bx, bh=bh)
    N, T, _ = x.shape
    H = h0.shape[1]

    h = np.empty((N, T, H), dtype=dtype)
    steps = []
    prev_h = h0
    for t in range(T):
        # [d2l]: H_t = Z_t ⊙ H_{t-1} + (1 - Z_t) ⊙ H̃_t
        next_h, step_cache = gru_step_forward(x[:, t], prev_h, Wx, Wh, bx, bh, reset_after)
        h[:, t] = next_h
        steps.append(step_cache)
        prev_h = next_h
    return h, GRUCache(steps=tuple(steps), h0=h0, Wx=Wx, Wh=Wh)


def gru_backward(dh, cache, dhn=None):
    """Backpropagation through time for a GRU.

    Parameters
    ----------
    dh : ndarray (N, T, H)
        Upstream gradients of all hidden states ``h``.
    cache : GRUCache
        From :func:`gru_forward`.
    dhn : ndarray (N, H), optional
        Extra gradient on the final state ``h[:, -1]``, added to
        ``dh[:, -1]``. None means zero.

    Returns
    -------
    dx : ndarray (N, T, D)
    dh0 : ndarray (N, H)
    dWx : ndarray (D, 3H)
    dWh : ndarray (H, 3H)
    dbx : ndarray (3H,)
    dbh : ndarray (3H,)

    Notes
    -----
    ``∂L/∂h_t = dh_t + (gradient carried back from step t+1)`` ([d2l]);
    weight gradients are sums over steps. With ``T = 0``, ``dh0 = dhn``.
    """
    Wx, Wh, h0 = cache.Wx, cache.Wh, cache.h0
    dtype = h0.dtype
    N, H = h0.shape
    D = Wx.shape[0]
    T = len(cache.steps)
    _check_grad_args(cache, dh, dhn=dhn)
    (dh,) = _as(dtype, dh)

    dx = np.zeros((N, T, D), dtype=dtype)
    dWx = np.zeros_like(Wx)
    dWh = np.zeros_like(Wh)
    dbx = np.zeros(3 * H, dtype=dtype)
    dbh = np.zeros(3 * H, dtype=dtype)
    dcarry_h = np.zeros((N, H), dtype=dtype) if dhn is None else np.array(dhn, dtype=dtype)
    for t in reversed(range(T)):
        # [d2l]: ∂L/∂h_t = (carried from t+1) + (upstream gradient of h_t)
        dnext_h = dh[:, t] + dcarry_h
        dx[:, t], dcarry_h, dWx_t, dWh_t, dbx_t, dbh_t = gru_step_backward(
            dnext_h, cache.steps[t])
        # shared weights: the gradient is the sum over steps
        dWx += dWx_t
        dWh += dWh_t
        dbx += dbx_t
        dbh += dbh_t
    dh0 = dcarry_h
    return dx, dh0, dWx, dWh, dbx, dbh


# ---------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LSTMStepCache:
    """Values saved by :func:`lstm_step_forward` for :func:`lstm_step_backward`.

    Attributes
    ----------
    x : ndarray (N, D)
    prev_h : ndarray (N, H)
    prev_c : ndarray (N, H)
    Wx : ndarray (D, 4H)
    Wh : ndarray (H, 4H)
    i, f, g, o : ndarray (N, H)
        Input, forget, cell-candidate and output gates (after activation).
    tanh_next_c : ndarray (N, H)
        ``tanh(c')``.
    Wr : ndarray (H, P) or None
        The projection (PyTorch ``weight_hr.T``) with ``proj_size = P``.
    """

    x: np.ndarray
    prev_h: np.ndarray
    prev_c: np.ndarray
    Wx: np.ndarray
    Wh: np.ndarray
    i: np.ndarray
    f: np.ndarray
    g: np.ndarray
    o: np.ndarray
    tanh_next_c: np.ndarray
    Wr: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class LSTMCache:
    """Values saved by :func:`lstm_forward` for :func:`lstm_backward`.

    Attributes
    ----------
    steps : tuple of LSTMStepCache
        One cache per time step (length T).
    h0 : ndarray (N, H)
    c0 : ndarray (N, H)
        The initial cell state actually used (zeros if ``c0=None`` was given).
    Wx : ndarray (D, 4H)
    Wh : ndarray (H, 4H), (P, 4H) with a projection
    Wr : ndarray (H, P) or None
    """

    steps: tuple
    h0: np.ndarray
    c0: np.ndarray
    Wx: np.ndarray
    Wh: np.ndarray
    Wr: np.ndarray | None = None


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b, Wr=None):
    """One time step of an LSTM (PyTorch's equations, gates i, f, g, o).

    Parameters
    ----------
    x : ndarray (N, D)
        Input of this step.
    prev_h : ndarray (N, H)
        Hidden state of the previous step.
    prev_c : ndarray (N, H)
        Cell state of the previous step.
    Wx : ndarray (D, 4H)
        Input weights ``[W_ii | W_if | W_ig | W_io]`` (PyTorch ``weight_ih.T``).
    Wh : ndarray (H, 4H)
        Hidden weights ``[W_hi | W_hf | W_hg | W_ho]`` (PyTorch ``weight_hh.T``).
    b : ndarray (4H,)
        Bias, PyTorch's ``bias_ih + bias_hh``.
    Wr : ndarray (H, P), optional
        Projection of the hidden state (PyTorch ``weight_hr.T``, ``proj_size = P``):
        then ``prev_h`` and ``next_h`` are (N, P) and ``Wh`` is (P, 4H).

    Returns
    -------
    next_h : ndarray (N, H) or (N, P)
    next_c : ndarray (N, H)
    cache : LSTMStepCache
        Values needed by :func:`lstm_step_backward`.

    Notes
    -----
    ::

        [a_i, a_f, a_g, a_o] = x Wx + h Wh + b
        i = σ(a_i),  f = σ(a_f),  g = tanh(a_g),  o = σ(a_o)
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')                  (with Wr: h' = (o ⊙ tanh(c')) Wr)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> N, D, H = 2, 4, 5
    >>> x, prev_h, prev_c = rng.standard_normal((N, D)), np.zeros((N, H)), np.zeros((N, H))
    >>> Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    >>> next_h, next_c, cache = lstm_step_forward(x, prev_h, prev_c, Wx, Wh, np.zeros(4 * H))
    >>> next_h.shape, next_c.shape
    ((2, 5), (2, 5))
    """
    dtype = _float_dtype(x, prev_h, prev_c, Wx, Wh, b, *([] if Wr is None else [Wr]))
    x, prev_h, prev_c, Wx, Wh, b = _as(dtype, x, prev_h, prev_c, Wx, Wh, b)
    Wr = None if Wr is None else _as(dtype, Wr)[0]

    # all four pre-activations at once                 (N, 4H) = (N, D)(D, 4H) + (N, H)(H, 4H)
    a_i, a_f, a_g, a_o = _split_gates(x @ Wx + prev_h @ Wh + b, 4)
    # gates I_t, F_t, O_t (torch.nn.LSTM: σ of their blocks)
    i = sigmoid(a_i)
    f = sigmoid(a_f)
    o = sigmoid(a_o)
    # [d2l]: C̃_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)
    g = np.tanh(a_g)
    # [d2l]: C_t = F_t ⊙ C_{t-1} + I_t ⊙ C̃_t
    next_c = f * prev_c + i * g
    # [d2l]: H_t = O_t ⊙ tanh(C_t)
    tanh_next_c = np.tanh(next_c)
    next_h = o * tanh_next_c
    if Wr is not None:
        # PyTorch's proj_size: h' = (o ⊙ tanh(c')) W_hrᵀ       (N, P) = (N, H)(H, P)
        next_h = next_h @ Wr

    cache = LSTMStepCache(x=x, prev_h=prev_h, prev_c=prev_c, Wx=Wx, Wh=Wh,
                          i=i, f=f, g=g, o=o, tanh_next_c=tanh_next_c, Wr=Wr)
    return next_h, next_c, cache


def lstm_step_backward(dnext_h, dnext_c, cache):
    """Backward pass of one LSTM step.

    Parameters
    ----------
    dnext_h : ndarray (N, H)
        Gradient of the loss with respect to ``next_h``.
    dnext_c : ndarray (N, H)
        Gradient of the loss with respect to ``next_c`` (from the next step).
    cache : LSTMStepCache
        From :func:`lstm_step_forward`.

    Returns
    -------
    dx : ndarray (N, D)
    dprev_h : ndarray (N, H)
    dprev_c : ndarray (N, H)
    dWx : ndarray (D, 4H)
    dWh : ndarray (H, 4H)
    db : ndarray (4H,)
    dWr : ndarray (H, P)
        Only with a projection (a 7-tuple then).

    Notes
    -----
    ::

        with Wr: dWr = (o ⊙ tanh(c'))ᵀ dh',  then dh' := dh' Wrᵀ  (the gradient of o ⊙ tanh(c'))
        do = dh' ⊙ tanh(c')
        dc' ⊇ dh' ⊙ o ⊙ (1 - tanh²(c'))        (added to dnext_c)
        di = dc' ⊙ g,  df = dc' ⊙ c,  dg = dc' ⊙ i,  dc = dc' ⊙ f
        da = [di ⊙ i(1-i), df ⊙ f(1-f), dg ⊙ (1-g²), do ⊙ o(1-o)]
        dx = da Wxᵀ,  dh = da Whᵀ,  dWx = xᵀ da,  dWh = hᵀ da,  db = Σ_N da
    """
    x, prev_h, prev_c, Wx, Wh = cache.x, cache.prev_h, cache.prev_c, cache.Wx, cache.Wh
    i, f, g, o, tanh_next_c = cache.i, cache.f, cache.g, cache.o, cache.tanh_next_c
    dnext_h, dnext_c = _as(tanh_next_c.dtype, dnext_h, dnext_c)
    if cache.Wr is not None:
        # h' = m Wr with m = o ⊙ tanh(c'):  dWr = mᵀ dh' (H, P),  dm = dh' Wrᵀ (N, H)
        dWr = (o * tanh_next_c).T @ dnext_h
        dnext_h = dnext_h @ cache.Wr.T

    # [d2l]: H_t = O_t ⊙ tanh(C_t), differentiated                 (N, H)
    do = dnext_h * tanh_next_c
    dc = dnext_c + dnext_h * o * (1 - tanh_next_c**2)
    # [d2l]: C_t = F_t ⊙ C_{t-1} + I_t ⊙ C̃_t, differentiated        (N, H)
    di = dc * g
    df = dc * prev_c
    dg = dc * i
    dprev_c = dc * f
    # σ' = σ (1 - σ), tanh' = 1 - tanh²; gate order i, f, g, o        (N, 4H)
    da = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g**2),
                         do * o * (1 - o)], axis=1)

    # the affine map x Wx + h Wh + b, differentiated
    dx = da @ Wx.T          # (N, D) = (N, 4H)(D, 4H)ᵀ
    dprev_h = da @ Wh.T     # (N, H) = (N, 4H)(H, 4H)ᵀ
    dWx = x.T @ da          # (D, 4H)
    dWh = prev_h.T @ da     # (H, 4H)
    db = da.sum(axis=0)     # (4H,)
    if cache.Wr is not None:
        return dx, dprev_h, dprev_c, dWx, dWh, db, dWr
    return dx, dprev_h, dprev_c, dWx, dWh, db


def lstm_forward(x, h0, Wx, Wh, b, c0=None, Wr=None):
    """Run an LSTM over a whole sequence.

    Parameters
    ----------
    x : ndarray (N, T, D)
        Input sequence.
    h0 : ndarray (N, H)
        Initial hidden state.
    Wx : ndarray (D, 4H)
        Input weights, gates ``i, f, g, o`` (PyTorch ``weight_ih.T``).
    Wh : ndarray (H, 4H)
        Hidden weights, gates ``i, f, g, o`` (PyTorch ``weight_hh.T``).
    b : ndarray (4H,)
        Bias, PyTorch's ``bias_ih + bias_hh``.
    c0 : ndarray (N, H), optional
        Initial cell state; None means zeros.
    Wr : ndarray (H, P), optional
        Projection (PyTorch ``weight_hr.T``, ``proj_size = P``): then ``h0``
        and ``h`` have P features and ``Wh`` is (P, 4H).

    Returns
    -------
    h : ndarray (N, T, H) or (N, T, P)
        Hidden states of all steps.
    c : ndarray (N, T, H)
        Cell states of all steps; ``c[:, -1]`` is the final cell state.
    cache : LSTMCache
        Values needed by :func:`lstm_backward`.

    Notes
    -----
    Calls :func:`lstm_step_forward` for ``t = 0 .. T-1`` with
    ``h_{-1} = h0``, ``c_{-1} = c0``::

        i, f, g, o = σ, σ, tanh, σ of the blocks of x_t Wx + h_{t-1} Wh + b
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(c_t)                (with Wr: h_t = (o ⊙ tanh(c_t)) Wr)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> N, T, D, H = 2, 3, 4, 5
    >>> x, h0 = rng.standard_normal((N, T, D)), np.zeros((N, H))
    >>> Wx, Wh = rng.standard_normal((D, 4 * H)), rng.standard_normal((H, 4 * H))
    >>> h, c, cache = lstm_forward(x, h0, Wx, Wh, np.zeros(4 * H))
    >>> h.shape, c.shape
    ((2, 3, 5), (2, 3, 5))
    """
    arrays = (x, h0, Wx, Wh, b) if c0 is None else (x, h0, Wx, Wh, b, c0)
    dtype = _float_dtype(*arrays)
    x, h0, Wx, Wh, b = _as(dtype, x, h0, Wx, Wh, b)
    _check_sequence_args(4, x, h0, Wx, Wh, None if Wr is None else np.asarray(Wr), b=b,
                         **({} if c0 is None else {"c0": np.asarray(c0)}))
    N, T, _ = x.shape
    H = np.shape(Wh)[1] // 4           # the cell's width (h0's is P with a projection)
    c0 = np.zeros((N, H), dtype=dtype) if c0 is None else np.asarray(c0, dtype=dtype)

    h = np.empty((N, T, h0.shape[1]), dtype=dtype)
    c = np.empty((N, T, H), dtype=dtype)
    steps = []
    prev_h, prev_c = h0, c0
    for t in range(T):
        # [d2l]: C_t = F_t ⊙ C_{t-1} + I_t ⊙ C̃_t;  H_t = O_t ⊙ tanh(C_t)
        next_h, next_c, step_cache = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b, Wr)
        h[:, t] = next_h
        c[:, t] = next_c
        steps.append(step_cache)
        prev_h, prev_c = next_h, next_c
    Wr = None if Wr is None else _as(dtype, Wr)[0]
    return h, c, LSTMCache(steps=tuple(steps), h0=h0, c0=c0, Wx=Wx, Wh=Wh, Wr=Wr)


def lstm_backward(dh, cache, dhn=None, dcn=None):
    """Backpropagation through time for an LSTM.

    Parameters
    ----------
    dh : ndarray (N, T, H)
        Upstream gradients of all hidden states ``h``.
    cache : LSTMCache
        From :func:`lstm_forward`.
    dhn : ndarray (N, H), optional
        Extra gradient on the final hidden state ``h[:, -1]`` (added to
        ``dh[:, -1]``). None means zero.
    dcn : ndarray (N, H), optional
        Gradient on the final cell state ``c[:, -1]``. None means zero.

    Returns
    -------
    dx : ndarray (N, T, D)
    dh0 : ndarray (N, H)
    dc0 : ndarray (N, H)
        Gradient of the initial cell state (returned even if ``c0=None``).
    dWx : ndarray (D, 4H)
    dWh : ndarray (H, 4H)
    db : ndarray (4H,)
    dWr : ndarray (H, P)
        Only with a projection (a 7-tuple then); ``dh``, ``dhn``, ``dh0`` have P features.

    Notes
    -----
    ``∂L/∂h_t = dh_t + (carried from step t+1)``; the cell gradient is only
    carried (``dc_{t-1} = dc_t ⊙ f_t`` plus nothing upstream, except ``dcn``
    at the last step). With ``T = 0``, ``dh0 = dhn`` and ``dc0 = dcn``.
    """
    Wx, Wh, h0 = cache.Wx, cache.Wh, cache.h0
    dtype = h0.dtype
    N, P = h0.shape
    H = Wh.shape[1] // 4
    D = Wx.shape[0]
    T = len(cache.steps)
    _check_grad_args(cache, dh, dhn=dhn, dcn=dcn)
    (dh,) = _as(dtype, dh)

    dx = np.zeros((N, T, D), dtype=dtype)
    dWx = np.zeros_like(Wx)
    dWh = np.zeros_like(Wh)
    db = np.zeros(4 * H, dtype=dtype)
    dWr = None if cache.Wr is None else np.zeros_like(cache.Wr)
    dcarry_h = np.zeros((N, P), dtype=dtype) if dhn is None else np.array(dhn, dtype=dtype)
    dcarry_c = np.zeros((N, H), dtype=dtype) if dcn is None else np.array(dcn, dtype=dtype)
    for t in reversed(range(T)):
        # [d2l]: ∂L/∂h_t = (carried from t+1) + (upstream gradient of h_t)
        dnext_h = dh[:, t] + dcarry_h
        dx[:, t], dcarry_h, dcarry_c, dWx_t, dWh_t, db_t, *dWr_t = lstm_step_backward(
            dnext_h, dcarry_c, cache.steps[t])
        # shared weights: the gradient is the sum over steps
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
        if dWr is not None:
            dWr += dWr_t[0]
    dh0, dc0 = dcarry_h, dcarry_c
    if dWr is not None:
        return dx, dh0, dc0, dWx, dWh, db, dWr
    return dx, dh0, dc0, dWx, dWh, db


# ---------------------------------------------------------------------------
# Layer normalisation (Ba, Kiros & Hinton 2016) and the layer-normalised LSTM
# ---------------------------------------------------------------------------
LN_EPS = 1e-5   # as torch.nn.LayerNorm


class LayerNormCache:
    """What :func:`layer_norm_backward` needs: the normalised values ``xhat``
    (..., G, H), the reciprocal standard deviations ``rstd`` (..., G, 1), the
    gain ``gamma`` (G*H,) and the number of groups ``G``."""

    __slots__ = ("xhat", "rstd", "gamma", "G")

    def __init__(self, xhat, rstd, gamma, G):
        self.xhat, self.rstd, self.gamma, self.G = xhat, rstd, gamma, G


def layer_norm_forward(a, gamma, beta, G=1, eps=LN_EPS):
    r"""Layer normalisation of each group of H features (Ba, Kiros & Hinton 2016, eq. 4).

    Parameters
    ----------
    a : ndarray (..., G*H)
        Pre-activations; each of the G blocks of H features along the last axis is
        normalised on its own (the gate groups of a recurrent layer).
    gamma, beta : ndarray (G*H,)
        Per-unit gain and bias.
    G : int
        Number of groups.
    eps : float
        Added to the variance, as ``torch.nn.LayerNorm`` (1e-5).

    Returns
    -------
    y : ndarray (..., G*H)
        ``y = γ ⊙ (a - μ) / sqrt(σ² + eps) + β`` with μ, σ² the mean and the
        (biased) variance of each group of each row.
    cache : LayerNormCache
    """
    shape = a.shape
    ag = a.reshape(shape[:-1] + (G, shape[-1] // G))
    mu = ag.mean(axis=-1, keepdims=True)
    var = ((ag - mu) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps)
    xhat = (ag - mu) * rstd
    y = xhat.reshape(shape) * gamma + beta
    return y, LayerNormCache(xhat, rstd, gamma, G)


def layer_norm_backward(dy, cache):
    r"""Gradients of :func:`layer_norm_forward`.

    Returns
    -------
    da : ndarray, shape of ``dy``
        Per group, with ``dx̂ = dy ⊙ γ``:
        ``da = (dx̂ - mean(dx̂) - x̂ ⊙ mean(dx̂ ⊙ x̂)) / σ``.
    dgamma, dbeta : ndarray (G*H,)
        ``Σ dy ⊙ x̂`` and ``Σ dy`` over every leading axis.
    """
    xhat, rstd = cache.xhat, cache.rstd
    shape = dy.shape
    dxhat = (dy * cache.gamma).reshape(xhat.shape)
    da = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True)
                 - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    F = shape[-1]
    dgamma = (dy * xhat.reshape(shape)).reshape(-1, F).sum(axis=0)
    dbeta = dy.reshape(-1, F).sum(axis=0)
    return da.reshape(shape), dgamma, dbeta


class LNLSTMCache:
    """What :func:`ln_lstm_backward` needs (named, per sequence): the inputs and
    parameters, ``ln_x`` (the input side's LayerNormCache over all steps), and per
    step ``ln_h``, ``ln_c`` (LayerNormCaches), ``gates`` (N, 4H) activations,
    ``c`` (N, H) the cell states, ``tc`` (N, H) tanh(LN(c))."""

    __slots__ = ("x", "h0", "c0", "Wx", "Wh", "params", "ln_x", "ln_h", "ln_c", "gates",
                 "c", "tc", "h")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def ln_lstm_forward(x, h0, Wx, Wh, b, gamma_ih, beta_ih, gamma_hh, beta_hh, gamma_c,
                    beta_c, c0=None, eps=LN_EPS):
    r"""Run a layer-normalised LSTM over a whole sequence (Ba, Kiros & Hinton 2016, §3.1).

    Parameters
    ----------
    x : ndarray (N, T, D)
    h0 : ndarray (N, H)
    Wx : ndarray (D, 4H)
        PyTorch's ``weight_ih.T``, gates ``i, f, g, o``.
    Wh : ndarray (H, 4H)
        PyTorch's ``weight_hh.T``.
    b : ndarray (4H,)
        ``bias_ih + bias_hh``.
    gamma_ih, beta_ih, gamma_hh, beta_hh : ndarray (4H,)
        Gains and biases of the input and recurrent layer norms (one per unit;
        each of the four gate groups is normalised on its own).
    gamma_c, beta_c : ndarray (H,)
        Gain and bias of the cell state's layer norm.
    c0 : ndarray (N, H), optional (zeros)
    eps : float

    Returns
    -------
    h : ndarray (N, T, H)
    c : ndarray (N, T, H)
        The (un-normalised) cell states carried from step to step.
    cache : LNLSTMCache

    Notes
    -----
    With ``LN_G`` the layer norm of each gate group of H units::

        a   = LN_G(x_t Wx; γ_ih, β_ih) + LN_G(h_{t-1} Wh; γ_hh, β_hh) + b
        i, f, g, o = σ, σ, tanh, σ of the blocks of a
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ tanh(LN(c_t; γ_c, β_c))

    The carried state ``c_t`` is the un-normalised one (Ba et al.; as
    TensorFlow Addons' ``LayerNormLSTMCell``).
    """
    arrays = [x, h0, Wx, Wh, b, gamma_ih, beta_ih, gamma_hh, beta_hh, gamma_c, beta_c]
    dtype = _float_dtype(*(arrays + ([] if c0 is None else [c0])))
    (x, h0, Wx, Wh, b, gamma_ih, beta_ih, gamma_hh, beta_hh, gamma_c,
     beta_c) = _as(dtype, *arrays)
    _check_sequence_args(4, x, h0, Wx, Wh, b=b, gamma_ih=gamma_ih, beta_ih=beta_ih,
                         gamma_hh=gamma_hh, beta_hh=beta_hh)
    N, T, _ = x.shape
    H = Wh.shape[1] // 4
    for name, v in (("gamma_c", gamma_c), ("beta_c", beta_c)):
        if v.shape != (H,):
            raise ValueError(f"{name}: expected shape ({H},), got {v.shape}")
    c0 = np.zeros((N, H), dtype=dtype) if c0 is None else np.asarray(c0, dtype=dtype)
    if c0.shape != (N, H):
        raise ValueError(f"c0: expected shape ({N}, {H}), got {c0.shape}")
    # the input side over all steps at once: LN_G(x Wx)        (N, T, 4H)
    ax, ln_x = layer_norm_forward(x @ Wx, gamma_ih, beta_ih, 4, eps)
    h = np.empty((N, T, H), dtype=dtype)
    c = np.empty((N, T, H), dtype=dtype)
    gates, tcs, ln_h, ln_c = [], [], [], []
    prev_h, prev_c = h0, c0
    for t in range(T):
        ah, lh = layer_norm_forward(prev_h @ Wh, gamma_hh, beta_hh, 4, eps)
        a = ax[:, t] + ah + b
        ai, af, ag, ao = _split_gates(a, 4)
        i, f, g, o = sigmoid(ai), sigmoid(af), np.tanh(ag), sigmoid(ao)
        next_c = f * prev_c + i * g
        yc, lc = layer_norm_forward(next_c, gamma_c, beta_c, 1, eps)
        tc = np.tanh(yc)
        next_h = o * tc
        h[:, t], c[:, t] = next_h, next_c
        gates.append(np.concatenate([i, f, g, o], axis=-1))
        tcs.append(tc)
        ln_h.append(lh)
        ln_c.append(lc)
        prev_h, prev_c = next_h, next_c
    params = dict(b=b, gamma_ih=gamma_ih, beta_ih=beta_ih, gamma_hh=gamma_hh,
                  beta_hh=beta_hh, gamma_c=gamma_c, beta_c=beta_c)
    return h, c, LNLSTMCache(x=x, h0=h0, c0=c0, Wx=Wx, Wh=Wh, params=params, ln_x=ln_x,
                             ln_h=ln_h, ln_c=ln_c, gates=gates, c=c, tc=tcs, h=h)


def _ln_checked_dh(dh, cache, G):
    """An LN backward's upstream ``dh`` as the cache's dtype, checked (N, T, H) (H =
    the cache's Wh columns / G gates); returns (dh, N, T, H)."""
    N, T = cache.x.shape[:2]
    H = cache.Wh.shape[1] // G
    dh = np.asarray(dh, dtype=cache.h0.dtype)
    if dh.shape != (N, T, H):
        raise ValueError(f"dh: expected shape ({N}, {T}, {H}), got {dh.shape}")
    return dh, N, T, H


def _ln_input_side_backward(dA, cache):
    """An LN backward's after-the-loop input side, from dA (N, T, GH) over all steps:
    dZx = LN_G-backward(dA), returns (dx = dZx Wx^T, dWx = Σ x^T dZx, the input bias's
    gradient Σ dA, dγ_ih, dβ_ih)."""
    dzx, dgamma_ih, dbeta_ih = layer_norm_backward(dA, cache.ln_x)
    dx = dzx @ cache.Wx.T
    dWx = np.einsum("ntd,ntg->dg", cache.x, dzx)
    db = dA.reshape(-1, dA.shape[-1]).sum(axis=0)
    return dx, dWx, db, dgamma_ih, dbeta_ih


def ln_lstm_backward(dh, cache, dhn=None, dcn=None):
    r"""Backpropagation through time for :func:`ln_lstm_forward`.

    Parameters
    ----------
    dh : ndarray (N, T, H)
    cache : LNLSTMCache
    dhn, dcn : ndarray (N, H), optional
        Gradients of the final states ``h[:, -1]``, ``c[:, -1]``.

    Returns
    -------
    grads : dict of str -> ndarray
        ``dx`` (N, T, D), ``dh0``, ``dc0`` (N, H), ``dWx`` (D, 4H), ``dWh``
        (H, 4H), ``db`` (4H,), ``dgamma_ih``, ``dbeta_ih``, ``dgamma_hh``,
        ``dbeta_hh`` (4H,), ``dgamma_c``, ``dbeta_c`` (H,).

    Notes
    -----
    Per step, backwards, with ``d = dh_t + carry_h``: ``dy_c = d ⊙ o ⊙ (1 - tanh²)``,
    ``dc = carry_c + LN-backward(dy_c)``, ``dA_t`` the pre-activation gradient as in
    :func:`lstm_step_backward`, ``carry_h = LN_G-backward(dA_t) Wh^T``,
    ``carry_c = dc ⊙ f``; after the loop ``dx = LN_G-backward(dA) Wx^T`` over all steps.
    """
    Wh, h0, c0, p = cache.Wh, cache.h0, cache.c0, cache.params
    dtype = h0.dtype
    dh, N, T, H = _ln_checked_dh(dh, cache, 4)
    carry_h = np.zeros((N, H), dtype=dtype) if dhn is None else np.array(dhn, dtype=dtype)
    carry_c = np.zeros((N, H), dtype=dtype) if dcn is None else np.array(dcn, dtype=dtype)
    dA = np.zeros((N, T, 4 * H), dtype=dtype)
    g = {k: np.zeros_like(v) for k, v in (("dWh", Wh), ("dgamma_hh", p["gamma_hh"]),
                                          ("dbeta_hh", p["beta_hh"]),
                                          ("dgamma_c", p["gamma_c"]),
                                          ("dbeta_c", p["beta_c"]))}
    for t in reversed(range(T)):
        d = dh[:, t] + carry_h
        i, f, gg, o = _split_gates(cache.gates[t], 4)
        tc = cache.tc[t]
        prev_c = cache.c[:, t - 1] if t > 0 else c0
        prev_h = cache.h[:, t - 1] if t > 0 else h0
        dyc = d * o * (1 - tc * tc)
        dcn_t, dgc, dbc = layer_norm_backward(dyc, cache.ln_c[t])
        g["dgamma_c"] += dgc
        g["dbeta_c"] += dbc
        dc = carry_c + dcn_t
        da = np.concatenate([dc * gg * i * (1 - i), dc * prev_c * f * (1 - f),
                             dc * i * (1 - gg * gg), d * tc * o * (1 - o)], axis=-1)
        dA[:, t] = da
        dz, dgh, dbh = layer_norm_backward(da, cache.ln_h[t])
        g["dgamma_hh"] += dgh
        g["dbeta_hh"] += dbh
        g["dWh"] += prev_h.T @ dz
        carry_h = dz @ Wh.T
        carry_c = dc * f
    dx, dWx, db, dgamma_ih, dbeta_ih = _ln_input_side_backward(dA, cache)
    return dict(dx=dx, dh0=carry_h, dc0=carry_c, dWx=dWx, dWh=g["dWh"], db=db,
                dgamma_ih=dgamma_ih, dbeta_ih=dbeta_ih, dgamma_hh=g["dgamma_hh"],
                dbeta_hh=g["dbeta_hh"], dgamma_c=g["dgamma_c"], dbeta_c=g["dbeta_c"])


class LNGRUCache:
    """What :func:`ln_gru_backward` needs (named): the inputs and parameters, ``ln_x``
    (the input side's LayerNormCache over all steps), and per step ``ln_h``
    (LayerNormCache), ``gates`` (N, 3H) the activations r, z, n, ``hn`` (N, H) the
    recurrent n pre-activation ``LN(h W_hn) + b_hn``."""

    __slots__ = ("x", "h0", "Wx", "Wh", "params", "ln_x", "ln_h", "gates", "hn", "h")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


def ln_gru_forward(x, h0, Wx, Wh, bx, bh, gamma_ih, beta_ih, gamma_hh, beta_hh, eps=LN_EPS):
    r"""Run a layer-normalised GRU over a whole sequence (Ba, Kiros & Hinton 2016, §3.1,
    applied to PyTorch's GRU, ``reset_after=True``).

    Parameters
    ----------
    x : ndarray (N, T, D)
    h0 : ndarray (N, H)
    Wx : ndarray (D, 3H)
        PyTorch's ``weight_ih.T``, gates ``r, z, n``.
    Wh : ndarray (H, 3H)
        PyTorch's ``weight_hh.T``.
    bx, bh : ndarray (3H,)
        ``bias_ih``, ``bias_hh``.
    gamma_ih, beta_ih, gamma_hh, beta_hh : ndarray (3H,)
        Gains and biases of the input and recurrent layer norms (each of the three
        gate groups normalised on its own).
    eps : float

    Returns
    -------
    h : ndarray (N, T, H)
    cache : LNGRUCache

    Notes
    -----
    With ``LN_G`` the layer norm of each gate group of H units::

        A = LN_G(x_t Wx; γ_ih, β_ih) + bx,   S = LN_G(h_{t-1} Wh; γ_hh, β_hh) + bh
        r = σ(A_r + S_r),  z = σ(A_z + S_z)
        n = tanh(A_n + r ⊙ S_n)
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
    """
    arrays = [x, h0, Wx, Wh, bx, bh, gamma_ih, beta_ih, gamma_hh, beta_hh]
    dtype = _float_dtype(*arrays)
    x, h0, Wx, Wh, bx, bh, gamma_ih, beta_ih, gamma_hh, beta_hh = _as(dtype, *arrays)
    _check_sequence_args(3, x, h0, Wx, Wh, bx=bx, bh=bh, gamma_ih=gamma_ih, beta_ih=beta_ih,
                         gamma_hh=gamma_hh, beta_hh=beta_hh)
    N, T, _ = x.shape
    H = Wh.shape[1] // 3
    ax, ln_x = layer_norm_forward(x @ Wx, gamma_ih, beta_ih, 3, eps)
    ax = ax + bx
    h = np.empty((N, T, H), dtype=dtype)
    gates, hns, ln_h = [], [], []
    prev_h = h0
    for t in range(T):
        sh, lh = layer_norm_forward(prev_h @ Wh, gamma_hh, beta_hh, 3, eps)
        sh = sh + bh
        a_r, a_z, a_n = _split_gates(ax[:, t], 3)
        s_r, s_z, s_n = _split_gates(sh, 3)
        r, z = sigmoid(a_r + s_r), sigmoid(a_z + s_z)
        n = np.tanh(a_n + r * s_n)
        prev_h = (1 - z) * n + z * prev_h
        h[:, t] = prev_h
        gates.append(np.concatenate([r, z, n], axis=-1))
        hns.append(s_n)
        ln_h.append(lh)
    params = dict(bx=bx, bh=bh, gamma_ih=gamma_ih, beta_ih=beta_ih, gamma_hh=gamma_hh,
                  beta_hh=beta_hh)
    return h, LNGRUCache(x=x, h0=h0, Wx=Wx, Wh=Wh, params=params, ln_x=ln_x, ln_h=ln_h,
                         gates=gates, hn=hns, h=h)


def ln_gru_backward(dh, cache, dhn=None):
    r"""Backpropagation through time for :func:`ln_gru_forward`.

    Returns
    -------
    grads : dict of str -> ndarray
        ``dx`` (N, T, D), ``dh0`` (N, H), ``dWx`` (D, 3H), ``dWh`` (H, 3H), ``dbx``,
        ``dbh``, ``dgamma_ih``, ``dbeta_ih``, ``dgamma_hh``, ``dbeta_hh`` (3H,).

    Notes
    -----
    Per step, backwards, with ``d = dh_t + carry``: ``dA = [dn (1-n²) S_n r(1-r) |
    d (h_prev - n) z(1-z) | d (1-z)(1-n²)]`` (the input side), ``dS`` the same with
    its n block times r (the recurrent side), ``carry = d ⊙ z + LN_G-backward(dS) Wh^T``.
    """
    Wh, h0, p = cache.Wh, cache.h0, cache.params
    dtype = h0.dtype
    dh, N, T, H = _ln_checked_dh(dh, cache, 3)
    carry = np.zeros((N, H), dtype=dtype) if dhn is None else np.array(dhn, dtype=dtype)
    dA = np.zeros((N, T, 3 * H), dtype=dtype)
    dWh, dbh = np.zeros_like(Wh), np.zeros_like(p["bh"])
    dgamma_hh, dbeta_hh = np.zeros_like(p["gamma_hh"]), np.zeros_like(p["beta_hh"])
    for t in reversed(range(T)):
        d = dh[:, t] + carry
        r, z, n = _split_gates(cache.gates[t], 3)
        prev_h = cache.h[:, t - 1] if t > 0 else h0
        dan = d * (1 - z) * (1 - n * n)
        dar = dan * cache.hn[t] * r * (1 - r)
        daz = d * (prev_h - n) * z * (1 - z)
        dA[:, t] = np.concatenate([dar, daz, dan], axis=-1)
        ds = np.concatenate([dar, daz, dan * r], axis=-1)
        dbh += ds.sum(axis=0)
        dzh, dg, db = layer_norm_backward(ds, cache.ln_h[t])
        dgamma_hh += dg
        dbeta_hh += db
        dWh += prev_h.T @ dzh
        carry = d * z + dzh @ Wh.T
    dx, dWx, dbx, dgamma_ih, dbeta_ih = _ln_input_side_backward(dA, cache)
    return dict(dx=dx, dh0=carry, dWx=dWx, dWh=dWh, dbx=dbx, dbh=dbh,
                dgamma_ih=dgamma_ih, dbeta_ih=dbeta_ih, dgamma_hh=dgamma_hh,
                dbeta_hh=dbeta_hh)
