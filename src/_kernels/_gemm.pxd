# Which GEMM a kernel product runs on (header-only: cdef inline): BLAS
# (_blas.pxd) or rnncore's own kernels (rc_gemm.h, rc_gemm_packed.h) -- the
# small-M kernel for a batch of at most RC_SMALL_M rows, the packed kernel for
# a time loop's per-step product with its weight packed once per call, the
# unpacked panel kernel for one with a row-major weight. The dispatch points
# are `mm`, `mm_step`, `use_panel` (the panel shape policy), `step_weight`
# (which layout of the recurrent weight a loop reads: packed, a row-major copy
# or as given; decided once, before the loop) and, in _threads.pxd, `row_threads`.

from _blas cimport floating, Mat, mat, transposed, NoTrans, Trans, gemm_rm
from _buffer cimport array_data

cdef extern from "rc_gemm.h" nogil:
    int intel_rules "rc_intel_rules"()
    int rule_set "rc_rule_set"()
    void set_rule_set "rc_set_rule_set"(int mode)
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

cdef extern from "rc_gemm_packed.h" nogil:
    Py_ssize_t packed_nr "rc_packed_nr"(size_t elsize)
    Py_ssize_t packed_size "rc_packed_size"(Py_ssize_t k, Py_ssize_t n, Py_ssize_t nr)
    void rc_pack_f(Py_ssize_t k, Py_ssize_t n, const float *b, Py_ssize_t rs, Py_ssize_t cs,
                   Py_ssize_t nr, Py_ssize_t ldp, float *dst)
    void rc_pack_d(Py_ssize_t k, Py_ssize_t n, const double *b, Py_ssize_t rs, Py_ssize_t cs,
                   Py_ssize_t nr, Py_ssize_t ldp, double *dst)
    # the same on the loops' threads when the whole operand takes `bytes` >= the
    # threshold (RC_PACK_PAR_BYTES; set_pack_par, pack_par_count: test hooks)
    enum: RC_PACK_PAR_BYTES
    void set_pack_par "rc_set_pack_par"(long long min_bytes)
    long long pack_par_count "rc_pack_par_count"()
    void rc_pack_par_f(Py_ssize_t k, Py_ssize_t n, const float *b, Py_ssize_t rs,
                       Py_ssize_t cs, Py_ssize_t nr, Py_ssize_t ldp, float *dst,
                       long long bytes)
    void rc_pack_par_d(Py_ssize_t k, Py_ssize_t n, const double *b, Py_ssize_t rs,
                       Py_ssize_t cs, Py_ssize_t nr, Py_ssize_t ldp, double *dst,
                       long long bytes)
    void rc_gemm_packed2_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                           Py_ssize_t lda, Py_ssize_t k2, const float *a2, Py_ssize_t lda2,
                           const float *bp, Py_ssize_t ldp, Py_ssize_t nr, float beta,
                           float *c, Py_ssize_t ldc)
    void rc_gemm_packed2_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double *a,
                           Py_ssize_t lda, Py_ssize_t k2, const double *a2, Py_ssize_t lda2,
                           const double *bp, Py_ssize_t ldp, Py_ssize_t nr, double beta,
                           double *c, Py_ssize_t ldc)
    void rc_gemm_packed_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                          Py_ssize_t lda, const float *bp, Py_ssize_t ldp, Py_ssize_t nr,
                          float beta, float *c, Py_ssize_t ldc)
    void rc_gemm_packed_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double *a,
                          Py_ssize_t lda, const double *bp, Py_ssize_t ldp, Py_ssize_t nr,
                          double beta, double *c, Py_ssize_t ldc)
    bint pack_step_weight "rc_pack_step_weight"(Py_ssize_t T, long long work)
    bint step_input_grad "rc_step_input_grad"(Py_ssize_t T, Py_ssize_t N, Py_ssize_t D,
                                              Py_ssize_t Hp, Py_ssize_t GH, size_t elsize)
    bint fuse_input "rc_fuse_input"(Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t k,
                                    Py_ssize_t n, size_t elsize)
    void set_packing "rc_set_packing"(int enabled, int fuse)
    # copying A into the register blocks' order per call (rc_pk_pack_a_use: 0 never,
    # 1 by the rule, 2 always; pack_a_count: calls that copied A; test hooks)
    void set_pack_a "rc_set_pack_a"(int mode)
    long long pack_a_count "rc_pack_a_count"()
    # the next panel's L2 prefetch in place (rc_pk_next_l2_use: 0 never, 1 by the
    # rule, the default, 2 always; next_l2_count: calls that prefetched; test hooks)
    void set_next_l2 "rc_set_next_l2"(int mode)
    long long next_l2_count "rc_next_l2_count"()
    Py_ssize_t infer_chunk "rc_infer_chunk"(Py_ssize_t T, Py_ssize_t N, Py_ssize_t GH,
                                            Py_ssize_t D, size_t elsize)
    void set_chunk "rc_set_chunk"(long long steps)
    void set_step_dx_max "rc_set_step_dx_max"(long long bytes)
    long long RC_STEP_DX_MAX_BYTES


