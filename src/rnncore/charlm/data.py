"""The char-LM's text: corpus reading, the vocabulary, and truncated-BPTT streams.

- :func:`stdlib_corpus` / :func:`read_texts` -- the embedded default corpus
  (a fixed list of the Python standard library's own ``.py`` sources, read
  from the running interpreter; nothing downloaded or copied) and the user's
  own text files; :func:`corpus_from_record` re-reads what a checkpoint records.
- :class:`Vocab` -- the sorted set of characters of the training text.
- :class:`Streams` -- ``N`` parallel streams over the text, cut into
  ``T``-step chunks; chunk ``i`` of every stream is batch ``i``, so the hidden
  state carried from one batch to the next continues each stream (the
  truncated BPTT of Karpathy's min-char-rnn, batched).
"""
from __future__ import annotations

import codecs
import hashlib
import os
import stat
import sysconfig
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Vocab", "Corpus", "CorpusError", "Streams", "stdlib_corpus", "read_texts",
           "corpus_from_record", "DEFAULT_MODULES", "DEFAULT_MAX_CHARS"]

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


class CorpusError(ValueError):
    """A text source that cannot be used (missing, empty, binary, too short)."""


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


def _is_regular(path: str) -> bool:
    """A regular file (after symlinks): never a FIFO, device or socket, which could block
    or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _read_file(path: str, max_chars=None) -> str:
    """The UTF-8 text of the regular file ``path``: its first ``max_chars`` characters at most
    (so at most ``4 max_chars + 4`` bytes are read)."""
    if not _is_regular(path):
        raise CorpusError(f"{path!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read() if max_chars is None else f.read(4 * max_chars + 4)
            more = max_chars is not None and bool(f.read(1))
    except OSError as exc:
        raise CorpusError(f"cannot read text file {path!r}: {exc.strerror or exc}") from None
    if b"\0" in data[:65536]:
        raise CorpusError(f"{path!r} looks like a binary file, not text")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:  # a cut file may end inside a character: keep only whole characters
        text = decoder.decode(data, final=not more)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path!r} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                          f"offset {exc.start})") from None
    text = _normalise_newlines(text)
    return text if max_chars is None else text[:max_chars]


def _folder_texts(folder: str, max_chars) -> list:
    """``[(path, text)]`` of the non-empty UTF-8 regular files in ``folder`` (recursively,
    sorted; hidden entries and ``__pycache__`` skipped), until ``max_chars`` are read."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    texts, total = [], 0
    for f in sorted(found):
        if not _is_regular(f):
            continue
        try:
            t = _read_file(f, None if max_chars is None else max_chars - total)
        except CorpusError:  # binary or not UTF-8
            continue
        if t:
            texts.append((f, t))
            total += len(t) + 1
        if max_chars is not None and total >= max_chars:
            break
    return texts


def read_texts(paths, max_chars=None) -> Corpus:
    """The user's text: files, and folders (every UTF-8 text file in them).

    Parameters
    ----------
    paths : sequence of str
        Files are read as UTF-8; a folder contributes all its text files
        (recursively, sorted by path; hidden entries, ``__pycache__`` and
        binary or non-UTF-8 files are skipped). Only regular files are read
        (a FIFO, device or socket given as a file is refused, in a folder
        skipped), so reading cannot block or run without end.
    max_chars : int, optional
        Cap on the total size; reading stops there (at most ``4 max_chars + 4``
        bytes are read from a file).

    Raises
    ------
    CorpusError
        For a missing path, a path that is not a regular file or folder, an
        empty or binary file, a folder without text files, or an empty total.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    parts, sources = [], []
    for p in paths:
        p = os.fspath(p)
        left = None if max_chars is None else max(1, max_chars - sum(len(t) + 1 for t in parts))
        if os.path.isdir(p):
            texts = _folder_texts(p, left)
            if not texts:
                raise CorpusError(f"no non-empty UTF-8 text files in folder {p!r}")
            for f, t in texts:
                parts.append(t)
                sources.append(os.path.abspath(f))
        elif os.path.exists(p):
            text = _read_file(p, left)
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


def corpus_from_record(record) -> Corpus:
    """Re-read the corpus a checkpoint records (``extra['corpus']``)."""
    if record["kind"] == "stdlib":
        return stdlib_corpus(record.get("max_chars"))
    return read_texts(record["sources"], record.get("max_chars"))
