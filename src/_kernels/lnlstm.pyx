"""Layer-normalised LSTM kernel: one layer, one direction, all T steps in one call.

Equations (Ba, Kiros & Hinton 2016, "Layer Normalization", §3.1 and their
LN-LSTM; as TensorFlow Addons' ``LayerNormLSTMCell``, gates i, f, g, o in
PyTorch's order along the 4H axis). ``LN_G`` normalises each of the four gate
groups of H units of a row on its own (mean and biased variance over the group,
eps = 1e-5 as ``torch.nn.LayerNorm``), with a per-unit gain γ and bias β::

    a   = LN_G(x_t Wx; γ_ih, β_ih) + LN_G(h_{t-1} Wh; γ_hh, β_hh) + b
    i, f, g, o = σ(a_i), σ(a_f), tanh(a_g), σ(a_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g                 (carried un-normalised)
    h_t = o ⊙ tanh(LN(c_t; γ_c, β_c))

Forward
    A = X Wx                       one GEMM over all T*N rows, into `gates`
    A = LN_G(A) + β_ih + β_hh + b  one pass over all rows (rc_ln_rows, rc_layernorm.h):
                                   saves x̂_ih and 1/σ_ih per row and group
    per step t:  S = H_prev Wh     one GEMM into an (N, 4H) scratch, (N, 4H) = (N, H)(H, 4H)
                 one fused pass per row (rc_lnlstm_fwd): the four group
                 norms of S, A_t + γ_hh ⊙ x̂_hh, the activations, the cell
                 update, LN(c_t), tanh, h_t
Backward (BPTT)
    per step t (reverse order):  one fused pass per row (rc_lnlstm_bwd): dyc
                 (the gradient of LN(c_t)'s output), LN(c) backward, dc, dA_t,
                 the dc carry, and dZ_t = LN_G-backward(dA_t) of the recurrent
                 norm;  carry_h = dZ_t Wh^T one GEMM
    after the loop:  dWh += H_prev^T dZ (shifted pairs, as lstm.pyx);
                 dγ_hh += Σ dA ⊙ x̂_hh, dγ_ih += Σ dA ⊙ x̂_ih, dγ_c += Σ dyc ⊙ ĉ,
                 dβ_ih, dβ_hh, db += Σ dA, dβ_c += Σ dyc (reductions over all rows,
                 not per step); dZx = LN_G-backward(dA) in place over all rows;
                 dX = dZx Wx^T, dWx += X^T dZx

Saved for backward (``LNLSTMSaved``): the activations ``gates`` (T, N, 4H),
``xh_ih``/``xh_hh`` (T, N, 4H) the normalised input and recurrent
projections, ``r_ih``/``r_hh`` (T, N, 4) their 1/σ per group, ``c_hat``
(T, N, H) the normalised cell state and ``r_c`` (T, N, 1). Saving x̂ rather
than recomputing it: recomputing the recurrent side would need the per-step
GEMM again (or its (T, N, 4H) output, the same memory as x̂), and the input
side's x̂ cannot be recovered from the gates once the activations overwrite
them; 1/σ is 4 numbers per row. tanh(γ_c ĉ + β_c) is recomputed (one tanh
per element instead of another (T, N, H) array), as lstm.pyx does for tanh(c).
All saved arrays (and backward's workspaces) are views of ONE allocation
(`seq_block`): seven fresh arrays cost a page fault per page on every call
(forward at (T, N, D, H) = (100, 16, 64, 128) went from 3.8x to 1.2x the plain
LSTM's time with this change).
Inference (``save=False``, what the models' eval() forward passes) keeps none
of them: only the gate workspace is allocated; the input side's norm, the
per-step x̂_hh and ĉ are evaluated inline from each group's μ and 1/σ (one
pass fewer each, nothing stored); h and c are bitwise those of the saving
forward (the same expressions in the same order).

Measured (indicative only: a shared, noisy 2-core machine, one BLAS thread,
float32, plain vs layer_norm interleaved, medians): forward+backward 1.05x the
plain LSTM at (100, 32, 256, 256), 1.13x at (100, 16, 64, 128), 1.26x at
(50, 1, 32, 64) (per-call overhead of the extra arguments and arrays dominates
there); inference forward 1.19x, 1.19x, 1.30x before the save=False path; with it
(model API, eval(), min of 20 interleaved, 2 BLAS threads, machine under load)
about 1.04-1.10x at (100, 32, 256, 256) against 1.19-1.21x forcing the saving
forward in the same process, the layer-normalised GRU 1.04-1.05x against 1.07-1.08x.

Design notes
------------
* Layouts, lengths, reverse, the row split over threads and the all-steps
  GEMMs are those of lstm.pyx (_loop.pxd's Loop, run_loop, dwh_accumulate); the
  extra arrays reach the bodies through ``Loop.ext`` (an ``LNArrays``), offset
  to each thread's rows (k, k+P, ...) by the body itself. Each row's norms read
  that row only, so results do not depend on the thread count.
* The input-side norm runs over all T*N rows outside the time loop; only the
  recurrent norm and LN(c) run per step, fused into the per-row pass.
* Padded positions (lengths) hold zeros in every saved array; padded upstream
  gradients are never read.
* No projection (proj_size) with layer_norm: the models refuse it.
"""
from collections import namedtuple

