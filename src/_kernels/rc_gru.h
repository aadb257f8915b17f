/* rc_gru.h -- the GRU's fused elementwise passes (gru.pyx).
 *
 * Design rule for every fused pass: one read and one write of each element,
 * bias add + activation + store in the same loop. */
#ifndef RC_GRU_H
#define RC_GRU_H

#include "rc_pass.h"

/* ================================================================ GRU
 * Gates r, z, n along the 3H axis (PyTorch order); rc_gru_* are the fused
 * per-step passes of src/_kernels/gru.pyx (one read and one write of every
 * element, rows r < rows, each array rows ld* elements apart). Every pointer
 * names a distinct array (or disjoint steps of one), hence `restrict`, which
 * lets GCC vectorize without run-time alias checks. */
enum { RC_GRU_R = 0, RC_GRU_Z = 1, RC_GRU_N = 2, RC_GRU_G = 3 };

/* GRU forward, fused: from g = x Wx (the input projection, overwritten with
 * the activations) and s = h_prev Wh (all three gates, scratch):
 *   r  = σ(g_r + bx_r + s_r + bh_r)          z = σ(g_z + bx_z + s_z + bh_z)
 *   hn = s_n + bh_n                          n = tanh(g_n + bx_n + r ⊙ hn)
 *   h  = (1 - z) ⊙ n + z ⊙ h_prev
 * stores g = [r | z | n], hn and h. */
#define RC_DEFINE_GRU_FWD(NAME, T, SIG, TANH)                                   \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_ROWS(T, g, ldg, g) RC_ROWS(T, hn, ldhn, s) RC_ROWS(T, h, ldh, h)     \
        RC_ROWS(const T, s, lds, hw) RC_ROWS(const T, hp, ldhp, prev)           \
        const T *restrict bx = (const T *)st->b, *restrict bh = (const T *)st->bh; \
        const T *bxr = bx + RC_GRU_R * H, *bxz = bx + RC_GRU_Z * H, *bxn = bx + RC_GRU_N * H; \
        const T *bhr = bh + RC_GRU_R * H, *bhz = bh + RC_GRU_Z * H, *bhn = bh + RC_GRU_N * H; \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *gr = g + q * ldg + RC_GRU_R * H, *gz = g + q * ldg + RC_GRU_Z * H; \
            T *gn = g + q * ldg + RC_GRU_N * H;                                 \
            const T *sr = s + q * lds + RC_GRU_R * H, *sz = s + q * lds + RC_GRU_Z * H; \
            const T *sn = s + q * lds + RC_GRU_N * H, *hpq = hp + q * ldhp;     \
            T *hnq = hn + q * ldhn, *hq = h + q * ldh;                          \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T r = SIG(gr[j] + bxr[j] + (sr[j] + bhr[j]));                   \
                T z = SIG(gz[j] + bxz[j] + (sz[j] + bhz[j]));                   \
                T a = sn[j] + bhn[j];                                           \
                T n = TANH(gn[j] + bxn[j] + r * a);                             \
                hq[j] = ((T)1 - z) * n + z * hpq[j];                            \
                gr[j] = r; gz[j] = z; gn[j] = n; hnq[j] = a;                    \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_GRU_FWD(rc_gru_fwd_f, float, rc_sigmoidf, rc_tanhf)
RC_DEFINE_GRU_FWD(rc_gru_fwd_d, double, rc_sigmoidd, rc_tanhd)

/* GRU backward, fused: with dh' = dh + carry and the stored r, z, n, hn:
 *   da_n = dh' ⊙ (1 - z) ⊙ (1 - n²)
 *   da_r = da_n ⊙ hn ⊙ r (1 - r)             da_z = dh' ⊙ (h_prev - n) ⊙ z (1 - z)
 * writes the HIDDEN-side gradient dg = [da_r | da_z | da_n ⊙ r] (what
 * h_prev Wh + bh sees), the input-side n block dan = da_n (x Wx + bx sees
 * [da_r | da_z | da_n]), and carry = dh' ⊙ z (the direct path; the caller
 * then adds dg Wh^T with one GEMM). */
