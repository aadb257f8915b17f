"""
Many-to-one classification with ``lengths``
===========================================

Which standard-library module is this line from? Lines of ``argparse`` and
``typing`` (this interpreter's own sources), each a character sequence of its
own length, zero-padded into batches. A GRU reads each line; ``lengths=`` stops
every sequence at its own end, so padding never reaches the state or the
gradients. :func:`rnncore.losses.last_step` picks each line's final hidden
state and a linear layer classifies it; the backward pass goes through
:func:`rnncore.losses.last_step_backward`, the GRU and the embedding.
"""
import os
import sysconfig

import matplotlib.pyplot as plt
import numpy as np

import rnncore
from rnncore.losses import cross_entropy, last_step, last_step_backward
from rnncore.nn import Embedding, Linear

# %%
# The data: lines as ``(M, T)`` zero-padded character ids and their lengths.
MODULES, T, N, STEPS = ("argparse", "typing"), 60, 64, 300
rng = np.random.default_rng(0)
lines, labels = [], []
for label, name in enumerate(MODULES):
    with open(os.path.join(sysconfig.get_paths()["stdlib"], name + ".py"), encoding="utf-8") as f:
        found = sorted({s.strip()[:T] for s in f if len(s.strip()) >= 8})
    lines += found
    labels += [label] * len(found)
# equal classes, shuffled, 80% to train, 20% held out
counts = np.bincount(labels)
keep = np.concatenate([rng.permutation(np.flatnonzero(np.array(labels) == c))[:counts.min()]
                       for c in range(2)])
order = rng.permutation(keep)
vocab = sorted(set("".join(lines)))
char_id = {c: i + 1 for i, c in enumerate(vocab)}      # 0 is padding
X = np.zeros((len(order), T), dtype=np.int64)          # (M, T) zero-padded ids
lengths = np.array([len(lines[i]) for i in order])
for row, i in enumerate(order):
    X[row, :lengths[row]] = [char_id[c] for c in lines[i]]
y = np.array(labels)[order]
split = int(0.8 * len(order))

print(f"{len(y)} lines, {split} to train; lengths {lengths.min()}-{lengths.max()}")

# %%
# The model: embedding -> GRU(96) -> the last valid step -> linear.
emb = Embedding(len(vocab) + 1, 32, seed=0)
gru = rnncore.GRU(32, 96, batch_first=True, seed=1)
head = Linear(96, 2, seed=2)
modules = [emb, gru, head]
opts = [rnncore.optim.Adam(m, lr=3e-3) for m in modules]


def predict(x, lens, train):
    out, _ = gru(emb(x, train=train), lengths=lens, train=train)      # (N, T, H)
    return head(last_step(out, lens), train=train)                    # (N, 2)


def accuracy(lo, hi):
    logits = predict(X[lo:hi], lengths[lo:hi], train=False)
    return np.mean(np.argmax(logits, axis=1) == y[lo:hi])


# %%
# Training: the gradient enters the GRU only at each line's last step.
history = []
for step in range(1, STEPS + 1):
    b = rng.integers(0, split, N)
    for m in modules:
        m.zero_grad()
    logits = predict(X[b], lengths[b], train=True)
    loss, dlogits = cross_entropy(logits, y[b])
    dout = last_step_backward(head.backward(dlogits), lengths[b], T)  # (N, T, H)
    dx, _ = gru.backward(dout)
    emb.backward(dx)
    rnncore.clip_grad_norm_([g for m in modules for g in m.grads.values()], 5.0)
    for opt in opts:
        opt.step()
    if step % 20 == 0:
        history.append((step, loss, accuracy(split, len(y))))
    if step % 100 == 0:
        print(f"step {step}: loss {loss:.3f}, held-out accuracy {history[-1][2]:.1%}")
print(f"{len(y) - split} held-out lines of {MODULES[0]}.py / {MODULES[1]}.py: accuracy "
      f"{accuracy(split, len(y)):.1%} (chance: 50.0%)")

# %%
# Training loss and held-out accuracy.
steps_, loss_, acc_ = np.array(history).T
fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
ax[0].plot(steps_, loss_, "o-")
ax[0].set(xlabel="step", ylabel="cross-entropy (nats)", title="training loss (one batch)")
ax[1].plot(steps_, 100 * acc_, "o-", color="C2")
ax[1].axhline(50, color="0.5", ls="--", label="chance")
ax[1].set(xlabel="step", ylabel="accuracy (%)", title="held-out accuracy")
ax[1].legend()
fig.tight_layout()
