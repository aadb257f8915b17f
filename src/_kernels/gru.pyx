"""GRU kernel: one layer, one direction, all T steps in one call.

Equations (Cho et al. 2014, in PyTorch's ``nn.GRU`` form, ``reset_after=True``;
gates r, z, n along the 3H axis; two biases because ``b_hn`` sits inside the
reset product)::

    r   = σ(x_t W_ir + b_ir + h_{t-1} W_hr + b_hr)
    z   = σ(x_t W_iz + b_iz + h_{t-1} W_hz + b_hz)
    n   = tanh(x_t W_in + b_in + r ⊙ (h_{t-1} W_hn + b_hn))
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Forward
    A = X Wx                       one GEMM over all T*N rows, into `gates`
    per step t:  S = H_prev Wh     one GEMM, all three gates  (N, 3H) = (N, H)(H, 3H)
                 r, z, n, hn, h_t  one fused vectorized pass (rc_gru_fwd_*, rc_gru.h):
                                   both bias adds, the activations, the reset
                                   product, the update, stores
Backward (BPTT)
    per step t (reverse order), with dh' = dh_t + carry:
        one fused pass (rc_gru_bwd_*, rc_gru.h):
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
Fused loops (rc_fuse_input, rc_step_input_grad in rc_gemm_packed.h: a packed
loop of at least 8 rows whose weights fit the caches; on Intel CPUs, below 32
rows, at most N x 160 KiB) multiply by Wx in their
steps instead: forward A_t = x_t Wx, then S = H_prev Wh, two products on
[Wx; Wh] packed once (kept apart: r multiplies only the n gate's hidden side);
backward dX_t = [da_r | da_z | da_n] Wx^T while they are in the cache, on Wx^T
packed once. A fused forward that saves nothing (``save=False``: inference)
reuses one step's gates and hidden_n for all T steps; an unfused one that saves
nothing and would need more than 16 MB for all steps' x Wx computes it a chunk
of steps at a time (_loop.pxd: chunk_input).

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

``reset_after=False`` (Cho et al. 2014's candidate, Keras's ``reset_after=False``,
ONNX's ``linear_before_reset=0``) runs the same loop with the recurrent
product split, since r must be known before ``(r ⊙ h) W_hn``::

    n   = tanh(x_t W_in + b_in + (r ⊙ h_{t-1}) W_hn + b_hn)

    forward, per step:  S[:, :2H] = H_prev Wh[:, :2H]    (N, 2H) = (N, H)(H, 2H)
                        r, z, reset_h = r ⊙ h_prev        fused (rc_gru_rb_fwd1_*)
                        S[:, 2H:] = reset_h Wh[:, 2H:]    (N, H) = (N, H)(H, H)
                        n, h_t                            fused (rc_gru_rb_fwd2_*)
    backward, per step: da_z, da_n; carry = dh' ⊙ z       fused (rc_gru_rb_bwd1_*)
                        d(reset_h) = da_n Wh[:, 2H:]^T    (N, H) = (N, H)(H, H)^T
                        da_r = d(reset_h) ⊙ h_prev ⊙ r(1 - r),
                        carry += d(reset_h) ⊙ r           fused (rc_gru_rb_bwd2_*)
                        carry += [da_r | da_z] Wh[:, :2H]^T   (N, H) += (N, 2H)(H, 2H)^T
    after the loop:     dWh[:, :2H] += H_prev^T dG[:, :2H],  dWh[:, 2H:] += reset_h^T da_n

The same 3H² multiply-adds per step as reset-after, in two GEMMs. Saved:
the gates and, in hidden_n's place, ``reset_h`` (T, N, H). Both sides see
one n block (``b_hn`` is outside the reset product), so there is no dAn.

Design notes
------------
* Layouts as in rnn.pyx: sequences are (T, N, F) arrays with a contiguous
  last axis, time-major as is or batch-major as the transposed view of an
  (N, T, F) array (see _layout.pxd). ``x``, ``h`` and ``dx`` share one layout
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
* The time loop, its row split over threads and the all-steps GEMMs around
  it (including the input side's split into [r | z] and n column blocks) are
  shared with the other cells (_loop.pxd); this file holds the GRU's per-step
  bodies (``fwd_steps``, ``bwd_steps``) and entry points.
"""
from libc.stdlib cimport malloc, free

