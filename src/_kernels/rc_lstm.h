/* rc_lstm.h -- the LSTM's fused elementwise passes (lstm.pyx).
 *
 * Design rule for every fused pass: one read and one write of each element,
 * bias add + activation + store in the same loop. */
#ifndef RC_LSTM_H
#define RC_LSTM_H

#include "rc_activations.h"

/* ================================================================ LSTM
 * Gates i, f, g, o along the 4H axis (PyTorch order); rc_lstm_* are the
 * fused per-step passes of src/_kernels/lstm.pyx. */
enum { RC_LSTM_I = 0, RC_LSTM_F = 1, RC_LSTM_G = 2, RC_LSTM_O = 3, RC_LSTM_GATES = 4 };

/* One step's arrays for an LSTM pass, as (pointer, row stride) pairs; float or
 * double per the pass (void *: one struct serves both). Forward reads the
 * pre-activations from g, b and cp, writes g (the activations), c, h; backward
 * reads dh, ch, cc, g, c, cp, writes dg (in place: dg is g) and cc. */
/* The passes take their arrays in one struct (rc_lstm_step) and load them into
 * `restrict` locals; GCC does not take aliasing facts from those, so each
 * element loop carries `GCC ivdep` (no dependence between iterations: every
 * array is distinct, or the very element read is the one written) -- without
 * it none of these loops vectorizes (checked with -fopt-info-vec). */
typedef struct {
    void *g; rc_idx ldg;          /* gates [i | f | g | o] (T, N, 4H) step rows */
    void *c; rc_idx ldc;          /* c_t */
    const void *cp; rc_idx ldcp;  /* c_prev: c_{t-1}, or c0 where a row starts */
    void *h; rc_idx ldh;          /* forward: h_t */
    const void *b;                /* forward: the bias (4H,) */
    void *dg; rc_idx lddg;        /* backward: the pre-activation gradient */
    const void *dh; rc_idx lddh;  /* backward: the upstream gradient */
    const void *ch; rc_idx ldch;  /* backward: dh carry (read) */
    void *cc; rc_idx ldcc;        /* backward: dc carry */
} rc_lstm_step;

/* LSTM forward, fused: a = x Wx + h_prev Wh (in g) + b;
 *   i, f, g, o = σ, σ, tanh, σ of the blocks of a
 *   c = f ⊙ c_prev + i ⊙ g,   h = o ⊙ tanh(c)
 * stores g = [i | f | g | o] (activations), c and h. */
#define RC_DEFINE_LSTM_FWD(NAME, T, SIG, TANH)                                  \
    RC_CLONES static void NAME(const rc_lstm_step *st, rc_idx rows, rc_idx H)   \
    {                                                                           \
        T *restrict a = (T *)st->g, *restrict c = (T *)st->c, *restrict h = (T *)st->h; \
        const T *restrict b = (const T *)st->b, *restrict cp = (const T *)st->cp; \
        const rc_idx lda = st->ldg, ldc = st->ldc, ldh = st->ldh, ldcp = st->ldcp; \
        const T *bi = b + RC_LSTM_I * H, *bf = b + RC_LSTM_F * H;               \
        const T *bg = b + RC_LSTM_G * H, *bo = b + RC_LSTM_O * H;               \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            T *ai = a + q * lda + RC_LSTM_I * H, *af = a + q * lda + RC_LSTM_F * H; \
            T *ag = a + q * lda + RC_LSTM_G * H, *ao = a + q * lda + RC_LSTM_O * H; \
            const T *cpq = cp + q * ldcp;                                       \
            T *cq = c + q * ldc, *hq = h + q * ldh;                             \
            _Pragma("GCC ivdep")                                               \
            for (rc_idx j = 0; j < H; j++) {                                    \
                T i = SIG(ai[j] + bi[j]), f = SIG(af[j] + bf[j]);               \
                T g = TANH(ag[j] + bg[j]), o = SIG(ao[j] + bo[j]);              \
                T cn = f * cpq[j] + i * g;                                      \
                cq[j] = cn;                                                     \
                hq[j] = o * TANH(cn);                                           \
                ai[j] = i; af[j] = f; ag[j] = g; ao[j] = o;                     \
            }                                                                   \
        }                                                                       \
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
#define RC_LSTM_BWD_BODY(T, TANH, DG, LDDG, G, LDG)                             \
        for (rc_idx q = 0; q < rows; q++) {                                     \
            const T *gi = G + q * LDG + RC_LSTM_I * H, *gf = G + q * LDG + RC_LSTM_F * H; \
            const T *gg = G + q * LDG + RC_LSTM_G * H, *go = G + q * LDG + RC_LSTM_O * H; \
            T *di = DG + q * LDDG + RC_LSTM_I * H, *df = DG + q * LDDG + RC_LSTM_F * H; \
            T *dgg = DG + q * LDDG + RC_LSTM_G * H, *dout = DG + q * LDDG + RC_LSTM_O * H; \
            const T *dhq = dh + q * lddh, *chq = ch + q * ldch;                 \
            const T *cq = c + q * ldc, *cpq = cp + q * ldcp;                    \
            T *ccq = cc + q * ldcc;                                             \
            _Pragma("GCC ivdep")                                               \
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
/* the arrays both variants read the same way: the upstream gradient, the
 * carries, the cell states */
#define RC_LSTM_BWD_COMMON(T)                                                   \
        const T *restrict dh = (const T *)st->dh, *restrict ch = (const T *)st->ch; \
        T *restrict cc = (T *)st->cc;                                           \
        const T *restrict c = (const T *)st->c, *restrict cp = (const T *)st->cp; \
        const rc_idx lddh = st->lddh, ldch = st->ldch, ldcc = st->ldcc;         \
        const rc_idx ldc = st->ldc, ldcp = st->ldcp;
#define RC_DEFINE_LSTM_BWD(NAME, NAME_IP, T, TANH)                              \
    RC_CLONES static void NAME(const rc_lstm_step *st, rc_idx rows, rc_idx H)   \
    {                                                                           \
        RC_LSTM_BWD_COMMON(T)                                                   \
        T *restrict dg = (T *)st->dg;                                           \
        const T *restrict g = (const T *)st->g;                                 \
        const rc_idx lddg = st->lddg, ldg = st->ldg;                            \
        RC_LSTM_BWD_BODY(T, TANH, dg, lddg, g, ldg)                             \
    }                                                                           \
    RC_CLONES static void NAME_IP(const rc_lstm_step *st, rc_idx rows, rc_idx H) \
    {                                                                           \
        RC_LSTM_BWD_COMMON(T)                                                   \
        T *restrict gd = (T *)st->g;                                            \
        const rc_idx ldgd = st->ldg;                                            \
        RC_LSTM_BWD_BODY(T, TANH, gd, ldgd, gd, ldgd)                           \
    }
RC_DEFINE_LSTM_BWD(rc_lstm_bwd_f, rc_lstm_bwd_ip_f, float, rc_tanhf)
RC_DEFINE_LSTM_BWD(rc_lstm_bwd_d, rc_lstm_bwd_ip_d, double, rc_tanhd)

#endif /* RC_LSTM_H */