from _cpu cimport require_simd
import numpy as np

from _blas cimport floating, Mat, transposed, scale_rows
from _gemm cimport (mm_step, step_weight, set_packing, set_pack_par, pack_par_count,
                    set_dw, set_dw_inplace, dw_inplace_count, dw_count,
                    set_dw_workspace, dw_workspace_count, RC_PACK_PAR_BYTES, aligned_rows)
from _layout cimport Seq, uniform, every_pth_row
from _threads cimport blas_thread_hooks, share
from _loop cimport Loop, Input, Grads, loop_rows, run_loop
from _lnloop cimport (seq_block, at, at_or_null, ln_dw_reserve, ln_param_grads, input_side_fwd,
                     after_loop)
from _checks cimport (seq_check, same_layout, rows_check, vec_check, check_batch_sizes,
                      batch_ptr, check_inputs, check_grads, copy_rows)

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef extern from "rc_layernorm.h" nogil:
    enum: RC_LN_GATES
    void rc_lnlstm_fwd_f(Py_ssize_t rows, Py_ssize_t H, float eps, const float *s,
                         Py_ssize_t lds, float *a, Py_ssize_t lda, float *xh, Py_ssize_t ldxh,
                         float *rh, Py_ssize_t ldrh, const float *cp, Py_ssize_t ldcp,
                         float *c, Py_ssize_t ldc, float *ch, Py_ssize_t ldch, float *rc,
                         Py_ssize_t ldrc, float *h, Py_ssize_t ldh, const float *g_hh,
                         const float *g_c, const float *b_c)
    void rc_lnlstm_fwd_d(Py_ssize_t rows, Py_ssize_t H, double eps, const double *s,
                         Py_ssize_t lds, double *a, Py_ssize_t lda, double *xh,
                         Py_ssize_t ldxh, double *rh, Py_ssize_t ldrh, const double *cp,
                         Py_ssize_t ldcp, double *c, Py_ssize_t ldc, double *ch,
                         Py_ssize_t ldch, double *rc, Py_ssize_t ldrc, double *h,
                         Py_ssize_t ldh, const double *g_hh, const double *g_c,
                         const double *b_c)
    void rc_lnlstm_bwd_f(Py_ssize_t rows, Py_ssize_t H, const float *dh, Py_ssize_t lddh,
                         const float *cy, Py_ssize_t ldcy, float *cc, Py_ssize_t ldcc,
                         const float *g, Py_ssize_t ldg, const float *cp, Py_ssize_t ldcp,
                         const float *ch, Py_ssize_t ldch, const float *rc, Py_ssize_t ldrc,
                         const float *xh, Py_ssize_t ldxh, const float *rh, Py_ssize_t ldrh,
                         float *da, Py_ssize_t ldda, float *dz, Py_ssize_t lddz, float *dyc,
                         Py_ssize_t lddyc, const float *g_hh, const float *g_c,
                         const float *b_c)
    void rc_lnlstm_bwd_d(Py_ssize_t rows, Py_ssize_t H, const double *dh, Py_ssize_t lddh,
                         const double *cy, Py_ssize_t ldcy, double *cc, Py_ssize_t ldcc,
                         const double *g, Py_ssize_t ldg, const double *cp, Py_ssize_t ldcp,
                         const double *ch, Py_ssize_t ldch, const double *rc, Py_ssize_t ldrc,
                         const double *xh, Py_ssize_t ldxh, const double *rh,
                         Py_ssize_t ldrh, double *da, Py_ssize_t ldda, double *dz,
                         Py_ssize_t lddz, double *dyc, Py_ssize_t lddyc, const double *g_hh,
                         const double *g_c, const double *b_c)

