"""A dense layer's products on the packed kernel (rc_matmul.h).

``rnncore.nn.Linear`` (through ``rnncore._bindings``: ``matmul``, ``matmul_tn_add``)
computes ``y = x W^T``, ``dx = dy W`` and ``dW += dy^T x`` here where the rule says
so (rc_matmul_use, rc_matmul_tn_use), else on SciPy's BLAS: each entry returns
False, having written nothing, and the caller calls BLAS. The rule reads the
shapes, the machine and the thread configuration (``rnncore.set_row_split``) only,
never the current thread count, so a product's rounding does not depend on it.
"""
from _cpu cimport require_simd
import numpy as np

from _blas cimport floating, Mat, mat, NoTrans, Trans
from _gemm cimport (mm, set_pack_par, pack_par_count, set_dw, set_dw_inplace, dw_inplace_count, dw_count,
                    set_dw_workspace, dw_workspace_count, RC_PACK_PAR_BYTES,
                    matmul_use, matmul_tn_use, matmul_machine, rc_matmul_f, rc_matmul_d,
                    rc_matmul_f_tn_ws, rc_matmul_d_tn_ws, rc_matmul_f_tn_bytes,
                    rc_matmul_d_tn_bytes, cache_bytes)
from _buffer cimport array_data
from _threads cimport blas_thread_hooks

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef bint _mm(const floating[:, :] a, const floating[:, :] b, floating[:, ::1] c,
              floating beta) noexcept:
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = b.shape[1], isz = sizeof(floating)
    cdef Py_ssize_t lda = a.strides[0] // isz, rs = b.strides[0] // isz
    cdef Py_ssize_t cs = b.strides[1] // isz
    cdef int done
    with nogil:
        if floating is float:
            done = rc_matmul_f(m, n, k, &a[0, 0], lda, &b[0, 0], rs, cs, beta, &c[0, 0], n)
        else:
            done = rc_matmul_d(m, n, k, &a[0, 0], lda, &b[0, 0], rs, cs, beta, &c[0, 0], n)
    return done != 0


cdef bint _tn(const floating[:, :] a, const floating[:, :] b, floating[:, ::1] c):
    """The dW kernel's product, its memory (the threads' packed chunks of B) from the
    workspace cache (cache_bytes) like the cells' backward calls (_loop.pxd:
    dw_workspace); without it the kernel allocates its own."""
    cdef Py_ssize_t K = a.shape[0], m = a.shape[1], n = b.shape[1], isz = sizeof(floating)
    cdef Py_ssize_t lda = a.strides[0] // isz, ldb = b.strides[0] // isz
    cdef size_t nbytes = (rc_matmul_f_tn_bytes(K, m, n) if floating is float
                          else rc_matmul_d_tn_bytes(K, m, n))
    ws = cache_bytes(nbytes)    # held until the kernel returns
    cdef void *wsp = array_data(ws) if ws is not None else NULL
    cdef int done
    with nogil:
        if floating is float:
            done = rc_matmul_f_tn_ws(K, m, n, &a[0, 0], lda, &b[0, 0], ldb, &c[0, 0], n,
                                     wsp, nbytes)
        else:
            done = rc_matmul_d_tn_ws(K, m, n, &a[0, 0], lda, &b[0, 0], ldb, &c[0, 0], n,
                                     wsp, nbytes)
    return done != 0


cdef _operand_error(a, b, out, str what):
    """Why matmul / matmul_tn_add refuse these operands (a TypeError or ValueError
    naming the argument), or None: 2-D arrays of one native float32/float64 dtype,
    `out` (None: not checked) C-ordered, writeable, overlapping neither."""
    for name, arr in (("a", a), ("b", b), ("out", out)):
        if arr is None:
            continue
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            return TypeError(f"{what}: {name} must be a 2-D ndarray")
        if arr.dtype != a.dtype or not (a.dtype == np.float32 or a.dtype == np.float64) \
                or not a.dtype.isnative:
            return TypeError(f"{what}: a, b and out must share one float32/float64 dtype, "
                             f"got {a.dtype}, {b.dtype}, "
                             f"{out.dtype if out is not None else None}")
    if out is None:
        return None
    if not (out.flags.c_contiguous and out.flags.writeable):
        return ValueError(f"{what}: out must be a writeable C-ordered array")
    if np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return ValueError(f"{what}: out must not overlap a or b")
    return None


cdef _operands(a, b, out, str what):
    """The dtype of operands matmul / matmul_tn_add take; raises _operand_error's
    error otherwise."""
    err = _operand_error(a, b, out, what)
    if err is not None:
        raise err
    return a.dtype


def takes(a, b, out=None):
    """Whether ``matmul`` / ``matmul_tn_add`` take these operands rather than raise
    (``out`` None: a fresh C-ordered array of ``a``'s dtype); the callers that fall
    back to BLAS for other arrays ask first (``rnncore._bindings``)."""
    return _operand_error(a, b, out, "takes") is None


