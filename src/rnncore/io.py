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
import math
import os
import tempfile

import numpy as np

from ._safe_npz import SafeNpz, config_elements
from ._version import __version__
from .module import module_registry, registered_name

__all__ = ["save", "load", "load_checkpoint", "FORMAT_VERSION", "MAX_HEADER_BYTES",
           "MAX_EXTRA_BYTES"]

#: Version of the file layout written by :func:`save`.
FORMAT_VERSION = 1
_FORMAT = "rnncore-checkpoint"
_META = "__rnncore__"
_EXTRA = "extra"
_PARAM = "param/"
_OPTIM = "optim/"
#: Largest ``__rnncore__`` header (JSON bytes) and ``extra`` entry a checkpoint may have.
MAX_HEADER_BYTES = 16 << 20
MAX_EXTRA_BYTES = 64 << 20


def _json_value(obj):
    """JSON for what configs may hold besides plain values: NumPy scalars as numbers; a
    ``np.random.Generator`` (a model's ``seed``) as null -- the parameters are saved, the
    generator's later draws (dropout) are not."""
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, (np.random.Generator, np.random.BitGenerator,
                        np.random.SeedSequence)):
        return None
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_array(obj, what: str) -> np.ndarray:
    try:
        text = json.dumps(obj, allow_nan=True, default=_json_value)
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
    except RecursionError:
        raise ValueError(f"{path!r}: entry {what!r} is JSON nested too deeply") from None


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


def _header(npz: SafeNpz, path: str) -> dict:
    """The checked ``__rnncore__`` header: types of every field it must have."""
    if _META not in npz.infos:
        raise ValueError(f"{path!r} is not an rnncore checkpoint: no {_META!r} entry "
                         f"(entries: {sorted(npz.infos)[:8]})")
    dtype, shape, _, nbytes = npz.header(_META)
    if dtype != np.uint8 or len(shape) != 1:
        raise ValueError(f"{path!r}: entry {_META!r} must be a 1-D uint8 array of UTF-8 JSON, "
                         f"got {dtype} {shape}")
    if nbytes > MAX_HEADER_BYTES:
        raise ValueError(f"{path!r}: entry {_META!r} is {nbytes} bytes, more than the "
                         f"{MAX_HEADER_BYTES} a checkpoint header may have")
    meta = _from_json_array(npz.read(_META), _META, path)
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{path!r} is not an rnncore checkpoint: bad {_META!r} header")
    version = meta.get("format_version")
    if type(version) is not int or version < 1 or version > FORMAT_VERSION:
        raise ValueError(f"{path!r}: unsupported checkpoint format_version {version!r} "
                         f"(this rnncore reads 1..{FORMAT_VERSION})")
    for key in ("class", "config", "params"):
        if key not in meta:
            raise ValueError(f"{path!r}: checkpoint header lacks {key!r}")
    kinds = {"class": (str,), "config": (dict,), "params": (list,),
             "optimizer": (str, type(None)), "entries": (list,)}
    for key, types in kinds.items():
        if key in meta and not isinstance(meta[key], types):
            raise ValueError(f"{path!r}: bad {_META!r} header: {key!r} is a "
                             f"{type(meta[key]).__name__}")
    for key in ("params", "entries"):
        names = meta.get(key, [])
        if not all(isinstance(k, str) for k in names) or len(set(names)) != len(names):
            raise ValueError(f"{path!r}: bad {_META!r} header: {key!r} must be distinct names")
    return meta


def _members(npz: SafeNpz, meta: dict, path: str) -> dict:
    """``{entry: (dtype, shape, nbytes)}`` of the entries the header lists, from their
    ``.npy`` headers; unknown members, missing ones and oversized ones are refused."""
    params = [_PARAM + k for k in meta["params"]]
    listed = meta.get("entries")
    if listed is None:  # files written before the header listed its entries
        listed = params + [k for k in npz.infos if k.startswith(_OPTIM) or k == _EXTRA]
    if set(listed) & {_META} or not set(params) <= set(listed) or any(
            not k.startswith((_PARAM, _OPTIM)) and k != _EXTRA for k in listed) or len(
            [k for k in listed if k.startswith(_PARAM)]) != len(params):
        raise ValueError(f"{path!r}: bad {_META!r} header: its entries do not match its "
                         "parameters")
    unknown = sorted(set(npz.infos) - set(listed) - {_META})
    if unknown:
        raise ValueError(f"{path!r}: checkpoint holds entries its header does not list: "
                         f"{unknown[:8]}")
    lost = [k for k in listed if k not in npz.infos]
    if lost:
        raise ValueError(f"{path!r}: checkpoint is damaged: entries {lost} listed in its "
                         "header are missing")
    members = {k: npz.header(k) for k in listed}
    param_bytes = sum(members[k][3] for k in params)
    optim_bytes = sum(v[3] for k, v in members.items() if k.startswith(_OPTIM))
    if optim_bytes > 3 * param_bytes + (1 << 20):
        raise ValueError(f"{path!r}: optimizer state of {optim_bytes} bytes for "
                         f"{param_bytes} bytes of parameters (at most 3x + 1 MiB)")
    if _EXTRA in members and members[_EXTRA][3] > MAX_EXTRA_BYTES:
        raise ValueError(f"{path!r}: entry {_EXTRA!r} is {members[_EXTRA][3]} bytes, more "
                         f"than {MAX_EXTRA_BYTES}")
    return members


