# The time loop shared by the three cells (header-only: cdef inline).
#
# A cell kernel describes one layer and one direction as a `Loop`: the problem
# (T, N, H, G, lengths, direction), the recurrent weight and the step arrays
# (sequence views, initial states, carries, scratch), and its two per-step
# bodies (`fwd_steps`, `bwd_steps` in rnn/gru/lstm.pyx) -- the statsmodels
# way: one state object, short named stages. What is the same for every cell
# lives here once:
#   forward_loop:  the all-steps input projection A = X Wx, then the time loop
#                  (inference on a long loop: a chunk of steps' A at a time, by
#                  each thread's share in its steps, chunk_input; the LSTM's
#                  unit split: each block its columns, lstm.pyx block_input);
#   backward_loop: the time loop, then the all-steps input-side and weight
#                  gradients (dX, dWx, db, dWh);
#   run_loop:      the time loop on one thread (in a single-thread section
#                  when the per-step GEMM is small) or split by rows over P
#                  threads, each running the same body on rows k, k+P, ...;
#   loop_rows:     which step, and which rows of this share, iteration i handles.
# A cell may instead hand run_loop a unit split (L.units, L.nu: shares of the
# hidden units over all rows, synchronised per step; the LSTM's, see rc_threads.h).
# A body reads its arrays from the Loop and its own rows only, so the row
# split needs no synchronisation (see rc_threads.h).

from libc.float cimport DBL_MAX, FLT_MAX
from libc.math cimport INFINITY, fabs
from libc.stdint cimport uintptr_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport free
from _buffer cimport array_data

from _blas cimport (floating, Mat, mat, transposed, col_block, colsum_add, scale_rows,
                    all_finite, all_zero,
                    NoTrans, Trans)
from _gemm cimport (mm, mm_step, mm_step2, packed_nr, rc_dw_problem, rc_dw_term, rc_dw_f,
                    rc_dw_d, rc_dw_f_bytes, rc_dw_d_bytes, dw_enabled, RC_DW_TERMS,
                    cache_bytes)
from _layout cimport Seq, seq, uniform, every_pth_row, rows_block
from _threads cimport (row_threads, share, run_tasks, single_open, single_close, private_rows,
                       count_row_split,
                       loop_threads_begin, loop_threads_end, gemms_threads_begin,
                       input_threads_begin)

cdef enum:
    MAX_TASKS = 8       # rc_run_tasks runs at most 8 threads

cdef struct Loop

ctypedef void (*body_f)(const Loop *, float) noexcept nogil
ctypedef void (*body_d)(const Loop *, double) noexcept nogil

cdef struct Loop:
    # the problem
    Py_ssize_t T, N, H, G       # steps, batch rows, hidden size, gates (1, 3, 4)
    Py_ssize_t Hp               # the width of h, h0 and the dh carry: H, or LSTM's proj_size
    const Py_ssize_t *bs        # batch_sizes (T,) of a sorted batch, or NULL: all N rows
    bint reverse, f64, relu     # direction, dtype, the RNN's activation (else tanh)
    bint reset_before           # GRU reset_after=False: L.hn holds r ⊙ h_prev (see gru.pyx)
    body_f run_f                # the cell's time-loop body, for float and double
    body_d run_d
    # the step arrays (each body says which it uses)
    Mat wh                      # the recurrent weight (H, GH) as the loop reads it (maybe packed)
    Mat wxh                     # a fused forward loop's [Wx; Wh] (D + Hp, GH), packed (nr > 0;
                                # else nr == 0: x Wx is one GEMM before the loop, or in
                                # chunks on Wx as given); wh is its row block D..
                                # (_gemm.pxd: fused_weight)
    Seq x                       # the input sequence (T, N, D), read per step by a fused loop
    Py_ssize_t D
    Mat wxt                     # backward: Wx^T (GH, D) packed (nr > 0: dx_t = dA_t Wx^T in
                                # the steps, input_grad; else nr == 0: one GEMM after the loop)
    Seq dx                      # backward: the input gradient (T, N, D)
    Py_ssize_t chunk            # inference: steps per chunk of the input projection (0: all
                                # T steps at once; rc_infer_chunk), into `cbuf` (chunk, N, GH)
    void *cbuf                  # from x rows gathered time-major into `xbuf` (chunk, N, D)
    void *xbuf                  # each share computes its own rows' chunks in its steps
                                # (chunk_input; loop_share gives it its part of both;
                                # the LSTM's unit split: each block its columns of cbuf,
                                # from x in place -- xbuf NULL there)
    const void *h0              # initial states (N, H), C-contiguous
    bint h0_zero                # forward: h0 all zeros, Wh finite (zero_start): the
                                # products from h0 are skipped (step_product `from_h0`)
    const void *c0              # LSTM
    const void *b               # bias (GH,) (GRU: the input side's bx)
    const void *bh              # GRU: the hidden side's bias (GH,)
    Seq h                       # the outputs (T, N, H)
    Seq g                       # pre-activations, then the saved gates (T, N, GH); RNN: = h
    Seq c                       # LSTM: the cell states (T, N, H)
    Seq hn                      # GRU: the saved hidden_n (T, N, H)
    Mat wr                      # LSTM proj: W_hr^T (H, Hp) (p NULL: no projection; maybe packed)
    Seq m                       # LSTM proj: o ⊙ tanh(c) (T, N, H), projected into h
    Seq dht                     # LSTM proj backward: dh_t + carry (T, N, Hp)
    void *scratch               # GRU forward: (N, GH) per-step recurrent projection
    Py_ssize_t sld              # its row stride (G*H): loop_share gives each share a
                                # contiguous block of it, not every P-th row
    bint private_steps          # g, hn and m are one step's buffers nobody reads after the
                                # loop (inference: _checks.pxd one_step): loop_share gives
                                # each share a contiguous block of their rows too
    Seq dh                      # backward: the upstream gradient (T, N, H)
    Seq dg                      # backward: the pre-activation gradient (T, N, GH)
    Seq dan                     # GRU backward: the input side's n block (T, N, H)
    void *carry                 # backward: dh carry (N, H) (starts as dhn, ends as dh0)
    void *carry_c               # LSTM backward: dc carry (N, H)
    Py_ssize_t cld              # the carries' row stride in rows: 1, or P on a share whose
                                # carries are every P-th row of the caller's
    void *carry_out             # a share computing on its own block of carry rows (run_loop,
    void *carry_c_out           # loop_share): its rows of the caller's carries, where
                                # loop_task copies them from and back (NULL: in place)
    int k, P                    # this share: rows k, k+P, ... (all rows: 0, 1)
    const void *ext             # a cell's own extra arrays (lnlstm.pyx: LNArrays), not
                                # shared by loop_share: the body offsets them by (k, P)
    # a unit split (LSTM; rc_threads.h): the schedule (an rc_units: the unit blocks,
    # their packed weight slices from L.wh.p, or from L.wxh.p when they are of
    # [Wx; Wh]), this share's first block; `units`:
    # the nu shares run_loop runs instead
    void *sched
    int ublock, nown            # this share's own blocks: nown from ublock
    Loop *units
    int nu

