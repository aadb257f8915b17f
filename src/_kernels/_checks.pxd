# The kernels' entry-point argument checks (header-only: cdef inline).
#
# Used by the `def` entry points before `with nogil` (they raise ValueError
# naming the argument; nothing inside nogil can fail), and the allocations the
# entry points make. They are `cdef inline` in this header so that every kernel
# module compiles its own copy: a plain `cdef` function shared between compiled
# modules fails at import.

from libc.limits cimport INT_MAX
from libc.string cimport memcpy

from _blas cimport floating, Mat
from _buffer cimport array_data
from _gemm cimport aligned_empty, infer_chunk
from _layout cimport Seq, seq, seq_ld, mat_layout, uniform
from _loop cimport Loop, Input, Grads, loop_init


cdef inline int blas_fits(str name, Py_ssize_t v, str what) except -1:
    """ValueError unless v, a BLAS dimension or leading dimension, fits BLAS's 32-bit int
    (_blas.pxd casts them: a larger one would wrap, and OpenBLAS would refuse the call
    or read the wrong elements, leaving the output wrong)."""
    if v > INT_MAX:
        raise ValueError(f"{name}: {what} {v} exceeds INT_MAX = {INT_MAX}, the largest "
                         "size or stride BLAS accepts; split the batch or the sequence")
    return 0


cdef inline int seq_check(const floating[:, :, :] a, str name, Py_ssize_t T, Py_ssize_t N,
                          Py_ssize_t F, Seq *s) except -1:
    """The Seq of a (T, N, F) sequence, time- or batch-major (raises ValueError).

    Its pointer is NULL when the array is empty (nothing is read then).
    """
    cdef Py_ssize_t isz = sizeof(floating)
    if a.shape[0] != T or a.shape[1] != N or a.shape[2] != F:
        raise ValueError(f"{name}: expected shape {(T, N, F)}, got "
                         f"{(a.shape[0], a.shape[1], a.shape[2])}")
    if F > 1 and a.strides[2] != isz:
        raise ValueError(f"{name}: the feature axis must be contiguous")
    s.st = a.strides[0] // isz
    s.sn = a.strides[1] // isz
    if T == 0 or N == 0 or F == 0:
        # an empty array: NumPy may give it any strides (even 0); nothing is read
        s.p, s.bm, s.ld = NULL, False, (F if F > 0 else 1)
        return 0
    s.p = <void *>&a[0, 0, 0]
    s.ld = seq_ld(s.st, s.sn, T, N, F, &s.bm)
    if s.ld < 0 or s.st < 0 or s.sn < 0:
        raise ValueError(f"{name}: layout is neither time-major nor batch-major")
    blas_fits(name, T * N, "T*N rows")
    blas_fits(name, max(s.st, s.sn, s.ld, F), "stride (in elements)")
    return 0


