/* rc_gemm_packed.h -- the time loops' recurrent GEMM on a weight packed once.
 *
 * Every step of a time loop multiplies by the same weight: forward
 * S (N, GH) = H_prev (N, H) Wh (H, GH), backward carry (N, H) += dG (N, GH) Wh^T.
 * BLAS repacks that (k, n) operand on every call, i.e. on every step, and an
 * unpacked kernel reading B row-major in place (rc_gemm_panel_*) touches a new
 * page per k step once n is large. Here B is packed ONCE per kernel call
 * (rc_pack_*, from any strided layout: row-major or a transposed view, so a
 * PyTorch-layout weight needs no extra copy) into column panels nr wide:
 *
 *     panel q = columns [q*nr, q*nr + nr) of B, k rows of nr contiguous
 *     elements, at dst + q*nr*k; the last panel zero-padded to nr columns.
 *
 * and rc_gemm_packed_* computes C (m, n) := A (m, k) B + beta C with A and C
 * row-major, read and written in place. The kernel takes the panel stride
 * apart (ldp rows: panel q at bp + q*nr*ldp), so a row block B[p0:p0+k] of a
 * packed operand is the same array from bp + p0*nr (the reset-before GRU's
 * backward reads Wh^T[:2H] and Wh^T[2H:] of one packed Wh^T), and a column
 * block that starts at a panel is the array from bp + q*nr*ldp (its forward
 * packs Wh[:, :2H] and Wh[:, 2H:] each from a panel boundary: rc_pack_*
 * twice, see _gemm.pxd: pack_weight). Each MR x nr block of C accumulates in
 * registers over all of k: 2 vectors of B and MR broadcasts of A per k step,
 * 2*MR FMAs. Two layouts, chosen at pack time by the CPU (rc_packed_nr):
 *
 *   wide   (AVX-512, x86-64-v4): nr = two 64-byte vectors (32 float / 16 double),
 *          MR = 8: 16 zmm accumulators (no spills: objdump of the v4 clone);
 *   narrow (AVX2+FMA, x86-64-v3): nr = two 32-byte vectors (16 float / 8 double),
 *          MR = 6: 12 ymm accumulators + 2 of B + 1 broadcast = 15 of 16.
 *
 * Rows past the last whole MR block go through 4-, 3-, 2- and 1-row blocks of
 * the same code (with MR = 6 the last 7 or 8 rows as 4 + 3 or 4 + 4: an LSTM
 * inference at (T, N, D, H) = (100, 16, 64, 128) on the AVX2 layout, 8 rows per
 * thread, went from 2.75-3.3 ms as 6 + 2 to 2.3 ms, on 2 Zen 4 cores). Every element of C is one dot product summed in k order
 * (one FMA per k) whatever m, the block or the thread: results do not depend
 * on how the rows are split. beta == 0 writes C without reading it.
 *
 * Measured on a Zen 4 core (thread-CPU GFLOP/s, the machine shared): 100-114
 * on every per-step shape from (8, 128)(128, 512) to (64, 1024)(1024, 4096) and
 * (64, 4096)(4096, 1024); at the three large ones OpenBLAS (1 thread) ran at
 * 56-75 and the unpacked panel kernel at 74-81. 12x32, 14x32 and 6x64 blocks,
 * packing A per call and k blocking (KC = 256) measured no faster than 8x32.
 * Nor on 2 Intel Xeon cores (Emerald Rapids, session 18: two 64-byte FMA
 * units, so a block's loads per FMA weigh more than on Zen 4): 12x32 (24 zmm
 * accumulators) against 8x32 in a C harness, both threads on one shared packed
 * B, per-thread GF/s medians of 15-25 alternating rounds, was 0.99-1.09x in the
 * VM's fast spells (the 8x32 at 95-99 % of the FMA peak at most shapes) and
 * 0.94-1.05x in its slow ones; k blocking with KC = 128 and 256 there
 * 0.95-1.01x.
 *
 * Policy (rc_pack_step_weight below; the row split in rc_threads.h): a loop of
 * T >= 2 steps packs its weight whenever this CPU has a layout and the loop's
 * products would run on our threads -- a function of the shapes and of the
 * configuration fixed at import, never of BLAS's current thread count, so a
 * concurrent model's single-thread section cannot change the path. With the
 * packed kernel the rows are split over threads at any per-step work
 * (rc_row_threads); each thread multiplies its own rows by the whole packed
 * weight, shared read-only, with no per-step synchronisation.
 */
#ifndef RC_GEMM_PACKED_H
#define RC_GEMM_PACKED_H

#include <stdint.h>    /* uintptr_t: the L1 prefetch's address */
#include <stdlib.h>    /* malloc, free: the copy of A */
#include "rc_gemm.h"   /* RC_CLONES, rc_idx, rc_vf64b; rc_threads.h: rc_loop_parallel_min, rc_row_split */


#define RC_PK_MIN(a, b) ((a) < (b) ? (a) : (b))
#define RC_PK_WIDE_BYTES 128    /* panel width of the AVX-512 layout: two 64-byte vectors */
#define RC_PK_NARROW_BYTES 64   /* of the AVX2 layout: two 32-byte vectors */

/* Panel width (elements of `elsize` bytes) of the packed layout for this CPU,
 * or 0: no packed path (baseline x86-64, other architectures/compilers). */
static rc_idx rc_packed_nr(size_t elsize)
{
    switch (rc_simd_tier()) {   /* the level the kernel's clones run at */
    case 4: return (rc_idx)(RC_PK_WIDE_BYTES / elsize);
    case 3: return (rc_idx)(RC_PK_NARROW_BYTES / elsize);
    default: return 0;
    }
}

/* Elements of a packed (k, n) operand with panels nr wide. */
static inline rc_idx rc_packed_size(rc_idx k, rc_idx n, rc_idx nr)
{
    return (n + nr - 1) / nr * nr * k;
}

/* dst (mb, kk) row-major := A's rows [i0, i0 + mb) over K indices [p0, p0 + kk),
 * A (K, .) with rows lda apart, i.e. dst[r * kk + q] = a[(p0 + q) * lda + i0 + r]:
 * a transposing copy in 8 x 8 blocks (three rounds of two-vector shuffles, which
 * GCC lowers to each clone's unpack/permute instructions), the edges element by
 * element. */
typedef float rc_v8f __attribute__((vector_size(32)));
typedef int rc_v8fi __attribute__((vector_size(32)));
typedef double rc_v8d __attribute__((vector_size(64)));
typedef long long rc_v8di __attribute__((vector_size(64)));
#define RC_T8_ROUND(V, x, y, i0, i1, lo, hi)                                     \
    do {                                                                        \
        V l_ = __builtin_shuffle(x[i0], x[i1], lo);                             \
        V h_ = __builtin_shuffle(x[i0], x[i1], hi);                             \
        y[i0] = l_; y[i1] = h_;                                                 \
    } while (0)
/* one round: four pairs of vectors (a, b), (c, d), (e, f), (g, h) of x into y */
#define RC_T8_STAGE(V, x, y, lo, hi, a, b, c, d, e, f, g, h)                     \
    do {                                                                        \
        RC_T8_ROUND(V, x, y, a, b, lo, hi);                                     \
        RC_T8_ROUND(V, x, y, c, d, lo, hi);                                     \
        RC_T8_ROUND(V, x, y, e, f, lo, hi);                                     \
        RC_T8_ROUND(V, x, y, g, h, lo, hi);                                     \
    } while (0)
