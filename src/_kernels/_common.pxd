# Layout helpers shared by the cell kernels (header-only: cdef inline).
#
# Sequences reach a kernel as 3-D arrays in logical (T, N, F) order whose last
# axis is contiguous. Time-major data (T, N, F) arrives as is; batch-major data
# (N, T, F) arrives as its transposed view, so no copy is ever made. The
# all-steps GEMMs need the T*N rows to form one matrix with a uniform row
# stride ("the uniform view"):
#   time-major:  st == N*sn, row (t, n) is t*N + n, ld = sn, step shift N rows;
#   batch-major: sn == T*st, row (n, t) is n*T + t, ld = st, step shift 1 row.

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


cdef inline bint mat_layout(Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t rows, Py_ssize_t cols,
                            Py_ssize_t *ld, bint *trans) noexcept nogil:
    """BLAS description (ld, trans) of a 2-D (rows, cols) array with element strides (s0, s1).

    trans = 0: row-major, element (i, j) at i*ld + j.
    trans = 1: transpose of a row-major (cols, rows) array, element (i, j) at j*ld + i.
    Returns False when neither fits (the caller copies to C order).
    """
    if (s1 == 1 or cols <= 1) and (s0 >= cols or rows <= 1):
        trans[0] = False
        ld[0] = s0 if (rows > 1 and s0 >= 1) else (cols if cols >= 1 else 1)
        if ld[0] < cols:
            ld[0] = cols
        return True
    if (s0 == 1 or rows <= 1) and (s1 >= rows or cols <= 1):
        trans[0] = True
        ld[0] = s1 if (cols > 1 and s1 >= 1) else (rows if rows >= 1 else 1)
        if ld[0] < rows:
            ld[0] = rows
        return True
    return False
