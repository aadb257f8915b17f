"""LSTM kernel: one layer, one direction, all T steps in one call.

Equations (Hochreiter & Schmidhuber 1997, with the forget gate, as written by
Graves 2013 without peepholes and as PyTorch's ``nn.LSTM`` computes it; gates
i, f, g, o along the 4H axis; one bias ``b = b_ih + b_hh``)::

    [a_i, a_f, a_g, a_o] = x_t Wx + h_{t-1} Wh + b
    i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)

Forward
    A = X Wx                      one GEMM over all T*N rows, into `gates`
    per step t:  A_t += H_prev Wh one GEMM             (N, 4H) += (N, H)(H, 4H)
                 gates, c_t, h_t  one fused vectorized pass (rc_lstm_fwd_*, rc_lstm.h):
                                  bias add, the four activations, the cell
                                  update, tanh(c_t), stores
Backward (BPTT)
    per step t (reverse order):  dA_t, dc carry    one fused pass (rc_lstm_bwd_*, rc_lstm.h)
                                 dh carry = dA_t Wh^T   one GEMM
    after the loop:              dX = dA Wx^T,  dWx += X^T dA,
                                 dWh += H_prev^T dA (shifted pairs),  db += sum dA
Fused loops (rc_fuse_input, rc_step_input_grad in rc_gemm_packed.h: a packed
loop of at least 8 rows whose stacked weight fits the caches; on Intel CPUs, below
32 rows, at most N x 160 KiB) multiply by Wx
in their steps instead: forward A_t = [x_t | h_prev] [Wx; Wh], one product on
[Wx; Wh] packed once (no all-steps GEMM for the loop to re-read out of cache);
backward dX_t = dA_t Wx^T while dA_t is in the cache, on Wx^T packed once. A
fused forward that saves nothing (``save=False``: inference) reuses one step's
(N, 4H) gates for all T steps; an unfused one that would need more than 16 MB
for all steps' x Wx computes it a chunk of steps at a time (_loop.pxd:
chunk_input; with its units split, each block its columns: block_input).

Saved for backward (``LSTMSaved``): ``gates`` (T, N, 4H), the activations
[i | f | g | o] of every step. Together with the cell states ``c`` (T, N, H),
an output of `forward` that the caller passes back, this is all BPTT needs;
tanh(c_t) is recomputed in the backward pass (one tanh per element is cheaper
than storing and re-reading another (T, N, H) array).

Design notes
------------
* Layouts as in rnn.pyx: sequences are (T, N, F) arrays with a contiguous
  last axis, time-major as is or batch-major as the transposed view of an
  (N, T, F) array (see _layout.pxd). ``x``, ``h`` and ``dx`` share one layout
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
* The time loop, its row split over threads and the all-steps GEMMs around
  it are shared with the other cells (_loop.pxd); this file holds the LSTM's
  per-step bodies (``fwd_steps``, ``bwd_steps``) and entry points.
* Unit split (``fwd_units``, ``bwd_units``; policy, schedule and measurements
  in rc_threads.h): instead of splitting the batch rows, the threads share the
  hidden units, in blocks holding all four gates' columns for their units, each
  with its slice of the packed Wh (weight-stationary: Zhang et al., "DeepCPU",
  USENIX ATC 2018; oneDNN's RNN splits the cell GEMM over column blocks alike).
  A step's h_t (backward: dA_t) must be complete before the next product reads
  it, so threads claim the blocks step by step: all their own at once, then any
  another thread has not reached (it is behind or descheduled). Each element is
  the same packed-kernel dot product as in the row loops: the results are
  bitwise those of the row split and of one thread. By default (the shape rule)
  only a forward whose recurrent weight takes at least 12 MiB (float32 H >= 887)
  splits its units (not on the AVX2 layout), and any loop, forward or backward, of
  fewer than 8 rows (too few for the row split) from 16 steps and a 256 KiB weight; inference there computes its input projection in chunks of
  steps as the row loops do, each block its own columns (``block_input``);
  `_set_unit_split` forces it on or off; on Intel CPUs the rule also asks that
  no thread get 16 rows or more (`_unit_rows`, `_set_intel_rules`).
"""
from libc.stdlib cimport malloc, free

from collections import namedtuple

from _cpu cimport require_simd
import numpy as np

from _blas cimport floating, Mat, mat, transposed, scale_rows, NoTrans, Trans

from _gemm cimport (mm, mm_step, step_weight, fused_weight, fuse_input, set_packing, set_chunk,
                    packs_step_weight, packs_stacked, packed_nr, packed_size, pack_blocks,
                    input_grad_weight, aligned_empty, aligned_rows, set_pack_par, pack_par_count,
                    set_dw, set_dw_inplace, dw_inplace_count, dw_count,
                    set_dw_workspace, dw_workspace_count, RC_PACK_PAR_BYTES)
from _buffer cimport array_data
from _layout cimport uniform
from _threads cimport (blas_thread_hooks, share, rc_units, units_init, units_wait, units_claim,
                       units_done, unit_threads, set_unit_split, unit_rows,
                       RC_UNITS_MAX_BLOCKS)
from _loop cimport (Loop, Input, Grads, loop_rows, forward_loop, backward_loop, step_product,
                   dw_reserve,
                   chunk_start, chunk_input, zero_start,
                   input_grad, MAX_TASKS)
from _checks cimport (seq_check, running_seq, same_layout, mat_check, rows_check, vec_check,
                      check_batch_sizes,
                      batch_ptr, seq_empty, one_step, chunk_buffers, workspace, check_inputs,
                      check_grads, copy_rows)
from _pass cimport (rc_pass, run_pass, pass_at, rows_at, state_rows, RC_PASS_FWD, RC_PASS_BWD,
                   RC_PASS_BWD_IP)
