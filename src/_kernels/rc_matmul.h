/* rc_matmul.h -- a dense layer's products on the packed kernel (linear.pyx).
 *
 * A read-out layer after the recurrent ones (rnncore.nn.Linear: logits over a
 * character vocabulary) multiplies all T*N rows by a weight with few output
 * columns. OpenBLAS runs those shapes well below its large-GEMM rate: on 2 Zen 4
 * cores (M, K, F) = (3200, 256, 96) ran at 92-105 GFLOP/s for y = x W^T,
 * dx = dy W and dW = dy^T x alike (torch.mm the same), against ~200 at 2048^3.
 * Here, with the time loops' kernel:
 *
 *   rc_matmul_*:  C (m, n) := A (m, k) B (k, n) + beta C, A and C row-major, B any
 *                 strided layout (W^T of a PyTorch-layout weight is a transposed
 *                 view): B packed once (rc_pack_par_*), the rows of A split in
 *                 blocks of whole register blocks over rc_own_threads() threads,
 *                 each block one rc_gemm_packed_* call;
 *   rc_matmul_tn_*: C (m, n) += A^T B, A (K, m) and B (K, n) row-major: the
 *                 weight gradient, on the dW kernel (rc_gemm_dw.h, one term).
 *
 * Every element of C is one dot product in k order (chunks of RC_DW_KC in the
 * second), whatever the thread count: results depend on the shapes only. Which
 * path (this or BLAS) a product takes is decided by rc_matmul_use /
 * rc_matmul_tn_use on the shapes, the machine and the thread configuration
 * (rc_row_split: rnncore.set_row_split), never on the current thread count.
 */
#ifndef RC_MATMUL_H
#define RC_MATMUL_H

#include <unistd.h>    /* sysconf */
#include "rc_gemm_dw.h"

/* Whether C (m, n) = A (m, k) B (k, n) runs here: a packed layout for this CPU, the
 * kernels' own threads allowed (rc_row_split, as for the time loops' packing: else
 * they would run on one thread against BLAS's several), a machine of at most
 * RC_MAX_THREADS CPUs (the most threads the kernels use: on a larger one BLAS
 * keeps the products it would run on all of them), at least RC_MATMUL_MIN_ROWS
 * rows (B is packed per call: a few rows do not repay it) and RC_MATMUL_MIN_WORK
 * multiply-adds. rc_matmul_tn_use: the same for C += A^T B, whose sizes are the dW
 * kernel's rule (rc_dw_use). */
#define RC_MATMUL_MIN_ROWS 64
#define RC_MATMUL_MIN_WORK (1LL << 20)
static int rc_matmul_enabled = 1;   /* test hook: 0 leaves every product to BLAS, 2 forces */
static void rc_set_matmul(int mode) { rc_matmul_enabled = mode; }
static int rc_matmul_small_machine(void)   /* at most RC_MAX_THREADS CPUs */
{
    static int cpus = 0;
    if (cpus == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        __atomic_store_n(&cpus, n > 0 ? (int)(n < 1 << 20 ? n : 1 << 20) : 1, __ATOMIC_RELAXED);
    }
    return cpus <= RC_MAX_THREADS;
}
static int rc_matmul_machine(void)
{
    return rc_row_split && rc_matmul_small_machine();
}
static int rc_matmul_shapes(rc_idx m, rc_idx n, rc_idx k, size_t elsize)
{
    if (!rc_matmul_enabled || m <= 0 || n <= 0 || k <= 0 || rc_packed_nr(elsize) == 0)
        return 0;
    return rc_matmul_enabled == 2
           || (m >= RC_MATMUL_MIN_ROWS && (long long)m * n * k >= RC_MATMUL_MIN_WORK);
}
static int rc_matmul_use(rc_idx m, rc_idx n, rc_idx k, size_t elsize)
{
    return rc_matmul_shapes(m, n, k, elsize)
           && (rc_matmul_enabled == 2 || rc_matmul_machine());
}
static int rc_matmul_tn_shapes(rc_idx K, rc_idx m, rc_idx n)   /* the dW kernel's rule */
{
    return K > 0 && m > 0 && n > 0 && rc_dw_use((long long)K * m * n, K);
}
static int rc_matmul_tn_use(rc_idx K, rc_idx m, rc_idx n)
{
    return rc_matmul_tn_shapes(K, m, n) && (rc_dw_enabled == 2 || rc_matmul_machine());
}
/* Whether SciPy's BLAS runs kernels below this CPU's SIMD level (rnncore._runtime.blas:
 * blas_below_cpu; e.g. OpenBLAS's AVX2 "Haswell" kernels on an AVX-512 CPU, chosen
 * by OPENBLAS_CORETYPE in the environment or because OpenBLAS does not know the
 * CPU): set once at import (rnncore._bindings), never changed by the product's
 * shapes or the current thread count. Then the products the time loops would give
 * BLAS outside their steps (_gemm.pxd: mm -- the all-steps input projection, dx
 * after the loop, a weight gradient the dW kernel did not take) run here instead,
 * by the rule above (rc_matmul_use, rc_matmul_tn_use). Measured on 2 AMD EPYC
 * Zen 5 cores (session 19, float32, OPENBLAS_CORETYPE=Haswell set by the
 * machine's environment): (3200 x 512)(512 x 4096), an LSTM's input projection
 * at (T, N, D, H) = (50, 64, 512, 1024), 414 GFLOP/s here against OpenBLAS's
 * 186 (its SkylakeX kernels: 352); (3200 x 256)(256 x 1024) 349 against 181.
 * Test hook: rc_set_blas_slow. */