cdef struct Input:              # the input side, all T*N rows at once
    Seq x                       # (T, N, D); the GEMMs read its uniform (T*N, D) view
    Mat wx                      # (D, GH)
    Py_ssize_t D

cdef struct Grads:              # what backward writes after the time loop
    Mat dx                      # the uniform (T*N, D) view of dx, written
    Mat dwx, dwh                # (D, GH), (H, GH), accumulated into
    void *db                    # (GH,) accumulated: the input side's bias
    void *dbh                   # GRU: the hidden side's bias (GH,), else NULL
    void *dzs                   # (N, GH) scratch (reverse with lengths), else NULL
    void *dw_ws                 # weight_grads' workspace (dw_reserve), else NULL
    size_t dw_ws_bytes


cdef inline void loop_init(Loop *L, Py_ssize_t T, Py_ssize_t N, Py_ssize_t H, Py_ssize_t G,
                           bint reverse, bint f64) noexcept nogil:
    """A Loop over all rows with no arrays yet (NULL everywhere; bs NULL: no lengths)."""
    memset(L, 0, sizeof(Loop))
    L.T, L.N, L.H, L.G, L.Hp = T, N, H, G, H
    L.sld = G * H
    L.cld = 1
    L.reverse, L.f64 = reverse, f64
    L.k, L.P = 0, 1


cdef inline const void *rows_from(const void *p, Py_ssize_t nbytes) noexcept nogil:
    if p == NULL:   # (not a conditional expression: Cython's temporary drops const)
        return NULL
    return <const char *>p + nbytes


cdef extern from "stdlib.h" nogil:
    int posix_memalign(void **memptr, size_t alignment, size_t size)


cdef inline Loop loop_share(const Loop *L, int k, int P, bint together, char *carries) noexcept nogil:
    """The Loop of rows k, k+P, ...: every row-indexed array starts at row k, P rows apart;
    the loop's own per-row buffers (the scratch; g, hn and m when L.private_steps; the
    carries when `carries` is a buffer for them: N*Hp elements for the dh carry, then
    N*H for the dc carry) hold the share's rows together instead, after those of shares
    0..k-1 (the carries copied from and back to the caller's rows: loop_task).

    Why: the shares write their rows at every step. Rows of 1-3 KB interleaved
    between two cores put both cores' rows in every 4 KB page, and the L2
    prefetchers of each core fetched the other's freshly written lines: in a C
    harness of the GRU's inference step ((16 rows a thread, D = 64, H = 256), x
    and h interleaved as here), 70-73 GFLOP/s a thread on 2 Zen 4 cores with
    the buffers interleaved, 95-98 with each thread's rows together, 103 on one
    thread. In the models (float32, 2 threads, interleaved / together; the median
    of 40-300 paired calls alternating the hook, its quartiles): inference GRU
    (T, N, D, H) = (100, 16, 64, 128) 1.151 (1.13-1.18), (100, 32, 64, 256) 1.040
    (1.01-1.05); LSTM (100, 16, 64, 128) 1.155 (1.06-1.21), (100, 32, 256, 256)
    1.020 (its 4 KB rows are a page each); RNN 1.00; forward + backward, where
    the backward's carries are a share's own rows too (run_loop, loop_share;
    the saved activations keep the callers' layout): LSTM (100, 32, 256, 256)
    1.037 (1.02-1.05), GRU (100, 16, 64, 128) 1.043, (100, 32, 64, 256)
    1.008-1.025, RNN (100, 32, 256, 256) 0.993 (quartiles 0.89-1.08: noise)."""
    cdef Loop s = L[0]
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    cdef Py_ssize_t row = k * L.H * <Py_ssize_t>isz, rowp = k * L.Hp * <Py_ssize_t>isz
    cdef Py_ssize_t before = rows_before(L.N, k, P)
    s.h = every_pth_row(s.h, k, P, isz)
    if L.private_steps and together:
        s.g = rows_block(s.g, before, isz)
        s.hn = rows_block(s.hn, before, isz)
        s.m = rows_block(s.m, before, isz)
    else:
        s.g = every_pth_row(s.g, k, P, isz)
        s.hn = every_pth_row(s.hn, k, P, isz)
        s.m = every_pth_row(s.m, k, P, isz)
    s.c = every_pth_row(s.c, k, P, isz)
    s.dh = every_pth_row(s.dh, k, P, isz)
    s.dg = every_pth_row(s.dg, k, P, isz)
    s.dan = every_pth_row(s.dan, k, P, isz)
    s.dht = every_pth_row(s.dht, k, P, isz)
    s.x = every_pth_row(s.x, k, P, isz)
    s.dx = every_pth_row(s.dx, k, P, isz)
    # (N, H) states and carries: row stride P*H from here on (h0 and the dh
    # carry: P*Hp); the scratch: this share's block, row stride sld (G*H)
    s.h0 = rows_from(s.h0, rowp)
    s.c0 = rows_from(s.c0, row)
    s.carry = <void *>rows_from(s.carry, rowp)
    s.carry_c = <void *>rows_from(s.carry_c, row)
    s.cld = P
    if carries != NULL:
        s.carry_out, s.carry = s.carry, carries + before * L.Hp * <Py_ssize_t>isz
        if L.carry_c != NULL:
            s.carry_c_out = s.carry_c
            s.carry_c = carries + (L.N * L.Hp + before * L.H) * <Py_ssize_t>isz
        s.cld = 1
    if together:
        s.scratch = <void *>rows_from(s.scratch, before * L.sld * <Py_ssize_t>isz)
    else:
        s.scratch = <void *>rows_from(s.scratch, k * L.sld * <Py_ssize_t>isz)
        s.sld = P * L.sld
    if L.chunk > 0:
        # chunk_input's buffers: this share's rows of every step of a chunk, after
        # those of shares 0..k-1
        s.cbuf = <void *>rows_from(s.cbuf, rows_before(L.N, k, P) * L.chunk * L.G * L.H * isz)
        s.xbuf = <void *>rows_from(s.xbuf, rows_before(L.N, k, P) * L.chunk * L.D * isz)
    s.k, s.P = k, P
    return s


