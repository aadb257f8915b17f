"""A character-level language model: model, data, sampling and the training loop.

The library half of ``rnncore train`` (the command line in :mod:`rnncore.cli`
only parses arguments, shows progress and writes files):

- :class:`CharLM` -- ``Embedding(V, E)`` -> ``RNN``/``GRU``/``LSTM(E, H, L)``
  -> ``Linear(H, V)``, the seed's ``o_t = V h_t + c`` read out at every step,
  trained with softmax cross-entropy on the next character.
- :class:`Vocab` -- the sorted set of characters of the training text.
- :func:`stdlib_corpus` / :func:`read_texts` -- the embedded default corpus
  (a fixed list of the Python standard library's own ``.py`` sources, read
  from the running interpreter; nothing downloaded or copied) and the user's
  own text files.
- :class:`Streams` -- truncated BPTT batches: ``N`` parallel streams over the
  text, cut into ``T``-step chunks; chunk ``i`` of every stream is batch
  ``i``, so the hidden state carried from one batch to the next continues
  each stream.
- :func:`generate` -- sampling with a temperature and a prime string, seeded.
- :class:`Trainer` -- one training step, validation bits per character, the
  loop with periodic evaluation / samples / checkpoints, and checkpoints that
  resume exactly (model, optimizer state, step, carried hidden state, RNG
  state, loss history); with ``distributed=True``, data-parallel over MPI
  ranks (each rank trains its share of the streams; see :class:`Trainer`).

Shape letters: ``N`` streams (batch), ``T`` steps per chunk, ``V`` vocabulary
size, ``E`` embedding size, ``H`` hidden size, ``L`` layers.

Examples
--------
>>> from rnncore.charlm import CharLM, Vocab, generate
>>> vocab = Vocab.from_text("hello world")
>>> model = CharLM(len(vocab), embed_dim=8, hidden_size=16, cell="gru", seed=0)
>>> logits, state = model(vocab.encode("hello")[None, :], train=False)
>>> logits.shape                                  # (N, T, V)
(1, 5, 8)
>>> len(generate(model, vocab, 20, prime="he", seed=0))
22
"""
from __future__ import annotations

import base64
import hashlib
import math
import os
import sysconfig
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import numpy as np

from . import distributed as dist
from . import io as _io
from .losses import cross_entropy
from .models import GRU, LSTM, RNN
from .module import Module, register_module
from .nn import Embedding, Linear
from .optim import SGD, Adagrad, Adam, AdamW, RMSprop
from .clip import clip_grad_norm_

__all__ = [
    "CharLM", "Vocab", "Corpus", "CorpusError", "NonFiniteLossError", "Streams", "TrainConfig",
    "Trainer", "stdlib_corpus", "read_texts", "corpus_from_record", "generate", "default_prime",
    "evaluate", "plot_history", "build_optimizer", "shard_problem", "load_charlm",
    "DEFAULT_MODULES",
    "DEFAULT_MAX_CHARS", "CELLS", "OPTIMIZERS",
]

#: cell name -> model class
CELLS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}

#: optimizer name -> (class, default learning rate)
OPTIMIZERS = {"adam": (Adam, 4e-3), "adamw": (AdamW, 4e-3), "rmsprop": (RMSprop, 2e-3),
              "adagrad": (Adagrad, 5e-2), "sgd": (SGD, 1.0)}

#: The default corpus: standard-library modules present on every CPython >= 3.9,
#: sorted. Each is read from ``<stdlib>/<a/b>.py`` or ``<stdlib>/<a/b>/__init__.py``
#: (so a module that became a package, like ``zipfile`` in 3.12, is still found);
#: a missing one is skipped.
DEFAULT_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "collections",
    "contextlib", "copy", "csv", "dataclasses", "difflib", "enum", "fnmatch", "fractions",
    "functools", "getopt", "glob", "gzip", "heapq", "json.decoder", "json.encoder",
    "keyword", "linecache", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "posixpath", "pprint", "queue", "random", "shlex", "shutil", "statistics", "string",
    "subprocess", "tempfile", "textwrap", "threading", "tokenize", "traceback", "types",
    "typing", "uuid", "warnings", "weakref", "zipfile",
)

#: Cap on the default corpus, in characters (the last file is cut at a line end).
DEFAULT_MAX_CHARS = 1_500_000

#: Version of the ``extra`` block a :class:`Trainer` writes into checkpoints.
CHECKPOINT_VERSION = 1

_LN2 = math.log(2.0)