#define RC_DEFINE_TCOPY(NAME, T, V, MT)                                      \
    RC_CLONES static void NAME(const T *a, rc_idx lda, rc_idx p0, rc_idx kk,    \
                               rc_idx i0, rc_idx mb, T *dst)                    \
    {                                                                           \
        const MT s1l = {0, 8, 1, 9, 4, 12, 5, 13}, s1h = {2, 10, 3, 11, 6, 14, 7, 15}; \
        const MT s2l = {0, 1, 8, 9, 4, 5, 12, 13}, s2h = {2, 3, 10, 11, 6, 7, 14, 15}; \
        const MT s3l = {0, 1, 2, 3, 8, 9, 10, 11}, s3h = {4, 5, 6, 7, 12, 13, 14, 15}; \
        const rc_idx q8 = kk / 8 * 8, r8 = mb / 8 * 8;                          \
        for (rc_idx q = 0; q < q8; q += 8)                                      \
            for (rc_idx r = 0; r < r8; r += 8) {                                \
                V x[8], y[8];                                                   \
                for (int j = 0; j < 8; j++)                                     \
                    __builtin_memcpy(&x[j], a + (p0 + q + j) * lda + i0 + r, sizeof(V)); \
                RC_T8_STAGE(V, x, y, s1l, s1h, 0, 1, 2, 3, 4, 5, 6, 7);         \
                RC_T8_STAGE(V, y, x, s2l, s2h, 0, 2, 1, 3, 4, 6, 5, 7);         \
                RC_T8_STAGE(V, x, y, s3l, s3h, 0, 4, 2, 6, 1, 5, 3, 7);         \
                /* y[0], y[4]: columns 0, 4; y[2], y[6]: 1, 5; y[1], y[5]: 2, 6; \
                 * y[3], y[7]: 3, 7 */                                          \
                static const int col[8] = {0, 2, 1, 3, 4, 6, 5, 7};             \
                for (int j = 0; j < 8; j++)                                     \
                    __builtin_memcpy(dst + (r + col[j]) * kk + q, &y[j], sizeof(V)); \
            }                                                                   \
        for (rc_idx r = 0; r < mb; r++) {   /* the edges */                     \
            const rc_idx qs = r < r8 ? q8 : 0;                                  \
            for (rc_idx q = qs; q < kk; q++)                                    \
                dst[r * kk + q] = a[(p0 + q) * lda + i0 + r];                   \
        }                                                                       \
    }
RC_DEFINE_TCOPY(rc_tcopy_f, float, rc_v8f, rc_v8fi)
RC_DEFINE_TCOPY(rc_tcopy_d, double, rc_v8d, rc_v8di)

/* dst := B (k, n) packed in panels nr wide (layout above), the panels ldp
 * rows apart (ldp >= k: ldp = k packs B alone; a larger ldp leaves room for
 * other row blocks in each panel -- rc_pack_* into dst + k0*nr with the same
 * ldp stacks a block of rows k0.. under them: [Wx; Wh] of the fused loops);
 * element (p, j) of B at b[p*rs + j*cs] (row-major: cs == 1; a transposed
 * view: rs == 1). */
