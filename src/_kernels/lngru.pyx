"""Layer-normalised GRU kernel: one layer, one direction, all T steps in one call.

Equations (Ba, Kiros & Hinton 2016, "Layer Normalization", §3.1, applied to
PyTorch's GRU, ``reset_after=True``; gates r, z, n along the 3H axis). ``LN_G``
normalises each of the three gate groups of H units of a row on its own (mean
and biased variance, eps = 1e-5 as ``torch.nn.LayerNorm``) with a per-unit
gain γ and bias β::

    A = LN_G(x_t Wx; γ_ih, β_ih) + b_ih,   S = LN_G(h_{t-1} Wh; γ_hh, β_hh) + b_hh
    r = σ(A_r + S_r),  z = σ(A_z + S_z)
    n = tanh(A_n + r ⊙ S_n)
    h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

Forward
    A = X Wx                       one GEMM over all T*N rows, into `gates`
    A = LN_G(A) + β_ih + b_ih (+ β_hh + b_hh in the r, z blocks)
                                   one pass over all rows (rc_ln_rows, rc_layernorm.h)
    per step t:  S = H_prev Wh     one GEMM into an (N, 3H) scratch
                 one fused pass per row (rc_lngru_fwd): the three group norms of
                 S, the gates, S_n = γ_n x̂_n + β_n + b_hn (saved), h_t
Backward (BPTT)
    per step t (reverse order):  one fused pass per row (rc_lngru_bwd): dA_t (input
                 side), dS_t (recurrent side: dA_t with its n block times r),
                 dZ_t = LN_G-backward(dS_t), carry = d ⊙ z;  carry += dZ_t Wh^T one GEMM
    after the loop:  dWh += H_prev^T dZ (shifted pairs); the gains', biases' and
                 b_ih/b_hh gradients as sums over all rows; dZx = LN_G-backward(dA)
                 in place; dX = dZx Wx^T, dWx += X^T dZx

Saved for backward (``LNGRUSaved``): ``gates`` (T, N, 3H) the activations r, z,
n; ``hidden_n`` (T, N, H) S_n; ``xh_ih``/``xh_hh`` (T, N, 3H) the normalised
projections and ``r_ih``/``r_hh`` (T, N, 3) their 1/σ (saved rather than
recomputed for the reasons given in lnlstm.pyx).
Inference (``save=False``) keeps none of them (as lnlstm.pyx: only the gate
workspace; x̂ evaluated inline from μ and 1/σ); h bitwise the same.

Design notes: as lnlstm.pyx (the Loop of _loop.pxd, the extra arrays through
``Loop.ext``, offset per thread share by the body; zeros at padded positions).
``reset_after=False`` with layer_norm is refused by the models.
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
from _lnloop cimport seq_block, at, at_or_null, ln_dw_reserve, input_side_fwd, after_loop
from _checks cimport (seq_check, same_layout, rows_check, vec_check, check_batch_sizes,
                      batch_ptr, check_inputs, check_grads, copy_rows)

require_simd()   # a forced single-SIMD-level build on a CPU without that level: ImportError

cdef extern from "rc_layernorm.h" nogil:
    void rc_lngru_fwd_f(Py_ssize_t rows, Py_ssize_t H, float eps, const float *s,
                        Py_ssize_t lds, float *a, Py_ssize_t lda, float *xh, Py_ssize_t ldxh,
                        float *rh, Py_ssize_t ldrh, const float *hp, Py_ssize_t ldhp,
                        float *hn, Py_ssize_t ldhn, float *h, Py_ssize_t ldh,
                        const float *g_hh, const float *bhn)
    void rc_lngru_fwd_d(Py_ssize_t rows, Py_ssize_t H, double eps, const double *s,
                        Py_ssize_t lds, double *a, Py_ssize_t lda, double *xh,
                        Py_ssize_t ldxh, double *rh, Py_ssize_t ldrh, const double *hp,
                        Py_ssize_t ldhp, double *hn, Py_ssize_t ldhn, double *h,
                        Py_ssize_t ldh, const double *g_hh, const double *bhn)
    void rc_lngru_bwd_f(Py_ssize_t rows, Py_ssize_t H, const float *dh, Py_ssize_t lddh,
                        float *cy, Py_ssize_t ldcy, const float *g, Py_ssize_t ldg,
                        const float *hn, Py_ssize_t ldhn, const float *hp, Py_ssize_t ldhp,
                        const float *xh, Py_ssize_t ldxh, const float *rh, Py_ssize_t ldrh,
                        float *da, Py_ssize_t ldda, float *ds, Py_ssize_t ldds, float *dz,
                        Py_ssize_t lddz, const float *g_hh)
    void rc_lngru_bwd_d(Py_ssize_t rows, Py_ssize_t H, const double *dh, Py_ssize_t lddh,
                        double *cy, Py_ssize_t ldcy, const double *g, Py_ssize_t ldg,
                        const double *hn, Py_ssize_t ldhn, const double *hp, Py_ssize_t ldhp,
                        const double *xh, Py_ssize_t ldxh, const double *rh, Py_ssize_t ldrh,
                        double *da, Py_ssize_t ldda, double *ds, Py_ssize_t ldds, double *dz,
                        Py_ssize_t lddz, const double *g_hh)

cdef enum:
    GATES = 3

#: torch.nn.LayerNorm's default eps (the kernels' constant)
cdef double EPS = 1e-5
eps = EPS

#: What `forward` saves for `backward` (see the module docstring).
LNGRUSaved = namedtuple("LNGRUSaved", ["gates", "hidden_n", "xh_ih", "r_ih", "xh_hh", "r_hh"])


cdef struct LNArrays:
    # the per-step arrays the Loop does not have (Loop.ext)
    Seq xh              # x̂ of the recurrent norm (T, N, 3H)
    Seq rh              # its 1/σ per group (T, N, 3)
    Seq da              # backward: the input side's dA (T, N, 3H)
    Seq ds              # backward: the recurrent side's dS (T, N, 3H)
    const void *g_hh    # γ_hh (3H,)
    const void *bhn     # β_hh,n + b_hh,n (H,)


cdef inline LNArrays shared(const Loop *L) noexcept nogil:
    """This share's rows (k, k+P, ...) of the Loop's LNArrays."""
    cdef LNArrays E = (<const LNArrays *>L.ext)[0]
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    E.xh = every_pth_row(E.xh, L.k, L.P, isz)
    E.rh = every_pth_row(E.rh, L.k, L.P, isz)
    E.da = every_pth_row(E.da, L.k, L.P, isz)
    E.ds = every_pth_row(E.ds, L.k, L.P, isz)
    return E


# ----------------------------------------------------------------- time loops

cdef inline void fwd_rows(const Loop *L, const LNArrays *E, Py_ssize_t t, Py_ssize_t r0,
                          Py_ssize_t rows, const floating *hp, Py_ssize_t ldhp) noexcept nogil:
    cdef Py_ssize_t H = L.H, GH = GATES * H, lds = L.sld
    cdef floating *s = <floating *>L.scratch + r0 * lds
    cdef floating k = 0
    # S[rows] = h_prev @ Wh                   (rows, 3H) = (rows, H)(H, 3H)
    mm_step(rows, GH, H, hp, ldhp, L.wh, <floating>0, s, lds)
    # fused (rc_lngru_fwd): x̂_hh = LN_G(S); r, z, S_n, n; h_t  (inference: the norms'
    # arrays and S_n NULL, x̂_hh inline)
    if floating is float:
        rc_lngru_fwd_f(rows, H, EPS, s, lds, at(L.g, t, r0, k), L.g.sn,
                       at_or_null(E.xh, t, r0, k), E.xh.sn, at_or_null(E.rh, t, r0, k),
                       E.rh.sn, hp, ldhp, at_or_null(L.hn, t, r0, k),
                       L.hn.sn, at(L.h, t, r0, k), L.h.sn, <const float *>E.g_hh,
                       <const float *>E.bhn)
    else:
        rc_lngru_fwd_d(rows, H, EPS, s, lds, at(L.g, t, r0, k), L.g.sn,
                       at_or_null(E.xh, t, r0, k), E.xh.sn, at_or_null(E.rh, t, r0, k),
                       E.rh.sn, hp, ldhp, at_or_null(L.hn, t, r0, k),
                       L.hn.sn, at(L.h, t, r0, k), L.h.sn, <const double *>E.g_hh,
                       <const double *>E.bhn)


cdef void fwd_steps(const Loop *L, floating kind) noexcept nogil:
    cdef LNArrays E = shared(L)
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = GATES * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t h0_ld = L.P * H, h_st = L.h.st, h_sn = L.h.sn
    cdef const floating *h0 = <const floating *>L.h0
    cdef floating *h = <floating *>L.h.p
    for i in range(L.T):
        loop_rows(L, i, False, &t, &tp, &B, &Bc)
        if Bc > 0:
            fwd_rows(L, &E, t, 0, Bc, h + tp * h_st, h_sn)
        if B > Bc:
            fwd_rows(L, &E, t, Bc, B - Bc, h0 + Bc * h0_ld, h0_ld)
        if B < M:
            # padding: zeros in h and every saved array (the after-loop sums read them)
            scale_rows(h + t * h_st + B * h_sn, h_sn, M - B, H, <floating>0)
            scale_rows(at(L.g, t, B, kind), L.g.sn, M - B, GH, <floating>0)
            if E.xh.p != NULL:      # (inference: no saved norms)
                scale_rows(at(L.hn, t, B, kind), L.hn.sn, M - B, H, <floating>0)
                scale_rows(at(E.xh, t, B, kind), E.xh.sn, M - B, GH, <floating>0)
                scale_rows(at(E.rh, t, B, kind), E.rh.sn, M - B, GATES, <floating>0)


cdef inline void bwd_rows(const Loop *L, const LNArrays *E, Py_ssize_t t, Py_ssize_t r0,
                          Py_ssize_t rows, const floating *hp, Py_ssize_t ldhp) noexcept nogil:
    cdef Py_ssize_t ldc = L.cld * L.H
    cdef floating k = 0
    if floating is float:
        rc_lngru_bwd_f(rows, L.H, at(L.dh, t, r0, k), L.dh.sn, <float *>L.carry + r0 * ldc, ldc,
                       at(L.g, t, r0, k), L.g.sn, at(L.hn, t, r0, k), L.hn.sn, hp, ldhp,
                       at(E.xh, t, r0, k), E.xh.sn, at(E.rh, t, r0, k), E.rh.sn,
                       at(E.da, t, r0, k), E.da.sn, at(E.ds, t, r0, k), E.ds.sn,
                       at(L.dg, t, r0, k), L.dg.sn, <const float *>E.g_hh)
    else:
        rc_lngru_bwd_d(rows, L.H, at(L.dh, t, r0, k), L.dh.sn, <double *>L.carry + r0 * ldc,
                       ldc, at(L.g, t, r0, k), L.g.sn, at(L.hn, t, r0, k), L.hn.sn, hp, ldhp,
                       at(E.xh, t, r0, k), E.xh.sn, at(E.rh, t, r0, k), E.rh.sn,
                       at(E.da, t, r0, k), E.da.sn, at(E.ds, t, r0, k), E.ds.sn,
                       at(L.dg, t, r0, k), L.dg.sn, <const double *>E.g_hh)


cdef void bwd_steps(const Loop *L, floating kind) noexcept nogil:
    cdef LNArrays E = shared(L)
    cdef Py_ssize_t i, t, tp, B, Bc, H = L.H, GH = GATES * H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t ld0 = L.P * H, h_st = L.h.st, h_sn = L.h.sn   # h0's rows in this share
    cdef const floating *h0 = <const floating *>L.h0
    cdef const floating *h = <const floating *>L.h.p
    for i in range(L.T):
        loop_rows(L, i, True, &t, &tp, &B, &Bc)
        # fused (rc_lngru_bwd): dA_t, dS_t, dZ_t, carry = d z
        if Bc > 0:
            bwd_rows(L, &E, t, 0, Bc, h + tp * h_st, h_sn)
        if B > Bc:
            bwd_rows(L, &E, t, Bc, B - Bc, h0 + Bc * ld0, ld0)
        if B < M:
            scale_rows(at(L.dg, t, B, kind), L.dg.sn, M - B, GH, <floating>0)
            scale_rows(at(E.da, t, B, kind), E.da.sn, M - B, GH, <floating>0)
            scale_rows(at(E.ds, t, B, kind), E.ds.sn, M - B, GH, <floating>0)
        # carry[:B] += dZ_t[:B] @ Wh^T           (B, H) += (B, 3H)(H, 3H)^T
        mm_step(B, H, GH, at(L.dg, t, 0, kind), L.dg.sn, transposed(L.wh), <floating>1,
                <floating *>L.carry, L.cld * H)


# ----------------------------------------------------------------- entry points

cdef int saved_seqs(saved, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Loop *L, LNArrays *E,
                    Seq *xh_ih, Seq *r_ih, floating kind) except -1:
    cdef Py_ssize_t GH = GATES * H
    try:
        gates, hn, xi, ri, xh, rh = saved
    except (TypeError, ValueError):
        raise ValueError("saved: expected the LNGRUSaved returned by lngru.forward") from None
    seq_check[floating](gates, "saved.gates", T, N, GH, &L.g)
    seq_check[floating](hn, "saved.hidden_n", T, N, H, &L.hn)
    seq_check[floating](xi, "saved.xh_ih", T, N, GH, xh_ih)
    seq_check[floating](ri, "saved.r_ih", T, N, GATES, r_ih)
    seq_check[floating](xh, "saved.xh_hh", T, N, GH, &E.xh)
    seq_check[floating](rh, "saved.r_hh", T, N, GATES, &E.rh)
    return 0


def forward(const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] Wx,
            const floating[:, :] Wh, const floating[:] bx, const floating[:] bh,
            const floating[:] g_ih, const floating[:] b_ih, const floating[:] g_hh,
            const floating[:] b_hh, floating[:, :, :] h, bint reverse=False,
            batch_sizes=None, bint save=True):
    """Run one layer-normalised GRU layer and direction over all T steps.

    Parameters (logical shapes; layouts as gru.forward)
    ----------
    x : (T, N, D)   h0 : (N, H) C-contiguous   Wx : (D, 3H)   Wh : (H, 3H)
    bx, bh : (3H,) PyTorch's bias_ih, bias_hh
    g_ih, b_ih, g_hh, b_hh : (3H,) the gains and biases of the input and recurrent norms
    h : (T, N, H) output, in x's layout kind
    reverse, batch_sizes : as gru.forward
    save : False for inference: nothing is kept for backward (no x̂, 1/σ, S_n arrays
        allocated or written; only the (T, N, 3H) gate workspace); h bitwise the same

    Returns
    -------
    saved : LNGRUSaved, in h's layout kind; pass to `backward`. None if not ``save``.
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0], GH = GATES * H
    cdef Loop L
    cdef Input inp
    cdef LNArrays E
    cdef Seq xi, ri
    cdef floating k = 0
    check_inputs(&L, &inp, GATES, reverse, x, h, Wx, Wh, h0)
    same_layout(&inp.x, &L.h, NULL, T, N, inp.D)
    for v, name in ((bx, "bx"), (bh, "bh"), (g_ih, "g_ih"), (b_ih, "b_ih"), (g_hh, "g_hh"),
                    (b_hh, "b_hh")):
        vec_check[floating](v, name, GH)
    bs = check_batch_sizes(batch_sizes, T, N)
    dtype = np.float32 if floating is float else np.float64
    bm = L.h.bm
    if save:
        saved = LNGRUSaved(*seq_block(bm, T, N, (GH, H, GH, GATES, GH, GATES), dtype, True))
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
        xi.p = ri.p = E.xh.p = E.rh.p = L.hn.p = NULL
    # the input side's constant terms: β_ih + b_ih, and the recurrent r, z ones β_hh + b_hh
    # (the recurrent n block's sit inside the reset product: bhn)
    rec = np.asarray(b_hh, dtype=dtype) + np.asarray(bh, dtype=dtype)
    beta_np = np.asarray(b_ih, dtype=dtype) + np.asarray(bx, dtype=dtype)
    beta_np[:2 * H] += rec[:2 * H]
    cdef floating[::1] beta = beta_np
    cdef floating[::1] bhn = np.ascontiguousarray(rec[2 * H:])
    cdef floating[:, ::1] scratch = aligned_rows(N, GH, dtype)
    L.bs = batch_ptr(bs)
    L.scratch = &scratch[0, 0]
    E.g_hh, E.bhn = &g_hh[0], &bhn[0]
    E.da.p = NULL
    E.ds.p = NULL
    L.ext = &E
    keep = step_weight(Wh, &L.wh, T, N, GH, L.Hp, False, 0, save)
    cdef Mat a = uniform(L.g)
    with nogil:
        # A = LN_G(x @ Wx; γ_ih) + beta, saving x̂_ih, 1/σ_ih (_lnloop.pxd)
        input_side_fwd(&inp, a, xi, ri, T * N, GATES, H, &g_ih[0], &beta[0], EPS)
        run_loop(&L, fwd_steps[float], fwd_steps[double])
    return saved


