"""Argument checking shared by every public entry point of rnncore.

The functional API, the models and cells, and the training layers
(:mod:`rnncore.nn`, :mod:`rnncore.losses`, :mod:`rnncore.optim`) turn bad
input into a ``TypeError`` or ``ValueError`` whose message names the argument,
what was expected and what was given, before any kernel runs (nothing inside
a kernel can fail). Every such message is built by :func:`expected`:
``"<name>: expected <what>, got <given>"``; the training layers' checks pass
``must=True`` for ``"<name> must be <what>, got <given>"``, the wording they
have always had (users and tests match it). Inputs are never modified: arrays
that the kernels cannot read in place (wrong layout, negative strides) are
copied, never rewritten.
"""
from __future__ import annotations

import numbers
import sys

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
NONLINEARITIES = ("tanh", "relu")


def expected(name: str, what: str, given: str, must: bool = False) -> str:
    """The message of a failed check: ``"<name>: expected <what>, got <given>"``.

    With ``must=True``: ``"<name> must be <what>, got <given>"`` (the training
    layers' wording, kept as it was).
    """
    if must:
        return f"{name} must be {what}, got {given}"
    return f"{name}: expected {what}, got {given}"


def rng_from_seed(seed, name: str = "seed") -> np.random.Generator:
    """``np.random.default_rng(seed)``, with a message naming ``name`` for a bad seed.

    Accepted: None, a non-negative integer (Python or NumPy), a
    ``np.random.SeedSequence`` or a ``np.random.Generator`` (used as is).
    """
    if seed is None or isinstance(seed, (np.random.Generator, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(expected(name, "None, a non-negative integer or a numpy Generator",
                                 type(seed).__name__))
    if seed < 0:
        raise ValueError(expected(name, "a non-negative integer", repr(seed)))
    return np.random.default_rng(int(seed))


def as_float(a, name: str, dtype=None, owner=None) -> np.ndarray:
    """``a`` as a float32/float64 ndarray (no copy when it already is one).

    Raises TypeError for anything that is not a real floating array (ints,
    bools, complex, float16, objects): rnncore never casts silently. With
    ``dtype`` given, the array must already have that dtype; ``owner`` (e.g.
    ``"model"``) names whose dtype that is in the message.
    """
    if (type(a) is np.ndarray and a.dtype in FLOAT_DTYPES
            and (dtype is None or a.dtype == dtype)):
        return a    # the common case, what the checks below return (~1 us less)
    if a is None:
        raise TypeError(expected(name, "a float32 or float64 array", "None"))
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # a torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if owner is not None and dtype is not None and arr.dtype != np.dtype(dtype):
        dt = np.dtype(dtype).name
        if not isinstance(a, np.ndarray):
            raise TypeError(
                f"{name}: got a {type(a).__name__}, which NumPy turns into {arr.dtype}, but the "
                f"{owner}'s dtype is {dt}: pass np.asarray({name}, dtype=np.{dt})")
        if arr.dtype in FLOAT_DTYPES:
            raise TypeError(
                f"{name}: dtype {arr.dtype} does not match the {owner}'s dtype {dt}: cast with "
                f"{name}.astype(np.{dt}) or convert the {owner} with {owner}.to(np.{arr.dtype})")
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(expected(name, "a float32 or float64 array", f"dtype {arr.dtype}"))
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise TypeError(
            f"{name}: dtype {arr.dtype} does not match the other arguments' dtype "
            f"{np.dtype(dtype)} (mixed float32/float64 is not supported; cast first)"
        )
    return arr


def check_shape(arr: np.ndarray, name: str, shape: tuple, letters: str) -> None:
    """Raise ValueError unless ``arr.shape`` matches ``shape``.

    ``shape`` entries are ints or None (any size); ``letters`` names the
    axes for the message, e.g. ``"(N, T, D)"``.
    """
    ok = arr.ndim == len(shape) and all(e is None or s == e for s, e in zip(arr.shape, shape))
    if not ok:
        want = ", ".join("?" if e is None else str(e) for e in shape)
        comma = "," if len(shape) == 1 else ""
        raise ValueError(expected(name, f"shape {letters} = ({want}{comma})", f"{arr.shape}"))


def check_nonlinearity(nonlinearity) -> bool:
    """True for relu, False for tanh; ValueError otherwise."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(expected("nonlinearity", "'tanh' or 'relu'", repr(nonlinearity)))
    return nonlinearity == "relu"


def matrix_view(a: np.ndarray) -> np.ndarray:
    """``a`` itself if BLAS can read it (C order or a transposed C array), else a C copy."""
    if a.flags.c_contiguous or a.flags.f_contiguous:
        return a
    return np.ascontiguousarray(a)


def rows_view(a: np.ndarray) -> np.ndarray:
    """A C-contiguous version of ``a`` (a copy only when needed)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def seq_view(a: np.ndarray, time_major: bool) -> np.ndarray:
    """A (T, N, F) view the kernels accept, from a (T, N, F) or (N, T, F) array.

    ``time_major`` says which of the two ``a`` is. The result is ``a`` (or its
    transposed view) when its feature axis is contiguous and its rows form a
    uniform matrix; otherwise a C copy in the same order.
    """
    if not time_major:
        a = a if a.flags.c_contiguous else np.ascontiguousarray(a)
        return a.transpose(1, 0, 2)
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


class CopyBuffer:
    """One reusable destination for :func:`owned` copies (kept by a model or layer).

    A copy saved for backward is reused by the next call only when nothing
    else references it any more: neither the activations saved by an earlier
    forward (dropped when the next forward starts) nor any view of it. That
    is checked with the buffer's reference count, measured against its count
    when only this object held it, so a buffer still in use is never
    overwritten (a new one is allocated instead).
    """

    __slots__ = ("_buf", "_key", "_alone")

    def __init__(self):
        self._buf = self._key = None
        self._alone = 0

    def take(self, a: np.ndarray) -> np.ndarray:
        """An uninitialised array with ``a``'s shape, dtype and memory order."""
        key = (a.shape, a.dtype, a.strides)
        buf = self._buf
        if buf is not None and key == self._key and sys.getrefcount(buf) <= self._alone:
            return buf
        buf = np.empty_like(a, order="K")  # the same layout (a transposed view stays one)
        self._buf, self._key = buf, key
        self._alone = sys.getrefcount(buf)  # held here and by `buf`, as in the test above
        return buf

    def clear(self) -> None:
        """Drop the buffer (e.g. when the model is copied or cast)."""
        self._buf = self._key = None


#: below this many bytes a fresh copy costs no more than checking a buffer (malloc's
#: free lists, no page faults); above it the allocation and its page faults dominate
_SMALL_COPY = 1 << 16


def owned(a: np.ndarray, callers, buffer: CopyBuffer | None = None) -> np.ndarray:
    """``a``, or a copy of it (same layout) when it may share memory with a caller's array.

    What a backward reads must not change with the caller's arrays (``x[:] =
    0`` between forward and backward), so an array that may share memory
    with any of ``callers`` is copied -- whether the caller's array is
    writable or not: a read-only view of a writable array still changes, and
    ``writeable`` can be switched back on. Copying costs less than detecting a
    change (a checksum of x is ~10x slower than its copy). With ``buffer`` a
    copy of 64 KiB or more goes into its reusable array when that is free
    (see :class:`CopyBuffer`), which saves the allocation and its page faults
    (at (T, N, D) = (100, 32, 256) float32: ~1.4 ms with a fresh mapping,
    ~0.14 ms into the buffer).
    ``a`` and the callers are never modified.
    """
    for c in callers:
        if c is not None and np.may_share_memory(a, c):
            if buffer is None or a.nbytes < _SMALL_COPY:
                return a.copy(order="K")
            dst = buffer.take(a)
            np.copyto(dst, a)
            return dst
    return a


def check_int(value, name: str, minimum: int = 0) -> int:
    """A Python int >= minimum (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(expected(name, "an int", type(value).__name__))
    if value < minimum:
        raise ValueError(expected(name, f"an int >= {minimum}", f"{value}"))
    return int(value)


def check_probability(value, name: str) -> float:
    """A drop probability: a real number in [0, 1) as a float (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a number in [0, 1), got {value!r}")
    return float(value)


def check_bool(value, name: str) -> bool:
    """A bool (or NumPy bool); anything else refused (a string "False" is true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(expected(name, "a bool", type(value).__name__))
    return bool(value)


def check_lengths(lengths, N: int, T: int, unbatched: bool = False) -> np.ndarray:
    """``lengths`` as an int64 array of shape (N,) with values in [0, T].

    ``unbatched`` (an unbatched input, N = 1): a scalar or a single length.
    """
    arr = np.asarray(lengths)
    if unbatched:
        if arr.size != 1:
            raise ValueError(expected("lengths", "one length for an unbatched input",
                                      f"shape {arr.shape}"))
        arr = arr.reshape(1)
    if arr.dtype.kind not in "iu":
        raise TypeError(expected("lengths", "integers", f"dtype {arr.dtype}"))
    if arr.shape != (N,):
        raise ValueError(expected("lengths", f"shape (N,) = ({N},)", f"{arr.shape}"))
    if N and (arr.min() < 0 or arr.max() > T):
        raise ValueError(
            f"lengths: values must be in [0, T] = [0, {T}], got min {arr.min()} max {arr.max()}"
        )
    return arr.astype(np.int64, copy=False)


def check_dtype(dtype, name: str = "dtype", must: bool = False) -> np.dtype:
    """``np.dtype(dtype)`` if it is float32 or float64, else TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(expected(name, "float32 or float64", repr(dtype), must)) from exc
    if dt not in FLOAT_DTYPES:
        raise TypeError(expected(name, "float32 or float64", f"{dt}", must))
    return dt


def positive_int(value, name: str) -> int:
    """``int(value)`` if it is an integer >= 1 (bools refused), else ValueError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise ValueError(expected(name, "a positive int", repr(value), must=True))
    return int(value)


def as_real(x, name: str, dtype=None) -> np.ndarray:
    """``x`` as a real array (cast to ``dtype`` when given).

    Integers are accepted and cast; bool, complex, object and string arrays
    raise ``TypeError`` naming the argument. Without ``dtype``, floating
    arrays keep their dtype and integer arrays become float64.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(expected(name, "a real numeric array", f"dtype {arr.dtype}", must=True))
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    return arr.astype(dtype, copy=False)


def as_index(x, name: str, high: int | None = None) -> np.ndarray:
    """``x`` as an integer array (int64 when not already signed/unsigned int).

    Raises ``TypeError`` for non-integer dtypes (floats are refused rather
    than truncated) and, when ``high`` is given, ``ValueError`` for values
    outside ``[0, high)``.
    """
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(expected(name, "an integer array", f"dtype {arr.dtype}", must=True))
    if high is not None and arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= high:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{name} values must lie in [0, {high}), got {int(bad)}")
    return arr


def check_last_dim(x: np.ndarray, size: int, name: str, label: str) -> None:
    """Raise ValueError unless ``x.shape == (..., size)``."""
    if x.ndim == 0 or x.shape[-1] != size:
        raise ValueError(
            f"{name} must have shape (..., {size}) ({label}={size}), got shape {x.shape}"
        )


def _gemm_operands(a: np.ndarray, b: np.ndarray):
    """SciPy's ?gemm for ``a``'s dtype and the column-major operands of row-major
    ``a @ b``: (gemm, B^T, its trans flag, A^T, its trans flag); C- or F-ordered
    operands are passed as they are, others copied C-ordered."""
    from scipy.linalg import blas as fblas

    gemm = fblas.sgemm if a.dtype == np.float32 else fblas.dgemm
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        a = np.ascontiguousarray(a)
    if not (b.flags.c_contiguous or b.flags.f_contiguous):
        b = np.ascontiguousarray(b)
    # first operand B^T (N, K): b.T is Fortran-ordered when b is C-ordered
    op1, t1 = (b.T, 0) if b.flags.c_contiguous else (b, 1)
    # second operand A^T (K, M)
    op2, t2 = (a.T, 0) if a.flags.c_contiguous else (a, 1)
    return gemm, op1, t1, op2, t2


def blas_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D float32/float64 arrays on SciPy's BLAS, C-ordered result.

    rnncore's kernels call SciPy's OpenBLAS; NumPy's ``@`` calls NumPy's own,
    separate OpenBLAS. Alternating the two (a Linear read-out between RNN
    kernel calls) makes two BLAS thread pools spin against each other, which
    on a 2-core machine made a training step ~1.7x slower with 2 threads than
    with 1. So the layers around the kernels use this instead of ``@``.
    Row-major C = A B is column-major C^T = B^T A^T; C-ordered arrays and
    their transposes are passed with transpose flags, never copied.
    """
    gemm, op1, t1, op2, t2 = _gemm_operands(a, b)
    if a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        return np.zeros((a.shape[0], b.shape[1]), dtype=a.dtype)
    return gemm(1.0, op1, op2, trans_a=t1, trans_b=t2).T


def blas_matmul_add(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out += a @ b`` in place, one GEMM on SciPy's BLAS (``beta = 1``), no temporary.

    ``out`` is a C-ordered (M, F) float array of ``a``'s dtype (e.g. a
    weight gradient accumulated over calls). As in :func:`blas_matmul`, the
    row-major product is the column-major ``out^T += B^T A^T`` and C- or
    F-ordered operands are passed with transpose flags, never copied. Other
    ``out`` layouts fall back to ``out += blas_matmul(a, b)``.
    """
    if not out.flags.c_contiguous or out.dtype != a.dtype or 0 in a.shape or 0 in b.shape:
        out += blas_matmul(a, b)
        return out
    gemm, op1, t1, op2, t2 = _gemm_operands(a, b)
    c = out.T  # Fortran-ordered (F, M): BLAS updates it in place
    res = gemm(1.0, op1, op2, beta=1.0, c=c, trans_a=t1, trans_b=t2, overwrite_c=1)
    if not np.may_share_memory(res, out):  # pragma: no cover - f2py copied c
        out[...] = res.T
    return out
