"""LSTM kernel: one layer, one direction, all T steps in one call.

Equations (PyTorch ``nn.LSTM``; gates i, f, g, o along the 4H axis; one bias
``b = b_ih + b_hh``)::

    [a_i, a_f, a_g, a_o] = x_t Wx + h_{t-1} Wh + b
    i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

Forward
    A = X Wx                      one GEMM over all T*N rows, into `gates`
    per step t:  A_t += H_prev Wh one GEMM             (N, 4H) += (N, H)(H, 4H)
                 gates, c_t, h_t  one fused vectorized pass (rc_lstm_fwd_*):
                                  bias add, the four activations, the cell
                                  update, tanh(c_t), stores
Backward (BPTT)
    per step t (reverse order):  dA_t, dc carry    one fused pass (rc_lstm_bwd_*)
                                 dh carry = dA_t Wh^T   one GEMM
    after the loop:              dX = dA Wx^T,  dWx += X^T dA,
                                 dWh += H_prev^T dA (shifted pairs),  db += sum dA

Saved for backward (``LSTMSaved``): ``gates`` (T, N, 4H), the activations
[i | f | g | o] of every step. Together with the cell states ``c`` (T, N, H),
an output of `forward` that the caller passes back, this is all BPTT needs;
tanh(c_t) is recomputed in the backward pass (one tanh per element is cheaper
than storing and re-reading another (T, N, H) array).

Design notes
------------
* Layouts as in rnn.pyx: sequences are (T, N, F) arrays with a contiguous
  last axis, time-major as is or batch-major as the transposed view of an
  (N, T, F) array (see _common.pxd). ``x``, ``h`` and ``dx`` share one layout
  kind; ``gates`` and the backward workspace are allocated in h's kind so the
  all-steps GEMMs see one uniform matrix. ``c``, ``dh`` and the saved gates may
  be of either kind (they are only read per step).
* Weights are (D, 4H) / (H, 4H) operands, row-major or a transposed view of a
  row-major array (PyTorch's ``weight_ih`` passed as ``weight_ih.T``).
* The caller allocates every output (h, c, dx, dh0, dc0 and the gradient
  arrays, which are *accumulated into*); backward allocates its dA workspace
  (T*N*4H) -- or, with ``overwrite_saved`` (the models and cells), writes it
  over the saved gates.
* Variable lengths (``batch_sizes``, a sorted batch): step t touches rows
  ``[0, batch_sizes[t])`` only; padded h and c are written as zeros, padded
  upstream gradients are never read. In the reverse direction a row starts
  from (h0, c0) at its own last valid step. The carries start as (dhn, dcn)
  and rows outside the active range are never touched, so each row's
  final-state gradient enters at its own last step, and the carries end as
  (dh0, dc0).
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
    enum: RC_LSTM_GATES
    void rc_lstm_fwd_f(float *a, Py_ssize_t lda, const float *b,
                       const float *cp, Py_ssize_t ldcp, float *c, Py_ssize_t ldc,
                       float *h, Py_ssize_t ldh, Py_ssize_t rows, Py_ssize_t H)
    void rc_lstm_fwd_d(double *a, Py_ssize_t lda, const double *b,
                       const double *cp, Py_ssize_t ldcp, double *c, Py_ssize_t ldc,
                       double *h, Py_ssize_t ldh, Py_ssize_t rows, Py_ssize_t H)
    void rc_lstm_bwd_f(float *dg, Py_ssize_t lddg, const float *dh, Py_ssize_t lddh,
                       const float *ch, Py_ssize_t ldch, float *cc, Py_ssize_t ldcc,
                       const float *g, Py_ssize_t ldg, const float *c, Py_ssize_t ldc,
                       const float *cp, Py_ssize_t ldcp, Py_ssize_t rows, Py_ssize_t H)
    void rc_lstm_bwd_d(double *dg, Py_ssize_t lddg, const double *dh, Py_ssize_t lddh,
                       const double *ch, Py_ssize_t ldch, double *cc, Py_ssize_t ldcc,
                       const double *g, Py_ssize_t ldg, const double *c, Py_ssize_t ldc,
                       const double *cp, Py_ssize_t ldcp, Py_ssize_t rows, Py_ssize_t H)
    void rc_lstm_bwd_ip_f(float *gd, Py_ssize_t ldgd, const float *dh, Py_ssize_t lddh,
                          const float *ch, Py_ssize_t ldch, float *cc, Py_ssize_t ldcc,
                          const float *c, Py_ssize_t ldc,
                          const float *cp, Py_ssize_t ldcp, Py_ssize_t rows, Py_ssize_t H)
    void rc_lstm_bwd_ip_d(double *gd, Py_ssize_t ldgd, const double *dh, Py_ssize_t lddh,
                          const double *ch, Py_ssize_t ldch, double *cc, Py_ssize_t ldcc,
                          const double *c, Py_ssize_t ldc,
                          const double *cp, Py_ssize_t ldcp, Py_ssize_t rows, Py_ssize_t H)

#: What `forward` saves for `backward`: the gate activations (T, N, 4H).
LSTMSaved = namedtuple("LSTMSaved", ["gates"])


# ----------------------------------------------------------------- step helpers

cdef inline void lstm_rows(floating *a, Py_ssize_t lda, const floating *b,
                           const floating *cp, Py_ssize_t ldcp, floating *c, Py_ssize_t ldc,
                           floating *h, Py_ssize_t ldh, Py_ssize_t rows,
                           Py_ssize_t H) noexcept nogil:
    # [i, f, g, o] = σ, σ, tanh, σ of (a + b);  c = f c_prev + i g;  h = o tanh(c)
    if floating is float:
        rc_lstm_fwd_f(a, lda, b, cp, ldcp, c, ldc, h, ldh, rows, H)
    else:
        rc_lstm_fwd_d(a, lda, b, cp, ldcp, c, ldc, h, ldh, rows, H)


cdef inline void lstm_drows(floating *dg, Py_ssize_t lddg, const floating *dh, Py_ssize_t lddh,
                            const floating *ch, floating *cc, Py_ssize_t ldcc,
                            const floating *g, Py_ssize_t ldg,
                            const floating *c, Py_ssize_t ldc,
                            const floating *cp, Py_ssize_t ldcp,
                            Py_ssize_t rows, Py_ssize_t H) noexcept nogil:
    # d = dh + carry_h;  dc = carry_c + d o (1 - tanh²c)
    # dA = [dc g i(1-i), dc c_prev f(1-f), dc i (1-g²), d tanh(c) o(1-o)];  carry_c = dc f
    # (in place when dg is g: see backward's overwrite_saved)
    if <const floating *>dg == g:
        if floating is float:
            rc_lstm_bwd_ip_f(dg, lddg, dh, lddh, ch, ldcc, cc, ldcc, c, ldc, cp, ldcp, rows, H)
        else:
            rc_lstm_bwd_ip_d(dg, lddg, dh, lddh, ch, ldcc, cc, ldcc, c, ldc, cp, ldcp, rows, H)
    elif floating is float:
        rc_lstm_bwd_f(dg, lddg, dh, lddh, ch, ldcc, cc, ldcc, g, ldg, c, ldc, cp, ldcp, rows, H)
    else:
        rc_lstm_bwd_d(dg, lddg, dh, lddh, ch, ldcc, cc, ldcc, g, ldg, c, ldc, cp, ldcp, rows, H)


# ----------------------------------------------------------------- time loops

cdef void fwd_steps(
        const floating *h0, const floating *c0,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t, const floating *b,
        floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        floating *c, Py_ssize_t c_st, Py_ssize_t c_sn,
        floating *a, Py_ssize_t a_st, Py_ssize_t a_sn,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
        const Py_ssize_t *bs, bint reverse, int k, int P) noexcept nogil:
    # The time loop over the rows k, k+P, ... of the batch (all: k=0, P=1); row r of
    # this share is row k + r*P; active rows stay a prefix.
    cdef Py_ssize_t i, t, tp, B, Bc, GH = RC_LSTM_GATES * H, M = share(N, k, P)
    cdef Py_ssize_t s0_ld = P * H
    cdef floating *at
    cdef floating *ct
    cdef floating *ht
    h0 += k * H
    c0 += k * H
    h += k * h_sn
    c += k * c_sn
    a += k * a_sn
    h_sn *= P
    c_sn *= P
    a_sn *= P
    for i in range(T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from (h0, c0) here
        step_rows(bs, i, T, N, False, reverse, k, P, &t, &tp, &B, &Bc)
        at = a + t * a_st
        ct = c + t * c_st
        ht = h + t * h_st
        if Bc > 0:
            # A_t[:Bc] += h_tp[:Bc] @ Wh        (Bc, 4H) += (Bc, H)(H, 4H)
            mm_step(Bc, GH, H, h + tp * h_st, h_sn, wh, wh_ld, wh_t, <floating>1, at, a_sn)
            lstm_rows(at, a_sn, b, c + tp * c_st, c_sn, ct, c_sn, ht, h_sn, Bc, H)
        if B > Bc:
            # A_t[Bc:B] += h0[Bc:B] @ Wh        (B-Bc, 4H) += (B-Bc, H)(H, 4H)
            mm_step(B - Bc, GH, H, h0 + Bc * s0_ld, s0_ld, wh, wh_ld, wh_t,
                    <floating>1, at + Bc * a_sn, a_sn)
            lstm_rows(at + Bc * a_sn, a_sn, b, c0 + Bc * s0_ld, s0_ld, ct + Bc * c_sn, c_sn,
                      ht + Bc * h_sn, h_sn, B - Bc, H)
        if B < M:
            # padding: h_t[B:] = c_t[B:] = 0 (and no stale projections in the saved gates)
            scale_rows(ht + B * h_sn, h_sn, M - B, H, <floating>0)
            scale_rows(ct + B * c_sn, c_sn, M - B, H, <floating>0)
            scale_rows(at + B * a_sn, a_sn, M - B, GH, <floating>0)


cdef struct FwdTask:   # fwd_steps' arguments, for a thread (rc_run_tasks)
    const void *h0
    const void *c0
    const void *wh
    Py_ssize_t wh_ld
    bint wh_t
    const void *b
    void *h
    Py_ssize_t h_st, h_sn
    void *c
    Py_ssize_t c_st, c_sn
    void *a
    Py_ssize_t a_st, a_sn, T, N, H
    const Py_ssize_t *bs
    bint reverse, f64
    int k, P


cdef void fwd_task(void *p) noexcept nogil:
    cdef FwdTask *q = <FwdTask *>p
    if q.f64:
        fwd_steps(<const double *>q.h0, <const double *>q.c0, <const double *>q.wh, q.wh_ld,
                  q.wh_t, <const double *>q.b, <double *>q.h, q.h_st, q.h_sn,
                  <double *>q.c, q.c_st, q.c_sn, <double *>q.a, q.a_st, q.a_sn,
                  q.T, q.N, q.H, q.bs, q.reverse, q.k, q.P)
    else:
        fwd_steps(<const float *>q.h0, <const float *>q.c0, <const float *>q.wh, q.wh_ld,
                  q.wh_t, <const float *>q.b, <float *>q.h, q.h_st, q.h_sn,
                  <float *>q.c, q.c_st, q.c_sn, <float *>q.a, q.a_st, q.a_sn,
                  q.T, q.N, q.H, q.bs, q.reverse, q.k, q.P)


cdef void forward_loop(
        const floating *x, Py_ssize_t x_ld,
        const floating *h0, const floating *c0,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *b,
        floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        floating *c, Py_ssize_t c_st, Py_ssize_t c_sn,
        floating *a, Py_ssize_t a_ld, Py_ssize_t a_st, Py_ssize_t a_sn,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
        const Py_ssize_t *bs, bint reverse) noexcept nogil:
    cdef Py_ssize_t GH = RC_LSTM_GATES * H
    cdef int threads, k, P
    cdef FwdTask tasks[8]
    # A = x @ Wx          (T*N, 4H) = (T*N, D)(D, 4H): all steps' input projection
    mm(T * N, GH, D, <floating>1, x, x_ld, False, wx, wx_ld, wx_t, <floating>0, a, a_ld, False)
    P = row_threads(N, N * GH * H, T)
    if P == 1:
        threads = loop_threads_begin(N * GH * H)
        fwd_steps(h0, c0, wh, wh_ld, wh_t, b, h, h_st, h_sn, c, c_st, c_sn, a, a_st, a_sn,
                  T, N, H, bs, reverse, 0, 1)
        loop_threads_end(threads)
        return
    # the rows on P threads, each calling BLAS single-threaded
    for k in range(P):
        tasks[k] = FwdTask(h0=h0, c0=c0, wh=wh, wh_ld=wh_ld, wh_t=wh_t, b=b, h=h, h_st=h_st,
                           h_sn=h_sn, c=c, c_st=c_st, c_sn=c_sn, a=a, a_st=a_st, a_sn=a_sn,
                           T=T, N=N, H=H, bs=bs, reverse=reverse, f64=floating is double,
                           k=k, P=P)
    threads = single_open()
    run_tasks(fwd_task, tasks, sizeof(FwdTask), P)
    single_close(threads)


cdef void bwd_steps(
        const floating *dh, Py_ssize_t dh_st, Py_ssize_t dh_sn,
        const floating *c0, const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *c, Py_ssize_t c_st, Py_ssize_t c_sn,
        const floating *g, Py_ssize_t g_st, Py_ssize_t g_sn,
        floating *dg, Py_ssize_t dg_st, Py_ssize_t dg_sn,
        floating *carry_h, floating *carry_c,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
        const Py_ssize_t *bs, bint reverse, int k, int P) noexcept nogil:
    # The reverse time loop over the rows k, k+P, ... (see fwd_steps); carries (N, H).
    cdef Py_ssize_t i, t, tp, B, Bc, GH = RC_LSTM_GATES * H, M = share(N, k, P)
    cdef Py_ssize_t ldc = P * H
    cdef floating *dgt
    dh += k * dh_sn
    c0 += k * H
    c += k * c_sn
    g += k * g_sn
    dg += k * dg_sn
    carry_h += k * H
    carry_c += k * H
    dh_sn *= P
    c_sn *= P
    g_sn *= P
    dg_sn *= P
    for i in range(T):
        step_rows(bs, i, T, N, True, reverse, k, P, &t, &tp, &B, &Bc)
        dgt = dg + t * dg_st
        # dA_t[:B] and carry_c[:B] from (dh_t + carry_h), the gates, c_t and c_prev
        if Bc > 0:
            lstm_drows(dgt, dg_sn, dh + t * dh_st, dh_sn, carry_h, carry_c, ldc,
                       g + t * g_st, g_sn, c + t * c_st, c_sn, c + tp * c_st, c_sn, Bc, H)
        if B > Bc:
            lstm_drows(dgt + Bc * dg_sn, dg_sn, dh + t * dh_st + Bc * dh_sn, dh_sn,
                       carry_h + Bc * ldc, carry_c + Bc * ldc, ldc, g + t * g_st + Bc * g_sn,
                       g_sn, c + t * c_st + Bc * c_sn, c_sn, c0 + Bc * ldc, ldc, B - Bc, H)
        if B < M:
            scale_rows(dgt + B * dg_sn, dg_sn, M - B, GH, <floating>0)
        # carry_h[:B] = dA_t[:B] @ Wh^T          (B, H) = (B, 4H)(H, 4H)^T
        mm_step(B, H, GH, dgt, dg_sn, wh, wh_ld, not wh_t, <floating>0, carry_h, ldc)


cdef struct BwdTask:   # bwd_steps' arguments, for a thread (rc_run_tasks)
    const void *dh
    Py_ssize_t dh_st, dh_sn
    const void *c0
    const void *wh
    Py_ssize_t wh_ld
    bint wh_t
    const void *c
    Py_ssize_t c_st, c_sn
    const void *g
    Py_ssize_t g_st, g_sn
    void *dg
    Py_ssize_t dg_st, dg_sn
    void *carry_h
    void *carry_c
    Py_ssize_t T, N, H
    const Py_ssize_t *bs
    bint reverse, f64
    int k, P


cdef void bwd_task(void *p) noexcept nogil:
    cdef BwdTask *q = <BwdTask *>p
    if q.f64:
        bwd_steps(<const double *>q.dh, q.dh_st, q.dh_sn, <const double *>q.c0,
                  <const double *>q.wh, q.wh_ld, q.wh_t, <const double *>q.c, q.c_st, q.c_sn,
                  <const double *>q.g, q.g_st, q.g_sn, <double *>q.dg, q.dg_st, q.dg_sn,
                  <double *>q.carry_h, <double *>q.carry_c, q.T, q.N, q.H, q.bs, q.reverse,
                  q.k, q.P)
    else:
        bwd_steps(<const float *>q.dh, q.dh_st, q.dh_sn, <const float *>q.c0,
                  <const float *>q.wh, q.wh_ld, q.wh_t, <const float *>q.c, q.c_st, q.c_sn,
                  <const float *>q.g, q.g_st, q.g_sn, <float *>q.dg, q.dg_st, q.dg_sn,
                  <float *>q.carry_h, <float *>q.carry_c, q.T, q.N, q.H, q.bs, q.reverse,
                  q.k, q.P)


cdef void backward_loop(
        const floating *dh, Py_ssize_t dh_st, Py_ssize_t dh_sn,
        const floating *x, Py_ssize_t x_ld,
        const floating *h0, const floating *c0,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *h, Py_ssize_t h_ld, Py_ssize_t h_st, Py_ssize_t h_sn,
        const floating *c, Py_ssize_t c_st, Py_ssize_t c_sn,
        const floating *g, Py_ssize_t g_st, Py_ssize_t g_sn,
        floating *dg, Py_ssize_t dg_st, Py_ssize_t dg_sn,
        floating *carry_h, floating *carry_c, floating *dgs,
        floating *dx, Py_ssize_t dx_ld,
        floating *dwx, Py_ssize_t dwx_ld, bint dwx_t,
        floating *dwh, Py_ssize_t dwh_ld, bint dwh_t,
        floating *db,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, bint batch_major,
        const Py_ssize_t *bs, bint reverse) noexcept nogil:
    # On entry the carries (N, H) hold (dh_n, dc_n); on exit (dh0, dc0).
    cdef Py_ssize_t R = T * N, GH = RC_LSTM_GATES * H
    cdef int threads, k, P = row_threads(N, N * GH * H, T)
    cdef Py_ssize_t dg_ld = GH   # dg is contiguous in its own layout
    cdef BwdTask tasks[8]
    if P == 1:
        threads = loop_threads_begin(N * GH * H)
        bwd_steps(dh, dh_st, dh_sn, c0, wh, wh_ld, wh_t, c, c_st, c_sn, g, g_st, g_sn,
                  dg, dg_st, dg_sn, carry_h, carry_c, T, N, H, bs, reverse, 0, 1)
    else:
        for k in range(P):
            tasks[k] = BwdTask(dh=dh, dh_st=dh_st, dh_sn=dh_sn, c0=c0, wh=wh, wh_ld=wh_ld,
                               wh_t=wh_t, c=c, c_st=c_st, c_sn=c_sn, g=g, g_st=g_st, g_sn=g_sn,
                               dg=dg, dg_st=dg_st, dg_sn=dg_sn, carry_h=carry_h,
                               carry_c=carry_c, T=T, N=N, H=H, bs=bs, reverse=reverse,
                               f64=floating is double, k=k, P=P)
        threads = single_open()
        run_tasks(bwd_task, tasks, sizeof(BwdTask), P)
    loop_threads_end(threads)   # (closes either kind of single-thread section)

    # dx = dA @ Wx^T                              (R, D) = (R, 4H)(D, 4H)^T
    mm(R, D, GH, <floating>1, dg, dg_ld, False, wx, wx_ld, not wx_t, <floating>0, dx, dx_ld, False)
    # dWx += x^T dA                               (D, 4H) += (D, R)(R, 4H)
    mm(D, GH, R, <floating>1, x, x_ld, True, dg, dg_ld, False, <floating>1, dwx, dwx_ld, dwx_t)
    # db += dA.sum(axis=0)
    colsum_add(db, dg, dg_ld, R, GH)
    # dWh += sum_t h_prev(t)^T dA_t               (H, 4H)
    dwh_accumulate(h, h_ld, h_st, h_sn, h0, dg, dg_ld, dg_st, dg_sn, dgs,
                   dwh, dwh_ld, dwh_t, T, N, H, GH, batch_major, bs, reverse)


# ----------------------------------------------------------------- entry points
# Shapes and layouts are checked here, before `with nogil`; the loops above
# cannot fail. Strides come from the memoryviews (in bytes), never from copies.

def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] c0,
            const floating[:, :] Wx, const floating[:, :] Wh, const floating[:] b,
            floating[:, :, :] h, floating[:, :, :] c, bint reverse=False, batch_sizes=None):
    """Run one LSTM layer and direction over all T steps, writing ``h`` and ``c``.

    Parameters (logical shapes; layouts in the module docstring)
    ----------
    x : (T, N, D)   h0, c0 : (N, H) C-contiguous   Wx : (D, 4H)   Wh : (H, 4H)
    b : (4H,) contiguous, PyTorch's bias_ih + bias_hh
    h : (T, N, H) output, same layout kind as x
    c : (T, N, H) output, the cell states of all steps (zeros at padded positions)
    reverse : run t = T-1 .. 0
    batch_sizes : (T,) non-increasing active-row counts (sorted batch), or None

    Returns
    -------
    saved : LSTMSaved(gates)
        The gate activations (T, N, 4H), in h's layout kind; pass to `backward`.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], D = x.shape[2], H = Wh.shape[0]
    cdef Py_ssize_t GH = RC_LSTM_GATES * H, isz = sizeof(floating)
    cdef Py_ssize_t x_st, x_sn, x_ld, h_st, h_sn, h_ld, c_st, c_sn, wx_ld, wh_ld
    cdef Py_ssize_t a_st, a_sn, a_ld
    cdef bint x_bm, h_bm, c_bm, a_bm, wx_t, wh_t
    x_ld = seq_check(x.shape, x.strides, isz, "x", T, N, D, &x_st, &x_sn, &x_bm)
    h_ld = seq_check(h.shape, h.strides, isz, "h", T, N, H, &h_st, &h_sn, &h_bm)
    seq_check(c.shape, c.strides, isz, "c", T, N, H, &c_st, &c_sn, &c_bm)
    if D > 0 and x_bm != h_bm and T > 1 and N > 1:
        raise ValueError("x and h must share the same layout (time- or batch-major)")
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, GH, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, GH, &wh_ld, &wh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    rows_check(c0.shape, c0.strides, isz, "c0", N, H)
    vec_check(b.shape, b.strides, isz, "b", GH)
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used and T > 0 else NULL
    # saved gate activations, in h's layout kind (the x @ Wx GEMM writes them as one matrix)
    dtype = np.float32 if floating is float else np.float64
    saved = LSTMSaved(gates=seq_empty(h_bm, T, N, GH, dtype))
    if T == 0 or N == 0 or H == 0:
        return saved
    cdef floating[:, :, :] gates = saved.gates
    a_ld = seq_check(gates.shape, gates.strides, isz, "gates", T, N, GH, &a_st, &a_sn, &a_bm)
    cdef const floating *xp = &x[0, 0, 0] if D > 0 else NULL
    cdef const floating *wxp = &Wx[0, 0] if D > 0 else NULL
    whc = step_weight(Wh, wh_t, T, N, GH, H)
    cdef const floating[:, :] Whl = Wh if whc is None else whc[0]
    if whc is not None:
        wh_ld, wh_t = whc[1], whc[2]
    with nogil:
        forward_loop(xp, x_ld, &h0[0, 0], &c0[0, 0], wxp, wx_ld, wx_t,
                     &Whl[0, 0], wh_ld, wh_t, &b[0],
                     &h[0, 0, 0], h_st, h_sn, &c[0, 0, 0], c_st, c_sn,
                     &gates[0, 0, 0], a_ld, a_st, a_sn, T, N, D, H, bsp, reverse)
    return saved


