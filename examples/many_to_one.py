"""Many-to-one classification with variable lengths: which module is this line from?

Lines of two standard-library modules of this interpreter (``argparse`` and
``typing``), each line a sequence of characters of its own length, padded into
batches. A GRU reads each line (``lengths=`` stops every sequence at its own
end, so padding never reaches the state or the gradients), ``losses.last_step``
picks each line's final hidden state, and a linear layer classifies it.
Prints the held-out accuracy against the 50% of guessing.
"""
import os
import sysconfig

import numpy as np

import rnncore
from rnncore.losses import cross_entropy, last_step, last_step_backward
from rnncore.nn import Embedding, Linear

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
    if step % 100 == 0:
        print(f"step {step}: loss {loss:.3f}, held-out accuracy {accuracy(split, len(y)):.1%}")
print(f"{len(y) - split} held-out lines of {MODULES[0]}.py / {MODULES[1]}.py: accuracy "
      f"{accuracy(split, len(y)):.1%} (chance: 50.0%)")