cdef extern from "rc_matmul.h" nogil:
    # a product on the packed kernel, B packed per call, the rows on the kernels'
    # threads (rc_matmul_*), and C += A^T B on the dW kernel (rc_matmul_*_tn), where
    # their rules take the shapes (matmul_use, matmul_tn_use); 0: nothing done
    bint matmul_use "rc_matmul_use"(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, size_t elsize)
    bint matmul_tn_use "rc_matmul_tn_use"(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n)
    bint matmul_machine "rc_matmul_machine"()
    bint matmul_small_machine "rc_matmul_small_machine"()
    int rc_matmul_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a, Py_ssize_t lda,
                    const float *b, Py_ssize_t rs, Py_ssize_t cs, float beta, float *c,
                    Py_ssize_t ldc)
    int rc_matmul_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double *a, Py_ssize_t lda,
                    const double *b, Py_ssize_t rs, Py_ssize_t cs, double beta, double *c,
                    Py_ssize_t ldc)
    int rc_matmul_f_tn(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n, const float *a,
                       Py_ssize_t lda, const float *b, Py_ssize_t ldb, float *c, Py_ssize_t ldc)
    int rc_matmul_d_tn(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n, const double *a,
                       Py_ssize_t lda, const double *b, Py_ssize_t ldb, double *c,
                       Py_ssize_t ldc)
    # ... with the kernel's memory from `ws` (rc_matmul_*_tn_bytes of it, 64-byte aligned)
    int rc_matmul_f_tn_ws(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n, const float *a,
                          Py_ssize_t lda, const float *b, Py_ssize_t ldb, float *c,
                          Py_ssize_t ldc, void *ws, size_t ws_bytes)
    int rc_matmul_d_tn_ws(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n, const double *a,
                          Py_ssize_t lda, const double *b, Py_ssize_t ldb, double *c,
                          Py_ssize_t ldc, void *ws, size_t ws_bytes)
    size_t rc_matmul_f_tn_bytes(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n)
    size_t rc_matmul_d_tn_bytes(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n)
    void set_matmul "rc_set_matmul"(int mode)
    long long matmul_count "rc_matmul_count"(int threaded)
    # BLAS's kernels below this CPU's level: mm's all-steps products run here by these
    # rules (shapes and the machine's size; set once at import: rnncore._bindings;
    # set_blas_slow is also the test hook)
    int blas_slow "rc_blas_slow"
    void set_blas_slow "rc_set_blas_slow"(int on)
    bint slow_matmul_use "rc_slow_matmul_use"(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                              size_t elsize)
    bint slow_matmul_tn_use "rc_slow_matmul_tn_use"(Py_ssize_t K, Py_ssize_t m, Py_ssize_t n)
    # a product inside this thread's single-thread section (rc_threads.h:
    # RC_SECTION_LOCAL), on the packed kernel; 0: nothing done (rc_gemm_own_*)
    int rc_gemm_own_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha, const float *a,
                      Py_ssize_t lda, int at, const float *b, Py_ssize_t rs, Py_ssize_t cs,
                      float beta, float *c, Py_ssize_t ldc)
    int rc_gemm_own_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha, const double *a,
                      Py_ssize_t lda, int at, const double *b, Py_ssize_t rs, Py_ssize_t cs,
                      double beta, double *c, Py_ssize_t ldc)
    long long gemm_own_count "rc_gemm_own_count"()

cdef extern from "rc_threads.h" nogil:
    int local_depth "rc_local_depth"()