#: torch.nn.LayerNorm's default eps (the kernels' constant)
cdef double EPS = 1e-5
eps = EPS

#: What `forward` saves for `backward` (see the module docstring).
LNLSTMSaved = namedtuple("LNLSTMSaved", ["gates", "xh_ih", "r_ih", "xh_hh", "r_hh",
                                         "c_hat", "r_c"])


cdef struct LNArrays:
    # the per-step arrays lstm.pyx's Loop does not have (Loop.ext)
    Seq xh              # x̂ of the recurrent norm (T, N, 4H)
    Seq rh              # its 1/σ per group (T, N, 4)
    Seq ch              # ĉ (T, N, H)
    Seq rc              # its 1/σ (T, N, 1)
    Seq da              # backward: dA (T, N, 4H)
    Seq dyc             # backward: the gradient of LN(c)'s output (T, N, H)
    const void *g_hh    # γ_hh (4H,), γ_c, β_c (H,)
    const void *g_c
    const void *b_c


cdef inline LNArrays shared(const Loop *L) noexcept nogil:
    """This share's rows (k, k+P, ...) of the Loop's LNArrays."""
    cdef LNArrays E = (<const LNArrays *>L.ext)[0]
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    E.xh = every_pth_row(E.xh, L.k, L.P, isz)
    E.rh = every_pth_row(E.rh, L.k, L.P, isz)
    E.ch = every_pth_row(E.ch, L.k, L.P, isz)
    E.rc = every_pth_row(E.rc, L.k, L.P, isz)
    E.da = every_pth_row(E.da, L.k, L.P, isz)
    E.dyc = every_pth_row(E.dyc, L.k, L.P, isz)
    return E


# ----------------------------------------------------------------- time loops

cdef inline void fwd_rows(const Loop *L, const LNArrays *E, Py_ssize_t t, Py_ssize_t r0,
                          Py_ssize_t rows, const floating *hp, Py_ssize_t ldhp,
                          const floating *cp, Py_ssize_t ldcp) noexcept nogil:
    # Step t for rows [r0, r0 + rows) from (h_prev, c_prev) = (hp, cp).
    cdef Py_ssize_t H = L.H, GH = RC_LN_GATES * H, lds = L.sld
    cdef floating *s = <floating *>L.scratch + r0 * lds
    cdef floating k = 0
    # S[rows] = h_prev @ Wh                   (rows, 4H) = (rows, H)(H, 4H)
    mm_step(rows, GH, H, hp, ldhp, L.wh, <floating>0, s, lds)
    # fused (rc_lnlstm_fwd): x̂_hh = LN_G(S); A_t += γ_hh x̂_hh; gates; c_t; ĉ = LN(c_t);
    #   h_t = o tanh(γ_c ĉ + β_c)   (inference: the norms' arrays NULL, x̂_hh, ĉ inline)
    if floating is float:
        rc_lnlstm_fwd_f(rows, H, EPS, s, lds, at(L.g, t, r0, k), L.g.sn,
                        at_or_null(E.xh, t, r0, k), E.xh.sn, at_or_null(E.rh, t, r0, k),
                        E.rh.sn, cp, ldcp, at(L.c, t, r0, k), L.c.sn,
                        at_or_null(E.ch, t, r0, k), E.ch.sn, at_or_null(E.rc, t, r0, k),
                        E.rc.sn, at(L.h, t, r0, k), L.h.sn,
                        <const float *>E.g_hh, <const float *>E.g_c, <const float *>E.b_c)
    else:
        rc_lnlstm_fwd_d(rows, H, EPS, s, lds, at(L.g, t, r0, k), L.g.sn,
                        at_or_null(E.xh, t, r0, k), E.xh.sn, at_or_null(E.rh, t, r0, k),
                        E.rh.sn, cp, ldcp, at(L.c, t, r0, k), L.c.sn,
                        at_or_null(E.ch, t, r0, k), E.ch.sn, at_or_null(E.rc, t, r0, k),
                        E.rc.sn, at(L.h, t, r0, k), L.h.sn,
                        <const double *>E.g_hh, <const double *>E.g_c, <const double *>E.b_c)