static int rc_blas_slow = 0;
static void rc_set_blas_slow(int on) { rc_blas_slow = on != 0; }
/* The rules for those products (_gemm.pxd: own_matmul): rc_matmul_use's and
 * rc_matmul_tn_use's without the row-split setting (rnncore.set_row_split): the
 * path, and with it the rounding, must not depend on it (the tests compare the two
 * bitwise, as for the dW kernel: rc_dw_use); with the row split off the products
 * run on one thread (rc_own_threads), against BLAS's several on its slower kernels. */
static int rc_slow_matmul_use(rc_idx m, rc_idx n, rc_idx k, size_t elsize)
{
    return rc_blas_slow && rc_matmul_shapes(m, n, k, elsize)
           && (rc_matmul_enabled == 2 || rc_matmul_small_machine());
}
static int rc_slow_matmul_tn_use(rc_idx K, rc_idx m, rc_idx n)
{
    return rc_blas_slow && rc_matmul_tn_shapes(K, m, n)
           && (rc_dw_enabled == 2 || rc_matmul_small_machine());
}
static long long rc_matmul_calls[2] = {0, 0};   /* calls here, and of them on threads */
static long long rc_matmul_count(int threaded)
{
    return __atomic_load_n(&rc_matmul_calls[threaded != 0], __ATOMIC_RELAXED);
}

