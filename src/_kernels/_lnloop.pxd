# What the layer-normalised kernels (lnlstm.pyx, lngru.pyx) share: the float/double
# dispatch of rc_layernorm.h's all-rows passes, the input side's forward (GEMM, then
# LN_G over all T*N rows) and backward's after-the-loop section (dWh, the bias and
# gain/bias reductions, LN_G-backward of the input side in place, the dX and dWx GEMMs).
# cdef inline (fused over float/double where typed): each kernel compiles its own copy.
from _blas cimport floating, Mat, transposed, colsum_add
from _gemm cimport mm, aligned_empty, rc_dw_problem
from _layout cimport Seq, uniform
from _loop cimport (Loop, Input, Grads, dwh_accumulate, dwh_shifted, dw_begin, dw_term,
                   dw_shifted_term, dw_run, input_projection, dw_bytes, dw_workspace)

cdef extern from "rc_layernorm.h" nogil:
    void rc_ln_rows_f(float *a, Py_ssize_t lda, float *xh, Py_ssize_t ldxh, float *rs,
                      Py_ssize_t ldrs, Py_ssize_t rows, Py_ssize_t G, Py_ssize_t H,
                      const float *gamma, const float *beta, float eps)
    void rc_ln_rows_d(double *a, Py_ssize_t lda, double *xh, Py_ssize_t ldxh, double *rs,
                      Py_ssize_t ldrs, Py_ssize_t rows, Py_ssize_t G, Py_ssize_t H,
                      const double *gamma, const double *beta, double eps)
    void rc_ln_rows_bwd_f(float *da, Py_ssize_t ldda, const float *xh, Py_ssize_t ldxh,
                          const float *rs, Py_ssize_t ldrs, Py_ssize_t rows, Py_ssize_t G,
                          Py_ssize_t H, const float *gamma)
    void rc_ln_rows_bwd_d(double *da, Py_ssize_t ldda, const double *xh, Py_ssize_t ldxh,
                          const double *rs, Py_ssize_t ldrs, Py_ssize_t rows, Py_ssize_t G,
                          Py_ssize_t H, const double *gamma)
    void rc_ln_param_grads_f(const float *dy, Py_ssize_t lddy, const float *xh,
                             Py_ssize_t ldxh, Py_ssize_t rows, Py_ssize_t F, float *dgamma,
                             float *dbeta)
    void rc_ln_param_grads_d(const double *dy, Py_ssize_t lddy, const double *xh,
                             Py_ssize_t ldxh, Py_ssize_t rows, Py_ssize_t F, double *dgamma,
                             double *dbeta)


cdef inline list seq_block(bint batch_major, Py_ssize_t T, Py_ssize_t N, widths, dtype,
                           bint pool=False):
    """(T, N, F) arrays of the given widths F, contiguous in the layout kind, carved out
    of ONE allocation: one large block is reused from the heap from call to call, while
    several fresh ones cost a page fault per 4 KiB page each call (measured 4.7 ms vs
    0.2 ms for the LSTM's seven saved arrays at (T, N, H) = (100, 16, 128)); `pool`: a
    training call's, from the workspace cache (_pool.pyx), which keeps it between calls."""
    import numpy as np
    buf = (aligned_empty(T * N * sum(widths), dtype, True) if pool
           else np.empty(T * N * sum(widths), dtype=dtype))
    out, o = [], 0
    for F in widths:
        a = buf[o:o + T * N * F]
        o += T * N * F
        out.append(a.reshape(N, T, F).transpose(1, 0, 2) if batch_major else a.reshape(T, N, F))
    return out


cdef inline floating *at(Seq s, Py_ssize_t t, Py_ssize_t r0, floating kind) noexcept nogil:
    """Row r0 of step t of a sequence."""
    return <floating *>s.p + t * s.st + r0 * s.sn


cdef inline floating *at_or_null(Seq s, Py_ssize_t t, Py_ssize_t r0,
                                floating kind) noexcept nogil:
    """Row r0 of step t, or NULL for an array the forward does not save (s.p NULL)."""
    return NULL if s.p == NULL else <floating *>s.p + t * s.st + r0 * s.sn


cdef inline void ln_param_grads(Mat dy, Mat xh, Py_ssize_t rows, Py_ssize_t F,
                                floating *dgamma, floating *dbeta) noexcept nogil:
    # dγ += Σ dy ⊙ x̂, dβ += Σ dy over `rows` rows of width F (rc_ln_param_grads)
    if floating is float:
        rc_ln_param_grads_f(<float *>dy.p, dy.ld, <float *>xh.p, xh.ld, rows, F, dgamma, dbeta)
    else:
        rc_ln_param_grads_d(<double *>dy.p, dy.ld, <double *>xh.p, xh.ld, rows, F, dgamma,
                            dbeta)


cdef inline void input_side_fwd(const Input *inp, Mat a, Seq xi, Seq ri, Py_ssize_t R,
                                Py_ssize_t G, Py_ssize_t H, const floating *g_ih,
                                const floating *beta, double eps) noexcept nogil:
    # A = x @ Wx                          (R, GH) = (R, D)(D, GH), R = T*N
    input_projection(inp, R, G * H, a, <floating>0)
    # A = LN_G(A; γ_ih) + beta            (rc_ln_rows), saving x̂_ih, 1/σ_ih (when
    # xi.p, ri.p are NULL, inference: normalised in place, nothing saved)
    if floating is float:
        rc_ln_rows_f(<float *>a.p, a.ld, <float *>xi.p, xi.ld, <float *>ri.p, ri.ld, R, G, H,
                     g_ih, beta, eps)
    else:
        rc_ln_rows_d(<double *>a.p, a.ld, <double *>xi.p, xi.ld, <double *>ri.p, ri.ld, R, G,
                     H, g_ih, beta, eps)


