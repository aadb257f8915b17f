/* rc_gemm_dw.h -- a backward call's all-steps weight gradients on the packed kernel.
 *
 * A separate job from the time loops' per-step products (rc_gemm_packed.h, whose
 * tile and packed layout it reuses): after backward's time loop, over all T*N rows,
 * dWx += x^T dG and dWh += sum_t h_prev(t)^T dG_t (_loop.pxd: weight_grads; the
 * reset-before GRU's n columns pair dG with r ⊙ h_prev, unshifted), and the
 * layer-normalised cells' dWh on dZ and dWx on dZx (_lnloop.pxd: after_loop).
 */
#ifndef RC_GEMM_DW_H
#define RC_GEMM_DW_H

#include <limits.h>   /* INT_MAX */
#include <stdlib.h>   /* posix_memalign, free */
#include "rc_gemm_packed.h"

/* dW (m, n) += A^T dG: A the saved inputs (x, or h shifted by a step: R = T*N
 * rows of m), dG the (R, n) pre-activation gradients, K = R in the thousands.
 * BLAS packs both operands on every call: OpenBLAS's copies took ~9 % of an
 * LSTM's training step at (T, N, D, H) = (100, 32, 256, 256), and it packed the
 * large dG once for dWx and again for dWh. Here:
 *
 *   - each thread owns a range of B's column panels (rc_dw_split: equal shares of
 *     the multiply-adds) and, for each chunk of RC_DW_KC rows of K, packs its
 *     panels of the chunk ONCE (rc_pack_*, row by row), for every term;
 *   - each term's A^T is read in place by the packed kernel (rc_gemm_packed_at_*:
 *     a tile's 8 rows of A^T at step p are 8 adjacent elements of A's row p)
 *     where A's rows lie close (rc_dw_inplace below), else copied per chunk in
 *     blocks of RC_DW_MB rows, row-major (rc_tcopy: 8 x 8 transposes; A is read
 *     as given, any row stride);
 *   - each block times the thread's panels is the packed kernel
 *     (rc_gemm_packed2_* on the copy, rc_gemm_packed_at_* in place), beta = 1:
 *     added into C, chunk after chunk;
 *   - a target given as a transposed view (PyTorch's (GH, D) layout, the
 *     models' case) is summed in a row-major scratch C, which each thread adds
 *     into the target for its own columns at the end.
 *
 * Every element of dW is summed chunk by chunk: within a chunk one dot product in
 * k order in registers, then added; chunks in order, their boundaries multiples
 * of RC_DW_KC of the K index, fixed by the dtype. So the results do not depend on
 * the thread count, which only decides who computes which columns.
 *
 * B may be two sources side by side: virtual columns [0, n0) from b0, [n0, n0 +
 * n1) from b1, n0 a multiple of nr then, so every panel comes from one source. The
 * GRU's B is [dG | dAn] (all 3H columns of dG, then dAn): dWh reads dG, dWx reads
 * dG's r and z columns and dAn -- so it runs here only when 3H is a multiple of
 * nr, i.e. when H is a multiple of nr (a power of two): a float32 GRU with H = 100
 * stays on BLAS. A term reads virtual columns [bcol, bcol + n) (bcol a multiple of
 * nr) and K indices [plo, phi), the A row of K index p being p + off.
 *
 * Measured on 2 Zen 4 cores (a C harness, float32, dWx and dWh of one call,
 * GFLOP/s; OpenBLAS 0.3.30 on 2 threads, its two GEMMs): (R, n, D + H) = (1600,
 * 512, 64 + 128) 199.5 against 173.7; (3200, 1024, 256 + 256) 195.5 against
 * 173.1; (3200, 4096, 512 + 1024) 208.6 against 197.1. Chunks of 256 rows ran
 * 192-198 at the three, of 1024 170-207. In the models, forward + backward, this
 * kernel / BLAS (one process, alternating): LSTM (100, 32, 256, 256) 1.02-1.05x,
 * (100, 16, 64, 128) 1.04x; GRU 1.00-1.02x; RNN 1.03-1.08x; (50, 64, 512, 1024)
 * 1.00-1.03x. Below RC_DW_MIN_WORK multiply-adds BLAS keeps the work: at (50, 1,
 * 32, 64) (1M) this kernel was 0.92-0.94x (its buffers, one chunk). */