#define RC_DEFINE_MATMUL(NAME, T, PACKPAR, GEMM)                                \
    typedef struct { rc_idx m, n, k, lda, nr, ldc; const T *a, *bp; T beta; T *c; } \
        NAME##_task;                                                            \
    static void NAME##_run(void *arg)                                           \
    {                                                                           \
        const NAME##_task *t = (const NAME##_task *)arg;                        \
        GEMM(t->m, t->n, t->k, t->a, t->lda, t->bp, t->k, t->nr, t->beta, t->c, t->ldc); \
    }                                                                           \
    /* Returns 0 (nothing done: the caller's BLAS runs) when out of memory or   \
     * without a packed layout. */                                              \
    static int NAME(rc_idx m, rc_idx n, rc_idx k, const T *a, rc_idx lda, const T *b, \
                    rc_idx rs, rc_idx cs, T beta, T *c, rc_idx ldc)              \
    {                                                                           \
        const rc_idx nr = rc_packed_nr(sizeof(T));                              \
        if (nr == 0 || m <= 0 || n <= 0 || k <= 0) return 0;                    \
        void *buf = NULL;                                                       \
        const long long bytes = (long long)rc_packed_size(k, n, nr) * (long long)sizeof(T); \
        if (posix_memalign(&buf, 64, (size_t)bytes) != 0) return 0;             \
        PACKPAR(k, n, b, rs, cs, nr, k, (T *)buf, bytes);                       \
        /* whole 8-row register blocks a thread */                              \
        const rc_idx blocks = (m + 7) / 8;                                      \
        int P = rc_own_threads();                                               \
        if (P > blocks) P = (int)blocks;                                        \
        if (P < 1) P = 1;                                                       \
        NAME##_task tk[RC_MAX_THREADS];                                         \
        for (int q = 0; q < P; q++) {                                           \
            const rc_idx r0 = RC_PK_MIN(m, blocks * q / P * 8);                 \
            const rc_idx r1 = RC_PK_MIN(m, blocks * (q + 1) / P * 8);           \
            tk[q] = (NAME##_task){r1 - r0, n, k, lda, nr, ldc, a + r0 * lda,    \
                                  (const T *)buf, beta, c + r0 * ldc};          \
        }                                                                       \
        __atomic_fetch_add(&rc_matmul_calls[0], 1, __ATOMIC_RELAXED);           \
        if (P > 1) __atomic_fetch_add(&rc_matmul_calls[1], 1, __ATOMIC_RELAXED); \
        rc_run_tasks(NAME##_run, tk, sizeof tk[0], P);                          \
        free(buf);                                                              \
        return 1;                                                               \
    }                                                                           \
    /* C (m, n) += A^T B as a dW problem of one term */                        \
    static void NAME##_tn_problem(rc_dw_problem *pr, rc_idx K, rc_idx m, rc_idx n, \
                                  const T *a, rc_idx lda, const T *b, rc_idx ldb, \
                                  T *c, rc_idx ldc)                              \
    {                                                                           \
        memset(pr, 0, sizeof *pr);                                              \
        pr->b0 = b; pr->ld0 = ldb; pr->n0 = n; pr->K = K;                       \
        pr->nr = rc_packed_nr(sizeof(T));                                       \
        pr->nterms = 1;                                                         \
        pr->term[0] = (rc_dw_term){a, lda, 0, 0, K, m, 0, n, c, ldc, NULL, 0};  \
    }                                                                           \
    /* C (m, n) += A^T B, A (K, m) rows lda apart, B (K, n) rows ldb apart, C   \
     * row-major, the kernel's memory carved from `ws` (NAME##_tn_bytes of it,  \
     * 64-byte aligned; NULL or too small: allocated per call); 0: nothing done \
     * (the caller's BLAS runs). */                                             \
    static int NAME##_tn_ws(rc_idx K, rc_idx m, rc_idx n, const T *a, rc_idx lda, \
                            const T *b, rc_idx ldb, T *c, rc_idx ldc, void *ws, \
                            size_t ws_bytes)                                    \
    {                                                                           \
        rc_dw_problem pr;                                                       \
        NAME##_tn_problem(&pr, K, m, n, a, lda, b, ldb, c, ldc);                \
        pr.ws = ws;                                                             \
        pr.ws_bytes = ws_bytes;                                                 \
        return NAME##_dw(&pr);                                                  \
    }                                                                           \
    static int NAME##_tn(rc_idx K, rc_idx m, rc_idx n, const T *a, rc_idx lda,  \
                         const T *b, rc_idx ldb, T *c, rc_idx ldc)               \
    {                                                                           \
        return NAME##_tn_ws(K, m, n, a, lda, b, ldb, c, ldc, NULL, 0);          \
    }                                                                           \
    /* The workspace NAME##_tn_ws takes for these sizes on this thread now (the \
     * dW kernel's rc_dw_*_bytes: the operands' addresses and strides do not    \
     * enter it); 0: none. */                                                   \
    static size_t NAME##_tn_bytes(rc_idx K, rc_idx m, rc_idx n)                 \
    {                                                                           \
        rc_dw_problem pr;                                                       \
        NAME##_tn_problem(&pr, K, m, n, NULL, m, NULL, n, NULL, n);             \
        return NAME##_dw_bytes(&pr);                                            \
    }
#define rc_matmul_f_dw rc_dw_f
#define rc_matmul_d_dw rc_dw_d
#define rc_matmul_f_dw_bytes rc_dw_f_bytes
#define rc_matmul_d_dw_bytes rc_dw_d_bytes
RC_DEFINE_MATMUL(rc_matmul_f, float, rc_pack_par_f, rc_gemm_packed_f)
RC_DEFINE_MATMUL(rc_matmul_d, double, rc_pack_par_d, rc_gemm_packed_d)

