# The thin BLAS layer of rnncore's kernels (header-only: cdef inline).
#
# BLAS is SciPy's (scipy.linalg.cython_blas), resolved when the module is
# imported: nothing is linked at build time, and it is the same OpenBLAS that
# NumPy/SciPy users already have. Everything here is `noexcept nogil`.
#
# Matrices are described as (pointer, ld, t): t = 0 means row-major storage,
# element (i, j) at p[i*ld + j]; t = 1 means the logical matrix is the
# transpose of a row-major one, element (i, j) at p[j*ld + i] (a PyTorch-layout
# weight of shape (H, D) seen as our (D, H) operand, or a Fortran-ordered array).
# Row-major GEMM is done by swapping operands (C^T = B^T A^T), never by copying.

from scipy.linalg.cython_blas cimport sgemm, dgemm

cdef extern from "rc_simd.h" nogil:
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

ctypedef fused floating:
    float
    double


cdef inline void gemm_rm(bint ta, bint tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         floating alpha, const floating *a, Py_ssize_t lda,
                         const floating *b, Py_ssize_t ldb, floating beta,
                         floating *c, Py_ssize_t ldc) noexcept nogil:
    """Row-major C (m, n) := alpha op(A) (m, k) op(B) (k, n) + beta C."""
    # Column-major BLAS sees row-major C as C^T (n, m) = op(B)^T op(A)^T.
    cdef char transa = b'T' if tb else b'N'
    cdef char transb = b'T' if ta else b'N'
    cdef int m_ = <int>n, n_ = <int>m, k_ = <int>k
    cdef int lda_ = <int>ldb, ldb_ = <int>lda, ldc_ = <int>ldc
    if m <= 0 or n <= 0:
        return
    if m <= RC_SMALL_M and not ta and k > 0:
        # tiny batch: our vectorized micro-kernel, no BLAS thread hand-off
        if floating is float:
            rc_gemm_small_f(m, n, k, alpha, a, lda, b, ldb, tb, beta, c, ldc)
        else:
            rc_gemm_small_d(m, n, k, alpha, a, lda, b, ldb, tb, beta, c, ldc)
        return
    if k <= 0:
        # BLAS with k = 0 only scales C; do it explicitly and portably.
        scale_rows(c, ldc, m, n, beta)
        return
    if floating is float:
        sgemm(&transa, &transb, &m_, &n_, &k_, &alpha, <float *>b, &lda_,
              <float *>a, &ldb_, &beta, c, &ldc_)
    else:
        dgemm(&transa, &transb, &m_, &n_, &k_, &alpha, <double *>b, &lda_,
              <double *>a, &ldb_, &beta, c, &ldc_)


cdef inline void mm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                    const floating *a, Py_ssize_t lda, bint at,
                    const floating *b, Py_ssize_t ldb, bint bt, floating beta,
                    floating *c, Py_ssize_t ldc, bint ct) noexcept nogil:
    """C (m, n) := alpha A (m, k) B (k, n) + beta C, any of the three transposed views."""
    if ct:
        # C stored as row-major C^T (n, m) = B^T A^T.
        gemm_rm(not bt, not at, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc)
    else:
        gemm_rm(at, bt, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


cdef inline void mm_step(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         const floating *a, Py_ssize_t lda, const floating *b, Py_ssize_t ldb,
                         bint bt, floating beta, floating *c, Py_ssize_t ldc) noexcept nogil:
    """A time loop's per-step product, C (m, n) := A (m, k) op(B) (k, n) + beta C.

    A and C row-major. Goes to the unpacked panel kernel (rc_simd.h) when B is
    row-major and rc_use_panel says so (B is the weight matrix: BLAS would
    repack it on every step), else to `mm`.
    """
    if not bt and use_panel(m, n, k):
        if floating is float:
            rc_gemm_panel_f(m, n, k, a, lda, b, ldb, beta, c, ldc)
        else:
            rc_gemm_panel_d(m, n, k, a, lda, b, ldb, beta, c, ldc)
        return
    mm(m, n, k, <floating>1, a, lda, False, b, ldb, bt, beta, c, ldc, False)


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


cdef inline void colsum_add(floating *out, const floating *a, Py_ssize_t lda,
                            Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """out (n,) += A (m, n).sum(axis=0), A row-major."""
    cdef Py_ssize_t i, j
    cdef const floating *row
    for i in range(m):
        row = a + i * lda
        for j in range(n):
            out[j] += row[j]