cdef void fwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.g (holding the normalised input side plus biases on entry), L.h0,
    # L.c0, L.wh, L.scratch and the LNArrays; writes L.h, L.c, the activations
    # L.g and the saved norms.
    cdef LNArrays E = shared(L)
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = RC_LN_GATES * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t s0_ld = L.P * H, h_st = L.h.st, h_sn = L.h.sn
    cdef const floating *h0 = <const floating *>L.h0
    cdef const floating *c0 = <const floating *>L.c0
    cdef const floating *c = <const floating *>L.c.p
    cdef floating *h = <floating *>L.h.p
    for i in range(L.T):
        # rows [0, Bc) continue from step tp; rows [Bc, B) start from (h0, c0) here
        loop_rows(L, i, False, &t, &tp, &B, &Bc)
        if Bc > 0:
            fwd_rows(L, &E, t, 0, Bc, h + tp * h_st, h_sn, c + tp * L.c.st, L.c.sn)
        if B > Bc:
            fwd_rows(L, &E, t, Bc, B - Bc, h0 + Bc * s0_ld, s0_ld, c0 + Bc * s0_ld, s0_ld)
        if B < M:
            # padding: zeros in h, c and every saved array (the after-loop sums read them)
            scale_rows(h + t * h_st + B * h_sn, h_sn, M - B, H, <floating>0)
            scale_rows(at(L.c, t, B, kind), L.c.sn, M - B, H, <floating>0)
            scale_rows(at(L.g, t, B, kind), L.g.sn, M - B, GH, <floating>0)
            if E.xh.p != NULL:      # (inference: no saved norms)
                scale_rows(at(E.xh, t, B, kind), E.xh.sn, M - B, GH, <floating>0)
                scale_rows(at(E.ch, t, B, kind), E.ch.sn, M - B, H, <floating>0)
                scale_rows(at(E.rh, t, B, kind), E.rh.sn, M - B, RC_LN_GATES, <floating>0)
                scale_rows(at(E.rc, t, B, kind), E.rc.sn, M - B, 1, <floating>0)


cdef inline void bwd_rows(const Loop *L, const LNArrays *E, Py_ssize_t t, Py_ssize_t r0,
                          Py_ssize_t rows, const floating *cp, Py_ssize_t ldcp) noexcept nogil:
    cdef Py_ssize_t ldc = L.cld * L.H
    cdef floating k = 0
    if floating is float:
        rc_lnlstm_bwd_f(rows, L.H, at(L.dh, t, r0, k), L.dh.sn,
                        <const float *>L.carry + r0 * ldc, ldc,
                        <float *>L.carry_c + r0 * ldc, ldc, at(L.g, t, r0, k), L.g.sn, cp,
                        ldcp, at(E.ch, t, r0, k), E.ch.sn, at(E.rc, t, r0, k), E.rc.sn,
                        at(E.xh, t, r0, k), E.xh.sn, at(E.rh, t, r0, k), E.rh.sn,
                        at(E.da, t, r0, k), E.da.sn, at(L.dg, t, r0, k), L.dg.sn,
                        at(E.dyc, t, r0, k), E.dyc.sn, <const float *>E.g_hh,
                        <const float *>E.g_c, <const float *>E.b_c)
    else:
        rc_lnlstm_bwd_d(rows, L.H, at(L.dh, t, r0, k), L.dh.sn,
                        <const double *>L.carry + r0 * ldc, ldc,
                        <double *>L.carry_c + r0 * ldc, ldc, at(L.g, t, r0, k), L.g.sn, cp,
                        ldcp, at(E.ch, t, r0, k), E.ch.sn, at(E.rc, t, r0, k), E.rc.sn,
                        at(E.xh, t, r0, k), E.xh.sn, at(E.rh, t, r0, k), E.rh.sn,
                        at(E.da, t, r0, k), E.da.sn, at(L.dg, t, r0, k), L.dg.sn,
                        at(E.dyc, t, r0, k), E.dyc.sn, <const double *>E.g_hh,
                        <const double *>E.g_c, <const double *>E.b_c)


