"""A character-level LSTM language model on Python's own standard library, in ~20 lines.

The explicit training loop behind ``rnncore train`` (which adds progress, validation,
checkpoints and resumption): truncated BPTT over 32 parallel streams, the hidden
state carried from chunk to chunk, forward and backward written out.
"""
import numpy as np

import rnncore
from rnncore.charlm import CharLM, Streams, Vocab, generate, stdlib_corpus

text = stdlib_corpus(max_chars=400_000).text          # this interpreter's own sources
vocab = Vocab.from_text(text)
batches = Streams(vocab.encode(text), batch_size=32, seq_len=64)  # (N, T) chunks
model = CharLM(len(vocab), embed_dim=32, hidden_size=128, cell="lstm", seed=0)
optimizer = rnncore.optim.Adam(model, lr=4e-3)
state = None
for step in range(300):
    x, y = batches.batch(step % len(batches))          # x, y: (N, T) ids, y = x shifted
    model.zero_grad()
    logits, state = model(x, state)                    # (N, T, V); state carried, detached
    loss, dlogits = rnncore.losses.cross_entropy(logits, y)
    model.backward(dlogits)
    rnncore.clip_grad_norm_(model, 5.0)
    optimizer.step()
    if step % 50 == 0 or step == 299:
        print(f"step {step:3d}: {loss / np.log(2):.2f} bits/char")
print(generate(model, vocab, 400, temperature=0.7, prime="def ", seed=0))