cdef inline Py_ssize_t rows_before(Py_ssize_t N, int k, int P) noexcept nogil:
    """Rows of shares 0..k-1 of N rows split over P threads."""
    cdef Py_ssize_t n = 0
    cdef int q
    for q in range(k):
        n += share(N, q, P)
    return n


cdef inline void loop_rows(const Loop *L, Py_ssize_t i, bint backward, Py_ssize_t *t,
                           Py_ssize_t *tp, Py_ssize_t *B, Py_ssize_t *Bc) noexcept nogil:
    """Iteration i of a time loop over this share's rows.

    t: the step it processes (forward loops run t = 0..T-1, backward loops the
    other way; reversed for the reverse direction); tp: the step before it in
    the direction's order; B: this share's rows active at t (a prefix); Bc:
    how many of them continue from tp (the rest start from the initial state).
    """
    cdef Py_ssize_t T = L.T
    t[0] = (T - 1 - i if L.reverse else i) if not backward else (i if L.reverse else T - 1 - i)
    tp[0] = t[0] + 1 if L.reverse else t[0] - 1
    B[0] = share(active(L, t[0]), L.k, L.P)
    Bc[0] = share(active(L, tp[0]), L.k, L.P)
    if Bc[0] > B[0]:
        Bc[0] = B[0]


cdef inline Py_ssize_t active(const Loop *L, Py_ssize_t t) noexcept nogil:
    """Rows of the batch active at step t (0 outside [0, T))."""
    if t < 0 or t >= L.T:
        return 0
    return L.bs[t] if L.bs != NULL else L.N


cdef inline void loop_task(void *p) noexcept nogil:
    """One share of a time loop (rc_run_tasks' entry): the cell's body for its dtype
    (a share with its own block of carry rows: copied in from the caller's rows before,
    and back after)."""
    cdef const Loop *L = <const Loop *>p
    if L.carry_out != NULL:
        copy_carries(L, True)
    if L.f64:
        L.run_d(L, 0)
    else:
        L.run_f(L, 0)
    if L.carry_out != NULL:
        copy_carries(L, False)


cdef inline void copy_carries(const Loop *L, bint into) noexcept nogil:
    """A share's carry rows between the caller's (every P-th row: carry_out,
    carry_c_out) and its own block (carry, carry_c): into the block (`into`) or back."""
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    cdef Py_ssize_t M = share(L.N, L.k, L.P)
    cdef size_t wp = L.Hp * isz, w = L.H * isz
    if into:
        copy_rows_apart(<char *>L.carry, wp, <const char *>L.carry_out, L.P * wp, M, wp)
        if L.carry_c_out != NULL:
            copy_rows_apart(<char *>L.carry_c, w, <const char *>L.carry_c_out, L.P * w, M, w)
    else:
        copy_rows_apart(<char *>L.carry_out, L.P * wp, <const char *>L.carry, wp, M, wp)
        if L.carry_c_out != NULL:
            copy_rows_apart(<char *>L.carry_c_out, L.P * w, <const char *>L.carry_c, w, M, w)


cdef inline void copy_rows_apart(char *dst, size_t dld, const char *src, size_t sld,
                                 Py_ssize_t rows, size_t width) noexcept nogil:
    """`rows` rows of `width` bytes from src (sld bytes apart) to dst (dld bytes apart)."""
    cdef Py_ssize_t q
    for q in range(rows):
        memcpy(dst + q * dld, src + q * sld, width)


cdef inline void run_loop(Loop *L, body_f run_f, body_d run_d) noexcept nogil:
    """The time loop: on this thread, or its rows split over P threads (row_threads).

    A loop whose per-step products all go to the packed kernel (step_weight) never
    calls BLAS inside, so it opens no single-thread section: it leaves BLAS's
    process-wide thread count alone. Otherwise, below rc_loop_parallel_min
    multiply-adds per step (T >= 2), it runs in one. Only packed loops split rows.
    """
    cdef long long work = L.N * L.G * L.H * L.H     # multiply-adds of a step's GEMM
    cdef bint packed = L.wh.nr > 0 and (L.wr.p == NULL or L.wr.nr > 0)
    cdef int opened = 0, k, P = row_threads(L.N, work, L.T, packed)
    cdef Loop tasks[MAX_TASKS]
    cdef void *carries = NULL
    cdef size_t isz = sizeof(double) if L.f64 else sizeof(float)
    cdef bint together
    L.run_f, L.run_d = run_f, run_d
    if L.nu > 0:
        # a unit split (prepared by the cell: its shares, their bodies, one barrier);
        # the packed kernel only, no BLAS inside
        run_tasks(loop_task, L.units, sizeof(Loop), L.nu)
        return
    if P == 1:
        if not packed and L.T > 1:
            opened = loop_threads_begin(work)
        loop_task(L)
    else:
        # the rows on P threads, each calling the packed kernel (row_threads splits
        # only such loops): no BLAS inside
        together = private_rows()   # (read once: every share must agree)
        if L.carry != NULL and together:
            # the carries' rows of each share together (loop_share), on a
            # 64-byte boundary; without the memory, every P-th row of the caller's
            # in place
            if posix_memalign(&carries, 64,
                              L.N * (L.Hp + (L.H if L.carry_c != NULL else 0)) * isz) != 0:
                carries = NULL
        for k in range(P):
            tasks[k] = loop_share(L, k, P, together, <char *>carries)
        count_row_split()
        run_tasks(loop_task, tasks, sizeof(Loop), P)
        free(carries)
    loop_threads_end(opened)   # (closes either kind of single-thread section)


