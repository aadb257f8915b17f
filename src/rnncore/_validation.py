"""Argument checking shared by the functional API, the models and the cells.

Every public entry point turns bad input into a ``TypeError`` or
``ValueError`` whose message names the argument and what was expected, before
any kernel runs (nothing inside a kernel can fail). Inputs are never modified:
arrays that the kernels cannot read in place (wrong layout, negative strides)
are copied, never rewritten.
"""
from __future__ import annotations

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
NONLINEARITIES = ("tanh", "relu")


def as_float(a, name: str, dtype=None) -> np.ndarray:
    """``a`` as a float32/float64 ndarray (no copy when it already is one).

    Raises TypeError for anything that is not a real floating array (ints,
    bools, complex, float16, objects): rnncore never casts silently. With
    ``dtype`` given, the array must already have that dtype.
    """
    if a is None:
        raise TypeError(f"{name}: expected a float32 or float64 array, got None")
    if hasattr(a, "detach") and hasattr(a, "numpy"):  # a torch tensor
        a = a.detach().cpu().numpy()
    arr = np.asarray(a)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {arr.dtype}")
    if dtype is not None and arr.dtype != np.dtype(dtype):
        raise TypeError(
            f"{name}: dtype {arr.dtype} does not match the other arguments' dtype "
            f"{np.dtype(dtype)} (mixed float32/float64 is not supported; cast first)"
        )
    return arr


def check_shape(arr: np.ndarray, name: str, expected: tuple, letters: str) -> None:
    """Raise ValueError unless ``arr.shape`` matches ``expected``.

    ``expected`` entries are ints or None (any size); ``letters`` names the
    axes for the message, e.g. ``"(N, T, D)"``.
    """
    ok = arr.ndim == len(expected) and all(
        e is None or s == e for s, e in zip(arr.shape, expected)
    )
    if not ok:
        want = ", ".join("?" if e is None else str(e) for e in expected)
        raise ValueError(
            f"{name}: expected shape {letters} = ({want}{',' if len(expected) == 1 else ''}), "
            f"got {arr.shape}"
        )


def check_nonlinearity(nonlinearity) -> bool:
    """True for relu, False for tanh; ValueError otherwise."""
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected 'tanh' or 'relu', got {nonlinearity!r}")
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


def check_int(value, name: str, minimum: int = 0) -> int:
    """A Python int >= minimum (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def check_lengths(lengths, N: int, T: int) -> np.ndarray:
    """``lengths`` as an int64 array of shape (N,) with values in [0, T]."""
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths: expected integers, got dtype {arr.dtype}")
    if arr.shape != (N,):
        raise ValueError(f"lengths: expected shape (N,) = ({N},), got {arr.shape}")
    if N and (arr.min() < 0 or arr.max() > T):
        raise ValueError(
            f"lengths: values must be in [0, T] = [0, {T}], got min {arr.min()} max {arr.max()}"
        )
    return arr.astype(np.int64, copy=False)


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
    if a.shape[0] == 0 or b.shape[1] == 0 or a.shape[1] == 0:
        return np.zeros((a.shape[0], b.shape[1]), dtype=a.dtype)
    return gemm(1.0, op1, op2, trans_a=t1, trans_b=t2).T
