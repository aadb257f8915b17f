"""
Character-level language model
==============================

A GRU language model on this interpreter's own standard-library sources, the
embedded corpus of ``rnncore train`` (no download): truncated BPTT over 16
parallel streams, the hidden state carried from chunk to chunk, forward and
backward written out. This is the loop behind ``rnncore train``, which adds
progress, validation, checkpoints and resumption; here it runs a few hundred
steps of a small model and plots the loss curve.
"""
import time

import matplotlib.pyplot as plt
import numpy as np

import rnncore
from rnncore.charlm import CharLM, Streams, Vocab, generate, stdlib_corpus

# %%
# The data: a few hundred thousand characters of Python, encoded as ids, cut into
# 16 parallel streams read in chunks of 64 steps (``x`` and ``y`` are ``(N, T)``,
# ``y`` is ``x`` shifted by one character).
text = stdlib_corpus(max_chars=300_000).text
vocab = Vocab.from_text(text)
batches = Streams(vocab.encode(text), batch_size=16, seq_len=64)
print(f"{len(text):,} characters, vocabulary of {len(vocab)}, {len(batches)} chunks")

# %%
# The model: embedding -> GRU -> linear read-out (:class:`rnncore.charlm.CharLM`),
# trained with Adam and gradient clipping.
model = CharLM(len(vocab), embed_dim=32, hidden_size=128, cell="gru", seed=0)
optimizer = rnncore.optim.Adam(model, lr=4e-3)

steps, losses, state = 250, [], None
start = time.perf_counter()
for step in range(steps):
    x, y = batches.batch(step % len(batches))          # x, y: (N, T) ids
    model.zero_grad()
    logits, state = model(x, state)                    # (N, T, V); state carried, detached
    loss, dlogits = rnncore.losses.cross_entropy(logits, y)
    model.backward(dlogits)
    rnncore.clip_grad_norm_(model, 5.0)
    optimizer.step()
    losses.append(loss / np.log(2))                    # nats -> bits per character
elapsed = time.perf_counter() - start
print(f"{steps} steps in {elapsed:.1f} s; last loss {np.mean(losses[-20:]):.2f} bits/char")

# %%
# The loss curve, in bits per character (a uniform guess over the vocabulary is
# :math:`\log_2 V` bits).
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(losses, color="0.75", lw=1, label="per step")
smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
ax.plot(np.arange(19, steps), smooth, color="C0", lw=2, label="mean of 20 steps")
ax.axhline(np.log2(len(vocab)), color="C3", ls="--", lw=1, label="uniform guess")
ax.set_xlabel("training step")
ax.set_ylabel("cross-entropy (bits/char)")
ax.set_ylim(1.5, np.log2(len(vocab)) + 0.5)
ax.set_title("GRU(128) char-LM on Python's stdlib")
ax.legend()
fig.tight_layout()

# %%
# A sample after these few steps (``rnncore train``'s 1200 steps of a larger
# model get to ~1.7 bits/char and much more Python-like text).
print(generate(model, vocab, 300, temperature=0.7, prime="def ", seed=0))
