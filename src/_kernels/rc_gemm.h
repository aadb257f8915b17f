/* rc_gemm.h -- rnncore's own GEMMs for the per-step products, and the shape
 * policy that sends a product to them (rather than to BLAS). The dispatch
 * itself is _gemm.pxd (mm, mm_step); tests/test_gemm.py checks both kernels
 * against NumPy through simd.gemm_small / simd.gemm_panel. */
#ifndef RC_GEMM_H
#define RC_GEMM_H

#include "rc_activations.h"   /* RC_CLONES, rc_idx */
#include "rc_threads.h"       /* rc_loop_parallel_min, rc_blas_get_threads */

/* Small-M GEMM, row-major: C (m, n) := alpha A (m, k) op(B) + beta C, for the
 * per-step products at tiny batch sizes (m = N <= RC_SMALL_M). There BLAS is a
 * poor fit: OpenBLAS forwards m = 1 to a threaded gemv whose thread hand-off
 * costs more than the arithmetic. B is either row-major (k, n) (bt == 0: each
 * row of B is streamed once and applied to all m rows of C, a vectorized axpy)
 * or the transpose of a row-major (n, k) array (bt != 0: dot products, four
 * outputs at a time in 64-byte vector lanes reduced by a shuffle tree; those
 * shorter than RC_SMALL_VK summed in order, as BLAS does).
 * beta == 0 writes C without reading it (BLAS semantics). */
#define RC_SMALL_M 4
typedef float rc_vf64b __attribute__((vector_size(64)));   /* 64-byte vectors (GCC/Clang) */
typedef double rc_vd64b __attribute__((vector_size(64)));
typedef float rc_vf32b __attribute__((vector_size(32)));   /* 32-byte vectors */
typedef double rc_vd32b __attribute__((vector_size(32)));
typedef int rc_vi64b __attribute__((vector_size(64)));
typedef long long rc_vl64b __attribute__((vector_size(64)));
typedef int rc_vi32b __attribute__((vector_size(32)));
typedef long long rc_vl32b __attribute__((vector_size(32)));
/* Horizontal sums by a shuffle tree (halving) of a 64-byte vector, or of one
 * given as two 32-byte halves (lo + hi is the tree's first step: the same sums). */
