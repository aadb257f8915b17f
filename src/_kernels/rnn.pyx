"""Vanilla (Elman) RNN kernel: one layer, one direction, all T steps in one call.

Equations (Elman 1990; cs231n's `rnn_step_forward`)::

    h_t = act(x_t Wx + h_{t-1} Wh + b),      act = tanh | relu

Forward
    H = X Wx                      one GEMM over all T*N rows, into the output
    per step t:  H_t += H_prev Wh one GEMM         (N, H) += (N, H)(H, H)
                 H_t = act(H_t + b)  one fused vectorized pass (rc_rnn.h)
Backward (BPTT)
    per step t (reverse order):  dZ_t = (dH_t + carry) * act'(H_t)
                                 carry = dZ_t Wh^T
    after the loop:              dX = dZ Wx^T,  dWx += X^T dZ,
                                 dWh += H_prev^T dZ,  db += sum dZ
Fused loops (rc_fuse_input, rc_step_input_grad in rc_gemm_packed.h: a packed
loop of at least 8 rows whose stacked weight fits the caches; on Intel CPUs, below
32 rows, at most N x 160 KiB) multiply by Wx
in their steps instead: forward H_t = [x_t | H_prev] [Wx; Wh], one product on
[Wx; Wh] packed once (no all-steps GEMM for the loop to re-read out of cache);
backward dX_t = dZ_t Wx^T while dZ_t is in the cache, on Wx^T packed once.

Design notes
------------
* Sequences are (T, N, F) arrays with a contiguous last axis: time-major data as
  is, batch-major (N, T, F) data as its transposed view (see _layout.pxd).
  ``x`` and ``h`` (and ``dx``) must share the same kind of layout.
* Weights are (D, H) / (H, H) operands, row-major or a transposed view of a
  row-major array (PyTorch's (H, D) ``weight_ih`` passed as ``weight_ih.T``):
  the kernel passes BLAS the transpose flag, never copies. The exceptions, for
  the per-step products of a loop of T >= 2 steps (see step_weight, _gemm.pxd),
  instead of BLAS packing the weight on every step: on a CPU with AVX2+FMA or
  AVX-512, ``Wh`` (forward) or ``Wh^T`` (backward) is packed once for all
  steps for the packed kernel (rc_gemm_packed.h); elsewhere forward makes one
  C-ordered copy of a transposed ``Wh`` when the products go to the panel
  kernel.
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
* The time loop, its row split over threads and the all-steps GEMMs around
  it are shared with the other cells (_loop.pxd); this file holds the RNN's
  per-step bodies (``fwd_steps``, ``bwd_steps``) and entry points.
"""
from libc.stdlib cimport malloc, free

from _cpu cimport require_simd
import numpy as np

from _blas cimport floating, transposed, scale_rows
from _gemm cimport (mm_step, step_weight, fused_weight, fuse_input, packs_step_weight,
                    packed_nr, set_packing, infer_chunk, input_grad_weight, step_input_grad,
                    set_pack_par, pack_par_count, set_dw, set_dw_inplace, dw_inplace_count, dw_count,
                    set_dw_workspace, dw_workspace_count, RC_PACK_PAR_BYTES,
                    aligned_rows)
from _layout cimport uniform
from _threads cimport blas_thread_hooks, row_threads, share, single_open, single_close
from _loop cimport (Loop, Input, Grads, loop_rows, forward_loop, backward_loop, step_product,
                   dw_reserve,
                   input_grad, zero_start)
from _checks cimport (seq_check, same_layout, vec_check, check_batch_sizes, batch_ptr,
                      seq_empty, check_inputs, check_grads, copy_rows)
from _step cimport StepBufs, step_init, step_cell_bufs, step_release, step_loop

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef extern from "rc_rnn.h" nogil:
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
# The bodies run by _loop.pxd's run_loop over one share of the rows (all of
# them, or rows k, k+P, ... on a thread); active rows stay a prefix.