def _check_config(meta: dict, members: dict, path: str, max_bytes) -> None:
    """Refuse a config that would build a model much larger than the stored parameters
    (or, with ``max_bytes``, a checkpoint larger than that), before building anything."""
    stored = [members[_PARAM + k] for k in meta["params"]]
    elements = sum(math.prod(shape) for _, shape, _, _ in stored)
    try:
        bound = config_elements(meta["class"], meta["config"])
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path!r}: cannot rebuild {meta['class']} from its config: "
                         f"{exc}") from None
    if bound is not None and bound > 2 * elements + 4096:
        raise ValueError(f"{path!r}: the config of {meta['class']} asks for up to {bound:,} "
                         f"parameters but the file stores {elements:,}; refusing to build it")
    need = 2 * sum(m[3] for m in members.values())
    if max_bytes is not None and need > max_bytes:
        raise ValueError(f"{path!r}: loading needs about {need:,} bytes (parameters and "
                         f"their gradients), more than the {max_bytes:,} allowed")


def _build(meta: dict, path: str):
    cls = module_registry.get(meta["class"])
    if cls is None:
        raise ValueError(f"{path!r}: unknown model class {meta['class']!r}; import the module "
                         "that defines (and registers) it before loading")
    try:
        return cls(**meta["config"])
    except Exception as exc:  # includes RecursionError and MemoryError from a hostile config
        raise ValueError(f"{path!r}: cannot rebuild {meta['class']} from its config "
                         f"{_short(meta['config'])}: {type(exc).__name__}: {exc}") from None


def _short(obj, limit=200) -> str:
    text = repr(obj)
    return text if len(text) <= limit else text[:limit] + "..."


def _load_params(npz: SafeNpz, model, meta: dict, members: dict, path: str) -> None:
    """Copy the stored parameters into ``model`` one at a time (shapes checked first)."""
    params = meta["params"]
    if sorted(params) != sorted(model.params):
        raise ValueError(f"{path!r}: parameters do not fit {meta['class']}: the file has "
                         f"{_short(params)}, the model {_short(list(model.params))}")
    for k in params:
        dtype, shape, _, _ = members[_PARAM + k]
        if dtype.kind not in "fiu" or shape != model.params[k].shape:
            raise ValueError(f"{path!r}: parameters do not fit {meta['class']}: "
                             f"{k!r} is {dtype} {shape}, expected "
                             f"{model.params[k].dtype} {model.params[k].shape}")
    for k in params:
        value = npz.read(_PARAM + k)
        with np.errstate(over="ignore"):
            cast = value.astype(model.params[k].dtype)
        if not np.array_equal(np.isfinite(cast), np.isfinite(value)):
            raise ValueError(f"{path!r}: parameter {k!r} overflows {model.params[k].dtype}")
        model.params[k][...] = cast


def load_checkpoint(path, *, max_bytes=None) -> dict:
    """Read a checkpoint written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int, optional
        Refuse a checkpoint whose model (parameters and gradients) and
        optimizer state would need more memory than this (the CLI passes the
        available memory).

    Returns
    -------
    dict
        ``model``: the rebuilt model (``module_registry[class](**config)``
        then the stored parameters); ``optimizer_state``: the optimizer's
        state dict (scalars back as Python scalars, ready for
        ``optimizer.load_state_dict``) or None; ``extra``: the saved dict or
        None.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For anything wrong with the file: truncated/corrupted, not an
        ``.npz``, not an rnncore checkpoint (missing or unlisted entries,
        unknown class, newer format, a header of the wrong types), a pickled
        object array, a config that does not fit the stored parameters, a
        parameter that overflows the model's dtype.

    Notes
    -----
    Hostile files: only the members the header lists are read (any other
    member is refused without being decompressed), each only after its
    ``.npy`` header was checked against the member's size and, for
    parameters, against the model built from the config; the config of
    rnncore's own classes must not ask for more than twice the parameters
    the file stores. So loading needs at most the model itself (parameters
    and gradients), the optimizer state (at most 3x the parameters),
    ``extra`` (at most :data:`MAX_EXTRA_BYTES`) and the header (at most
    :data:`MAX_HEADER_BYTES`), and runs in time linear in those sizes.

    The model's class must be registered when loading: import the module
    that defines it first (rnncore's own classes are found on demand, see
    :data:`rnncore.module.module_registry`).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", path)
    with SafeNpz(path) as npz:
        meta = _header(npz, path)
        members = _members(npz, meta, path)
        _check_config(meta, members, path, max_bytes)
        model = _build(meta, path)
        _load_params(npz, model, meta, members, path)
        optimizer_state = None
        if meta.get("optimizer") is not None:
            optimizer_state = {}
            for k in members:
                if k.startswith(_OPTIM):
                    v = npz.read(k)
                    optimizer_state[k[len(_OPTIM):]] = v.item() if v.ndim == 0 else v
        extra = _from_json_array(npz.read(_EXTRA), _EXTRA, path) if _EXTRA in members else None
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"{path!r}: entry {_EXTRA!r} is not a JSON object")
    return {"model": model, "optimizer_state": optimizer_state, "extra": extra}


def load(path, *, max_bytes=None):
    """Load just the model of a checkpoint (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, max_bytes=max_bytes)["model"]