cdef inline bint own_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha, Mat a,
                          Mat b, floating beta, Mat c) noexcept nogil:
    """C (m, n) := alpha op(A) op(B) + beta C (C row-major, B plain) on rnncore's own GEMM,
    on this thread; False (nothing done) where it cannot (rc_gemm_own_*)."""
    cdef Py_ssize_t rs = 1 if b.t == Trans else b.ld, cs = b.ld if b.t == Trans else 1
    if floating is float:
        return rc_gemm_own_f(m, n, k, alpha, <const float *>a.p, a.ld, a.t == Trans,
                             <const float *>b.p, rs, cs, beta, <float *>c.p, c.ld) != 0
    else:
        return rc_gemm_own_d(m, n, k, alpha, <const double *>a.p, a.ld, a.t == Trans,
                             <const double *>b.p, rs, cs, beta, <double *>c.p, c.ld) != 0


cdef inline bint own_matmul(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Mat a, Mat b,
                            floating beta, Mat c) noexcept nogil:
    """While BLAS is slow (blas_slow): C (m, n) := op(A) op(B) + beta C (C row-major) on
    the kernels' threads, the packed kernel for a row-major A (rc_matmul_*: B packed
    per call, any view), the dW kernel for C += A^T B with a row-major B
    (rc_matmul_*_tn); False (nothing done) where their rules (rc_slow_matmul_use,
    rc_slow_matmul_tn_use) do not take the shapes, or for other operand kinds."""
    cdef Py_ssize_t rs = 1 if b.t == Trans else b.ld, cs = b.ld if b.t == Trans else 1
    if a.t == NoTrans:
        if not slow_matmul_use(m, n, k, sizeof(floating)):
            return False
        if floating is float:
            return rc_matmul_f(m, n, k, <const float *>a.p, a.ld, <const float *>b.p, rs, cs,
                               beta, <float *>c.p, c.ld) != 0
        else:
            return rc_matmul_d(m, n, k, <const double *>a.p, a.ld, <const double *>b.p, rs,
                               cs, beta, <double *>c.p, c.ld) != 0
    if b.t != NoTrans or beta != 1 or not slow_matmul_tn_use(k, m, n):
        return False
    if floating is float:
        return rc_matmul_f_tn(k, m, n, <const float *>a.p, a.ld, <const float *>b.p, b.ld,
                              <float *>c.p, c.ld) != 0
    else:
        return rc_matmul_d_tn(k, m, n, <const double *>a.p, a.ld, <const double *>b.p, b.ld,
                              <double *>c.p, c.ld) != 0


cdef inline void mm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha, Mat a, Mat b,
                    floating beta, Mat c) noexcept nogil:
    """C (m, n) := alpha op(A) (m, k) op(B) (k, n) + beta C, any of the three transposed views.

    Inside a single-thread section of this thread (rc_threads.h: RC_SECTION_LOCAL,
    a CPU with a packed layout), what would go to BLAS runs on rnncore's own GEMM
    instead (own_gemm): BLAS's thread count is process-wide, and switching it
    would change other threads' products. Outside one, when SciPy's BLAS runs
    kernels below this CPU's level (blas_slow, rc_matmul.h), the products the rules
    of rc_slow_matmul_use / rc_slow_matmul_tn_use take run on the kernels' threads instead
    (own_matmul; alpha 1 only)."""
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
    if k > 0 and local_depth() > 0 and own_gemm(m, n, k, alpha, a, b, beta, c):
        return
    if k > 0 and blas_slow and alpha == 1 and own_matmul(m, n, k, a, b, beta, c):
        return
    gemm_rm(m, n, k, alpha, a, b, beta, <floating *>c.p, c.ld)


cdef inline void mm_step(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         const floating *a, Py_ssize_t lda, Mat b, floating beta,
                         floating *c, Py_ssize_t ldc) noexcept nogil:
    """A time loop's per-step product, C (m, n) := A (m, k) op(B) (k, n) + beta C.

    A and C row-major. A packed B (b.nr > 0, logical matrix the packed one:
    b.t == NoTrans; see step_weight) goes to the packed kernel
    (rc_gemm_packed.h). Else to the unpacked panel kernel (rc_gemm.h) when B
    is row-major and rc_use_panel says so (B is the weight matrix: BLAS would
    repack it on every step), else to `mm`.
    """
    if b.nr > 0:
        if m <= 0 or n <= 0:
            return
        if floating is float:
            rc_gemm_packed_f(m, n, k, a, lda, <float *>b.p, b.ld, b.nr, beta, c, ldc)
        else:
            rc_gemm_packed_d(m, n, k, a, lda, <double *>b.p, b.ld, b.nr, beta, c, ldc)
        return
    if b.t == NoTrans and use_panel(m, n, k):
        if floating is float:
            rc_gemm_panel_f(m, n, k, a, lda, <float *>b.p, b.ld, beta, c, ldc)
        else:
            rc_gemm_panel_d(m, n, k, a, lda, <double *>b.p, b.ld, beta, c, ldc)
        return
    mm(m, n, k, <floating>1, mat(a, lda, NoTrans), b, beta, mat(c, ldc, NoTrans))


