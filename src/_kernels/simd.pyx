"""Vectorized activations (rc_activations.h) and own GEMMs (rc_gemm.h,
rc_gemm_packed.h) exposed to Python, and the SIMD level.

Used by the accuracy tests (tests/test_activations.py, tests/test_gemm.py) and
``rnncore.show_config()``; the cell kernels call the same C functions directly.
"""
from _cpu cimport require_simd, rc_simd_level, rc_simd_tier, rc_cpu_tier
import numpy as np

from _blas cimport floating, Mat, mat, NoTrans, transposed, col_block
from _gemm cimport (RC_SMALL_M, rc_gemm_small_f, rc_gemm_small_d, rc_gemm_panel_f,
                   rc_gemm_panel_d, mm_step, mm_step2, packed_nr, pack_weight, hook_mode)

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef extern from "rc_gemm_packed.h" nogil:
    float rc_fma_burn(long long rounds, double *flops)
    void rc_set_pack_a(int mode)
    long long rc_pack_a_count()
    void rc_set_next_l2(int mode)
    long long rc_next_l2_count()

cdef extern from "rc_activations.h" nogil:
    void rc_tanh_array_f(const float *x, float *y, Py_ssize_t n)
    void rc_tanh_array_d(const double *x, double *y, Py_ssize_t n)
    void rc_sigmoid_array_f(const float *x, float *y, Py_ssize_t n)
    void rc_sigmoid_array_d(const double *x, double *y, Py_ssize_t n)


def _map(x, int which):
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"x: expected a float32 or float64 array, got {x.dtype}")
    src = np.ascontiguousarray(x)
    out = np.empty_like(src)
    cdef Py_ssize_t n = src.size
    cdef float[::1] f_in, f_out
    cdef double[::1] d_in, d_out
    if n == 0:
        return out
    if src.dtype == np.float32:
        f_in = src.reshape(-1)
        f_out = out.reshape(-1)
        with nogil:
            if which == 0:
                rc_tanh_array_f(&f_in[0], &f_out[0], n)
            else:
                rc_sigmoid_array_f(&f_in[0], &f_out[0], n)
    else:
        d_in = src.reshape(-1)
        d_out = out.reshape(-1)
        with nogil:
            if which == 0:
                rc_tanh_array_d(&d_in[0], &d_out[0], n)
            else:
                rc_sigmoid_array_d(&d_in[0], &d_out[0], n)
    return out


def tanh(x):
    """tanh of a float32/float64 array with the kernels' vectorized code."""
    return _map(x, 0)


def sigmoid(x):
    """Logistic sigmoid of a float32/float64 array with the kernels' code."""
    return _map(x, 1)


def simd_level():
    """The instruction set the kernels' array code runs at (dispatched at load
    time, or fixed by a forced test build: "..., forced at build")."""
    return rc_simd_level().decode()


def simd_tier():
    """That level as a number: 4 x86-64-v4 (AVX-512), 3 x86-64-v3 (AVX2+FMA),
    1 x86-64 baseline (SSE2), 0 portable C (no dispatch on this platform)."""
    return rc_simd_tier()


def cpu_tier():
    """This CPU's level on the same scale, whatever level the build runs at (a
    forced build, CMake RNNCORE_SIMD, may run a lower one)."""
    return rc_cpu_tier()


# ----------------------------------------------------------------- own GEMMs
# Test hooks: the kernels reach these through _gemm.pxd's mm / mm_step; here
# they run on whole C-contiguous arrays, in place in c, so tests can hold them
# against NumPy directly.

cdef int gemm_check(const floating[:, ::1] a, const floating[:, ::1] b,
                    const floating[:, ::1] c, bint bt) except -1:
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1]
    cdef Py_ssize_t n = b.shape[0] if bt else b.shape[1]
    if (b.shape[1] if bt else b.shape[0]) != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(f"shapes do not fit: a {(a.shape[0], a.shape[1])}, "
                         f"b {(b.shape[0], b.shape[1])}{' (transposed)' if bt else ''}, "
                         f"c {(c.shape[0], c.shape[1])}")
    if m == 0 or n == 0 or k == 0:
        raise ValueError("a, b and c must not be empty")
    return 0


