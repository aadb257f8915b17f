# The thin BLAS layer of rnncore's kernels (header-only: cdef inline).
#
# BLAS is SciPy's (scipy.linalg.cython_blas), resolved when the module is
# imported: nothing is linked at build time, and it is the same OpenBLAS that
# NumPy/SciPy users already have. Everything here is `noexcept nogil`.
#
# A matrix operand is a `Mat` (pointer, ld, t): t = NoTrans means row-major
# storage, element (i, j) at p[i*ld + j]; t = Trans means the logical matrix is
# the transpose of a row-major one, element (i, j) at p[j*ld + i] (a
# PyTorch-layout weight of shape (H, D) seen as our (D, H) operand, or a
# Fortran-ordered array). Row-major GEMM is done by swapping operands
# (C^T = B^T A^T), never by copying. Which GEMM runs (BLAS or our own) is
# decided in _gemm.pxd. A recurrent weight packed once for a time loop
# (rc_gemm_packed.h) is a Mat too, with nr > 0 (see _gemm.pxd: step_weight);
# only our packed kernel reads it.

from scipy.linalg.cython_blas cimport sgemm, dgemm

ctypedef fused floating:
    float
    double

cdef enum BLAS_Trans:
    NoTrans = 0     # row-major
    Trans = 1       # the transposed view of a row-major array

cdef struct Mat:    # a BLAS operand (void *: one struct serves float and double)
    void *p
    Py_ssize_t ld       # packed (nr > 0): rows per panel, panels nr * ld elements apart
    BLAS_Trans t        # packed: NoTrans, the logical matrix is the packed B; Trans, B^T
    Py_ssize_t nr       # packed: the panel width; 0: a plain (strided) operand


cdef inline Mat mat(const void *p, Py_ssize_t ld, BLAS_Trans t) noexcept nogil:
    """The operand (p, ld, t)."""
    cdef Mat a
    a.p = <void *>p
    a.ld = ld
    a.t = t
    a.nr = 0
    return a


cdef inline Mat transposed(Mat a) noexcept nogil:
    """The transpose of a logical matrix: the same storage, the other flag."""
    a.t = NoTrans if a.t == Trans else Trans
    return a


cdef inline Mat col_block(Mat a, Py_ssize_t j, size_t isz) noexcept nogil:
    """The column block [:, j:] of a logical matrix (isz: bytes per element).

    Packed: columns of B start at the first panel at or past j (a block packed
    from a panel boundary, pack_weight's `split`); columns of B^T (rows of B)
    are j rows into every panel.
    """
    cdef Py_ssize_t off
    if a.nr > 0:
        off = (j + a.nr - 1) // a.nr * a.nr * a.ld if a.t == NoTrans else j * a.nr
    else:
        off = j * a.ld if a.t == Trans else j
    a.p = <char *>a.p + off * <Py_ssize_t>isz
    return a


cdef inline void gemm_rm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                         Mat a, Mat b, floating beta, floating *c, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (m, n) := alpha op(A) (m, k) op(B) (k, n) + beta C with BLAS (m, n > 0)."""
    # Column-major BLAS sees row-major C as C^T (n, m) = op(B)^T op(A)^T.
    # The int casts are exact: every size and leading dimension was checked
    # <= INT_MAX at the entry point (_checks.pxd: blas_fits).
    cdef char transa = b'T' if b.t == Trans else b'N'
    cdef char transb = b'T' if a.t == Trans else b'N'
    cdef int m_ = <int>n, n_ = <int>m, k_ = <int>k
    cdef int lda_ = <int>b.ld, ldb_ = <int>a.ld, ldc_ = <int>ldc
    if k <= 0:
        # BLAS with k = 0 only scales C; do it explicitly and portably.
        scale_rows(c, ldc, m, n, beta)
        return
    if floating is float:
        sgemm(&transa, &transb, &m_, &n_, &k_, &alpha, <float *>b.p, &lda_,
              <float *>a.p, &ldb_, &beta, c, &ldc_)
    else:
        dgemm(&transa, &transb, &m_, &n_, &k_, &alpha, <double *>b.p, &lda_,
              <double *>a.p, &ldb_, &beta, c, &ldc_)


cdef inline void scale_rows(floating *c, Py_ssize_t ldc, Py_ssize_t m, Py_ssize_t n,
                            floating beta) noexcept nogil:
    """C (m, n) := beta C, with beta = 0 writing exact zeros (no NaN * 0)."""
    cdef Py_ssize_t i, j
    for i in range(m):
        if beta == 0:
            for j in range(n):
                c[i * ldc + j] = 0
        elif beta != 1:
            for j in range(n):
                c[i * ldc + j] *= beta


cdef extern from "rc_gemm.h" nogil:
    void rc_colsum_add_f(float *out, float *out2, Py_ssize_t n2, const float *a,
                         Py_ssize_t lda, Py_ssize_t m, Py_ssize_t n)
    void rc_colsum_add_d(double *out, double *out2, Py_ssize_t n2, const double *a,
                         Py_ssize_t lda, Py_ssize_t m, Py_ssize_t n)
    bint rc_any_nonfinite_f(const float *a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                            Py_ssize_t cs)
    bint rc_any_nonfinite_d(const double *a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                            Py_ssize_t cs)
    bint rc_any_nonzero_f(const float *a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                          Py_ssize_t cs)
    bint rc_any_nonzero_d(const double *a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                          Py_ssize_t cs)


cdef inline void colsum_add(floating *out, const floating *a, Py_ssize_t lda,
                            Py_ssize_t m, Py_ssize_t n, floating *out2=NULL,
                            Py_ssize_t n2=0) noexcept nogil:
    """out (n,) += A (m, n).sum(axis=0), A row-major; and out2 (n2,) += the sums of
    its first n2 columns (one read of A for both; rc_colsum_add_*, vectorized)."""
    if floating is float:
        rc_colsum_add_f(out, out2, n2, a, lda, m, n)
    else:
        rc_colsum_add_d(out, out2, n2, a, lda, m, n)


cdef inline bint all_finite(const floating *a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                            Py_ssize_t cs=1) noexcept nogil:
    """Whether A (m, n), element (i, j) at a[i*rs + j*cs], has no inf or NaN."""
    if floating is float:
        return not rc_any_nonfinite_f(a, m, n, rs, cs)
    else:
        return not rc_any_nonfinite_d(a, m, n, rs, cs)


cdef inline bint all_zero(const floating *a, Py_ssize_t m, Py_ssize_t n, Py_ssize_t rs,
                          Py_ssize_t cs=1) noexcept nogil:
    """Whether A (m, n) (as in all_finite) is all zeros (+0 or -0)."""
    if floating is float:
        return not rc_any_nonzero_f(a, m, n, rs, cs)
    else:
        return not rc_any_nonzero_d(a, m, n, rs, cs)
