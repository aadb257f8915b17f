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
    trainer.train_loss = [float(v) for v in extra["history"]["train_loss"]]
    trainer.val_history = [[int(s), float(b)] for s, b in extra["history"]["val"]]
    trainer.skipped = int(extra.get("skipped", 0))
    trainer.target_steps = extra.get("target_steps")
    trainer.chars_seen = int(extra.get("chars_seen", 0))
    trainer.train_seconds = float(extra.get("train_seconds", 0.0))
    trainer.corpus_changed = trainer.corpus.sha256 != extra["corpus"]["sha256"]


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
