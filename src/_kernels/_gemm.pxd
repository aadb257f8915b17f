# Which GEMM a kernel product runs on (header-only: cdef inline): BLAS
# (_blas.pxd) or rnncore's own kernels (rc_gemm.h) -- the small-M kernel for a
# batch of at most RC_SMALL_M rows, the unpacked panel kernel for a time loop's
# per-step product with a row-major weight. The dispatch points are `mm`,
# `mm_step`, `use_panel` (the panel shape policy), `step_weight` (which layout
# of the recurrent weight a loop reads) and, in _threads.pxd, `row_threads`.

from _blas cimport floating, Mat, mat, transposed, NoTrans, Trans, gemm_rm
from _threads cimport row_threads

cdef extern from "rc_gemm.h" nogil:
    const int RC_SMALL_M
    void rc_gemm_small_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                         const float *a, Py_ssize_t lda, const float *b, Py_ssize_t ldb,
                         int bt, float beta, float *c, Py_ssize_t ldc)
    void rc_gemm_small_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                         const double *a, Py_ssize_t lda, const double *b, Py_ssize_t ldb,
                         int bt, double beta, double *c, Py_ssize_t ldc)
    void rc_gemm_panel_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                         Py_ssize_t lda, const float *b, Py_ssize_t ldb, float beta,
                         float *c, Py_ssize_t ldc)
    void rc_gemm_panel_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double *a,
                         Py_ssize_t lda, const double *b, Py_ssize_t ldb, double beta,
                         double *c, Py_ssize_t ldc)
    bint use_panel "rc_use_panel"(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k)
    bint panel_shape "rc_panel_shape"(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k)


cdef inline void mm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha, Mat a, Mat b,
                    floating beta, Mat c) noexcept nogil:
    """C (m, n) := alpha op(A) (m, k) op(B) (k, n) + beta C, any of the three transposed views."""
    cdef Mat s
    cdef Py_ssize_t r
    if c.t == Trans:
        # C stored as row-major C^T (n, m) = B^T A^T.
        s = a
        a = transposed(b)
        b = transposed(s)
        r = m
        m = n
        n = r
    if m <= 0 or n <= 0:
        return
    if m <= RC_SMALL_M and a.t == NoTrans and k > 0:
        # tiny batch: our vectorized micro-kernel, no BLAS thread hand-off
        if floating is float:
            rc_gemm_small_f(m, n, k, alpha, <float *>a.p, a.ld, <float *>b.p, b.ld, b.t,
                            beta, <float *>c.p, c.ld)
        else:
            rc_gemm_small_d(m, n, k, alpha, <double *>a.p, a.ld, <double *>b.p, b.ld, b.t,
                            beta, <double *>c.p, c.ld)
        return
    gemm_rm(m, n, k, alpha, a, b, beta, <floating *>c.p, c.ld)


cdef inline void mm_step(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         const floating *a, Py_ssize_t lda, Mat b, floating beta,
                         floating *c, Py_ssize_t ldc) noexcept nogil:
    """A time loop's per-step product, C (m, n) := A (m, k) op(B) (k, n) + beta C.

    A and C row-major. Goes to the unpacked panel kernel (rc_gemm.h) when B is
    row-major and rc_use_panel says so (B is the weight matrix: BLAS would
    repack it on every step), else to `mm`.
    """
    if b.t == NoTrans and use_panel(m, n, k):
        if floating is float:
            rc_gemm_panel_f(m, n, k, a, lda, <float *>b.p, b.ld, beta, c, ldc)
        else:
            rc_gemm_panel_d(m, n, k, a, lda, <double *>b.p, b.ld, beta, c, ldc)
        return
    mm(m, n, k, <floating>1, mat(a, lda, NoTrans), b, beta, mat(c, ldc, NoTrans))


cdef inline object step_weight(const floating[:, :] Wh, Mat *wh, Py_ssize_t T, Py_ssize_t N,
                               Py_ssize_t GH, Py_ssize_t H, bint backward=False):
    """The recurrent weight as a time loop's per-step products will read it.

    Forward multiplies by Wh (H, GH), backward by Wh^T (GH, H). The unpacked
    panel kernel (rc_use_panel) reads that operand row-major; when it arrives
    as the other layout (a PyTorch-layout weight is the transposed view of a
    (GH, H) array: right for backward, transposed for forward; a (H, GH) array
    the other way round) and the loop will use the panel kernel, the loop gets
    one C-ordered copy of the operand for all T steps -- the pass BLAS would
    otherwise make on every step. Then `wh` is pointed at the copy, which is
    returned (the caller keeps it alive); else `wh` is left as is and None
    returned.
    """
    import numpy as np
    if T <= 1 or (wh.t == Trans) == backward:
        return None
    # the operand (k, n) and, as the loop will decide, the rows per thread (m): rows
    # split over P threads run inside a single-thread section, so only the shape counts
    cdef Py_ssize_t n = H if backward else GH, k = GH if backward else H
    cdef int P = row_threads(N, N * GH * H, T)
    if not (use_panel(N, n, k) if P == 1 else panel_shape((N + P - 1) // P, n, k)):
        return None
    # forward: Wh (H, GH) row-major; backward: Wh^T (GH, H) row-major, the
    # logical Wh being its transposed view
    copy = np.ascontiguousarray(np.asarray(Wh).T if backward else np.asarray(Wh))
    cdef const floating[:, :] c = copy
    wh[0] = mat(&c[0, 0], H if backward else GH, Trans if backward else NoTrans)
    return copy