/* A product inside a single-thread section of this thread (rc_threads.h:
 * RC_SECTION_LOCAL), on the packed kernel and this thread alone (_gemm.pxd: mm,
 * instead of BLAS, whose thread count is process-wide):
 *
 *   C (m, n) := alpha op(A) (m, k) B (k, n) + beta C, C row-major; A row-major
 *   (at = 0, rows lda apart) or the transposed view of a (k, m) array (at = 1:
 *   element (i, p) at a[p*lda + i]); element (p, j) of B at b[p*rs + j*cs].
 *
 * B is packed once (alpha applied to the packed copy: exact for the -1 of the
 * corrections) and A^T copied row-major (rc_tcopy), then rc_gemm_packed_* on
 * blocks of rows whose part of A takes about RC_OWN_A_BYTES (it stays in L2
 * while B's panels stream past): buffers of B's and A's size, freed on return
 * (what BLAS's own packing takes, about). Each element of C is one dot product
 * in k order, so the result depends on the shapes only. Returns 0 (nothing done)
 * without a packed layout or when out of memory: then the caller's BLAS runs, at
 * its thread count (the section's one-thread promise and bitwise reproducibility
 * are lost for that product only). */
#define RC_OWN_A_BYTES (128 * 1024)
#define RC_DEFINE_GEMM_OWN(NAME, T, PACK, TCOPY, GEMM)                             \
    static int NAME(rc_idx m, rc_idx n, rc_idx k, T alpha, const T *a, rc_idx lda, \
                    int at, const T *b, rc_idx rs, rc_idx cs, T beta, T *c, rc_idx ldc) \
    {                                                                           \
        const rc_idx nr = rc_packed_nr(sizeof(T));                              \
        if (nr == 0 || m <= 0 || n <= 0 || k <= 0) return 0;                    \
        const size_t nb = (size_t)rc_packed_size(k, n, nr);                     \
        const size_t na = at ? (size_t)m * (size_t)k : 0;                        \
        void *buf = NULL;                                                       \
        if (posix_memalign(&buf, 64, (nb + na) * sizeof(T)) != 0) return 0;     \
        T *bp = (T *)buf;                                                       \
        PACK(k, n, b, rs, cs, nr, k, bp);                                       \
        if (alpha != 1)                                                         \
            for (size_t i = 0; i < nb; i++) bp[i] *= alpha;                     \
        const T *ap = a;                                                        \
        if (at) {                                                               \
            TCOPY(a, lda, 0, k, 0, m, bp + nb);                                 \
            ap = bp + nb;                                                       \
            lda = k;                                                            \
        }                                                                       \
        __atomic_fetch_add(&rc_gemm_own_calls, 1, __ATOMIC_RELAXED);            \
        /* blocks of whole register blocks of rows whose A stays in L2 while B's \
         * panels stream past (the packed kernel: panels outer, rows inner) */  \
        rc_idx mb = (rc_idx)(RC_OWN_A_BYTES / ((size_t)k * sizeof(T))) / 8 * 8; \
        if (mb < 2 * nr) mb = m;   /* blocks this thin would re-read B too often */ \
        for (rc_idx r0 = 0; r0 < m; r0 += mb)                                   \
            GEMM(RC_PK_MIN(mb, m - r0), n, k, ap + r0 * lda, lda, bp, k, nr, beta, \
                 c + r0 * ldc, ldc);                                            \
        free(buf);                                                              \
        return 1;                                                               \
    }
static long long rc_gemm_own_calls = 0;   /* products here (a count for tests) */
static long long rc_gemm_own_count(void)
{
    return __atomic_load_n(&rc_gemm_own_calls, __ATOMIC_RELAXED);
}
RC_DEFINE_GEMM_OWN(rc_gemm_own_f, float, rc_pack_f, rc_tcopy_f, rc_gemm_packed_f)
RC_DEFINE_GEMM_OWN(rc_gemm_own_d, double, rc_pack_d, rc_tcopy_d, rc_gemm_packed_d)

#endif /* RC_MATMUL_H */
