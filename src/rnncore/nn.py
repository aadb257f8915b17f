"""Feed-forward building blocks around the recurrent layers.

:class:`Embedding`, :class:`Linear`, :class:`Dropout` and the container
:class:`Sequential`, with PyTorch's parameter names, layouts and
initialisation, and explicit ``forward`` / ``backward``.

Conventions shared by every layer
---------------------------------
- Modes as in PyTorch: a new layer is in training mode; ``eval()`` (or
  ``with rnncore.no_grad():``) makes ``forward`` save nothing and apply no
  dropout. ``forward(x, train=True/False)`` overrides the mode for one call.
  Only a saving forward keeps what ``backward`` needs; any other forward (also
  a failed one) drops anything saved before.
- ``backward(dout)`` returns the gradient w.r.t. the input (``None`` for
  :class:`Embedding`) and *accumulates* parameter gradients into
  ``self.grads`` (call ``zero_grad()`` between steps). Without a preceding
  training-mode forward it raises ``RuntimeError``.
- A layer keeps its dtype (float32 by default, float64 supported); floating
  inputs are cast to it.
- ``seed`` is an int, ``None`` (fresh OS entropy) or a
  ``numpy.random.Generator``; global NumPy random state is never used.
"""
from __future__ import annotations

import math

import numpy as np

from ._bindings import matmul, matmul_tn_add
from ._validation import (CopyBuffer, as_index, as_real, check_bool, check_dtype,
                          check_last_dim, check_probability, owned, positive_int,
                          rng_from_seed)
from .module import Module, check_device, module_registry, register_module

__all__ = ["Embedding", "Linear", "Dropout", "Sequential"]


def _seed_config(seed):
    """JSON form of a seed: ints are kept, Generators are not serialisable."""
    return int(seed) if isinstance(seed, (int, np.integer)) else None


def _require_forward(layer, saved) -> None:
    if saved is None:
        raise RuntimeError(
            f"{type(layer).__name__}.backward called without a preceding training-mode "
            "forward (call forward(x, train=True) or train() the layer first, outside "
            "rnncore.no_grad())"
        )


def _check_dout(dout, shape: tuple, dtype) -> np.ndarray:
    dout = as_real(dout, "dout", dtype)
    if dout.shape != shape:
        raise ValueError(f"dout must have shape {shape} (the forward output), got {dout.shape}")
    return dout