cdef bint _strides_whole(arr):
    """Aligned, with non-negative strides in whole elements."""
    cdef Py_ssize_t isz = arr.itemsize
    return arr.flags.aligned and arr.strides[0] >= 0 and arr.strides[1] >= 0 \
        and arr.strides[0] % isz == 0 and arr.strides[1] % isz == 0


cdef bint _rows_unit(arr):
    """Aligned rows with unit element stride and a non-negative row stride in whole
    elements."""
    return _strides_whole(arr) and (arr.shape[1] <= 1 or arr.strides[1] == arr.itemsize)


def matmul(a, b, out, double beta=0.0):
    """``out[...] = a @ b + beta * out`` on the packed kernel; True if done.

    Parameters
    ----------
    a : ndarray, shape (M, K)
        Rows with unit element stride (C-ordered, or rows of a larger array).
    b : ndarray, shape (K, N)
        Any non-negative strides (a transposed view ``W.T`` is packed as it is).
    out : ndarray, shape (M, N)
        C-ordered, writeable, not overlapping ``a`` or ``b``.
    beta : float
        0 writes ``out`` without reading it.

    Returns
    -------
    bool
        False, with nothing written, where the rule (rc_matmul_use) leaves the
        product to BLAS or for layouts this path does not take.
    """
    dt = _operands(a, b, out, "matmul")
    if a.shape[1] != b.shape[0] or out.shape[0] != a.shape[0] or out.shape[1] != b.shape[1]:
        raise ValueError(f"matmul: shapes {a.shape} @ {b.shape} -> {out.shape} do not match")
    if not matmul_use(a.shape[0], b.shape[1], a.shape[1], a.itemsize):
        return False
    if not (_rows_unit(a) and _strides_whole(b)):
        return False
    if dt == np.float32:
        return _mm[float](a, b, out, <float>beta)
    return _mm[double](a, b, out, beta)


def matmul_tn_add(a, b, out):
    """``out += a.T @ b`` on the dW kernel (rc_gemm_dw.h); True if done.

    Parameters
    ----------
    a : ndarray, shape (K, M)
    b : ndarray, shape (K, N)
        Both with rows of unit element stride (e.g. C-ordered).
    out : ndarray, shape (M, N)
        C-ordered, writeable, not overlapping ``a`` or ``b``; accumulated into.

    Returns
    -------
    bool
        False, with nothing written, where the rule (rc_matmul_tn_use: the dW
        kernel's sizes) leaves the product to BLAS or for layouts this path does
        not take.
    """
    _operands(a, b, out, "matmul_tn_add")
    if a.shape[0] != b.shape[0] or out.shape[0] != a.shape[1] or out.shape[1] != b.shape[1]:
        raise ValueError(f"matmul_tn_add: shapes {a.shape}^T @ {b.shape} -> {out.shape} "
                         "do not match")
    cdef Py_ssize_t K = a.shape[0], m = a.shape[1], n = b.shape[1]
    if not matmul_tn_use(K, m, n):
        return False
    if not (_rows_unit(a) and _rows_unit(b)):
        return False
    if a.dtype == np.float32:
        return _tn[float](a, b, out)
    return _tn[double](a, b, out)


def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_threads.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)


def _rule_allows_kernel():
    """Whether the rule may take products at all on this machine and configuration:
    the kernels' own threads allowed (``rnncore.set_row_split``) and at most 8 CPUs
    (rc_matmul_machine); the test hook's forced mode takes them regardless."""
    return bool(matmul_machine())


cdef Mat _operand(const floating[:, :] x):
    """x as a Mat: row-major (last axis contiguous) or the transposed view of one."""
    cdef Py_ssize_t isz = sizeof(floating)
    if x.shape[1] == 1 or x.strides[1] == isz:
        return mat(&x[0, 0], x.strides[0] // isz if x.shape[0] > 1 else x.shape[1], NoTrans)
    return mat(&x[0, 0], x.strides[1] // isz, Trans)


def _mm_in_section(const floating[:, :] a, const floating[:, :] b, floating[:, :] c,
                   double alpha=1.0, double beta=0.0, bint section=True):
    """Test hook: C := alpha A B + beta C in place through the kernels' `mm`, inside a
    single-thread section of this thread (`section`; else as outside one). A, B and C
    are 2-D arrays of one dtype, each with its last or its first axis contiguous
    (a transposed view: _gemm.pxd's Trans operand). Returns C."""
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n or m == 0 or n == 0 or k == 0:
        raise ValueError("shapes do not match, or an empty product")
    cdef Mat ma = _operand(a), mb = _operand(b), mc = _operand(c)
    cdef int tok = 0
    with nogil:
        if section:
            tok = single_open()
        mm(m, n, k, <floating>alpha, ma, mb, <floating>beta, mc)
        single_close(tok)
    return np.asarray(c)


include "_pack_hooks.pxi"