def backward(const floating[:, :, :] dh, const floating[:, :] dhn, const floating[:, :] dcn,
             const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] c0,
             const floating[:, :] Wx, const floating[:, :] Wh,
             const floating[:, :, :] h, const floating[:, :, :] c, saved,
             floating[:, :, :] dx, floating[:, :] dh0, floating[:, :] dc0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] db,
             bint reverse=False, batch_sizes=None, bint overwrite_saved=False):
    """BPTT through one LSTM layer and direction.

    Writes ``dx`` (T, N, D, same layout kind as x), ``dh0`` and ``dc0`` (N, H),
    and ADDS the weight gradients into ``dWx`` (D, 4H), ``dWh`` (H, 4H),
    ``db`` (4H,). ``dh`` (T, N, H) is the upstream gradient of every output,
    ``dhn``/``dcn`` (N, H) the gradients of the final states (each row's
    state after its last valid step; in the reverse direction, after t = 0).
    ``h``, ``c`` and ``saved`` are what `forward` wrote and returned; the
    other arguments as in `forward`. ``saved`` is not modified (backward may
    be run again) unless ``overwrite_saved``: then the gradient workspace dA
    is the saved ``gates`` itself (T*N*4H less memory), garbage afterwards --
    for callers that back-propagate once.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], D = x.shape[2], H = Wh.shape[0]
    cdef Py_ssize_t GH = RC_LSTM_GATES * H, isz = sizeof(floating), n
    cdef Py_ssize_t x_st, x_sn, x_ld, h_st, h_sn, h_ld, c_st, c_sn, dh_st, dh_sn
    cdef Py_ssize_t dx_st, dx_sn, dx_ld, g_st, g_sn, dg_st, dg_sn
    cdef Py_ssize_t wx_ld, wh_ld, dwx_ld, dwh_ld
    cdef bint x_bm, h_bm, c_bm, dh_bm, dx_bm, g_bm, wx_t, wh_t, dwx_t, dwh_t
    x_ld = seq_check(x.shape, x.strides, isz, "x", T, N, D, &x_st, &x_sn, &x_bm)
    h_ld = seq_check(h.shape, h.strides, isz, "h", T, N, H, &h_st, &h_sn, &h_bm)
    seq_check(c.shape, c.strides, isz, "c", T, N, H, &c_st, &c_sn, &c_bm)
    seq_check(dh.shape, dh.strides, isz, "dh", T, N, H, &dh_st, &dh_sn, &dh_bm)
    dx_ld = seq_check(dx.shape, dx.strides, isz, "dx", T, N, D, &dx_st, &dx_sn, &dx_bm)
    if D > 0 and T > 1 and N > 1 and (x_bm != h_bm or x_bm != dx_bm):
        raise ValueError("x, h and dx must share the same layout (time- or batch-major)")
    try:
        (gates_arr,) = saved
    except (TypeError, ValueError):
        raise ValueError("saved: expected the LSTMSaved returned by lstm.forward") from None
    cdef const floating[:, :, :] g = gates_arr
    seq_check(g.shape, g.strides, isz, "saved.gates", T, N, GH, &g_st, &g_sn, &g_bm)
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, GH, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, GH, &wh_ld, &wh_t)
    mat_check(dWx.shape, dWx.strides, isz, "dWx", D, GH, &dwx_ld, &dwx_t)
    mat_check(dWh.shape, dWh.strides, isz, "dWh", H, GH, &dwh_ld, &dwh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    rows_check(c0.shape, c0.strides, isz, "c0", N, H)
    rows_check(dhn.shape, dhn.strides, isz, "dhn", N, H)
    rows_check(dcn.shape, dcn.strides, isz, "dcn", N, H)
    rows_check(dh0.shape, dh0.strides, isz, "dh0", N, H)
    rows_check(dc0.shape, dc0.strides, isz, "dc0", N, H)
    vec_check(db.shape, db.strides, isz, "db", GH)
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used and T > 0 else NULL
    cdef bint gather = reverse and used
    # workspaces: dA in h's layout kind (contiguous), dgs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :] dg
    if overwrite_saved:
        dg = writable_workspace(gates_arr, "saved.gates", T, N, GH, h_bm)
    else:
        dg = seq_empty(h_bm, T, N, GH, dtype)
    cdef floating[:, :] dgs = np.empty((N if gather else 0, GH), dtype=dtype)
    if N == 0 or H == 0:
        if D > 0 and N > 0 and T > 0:
            np.asarray(dx)[...] = 0
        return
    # the carries (in dh0, dc0) start as (dh_n, dc_n)
    for n in range(N):
        memcpy(&dh0[n, 0], &dhn[n, 0], H * isz)
        memcpy(&dc0[n, 0], &dcn[n, 0], H * isz)
    if T == 0:
        return
    dg_st = dg.strides[0] // isz
    dg_sn = dg.strides[1] // isz
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
        backward_loop(&dh[0, 0, 0], dh_st, dh_sn, xp, x_ld, &h0[0, 0], &c0[0, 0],
                      wxp, wx_ld, wx_t, &Whl[0, 0], wh_ld, wh_t,
                      &h[0, 0, 0], h_ld, h_st, h_sn, &c[0, 0, 0], c_st, c_sn,
                      &g[0, 0, 0], g_st, g_sn,
                      &dg[0, 0, 0], dg_st, dg_sn, &dh0[0, 0], &dc0[0, 0], dgsp,
                      dxp, dx_ld, dwxp, dwx_ld, dwx_t, &dWh[0, 0], dwh_ld, dwh_t, &db[0],
                      T, N, D, H, h_bm, bsp, reverse)


# ----------------------------------------------------------------- single step
# The cells' fast path (see rnn.step): one step on PyTorch-layout parameters.

cdef int step_run(const floating *x, const floating *h0, const floating *c0,
                  const floating *wih, const floating *whh, const floating *bih,
                  const floating *bhh, floating *h, floating *c, floating *g,
                  Py_ssize_t N, Py_ssize_t D, Py_ssize_t H) noexcept nogil:
    # one allocation: the summed bias, then the gates when the caller does not
    # keep them (inference)
    cdef Py_ssize_t j, GH = RC_LSTM_GATES * H
    cdef floating *b = <floating *>malloc((GH + (N * GH if g == NULL else 0))
                                          * sizeof(floating))
    if b == NULL:
        return -1
    for j in range(GH):
        b[j] = bih[j] + bhh[j]
    if g == NULL:
        g = b + GH
    forward_loop(x, D, h0, c0, wih, D, True, whh, H, True, b, h, N * H, H, c, N * H, H,
                 g, GH, N * GH, GH, 1, N, D, H, NULL, False)
    free(b)
    return 0


def step(x, h0, c0, w_ih, w_hh, b_ih, b_hh, h, c, gates, Py_ssize_t D, Py_ssize_t H):
    """One LSTM step on the cells' arrays (gates i, f, g, o).

    x (N, D) or (D,); h0, c0 and the outputs h, c (N, H) or (H,) alike; w_ih
    (4H, D), w_hh (4H, H), b_ih, b_hh (4H,): PyTorch layout. gates (N*4H
    elements) receives what `backward` needs, or is None (inference).
    Everything C-contiguous, non-empty, one dtype.

    Returns True, or False having touched nothing when an argument does not
    qualify (the caller then takes the validated path).
    """
    cdef Py_ssize_t GH = RC_LSTM_GATES * H
    cdef StepBufs B
    cdef int rc = 0
    cdef void *p[7]
    step_init(&B)
    cdef bint ok = step_cell_bufs(&B, x, h0, h, w_ih, w_hh, b_ih, b_hh, D, H, GH, p)
    cdef Py_ssize_t N = B.N
    cdef void *c0p = step_buf(&B, c0, -2, H, False) if ok else NULL
    cdef void *cp = step_buf(&B, c, -2, H, True) if c0p != NULL else NULL
    cdef void *gp = NULL
    ok = cp != NULL
    if ok and gates is not None:
        gp = step_buf(&B, gates, -3, N * GH, True)
        ok = gp != NULL
    if not ok:
        step_release(&B)
        return False
    with nogil:
        if B.fmt == b'f':
            rc = step_run(<float *>p[0], <float *>p[1], <float *>c0p, <float *>p[3],
                          <float *>p[4], <float *>p[5], <float *>p[6], <float *>p[2],
                          <float *>cp, <float *>gp, N, D, H)
        else:
            rc = step_run(<double *>p[0], <double *>p[1], <double *>c0p, <double *>p[3],
                          <double *>p[4], <double *>p[5], <double *>p[6], <double *>p[2],
                          <double *>cp, <double *>gp, N, D, H)
    step_release(&B)
    if rc:
        raise MemoryError()
    return True


def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_simd.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)