@register_module
class Embedding(Module):
    """A lookup table of ``num_embeddings`` vectors of size ``embedding_dim``.

    ``out[..., :] = weight[idx[...], :]``.

    Parameters
    ----------
    num_embeddings : int
        Vocabulary size ``V``.
    embedding_dim : int
        Vector size ``E``.
    dtype : {np.float32, np.float64}, default np.float32
    seed : int, Generator or None
        Seed of the initialisation and of the dropout masks.
    dropout : float in [0, 1), default 0, keyword-only
        Embedding dropout (Gal & Ghahramani 2016, section 4.2; AWD-LSTM's
        ``embedded_dropout``, Merity et al. 2017, section 4.3): each forward
        that keeps activations (training mode, outside
        :func:`rnncore.no_grad`) drops whole rows of ``weight`` -- every
        occurrence of a dropped word is zero -- and scales the kept rows by
        ``1 / (1 - p)``; one mask per call, reused by :meth:`backward`. Off
        in eval mode.

    Attributes
    ----------
    params["weight"] : ndarray, shape (V, E)
        Initialised from ``N(0, 1)``, as in PyTorch.

    Examples
    --------
    >>> emb = Embedding(10, 4, seed=0)
    >>> emb.forward(np.array([[1, 2, 3]])).shape
    (1, 3, 4)
    """

    #: no embedding dropout (also for layers pickled before the option existed)
    dropout = 0.0

    def __init__(self, num_embeddings, embedding_dim, dtype=np.float32, seed=None, *,
                 device=None, dropout=0.0):
        super().__init__()
        check_device(device)
        self.num_embeddings = positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "embedding_dim")
        self.dtype = check_dtype(dtype, must=True)
        self.dropout = check_probability(dropout, "dropout")
        self.seed = seed
        self.rng = rng_from_seed(seed)
        self._add_param("weight", self.rng.standard_normal(
            (self.num_embeddings, self.embedding_dim)).astype(self.dtype))
        self._idx = self._row_scale = None

    _transient = ("_idx", "_row_scale")

    def _init_transient(self) -> None:
        self._idx = self._row_scale = None

    def extra_repr(self) -> str:
        dt = "" if self.dtype == np.float32 else f", dtype={self.dtype.name}"
        drop = f", dropout={self.dropout}" if self.dropout else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{dt}{drop}"

    def _draw_row_scale(self):
        """(V,) row scales ``M / (1 - p)``, ``M ~ Bernoulli(1 - p)`` per word (one per call)."""
        keep = self.rng.random(self.num_embeddings) >= self.dropout   # P(keep) = 1 - p
        return keep.astype(self.dtype) * self.dtype.type(1.0 / (1.0 - self.dropout))

    def forward(self, idx, train=None):
        """Look up the vectors of ``idx``.

        Parameters
        ----------
        idx : int ndarray, any shape ``S`` (e.g. (N, T))
            Token ids in ``[0, V)``.
        train : bool, optional
            Override the mode for this call (save ``idx`` for :meth:`backward`).

        Returns
        -------
        out : ndarray, shape ``(*S, E)``

        Raises
        ------
        TypeError
            For non-integer ``idx``.
        ValueError
            For ids outside ``[0, V)``.
        """
        self._idx = self._row_scale = None
        idx = as_index(idx, "idx", self.num_embeddings)
        saving = self._mode(train)[1]
        out = self.params["weight"][idx]
        if saving and self.dropout > 0:
            # AWD-LSTM's embedded_dropout: weight * M[:, None] / (1 - p), looked up
            self._row_scale = self._draw_row_scale()
            out *= self._row_scale[idx][..., None]
        self._idx = idx.copy() if saving else None
        return out

    _skips_input_grad = True

    def backward(self, dout, *, input_grad=True):
        """Accumulate ``dweight`` (sparse: only the rows of the ids used).

        Parameters
        ----------
        dout : ndarray, shape ``(*S, E)``
        input_grad : bool, default True
            Accepted for uniformity with the other modules: ids have no gradient.

        Returns
        -------
        None
            Integer ids have no gradient.
        """
        check_bool(input_grad, "input_grad")
        _require_forward(self, self._idx)
        dout = _check_dout(dout, self._idx.shape + (self.embedding_dim,), self.dtype)
        if self._row_scale is not None:   # dropped rows get no gradient, kept ones scaled
            dout = dout * self._row_scale[self._idx][..., None]
        # dweight[idx[j]] += dout[j] for every position j (repeated ids add up):
        # sort the positions by id and sum each id's rows with one reduceat
        # (np.add.at does the same one row at a time: ~7x slower at 3200 x 64)
        idx = self._idx.reshape(-1)
        if idx.size:
            # ids < 2^16 sort as uint16: NumPy's stable sort is then a radix sort
            # (the same order as on int64, ~3x faster at 3200 ids)
            key = idx.astype(np.uint16) if self.num_embeddings <= 1 << 16 else idx
            order = np.argsort(key, kind="stable")
            ids = idx[order]
            starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            self.grads["weight"][ids[starts]] += np.add.reduceat(
                dout.reshape(-1, self.embedding_dim)[order], starts, axis=0)
        return None

    def get_config(self) -> dict:
        cfg = {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
               "dtype": self.dtype.name, "seed": _seed_config(self.seed)}
        if self.dropout:
            cfg["dropout"] = self.dropout
        return cfg


