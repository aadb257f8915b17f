"""Vanilla (Elman) RNN kernel: one layer, one direction, all T steps in one call.

Equations (seed 002, cs231n `rnn_step_forward`)::

    h_t = act(x_t Wx + h_{t-1} Wh + b),      act = tanh | relu

Forward
    H = X Wx                      one GEMM over all T*N rows, into the output
    per step t:  H_t += H_prev Wh one GEMM         (N, H) += (N, H)(H, H)
                 H_t = act(H_t + b)  one fused vectorized pass (rc_simd.h)
Backward (BPTT)
    per step t (reverse order):  dZ_t = (dH_t + carry) * act'(H_t)
                                 carry = dZ_t Wh^T
    after the loop:              dX = dZ Wx^T,  dWx += X^T dZ,
                                 dWh += H_prev^T dZ,  db += sum dZ
Only the recurrent GEMM and the elementwise work are inside the time loop.

Design notes
------------
* Sequences are (T, N, F) arrays with a contiguous last axis: time-major data as
  is, batch-major (N, T, F) data as its transposed view (see _common.pxd).
  ``x`` and ``h`` (and ``dx``) must share the same kind of layout.
* Weights are (D, H) / (H, H) operands, row-major or a transposed view of a
  row-major array (PyTorch's (H, D) ``weight_ih`` passed as ``weight_ih.T``):
  the kernel passes BLAS the transpose flag, never copies. The one exception:
  forward makes one C-ordered copy of a transposed ``Wh`` for all T steps when
  the per-step products go to the panel kernel (see step_weight, _common.pxd),
  instead of BLAS packing it on every step.
* The caller allocates every output (h, dx, dh0 and the gradient arrays, which
  are *accumulated into*); backward allocates its dZ workspace (T*N*H, the
  only memory beyond the stored activations).
* Variable lengths: the caller sorts the batch by decreasing length and passes
  ``batch_sizes[t]`` = number of sequences longer than t. Step t touches rows
  ``[0, batch_sizes[t])`` only; padded outputs are written as zeros and
  padded upstream gradients are never read. In the reverse direction a row
  starts from h0 at its own last valid step. An empty ``batch_sizes`` means
  every row is active at every step.
* Everything inside ``with nogil`` is BLAS calls and plain loops: it cannot
  fail; all checks happen before.
"""
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy

import numpy as np

from _blas cimport floating, mm, mm_step, use_panel, colsum_add, scale_rows
from _common cimport (active, row_threads, share, step_rows, run_tasks, dwh_accumulate, seq_check, mat_check, rows_check, vec_check,
                      check_batch_sizes, loop_threads_begin, loop_threads_end,
                      blas_thread_hooks, single_open, single_close, seq_empty, step_weight,
                      StepBufs, step_init, step_cell_bufs, step_release)

cdef extern from "rc_simd.h" nogil:
    void rc_rnn_act_f(float *z, Py_ssize_t ldz, const float *b, Py_ssize_t rows,
                      Py_ssize_t H, int relu)
    void rc_rnn_act_d(double *z, Py_ssize_t ldz, const double *b, Py_ssize_t rows,
                      Py_ssize_t H, int relu)
    void rc_rnn_dz_f(float *dz, Py_ssize_t lddz, const float *dh, Py_ssize_t lddh,
                     const float *carry, Py_ssize_t ldc, const float *h, Py_ssize_t ldh,
                     Py_ssize_t rows, Py_ssize_t H, int relu)
    void rc_rnn_dz_d(double *dz, Py_ssize_t lddz, const double *dh, Py_ssize_t lddh,
                     const double *carry, Py_ssize_t ldc, const double *h, Py_ssize_t ldh,
                     Py_ssize_t rows, Py_ssize_t H, int relu)


# ----------------------------------------------------------------- step helpers

cdef inline void act_rows(floating *z, Py_ssize_t ldz, const floating *b, Py_ssize_t rows,
                          Py_ssize_t H, bint relu) noexcept nogil:
    # z = act(z + b)    (rows, H), bias add + activation + store in one pass
    if floating is float:
        rc_rnn_act_f(z, ldz, b, rows, H, relu)
    else:
        rc_rnn_act_d(z, ldz, b, rows, H, relu)