def gemm_small(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
               double alpha=1, double beta=0, bint bt=False):
    """c := alpha a op(b) + beta c with the small-M kernel (rc_gemm_small_*), in place.

    a (m, k), c (m, n) and b, (k, n) or with ``bt`` the (n, k) array whose
    transpose is the operand: C-contiguous, non-empty, one dtype. The kernels
    use it for m <= RC_SMALL_M (``SMALL_M``); any m runs here.
    """
    gemm_check(a, b, c, bt)
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = c.shape[1]
    with nogil:
        if floating is float:
            rc_gemm_small_f(m, n, k, <float>alpha, &a[0, 0], k, &b[0, 0], b.shape[1], bt,
                            <float>beta, &c[0, 0], n)
        else:
            rc_gemm_small_d(m, n, k, alpha, &a[0, 0], k, &b[0, 0], b.shape[1], bt, beta,
                            &c[0, 0], n)
    return np.asarray(c)


def gemm_panel(const floating[:, ::1] a, const floating[:, ::1] b, floating[:, ::1] c,
               double beta=0):
    """c := a b + beta c with the unpacked panel kernel (rc_gemm_panel_*), in place.

    a (m, k), b (k, n), c (m, n): C-contiguous, non-empty, one dtype.
    """
    gemm_check(a, b, c, False)
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = c.shape[1]
    with nogil:
        if floating is float:
            rc_gemm_panel_f(m, n, k, &a[0, 0], k, &b[0, 0], n, <float>beta, &c[0, 0], n)
        else:
            rc_gemm_panel_d(m, n, k, &a[0, 0], k, &b[0, 0], n, beta, &c[0, 0], n)
    return np.asarray(c)


def _set_pack_a(int mode=0):
    """Test hook: _gemm_packed / _gemm_packed2 copy A into the register blocks'
    order first never (0, the default), by the rule (1) or always (2); see
    _pack_hooks.pxi."""
    rc_set_pack_a(hook_mode(mode))


def _pack_a_calls():
    """How many of this module's packed products copied A first (since import)."""
    return rc_pack_a_count()


def _set_next_l2(int mode=1):
    """Test hook: _gemm_packed / _gemm_packed2, reading A in place, prefetch the next
    panel into L2 never (0), by the rule (1, the default) or always (2); see
    _pack_hooks.pxi."""
    rc_set_next_l2(hook_mode(mode))


def _next_l2_calls():
    """How many of this module's packed products prefetched the next panel (since import)."""
    return rc_next_l2_count()


def _gemm_packed_nr(dtype):
    """Panel width of the packed weight layout for this CPU (0: no packed path)."""
    return packed_nr(np.dtype(dtype).itemsize)