from collections import namedtuple

from _cpu cimport require_simd
import numpy as np

from _blas cimport floating, transposed, col_block, scale_rows, all_zero
from _gemm cimport (mm_step, step_weight, fused_weight, fuse_input, set_packing, set_chunk,
                    packs_stacked, input_grad_weight, set_pack_par, pack_par_count,
                    set_dw, set_dw_inplace, dw_inplace_count, dw_count,
                    set_dw_workspace, dw_workspace_count, RC_PACK_PAR_BYTES, aligned_rows)
from _threads cimport blas_thread_hooks, share
from _loop cimport (Loop, Input, Grads, loop_rows, forward_loop, backward_loop, dw_reserve,
                   input_product, chunk_input, input_grad, zero_start)
from _checks cimport (seq_check, same_layout, vec_check, check_batch_sizes, batch_ptr,
                      seq_empty, one_step, chunk_buffers, workspace, check_inputs, check_grads,
                      copy_rows)
from _pass cimport rc_pass, cell_pass, run_pass
from _step cimport (StepBufs, step_init, step_buf, step_cell_bufs, step_release, step_loop,
                    contiguous)

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef extern from "rc_gru.h" nogil:
    enum: RC_GRU_N   # index of the n block (the last one: r, z come first)
    enum: RC_GRU_G   # number of gates
    # the fused passes (rc_gru_fwd_*, rc_gru_bwd_*, rc_gru_bwd_ip_*) by kind and dtype
    void rc_gru_pass(int kind, int f64, const rc_pass *st, Py_ssize_t rows, Py_ssize_t H)
    # reset_after=False: the two stages of a step (rc_gru_rb_{fwd,bwd}{1,2}_*)
    void rc_gru_rb_pass1(int kind, int f64, const rc_pass *st, Py_ssize_t rows, Py_ssize_t H)
    void rc_gru_rb_pass2(int kind, int f64, const rc_pass *st, Py_ssize_t rows, Py_ssize_t H)

#: What `forward` saves for `backward`: the gate activations [r | z | n]
#: (T, N, 3H) and hidden_n = h_{t-1} W_hn + b_hn (T, N, H).
GRUSaved = namedtuple("GRUSaved", ["gates", "hidden_n"])


# ----------------------------------------------------------------- time loops
# The bodies run by _loop.pxd's run_loop over one share of the rows (all of
# them, or rows k, k+P, ... on a thread); active rows stay a prefix.

cdef inline void fwd_rows(const Loop *L, Py_ssize_t t, Py_ssize_t r0, Py_ssize_t rows,
                          const floating *hp, Py_ssize_t ldhp, bint from_h0=False) noexcept nogil:
    # Step t for rows [r0, r0 + rows) of this share, from h_prev = hp (ldhp apart);
    # from_h0: hp is h0's rows -- all zeros with Wh finite (L.h0_zero: _loop.pxd
    # zero_start), then S = 0 without the products (reset-before: the n block's too
    # when r h_prev came out all zeros -- a NaN r makes it NaN, and the product then
    # runs, as it must).
    cdef Py_ssize_t H = L.H, GH = RC_GRU_G * H, nI = GH - H, s_ld = L.sld
    cdef floating *s = <floating *>L.scratch + r0 * s_ld
    cdef const floating *rh
    cdef bint zero = from_h0 and L.h0_zero
    if zero:
        scale_rows(s, s_ld, rows, GH, <floating>0)
    if not L.reset_before:
        # S = h_prev @ Wh                     (rows, 3H) = (rows, H)(H, 3H)
        if not zero:
            mm_step(rows, GH, H, hp, ldhp, L.wh, <floating>0, s, s_ld)
        # fused (rc_gru_fwd_*): r, z = σ(g + bx + S + bh);  hn = S_n + bh_n;
        #   n = tanh(g_n + bx_n + r hn);  h_t = (1 - z) n + z h_prev;  g = [r | z | n]
        run_pass(L, rc_gru_pass, False, L.hn, t, r0, rows, hp, ldhp)
        return
    # S[:, :2H] = h_prev @ Wh[:, :2H]         (rows, 2H) = (rows, H)(H, 2H)
    if not zero:
        mm_step(rows, nI, H, hp, ldhp, L.wh, <floating>0, s, s_ld)
    # fused (rc_gru_rb_fwd1_*): r, z = σ(g + bx + S + bh);  reset_h = r h_prev
    run_pass(L, rc_gru_rb_pass1, False, L.hn, t, r0, rows, hp, ldhp)
    # S[:, 2H:] = reset_h @ Wh[:, 2H:]        (rows, H) = (rows, H)(H, H)
    rh = <const floating *>L.hn.p + t * L.hn.st + r0 * L.hn.sn
    if not (zero and all_zero(rh, rows, H, L.hn.sn)):
        mm_step(rows, H, H, rh, L.hn.sn, col_block(L.wh, nI, sizeof(floating)), <floating>0,
                s + nI, s_ld)
    # fused (rc_gru_rb_fwd2_*): n = tanh(g_n + bx_n + S_n + bh_n);  h_t = (1 - z) n + z h_prev
    run_pass(L, rc_gru_rb_pass2, False, L.hn, t, r0, rows, hp, ldhp)


