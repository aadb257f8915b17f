"""Checkpoints: one ``.npz`` file with the model, its config and optimizer state.

File layout (format version 1), every entry a plain (never pickled) array:

=====================  =====================================================
``__rnncore__``        uint8 array: UTF-8 JSON ``{"format": "rnncore-checkpoint",
                       "format_version": 1, "rnncore_version", "class",
                       "config", "params", "optimizer"}``
``param/<name>``       each parameter (``model.state_dict()``)
``optim/<key>``        each entry of ``optimizer.state_dict()`` (scalars as
                       0-d arrays), only when an optimizer is saved
``extra``              uint8 array: UTF-8 JSON of the ``extra`` dict, if any
=====================  =====================================================

Writing is atomic: the archive goes to a temporary file in the target's
directory, is flushed and ``fsync``-ed, then ``os.replace``-d over the
target, so a crash leaves either the old or the new checkpoint, never a mix.
Reading uses ``np.load(..., allow_pickle=False)``: nothing in the file is
ever unpickled, so a checkpoint cannot run code.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile

import numpy as np

from ._version import __version__
from .module import module_registry, registered_name

__all__ = ["save", "load", "load_checkpoint", "FORMAT_VERSION"]

#: Version of the file layout written by :func:`save`.
FORMAT_VERSION = 1
_FORMAT = "rnncore-checkpoint"
_META = "__rnncore__"
_EXTRA = "extra"
_PARAM = "param/"
_OPTIM = "optim/"


def _json_array(obj, what: str) -> np.ndarray:
    try:
        text = json.dumps(obj, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from exc
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _from_json_array(arr: np.ndarray, what: str, path: str):
    if arr.dtype != np.uint8 or arr.ndim != 1:
        raise ValueError(f"{path!r}: entry {what!r} must be a 1-D uint8 array of UTF-8 JSON, "
                         f"got {arr.dtype} {arr.shape}")
    try:
        return json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path!r}: entry {what!r} is not valid UTF-8 JSON ({exc})") from None


def _atomic_savez(path: str, arrays: dict, compress: bool) -> None:
    """Write ``arrays`` as an npz at ``path`` via temp file + fsync + os.replace."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            writer = np.savez_compressed if compress else np.savez
            writer(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        try:  # mkstemp makes the file 0600; keep the old file's mode, else 0644
            os.chmod(tmp, os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:
            pass


def save(path, model, optimizer=None, extra=None, *, compress=False) -> None:
    """Save a model (and optionally its optimizer) to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file, used as given (no suffix is added). Its directory must
        exist; an existing file is replaced atomically.
    model : Module
        A registered (``@register_module``) module with ``get_config()``.
    optimizer : rnncore.optim.Optimizer, optional
        Anything with ``state_dict()`` returning a flat dict of arrays and
        scalars.
    extra : dict, optional
        JSON-serialisable data to keep with the checkpoint (step, vocab ...).
    compress : bool, default False
        Use ``np.savez_compressed``.

    Raises
    ------
    TypeError
        When the model is not a Module, its config or ``extra`` is not
        JSON-serialisable, or optimizer state holds objects.
    ValueError
        When the model's class is not registered (it could not be loaded).
    """
    path = os.fspath(path)
    name = registered_name(model, "model class {name} is not registered, so it could not be "
                                  "loaded; decorate it with @rnncore.module.register_module")
    state = model.state_dict()
    meta = {"format": _FORMAT, "format_version": FORMAT_VERSION,
            "rnncore_version": __version__, "class": name, "config": model.get_config(),
            "params": list(state),
            "optimizer": None if optimizer is None else type(optimizer).__name__}
    arrays = {_META: _json_array(meta, "the model config")}
    for k, v in state.items():
        arrays[_PARAM + k] = np.asarray(v)
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arr = np.asarray(v)
            if arr.dtype.kind not in "biufU":
                raise TypeError(f"optimizer state {k!r} has dtype {arr.dtype}; only numbers "
                                "and strings can be saved")
            arrays[_OPTIM + k] = arr
    if extra is not None:
        if not isinstance(extra, dict):
            raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
        arrays[_EXTRA] = _json_array(extra, "extra")
    # the header lists every entry, so a damaged zip directory that hides some
    # of them (the optimizer state, extra) is detected at load time
    meta["entries"] = sorted(k for k in arrays if k != _META)
    arrays[_META] = _json_array(meta, "the model config")
    _atomic_savez(path, arrays, compress)


def _read_all(path: str) -> dict:
    """Every entry of the npz at ``path``, with clear errors for bad files."""
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", path)
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:  # neither zip nor .npy: numpy would have to unpickle
        # (numpy's message suggests allow_pickle=True: never advise that for a
        # file of unknown origin)
        raise ValueError(f"{path!r} is not an rnncore checkpoint: not an .npz archive") \
            from None
    except Exception as exc:  # BadZipFile, EOFError, OSError ...
        raise ValueError(f"{path!r} is not a readable .npz archive (truncated or corrupted "
                         f"file?): {type(exc).__name__}: {exc}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is not an rnncore checkpoint: it holds a single .npy "
                         "array, not an .npz archive")
    with npz:
        entries = {}
        for key in npz.files:
            try:
                entries[key] = npz[key]
            except ValueError as exc:
                if "pickle" in str(exc) or "Object arrays" in str(exc):
                    raise ValueError(
                        f"{path!r}: entry {key!r} is a pickled object array; refusing to "
                        "load it (checkpoints are read with allow_pickle=False)") from None
                raise ValueError(f"{path!r}: entry {key!r} is corrupted ({exc})") from None
            except Exception as exc:  # CRC errors, truncated members, zlib errors
                raise ValueError(f"{path!r}: entry {key!r} cannot be read (truncated or "
                                 f"corrupted file?): {type(exc).__name__}: {exc}") from None
    return entries


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        ``model``: the rebuilt model (``module_registry[class](**config)``
        then ``load_state_dict``); ``optimizer_state``: the optimizer's
        state dict (scalars back as Python scalars, ready for
        ``optimizer.load_state_dict``) or None; ``extra``: the saved dict or
        None.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For a truncated/corrupted file, a file that is not an ``.npz``, an
        ``.npz`` that is not an rnncore checkpoint (missing entries, unknown
        class, newer format), or a pickled object array.

    Notes
    -----
    The model's class must be registered when loading: import the module
    that defines it first (rnncore's own classes are found on demand, see
    :data:`rnncore.module.module_registry`).
    """
    path = os.fspath(path)
    entries = _read_all(path)
    if _META not in entries:
        raise ValueError(f"{path!r} is not an rnncore checkpoint: no {_META!r} entry "
                         f"(entries: {sorted(entries)[:8]})")
    meta = _from_json_array(entries[_META], _META, path)
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{path!r} is not an rnncore checkpoint: bad {_META!r} header")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise ValueError(f"{path!r}: unsupported checkpoint format_version {version!r} "
                         f"(this rnncore reads 1..{FORMAT_VERSION})")
    for key in ("class", "config", "params"):
        if key not in meta:
            raise ValueError(f"{path!r}: checkpoint header lacks {key!r}")
    cls = module_registry.get(meta["class"])
    if cls is None:
        raise ValueError(f"{path!r}: unknown model class {meta['class']!r}; import the module "
                         "that defines (and registers) it before loading")
    try:
        model = cls(**meta["config"])
    except Exception as exc:
        raise ValueError(f"{path!r}: cannot rebuild {meta['class']} from its config "
                         f"{meta['config']!r}: {exc}") from exc
    lost = [k for k in meta.get("entries", ()) if k not in entries]
    if lost:
        raise ValueError(f"{path!r}: checkpoint is damaged: entries {lost} listed in its "
                         "header are missing")
    params = {k[len(_PARAM):]: v for k, v in entries.items() if k.startswith(_PARAM)}
    missing = [k for k in meta["params"] if k not in params]
    if missing:
        raise ValueError(f"{path!r}: checkpoint lacks parameters {missing}")
    try:
        model.load_state_dict(params)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{path!r}: parameters do not fit {meta['class']}: {exc}") from exc
    optimizer_state = None
    if meta.get("optimizer") is not None:
        optimizer_state = {}
        for k, v in entries.items():
            if k.startswith(_OPTIM):
                optimizer_state[k[len(_OPTIM):]] = v.item() if v.ndim == 0 else v
    extra = _from_json_array(entries[_EXTRA], _EXTRA, path) if _EXTRA in entries else None
    return {"model": model, "optimizer_state": optimizer_state, "extra": extra}


def load(path):
    """Load just the model of a checkpoint (see :func:`load_checkpoint`)."""
    return load_checkpoint(path)["model"]
