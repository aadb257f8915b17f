"""Reading an untrusted ``.npz`` checkpoint within stated memory and time bounds.

:func:`rnncore.io.load_checkpoint` reads through :class:`SafeNpz`: the zip
directory is listed without decompressing anything; a member is opened only
when the header lists it; each ``.npy`` header (dtype, shape) is read and
checked against the member's declared size *before* its data is read, and the
data is then read in 1 MiB chunks straight into the array that will hold it,
so a member can never decompress to more than its header says. Object
(pickled) dtypes are refused from the header alone.

:func:`config_elements` bounds the number of parameters the constructor of
one of rnncore's own classes would allocate for a configuration, so a header
asking for a model far larger than the parameters the file stores is refused
before the model is built.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np

__all__ = ["SafeNpz", "config_elements", "NPY", "CHUNK"]

NPY = ".npy"
CHUNK = 1 << 20  # bytes read from a member at a time
_MAX_NPY_HEADER = 10_000  # numpy's own limit for untrusted headers


class SafeNpz:
    """The members of a zip archive, read one at a time with size checks.

    Every error is a ValueError naming ``path``.
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self.zip = zipfile.ZipFile(path)
            infos = self.zip.infolist()
        except Exception as exc:  # BadZipFile, OSError, ...
            raise ValueError(self._not_npz(exc)) from None
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            self.close()
            raise ValueError(f"{path!r} is not a readable .npz archive (corrupted file?): "
                             "duplicate member names")
        self.infos = {i.filename[:-len(NPY)] if i.filename.endswith(NPY) else i.filename: i
                      for i in infos}

    def _not_npz(self, exc) -> str:
        try:
            with open(self.path, "rb") as f:
                magic = f.read(6)
        except OSError:
            magic = b""
        if magic == b"\x93NUMPY":
            return (f"{self.path!r} is not an rnncore checkpoint: it holds a single .npy "
                    "array, not an .npz archive")
        if magic[:2] != b"PK":
            return f"{self.path!r} is not an rnncore checkpoint: not an .npz archive"
        return (f"{self.path!r} is not a readable .npz archive (truncated or corrupted "
                f"file?): {type(exc).__name__}: {exc}")

    def close(self) -> None:
        self.zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fail(self, key, exc) -> ValueError:
        if isinstance(exc, ValueError) and str(exc).startswith(repr(self.path)):
            return exc
        return ValueError(f"{self.path!r}: entry {key!r} cannot be read (truncated or "
                          f"corrupted file?): {type(exc).__name__}: {exc}")

    def header(self, key: str):
        """``(dtype, shape, nbytes)`` of member ``key`` from its ``.npy`` header alone."""
        try:
            with self.zip.open(self.infos[key]) as f:
                return self._read_header(key, f)
        except Exception as exc:
            raise self._fail(key, exc) from None

    def _read_header(self, key, f):
        fmt = np.lib.format
        try:
            version = fmt.read_magic(f)
            reader = {(1, 0): fmt.read_array_header_1_0,
                      (2, 0): fmt.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = reader(f, max_header_size=_MAX_NPY_HEADER)
        except ValueError as exc:
            raise ValueError(f"{self.path!r}: entry {key!r} is corrupted ({exc})") from None
        if dtype.hasobject:
            raise ValueError(f"{self.path!r}: entry {key!r} is a pickled object array; "
                             "refusing to load it (checkpoints are read with allow_pickle=False)")
        nbytes = math.prod(shape) * dtype.itemsize
        declared = self.infos[key].file_size
        if declared - f.tell() != nbytes:
            raise ValueError(f"{self.path!r}: entry {key!r} is corrupted (its .npy header "
                             f"says {shape} {dtype}, {nbytes} bytes; the archive holds "
                             f"{declared - f.tell()})")
        return dtype, tuple(shape), fortran, nbytes

    def read(self, key: str) -> np.ndarray:
        """Member ``key`` as an array, decompressed into the array itself in 1 MiB chunks."""
        try:
            with self.zip.open(self.infos[key]) as f:
                dtype, shape, fortran, nbytes = self._read_header(key, f)
                arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
                view = memoryview(arr.reshape(-1).view(np.uint8)) if nbytes else None
                pos = 0
                while pos < nbytes:
                    chunk = f.read(min(CHUNK, nbytes - pos))
                    if not chunk:
                        raise EOFError("member ends early")
                    view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                f.read(1)  # reach the end: zipfile checks the CRC there
        except Exception as exc:
            raise self._fail(key, exc) from None
        return arr.T if fortran else arr


def _size(config, key, default=None):
    v = config.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"config[{key!r}] must be an integer, got {v!r}")
    return max(v, 0)


_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4, "RNNCell": 1, "GRUCell": 3, "LSTMCell": 4,
          "rnn": 1, "gru": 3, "lstm": 4}


def _rnn_elements(G, D, H, L=1, dirs=1):
    # per layer and direction: weight_ih (G H, D_k), weight_hh (G H, H), two biases;
    # D_k <= max(D, dirs H) bounds every layer's input size
    return L * dirs * G * H * (max(D, dirs * H) + H + 2)


def config_elements(cls_name: str, config: dict):
    """An upper bound of the parameters ``cls_name(**config)`` allocates (None: unknown class).

    Within 2x of the exact count for rnncore's own classes. Raises ValueError
    when a size entry is not an integer.
    """
    if not isinstance(config, dict):
        raise ValueError(f"config must be a JSON object, got {type(config).__name__}")
    if cls_name in ("RNN", "GRU", "LSTM"):
        return _rnn_elements(_GATES[cls_name], _size(config, "input_size"),
                             _size(config, "hidden_size"), _size(config, "num_layers", 1),
                             2 if config.get("bidirectional") else 1)
    if cls_name in ("RNNCell", "GRUCell", "LSTMCell"):
        return _rnn_elements(_GATES[cls_name], _size(config, "input_size"),
                             _size(config, "hidden_size"))
    if cls_name == "Linear":
        return _size(config, "out_features") * (_size(config, "in_features") + 1)
    if cls_name == "Embedding":
        return _size(config, "num_embeddings") * _size(config, "embedding_dim")
    if cls_name == "Dropout":
        return 0
    if cls_name == "CharLM":
        V, E, H = (_size(config, k, d) for k, d in
                   (("vocab_size", None), ("embed_dim", 64), ("hidden_size", 256)))
        cell = config.get("cell", "lstm")
        G = _GATES.get(cell, 4) if isinstance(cell, str) else 4
        return V * E + _rnn_elements(G, E, H, _size(config, "num_layers", 1)) + V * (H + 1)
    if cls_name == "Sequential":
        layers = config.get("layers")
        if not isinstance(layers, list):
            raise ValueError("config['layers'] must be a list")
        total = 0
        for layer in layers:
            if not isinstance(layer, dict) or not isinstance(layer.get("class"), str):
                raise ValueError("each of config['layers'] must be {'class': str, 'config': {}}")
            n = config_elements(layer["class"], layer.get("config"))
            if n is None:
                return None
            total += n
        return total
    return None