def backward(const floating[:, :, :] dh, const floating[:, :] dhn,
             const floating[:, :, :] x, const floating[:, :] h0, const floating[:, :] Wx,
             const floating[:, :] Wh, const floating[:] g_ih, const floating[:] g_hh,
             const floating[:, :, :] h, saved, floating[:, :, :] dx, floating[:, :] dh0,
             floating[:, :] dWx, floating[:, :] dWh, floating[:] dbx, floating[:] dbh,
             floating[:] dg_ih, floating[:] db_ih, floating[:] dg_hh, floating[:] db_hh,
             bint reverse=False, batch_sizes=None):
    """BPTT through one layer-normalised GRU layer and direction.

    Writes ``dx`` (T, N, D; None: no input gradient, its products skipped), ``dh0``
    (N, H) and ADDS into ``dWx`` (D, 3H), ``dWh`` (H, 3H), ``dbx``, ``dbh`` and the
    norms' ``dg_ih``, ``db_ih``, ``dg_hh``, ``db_hh`` (3H,). ``saved`` is what
    `forward` returned (not modified).
    """
    cdef Py_ssize_t T = x.shape[0], N = x.shape[1], H = Wh.shape[0], GH = GATES * H
    cdef Py_ssize_t R = T * N
    cdef Loop L
    cdef Input inp
    cdef Grads gr
    cdef LNArrays E
    cdef Seq xi, ri
    cdef floating k = 0
    check_inputs(&L, &inp, GATES, reverse, x, h, Wx, Wh, h0)
    check_grads(&L, &inp, &gr, dh, dx, dWx, dWh, dhn, dh0)
    for v, name in ((g_ih, "g_ih"), (g_hh, "g_hh"), (dbx, "dbx"), (dbh, "dbh"),
                    (dg_ih, "dg_ih"), (db_ih, "db_ih"), (dg_hh, "dg_hh"), (db_hh, "db_hh")):
        vec_check[floating](v, name, GH)
    saved_seqs[floating](saved, T, N, H, &L, &E, &xi, &ri, k)
    bs = check_batch_sizes(batch_sizes, T, N)
    dtype = np.float32 if floating is float else np.float64
    bm = L.h.bm
    da_arr, ds_arr, dz_arr = seq_block(bm, T, N, (GH, GH, GH), dtype, True)
    cdef floating[:, :] dzs = aligned_rows(N if reverse and bs is not None else 0, GH, dtype)
    if N == 0 or H == 0:
        if inp.D > 0 and N > 0 and T > 0 and dx is not None:
            np.asarray(dx)[...] = 0
        return
    copy_rows(dh0, dhn)
    if T == 0:
        return
    seq_check[floating](da_arr, "dA", T, N, GH, &E.da)
    seq_check[floating](ds_arr, "dS", T, N, GH, &E.ds)
    seq_check[floating](dz_arr, "dZ", T, N, GH, &L.dg)
    L.bs = batch_ptr(bs)
    E.g_hh = &g_hh[0]
    E.bhn = NULL
    L.ext = &E
    keep = step_weight(Wh, &L.wh, T, N, GH, L.Hp, True)
    cdef Mat da = uniform(E.da)
    cdef Mat ds = uniform(E.ds)
    cdef Mat xh = uniform(E.xh)
    # after_loop's weight-gradient memory from the workspace cache
    keep_dw = ln_dw_reserve(&L, &inp, &gr, da, GATES, H, <floating>0)
    with nogil:
        run_loop(&L, bwd_steps[float], bwd_steps[double])
        # dWh, dbx += Σ dA, dbh += Σ dS, the norms' dγ, dβ, dZx = LN_G-backward(dA) in
        # place, dx and dWx (_lnloop.pxd)
        after_loop(&L, &inp, &gr, <floating *>(&dzs[0, 0] if dzs.shape[0] > 0 else NULL), R,
                   da, ds, xh, xi, ri, GATES, H, &g_ih[0], &dbx[0], &dbh[0],
                   &dg_ih[0], &db_ih[0], &dg_hh[0], &db_hh[0])

def _blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work, size_t state,
                       bint row_split=False):
    """Install the BLAS thread functions and the shared section state (rc_threads.h)."""
    blas_thread_hooks(set_fn, get_fn, min_work, state, row_split)


def _set_packing(bint enabled):
    """Test hook: time loops pack their weight when the policy says so (True, the
    default) or never (False), in this module (its loops never fuse x_t Wx)."""
    set_packing(enabled, True)


include "_pack_hooks.pxi"
