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
  the kernel passes BLAS the transpose flag, never copies.
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
from libc.string cimport memcpy

import numpy as np

from _blas cimport floating, mm, colsum_add, scale_rows
from _common cimport seq_ld, mat_layout

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
                         const floating *carry, const floating *h, Py_ssize_t ldh,
                         Py_ssize_t rows, Py_ssize_t H, bint relu) noexcept nogil:
    # dz = (dh + carry) * act'(h)    act' = 1 - h^2 (tanh) or [h > 0] (relu)
    if floating is float:
        rc_rnn_dz_f(dz, lddz, dh, lddh, carry, H, h, ldh, rows, H, relu)
    else:
        rc_rnn_dz_d(dz, lddz, dh, lddh, carry, H, h, ldh, rows, H, relu)


cdef inline Py_ssize_t active(const Py_ssize_t *bs, Py_ssize_t t, Py_ssize_t T,
                              Py_ssize_t N) noexcept nogil:
    """Rows active at step t (0 outside [0, T))."""
    if t < 0 or t >= T:
        return 0
    return bs[t] if bs != NULL else N


# ----------------------------------------------------------------- time loops

cdef void forward_loop(
        const floating *x, Py_ssize_t x_ld,
        const floating *h0, Py_ssize_t h0_ld,
        const floating *wx, Py_ssize_t wx_ld, bint wx_t,
        const floating *wh, Py_ssize_t wh_ld, bint wh_t,
        const floating *b,
        floating *h, Py_ssize_t h_ld, Py_ssize_t h_st, Py_ssize_t h_sn,
        Py_ssize_t T, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H,
        const Py_ssize_t *bs, bint relu, bint reverse) noexcept nogil:
    cdef Py_ssize_t s, t, tp, B, Bc
    cdef floating *ht
    # h = x @ Wx          (T*N, H) = (T*N, D)(D, H): all steps' input projection
    mm(T * N, H, D, <floating>1, x, x_ld, False, wx, wx_ld, wx_t, <floating>0, h, h_ld, False)
    for s in range(T):
        t = T - 1 - s if reverse else s
        tp = t + 1 if reverse else t - 1
        B = active(bs, t, T, N)
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from h0 here
        Bc = active(bs, tp, T, N)
        if Bc > B:
            Bc = B
        ht = h + t * h_st
        if Bc > 0:
            # h_t[:Bc] += h_tp[:Bc] @ Wh        (Bc, H) += (Bc, H)(H, H)
            mm(Bc, H, H, <floating>1, h + tp * h_st, h_sn, False, wh, wh_ld, wh_t,
               <floating>1, ht, h_sn, False)
        if B > Bc:
            # h_t[Bc:B] += h0[Bc:B] @ Wh        (B-Bc, H) += (B-Bc, H)(H, H)
            mm(B - Bc, H, H, <floating>1, h0 + Bc * h0_ld, h0_ld, False, wh, wh_ld, wh_t,
               <floating>1, ht + Bc * h_sn, h_sn, False)
        # h_t[:B] = act(h_t[:B] + b)
        act_rows(ht, h_sn, b, B, H, relu)
        if B < N:
            # padding: h_t[B:] = 0
            scale_rows(ht + B * h_sn, h_sn, N - B, H, <floating>0)


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
    cdef Py_ssize_t s, t, B, n, R = T * N
    cdef Py_ssize_t dz_ld = H   # dz is contiguous in its own layout
    cdef floating *dzt
    for s in range(T):
        t = s if reverse else T - 1 - s
        B = active(bs, t, T, N)
        dzt = dz + t * dz_st
        # dz_t[:B] = (dh_t[:B] + carry[:B]) * act'(h_t[:B])
        dz_rows(dzt, dz_sn, dh + t * dh_st, dh_sn, carry, h + t * h_st, h_sn, B, H, relu)
        if B < N:
            scale_rows(dzt + B * dz_sn, dz_sn, N - B, H, <floating>0)
        # carry[:B] = dz_t[:B] @ Wh^T            (B, H) = (B, H)(H, H)^T
        mm(B, H, H, <floating>1, dzt, dz_sn, False, wh, wh_ld, not wh_t,
           <floating>0, carry, H, False)

    # dx = dz @ Wx^T                              (R, D) = (R, H)(H, D)
    mm(R, D, H, <floating>1, dz, dz_ld, False, wx, wx_ld, not wx_t, <floating>0, dx, dx_ld, False)
    # dWx += x^T dz                               (D, H) += (D, R)(R, H)
    mm(D, H, R, <floating>1, x, x_ld, True, dz, dz_ld, False, <floating>1, dwx, dwx_ld, dwx_t)
    # db += dz.sum(axis=0)
    colsum_add(db, dz, dz_ld, R, H)
    # dWh += sum_t h_prev(t)^T dz_t. In the uniform view the previous step of a
    # row is one step-stride away, so all pairs are one shifted GEMM ...
    if T > 1:
        if not reverse:
            # pairs (h_{t-1}, dz_t):  (H, H) += (H, R-s)(R-s, H)
            mm(H, H, R - dz_st // dz_ld, <floating>1, h, h_ld, True,
               dz + dz_st, dz_ld, False, <floating>1, dwh, dwh_ld, dwh_t)
            if batch_major and N > 1:
                # ... minus the pairs that straddle two sequences:
                # (h[n-1, T-1], dz[n, 0]) for n = 1..N-1   (H, H) -= (H, N-1)(N-1, H)
                mm(H, H, N - 1, <floating>-1, h + (T - 1) * h_st, h_sn, True,
                   dz + dz_sn, dz_sn, False, <floating>1, dwh, dwh_ld, dwh_t)
        else:
            # pairs (h_{t+1}, dz_t)
            mm(H, H, R - dz_st // dz_ld, <floating>1, h + h_st, h_ld, True,
               dz, dz_ld, False, <floating>1, dwh, dwh_ld, dwh_t)
            if batch_major and N > 1:
                # (h[n+1, 0], dz[n, T-1]) for n = 0..N-2
                mm(H, H, N - 1, <floating>-1, h + h_sn, h_sn, True,
                   dz + (T - 1) * dz_st, dz_sn, False, <floating>1, dwh, dwh_ld, dwh_t)
    # ... plus h0^T dz at each row's first step     (H, H) += (H, N)(N, H)
    if T > 0:
        if not reverse:
            mm(H, H, N, <floating>1, h0, h0_ld, True, dz, dz_sn, False,
               <floating>1, dwh, dwh_ld, dwh_t)
        elif bs == NULL:
            mm(H, H, N, <floating>1, h0, h0_ld, True, dz + (T - 1) * dz_st, dz_sn, False,
               <floating>1, dwh, dwh_ld, dwh_t)
        else:
            # reverse with lengths: row n starts at t = len_n - 1; gather those rows
            scale_rows(dzs, H, N, H, <floating>0)
            for t in range(T):
                for n in range(active(bs, t + 1, T, N), bs[t]):
                    memcpy(dzs + n * H, dz + t * dz_st + n * dz_sn, H * sizeof(floating))
            mm(H, H, N, <floating>1, h0, h0_ld, True, dzs, H, False,
               <floating>1, dwh, dwh_ld, dwh_t)