/* GRU_BODY(DG, LDDG, DAN, LDDAN, G, LDG, HN, LDHN): the elementwise pass over
 * `rows` rows; the in-place variant (rc_gru_bwd_ip_*: dG over the saved gates,
 * dA_n over hidden_n, for callers that back-propagate once) passes the same
 * pointer twice: every element is read before it is overwritten. */
#define RC_GRU_BWD_BODY(T, DG, LDDG, DAN, LDDAN, G, LDG, HN, LDHN)              \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gr = G + q * LDG + RC_GRU_R * H, *gz = G + q * LDG + RC_GRU_Z * H; \
            const T *gn = G + q * LDG + RC_GRU_N * H;                           \
            T *dr = DG + q * LDDG + RC_GRU_R * H, *dz = DG + q * LDDG + RC_GRU_Z * H; \
            T *dn = DG + q * LDDG + RC_GRU_N * H, *danq = DAN + q * LDDAN;      \
            const T *dhq = dh + q * lddh, *hnq = HN + q * LDHN, *hpq = hp + q * ldhp; \
            T *cq = carry + q * ldc;                                            \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T d = dhq[j] + cq[j];                                           \
                T r = gr[j], z = gz[j], n = gn[j], hnj = hnq[j];                \
                T a_n = d * ((T)1 - z) * ((T)1 - n * n);                        \
                dr[j] = a_n * hnj * (r * ((T)1 - r));                           \
                dz[j] = d * (hpq[j] - n) * (z * ((T)1 - z));                    \
                dn[j] = a_n * r;                                                \
                danq[j] = a_n;                                                  \
                cq[j] = d * z;                                                  \
            }                                                                   \
        }
/* both variants: in dh, hp; in and out the carry */
#define RC_GRU_BWD_COMMON(T)                                                    \
        RC_ROWS(const T, dh, lddh, dh) RC_ROWS(const T, hp, ldhp, prev) RC_ROWS(T, carry, ldc, carry)
#define RC_DEFINE_GRU_BWD(NAME, NAME_IP, T)                                     \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_GRU_BWD_COMMON(T)                                                    \
        RC_ROWS(T, dg, lddg, dg) RC_ROWS(T, dan, lddan, dan)                    \
        RC_ROWS(const T, g, ldg, g) RC_ROWS(const T, hn, ldhn, s)               \
        RC_GRU_BWD_BODY(T, dg, lddg, dan, lddan, g, ldg, hn, ldhn)              \
    }                                                                           \
    /* in place: dG over the saved gates (st->g), dAn over hidden_n (st->s) */  \
    RC_CLONES static void NAME_IP(const rc_pass *st, rc_idx rows, rc_idx H)     \
    {                                                                           \
        RC_GRU_BWD_COMMON(T)                                                    \
        RC_ROWS(T, gd, ldgd, g) RC_ROWS(T, hnd, ldhnd, s)                       \
        RC_GRU_BWD_BODY(T, gd, ldgd, hnd, ldhnd, gd, ldgd, hnd, ldhnd)          \
    }
RC_DEFINE_GRU_BWD(rc_gru_bwd_f, rc_gru_bwd_ip_f, float)
RC_DEFINE_GRU_BWD(rc_gru_bwd_d, rc_gru_bwd_ip_d, double)
RC_DEFINE_PASSES(rc_gru_pass, rc_gru_fwd_f, rc_gru_fwd_d, rc_gru_bwd_f, rc_gru_bwd_d,
                 rc_gru_bwd_ip_f, rc_gru_bwd_ip_d)

/* ================================================================ reset-before GRU
 * n = tanh(x W_in + b_in + (r ⊙ h_prev) W_hn + b_hn) (Cho et al. 2014, Keras
 * reset_after=False): r must be known before the n block's recurrent product,
 * so each step runs two GEMMs and two fused passes per direction. In these
 * passes st->s is the saved reset_h = r ⊙ h_prev (where the reset-after
 * passes keep hidden_n) and st->hw the (N, 3H) per-step scratch. */