class CorpusError(ValueError):
    """A text source that cannot be used (missing, empty, binary, too short)."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a nan/inf loss or gradient norm (nothing was updated)."""

    def __init__(self, step, loss, grad_norm, reason=None):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        reason = reason or (f"non-finite loss ({loss}) at step {step}" if not math.isfinite(loss)
                            else f"non-finite gradient norm ({grad_norm}) at step {step}")
        super().__init__(reason)


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------
class Vocab:
    """The characters a model knows, sorted; ``encode``/``decode`` map to ids.

    Parameters
    ----------
    chars : str
        Distinct characters, in increasing code-point order.
    """

    def __init__(self, chars: str):
        chars = str(chars)
        if not chars:
            raise ValueError("a vocabulary needs at least one character")
        if list(chars) != sorted(set(chars)):
            raise ValueError("vocabulary characters must be distinct and sorted")
        self.chars = chars
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The sorted set of the characters of ``text``."""
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, text) -> bool:
        """Whether every character of ``text`` is in the vocabulary."""
        return all(c in self.chars for c in text)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def encode(self, text: str) -> np.ndarray:
        """Ids of the characters of ``text``, int64 array of shape (len(text),).

        Raises
        ------
        ValueError
            When ``text`` holds characters outside the vocabulary.
        """
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ok = ids < len(self._codes)
        ok[ok] = self._codes[ids[ok]] == codes[ok]
        if not ok.all():
            bad = sorted({chr(c) for c in codes[~ok]})
            shown = "".join(bad[:20])
            raise ValueError(f"{len(bad)} character(s) not in the vocabulary: {shown!r}")
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        """The text of a sequence of ids."""
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64).reshape(-1))


@dataclass
class Corpus:
    """A training text and where it came from.

    Attributes
    ----------
    text : str
    kind : {'stdlib', 'files'}
    sources : list of str
        The files read (absolute paths), in order.
    max_chars : int or None
        The cap applied to the text.
    """

    text: str
    kind: str
    sources: list = field(default_factory=list)
    max_chars: int | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        what = ("Python standard library sources" if self.kind == "stdlib"
                else ", ".join(os.path.basename(s) for s in self.sources[:3])
                + (f" and {len(self.sources) - 3} more" if len(self.sources) > 3 else ""))
        return f"{len(self.text):,} characters from {len(self.sources)} file(s) ({what})"


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _cap(parts: list, max_chars) -> str:
    """Join ``parts`` (newline-separated) and cut at a line end at or below ``max_chars``."""
    text = "".join(p if p.endswith("\n") else p + "\n" for p in parts)
    if max_chars is not None and len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[:cut + 1] if cut > 0 else text[:max_chars]
    return text


def stdlib_corpus(max_chars=DEFAULT_MAX_CHARS, stdlib_dir=None, modules=DEFAULT_MODULES) -> Corpus:
    """The default corpus: the standard library's own sources, read at run time.

    Parameters
    ----------
    max_chars : int or None, default DEFAULT_MAX_CHARS
        Stop reading once this many characters are collected (the text is cut
        at a line end).
    stdlib_dir : str, optional
        Where the sources live (default ``sysconfig.get_paths()['stdlib']``).
    modules : sequence of str, default DEFAULT_MODULES
        Module names, read in sorted order; missing ones are skipped.

    Returns
    -------
    Corpus
        The same text for the same interpreter, every time.

    Raises
    ------
    CorpusError
        When none of the modules is found.
    """
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    parts, sources, total = [], [], 0
    for name in sorted(modules):
        base = os.path.join(root, *name.split("."))
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(path):
                break
        else:
            continue  # not in this Python: skipped
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = _normalise_newlines(f.read())
        except OSError:
            continue
        if not text:
            continue
        parts.append(text)
        sources.append(os.path.abspath(path))
        total += len(text) + 1
        if max_chars is not None and total >= max_chars:
            break
    if not parts:
        raise CorpusError(f"no standard-library sources found under {root!r}; "
                          "give your own text with --text FILE")
    return Corpus(_cap(parts, max_chars), "stdlib", sources, max_chars)


def _is_text_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return False
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise CorpusError(f"cannot read text file {path!r}: {exc.strerror or exc}") from None
    if b"\0" in data[:65536]:
        raise CorpusError(f"{path!r} looks like a binary file, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start})") from None
    return _normalise_newlines(text)


def read_texts(paths, max_chars=None) -> Corpus:
    """The user's text: files, and folders (every UTF-8 text file in them).

    Parameters
    ----------
    paths : sequence of str
        Files are read as UTF-8; a folder contributes all its text files
        (recursively, sorted by path; hidden entries, ``__pycache__`` and
        binary or non-UTF-8 files are skipped).
    max_chars : int, optional
        Cap on the total size.

    Raises
    ------
    CorpusError
        For a missing path, an empty or binary file, a folder without text
        files, or an empty total.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    parts, sources = [], []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames
                                     if not d.startswith(".") and d != "__pycache__")
                found += [os.path.join(dirpath, f) for f in sorted(filenames)
                          if not f.startswith(".")]
            found = [f for f in sorted(found) if _is_text_file(f)]
            texts = [(f, _read_file(f)) for f in found]
            texts = [(f, t) for f, t in texts if t]
            if not texts:
                raise CorpusError(f"no non-empty UTF-8 text files in folder {p!r}")
            for f, t in texts:
                parts.append(t)
                sources.append(os.path.abspath(f))
        elif os.path.exists(p):
            text = _read_file(p)
            if not text:
                raise CorpusError(f"text file {p!r} is empty")
            parts.append(text)
            sources.append(os.path.abspath(p))
        else:
            raise CorpusError(f"text file not found: {p!r}")
        if max_chars is not None and sum(len(t) + 1 for t in parts) >= max_chars:
            break
    if not parts:
        raise CorpusError("no text given")
    return Corpus(_cap(parts, max_chars), "files", sources, max_chars)