#define RC_DW_KC_F 512
#define RC_DW_KC_D 256
#define RC_DW_MB 64
#define RC_DW_TERMS 3
typedef struct {
    const void *a; rc_idx lda, off, plo, phi, m;   /* A row of K index p at a + (p + off) * lda */
    rc_idx bcol, n;                                /* B's virtual columns [bcol, bcol + n) */
    void *c; rc_idx ldc;                           /* C (m, n) += A^T B, row-major; or */
    void *ct; rc_idx ldt;                          /* C stored transposed, element (i, j) at
                                                      ct[j * ldt + i] (c == NULL: a PyTorch-
                                                      layout gradient; summed in a scratch C) */
} rc_dw_term;
typedef struct {
    const void *b0, *b1; rc_idx ld0, n0, ld1, n1;  /* B's sources (b1 NULL: none) */
    rc_idx K, nr;
    int nterms;
    rc_dw_term term[RC_DW_TERMS];
    void *ws; size_t ws_bytes;                     /* the caller's workspace (rc_dw_*_bytes of
                                                      it, 64-byte aligned), or NULL: allocated */
} rc_dw_problem;
/* calls that ran here, and of them on threads (test hook) */
static long long rc_dw_calls[2] = {0, 0};
static int rc_dw_enabled = 1;       /* test hook: 0 leaves the weight gradients to BLAS */
static void rc_set_dw(int enabled) { rc_dw_enabled = enabled; }
/* A term's A read in place where its rows lie at most RC_DW_INPLACE_BYTES apart
 * (lda * elsize: the row stride, not the width m -- a bidirectional layer's
 * output read by the next layer is 2H wide per row). The
 * transposed copy costs the same whatever n; it pays where each thread multiplies
 * the copy by many panels and where A's rows are long: a tile reading in place
 * touches one line of A per step p, lda elements apart, and at rows of 2-4 KiB
 * those lines fall into few L1 sets. Measured on 2 AMD EPYC Zen 5 cores (session
 * 22, float32, forward + backward through the models, copy / in place, medians of
 * 8-10 alternating blocks in one process), every term in place: RNN / GRU / LSTM
 * (100, 16, 64, 128) 1.13 / 1.10 / 1.06, (100, 32, 256, 256) 1.08 / 1.03 / 1.01,
 * but (50, 64, 512, 1024) 0.96 / 0.94 / 0.93; with this rule: (100, 16, 64, 128)
 * 1.20 / 1.15 / 1.03, (100, 32, 256, 256) 1.10 / 1.04 / 1.03, (50, 64, 512, 1024)
 * 1.01 / 1.00 / 0.99, (50, 64, 256, 1024) (x in place) 1.05 / 0.98 / 1.00, (100,
 * 32, 1024, 256) (h in place) 1.03 / 0.98 / 1.01. The AVX2 layout (6-row tiles)
 * takes the same rule: on the same cores with the AVX2 code forced at build
 * (RNNCORE_SIMD=x86-64-v3), by the rule, (100, 16, 64, 128) 1.04 / 1.01-1.02 /
 * 0.97-1.00, (100, 32, 256, 256) 1.04 / 1.03 / 0.99-1.01, (50, 64, 512, 1024)
 * 0.99 / 1.00 / 1.03: neutral there. Each element is the same FMAs in the same
 * order either way: bitwise the same dW. Test hook: rc_set_dw_inplace (0 never,
 * 1 the rule, 2 always). */
#define RC_DW_INPLACE_BYTES 1024
static int rc_dw_inplace_mode = 1;  /* A in place: 0 never, 1 by the rule, 2 always */
static void rc_set_dw_inplace(int mode) { rc_dw_inplace_mode = mode; }
static long long rc_dw_inplace_terms = 0;   /* terms read in place, all calls (test hook) */
static long long rc_dw_inplace_count(void)
{
    return __atomic_load_n(&rc_dw_inplace_terms, __ATOMIC_RELAXED);
}
static inline int rc_dw_inplace(rc_idx lda, size_t elsize)
{
    if (lda > INT_MAX || rc_dw_inplace_mode == 0) return 0;   /* the tile's int step */
    return rc_dw_inplace_mode == 2 || (long long)lda * (long long)elsize <= RC_DW_INPLACE_BYTES;
}
/* Whether a backward call's weight gradients over K rows (`work` multiply-adds in
 * all) run here: a packed layout for this CPU, at least RC_DW_MIN_WORK
 * multiply-adds and RC_DW_MIN_ROWS rows (a transposed target's
 * scratch costs m*n whatever K: at (T, N, D, H) = (3, 64, 256, 256), K = 192, the
 * LSTM's fb ran 0.95x BLAS's; K = 256 and 384 ran 1.01-1.02x); or the hook's 2: at
 * any size. Shapes and configuration only. */