cdef void bwd_steps(const Loop *L, floating kind) noexcept nogil:
    # Uses L.dh, L.c, L.c0, L.wh, the saved gates L.g and norms; writes dA (E.da),
    # dZ (L.dg, the recurrent norm's input gradient), dyc and the carries.
    cdef LNArrays E = shared(L)
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = RC_LN_GATES * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t ld0 = L.P * H   # c0's rows in this share
    cdef const floating *c = <const floating *>L.c.p
    cdef const floating *c0 = <const floating *>L.c0
    for i in range(L.T):
        loop_rows(L, i, True, &t, &tp, &B, &Bc)
        # fused (rc_lnlstm_bwd): dyc, dc, dA_t, carry_c, dZ_t
        if Bc > 0:
            bwd_rows(L, &E, t, 0, Bc, c + tp * L.c.st, L.c.sn)
        if B > Bc:
            bwd_rows(L, &E, t, Bc, B - Bc, c0 + Bc * ld0, ld0)
        if B < M:
            scale_rows(at(L.dg, t, B, kind), L.dg.sn, M - B, GH, <floating>0)
            scale_rows(at(E.da, t, B, kind), E.da.sn, M - B, GH, <floating>0)
            scale_rows(at(E.dyc, t, B, kind), E.dyc.sn, M - B, H, <floating>0)
        # carry_h[:B] = dZ_t[:B] @ Wh^T          (B, H) = (B, 4H)(H, 4H)^T
        mm_step(B, H, GH, at(L.dg, t, 0, kind), L.dg.sn, transposed(L.wh), <floating>0,
                <floating *>L.carry, L.cld * H)


# ----------------------------------------------------------------- entry points

cdef int saved_seqs(saved, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Loop *L, LNArrays *E,
                    Seq *xh_ih, Seq *r_ih, floating kind) except -1:
    cdef Py_ssize_t GH = RC_LN_GATES * H
    try:
        gates, xi, ri, xh, rh, ch, rc = saved
    except (TypeError, ValueError):
        raise ValueError("saved: expected the LNLSTMSaved returned by lnlstm.forward") from None
    seq_check[floating](gates, "saved.gates", T, N, GH, &L.g)
    seq_check[floating](xi, "saved.xh_ih", T, N, GH, xh_ih)
    seq_check[floating](ri, "saved.r_ih", T, N, RC_LN_GATES, r_ih)
    seq_check[floating](xh, "saved.xh_hh", T, N, GH, &E.xh)
    seq_check[floating](rh, "saved.r_hh", T, N, RC_LN_GATES, &E.rh)
    seq_check[floating](ch, "saved.c_hat", T, N, H, &E.ch)
    seq_check[floating](rc, "saved.r_c", T, N, 1, &E.rc)
    return 0