@register_module
class Linear(Module):
    """Affine map over the last axis: ``y = x W^T + b`` (Elman's 1990 output ``y = W_hy h + b_y``).

    Applies over any leading axes: ``x`` of shape ``(..., D)`` is reshaped to
    ``(M, D)`` for a single GEMM.

    Parameters
    ----------
    in_features : int
        ``D``.
    out_features : int
        ``F``.
    bias : bool, default True
    dtype : {np.float32, np.float64}, default np.float32
    seed : int, Generator or None

    Attributes
    ----------
    params["weight"] : ndarray, shape (F, D)
    params["bias"] : ndarray, shape (F,)
        Both initialised from ``U(-1/sqrt(D), 1/sqrt(D))``, as in PyTorch.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, seed=None, *,
                 device=None):
        super().__init__()
        check_device(device)
        self.in_features = positive_int(in_features, "in_features")
        self.out_features = positive_int(out_features, "out_features")
        self.bias = bool(bias)
        self.dtype = check_dtype(dtype, must=True)
        self.seed = seed
        rng = rng_from_seed(seed)
        k = 1.0 / math.sqrt(self.in_features)
        self._add_param("weight", rng.uniform(
            -k, k, (self.out_features, self.in_features)).astype(self.dtype))
        if self.bias:
            self._add_param("bias", rng.uniform(-k, k, self.out_features).astype(self.dtype))
        self._init_transient()

    _transient = ("_x2", "_lead", "_x_copy")

    def _init_transient(self) -> None:
        self._x2 = self._lead = None
        self._x_copy = CopyBuffer()  # where a training forward copies a caller's x

    def extra_repr(self) -> str:
        dt = "" if self.dtype == np.float32 else f", dtype={self.dtype.name}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias}{dt}")

    def forward(self, x, train=None):
        """``y = x W^T + b``.

        Parameters
        ----------
        x : ndarray, shape (..., D)
            Cast to the layer dtype.
        train : bool, optional
            Override the mode for this call.

        Returns
        -------
        y : ndarray, shape (..., F)

        Raises
        ------
        TypeError
            For non-numeric ``x``.
        ValueError
            When the last axis of ``x`` is not ``D``.
        """
        return self._forward(x, train)

    def _forward(self, x, train=None, private=False):
        """:meth:`forward`; ``private=True``: ``x`` is the caller's own array, which
        nobody changes before :meth:`backward` (e.g. a model's intermediate that
        it never hands out), so it is saved without a copy."""
        self._x2 = self._lead = None
        caller = x
        x = as_real(x, "x", self.dtype)
        check_last_dim(x, self.in_features, "x", "in_features")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)                 # (M, D)
        y = matmul(x2, self.params["weight"].T)               # (M, F) = (M, D)(F, D)^T
        if self.bias:
            y += self.params["bias"]
        if self._mode(train)[1]:
            # backward must not see later changes to the caller's x (read-only or not)
            if not private:
                x2 = owned(x2, [caller if isinstance(caller, np.ndarray) else x], self._x_copy)
            self._x2, self._lead = x2, lead
        return y.reshape(lead + (self.out_features,))

    _skips_input_grad = True

    def backward(self, dout, *, input_grad=True):
        """Accumulate ``dweight``/``dbias`` and return ``dx``.

        Parameters
        ----------
        dout : ndarray, shape (..., F)
        input_grad : bool, default True
            False: ``dx`` is not computed and None is returned (an input that
            needs no gradient).

        Returns
        -------
        dx : ndarray, shape (..., D), or None

        Notes
        -----
        ``dW += dy^T x``, ``db += sum_M dy``, ``dx = dy W``.
        """
        input_grad = check_bool(input_grad, "input_grad")
        _require_forward(self, self._x2)
        dout = _check_dout(dout, self._lead + (self.out_features,), self.dtype)
        d2 = dout.reshape(-1, self.out_features)              # (M, F)
        matmul_tn_add(d2, self._x2, self.grads["weight"])      # (F, D) += (M, F)^T (M, D)
        if self.bias:
            self.grads["bias"] += d2.sum(axis=0)
        if not input_grad:
            return None
        dx = matmul(d2, self.params["weight"])                 # (M, D) = (M, F)(F, D)
        return dx.reshape(self._lead + (self.in_features,))

    def get_config(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias, "dtype": self.dtype.name, "seed": _seed_config(self.seed)}


@register_module
class Dropout(Module):
    """Inverted dropout: ``y = x * m / (1 - p)`` with ``m ~ Bernoulli(1 - p)``.

    In training mode each element is zeroed with probability ``p`` and the
    survivors are scaled by ``1 / (1 - p)``; the mask is kept for
    :meth:`backward`. With ``train=False`` it is the identity.

    Parameters
    ----------
    p : float in [0, 1]
        Drop probability (``p = 1`` zeroes everything, as in PyTorch).
    seed : int, Generator or None
        Seed of the layer's own ``numpy.random.Generator``.

    Notes
    -----
    Every training-mode forward draws a new mask, so the layer is random
    across calls; :meth:`reseed` restarts its generator (what
    :func:`rnncore.gradcheck.gradcheck`'s ``before_forward`` hook needs).
    The output keeps the input's floating dtype (integers become float64).
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        p = float(p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p
        self.seed = seed
        self.rng = rng_from_seed(seed)
        self._mask = None

    _transient = ("_mask",)

    def _init_transient(self) -> None:
        self._mask = None

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def reseed(self, seed=None) -> None:
        """Restart the mask generator from ``seed`` (default: the constructor seed)."""
        self.rng = np.random.default_rng(self.seed if seed is None else seed)

    def forward(self, x, train=None):
        """Apply dropout (training mode) or the identity (eval mode).

        Parameters
        ----------
        x : ndarray, any shape

        Returns
        -------
        y : ndarray, same shape as ``x``
        """
        self._mask = None
        x = as_real(x, "x")
        training, saving = self._mode(train)
        if not training:
            return x
        if self.p == 0.0:
            mask = np.ones(x.shape, dtype=x.dtype)
        elif self.p == 1.0:
            mask = np.zeros(x.shape, dtype=x.dtype)
        else:
            keep = self.rng.random(x.shape) >= self.p      # P(keep) = 1 - p
            mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p))
        self._mask = mask if saving else None
        return x * mask

    _skips_input_grad = True

    def backward(self, dout, *, input_grad=True):
        """``dx = dout * mask / (1 - p)`` with the mask of the last forward (None when
        not ``input_grad``)."""
        input_grad = check_bool(input_grad, "input_grad")
        _require_forward(self, self._mask)
        dout = _check_dout(dout, self._mask.shape, self._mask.dtype)
        return dout * self._mask if input_grad else None

    def get_config(self) -> dict:
        return {"p": self.p, "seed": _seed_config(self.seed)}


