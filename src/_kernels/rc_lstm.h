/* rc_lstm.h -- the LSTM's fused elementwise passes (lstm.pyx).
 *
 * Design rule for every fused pass: one read and one write of each element,
 * bias add + activation + store in the same loop. */
#ifndef RC_LSTM_H
#define RC_LSTM_H

#include "rc_pass.h"

/* ================================================================ LSTM
 * Gates i, f, g, o along the 4H axis (PyTorch order); rc_lstm_* are the
 * fused per-step passes of src/_kernels/lstm.pyx. */
enum { RC_LSTM_I = 0, RC_LSTM_F = 1, RC_LSTM_G = 2, RC_LSTM_O = 3, RC_LSTM_GATES = 4 };

/* LSTM forward, fused: a = x Wx + h_prev Wh (in g) + b;
 *   i, f, g, o = σ, σ, tanh, σ of the blocks of a
 *   c = f ⊙ c_prev + i ⊙ g,   h = o ⊙ tanh(c)
 * stores g = [i | f | g | o] (activations), c and h. */
#define RC_DEFINE_LSTM_FWD(NAME, T, SIG, TANH)                                  \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_LSTM_FWD_BODY(T, SIG, TANH, H)                                       \
    }                                                                           \
    /* a block of units: H columns of each gate, the gates GS apart */          \
    RC_CLONES static void NAME##_u(const rc_pass *st, rc_idx rows, rc_idx H, rc_idx GS) \
    {                                                                           \
        RC_LSTM_FWD_BODY(T, SIG, TANH, GS)                                      \
    }
#define RC_LSTM_FWD_BODY(T, SIG, TANH, GS)                                      \
        RC_ROWS(T, a, lda, g) RC_ROWS(T, c, ldc, s) RC_ROWS(T, h, ldh, h)       \
        RC_ROWS(const T, cp, ldcp, prev) const T *restrict b = (const T *)st->b; \
        const T *bi = b + RC_LSTM_I * GS, *bf = b + RC_LSTM_F * GS;             \
        const T *bg = b + RC_LSTM_G * GS, *bo = b + RC_LSTM_O * GS;             \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *ai = a + q * lda + RC_LSTM_I * GS, *af = a + q * lda + RC_LSTM_F * GS; \
            T *ag = a + q * lda + RC_LSTM_G * GS, *ao = a + q * lda + RC_LSTM_O * GS; \
            const T *cpq = cp + q * ldcp;                                       \
            T *cq = c + q * ldc, *hq = h + q * ldh;                             \
            _Pragma("GCC ivdep")                                                \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T i = SIG(ai[j] + bi[j]), f = SIG(af[j] + bf[j]);               \
                T g = TANH(ag[j] + bg[j]), o = SIG(ao[j] + bo[j]);              \
                T cn = f * cpq[j] + i * g;                                      \
                cq[j] = cn;                                                     \
                hq[j] = o * TANH(cn);                                           \
                ai[j] = i; af[j] = f; ag[j] = g; ao[j] = o;                     \
            }                                                                   \
        }
RC_DEFINE_LSTM_FWD(rc_lstm_fwd_f, float, rc_sigmoidf, rc_tanhf)
RC_DEFINE_LSTM_FWD(rc_lstm_fwd_d, double, rc_sigmoidd, rc_tanhd)

/* LSTM backward, fused: with dh' = dh + carry_h, the stored gates and c:
 *   tc = tanh(c),  do = dh' ⊙ tc,  dc = carry_c + dh' ⊙ o ⊙ (1 - tc²)
 *   dg = [dc ⊙ g ⊙ i(1-i) | dc ⊙ c_prev ⊙ f(1-f) | dc ⊙ i ⊙ (1-g²) | do ⊙ o(1-o)]
 *   carry_c = dc ⊙ f
 * (carry_h is only read: the caller overwrites it with dg Wh^T). */
/* The in-place variant (rc_lstm_bwd_ip_*) writes dA over the saved gates
 * (same pointer twice; each element is read before it is overwritten). */
