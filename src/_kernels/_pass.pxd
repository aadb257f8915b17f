# The gated cells' fused passes (rc_pass.h), called from a Loop (header-only:
# cdef inline). gru.pyx and lstm.pyx run them as run_pass(L, rc_<cell>_pass,
# kind, ...): the rows of one step, from the Loop's arrays.

from _layout cimport Seq
from _loop cimport Loop

cdef extern from "rc_pass.h" nogil:
    ctypedef struct rc_rows:
        void *p
        Py_ssize_t ld
    ctypedef struct rc_pass:
        rc_rows g, s, prev, h, hw, dg, dan, dh, carry, carry_c
        const void *b
        const void *bh
    enum: RC_PASS_FWD, RC_PASS_BWD, RC_PASS_BWD_IP

# a cell's passes by kind and dtype: rc_gru_pass, rc_lstm_pass
ctypedef void (*cell_pass)(int kind, int f64, const rc_pass *st, Py_ssize_t rows,
                           Py_ssize_t H) noexcept nogil


cdef inline rc_rows rows_at(Seq a, Py_ssize_t t, Py_ssize_t r0, size_t isz) noexcept nogil:
    """Rows r0, r0+1, ... of step t of a sequence (NULL if it has no data)."""
    cdef rc_rows r
    r.p = NULL if a.p == NULL else <char *>a.p + (t * a.st + r0 * a.sn) * <Py_ssize_t>isz
    r.ld = a.sn
    return r


cdef inline rc_rows state_rows(const void *p, Py_ssize_t r0, Py_ssize_t ld,
                               size_t isz) noexcept nogil:
    """Rows r0, r0+1, ... of an (N, H) state or carry whose rows are ld apart."""
    cdef rc_rows r
    r.p = NULL if p == NULL else <char *>p + r0 * ld * <Py_ssize_t>isz
    r.ld = ld
    return r


cdef inline void pass_at(const Loop *L, Seq saved, Py_ssize_t t, Py_ssize_t r0,
                         const void *prev, Py_ssize_t ldprev, rc_pass *st) noexcept nogil:
    """st := rows [r0, ...) of step t of the Loop's arrays; saved: the state kept
    beside the gates (GRU hidden_n, LSTM c); prev: the previous state's rows."""
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    cdef Py_ssize_t ldc = L.cld * L.H   # the carries' rows in this share
    st.g = rows_at(L.g, t, r0, isz)
    st.s = rows_at(saved, t, r0, isz)
    st.prev.p = <void *>prev
    st.prev.ld = ldprev
    st.h = rows_at(L.h, t, r0, isz)
    st.hw = state_rows(L.scratch, r0, L.sld, isz)
    st.b = L.b
    st.bh = L.bh
    st.dg = rows_at(L.dg, t, r0, isz)
    st.dan = rows_at(L.dan, t, r0, isz)
    st.dh = rows_at(L.dh, t, r0, isz)
    st.carry = state_rows(L.carry, r0, ldc, isz)
    st.carry_c = state_rows(L.carry_c, r0, ldc, isz)


cdef inline void run_pass(const Loop *L, cell_pass fn, bint backward, Seq saved, Py_ssize_t t,
                          Py_ssize_t r0, Py_ssize_t rows, const void *prev,
                          Py_ssize_t ldprev) noexcept nogil:
    """A cell's fused pass over rows [r0, r0 + rows) of step t.

    saved: the state kept beside the gates (GRU hidden_n, LSTM c); prev: the
    previous state's rows (ldprev apart). Backward runs in place (dG over the
    saved gates) when the Loop's dG is the saved gates (overwrite_saved).
    """
    cdef rc_pass st
    cdef int kind = RC_PASS_FWD
    if backward:
        kind = RC_PASS_BWD_IP if L.dg.p == L.g.p else RC_PASS_BWD
    pass_at(L, saved, t, r0, prev, ldprev, &st)
    fn(kind, L.f64, &st, rows, L.H)