class Streams:
    """Truncated-BPTT batches over one text: ``N`` parallel streams, ``T``-step chunks.

    The text ``ids`` (M,) is cut into ``N`` equal streams of ``S = (M - 1) // N``
    characters; batch ``i`` is columns ``[i T, (i + 1) T)`` of every stream, and
    its targets are the same positions shifted by one character. Consecutive
    batches therefore continue each stream, so the hidden state of batch ``i``
    is the right initial state of batch ``i + 1``.

    Parameters
    ----------
    ids : int ndarray, shape (M,)
    batch_size : int
        ``N``.
    seq_len : int
        ``T``.
    partial : bool, default False
        Also yield a last, shorter chunk (used for evaluation).

    Attributes
    ----------
    inputs, targets : int ndarray, shape (N, S)
        Views of ``ids``.
    num_batches : int
        Batches per pass (an epoch): ``S // T``, plus one when ``partial``
        and ``T`` does not divide ``S``.

    Raises
    ------
    CorpusError
        When the text is shorter than one batch (``N T + 1`` characters).
    """

    def __init__(self, ids, batch_size, seq_len, partial=False):
        ids = np.asarray(ids)
        N, T = int(batch_size), int(seq_len)
        S = (ids.shape[0] - 1) // N if ids.shape[0] > 0 else 0
        if S < (1 if partial else T):
            need = N * (1 if partial else T) + 1
            raise CorpusError(
                f"the text has {ids.shape[0]:,} characters, too few for {N} streams of "
                f"{T}-character chunks (at least {need:,} needed); use a longer text or a "
                "smaller --batch-size / --seq-len")
        self.batch_size, self.seq_len, self.stream_len = N, T, S
        self.inputs = ids[:N * S].reshape(N, S)                  # (N, S)
        self.targets = ids[1:N * S + 1].reshape(N, S)            # (N, S), shifted by one
        self.num_batches = S // T + (1 if partial and S % T else 0)

    def __len__(self) -> int:
        return self.num_batches

    def batch(self, i):
        """``(x, y)`` of batch ``i``, int arrays of shape (N, T) (or shorter, last)."""
        lo = i * self.seq_len
        hi = min(lo + self.seq_len, self.stream_len)
        return self.inputs[:, lo:hi], self.targets[:, lo:hi]

    def __iter__(self):
        for i in range(self.num_batches):
            yield self.batch(i)


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------
def _child_seeds(seed, n):
    """``n`` independent int seeds derived from ``seed`` (Nones for None)."""
    if seed is None:
        return [None] * n
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(n)]