cdef void fwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.h (holding x_t Wx on entry), L.h0, L.wh, L.b, L.relu.
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t h_st = L.h.st, h_sn = L.h.sn, h0_ld = L.P * H
    cdef floating *h = <floating *>L.h.p
    cdef const floating *h0 = <const floating *>L.h0
    cdef floating *ht
    for i in range(L.T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from h0 here
        loop_rows(L, i, False, &t, &tp, &B, &Bc)
        ht = h + t * h_st
        # (a fused loop: h_t[rows] = [x_t | h_prev] @ [Wx; Wh], step_product)
        if Bc > 0:
            # h_t[:Bc] += h_tp[:Bc] @ Wh        (Bc, H) += (Bc, H)(H, H)
            step_product(L, t, 0, Bc, H, h + tp * h_st, h_sn, ht, h_sn)
        if B > Bc:
            # h_t[Bc:B] += h0[Bc:B] @ Wh        (B-Bc, H) += (B-Bc, H)(H, H)
            step_product(L, t, Bc, B - Bc, H, h0 + Bc * h0_ld, h0_ld, ht + Bc * h_sn, h_sn,
                         0, True)
        # h_t[:B] = act(h_t[:B] + b)
        act_rows(ht, h_sn, <const floating *>L.b, B, H, L.relu)
        if B < M:
            # padding: h_t[B:] = 0
            scale_rows(ht + B * h_sn, h_sn, M - B, H, <floating>0)


cdef void bwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.dh, L.h, L.wh, L.relu; writes dz (L.dg) and the carry (N, H).
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, M = share(L.N, L.k, L.P), ldc = L.cld * H
    cdef Py_ssize_t dz_sn = L.dg.sn
    cdef const floating *dh = <const floating *>L.dh.p
    cdef const floating *h = <const floating *>L.h.p
    cdef floating *dz = <floating *>L.dg.p
    cdef floating *carry = <floating *>L.carry
    cdef floating *dzt
    for i in range(L.T):
        loop_rows(L, i, True, &t, &tp, &B, &Bc)
        dzt = dz + t * L.dg.st
        # dz_t[:B] = (dh_t[:B] + carry[:B]) * act'(h_t[:B])
        dz_rows(dzt, dz_sn, dh + t * L.dh.st, L.dh.sn, carry, ldc, h + t * L.h.st, L.h.sn, B, H,
                L.relu)
        if B < M:
            scale_rows(dzt + B * dz_sn, dz_sn, M - B, H, <floating>0)
        # carry[:B] = dz_t[:B] @ Wh^T            (B, H) = (B, H)(H, H)^T
        mm_step(B, H, H, dzt, dz_sn, transposed(L.wh), <floating>0, carry, ldc)
        if L.wxt.nr > 0:
            # dx_t[:B] = dz_t[:B] @ Wx^T; dx_t[B:] = 0
            input_grad(L, t, 0, B, M, kind)


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
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0]
    cdef Loop L
    cdef Input inp
    check_inputs(&L, &inp, 1, reverse, x, h, Wx, Wh, h0)
    same_layout(&inp.x, &L.h, NULL, T, N, inp.D)
    vec_check(b, "b", H)
    bs = check_batch_sizes(batch_sizes, T, N)
    if T == 0 or N == 0 or H == 0:
        return
    L.bs = batch_ptr(bs)
    L.relu = relu
    L.b = &b[0]
    L.g = L.h       # the input projection goes into h
    keep = fused_weight(Wx, Wh, &L.wxh, &L.wh, T, N, H, H,
                        fuse_input(T, N, inp.D, H, H, sizeof(floating)))
    L.h0_zero = zero_start(h0, Wh, T)    # the first step's h0 Wh left out (step_product)
    with nogil:
        forward_loop(&L, &inp, fwd_steps[float], fwd_steps[double], <floating>0)