def _gemm_packed(const floating[:, :] a, b, floating[:, :] c, floating beta,
                 Py_ssize_t nr=0, Py_ssize_t split=0, Py_ssize_t j=0, Py_ssize_t p0=0,
                 bint block=False):
    """C (m, n) := A (m, k) B[p0:p0+k, j:j+n] + beta C in place, through the time loops' path.

    B (any 2-D layout, e.g. a transposed view) is packed with panels nr wide
    (0: this CPU's layout; 32/16 the AVX-512 one, 16/8 the AVX2 one for
    float32/float64; `split` as in pack_weight) exactly as step_weight packs a
    weight, and the block of it starting at column j (a panel start or
    `split`) and row p0 is multiplied by mm_step -- the column and row blocks
    the reset-before GRU reads (col_block of the packed Mat and of its
    transpose; `block`: B may be larger than (k, n) at j = p0 = 0, else it is
    exactly that). A and C need a contiguous last axis. For the tests.
    """
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = c.shape[1]
    cdef Py_ssize_t isz = sizeof(floating)
    bb = np.asarray(b)
    block = block or j > 0 or p0 > 0
    if (bb.ndim != 2 or bb.shape[0] < p0 + k or bb.shape[1] < j + n or c.shape[0] != m
            or bb.dtype != np.asarray(a).dtype or not (block or bb.shape == (k, n))):
        raise ValueError("shapes or dtypes do not match")
    if (k > 1 and a.strides[1] != isz) or (n > 1 and c.strides[1] != isz):
        raise ValueError("a and c need a contiguous last axis")
    if nr == 0:
        nr = packed_nr(isz)
    if nr <= 0 or m == 0 or n == 0:
        raise ValueError("no packed layout for this CPU, or an empty product")
    if k == 0:
        bb = np.zeros((p0 + 1, bb.shape[1]), dtype=bb.dtype)   # a valid pointer; never read
    cdef const floating[:, :] bp = pack_weight(bb, nr, split)
    cdef Mat w = mat(&bp[0, 0], bb.shape[0], NoTrans)
    w.nr = nr
    # the column block j (NoTrans), then the row block p0 (a column block of B^T)
    w = transposed(col_block(transposed(col_block(w, j, isz)), p0, isz))
    cdef Py_ssize_t lda = a.strides[0] // isz if m > 1 else k
    cdef const floating *ap = &a[0, 0] if k > 0 else NULL
    with nogil:
        mm_step(m, n, k, ap, lda, w, beta, &c[0, 0], c.strides[0] // isz)
    return np.asarray(c)


def _gemm_packed2(const floating[:, :] a, const floating[:, :] a2, b, b2, floating[:, :] c,
                  floating beta, Py_ssize_t split=0):
    """C (m, n) := [A (m, k) | A2 (m, k2)] [B; B2] + beta C in place, as a fused loop
    computes [x_t | h_{t-1}] [Wx; Wh]: B (k, n) and B2 (k2, n), any 2-D layouts, packed
    into one operand (pack_weight's `top`, `split` as there) and multiplied by mm_step2
    (split > 0: the two column blocks, each its own call). A, A2 and C need a
    contiguous last axis. For the tests.
    """
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], k2 = a2.shape[1], n = c.shape[1]
    cdef Py_ssize_t isz = sizeof(floating), nr = packed_nr(isz)
    bb, bb2 = np.asarray(b), np.asarray(b2)
    if (bb.shape != (k, n) or bb2.shape != (k2, n) or a2.shape[0] != m or c.shape[0] != m
            or bb.dtype != np.asarray(a).dtype or bb2.dtype != bb.dtype):
        raise ValueError("shapes or dtypes do not match")
    if nr <= 0 or m == 0 or n == 0 or k == 0 or k2 == 0:
        raise ValueError("no packed layout for this CPU, or an empty product")
    if a.strides[1] != isz or a2.strides[1] != isz or c.strides[1] != isz:
        raise ValueError("a, a2 and c need a contiguous last axis")
    cdef const floating[:, :] bp = pack_weight(bb2, nr, split, bb)
    cdef Mat w = mat(&bp[0, 0], k + k2, NoTrans)
    w.nr = nr
    if not 0 < split < n:
        split = n
    cdef Py_ssize_t lda = a.strides[0] // isz, lda2 = a2.strides[0] // isz
    cdef Py_ssize_t ldc = c.strides[0] // isz
    with nogil:
        mm_step2(m, split, k, &a[0, 0], lda, k2, &a2[0, 0], lda2, w, beta, &c[0, 0], ldc)
        if split < n:
            mm_step2(m, n - split, k, &a[0, 0], lda, k2, &a2[0, 0], lda2,
                     col_block(w, split, isz), beta, &c[0, split], ldc)
    return np.asarray(c)


#: The largest batch the kernels send to the small-M GEMM.
SMALL_M = RC_SMALL_M


# ------------------------------------------------------------- FMA ceiling

def _fma_rate(double seconds=0.05):
    """GFLOP/s of float32 FMAs on the calling thread at the kernels' SIMD level
    (rc_fma_burn: independent vector FMAs in registers, no memory traffic): the
    arithmetic ceiling of one core, which no GEMM on it passes. Runs for about
    `seconds` without the GIL, so threads calling it at once each load a core.
    None where the level has no vector FMA (baseline, portable builds). For the
    benchmarks (bench/compare.py's ``fma peak`` and ``max`` column)."""
    import time
    cdef double flops = 0
    cdef long long rounds = 1 << 14
    if not 0 < seconds <= 60:   # (NaN and inf fail too)
        raise ValueError(f"seconds must be > 0 and at most 60, got {seconds!r}")
    while True:
        t0 = time.perf_counter()
        with nogil:
            rc_fma_burn(rounds, &flops)
        dt = time.perf_counter() - t0
        if flops == 0:
            return None
        if dt >= seconds or rounds >= (1 << 40):
            return flops / dt / 1e9
        # at least 4x longer per try, aiming past `seconds`
        rounds = max(4 * rounds, <long long>(rounds * 1.2 * seconds / max(dt, 1e-9)))
