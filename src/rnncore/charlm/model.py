"""The char-LM network: ``Embedding(V, E)`` -> ``RNN/GRU/LSTM(E, H, L)`` -> ``Linear(H, V)``.

The read-out ``y_t = W_hy h_t + b_y`` at every step, trained with softmax
cross-entropy on the next character, is the character model of Graves (2013,
section 3) and Karpathy's min-char-rnn, with a learned input embedding in place
of a one-hot input.

Shape letters: ``N`` streams (batch), ``T`` steps per chunk, ``V`` vocabulary
size, ``E`` embedding size, ``H`` hidden size, ``L`` layers.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from ..losses import _cross_entropy
from ..models import GRU, LSTM, RNN
from ..module import Module, register_module
from ..nn import Embedding, Linear

__all__ = ["CharLM", "CELLS"]

#: cell name -> model class
CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


def _child_seeds(seed, n):
    """``n`` independent int seeds derived from ``seed`` (Nones for None)."""
    if seed is None:
        return [None] * n
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(n)]


@register_module
class CharLM(Module):
    """Character-level language model: embedding, recurrent layers, linear read-out.

    ``e = Embedding(x)`` (N, T, E); ``h, state = RNN(e, state)`` (N, T, H);
    ``logits = h W^T + b`` (N, T, V) -- the read-out ``y_t = W_hy h_t + b_y`` of
    Karpathy's min-char-rnn at every step; trained with softmax cross-entropy on
    the next character.

    Parameters
    ----------
    vocab_size : int
        ``V``.
    embed_dim : int, default 64
        ``E``.
    hidden_size : int, default 256
        ``H``.
    num_layers : int, default 1
        ``L``.
    cell : {'rnn', 'gru', 'lstm'}, default 'lstm'
    dtype : {np.float32, np.float64}, default np.float32
    seed : int or None
        Seeds the three layers' initialisation (PyTorch's default schemes)
        and the recurrent layers' dropout masks.
    weight_drop, variational_dropout : float, default 0
        AWD-LSTM's regularisers (Merity, Keskar & Socher 2017) on the
        recurrent layers: see :class:`rnncore.LSTM`.
    layer_norm : bool, default False
        Layer-normalised GRU/LSTM (``layer_norm=True`` of the model class);
        not available for ``cell='rnn'``.

    Attributes
    ----------
    embedding : Embedding
    rnn : RNN, GRU or LSTM
        ``batch_first=True``.
    head : Linear
    params, grads : OrderedDict
        The children's arrays under dotted names -- ``embedding.weight``,
        ``rnn.weight_ih_l0`` ..., ``head.weight``, ``head.bias`` -- shared
        with the children, and the names a PyTorch module with attributes
        ``embedding``, ``rnn``, ``head`` gives its ``state_dict``.

    Notes
    -----
    The recurrent state is an array (L, N, H) for ``rnn``/``gru`` and a pair of
    them for ``lstm``. :meth:`backward` treats the state passed to
    :meth:`forward` as a constant (truncated BPTT: no gradient flows into the
    previous chunk).
    """

    def __init__(self, vocab_size, embed_dim=64, hidden_size=256, num_layers=1, cell="lstm",
                 dtype=np.float32, seed=None, weight_drop=0.0, variational_dropout=0.0,
                 layer_norm=False):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        if not isinstance(layer_norm, (bool, np.bool_)):
            raise TypeError(f"layer_norm: expected a bool, got {type(layer_norm).__name__}")
        if layer_norm and cell == "rnn":
            raise ValueError("layer_norm: available for cell='gru' and 'lstm', not 'rnn'")
        self.cell = cell
        self.layer_norm = bool(layer_norm)
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.dtype = np.dtype(dtype)
        self.seed = None if seed is None else int(seed)
        s_emb, s_rnn, s_head = _child_seeds(self.seed, 3)
        self.embedding = Embedding(self.vocab_size, self.embed_dim, dtype=self.dtype, seed=s_emb)
        # layer_norm only when asked: the models without it keep their signature
        ln = {"layer_norm": True} if self.layer_norm else {}
        self.rnn = CELLS[cell](self.embed_dim, self.hidden_size, self.num_layers,
                               batch_first=True, dtype=self.dtype, seed=s_rnn,
                               weight_drop=weight_drop,
                               variational_dropout=variational_dropout, **ln)
        self.head = Linear(self.hidden_size, self.vocab_size, dtype=self.dtype, seed=s_head)
        self.params, self.grads = OrderedDict(), OrderedDict()
        for prefix, child in self.children():
            for k in child.params:
                self.params[f"{prefix}.{k}"] = child.params[k]
                self.grads[f"{prefix}.{k}"] = child.grads[k]

    def children(self):
        """``(name, module)`` pairs, input to output."""
        return [("embedding", self.embedding), ("rnn", self.rnn), ("head", self.head)]

    def forward(self, idx, state=None, train=None):
        """Next-character logits of every position.

        Parameters
        ----------
        idx : int ndarray, shape (N, T)
            Character ids.
        state : ndarray (L, N, H), pair of them (LSTM), or None
            Initial recurrent state (zeros by default).
        train : bool, optional
            Keep activations for :meth:`backward`; by default each child
            follows its mode (``train()`` / ``eval()``).

        Returns
        -------
        logits : ndarray, shape (N, T, V)
        state : the final recurrent state, same structure as ``state``
        """
        e = self.embedding.forward(idx, train=train)             # (N, T, E)
        h, state = self.rnn(e, state, train=train)               # (N, T, H)
        # h is the recurrent model's output, never handed out: Linear need not copy it
        return self.head._forward(h, train=train, private=True), state  # (N, T, V)

    def backward(self, dlogits):
        """Accumulate every parameter gradient from ``dlogits`` (N, T, V).

        Returns None: the inputs are integer ids, and the initial state is
        treated as a constant (truncated BPTT).
        """
        dh = self.head.backward(dlogits)                         # (N, T, H)
        de, _ = self.rnn.backward(dh)                            # (N, T, E)
        self.embedding.backward(de)
        return None

    def loss(self, idx, target, state=None):
        """Training forward + mean cross-entropy + backward.

        Returns
        -------
        loss : float
            Mean cross-entropy in nats per character.
        state : the final recurrent state (to carry into the next chunk)

        Notes
        -----
        When the loss is not finite, no backward is run (gradients unchanged).
        """
        logits, state = self.forward(idx, state, train=True)
        # the logits are this call's own array: their gradient overwrites them
        loss, dlogits = _cross_entropy(logits, target, out=logits)
        if math.isfinite(loss):
            self.backward(dlogits)
        return loss, state

    def get_config(self) -> dict:
        cfg = {"vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
               "hidden_size": self.hidden_size, "num_layers": self.num_layers,
               "cell": self.cell, "dtype": self.dtype.name, "seed": self.seed}
        rnn = self.rnn.get_config()
        for k in ("weight_drop", "variational_dropout"):
            if k in rnn:
                cfg[k] = rnn[k]
        if self.layer_norm:
            cfg["layer_norm"] = True
        return cfg

    def __repr__(self) -> str:
        reg = "".join(f", {k}={v}" for k, v in self.get_config().items()
                      if k in ("weight_drop", "variational_dropout", "layer_norm"))
        return (f"CharLM(V={self.vocab_size}, E={self.embed_dim}, {self.cell.upper()} "
                f"H={self.hidden_size} L={self.num_layers}{reg}, {self.dtype.name}, "
                f"{self.num_parameters():,} parameters)")