cdef void fwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.g (holding x_t Wx on entry), L.h0, L.wh, L.b (bx), L.bh and the
    # (N, 3H) scratch S; writes L.h, the gates L.g and hidden_n (reset-before:
    # reset_h) L.hn.
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = RC_GRU_G * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t h0_ld = L.P * H, h_st = L.h.st, h_sn = L.h.sn
    cdef const floating *h0 = <const floating *>L.h0
    cdef floating *h = <floating *>L.h.p
    for i in range(L.T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from h0 here
        loop_rows(L, i, False, &t, &tp, &B, &Bc)
        if L.chunk > 0:
            # inference in chunks: at a chunk's start, its steps' x Wx for this share
            chunk_input(L, i, GH - H if L.reset_before else 0, kind)
        elif L.wxh.nr > 0 and B > 0:
            # a fused loop: A_t[:B] = x_t[:B] @ Wx     (B, 3H) = (B, D)(D, 3H)
            input_product(L, <const floating *>L.x.p + t * L.x.st, L.x.sn, B,
                          <floating *>L.g.p + t * L.g.st, L.g.sn,
                          GH - H if L.reset_before else 0)
        if Bc > 0:
            fwd_rows(L, t, 0, Bc, h + tp * h_st, h_sn)
        if B > Bc:
            fwd_rows(L, t, Bc, B - Bc, h0 + Bc * h0_ld, h0_ld, True)
        if B < M:
            # padding: h_t[B:] = 0 (and no stale projections in the saved arrays)
            scale_rows(h + t * h_st + B * h_sn, h_sn, M - B, H, <floating>0)
            scale_rows(<floating *>L.g.p + t * L.g.st + B * L.g.sn, L.g.sn, M - B, GH,
                       <floating>0)
            scale_rows(<floating *>L.hn.p + t * L.hn.st + B * L.hn.sn, L.hn.sn, M - B, H,
                       <floating>0)


cdef inline void bwd_pass(const Loop *L, cell_pass fn, Py_ssize_t t, Py_ssize_t tp,
                          Py_ssize_t B, Py_ssize_t Bc, floating kind) noexcept nogil:
    # One fused backward pass over rows [0, B) of step t: h_prev = h_tp or h0.
    cdef const floating *h = <const floating *>L.h.p
    cdef const floating *h0 = <const floating *>L.h0
    if Bc > 0:
        run_pass(L, fn, True, L.hn, t, 0, Bc, h + tp * L.h.st, L.h.sn)
    if B > Bc:
        run_pass(L, fn, True, L.hn, t, Bc, B - Bc, h0 + Bc * L.P * L.H, L.P * L.H)


cdef void bwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.dh, L.h, L.h0, L.wh and the saved L.g, L.hn; writes dG (L.dg), dAn
    # (L.dan; reset-before: none) and the carry (N, H); reset-before also uses
    # the (N, 3H) scratch S.
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = RC_GRU_G * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t ldc = L.cld * H, dg_sn = L.dg.sn, nI = GH - H
    cdef Py_ssize_t nk = nI if L.reset_before else GH   # dG's columns the carry GEMM reads
    cdef floating *dgt
    for i in range(L.T):
        loop_rows(L, i, True, &t, &tp, &B, &Bc)
        dgt = <floating *>L.dg.p + t * L.dg.st
        if not L.reset_before:
            # fused (rc_gru_bwd_*), from d = dh_t + carry:
            #   dG_t = [da_r | da_z | da_n r];  dAn_t = da_n;  carry = d z
            # (in place when dG is the saved gates and dAn hidden_n: overwrite_saved)
            bwd_pass(L, rc_gru_pass, t, tp, B, Bc, kind)
        else:
            # fused (rc_gru_rb_bwd1_*): dG_t[:, H:] = [da_z | da_n];  carry = d z
            bwd_pass(L, rc_gru_rb_pass1, t, tp, B, Bc, kind)
            # S[:B, :H] = dG_t[:B, 2H:] @ Wh[:, 2H:]^T   d(reset_h)  (B, H) = (B, H)(H, H)^T
            mm_step(B, H, H, dgt + nI, dg_sn, transposed(col_block(L.wh, nI, sizeof(floating))),
                    <floating>0, <floating *>L.scratch, L.sld)
            # fused (rc_gru_rb_bwd2_*): dG_t[:, :H] = da_r;  carry += d(reset_h) r
            bwd_pass(L, rc_gru_rb_pass2, t, tp, B, Bc, kind)
        if B < M:
            scale_rows(dgt + B * dg_sn, dg_sn, M - B, GH, <floating>0)
            if L.dan.p != NULL:
                scale_rows(<floating *>L.dan.p + t * L.dan.st + B * L.dan.sn, L.dan.sn,
                           M - B, H, <floating>0)
        # carry[:B] += dG_t[:B, :nk] @ Wh[:, :nk]^T    (B, H) += (B, nk)(H, nk)^T
        mm_step(B, H, nk, dgt, dg_sn, transposed(L.wh), <floating>1, <floating *>L.carry, ldc)
        if L.wxt.nr > 0:
            # dx_t[:B] = [dG_t | dAn_t][:B] @ Wx^T; dx_t[B:] = 0
            input_grad(L, t, 0, B, M, kind)


# ----------------------------------------------------------------- entry points
# Shapes and layouts are checked here, before `with nogil`; the loops above
# cannot fail. Strides come from the memoryviews (in bytes), never from copies.

def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] Wx,
            const floating[:, :] Wh, const floating[:] bx, const floating[:] bh,
            floating[:, :, :] h, bint reverse=False, batch_sizes=None, bint reset_after=True,
            bint save=True):
    """Run one GRU layer and direction over all T steps, writing ``h``.

    Parameters (logical shapes; layouts in the module docstring)
    ----------
    x : (T, N, D)   h0 : (N, H) C-contiguous   Wx : (D, 3H)   Wh : (H, 3H)
    bx, bh : (3H,) contiguous, PyTorch's bias_ih and bias_hh
    h : (T, N, H) output, same layout kind as x
    reverse : run t = T-1 .. 0
    batch_sizes : (T,) non-increasing active-row counts (sorted batch), or None
    reset_after : PyTorch's candidate (True) or the reset-before one (False)
    save : False when no `backward` follows (inference): gates and hidden_n need
        not be kept -- a loop computing x_t Wx in its steps then reuses one
        step's for all T, a long loop that does not computes x Wx a chunk of
        steps at a time into one (chunk, N, 3H) buffer (rc_infer_chunk) and
        reuses one step's hidden_n -- and None is returned

    Returns
    -------
    saved : GRUSaved(gates, hidden_n); None if not `save`
        gates (T, N, 3H) = [r | z | n] and hidden_n (T, N, H) = h_prev W_hn + b_hn
        (reset_after=False: reset_h = r ⊙ h_prev), in h's layout kind; pass to
        `backward` with the same ``reset_after``.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0], GH = RC_GRU_G * H
    cdef Loop L
    cdef Input inp
    check_inputs(&L, &inp, RC_GRU_G, reverse, x, h, Wx, Wh, h0)
    L.reset_before = not reset_after
    same_layout(&inp.x, &L.h, NULL, T, N, inp.D)
    vec_check(bx, "bx", GH)
    vec_check(bh, "bh", GH)
    bs = check_batch_sizes(batch_sizes, T, N)
    dtype = np.float32 if floating is float else np.float64
    # inference on a loop fusing x_t Wx into its steps (the rule fused_weight applies):
    # one step's gates and hidden_n serve every step
    cdef bint fuse = fuse_input(T, N, inp.D, H, GH, sizeof(floating))   # decided once
    chunks = chunk_buffers(&L, &inp, dtype) if not (save or fuse) else None
    cdef bint one = not save and (fuse or chunks is not None)
    saved = None if one else GRUSaved(gates=seq_empty(L.h.bm, T, N, GH, dtype, save),
                                      hidden_n=seq_empty(L.h.bm, T, N, H, dtype, save))
    if T == 0 or N == 0 or H == 0:
        return saved if save else None
    cdef floating[:, :] s = aligned_rows(N, GH, dtype)
    if one:
        step_arrays = (None if L.chunk > 0 else one_step(&L.g, N, GH, dtype),
                       one_step(&L.hn, N, H, dtype))
        L.private_steps = True   # (each row share's rows together: _loop.pxd loop_share)
    else:
        seq_check[floating](saved.gates, "gates", T, N, GH, &L.g)
        seq_check[floating](saved.hidden_n, "hidden_n", T, N, H, &L.hn)
    L.bs = batch_ptr(bs)
    L.b = &bx[0]
    L.bh = &bh[0]
    L.scratch = &s[0, 0]
    # packed, Wh[:, :2H] and Wh[:, 2H:] each from a panel boundary for the
    # reset-before steps' two products (fwd_rows)
    # Wh packed, or [Wx; Wh] for a loop multiplying by Wx step by step
    # (inference in chunks: [Wx; Wh] too when the loop packs, for chunk_input)
    keep = fused_weight(Wx, Wh, &L.wxh, &L.wh, T, N, GH, H,
                        packs_stacked(fuse, chunks, T, N * GH * H),
                        0 if reset_after else GH - H, save)
    if one and L.wxh.nr == 0 and L.chunk == 0:
        # (the same rules decided them: cannot happen)
        raise RuntimeError("internal error: one step of gates for an unfused loop")
    L.h0_zero = zero_start(h0, Wh, T)    # the first step's h0 Wh left out (fwd_rows)
    with nogil:
        forward_loop(&L, &inp, fwd_steps[float], fwd_steps[double], <floating>0)
    return saved if save else None


def backward(const floating[:, :, :] dh, const floating[:, :] dhn,
             const floating[:, :, :] x, const floating[:, :] h0,
             const floating[:, :] Wx, const floating[:, :] Wh, const floating[:] bh,
             const floating[:, :, :] h, saved,
             floating[:, :, :] dx, floating[:, :] dh0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] dbx, floating[:] dbh,
             bint reverse=False, batch_sizes=None, bint overwrite_saved=False,
             bint reset_after=True):
    """BPTT through one GRU layer and direction.

    Writes ``dx`` (T, N, D, same layout kind as x; None: no input gradient, its
    products skipped) and ``dh0`` (N, H), and ADDS the weight gradients into ``dWx``
    (D, 3H), ``dWh`` (H, 3H), ``dbx``, ``dbh`` (3H,). ``dh`` (T, N, H) is the
    upstream gradient of every output, ``dhn`` (N, H) the gradient of the final
    state (each row's state after its last valid step; in the reverse direction,
    after t = 0). ``h`` and ``saved`` are what `forward` wrote and returned; the
    other arguments as in `forward`. ``bh`` is only shape-checked: ``b_hn`` is
    already inside the saved ``hidden_n``. ``saved`` is not modified (backward may
    be run again) unless ``overwrite_saved``: then the gradient workspaces dG and
    dAn are the saved ``gates`` and ``hidden_n`` themselves (T*N*4H less memory),
    which are garbage afterwards -- for callers that back-propagate once.
    ``reset_after`` must be the forward's; with False there is no dAn (both sides
    see one n block), ``overwrite_saved`` takes the gates only (the saved reset_h
    gives dWh's n block after the loop) and an (N, 3H) scratch holds d(reset_h) per
    step.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0], GH = RC_GRU_G * H
    cdef Loop L
    cdef Input inp
    cdef Grads gr
    check_inputs(&L, &inp, RC_GRU_G, reverse, x, h, Wx, Wh, h0)
    check_grads(&L, &inp, &gr, dh, dx, dWx, dWh, dhn, dh0)
    L.reset_before = not reset_after
    try:
        gates_arr, hidden_n_arr = saved
    except (TypeError, ValueError):
        raise ValueError("saved: expected the GRUSaved returned by gru.forward") from None
    seq_check[floating](gates_arr, "saved.gates", T, N, GH, &L.g)
    seq_check[floating](hidden_n_arr, "saved.hidden_n", T, N, H, &L.hn)
    if L.reset_before and L.hn.bm != L.h.bm:
        # dWh's n block pairs reset_h with dG row by row: h's layout kind
        hidden_n_arr = seq_empty(L.h.bm, T, N, H, gates_arr.dtype, True)
        hidden_n_arr[...] = saved[1]
        seq_check[floating](hidden_n_arr, "saved.hidden_n", T, N, H, &L.hn)
    vec_check(bh, "bh", GH)
    vec_check(dbx, "dbx", GH)
    vec_check(dbh, "dbh", GH)
    bs = check_batch_sizes(batch_sizes, T, N)
    # workspaces: dG (hidden side) and dAn (input side's n block) in h's layout
    # kind (contiguous); dgs for reverse + lengths
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, :] dg = workspace(gates_arr if overwrite_saved else None,
                                          "saved.gates", T, N, GH, L.h.bm, dtype)
    cdef floating[:, :, :] dan = workspace(hidden_n_arr if overwrite_saved else None,
                                           "saved.hidden_n", T, N, H, L.h.bm, dtype
                                           ) if reset_after else None
    cdef floating[:, :] s = aligned_rows(0 if reset_after else N, GH, dtype)
    cdef floating[:, :] dgs = aligned_rows(N if reverse and bs is not None else 0, GH, dtype)
    if N == 0 or H == 0:
        if inp.D > 0 and N > 0 and T > 0 and dx is not None:
            np.asarray(dx)[...] = 0
        return
    copy_rows(dh0, dhn)     # the carry starts as dh_n
    if T == 0:
        return
    L.bs = batch_ptr(bs)
    seq_check(dg, "dG", T, N, GH, &L.dg)
    if reset_after:
        seq_check(dan, "dAn", T, N, H, &L.dan)
    else:
        L.scratch = &s[0, 0]
    gr.db = &dbx[0]
    gr.dbh = &dbh[0]
    gr.dzs = &dgs[0, 0] if dgs.shape[0] > 0 else NULL
    keep = step_weight(Wh, &L.wh, T, N, GH, H, True)
    # Wx^T packed for dx_t = dA_t Wx^T in the steps, or dx after the loop
    keep_x = input_grad_weight(Wx, &L.wxt, T, N, H) if dx is not None else None
    # weight_grads' memory from the workspace cache
    keep_dw = dw_reserve(&L, &inp, &gr, <floating>0)
    with nogil:
        backward_loop(&L, &inp, &gr, bwd_steps[float], bwd_steps[double], <floating>0)