cdef inline int running_seq(const floating[:, :, :] a, str name, Py_ssize_t T, Py_ssize_t N,
                             Py_ssize_t F, Seq *s) except -1:
    """The Seq of an inference call's running state: a (T, N, F) view of ONE (N, F)
    array, step stride 0 -- every step reads and writes the same rows, so the array
    ends holding each row's state after its last step (a forward loop leaves finished
    rows alone: no padding written). Raises ValueError for another shape, a
    non-contiguous feature axis or overlapping rows."""
    cdef Py_ssize_t isz = sizeof(floating)
    if a.shape[0] != T or a.shape[1] != N or a.shape[2] != F:
        raise ValueError(f"{name}: expected shape {(T, N, F)}, got "
                         f"{(a.shape[0], a.shape[1], a.shape[2])}")
    if (F > 1 and a.strides[2] != isz) or a.strides[0] != 0 or a.strides[1] < F * isz:
        raise ValueError(f"{name}: a running state needs step stride 0 and rows of "
                         f"contiguous features apart")
    s[0] = seq(&a[0, 0, 0], 0, a.strides[1] // isz, a.strides[1] // isz, False)
    return 0


cdef inline int same_layout(const Seq *x, const Seq *h, const Seq *dx, Py_ssize_t T,
                            Py_ssize_t N, Py_ssize_t D) except -1:
    """x, h (and dx, if given) in one layout kind, as the all-steps GEMMs need."""
    if D <= 0 or T <= 1 or N <= 1:
        return 0
    if dx == NULL and x.bm != h.bm:
        raise ValueError("x and h must share the same layout (time- or batch-major)")
    if dx != NULL and (x.bm != h.bm or x.bm != dx.bm):
        raise ValueError("x, h and dx must share the same layout (time- or batch-major)")
    return 0


cdef inline int mat_check(const floating[:, :] a, str name, Py_ssize_t rows, Py_ssize_t cols,
                          Mat *m) except -1:
    """The BLAS operand of a (rows, cols) matrix (raises ValueError); p NULL when empty."""
    cdef Py_ssize_t isz = sizeof(floating)
    if a.shape[0] != rows or a.shape[1] != cols:
        raise ValueError(f"{name}: expected shape {(rows, cols)}, got {(a.shape[0], a.shape[1])}")
    if not mat_layout(a.strides[0] // isz, a.strides[1] // isz, rows, cols, m):
        raise ValueError(f"{name}: needs a row-major array or a transposed view of one")
    blas_fits(name, max(rows, cols, m.ld), "size or stride (in elements)")
    m.p = <void *>&a[0, 0] if rows > 0 and cols > 0 else NULL
    return 0


cdef inline int rows_check(const floating[:, :] a, str name, Py_ssize_t rows,
                           Py_ssize_t cols) except -1:
    """A C-contiguous (rows, cols) state array (raises ValueError)."""
    cdef Py_ssize_t isz = sizeof(floating)
    if a.shape[0] != rows or a.shape[1] != cols or (cols > 1 and a.strides[1] != isz) \
            or (rows > 1 and a.strides[0] != cols * isz):
        raise ValueError(f"{name}: expected a C-contiguous array of shape {(rows, cols)}")
    return 0


cdef inline int vec_check(const floating[:] a, str name, Py_ssize_t n) except -1:
    """A contiguous (n,) vector (raises ValueError)."""
    if a.shape[0] != n or (n > 1 and a.strides[0] != sizeof(floating)):
        raise ValueError(f"{name}: expected a contiguous array of shape {(n,)}")
    return 0


cdef inline object check_batch_sizes(object batch_sizes, Py_ssize_t T, Py_ssize_t N):
    """batch_sizes as a contiguous intp array, validated; None if not given."""
    if batch_sizes is None:
        return None
    import numpy as np
    bs = np.ascontiguousarray(batch_sizes, dtype=np.intp)
    if bs.shape != (T,):
        raise ValueError(f"batch_sizes: expected shape {(T,)}, got {bs.shape}")
    if T and (bs.max() > N or bs.min() < 0 or np.any(np.diff(bs) > 0)):
        raise ValueError("batch_sizes: must be non-increasing values in [0, N]")
    return bs


cdef inline const Py_ssize_t *batch_ptr(object bs):
    """The data of a check_batch_sizes result (the caller keeps it alive), NULL for None."""
    cdef const Py_ssize_t[::1] v
    if bs is None or len(bs) == 0:
        return NULL
    v = bs
    return &v[0]


cdef inline object seq_empty(bint batch_major, Py_ssize_t T, Py_ssize_t N, Py_ssize_t F,
                             object dtype, bint pool=False):
    """An uninitialized (T, N, F) array in the given layout kind, contiguous in it.

    Workspaces and saved arrays are allocated in h's layout kind so that they
    form one matrix with h's row order (for the all-steps GEMMs). `pool`: a
    training call's (forward keeping its activations, or backward): from the
    workspace cache (_pool.pyx).
    """
    import numpy as np
    a = aligned_empty(T * N * F, dtype, True) if pool else np.empty(T * N * F, dtype=dtype)
    return a.reshape(N, T, F).transpose(1, 0, 2) if batch_major else a.reshape(T, N, F)


cdef inline object one_step(Seq *s, Py_ssize_t N, Py_ssize_t F, object dtype):
    """Point `s` at a new (N, F) array as a sequence whose every step is that array
    (step stride 0) and return it: a fused forward loop's per-step arrays (the
    gates, ...) when nothing is saved for backward -- one step's worth of memory,
    in the cache, instead of (T, N, F). Only a fused loop (Loop.wxh packed) may
    run on it: the others' all-steps input GEMM writes every step's rows first."""
    a = aligned_empty(max(N, 1) * F, dtype).reshape(max(N, 1), F)
    s[0] = seq(array_data(a), 0, F, F, False)
    return a


cdef inline object chunk_buffers(Loop *L, const Input *inp, object dtype, bint gather=True):
    """Inference on an unfused loop of many steps (rc_infer_chunk; _loop.pxd:
    chunk_input): set L.chunk and point L.cbuf (chunk, N, GH)
    and L.xbuf (chunk, N, D) at new arrays, returned as (cbuf, xbuf) (the caller keeps
    them alive); None, L untouched, otherwise (or no inputs: D = 0). The caller decides
    this only for a loop that will not fuse x_t Wx (rc_fuse_input). ``gather`` False:
    no xbuf (L.xbuf NULL, (cbuf, None) returned) -- an LSTM loop that splits its units
    reads x in place and uses cbuf alone (lstm.pyx: block_input)."""
    import numpy as np
    cdef Py_ssize_t GH = L.G * L.H, N = L.N, D = inp.D
    cdef Py_ssize_t C = infer_chunk(L.T, N, GH, D, np.dtype(dtype).itemsize)
    if C <= 0:
        return None
    cb = aligned_empty(C * N * GH, dtype)
    xb = aligned_empty(C * N * D, dtype) if gather else None
    L.chunk = C
    L.cbuf = array_data(cb)
    L.xbuf = array_data(xb) if gather else NULL
    return cb, xb


cdef inline object workspace(object saved, str name, Py_ssize_t T, Py_ssize_t N, Py_ssize_t F,
                             bint batch_major, object dtype):
    """A backward gradient workspace: a new array, or a saved one (``overwrite_saved``).

    A saved array must be what forward returned: writable, (T, N, F),
    contiguous in h's layout kind (raises ValueError otherwise).
    """
    import numpy as np
    if saved is None:
        return seq_empty(batch_major, T, N, F, dtype, True)     # (backward: training)
    a = np.asarray(saved)
    b = a.transpose(1, 0, 2) if (batch_major and a.ndim == 3) else a
    if a.shape != (T, N, F) or not a.flags.writeable or not b.flags.c_contiguous:
        raise ValueError(f"{name}: overwrite_saved needs the writable array forward "
                         f"returned, shape {(T, N, F)}, contiguous in h's layout")
    return a


cdef inline int check_inputs(Loop *L, Input *inp, Py_ssize_t G, bint reverse,
                             const floating[:, :, :] x, const floating[:, :, :] h,
                             const floating[:, :] Wx, const floating[:, :] Wh,
                             const floating[:, :] h0, Py_ssize_t H=-1) except -1:
    """What every cell's forward and backward take: x (T, N, D), h (T, N, H),
    Wx (D, GH), Wh (H, GH), h0 (N, H); L starts as a G-gate loop over them.
    H >= 0: the gates' width, h's being Wh's rows (Hp: LSTM's proj_size)."""
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], Hp = Wh.shape[0]
    cdef Py_ssize_t D = x.shape[2]
    if H < 0:
        H = Hp
    cdef Py_ssize_t GH = G * H
    loop_init(L, T, N, H, G, reverse, floating is double)
    L.Hp = Hp
    seq_check(x, "x", T, N, D, &inp.x)
    seq_check(h, "h", T, N, Hp, &L.h)
    mat_check(Wx, "Wx", D, GH, &inp.wx)
    mat_check(Wh, "Wh", Hp, GH, &L.wh)
    rows_check(h0, "h0", N, Hp)
    # the (T, N, GH) workspaces: one step's rows are T*GH (batch-major) or N*GH apart
    blas_fits("x", max(T, N) * GH, "T or N times the gates' width")
    inp.D = D
    L.x, L.D = inp.x, D     # (read per step by a fused forward loop)
    L.h0 = &h0[0, 0] if N > 0 and Hp > 0 else NULL
    return 0


cdef inline int check_grads(Loop *L, const Input *inp, Grads *gr, const floating[:, :, :] dh,
                            const floating[:, :, :] dx, const floating[:, :] dWx,
                            const floating[:, :] dWh, const floating[:, :] dhn,
                            const floating[:, :] dh0) except -1:
    """What every cell's backward takes besides check_inputs': dh (T, N, H), dx (T, N, D)
    or None (no input gradient: its data pointer NULL, nothing computes it), dWx (D, GH),
    dWh (H, GH), dhn, dh0 (N, H); dh0 becomes the dh carry. (H: h's width, L.Hp.)"""
    cdef Py_ssize_t T = L.T, N = L.N, H = L.Hp, GH = L.G * L.H, D = inp.D
    cdef Seq dxs
    seq_check(dh, "dh", T, N, H, &L.dh)
    if dx is None:
        dxs = seq(NULL, 0, 0, 1, False)
        same_layout(&inp.x, &L.h, NULL, T, N, D)
    else:
        seq_check(dx, "dx", T, N, D, &dxs)
        same_layout(&inp.x, &L.h, &dxs, T, N, D)
    mat_check(dWx, "dWx", D, GH, &gr.dwx)
    mat_check(dWh, "dWh", H, GH, &gr.dwh)
    rows_check(dhn, "dhn", N, H)
    rows_check(dh0, "dh0", N, H)
    gr.dx = uniform(dxs)
    gr.dw_ws, gr.dw_ws_bytes = NULL, 0     # (dw_reserve: a workspace for the dW kernel)
    L.dx = dxs              # (written per step by a loop computing dx in its steps)
    L.carry = <void *>&dh0[0, 0] if N > 0 and H > 0 else NULL
    return 0


cdef inline void copy_rows(const floating[:, :] dst, const floating[:, :] src) noexcept:
    """dst (N, H) := src (N, H), both C-contiguous and non-empty (a carry's start)."""
    memcpy(<void *>&dst[0, 0], &src[0, 0], src.shape[0] * src.shape[1] * sizeof(floating))