#define RC_DW_MIN_WORK (1LL << 22)
#define RC_DW_MIN_ROWS 256
static int rc_dw_use(long long work, rc_idx K)
{
    if (!rc_dw_enabled || rc_packed_nr(sizeof(float)) == 0) return 0;
    if (rc_dw_enabled == 2) return 1;
    /* not rc_row_split: the path, and with it the rounding, must not depend on
     * whether the row split is allowed (the tests compare the two bitwise); with
     * it off (BLAS's workers spin) the kernel runs on one thread, like the loops */
    return work >= RC_DW_MIN_WORK && K >= RC_DW_MIN_ROWS;
}
static long long rc_dw_count(int threaded)
{
    return __atomic_load_n(&rc_dw_calls[threaded != 0], __ATOMIC_RELAXED);
}

/* The threads' panel ranges bound[q] .. bound[q + 1] (q < P) of B's `panels`:
 * equal shares of the multiply-adds, a panel weighing the rows m times the K
 * range of every term that reads it (the GRU's terms cover different columns). */
static void rc_dw_split(const rc_dw_problem *pr, rc_idx panels, int P, rc_idx *bound)
{
    long long total = 0, acc = 0;
    for (int pass = 0; pass < 2; pass++) {
        int q = 1;
        bound[0] = 0;
        for (rc_idx j = 0; j < panels; j++) {
            long long wgt = 0;
            for (int t = 0; t < pr->nterms; t++) {
                const rc_dw_term *e = &pr->term[t];
                const rc_idx c = j * pr->nr;
                if (c + pr->nr > e->bcol && c < e->bcol + e->n && e->phi > e->plo)
                    wgt += (long long)e->m * (e->phi - e->plo);
            }
            if (pass == 0) { total += wgt; continue; }
            /* start thread q's range once the panels so far hold q/P of the work,
             * leaving at least one panel for each later thread */
            while (q < P && (acc * P >= total * q || panels - j <= P - q)) bound[q++] = j;
            acc += wgt;
        }
        if (pass == 1) while (q <= P) bound[q++] = panels;
    }
}
/* A call's memory on P threads (rc_dw_*, rc_dw_*_bytes): P threads' buffers
 * of `per` elements each (the thread's panels of a chunk, then A^T's block or
 * rc_dw_tadd's tmp), then each transposed target's scratch C (m x n), each part
 * on a 64-byte boundary. Returns the bytes in all; sets the threads' panel
 * ranges `bound` and `per`. (Not monotonic in P: the largest share times P
 * can grow from P - 1 to P, e.g. 8 panels on 7 threads take more than on 8.) */
static size_t rc_dw_layout(const rc_dw_problem *pr, size_t elsize, rc_idx KC, int P,
                           rc_idx *bound, rc_idx *perout)
{
    const rc_idx W = pr->n0 + pr->n1, panels = (W + pr->nr - 1) / pr->nr;
    const rc_idx kcap = RC_PK_MIN(KC, pr->K);   /* rows per chunk, at most */
    const rc_idx line = (rc_idx)(64 / elsize);
    rc_dw_split(pr, panels, P, bound);
    rc_idx per = 0;
    for (int q = 0; q < P; q++) {
        const rc_idx sz = (bound[q + 1] - bound[q]) * pr->nr * kcap
                          + RC_DW_MB * (kcap > RC_DW_MB ? kcap : RC_DW_MB);
        if (sz > per) per = sz;
    }
    per = (per + line - 1) / line * line;   /* 64-byte multiples */
    size_t total = (size_t)per * P * elsize;
    for (int t = 0; t < pr->nterms; t++)
        if (pr->term[t].ct != NULL)
            total += ((size_t)pr->term[t].m * pr->term[t].n * elsize + 63) / 64 * 64;
    *perout = per;
    return total;
}
/* The threads a call runs on: the kernels' own (one in a single-thread
 * section), at most one per panel. */