@register_module
class Sequential(Module):
    """A chain of modules: ``forward`` feeds each output to the next module.

    Parameters
    ----------
    *modules : Module
        Each maps one array to one array (``forward(x)``). A recurrent model
        (:class:`~rnncore.RNN`, ``GRU``, ``LSTM``) returns ``(out, state)``:
        Sequential passes ``out`` on (the final state is kept as
        :attr:`state`, and its initial state is zeros), and its ``backward``
        passes on ``dx`` (``dh0`` is dropped). Cells are refused: a cell is one
        step, write the loop over time yourself. Checked when built.
    layers : list of dict, optional
        Alternative to ``*modules`` used when loading a checkpoint:
        ``[{"class": name, "config": {...}}, ...]`` as returned by
        :meth:`get_config`; each is rebuilt through the module registry.

    Attributes
    ----------
    params, grads : OrderedDict
        The children's arrays under dotted names (``"0.weight"``,
        ``"2.bias"``); they are the *same* array objects as the children's,
        so optimizers and ``zero_grad`` act on the children directly.

    Examples
    --------
    >>> model = Sequential(Embedding(10, 4, seed=0), Linear(4, 10, seed=1))
    >>> list(model.params)
    ['0.weight', '1.weight', '1.bias']
    """

    def __init__(self, *modules, layers=None):
        super().__init__()
        if layers is not None:
            if modules:
                raise TypeError("Sequential takes either modules or layers=, not both")
            modules = tuple(self._build(spec, i) for i, spec in enumerate(layers))
        for i, m in enumerate(modules):
            if not isinstance(m, Module):
                raise TypeError(
                    f"Sequential item {i} must be a Module, got {type(m).__name__}")
            if m._sequential_output is None:
                raise TypeError(
                    f"Sequential item {i}: {type(m).__name__} is a single-step cell, which "
                    "needs its state at every step; use the sequence model (e.g. GRU for "
                    "GRUCell) in Sequential, or write the loop: `for t in range(T): "
                    "h = cell(x[t], h)`")
        self.modules = list(modules)
        #: the final state of the last recurrent member's forward (None if none)
        self.state = None
        for i, m in enumerate(self.modules):
            for k in m.params:
                self.params[f"{i}.{k}"] = m.params[k]
                self.grads[f"{i}.{k}"] = m.grads[k]
        self._trained = False

    @staticmethod
    def _build(spec, i):
        try:
            cls = module_registry[spec["class"]]
            return cls(**spec["config"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"Sequential layers[{i}] cannot be built from {spec!r}: "
                             f"{exc}") from exc

    def __len__(self):
        return len(self.modules)

    def __getitem__(self, i):
        return self.modules[i]

    def __iter__(self):
        return iter(self.modules)

    _transient = ("_trained",)

    def _init_transient(self) -> None:
        self._trained = False

    def named_children(self):
        return [(str(i), m) for i, m in enumerate(self.modules)]

    def forward(self, x, train=None):
        """Run the modules in order; returns the last one's output.

        ``train`` (optional) overrides every member's mode for this call;
        by default each member follows its own mode (``train()``/``eval()``).
        """
        self._trained = False
        kw = {} if train is None else {"train": bool(train)}
        for m in self.modules:
            x = m.forward(x, **kw)
            if m._sequential_output == "pair":
                x, self.state = x
        self._trained = self._mode(train)[1]
        return x

    _skips_input_grad = True

    def backward(self, dout, *, input_grad=True):
        """Run the modules' ``backward`` in reverse; returns the input gradient.

        ``input_grad=False``: None is returned, and the first module is asked for
        none (:class:`Linear`, :class:`Dropout`, a nested ``Sequential`` and the
        recurrent models then skip computing it).
        """
        input_grad = check_bool(input_grad, "input_grad")
        if not self._trained:
            raise RuntimeError(
                "Sequential.backward called without a preceding training-mode forward "
                "(call forward(x, train=True) first)")
        for i in range(len(self.modules) - 1, -1, -1):
            m = self.modules[i]
            skip = i == 0 and not input_grad and m._skips_input_grad
            dout = m.backward(dout, input_grad=False) if skip else m.backward(dout)
            if self.modules[i]._sequential_output == "pair":
                dout = dout[0]  # (dx, dh0): the initial state was zeros
            if dout is None and i > 0:
                raise RuntimeError(
                    f"Sequential: module {i} ({type(self.modules[i]).__name__}) returned no "
                    "input gradient, so it must be the first module")
        return dout if input_grad else None

    def get_config(self) -> dict:
        return {"layers": [{"class": type(m).__name__, "config": m.get_config()}
                           for m in self.modules]}
