# How a kernel sees its arrays (header-only: cdef inline).
#
# Sequences reach a kernel as 3-D arrays in logical (T, N, F) order whose last
# axis is contiguous. Time-major data (T, N, F) arrives as is; batch-major data
# (N, T, F) arrives as its transposed view, so no copy is ever made. The
# all-steps GEMMs need the T*N rows to form one matrix with a uniform row
# stride ("the uniform view"):
#   time-major:  st == N*sn, row (t, n) is t*N + n, ld = sn, step shift N rows;
#   batch-major: sn == T*st, row (n, t) is n*T + t, ld = st, step shift 1 row.
# A `Seq` carries one such array; 2-D operands are `Mat`s (_blas.pxd).

from _blas cimport Mat, mat, NoTrans, Trans

cdef struct Seq:        # a (T, N, F) sequence, element (t, n, f) at p[t*st + n*sn + f]
    void *p             # (void *: one struct serves float and double; NULL if empty)
    Py_ssize_t st, sn   # step and row strides (elements)
    Py_ssize_t ld       # row stride of the uniform (T*N, F) view
    bint bm             # batch-major: the uniform view's rows are n*T + t


cdef inline Seq seq(const void *p, Py_ssize_t st, Py_ssize_t sn, Py_ssize_t ld,
                    bint bm) noexcept nogil:
    cdef Seq s
    s.p = <void *>p
    s.st = st
    s.sn = sn
    s.ld = ld
    s.bm = bm
    return s


cdef inline Mat uniform(Seq s) noexcept nogil:
    """The uniform (T*N, F) view of a sequence as a row-major operand."""
    return mat(s.p, s.ld, NoTrans)


cdef inline Seq every_pth_row(Seq s, int k, int P, size_t isz) noexcept nogil:
    """Rows k, k+P, k+2P, ... of every step (isz: bytes per element)."""
    if s.p != NULL:
        s.p = <char *>s.p + k * s.sn * <Py_ssize_t>isz
        s.sn *= P
    return s


cdef inline Seq rows_block(Seq s, Py_ssize_t before, size_t isz) noexcept nogil:
    """Rows before, before+1, ... of every step (a share's own block of rows)."""
    if s.p != NULL:
        s.p = <char *>s.p + before * s.sn * <Py_ssize_t>isz
    return s


cdef inline Py_ssize_t seq_ld(Py_ssize_t st, Py_ssize_t sn, Py_ssize_t T,
                              Py_ssize_t N, Py_ssize_t F, bint *batch_major) noexcept nogil:
    """Row stride of the uniform (T*N, F) view of a (T, N, F) array, or -1."""
    batch_major[0] = False
    if T <= 1:
        if N <= 1:
            return F if F > 0 else 1
        return sn if sn >= F else -1
    if N <= 1:
        batch_major[0] = True
        return st if st >= F and st > 0 else -1
    if sn >= F and st == N * sn:
        return sn
    if st >= F and sn == T * st:
        batch_major[0] = True
        return st
    return -1


cdef inline bint row_major_fits(Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t rows, Py_ssize_t cols,
                                Py_ssize_t *ld) noexcept nogil:
    """Whether a (rows, cols) array with element strides (s0, s1) is row-major; its ld."""
    if not ((s1 == 1 or cols <= 1) and (s0 >= cols or rows <= 1)):
        return False
    ld[0] = s0 if (rows > 1 and s0 >= 1) else (cols if cols >= 1 else 1)
    if ld[0] < cols:
        ld[0] = cols
    return True


cdef inline bint mat_layout(Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t rows, Py_ssize_t cols,
                            Mat *a) noexcept nogil:
    """BLAS description (ld, t) of a 2-D (rows, cols) array with element strides (s0, s1).

    t = NoTrans: row-major, element (i, j) at i*ld + j.
    t = Trans: transpose of a row-major (cols, rows) array, element (i, j) at j*ld + i.
    Returns False when neither fits (the caller copies to C order).
    """
    a.nr = 0    # a plain operand, not packed
    if row_major_fits(s0, s1, rows, cols, &a.ld):
        a.t = NoTrans
        return True
    if row_major_fits(s1, s0, cols, rows, &a.ld):
        a.t = Trans
        return True
    return False