cdef inline void input_projection(const Input *inp, Py_ssize_t R, Py_ssize_t GH, Mat a,
                                  floating kind) noexcept nogil:
    """A = x @ Wx (R, GH) = (R, D)(D, GH), R = T*N: forward's all-steps input
    projection (forward_loop; _lnloop.pxd: input_side_fwd). BLAS's threads; below
    2^22 multiply-adds on this thread, in a section (rc_input_threads_begin,
    rc_threads.h)."""
    cdef int opened = input_threads_begin(R * GH * inp.D)
    mm(R, GH, inp.D, <floating>1, uniform(inp.x), inp.wx, <floating>0, a)
    loop_threads_end(opened)


cdef inline void forward_loop(Loop *L, const Input *inp, body_f run_f, body_d run_d,
                              floating kind) noexcept nogil:
    """One layer and direction forward (`kind`'s type picks float or double)."""
    if L.chunk > 0:
        # inference in chunks: the steps compute them (chunk_input), on the packed
        # [Wx; Wh] or, where the loop does not pack, on Wx as given
        if L.wxh.nr == 0:
            L.wxh = inp.wx
    elif L.wxh.nr == 0:
        # A = x @ Wx      (T*N, GH) = (T*N, D)(D, GH): all steps' input projection,
        #                 into the gates (the RNN's: its output h)
        # a fused loop (L.wxh packed) multiplies by Wx in its steps instead
        input_projection(inp, L.T * L.N, L.G * L.H, uniform(L.g), kind)
    run_loop(L, run_f, run_d)


cdef inline void step_product(const Loop *L, Py_ssize_t t, Py_ssize_t r0, Py_ssize_t rows,
                              Py_ssize_t n, const floating *hp, Py_ssize_t ldhp, floating *c,
                              Py_ssize_t ldc, Py_ssize_t off=0, bint from_h0=False) noexcept nogil:
    """Rows [r0, r0 + rows) of step t's pre-activations C (rows, n) from h_prev = hp.

    A fused loop:  C := [x_t | h_prev] @ [Wx; Wh]   (rows, n) = (rows, D + Hp)(D + Hp, n)
    otherwise:     C += h_prev @ Wh                 (C holds x_t Wx, from forward_loop,
                                                    chunk_input or block_input)
    `off`: the operand starts `off` elements into the packed array (the LSTM unit
    split's slice of a block and gate, fwd_block). `from_h0`: hp is rows of h0;
    when it is all zeros (L.h0_zero) its product is left out -- C := x_t Wx alone
    (fused), nothing to add (otherwise).
    """
    cdef bint fused = L.wxh.nr > 0 and L.chunk == 0
    cdef bint skip = from_h0 and L.h0_zero
    cdef Mat w = L.wxh if fused else L.wh
    w.p = <floating *>w.p + off
    if fused:
        mm_step2(rows, n, L.D, <const floating *>L.x.p + t * L.x.st + r0 * L.x.sn, L.x.sn,
                 0 if skip else L.Hp, hp, ldhp, w, <floating>0, c, ldc)
    elif not skip:
        mm_step(rows, n, L.Hp, hp, ldhp, w, <floating>1, c, ldc)


cdef inline void input_product(const Loop *L, const floating *x, Py_ssize_t ldx,
                               Py_ssize_t rows, floating *c, Py_ssize_t ldc,
                               Py_ssize_t split) noexcept nogil:
    """C := X @ Wx (rows, GH) alone, X (rows, D) rows ldx apart: the first D rows of
    the packed [Wx; Wh] (packed with a column split at `split` > 0: two products).
    A fused loop's x_t Wx (GRU), or a chunk's (chunk_input)."""
    cdef Py_ssize_t GH = L.G * L.H
    if split <= 0:
        mm_step(rows, GH, L.D, x, ldx, L.wxh, <floating>0, c, ldc)
        return
    mm_step(rows, split, L.D, x, ldx, L.wxh, <floating>0, c, ldc)
    mm_step(rows, GH - split, L.D, x, ldx, col_block(L.wxh, split, sizeof(floating)),
            <floating>0, c + split, ldc)


cdef inline Py_ssize_t chunk_start(const Loop *L, Py_ssize_t i, Py_ssize_t *n,
                                   floating kind) noexcept nogil:
    """Iteration i of an inference loop computing its input projection in chunks in
    its steps (L.chunk > 0: chunk_buffers): at a chunk's first iteration, the
    chunk's first step t0 (its steps: [t0, t0 + n[0])), with L.g pointed at L.cbuf
    (this share's rows of step t at cbuf + (t - t0) * M * GH); -1 at any other
    iteration. The Loop is this share's own copy (loop_share, a unit split's task;
    or the caller's, on one thread), so it is written here."""
    cdef Loop *Lm = <Loop *>L
    cdef Py_ssize_t C = L.chunk, T = L.T, GH = L.G * L.H, M = share(L.N, L.k, L.P), t0
    if C <= 0 or i % C != 0 or M <= 0:
        return -1
    n[0] = C if i + C <= T else T - i
    t0 = T - i - n[0] if L.reverse else i
    # (the bodies index from step 0: an integer base, the pointer itself would lie
    # outside the buffer)
    Lm.g = seq(<void *>(<uintptr_t>L.cbuf - <uintptr_t>(t0 * M * GH * sizeof(floating))),
               M * GH, GH, GH, False)
    return t0


cdef inline void chunk_input(const Loop *L, Py_ssize_t i, Py_ssize_t split,
                             floating kind) noexcept nogil:
    """Iteration i of an inference loop computing its input projection in chunks in
    its steps (chunk_start): at a chunk's first iteration, this share's rows of the
    chunk's steps [t0, t0 + n) gathered time-major into L.xbuf and multiplied at once,
        A = X @ Wx       (n * M, GH) = (n * M, D)(D, GH)   into L.cbuf,
    on the packed kernel (L.wxh packed: the weight's panels reused by n * M rows,
    where a step alone has M; else L.wxh is Wx as given, forward_loop: mm_step's
    kernels or BLAS). (The LSTM's unit split computes each block's columns
    instead: lstm.pyx, block_input.)"""
    cdef Py_ssize_t D = L.D, GH = L.G * L.H, M = share(L.N, L.k, L.P)
    cdef Py_ssize_t n = 0, t0 = chunk_start(L, i, &n, kind), t, j
    cdef size_t isz = sizeof(floating)
    cdef floating *xb = <floating *>L.xbuf
    cdef const floating *x = <const floating *>L.x.p
    if t0 < 0:
        return
    for t in range(n):
        for j in range(M):
            memcpy(xb + (t * M + j) * D, x + (t0 + t) * L.x.st + j * L.x.sn, D * isz)
    input_product(L, xb, D, n * M, <floating *>L.cbuf, GH, split)