#define RC_DEFINE_PACK(NAME, T, TCOPY)                                               \
    RC_CLONES static void NAME(rc_idx k, rc_idx n, const T *b, rc_idx rs,       \
                               rc_idx cs, rc_idx nr, rc_idx ldp, T *dst)        \
    {                                                                           \
        if (cs == 1) {   /* row by row: each source row read once, in order */  \
            for (rc_idx p = 0; p < k; p++)                                      \
                for (rc_idx j0 = 0; j0 < n; j0 += nr) {                         \
                    const rc_idx w = RC_PK_MIN(nr, n - j0);                     \
                    const T *s = b + p * rs + j0;                               \
                    T *dp = dst + j0 * ldp + p * nr;                            \
                    for (rc_idx j = 0; j < w; j++) dp[j] = s[j];                \
                    for (rc_idx j = w; j < nr; j++) dp[j] = 0;                  \
                }                                                               \
            return;                                                             \
        }                                                                       \
        for (rc_idx j0 = 0; j0 < n; j0 += nr) {                                 \
            const rc_idx w = RC_PK_MIN(nr, n - j0);                             \
            T *d = dst + j0 * ldp;                                              \
            if (rs == 1 && w == nr && nr % 8 == 0) {                            \
                /* a full panel (k, nr) of a transposed view: the transpose of  \
                 * the source's rows j0 .. j0 + nr (k long), in 8 x 8 blocks */ \
                TCOPY(b, cs, j0, nr, 0, k, d);                                  \
                continue;                                                       \
            }                                                                   \
            /* columns of B are rows of the source (rs == 1) or strided: 16 k  \
             * at a time from each column, so every source line is read once */ \
            for (rc_idx p0 = 0; p0 < k; p0 += 16) {                             \
                const rc_idx pc = RC_PK_MIN(16, k - p0);                        \
                for (rc_idx j = 0; j < w; j++) {                                \
                    const T *s = b + p0 * rs + (j0 + j) * cs;                   \
                    for (rc_idx p = 0; p < pc; p++) d[(p0 + p) * nr + j] = s[p * rs]; \
                }                                                               \
                for (rc_idx p = 0; p < pc; p++)                                 \
                    for (rc_idx j = w; j < nr; j++) d[(p0 + p) * nr + j] = 0;   \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_PACK(rc_pack_f, float, rc_tcopy_f)
RC_DEFINE_PACK(rc_pack_d, double, rc_tcopy_d)

/* Packing a large operand on the loop's threads: rc_pack_* over column ranges
 * that start at panel boundaries, one range per thread (rc_run_tasks). A pure
 * copy, so the packed array is the same whatever the thread count (which does
 * read BLAS's current thread count: it only decides who copies). Packing is
 * serial work before the time loop starts, the other threads idle: the LSTM
 * inference at (T, N, D, H) = (50, 64, 512, 1024) ran on the calling thread
 * alone for 17-38 ms of each ~230-290 ms call (perf samples per thread, two
 * runs; most of it packing the 24 MB [Wx; Wh] into freshly mapped memory), and
 * for 1-3 ms with the packing on both threads; its call ran 1.02x faster (in
 * one process, alternating). An operand of `bytes` bytes in all (the caller's:
 * pack_weight's whole array, whichever block of it this call packs) from
 * rc_pack_par_bytes (RC_PACK_PAR_BYTES) up goes on min(rc_own_threads(),
 * panels) threads -- starting threads took ~40-55 us on the VMs measured, a
 * 1 MiB operand packed in ~100-200 us (with the thread team and the 8 x 8
 * transposing copy, packing at any size measured 0.96-1.06x the default at
 * 0.2-1.5 MB weights: bench/compare-results/2026-11-30-pack-threads-ab.txt): so only where the loops themselves may split
 * rows (the BLAS workers sleep) and outside single-thread sections (there
 * rc_own_threads() is 1: e.g. a bidirectional layer's two directions, each on its
 * own thread, pack serially). */
#define RC_PACK_PAR_BYTES (1LL << 20)
static long long rc_pack_par_bytes = RC_PACK_PAR_BYTES;   /* test hook: rc_set_pack_par */
static long long rc_pack_par_calls = 0;   /* calls that packed on threads (test hook) */
/* Threads pack operands of at least `min_bytes` (< 0: never). */
static void rc_set_pack_par(long long min_bytes) { rc_pack_par_bytes = min_bytes; }
static long long rc_pack_par_count(void)
{
    return __atomic_load_n(&rc_pack_par_calls, __ATOMIC_RELAXED);
}
#define RC_DEFINE_PACK_PAR(NAME, PACK, T)                                       \
    typedef struct { rc_idx k, n, rs, cs, nr, ldp; const T *b; T *dst; } NAME##_task; \
    static void NAME##_run(void *arg)                                           \
    {                                                                           \
        const NAME##_task *t = (const NAME##_task *)arg;                        \
        PACK(t->k, t->n, t->b, t->rs, t->cs, t->nr, t->ldp, t->dst);            \
    }                                                                           \
    static void NAME(rc_idx k, rc_idx n, const T *b, rc_idx rs, rc_idx cs,      \
                     rc_idx nr, rc_idx ldp, T *dst, long long bytes)            \
    {                                                                           \
        const rc_idx panels = (n + nr - 1) / nr;                                \
        int P = rc_pack_par_bytes >= 0 && bytes >= rc_pack_par_bytes        \
                    ? rc_own_threads() : 1;                                     \
        if (P > panels) P = (int)panels;                                        \
        if (P < 2) {                                                            \
            PACK(k, n, b, rs, cs, nr, ldp, dst);                                \
            return;                                                             \
        }                                                                       \
        NAME##_task tk[RC_MAX_THREADS];                                         \
        for (int q = 0; q < P; q++) {   /* P <= panels: every range non-empty */ \
            const rc_idx p0 = panels * q / P, p1 = panels * (q + 1) / P;        \
            const rc_idx j0 = p0 * nr, j1 = RC_PK_MIN(p1 * nr, n);              \
            tk[q] = (NAME##_task){k, j1 - j0, rs, cs, nr, ldp, b + j0 * cs, dst + j0 * ldp}; \
        }                                                                       \
        __atomic_fetch_add(&rc_pack_par_calls, 1, __ATOMIC_RELAXED);            \
        rc_run_tasks(NAME##_run, tk, sizeof tk[0], P);                          \
    }
RC_DEFINE_PACK_PAR(rc_pack_par_f, rc_pack_f, float)
RC_DEFINE_PACK_PAR(rc_pack_par_d, rc_pack_d, double)

/* One MR x (2 vectors) block over all of k:
 * C[:MR, :w] := A[:MR, :k] Bpanel + beta C (w < panel width: the last panel).
 * MR is a constant at every call site (always_inline: the loops over r unroll
 * and the accumulators live in registers). */
/* C's vector at cp := v + beta * C (beta 0: C is written, never read; 1: added). */
#define RC_PK_STORE(VT, cp, v, beta)                                            \
        do {                                                                    \
            VT v_ = (v);                                                        \
            if ((beta) != 0) {                                                  \
                VT old_;                                                        \
                __builtin_memcpy(&old_, (cp), sizeof(VT));                      \
                v_ += (beta) == 1 ? old_ : old_ * (beta);                       \
            }                                                                   \
            __builtin_memcpy((cp), &v_, sizeof(VT));                            \
        } while (0)
/* The wide layout's k loop also prefetches B's row RC_PK_L1_AHEAD steps ahead
 * into L1 (prefetcht0, both lines of the 128-byte row). Without it the FMAs
 * waited on B's loads from L2 (perf annotate: the samples on the two B loads)
 * whenever the packed B (k * n elements) did not stay in L1, each panel's
 * first pass over k coming from L2: on 2 Intel Xeon cores (Emerald
 * Rapids, AVX-512, 2 MiB L2 each), both threads multiplying by one shared
 * packed B in a C harness, per-thread GF/s median of 9 alternating rounds,
 * off / 16 / 24 / 32 steps ahead: (m, k, n) = (32, 4096, 1024) 94.5 / 112.7 /
 * 113.4 / 108.8; (16, 256, 1024) 84.4 / 94.9 / 99.1 / 96.5; (16, 1024, 256)
 * 87.0 / 96.5 / 100.7 / 103.6; (8, 128, 512) 85.5 / 100.5 / 97.1 / 107.6: 24
 * was the best or within 4 % of it at three of the four shapes, and no setting
 * led at all four. In the last 24 rows of a panel the address runs past the
 * packed B: a prefetch never faults (an unmapped line is dropped, a mapped one
 * fetched for nothing), and the address is computed as an integer, so no
 * out-of-bounds pointer is formed. Same loads, same FMAs: bitwise the same C.
 * On 2 AMD EPYC Zen 5 cores (session 19; the same harness, 15 rounds, on /
 * off) it is neutral: 192.9 / 188.9 at (32, 1024, 4096), 204.2 / 199.8 at
 * (32, 4096, 1024), 220.3 / 221.3 at (16, 256, 1024), 218.4 / 222.3 at (16,
 * 1024, 256), 195.8 / 199.0 at (8, 128, 512) -- the kernel at 82-95 % of a
 * core's FMA peak (233 GFLOP/s) either way. Zen 4 (the same layout) was not
 * measured with it. The AVX2 layout keeps no L1 prefetch (measured on a Zen 4
 * core without AVX-512, session 27: no gain); its L2 prefetch of the next
 * panel is below (rc_pk_next_l2_use). */
#ifndef RC_PK_L1_AHEAD   /* (0: no prefetch; a C harness's A/B builds) */
#define RC_PK_L1_AHEAD 24
#endif
#define RC_PK_KLOOP(T, VT, K, A, LDA, PS, B, PF)                                \
        for (rc_idx p = 0; p < (K); p++) {                                      \
            VT b0, b1;                                                          \
            if ((PF) != NULL) {   /* the next panel, row p, into L2 (prefetcht1) */ \
                __builtin_prefetch((PF) + p * 2 * V, 0, 2);                     \
                if (2 * sizeof(VT) > 64) __builtin_prefetch((PF) + p * 2 * V + V, 0, 2); \
            }                                                                   \
            if (sizeof(VT) == 64 && RC_PK_L1_AHEAD > 0) {   /* wide: into L1 */  \
                const uintptr_t ahead_ = (uintptr_t)(B)                         \
                    + (uintptr_t)((p + RC_PK_L1_AHEAD) * 2 * V) * sizeof(T);    \
                __builtin_prefetch((const void *)ahead_, 0, 3);                 \
                __builtin_prefetch((const void *)(ahead_ + sizeof(VT)), 0, 3);  \
            }                                                                   \
            __builtin_memcpy(&b0, (B) + p * 2 * V, sizeof(VT));                 \
            __builtin_memcpy(&b1, (B) + p * 2 * V + V, sizeof(VT));             \
            _Pragma("GCC unroll 8")                                             \
            for (int r = 0; r < MR; r++) {                                      \
                const T x = (A)[r * (LDA) + p * (PS)];   /* a broadcast */      \
                acc[2 * r] += b0 * x;                                           \
                acc[2 * r + 1] += b1 * x;                                       \
            }                                                                   \
        }
#define RC_DEFINE_PK_TILE(NAME, T, VT)                                          \
    static inline __attribute__((always_inline)) void NAME(                     \
        const int MR, const int PS, rc_idx k, const T *a, rc_idx lda, rc_idx k2, \
        const T *a2, rc_idx lda2, const T *b, T beta, T *c, rc_idx ldc, rc_idx w, \
        const T *pf)                                                            \
    {                                                                           \
        const rc_idx V = (rc_idx)(sizeof(VT) / sizeof(T));                      \
        VT acc[2 * 8];                                                          \
        _Pragma("GCC unroll 16")                                                \
        for (int r = 0; r < 2 * MR; r++) acc[r] = (VT){0};                      \
        RC_PK_KLOOP(T, VT, k, a, lda, PS, b, pf)                                \
        /* the second segment: B's next k2 rows times a2 (rc_gemm_packed2_*) */ \
        RC_PK_KLOOP(T, VT, k2, a2, lda2, PS, b + k * 2 * V,                     \
                    (pf) != NULL ? (pf) + k * 2 * V : (const T *)NULL)          \
        if (w == 2 * V) {                                                       \
            _Pragma("GCC unroll 8")                                             \
            for (int r = 0; r < MR; r++) {                                      \
                for (int h = 0; h < 2; h++)                                     \
                    RC_PK_STORE(VT, c + r * ldc + h * V, acc[2 * r + h], beta); \
            }                                                                   \
        } else {                                                                \
            for (int r = 0; r < MR; r++) {                                      \
                T tmp[2 * sizeof(VT) / sizeof(T)];                              \
                __builtin_memcpy(tmp, &acc[2 * r], sizeof tmp);                 \
                T *cr = c + r * ldc;                                            \
                for (rc_idx j = 0; j < w; j++)                                  \
                    cr[j] = beta == 0 ? tmp[j] : tmp[j] + beta * cr[j];         \
            }                                                                   \
        }                                                                       \
    }

/* One row of C across QP <= RC_PK_ROW_PANELS panels at once (a call of m = 1: a
 * batch of one sequence). A 1-row block has 2 accumulator chains, so its k
 * loop waits on the FMA latency (4 cycles on 2 units: 8 chains in flight are
 * needed): LSTM inference at (T, N, D, H) = (50, 1, 32, 64) spent about a
 * fifth of its time there. Four panels side by side give 8 chains; whole panels
 * that do not make a group of four go 3 or 2 at a time (6 or 4 chains; 5 as 3 +
 * 2, not 4 + 1), so no whole panel but a lone one is left to the 1-row tile
 * (with the partial last panel). In the AVX-512 layout (32 float32 columns a
 * panel) an RNN's H = 64 is 2 panels and a GRU's 3H = 192 six (4 + 2); RNN
 * (50, 1, 32, 64) inference on Zen 5: the kernel 10.0 -> 8.8 us. Each element
 * is still one chain summed in k order (A's k, then A2's k2), the same FMAs as
 * the 1-row tile's, so C is bitwise the same. */
#define RC_PK_ROW_PANELS 4
#define RC_PK_ROW_KLOOP(T, VT, K, A, B)                                         \
        for (rc_idx p = 0; p < (K); p++) {                                      \
            const T x = (A)[p];                                                 \
            _Pragma("GCC unroll 4")                                             \
            for (int q = 0; q < QP; q++) {                                      \
                VT b0, b1;                                                      \
                __builtin_memcpy(&b0, (B) + q * pstep + p * 2 * V, sizeof(VT)); \
                __builtin_memcpy(&b1, (B) + q * pstep + p * 2 * V + V, sizeof(VT)); \
                acc[2 * q] += b0 * x;                                           \
                acc[2 * q + 1] += b1 * x;                                       \
            }                                                                   \
        }
#define RC_DEFINE_PK_ROW(NAME, T, VT)                                           \
    static inline __attribute__((always_inline)) void NAME(                     \
        const int QP, rc_idx k, const T *a, rc_idx k2, const T *a2, const T *b, \
        rc_idx pstep, T beta, T *c)                                             \
    {                                                                           \
        const rc_idx V = (rc_idx)(sizeof(VT) / sizeof(T));                      \
        VT acc[2 * RC_PK_ROW_PANELS];                                           \
        _Pragma("GCC unroll 8")                                                 \
        for (int q = 0; q < 2 * QP; q++) acc[q] = (VT){0};                      \
        RC_PK_ROW_KLOOP(T, VT, k, a, b)                                         \
        RC_PK_ROW_KLOOP(T, VT, k2, a2, b + k * 2 * V)   /* A2 on B's next rows */ \
        _Pragma("GCC unroll 8")                                                 \
        for (int q = 0; q < 2 * QP; q++)                                        \
            RC_PK_STORE(VT, c + q * V, acc[q], beta);                           \
    }
RC_DEFINE_PK_ROW(rc_pk_row_wide_f, float, rc_vf64b)
RC_DEFINE_PK_ROW(rc_pk_row_wide_d, double, rc_vd64b)
RC_DEFINE_PK_ROW(rc_pk_row_narrow_f, float, rc_vf32b)
RC_DEFINE_PK_ROW(rc_pk_row_narrow_d, double, rc_vd32b)

/* Copying A into the blocks' order (rc_pk_pack_a_*): with the weight streamed
 * from L3 (a packed B of several MiB: the large shapes' per-step products), the
 * MR broadcasts of each k step reading MR rows of A lda apart (4-16 KiB: one
 * line and page per row) held the AVX2 kernel at 61-72 GFLOP/s of a Zen 3
 * core's ~100; with A copied per call into the blocks' order -- block b's rows
 * as (k + k2, MRb): [A | A2] row r at ap[p * MRb + r], the blocks one after
 * another -- the same FMAs in the same order ran 1.09-1.18x faster on 2 threads
 * at (m per thread, k, n) = (32, 1024..4096, 1024..4096), and 0.93-0.98x at
 * B = 1-2 MiB, (16, 512..1024, 256..1024) (C harness, best of 4, one process).
 * The copy is O(m k) against O(m k n) FMAs, on a buffer from malloc (none: A
 * is read in place). On that path each block's k loop also prefetches the next
 * panel into L2 (prefetcht1, a line per k step), so only the first panel comes
 * from L3 at the pace of the FMAs: 1.05-1.15x more at the same shapes (best
 * of 3; prefetcht0 and prefetchnta measured lower). Same FMAs, same order:
 * bitwise the same C. The rule (mode 1): the AVX2 layout only (measured
 * there; the AVX-512 layout is unmeasured with it) and a packed B of at least
 * RC_PK_PACK_A_BYTES (4 MiB).
 *
 * OFF by default (rc_pk_pack_a_mode = 0): in the models the gain did not
 * hold. At (T, N, D, H) = (50, 64, 512, 1024) on the same VM, in one process
 * alternating call by call, never / rule was 1.03-1.15 (LSTM, GRU; RNN 0.92-
 * 1.10) in three runs, then 0.87-0.98 in the next three (LSTM fb 0.87 as the
 * median of 14 pairs, inference 0.94 of 30) -- the VM's L3 was shared with
 * other tenants and its state changed between runs; perf of the copying loop
 * showed the FMAs waiting on B's second vector (B from L3), as in place. The
 * hook (rc_set_pack_a: 1 the rule above, 2 always) keeps it measurable; the
 * tests run it forced (results bitwise the in-place path's). */
#define RC_PK_PACK_A_BYTES (4LL << 20)
static int rc_pk_pack_a_mode = 0;   /* 0 never (default), 1 by the rule, 2 always (any layout, size) */
static long long rc_pk_pack_a_calls = 0;   /* calls that copied A (test hook) */
static void rc_set_pack_a(int mode) { rc_pk_pack_a_mode = mode; }
static long long rc_pack_a_count(void)
{
    return __atomic_load_n(&rc_pk_pack_a_calls, __ATOMIC_RELAXED);
}
static inline int rc_pk_pack_a_use(int narrow, rc_idx m, rc_idx n, rc_idx k, size_t elsize)
{
    if (rc_pk_pack_a_mode == 2) return m > 0 && k > 0;
    return rc_pk_pack_a_mode == 1 && narrow && m >= 4
           && (long long)n * k * (long long)elsize >= RC_PK_PACK_A_BYTES;
}
/* In place (A not copied), each block's k loop prefetches the next panel into
 * L2 too (prefetcht1, a line per k step) when the packed B of the call takes
 * RC_PK_NEXT_L2_BYTES or more, on the AVX2 layout: B then streams from L3 (1-2
 * MiB of L2 a core), and each panel's first block otherwise waits on it. On 2
 * AMD EPYC Zen 4 cores with AVX-512 hidden by the hypervisor (session 27; a C
 * harness, 2 threads multiplying by one shared packed B, a spin barrier per
 * step, 30-40 alternating rounds in one process, median of the paired ratios
 * with / without): rows split, (m, k, n) = (64, 1024, 4096) 1.22; (64, 1536,
 * 3072) 1.21; (64, 1024, 2048) 1.17-1.20; (32, 1024, 4096) 1.34-1.40; (64, 1536,
 * 1024) 1.10; (64, 1024, 1024), B 4 MiB, 0.98-1.03; columns split (each thread
 * half of B): 1.00-1.05; with B in L2, (32, 512, 1024), (16, 192, 512), (8, 192,
 * 512): 0.96-0.975, hence a bound. Through the models (float32, (T, N, D, H) =
 * (50, 64, 512, 1024), 9-21 alternating rounds, median time without / with;
 * bench/compare-results/2026-12-03-*-zen4avx2-s27-next-l2-ab.txt and
 * ...-harness-and-units.txt): GRU inference 1.00-1.18, forward + backward
 * 1.07-1.08; LSTM 1.07-1.09 and 1.08-1.16; but the RNN, whose
 * products take 4 MiB (Wh^T) and 6 MiB ([Wx; Wh]), 0.99 and 0.97 with a 4 MiB
 * bound: hence the bound at 8 MiB. Measured only there (per-call rows m <= 64;
 * larger m, such as rc_matmul's per-call products, unmeasured), and applied to
 * every AVX2 CPU by extrapolation. A single row's groups of panels (m = 1,
 * RC_PK_ROW_PANELS) do not prefetch; only panels left to the tiles do, and
 * only those calls are counted. Prefetching only in each panel's first
 * block measured below every block's (1.15 against 1.22). The AVX-512 layout
 * (with its own L1 prefetch above) is unmeasured with it and keeps it off. Same
 * loads, same FMAs: bitwise the same C. */
#define RC_PK_NEXT_L2_BYTES (8LL << 20)
static int rc_pk_next_l2_mode = 1;   /* 0 never, 1 by the rule (default), 2 always (any layout, size) */
static long long rc_pk_next_l2_calls = 0;   /* calls that prefetched so (test hook) */
static void rc_set_next_l2(int mode) { rc_pk_next_l2_mode = mode; }
static long long rc_next_l2_count(void)
{
    return __atomic_load_n(&rc_pk_next_l2_calls, __ATOMIC_RELAXED);
}
static inline int rc_pk_next_l2_use(int narrow, rc_idx n, rc_idx k, size_t elsize)
{
    const int use = rc_pk_next_l2_mode == 2
                    || (rc_pk_next_l2_mode == 1 && narrow
                        && (long long)n * k * (long long)elsize >= RC_PK_NEXT_L2_BYTES);
    if (use) __atomic_fetch_add(&rc_pk_next_l2_calls, 1, __ATOMIC_RELAXED);
    return use;
}
/* The height of the register block at row i0 of m: MR rows, but never an MR
 * block followed by a 1- or 2-row one when two blocks of 3-4 rows cover the
 * rest (MR = 6: 8 rows as 4 + 4, 7 as 4 + 3: a 2-row block has too few
 * accumulator chains to keep the FMA units busy); then 4, then the last 3, 2, 1. */
static inline int rc_pk_block_rows(rc_idx m, rc_idx i0, int MR)
{
    const rc_idx rem = m - i0, left = rem - MR;
    if (rem >= MR && !(left > 0 && left < 3 && MR + left <= 8)) return MR;
    return rem >= 4 ? 4 : (int)rem;
}

/* The panels of B from column J0 on, and in each the rows of C in blocks of
 * rc_pk_block_rows rows: BLOCK(TILE, h) with h a compile-time height (MR, 4, 3, 2,
 * 1), which sees the panel's columns j0, its width w, its packed `panel` and the
 * `next` panel (the last one: itself) to prefetch, and the block's first row i0. */
#define RC_PK_PANELS(T, BLOCK, TILE, MR, J0)                                    \
        for (rc_idx j0 = (J0); j0 < n; j0 += NR) {                              \
            const T *panel = bp + j0 * ldp;                                     \
            const T *next = j0 + NR < n ? panel + NR * ldp : panel;             \
            const rc_idx w = RC_PK_MIN(NR, n - j0);                             \
            (void)next;                                                         \
            for (rc_idx i0 = 0; i0 < m;) {                                      \
                const int h = rc_pk_block_rows(m, i0, MR);                      \
                switch (h) {                                                    \
                case MR: BLOCK(TILE, MR); break;                                \
                case 4: BLOCK(TILE, 4); break;                                  \
                case 3: BLOCK(TILE, 3); break;                                  \
                case 2: BLOCK(TILE, 2); break;                                  \
                default: BLOCK(TILE, 1); break;   /* h == 1 */                  \
                }                                                               \
                i0 += h;                                                        \
            }                                                                   \
        }
/* C (m, n) := A (m, k) B + beta C, B packed in panels of two VT vectors
 * (nr = 2 * lanes); blocks of rc_pk_block_rows rows (MR, 4, 3, 2, 1); A read
 * in place, or from a copy in the blocks' order (above). In place, the tile is
 * called twice over rather than with `next_l2 ? next : NULL`: a literal NULL lets
 * the inlined tile drop its per-k prefetch test where nothing is prefetched. */
#define RC_PK_BLOCK(TILE, MRX)                                                  \
    do {                                                                        \
        if (ap != NULL) {                                                       \
            TILE(MRX, MRX, k + k2, ap + i0 * (k + k2), 1, 0, ap, 1, panel, beta, \
                 c + i0 * ldc + j0, ldc, w, next);                              \
        } else if (next_l2) {                                                   \
            TILE(MRX, 1, k, a + i0 * lda, lda, k2, a2 + i0 * lda2, lda2, panel, \
                 beta, c + i0 * ldc + j0, ldc, w, next);                        \
        } else {                                                                \
            TILE(MRX, 1, k, a + i0 * lda, lda, k2, a2 + i0 * lda2, lda2, panel, \
                 beta, c + i0 * ldc + j0, ldc, w, NULL);                        \
        }                                                                       \
    } while (0)
#define RC_DEFINE_PK_GEMM(NAME, T, VT, MR, TILE, ROW, NARROW)                   \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k, const T *a,        \
                               rc_idx lda, rc_idx k2, const T *a2, rc_idx lda2, \
                               const T *bp, rc_idx ldp, T beta, T *c, rc_idx ldc) \
    {                                                                           \
        const rc_idx NR = 2 * (rc_idx)(sizeof(VT) / sizeof(T));                 \
        T *ap = NULL;                                                           \
        if (rc_pk_pack_a_use(NARROW, m, (n + NR - 1) / NR * NR, k + k2, sizeof(T))) { \
            ap = (T *)malloc((size_t)m * (size_t)(k + k2) * sizeof(T));         \
            if (ap != NULL) {                                                   \
                __atomic_fetch_add(&rc_pk_pack_a_calls, 1, __ATOMIC_RELAXED);   \
                for (rc_idx i0 = 0; i0 < m;) {   /* block by block: (k + k2, h) */ \
                    const int h = rc_pk_block_rows(m, i0, MR);                  \
                    T *dst = ap + i0 * (k + k2);                                \
                    for (int r = 0; r < h; r++) {                               \
                        const T *s1 = a + (i0 + r) * lda, *s2 = a2 + (i0 + r) * lda2; \
                        for (rc_idx p = 0; p < k; p++) dst[p * h + r] = s1[p];  \
                        for (rc_idx p = 0; p < k2; p++) dst[(k + p) * h + r] = s2[p]; \
                    }                                                           \
                    i0 += h;                                                    \
                }                                                               \
            }                                                                   \
        }                                                                       \
        rc_idx jr = 0;   /* a single row: whole panels 4, then 3 or 2 at a time */ \
        /* (A's copy holds both segments as one) */                             \
        const T *ra = ap != NULL ? ap : a, *ra2 = ap != NULL ? ap : a2;         \
        const rc_idx rk = ap != NULL ? k + k2 : k, rk2 = ap != NULL ? 0 : k2;   \
        if (m == 1)                                                             \
            while (n - jr >= 2 * NR) {                                          \
                const rc_idx left = (n - jr) / NR;   /* whole panels left */    \
                const int qp = left == 5 ? 3 : left >= 4 ? 4 : (int)left;       \
                switch (qp) {                                                   \
                case 4: ROW(4, rk, ra, rk2, ra2, bp + jr * ldp, NR * ldp, beta, c + jr); break; \
                case 3: ROW(3, rk, ra, rk2, ra2, bp + jr * ldp, NR * ldp, beta, c + jr); break; \
                default: ROW(2, rk, ra, rk2, ra2, bp + jr * ldp, NR * ldp, beta, c + jr); break; \
                }                                                               \
                jr += qp * NR;                                                  \
            }                                                                   \
        /* (the 1-row groups above do not prefetch: only panels left to tiles) */ \
        const int next_l2 = ap == NULL && jr < n                                \
            && rc_pk_next_l2_use(NARROW, (n + NR - 1) / NR * NR, k + k2, sizeof(T)); \
        RC_PK_PANELS(T, RC_PK_BLOCK, TILE, MR, jr)                              \
        free(ap);                                                               \
    }
RC_DEFINE_PK_TILE(rc_pk_tile_wide_f, float, rc_vf64b)
RC_DEFINE_PK_TILE(rc_pk_tile_wide_d, double, rc_vd64b)
RC_DEFINE_PK_TILE(rc_pk_tile_narrow_f, float, rc_vf32b)
RC_DEFINE_PK_TILE(rc_pk_tile_narrow_d, double, rc_vd32b)
RC_DEFINE_PK_GEMM(rc_gemm_packed_wide_f, float, rc_vf64b, 8, rc_pk_tile_wide_f, rc_pk_row_wide_f, 0)
RC_DEFINE_PK_GEMM(rc_gemm_packed_wide_d, double, rc_vd64b, 8, rc_pk_tile_wide_d, rc_pk_row_wide_d, 0)
RC_DEFINE_PK_GEMM(rc_gemm_packed_narrow_f, float, rc_vf32b, 6, rc_pk_tile_narrow_f, rc_pk_row_narrow_f, 1)
RC_DEFINE_PK_GEMM(rc_gemm_packed_narrow_d, double, rc_vd32b, 6, rc_pk_tile_narrow_d, rc_pk_row_narrow_d, 1)

/* C (m, n) := [A (m, k) | A2 (m, k2)] B + beta C, B (k + k2, n) packed by
 * rc_pack_* with panels nr wide (either layout: nr tells which) and ldp rows
 * apart (ldp >= k + k2): each element one dot product over B's k + k2 rows in
 * order, A's k then A2's k2, accumulated in registers and stored once.
 * rc_gemm_packed_*: k2 = 0, the plain product. The time loops' fused
 * per-step product [x_t | h_{t-1}] [Wx; Wh] is the two-segment one
 * (rc_fuse_input below). */
#define RC_DEFINE_PK_DISPATCH(NAME, NAME2, T, WIDE, NARROW)                     \
    static inline void NAME2(rc_idx m, rc_idx n, rc_idx k, const T *a, rc_idx lda, \
                             rc_idx k2, const T *a2, rc_idx lda2, const T *bp,   \
                             rc_idx ldp, rc_idx nr, T beta, T *c, rc_idx ldc)    \
    {                                                                           \
        if (nr == RC_PK_WIDE_BYTES / (rc_idx)sizeof(T))                         \
            WIDE(m, n, k, a, lda, k2, a2, lda2, bp, ldp, beta, c, ldc);         \
        else                                                                    \
            NARROW(m, n, k, a, lda, k2, a2, lda2, bp, ldp, beta, c, ldc);       \
    }                                                                           \
    static inline void NAME(rc_idx m, rc_idx n, rc_idx k, const T *a, rc_idx lda, \
                            const T *bp, rc_idx ldp, rc_idx nr, T beta, T *c,    \
                            rc_idx ldc)                                          \
    {                                                                           \
        NAME2(m, n, k, a, lda, 0, a, lda, bp, ldp, nr, beta, c, ldc);           \
    }
RC_DEFINE_PK_DISPATCH(rc_gemm_packed_f, rc_gemm_packed2_f, float, rc_gemm_packed_wide_f,
                      rc_gemm_packed_narrow_f)
RC_DEFINE_PK_DISPATCH(rc_gemm_packed_d, rc_gemm_packed2_d, double, rc_gemm_packed_wide_d,
                      rc_gemm_packed_narrow_d)

/* C (m, n) := A^T B + beta C with A stored (k, m), row p at a + p * lda: the
 * tile reads A^T's row r at step p from a[p * lda + r] (LDA 1, PS lda), so a
 * weight gradient's saved inputs need no transposing copy (rc_gemm_dw.h). The
 * same blocks and the same FMAs in k order as rc_gemm_packed_* on the transposed
 * copy: bitwise the same C. lda must fit in an int (the tile's step). */
#define RC_PK_BLOCK_AT(TILE, MRX)                                               \
        TILE(MRX, (int)lda, k, a + i0, 1, 0, a, 1, panel, beta, c + i0 * ldc + j0, \
             ldc, w, NULL)
#define RC_DEFINE_PK_GEMM_AT(NAME, T, VT, MR, TILE)                             \
    RC_CLONES static void NAME(rc_idx m, rc_idx n, rc_idx k, const T *a,        \
                               rc_idx lda, const T *bp, rc_idx ldp, T beta, T *c, \
                               rc_idx ldc)                                      \
    {                                                                           \
        const rc_idx NR = 2 * (rc_idx)(sizeof(VT) / sizeof(T));                 \
        RC_PK_PANELS(T, RC_PK_BLOCK_AT, TILE, MR, 0)                            \
    }
RC_DEFINE_PK_GEMM_AT(rc_gemm_packed_at_wide_f, float, rc_vf64b, 8, rc_pk_tile_wide_f)
RC_DEFINE_PK_GEMM_AT(rc_gemm_packed_at_wide_d, double, rc_vd64b, 8, rc_pk_tile_wide_d)
RC_DEFINE_PK_GEMM_AT(rc_gemm_packed_at_narrow_f, float, rc_vf32b, 6, rc_pk_tile_narrow_f)
RC_DEFINE_PK_GEMM_AT(rc_gemm_packed_at_narrow_d, double, rc_vd32b, 6, rc_pk_tile_narrow_d)
#define RC_DEFINE_PK_AT_DISPATCH(NAME, T, WIDE, NARROW)                         \
    static inline void NAME(rc_idx m, rc_idx n, rc_idx k, const T *a, rc_idx lda, \
                            const T *bp, rc_idx ldp, rc_idx nr, T beta, T *c,    \
                            rc_idx ldc)                                          \
    {                                                                           \
        if (nr == RC_PK_WIDE_BYTES / (rc_idx)sizeof(T))                         \
            WIDE(m, n, k, a, lda, bp, ldp, beta, c, ldc);                       \
        else                                                                    \
            NARROW(m, n, k, a, lda, bp, ldp, beta, c, ldc);                     \
    }
RC_DEFINE_PK_AT_DISPATCH(rc_gemm_packed_at_f, float, rc_gemm_packed_at_wide_f,
                         rc_gemm_packed_at_narrow_f)
RC_DEFINE_PK_AT_DISPATCH(rc_gemm_packed_at_d, double, rc_gemm_packed_at_wide_d,
                         rc_gemm_packed_at_narrow_d)

/* ------------------------------------------------------------ FMA ceiling
 * One thread's float32 FMA rate at the SIMD level the kernels run at: `rounds`
 * rounds of RC_PEAK_CHAINS independent vector FMAs (acc = fma(acc, b, c)), all in
 * registers, with no loads or stores -- the arithmetic ceiling no GEMM at this
 * SIMD level passes on this core. 12 chains cover the FMA latency x throughput
 * of the machines we target (4 cycles x 2 units on Intel's AVX-512 cores = 8 in
 * flight; Zen 4 runs
 * a 64-byte FMA on both 32-byte units: 4 in flight) and fit the registers of
 * either layout (12 zmm, 12 ymm of 16; the chains are written out: RC_FMA1).
 * Returns the sum of the accumulators and the flops done in *flops (0: no vector
 * FMA at this level: baseline and non-GCC builds). For the benchmarks' ceiling
 * (simd._fma_rate, bench/compare.py). */
#define RC_PEAK_CHAINS 12
#if RC_X86_DISPATCH
#include <immintrin.h>
/* one chain: a = fma(a, b, c) (the intrinsic: an FMA whatever -ffp-contract
 * says), then an empty asm that keeps `a` in a vector register and opaque to
 * the optimiser (no folding of the rounds) */
#define RC_FMA1(FMA, a) a = FMA(a, b, c); __asm__ volatile("" : "+v"(a));
#define RC_DEFINE_FMA_BURN(NAME, VT, SET1, FMA, ADD, STORE, LANES, TARGET)       \
    enum { NAME##_lanes = LANES };   /* floats per vector: rc_fma_burn's count */ \
    __attribute__((target(TARGET), noinline)) static float NAME(long long rounds) \
    {                                                                           \
        const VT b = SET1(0.999999f), c = SET1(1e-6f);                          \
        VT a0 = SET1(0.f), a1 = SET1(1.f), a2 = SET1(2.f), a3 = SET1(3.f),      \
           a4 = SET1(4.f), a5 = SET1(5.f), a6 = SET1(6.f), a7 = SET1(7.f),      \
           a8 = SET1(8.f), a9 = SET1(9.f), a10 = SET1(10.f), a11 = SET1(11.f);  \
        for (long long it = 0; it < rounds; it++) {                             \
            RC_FMA1(FMA, a0) RC_FMA1(FMA, a1) RC_FMA1(FMA, a2) RC_FMA1(FMA, a3) \
            RC_FMA1(FMA, a4) RC_FMA1(FMA, a5) RC_FMA1(FMA, a6) RC_FMA1(FMA, a7) \
            RC_FMA1(FMA, a8) RC_FMA1(FMA, a9) RC_FMA1(FMA, a10) RC_FMA1(FMA, a11) \
        }                                                                       \
        VT t = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))); \
        t = ADD(t, ADD(ADD(a8, a9), ADD(a10, a11)));                            \
        float v[LANES], s = 0;                                                  \
        STORE(v, t);                                                            \
        for (int j = 0; j < LANES; j++) s += v[j];                              \
        return s;                                                               \
    }
RC_DEFINE_FMA_BURN(rc_fma_burn_v4, __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
                   _mm512_storeu_ps, 16, "arch=x86-64-v4")
RC_DEFINE_FMA_BURN(rc_fma_burn_v3, __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
                   _mm256_storeu_ps, 8, "arch=x86-64-v3")
#endif
static float rc_fma_burn(long long rounds, double *flops)
{
    *flops = 0;
#if RC_X86_DISPATCH
    switch (rc_simd_tier()) {   /* the level the kernels' clones run at */
    case 4:
        *flops = 2.0 * RC_PEAK_CHAINS * rc_fma_burn_v4_lanes * (double)rounds;
        return rc_fma_burn_v4(rounds);
    case 3:
        *flops = 2.0 * RC_PEAK_CHAINS * rc_fma_burn_v3_lanes * (double)rounds;
        return rc_fma_burn_v3(rounds);
    default: break;
    }
#endif
    (void)rounds;
    return 0;
}

/* ------------------------------------------------------------------ policy */

/* Whether a time loop of T steps whose per-step product does `work`
 * multiply-adds multiplies by a packed copy of its per-step operand: the CPU
 * has a packed layout, T >= 2 (packing reads B about as often as one step
 * does), and the products run on our threads -- below the BLAS thread
 * threshold, or with rows split over threads (allowed at any work with the
 * packed kernel, rc_row_threads). Any number of rows: for m = 1..4 the packed
 * kernel measured 1.2-3x the small-M kernel (k, n = 256..1024, 1024..4096).
 * Otherwise (row split configured off, a large product) the loop keeps BLAS's
 * threads. Shapes and import-time configuration only: never BLAS's current
 * thread count (which a single-thread section without a packed layout changes
 * process-wide, rc_threads.h). */
static int rc_pack_enabled = 1;   /* test hooks turn packing off (rc_set_packing); and */
static int rc_fuse_enabled = 1;   /* the in-step Wx products (rc_fuse_input, rc_step_input_grad):
                                     0 never, 1 by their rule, 2 whenever the loop packs */
static void rc_set_packing(int enabled, int fuse)
{
    rc_pack_enabled = enabled;
    rc_fuse_enabled = fuse;
}

static int rc_pack_step_weight(rc_idx T, long long work)
{
    if (!rc_pack_enabled || rc_packed_nr(sizeof(float)) == 0 || T < 2 || work < 1) return 0;
    return rc_row_split || work < rc_loop_parallel_min;
}

/* Whether a forward loop of T steps over N rows, with D inputs and a per-step
 * product (N, k)(k, n), computes its input projection x_t Wx step by step --
 * in the per-step product [x_t | h_{t-1}] [Wx; Wh] (rc_gemm_packed2_*, one
 * packed weight of D + k rows; the GRU: x_t Wx and h_{t-1} Wh apart) -- instead
 * of as one BLAS GEMM over all T*N rows before the loop, which the loop then
 * re-reads, out of cache, to add h_{t-1} Wh. When: the loop packs its weight
 * (rc_pack_step_weight: its products run on our threads), D > 0,
 * N >= RC_FUSE_MIN_ROWS, and the stacked weight (D + k, n) takes at most
 * RC_FUSE_MAX_BYTES: every step reads all of it, so it must stay in the caches;
 * with Intel's rules, below RC_FUSE_INTEL_ROWS rows at most N *
 * RC_FUSE_INTEL_ROW_BYTES too, with Zen 5's below RC_FUSE_ZEN5_ROWS (below).
 *
 * Measured on 2 Zen 4 cores (1 MB L2 each, 32 MB L3), float32 inference, the
 * same process timing the loop fused and not in alternate blocks (the
 * `_set_packing(True, fuse=False)` hook), unfused / fused: LSTM (T, N, D, H) =
 * (100, 16, 64, 128) 1.13, (100, 32, 256, 256) 1.10 (stacked weight 2 MB),
 * (100, 32, 256, 512) 1.07 (6 MB), (50, 64, 512, 512) 1.07 (8 MB), (100, 8,
 * 256, 256) 1.04; RNN 1.01-1.09; GRU (100, 16, 64, 128) 2.08, (100, 32, 256,
 * 256) 1.05. Past 8 MB: LSTM (50, 64, 512, 1024) 1.01 (24 MB), (50, 64, 256,
 * 1024) 0.99, (50, 8, 512, 1024) 0.76 (8 rows on one thread streaming 24 MB a
 * step); GRU (50, 64, 512, 1024) 0.92 (18 MB). Shapes and configuration only,
 * like the packing rule: never BLAS's current thread count. */
#define RC_FUSE_MIN_ROWS 8
#define RC_FUSE_MAX_BYTES (8LL << 20)
/* With Intel's rules (rc_activations.h: rc_intel_rules) a forward of fewer than
 * RC_FUSE_INTEL_ROWS rows fuses only a stacked weight of at most
 * RC_FUSE_INTEL_ROW_BYTES per row (N = 8: 1.25 MiB, N = 16: 2.5 MiB): with few
 * rows a thread each step streams the whole stacked weight for them, and x_t Wx's
 * part of it cost more than the all-steps GEMM and the re-read of its gates.
 * Measured on 2 Intel Xeon cores (Emerald Rapids, session 20; float32 inference,
 * T = 50, fused against `_set_packing(True, fuse=False)` in alternate rounds of
 * one process, fused / unfused time; N, D = H, the stacked weight): LSTM (8, 192,
 * 1.2 MB) 0.94, (8, 256, 2 MB) 1.25, (8, 384, 4.7 MB) 1.48, (8, 512, 8 MB) 1.48,
 * (16, 256, 2 MB) 1.02, (16, 384) 1.09, (16, 512) 1.37, (32, 256) 1.07, (32, 512)
 * 1.04; GRU (8, 192, 0.9 MB) 0.99, (8, 256, 1.5 MB) 1.11, (8, 512, 6.3 MB) 1.52,
 * (16, 256, 1.5 MB) 0.97, (16, 512) 1.15, (32, 512) 1.02; RNN (8, 256, 0.5 MB)
 * 0.99, (8, 512, 2 MB) 1.14, (8, 1024, 8 MB) 1.42, (16, 1024) 1.13; LSTM forward
 * + backward (8, 512) 1.15 and 0.99 in two runs, (8, 256) 1.09 (the backward's
 * in-step dx measured neutral there: it keeps its rule). At 32 rows the runs
 * disagreed, so the bound stops there: at T = 50 the (32, 256) and (32, 512)
 * figures above (1.07, 1.04: unfused the faster), at T = 100 in another run
 * (bench/fusing_ab.py) (100, 32, 256, 256) 0.85 and (100, 32, 256, 512) 0.92
 * (fused the faster), and (50, 64, 512, 512) 0.96. The bound is on N, not on the
 * rows a thread gets, so that the path (and with it the rounding) never depends
 * on the thread count. The AMD cores the rule was set on ran the one shape of
 * this kind they measured faster fused (Zen 4, (100, 8, 256, 256): 1.04 unfused
 * / fused) and keep the rule without the bound (checked on Zen 4 in session 21:
 * with the bound, inference, LSTM (50, 8, 512, 512) 0.97, (50, 16, 512, 512) 0.91,
 * GRU 0.96 and 0.92, RNN (50, 8, 1024, 1024) 0.86 of the rule's speed, but RNN (50,
 * 8, 1024, 1024) forward + backward 1.09; rc_activations.h: rc_intel_rules). Only
 * Emerald Rapids was measured; other Intel cores (client parts with 0.25-1.25 MiB of L2 among them) get its
 * rules by extrapolation. */
#define RC_FUSE_INTEL_ROWS 32
#define RC_FUSE_INTEL_ROW_BYTES (160LL << 10)   /* 160 KiB per row */
/* On AMD's Zen 5 cores (rc_activations.h: RC_RULES_ZEN5) the same bound below 16
 * rows. Measured on 2 Zen 5 cores (session 22, bench/rules_ab.py, float32, T = 50,
 * Intel's set against the general in alternate blocks of one process, general /
 * Intel time; at these shapes the two differ only here): inference at N = 8 (the
 * bound's side) GRU (8, 512, 6 MB) 1.18 and 1.13 in two runs, (8, 256, 1.5 MB)
 * 1.15; RNN (8, 1024, 8 MB) 1.05, 1.06, (8, 512, 2 MB) 1.12; LSTM (8, 256, 2 MB)
 * 1.07, 1.03, (8, 512, 8 MB) 1.01, 1.01; forward + backward GRU (8, 512) 1.06,
 * 1.03, RNN (8, 1024) 1.05, LSTM (8, 256) 1.05, (8, 512) 1.01; but at N = 16 the
 * general rule won: RNN (16, 1024, 8 MB) 0.92, LSTM (16, 512, 8 MB) 0.97 (GRU (16,
 * 512) 1.02). Zen 4 (256-bit FMA halves) had the general rule win at N = 8 too
 * (above). This set against the general (bench/rules_ab.py --zen5, same build):
 * inference GRU (50, 8, 512, 512) 1.16, (50, 8, 256, 256) 1.19, LSTM (50, 8, 256,
 * 256) 1.13, (50, 8, 512, 512) 1.04, (50, 12, 512, 512) 1.11, RNN (50, 8, 1024,
 * 1024) and (50, 8, 512, 512) 1.06; forward + backward GRU (50, 8, 512, 512)
 * 1.06, LSTM (50, 8, 256, 256) 1.02; (50, 16, 512, 512), where the two are the
 * same code, 1.02. */
#define RC_FUSE_ZEN5_ROWS 16
/* The rows below which the bound applies under this module's rule set: 0 (none),
 * RC_FUSE_ZEN5_ROWS or RC_FUSE_INTEL_ROWS. */
static inline rc_idx rc_fuse_bound_rows(void)
{
    switch (rc_rule_set()) {
    case RC_RULES_INTEL: return RC_FUSE_INTEL_ROWS;
    case RC_RULES_ZEN5: return RC_FUSE_ZEN5_ROWS;
    default: return 0;
    }
}
/* The rule both in-step products share: a loop of T steps over N rows whose
 * per-step product does `work` multiply-adds and whose in-step operand takes
 * `bytes`, at most `max_bytes` (the hook's mode 2 drops the row and byte bounds). */
static int rc_in_step_rule(rc_idx T, rc_idx N, long long bytes, long long max_bytes,
                           long long work)
{
    if (!rc_fuse_enabled || N <= 0) return 0;
    if (rc_fuse_enabled == 1 && (N < RC_FUSE_MIN_ROWS || bytes > max_bytes)) return 0;
    return rc_pack_step_weight(T, work);
}

static int rc_fuse_input(rc_idx T, rc_idx N, rc_idx D, rc_idx k, rc_idx n, size_t elsize)
{
    if (D <= 0 || k <= 0 || n <= 0) return 0;
    const long long bytes = (long long)(D + k) * n * (long long)elsize;
    if (rc_fuse_enabled == 1 && N < rc_fuse_bound_rows()
        && bytes > (long long)N * RC_FUSE_INTEL_ROW_BYTES)
        return 0;
    return rc_in_step_rule(T, N, bytes, RC_FUSE_MAX_BYTES, (long long)N * n * k);
}

/* Whether a backward loop of T steps over N rows computes the input gradient
 * step by step, dx_t = dA_t Wx^T ((N, GH)(GH, D), on Wx^T packed once, while
 * dA_t is in the cache) instead of as one GEMM over all T*N rows after the
 * loop: the same rule, the loop's own product being (N, GH)(GH, Hp) and the
 * operand Wx^T (GH, D), with its own byte bound (by default the forward's,
 * RC_FUSE_MAX_BYTES; the benchmark hook rc_set_step_dx_max moves it either way:
 * bench/fusing_ab.py --dx-only; <= 0: never in the steps). */
#define RC_STEP_DX_MAX_BYTES RC_FUSE_MAX_BYTES
static long long rc_step_dx_max_bytes = RC_STEP_DX_MAX_BYTES;   /* hook: rc_set_step_dx_max */
static void rc_set_step_dx_max(long long bytes) { rc_step_dx_max_bytes = bytes; }
static int rc_step_input_grad(rc_idx T, rc_idx N, rc_idx D, rc_idx Hp, rc_idx GH, size_t elsize)
{
    const long long bytes = (long long)GH * D * (long long)elsize;
    if (D <= 0 || Hp <= 0 || GH <= 0) return 0;
    return rc_in_step_rule(T, N, bytes, rc_step_dx_max_bytes, (long long)N * GH * Hp);
}

/* Steps per chunk of a forward loop that keeps nothing for backward (inference)
 * and does not fuse x_t Wx into its steps, or 0: the input projection A = X Wx
 * as one GEMM over all T*N rows, into a (T, N, GH) array, as in training.
 * Chunked (_loop.pxd: chunk_input), each thread computes its rows' A for a
 * chunk of steps at a time into one reused buffer, from the chunk's rows of x
 * gathered into another, as its steps reach the chunk: inference then needs memory for
 * a chunk, not for all T steps (the LSTM at (T, N, D, H) = (50, 64, 512,
 * 1024): 7 steps, 7 MB of A and 1 MB of x, instead of 52 MB of A), and A is read back
 * while it is in the cache. The two buffers take at most RC_CHUNK_BYTES (D
 * counts: the gathered x) and at least 2 steps. (The LSTM's unit split reads x in
 * place and allocates no gather buffer; its chunks are counted the same way, so
 * their boundaries are the row split's.) Past RC_CHUNK_MIN_BYTES for
 * all of A only: below that it fits the caches, and glibc reuses a freed block
 * of that size instead of mapping (and the kernel zeroing) fresh pages on
 * every call; 0 too when one chunk would hold all T. Measured on 2 Zen 4
 * cores, chunked / whole in one process: LSTM (50, 64, 512, 1024) 0.96-1.04,
 * GRU 0.99-1.06 (the VM's noise), 4-25 steps per chunk alike. Shapes only (and
 * the hook: rc_set_chunk). */
#define RC_CHUNK_MIN_BYTES (16LL << 20)
#define RC_CHUNK_BYTES (8LL << 20)
static long long rc_chunk_forced = 0;   /* test hook: > 0 that many steps, < 0 never */
static void rc_set_chunk(long long steps) { rc_chunk_forced = steps; }

static rc_idx rc_infer_chunk(rc_idx T, rc_idx N, rc_idx GH, rc_idx D, size_t elsize)
{
    const long long step = (long long)N * (GH + D) * (long long)elsize;
    if (rc_chunk_forced < 0 || T < 2 || N <= 0 || GH <= 0 || D <= 0) return 0;
    if (rc_chunk_forced > 0) return rc_chunk_forced < T ? (rc_idx)rc_chunk_forced : 0;
    if ((long long)N * GH * (long long)elsize * T <= RC_CHUNK_MIN_BYTES) return 0;
    long long c = RC_CHUNK_BYTES / step;
    if (c < 2) c = 2;
    return c < T ? (rc_idx)c : 0;
}

#endif /* RC_GEMM_PACKED_H */
