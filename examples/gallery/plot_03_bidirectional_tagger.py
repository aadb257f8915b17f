r"""
Bidirectional tagger (many-to-many)
===================================

A tag for every step that depends on both sides: the input is a random string
of the symbols 1-5 and the tag of position :math:`t` is the larger of its two
neighbours, :math:`\max(x_{t-1}, x_{t+1})`. A one-directional GRU sees only the
past and must guess :math:`x_{t+1}`; a bidirectional GRU (``bidirectional=True``,
``merge_mode="concat"``) sees both sides.
Sequences have different lengths (``lengths=``), and the loss ignores the
padding through ``mask``.
"""
import matplotlib.pyplot as plt
import numpy as np

import rnncore
from rnncore.losses import cross_entropy
from rnncore.nn import Embedding, Linear

V, T, N, H, STEPS = 5, 30, 32, 48, 300
rng = np.random.default_rng(0)


def make_batch(n):
    """ids (n, T) zero-padded (0 = padding), tags (n, T), lengths (n,)."""
    lengths = rng.integers(10, T + 1, n)
    ids = rng.integers(1, V + 1, (n, T))
    ids[np.arange(T) >= lengths[:, None]] = 0
    tags = np.zeros((n, T), dtype=np.int64)
    tags[:, 1:-1] = np.maximum(ids[:, :-2], ids[:, 2:]) - 1   # max(x[t-1], x[t+1]), 0..V-1
    valid = (np.arange(T) >= 1) & (np.arange(T) < lengths[:, None] - 1)
    return ids, tags, lengths, valid


test = make_batch(512)

# %%
# Two taggers: embedding -> GRU (one or two directions) -> linear per step.


def train(bidirectional):
    emb = Embedding(V + 1, 16, seed=0)
    gru = rnncore.GRU(16, H, batch_first=True, bidirectional=bidirectional, seed=1)
    head = Linear(2 * H if bidirectional else H, V, seed=2)
    modules = [emb, gru, head]
    opt = rnncore.optim.Adam(modules, lr=1e-2)

    def tag(ids, lengths, train):
        out, _ = gru(emb(ids, train=train), lengths=lengths, train=train)  # (N, T, H or 2H)
        return head(out, train=train)                                      # (N, T, V)

    history = []
    for step in range(1, STEPS + 1):
        ids, tags, lengths, valid = make_batch(N)
        opt.zero_grad()
        logits = tag(ids, lengths, train=True)
        loss, dlogits = cross_entropy(logits, tags, mask=valid)  # padding and the ends ignored
        dx, _ = gru.backward(head.backward(dlogits))
        emb.backward(dx)
        rnncore.clip_grad_norm_(modules, 5.0)
        opt.step()
        if step % 25 == 0:
            ids, tags, lengths, valid = test
            pred = tag(ids, lengths, train=False).argmax(axis=2)
            history.append((step, np.mean(pred[valid] == tags[valid])))
    return np.array(history)


curves = {"GRU, one direction": train(False), "GRU, bidirectional": train(True)}
for name, h in curves.items():
    print(f"{name}: held-out accuracy per step {h[-1, 1]:.1%}")
base = np.bincount(test[1][test[3]]).max() / test[3].sum()
print(f"always the most frequent tag: {base:.1%}")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, h in curves.items():
    ax.plot(h[:, 0], 100 * h[:, 1], "o-", label=name)
ax.axhline(100 * base, color="0.5", ls="--", label="most frequent tag")
ax.set_xlabel("training step")
ax.set_ylabel("held-out accuracy per tag (%)")
ax.set_title("Tag t = max(x[t-1], x[t+1])")
ax.legend()
fig.tight_layout()

# %%
# The best a one-directional tagger can do is guess :math:`x_{t-1}` itself,
# right with probability :math:`x_{t-1}/5`: 60 % on average, where it ends; the
# bidirectional one reads :math:`x_{t+1}` from the backward direction and gets
# every tag right. ``h_n`` of the bidirectional layer keeps the two directions
# apart (``h_n[0]`` forward, ``h_n[1]`` backward); ``out`` concatenates them.