cdef inline void backward_loop(Loop *L, const Input *inp, const Grads *gr, body_f run_f,
                               body_d run_d, floating kind) noexcept nogil:
    """BPTT through one layer and direction; on entry the carries hold the final
    states' gradients, on exit the initial states'."""
    cdef Py_ssize_t R = L.T * L.N, H = L.H, GH = L.G * L.H, D = inp.D
    # the input side x Wx + b sees [dG[:, :nI] | dAn]: all of dG (RNN, LSTM), or
    # the GRU's [da_r | da_z] and its own n block dAn (see gru.pyx)
    cdef bint split = L.dan.p != NULL
    cdef Py_ssize_t nI = GH - H if split else GH
    cdef Mat dg = uniform(L.dg), dan = uniform(L.dan)
    cdef size_t isz = sizeof(floating)
    cdef int opened
    cdef bint dw_done
    run_loop(L, run_f, run_d)
    # the GEMMs after the loop: dx, dWx (R*GH*D) and dWh (R*GH*H multiply-adds)
    opened = gemms_threads_begin(R * GH * (D + H))
    # dWx and dWh's shifted main term on packed chunks of dG, read once for both
    dw_done = weight_grads(L, inp, gr, dg, dan, nI, kind)
    if D > 0 and L.wxt.nr == 0 and gr.dx.p != NULL:   # (else the loop computed dx:
        # input_grad; or no dx is wanted)
        # dx = dG[:, :nI] @ Wx[:, :nI]^T              (R, D) = (R, nI)(D, nI)^T
        mm(R, D, nI, <floating>1, dg, transposed(inp.wx), <floating>0, gr.dx)
        if split:
            # dx += dAn @ Wx[:, nI:]^T                (R, D) += (R, H)(D, H)^T
            mm(R, D, H, <floating>1, dan, transposed(col_block(inp.wx, nI, isz)),
               <floating>1, gr.dx)
    if D > 0 and not dw_done:
        # dWx[:, :nI] += x^T dG[:, :nI]               (D, nI) += (D, R)(R, nI)
        mm(D, nI, R, <floating>1, transposed(uniform(inp.x)), dg, <floating>1, gr.dwx)
        if split:
            # dWx[:, nI:] += x^T dAn                  (D, H) += (D, R)(R, H)
            mm(D, H, R, <floating>1, transposed(uniform(inp.x)), dan, <floating>1,
               col_block(gr.dwx, nI, isz))
    # db[:nI] += dG[:, :nI].sum(axis=0);  db[nI:] += dAn.sum(axis=0)
    if gr.dbh != NULL:
        # and the GRU's hidden side h Wh + bh sees all of dG: dbh += dG.sum(axis=0)
        # (one pass over dG for both)
        colsum_add(<floating *>gr.dbh, <const floating *>dg.p, dg.ld, R, GH,
                   <floating *>gr.db, nI)
    else:
        colsum_add(<floating *>gr.db, <const floating *>dg.p, dg.ld, R, nI)
    if split:
        colsum_add(<floating *>gr.db + nI, <const floating *>dan.p, dan.ld, R, H)
    if not L.reset_before:
        # dWh += sum_t h_prev(t)^T dG_t                   (H, GH)
        dwh_accumulate(L, gr.dwh, <floating *>gr.dzs, dw_done)
    else:
        reset_before_dwh(L, gr.dwh, <floating *>gr.dzs, dw_done)
    loop_threads_end(opened)


cdef inline bint dw_begin(rc_dw_problem *pr, Mat b, Py_ssize_t n, Py_ssize_t R,
                          long long work, floating kind) noexcept nogil:
    """Start a dW problem on B (R, n) (rc_gemm_dw.h: rc_dw_*), `work` multiply-adds in
    all; False: it does not run here (no packed layout, the rule on work and rows or
    the hook, a transposed B): BLAS does the products."""
    cdef Py_ssize_t nr = packed_nr(sizeof(floating))
    memset(pr, 0, sizeof(rc_dw_problem))
    if R <= 0 or n <= 0 or nr == 0 or b.t != NoTrans or not dw_enabled(work, R):
        return False
    pr.b0, pr.ld0, pr.n0, pr.K, pr.nr = b.p, b.ld, n, R, nr
    return True


cdef inline void dw_term(rc_dw_problem *pr, const void *a, Py_ssize_t lda, Py_ssize_t m,
                         Py_ssize_t off, Py_ssize_t plo, Py_ssize_t phi, Py_ssize_t bcol,
                         Py_ssize_t n, Mat c, Py_ssize_t tcol, floating kind) noexcept nogil:
    """Add the term C[:, tcol:tcol + n] += sum_{plo <= p < phi} a[p + off]^T B[p, bcol:bcol + n]
    (a's rows m wide, lda apart; C row-major or a transposed view). A problem given
    more than RC_DW_TERMS terms is marked invalid (K = 0): dw_run then does nothing
    and returns False, so the caller's BLAS path does all of it."""
    cdef rc_dw_term *e
    if pr.nterms >= RC_DW_TERMS:
        pr.K = 0
        return
    e = &pr.term[pr.nterms]
    pr.nterms += 1
    e.a, e.lda, e.m, e.off, e.plo, e.phi, e.bcol, e.n = a, lda, m, off, plo, phi, bcol, n
    e.c, e.ct = NULL, NULL
    if c.t == NoTrans:
        e.c, e.ldc = <floating *>c.p + tcol, c.ld
    else:
        e.ct, e.ldt = <floating *>c.p + tcol * c.ld, c.ld


cdef inline void dw_shifted_term(rc_dw_problem *pr, const Loop *L, Py_ssize_t n, Mat dwh,
                                 floating kind) noexcept nogil:
    """dwh_accumulate's shifted main term on B's first n columns: pairs (h row p - shift,
    B row p), p >= shift (reverse: h row p + shift, p < R - shift); none when T = 1."""
    cdef Py_ssize_t R = L.T * L.N, shift = L.dg.st // L.dg.ld
    if L.T <= 1:
        return
    if L.reverse:
        dw_term(pr, L.h.p, L.h.ld, L.Hp, shift, 0, R - shift, 0, n, dwh, 0, kind)
    else:
        dw_term(pr, L.h.p, L.h.ld, L.Hp, -shift, shift, R, 0, n, dwh, 0, kind)


