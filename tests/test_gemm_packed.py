"""The packed-once recurrent GEMM (src/_kernels/rc_gemm_packed.h) and the loops on it.

1. The kernel against NumPy through the time loops' own path (`simd._gemm_packed`:
   pack_weight, then mm_step with the packed operand): float32/float64, both packed
   layouts (AVX-512 and AVX2 panel widths, whichever clone this CPU runs), B
   row-major / a transposed view / strided, every m, n, k tail, beta 0 (NaN in C
   never read), 1 and 0.5, A and C with row strides wider than a row; the column
   block after a `split` and row blocks of a packed operand (what the reset-before
   GRU reads of one packed Wh / Wh^T).
2. Rows computed together or in pieces give bitwise the same C (what makes the
   row-split loops independent of the thread count).
3. Models at shapes that route to the packed path (one thread; rows split over
   2 threads; a per-step product above the former 32 M multiply-add split limit)
   against the reference composition in float64, the reset-before GRU and the
   projected LSTM kernels against the reference per row, and float32 results that
   do not depend on how many threads ran the loop.
4. The same kernels with packing turned off (`_set_packing(False)`: the panel
   kernel and BLAS per-step paths, which loops of one step and CPUs without AVX2
   still take), and the dispatch a function of the shapes only.
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64
from test_kernels import _batch_sizes, _time_major, reference_per_row, run_kernel
from test_lstm_proj import _draw as _draw_proj
from test_lstm_proj import _kernel as _kernel_proj
from test_lstm_proj import _reference as _reference_proj
from test_models import check_against_reference

import rnncore
from rnncore._runtime import threads as _threads
from rnncore._kernels import gru as KG
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as K
from rnncore._kernels import simd

#: panel widths of the AVX-512 ("wide") and AVX2 ("narrow") layouts, per dtype
LAYOUTS = {np.float32: {"wide": 32, "narrow": 16}, np.float64: {"wide": 16, "narrow": 8}}
GATES = {"rnn": 1, "gru": 3, "lstm": 4}

#: rows: every block height of either layout (wide: 8, 4, 3, 2, 1 rows; narrow: 6, 4, 3,
#: 2, 1) and combinations of several blocks (20, 25, 28 rows)
M_TAILS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 17, 20, 25, 28]
N_TAILS = [1, 7, 8, 15, 16, 17, 31, 32, 33, 65]
K_TAILS = [0, 1, 7, 9, 64, 71]   # 9, 71: 8 x 8 transposed blocks and a tail (packing)


def _operand(rng, k, n, dtype, source):
    """B (k, n) as a row-major array, a transposed view of a (n, k) array, or strided."""
    if source == "row-major":
        return rng.standard_normal((k, n)).astype(dtype)
    if source == "transposed":
        return rng.standard_normal((n, k)).astype(dtype).T
    return rng.standard_normal((k, 2 * n + 1)).astype(dtype)[:, 1::2]


def _check(got, want, dtype, name):
    if dtype == np.float64:
        assert_close_f64(got, want, name=name)
    else:
        assert_close_f32(got, want, name=name)


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("source", ["row-major", "transposed", "strided"])
@pytest.mark.parametrize("layout", ["wide", "narrow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_gemm_matches_numpy(dtype, layout, source, beta, rng):
    nr = LAYOUTS[dtype][layout]
    for m in M_TAILS:
        for n in N_TAILS:
            for k in K_TAILS:
                a = rng.standard_normal((m, k + 3)).astype(dtype)[:, :k]   # lda > k
                b = _operand(rng, k, n, dtype, source)
                c0 = rng.standard_normal((m, n + 5)).astype(dtype)
                c = c0.copy()[:, :n]                                         # ldc > n
                if beta == 0:
                    c[...] = np.nan      # beta = 0: C is written, never read
                want = a.astype(np.float64) @ b.astype(np.float64)
                if beta != 0:
                    want += beta * c0[:, :n].astype(np.float64)
                simd._gemm_packed(a, b, c, dtype(beta), nr)
                _check(c, want, dtype, f"C (m, n, k) = {(m, n, k)}")


@pytest.mark.parametrize("layout", ["wide", "narrow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_gemm_rows_in_pieces_are_bitwise_equal(dtype, layout, rng):
    """Every element is one dot product in k order whatever the row block: the rows
    of one call equal the same rows computed in pieces of other sizes, bit for bit."""
    nr = LAYOUTS[dtype][layout]
    m, k, n = 29, 70, 3 * nr + 5
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T
    c0 = rng.standard_normal((m, n)).astype(dtype)
    whole = c0.copy()
    simd._gemm_packed(a, b, whole, dtype(1), nr)
    pieces = c0.copy()
    for lo, hi in [(0, 3), (3, 11), (11, 12), (12, 29)]:
        simd._gemm_packed(a[lo:hi], b, pieces[lo:hi], dtype(1), nr)
    assert np.array_equal(whole, pieces)


@pytest.mark.parametrize("copy_a", [False, True], ids=["A in place", "A copied"])
@pytest.mark.parametrize("layout", ["wide", "narrow", "two segments"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_single_row_panel_groups_are_bitwise_the_tiles(dtype, layout, copy_a, rng):
    """A call of one row (m = 1) runs its whole panels 4, 3 or 2 at a time (more
    accumulator chains), a lone whole panel and a partial one on the 1-row tile:
    every width from 1 to 9 panels (and partial tails) gives bitwise the row
    computed inside a 5-row call (the tiles), for either layout and for the
    two-segment product [A | A2] [B; B2] (the fused loops', this CPU's layout), with
    A read in place or from the blocks' copy (rc_pk_pack_a: the two segments become
    one); C's row is written up to column n and no further; and matches NumPy."""
    two = layout == "two segments"
    if two:
        _needs_packed()    # _gemm_packed2 takes this CPU's layout
    nr = simd._gemm_packed_nr(dtype) if two else LAYOUTS[dtype][layout]
    k, k2 = 37, (5 if two else 0)

    def product(a, b, c):
        if two:
            simd._gemm_packed2(a[:, :k], a[:, k:], b[:k], b[k:], c, dtype(1))
        else:
            simd._gemm_packed(a, b, c, dtype(1), nr)

    simd._set_pack_a(2 if copy_a else 0)
    try:
        for n in [nr * q + t for q in range(1, 10) for t in (0, 3)] + [1, nr - 1]:
            a = rng.standard_normal((5, k + k2)).astype(dtype)
            b = rng.standard_normal((n, k + k2)).astype(dtype).T
            c0 = rng.standard_normal((5, n)).astype(dtype)
            five = c0.copy()
            product(a, b, five)
            for r in (0, 4):
                buf = np.full((1, n + 2 * nr), 7.5, dtype)      # ldc > n: a guarded tail
                buf[:, :n] = c0[r]
                product(a[r:r + 1], b, buf[:, :n])
                assert np.array_equal(buf[:, :n], five[r:r + 1]), (n, r)
                assert np.all(buf[:, n:] == 7.5), f"written past column n = {n}"
            _check(five, a.astype(np.float64) @ b.astype(np.float64) + c0, dtype,
                   f"C (n = {n})")
    finally:
        simd._set_pack_a(0)


