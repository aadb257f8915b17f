# The cells' single-step fast path (header-only: cdef inline).
#
# The cells' per-step entry points (`step` in each kernel module) take their
# arrays through the buffer protocol directly: a typed memoryview costs about
# 0.3-0.4 us to acquire, which is most of a small step. They *never raise* on
# an unsuitable argument: they return False with nothing held, and the caller
# takes the validated path, which then raises the clear error.

from _blas cimport mat, NoTrans, Trans
from _layout cimport Seq, seq
from _loop cimport Loop, Input, loop_init

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


cdef inline void step_loop(Loop *L, Input *inp, void **p, Py_ssize_t N, Py_ssize_t D,
                           Py_ssize_t H, Py_ssize_t G, bint f64) noexcept nogil:
    """One step (T = 1) of the arrays step_cell_bufs acquired, as a Loop and its Input.

    x (N, D), h0 and h (N, H) C-contiguous; the PyTorch-layout weights (GH, D),
    (GH, H) are the transposed views of the (D, GH), (H, GH) operands.
    """
    loop_init(L, 1, N, H, G, False, f64)
    L.h0 = p[1]
    L.h = contiguous(p[2], N, H)
    L.wh = mat(p[4], H, Trans)
    inp.x = contiguous(p[0], N, D)
    inp.wx = mat(p[3], D, Trans)
    inp.D = D


cdef inline Seq contiguous(void *p, Py_ssize_t N, Py_ssize_t F) noexcept nogil:
    """A C-contiguous (N, F) array as a one-step (1, N, F) sequence."""
    return seq(p, N * F, F, F, False)