cdef inline bint dw_run(rc_dw_problem *pr, floating kind) noexcept nogil:
    """Run a dW problem's terms; False (nothing done) when it has none, is invalid or
    could not allocate."""
    if pr.nterms == 0 or pr.K <= 0:
        return False
    if floating is float:
        return rc_dw_f(pr) != 0
    else:
        return rc_dw_d(pr) != 0


cdef inline bint dw_plan(const Loop *L, const Input *inp, const Grads *gr, Mat dg, Mat dan,
                         Py_ssize_t nI, rc_dw_problem *pr, bint check_data,
                         floating kind) noexcept nogil:
    """weight_grads' problem (its terms), or False: BLAS does the products. Without
    check_data (before the loop has written dG) the batch-major shift's data check
    (dwh_shifted) is left to the call: the shapes alone decide the rest."""
    cdef Py_ssize_t R = L.T * L.N, H = L.H, GH = L.G * L.H, D = inp.D
    cdef bint split = dan.p != NULL
    cdef Mat x = uniform(inp.x)
    if not dw_begin(pr, dg, GH, R, <long long>R * GH * (D + L.Hp), kind):
        return False
    if (split and (GH % pr.nr != 0 or dan.t != NoTrans)) \
            or (L.reset_before and (2 * H) % pr.nr != 0) \
            or (check_data and not dwh_shifted(L, kind)):
        return False
    if split and D > 0:
        # B = [dG | dAn]: dAn from the virtual column GH (for dWx: none without inputs)
        pr.b1, pr.ld1, pr.n1 = dan.p, dan.ld, H
    if D > 0:
        # dWx[:, :nI] += x^T B[:, :nI];  the GRU's dWx[:, nI:] += x^T B[:, GH:GH + H]
        dw_term(pr, x.p, x.ld, D, 0, 0, R, 0, nI, gr.dwx, 0, kind)
        if split:
            dw_term(pr, x.p, x.ld, D, 0, 0, R, GH, H, gr.dwx, nI, kind)
    # (the reset-before GRU: its [r | z] columns only; its n columns pair all rows,
    # unshifted, with r ⊙ h_prev)
    dw_shifted_term(pr, L, GH - H if L.reset_before else GH, gr.dwh, kind)
    if L.reset_before:
        dw_term(pr, L.hn.p, L.hn.ld, H, 0, 0, R, GH - H, H, gr.dwh, GH - H, kind)
    return True


cdef inline bint weight_grads(const Loop *L, const Input *inp, const Grads *gr, Mat dg, Mat dan,
                              Py_ssize_t nI, floating kind) noexcept nogil:
    """backward_loop's weight gradients on the packed dW kernel (rc_gemm_dw.h: rc_dw_*):
        dWx += x^T [dG[:, :nI] | dAn]        (D, GH)
        dWh += sum_t h_prev(t)^T dG_t        the shifted main term of dwh_accumulate
    (the reset-before GRU's n columns: (r ⊙ h_prev)^T dG[:, 2H:]) with dG packed once,
    chunk by chunk, for all; in gr.dw_ws when given (dw_reserve). False (nothing done):
    BLAS does them -- dw_begin's cases, a batch-major shift that needs the per-row
    pairs (dwh_shifted), or the GRU's n block off a panel boundary."""
    cdef rc_dw_problem pr
    if not dw_plan(L, inp, gr, dg, dan, nI, &pr, True, kind):
        return False
    pr.ws, pr.ws_bytes = gr.dw_ws, gr.dw_ws_bytes
    return dw_run(&pr, kind)


cdef inline object dw_reserve(const Loop *L, const Input *inp, Grads *gr, floating kind):
    """A backward call's workspace for weight_grads, from the workspace cache (_pool.pyx),
    set in gr (dw_ws, dw_ws_bytes); returns the array that holds it (keep it until the
    call returns), or None when the weight gradients will not run on the dW kernel
    or the memory is not there (gr.dw_ws NULL: the kernel allocates its own, or
    falls back to BLAS). Call with every array of L, inp and gr in place: it plans
    the problem backward_loop will run, on the shapes (not dG's data: unwritten
    yet)."""
    cdef Py_ssize_t GH = L.G * L.H
    cdef Py_ssize_t nI = GH - L.H if L.dan.p != NULL else GH
    cdef rc_dw_problem pr
    cdef size_t nbytes
    gr.dw_ws, gr.dw_ws_bytes = NULL, 0
    if not dw_plan(L, inp, gr, uniform(L.dg), uniform(L.dan), nI, &pr, False, kind):
        return None
    return dw_workspace(gr, dw_bytes(&pr, kind))


cdef inline size_t dw_bytes(const rc_dw_problem *pr, floating kind) noexcept nogil:
    """The workspace a dW problem takes (rc_dw_*_bytes; 0: none)."""
    return rc_dw_f_bytes(pr) if floating is float else rc_dw_d_bytes(pr)


cdef inline object dw_workspace(Grads *gr, size_t nbytes):
    """`nbytes` from the workspace cache for the dW kernel, set in gr (dw_ws,
    dw_ws_bytes); returns the array that holds them, or None (nbytes 0, or out
    of memory: the kernel allocates its own, or BLAS does the products)."""
    ws = cache_bytes(nbytes)
    if ws is None:
        return None
    gr.dw_ws = array_data(ws)
    gr.dw_ws_bytes = nbytes
    return ws


