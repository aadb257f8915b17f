"""GRU kernel: one layer, one direction, all T steps in one call.

Equations (PyTorch ``nn.GRU``, ``reset_after=True``; gates r, z, n along the
3H axis; two biases because ``b_hn`` sits inside the reset product)::

    r   = σ(x_t W_ir + b_ir + h_{t-1} W_hr + b_hr)
    z   = σ(x_t W_iz + b_iz + h_{t-1} W_hz + b_hz)
    n   = tanh(x_t W_in + b_in + r ⊙ (h_{t-1} W_hn + b_hn))
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Forward
    A = X Wx                       one GEMM over all T*N rows, into `gates`
    per step t:  S = H_prev Wh     one GEMM, all three gates  (N, 3H) = (N, H)(H, 3H)
                 r, z, n, hn, h_t  one fused vectorized pass (rc_gru_fwd_*):
                                   both bias adds, the activations, the reset
                                   product, the update, stores
Backward (BPTT)
    per step t (reverse order), with dh' = dh_t + carry:
        one fused pass (rc_gru_bwd_*):
            da_n = dh' (1 - z)(1 - n²),  da_r = da_n hn r(1 - r),
            da_z = dh' (h_prev - n) z(1 - z)
            dG_t = [da_r | da_z | da_n ⊙ r]      (the hidden side)
            dAn_t = da_n                          (the input side's n block)
            carry = dh' ⊙ z                       (the direct path)
        carry += dG_t Wh^T         one GEMM      (N, H) += (N, 3H)(H, 3H)^T
    after the loop:
        dX   = [da_r | da_z] Wx_rz^T + da_n Wx_n^T     two GEMMs (k = 2H, H)
        dWx += X^T [da_r | da_z],  X^T da_n            two GEMMs into column blocks
        dWh += H_prev^T dG  (shifted pairs),  dbh += sum dG
        dbx += sum [da_r | da_z | da_n]

Why two gradient buffers: the n block of the pre-activation gradient differs
between the two sides. ``x W_in + b_in`` enters n directly (gradient da_n),
``h W_hn + b_hn`` enters through the reset product (gradient da_n ⊙ r). The
r and z blocks are the same on both sides. The per-step GEMM is on the hidden
side, so dG (T, N, 3H) holds the hidden-side gradient as one contiguous matrix
(one GEMM per step, one shifted GEMM for dWh, one column sum for dbh), and
only the n block of the input side is kept apart, in dAn (T, N, H). The input
side is after the loop, where splitting its GEMMs into column blocks costs
nothing extra (the same flops; no per-step cost). Dividing da_n ⊙ r by r
instead would fail where r underflows to 0.

Saved for backward (``GRUSaved``): ``gates`` (T, N, 3H), the activations
[r | z | n] of every step, and ``hidden_n`` (T, N, H) = h_{t-1} W_hn + b_hn
(needed for da_r; recomputing it would cost a GEMM per step). The hidden
states ``h`` (an output the caller passes back) give h_{t-1}.

``reset_after=False`` (n = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn)) is not
in this kernel: it needs a second GEMM and fused pass per step in both
directions; rnncore.reference implements it (the functional API delegates).

Design notes
------------
* Layouts as in rnn.pyx: sequences are (T, N, F) arrays with a contiguous
  last axis, time-major as is or batch-major as the transposed view of an
  (N, T, F) array (see _common.pxd). ``x``, ``h`` and ``dx`` share one layout
  kind; the saved arrays and the backward workspaces are allocated in h's kind
  so the all-steps GEMMs see uniform matrices. ``dh`` and the saved arrays may
  be of either kind (they are only read per step).
* Weights are (D, 3H) / (H, 3H) operands, row-major or a transposed view of a
  row-major array (PyTorch's ``weight_ih`` passed as ``weight_ih.T``).
* The caller allocates every output (h, dx, dh0 and the gradient arrays, which
  are *accumulated into*); forward allocates the saved arrays and an (N, 3H)
  scratch for the per-step GEMM, backward its workspaces dG, dAn (T*N*4H in
  all) -- or, with ``overwrite_saved`` (the models and cells), writes them
  over the saved gates and hidden_n, allocating nothing that size.
* Variable lengths (``batch_sizes``, a sorted batch): step t touches rows
  ``[0, batch_sizes[t])`` only; padded h is written as zeros, padded upstream
  gradients are never read. In the reverse direction a row starts from h0 at
  its own last valid step. The carry starts as dhn and rows outside the active
  range are never touched, so each row's final-state gradient enters at its
  own last step, and the carry ends as dh0.
* Everything inside ``with nogil`` is BLAS calls and plain loops: it cannot
  fail; all checks happen before.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

from collections import namedtuple

import numpy as np

from _blas cimport floating, mm, mm_step, use_panel, colsum_add, scale_rows
from _common cimport (active, row_threads, share, step_rows, run_tasks, single_open, single_close, dwh_accumulate, seq_check, mat_check, rows_check,
                      vec_check, check_batch_sizes, loop_threads_begin, loop_threads_end,
                      blas_thread_hooks, seq_empty, writable_workspace, step_weight, StepBufs, step_init, step_buf,
                      step_cell_bufs, step_release)

cdef extern from "rc_simd.h" nogil:
    enum: RC_GRU_N   # index of the n block (the last one: r, z come first)
    enum: RC_GRU_G   # number of gates
    void rc_gru_fwd_f(float *g, Py_ssize_t ldg, const float *s, Py_ssize_t lds,
                      const float *bx, const float *bh, const float *hp, Py_ssize_t ldhp,
                      float *hn, Py_ssize_t ldhn, float *h, Py_ssize_t ldh,
                      Py_ssize_t rows, Py_ssize_t H)
    void rc_gru_fwd_d(double *g, Py_ssize_t ldg, const double *s, Py_ssize_t lds,
                      const double *bx, const double *bh, const double *hp, Py_ssize_t ldhp,
                      double *hn, Py_ssize_t ldhn, double *h, Py_ssize_t ldh,
                      Py_ssize_t rows, Py_ssize_t H)
    void rc_gru_bwd_f(float *dg, Py_ssize_t lddg, float *dan, Py_ssize_t lddan,
                      const float *dh, Py_ssize_t lddh, float *carry, Py_ssize_t ldc,
                      const float *g, Py_ssize_t ldg, const float *hn, Py_ssize_t ldhn,
                      const float *hp, Py_ssize_t ldhp, Py_ssize_t rows, Py_ssize_t H)
    void rc_gru_bwd_d(double *dg, Py_ssize_t lddg, double *dan, Py_ssize_t lddan,
                      const double *dh, Py_ssize_t lddh, double *carry, Py_ssize_t ldc,
                      const double *g, Py_ssize_t ldg, const double *hn, Py_ssize_t ldhn,
                      const double *hp, Py_ssize_t ldhp, Py_ssize_t rows, Py_ssize_t H)
    void rc_gru_bwd_ip_f(float *gd, Py_ssize_t ldgd, float *hnd, Py_ssize_t ldhnd,
                         const float *dh, Py_ssize_t lddh, float *carry, Py_ssize_t ldc,
                         const float *hp, Py_ssize_t ldhp, Py_ssize_t rows, Py_ssize_t H)
    void rc_gru_bwd_ip_d(double *gd, Py_ssize_t ldgd, double *hnd, Py_ssize_t ldhnd,
                         const double *dh, Py_ssize_t lddh, double *carry, Py_ssize_t ldc,
                         const double *hp, Py_ssize_t ldhp, Py_ssize_t rows, Py_ssize_t H)

#: What `forward` saves for `backward`: the gate activations [r | z | n]
#: (T, N, 3H) and hidden_n = h_{t-1} W_hn + b_hn (T, N, H).
GRUSaved = namedtuple("GRUSaved", ["gates", "hidden_n"])


# ----------------------------------------------------------------- step helpers

cdef inline const floating *n_block(const floating *p, Py_ssize_t ld, bint t,
                                    Py_ssize_t H) noexcept nogil:
    """The n gate's column block [:, nH:] of a (rows, 3H) BLAS operand (p, ld, t)."""
    cdef Py_ssize_t j = RC_GRU_N * H
    return p + (j * ld if t else j)