cdef inline void mm_step2(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating *a,
                          Py_ssize_t lda, Py_ssize_t k2, const floating *a2, Py_ssize_t lda2,
                          Mat b, floating beta, floating *c, Py_ssize_t ldc) noexcept nogil:
    """C (m, n) := [A (m, k) | A2 (m, k2)] B (k + k2, n) + beta C, B packed (b.nr > 0,
    b.t == NoTrans): one register-blocked product over both row blocks of B, stored
    once (rc_gemm_packed2_*; the fused loops' [x_t | h_{t-1}] [Wx; Wh])."""
    if m <= 0 or n <= 0:
        return
    if floating is float:
        rc_gemm_packed2_f(m, n, k, a, lda, k2, a2, lda2, <float *>b.p, b.ld, b.nr, beta, c, ldc)
    else:
        rc_gemm_packed2_d(m, n, k, a, lda, k2, a2, lda2, <double *>b.p, b.ld, b.nr, beta, c,
                          ldc)


cdef extern from "rc_gemm_dw.h" nogil:
    # the all-steps weight gradients on packed chunks of dG (rc_dw_*)
    enum: RC_DW_TERMS
    ctypedef struct rc_dw_term:
        const void *a
        Py_ssize_t lda, off, plo, phi, m, bcol, n
        void *c
        Py_ssize_t ldc
        void *ct
        Py_ssize_t ldt
    ctypedef struct rc_dw_problem:
        const void *b0
        const void *b1
        Py_ssize_t ld0, n0, ld1, n1, K, nr
        int nterms
        rc_dw_term term[RC_DW_TERMS]
        void *ws
        size_t ws_bytes
    int rc_dw_f(const rc_dw_problem *pr)
    int rc_dw_d(const rc_dw_problem *pr)
    size_t rc_dw_f_bytes(const rc_dw_problem *pr)
    size_t rc_dw_d_bytes(const rc_dw_problem *pr)
    void set_dw_workspace "rc_set_dw_workspace"(int mode)
    long long dw_workspace_count "rc_dw_workspace_count"()
    bint dw_enabled "rc_dw_use"(long long work, Py_ssize_t K)
    void set_dw "rc_set_dw"(int enabled)
    void set_dw_inplace "rc_set_dw_inplace"(int mode)
    long long dw_inplace_count "rc_dw_inplace_count"()
    long long dw_count "rc_dw_count"(int threaded)


cdef inline int hook_mode(int mode) except -1:
    """A packed-kernel test hook's mode (the _set_* hooks of _pack_hooks.pxi and simd):
    0 never, 1 by the rule, 2 always; else ValueError."""
    if mode not in (0, 1, 2):
        raise ValueError(f"mode must be 0, 1 or 2, got {mode!r}")
    return mode


cdef inline bint packs_step_weight(Py_ssize_t T, long long work) noexcept nogil:
    """Whether a time loop of T steps packs its per-step operand (work: multiply-adds
    of one step's product); rc_pack_step_weight: shapes and import-time configuration."""
    return pack_step_weight(T, work)


cdef inline bint packs_stacked(bint fuse, object chunks, Py_ssize_t T, long long work):
    """Whether a forward loop packs the stacked [Wx; Wh] (fused_weight's `fuse`): it
    multiplies by Wx in its steps (`fuse`: fuse_input), or it is an inference loop
    computing its input projection in chunks (`chunks`: chunk_buffers' arrays, else
    None) on the packed kernel, which it uses whenever the loop packs (`work`:
    multiply-adds of one step's product)."""
    return fuse or (chunks is not None and packs_step_weight(T, work))