/* forward, pass 1, from g = x Wx (r, z blocks) and hw[:, :2H] = h_prev W_h[r|z]:
 *   r = σ(g_r + bx_r + hw_r + bh_r)     z = σ(g_z + bx_z + hw_z + bh_z)
 *   reset_h = r ⊙ h_prev
 * stores g_r = r, g_z = z and reset_h. */
#define RC_DEFINE_GRU_RB_FWD1(NAME, T, SIG)                                     \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_ROWS(T, g, ldg, g) RC_ROWS(T, rh, ldrh, s)                           \
        RC_ROWS(const T, s, lds, hw) RC_ROWS(const T, hp, ldhp, prev)           \
        const T *restrict bx = (const T *)st->b, *restrict bh = (const T *)st->bh; \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *gr = g + q * ldg + RC_GRU_R * H, *gz = g + q * ldg + RC_GRU_Z * H; \
            const T *sr = s + q * lds + RC_GRU_R * H, *sz = s + q * lds + RC_GRU_Z * H; \
            const T *hpq = hp + q * ldhp;                                       \
            T *rhq = rh + q * ldrh;                                             \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T r = SIG(gr[j] + bx[RC_GRU_R * H + j] + (sr[j] + bh[RC_GRU_R * H + j])); \
                T z = SIG(gz[j] + bx[RC_GRU_Z * H + j] + (sz[j] + bh[RC_GRU_Z * H + j])); \
                rhq[j] = r * hpq[j];                                            \
                gr[j] = r; gz[j] = z;                                           \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_GRU_RB_FWD1(rc_gru_rb_fwd1_f, float, rc_sigmoidf)
RC_DEFINE_GRU_RB_FWD1(rc_gru_rb_fwd1_d, double, rc_sigmoidd)

/* forward, pass 2, from g_n = x W_in and hw_n = reset_h W_hn:
 *   n = tanh(g_n + bx_n + hw_n + bh_n)     h = (1 - z) ⊙ n + z ⊙ h_prev
 * stores g_n = n and h. */
#define RC_DEFINE_GRU_RB_FWD2(NAME, T, TANH)                                    \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_ROWS(T, g, ldg, g) RC_ROWS(T, h, ldh, h)                             \
        RC_ROWS(const T, s, lds, hw) RC_ROWS(const T, hp, ldhp, prev)           \
        const T *restrict bx = (const T *)st->b + RC_GRU_N * H;                 \
        const T *restrict bh = (const T *)st->bh + RC_GRU_N * H;                \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *gn = g + q * ldg + RC_GRU_N * H;                                 \
            const T *gz = g + q * ldg + RC_GRU_Z * H, *sn = s + q * lds + RC_GRU_N * H; \
            const T *hpq = hp + q * ldhp;                                       \
            T *hq = h + q * ldh;                                                \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T z = gz[j];                                                    \
                T n = TANH(gn[j] + bx[j] + (sn[j] + bh[j]));                    \
                hq[j] = ((T)1 - z) * n + z * hpq[j];                            \
                gn[j] = n;                                                      \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_GRU_RB_FWD2(rc_gru_rb_fwd2_f, float, rc_tanhf)
RC_DEFINE_GRU_RB_FWD2(rc_gru_rb_fwd2_d, double, rc_tanhd)

/* backward, pass 1, with dh' = dh + carry and the stored z, n:
 *   da_n = dh' ⊙ (1 - z) ⊙ (1 - n²)       da_z = dh' ⊙ (h_prev - n) ⊙ z (1 - z)
 * writes dG's z and n blocks (both sides see the same n block here: b_hn and
 * W_hn sit outside the reset product) and carry = dh' ⊙ z; the caller then
 * forms d(reset_h) = da_n W_hn^T with one GEMM.
 * BODY(DG, LDDG, G, LDG): in place (dG over the saved gates) passes one
 * pointer twice: every element is read before it is overwritten. */
