"""The char-LM's checkpoints: the ``extra`` block a Trainer writes, and reading it back.

An rnncore checkpoint (:func:`rnncore.io.save`) holds the model, the
optimizer state and a JSON ``extra`` block. A :class:`~rnncore.charlm.Trainer`
puts there everything else a run needs to continue exactly: vocabulary, step,
configuration, where the text came from, the carried recurrent state (arrays
as base64, see :func:`_encode_state`), the sampling RNG and the loss history.
"""
from __future__ import annotations

import base64
import os
from dataclasses import asdict

import numpy as np

from .. import io as _io
from .model import CharLM

__all__ = ["CHECKPOINT_VERSION", "training_state", "restore_training_state", "load_charlm"]

#: Version of the ``extra`` block a :class:`Trainer` writes into checkpoints.
CHECKPOINT_VERSION = 1


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


def training_state(trainer) -> dict:
    """The ``extra`` block of ``trainer``'s checkpoint: everything besides weights and optimizer.

    Distributed, ``carry`` is the state of all the streams, gathered from
    every rank (a collective).
    """
    c = trainer.corpus
    return {
        "charlm_version": CHECKPOINT_VERSION,
        "vocab": trainer.vocab.chars,
        "step": trainer.step,
        "train_config": asdict(trainer.config),
        "corpus": {"kind": c.kind, "sources": c.sources, "max_chars": c.max_chars,
                   "chars": len(c.text), "sha256": c.sha256},
        "carry": _encode_state(trainer.global_state()),
        "sample_rng": trainer.sample_rng.bit_generator.state,
        # the recurrent layers' dropout masks continue where they stopped
        "mask_rng": trainer.model.rnn._rng.bit_generator.state,
        "history": {"train_loss": trainer.train_loss, "val": trainer.val_history},
        "skipped": trainer.skipped,
        "target_steps": trainer.target_steps,
        "chars_seen": trainer.chars_seen,
        "train_seconds": trainer.train_seconds,
    }


def restore_training_state(trainer, extra) -> None:
    """Put the progress recorded by :func:`training_state` back into a new ``trainer``.

    Distributed, the trainer keeps its rank's share of the carried state.
    """
    trainer.step = int(extra["step"])
    trainer.state = trainer._local_state(_decode_state(extra["carry"]))
    trainer.sample_rng.bit_generator.state = extra["sample_rng"]
    if "mask_rng" in extra:  # (checkpoints before weight drop have none)
        trainer.model.rnn._rng.bit_generator.state = extra["mask_rng"]
    trainer.train_loss = [float(v) for v in extra["history"]["train_loss"]]
    trainer.val_history = [[int(s), float(b)] for s, b in extra["history"]["val"]]
    trainer.skipped = int(extra.get("skipped", 0))
    trainer.target_steps = extra.get("target_steps")
    trainer.chars_seen = int(extra.get("chars_seen", 0))
    trainer.train_seconds = float(extra.get("train_seconds", 0.0))
    trainer.corpus_changed = trainer.corpus.sha256 != extra["corpus"]["sha256"]


#: the types of the ``extra`` entries a Trainer writes (checked when loading)
_EXTRA_TYPES = {"charlm_version": int, "step": int, "train_config": dict, "corpus": dict,
                "carry": (list, dict, type(None)), "sample_rng": dict, "mask_rng": dict,
                "history": dict,
                "skipped": int, "target_steps": (int, type(None)), "chars_seen": int,
                "train_seconds": (int, float)}


def _is(value, types) -> bool:
    return isinstance(value, types) and not (isinstance(value, bool) and types is int)


def _check_extra(extra, where) -> None:
    """ValueError unless ``extra`` has the types :func:`training_state` writes."""
    from .data import Vocab
    try:
        Vocab(extra["vocab"])
    except ValueError as exc:
        raise ValueError(f"{where} has a bad vocabulary: {exc}") from None
    for key, types in _EXTRA_TYPES.items():
        if key in extra and not _is(extra[key], types):
            raise ValueError(f"{where}: training state {key!r} is a "
                             f"{type(extra[key]).__name__}")
    hist = extra.get("history", {})
    losses, val = hist.get("train_loss", []), hist.get("val", [])
    if not (isinstance(losses, list) and all(_is(v, (int, float)) for v in losses)
            and isinstance(val, list) and all(
                isinstance(p, list) and len(p) == 2 and _is(p[0], int)
                and _is(p[1], (int, float)) for p in val)):
        raise ValueError(f"{where}: training state 'history' is malformed")
    corpus = extra.get("corpus", {})
    if not (_is(corpus.get("chars", 0), int) and isinstance(corpus.get("sources", []), list)
            and all(isinstance(s, str) for s in corpus.get("sources", []))
            and isinstance(corpus.get("kind", ""), str)):
        raise ValueError(f"{where}: training state 'corpus' is malformed")


def load_charlm(path, need_training_state=False, max_bytes=None):
    """Load a CharLM checkpoint: ``(model, optimizer_state, extra)``.

    ``max_bytes`` is passed on to :func:`rnncore.io.load_checkpoint`.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When it is not a readable rnncore checkpoint, or not one of a
        :class:`CharLM` (with a sorted vocabulary and a training state of
        the types :func:`training_state` writes; and, with
        ``need_training_state``, the training state to resume).
    """
    ck = _io.load_checkpoint(path, max_bytes=max_bytes)
    model, extra = ck["model"], ck["extra"]
    if not isinstance(model, CharLM):
        raise ValueError(f"{os.fspath(path)!r} holds a {type(model).__name__}, not a CharLM")
    if not isinstance(extra, dict) or not isinstance(extra.get("vocab"), str):
        raise ValueError(f"{os.fspath(path)!r} has no character vocabulary")
    _check_extra(extra, repr(os.fspath(path)))
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