cdef inline object aligned_empty(Py_ssize_t size, object dtype, bint pool=False):
    """An uninitialized 1-D array of `size` elements starting on a 64-byte boundary
    (whole-line vector loads and stores; NumPy aligns to 16). `pool`: a training
    call's (forward keeping its activations, or backward): from the workspace cache
    when large enough. Both are _pool.pyx's `empty`."""
    from rnncore._kernels._pool import empty
    return empty(size, dtype, pool)


cdef inline object cache_bytes(size_t nbytes):
    """`nbytes` bytes (uint8) from the workspace cache, 64-byte aligned: a kernel's
    scratch for one call (keep the array until it returns); None for 0 bytes or
    when the memory is not there (the kernel then allocates its own)."""
    if nbytes == 0:
        return None
    try:
        return aligned_empty(<Py_ssize_t>nbytes, "u1", True)
    except MemoryError:
        return None


cdef inline object aligned_rows(Py_ssize_t N, Py_ssize_t F, object dtype):
    """An uninitialized C-contiguous (N, F) array starting on a 64-byte boundary: a
    per-row scratch (a loop's (N, GH) products, the reverse + lengths rows) whose
    rows k, k+P, ... belong to thread k. NumPy's 16-byte alignment made a 64-byte
    line straddle every row boundary, so two threads wrote one line each step:
    the GRU's forward scratch at (T, N, D, H) = (100, 32, 64, 256) on 2 Zen 4
    cores, its fused pass went from 15.6 to 10.0-10.8 % of the samples (perf)."""
    return aligned_empty(N * F, dtype).reshape(N, F)


cdef inline object pack_ptr(const floating *b, Py_ssize_t rs, Py_ssize_t cs, Py_ssize_t k,
                            Py_ssize_t n, Py_ssize_t nr, Py_ssize_t split,
                            const floating *top, Py_ssize_t trs, Py_ssize_t tcs,
                            Py_ssize_t k0, bint pool, floating **data):
    """pack_weight on raw operands: B (k, n) at `b` with element strides rs, cs (and
    `top` (k0, n) with trs, tcs when k0 > 0). Returns the packed 1-D array and sets
    `data` to its first element. The kernels' path: no NumPy views, no memoryviews
    (a small-shape call packs in ~1-2 us, where its Python-level steps took ~8)."""
    import numpy as np
    if not 0 < split < n:
        split = n
    cdef Py_ssize_t first = packed_size(k0 + k, split, nr)
    cdef Py_ssize_t total = first + packed_size(k0 + k, n - split, nr)
    out = aligned_empty(total, np.float32 if floating is float else np.float64, pool)
    cdef floating *d = <floating *>array_data(out)
    # the operand's bytes: whether its blocks are packed on threads (rc_pack_par_*)
    cdef long long nbytes = total * sizeof(floating)
    with nogil:
        if k0 > 0:
            pack_par(k0, split, top, trs, tcs, nr, k0 + k, d, nbytes)
            if split < n:
                pack_par(k0, n - split, top + split * tcs, trs, tcs, nr, k0 + k, d + first,
                         nbytes)
        pack_par(k, split, b, rs, cs, nr, k0 + k, d + k0 * nr, nbytes)
        if split < n:
            pack_par(k, n - split, b + split * cs, rs, cs, nr, k0 + k, d + first + k0 * nr,
                     nbytes)
    data[0] = d
    return out


cdef inline void pack_par(Py_ssize_t k, Py_ssize_t n, const floating *b, Py_ssize_t rs,
                          Py_ssize_t cs, Py_ssize_t nr, Py_ssize_t ldp, floating *dst,
                          long long nbytes) noexcept nogil:
    if floating is float:
        rc_pack_par_f(k, n, b, rs, cs, nr, ldp, dst, nbytes)
    else:
        rc_pack_par_d(k, n, b, rs, cs, nr, ldp, dst, nbytes)