#define RC_GRU_RB_BWD1_BODY(T, DG, LDDG, G, LDG)                                \
        RC_ROWS(const T, dh, lddh, dh) RC_ROWS(const T, hp, ldhp, prev)         \
        RC_ROWS(T, carry, ldc, carry)                                           \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gz = G + q * LDG + RC_GRU_Z * H, *gn = G + q * LDG + RC_GRU_N * H; \
            T *dz = DG + q * LDDG + RC_GRU_Z * H, *dn = DG + q * LDDG + RC_GRU_N * H; \
            const T *dhq = dh + q * lddh, *hpq = hp + q * ldhp;                 \
            T *cq = carry + q * ldc;                                            \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T d = dhq[j] + cq[j], z = gz[j], n = gn[j];                     \
                dn[j] = d * ((T)1 - z) * ((T)1 - n * n);                        \
                dz[j] = d * (hpq[j] - n) * (z * ((T)1 - z));                    \
                cq[j] = d * z;                                                  \
            }                                                                   \
        }
/* backward, pass 2, with hw[:, :H] = d(reset_h) = da_n W_hn^T and the stored r:
 *   da_r = d(reset_h) ⊙ h_prev ⊙ r (1 - r)        carry += d(reset_h) ⊙ r
 * writes dG's r block; the caller then adds [da_r | da_z] W_h[r|z]^T. */
#define RC_GRU_RB_BWD2_BODY(T, DG, LDDG, G, LDG)                                \
        RC_ROWS(const T, s, lds, hw) RC_ROWS(const T, hp, ldhp, prev)           \
        RC_ROWS(T, carry, ldc, carry)                                           \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gr = G + q * LDG + RC_GRU_R * H, *drh = s + q * lds;       \
            T *dr = DG + q * LDDG + RC_GRU_R * H;                               \
            const T *hpq = hp + q * ldhp;                                       \
            T *cq = carry + q * ldc;                                            \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T r = gr[j], e = drh[j];                                        \
                dr[j] = e * hpq[j] * (r * ((T)1 - r));                          \
                cq[j] += e * r;                                                 \
            }                                                                   \
        }
/* a backward pass and its in-place twin (dG over the saved gates st->g) */
#define RC_DEFINE_GRU_RB_BWD(NAME, NAME_IP, T, BODY)                            \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_ROWS(T, dg, lddg, dg) RC_ROWS(const T, g, ldg, g)                    \
        BODY(T, dg, lddg, g, ldg)                                               \
    }                                                                           \
    RC_CLONES static void NAME_IP(const rc_pass *st, rc_idx rows, rc_idx H)     \
    {                                                                           \
        RC_ROWS(T, gd, ldgd, g)                                                 \
        BODY(T, gd, ldgd, gd, ldgd)                                             \
    }
RC_DEFINE_GRU_RB_BWD(rc_gru_rb_bwd1_f, rc_gru_rb_bwd1_ip_f, float, RC_GRU_RB_BWD1_BODY)
RC_DEFINE_GRU_RB_BWD(rc_gru_rb_bwd1_d, rc_gru_rb_bwd1_ip_d, double, RC_GRU_RB_BWD1_BODY)
RC_DEFINE_GRU_RB_BWD(rc_gru_rb_bwd2_f, rc_gru_rb_bwd2_ip_f, float, RC_GRU_RB_BWD2_BODY)
RC_DEFINE_GRU_RB_BWD(rc_gru_rb_bwd2_d, rc_gru_rb_bwd2_ip_d, double, RC_GRU_RB_BWD2_BODY)
/* the two stages of a reset-before step, forward and backward */
RC_DEFINE_PASSES(rc_gru_rb_pass1, rc_gru_rb_fwd1_f, rc_gru_rb_fwd1_d, rc_gru_rb_bwd1_f,
                 rc_gru_rb_bwd1_d, rc_gru_rb_bwd1_ip_f, rc_gru_rb_bwd1_ip_d)
RC_DEFINE_PASSES(rc_gru_rb_pass2, rc_gru_rb_fwd2_f, rc_gru_rb_fwd2_d, rc_gru_rb_bwd2_f,
                 rc_gru_rb_bwd2_d, rc_gru_rb_bwd2_ip_f, rc_gru_rb_bwd2_ip_d)

#endif /* RC_GRU_H */