static inline float rc_hsum_f(rc_vf64b v)
{
    v += __builtin_shuffle(v, (rc_vi64b){8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15});
    v += __builtin_shuffle(v, (rc_vi64b){4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (rc_vi64b){2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3});
    v += __builtin_shuffle(v, (rc_vi64b){1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
    return v[0];
}
static inline double rc_hsum_d(rc_vd64b v)
{
    v += __builtin_shuffle(v, (rc_vl64b){4, 5, 6, 7, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (rc_vl64b){2, 3, 2, 3, 2, 3, 2, 3});
    v += __builtin_shuffle(v, (rc_vl64b){1, 1, 1, 1, 1, 1, 1, 1});
    return v[0];
}
static inline float rc_hsum2_f(rc_vf32b lo, rc_vf32b hi)
{
    rc_vf32b v = lo + hi;
    v += __builtin_shuffle(v, (rc_vi32b){4, 5, 6, 7, 4, 5, 6, 7});
    v += __builtin_shuffle(v, (rc_vi32b){2, 3, 2, 3, 2, 3, 2, 3});
    v += __builtin_shuffle(v, (rc_vi32b){1, 1, 1, 1, 1, 1, 1, 1});
    return v[0];
}
static inline double rc_hsum2_d(rc_vd32b lo, rc_vd32b hi)
{
    rc_vd32b v = lo + hi;
    v += __builtin_shuffle(v, (rc_vl32b){2, 3, 2, 3});
    v += __builtin_shuffle(v, (rc_vl32b){1, 1, 1, 1});
    return v[0];
}
#define RC_HSUM1_F(s, t) rc_hsum_f(s)
#define RC_HSUM1_D(s, t) rc_hsum_d(s)
/* The kernel comes in two forms with the same sums: wide (64-byte vectors, for
 * the AVX-512 clones) and narrow (32-byte vectors; a dot product's 64-byte lanes
 * as two halves), rc_gemm_small_* picking by the level the clones run at. Both
 * are written with named accumulators and compile-time block sizes, so that the
 * clones keep them in registers: the first form (arrays of 64-byte vectors and of
 * row pointers, on every clone) ran at 6-17 GFLOP/s on the AVX2 clone (session
 * 29, Zen 4 with AVX-512 hidden; GCC 12 spilled the vector halves to the stack).
 * Each element of C starts from beta C (0 when beta is 0) and adds (alpha a_ip)
 * b_pj in p order (bt == 0), or alpha times one dot product over k in 64-byte
 * lanes reduced by the shuffle tree (bt != 0). */
/* bt == 0, M (<= 4) rows: C's rows stay in L1 while B streams through once,
 * four rows of it at a time (four sequential streams), each vector of C loaded,
 * given the four products in p order, and stored: the same sums as one row of B
 * at a time. C holds beta C already. */
#define RC_SMALL_NT_ROWS(T, VT, M, AP, CP)                                              \
    {                                                                           \
        rc_idx p = 0;                                                           \
        for (; p + 4 <= k; p += 4) {                                            \
            const T *bp = b + p * ldb;                                          \
            T s[M][4];                                                          \
            for (int i = 0; i < M; i++)                                         \
                for (int u = 0; u < 4; u++) s[i][u] = alpha * (AP)[i * lda + p + u]; \
            rc_idx j = 0;                                                       \
            for (; j + V <= n; j += V) {                                        \
                VT b0, b1, b2, b3;   /* named: arrays of vectors went to the stack */ \
                __builtin_memcpy(&b0, bp + j, sizeof(VT));                      \
                __builtin_memcpy(&b1, bp + ldb + j, sizeof(VT));                \
                __builtin_memcpy(&b2, bp + 2 * ldb + j, sizeof(VT));            \
                __builtin_memcpy(&b3, bp + 3 * ldb + j, sizeof(VT));            \
                for (int i = 0; i < M; i++) {                                   \
                    VT cv;                                                      \
                    T *cp = (CP) + i * ldc + j;                                 \
                    __builtin_memcpy(&cv, cp, sizeof(VT));                      \
                    cv += s[i][0] * b0;                                         \
                    cv += s[i][1] * b1;                                         \
                    cv += s[i][2] * b2;                                         \
                    cv += s[i][3] * b3;                                         \
                    __builtin_memcpy(cp, &cv, sizeof(VT));                      \
                }                                                               \
            }                                                                   \
            for (; j < n; j++)                                                  \
                for (int i = 0; i < M; i++)                                     \
                    for (int u = 0; u < 4; u++)                                 \
                        (CP)[i * ldc + j] += s[i][u] * bp[u * ldb + j];            \
        }                                                                       \
        for (; p < k; p++) {                                                    \
            const T *bp = b + p * ldb;                                          \
            for (int i = 0; i < M; i++) {                                       \
                const T s1 = alpha * (AP)[i * lda + p];                            \
                T *ci = (CP) + i * ldc;                                            \
                for (rc_idx j = 0; j < n; j++) ci[j] += s1 * bp[j];             \
            }                                                                   \
        }                                                                       \
    }
/* bt != 0: outputs j .. j + NJ - 1 of every row, NJ (<= 4) dot products at a
 * time in 64-byte lanes: one vector (H 1) or two 32-byte halves (H 2) */
#define RC_SMALL_LOAD(VT, dst, src) __builtin_memcpy(&(dst), (src), sizeof(VT))
#define RC_SMALL_T_DOT(T, VT, H, HSUM, NJ)                                      \
    {                                                                           \
        const T *b0 = b + j * ldb, *b1 = b + (j + (NJ > 1)) * ldb;              \
        const T *b2 = b + (j + (NJ > 2) * 2) * ldb, *b3 = b + (j + (NJ > 3) * 3) * ldb; \
        for (rc_idx i = 0; i < m; i++) {                                        \
            const T *ai = a + i * lda;                                          \
            VT s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};                          \
            VT t0 = {0}, t1 = {0}, t2 = {0}, t3 = {0};   /* H 2: the upper halves */ \
            for (rc_idx p = 0; p < kv; p += H * V) {                            \
                VT av, v0, v1, v2, v3;                                          \
                RC_SMALL_LOAD(VT, av, ai + p);                                  \
                RC_SMALL_LOAD(VT, v0, b0 + p); RC_SMALL_LOAD(VT, v1, b1 + p);   \
                RC_SMALL_LOAD(VT, v2, b2 + p); RC_SMALL_LOAD(VT, v3, b3 + p);   \
                s0 += av * v0; s1 += av * v1; s2 += av * v2; s3 += av * v3;     \
                if (H == 2) {                                                   \
                    RC_SMALL_LOAD(VT, av, ai + p + V);                          \
                    RC_SMALL_LOAD(VT, v0, b0 + p + V); RC_SMALL_LOAD(VT, v1, b1 + p + V); \
                    RC_SMALL_LOAD(VT, v2, b2 + p + V); RC_SMALL_LOAD(VT, v3, b3 + p + V); \
                    t0 += av * v0; t1 += av * v1; t2 += av * v2; t3 += av * v3; \
                }                                                               \
            }                                                                   \
            T r[4] = {HSUM(s0, t0), HSUM(s1, t1), HSUM(s2, t2), HSUM(s3, t3)};  \
            const T *bu[4] = {b0, b1, b2, b3};                                  \
            for (int u = 0; u < NJ; u++) {                                      \
                T acc = r[u];                                                   \
                for (rc_idx p = kv; p < k; p++) acc += ai[p] * bu[u][p];        \
                c[i * ldc + j + u] += alpha * acc;                              \
            }                                                                   \
        }                                                                       \
    }
#define RC_DEFINE_SMALL_GEMM(NAME, T, VT, H, HSUM)                  \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k, T alpha,           \
                               const T *a, rc_idx lda, const T *b, rc_idx ldb,  \
                               int bt, T beta, T *c, rc_idx ldc)                \
    {                                                                           \
        const rc_idx V = (rc_idx)(sizeof(VT) / sizeof(T));                      \
        for (rc_idx i = 0; i < m; i++) {                                        \
            T *ci = c + i * ldc;                                                \
            if (beta == 0) { for (rc_idx j = 0; j < n; j++) ci[j] = 0; }        \
            else if (beta != 1) { for (rc_idx j = 0; j < n; j++) ci[j] *= beta; } \
        }                                                                       \
        if (!bt) {                                                              \
            switch (m) {                                                        \
            case 1: RC_SMALL_NT_ROWS(T, VT, 1, a, c) break;                           \
            case 2: RC_SMALL_NT_ROWS(T, VT, 2, a, c) break;                           \
            case 3: RC_SMALL_NT_ROWS(T, VT, 3, a, c) break;                           \
            case 4: RC_SMALL_NT_ROWS(T, VT, 4, a, c) break;                           \
            default:   /* m > 4 (the test entry) */                             \
                for (rc_idx r = 0; r < m; r++) RC_SMALL_NT_ROWS(T, VT, 1, a + r * lda, c + r * ldc) \
            }                                                                   \
            return;                                                             \
        }                                                                       \
        if (k < RC_SMALL_VK) {                                                  \
            /* short dot products: in order (as BLAS sums them) */              \
            for (rc_idx j = 0; j < n; j++) {                                    \
                const T *bj = b + j * ldb;                                      \
                for (rc_idx i = 0; i < m; i++) {                                \
                    const T *ai = a + i * lda;                                  \
                    T acc = 0;                                                  \
                    for (rc_idx p = 0; p < k; p++) acc += ai[p] * bj[p];        \
                    c[i * ldc + j] += alpha * acc;                              \
                }                                                               \
            }                                                                   \
            return;                                                             \
        }                                                                       \
        /* four outputs at a time (four independent chains), each reduced by    \
         * the shuffle tree */                                                  \
        const rc_idx kv = k - k % (H * V);                                      \
        rc_idx j = 0;                                                           \
        for (; j + 4 <= n; j += 4) RC_SMALL_T_DOT(T, VT, H, HSUM, 4)            \
        if (n - j == 3) RC_SMALL_T_DOT(T, VT, H, HSUM, 3)                       \
        else if (n - j == 2) RC_SMALL_T_DOT(T, VT, H, HSUM, 2)                  \
        else if (n - j == 1) RC_SMALL_T_DOT(T, VT, H, HSUM, 1)                  \
    }
#define RC_SMALL_VK 16   /* dot products shorter than this are summed in order */
RC_DEFINE_SMALL_GEMM(rc_gemm_small_wide_f, float, rc_vf64b, 1, RC_HSUM1_F)
RC_DEFINE_SMALL_GEMM(rc_gemm_small_wide_d, double, rc_vd64b, 1, RC_HSUM1_D)
RC_DEFINE_SMALL_GEMM(rc_gemm_small_narrow_f, float, rc_vf32b, 2, rc_hsum2_f)
RC_DEFINE_SMALL_GEMM(rc_gemm_small_narrow_d, double, rc_vd32b, 2, rc_hsum2_d)
/* rc_gemm_small_*: the wide form where the clones run AVX-512, else the narrow. */
#define RC_DEFINE_SMALL_DISPATCH(NAME, T, WIDE, NARROW)                         \
    static inline void NAME(rc_idx m, rc_idx n, rc_idx k, T alpha, const T *a,  \
                            rc_idx lda, const T *b, rc_idx ldb, int bt, T beta,  \
                            T *c, rc_idx ldc)                                    \
    {                                                                           \
        if (rc_simd_tier() >= 4) WIDE(m, n, k, alpha, a, lda, b, ldb, bt, beta, c, ldc); \
        else NARROW(m, n, k, alpha, a, lda, b, ldb, bt, beta, c, ldc);          \
    }
RC_DEFINE_SMALL_DISPATCH(rc_gemm_small_f, float, rc_gemm_small_wide_f, rc_gemm_small_narrow_f)
RC_DEFINE_SMALL_DISPATCH(rc_gemm_small_d, double, rc_gemm_small_wide_d, rc_gemm_small_narrow_d)

/* Per-step recurrent GEMM without packing: C (m, n) := beta C + A (m, k) B (k, n),
 * A and B row-major (B not transposed), for moderate m (the batch). BLAS packs
 * the (k, n) weight matrix on every call, i.e. on every time step; measured on
 * a Zen 4 core, a (32 x 256)(256 x 256) sgemm ran at 59 GFLOP/s against 87-102
 * for large ones, the difference being mostly the packing. Here B is read in
 * place, a panel of two vectors' columns and RC_PANEL_KC rows at a time (L1
 * resident, reused by every block of MR rows of A), and each MR x (two vectors)
 * block of C accumulates in 2 MR vector registers over the pass. Two forms,
 * rc_gemm_panel_* picking by the level the clones run at: wide (64-byte vectors,
 * MR 8: 16 of AVX-512's 32 zmm; measured on one Zen 4 core with AVX-512,
 * (32 x 256)(256 x 1024) float32: 94-101 GFLOP/s, 4 x 32 blocks over all of k
 * 62-65) and narrow (32-byte vectors, MR 6: 12 of AVX2's 16 ymm beside the two
 * B vectors and the broadcast). The wide form on the AVX2 clone split each
 * vector in halves, spilled, and ran at 1.3-1.5 GFLOP/s; the narrow one there
 * 45-77 (session 29, Zen 4 with AVX-512 hidden, one core: (16 x 384)(384 x
 * 128) 71-77, (32 x 1024)(1024 x 256) 71, (8 x 512)(512 x 1536) 43-46, L3-bound).
 * Each element of C is one chain over k in order, a pass of RC_PANEL_KC at a
 * time added to the last; columns past the last whole panel go through a plain
 * loop (one chain over all of k), so which columns those are -- and their last
 * bits -- depends on the form. Vector types are GCC/Clang extensions. */
#define RC_PANEL_KC 128   /* k per pass */
#define RC_DEFINE_PANEL_GEMM(NAME, T, VT, MR)                                   \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k,                    \
                               const T *a, rc_idx lda, const T *b, rc_idx ldb,  \
                               T beta, T *c, rc_idx ldc)                        \
    {                                                                           \
        const rc_idx V = (rc_idx)(sizeof(VT) / sizeof(T));                      \
        rc_idx j0 = 0;                                                          \
        for (rc_idx k0 = 0; k0 < k; k0 += RC_PANEL_KC) {                        \
            const rc_idx kc = k - k0 < RC_PANEL_KC ? k - k0 : RC_PANEL_KC;      \
            const T bk = k0 == 0 ? beta : (T)1;  /* later passes accumulate */  \
            for (j0 = 0; j0 + 2 * V <= n; j0 += 2 * V) {                        \
                for (rc_idx i0 = 0; i0 < m; i0 += MR) {                         \
                    const rc_idx mr = m - i0 < MR ? m - i0 : MR;                \
                    /* rows past m re-read row i0 (valid memory); not stored */ \
                    const T *ap[MR];                                            \
                    for (int r = 0; r < MR; r++)                                \
                        ap[r] = a + (i0 + (r < mr ? r : 0)) * lda + k0;         \
                    VT acc[2 * MR];                                             \
                    for (int r = 0; r < 2 * MR; r++) acc[r] = (VT){0};          \
                    const T *bp = b + k0 * ldb + j0;                            \
                    for (rc_idx p = 0; p < kc; p++, bp += ldb) {                \
                        VT b0, b1;                                              \
                        __builtin_memcpy(&b0, bp, sizeof(VT));                  \
                        __builtin_memcpy(&b1, bp + V, sizeof(VT));              \
                        for (int r = 0; r < MR; r++) {                          \
                            /* vector * scalar: GCC broadcasts the scalar */    \
                            const T x = ap[r][p];                               \
                            acc[2 * r] += b0 * x;                               \
                            acc[2 * r + 1] += b1 * x;                           \
                        }                                                       \
                    }                                                           \
                    for (rc_idx r = 0; r < mr; r++) {                           \
                        T *cr = c + (i0 + r) * ldc + j0;                        \
                        for (int h = 0; h < 2; h++) {                           \
                            VT v = acc[2 * r + h];                              \
                            if (bk != 0) {                                      \
                                VT old;                                         \
                                __builtin_memcpy(&old, cr + h * V, sizeof(VT)); \
                                v += old * bk;                                  \
                            }                                                   \
                            __builtin_memcpy(cr + h * V, &v, sizeof(VT));       \
                        }                                                       \
                    }                                                           \
                }                                                               \
            }                                                                   \
        }                                                                       \
        if (j0 < n) {                                                           \
            for (rc_idx i = 0; i < m; i++) {                                    \
                T *ci = c + i * ldc;                                            \
                for (rc_idx j = j0; j < n; j++)                                 \
                    ci[j] = beta == 0 ? (T)0 : beta * ci[j];                    \
                for (rc_idx p = 0; p < k; p++) {                                \
                    const T s = a[i * lda + p];                                 \
                    const T *bp = b + p * ldb;                                  \
                    for (rc_idx j = j0; j < n; j++) ci[j] += s * bp[j];         \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_wide_f, float, rc_vf64b, 8)
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_wide_d, double, rc_vd64b, 8)
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_narrow_f, float, rc_vf32b, 6)
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_narrow_d, double, rc_vd32b, 6)
/* rc_gemm_panel_*: the wide form where the clones run AVX-512, else the narrow. */
static inline void rc_gemm_panel_f(rc_idx m, rc_idx n, rc_idx k, const float *a, rc_idx lda,
                                   const float *b, rc_idx ldb, float beta, float *c, rc_idx ldc)
{
    if (rc_simd_tier() >= 4) rc_gemm_panel_wide_f(m, n, k, a, lda, b, ldb, beta, c, ldc);
    else rc_gemm_panel_narrow_f(m, n, k, a, lda, b, ldb, beta, c, ldc);
}
static inline void rc_gemm_panel_d(rc_idx m, rc_idx n, rc_idx k, const double *a, rc_idx lda,
                                   const double *b, rc_idx ldb, double beta, double *c,
                                   rc_idx ldc)
{
    if (rc_simd_tier() >= 4) rc_gemm_panel_wide_d(m, n, k, a, lda, b, ldb, beta, c, ldc);
    else rc_gemm_panel_narrow_d(m, n, k, a, lda, b, ldb, beta, c, ldc);
}

/* Whether a time loop's per-step product C (m, n) = A (m, k) B (k, n) goes to
 * rc_gemm_panel_* instead of BLAS: more rows than the small-M kernel takes,
 * at most RC_PANEL_MAX_M (beyond, BLAS's packing is amortized over enough
 * rows), B below RC_PANEL_MAX_KN elements, a whole panel of columns, and a loop that runs single-threaded
 * anyway (below the BLAS thread policy's threshold, inside a single-thread
 * section of this thread, or BLAS limited to one thread): the panel kernel has
 * no threads of its own. */
#define RC_PANEL_MAX_M 32
#define RC_PANEL_MAX_KN (1024 * 1024)  /* elements of B: 4 MB in float32 */
static int rc_panel_shape(rc_idx m, rc_idx n, rc_idx k)
{
    return m > RC_SMALL_M && m <= RC_PANEL_MAX_M && n >= 32 && k > 0
        && (long long)k * n < RC_PANEL_MAX_KN;
}

static int rc_use_panel(rc_idx m, rc_idx n, rc_idx k)
{
    if (!rc_panel_shape(m, n, k)) return 0;
    if ((long long)m * n * k < rc_loop_parallel_min || rc_local_depth() > 0) return 1;
    return rc_blas_get_threads != NULL && rc_blas_get_threads() <= 1;
}

/* The bias gradients: out (n,) += A (m, n).sum(axis=0), and out2 (n2,) += the
 * same sums over the first n2 <= n columns (NULL: none) -- the GRU's hidden-side
 * bias sees all of dG and the input side's its [r | z] block, one read of dG for
 * both. Each out[j] accumulates the rows in order, one add per row, as a loop
 * over the rows would (so the result is bitwise that of two separate sums).
 * out and out2 may be one array (a GRU without biases passes one zero array
 * for both, and discards it: its first n2 elements then get both sums,
 * interleaved row by row); A is read-only and apart from both. */
#define RC_DEFINE_COLSUM(NAME, T)                                               \
    RC_CLONES static void NAME(T *out, T *out2, rc_idx n2,                      \
                               const T *restrict a, rc_idx lda, rc_idx m, rc_idx n) \
    {                                                                           \
        for (rc_idx i = 0; i < m; i++) {                                        \
            const T *restrict row = a + i * lda;                                \
            for (rc_idx j = 0; j < n; j++) out[j] += row[j];                    \
            if (out2 != NULL)                                                   \
                for (rc_idx j = 0; j < n2; j++) out2[j] += row[j];              \
        }                                                                       \
    }
RC_DEFINE_COLSUM(rc_colsum_add_f, float)
RC_DEFINE_COLSUM(rc_colsum_add_d, double)

/* Whole-array tests for the zero-initial-state shortcut (_loop.pxd: zero_start,
 * h0_term_zero), on the bits (integer operations the compiler vectorizes; no
 * early exit): whether A (m, n), element (i, j) at a[i*rs + j*cs], has an inf or
 * NaN (exponent all ones), and whether it has a nonzero (-0 counts as zero). The
 * inner loop runs along the unit-stride dimension when there is one. */
#define RC_DEFINE_SCAN(NAME, T, U, COND)                                          \
    RC_CLONES static int NAME(const T *a, rc_idx m, rc_idx n, rc_idx rs, rc_idx cs) \
    {                                                                           \
        U bad = 0;                                                              \
        if (rs == 1 && cs != 1) {   /* column-major: walk the columns */        \
            rc_idx t = m; m = n; n = t;                                         \
            rs = cs; cs = 1;                                                    \
        }                                                                       \
        for (rc_idx i = 0; i < m; i++) {                                        \
            const T *r = a + i * rs;                                            \
            for (rc_idx j = 0; j < n; j++) {                                    \
                U u;                                                            \
                __builtin_memcpy(&u, r + j * cs, sizeof u);                     \
                bad |= (U)(COND);                                               \
            }                                                                   \
        }                                                                       \
        return bad != 0;                                                        \
    }
RC_DEFINE_SCAN(rc_any_nonfinite_f, float, unsigned int, (u & 0x7f800000u) == 0x7f800000u)
RC_DEFINE_SCAN(rc_any_nonfinite_d, double, unsigned long long,
               (u & 0x7ff0000000000000ull) == 0x7ff0000000000000ull)
RC_DEFINE_SCAN(rc_any_nonzero_f, float, unsigned int, (u & 0x7fffffffu) != 0)
RC_DEFINE_SCAN(rc_any_nonzero_d, double, unsigned long long, (u & 0x7fffffffffffffffull) != 0)

#endif /* RC_GEMM_H */