cdef inline object pack_weight(object B, Py_ssize_t nr, Py_ssize_t split=0, object top=None,
                                bint pool=False):
    """B (k, n), any 2-D float32/float64 array with element strides (a row-major
    weight or a transposed view of one: no copy first), packed in panels nr wide.

    With 0 < split < n, the column blocks B[:, :split] and B[:, split:] are
    packed one after the other, each from a panel boundary (col_block finds the
    second). With `top` (k0, n) of B's dtype, the packed operand is the stacked
    [top; B] (k0 + k, n): each panel holds top's k0 rows, then B's (the fused
    loops' [Wx; Wh]: its row block k0.. is B packed, col_block of the transposed
    view). Returns a (panels * (k0 + k), nr) array of B's dtype, 64-byte aligned
    (whole-line vector loads); k >= 1 and n >= 1. The tests' entry (simd.pyx);
    the kernels call pack_ptr on their typed operands.
    """
    import numpy as np
    src = np.asarray(B)
    if src.dtype == np.float32:
        return _pack_typed[float](src, nr, split, top, pool).reshape(-1, nr)
    return _pack_typed[double](src, nr, split, top, pool).reshape(-1, nr)


cdef inline object _pack_typed(const floating[:, :] b, Py_ssize_t nr, Py_ssize_t split,
                               object top, bint pool):
    cdef const floating[:, :] t
    cdef const floating *tp = NULL
    cdef floating *d
    cdef Py_ssize_t isz = sizeof(floating), trs = 0, tcs = 0, k0 = 0
    if top is not None:
        t = top
        tp, trs, tcs, k0 = &t[0, 0], t.strides[0] // isz, t.strides[1] // isz, t.shape[0]
    return pack_ptr(&b[0, 0], b.strides[0] // isz, b.strides[1] // isz, b.shape[0],
                    b.shape[1], nr, split, tp, trs, tcs, k0, pool, &d)


cdef inline void pack_blocks(const floating[:, :] b, floating[:, ::1] dst, Py_ssize_t split,
                             Py_ssize_t first, Py_ssize_t nr, Py_ssize_t ldp=0,
                             long long nbytes=-1):
    # dst := packed B[:, :split], then packed B[:, split:] at element `first`; the
    # panels ldp rows apart (0: B's k); on threads when the whole packed operand
    # takes nbytes >= RC_PACK_PAR_BYTES (-1: this block's bytes), each block a call
    cdef Py_ssize_t k = b.shape[0], n = b.shape[1], isz = sizeof(floating)
    cdef Py_ssize_t rs = b.strides[0] // isz, cs = b.strides[1] // isz
    cdef floating *d = &dst[0, 0]
    if ldp == 0:
        ldp = k
    if nbytes < 0:
        nbytes = k * n * isz
    with nogil:
        if floating is float:
            rc_pack_par_f(k, split, &b[0, 0], rs, cs, nr, ldp, d, nbytes)
            if split < n:
                rc_pack_par_f(k, n - split, &b[0, split], rs, cs, nr, ldp, d + first, nbytes)
        else:
            rc_pack_par_d(k, split, &b[0, 0], rs, cs, nr, ldp, d, nbytes)
            if split < n:
                rc_pack_par_d(k, n - split, &b[0, split], rs, cs, nr, ldp, d + first, nbytes)


cdef inline object step_weight(const floating[:, :] Wh, Mat *wh, Py_ssize_t T, Py_ssize_t N,
                               Py_ssize_t GH, Py_ssize_t H, bint backward=False,
                               Py_ssize_t split=0, bint pool=False):
    """The recurrent weight as a time loop's per-step products will read it.

    Forward multiplies by Wh (H, GH), backward by Wh^T (GH, H). When
    rc_pack_step_weight says so (shapes only, decided here once: the loop's
    path cannot change while it runs), that operand is packed once for all T
    steps (pack_ptr, pack_weight's layout; from either layout of Wh, no copy
    first; forward with `split`, Wh[:, :split] and Wh[:, split:] each from a
    panel boundary), and
    `wh` becomes the packed Mat: logical matrix Wh, so forward's `wh` (t =
    NoTrans) and backward's `transposed(wh)` are the packed operand, and
    col_block finds column blocks of either.
    Otherwise, for the unpacked panel kernel (rc_use_panel), which reads the
    operand row-major: when it arrives as the other layout (a PyTorch-layout
    weight is the transposed view of a (GH, H) array: right for backward,
    transposed for forward; a (H, GH) array the other way round) and the loop
    will use the panel kernel, the loop gets one C-ordered copy of the operand
    for all T steps -- the pass BLAS would otherwise make on every step. Then
    `wh` is pointed at the copy or packed array, which is returned (the caller
    keeps it alive); else `wh` is left as is and None returned.
    """
    # the operand (k, n); an unpacked loop keeps its rows on one thread (row_threads
    # splits only packed loops), so each step's product has all N rows
    cdef Py_ssize_t n = H if backward else GH, k = GH if backward else H
    cdef Py_ssize_t nr = packed_nr(sizeof(floating)), isz = sizeof(floating)
    cdef Py_ssize_t rs = Wh.strides[0] // isz, cs = Wh.strides[1] // isz
    cdef const floating[:, :] c
    cdef floating *d
    if N > 0 and n > 0 and k > 0 and packs_step_weight(T, N * n * k):
        # the operand (k, n): Wh, or Wh^T (its strides swapped)
        packed = pack_ptr(&Wh[0, 0], cs if backward else rs, rs if backward else cs, k, n,
                          nr, 0 if backward else split, <const floating *>NULL, 0, 0, 0,
                          pool or backward, &d)
        wh[0] = mat(d, k, Trans if backward else NoTrans)
        wh.nr = nr
        return packed
    if T <= 1 or (wh.t == Trans) == backward:
        return None
    if not use_panel(N, n, k):
        return None
    # forward: Wh (H, GH) row-major; backward: Wh^T (GH, H) row-major, the
    # logical Wh being its transposed view
    import numpy as np
    copy = np.ascontiguousarray(np.asarray(Wh).T if backward else np.asarray(Wh))
    c = copy
    wh[0] = mat(&c[0, 0], H if backward else GH, Trans if backward else NoTrans)
    return copy