cdef inline void input_grad(const Loop *L, Py_ssize_t t, Py_ssize_t r0, Py_ssize_t rows,
                            Py_ssize_t M, floating kind) noexcept nogil:
    """A backward loop computing dx in its steps (L.wxt packed): rows [r0, r0 + rows)
    of this share at step t, from its finished dA_t, and rows [r0 + rows, M) zeros
    (padding; nothing when M <= r0 + rows):
        dx_t = dA_t @ Wx^T                      (rows, D) = (rows, GH)(GH, D)
    the GRU's (reset-after) input-side dA_t being [dG_t[:, :2H] | dAn_t]."""
    cdef bint split = L.dan.p != NULL
    cdef Py_ssize_t nI = (L.G - 1) * L.H if split else L.G * L.H
    cdef floating *dx = <floating *>L.dx.p + t * L.dx.st + r0 * L.dx.sn
    if rows > 0:
        mm_step(rows, L.D, nI, <const floating *>L.dg.p + t * L.dg.st + r0 * L.dg.sn, L.dg.sn,
                L.wxt, <floating>0, dx, L.dx.sn)
        if split:
            # rows [nI, GH) of the packed Wx^T: a column block of its transpose
            mm_step(rows, L.D, L.H,
                    <const floating *>L.dan.p + t * L.dan.st + r0 * L.dan.sn, L.dan.sn,
                    transposed(col_block(transposed(L.wxt), nI, sizeof(floating))),
                    <floating>1, dx, L.dx.sn)
    if M > r0 + rows:
        scale_rows(dx + rows * L.dx.sn, L.dx.sn, M - r0 - rows, L.D, <floating>0)


cdef inline void mm_one_thread(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                               Mat a, Mat b, floating beta, Mat c) noexcept nogil:
    """mm inside a single-thread section (rc_threads.h): on rnncore's own GEMM, on this
    thread, where the CPU has a packed layout, else on one BLAS thread. Its sums then
    do not depend on BLAS's thread count, and threaded OpenBLAS cannot spin on a
    small product."""
    cdef int opened = single_open()
    mm(m, n, k, alpha, a, b, beta, c)
    single_close(opened)


cdef inline void reset_before_dwh(const Loop *L, Mat dwh, floating *dzs,
                                  bint main_done=False) noexcept nogil:
    """dWh of the reset-before GRU: [r | z] pair dG with h_prev, n with r ⊙ h_prev
    (main_done: weight_grads added the shifted main term and the n columns)."""
    cdef Loop rz = L[0]
    cdef Py_ssize_t nI = (L.G - 1) * L.H
    cdef size_t isz = sizeof(floating)
    rz.G = L.G - 1
    # dWh[:, :2H] += sum_t h_prev(t)^T dG_t[:, :2H]   (H, 2H)
    dwh_accumulate(&rz, dwh, dzs, main_done)
    if main_done:
        return
    # dWh[:, 2H:] += reset_h^T dG[:, 2H:]             (H, H) += (H, R)(R, H)
    # on one thread (mm_one_thread): threaded OpenBLAS spent 30 ms spinning in inner_thread (perf) on
    # this (H, H) product at (T, N, H) = (100, 16, 128), 5x the whole backward, on a loaded
    # 2-core machine; one thread takes H*H*T*N multiply-adds (fb at (50, 64, 512, 1024)
    # measured within 1% of the reset-after GRU's)
    mm_one_thread(L.H, L.H, L.T * L.N, <floating>1, transposed(uniform(L.hn)),
                  col_block(uniform(L.dg), nI, isz), <floating>1, col_block(dwh, nI, isz))


cdef inline double absmax(const floating *a, Py_ssize_t ld, Py_ssize_t rows,
                          Py_ssize_t cols) noexcept nogil:
    """max |a[i, j]| over a (rows, cols) block with row stride ld; inf if it holds NaN."""
    cdef Py_ssize_t i, j
    cdef double m = 0, v
    for i in range(rows):
        for j in range(cols):
            v = fabs(a[i * ld + j])
            if not v <= m:
                if v != v:
                    return INFINITY
                m = v
    return m


cdef inline bint straddle_unsafe(const floating *a, Py_ssize_t lda, Py_ssize_t na,
                                 const floating *b, Py_ssize_t ldb, Py_ssize_t nb,
                                 Py_ssize_t rows) noexcept nogil:
    """Whether subtracting sum_i a_i^T b_i (rows i of a (rows, na), b (rows, nb)) could
    be inexact: a value is inf/NaN, or the products come within 2^-24 of overflow."""
    cdef double limit = (FLT_MAX if floating is float else DBL_MAX) * 5.9604644775390625e-08
    cdef double ma = absmax(a, lda, rows, na), mb = absmax(b, ldb, rows, nb)
    return not (ma * mb * rows <= limit)


# The first step's products from h0 are skipped when h0 is all zeros (a model's
# default initial state) -- 0 * w adds nothing unless w is inf or NaN, so the other
# factor is checked finite (then NaN still propagates as in the full product). The
# checks read h0 (N, Hp) and the other factor: Wh (Hp, GH) in forward, the first
# step's dz rows (N, GH) in backward; worth it while the first step is a large
# share of the loop: T <= H0_SKIP_MAX_T. At T = 1 that is half of forward's products
# (x Wx and h0 Wh) and backward's dWh (but for the reset-before GRU's n block, whose
# r h_prev term reset_before_dwh takes over all rows).
cdef enum:
    H0_SKIP_MAX_T = 4