cdef inline bint ln_dwh_plan(const Loop *L, const Grads *gr, Py_ssize_t R, Py_ssize_t GH,
                             rc_dw_problem *pr, bint check_data, floating kind) noexcept nogil:
    """after_loop's dWh problem on the dW kernel (the shifted main term), or False
    (check_data: the batch-major shift's data check, dwh_shifted; off before the
    loop has written dZ)."""
    if not dw_begin(pr, uniform(L.dg), GH, R, <long long>R * GH * L.Hp, kind):
        return False
    if check_data and not dwh_shifted(L, kind):
        return False
    dw_shifted_term(pr, L, GH, gr.dwh, kind)
    return True


cdef inline bint ln_dwx_plan(const Input *inp, const Grads *gr, Mat da, Py_ssize_t R,
                             Py_ssize_t GH, rc_dw_problem *pr, floating kind) noexcept nogil:
    """after_loop's dWx problem on the dW kernel (x^T dZx, dZx in da), or False."""
    cdef Mat x = uniform(inp.x)
    if inp.D <= 0 or not dw_begin(pr, da, GH, R, <long long>R * GH * inp.D, kind):
        return False
    dw_term(pr, x.p, x.ld, inp.D, 0, 0, R, 0, GH, gr.dwx, 0, kind)
    return True


cdef inline object ln_dw_reserve(const Loop *L, const Input *inp, Grads *gr, Mat da,
                                 Py_ssize_t G, Py_ssize_t H, floating kind):
    """after_loop's workspace for its two dW problems (one after the other: the
    larger's bytes) from the workspace cache, set in gr; returns the array that
    holds it (keep it until the call returns), or None. Call with L, inp, gr and
    da in place (the shapes decide, not the data)."""
    cdef Py_ssize_t R = L.T * L.N, GH = G * H
    cdef rc_dw_problem pr
    cdef size_t nbytes = 0, b
    gr.dw_ws, gr.dw_ws_bytes = NULL, 0
    if ln_dwh_plan(L, gr, R, GH, &pr, False, kind):
        nbytes = dw_bytes(&pr, kind)
    if ln_dwx_plan(inp, gr, da, R, GH, &pr, kind):
        b = dw_bytes(&pr, kind)
        nbytes = b if b > nbytes else nbytes
    return dw_workspace(gr, nbytes)


cdef inline void after_loop(const Loop *L, const Input *inp, const Grads *gr, floating *dzs,
                            Py_ssize_t R, Mat da, Mat dr, Mat xh, Seq xi, Seq ri, Py_ssize_t G, Py_ssize_t H,
                            const floating *g_ih, floating *db, floating *dbh,
                            floating *dg_ih, floating *db_ih, floating *dg_hh,
                            floating *db_hh) noexcept nogil:
    # Backward after the time loop. da: the input side's dA (all T*N rows; overwritten by
    # dZx); dr: the recurrent norm's output gradient (da itself for the LSTM, dS for the
    # GRU); xh: x̂_hh; xi, ri: x̂_ih, 1/σ_ih; dbh: the recurrent bias's gradient or NULL;
    # R = T*N rows.
    cdef Py_ssize_t GH = G * H
    cdef rc_dw_problem pr
    cdef bint done
    # dWh += sum_t h_prev(t)^T dZ_t                  (H, GH)
    # (its shifted main term on the packed dW kernel when it applies: _loop.pxd)
    done = ln_dwh_plan(L, gr, R, GH, &pr, True, <floating>0)
    if done:
        pr.ws, pr.ws_bytes = gr.dw_ws, gr.dw_ws_bytes
        done = dw_run(&pr, <floating>0)
    dwh_accumulate(L, gr.dwh, dzs, done)
    # db += Σ dA (dbh += Σ dS);  dγ, dβ of the norms (sums over all T*N rows)
    colsum_add(db, <const floating *>da.p, da.ld, R, GH)
    if dbh != NULL:
        colsum_add(dbh, <const floating *>dr.p, dr.ld, R, GH)
    ln_param_grads(dr, xh, R, GH, dg_hh, db_hh)
    ln_param_grads(da, uniform(xi), R, GH, dg_ih, db_ih)
    # dZx = LN_G-backward(dA) over all rows, in place
    if floating is float:
        rc_ln_rows_bwd_f(<float *>da.p, da.ld, <float *>xi.p, xi.ld, <float *>ri.p, ri.ld, R,
                         G, H, g_ih)
    else:
        rc_ln_rows_bwd_d(<double *>da.p, da.ld, <double *>xi.p, xi.ld, <double *>ri.p, ri.ld,
                         R, G, H, g_ih)
    if inp.D > 0:
        if gr.dx.p != NULL:   # (NULL: no dx wanted)
            # dx = dZx @ Wx^T                 (R, D) = (R, GH)(D, GH)^T
            mm(R, inp.D, GH, <floating>1, da, transposed(inp.wx), <floating>0, gr.dx)
        # dWx += x^T dZx                  (D, GH) += (D, R)(R, GH), on the dW kernel or BLAS
        done = ln_dwx_plan(inp, gr, da, R, GH, &pr, <floating>0)
        if done:
            pr.ws, pr.ws_bytes = gr.dw_ws, gr.dw_ws_bytes
            done = dw_run(&pr, <floating>0)
        if not done:
            mm(inp.D, GH, R, <floating>1, transposed(uniform(inp.x)), da, <floating>1, gr.dwx)