cdef inline void dz_rows(floating *dz, Py_ssize_t lddz, const floating *dh, Py_ssize_t lddh,
                         const floating *carry, Py_ssize_t ldc, const floating *h,
                         Py_ssize_t ldh, Py_ssize_t rows, Py_ssize_t H, bint relu) noexcept nogil:
    # dz = (dh + carry) * act'(h)    act' = 1 - h^2 (tanh) or [h > 0] (relu)
    if floating is float:
        rc_rnn_dz_f(dz, lddz, dh, lddh, carry, ldc, h, ldh, rows, H, relu)
    else:
        rc_rnn_dz_d(dz, lddz, dh, lddh, carry, ldc, h, ldh, rows, H, relu)


# ----------------------------------------------------------------- time loops

cdef void fwd_steps(
        const floating *h0, Py_ssize_t h0_ld,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *b,
        floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
        const Py_ssize_t *bs, bint relu, bint reverse, int k, int P) noexcept nogil:
    # The time loop over the rows k, k+P, ... of the batch (all of them: k=0, P=1).
    # Row r of this share is row k + r*P of the batch; active rows stay a prefix.
    cdef Py_ssize_t s, t, tp, B, Bc, M = share(N, k, P)
    cdef floating *ht
    h0 += k * h0_ld
    h += k * h_sn
    h0_ld *= P
    h_sn *= P
    for s in range(T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from h0 here
        step_rows(bs, s, T, N, False, reverse, k, P, &t, &tp, &B, &Bc)
        ht = h + t * h_st
        if Bc > 0:
            # h_t[:Bc] += h_tp[:Bc] @ Wh        (Bc, H) += (Bc, H)(H, H)
            mm_step(Bc, H, H, h + tp * h_st, h_sn, wh, wh_ld, wh_t, <floating>1, ht, h_sn)
        if B > Bc:
            # h_t[Bc:B] += h0[Bc:B] @ Wh        (B-Bc, H) += (B-Bc, H)(H, H)
            mm_step(B - Bc, H, H, h0 + Bc * h0_ld, h0_ld, wh, wh_ld, wh_t,
                    <floating>1, ht + Bc * h_sn, h_sn)
        # h_t[:B] = act(h_t[:B] + b)
        act_rows(ht, h_sn, b, B, H, relu)
        if B < M:
            # padding: h_t[B:] = 0
            scale_rows(ht + B * h_sn, h_sn, M - B, H, <floating>0)


cdef struct FwdTask:   # fwd_steps' arguments, for a thread (rc_run_tasks)
    const void *h0
    Py_ssize_t h0_ld
    const void *wh
    Py_ssize_t wh_ld
    bint wh_t
    const void *b
    void *h
    Py_ssize_t h_st, h_sn, T, N, H
    const Py_ssize_t *bs
    bint relu, reverse, f64
    int k, P


cdef void fwd_task(void *p) noexcept nogil:
    cdef FwdTask *a = <FwdTask *>p
    if a.f64:
        fwd_steps(<const double *>a.h0, a.h0_ld, <const double *>a.wh, a.wh_ld, a.wh_t,
                  <const double *>a.b, <double *>a.h, a.h_st, a.h_sn, a.T, a.N, a.H,
                  a.bs, a.relu, a.reverse, a.k, a.P)
    else:
        fwd_steps(<const float *>a.h0, a.h0_ld, <const float *>a.wh, a.wh_ld, a.wh_t,
                  <const float *>a.b, <float *>a.h, a.h_st, a.h_sn, a.T, a.N, a.H,
                  a.bs, a.relu, a.reverse, a.k, a.P)


cdef void forward_loop(
        const floating *x, Py_ssize_t x_ld,
        const floating *h0, Py_ssize_t h0_ld,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *b,
        floating *h, Py_ssize_t h_ld, Py_ssize_t h_st, Py_ssize_t h_sn,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
        const Py_ssize_t *bs, bint relu, bint reverse) noexcept nogil:
    cdef int threads, k, P
    cdef FwdTask tasks[8]
    # h = x @ Wx          (T*N, H) = (T*N, D)(D, H): all steps' input projection
    mm(T * N, H, D, <floating>1, x, x_ld, False, wx, wx_ld, wx_t, <floating>0, h, h_ld, False)
    P = row_threads(N, N * H * H, T)
    if P == 1:
        threads = loop_threads_begin(N * H * H)
        fwd_steps(h0, h0_ld, wh, wh_ld, wh_t, b, h, h_st, h_sn, T, N, H, bs, relu, reverse, 0, 1)
        loop_threads_end(threads)
        return
    # the rows on P threads, each calling BLAS single-threaded
    for k in range(P):
        tasks[k] = FwdTask(h0=h0, h0_ld=h0_ld, wh=wh, wh_ld=wh_ld, wh_t=wh_t, b=b, h=h,
                           h_st=h_st, h_sn=h_sn, T=T, N=N, H=H, bs=bs, relu=relu,
                           reverse=reverse, f64=floating is double, k=k, P=P)
    threads = single_open()
    run_tasks(fwd_task, tasks, sizeof(FwdTask), P)
    single_close(threads)


cdef void bwd_steps(
        const floating *dh, Py_ssize_t dh_st, Py_ssize_t dh_sn,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *h, Py_ssize_t h_st, Py_ssize_t h_sn,
        floating *dz, Py_ssize_t dz_st, Py_ssize_t dz_sn, floating *carry,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t H,
        const Py_ssize_t *bs, bint relu, bint reverse, int k, int P) noexcept nogil:
    # The reverse time loop over the rows k, k+P, ... (see fwd_steps); carry (N, H).
    cdef Py_ssize_t s, t, tp, B, Bc, M = share(N, k, P), ldc = P * H
    cdef floating *dzt
    dh += k * dh_sn
    h += k * h_sn
    dz += k * dz_sn
    carry += k * H
    dh_sn *= P
    h_sn *= P
    dz_sn *= P
    for s in range(T):
        step_rows(bs, s, T, N, True, reverse, k, P, &t, &tp, &B, &Bc)
        dzt = dz + t * dz_st
        # dz_t[:B] = (dh_t[:B] + carry[:B]) * act'(h_t[:B])
        dz_rows(dzt, dz_sn, dh + t * dh_st, dh_sn, carry, ldc, h + t * h_st, h_sn, B, H, relu)
        if B < M:
            scale_rows(dzt + B * dz_sn, dz_sn, M - B, H, <floating>0)
        # carry[:B] = dz_t[:B] @ Wh^T            (B, H) = (B, H)(H, H)^T
        mm_step(B, H, H, dzt, dz_sn, wh, wh_ld, not wh_t, <floating>0, carry, ldc)


cdef struct BwdTask:   # bwd_steps' arguments, for a thread (rc_run_tasks)
    const void *dh
    Py_ssize_t dh_st, dh_sn
    const void *wh
    Py_ssize_t wh_ld
    bint wh_t
    const void *h
    Py_ssize_t h_st, h_sn
    void *dz
    Py_ssize_t dz_st, dz_sn
    void *carry
    Py_ssize_t T, N, H
    const Py_ssize_t *bs
    bint relu, reverse, f64
    int k, P


cdef void bwd_task(void *p) noexcept nogil:
    cdef BwdTask *a = <BwdTask *>p
    if a.f64:
        bwd_steps(<const double *>a.dh, a.dh_st, a.dh_sn, <const double *>a.wh, a.wh_ld,
                  a.wh_t, <const double *>a.h, a.h_st, a.h_sn, <double *>a.dz, a.dz_st,
                  a.dz_sn, <double *>a.carry, a.T, a.N, a.H, a.bs, a.relu, a.reverse,
                  a.k, a.P)
    else:
        bwd_steps(<const float *>a.dh, a.dh_st, a.dh_sn, <const float *>a.wh, a.wh_ld,
                  a.wh_t, <const float *>a.h, a.h_st, a.h_sn, <float *>a.dz, a.dz_st,
                  a.dz_sn, <float *>a.carry, a.T, a.N, a.H, a.bs, a.relu, a.reverse,
                  a.k, a.P)


cdef void backward_loop(
        const floating *dh, Py_ssize_t dh_st, Py_ssize_t dh_sn,
        const floating *x, Py_ssize_t x_ld,
        const floating *h0, Py_ssize_t h0_ld,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *h, Py_ssize_t h_ld, Py_ssize_t h_st, Py_ssize_t h_sn,
        floating *dz, Py_ssize_t dz_st, Py_ssize_t dz_sn,
        floating *carry, floating *dzs,
        floating *dx, Py_ssize_t dx_ld,
        floating *dwx, Py_ssize_t dwx_ld, bint dwx_t,
        floating *dwh, Py_ssize_t dwh_ld, bint dwh_t,
        floating *db,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, bint batch_major,
        const Py_ssize_t *bs, bint relu, bint reverse) noexcept nogil:
    # On entry carry (N, H) holds dh_n; on exit it holds dh0.
    cdef Py_ssize_t R = T * N
    cdef Py_ssize_t dz_ld = H   # dz is contiguous in its own layout
    cdef int threads, k, P = row_threads(N, N * H * H, T)
    cdef BwdTask tasks[8]
    if P == 1:
        threads = loop_threads_begin(N * H * H)
        bwd_steps(dh, dh_st, dh_sn, wh, wh_ld, wh_t, h, h_st, h_sn, dz, dz_st, dz_sn, carry,
                  T, N, H, bs, relu, reverse, 0, 1)
        loop_threads_end(threads)
    else:
        for k in range(P):
            tasks[k] = BwdTask(dh=dh, dh_st=dh_st, dh_sn=dh_sn, wh=wh, wh_ld=wh_ld, wh_t=wh_t,
                               h=h, h_st=h_st, h_sn=h_sn, dz=dz, dz_st=dz_st, dz_sn=dz_sn,
                               carry=carry, T=T, N=N, H=H, bs=bs, relu=relu,
                               reverse=reverse, f64=floating is double, k=k, P=P)
        threads = single_open()
        run_tasks(bwd_task, tasks, sizeof(BwdTask), P)
        single_close(threads)

    # dx = dz @ Wx^T                              (R, D) = (R, H)(H, D)
    mm(R, D, H, <floating>1, dz, dz_ld, False, wx, wx_ld, not wx_t, <floating>0, dx, dx_ld, False)
    # dWx += x^T dz                               (D, H) += (D, R)(R, H)
    mm(D, H, R, <floating>1, x, x_ld, True, dz, dz_ld, False, <floating>1, dwx, dwx_ld, dwx_t)
    # db += dz.sum(axis=0)
    colsum_add(db, dz, dz_ld, R, H)
    # dWh += sum_t h_prev(t)^T dz_t (h_prev = h0 at each row's first step)
    dwh_accumulate(h, h_ld, h_st, h_sn, h0, dz, dz_ld, dz_st, dz_sn, dzs, dwh, dwh_ld, dwh_t,
                   T, N, H, H, batch_major, bs, reverse)


# ----------------------------------------------------------------- entry points
# Shapes and layouts are checked here, before `with nogil`; the loops above
# cannot fail. Strides come from the memoryviews (in bytes), never from copies.

def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] Wx,
            const floating[:, :] Wh, const floating[:] b, floating[:, :, :] h,
            bint relu=False, bint reverse=False, batch_sizes=None):
    """Run one RNN layer and direction over all T steps, writing ``h``.

    Parameters (logical shapes; layouts in the module docstring)
    ----------
    x : (T, N, D)   h0 : (N, H) C-contiguous   Wx : (D, H)   Wh : (H, H)
    b : (H,) contiguous   h : (T, N, H) output, same layout kind as x
    relu : False for tanh   reverse : run t = T-1 .. 0
    batch_sizes : (T,) non-increasing active-row counts (sorted batch), or None
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], D = x.shape[2], H = Wh.shape[0]
    cdef Py_ssize_t isz = sizeof(floating)
    cdef Py_ssize_t x_st, x_sn, x_ld, h_st, h_sn, h_ld, wx_ld, wh_ld
    cdef bint x_bm, h_bm, wx_t, wh_t
    x_ld = seq_check(x.shape, x.strides, isz, "x", T, N, D, &x_st, &x_sn, &x_bm)
    h_ld = seq_check(h.shape, h.strides, isz, "h", T, N, H, &h_st, &h_sn, &h_bm)
    if D > 0 and x_bm != h_bm and T > 1 and N > 1:
        raise ValueError("x and h must share the same layout (time- or batch-major)")
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, H, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, H, &wh_ld, &wh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    vec_check(b.shape, b.strides, isz, "b", H)
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used and T > 0 else NULL
    if T == 0 or N == 0 or H == 0:
        return
    cdef const floating *xp = &x[0, 0, 0] if D > 0 else NULL
    cdef const floating *wxp = &Wx[0, 0] if D > 0 else NULL
    whc = step_weight(Wh, wh_t, T, N, H, H)
    cdef const floating[:, :] Whl = Wh if whc is None else whc[0]
    if whc is not None:
        wh_ld, wh_t = whc[1], whc[2]
    with nogil:
        forward_loop(xp, x_ld, &h0[0, 0], H, wxp, wx_ld, wx_t,
                     &Whl[0, 0], wh_ld, wh_t, &b[0],
                     &h[0, 0, 0], h_ld, h_st, h_sn, T, N, D, H,
                     bsp, relu, reverse)


def backward(const floating[:, :, :] dh, const floating[:, :] dhn,
             const floating[:, :, :] x, const floating[:, :] h0,
             const floating[:, :] Wx, const floating[:, :] Wh, const floating[:, :, :] h,
             floating[:, :, :] dx, floating[:, :] dh0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] db,
             bint relu=False, bint reverse=False, batch_sizes=None):
    """BPTT through one RNN layer and direction.

    Writes ``dx`` (T, N, D, same layout kind as x) and ``dh0`` (N, H), and
    ADDS the weight gradients into ``dWx`` (D, H), ``dWh`` (H, H), ``db`` (H,).
    ``dh`` (T, N, H) is the upstream gradient of every output, ``dhn`` (N, H)
    the gradient of the final state (each row's state after its last valid
    step; in the reverse direction, after t = 0). Arguments as in `forward`.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], D = x.shape[2], H = Wh.shape[0]
    cdef Py_ssize_t isz = sizeof(floating), n
    cdef Py_ssize_t x_st, x_sn, x_ld, h_st, h_sn, h_ld, dh_st, dh_sn, dx_st, dx_sn, dx_ld
    cdef Py_ssize_t dz_st, dz_sn, wx_ld, wh_ld, dwx_ld, dwh_ld
    cdef bint x_bm, h_bm, dh_bm, dx_bm, wx_t, wh_t, dwx_t, dwh_t
    x_ld = seq_check(x.shape, x.strides, isz, "x", T, N, D, &x_st, &x_sn, &x_bm)
    h_ld = seq_check(h.shape, h.strides, isz, "h", T, N, H, &h_st, &h_sn, &h_bm)
    seq_check(dh.shape, dh.strides, isz, "dh", T, N, H, &dh_st, &dh_sn, &dh_bm)
    dx_ld = seq_check(dx.shape, dx.strides, isz, "dx", T, N, D, &dx_st, &dx_sn, &dx_bm)
    if D > 0 and T > 1 and N > 1 and (x_bm != h_bm or x_bm != dx_bm):
        raise ValueError("x, h and dx must share the same layout (time- or batch-major)")
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, H, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, H, &wh_ld, &wh_t)
    mat_check(dWx.shape, dWx.strides, isz, "dWx", D, H, &dwx_ld, &dwx_t)
    mat_check(dWh.shape, dWh.strides, isz, "dWh", H, H, &dwh_ld, &dwh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    rows_check(dhn.shape, dhn.strides, isz, "dhn", N, H)
    rows_check(dh0.shape, dh0.strides, isz, "dh0", N, H)
    vec_check(db.shape, db.strides, isz, "db", H)
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used and T > 0 else NULL
    cdef bint gather = reverse and used
    # workspaces: dz in h's layout kind (contiguous), dzs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :] dz = seq_empty(h_bm, T, N, H, dtype)
    cdef floating[:, :] dzs = np.empty((N if gather else 0, H), dtype=dtype)
    if N == 0 or H == 0:
        if D > 0 and N > 0:
            np.asarray(dx)[...] = 0
        return
    # carry (in dh0) starts as dh_n
    for n in range(N):
        memcpy(&dh0[n, 0], &dhn[n, 0], H * isz)
    if T == 0:
        return
    dz_st = dz.strides[0] // isz
    dz_sn = dz.strides[1] // isz
    cdef const floating *xp = &x[0, 0, 0] if D > 0 else NULL
    cdef const floating *wxp = &Wx[0, 0] if D > 0 else NULL
    cdef floating *dxp = &dx[0, 0, 0] if D > 0 else NULL
    cdef floating *dwxp = &dWx[0, 0] if D > 0 else NULL
    cdef floating *dzsp = &dzs[0, 0] if gather else NULL
    whc = step_weight(Wh, wh_t, T, N, H, H, True)
    cdef const floating[:, :] Whl = Wh if whc is None else whc[0]
    if whc is not None:
        wh_ld, wh_t = whc[1], whc[2]
    with nogil:
        backward_loop(&dh[0, 0, 0], dh_st, dh_sn, xp, x_ld, &h0[0, 0], H,
                      wxp, wx_ld, wx_t, &Whl[0, 0], wh_ld, wh_t,
                      &h[0, 0, 0], h_ld, h_st, h_sn,
                      &dz[0, 0, 0], dz_st, dz_sn, &dh0[0, 0],
                      dzsp,
                      dxp, dx_ld, dwxp, dwx_ld, dwx_t, &dWh[0, 0], dwh_ld, dwh_t, &db[0],
                      T, N, D, H, h_bm, bsp, relu, reverse)


# ----------------------------------------------------------------- single step
# The cells' fast path: one time step on PyTorch-layout parameters, arrays taken
# through the buffer protocol (see step_buf in _common.pxd).

cdef int step_run(const floating *x, const floating *h0, const floating *wih,
                  const floating *whh, const floating *bih, const floating *bhh, floating *h,
                  Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, bint relu) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating *b = <floating *>malloc(H * sizeof(floating))
    if b == NULL:
        return -1
    for j in range(H):
        b[j] = bih[j] + bhh[j]
    forward_loop(x, D, h0, H, wih, D, True, whh, H, True, b, h, H, N * H, H, 1, N, D, H,
                 NULL, relu, False)
    free(b)
    return 0


def step(x, h0, w_ih, w_hh, b_ih, b_hh, h, Py_ssize_t D, Py_ssize_t H, bint relu=False):
    """One step on the cells' arrays: h = act(x W_ih^T + b_ih + h0 W_hh^T + b_hh).

    x (N, D) or (D,); h0 and the output h (N, H) or (H,) alike; w_ih (H, D),
    w_hh (H, H), b_ih, b_hh (H,): PyTorch layout. Everything C-contiguous,
    non-empty, one dtype (float32 or float64).

    Returns True, or False having touched nothing when an argument does not
    qualify: the caller then takes the validated path (`forward`), which
    raises the clear error.
    """
    cdef StepBufs B
    cdef int rc = 0
    cdef void *p[7]
    step_init(&B)
    if not step_cell_bufs(&B, x, h0, h, w_ih, w_hh, b_ih, b_hh, D, H, H, p):
        step_release(&B)
        return False
    cdef Py_ssize_t N = B.N
    with nogil:
        if B.fmt == b'f':
            rc = step_run(<float *>p[0], <float *>p[1], <float *>p[3], <float *>p[4],
                          <float *>p[5], <float *>p[6], <float *>p[2], N, D, H, relu)
        else:
            rc = step_run(<double *>p[0], <double *>p[1], <double *>p[3], <double *>p[4],
                          <double *>p[5], <double *>p[6], <double *>p[2], N, D, H, relu)
    step_release(&B)
    if rc:
        raise MemoryError()
    return True


def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_simd.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)


def _row_threads(Py_ssize_t N, long long work, Py_ssize_t T):
    """How many threads a time loop of T steps, N rows, `work` multiply-adds per step uses."""
    return row_threads(N, work, T)


def _single_thread_open():
    """Open a single-thread section (see rc_simd.h); returns the token for the close."""
    return single_open()


def _single_thread_close(int opened):
    """Close a section opened by `_single_thread_open`."""
    single_close(opened)