from _step cimport (StepBufs, step_init, step_buf, step_cell_bufs, step_release, step_loop,
                    contiguous)

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef extern from "rc_lstm.h" nogil:
    enum: RC_LSTM_GATES
    # the fused passes (rc_lstm_fwd_*, rc_lstm_bwd_*, rc_lstm_bwd_ip_*) by kind and dtype
    void rc_lstm_pass(int kind, int f64, const rc_pass *st, Py_ssize_t rows, Py_ssize_t H)
    # the same on a block of H units of each gate, the gates GS apart (unit split)
    void rc_lstm_pass_u(int kind, int f64, const rc_pass *st, Py_ssize_t rows, Py_ssize_t H,
                        Py_ssize_t GS)

#: What `forward` saves for `backward`: the gate activations (T, N, 4H); with a
#: projection also m = o ⊙ tanh(c) (T, N, H) (LSTMProjSaved).
LSTMSaved = namedtuple("LSTMSaved", ["gates"])
LSTMProjSaved = namedtuple("LSTMProjSaved", ["gates", "m"])


# ----------------------------------------------------------------- time loops
# The bodies run by _loop.pxd's run_loop over one share of the rows (all of
# them, or rows k, k+P, ... on a thread); active rows stay a prefix.

cdef inline void lstm_pass(const Loop *L, bint backward, Py_ssize_t t, Py_ssize_t r0,
                           Py_ssize_t rows, const void *cp, Py_ssize_t ldcp) noexcept nogil:
    # The fused pass over rows [r0, r0 + rows) of step t from c_prev = cp. With a
    # projection it writes o tanh(c_t) into L.m (forward) and reads its gradient
    # from the scratch S[:, :H] with a zero carry S[:, H:2H] (backward).
    cdef rc_pass st
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    cdef Py_ssize_t lds = L.sld
    if L.wr.p == NULL:
        run_pass(L, rc_lstm_pass, backward, L.c, t, r0, rows, cp, ldcp)
        return
    pass_at(L, L.c, t, r0, cp, ldcp, &st)
    st.h = rows_at(L.m, t, r0, isz)
    st.dh = state_rows(L.scratch, r0, lds, isz)
    st.carry = state_rows(<char *>L.scratch + L.H * isz, r0, lds, isz)
    rc_lstm_pass(RC_PASS_FWD if not backward else (
        RC_PASS_BWD_IP if L.dg.p == L.g.p else RC_PASS_BWD), L.f64, &st, rows, L.H)


cdef inline void fwd_rows(const Loop *L, Py_ssize_t t, Py_ssize_t r0, Py_ssize_t rows,
                          const floating *hp, Py_ssize_t ldhp, const floating *cp,
                          Py_ssize_t ldcp, bint from_h0=False) noexcept nogil:
    # Step t for rows [r0, r0 + rows) from (h_prev, c_prev) = (hp, cp) (from_h0: h0's).
    cdef Py_ssize_t H = L.H, GH = RC_LSTM_GATES * H, Hp = L.Hp
    cdef floating *at = <floating *>L.g.p + t * L.g.st + r0 * L.g.sn
    # A_t[rows] += h_prev @ Wh               (rows, 4H) += (rows, Hp)(Hp, 4H)
    # (a fused loop: A_t[rows] = [x_t | h_prev] @ [Wx; Wh], step_product)
    step_product(L, t, r0, rows, GH, hp, ldhp, at, L.g.sn, 0, from_h0)
    # fused (rc_lstm_fwd_*): [i, f, g, o] = σ, σ, tanh, σ of (A_t + b);
    #   c_t = f c_prev + i g;  h_t = o tanh(c_t)  (with a projection: m_t)
    lstm_pass(L, False, t, r0, rows, cp, ldcp)
    if L.wr.p != NULL:
        # h_t[rows] = m_t[rows] @ Wr         (rows, Hp) = (rows, H)(H, Hp)
        mm_step(rows, Hp, H, <floating *>L.m.p + t * L.m.st + r0 * L.m.sn, L.m.sn, L.wr,
                <floating>0, <floating *>L.h.p + t * L.h.st + r0 * L.h.sn, L.h.sn)