def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] c0,
            const floating[:, :] Wx, const floating[:, :] Wh, const floating[:] b,
            const floating[:] g_ih, const floating[:] b_ih, const floating[:] g_hh,
            const floating[:] b_hh, const floating[:] g_c, const floating[:] b_c,
            floating[:, :, :] h, floating[:, :, :] c, bint reverse=False, batch_sizes=None,
            bint save=True):
    """Run one layer-normalised LSTM layer and direction over all T steps.

    Parameters (logical shapes; layouts as lstm.forward)
    ----------
    x : (T, N, D)   h0, c0 : (N, H) C-contiguous   Wx : (D, 4H)   Wh : (H, 4H)
    b : (4H,) PyTorch's bias_ih + bias_hh
    g_ih, b_ih, g_hh, b_hh : (4H,) the gains and biases of the input and recurrent norms
    g_c, b_c : (H,) those of LN(c)
    h, c : (T, N, H) outputs (h in x's layout kind); c the un-normalised cell states
    reverse, batch_sizes : as lstm.forward
    save : False for inference: nothing is kept for backward (no x̂, 1/σ, ĉ arrays
        allocated or written; only the (T, N, 4H) gate workspace); h, c bitwise the same

    Returns
    -------
    saved : LNLSTMSaved, in h's layout kind; pass to `backward`. None if not ``save``.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0], GH = RC_LN_GATES * H
    cdef Loop L
    cdef Input inp
    cdef LNArrays E
    cdef Seq xi, ri
    cdef floating k = 0
    check_inputs(&L, &inp, RC_LN_GATES, reverse, x, h, Wx, Wh, h0)
    seq_check(c, "c", T, N, H, &L.c)
    same_layout(&inp.x, &L.h, NULL, T, N, inp.D)
    rows_check(c0, "c0", N, H)
    vec_check(b, "b", GH)
    for v, name in ((g_ih, "g_ih"), (b_ih, "b_ih"), (g_hh, "g_hh"), (b_hh, "b_hh")):
        vec_check[floating](v, name, GH)
    vec_check(g_c, "g_c", H)
    vec_check(b_c, "b_c", H)
    bs = check_batch_sizes(batch_sizes, T, N)
    dtype = np.float32 if floating is float else np.float64
    bm = L.h.bm
    if save:
        saved = LNLSTMSaved(*seq_block(bm, T, N, (GH, GH, RC_LN_GATES, GH, RC_LN_GATES, H, 1),
                                       dtype, True))
    else:
        gates, = seq_block(bm, T, N, (GH,), dtype)
        saved = None
    if T == 0 or N == 0 or H == 0:
        return saved
    if save:
        saved_seqs[floating](saved, T, N, H, &L, &E, &xi, &ri, k)
    else:
        # inference: only the gate workspace; NULL norms arrays (rc_layernorm_body.h)
        seq_check[floating](gates, "gates", T, N, GH, &L.g)
        xi.p = ri.p = E.xh.p = E.rh.p = E.ch.p = E.rc.p = NULL
    # every constant term of a, added once to the input side: β_ih + β_hh + b
    cdef floating[::1] beta = np.asarray(b_ih, dtype=dtype) + np.asarray(b_hh, dtype=dtype) \
        + np.asarray(b, dtype=dtype)
    cdef floating[:, ::1] scratch = aligned_rows(N, GH, dtype)
    L.bs = batch_ptr(bs)
    L.c0 = &c0[0, 0]
    L.scratch = &scratch[0, 0]
    E.g_hh, E.g_c, E.b_c = &g_hh[0], &g_c[0], &b_c[0]
    E.da.p = NULL
    E.dyc.p = NULL
    L.ext = &E
    keep = step_weight(Wh, &L.wh, T, N, GH, L.Hp, False, 0, save)
    cdef Mat a = uniform(L.g)
    with nogil:
        # A = LN_G(x @ Wx; γ_ih) + β_ih + β_hh + b, saving x̂_ih, 1/σ_ih (_lnloop.pxd)
        input_side_fwd(&inp, a, xi, ri, T * N, RC_LN_GATES, H, &g_ih[0], &beta[0], EPS)
        run_loop(&L, fwd_steps[float], fwd_steps[double])
    return saved


def backward(const floating[:, :, :] dh, const floating[:, :] dhn, const floating[:, :] dcn,
             const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] c0,
             const floating[:, :] Wx, const floating[:, :] Wh, const floating[:] g_ih,
             const floating[:] g_hh, const floating[:] g_c, const floating[:] b_c,
             const floating[:, :, :] h, const floating[:, :, :] c, saved,
             floating[:, :, :] dx, floating[:, :] dh0, floating[:, :] dc0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] db,
             floating[:] dg_ih, floating[:] db_ih, floating[:] dg_hh, floating[:] db_hh,
             floating[:] dg_c, floating[:] db_c, bint reverse=False, batch_sizes=None):
    """BPTT through one layer-normalised LSTM layer and direction.

    Writes ``dx`` (T, N, D; None: no input gradient, its products skipped), ``dh0``,
    ``dc0`` (N, H) and ADDS into ``dWx`` (D, 4H), ``dWh`` (H, 4H), ``db`` (4H,) (the
    gradient of bias_ih + bias_hh) and the norms' ``dg_ih``, ``db_ih``, ``dg_hh``,
    ``db_hh`` (4H,), ``dg_c``, ``db_c`` (H,). ``dh``, ``dhn``, ``dcn`` as
    lstm.backward; ``h``, ``c``, ``saved`` what `forward` wrote and returned
    (``saved`` is not modified).
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0], GH = RC_LN_GATES * H
    cdef Py_ssize_t R = T * N
    cdef Loop L
    cdef Input inp
    cdef Grads gr
    cdef LNArrays E
    cdef Seq xi, ri
    cdef floating k = 0
    check_inputs(&L, &inp, RC_LN_GATES, reverse, x, h, Wx, Wh, h0)
    seq_check(c, "c", T, N, H, &L.c)
    check_grads(&L, &inp, &gr, dh, dx, dWx, dWh, dhn, dh0)
    rows_check(c0, "c0", N, H)
    rows_check(dcn, "dcn", N, H)
    rows_check(dc0, "dc0", N, H)
    for v, name in ((g_ih, "g_ih"), (g_hh, "g_hh"), (db, "db"), (dg_ih, "dg_ih"),
                    (db_ih, "db_ih"), (dg_hh, "dg_hh"), (db_hh, "db_hh")):
        vec_check[floating](v, name, GH)
    for v, name in ((g_c, "g_c"), (b_c, "b_c"), (dg_c, "dg_c"), (db_c, "db_c")):
        vec_check[floating](v, name, H)
    saved_seqs[floating](saved, T, N, H, &L, &E, &xi, &ri, k)
    bs = check_batch_sizes(batch_sizes, T, N)
    dtype = np.float32 if floating is float else np.float64
    bm = L.h.bm
    # workspaces in h's layout kind: dA, dZ (the recurrent norm's input gradient), dyc
    da_arr, dz_arr, dyc_arr = seq_block(bm, T, N, (GH, GH, H), dtype, True)
    cdef floating[:, :] dzs = aligned_rows(N if reverse and bs is not None else 0, GH, dtype)
    if N == 0 or H == 0:
        if inp.D > 0 and N > 0 and T > 0 and dx is not None:
            np.asarray(dx)[...] = 0
        return
    copy_rows(dh0, dhn)
    copy_rows(dc0, dcn)
    if T == 0:
        return
    seq_check[floating](da_arr, "dA", T, N, GH, &E.da)
    seq_check[floating](dz_arr, "dZ", T, N, GH, &L.dg)
    seq_check[floating](dyc_arr, "dyc", T, N, H, &E.dyc)
    L.bs = batch_ptr(bs)
    L.c0 = &c0[0, 0]
    L.carry_c = &dc0[0, 0]
    E.g_hh, E.g_c, E.b_c = &g_hh[0], &g_c[0], &b_c[0]
    L.ext = &E
    keep = step_weight(Wh, &L.wh, T, N, GH, L.Hp, True)
    cdef Mat da = uniform(E.da)
    cdef Mat dyc = uniform(E.dyc)
    cdef Mat xh = uniform(E.xh)
    cdef Mat ch = uniform(E.ch)
    # after_loop's weight-gradient memory from the workspace cache
    keep_dw = ln_dw_reserve(&L, &inp, &gr, da, RC_LN_GATES, H, <floating>0)
    with nogil:
        run_loop(&L, bwd_steps[float], bwd_steps[double])
        # dWh, db, the input and recurrent norms' dγ, dβ, dZx = LN_G-backward(dA) in
        # place, dx and dWx (_lnloop.pxd)
        after_loop(&L, &inp, &gr, <floating *>(&dzs[0, 0] if dzs.shape[0] > 0 else NULL), R,
                   da, da, xh, xi, ri, RC_LN_GATES, H, &g_ih[0], &db[0], <floating *>NULL,
                   &dg_ih[0], &db_ih[0], &dg_hh[0], &db_hh[0])
        # dγ_c += Σ dyc ⊙ ĉ, dβ_c += Σ dyc
        ln_param_grads(dyc, ch, R, H, &dg_c[0], &db_c[0])

def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_threads.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)


def _set_packing(bint enabled):
    """Test hook: time loops pack their weight when the policy says so (True, the
    default) or never (False), in this module (its loops never fuse x_t Wx)."""
    set_packing(enabled, True)


include "_pack_hooks.pxi"
