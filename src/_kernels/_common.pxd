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


# ------------------------------------------------------------ BLAS threads
# The time loops run BLAS single-threaded when a step's GEMM is small (see
# rc_simd.h); rnncore._threads installs the BLAS's thread functions at import.

cdef extern from "rc_simd.h" nogil:
    int loop_threads_begin "rc_loop_threads_begin"(long long work)
    void loop_threads_end "rc_loop_threads_end"(int saved)
    void blas_thread_hooks "rc_blas_thread_hooks"(size_t set_fn, size_t get_fn,
                                                  long long min_work, size_t state,
                                                  int row_split)
    int row_threads "rc_row_threads"(Py_ssize_t N, long long work, Py_ssize_t T)
    Py_ssize_t share "rc_share"(Py_ssize_t B, int k, int P)
    ctypedef void (*task_fn "rc_task_fn")(void *) noexcept nogil
    void run_tasks "rc_run_tasks"(task_fn fn, void *args, size_t size, int P)
    int single_open "rc_single_open"()
    void single_close "rc_single_close"(int opened)


# ------------------------------------------------------------ argument checks
# Used by the kernels' `def` entry points before `with nogil` (they raise
# ValueError naming the argument; nothing inside nogil can fail). They are
# `cdef inline` in this header so that every kernel module compiles its own
# copy: a plain `cdef` function shared between compiled modules fails at import.

cdef inline Py_ssize_t seq_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz,
                                 str name, Py_ssize_t T, Py_ssize_t N, Py_ssize_t F,
                                 Py_ssize_t *st, Py_ssize_t *sn, bint *bm) except -1:
    """Row stride of the uniform view of a (T, N, F) sequence (raises ValueError).

    Also returns the step and row strides (elements) in st, sn and whether the
    layout is batch-major in bm.
    """
    if shape[0] != T or shape[1] != N or shape[2] != F:
        raise ValueError(f"{name}: expected shape {(T, N, F)}, got {(shape[0], shape[1], shape[2])}")
    if F > 1 and strides[2] != isz:
        raise ValueError(f"{name}: the feature axis must be contiguous")
    st[0] = strides[0] // isz
    sn[0] = strides[1] // isz
    if T == 0 or N == 0 or F == 0:
        # an empty array: NumPy may give it any strides (even 0); nothing is read
        bm[0] = False
        return F if F > 0 else 1
    cdef Py_ssize_t ld = seq_ld(st[0], sn[0], T, N, F, bm)
    if ld < 0 or st[0] < 0 or sn[0] < 0:
        raise ValueError(f"{name}: layout is neither time-major nor batch-major")
    return ld


cdef inline int mat_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz, str name,
                          Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t *ld, bint *tr) except -1:
    """BLAS (ld, trans) of a (rows, cols) matrix (raises ValueError)."""
    if shape[0] != rows or shape[1] != cols:
        raise ValueError(f"{name}: expected shape {(rows, cols)}, got {(shape[0], shape[1])}")
    if not mat_layout(strides[0] // isz, strides[1] // isz, rows, cols, ld, tr):
        raise ValueError(f"{name}: needs a row-major array or a transposed view of one")
    return 0


cdef inline int rows_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz, str name,
                           Py_ssize_t rows, Py_ssize_t cols) except -1:
    """A C-contiguous (rows, cols) state array (raises ValueError)."""
    if shape[0] != rows or shape[1] != cols or (cols > 1 and strides[1] != isz) \
            or (rows > 1 and strides[0] != cols * isz):
        raise ValueError(f"{name}: expected a C-contiguous array of shape {(rows, cols)}")
    return 0


cdef inline int vec_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz, str name,
                          Py_ssize_t n) except -1:
    """A contiguous (n,) vector (raises ValueError)."""
    if shape[0] != n or (n > 1 and strides[0] != isz):
        raise ValueError(f"{name}: expected a contiguous array of shape {(n,)}")
    return 0


cdef inline tuple check_batch_sizes(object batch_sizes, Py_ssize_t T, Py_ssize_t N):
    """(array, used): batch_sizes as a contiguous intp array, validated."""
    import numpy as np
    if batch_sizes is None:
        return np.zeros(1, dtype=np.intp), False
    bs = np.ascontiguousarray(batch_sizes, dtype=np.intp)
    if bs.shape != (T,):
        raise ValueError(f"batch_sizes: expected shape {(T,)}, got {bs.shape}")
    if T and (bs.max() > N or bs.min() < 0 or np.any(np.diff(bs) > 0)):
        raise ValueError("batch_sizes: must be non-increasing values in [0, N]")
    return bs, True