cdef void fwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.g (holding x_t Wx on entry), L.h0, L.c0, L.wh, L.b (and L.wr);
    # writes L.h, the cell states L.c, the gate activations L.g (and L.m).
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = RC_LSTM_GATES * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t s0_ld = L.P * H, h0_ld = L.P * L.Hp, h_st = L.h.st, h_sn = L.h.sn
    cdef const floating *h0 = <const floating *>L.h0
    cdef const floating *c0 = <const floating *>L.c0
    cdef const floating *c = <const floating *>L.c.p
    cdef floating *h = <floating *>L.h.p
    for i in range(L.T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from (h0, c0) here
        loop_rows(L, i, False, &t, &tp, &B, &Bc)
        # inference in chunks: at a chunk's start, its steps' x Wx for this share
        chunk_input(L, i, 0, kind)
        if Bc > 0:
            fwd_rows(L, t, 0, Bc, h + tp * h_st, h_sn, c + tp * L.c.st, L.c.sn)
        if B > Bc:
            fwd_rows(L, t, Bc, B - Bc, h0 + Bc * h0_ld, h0_ld, c0 + Bc * s0_ld, s0_ld, True)
        if B < M:
            # padding: h_t[B:] = c_t[B:] = 0 (and no stale projections in the saved gates);
            # a running c (step stride 0, inference) keeps its finished rows' last states
            scale_rows(h + t * h_st + B * h_sn, h_sn, M - B, L.Hp, <floating>0)
            if L.c.st != 0:
                scale_rows(<floating *>L.c.p + t * L.c.st + B * L.c.sn, L.c.sn, M - B, H,
                           <floating>0)
            scale_rows(<floating *>L.g.p + t * L.g.st + B * L.g.sn, L.g.sn, M - B, GH,
                       <floating>0)
            if L.m.p != NULL:
                scale_rows(<floating *>L.m.p + t * L.m.st + B * L.m.sn, L.m.sn, M - B, H,
                           <floating>0)


cdef inline void proj_grad(const Loop *L, Py_ssize_t t, Py_ssize_t B,
                           floating kind) noexcept nogil:
    # With a projection: the gradient of m_t = o tanh(c_t) for rows [0, B).
    cdef Py_ssize_t j, q, Hp = L.Hp, ldc = L.cld * Hp
    cdef floating *e = <floating *>L.dht.p + t * L.dht.st
    cdef const floating *dh = <const floating *>L.dh.p + t * L.dh.st
    cdef const floating *cy = <const floating *>L.carry
    # E_t[:B] = dh_t[:B] + carry[:B]          (B, Hp): the whole gradient of h_t
    for q in range(B):
        for j in range(Hp):
            e[q * L.dht.sn + j] = dh[q * L.dh.sn + j] + cy[q * ldc + j]
    # S[:B, :H] = E_t[:B] @ Wr^T              (B, H) = (B, Hp)(H, Hp)^T
    mm_step(B, L.H, Hp, e, L.dht.sn, transposed(L.wr), <floating>0, <floating *>L.scratch,
            L.sld)


cdef void bwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.dh, L.c, L.c0, L.wh and the saved gates L.g; writes dA (L.dg) and
    # the carries (N, Hp), (N, H) (with a projection also E (L.dht), via the
    # scratch S).
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = RC_LSTM_GATES * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t ld0 = L.P * H, dg_sn = L.dg.sn   # c0's rows in this share
    cdef const floating *c = <const floating *>L.c.p
    cdef const floating *c0 = <const floating *>L.c0
    cdef floating *dgt
    for i in range(L.T):
        loop_rows(L, i, True, &t, &tp, &B, &Bc)
        dgt = <floating *>L.dg.p + t * L.dg.st
        if L.wr.p != NULL:
            proj_grad(L, t, B, kind)
        # fused (rc_lstm_bwd_*), from d = dh_t + carry_h (projection: S), the gates, c_t, c_prev:
        #   dc = carry_c + d o (1 - tanh²c_t);  carry_c = dc f
        #   dA_t = [dc g i(1-i) | dc c_prev f(1-f) | dc i (1-g²) | d tanh(c_t) o(1-o)]
        # (in place when dA is the saved gates: overwrite_saved)
        if Bc > 0:
            lstm_pass(L, True, t, 0, Bc, c + tp * L.c.st, L.c.sn)
        if B > Bc:
            lstm_pass(L, True, t, Bc, B - Bc, c0 + Bc * ld0, ld0)
        if B < M:
            scale_rows(dgt + B * dg_sn, dg_sn, M - B, GH, <floating>0)
            if L.dht.p != NULL:
                scale_rows(<floating *>L.dht.p + t * L.dht.st + B * L.dht.sn, L.dht.sn,
                           M - B, L.Hp, <floating>0)
        # carry_h[:B] = dA_t[:B] @ Wh^T          (B, Hp) = (B, 4H)(Hp, 4H)^T
        mm_step(B, L.Hp, GH, dgt, dg_sn, transposed(L.wh), <floating>0, <floating *>L.carry,
                L.cld * L.Hp)
        if L.wxt.nr > 0:
            # dx_t[:B] = dA_t[:B] @ Wx^T; dx_t[B:] = 0
            input_grad(L, t, 0, B, M, kind)


# ----------------------------------------------------------------- unit split
# The weight-stationary time loops (rc_threads.h: rc_unit_threads, rc_units_*):
# the hidden units in blocks; a block's task runs every row for its units of all
# four gates with its slice of the packed weight (forward: Wh[:, q*H + u0 :
# q*H + u1] for q = i, f, g, o, each packed from a panel boundary, ws elements
# apart; backward: Wh^T[:, u0:u1], (4H, U)). Forward: one phase per step (the
# gates' product and the fused pass); backward: two (the fused pass; then the dh
# carry, which reads all of dA_t).

cdef inline void unit_pass(const Loop *L, bint backward, Py_ssize_t t, Py_ssize_t r0,
                           Py_ssize_t rows, const void *cp, Py_ssize_t ldcp, Py_ssize_t u0,
                           Py_ssize_t U) noexcept nogil:
    # The fused pass over rows [r0, r0 + rows) of step t, units [u0, u0 + U) only.
    cdef rc_pass st
    cdef Py_ssize_t off = u0 * (sizeof(double) if L.f64 else sizeof(float))
    cdef int kind = RC_PASS_FWD
    if backward:
        kind = RC_PASS_BWD_IP if L.dg.p == L.g.p else RC_PASS_BWD
    pass_at(L, L.c, t, r0, cp, ldcp, &st)
    st.g.p = <char *>st.g.p + off
    st.s.p = <char *>st.s.p + off
    st.prev.p = <char *>st.prev.p + off
    if st.h.p != NULL:
        st.h.p = <char *>st.h.p + off
    if L.b == NULL:     # (an if, not a conditional expression: Cython's temporary drops const)
        st.b = NULL
    else:
        st.b = <const char *>L.b + off
    if backward:
        st.dg.p = <char *>st.dg.p + off
        st.dh.p = <char *>st.dh.p + off
        st.carry.p = <char *>st.carry.p + off
        st.carry_c.p = <char *>st.carry_c.p + off
    rc_lstm_pass_u(kind, L.f64, &st, rows, U, L.H)


cdef inline void zero_units(floating *p, Py_ssize_t ld, Py_ssize_t rows, Py_ssize_t G,
                            Py_ssize_t H, Py_ssize_t u0, Py_ssize_t U) noexcept nogil:
    # rows of (.., G*H) arrays: columns [q*H + u0, q*H + u0 + U) of each of G blocks := 0
    cdef Py_ssize_t q
    for q in range(G):
        scale_rows(p + q * H + u0, ld, rows, U, <floating>0)


cdef inline void fwd_block(const Loop *L, rc_units *u, int blk, Py_ssize_t t, Py_ssize_t tp,
                           Py_ssize_t B, Py_ssize_t Bc, floating kind) noexcept nogil:
    # Step t for the units of block blk, every active row
    cdef Py_ssize_t q, H = L.H, N = L.N, u0 = u.ub[blk], U = u.ub[blk + 1] - u.ub[blk]
    cdef Py_ssize_t h_st = L.h.st, h_sn = L.h.sn, g_sn = L.g.sn
    cdef const floating *h0 = <const floating *>L.h0
    cdef const floating *c0 = <const floating *>L.c0
    cdef floating *h = <floating *>L.h.p
    cdef floating *at = <floating *>L.g.p + t * L.g.st
    cdef Py_ssize_t off
    for q in range(RC_LSTM_GATES):
        # A_t[:, gate q, units] += h_prev @ Wh[:, gate q, units]     (B, U) += (B, H)(H, U)
        # (fused, L.wxh.nr > 0: the slices are of [Wx; Wh], and
        #  A_t[:, gate q, units] = [x_t | h_prev] @ [Wx; Wh][:, gate q, units])
        off = u.off[blk] + q * u.ws[blk]
        if Bc > 0:
            step_product(L, t, 0, Bc, U, h + tp * h_st, h_sn, at + q * H + u0, g_sn, off)
        if B > Bc:
            step_product(L, t, Bc, B - Bc, U, h0 + Bc * H, H, at + Bc * g_sn + q * H + u0,
                         g_sn, off, True)
    if Bc > 0:
        unit_pass(L, False, t, 0, Bc, <const floating *>L.c.p + tp * L.c.st, L.c.sn, u0, U)
    if B > Bc:
        unit_pass(L, False, t, Bc, B - Bc, c0 + Bc * H, H, u0, U)
    if B < N:
        zero_units(h + t * h_st + B * h_sn, h_sn, N - B, 1, H, u0, U)
        if L.c.st != 0:     # (a running c keeps its finished rows' last states)
            zero_units(<floating *>L.c.p + t * L.c.st + B * L.c.sn, L.c.sn, N - B, 1, H,
                       u0, U)
        zero_units(at + B * g_sn, g_sn, N - B, RC_LSTM_GATES, H, u0, U)


cdef inline void block_input(const Loop *L, rc_units *u, int blk, Py_ssize_t t0,
                             Py_ssize_t n, floating kind) noexcept nogil:
    # Inference in chunks (chunk_start): the chunk's input projection for the units of
    # block blk, by whichever share runs the block at the chunk's first step (before
    # its product; no other block reads these columns):
    #   A[t0:t0+n, :, gate q, units] = x[t0:t0+n] @ Wx[:, gate q, units]
    #                                  (n*N, U) = (n*N, D)(D, U)
    # on the first D rows of the block's packed [Wx; Wh] slices (L.wxh), its panels
    # reused by all n*N rows; a step at a time when x's steps are not N rows apart.
    cdef Py_ssize_t q, t, N = L.N, H = L.H, GH = RC_LSTM_GATES * H
    cdef Py_ssize_t u0 = u.ub[blk], U = u.ub[blk + 1] - u.ub[blk]
    cdef const floating *x = <const floating *>L.x.p + t0 * L.x.st
    cdef floating *a = <floating *>L.cbuf + u0
    cdef Mat w
    for q in range(RC_LSTM_GATES):
        w = L.wxh
        w.p = <floating *>w.p + u.off[blk] + q * u.ws[blk]
        if L.x.st == N * L.x.sn:
            mm_step(n * N, U, L.D, x, L.x.sn, w, <floating>0, a + q * H, GH)
        else:
            for t in range(n):
                mm_step(N, U, L.D, x + t * L.x.st, L.x.sn, w, <floating>0,
                        a + t * N * GH + q * H, GH)


cdef inline int own_blocks(const Loop *L, rc_units *u, int p) noexcept nogil:
    # claim this share's own blocks of phase p at once; the mask of those it got
    cdef int j, blk, mine = 0
    for j in range(L.nown):
        blk = (L.ublock + j) % u.nb
        if units_claim(u, blk, p):
            mine |= 1 << blk
    return mine


cdef void fwd_units(const Loop *L, floating kind) noexcept nogil:
    # fwd_steps by unit blocks: step i is phase i (it reads all of h_{i-1})
    cdef Py_ssize_t i, t, tp, B, Bc, n = 0, t0
    cdef int j, blk, mine
    cdef rc_units *u = <rc_units *>L.sched
    for i in range(L.T):
        loop_rows(L, i, False, &t, &tp, &B, &Bc)
        # inference in chunks: at a chunk's start, this share's L.g at the chunk buffer
        t0 = chunk_start(L, i, &n, kind)
        units_wait(u, <int>i)
        # this share's own blocks are claimed together before any runs: another
        # share takes one only when we have not yet reached this step
        mine = own_blocks(L, u, <int>i)
        for j in range(u.nb):
            blk = (L.ublock + j) % u.nb
            if (mine >> blk) & 1 or (j >= L.nown and units_claim(u, blk, <int>i)):
                if t0 >= 0:
                    block_input(L, u, blk, t0, n, kind)
                fwd_block(L, u, blk, t, tp, B, Bc, kind)
                units_done(u)


cdef void bwd_units(const Loop *L, floating kind) noexcept nogil:
    # bwd_steps by unit blocks: step i is phases 2i (the fused pass, block's units) and
    # 2i + 1 (carry_h[:, units] = dA_t @ Wh[units, :]^T (B, U) = (B, 4H)(4H, U): all of dA_t)
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, N = L.N, u0, U, dg_sn = L.dg.sn
    cdef int j, blk, p, mine
    cdef rc_units *u = <rc_units *>L.sched
    cdef const floating *c = <const floating *>L.c.p
    cdef const floating *c0 = <const floating *>L.c0
    cdef floating *dgt
    cdef Mat w = L.wh
    for i in range(L.T):
        loop_rows(L, i, True, &t, &tp, &B, &Bc)
        dgt = <floating *>L.dg.p + t * L.dg.st
        p = <int>(2 * i)
        units_wait(u, p)
        mine = own_blocks(L, u, p)
        for j in range(u.nb):
            blk = (L.ublock + j) % u.nb
            if (mine >> blk) & 1 or (j >= L.nown and units_claim(u, blk, p)):
                u0, U = u.ub[blk], u.ub[blk + 1] - u.ub[blk]
                if Bc > 0:
                    unit_pass(L, True, t, 0, Bc, c + tp * L.c.st, L.c.sn, u0, U)
                if B > Bc:
                    unit_pass(L, True, t, Bc, B - Bc, c0 + Bc * H, H, u0, U)
                if B < N:
                    zero_units(dgt + B * dg_sn, dg_sn, N - B, RC_LSTM_GATES, H, u0, U)
                units_done(u)
        units_wait(u, p + 1)
        mine = own_blocks(L, u, p + 1)
        for j in range(u.nb):
            blk = (L.ublock + j) % u.nb
            if (mine >> blk) & 1 or (j >= L.nown and units_claim(u, blk, p + 1)):
                w.p = <floating *>L.wh.p + u.off[blk]
                mm_step(B, u.ub[blk + 1] - u.ub[blk], RC_LSTM_GATES * H, dgt, dg_sn,
                        transposed(w), <floating>0, <floating *>L.carry + u.ub[blk], H)
                if L.wxt.nr > 0:
                    # this block's share of dx_t's rows (the last one: the padding too)
                    input_grad(L, t, B * blk // u.nb, B * (blk + 1) // u.nb - B * blk // u.nb,
                               N if blk == u.nb - 1 else 0, kind)
                units_done(u)


#: unit splits prepared: backward, forward, forward in chunks (_unit_split_counts)
cdef long long _split_counts[3]     # (a C static: zero at load)
#: test hook (_set_unit_claims): no share owns blocks, every block of every phase
#: goes to the first share to claim it
cdef bint _claim_all = False


cdef object unit_split(const floating[:, :] Wx, const floating[:, :] Wh, Loop *L,
                       Loop *tasks, rc_units *u, bint backward, bint fuse, int P=0,
                       bint pool=False):
    """Prepare a unit split of L's loop when rc_unit_threads says so: the shares in
    `tasks` (L.units, L.nu), the schedule `u` and the packed weight slices
    (returned: the caller keeps them alive); else None (L untouched). A forward
    loop fusing x_t Wx into its steps (`fuse`: the caller's rc_fuse_input, as for
    fused_weight) packs slices of [Wx; Wh] and sets L.wxh.nr (its products: fwd_block);
    so does inference in chunks (L.chunk > 0, chunk_buffers: block_input multiplies by
    the slices' first D rows, fwd_block by the rest, the tasks' L.wh).
    P > 0: the thread count the caller already took from unit_threads (decided once:
    the rule reads the BLAS thread count, which another thread may change); 0: ask it.
    `pool` (or `backward`): a training call's, the slices from the workspace cache."""
    import numpy as np
    cdef Py_ssize_t H = L.H, GH = RC_LSTM_GATES * H, nr = packed_nr(sizeof(floating))
    cdef Py_ssize_t q, chunk, U, ws, kdim, off, vec, isz = sizeof(floating), D = 0
    cdef int k, nb, b
    if L.wr.p != NULL or nr <= 0 or L.N <= 0 or H <= 0:
        return None
    if P <= 0:
        P = unit_threads(L.N, H, RC_LSTM_GATES, L.T, isz,
                         packs_step_weight(L.T, L.N * GH * H), backward)
    if P < 2:
        return None
    P = min(P, MAX_TASKS)
    if not backward and (fuse or L.chunk > 0):
        D = L.D
        L.wxh.nr = nr
    # two blocks per thread of whole vectors (nr / 2 elements) where H allows
    vec = nr // 2
    nb = min(2 * P, RC_UNITS_MAX_BLOCKS)
    chunk = (H + nb * vec - 1) // (nb * vec) * vec
    nb = min(nb, <int>((H + chunk - 1) // chunk))
    kdim = GH if backward else D + H
    units_init(u, nb)
    off = 0
    for b in range(nb + 1):
        u.ub[b] = min(H, b * chunk)
    for b in range(nb):
        ws = packed_size(kdim, u.ub[b + 1] - u.ub[b], nr)
        u.off[b], u.ws[b] = off, ws
        off += ws * (1 if backward else RC_LSTM_GATES)
    src = np.asarray(Wh)
    out = aligned_empty(off, src.dtype, pool or backward).reshape(-1, nr)
    for b in range(nb):
        u0, u1, o, ws = u.ub[b], u.ub[b + 1], u.off[b] // nr, u.ws[b] // nr
        if backward:
            pack_blocks[floating](src.T[:, u0:u1], out[o:o + ws], u1 - u0, ws, nr)
        else:
            for q in range(RC_LSTM_GATES):
                if D > 0:
                    pack_blocks[floating](Wx[:, q * H + u0:q * H + u1],
                                          out[o + q * ws:o + q * ws + ws], u1 - u0, ws, nr,
                                          kdim)
                pack_blocks[floating](src[:, q * H + u0:q * H + u1],
                                      out[o + q * ws + D:o + q * ws + ws], u1 - u0, ws, nr,
                                      kdim)
    cdef char *wp = <char *>array_data(out)
    for k in range(P):
        tasks[k] = L[0]
        tasks[k].units = NULL
        tasks[k].nu = 0
        tasks[k].sched = u
        tasks[k].ublock = k * nb // P
        tasks[k].nown = 0 if _claim_all else (k + 1) * nb // P - k * nb // P
        tasks[k].wh.p = wp
        tasks[k].wh.ld = kdim
        tasks[k].wh.t = Trans if backward else NoTrans
        tasks[k].wh.nr = nr
        if D > 0:
            tasks[k].wxh = tasks[k].wh      # the slices are of [Wx; Wh] (step_product)
            if not fuse:
                # chunks: x Wx on the slices' rows [0, D) (block_input), h_prev Wh on
                # rows [D, D + H) (step_product: a row block of a packed operand)
                tasks[k].wh.p = wp + D * nr * isz
        if backward:
            tasks[k].run_f, tasks[k].run_d = bwd_units[float], bwd_units[double]
        else:
            tasks[k].run_f, tasks[k].run_d = fwd_units[float], fwd_units[double]
    L.units, L.nu = tasks, P
    _split_counts[0 if backward else (2 if L.chunk > 0 else 1)] += 1
    return out


# ----------------------------------------------------------------- entry points
# Shapes and layouts are checked here, before `with nogil`; the loops above
# cannot fail. Strides come from the memoryviews (in bytes), never from copies.

def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] c0,
            const floating[:, :] Wx, const floating[:, :] Wh, const floating[:] b,
            floating[:, :, :] h, floating[:, :, :] c, bint reverse=False, batch_sizes=None,
            const floating[:, :] Wr=None, bint save=True):
    """Run one LSTM layer and direction over all T steps, writing ``h`` and ``c``.

    Parameters (logical shapes; layouts in the module docstring)
    ----------
    x : (T, N, D)   h0, c0 : (N, H) C-contiguous   Wx : (D, 4H)   Wh : (H, 4H)
    b : (4H,) contiguous, PyTorch's bias_ih + bias_hh
    h : (T, N, H) output, same layout kind as x
    c : (T, N, H) output, the cell states of all steps (zeros at padded positions);
        with ``save=False`` it may instead be a running state, a (T, N, H) view of
        one (N, H) array with step stride 0 (_checks.pxd: running_seq): updated in
        place, it ends holding each row's cell state after its last step
    reverse : run t = T-1 .. 0
    batch_sizes : (T,) non-increasing active-row counts (sorted batch), or None
    Wr : (H, P) or None: PyTorch's projection ``weight_hr.T`` (``proj_size`` P);
        then h0, h are (N, P), (T, N, P) and Wh is (P, 4H): h_t = (o ⊙ tanh(c_t)) Wr
    save : False when no `backward` follows (inference): the gates (and m) need
        not be kept -- a loop computing x_t Wx in its steps then reuses one
        step's (N, 4H) for all T, a long loop that does not computes x Wx a
        chunk of steps at a time into one (chunk, N, 4H) buffer (rc_infer_chunk)
        -- and None is returned

    Returns
    -------
    saved : LSTMSaved(gates), or with Wr LSTMProjSaved(gates, m); None if not `save`
        The gate activations (T, N, 4H) (and m = o ⊙ tanh(c) (T, N, H)), in h's
        layout kind; pass to `backward`.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1]
    cdef Py_ssize_t H = Wh.shape[0] if Wr is None else Wr.shape[0], GH = RC_LSTM_GATES * H
    cdef Loop L
    cdef Input inp
    check_inputs(&L, &inp, RC_LSTM_GATES, reverse, x, h, Wx, Wh, h0, H)
    if Wr is not None:
        mat_check(Wr, "Wr", H, L.Hp, &L.wr)
    if not save and T > 0 and N > 0 and H > 0 and c.strides[0] == 0:
        # inference: one (N, H) array of cell states for every step (running_seq)
        running_seq(c, "c", T, N, H, &L.c)
    else:
        seq_check(c, "c", T, N, H, &L.c)
    same_layout(&inp.x, &L.h, NULL, T, N, inp.D)
    rows_check(c0, "c0", N, H)
    vec_check(b, "b", GH)
    bs = check_batch_sizes(batch_sizes, T, N)
    # saved gate activations, in h's layout kind (the x @ Wx GEMM writes them as one
    # matrix); inference on a loop fusing x_t Wx into its steps (the rule fused_weight
    # and unit_split apply): one step's gates (and m) serve every step; inference
    # on a long unfused loop: the gates of a chunk of steps (chunk_buffers)
    dtype = np.float32 if floating is float else np.float64
    cdef bint fuse = fuse_input(T, N, inp.D, L.Hp, GH, sizeof(floating))   # decided once
    # the unit split's thread count, decided once (unit_split takes it): 1, none
    cdef int units = unit_threads(N, H, RC_LSTM_GATES, T, sizeof(floating),
                                  packs_step_weight(T, N * GH * H), False)
    if Wr is not None or packed_nr(sizeof(floating)) <= 0:
        units = 1
    # (a unit split computes each block's columns of a chunk, reading x in place:
    # block_input; no gather buffer)
    chunks = chunk_buffers(&L, &inp, dtype, units <= 1) if not (save or fuse) else None
    cdef bint one = not save and (fuse or chunks is not None)
    saved = None if one else (
        LSTMSaved(gates=seq_empty(L.h.bm, T, N, GH, dtype, save)) if Wr is None else
        LSTMProjSaved(gates=seq_empty(L.h.bm, T, N, GH, dtype, save),
                      m=seq_empty(L.h.bm, T, N, H, dtype, save)))
    if T == 0 or N == 0 or H == 0:
        return saved if save else None
    if one:
        step_arrays = (None if L.chunk > 0 else one_step(&L.g, N, GH, dtype),
                       one_step(&L.m, N, H, dtype) if Wr is not None else None)
        L.private_steps = True   # (each row share's rows together: _loop.pxd loop_share)
    else:
        seq_check[floating](saved.gates, "gates", T, N, GH, &L.g)
        if Wr is not None:
            seq_check[floating](saved.m, "m", T, N, H, &L.m)
    L.bs = batch_ptr(bs)
    L.c0 = &c0[0, 0]
    L.b = &b[0]
    cdef Loop tasks[MAX_TASKS]
    cdef rc_units sched
    # the first step's h0 Wh left out (step_product; set before unit_split copies L)
    L.h0_zero = zero_start(h0, Wh, T)
    keep = (unit_split(Wx, Wh, &L, tasks, &sched, False, fuse, units, save) if units > 1
            else None)
    if keep is None:
        # Wh packed, or [Wx; Wh] for a loop fusing x_t Wx into its steps
        # (inference in chunks: [Wx; Wh] too when the loop packs, for chunk_input)
        keep = fused_weight(Wx, Wh, &L.wxh, &L.wh, T, N, GH, L.Hp,
                            packs_stacked(fuse, chunks, T, N * GH * L.Hp), 0, save)
    # the projection's operand Wr (H, Hp), as the loop reads it (packed once, too)
    keep_r = step_weight(Wr, &L.wr, T, N, L.Hp, H, False, 0, save) if Wr is not None else None
    if one and L.wxh.nr == 0 and (L.chunk == 0 or L.nu > 0):
        # (the same rules decided them: cannot happen)
        raise RuntimeError("internal error: one step of gates for an unfused loop")
    if L.chunk > 0 and L.xbuf == NULL and L.nu == 0:
        # (chunk_buffers gathers no x only for a loop that splits its units: chunk_input
        # would write through NULL)
        raise RuntimeError("internal error: a chunked row loop without its gather buffer")
    with nogil:
        forward_loop(&L, &inp, fwd_steps[float], fwd_steps[double], <floating>0)
    return saved if save else None


def backward(const floating[:, :, :] dh, const floating[:, :] dhn, const floating[:, :] dcn,
             const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] c0,
             const floating[:, :] Wx, const floating[:, :] Wh,
             const floating[:, :, :] h, const floating[:, :, :] c, saved,
             floating[:, :, :] dx, floating[:, :] dh0, floating[:, :] dc0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] db,
             bint reverse=False, batch_sizes=None, bint overwrite_saved=False, proj=None):
    """BPTT through one LSTM layer and direction.

    Writes ``dx`` (T, N, D, same layout kind as x; None: no input gradient, its
    products skipped), ``dh0`` and ``dc0`` (N, H), and ADDS the weight gradients
    into ``dWx`` (D, 4H), ``dWh`` (H, 4H), ``db`` (4H,). ``dh`` (T, N, H) is the
    upstream gradient of every output, ``dhn``/``dcn`` (N, H) the gradients of the
    final states (each row's state after its last valid step; in the reverse
    direction, after t = 0). ``h``, ``c`` and ``saved`` are what `forward` wrote and
    returned; the other arguments as in `forward`. ``saved`` is not modified
    (backward may be run again) unless ``overwrite_saved``: then the gradient
    workspace dA is the saved ``gates`` itself (T*N*4H less memory), garbage
    afterwards -- for callers that back-propagate once. ``proj`` = (Wr (H, P), dWr
    (H, P)) with a projection (as in `forward`; dWr accumulated into): then h0, dh0,
    dhn are (N, P), h, dh (T, N, P), Wh, dWh (P, 4H).
    """
    cdef const floating[:, :] Wr = None if proj is None else proj[0]
    cdef floating[:, :] dWr = None if proj is None else proj[1]
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1]
    cdef Py_ssize_t H = Wh.shape[0] if Wr is None else Wr.shape[0], GH = RC_LSTM_GATES * H
    cdef Loop L
    cdef Input inp
    cdef Grads gr
    cdef Mat dwr
    check_inputs(&L, &inp, RC_LSTM_GATES, reverse, x, h, Wx, Wh, h0, H)
    seq_check(c, "c", T, N, H, &L.c)
    check_grads(&L, &inp, &gr, dh, dx, dWx, dWh, dhn, dh0)
    try:
        gates_arr, m_arr = tuple(saved) + ((None,) if len(saved) == 1 else ())
    except (TypeError, ValueError):
        raise ValueError("saved: expected the LSTMSaved returned by lstm.forward") from None
    seq_check[floating](gates_arr, "saved.gates", T, N, GH, &L.g)
    if Wr is not None:
        mat_check(Wr, "Wr", H, L.Hp, &L.wr)
        mat_check(dWr, "dWr", H, L.Hp, &dwr)
        if m_arr is None:
            raise ValueError("saved: expected the LSTMSaved of a projected lstm.forward")
        seq_check[floating](m_arr, "saved.m", T, N, H, &L.m)
        if L.m.bm != L.h.bm:
            # dWr pairs m with E row by row: h's layout kind
            m_arr = np.asarray(m_arr).transpose(1, 0, 2).copy().transpose(1, 0, 2) if L.h.bm \
                else np.ascontiguousarray(m_arr)
            seq_check[floating](m_arr, "saved.m", T, N, H, &L.m)
    rows_check(c0, "c0", N, H)
    rows_check(dcn, "dcn", N, H)
    rows_check(dc0, "dc0", N, H)
    vec_check(db, "db", GH)
    bs = check_batch_sizes(batch_sizes, T, N)
    # workspaces: dA in h's layout kind (contiguous), dgs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :] dg = workspace(gates_arr if overwrite_saved else None,
                                          "saved.gates", T, N, GH, L.h.bm, dtype)
    cdef floating[:, :] dgs = aligned_rows(N if reverse and bs is not None else 0, GH, dtype)
    # with a projection: E (T, N, P), the whole gradient of each h_t, for dWr; the
    # scratch S (N, 4H): the gradient of m_t in [:, :H], zeros in [:, H:2H]
    cdef floating[:, :, :] dht = seq_empty(L.h.bm, T if proj is not None else 0, N, L.Hp, dtype,
                                           True)
    cdef floating[:, :] s = np.zeros((N if proj is not None else 0, GH), dtype=dtype)
    if N == 0 or H == 0:
        if inp.D > 0 and N > 0 and T > 0 and dx is not None:
            np.asarray(dx)[...] = 0
        return
    # the carries (in dh0, dc0) start as (dh_n, dc_n)
    copy_rows(dh0, dhn)
    copy_rows(dc0, dcn)
    if T == 0:
        return
    L.bs = batch_ptr(bs)
    L.c0 = &c0[0, 0]
    L.carry_c = &dc0[0, 0]
    seq_check(dg, "dA", T, N, GH, &L.dg)
    gr.db = &db[0]
    gr.dbh = NULL
    gr.dzs = &dgs[0, 0] if dgs.shape[0] > 0 else NULL
    if proj is not None:
        seq_check(dht, "E", T, N, L.Hp, &L.dht)
        L.scratch = &s[0, 0]
    cdef Loop tasks[MAX_TASKS]
    cdef rc_units sched
    # Wx^T packed for dx_t = dA_t Wx^T in the steps, or dx after the loop
    keep_x = input_grad_weight(Wx, &L.wxt, T, N, L.Hp) if dx is not None else None
    keep = unit_split(Wx, Wh, &L, tasks, &sched, True, False)
    if keep is None:
        keep = step_weight(Wh, &L.wh, T, N, GH, L.Hp, True)
    # backward's projection operand Wr^T (Hp, H)
    keep_r = step_weight(Wr, &L.wr, T, N, L.Hp, H, True) if Wr is not None else None
    # weight_grads' memory from the workspace cache
    keep_dw = dw_reserve(&L, &inp, &gr, <floating>0)
    with nogil:
        backward_loop(&L, &inp, &gr, bwd_steps[float], bwd_steps[double], <floating>0)
        if proj is not None:
            # dWr += m^T E                    (H, P) += (H, T*N)(T*N, P)
            mm(H, L.Hp, T * N, <floating>1, transposed(uniform(L.m)), uniform(L.dht),
               <floating>1, dwr)


# ----------------------------------------------------------------- single step
# The cells' fast path (see rnn.step): one step on PyTorch-layout parameters.

cdef int step_run(void **p, const floating *c0, floating *c, floating *g, Py_ssize_t N,
                  Py_ssize_t D, Py_ssize_t H) noexcept nogil:
    # p as step_cell_bufs acquired it: [x, h0, h, w_ih, w_hh, b_ih, b_hh]. One
    # allocation: the summed bias, then the gates when the caller does not keep
    # them (inference)
    cdef Loop L
    cdef Input inp
    cdef Py_ssize_t j, GH = RC_LSTM_GATES * H
    cdef const floating *bih = <const floating *>p[5]
    cdef const floating *bhh = <const floating *>p[6]
    cdef floating *b = <floating *>malloc((GH + (N * GH if g == NULL else 0))
                                          * sizeof(floating))
    if b == NULL:
        return -1
    for j in range(GH):
        b[j] = bih[j] + bhh[j]
    if g == NULL:
        g = b + GH
    step_loop(&L, &inp, p, N, D, H, RC_LSTM_GATES, floating is double)
    L.c0 = c0
    L.b = b
    L.c = contiguous(c, N, H)
    L.g = contiguous(g, N, GH)
    forward_loop(&L, &inp, fwd_steps[float], fwd_steps[double], <floating>0)
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
            rc = step_run(p, <float *>c0p, <float *>cp, <float *>gp, N, D, H)
        else:
            rc = step_run(p, <double *>c0p, <double *>cp, <double *>gp, N, D, H)
    step_release(&B)
    if rc:
        raise MemoryError()
    return True


def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_threads.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)


def _set_packing(bint enabled, int fuse=1, long long chunk=0):
    """Test hook: rnn._set_packing, for this module's loops; `chunk`: an unfused
    inference loop computes its input projection in chunks of steps by the rule
    (0, the default; rc_infer_chunk), of `chunk` steps (> 0) or never (< 0)."""
    set_packing(enabled, fuse)
    set_chunk(chunk)


def _set_unit_split(int mode, int threads=2):
    """Test/benchmark hook: the LSTM's time loops never split the hidden units over
    threads (mode -1), split them by the shape rule (0, the default: forward loops
    whose weight streams from L3 anyway; see rc_threads.h), or always -- forward
    and backward -- over `threads` threads (1)."""
    set_unit_split(mode, threads)


def _unit_rows():
    """The shape rule's bound on rows per thread: a unit split only where the row split
    would give no thread this many rows (0: no bound; 16 with Intel's rules,
    `_set_intel_rules`)."""
    return unit_rows()


def _unit_threads(Py_ssize_t N, Py_ssize_t H, Py_ssize_t T, dtype=np.float32,
                  bint backward=False):
    """Threads of a unit split for an LSTM loop of these shapes (1: none)."""
    cdef Py_ssize_t isz = np.dtype(dtype).itemsize
    if packed_nr(isz) <= 0:
        return 1
    return unit_threads(N, H, RC_LSTM_GATES, T, isz,
                        packs_step_weight(T, N * RC_LSTM_GATES * H * H), backward)


def _set_unit_claims(bint claim_all):
    """Test hook: a unit split's shares own no blocks (True): every block of every
    step goes to whichever share claims it first, so blocks move between threads
    from step to step (and a chunk's input columns are computed by whichever share
    runs the block at the chunk's first step); False (the default): each share
    claims its own blocks first."""
    global _claim_all
    _claim_all = claim_all


def _unit_split_counts():
    """Test hook: how many loops have split their units so far: (backward, forward,
    forward inference computing its input projection in chunks)."""
    return tuple(_split_counts[k] for k in range(3))


include "_pack_hooks.pxi"
