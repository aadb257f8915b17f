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
#define RC_DEFINE_SMALL_GEMM(NAME, T, VT, HSUM)                                 \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k, T alpha,           \
                               const T *a, rc_idx lda, const T *b, rc_idx ldb,  \
                               int bt, T beta, T *c, rc_idx ldc)                \
    {                                                                           \
        for (rc_idx i = 0; i < m; i++) {                                        \
            T *ci = c + i * ldc;                                                \
            if (beta == 0) { for (rc_idx j = 0; j < n; j++) ci[j] = 0; }        \
            else if (beta != 1) { for (rc_idx j = 0; j < n; j++) ci[j] *= beta; } \
        }                                                                       \
        if (!bt) {                                                              \
            for (rc_idx p = 0; p < k; p++) {                                    \
                const T *bp = b + p * ldb;                                      \
                for (rc_idx i = 0; i < m; i++) {                                \
                    T s = alpha * a[i * lda + p];                               \
                    T *ci = c + i * ldc;                                        \
                    for (rc_idx j = 0; j < n; j++) ci[j] += s * bp[j];          \
                }                                                               \
            }                                                                   \
        } else if (k < RC_SMALL_VK) {                                            \
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
        } else {                                                                \
            /* dot products in 64-byte vector lanes, four outputs at a time    \
             * (four independent chains), each reduced by a shuffle tree */    \
            const rc_idx V = (rc_idx)(sizeof(VT) / sizeof(T));                  \
            const rc_idx kv = k - k % V;                                        \
            for (rc_idx j = 0; j < n; j += 4) {                                 \
                const int nj = n - j < 4 ? (int)(n - j) : 4;                    \
                const T *bj[4];                                                 \
                for (int u = 0; u < 4; u++) bj[u] = b + (j + (u < nj ? u : 0)) * ldb; \
                for (rc_idx i = 0; i < m; i++) {                                \
                    const T *ai = a + i * lda;                                  \
                    VT s[4] = {{0}, {0}, {0}, {0}};                             \
                    for (rc_idx p = 0; p < kv; p += V) {                        \
                        VT av;                                                  \
                        __builtin_memcpy(&av, ai + p, sizeof(VT));              \
                        for (int u = 0; u < 4; u++) {                           \
                            VT bv;                                              \
                            __builtin_memcpy(&bv, bj[u] + p, sizeof(VT));       \
                            s[u] += av * bv;                                    \
                        }                                                       \
                    }                                                           \
                    for (int u = 0; u < nj; u++) {                              \
                        T acc = HSUM(s[u]);                                     \
                        for (rc_idx p = kv; p < k; p++) acc += ai[p] * bj[u][p]; \
                        c[i * ldc + j + u] += alpha * acc;                      \
                    }                                                           \
                }                                                               \
            }                                                                   \
        }                                                                       \
    }
/* horizontal sums of 64-byte vectors: a shuffle tree (halving) */
typedef int rc_vi64b __attribute__((vector_size(64)));
typedef long long rc_vl64b __attribute__((vector_size(64)));
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
#define RC_SMALL_VK 16   /* dot products shorter than this are summed in order */
RC_DEFINE_SMALL_GEMM(rc_gemm_small_f, float, rc_vf64b, rc_hsum_f)
RC_DEFINE_SMALL_GEMM(rc_gemm_small_d, double, rc_vd64b, rc_hsum_d)

/* Per-step recurrent GEMM without packing: C (m, n) := beta C + A (m, k) B (k, n),
 * A and B row-major (B not transposed), for moderate m (the batch). BLAS packs
 * the (k, n) weight matrix on every call, i.e. on every time step; measured on
 * a Zen 4 core, a (32 x 256)(256 x 256) sgemm ran at 59 GFLOP/s against 87-102
 * for large ones, the difference being mostly the packing. Here B is read in
 * place, a panel of RC_PNR(T) columns and RC_PANEL_KC rows at a time (16 KB:
 * L1 resident, reused by every block of 8 rows of A), and each 8 x RC_PNR(T)
 * block of C accumulates in 16 vector registers over the pass. Measured on
 * one core, (32 x 256)(256 x 1024) float32: 94-101 GFLOP/s (4 x 32 blocks
 * over all of k: 62-65). Columns past the last whole panel go through a
 * plain loop. Vector types are GCC/Clang
 * extensions (64-byte vectors; split into halves/quarters on AVX2/SSE2). */
#define RC_PNR(T) ((rc_idx)(128 / sizeof(T)))   /* panel width: two 64-byte vectors */
#define RC_PANEL_MR 8     /* rows of A per register block */
#define RC_PANEL_KC 128   /* k per pass: a k x 128-byte panel of B stays in L1 */
#define RC_DEFINE_PANEL_GEMM(NAME, T, VT)                                       \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k,                    \
                               const T *a, rc_idx lda, const T *b, rc_idx ldb,  \
                               T beta, T *c, rc_idx ldc)                        \
    {                                                                           \
        const rc_idx V = RC_PNR(T) / 2;                                         \
        rc_idx j0 = 0;                                                          \
        for (rc_idx k0 = 0; k0 < k; k0 += RC_PANEL_KC) {                        \
            const rc_idx kc = k - k0 < RC_PANEL_KC ? k - k0 : RC_PANEL_KC;      \
            const T bk = k0 == 0 ? beta : (T)1;  /* later passes accumulate */  \
            for (j0 = 0; j0 + 2 * V <= n; j0 += 2 * V) {                        \
                for (rc_idx i0 = 0; i0 < m; i0 += RC_PANEL_MR) {                \
                    const rc_idx mr = m - i0 < RC_PANEL_MR ? m - i0 : RC_PANEL_MR; \
                    /* rows past m re-read row i0 (valid memory); not stored */ \
                    const T *ap[RC_PANEL_MR];                                   \
                    for (int r = 0; r < RC_PANEL_MR; r++)                       \
                        ap[r] = a + (i0 + (r < mr ? r : 0)) * lda + k0;         \
                    VT acc[2 * RC_PANEL_MR];                                    \
                    for (int r = 0; r < 2 * RC_PANEL_MR; r++) acc[r] = (VT){0}; \
                    const T *bp = b + k0 * ldb + j0;                            \
                    for (rc_idx p = 0; p < kc; p++, bp += ldb) {                \
                        VT b0, b1;                                              \
                        __builtin_memcpy(&b0, bp, sizeof(VT));                  \
                        __builtin_memcpy(&b1, bp + V, sizeof(VT));              \
                        /* vector * scalar: GCC broadcasts the scalar */        \
                        for (int r = 0; r < RC_PANEL_MR; r++) {                 \
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
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_f, float, rc_vf64b)
RC_DEFINE_PANEL_GEMM(rc_gemm_panel_d, double, rc_vd64b)

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
