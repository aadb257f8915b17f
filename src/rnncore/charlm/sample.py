"""A trained char-LM on text: sample it (:func:`generate`); score it (:func:`evaluate`).

Sampling draws each character from ``softmax(logits / temperature)`` and feeds
it back, as Karpathy's min-char-rnn ``sample`` does; scoring reads a text as
``N`` streams with the state carried, as in training, and reports bits per
character (Graves 2013).
"""
from __future__ import annotations

import math

import numpy as np

from .. import distributed as dist
from ..losses import cross_entropy
from .data import Streams

__all__ = ["generate", "default_prime", "evaluate"]

_LN2 = math.log(2.0)


def _draw(logits, temperature, rng) -> int:
    """One id from ``softmax(logits / temperature)`` (argmax for temperature 0)."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(z))
    with np.errstate(over="ignore"):
        z = z / temperature
    if not np.isfinite(z.max()):  # a temperature so small the logits overflow: its limit
        return int(np.argmax(logits))
    p = np.exp(z - z.max())
    c = np.cumsum(p)
    return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), z.shape[0] - 1)


def generate(model, vocab, length, temperature=1.0, prime="", seed=None) -> str:
    """Sample ``length`` characters after ``prime``.

    Parameters
    ----------
    model : CharLM
    vocab : Vocab
    length : int
        Characters to generate.
    temperature : float, default 1.0
        Divides the logits: below 1 is more conservative; 0 picks the most
        likely character every time.
    prime : str, default ''
        Text fed first (its characters must be in ``vocab``); an empty prime
        starts from a newline if the vocabulary has one, else from a random
        character.
    seed : int, Generator or None
        Randomness of the draws (same seed, same text).

    Returns
    -------
    str
        ``prime`` followed by the generated characters.

    Raises
    ------
    ValueError
        When ``prime`` has characters outside the vocabulary, ``length`` is not
        an integer >= 0, ``temperature`` is negative or ``seed`` is not a seed.

    Notes
    -----
    A temperature so small that ``logits / temperature`` overflows draws the
    most likely character, the limit of the distribution as the temperature
    goes to 0.
    """
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    try:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"seed: {exc}") from None
    if prime:
        ids = vocab.encode(prime)
    else:
        start = vocab.chars.find("\n")
        ids = np.array([start if start >= 0 else int(rng.integers(len(vocab)))])
    logits, state = model(ids[None, :], None, train=False)
    last = logits[0, -1]
    out = np.empty(int(length), dtype=np.int64)
    x = np.empty((1, 1), dtype=np.int64)
    for i in range(out.shape[0]):
        out[i] = _draw(last, temperature, rng)
        x[0, 0] = out[i]
        logits, state = model(x, state, train=False)
        last = logits[0, 0]
    return prime + vocab.decode(out)


def default_prime(vocab) -> str:
    """``'def '`` when the vocabulary has those characters, else ``''``."""
    return "def " if "def " in vocab else ""


def evaluate(model, ids, batch_size, seq_len, distributed=False) -> float:
    """Bits per character of ``model`` on the text ``ids`` (no training).

    The text is read as ``batch_size`` streams in ``seq_len`` chunks with the
    state carried, as in training; every character but the last ``< N`` is
    predicted once.

    With ``distributed=True`` every rank (of :mod:`rnncore.distributed`) reads
    its contiguous share of the streams and the sums are all-reduced: the same
    result on every rank, equal to the single-process one up to the order of
    the additions. It is then a collective: call it on every rank.
    """
    ids = np.asarray(ids)
    N = max(1, min(int(batch_size), (ids.shape[0] - 1) // 2))
    streams = Streams(ids, N, seq_len, partial=True)
    rank, size = (dist.get_rank(), dist.get_size()) if distributed else (0, 1)
    lo, hi = dist.shard_bounds(N, rank, size)
    total, count, state = 0.0, 0, None
    if hi > lo:  # a rank with no stream (N < size) only joins the all-reduce
        for x, y in streams:
            x, y = dist.shard(x, rank, size), dist.shard(y, rank, size)
            logits, state = model(x, state, train=False)
            loss, _ = cross_entropy(logits, y, reduction="sum")
            total += loss
            count += y.size
    if distributed:
        total, count = dist.allreduce_sum(float(total)), dist.allreduce_sum(int(count))
    return total / count / _LN2
