"""rnncore's char-LM written in PyTorch, and its training step, for the bench scripts.

``Embedding(V, E) -> nn.RNN/GRU/LSTM(E, H, L, batch_first=True) -> Linear(H, V)``
with the attribute names ``embedding``, ``rnn``, ``head`` of
:class:`rnncore.charlm.CharLM`, so a CharLM's ``params`` load into it by name.
:class:`TorchCharLMTrainer` takes the steps of :meth:`rnncore.charlm.Trainer.train_step`
in PyTorch: the same ``Streams`` batches in the same order (state carried and
detached, reset at every epoch start), mean cross-entropy, global-norm
clipping, then the optimizer step. Used by ``charlm_vs_torch.py`` and
``charlm_quality.py``.
"""
from __future__ import annotations

from rnncore.charlm import Streams

TORCH_CELLS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def torch_charlm(torch, rc_model):
    """A PyTorch module with ``rc_model``'s (a CharLM) architecture and current weights."""
    nn = torch.nn
    cls = getattr(nn, TORCH_CELLS[rc_model.cell])
    V, E, H, L = (rc_model.vocab_size, rc_model.embed_dim, rc_model.hidden_size,
                  rc_model.num_layers)

    class TorchCharLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(V, E)
            self.rnn = cls(E, H, L, batch_first=True)
            self.head = nn.Linear(H, V)

        def forward(self, x, state=None):
            h, state = self.rnn(self.embedding(x), state)
            return self.head(h), state

    model = TorchCharLM()
    # the same initial weights: rnncore's parameter names are PyTorch's
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in rc_model.params.items()})
    return model


class TorchCharLMTrainer:
    """Adam + clipping steps of a :func:`torch_charlm` model over ``Streams(train_ids, N, T)``.

    Parameters
    ----------
    torch : the torch module
    model : torch.nn.Module from :func:`torch_charlm`
    train_ids : int ndarray (M,)
        The training text, as :class:`rnncore.charlm.Trainer` holds it.
    batch_size, seq_len : int
        ``N`` and ``T``.
    lr, clip : float
        Adam's learning rate; the global gradient-norm bound (<= 0: none).
    """

    def __init__(self, torch, model, train_ids, batch_size, seq_len, lr, clip):
        self.torch, self.model, self.clip = torch, model, clip
        self.streams = Streams(train_ids, batch_size, seq_len)
        self.X = torch.from_numpy(self.streams.inputs)
        self.Y = torch.from_numpy(self.streams.targets)
        self.opt = torch.optim.Adam(model.parameters(), lr=lr)
        self.step, self.state = 0, None

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns its loss (nats/char)."""
        torch, model = self.torch, self.model
        model.train()
        i = self.step % self.streams.num_batches
        if i == 0:
            self.state = None
        lo, T = i * self.streams.seq_len, self.streams.seq_len
        x, y = self.X[:, lo:lo + T], self.Y[:, lo:lo + T]
        self.opt.zero_grad()
        logits, state = model(x, self.state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        loss.backward()
        if self.clip and self.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
        self.opt.step()
        self.state = (tuple(s.detach() for s in state) if isinstance(state, tuple)
                      else state.detach())
        self.step += 1
        return loss.item()
