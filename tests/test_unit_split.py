"""The LSTM's unit-split time loops (lstm.pyx: fwd_units, bwd_units; rc_threads.h).

The hidden units in blocks; a block's task runs every row for its units (all four
gates' columns) with its slice of the packed recurrent weight; threads claim blocks
per step, their own first (rc_threads.h: rc_units_*).

1. Forced on (`_set_unit_split(1, P)`) at P = 2 and 3 threads, the kernels match the
   per-row reference in float64 (forward and backward: h, c, dx, dh0, dc0 and the
   weight gradients) and float32: lengths (variable batch sizes), reverse, batch-major
   layouts, transposed (PyTorch-layout) weights, T = 1, H not divisible by the thread
   count nor by the packed kernel's vector width, more threads than vectors of units.
2. The results are bitwise those of the loops without the split (one thread, or rows
   split) and do not depend on the number of threads: each element is the same
   packed-kernel dot product in k order.
3. overwrite_saved (dA over the saved gates) gives the same gradients.
4. The policy: by default the shape rule (forward loops whose weight slice per thread
   streams from L3; shapes, the thread configuration and, through Intel's rows bound,
   the CPU's vendor; not on the AVX2 layout, whose kernel prefetches a large weight
   into L2; and, forward and backward on any layout, loops of too few rows for the
   row split with enough steps and weight); never for a projected LSTM, one step, or
   when forced off.
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64
from test_gemm_packed import LAYOUTS
from test_kernels import _batch_sizes, _time_major, reference_per_row, run_kernel

from rnncore._kernels import lstm as KL
from rnncore._kernels import simd
from rnncore._runtime.blas import _cpu_info   # the vendor, read apart from the kernels
from rnncore._runtime.threads import row_split_enabled as _row_split

pytestmark = pytest.mark.skipif(not HAVE_PACKED,
                                reason="no packed GEMM layout for this CPU (unit split needs it)")

# the AVX2 packed layout: the rule splits units there only for too few rows to split
NARROW = simd._gemm_packed_nr(np.float32) == LAYOUTS[np.float32]["narrow"]


@pytest.fixture
def units():
    """Force the unit split; yields a setter for the thread count; restores the policy."""
    def force(threads=2):
        KL._set_unit_split(1, threads)
    force()
    try:
        yield force
    finally:
        KL._set_unit_split(0)     # the default: the shape rule


@pytest.fixture
def no_units():
    KL._set_unit_split(-1)
    try:
        yield
    finally:
        KL._set_unit_split(0)     # the default: the shape rule
        KL._set_intel_rules(None)  # and the CPU's vendor's choices


def test_unit_split_by_default_only_where_the_weight_streams_from_l3():
    """By default (the shape rule) the loops keep the row split, except forward loops
    whose weight (>= 12 MiB) streams from L3 anyway (inference too, with its chunks);
    on Intel CPUs only where each thread would get fewer than 16 rows; on the AVX2
    layout never."""
    from threadpoolctl import threadpool_limits
    if not _row_split():
        pytest.skip("the row split is off in this configuration (no unit split by policy)")
    intel = _cpu_info()[0] == "GenuineIntel"
    assert KL._unit_rows() == (16 if intel else 0)
    with threadpool_limits(2, user_api="blas"):
        assert KL._unit_threads(32, 256, 100) == 1
        assert KL._unit_threads(32, 256, 100, backward=True) == 1
        assert KL._unit_threads(64, 1024, 50) == (1 if intel or NARROW else 2)
        assert KL._unit_threads(16, 1024, 50) == (1 if NARROW else 2)   # 8 rows a thread
        assert KL._unit_threads(64, 1024, 50, backward=True) == 1
        assert KL._unit_threads(16, 1024, 50, backward=True) == 1


def test_unit_split_by_default_for_too_few_rows_to_split():
    """Below 8 rows (the row split takes no second thread there) the rule splits the
    units of any loop, forward and backward, from 16 steps and a 256 KiB weight on
    (float32 H >= 128, float64 H >= 91), over the threads BLAS may use; on every layout
    and rule set."""
    from threadpoolctl import threadpool_limits
    if not _row_split():
        pytest.skip("the row split is off in this configuration (no unit split by policy)")
    with threadpool_limits(2, user_api="blas"):
        for bw in (False, True):
            assert [KL._unit_threads(n, 512, 100, backward=bw) for n in (1, 4, 7)] == [2] * 3
            assert KL._unit_threads(4, 128, 16, backward=bw) == 2
            assert KL._unit_threads(4, 128, 15, backward=bw) == 1      # too few steps
            assert KL._unit_threads(4, 127, 100, backward=bw) == 1     # weight < 256 KiB
            assert KL._unit_threads(4, 91, 100, np.float64, backward=bw) == 2
            assert KL._unit_threads(4, 90, 100, np.float64, backward=bw) == 1
            assert KL._unit_threads(8, 512, 100, backward=bw) == 1     # rows split instead
    with threadpool_limits(1, user_api="blas"):
        assert KL._unit_threads(4, 512, 100) == 1                      # one thread: none
    KL._set_unit_split(-1)
    try:
        assert KL._unit_threads(4, 512, 100) == 1                      # forced off
    finally:
        KL._set_unit_split(0)


def test_unit_rows_bound(no_units):
    """Intel's rules (rc_unit_rows): a unit split only where the row split gives each
    thread fewer than 16 rows; the others' rules have no such bound; None restores
    the CPU's; bad values are refused and change nothing. On the AVX2 layout no rule
    set splits units (forced, they still do)."""
    from threadpoolctl import threadpool_limits
    if not _row_split():
        pytest.skip("the row split is off in this configuration (no unit split by policy)")
    default = KL._intel_rules()
    KL._set_unit_split(0)
    with threadpool_limits(2, user_api="blas"):
        KL._set_intel_rules(False)
        assert KL._unit_rows() == 0 and not KL._intel_rules()
        split = 1 if NARROW else 2
        assert [KL._unit_threads(n, 1024, 50) for n in (8, 16, 32, 64)] == [split] * 4
        KL._set_intel_rules(True)
        assert KL._unit_rows() == 16 and KL._intel_rules()
        # the most rows a thread gets: 4, 8, 15, 16 (31 rows: 16 + 15), 16, 32
        assert [KL._unit_threads(n, 1024, 50)
                for n in (8, 16, 30, 31, 32, 64)] == [split] * 3 + [1, 1, 1]
        assert KL._unit_threads(8, 1024, 50, backward=True) == 1
        assert KL._unit_threads(8, 768, 50) == 1                   # below 12 MiB: rows
        for bad in (1, "yes", 2.0):
            with pytest.raises(TypeError, match="intel"):
                KL._set_intel_rules(bad)
        assert KL._intel_rules()
        KL._set_unit_split(1, 2)                                   # forced: no bound
        assert KL._unit_threads(64, 1024, 50) == 2
        KL._set_unit_split(0)
        KL._set_intel_rules(None)
        assert KL._intel_rules() == default
    import io
    import rnncore
    names = {"general": "general", "intel": "Intel's", "zen5": "Zen 5's"}
    cfg = rnncore.show_config(file=io.StringIO())
    assert cfg["loop_shape_rules"].startswith(names[KL._shape_rules()])
    try:
        for rules, name in names.items():
            KL._set_shape_rules(rules)
            cfg = rnncore.show_config(file=io.StringIO())
            assert cfg["loop_shape_rules"].startswith(name)
            assert ("keeps its rows split" in cfg["loop_shape_rules"]) == NARROW
            assert "below 8 rows (no row split) the LSTM splits hidden units" in \
                cfg["loop_shape_rules"]
    finally:
        KL._set_shape_rules(None)


def _check(got, want, dtype, name):
    if dtype == np.float64:
        assert_close_f64(got, want, name=name)
    else:
        assert_close_f32(got, want, name=name)


#: (N, T, D, H): H = 40 splits 32 + 8 (float32) / 24 + 16 (float64) over 2; H = 37 is
#: odd; H = 5 leaves the second thread no units (float32); T = 1 has no barrier
SIZES = {"H40": (13, 6, 5, 40), "H37": (9, 5, 3, 37), "H5": (6, 4, 3, 5), "T1": (7, 1, 4, 33),
         "N1": (1, 5, 3, 20)}
LENGTHS = {"H40": [6, 6, 5, 5, 4, 4, 3, 3, 2, 1, 1, 0, 0], "H37": [5, 5, 4, 3, 3, 2, 1, 1, 0],
           "H5": [4, 3, 3, 2, 1, 0], "T1": [1, 1, 1, 1, 0, 0, 0], "N1": [3]}


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", list(SIZES))
def test_unit_split_matches_reference_f64(size, reverse, lengths, batch_major, threads, units,
                                          rng):
    units(threads)
    N, T, D, H = SIZES[size]
    inp, up = _time_major("lstm", rng, N, T, D, H)
    lens = np.array(LENGTHS[size]) if lengths else np.full(N, T)
    bs = _batch_sizes(lens, T) if lengths else None
    if lengths:
        for n, L in enumerate(lens):
            up["dh"][L:, n] = np.nan     # padded upstream gradients are never read
    got = run_kernel("lstm", inp, up, reverse=reverse, batch_sizes=bs, batch_major=batch_major,
                     transposed=reverse)
    want = reference_per_row("lstm", inp, up, lens, reverse)
    for name in got:
        _check(got[name], want[name], np.float64, name)
    for n, L in enumerate(lens):
        for name in ("h", "c", "dx"):
            assert np.all(got[name][L:, n] == 0), name


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("size", ["H40", "H37"])
def test_unit_split_matches_reference_f32(size, reverse, lengths, units, rng):
    N, T, D, H = SIZES[size]
    inp, up = _time_major("lstm", rng, N, T, D, H)
    lens = np.array(LENGTHS[size]) if lengths else np.full(N, T)
    bs = _batch_sizes(lens, T) if lengths else None
    want = reference_per_row("lstm", inp, up, lens, reverse)
    inp32 = {k: v.astype(np.float32) for k, v in inp.items()}
    up32 = {k: v.astype(np.float32) for k, v in up.items()}
    got = run_kernel("lstm", inp32, up32, reverse=reverse, batch_sizes=bs)
    for name in got:
        assert got[name].dtype == np.float32
        _check(got[name], want[name], np.float32, name)


def _run_modes(rng, dtype, N, T, D, H, **kw):
    inp, up = _time_major("lstm", rng, N, T, D, H, dtype)
    out = {}
    KL._set_unit_split(-1)
    try:
        out["rows"] = run_kernel("lstm", inp, up, **kw)
        for P in (2, 3, 4):
            KL._set_unit_split(1, P)
            out[P] = run_kernel("lstm", inp, up, **kw)
    finally:
        KL._set_unit_split(0)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_unit_split_is_bitwise_independent_of_threads(dtype, reverse, rng):
    """Same bits with the units split over 2, 3, 4 threads as without the split."""
    N, T, D, H = 11, 7, 6, 70
    lens = np.array([7, 7, 6, 6, 5, 4, 4, 3, 2, 1, 1])
    out = _run_modes(rng, dtype, N, T, D, H, reverse=reverse, batch_sizes=_batch_sizes(lens, T))
    for P in (2, 3, 4):
        for name, v in out["rows"].items():
            np.testing.assert_array_equal(out[P][name], v, err_msg=f"{name} at {P} threads")


def test_unit_split_overwrite_saved_same_gradients(units, rng):
    N, T, D, H = SIZES["H40"]
    inp, up = _time_major("lstm", rng, N, T, D, H)
    bs = _batch_sizes(np.array(LENGTHS["H40"]), T)
    a = run_kernel("lstm", inp, up, reverse=True, batch_sizes=bs)
    b = run_kernel("lstm", inp, up, reverse=True, batch_sizes=bs, once=True)
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)


def test_unit_split_models_match_reference(units, rng):
    """Through the model layer (bidirectional, 2 layers, lengths) on the unit split."""
    from test_models import check_against_reference
    check_against_reference(rng, "lstm", 5, 9, 4, 24, lengths=rng.integers(1, 6, 9))


def test_unit_split_policy(no_units):
    """rc_unit_threads: shapes and the thread configuration (like the row split, the
    thread count may follow BLAS's; the numbers do not: see the bitwise test above)."""
    from threadpoolctl import threadpool_limits
    cases = [(32, 256, 100), (64, 1024, 50), (16, 128, 100), (1, 1024, 10), (64, 1024, 1),
             (64, 768, 50), (64, 886, 50), (64, 887, 50)]
    KL._set_unit_split(0)
    KL._set_intel_rules(False)    # the rule without Intel's rows bound (tested above)
    with threadpool_limits(1, user_api="blas"):
        assert [KL._unit_threads(*c) for c in cases] == [1] * len(cases)
    with threadpool_limits(2, user_api="blas"):
        two = [KL._unit_threads(*c) for c in cases]
        # float64: the weight reaches 12 MiB from H = 628
        f64 = KL._unit_threads(64, 628, 50, np.float64), KL._unit_threads(64, 627, 50, np.float64)
        back = KL._unit_threads(64, 1024, 50, backward=True)
    if _row_split() and not NARROW:
        # weights below 12 MiB (L2-sized or not) / T = 1 / one row: the row split's choice
        assert two == [1, 2, 1, 1, 1, 1, 1, 2]
        assert f64 == (2, 1)
    else:                                   # no row split, or the AVX2 layout: rows
        assert two == [1] * len(cases) and f64 == (1, 1)
    assert back == 1                                           # backward keeps the rows
    KL._set_unit_split(-1)
    assert all(KL._unit_threads(*c) == 1 for c in cases)
    KL._set_unit_split(1, 3)
    assert KL._unit_threads(4, 64, 5) == 3
    assert KL._unit_threads(4, 2, 5) == 2    # never more threads than units
    KL._set_unit_split(0)


def test_projected_lstm_never_splits_units(units, rng):
    """A projected LSTM keeps the row loop (the projection needs all units of m_t)."""
    from test_lstm_proj import _draw, _kernel, _reference
    N, T, D, H, P = 13, 6, 5, 11, 7
    inp, up = _draw(rng, N, T, D, H, P)
    got = _kernel(inp, up, False, None, False, False)
    for name, w in _reference(inp, up, np.full(N, T), False).items():
        _check(got[name], w, np.float64, name)


def test_unit_split_by_policy_is_bitwise_the_row_split(no_units, rng):
    """With the shape rule on (mode 0, the default), at a shape it routes to the unit
    split (forward, float32, H = 1024: a 16 MiB weight, rows split over 2 threads;
    a training call, which keeps its gates): the same bits as the row split. On the
    AVX2 layout, where the rule keeps the rows, the split is forced (mode 1)."""
    from threadpoolctl import threadpool_limits
    N, T, D, H = 32, 4, 6, 1024
    inp, up = _time_major("lstm", rng, N, T, D, H, np.float32)
    bs = _batch_sizes(np.array([T] * 20 + [T - 1] * 6 + [1] * 6), T)
    with threadpool_limits(2, user_api="blas"):
        KL._set_unit_split(0)
        KL._set_intel_rules(False)  # 16 rows a thread: the rule's path on any CPU
        by_rule = KL._unit_threads(N, H, T) >= 2
        assert not (NARROW and by_rule)              # AVX2: the rule keeps the rows
        if not by_rule and not NARROW:
            pytest.skip("the row split is off in this configuration (no unit split by policy)")
        if NARROW:
            KL._set_unit_split(1, 2)
        before = KL._unit_split_counts()
        got = run_kernel("lstm", inp, up, batch_sizes=bs)
        assert np.subtract(KL._unit_split_counts(), before).any()   # the split ran
        KL._set_unit_split(-1)
        want = run_kernel("lstm", inp, up, batch_sizes=bs)
    lens = np.array([T] * 20 + [T - 1] * 6 + [1] * 6)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    ref = reference_per_row("lstm", {k: v.astype(np.float64) for k, v in inp.items()},
                            {k: v.astype(np.float64) for k, v in up.items()}, lens, False)
    for name in ("h", "c"):
        # float32 dot products of D + H = 1030 terms: ~1e-4 of rounding (a wrong gate
        # or a missing term is off by O(1))
        assert_close_f32(got[name], ref[name], rtol=5e-4, name=name)


def test_inference_splits_units_in_chunks_under_the_shape_rule(no_units):
    """Inference (nothing saved for backward) at a shape the rule splits by units
    computes its input projection in chunks of steps there too (lstm.pyx:
    block_input): the memory of a chunk of steps' gates, not all T, as the row split;
    and the same bits as the row split, by the rule and forced."""
    import tracemalloc
    from threadpoolctl import threadpool_limits
    import rnncore
    T, N, D, H = 40, 32, 8, 900          # weight 13 MB: split by the rule
    m = rnncore.LSTM(D, H, seed=0)
    m.eval()
    x = np.random.default_rng(0).standard_normal((T, N, D)).astype(np.float32)
    gates = T * N * 4 * H * 4            # all T steps' gates: 18 MB
    peaks, outs, splits = {}, {}, {}
    with threadpool_limits(2, user_api="blas"):
        KL._set_unit_split(0)
        KL._set_intel_rules(False)  # 16 rows a thread: the rule's path on any CPU
        by_rule = KL._unit_threads(N, H, T) >= 2
        assert not (NARROW and by_rule)              # never on the AVX2 layout
        if not by_rule and not NARROW:
            pytest.skip("the row split is off in this configuration (no unit split by policy)")
        for mode in (-1, 0, 1):
            KL._set_unit_split(mode)
            with rnncore.no_grad():
                m(x)                                  # warm the workspace cache
                before = KL._unit_split_counts()
                tracemalloc.start()
                outs[mode] = m(x)[0]
                peaks[mode] = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                splits[mode] = np.subtract(KL._unit_split_counts(), before).tolist()
    # one loop, split in chunks by the rule (not on AVX2) and forced; rows when forced off
    assert splits == {-1: [0, 0, 0], 0: [0, 0, int(by_rule)], 1: [0, 0, 1]}
    np.testing.assert_array_equal(outs[0], outs[-1])
    np.testing.assert_array_equal(outs[1], outs[-1])
    for mode in (0, 1):
        assert peaks[mode] < peaks[-1] + gates / 4, peaks    # chunked, as the rows


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("steps", [2, 3])
def test_unit_split_chunked_inference_matches_reference(threads, batch_first, steps, units,
                                                        rng):
    """Units forced on and the input projection in chunks of 2 and 3 steps (T = 7: a
    short last chunk; fusing off): a 2-layer bidirectional LSTM with lengths in
    float64 against the reference, NaN in padded inputs never read, and bitwise the
    row split's chunked result in float32 and float64."""
    from _oracle import reference_run
    import rnncore
    units(threads)
    T, N, D, H = 7, 6, 5, 37              # H = 37: blocks of unequal width
    lengths = np.array([7, 6, 6, 3, 1, 1])
    x = rng.standard_normal((T, N, D))
    pad = np.arange(T)[:, None] >= lengths[None, :]
    outs = {}
    try:
        for dtype in (np.float64, np.float32):
            m = rnncore.LSTM(D, H, num_layers=2, bidirectional=True, seed=3, dtype=dtype,
                             batch_first=batch_first)
            m.eval()
            xn = np.where(pad[:, :, None], np.nan, x).astype(dtype)
            feed = xn.transpose(1, 0, 2).copy() if batch_first else xn
            for mode in ("units", "rows"):
                if mode == "units":
                    KL._set_unit_split(1, threads)
                else:
                    KL._set_unit_split(-1)
                KL._set_packing(True, 0, steps)
                before = KL._unit_split_counts()
                out, (hn, cn) = m(feed, lengths=lengths)
                split = np.subtract(KL._unit_split_counts(), before).tolist()
                assert split == ([0, 0, 4] if mode == "units" else [0, 0, 0])
                outs[dtype, mode] = (out.transpose(1, 0, 2) if batch_first else out, hn, cn)
            if dtype == np.float64:
                want, finals, *_ = reference_run(m, np.where(pad[:, :, None], 0.0, x),
                                                 [None, None], lengths)
                got = outs[dtype, "units"]
                assert_close_f64(got[0], want, name="out")
                for a, w in zip(got[1:], finals):
                    assert_close_f64(a, w, name="final state")
            for a, w in zip(outs[dtype, "units"], outs[dtype, "rows"]):
                np.testing.assert_array_equal(a, w)
    finally:
        KL._set_packing(True, 1, 0)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_unit_split_blocks_claimed_by_any_thread(reverse, units, rng):
    """With no share owning blocks (_set_unit_claims(True)) the blocks of each step go
    to whichever thread claims them first, so they move between threads from step to
    step: training (forward and backward) and chunked inference are still bitwise
    the row split's."""
    import rnncore
    N, T, D, H = 12, 9, 6, 70
    lens = np.array([9, 9, 8, 8, 7, 6, 5, 5, 3, 2, 1, 1])
    inp, up = _time_major("lstm", rng, N, T, D, H, np.float32)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    m = rnncore.LSTM(D, H, seed=4, dtype=np.float32)
    m.eval()
    got, want = {}, {}
    try:
        for out, mode in ((got, 1), (want, -1)):
            KL._set_unit_split(mode, 3)
            KL._set_unit_claims(mode == 1)
            out["train"] = run_kernel("lstm", inp, up, reverse=reverse,
                                      batch_sizes=_batch_sizes(lens, T))
            KL._set_packing(True, 0, 2)
            out["infer"] = m(x, lengths=lens)[0]
            KL._set_packing(True, 1, 0)
    finally:
        KL._set_unit_claims(False)
        KL._set_packing(True, 1, 0)
    for name, v in want["train"].items():
        np.testing.assert_array_equal(got["train"][name], v, err_msg=name)
    np.testing.assert_array_equal(got["infer"], want["infer"])