#define RC_LSTM_BWD_BODY(T, TANH, DG, LDDG, G, LDG, GS)                         \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gi = G + q * LDG + RC_LSTM_I * GS, *gf = G + q * LDG + RC_LSTM_F * GS; \
            const T *gg = G + q * LDG + RC_LSTM_G * GS, *go = G + q * LDG + RC_LSTM_O * GS; \
            T *di = DG + q * LDDG + RC_LSTM_I * GS, *df = DG + q * LDDG + RC_LSTM_F * GS; \
            T *dgg = DG + q * LDDG + RC_LSTM_G * GS, *dout = DG + q * LDDG + RC_LSTM_O * GS; \
            const T *dhq = dh + q * lddh, *chq = ch + q * ldch;                 \
            const T *cq = c + q * ldc, *cpq = cp + q * ldcp;                    \
            T *ccq = cc + q * ldcc;                                             \
            _Pragma("GCC ivdep")                                                \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T d = dhq[j] + chq[j];                                          \
                T i = gi[j], f = gf[j], gv = gg[j], o = go[j];                  \
                T tc = TANH(cq[j]);                                             \
                T dc = ccq[j] + d * o * ((T)1 - tc * tc);                       \
                di[j] = dc * gv * (i * ((T)1 - i));                             \
                df[j] = dc * cpq[j] * (f * ((T)1 - f));                         \
                dgg[j] = dc * i * ((T)1 - gv * gv);                             \
                dout[j] = d * tc * (o * ((T)1 - o));                            \
                ccq[j] = dc * f;                                                \
            }                                                                   \
        }
/* both variants: in dh, ch (the dh carry), c, cp; in and out cc (the dc carry) */
#define RC_LSTM_BWD_COMMON(T)                                                   \
        RC_ROWS(const T, dh, lddh, dh) RC_ROWS(const T, ch, ldch, carry)        \
        RC_ROWS(T, cc, ldcc, carry_c) RC_ROWS(const T, c, ldc, s) RC_ROWS(const T, cp, ldcp, prev)
#define RC_DEFINE_LSTM_BWD(NAME, NAME_IP, T, TANH)                              \
    RC_CLONES static void NAME(const rc_pass *st, rc_idx rows, rc_idx H)        \
    {                                                                           \
        RC_LSTM_BWD_COMMON(T)                                                   \
        RC_ROWS(T, dg, lddg, dg) RC_ROWS(const T, g, ldg, g)                    \
        RC_LSTM_BWD_BODY(T, TANH, dg, lddg, g, ldg, H)                          \
    }                                                                           \
    /* in place: dA over the saved gates (st->g) */                             \
    RC_CLONES static void NAME_IP(const rc_pass *st, rc_idx rows, rc_idx H)     \
    {                                                                           \
        RC_LSTM_BWD_COMMON(T)                                                   \
        RC_ROWS(T, gd, ldgd, g)                                                 \
        RC_LSTM_BWD_BODY(T, TANH, gd, ldgd, gd, ldgd, H)                        \
    }                                                                           \
    /* both on a block of units (H columns of each gate, the gates GS apart) */ \
    RC_CLONES static void NAME##_u(const rc_pass *st, rc_idx rows, rc_idx H, rc_idx GS) \
    {                                                                           \
        RC_LSTM_BWD_COMMON(T)                                                   \
        RC_ROWS(T, dg, lddg, dg) RC_ROWS(const T, g, ldg, g)                    \
        RC_LSTM_BWD_BODY(T, TANH, dg, lddg, g, ldg, GS)                         \
    }                                                                           \
    RC_CLONES static void NAME_IP##_u(const rc_pass *st, rc_idx rows, rc_idx H, rc_idx GS) \
    {                                                                           \
        RC_LSTM_BWD_COMMON(T)                                                   \
        RC_ROWS(T, gd, ldgd, g)                                                 \
        RC_LSTM_BWD_BODY(T, TANH, gd, ldgd, gd, ldgd, GS)                       \
    }
RC_DEFINE_LSTM_BWD(rc_lstm_bwd_f, rc_lstm_bwd_ip_f, float, rc_tanhf)
RC_DEFINE_LSTM_BWD(rc_lstm_bwd_d, rc_lstm_bwd_ip_d, double, rc_tanhd)
RC_DEFINE_PASSES(rc_lstm_pass, rc_lstm_fwd_f, rc_lstm_fwd_d, rc_lstm_bwd_f, rc_lstm_bwd_d,
                 rc_lstm_bwd_ip_f, rc_lstm_bwd_ip_d)

/* The passes on a block of units (the unit-split loops, rc_threads.h): the
 * arrays' pointers start at the block's first unit, H = its width, GS = the
 * gate stride (the layer's hidden size). */
static void rc_lstm_pass_u(int pass, int f64, const rc_pass *st, rc_idx rows, rc_idx H,
                           rc_idx GS)
{
    static void (*const fn[3][2])(const rc_pass *, rc_idx, rc_idx, rc_idx) = {
        {rc_lstm_fwd_f_u, rc_lstm_fwd_d_u}, {rc_lstm_bwd_f_u, rc_lstm_bwd_d_u},
        {rc_lstm_bwd_ip_f_u, rc_lstm_bwd_ip_d_u}};
    fn[pass][f64 != 0](st, rows, H, GS);
}

#endif /* RC_LSTM_H */