static int rc_dw_threads(const rc_dw_problem *pr)
{
    const rc_idx panels = (pr->n0 + pr->n1 + pr->nr - 1) / pr->nr;
    int P = rc_own_threads();
    if (P > panels) P = (int)panels;
    return P < 1 ? 1 : P;
}
/* Test hook: 1 (default) carves a call's memory from the caller's workspace when
 * it is given and large enough, 0 ignores it (every call allocates); and the
 * calls that used one (count since import). */
static int rc_dw_ws_mode = 1;
static void rc_set_dw_workspace(int mode) { rc_dw_ws_mode = mode; }
static long long rc_dw_ws_calls = 0;
static long long rc_dw_workspace_count(void)
{
    return __atomic_load_n(&rc_dw_ws_calls, __ATOMIC_RELAXED);
}

/* ct[j * ldt + i] += cs[i * ldcs + j] for i < m, j0 <= j < j1: a scratch C added into
 * its transposed target, in blocks transposed by rc_tcopy_* into `tmp` (at least
 * RC_DW_MB * RC_DW_MB elements), then added row by row (vector adds). */
#define RC_DEFINE_DW_TADD(NAME, T, ACOPY)                                       \
    RC_CLONES static void NAME(rc_idx m, rc_idx j0, rc_idx j1, const T *cs,     \
                               rc_idx ldcs, T *ct, rc_idx ldt, T *tmp)          \
    {                                                                           \
        for (rc_idx i0 = 0; i0 < m; i0 += RC_DW_MB) {                           \
            const rc_idx mi = RC_PK_MIN(RC_DW_MB, m - i0);                      \
            for (rc_idx jb = j0; jb < j1; jb += RC_DW_MB) {                     \
                const rc_idx mj = RC_PK_MIN(RC_DW_MB, j1 - jb);                 \
                ACOPY(cs, ldcs, i0, mi, jb, mj, tmp);   /* tmp (mj, mi) */      \
                for (rc_idx j = 0; j < mj; j++) {                               \
                    T *d = ct + (jb + j) * ldt + i0;                            \
                    const T *v = tmp + j * mi;                                  \
                    for (rc_idx i = 0; i < mi; i++) d[i] += v[i];               \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_DW_TADD(rc_dw_tadd_f, float, rc_tcopy_f)
RC_DEFINE_DW_TADD(rc_dw_tadd_d, double, rc_tcopy_d)

#define RC_DEFINE_DW(NAME, T, KC, PACK, ACOPY, TADD, GEMM, GEMM_AT)                   \
    typedef struct { const rc_dw_problem *pr; rc_idx q0, q1; T *buf;            \
                     void *cs[RC_DW_TERMS]; int inplace; } NAME##_task;         \
    static void NAME##_run(void *arg)                                           \
    {                                                                           \
        const NAME##_task *tk = (const NAME##_task *)arg;                       \
        const rc_dw_problem *pr = tk->pr;                                       \
        const rc_idx nr = pr->nr, W = pr->n0 + pr->n1;                          \
        const rc_idx c0 = tk->q0 * nr, c1 = RC_PK_MIN(tk->q1 * nr, W);          \
        const rc_idx kcap = RC_PK_MIN(KC, pr->K);   /* rows per chunk, at most */ \
        T *bb = tk->buf, *ab = tk->buf + (tk->q1 - tk->q0) * nr * kcap;         \
        const int inplace = tk->inplace;                                        \
        for (rc_idx k0 = 0; k0 < pr->K; k0 += KC) {                             \
            const rc_idx kc = RC_PK_MIN(KC, pr->K - k0);                        \
            /* this thread's panels of rows [k0, k0 + kc), ldp = kc */          \
            if (c0 < pr->n0)                                                    \
                PACK(kc, RC_PK_MIN(c1, pr->n0) - c0,                            \
                     (const T *)pr->b0 + k0 * pr->ld0 + c0, pr->ld0, 1, nr, kc, bb); \
            if (c1 > pr->n0) {                                                  \
                const rc_idx s0 = c0 > pr->n0 ? c0 : pr->n0;                    \
                PACK(kc, c1 - s0, (const T *)pr->b1 + k0 * pr->ld1 + (s0 - pr->n0), \
                     pr->ld1, 1, nr, kc, bb + (s0 - c0) * kc);                  \
            }                                                                   \
            for (int t = 0; t < pr->nterms; t++) {                              \
                const rc_dw_term *e = &pr->term[t];                             \
                const rc_idx p0 = e->plo > k0 ? e->plo : k0;                    \
                const rc_idx p1 = RC_PK_MIN(e->phi, k0 + kc);                   \
                const rc_idx j0 = e->bcol > c0 ? e->bcol : c0;                  \
                const rc_idx j1 = RC_PK_MIN(e->bcol + e->n, c1);                \
                if (p1 <= p0 || j1 <= j0) continue;                             \
                const T *bp = bb + (j0 - c0) * kc + (p0 - k0) * nr;             \
                /* a scratch C starts at the term's first K index (beta 0) */   \
                const T beta = e->ct != NULL && p0 == e->plo ? (T)0 : (T)1;     \
                T *cc = (T *)(e->ct != NULL ? tk->cs[t] : e->c);                \
                const rc_idx ldc = e->ct != NULL ? e->n : e->ldc;               \
                /* (from A's row p0 + off >= 0: no pointer before the array) */ \
                const T *as = (const T *)e->a + (p0 + e->off) * e->lda;         \
                for (rc_idx i0 = 0; i0 < e->m; i0 += RC_DW_MB) {                \
                    const rc_idx mb = RC_PK_MIN(RC_DW_MB, e->m - i0);           \
                    T *ci = cc + i0 * ldc + (j0 - e->bcol);                     \
                    if (inplace >> t & 1) {                                     \
                        GEMM_AT(mb, j1 - j0, p1 - p0, as + i0, e->lda, bp, kc, nr, \
                                beta, ci, ldc);                                 \
                        continue;                                               \
                    }                                                           \
                    ACOPY(as, e->lda, 0, p1 - p0, i0, mb, ab);                  \
                    GEMM(mb, j1 - j0, p1 - p0, ab, p1 - p0, 0, ab, p1 - p0, bp, kc, nr, \
                         beta, ci, ldc);                                        \
                }                                                               \
            }                                                                   \
        }                                                                       \
        /* transposed targets: add this thread's columns of each scratch C */    \
        for (int t = 0; t < pr->nterms; t++) {                                  \
            const rc_dw_term *e = &pr->term[t];                                 \
            const rc_idx j0 = e->bcol > c0 ? e->bcol : c0;                      \
            const rc_idx j1 = RC_PK_MIN(e->bcol + e->n, c1);                    \
            if (e->ct == NULL || j1 <= j0 || e->phi <= e->plo) continue;        \
            TADD(e->m, j0 - e->bcol, j1 - e->bcol, (const T *)tk->cs[t], e->n,  \
                 (T *)e->ct, e->ldt, ab);                                        \
        }                                                                       \
    }                                                                           \
    /* Returns 0 (nothing done: the caller falls back) for an invalid problem \
     * or when out of memory. */                                                \
    static int NAME(const rc_dw_problem *pr)                                    \
    {                                                                           \
        if (pr->K <= 0 || pr->nr <= 0 || (pr->b1 != NULL && pr->n0 % pr->nr != 0)) \
            return 0;   /* nothing done: the caller's BLAS path runs */          \
        NAME##_task tk[RC_MAX_THREADS];                                         \
        int inplace = 0;   /* bit t: term t's A read in place (decided once per call) */ \
        for (int t = 0; t < pr->nterms; t++)                                    \
            inplace |= rc_dw_inplace(pr->term[t].lda, sizeof(T)) << t;          \
        const int P = rc_dw_threads(pr);                                        \
        rc_idx per, bound[RC_MAX_THREADS + 1];                                  \
        const size_t total = rc_dw_layout(pr, sizeof(T), KC, P, bound, &per);   \
        for (int q = 0; q < P; q++)                                             \
            tk[q] = (NAME##_task){pr, bound[q], bound[q + 1], NULL, {NULL}, inplace}; \
        /* the caller's workspace (a training call's, from the workspace cache: \
         * allocated here, glibc handed back fresh pages for a shape's first ~10 \
         * calls -- ~4,100 page faults a call at (50, 64, 512, 1024), 2 % of     \
         * perf's samples of an LSTM fb), or separate blocks, each below glibc's \
         * largest mmap threshold (32 MiB) in more shapes */                    \
        void *blk[1 + RC_DW_TERMS] = {NULL};                                    \
        char *ws = (char *)pr->ws;                                              \
        const int own = ws != NULL && rc_dw_ws_mode && pr->ws_bytes >= total    \
                        && ((uintptr_t)ws & 63) == 0;                           \
        if (own) {                                                              \
            blk[0] = ws;                                                        \
            ws += (size_t)per * P * sizeof(T);                                  \
            for (int t = 0; t < pr->nterms; t++)                                \
                if (pr->term[t].ct != NULL) {                                   \
                    blk[1 + t] = ws;                                            \
                    ws += ((size_t)pr->term[t].m * pr->term[t].n * sizeof(T) + 63) / 64 * 64; \
                }                                                               \
        } else {                                                                \
            int ok = posix_memalign(&blk[0], 64, (size_t)per * P * sizeof(T)) == 0; \
            for (int t = 0; t < pr->nterms && ok; t++)                          \
                if (pr->term[t].ct != NULL)                                     \
                    ok = posix_memalign(&blk[1 + t], 64, (size_t)pr->term[t].m  \
                                        * pr->term[t].n * sizeof(T)) == 0;      \
            if (!ok) {                                                          \
                for (int t = 0; t <= RC_DW_TERMS; t++) free(blk[t]);           \
                return 0;                                                       \
            }                                                                   \
        }                                                                       \
        for (int q = 0; q < P; q++) {                                           \
            tk[q].buf = (T *)blk[0] + per * q;                                  \
            for (int t = 0; t < pr->nterms; t++) tk[q].cs[t] = blk[1 + t];      \
        }                                                                       \
        if (own) __atomic_fetch_add(&rc_dw_ws_calls, 1, __ATOMIC_RELAXED);      \
        __atomic_fetch_add(&rc_dw_calls[0], 1, __ATOMIC_RELAXED);               \
        __atomic_fetch_add(&rc_dw_inplace_terms, __builtin_popcount(inplace), __ATOMIC_RELAXED); \
        if (P > 1) __atomic_fetch_add(&rc_dw_calls[1], 1, __ATOMIC_RELAXED);    \
        rc_run_tasks(NAME##_run, tk, sizeof tk[0], P);                          \
        if (!own)                                                               \
            for (int t = 0; t <= RC_DW_TERMS; t++) free(blk[t]);                \
        return 1;                                                               \
    }                                                                           \
    /* The bytes of workspace a call on this problem takes on any thread count \
     * up to this one's (the run may be in a single-thread section: below      \
     * RC_GEMMS_PARALLEL_MIN); 0 for an invalid problem (the call does nothing). \
     * A call that needs more (the thread count raised between) allocates. */  \
    static size_t NAME##_bytes(const rc_dw_problem *pr)                         \
    {                                                                           \
        if (pr->K <= 0 || pr->nr <= 0 || pr->nterms <= 0                        \
            || (pr->b1 != NULL && pr->n0 % pr->nr != 0))                        \
            return 0;                                                           \
        size_t most = 0;                                                        \
        rc_idx per, bound[RC_MAX_THREADS + 1];                                  \
        for (int P = rc_dw_threads(pr); P >= 1; P--) {                          \
            const size_t b = rc_dw_layout(pr, sizeof(T), KC, P, bound, &per);   \
            if (b > most) most = b;                                             \
        }                                                                       \
        return most;                                                            \
    }
RC_DEFINE_DW(rc_dw_f, float, RC_DW_KC_F, rc_pack_f, rc_tcopy_f, rc_dw_tadd_f,
             rc_gemm_packed2_f, rc_gemm_packed_at_f)
RC_DEFINE_DW(rc_dw_d, double, RC_DW_KC_D, rc_pack_d, rc_tcopy_d, rc_dw_tadd_d,
             rc_gemm_packed2_d, rc_gemm_packed_at_d)

#endif /* RC_GEMM_DW_H */