@register_module
class CharLM(Module):
    """Character-level language model: embedding, recurrent layers, linear read-out.

    ``e = Embedding(x)`` (N, T, E); ``h, state = RNN(e, state)`` (N, T, H);
    ``logits = h W^T + b`` (N, T, V) -- the seed's ``o_t = V h_t + c`` at every
    step; trained with softmax cross-entropy on the next character.

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
        Seeds the three layers' initialisation (PyTorch's default schemes).

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
                 dtype=np.float32, seed=None):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}, got {cell!r}")
        self.cell = cell
        self.vocab_size = int(vocab_size)
        self.embed_dim = int(embed_dim)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.dtype = np.dtype(dtype)
        self.seed = None if seed is None else int(seed)
        s_emb, s_rnn, s_head = _child_seeds(self.seed, 3)
        self.embedding = Embedding(self.vocab_size, self.embed_dim, dtype=self.dtype, seed=s_emb)
        self.rnn = CELLS[cell](self.embed_dim, self.hidden_size, self.num_layers,
                               batch_first=True, dtype=self.dtype, seed=s_rnn)
        self.head = Linear(self.hidden_size, self.vocab_size, dtype=self.dtype, seed=s_head)
        self.params, self.grads = OrderedDict(), OrderedDict()
        for prefix, child in self.children():
            for k in child.params:
                self.params[f"{prefix}.{k}"] = child.params[k]
                self.grads[f"{prefix}.{k}"] = child.grads[k]

    def children(self):
        """``(name, module)`` pairs, input to output."""
        return [("embedding", self.embedding), ("rnn", self.rnn), ("head", self.head)]

    def forward(self, idx, state=None, train=True):
        """Next-character logits of every position.

        Parameters
        ----------
        idx : int ndarray, shape (N, T)
            Character ids.
        state : ndarray (L, N, H), pair of them (LSTM), or None
            Initial recurrent state (zeros by default).
        train : bool, default True
            Keep activations for :meth:`backward`.

        Returns
        -------
        logits : ndarray, shape (N, T, V)
        state : the final recurrent state, same structure as ``state``
        """
        e = self.embedding.forward(idx, train=train)             # (N, T, E)
        h, state = self.rnn(e, state, train=train)               # (N, T, H)
        return self.head.forward(h, train=train), state          # (N, T, V)

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
        loss, dlogits = cross_entropy(logits, target)
        if math.isfinite(loss):
            self.backward(dlogits)
        return loss, state

    def get_config(self) -> dict:
        return {"vocab_size": self.vocab_size, "embed_dim": self.embed_dim,
                "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "cell": self.cell, "dtype": self.dtype.name, "seed": self.seed}

    def __repr__(self) -> str:
        return (f"CharLM(V={self.vocab_size}, E={self.embed_dim}, {self.cell.upper()} "
                f"H={self.hidden_size} L={self.num_layers}, {self.dtype.name}, "
                f"{self.num_parameters():,} parameters)")


# ---------------------------------------------------------------------------
# Sampling and evaluation
# ---------------------------------------------------------------------------
def _draw(logits, temperature, rng) -> int:
    """One id from ``softmax(logits / temperature)`` (argmax for temperature 0)."""
    z = np.asarray(logits, dtype=np.float64)
    if temperature <= 0:
        return int(np.argmax(z))
    z = z / temperature
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
        When ``prime`` has characters outside the vocabulary.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
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


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints).

    The defaults are those of ``rnncore train``. Measured on a 2-core machine
    with equal compute (one BLAS thread): GRU H=256 and H=192 reach the same
    validation loss (2.02 bits/char after 140 s of CPU) and beat LSTM at
    H=128..256 (whose kernel is slower per step); Adam lr 4e-3 beat 2e-3 by
    0.2 bits/char after 600 steps.
    """

    cell: str = "gru"
    hidden: int = 256
    layers: int = 1
    embed: int = 64
    seq_len: int = 100
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = OPTIMIZERS["adam"][1]
    clip: float = 5.0
    seed: int = 0
    dtype: str = "float32"
    val_fraction: float = 0.05

    #: fields a resumed run must keep (they define the model, the data or the state)
    FIXED = ("cell", "hidden", "layers", "embed", "seq_len", "batch_size", "optimizer", "seed",
             "dtype", "val_fraction")


def shard_problem(batch_size, size, option="batch_size"):
    """Why ``batch_size`` streams cannot be shared equally by ``size`` ranks, or None.

    ``option`` names the setting in the message (the command line passes
    ``'--batch-size'``).
    """
    if int(batch_size) % int(size) == 0:
        return None
    return (f"{option} {batch_size} is not divisible by the {size} ranks: data-parallel "
            f"training gives every rank an equal share of the streams (use a multiple of "
            f"{size}, or another number of ranks)")


def build_optimizer(name, model, lr):
    """The optimizer ``name`` (a key of :data:`OPTIMIZERS`) over ``model``."""
    try:
        cls, _ = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}") from None
    return cls(model, lr=lr)