cdef inline object seq_empty(bint batch_major, Py_ssize_t T, Py_ssize_t N, Py_ssize_t F,
                             object dtype):
    """An uninitialized (T, N, F) array in the given layout kind, contiguous in it.

    Workspaces and saved arrays are allocated in h's layout kind so that they
    form one matrix with h's row order (for the all-steps GEMMs).
    """
    import numpy as np
    if batch_major:
        return np.empty((N, T, F), dtype=dtype).transpose(1, 0, 2)
    return np.empty((T, N, F), dtype=dtype)


cdef inline object writable_workspace(object arr, str name, Py_ssize_t T, Py_ssize_t N,
                                      Py_ssize_t F, bint batch_major):
    """A saved array reused as backward's gradient workspace (``overwrite_saved``).

    It must be what forward returned: writable, (T, N, F), contiguous in h's
    layout kind (raises ValueError otherwise).
    """
    import numpy as np
    a = np.asarray(arr)
    b = a.transpose(1, 0, 2) if (batch_major and a.ndim == 3) else a
    if a.shape != (T, N, F) or not a.flags.writeable or not b.flags.c_contiguous:
        raise ValueError(f"{name}: overwrite_saved needs the writable array forward "
                         f"returned, shape {(T, N, F)}, contiguous in h's layout")
    return a


from _blas cimport use_panel, panel_shape