@pytest.mark.parametrize("layout", ["wide", "narrow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_packed_blocks_match_numpy(dtype, layout, rng):
    """The blocks the reset-before GRU reads of one packed operand: forward, Wh packed
    with split = 2H and its column blocks [:, :2H] and [:, 2H:]; backward, Wh^T and its
    row blocks [:2H] and [2H:] (col_block of the transposed packed Mat)."""
    nr = LAYOUTS[dtype][layout]
    for H in [1, 5, 11, 16, nr // 2, nr + 3]:
        m, k = 7, H
        wh = rng.standard_normal((3 * H, H)).astype(dtype).T          # (H, 3H), PyTorch view
        a = rng.standard_normal((m, k)).astype(dtype)
        for j, n in [(0, 2 * H), (2 * H, H)]:
            c = np.full((m, n), np.nan, dtype)
            simd._gemm_packed(a, wh, c, dtype(0), nr, split=2 * H, j=j, block=True)
            _check(c, a.astype(np.float64) @ wh[:, j:j + n].astype(np.float64), dtype,
                   f"forward block {j} (H = {H})")
        wht = wh.T                                                    # (3H, H)
        for p0, kk in [(0, 2 * H), (2 * H, H), (0, 3 * H)]:
            a = rng.standard_normal((m, kk)).astype(dtype)
            c = rng.standard_normal((m, H)).astype(dtype)
            want = a.astype(np.float64) @ wht[p0:p0 + kk].astype(np.float64) + c
            simd._gemm_packed(a, wht, c, dtype(1), nr, p0=p0, block=True)
            _check(c, want, dtype, f"backward rows {p0}:{p0 + kk} (H = {H})")


def test_packed_gemm_hook_errors():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="shapes or dtypes"):
        simd._gemm_packed(a, np.ones((4, 5), np.float32), np.ones((2, 5), np.float32),
                          np.float32(0), 32)
    with pytest.raises(ValueError, match="contiguous last axis"):
        simd._gemm_packed(np.ones((2, 6), np.float32)[:, ::2], np.ones((3, 5), np.float32),
                          np.ones((2, 5), np.float32), np.float32(0), 32)


# ---------------------------------------------------------------------------
# Models on the packed path vs the reference (float64)
# ---------------------------------------------------------------------------
def _needs_packed():
    if not HAVE_PACKED:
        pytest.skip("no packed GEMM layout for this CPU (needs AVX2+FMA or AVX-512)")


def _needs_row_split():
    if not _threads.row_split_enabled():
        pytest.skip("row split not allowed in this process (SciPy's BLAS loaded first)")


#: (T, N, D, H): one thread (a small per-step product); rows split over 2 threads;
#: rows split above the former per-step split limit (32 M multiply-adds for LSTM and
#: GRU at N = 32, H = 600, RNN at N = 96), T * N / 2 >= 64 row-steps a thread
PACKED_CASES = {"one-thread": (4, 6, 5, 40), "row-split": (60, 23, 9, 40),
                "large-split": (4, 32, 8, 600)}


@pytest.mark.parametrize("case", list(PACKED_CASES))
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_models_on_packed_path_match_reference(cell, with_lengths, case, rng):
    _needs_packed()
    from threadpoolctl import threadpool_limits
    T, N, D, H = PACKED_CASES[case]
    kind = cell.split("_")[0]
    if case == "large-split" and kind == "rnn":
        N = 96
    GH = GATES[kind] * H
    with threadpool_limits(2, user_api="blas"):
        if case != "one-thread":
            _needs_row_split()
            assert K._row_threads(N, N * GH * H, T) == 2       # the split really happens
        else:
            assert K._row_threads(N, N * GH * H, T) == 1
        assert K._packs_step_weight(N, GH, H, T)             # forward's Wh is packed
        assert K._packs_step_weight(N, H, GH, T)             # and backward's Wh^T
        lengths = rng.integers(1, T + 1, N) if with_lengths else None
        check_against_reference(rng, cell, T, N, D, H, batch_first=case == "row-split",
                                lengths=lengths)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_float32_results_do_not_depend_on_the_thread_count(cell, rng):
    """The time loop's rows split over 2 threads, or all on one (row split off): the
    packed kernel computes every row alike, so float32 outputs and gradients agree
    bit for bit. (The all-steps GEMMs are BLAS's, at the same thread count in both.)"""
    _needs_packed()
    _needs_row_split()
    from threadpoolctl import threadpool_limits
    T, N, D, H = 60, 23, 9, 40
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    dout = rng.standard_normal((N, T, H)).astype(np.float32)
    lengths = rng.integers(1, T + 1, N)
    cls = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[cell]

    def run():
        m = cls(D, H, batch_first=True, dtype=np.float32, seed=7)
        out, _ = m(x, lengths=lengths)
        dx, _ = m.backward(dout)
        return [out, dx] + [g.copy() for g in m.grads.values()]

    with threadpool_limits(2, user_api="blas"):
        assert K._row_threads(N, N * GATES[cell] * H * H, T) == 2
        split = run()
        rnncore.set_row_split(False)
        try:
            assert K._row_threads(N, N * GATES[cell] * H * H, T) == 1
            assert K._packs_step_weight(N, GATES[cell] * H, H, T)
            one = run()
        finally:
            rnncore.set_row_split(True)
    for s, o in zip(split, one):
        assert np.array_equal(s, o)


#: (N, T, D, H): H = 11 leaves 2H = 22 off every panel boundary (the second column
#: block starts after a zero-padded panel); H = 16 puts 2H on one (float32 AVX-512)
RB_SIZES = {"H11": (13, 6, 5, 11), "H16": (9, 5, 4, 16), "rows40": (40, 4, 3, 9)}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor-W", "pytorch-W"])
@pytest.mark.parametrize("size", list(RB_SIZES))
def test_reset_before_gru_on_packed_path_matches_reference(size, transposed, reverse, rng):
    _needs_packed()
    N, T, D, H = RB_SIZES[size]
    assert K._packs_step_weight(N, 3 * H, H, T)
    inp, up = _time_major("gru", rng, N, T, D, H)
    lens = np.sort(rng.integers(1, T + 1, N))[::-1].copy()
    got = run_kernel("gru", inp, up, reverse=reverse, batch_sizes=_batch_sizes(lens, T),
                     transposed=transposed, reset_after=False)
    want = reference_per_row("gru", inp, up, lens, reverse, reset_after=False)
    for name in got:
        _check(got[name], want[name], np.float64, name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor-W", "pytorch-W"])
@pytest.mark.parametrize("size", [(13, 6, 5, 11, 7), (40, 4, 3, 40, 33)], ids=["N13", "N40"])
def test_projected_lstm_on_packed_path_matches_reference(size, transposed, reverse, rng):
    """Wh (P, 4H) and the projection Wr (H, P) both packed (forward Wr, backward Wr^T)."""
    _needs_packed()
    N, T, D, H, P = size
    assert K._packs_step_weight(N, 4 * H, P, T) and K._packs_step_weight(N, P, H, T)
    inp, up = _draw_proj(rng, N, T, D, H, P)
    got = _kernel_proj(inp, up, reverse, None, False, transposed)
    want = _reference_proj(inp, up, np.full(N, T), reverse)
    for name, w in want.items():
        _check(got[name], w, np.float64, name)


@pytest.fixture
def packing_off():
    """Time loops on plain weights (the panel kernel and BLAS per-step paths)."""
    for mod in (K, KG, KL):
        mod._set_packing(False)
    try:
        yield
    finally:
        for mod in (K, KG, KL):
            mod._set_packing(True)


#: (T, N, D, H) by per-step path with packing off: the panel kernel (5..32 rows), BLAS
UNPACKED_CASES = {"panel": (5, 13, 5, 40), "blas": (4, 40, 3, 9)}


@pytest.mark.parametrize("case", list(UNPACKED_CASES))
@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_models_with_packing_off_match_reference(cell, case, packing_off, rng):
    T, N, D, H = UNPACKED_CASES[case]
    assert not K._packs_step_weight(N, GATES[cell.split("_")[0]] * H, H, T)
    check_against_reference(rng, cell, T, N, D, H, lengths=rng.integers(1, T + 1, N))


def test_reset_before_and_projection_with_packing_off_match_reference(packing_off, rng):
    N, T, D, H = RB_SIZES["H11"]
    inp, up = _time_major("gru", rng, N, T, D, H)
    got = run_kernel("gru", inp, up, transposed=True, reset_after=False)
    want = reference_per_row("gru", inp, up, np.full(N, T), False, reset_after=False)
    for name in got:
        _check(got[name], want[name], np.float64, name)
    inp, up = _draw_proj(rng, 13, 6, 5, 11, 7)
    got = _kernel_proj(inp, up, True, None, True, True)
    for name, w in _reference_proj(inp, up, np.full(13, 6), True).items():
        _check(got[name], w, np.float64, name)


def test_packing_depends_on_shapes_not_on_blas_threads():
    """The path is chosen from the shapes (and the import-time configuration): BLAS's
    thread count, which another thread's single-thread section changes, plays no part."""
    _needs_packed()
    from threadpoolctl import threadpool_limits
    cases = [(1, 64, 64, 50), (16, 512, 128, 100), (64, 4096, 1024, 50), (8, 64, 64, 1)]
    with threadpool_limits(2, user_api="blas"):
        two = [K._packs_step_weight(*c) for c in cases]
    with threadpool_limits(1, user_api="blas"):
        one = [K._packs_step_weight(*c) for c in cases]
    assert one == two
    assert two[:2] == [True, True] and two[3] is False        # T = 1: nothing to amortize


def test_packed_loop_in_another_thread_leaves_blas_threads_alone(rng):
    """Issue 17 item 3, exercised: while another thread runs a long packed time loop,
    BLAS's process-wide thread count never drops to 1 (the loop opens no single-thread
    section), and a model run meanwhile equals its sequential run bit for bit."""
    _needs_packed()
    import ctypes
    import threading
    from threadpoolctl import threadpool_limits
    from rnncore import functional as F
    hooks = _threads._find_blas_thread_functions()
    if not hooks:
        pytest.skip("cannot read OpenBLAS's thread count")
    blas_threads = ctypes.CFUNCTYPE(ctypes.c_int)(hooks[2])

    def run(m, x):
        out, h_n = m(x)
        m.zero_grad()
        dx, dh0 = m.backward(np.cos(np.arange(out.size)).reshape(out.shape).astype(out.dtype))
        return [out, h_n, dx, dh0] + [g.copy() for g in m.grads.values()]

    with threadpool_limits(2, user_api="blas"):
        if blas_threads() < 2:
            pytest.skip("BLAS runs one thread: nothing to observe")
        m = rnncore.RNN(300, 128, seed=0)
        x = rng.standard_normal((10, 200, 300)).astype(np.float32)
        sequential = run(m, x)
        T = 3_000_000
        assert K._packs_step_weight(1, 8, 8, T)
        args = (rng.standard_normal((1, T, 4)), np.zeros((1, 8)),
                rng.standard_normal((4, 8)) * 0.3, rng.standard_normal((8, 8)) * 0.3, np.zeros(8))
        t = threading.Thread(target=lambda: F.rnn_forward(*args))
        seen = []
        t.start()
        try:
            seen.append(blas_threads())
            raced = run(m, x)
            overlapped = t.is_alive()
            while t.is_alive():
                seen.append(blas_threads())
        finally:
            t.join()
    if not overlapped:
        pytest.skip("the other thread's loop did not overlap this run (machine too slow/busy)")
    assert min(seen) >= 2
    for i, (a, b) in enumerate(zip(raced, sequential)):
        assert np.array_equal(a, b), f"array {i} differs from the sequential run"
