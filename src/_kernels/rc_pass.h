/* rc_pass.h -- what the gated cells' fused passes (rc_gru.h, rc_lstm.h) take.
 *
 * A pass works on rows [0, rows) of one step's arrays, each given as an
 * rc_rows (pointer, row stride); which of rc_pass's arrays a pass reads and
 * writes is said at its definition. The passes load them into `restrict`
 * locals; GCC takes no aliasing facts from those, so each element loop carries
 * `GCC ivdep` (no dependence between iterations: every array is distinct, or
 * the very element read is the one written) -- without it none of these loops
 * vectorizes (checked with -fopt-info-vec). */
#ifndef RC_PASS_H
#define RC_PASS_H

#include "rc_activations.h"   /* rc_idx */

typedef struct { void *p; rc_idx ld; } rc_rows;   /* row q at p + q * ld (float or double) */

typedef struct {
    rc_rows g;          /* the gates: pre-activations in, activations out (forward) */
    rc_rows s;          /* the state saved beside them: GRU hidden_n, LSTM c_t */
    rc_rows prev;       /* the previous state: GRU h_prev, LSTM c_prev (h0, c0 where a row starts) */
    rc_rows h;          /* forward: h_t */
    rc_rows hw;         /* GRU forward: h_prev Wh, all three gates */
    const void *b;      /* forward: the bias (GRU: the input side's) */
    const void *bh;     /* GRU forward: the hidden side's bias */
    rc_rows dg;         /* backward: the pre-activation gradient (GRU: the hidden side's) */
    rc_rows dan;        /* GRU backward: the input side's n block */
    rc_rows dh;         /* backward: the upstream gradient */
    rc_rows carry;      /* backward: the dh carry */
    rc_rows carry_c;    /* LSTM backward: the dc carry */
} rc_pass;

/* T *restrict NAME = rows FIELD of the pass, LD its row stride */
#define RC_ROWS(T, NAME, LD, FIELD) T *restrict NAME = (T *)st->FIELD.p; const rc_idx LD = st->FIELD.ld;

enum { RC_PASS_FWD = 0, RC_PASS_BWD = 1, RC_PASS_BWD_IP = 2 };

/* NAME(pass, f64, st, rows, H): a cell's passes by kind (RC_PASS_*) and dtype */
#define RC_DEFINE_PASSES(NAME, FWD_F, FWD_D, BWD_F, BWD_D, IP_F, IP_D)           \
    static void NAME(int pass, int f64, const rc_pass *st, rc_idx rows, rc_idx H) \
    {                                                                           \
        static void (*const fn[3][2])(const rc_pass *, rc_idx, rc_idx) = {      \
            {FWD_F, FWD_D}, {BWD_F, BWD_D}, {IP_F, IP_D}};                      \
        fn[pass][f64 != 0](st, rows, H);                                        \
    }

#endif /* RC_PASS_H */
