/* rc_rnn.h -- the vanilla RNN's fused elementwise passes (rnn.pyx).
 *
 * Design rule for every fused pass: one read and one write of each element,
 * bias add + activation + store in the same loop. */
#ifndef RC_RNN_H
#define RC_RNN_H

#include "rc_activations.h"

/* Vanilla RNN forward, fused: z[r, :] = act(z[r, :] + b) in place for rows
 * r < rows (z rows ldz apart); act = tanh (relu == 0) or relu (relu != 0). */
#define RC_DEFINE_RNN_ACT(NAME, T, TANH)                                        \
    RC_CLONES static void NAME(T *z, rc_idx ldz, const T *b, rc_idx rows,       \
                               rc_idx H, int relu)                              \
    {                                                                           \
        for (rc_idx r = 0; r < rows; r++) {                                     \
            T *zr = z + r * ldz;                                                \
            if (relu) {                                                         \
                for (rc_idx j = 0; j < H; j++) { T v = zr[j] + b[j]; zr[j] = RC_RELU(v); } \
            } else {                                                            \
                for (rc_idx j = 0; j < H; j++) zr[j] = TANH(zr[j] + b[j]);      \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_RNN_ACT(rc_rnn_act_f, float, rc_tanhf)
RC_DEFINE_RNN_ACT(rc_rnn_act_d, double, rc_tanhd)

/* Vanilla RNN backward, fused: dz = (dh + carry) * act'(h) for rows < rows,
 * act'(h) = 1 - h^2 (tanh) or [h > 0] (relu), from the stored output h. */
#define RC_DEFINE_RNN_DZ(NAME, T)                                               \
    RC_CLONES static void NAME(T *dz, rc_idx lddz, const T *dh, rc_idx lddh,    \
                               const T *carry, rc_idx ldc, const T *h,          \
                               rc_idx ldh, rc_idx rows, rc_idx H, int relu)     \
    {                                                                           \
        for (rc_idx r = 0; r < rows; r++) {                                     \
            T *o = dz + r * lddz;                                               \
            const T *g = dh + r * lddh, *c = carry + r * ldc, *y = h + r * ldh; \
            if (relu) {                                                         \
                for (rc_idx j = 0; j < H; j++) o[j] = y[j] > 0 ? g[j] + c[j] : (T)0; \
            } else {                                                            \
                for (rc_idx j = 0; j < H; j++) o[j] = (g[j] + c[j]) * ((T)1 - y[j] * y[j]); \
            }                                                                   \
        }                                                                       \
    }
RC_DEFINE_RNN_DZ(rc_rnn_dz_f, float)
RC_DEFINE_RNN_DZ(rc_rnn_dz_d, double)

#endif /* RC_RNN_H */