cdef inline bint zero_start(const floating[:, :] h0, const floating[:, :] Wh,
                            Py_ssize_t T) noexcept nogil:
    """Whether a forward loop of T steps skips its products from h0 (L.h0_zero): T
    small, h0 (N, Hp) C-contiguous and all zeros, Wh (Hp, GH) finite."""
    cdef Py_ssize_t isz = sizeof(floating)
    if not (0 < T <= H0_SKIP_MAX_T and h0.shape[0] > 0 and h0.shape[1] > 0
            and Wh.shape[1] > 0):
        return False
    return (all_zero(&h0[0, 0], 1, h0.shape[0] * h0.shape[1], 0)
            and all_finite(&Wh[0, 0], Wh.shape[0], Wh.shape[1], Wh.strides[0] // isz,
                           Wh.strides[1] // isz))


cdef inline bint h0_term_zero(const Loop *L, const floating *h0, const floating *dz,
                              Py_ssize_t ld, Py_ssize_t GH) noexcept nogil:
    """Whether backward's h0^T dz_first (H, GH) adds nothing: T small, h0 all zeros
    and the N rows of dz (ld apart) finite."""
    return (L.T <= H0_SKIP_MAX_T and all_zero(h0, 1, L.N * L.Hp, 0)
            and all_finite(dz, L.N, GH, ld))


cdef inline bint dwh_shifted(const Loop *L, floating kind) noexcept nogil:
    """Whether dwh_accumulate's pairs (h_prev, dz) are one shifted GEMM (plus the
    straddle subtraction in batch-major layout), not one GEMM per row."""
    cdef Py_ssize_t T = L.T, N = L.N, H = L.Hp, GH = L.G * L.H
    cdef Py_ssize_t h_st = L.h.st, h_sn = L.h.sn, dz_st = L.dg.st, dz_sn = L.dg.sn
    if not (T > 1 and L.h.bm and N > 1):
        return True
    return not straddle_unsafe(
        <const floating *>L.h.p + (h_sn if L.reverse else (T - 1) * h_st), h_sn, H,
        <const floating *>L.dg.p + ((T - 1) * dz_st if L.reverse else dz_sn), dz_sn, GH,
        N - 1)


cdef inline void dwh_accumulate(const Loop *L, Mat dwh, floating *dzs,
                                bint main_done=False) noexcept nogil:
    """dWh (H, GH) += sum_t h_prev(t)^T dz_t, with h_prev(t) = h0 at each row's first step.
    main_done: the shifted main term (below) is already added (weight_grads: the
    packed dW kernel, which requires dwh_shifted); the rest still runs here.

    h (L.h): the (T, N, H) outputs, zeros at padded positions; h0 (N, H)
    C-contiguous; dz (L.dg): the (T, N, GH) pre-activation gradients in h's
    layout kind (zeros at padded positions); dzs: (N, GH) scratch, used only
    when reverse and with lengths.

    In the uniform view the previous step of a row is one step-shift away, so
    all pairs are one shifted GEMM; in batch-major layout the pairs that
    straddle two sequences are subtracted -- unless a straddling value is
    inf/NaN or their products come near overflow (then inf - inf would leave
    NaN where the true sum is finite or +-inf): then one GEMM per row over its
    own T-1 pairs (the check reads only the 2(N-1) straddling rows). Then
    h0^T dz at each row's first step is added (gathered per row in the
    reverse direction with lengths) -- left out when it adds nothing
    (h0_term_zero: T <= 4, h0 all zeros, those dz rows finite).
    """
    cdef Py_ssize_t t, n, T = L.T, N = L.N, H = L.Hp, GH = L.G * L.H, R = T * N
    cdef const floating *h = <const floating *>L.h.p
    cdef const floating *h0 = <const floating *>L.h0
    cdef const floating *dz = <const floating *>L.dg.p
    cdef Py_ssize_t h_st = L.h.st, h_sn = L.h.sn, dz_st = L.dg.st, dz_sn = L.dg.sn
    cdef Py_ssize_t dz_ld = L.dg.ld, ld0
    cdef const floating *dz0
    cdef Py_ssize_t shift = dz_st // dz_ld    # N rows (time-major) or 1 (batch-major)
    cdef bint straddle = L.h.bm and N > 1
    # The small corrections below -- the straddling pairs (K = N - 1) and the h0 term
    # (K = N) -- run on one thread (mm_one_thread: rnncore's own GEMM with a packed
    # layout, else one BLAS thread): OpenBLAS's float32 sums for them differed
    # between 1 and 2 threads on its Haswell kernels (a Zen 3 VM: ~3 % of dWh's
    # elements by an ulp), so with the main term on rnncore's dW kernel dWh would
    # otherwise depend on BLAS's thread count (mm_one_thread). O(N H GH) work:
    # microseconds to ~1 ms.
    # (main_done implies the shifted form: weight_grads checked it; not scanned again)
    if not (main_done or dwh_shifted(L, <floating>0)):
        for n in range(N):
            # row n's own pairs: (H, GH) += (H, T-1)(T-1, GH)
            if not L.reverse:   # (h[n, t-1], dz[n, t])
                mm(H, GH, T - 1, <floating>1, mat(h + n * h_sn, h_st, Trans),
                   mat(dz + n * dz_sn + dz_st, dz_st, NoTrans), <floating>1, dwh)
            else:               # (h[n, t+1], dz[n, t])
                mm(H, GH, T - 1, <floating>1, mat(h + n * h_sn + h_st, h_st, Trans),
                   mat(dz + n * dz_sn, dz_st, NoTrans), <floating>1, dwh)
    elif T > 1:
        # (main_done: weight_grads added the shifted main term)
        if not L.reverse:
            # pairs (h_{t-1}, dz_t):  (H, GH) += (H, R-shift)(R-shift, GH)
            if not main_done:
                mm(H, GH, R - shift, <floating>1, mat(h, L.h.ld, Trans),
                   mat(dz + dz_st, dz_ld, NoTrans), <floating>1, dwh)
            if straddle:
                # (h[n-1, T-1], dz[n, 0]) for n = 1..N-1   (H, GH) -= (H, N-1)(N-1, GH)
                mm_one_thread(H, GH, N - 1, <floating>-1, mat(h + (T - 1) * h_st, h_sn, Trans),
                              mat(dz + dz_sn, dz_sn, NoTrans), <floating>1, dwh)
        else:
            # pairs (h_{t+1}, dz_t)
            if not main_done:
                mm(H, GH, R - shift, <floating>1, mat(h + h_st, L.h.ld, Trans),
                   mat(dz, dz_ld, NoTrans), <floating>1, dwh)
            if straddle:
                # (h[n+1, 0], dz[n, T-1]) for n = 0..N-2
                mm_one_thread(H, GH, N - 1, <floating>-1, mat(h + h_sn, h_sn, Trans),
                              mat(dz + (T - 1) * dz_st, dz_sn, NoTrans), <floating>1, dwh)
    if T > 0:
        # h0^T dz at each row's first step        (H, GH) += (H, N)(N, GH)
        # (left out when it adds nothing: h0_term_zero); those dz rows: step 0,
        # step T-1 in reverse, gathered per row in reverse with lengths
        if not L.reverse:
            dz0, ld0 = dz, dz_sn
        elif L.bs == NULL:
            dz0, ld0 = dz + (T - 1) * dz_st, dz_sn
        else:
            # reverse with lengths: row n starts at t = len_n - 1; gather those rows
            scale_rows(dzs, GH, N, GH, <floating>0)
            for t in range(T):
                for n in range(active(L, t + 1), L.bs[t]):
                    memcpy(dzs + n * GH, dz + t * dz_st + n * dz_sn, GH * sizeof(floating))
            dz0, ld0 = dzs, GH
        if not h0_term_zero(L, h0, dz0, ld0, GH):
            mm_one_thread(H, GH, N, <floating>1, mat(h0, H, Trans), mat(dz0, ld0, NoTrans),
                          <floating>1, dwh)