def backward(const floating[:, :, :] dh, const floating[:, :] dhn,
             const floating[:, :, :] x, const floating[:, :] h0,
             const floating[:, :] Wx, const floating[:, :] Wh, const floating[:, :, :] h,
             floating[:, :, :] dx, floating[:, :] dh0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] db,
             bint relu=False, bint reverse=False, batch_sizes=None):
    """BPTT through one RNN layer and direction.

    Writes ``dx`` (T, N, D, same layout kind as x; None: no input gradient, its
    products skipped) and ``dh0`` (N, H), and ADDS the weight gradients into ``dWx``
    (D, H), ``dWh`` (H, H), ``db`` (H,). ``dh`` (T, N, H) is the upstream gradient
    of every output, ``dhn`` (N, H) the gradient of the final state (each row's
    state after its last valid step; in the reverse direction, after t = 0).
    Arguments as in `forward`.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0]
    cdef Loop L
    cdef Input inp
    cdef Grads gr
    check_inputs(&L, &inp, 1, reverse, x, h, Wx, Wh, h0)
    check_grads(&L, &inp, &gr, dh, dx, dWx, dWh, dhn, dh0)
    vec_check(db, "db", H)
    bs = check_batch_sizes(batch_sizes, T, N)
    # workspaces: dz in h's layout kind (contiguous), dzs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :] dz = seq_empty(L.h.bm, T, N, H, dtype, True)
    cdef floating[:, :] dzs = aligned_rows(N if reverse and bs is not None else 0, H, dtype)
    if N == 0 or H == 0:
        if inp.D > 0 and N > 0 and dx is not None:
            np.asarray(dx)[...] = 0
        return
    copy_rows(dh0, dhn)     # the carry starts as dh_n
    if T == 0:
        return
    L.bs = batch_ptr(bs)
    L.relu = relu
    seq_check(dz, "dz", T, N, H, &L.dg)
    gr.db = &db[0]
    gr.dbh = NULL
    gr.dzs = &dzs[0, 0] if dzs.shape[0] > 0 else NULL
    keep = step_weight(Wh, &L.wh, T, N, H, H, True)
    # Wx^T packed for dx_t = dz_t Wx^T in the steps, or dx after the loop
    keep_x = input_grad_weight(Wx, &L.wxt, T, N, H) if dx is not None else None
    # weight_grads' memory from the workspace cache
    keep_dw = dw_reserve(&L, &inp, &gr, <floating>0)
    with nogil:
        backward_loop(&L, &inp, &gr, bwd_steps[float], bwd_steps[double], <floating>0)


# ----------------------------------------------------------------- single step
# The cells' fast path: one time step on PyTorch-layout parameters, arrays taken
# through the buffer protocol (see step_buf in _step.pxd).

cdef int step_run(void **p, Py_ssize_t N, Py_ssize_t D, Py_ssize_t H, bint relu,
                  floating kind) noexcept nogil:
    # p as step_cell_bufs acquired it: [x, h0, h, w_ih, w_hh, b_ih, b_hh]
    cdef Loop L
    cdef Input inp
    cdef Py_ssize_t j
    cdef const floating *bih = <const floating *>p[5]
    cdef const floating *bhh = <const floating *>p[6]
    cdef floating *b = <floating *>malloc(H * sizeof(floating))
    if b == NULL:
        return -1
    for j in range(H):
        b[j] = bih[j] + bhh[j]
    step_loop(&L, &inp, p, N, D, H, 1, floating is double)
    L.b = b
    L.g = L.h
    L.relu = relu
    forward_loop(&L, &inp, fwd_steps[float], fwd_steps[double], kind)
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
            rc = step_run(p, N, D, H, relu, <float>0)
        else:
            rc = step_run(p, N, D, H, relu, <double>0)
    step_release(&B)
    if rc:
        raise MemoryError()
    return True


def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_threads.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)


def _set_packing(bint enabled, int fuse=1):
    """Test hook: time loops pack their weight when the policy says so (True, the
    default) or never (False: the panel kernel and BLAS paths), in this module; loops
    multiply by Wx in their steps (forward x_t Wx, rc_fuse_input; backward dx_t =
    dA_t Wx^T, rc_step_input_grad) by their rule (`fuse` 1, the default), never (0,
    or False) or whenever the loop packs, whatever its rows and weight size (2:
    bench/fusing_ab.py --forced)."""
    set_packing(enabled, fuse)


def _row_threads(Py_ssize_t N, long long work, Py_ssize_t T):
    """How many threads a time loop of T steps, N rows, `work` multiply-adds per step uses
    (with its weight packed when step_weight would pack it)."""
    return row_threads(N, work, T, packs_step_weight(T, work))


def _packs_step_weight(Py_ssize_t N, Py_ssize_t n, Py_ssize_t k, Py_ssize_t T):
    """Whether a time loop of T steps over N rows packs its (k, n) per-step operand
    once and multiplies on the packed kernel (rc_gemm_packed.h), as step_weight decides."""
    return N > 0 and n > 0 and k > 0 and packs_step_weight(T, N * n * k)


def _infer_chunk(Py_ssize_t T, Py_ssize_t N, Py_ssize_t GH, Py_ssize_t D,
                 dtype=np.float32):
    """Steps per chunk of the input projection of a GRU or LSTM inference loop (nothing
    saved, x_t Wx not in the steps) of T steps, N rows, GH gate columns and D inputs;
    0: all T at once (rc_infer_chunk; in this module's copy of the hook)."""
    return infer_chunk(T, N, GH, D, np.dtype(dtype).itemsize)


def _steps_input_grad(Py_ssize_t N, Py_ssize_t D, Py_ssize_t Hp, Py_ssize_t GH, Py_ssize_t T,
                      dtype=np.float32):
    """Whether a backward loop of T steps, N rows, D inputs, gates GH wide and a
    recurrent width Hp computes dx_t = dA_t Wx^T in its steps, as input_grad_weight
    decides (rc_step_input_grad)."""
    return step_input_grad(T, N, D, Hp, GH, np.dtype(dtype).itemsize)


def _packed_layout():
    """Whether this CPU has a packed layout (AVX2+FMA or AVX-512): then time loops of
    T >= 2 steps never switch BLAS's process-wide thread count (see _loop.pxd: run_loop)."""
    return packed_nr(sizeof(float)) > 0


def _single_thread_open():
    """Open a single-thread section (see rc_threads.h); returns the token for the close."""
    return single_open()


def _single_thread_close(int opened):
    """Close a section opened by `_single_thread_open`."""
    single_close(opened)


include "_pack_hooks.pxi"