cdef inline object step_weight(object Wh, bint wh_t, Py_ssize_t T, Py_ssize_t N,
                               Py_ssize_t GH, Py_ssize_t H, bint backward=False):
    """The recurrent weight as a time loop's per-step products will read it.

    Forward multiplies by Wh (H, GH), backward by Wh^T (GH, H). The unpacked
    panel kernel (rc_use_panel) reads that operand row-major; when it arrives
    as the other layout (a PyTorch-layout weight is the transposed view, wh_t,
    of a (GH, H) array: right for backward, transposed for forward; a (H, GH)
    array the other way round) and the loop will use the panel kernel, the
    loop gets one C-ordered copy of the operand for all T steps -- the pass
    BLAS would otherwise make on every step. Returns (array, ld, wh_t) to use
    instead of the given weight, or None.
    """
    import numpy as np
    if T <= 1 or wh_t == backward:
        return None
    # the operand (k, n) and, as the loop will decide, the rows per thread (m): rows
    # split over P threads run inside a single-thread section, so only the shape counts
    cdef Py_ssize_t n = H if backward else GH, k = GH if backward else H
    cdef int P = row_threads(N, N * GH * H, T)
    if not (use_panel(N, n, k) if P == 1 else panel_shape((N + P - 1) // P, n, k)):
        return None
    if backward:
        # Wh^T (GH, H) row-major: the logical Wh is its transposed view
        return np.ascontiguousarray(np.asarray(Wh).T), H, True
    return np.ascontiguousarray(np.asarray(Wh)), GH, False


# ------------------------------------------------------------ BPTT helpers
# Shared by the gated kernels (gru.pyx, lstm.pyx); rnn.pyx has its own copies.

from libc.string cimport memcpy
from _blas cimport floating, mm, scale_rows


cdef inline Py_ssize_t active(const Py_ssize_t *bs, Py_ssize_t t, Py_ssize_t T,
                              Py_ssize_t N) noexcept nogil:
    """Rows active at step t (0 outside [0, T)); bs == NULL means all N."""
    if t < 0 or t >= T:
        return 0
    return bs[t] if bs != NULL else N


cdef inline void dwh_accumulate(
        const floating *h, Py_ssize_t h_ld, Py_ssize_t h_st, Py_ssize_t h_sn,
        const floating *h0,
        const floating *dz, Py_ssize_t dz_ld, Py_ssize_t dz_st, Py_ssize_t dz_sn,
        floating *dzs, floating *dwh, Py_ssize_t dwh_ld, bint dwh_t,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Py_ssize_t GH, bint batch_major,
        const Py_ssize_t *bs, bint reverse) noexcept nogil:
    """dWh (H, GH) += sum_t h_prev(t)^T dz_t, with h_prev(t) = h0 at each row's first step.

    h: the (T, N, H) outputs (uniform view: ld, step and row strides), zeros
    at padded positions; h0: (N, H) C-contiguous; dz: the (T, N, GH)
    pre-activation gradients in h's layout kind (zeros at padded positions);
    dzs: (N, GH) scratch, used only when reverse and bs != NULL.

    In the uniform view the previous step of a row is one step-shift away, so
    all pairs are one shifted GEMM; in batch-major layout the pairs that
    straddle two sequences are subtracted; then h0^T dz at each row's first
    step is added (gathered per row in the reverse direction with lengths).
    """
    cdef Py_ssize_t t, n, R = T * N
    cdef Py_ssize_t shift = dz_st // dz_ld    # N rows (time-major) or 1 (batch-major)
    if T > 1:
        if not reverse:
            # pairs (h_{t-1}, dz_t):  (H, GH) += (H, R-shift)(R-shift, GH)
            mm(H, GH, R - shift, <floating>1, h, h_ld, True,
               dz + dz_st, dz_ld, False, <floating>1, dwh, dwh_ld, dwh_t)
            if batch_major and N > 1:
                # (h[n-1, T-1], dz[n, 0]) for n = 1..N-1   (H, GH) -= (H, N-1)(N-1, GH)
                mm(H, GH, N - 1, <floating>-1, h + (T - 1) * h_st, h_sn, True,
                   dz + dz_sn, dz_sn, False, <floating>1, dwh, dwh_ld, dwh_t)
        else:
            # pairs (h_{t+1}, dz_t)
            mm(H, GH, R - shift, <floating>1, h + h_st, h_ld, True,
               dz, dz_ld, False, <floating>1, dwh, dwh_ld, dwh_t)
            if batch_major and N > 1:
                # (h[n+1, 0], dz[n, T-1]) for n = 0..N-2
                mm(H, GH, N - 1, <floating>-1, h + h_sn, h_sn, True,
                   dz + (T - 1) * dz_st, dz_sn, False, <floating>1, dwh, dwh_ld, dwh_t)
    if T > 0:
        # h0^T dz at each row's first step        (H, GH) += (H, N)(N, GH)
        if not reverse:
            mm(H, GH, N, <floating>1, h0, H, True, dz, dz_sn, False,
               <floating>1, dwh, dwh_ld, dwh_t)
        elif bs == NULL:
            mm(H, GH, N, <floating>1, h0, H, True, dz + (T - 1) * dz_st, dz_sn, False,
               <floating>1, dwh, dwh_ld, dwh_t)
        else:
            # reverse with lengths: row n starts at t = len_n - 1; gather those rows
            scale_rows(dzs, GH, N, GH, <floating>0)
            for t in range(T):
                for n in range(active(bs, t + 1, T, N), bs[t]):
                    memcpy(dzs + n * GH, dz + t * dz_st + n * dz_sn, GH * sizeof(floating))
            mm(H, GH, N, <floating>1, h0, H, True, dzs, GH, False,
               <floating>1, dwh, dwh_ld, dwh_t)


# ------------------------------------------------------------ single-step fast path
# The cells' per-step entry points (`step` in each kernel module) take their
# arrays through the buffer protocol directly: a typed memoryview costs about
# 0.3-0.4 us to acquire, which is most of a small step. They *never raise* on
# an unsuitable argument: they return False with nothing held, and the caller
# takes the validated path, which then raises the clear error.

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE

cdef extern from "Python.h":
    int get_buffer_noexc "PyObject_GetBuffer"(object obj, Py_buffer *view, int flags)
    void PyErr_Clear()
    void release_buffer "PyBuffer_Release"(Py_buffer *view)

cdef enum:
    STEP_MAX_BUFS = 12

cdef struct StepBufs:
    Py_buffer v[STEP_MAX_BUFS]
    int n
    char fmt            # b'f' or b'd', set by the first buffer
    Py_ssize_t N        # batch rows, set by the first (N, F) / (F,) buffer
    int batched         # -1 unknown, 0 (F,), 1 (N, F)


cdef inline void step_init(StepBufs *b) noexcept:
    b.n = 0
    b.fmt = 0
    b.N = -1
    b.batched = -1


cdef inline void step_release(StepBufs *b) noexcept:
    while b.n > 0:
        b.n -= 1
        release_buffer(&b.v[b.n])


cdef inline void *step_buf(StepBufs *b, object obj, Py_ssize_t rows, Py_ssize_t cols,
                           bint writable) noexcept:
    """Acquire a C-contiguous float array; NULL if it does not qualify (nothing raised).

    rows >= 0: exactly (rows, cols); rows == -1: a 1-D (cols,) vector;
    rows == -3: any shape with exactly cols elements (a workspace);
    rows == -2: a batch of rows, (N, cols) or unbatched (cols,), N and the
    batchedness agreeing with the batch buffers acquired before. Empty arrays
    and mixed float32/float64 do not qualify either.
    """
    cdef Py_buffer *v
    cdef int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT
    cdef bint ok
    if obj is None or b.n >= STEP_MAX_BUFS:
        return NULL
    if writable:
        flags |= PyBUF_WRITABLE
    v = &b.v[b.n]
    if get_buffer_noexc(obj, v, flags) != 0:
        PyErr_Clear()
        return NULL
    ok = v.format != NULL and (v.format[0] == b'f' or v.format[0] == b'd') \
        and v.format[1] == 0 and (b.fmt == 0 or v.format[0] == b.fmt)
    if ok and rows >= 0:
        ok = v.ndim == 2 and v.shape[0] == rows and v.shape[1] == cols
    elif ok and rows == -1:
        ok = v.ndim == 1 and v.shape[0] == cols
    elif ok and rows == -3:
        ok = v.len == cols * v.itemsize
    elif ok:
        ok = (v.ndim == 1 or v.ndim == 2) and v.shape[v.ndim - 1] == cols \
            and (b.batched < 0 or b.batched == v.ndim - 1)
        if ok:
            if b.N >= 0 and (v.shape[0] if v.ndim == 2 else 1) != b.N:
                ok = False
            else:
                b.N = v.shape[0] if v.ndim == 2 else 1
                b.batched = v.ndim - 1
    if not ok or v.len == 0 or v.buf == NULL:
        # (empty arrays take the validated path too)
        release_buffer(v)
        return NULL
    b.fmt = v.format[0]
    b.n += 1
    return v.buf


cdef inline bint step_cell_bufs(StepBufs *b, object x, object h0, object h, object w_ih,
                                object w_hh, object b_ih, object b_hh, Py_ssize_t D,
                                Py_ssize_t H, Py_ssize_t GH, void **p) noexcept:
    """The arrays every cell's step takes, p = [x, h0, h, w_ih, w_hh, b_ih, b_hh].

    x (N, D) or (D,), h0 and the output h alike with H columns, PyTorch-layout
    weights (GH, D), (GH, H) and biases (GH,). False if any does not qualify
    (what was acquired stays in b for step_release).
    """
    cdef int i
    p[0] = step_buf(b, x, -2, D, False)
    p[1] = step_buf(b, h0, -2, H, False)
    p[2] = step_buf(b, h, -2, H, True)
    p[3] = step_buf(b, w_ih, GH, D, False)
    p[4] = step_buf(b, w_hh, GH, H, False)
    p[5] = step_buf(b, b_ih, -1, GH, False)
    p[6] = step_buf(b, b_hh, -1, GH, False)
    for i in range(7):
        if p[i] == NULL:
            return False
    return True


cdef inline void step_rows(const Py_ssize_t *bs, Py_ssize_t i, Py_ssize_t T, Py_ssize_t N,
                           bint backward, bint reverse, int k, int P, Py_ssize_t *t,
                           Py_ssize_t *tp, Py_ssize_t *B, Py_ssize_t *Bc) noexcept nogil:
    """Iteration i of a time loop over the rows k, k+P, ... of the batch.

    t: the step it processes (forward loops run t = 0..T-1, backward loops the
    other way; reversed for the reverse direction); tp: the step before it in
    the direction's order; B: this thread's rows active at t (a prefix); Bc:
    how many of them continue from tp (the rest start from the initial state).
    """
    t[0] = (T - 1 - i if reverse else i) if not backward else (i if reverse else T - 1 - i)
    tp[0] = t[0] + 1 if reverse else t[0] - 1
    B[0] = share(active(bs, t[0], T, N), k, P)
    Bc[0] = share(active(bs, tp[0], T, N), k, P)
    if Bc[0] > B[0]:
        Bc[0] = B[0]