def _encode_array(a) -> dict:
    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.name, "shape": list(a.shape),
            "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode_array(d) -> np.ndarray:
    buf = base64.b64decode(d["data"].encode("ascii"))
    return np.frombuffer(buf, dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def _encode_state(state):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return [_encode_array(s) for s in state]
    return _encode_array(state)


def _decode_state(obj):
    if obj is None:
        return None
    if isinstance(obj, list):
        return tuple(_decode_array(s) for s in obj)
    return _decode_array(obj)


def _all_finite(state) -> bool:
    if state is None:
        return True
    arrays = state if isinstance(state, (tuple, list)) else (state,)
    return all(np.isfinite(a).all() for a in arrays)


class Trainer:
    """Truncated-BPTT training of a :class:`CharLM`, with exact resumption.

    Parameters
    ----------
    corpus : Corpus
        The text; its last ``config.val_fraction`` is held out for validation.
    config : TrainConfig
    vocab : Vocab, optional
        Default: the characters of ``corpus.text``.
    model, optimizer : optional
        Default: built from ``config`` (a resumed run passes the loaded ones).
    skip_nonfinite : bool, default False
        Skip a step whose loss or gradient norm is nan/inf (counted in
        ``skipped``) instead of raising :class:`NonFiniteLossError`.
    distributed : bool, default False
        Data-parallel training over the ranks of :mod:`rnncore.distributed`
        (``mpirun -n K``; one rank, i.e. plain single-process training,
        without an MPI launcher). See the notes.

    Attributes
    ----------
    step : int
        Optimizer steps taken (skipped steps included), over all sessions.
    state : the recurrent state carried into the next batch (None at an
        epoch start); distributed, that of this rank's streams only.
    train_loss : list of float
        Mean cross-entropy (nats/char) of every step, nan where skipped
        (distributed: the mean over all ranks, i.e. over the global batch).
    val_history : list of [step, bits per char]
    chars_seen, train_seconds : totals over all sessions (training steps only;
        ``chars_seen`` counts the global batch).
    rank, size : int
        This process's rank and the number of ranks (0 and 1 unless distributed).
    allreducer : rnncore.distributed.GradientAllreducer or None
        Distributed: the gradient all-reduce of the model, once a step ran
        (its ``seconds`` and ``nbytes`` measure the communication).

    Notes
    -----
    Distributed training (``distributed=True``) is synchronous data
    parallelism that reproduces single-process training with the same global
    batch: every rank builds the same corpus, vocabulary and streams (pass
    the same ``corpus`` and ``config`` everywhere), and trains on its
    contiguous share of the ``config.batch_size`` streams, which must divide
    evenly (ValueError otherwise), carrying their recurrent state. Rank 0's
    initial parameters are broadcast on construction. Each step computes the
    mean loss of this rank's share, averages the gradients over the ranks
    (:func:`rnncore.distributed.allreduce_gradients`: the gradient of the
    global mean loss), clips that, and takes the same optimizer step
    everywhere. The logged loss is the all-reduced mean; the ranks agree on
    skipping a nan/inf step and, in :meth:`fit`, on stopping. Evaluation is
    split across the ranks; :meth:`fit` samples on rank 0 only. The
    collectives (:meth:`train_step`, :meth:`evaluate`, :meth:`fit`,
    :meth:`save`, :meth:`extra`, construction) must be called by every rank
    in the same order; :meth:`save` writes on rank 0 only, with the carried
    state of all the streams gathered, so a checkpoint is the same as a
    single-process one and resumes with any number of ranks that divides
    the batch size. To resume, every rank reads the same checkpoint
    (:meth:`from_checkpoint` / :meth:`resume` with ``distributed=True``).
    """

    def __init__(self, corpus, config, vocab=None, model=None, optimizer=None,
                 skip_nonfinite=False, distributed=False):
        self.corpus, self.config = corpus, config
        self.distributed = bool(distributed)
        self.rank, self.size = ((dist.get_rank(), dist.get_size()) if self.distributed
                                else (0, 1))
        problem = shard_problem(config.batch_size, self.size)
        if problem:
            raise ValueError(problem)
        self.vocab = vocab or Vocab.from_text(corpus.text)
        ids = self.vocab.encode(corpus.text)
        n_val = int(len(ids) * config.val_fraction)
        n_val = n_val if n_val >= 2 else 0
        self.train_ids = ids[:len(ids) - n_val]
        self.val_ids = ids[len(ids) - n_val:] if n_val else None
        self.streams = Streams(self.train_ids, config.batch_size, config.seq_len)
        self.model = model or CharLM(len(self.vocab), config.embed, config.hidden, config.layers,
                                     config.cell, dtype=config.dtype, seed=config.seed)
        if self.model.vocab_size != len(self.vocab):
            raise ValueError(f"the model has {self.model.vocab_size} characters, the vocabulary "
                             f"{len(self.vocab)}")
        self.optimizer = optimizer or build_optimizer(config.optimizer, self.model, config.lr)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.step = 0
        self.state = None
        self.sample_rng = np.random.default_rng(_child_seeds(config.seed, 4)[3])
        self.train_loss: list = []
        self.val_history: list = []
        self.skipped = 0
        self.chars_seen = 0
        self.train_seconds = 0.0
        self.target_steps = None
        self.corpus_changed = False
        self.allreducer = None
        if self.distributed:
            dist.broadcast_parameters(self.model)  # rank 0's weights everywhere

    @property
    def is_root(self) -> bool:
        """True on the rank that writes files (always, single-process)."""
        return self.rank == 0

    # -- geometry ------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.streams.num_batches

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    # -- one step --------------------------------------------------------------
    def train_step(self, before_update=None) -> float:
        """One optimizer step on the next batch; returns its loss (nats/char).

        Parameters
        ----------
        before_update : callable, optional
            Called once the loss and gradient norm are known to be finite and
            before the parameters change: the trainer is then exactly in its
            state after the previous step, now validated by a finite loss
            (:meth:`fit` saves its periodic checkpoints there).

        Raises
        ------
        NonFiniteLossError
            When the loss or the gradient norm is not finite (unless
            ``skip_nonfinite``); nothing is updated and ``step`` is unchanged.

        Notes
        -----
        Distributed, a collective: this rank's share of the batch, the loss
        and the gradients all-reduced (mean) before clipping and the update;
        the returned loss is the global mean, the same on every rank.
        """
        t0 = time.perf_counter()
        i = self.step % self.steps_per_epoch
        if i == 0:
            self.state = None  # every stream restarts at its beginning
        x, y = (dist.shard(a, self.rank, self.size) for a in self.streams.batch(i))
        model = self.model
        model.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are checked
            loss, state = model.loss(x, y, self.state)
            if self.distributed:
                # the global mean (equal shares), the same on every rank and nan/inf when
                # any rank's is: the ranks agree on a skip without another collective
                loss = dist.allreduce_mean(loss)
            norm = float("nan")
            if math.isfinite(loss):
                if self.size > 1:  # the gradient of the global mean; clipped after
                    self.allreducer = dist.allreduce_gradients(model)
                clip = self.config.clip
                norm = clip_grad_norm_(model, clip if clip and clip > 0 else float("inf"))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            if not self.skip_nonfinite:
                raise NonFiniteLossError(self.step + 1, loss, norm)
            model.zero_grad()
            if not self.params_finite():
                raise NonFiniteLossError(self.step + 1, loss, norm,
                                         f"parameters are no longer finite at step "
                                         f"{self.step + 1}; skipping cannot recover")
            self.skipped += 1
            finite = _all_finite(state)
            if self.distributed:  # every rank restarts its streams, or none
                finite = dist.all_true(finite)
            self.state = state if finite else None
            loss = float("nan")
        else:
            if before_update is not None:
                t1 = time.perf_counter()
                before_update()
                t0 += time.perf_counter() - t1  # not training time
            self.optimizer.step()
            self.state = state
        self.step += 1
        self.train_loss.append(float(loss))
        self.chars_seen += x.size * self.size
        self.train_seconds += time.perf_counter() - t0
        return loss

    def params_finite(self) -> bool:
        """True when every parameter is finite."""
        return all(np.isfinite(p).all() for p in self.model.params.values())

    def evaluate(self):
        """Validation bits per character (None without a validation split)."""
        if self.val_ids is None:
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            bpc = evaluate(self.model, self.val_ids, self.config.batch_size,
                           self.config.seq_len, self.distributed)
        if self.val_history and self.val_history[-1][0] == self.step:
            self.val_history[-1][1] = bpc
        else:
            self.val_history.append([self.step, bpc])
        return bpc

    def sample(self, length=200, temperature=0.8, prime=None) -> str:
        """A sample from the trainer's own seeded generator (saved in checkpoints)."""
        return generate(self.model, self.vocab, length, temperature,
                        default_prime(self.vocab) if prime is None else prime, self.sample_rng)

    # -- the loop ----------------------------------------------------------------
    def fit(self, total_steps, *, eval_every=0, sample_every=0, save_every=0,
            checkpoint=None, sample_length=200, temperature=0.8, on_event=None,
            should_stop=None) -> str:
        """Train until ``step == total_steps`` or ``should_stop()`` is true.

        Parameters
        ----------
        total_steps : int
            Target step count (a resumed run continues up to it).
        eval_every, sample_every, save_every : int
            Periods in steps (0: never) of validation, samples, and saving
            ``checkpoint`` (a path). A periodic checkpoint of step ``k`` is
            written only once step ``k + 1`` has computed a finite loss with
            its parameters, so a saved checkpoint is never one that diverged.
        on_event : callable, optional
            ``on_event(kind, info)`` with kind ``'step'`` (info: step, loss,
            chars_per_s), ``'eval'`` (step, bpc), ``'sample'`` (step, text)
            or ``'save'`` (step, path).
        should_stop : callable, optional
            Polled before every step (e.g. a signal flag). Distributed, the
            ranks stop together when it is true on any of them.

        Returns
        -------
        str
            ``'done'`` or ``'stopped'``. The caller saves the final state.

        Raises
        ------
        NonFiniteLossError
            See :meth:`train_step`; the model is left as it was before that
            step and nothing is saved.
        """
        emit = on_event or (lambda kind, info: None)
        stop = should_stop or (lambda: False)
        chars0, secs0 = self.chars_seen, self.train_seconds
        save_due = False

        def save():
            self.save(checkpoint)
            emit("save", {"step": self.step, "path": checkpoint})

        while self.step < total_steps:
            if dist.any_true(stop()) if self.distributed else stop():
                return "stopped"
            loss = self.train_step(before_update=save if save_due else None)
            save_due = False
            secs = self.train_seconds - secs0
            emit("step", {"step": self.step, "loss": loss,
                          "chars_per_s": (self.chars_seen - chars0) / secs if secs else 0.0})
            last = self.step == total_steps
            if eval_every and (self.step % eval_every == 0 or last):
                bpc = self.evaluate()
                if bpc is not None:
                    emit("eval", {"step": self.step, "bpc": bpc})
            if sample_every and self.step % sample_every == 0 and not last and self.is_root:
                emit("sample", {"step": self.step,
                                "text": self.sample(sample_length, temperature)})
            save_due = bool(checkpoint and save_every and self.step % save_every == 0)
        return "done"

    # -- checkpoints -------------------------------------------------------------
    def extra(self) -> dict:
        """The ``extra`` block of a checkpoint: everything besides weights and optimizer.

        Distributed, ``carry`` is the state of all the streams, gathered from
        every rank (a collective).
        """
        c = self.corpus
        return {
            "charlm_version": CHECKPOINT_VERSION,
            "vocab": self.vocab.chars,
            "step": self.step,
            "train_config": asdict(self.config),
            "corpus": {"kind": c.kind, "sources": c.sources, "max_chars": c.max_chars,
                       "chars": len(c.text), "sha256": c.sha256},
            "carry": _encode_state(self.global_state()),
            "sample_rng": self.sample_rng.bit_generator.state,
            "history": {"train_loss": self.train_loss, "val": self.val_history},
            "skipped": self.skipped,
            "target_steps": self.target_steps,
            "chars_seen": self.chars_seen,
            "train_seconds": self.train_seconds,
        }

    def save(self, path) -> None:
        """Write model, optimizer state and :meth:`extra` to ``path`` (atomically).

        Distributed: call it on every rank; rank 0 alone writes.
        """
        extra = self.extra()
        if self.is_root:
            _io.save(path, self.model, self.optimizer, extra=extra)

    def global_state(self):
        """The carried state of all ``batch_size`` streams (this rank's, single-process).

        Distributed, a collective: every rank's share, gathered in rank order
        along the stream axis.
        """
        if not self.distributed or self.size == 1:
            return self.state
        parts = dist.allgather(self.state)
        if parts[0] is None:  # the ranks agree on None (an epoch start, a reset)
            return None
        if isinstance(parts[0], (tuple, list)):
            return tuple(np.concatenate(p, axis=1) for p in zip(*parts))
        return np.concatenate(parts, axis=1)

    def _local_state(self, state):
        """This rank's streams of a global carried state ``(L, N, H)`` (or a pair)."""
        if state is None or self.size == 1:
            return state
        if isinstance(state, (tuple, list)):
            return tuple(self._local_state(s) for s in state)
        return np.ascontiguousarray(dist.shard(state, self.rank, self.size, axis=1))

    @classmethod
    def from_checkpoint(cls, path, corpus=None, lr=None, clip=None, skip_nonfinite=False,
                        distributed=False):
        """Rebuild a trainer from :meth:`save`'s file, exactly where it stopped.

        Parameters
        ----------
        path : str
        corpus : Corpus, optional
            Default: re-read the sources recorded in the checkpoint.
        lr, clip : float, optional
            New values for the rest of the run.
        skip_nonfinite, distributed : bool
            As for :class:`Trainer`; distributed, every rank reads ``path``
            and keeps its share of the carried state.

        Raises
        ------
        FileNotFoundError, ValueError
            For a missing or unreadable checkpoint, or one not written by a
            Trainer; CorpusError when the text cannot be read or no longer
            fits the vocabulary.
        """
        return cls.resume(load_charlm(path, need_training_state=True), corpus, lr, clip,
                          skip_nonfinite, distributed)

    @classmethod
    def resume(cls, loaded, corpus=None, lr=None, clip=None, skip_nonfinite=False,
               distributed=False):
        """:meth:`from_checkpoint` for an already loaded ``(model, optimizer_state, extra)``."""
        model, opt_state, extra = loaded
        config = TrainConfig(**extra["train_config"])
        if lr is not None:
            config.lr = float(lr)
        if clip is not None:
            config.clip = float(clip)
        if corpus is None:
            corpus = corpus_from_record(extra["corpus"])
        vocab = Vocab(extra["vocab"])
        unknown = set(corpus.text) - set(vocab.chars)
        if unknown:
            raise CorpusError(f"the text has characters the checkpoint's vocabulary lacks "
                              f"({''.join(sorted(unknown))[:20]!r}); train a new model on it")
        optimizer = build_optimizer(config.optimizer, model, config.lr)
        optimizer.load_state_dict(opt_state)
        optimizer.lr = config.lr
        self = cls(corpus, config, vocab=vocab, model=model, optimizer=optimizer,
                   skip_nonfinite=skip_nonfinite, distributed=distributed)
        self.step = int(extra["step"])
        self.state = self._local_state(_decode_state(extra["carry"]))
        self.sample_rng.bit_generator.state = extra["sample_rng"]
        self.train_loss = [float(v) for v in extra["history"]["train_loss"]]
        self.val_history = [[int(s), float(b)] for s, b in extra["history"]["val"]]
        self.skipped = int(extra.get("skipped", 0))
        self.target_steps = extra.get("target_steps")
        self.chars_seen = int(extra.get("chars_seen", 0))
        self.train_seconds = float(extra.get("train_seconds", 0.0))
        self.corpus_changed = corpus.sha256 != extra["corpus"]["sha256"]
        return self


def corpus_from_record(record) -> Corpus:
    """Re-read the corpus a checkpoint records (``extra['corpus']``)."""
    if record["kind"] == "stdlib":
        return stdlib_corpus(record.get("max_chars"))
    return read_texts(record["sources"], record.get("max_chars"))


def load_charlm(path, need_training_state=False):
    """Load a CharLM checkpoint: ``(model, optimizer_state, extra)``.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When it is not a readable rnncore checkpoint, or not one of a
        :class:`CharLM` (with a vocabulary; and, with
        ``need_training_state``, the training state to resume).
    """
    ck = _io.load_checkpoint(path)
    model, extra = ck["model"], ck["extra"]
    if not isinstance(model, CharLM):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(model).__name__}, not a CharLM")
    if not isinstance(extra, dict) or not isinstance(extra.get("vocab"), str):
        raise ValueError(f"{os.fspath(path)!r} has no character vocabulary")
    if len(extra["vocab"]) != model.vocab_size:
        raise ValueError(f"{os.fspath(path)!r}: vocabulary of {len(extra['vocab'])} characters "
                         f"for a model of {model.vocab_size}")
    if need_training_state:
        missing = [k for k in ("step", "train_config", "corpus", "carry", "sample_rng",
                               "history") if k not in extra]
        if missing or ck["optimizer_state"] is None:
            raise ValueError(f"{os.fspath(path)!r} cannot be resumed: it lacks the training "
                             f"state ({', '.join(missing) or 'optimizer'})")
        if extra.get("charlm_version", 0) > CHECKPOINT_VERSION:
            raise ValueError(f"{os.fspath(path)!r} was written by a newer rnncore")
    return model, ck["optimizer_state"], extra