cdef inline void gru_rows(floating *g, Py_ssize_t ldg, const floating *s, Py_ssize_t lds,
                          const floating *bx, const floating *bh,
                          const floating *hp, Py_ssize_t ldhp, floating *hn, Py_ssize_t ldhn,
                          floating *h, Py_ssize_t ldh, Py_ssize_t rows,
                          Py_ssize_t H) noexcept nogil:
    # r, z = σ(g + bx + s + bh);  hn = s_n + bh_n;  n = tanh(g_n + bx_n + r hn)
    # h = (1 - z) n + z h_prev;  g = [r | z | n]
    if floating is float:
        rc_gru_fwd_f(g, ldg, s, lds, bx, bh, hp, ldhp, hn, ldhn, h, ldh, rows, H)
    else:
        rc_gru_fwd_d(g, ldg, s, lds, bx, bh, hp, ldhp, hn, ldhn, h, ldh, rows, H)


cdef inline void gru_drows(floating *dg, Py_ssize_t lddg, floating *dan, Py_ssize_t lddan,
                           const floating *dh, Py_ssize_t lddh, floating *carry, Py_ssize_t ldc,
                           const floating *g, Py_ssize_t ldg, const floating *hn,
                           Py_ssize_t ldhn, const floating *hp, Py_ssize_t ldhp,
                           Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    # d = dh + carry;  dG = [da_r | da_z | da_n r];  dAn = da_n;  carry = d z
    # (in place when dg is g and dan is hn: see backward's overwrite_saved)
    if <const floating *>dg == g:
        if floating is float:
            rc_gru_bwd_ip_f(dg, lddg, dan, lddan, dh, lddh, carry, ldc, hp, ldhp, rows, H)
        else:
            rc_gru_bwd_ip_d(dg, lddg, dan, lddan, dh, lddh, carry, ldc, hp, ldhp, rows, H)
    elif floating is float:
        rc_gru_bwd_f(dg, lddg, dan, lddan, dh, lddh, carry, ldc, g, ldg, hn, ldhn, hp, ldhp,
                     rows, H)
    else:
        rc_gru_bwd_d(dg, lddg, dan, lddan, dh, lddh, carry, ldc, g, ldg, hn, ldhn, hp, ldhp,
                     rows, H)


# ----------------------------------------------------------------- time loops

cdef void fwd_steps(
        const floating *h0, const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *bx, const floating *bh,
        floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        floating *g, Py_ssize_t g_st, Py_ssize_t g_sn,
        floating *hn, Py_ssize_t hn_st, Py_ssize_t hn_sn,
        floating *s, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
        const Py_ssize_t *bs, bint reverse, int k, int P) noexcept nogil:
    # The time loop over the rows k, k+P, ... of the batch (all: k=0, P=1); row r of
    # this share is row k + r*P; active rows stay a prefix. s: (N, 3H) scratch.
    cdef Py_ssize_t i, t, tp, B, Bc, GH = RC_GRU_G * H, M = share(N, k, P)
    cdef Py_ssize_t h0_ld = P * H, s_ld = P * GH
    cdef floating *gt
    cdef floating *hnt
    cdef floating *ht
    h0 += k * H
    s += k * GH
    h += k * h_sn
    g += k * g_sn
    hn += k * hn_sn
    h_sn *= P
    g_sn *= P
    hn_sn *= P
    for i in range(T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from h0 here
        step_rows(bs, i, T, N, False, reverse, k, P, &t, &tp, &B, &Bc)
        gt = g + t * g_st
        hnt = hn + t * hn_st
        ht = h + t * h_st
        if Bc > 0:
            # S[:Bc] = h_tp[:Bc] @ Wh           (Bc, 3H) = (Bc, H)(H, 3H)
            mm_step(Bc, GH, H, h + tp * h_st, h_sn, wh, wh_ld, wh_t, <floating>0, s, s_ld)
            gru_rows(gt, g_sn, s, s_ld, bx, bh, h + tp * h_st, h_sn, hnt, hn_sn, ht, h_sn, Bc, H)
        if B > Bc:
            # S[Bc:B] = h0[Bc:B] @ Wh           (B-Bc, 3H) = (B-Bc, H)(H, 3H)
            mm_step(B - Bc, GH, H, h0 + Bc * h0_ld, h0_ld, wh, wh_ld, wh_t,
                    <floating>0, s + Bc * s_ld, s_ld)
            gru_rows(gt + Bc * g_sn, g_sn, s + Bc * s_ld, s_ld, bx, bh, h0 + Bc * h0_ld, h0_ld,
                     hnt + Bc * hn_sn, hn_sn, ht + Bc * h_sn, h_sn, B - Bc, H)
        if B < M:
            # padding: h_t[B:] = 0 (and no stale projections in the saved arrays)
            scale_rows(ht + B * h_sn, h_sn, M - B, H, <floating>0)
            scale_rows(gt + B * g_sn, g_sn, M - B, GH, <floating>0)
            scale_rows(hnt + B * hn_sn, hn_sn, M - B, H, <floating>0)


cdef struct FwdTask:   # fwd_steps' arguments, for a thread (rc_run_tasks)
    const void *h0
    const void *wh
    Py_ssize_t wh_ld
    bint wh_t
    const void *bx
    const void *bh
    void *h
    Py_ssize_t h_st, h_sn
    void *g
    Py_ssize_t g_st, g_sn
    void *hn
    Py_ssize_t hn_st, hn_sn
    void *s
    Py_ssize_t T, N, H
    const Py_ssize_t *bs
    bint reverse, f64
    int k, P


cdef void fwd_task(void *p) noexcept nogil:
    cdef FwdTask *a = <FwdTask *>p
    if a.f64:
        fwd_steps(<const double *>a.h0, <const double *>a.wh, a.wh_ld, a.wh_t,
                  <const double *>a.bx, <const double *>a.bh, <double *>a.h, a.h_st, a.h_sn,
                  <double *>a.g, a.g_st, a.g_sn, <double *>a.hn, a.hn_st, a.hn_sn,
                  <double *>a.s, a.T, a.N, a.H, a.bs, a.reverse, a.k, a.P)
    else:
        fwd_steps(<const float *>a.h0, <const float *>a.wh, a.wh_ld, a.wh_t,
                  <const float *>a.bx, <const float *>a.bh, <float *>a.h, a.h_st, a.h_sn,
                  <float *>a.g, a.g_st, a.g_sn, <float *>a.hn, a.hn_st, a.hn_sn,
                  <float *>a.s, a.T, a.N, a.H, a.bs, a.reverse, a.k, a.P)


cdef void forward_loop(
        const floating *x, Py_ssize_t x_ld,
        const floating *h0,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *bx, const floating *bh,
        floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        floating *g, Py_ssize_t g_ld, Py_ssize_t g_st, Py_ssize_t g_sn,
        floating *hn, Py_ssize_t hn_st, Py_ssize_t hn_sn,
        floating *s,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
        const Py_ssize_t *bs, bint reverse) noexcept nogil:
    # s: (N, 3H) scratch for the per-step recurrent projection
    cdef Py_ssize_t GH = RC_GRU_G * H
    cdef int threads, k, P
    cdef FwdTask tasks[8]
    # A = x @ Wx          (T*N, 3H) = (T*N, D)(D, 3H): all steps' input projection
    mm(T * N, GH, D, <floating>1, x, x_ld, False, wx, wx_ld, wx_t, <floating>0, g, g_ld, False)
    P = row_threads(N, N * GH * H, T)
    if P == 1:
        threads = loop_threads_begin(N * GH * H)
        fwd_steps(h0, wh, wh_ld, wh_t, bx, bh, h, h_st, h_sn, g, g_st, g_sn, hn, hn_st, hn_sn,
                  s, T, N, H, bs, reverse, 0, 1)
        loop_threads_end(threads)
        return
    # the rows on P threads, each calling BLAS single-threaded
    for k in range(P):
        tasks[k] = FwdTask(h0=h0, wh=wh, wh_ld=wh_ld, wh_t=wh_t, bx=bx, bh=bh, h=h, h_st=h_st,
                           h_sn=h_sn, g=g, g_st=g_st, g_sn=g_sn, hn=hn, hn_st=hn_st,
                           hn_sn=hn_sn, s=s, T=T, N=N, H=H, bs=bs, reverse=reverse,
                           f64=floating is double, k=k, P=P)
    threads = single_open()
    run_tasks(fwd_task, tasks, sizeof(FwdTask), P)
    single_close(threads)


cdef void bwd_steps(
        const floating *dh, Py_ssize_t dh_st, Py_ssize_t dh_sn,
        const floating *h0, const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        const floating *g, Py_ssize_t g_st, Py_ssize_t g_sn,
        const floating *hn, Py_ssize_t hn_st, Py_ssize_t hn_sn,
        floating *dg, Py_ssize_t dg_st, Py_ssize_t dg_sn,
        floating *dan, Py_ssize_t dan_st, Py_ssize_t dan_sn, floating *carry,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
        const Py_ssize_t *bs, bint reverse, int k, int P) noexcept nogil:
    # The reverse time loop over the rows k, k+P, ... (see fwd_steps); carry (N, H).
    cdef Py_ssize_t i, t, tp, B, Bc, GH = RC_GRU_G * H, M = share(N, k, P)
    cdef Py_ssize_t ldc = P * H
    cdef floating *dgt
    cdef floating *dant
    dh += k * dh_sn
    h0 += k * H
    h += k * h_sn
    g += k * g_sn
    hn += k * hn_sn
    dg += k * dg_sn
    dan += k * dan_sn
    carry += k * H
    dh_sn *= P
    h_sn *= P
    g_sn *= P
    hn_sn *= P
    dg_sn *= P
    dan_sn *= P
    for i in range(T):
        step_rows(bs, i, T, N, True, reverse, k, P, &t, &tp, &B, &Bc)
        dgt = dg + t * dg_st
        dant = dan + t * dan_st
        # dG_t[:B], dAn_t[:B] and carry[:B] = d z, from d = dh_t + carry
        if Bc > 0:
            gru_drows(dgt, dg_sn, dant, dan_sn, dh + t * dh_st, dh_sn, carry, ldc,
                      g + t * g_st, g_sn, hn + t * hn_st, hn_sn, h + tp * h_st, h_sn, Bc, H)
        if B > Bc:
            gru_drows(dgt + Bc * dg_sn, dg_sn, dant + Bc * dan_sn, dan_sn,
                      dh + t * dh_st + Bc * dh_sn, dh_sn, carry + Bc * ldc, ldc,
                      g + t * g_st + Bc * g_sn, g_sn, hn + t * hn_st + Bc * hn_sn, hn_sn,
                      h0 + Bc * ldc, ldc, B - Bc, H)
        if B < M:
            scale_rows(dgt + B * dg_sn, dg_sn, M - B, GH, <floating>0)
            scale_rows(dant + B * dan_sn, dan_sn, M - B, H, <floating>0)
        # carry[:B] += dG_t[:B] @ Wh^T           (B, H) += (B, 3H)(H, 3H)^T
        mm_step(B, H, GH, dgt, dg_sn, wh, wh_ld, not wh_t, <floating>1, carry, ldc)


cdef struct BwdTask:   # bwd_steps' arguments, for a thread (rc_run_tasks)
    const void *dh
    Py_ssize_t dh_st, dh_sn
    const void *h0
    const void *wh
    Py_ssize_t wh_ld
    bint wh_t
    const void *h
    Py_ssize_t h_st, h_sn
    const void *g
    Py_ssize_t g_st, g_sn
    const void *hn
    Py_ssize_t hn_st, hn_sn
    void *dg
    Py_ssize_t dg_st, dg_sn
    void *dan
    Py_ssize_t dan_st, dan_sn
    void *carry
    Py_ssize_t T, N, H
    const Py_ssize_t *bs
    bint reverse, f64
    int k, P


cdef void bwd_task(void *p) noexcept nogil:
    cdef BwdTask *a = <BwdTask *>p
    if a.f64:
        bwd_steps(<const double *>a.dh, a.dh_st, a.dh_sn, <const double *>a.h0,
                  <const double *>a.wh, a.wh_ld, a.wh_t, <const double *>a.h, a.h_st, a.h_sn,
                  <const double *>a.g, a.g_st, a.g_sn, <const double *>a.hn, a.hn_st,
                  a.hn_sn, <double *>a.dg, a.dg_st, a.dg_sn, <double *>a.dan, a.dan_st,
                  a.dan_sn, <double *>a.carry, a.T, a.N, a.H, a.bs, a.reverse, a.k, a.P)
    else:
        bwd_steps(<const float *>a.dh, a.dh_st, a.dh_sn, <const float *>a.h0,
                  <const float *>a.wh, a.wh_ld, a.wh_t, <const float *>a.h, a.h_st, a.h_sn,
                  <const float *>a.g, a.g_st, a.g_sn, <const float *>a.hn, a.hn_st,
                  a.hn_sn, <float *>a.dg, a.dg_st, a.dg_sn, <float *>a.dan, a.dan_st,
                  a.dan_sn, <float *>a.carry, a.T, a.N, a.H, a.bs, a.reverse, a.k, a.P)


cdef void backward_loop(
        const floating *dh, Py_ssize_t dh_st, Py_ssize_t dh_sn,
        const floating *x, Py_ssize_t x_ld,
        const floating *h0,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *h, Py_ssize_t h_ld, Py_ssize_t h_st, Py_ssize_t h_sn,
        const floating *g, Py_ssize_t g_st, Py_ssize_t g_sn,
        const floating *hn, Py_ssize_t hn_st, Py_ssize_t hn_sn,
        floating *dg, Py_ssize_t dg_st, Py_ssize_t dg_sn,
        floating *dan, Py_ssize_t dan_st, Py_ssize_t dan_sn,
        floating *carry, floating *dgs,
        floating *dx, Py_ssize_t dx_ld,
        floating *dwx, Py_ssize_t dwx_ld, bint dwx_t,
        floating *dwh, Py_ssize_t dwh_ld, bint dwh_t,
        floating *dbx, floating *dbh,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, bint batch_major,
        const Py_ssize_t *bs, bint reverse) noexcept nogil:
    # On entry carry (N, H) holds dh_n; on exit it holds dh0.
    cdef Py_ssize_t R = T * N, GH = RC_GRU_G * H
    cdef int threads, k, P = row_threads(N, N * GH * H, T)
    cdef Py_ssize_t nH = RC_GRU_N * H   # columns before the n block: [r | z]
    cdef Py_ssize_t dg_ld = GH, dan_ld = H   # workspaces are contiguous in their layout
    cdef BwdTask tasks[8]
    if P == 1:
        threads = loop_threads_begin(N * GH * H)
        bwd_steps(dh, dh_st, dh_sn, h0, wh, wh_ld, wh_t, h, h_st, h_sn, g, g_st, g_sn,
                  hn, hn_st, hn_sn, dg, dg_st, dg_sn, dan, dan_st, dan_sn, carry,
                  T, N, H, bs, reverse, 0, 1)
    else:
        for k in range(P):
            tasks[k] = BwdTask(dh=dh, dh_st=dh_st, dh_sn=dh_sn, h0=h0, wh=wh, wh_ld=wh_ld,
                               wh_t=wh_t, h=h, h_st=h_st, h_sn=h_sn, g=g, g_st=g_st, g_sn=g_sn,
                               hn=hn, hn_st=hn_st, hn_sn=hn_sn, dg=dg, dg_st=dg_st,
                               dg_sn=dg_sn, dan=dan, dan_st=dan_st, dan_sn=dan_sn,
                               carry=carry, T=T, N=N, H=H, bs=bs, reverse=reverse,
                               f64=floating is double, k=k, P=P)
        threads = single_open()
        run_tasks(bwd_task, tasks, sizeof(BwdTask), P)
    loop_threads_end(threads)   # (closes either kind of single-thread section)

    # input side: x Wx + bx sees [da_r | da_z | da_n] = [dG[:, :nH] | dAn]
    if D > 0:
        # dx = dG[:, :nH] @ Wx[:, :nH]^T + dAn @ Wx[:, nH:]^T
        #                              (R, D) = (R, 2H)(D, 2H)^T + (R, H)(D, H)^T
        mm(R, D, nH, <floating>1, dg, dg_ld, False, wx, wx_ld, not wx_t, <floating>0, dx, dx_ld, False)
        mm(R, D, H, <floating>1, dan, dan_ld, False, n_block(wx, wx_ld, wx_t, H), wx_ld, not wx_t,
           <floating>1, dx, dx_ld, False)
        # dWx[:, :nH] += x^T dG[:, :nH]               (D, 2H) += (D, R)(R, 2H)
        mm(D, nH, R, <floating>1, x, x_ld, True, dg, dg_ld, False, <floating>1, dwx, dwx_ld, dwx_t)
        # dWx[:, nH:] += x^T dAn                      (D, H) += (D, R)(R, H)
        mm(D, H, R, <floating>1, x, x_ld, True, dan, dan_ld, False,
           <floating>1, <floating *>n_block(dwx, dwx_ld, dwx_t, H), dwx_ld, dwx_t)
    # dbx += [dG[:, :nH] | dAn].sum(axis=0)
    colsum_add(dbx, dg, dg_ld, R, nH)
    colsum_add(dbx + nH, dan, dan_ld, R, H)
    # hidden side: h Wh + bh sees dG = [da_r | da_z | da_n r]
    # dbh += dG.sum(axis=0)
    colsum_add(dbh, dg, dg_ld, R, GH)
    # dWh += sum_t h_prev(t)^T dG_t               (H, 3H)
    dwh_accumulate(h, h_ld, h_st, h_sn, h0, dg, dg_ld, dg_st, dg_sn, dgs,
                   dwh, dwh_ld, dwh_t, T, N, H, GH, batch_major, bs, reverse)


# ----------------------------------------------------------------- entry points
# Shapes and layouts are checked here, before `with nogil`; the loops above
# cannot fail. Strides come from the memoryviews (in bytes), never from copies.

def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] Wx,
            const floating[:, :] Wh, const floating[:] bx, const floating[:] bh,
            floating[:, :, :] h, bint reverse=False, batch_sizes=None):
    """Run one GRU layer and direction over all T steps, writing ``h``.

    Parameters (logical shapes; layouts in the module docstring)
    ----------
    x : (T, N, D)   h0 : (N, H) C-contiguous   Wx : (D, 3H)   Wh : (H, 3H)
    bx, bh : (3H,) contiguous, PyTorch's bias_ih and bias_hh
    h : (T, N, H) output, same layout kind as x
    reverse : run t = T-1 .. 0
    batch_sizes : (T,) non-increasing active-row counts (sorted batch), or None

    Returns
    -------
    saved : GRUSaved(gates, hidden_n)
        gates (T, N, 3H) = [r | z | n] and hidden_n (T, N, H) = h_prev W_hn + b_hn,
        in h's layout kind; pass to `backward`.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], D = x.shape[2], H = Wh.shape[0]
    cdef Py_ssize_t GH = RC_GRU_G * H, isz = sizeof(floating)
    cdef Py_ssize_t x_st, x_sn, x_ld, h_st, h_sn, h_ld, wx_ld, wh_ld
    cdef Py_ssize_t g_st, g_sn, g_ld, hn_st, hn_sn
    cdef bint x_bm, h_bm, g_bm, hn_bm, wx_t, wh_t
    x_ld = seq_check(x.shape, x.strides, isz, "x", T, N, D, &x_st, &x_sn, &x_bm)
    h_ld = seq_check(h.shape, h.strides, isz, "h", T, N, H, &h_st, &h_sn, &h_bm)
    if D > 0 and x_bm != h_bm and T > 1 and N > 1:
        raise ValueError("x and h must share the same layout (time- or batch-major)")
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, GH, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, GH, &wh_ld, &wh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    vec_check(bx.shape, bx.strides, isz, "bx", GH)
    vec_check(bh.shape, bh.strides, isz, "bh", GH)
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used and T > 0 else NULL
    dtype = np.float32 if floating is float else np.float64
    saved = GRUSaved(gates=seq_empty(h_bm, T, N, GH, dtype),
                     hidden_n=seq_empty(h_bm, T, N, H, dtype))
    if T == 0 or N == 0 or H == 0:
        return saved
    cdef floating[:, :, :] g = saved.gates
    cdef floating[:, :, :] hn = saved.hidden_n
    cdef floating[:, :] s = np.empty((N, GH), dtype=dtype)
    g_ld = seq_check(g.shape, g.strides, isz, "gates", T, N, GH, &g_st, &g_sn, &g_bm)
    seq_check(hn.shape, hn.strides, isz, "hidden_n", T, N, H, &hn_st, &hn_sn, &hn_bm)
    cdef const floating *xp = &x[0, 0, 0] if D > 0 else NULL
    cdef const floating *wxp = &Wx[0, 0] if D > 0 else NULL
    whc = step_weight(Wh, wh_t, T, N, GH, H)
    cdef const floating[:, :] Whl = Wh if whc is None else whc[0]
    if whc is not None:
        wh_ld, wh_t = whc[1], whc[2]
    with nogil:
        forward_loop(xp, x_ld, &h0[0, 0], wxp, wx_ld, wx_t, &Whl[0, 0], wh_ld, wh_t,
                     &bx[0], &bh[0], &h[0, 0, 0], h_st, h_sn,
                     &g[0, 0, 0], g_ld, g_st, g_sn, &hn[0, 0, 0], hn_st, hn_sn, &s[0, 0],
                     T, N, D, H, bsp, reverse)
    return saved


def backward(const floating[:, :, :] dh, const floating[:, :] dhn,
             const floating[:, :, :] x, const floating[:, :] h0,
             const floating[:, :] Wx, const floating[:, :] Wh, const floating[:] bh,
             const floating[:, :, :] h, saved,
             floating[:, :, :] dx, floating[:, :] dh0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] dbx, floating[:] dbh,
             bint reverse=False, batch_sizes=None, bint overwrite_saved=False):
    """BPTT through one GRU layer and direction.

    Writes ``dx`` (T, N, D, same layout kind as x) and ``dh0`` (N, H), and
    ADDS the weight gradients into ``dWx`` (D, 3H), ``dWh`` (H, 3H),
    ``dbx``, ``dbh`` (3H,). ``dh`` (T, N, H) is the upstream gradient of every
    output, ``dhn`` (N, H) the gradient of the final state (each row's state
    after its last valid step; in the reverse direction, after t = 0). ``h``
    and ``saved`` are what `forward` wrote and returned; the other arguments
    as in `forward`. ``bh`` is only shape-checked: ``b_hn`` is already inside
    the saved ``hidden_n``. ``saved`` is not modified (backward may be run
    again) unless ``overwrite_saved``: then the gradient workspaces dG and dAn
    are the saved ``gates`` and ``hidden_n`` themselves (T*N*4H less memory),
    which are garbage afterwards -- for callers that back-propagate once.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], D = x.shape[2], H = Wh.shape[0]
    cdef Py_ssize_t GH = RC_GRU_G * H, isz = sizeof(floating), n
    cdef Py_ssize_t x_st, x_sn, x_ld, h_st, h_sn, h_ld, dh_st, dh_sn, dx_st, dx_sn, dx_ld
    cdef Py_ssize_t g_st, g_sn, hn_st, hn_sn, dg_st, dg_sn, dan_st, dan_sn
    cdef Py_ssize_t wx_ld, wh_ld, dwx_ld, dwh_ld
    cdef bint x_bm, h_bm, dh_bm, dx_bm, g_bm, hn_bm, wx_t, wh_t, dwx_t, dwh_t
    x_ld = seq_check(x.shape, x.strides, isz, "x", T, N, D, &x_st, &x_sn, &x_bm)
    h_ld = seq_check(h.shape, h.strides, isz, "h", T, N, H, &h_st, &h_sn, &h_bm)
    seq_check(dh.shape, dh.strides, isz, "dh", T, N, H, &dh_st, &dh_sn, &dh_bm)
    dx_ld = seq_check(dx.shape, dx.strides, isz, "dx", T, N, D, &dx_st, &dx_sn, &dx_bm)
    if D > 0 and T > 1 and N > 1 and (x_bm != h_bm or x_bm != dx_bm):
        raise ValueError("x, h and dx must share the same layout (time- or batch-major)")
    try:
        gates_arr, hidden_n_arr = saved
    except (TypeError, ValueError):
        raise ValueError("saved: expected the GRUSaved returned by gru.forward") from None
    cdef const floating[:, :, :] g = gates_arr
    cdef const floating[:, :, :] hn = hidden_n_arr
    seq_check(g.shape, g.strides, isz, "saved.gates", T, N, GH, &g_st, &g_sn, &g_bm)
    seq_check(hn.shape, hn.strides, isz, "saved.hidden_n", T, N, H, &hn_st, &hn_sn, &hn_bm)
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, GH, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, GH, &wh_ld, &wh_t)
    mat_check(dWx.shape, dWx.strides, isz, "dWx", D, GH, &dwx_ld, &dwx_t)
    mat_check(dWh.shape, dWh.strides, isz, "dWh", H, GH, &dwh_ld, &dwh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    rows_check(dhn.shape, dhn.strides, isz, "dhn", N, H)
    rows_check(dh0.shape, dh0.strides, isz, "dh0", N, H)
    vec_check(bh.shape, bh.strides, isz, "bh", GH)
    vec_check(dbx.shape, dbx.strides, isz, "dbx", GH)
    vec_check(dbh.shape, dbh.strides, isz, "dbh", GH)
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used and T > 0 else NULL
    cdef bint gather = reverse and used
    # workspaces: dG (hidden side) and dAn (input side's n block) in h's layout
    # kind (contiguous); dgs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :] dg
    cdef floating[:, :, :] dan
    if overwrite_saved:
        dg = writable_workspace(gates_arr, "saved.gates", T, N, GH, h_bm)
        dan = writable_workspace(hidden_n_arr, "saved.hidden_n", T, N, H, h_bm)
    else:
        dg = seq_empty(h_bm, T, N, GH, dtype)
        dan = seq_empty(h_bm, T, N, H, dtype)
    cdef floating[:, :] dgs = np.empty((N if gather else 0, GH), dtype=dtype)
    if N == 0 or H == 0:
        if D > 0 and N > 0 and T > 0:
            np.asarray(dx)[...] = 0
        return
    # the carry (in dh0) starts as dh_n
    for n in range(N):
        memcpy(&dh0[n, 0], &dhn[n, 0], H * isz)
    if T == 0:
        return
    dg_st = dg.strides[0] // isz
    dg_sn = dg.strides[1] // isz
    dan_st = dan.strides[0] // isz
    dan_sn = dan.strides[1] // isz
    cdef const floating *xp = &x[0, 0, 0] if D > 0 else NULL
    cdef const floating *wxp = &Wx[0, 0] if D > 0 else NULL
    cdef floating *dxp = &dx[0, 0, 0] if D > 0 else NULL
    cdef floating *dwxp = &dWx[0, 0] if D > 0 else NULL
    cdef floating *dgsp = &dgs[0, 0] if gather else NULL
    whc = step_weight(Wh, wh_t, T, N, GH, H, True)
    cdef const floating[:, :] Whl = Wh if whc is None else whc[0]
    if whc is not None:
        wh_ld, wh_t = whc[1], whc[2]
    with nogil:
        backward_loop(&dh[0, 0, 0], dh_st, dh_sn, xp, x_ld, &h0[0, 0],
                      wxp, wx_ld, wx_t, &Whl[0, 0], wh_ld, wh_t,
                      &h[0, 0, 0], h_ld, h_st, h_sn,
                      &g[0, 0, 0], g_st, g_sn, &hn[0, 0, 0], hn_st, hn_sn,
                      &dg[0, 0, 0], dg_st, dg_sn, &dan[0, 0, 0], dan_st, dan_sn,
                      &dh0[0, 0], dgsp,
                      dxp, dx_ld, dwxp, dwx_ld, dwx_t, &dWh[0, 0], dwh_ld, dwh_t,
                      &dbx[0], &dbh[0], T, N, D, H, h_bm, bsp, reverse)


# ----------------------------------------------------------------- single step
# The cells' fast path (see rnn.step): one step on PyTorch-layout parameters.

cdef int step_run(const floating *x, const floating *h0, const floating *wih,
                  const floating *whh, const floating *bih, const floating *bhh, floating *h,
                  floating *g, floating *hn, Py_ssize_t N, Py_ssize_t D,
                  Py_ssize_t H) noexcept nogil:
    # one allocation: the (N, 3H) recurrent-projection scratch, then gates and
    # hidden_n when the caller does not keep them (inference)
    cdef Py_ssize_t GH = RC_GRU_G * H
    cdef Py_ssize_t n = N * GH + (N * GH if g == NULL else 0) + (N * H if hn == NULL else 0)
    cdef floating *w = <floating *>malloc(n * sizeof(floating))
    if w == NULL:
        return -1
    cdef floating *rest = w + N * GH
    if g == NULL:
        g = rest
        rest += N * GH
    if hn == NULL:
        hn = rest
    forward_loop(x, D, h0, wih, D, True, whh, H, True, bih, bhh, h, N * H, H,
                 g, GH, N * GH, GH, hn, N * H, H, w, 1, N, D, H, NULL, False)
    free(w)
    return 0


def step(x, h0, w_ih, w_hh, b_ih, b_hh, h, gates, hidden_n, Py_ssize_t D, Py_ssize_t H):
    """One GRU step on the cells' arrays (PyTorch's equations, gates r, z, n).

    x (N, D) or (D,); h0 and the output h (N, H) or (H,) alike; w_ih (3H, D),
    w_hh (3H, H), b_ih, b_hh (3H,): PyTorch layout. gates (N*3H elements) and
    hidden_n (N*H elements) receive what `backward` needs, or are None
    (inference). Everything C-contiguous, non-empty, one dtype.

    Returns True, or False having touched nothing when an argument does not
    qualify (the caller then takes the validated path).
    """
    cdef Py_ssize_t GH = RC_GRU_G * H
    cdef StepBufs B
    cdef int rc = 0
    cdef void *p[7]
    step_init(&B)
    cdef bint ok = step_cell_bufs(&B, x, h0, h, w_ih, w_hh, b_ih, b_hh, D, H, GH, p)
    cdef Py_ssize_t N = B.N
    cdef void *gp = NULL
    cdef void *hnp = NULL
    if ok and gates is not None:
        gp = step_buf(&B, gates, -3, N * GH, True)
        ok = gp != NULL
    if ok and hidden_n is not None:
        hnp = step_buf(&B, hidden_n, -3, N * H, True)
        ok = hnp != NULL
    if not ok:
        step_release(&B)
        return False
    with nogil:
        if B.fmt == b'f':
            rc = step_run(<float *>p[0], <float *>p[1], <float *>p[3], <float *>p[4],
                          <float *>p[5], <float *>p[6], <float *>p[2], <float *>gp,
                          <float *>hnp, N, D, H)
        else:
            rc = step_run(<double *>p[0], <double *>p[1], <double *>p[3], <double *>p[4],
                          <double *>p[5], <double *>p[6], <double *>p[2], <double *>gp,
                          <double *>hnp, N, D, H)
    step_release(&B)
    if rc:
        raise MemoryError()
    return True


def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_simd.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)