cdef inline object fused_weight(const floating[:, :] Wx, const floating[:, :] Wh, Mat *wxh,
                                Mat *wh, Py_ssize_t T, Py_ssize_t N, Py_ssize_t GH,
                                Py_ssize_t H, bint fuse, Py_ssize_t split=0, bint pool=False):
    """A forward loop's weights: [Wx; Wh] packed once, or Wh as step_weight decides.

    With `fuse` (the caller's rc_fuse_input, decided once: the rule reads the
    row-split setting, which another thread may change) the loop computes x_t Wx
    step by step: the stacked (D + H, GH) operand is packed once (pack_ptr with `top`,
    `split` as there), `wxh` becomes it (the fused product [x_t | h_{t-1}]
    [Wx; Wh], or x_t Wx alone: its first D rows) and `wh` its row block D.. (Wh
    packed, as step_weight would pack it); the packed array is returned (the
    caller keeps it alive). Otherwise `wxh` is left as is (nr == 0: the loop's
    input projection is one GEMM over all steps first) and this is step_weight.
    """
    cdef Py_ssize_t D = Wx.shape[0], nr, isz = sizeof(floating)
    cdef floating *d
    if fuse:
        nr = packed_nr(isz)
        packed = pack_ptr(&Wh[0, 0], Wh.strides[0] // isz, Wh.strides[1] // isz, H, GH, nr,
                          split, &Wx[0, 0], Wx.strides[0] // isz, Wx.strides[1] // isz, D,
                          pool, &d)
        wxh[0] = mat(d, D + H, NoTrans)
        wxh.nr = nr
        wh[0] = mat(d + D * nr, D + H, NoTrans)     # row D of the panels (D + H rows each)
        wh.nr = nr
        return packed
    return step_weight(Wh, wh, T, N, GH, H, False, split, pool)


cdef inline object input_grad_weight(const floating[:, :] Wx, Mat *wxt, Py_ssize_t T,
                                     Py_ssize_t N, Py_ssize_t Hp):
    """A backward loop's Wx^T (GH, D), packed once when rc_step_input_grad says so
    (shapes only): then `wxt` becomes it (the loop computes dx_t = dA_t Wx^T in its
    steps, _loop.pxd: input_grad) and the packed array is returned (the caller keeps
    it alive); else None and `wxt` is left as is (nr == 0: dx is one GEMM after the
    loop)."""
    cdef Py_ssize_t D = Wx.shape[0], GH = Wx.shape[1], nr, isz = sizeof(floating)
    cdef floating *d
    if not step_input_grad(T, N, D, Hp, GH, isz):
        return None
    nr = packed_nr(isz)
    # Wx^T (GH, D): Wx's strides swapped (backward: training, pooled)
    packed = pack_ptr(&Wx[0, 0], Wx.strides[1] // isz, Wx.strides[0] // isz, GH, D, nr, 0,
                      <const floating *>NULL, 0, 0, 0, True, &d)
    wxt[0] = mat(d, GH, NoTrans)
    wxt.nr = nr
    return packed