# ----------------------------------------------------------------- entry points
# Shapes and layouts are checked here, before `with nogil`; the loops above
# cannot fail. Strides come from the memoryviews (in bytes), never from copies.

cdef Py_ssize_t seq_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz,
                          str name, Py_ssize_t T, Py_ssize_t N, Py_ssize_t F,
                          Py_ssize_t *st, Py_ssize_t *sn, bint *bm) except -1:
    """Row stride of the uniform view of a (T, N, F) sequence (raises ValueError)."""
    if shape[0] != T or shape[1] != N or shape[2] != F:
        raise ValueError(f"{name}: expected shape {(T, N, F)}, got {(shape[0], shape[1], shape[2])}")
    if F > 1 and strides[2] != isz:
        raise ValueError(f"{name}: the feature axis must be contiguous")
    st[0] = strides[0] // isz
    sn[0] = strides[1] // isz
    cdef Py_ssize_t ld = seq_ld(st[0], sn[0], T, N, F, bm)
    if ld < 0 or st[0] < 0 or sn[0] < 0:
        raise ValueError(f"{name}: layout is neither time-major nor batch-major")
    return ld


cdef int mat_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz, str name,
                   Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t *ld, bint *tr) except -1:
    """BLAS (ld, trans) of a (rows, cols) matrix (raises ValueError)."""
    if shape[0] != rows or shape[1] != cols:
        raise ValueError(f"{name}: expected shape {(rows, cols)}, got {(shape[0], shape[1])}")
    if not mat_layout(strides[0] // isz, strides[1] // isz, rows, cols, ld, tr):
        raise ValueError(f"{name}: needs a row-major array or a transposed view of one")
    return 0


cdef int rows_check(Py_ssize_t[8] shape, Py_ssize_t[8] strides, Py_ssize_t isz, str name,
                    Py_ssize_t rows, Py_ssize_t cols) except -1:
    """A C-contiguous (rows, cols) state array."""
    if shape[0] != rows or shape[1] != cols or (cols > 1 and strides[1] != isz) \
            or (rows > 1 and strides[0] != cols * isz):
        raise ValueError(f"{name}: expected a C-contiguous array of shape {(rows, cols)}")
    return 0


def check_batch_sizes(batch_sizes, Py_ssize_t T, Py_ssize_t N):
    """(array, used): batch_sizes as a contiguous intp array, validated."""
    if batch_sizes is None:
        return np.zeros(1, dtype=np.intp), False
    bs = np.ascontiguousarray(batch_sizes, dtype=np.intp)
    if bs.shape != (T,):
        raise ValueError(f"batch_sizes: expected shape {(T,)}, got {bs.shape}")
    if T and (bs.max() > N or bs.min() < 0 or np.any(np.diff(bs) > 0)):
        raise ValueError("batch_sizes: must be non-increasing values in [0, N]")
    return bs, True


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
    if x_bm != h_bm and T > 1 and N > 1:
        raise ValueError("x and h must share the same layout (time- or batch-major)")
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, H, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, H, &wh_ld, &wh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    if b.shape[0] != H or (H > 1 and b.strides[0] != isz):
        raise ValueError(f"b: expected a contiguous array of shape {(H,)}")
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used else NULL
    if T == 0 or N == 0 or H == 0:
        return
    cdef const floating *xp = &x[0, 0, 0] if D > 0 else NULL
    cdef const floating *wxp = &Wx[0, 0] if D > 0 else NULL
    with nogil:
        forward_loop(xp, x_ld, &h0[0, 0], H, wxp, wx_ld, wx_t,
                     &Wh[0, 0], wh_ld, wh_t, &b[0],
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
    if T > 1 and N > 1 and (x_bm != h_bm or x_bm != dx_bm):
        raise ValueError("x, h and dx must share the same layout (time- or batch-major)")
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, H, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, H, &wh_ld, &wh_t)
    mat_check(dWx.shape, dWx.strides, isz, "dWx", D, H, &dwx_ld, &dwx_t)
    mat_check(dWh.shape, dWh.strides, isz, "dWh", H, H, &dwh_ld, &dwh_t)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    rows_check(dhn.shape, dhn.strides, isz, "dhn", N, H)
    rows_check(dh0.shape, dh0.strides, isz, "dh0", N, H)
    if db.shape[0] != H or (H > 1 and db.strides[0] != isz):
        raise ValueError(f"db: expected a contiguous array of shape {(H,)}")
    bs_arr, used = check_batch_sizes(batch_sizes, T, N)
    cdef const Py_ssize_t[:] bs = bs_arr
    cdef const Py_ssize_t *bsp = &bs[0] if used else NULL
    cdef bint gather = reverse and used
    # workspaces: dz in h's layout kind (contiguous), dzs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    if h_bm:
        dz_arr = np.empty((N, T, H), dtype=dtype).transpose(1, 0, 2)
    else:
        dz_arr = np.empty((T, N, H), dtype=dtype)
    cdef floating[:, :, :] dz = dz_arr
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
    with nogil:
        backward_loop(&dh[0, 0, 0], dh_st, dh_sn, xp, x_ld, &h0[0, 0], H,
                      wxp, wx_ld, wx_t, &Wh[0, 0], wh_ld, wh_t,
                      &h[0, 0, 0], h_ld, h_st, h_sn,
                      &dz[0, 0, 0], dz_st, dz_sn, &dh0[0, 0],
                      dzsp,
                      dxp, dx_ld, dwxp, dwx_ld, dwx_t, &dWh[0, 0], dwh_ld, dwh_t, &db[0],
                      T, N, D, H, h_bm, bsp, relu, reverse)


# ----------------------------------------------------------------- single step
# The cells' and `step()`'s fast path: one time step, no batch_sizes, minimal
# Python overhead (dtype-specific entry points instead of fused dispatch).

cdef int step_impl(const floating[:, :] x, const floating[:, :] h0, const floating[:, :] Wx,
                   const floating[:, :] Wh, const floating[:] b, floating[:, :] h,
                   bint relu) except -1:
    cdef Py_ssize_t N = x.shape[0], D = x.shape[1], H = Wh.shape[0]
    cdef Py_ssize_t isz = sizeof(floating), wx_ld, wh_ld
    cdef bint wx_t, wh_t
    mat_check(Wx.shape, Wx.strides, isz, "Wx", D, H, &wx_ld, &wx_t)
    mat_check(Wh.shape, Wh.strides, isz, "Wh", H, H, &wh_ld, &wh_t)
    rows_check(x.shape, x.strides, isz, "x", N, D)
    rows_check(h0.shape, h0.strides, isz, "h0", N, H)
    rows_check(h.shape, h.strides, isz, "h", N, H)
    if b.shape[0] != H or (H > 1 and b.strides[0] != isz):
        raise ValueError(f"b: expected a contiguous array of shape {(H,)}")
    if N == 0 or H == 0:
        return 0
    with nogil:
        forward_loop(&x[0, 0] if D > 0 else NULL, D, &h0[0, 0], H,
                     &Wx[0, 0] if D > 0 else NULL, wx_ld, wx_t, &Wh[0, 0], wh_ld, wh_t,
                     &b[0], &h[0, 0], H, N * H, H, 1, N, D, H, NULL, relu, False)
    return 0


def step_f32(const float[:, :] x, const float[:, :] h0, const float[:, :] Wx,
             const float[:, :] Wh, const float[:] b, float[:, :] h, bint relu=False):
    """One float32 step: h = act(x Wx + h0 Wh + b); x (N, D), h0 and h (N, H) C-contiguous."""
    step_impl(x, h0, Wx, Wh, b, h, relu)


def step_f64(const double[:, :] x, const double[:, :] h0, const double[:, :] Wx,
             const double[:, :] Wh, const double[:] b, double[:, :] h, bint relu=False):
    """One float64 step; as `step_f32`."""
    step_impl(x, h0, Wx, Wh, b, h, relu)