# ---------------------------------------------------------------------------
# The loss plot
# ---------------------------------------------------------------------------
def plot_history(train_loss, val_history, path, title="") -> bool:
    """Train and validation loss (bits/char) against the step, as an image.

    Parameters
    ----------
    train_loss : sequence of float
        Per-step mean cross-entropy in nats (nan entries are skipped steps).
    val_history : sequence of (step, bits per char)
    path : str
        Output file (PNG by its suffix).
    title : str

    Returns
    -------
    bool
        False when matplotlib is not installed (nothing written).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    bits = np.asarray(train_loss, dtype=np.float64) / _LN2
    steps = np.arange(1, bits.shape[0] + 1)
    fig = Figure(figsize=(7, 4.2), dpi=110)
    FigureCanvasAgg(fig)  # the Agg canvas, without pyplot's global state
    ax = fig.add_subplot(1, 1, 1)
    if bits.size:
        ax.plot(steps, bits, color="tab:blue", alpha=0.25, linewidth=0.8)
        ok = np.isfinite(bits)
        if ok.sum() > 1:  # trailing mean over a window of ~1/40 of the run
            w = int(min(50, max(2, ok.sum() // 40)))
            c = np.concatenate([[0.0], np.cumsum(bits[ok])])
            k = np.arange(1, c.shape[0])
            mean = (c[k] - c[np.maximum(k - w, 0)]) / np.minimum(k, w)
            ax.plot(steps[ok], mean, color="tab:blue", linewidth=1.6,
                    label=f"train (mean of {w} steps)")
    if len(val_history):
        v = np.asarray(val_history, dtype=np.float64)
        ax.plot(v[:, 0], v[:, 1], "o-", color="tab:orange", linewidth=1.6, markersize=4,
                label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True