# ----------------------------------------------------------------- single step
# The cells' fast path (see rnn.step): one step on PyTorch-layout parameters.

cdef int step_run(void **p, floating *g, floating *hn, Py_ssize_t N, Py_ssize_t D,
                  Py_ssize_t H, bint reset_before) noexcept nogil:
    # p as step_cell_bufs acquired it: [x, h0, h, w_ih, w_hh, b_ih, b_hh]. One
    # allocation: the (N, 3H) recurrent-projection scratch, then gates and
    # hidden_n when the caller does not keep them (inference)
    cdef Loop L
    cdef Input inp
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
    step_loop(&L, &inp, p, N, D, H, RC_GRU_G, floating is double)
    L.b = p[5]
    L.bh = p[6]
    L.g = contiguous(g, N, GH)
    L.hn = contiguous(hn, N, H)
    L.scratch = w
    L.reset_before = reset_before
    forward_loop(&L, &inp, fwd_steps[float], fwd_steps[double], <floating>0)
    free(w)
    return 0


def step(x, h0, w_ih, w_hh, b_ih, b_hh, h, gates, hidden_n, Py_ssize_t D, Py_ssize_t H,
         bint reset_after=True):
    """One GRU step on the cells' arrays (PyTorch's equations, gates r, z, n;
    ``reset_after=False``: the reset-before candidate, hidden_n receiving reset_h).

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
            rc = step_run(p, <float *>gp, <float *>hnp, N, D, H, not reset_after)
        else:
            rc = step_run(p, <double *>gp, <double *>hnp, N, D, H, not reset_after)
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


include "_pack_hooks.pxi"
