"""The all-steps weight gradients on packed chunks of dG (rc_gemm_dw.h: rc_dw_*).

After its time loop, backward adds dWx += x^T dG and dWh += sum_t h_prev(t)^T dG_t
(the GRU's dWx reading [dG[:, :2H] | dAn]). The dW kernel packs each chunk of
dG's rows once for both, each thread owning a range of its column panels, and
multiplies the saved inputs' rows (read in place where they are short, else copied
transposed per block) by them on the packed kernel; PyTorch-layout gradients (transposed views) are summed in a
scratch and added in. So:

1. The kernels (RNN, GRU with the reset after and before, LSTM) forced onto it
   (``_set_weight_grads(2)``) match the reference per row in float64, with rows past
   one chunk (K = T*N > 512 / 256), m past one 64-row block and off the 8-row
   register blocks, row-major and PyTorch-layout (transposed) gradients accumulated
   onto preset values, both layout kinds, reverse, lengths; the count of calls
   shows it ran. float32 too, and part-filled last panels.
2. The projected LSTM (dWh has proj_size rows) matches its reference; the
   layer-normalised cells' dWh and dWx (each on its own B) match the reference
   (LN-LSTM kernel) and BLAS (both models).
3. Results do not depend on the thread count: models with 1 and 2 BLAS threads
   give bitwise equal gradients, with 3 the dW kernel's own (dWx) too (and the counts
   show more than one thread ran where the row split is allowed).
4. Where it does not apply, BLAS does the work (no call counted) and the results
   still match: a GRU (reset after or before) whose n block starts off a panel
   boundary, the hook off (0), the default rule below 4M multiply-adds or 256 rows.
   With the row split off the kernel still runs (the same path, so the same bits),
   on one thread.
5. The saved inputs read in place (rows of at most 1 KiB, or forced) and from the
   transposed copy give bitwise the same gradients, the counts showing which ran;
   in float64 they match the reference.
6. The kernel's memory from the backward call's workspace (the workspace cache,
   its reused blocks poisoned with NaN bits) or allocated per call: bitwise the
   same gradients, onto preset values, the counts showing which ran; the cache
   off (the workspace from NumPy) too; float64 against the reference; models
   (batch-first too, the kernel on threads) and the layer-normalised cells.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64
from test_kernels import (_batch_sizes, _empty_seq, _mat, _ref_one_sequence, _seq,
                          _time_major, reference_per_row, run_kernel)

import rnncore
from rnncore._kernels import gru as KG, lngru as KLG, lnlstm as KLL, lstm as KL, rnn as KR
from rnncore._kernels import _pool, simd
from rnncore._runtime.threads import row_split_enabled

pytestmark = pytest.mark.skipif(not HAVE_PACKED,
                                reason="no packed GEMM layout for this CPU (no dW kernel)")

MODULES = {"rnn": KR, "gru": KG, "lstm": KL}
NR32 = simd._gemm_packed_nr(np.float32)   # panel width: 32 float32 (AVX-512), 16 (AVX2)


class _hook_mode:
    """Every module's hook `name` set to `mode` inside the block, back to 1 after."""
    name = None

    def __init__(self, mode, modules=(KR, KG, KL, KLG, KLL)):
        self.mode, self.modules = mode, modules

    def __enter__(self):
        for m in self.modules:
            getattr(m, self.name)(self.mode)

    def __exit__(self, *exc):
        for m in self.modules:
            getattr(m, self.name)(1)


class forced(_hook_mode):
    """The modules' weight gradients on the dW kernel at any size (mode 2), or BLAS (0)."""
    name = "_set_weight_grads"

    def __init__(self, mode=2, modules=(KR, KG, KL, KLG, KLL)):
        super().__init__(mode, modules)


class inplace_mode(_hook_mode):
    """The modules' dW kernel reads A in place by its rule (1), always (2), never (0)."""
    name = "_set_weight_grads_inplace"


def _calls(mod):
    return mod._weight_grads_calls()[0]


def _run(cell, inp, up, *, reverse=False, batch_sizes=None, batch_major=False,
         transposed=False, preset=None, **extra):
    """run_kernel, and the same for the RNN's kernel (tanh)."""
    if cell != "rnn":
        return run_kernel(cell, inp, up, reverse=reverse, batch_sizes=batch_sizes,
                          batch_major=batch_major, transposed=transposed, preset=preset,
                          **extra)
    x = _seq(inp["x"], batch_major)
    t, n, d = x.shape
    h_ = inp["h0"].shape[1]
    dt = x.dtype
    preset = preset or {}
    h = _empty_seq(t, n, h_, dt, batch_major)
    dx = _empty_seq(t, n, d, dt, batch_major)
    dh0 = np.full((n, h_), np.nan, dtype=dt)
    dWx = _mat(preset.get("dWx", np.zeros((d, h_), dt)), transposed)
    dWh = _mat(preset.get("dWh", np.zeros((h_, h_), dt)), transposed)
    db = np.zeros(h_, dt)
    Wx, Wh = _mat(inp["Wx"], transposed), _mat(inp["Wh"], transposed)
    KR.forward(x, inp["h0"], Wx, Wh, inp["b"], h, False, reverse, batch_sizes)
    KR.backward(_seq(up["dh"], batch_major), up["dhn"], x, inp["h0"], Wx, Wh, h, dx, dh0,
                dWx, dWh, db, False, reverse, batch_sizes)
    return {k: np.array(v) for k, v in dict(dx=dx, dh0=dh0, dWx=dWx, dWh=dWh).items()}


def _reference(cell, inp, up, lens, reverse, **extra):
    """reference_per_row, and the same for the RNN (tanh)."""
    if cell != "rnn":
        return reference_per_row(cell, inp, up, lens, reverse, **extra)
    t, n, d = inp["x"].shape
    h_ = inp["h0"].shape[1]
    out = dict(dx=np.zeros((t, n, d)), dh0=np.zeros((n, h_)), dWx=np.zeros((d, h_)),
               dWh=np.zeros((h_, h_)))
    f64 = {k: np.asarray(v, dtype=np.float64) for k, v in {**inp, **up}.items()}
    for r in range(n):
        L = int(lens[r])
        if L == 0:
            out["dh0"][r] = f64["dhn"][r]
            continue
        _, dxr, dh0r, dWxr, dWhr, _ = _ref_one_sequence(
            f64["x"][:L, r], f64["h0"][r], f64["Wx"], f64["Wh"], f64["b"], False, reverse,
            f64["dh"][:L, r], f64["dhn"][r])
        out["dx"][:L, r], out["dh0"][r] = dxr, dh0r
        out["dWx"] += dWxr
        out["dWh"] += dWhr
    return out


# ---------------------------------------------------------------------------
# 1. The kernels against the reference
# ---------------------------------------------------------------------------
#: N*T = 609 rows: two chunks in float32 (512), three in float64 (256); D = 70: two
#: blocks of A^T's rows (64 + 6), off the 8-row register blocks; H = 32: the GRU's
#: n block starts on a panel boundary in every layout
N, T, D, H = 29, 21, 70, 32


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor-dW", "pytorch-dW"])
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_kernels_match_reference(cell, transposed, batch_major, reverse, lengths, rng):
    kind, extra = cell.split("-")[0], {"reset_after": False} if cell == "gru-rb" else {}
    inp, up = _time_major(kind, rng, N, T, D, H)
    lens = (np.sort(rng.integers(1, T + 1, N))[::-1].copy() if lengths
            else np.full(N, T))
    G = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    preset = {"dWx": rng.standard_normal((D, G * H)), "dWh": rng.standard_normal((H, G * H))}
    mod = MODULES[kind]
    before = _calls(mod)
    with forced():
        got = _run(kind, inp, up, reverse=reverse, transposed=transposed,
                   batch_major=batch_major, preset={k: v.copy() for k, v in preset.items()},
                   batch_sizes=_batch_sizes(lens, T) if lengths else None, **extra)
    assert _calls(mod) == before + 1
    want = _reference(kind, inp, up, lens, reverse, **extra)
    for name in ("dWx", "dWh"):
        assert_close_f64(got[name], preset[name] + want[name], atol=1e-9, name=name)
    for name in ("dx", "dh0"):
        assert_close_f64(got[name], want[name], name=name)


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
@pytest.mark.parametrize("config", ["tm-fwd-T", "bm-rev-lengths", "tm-rev-rowmajor"])
def test_kernels_match_reference_float32(cell, config, rng):
    kind, extra = cell.split("-")[0], {"reset_after": False} if cell == "gru-rb" else {}
    n, t = 37, 19                   # 703 rows: two float32 chunks (512)
    inp, up = _time_major(kind, rng, n, t, D, H, dtype=np.float32)
    lengths = "lengths" in config
    lens = np.sort(rng.integers(1, t + 1, n))[::-1].copy() if lengths else np.full(n, t)
    before = _calls(MODULES[kind])
    with forced():
        got = _run(kind, inp, up, transposed=config.endswith("-T"), reverse="rev" in config,
                   batch_major=config.startswith("bm"),
                   batch_sizes=_batch_sizes(lens, t) if lengths else None, **extra)
    assert _calls(MODULES[kind]) == before + 1
    want = _reference(kind, inp, up, lens, "rev" in config, **extra)
    for name in ("dWx", "dWh"):
        assert_close_f32(got[name], want[name], name=name)


#: (N, T, D): K below one chunk; one step (dWx only, or the reset-before GRU's n
#: columns too: its h0 term is BLAS's); a shift of N >= a chunk (300: past float64's
#: 256, 520: past float32's 512 -- the first chunks hold no pair, a scratch starts in a
#: later one); one input (the GRU's B with dAn); no input (dWh only, dAn not packed)
EDGES = {"K35": (7, 5, 9), "T1": (40, 1, 9), "shift300": (300, 3, 9),
         "shift520": (520, 2, 9), "D1": (30, 11, 1), "D0": (30, 11, 0)}


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("read", [1, 0], ids=["rule", "copied"])
def test_edges_match_reference(cell, edge, dtype, reverse, read, rng):
    """Each edge with the saved inputs read by the rule (here: in place) and copied."""
    kind, extra = cell.split("-")[0], {"reset_after": False} if cell == "gru-rb" else {}
    n, t, d = EDGES[edge]
    h = 32
    inp, up = _time_major(kind, rng, n, t, d, h, dtype=dtype)
    before = _calls(MODULES[kind])
    with forced(), inplace_mode(read):
        got = _run(kind, inp, up, transposed=True, reverse=reverse, **extra)
    assert _calls(MODULES[kind]) == before + 1
    want = _reference(kind, inp, up, np.full(n, t), reverse, **extra)
    for name in ("dWx", "dWh"):
        if dtype == np.float64:
            assert_close_f64(got[name], want[name], name=name)
        else:   # the float32 RNN without inputs: BLAS's dWh is 0.7-1.5e-5 off there too
            assert_close_f32(got[name], want[name], rtol=5e-5, name=name)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("h", [3, 20])
def test_part_filled_panels_match_reference(cell, h, rng):
    """4H or H no multiple of the panel width: the last panel part-filled (zeros
    packed past the edge, never stored); H = 3: fewer panels than threads."""
    inp, up = _time_major(cell, rng, N, T, D, h)
    with threadpool_limits(2, user_api="blas"):
        with forced():
            got = _run(cell, inp, up, transposed=True)
    want = _reference(cell, inp, up, np.full(N, T), False)
    for name in ("dWx", "dWh"):
        assert_close_f64(got[name], want[name], name=name)


def test_a_wrong_term_would_be_caught(rng):
    """The tolerance above is far below what a missing step or a shifted pair changes."""
    inp, up = _time_major("lstm", rng, N, T, D, H)
    want = reference_per_row("lstm", inp, up, np.full(N, T), False)
    short = reference_per_row("lstm", inp, up, np.full(N, T - 1), False)
    assert np.abs(want["dWh"] - short["dWh"]).max() > 1e-3


# ---------------------------------------------------------------------------
# 2. The projected LSTM, the layer-normalised cells
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("blas_slow", [False, True], ids=["blas", "blas-slow"])
def test_projected_lstm_matches_reference(rng, blas_slow):
    """Four backward calls, each one dW problem; while BLAS is slow (rc_blas_slow) the
    projection's dWr += m^T E takes the dW kernel too (mm: own_matmul)."""
    from rnncore import _bindings
    from test_lstm_proj import check_kernel_lengths_reverse
    before = _calls(KL)
    _bindings.set_blas_slow(blas_slow)
    try:
        with forced():   # float64, 575 rows: three chunks of 256
            check_kernel_lengths_reverse(rng, 23, 25, 9, 24, 7)
    finally:
        _bindings.set_blas_slow(_bindings.BLAS_SLOW)
    assert _calls(KL) == before + (8 if blas_slow and HAVE_PACKED else 4)


def test_layer_normalised_lstm_kernel_matches_reference(rng):
    """The LN cells' dWh (on dZ) and dWx (on the normalised input side's gradient):
    two problems, each its own packed B."""
    from test_layer_norm import _check_kernel, draw
    a, up = draw(rng, N, T, D, H)
    before = _calls(KLL)
    with forced():
        for reverse in (False, True):
            for batch_major in (False, True):
                _check_kernel(a, up, reverse, batch_major, np.float64)
    assert _calls(KLL) == before + 2 * 4


@pytest.mark.parametrize("cls", ["gru", "lstm"])
def test_layer_normalised_models_agree_with_blas(cls, rng):
    x = rng.standard_normal((T, N, D))

    def make():
        return (rnncore.GRU if cls == "gru" else rnncore.LSTM)(
            D, H, layer_norm=True, num_layers=2, bidirectional=True, seed=6, dtype=np.float64)
    mod = KLG if cls == "gru" else KLL
    before = _calls(mod)
    with forced(2):
        a = _model_grads(make, x)
    assert _calls(mod) == before + 2 * 4     # dWh and dWx; two layers, two directions
    with forced(0):
        b = _model_grads(make, x)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-11, err_msg=k)


# ---------------------------------------------------------------------------
# 3. Thread counts
# ---------------------------------------------------------------------------
def _train(cell, dtype, threads, bidirectional=True):
    # T*N * GH * (D + H) >= 84M multiply-adds: past rc_gemms_threads_begin's 2^26, so
    # the weight gradients may run on more than one thread
    rng = np.random.default_rng(5)
    n, t, d, h = 32, 20, 256, 256
    x = rng.standard_normal((n, t, d)).astype(dtype)
    cls = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[cell]
    m = cls(d, h, num_layers=2, bidirectional=bidirectional, batch_first=True, seed=2,
            dtype=dtype)
    with threadpool_limits(threads, user_api="blas"):
        y, _ = m(x)
        m.backward(rng.standard_normal(y.shape).astype(dtype))
    return {k: m.grads[k].copy() for k in sorted(m.grads)}


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_results_do_not_depend_on_the_thread_count(cell, dtype):
    """All gradients bitwise with 1, 2 and 3 threads (3: more than this machine's
    cores, maybe): dWx is all the dW kernel's; dWh's main term too, and its small
    BLAS corrections (the pairs straddling two sequences in batch-major layout, the
    h0^T dz_0 term) run on one thread (rnncore's own GEMM with a packed layout, else
    one BLAS thread) -- OpenBLAS's float32 sums for them
    changed with its thread count on its Haswell kernels (a Zen 3 VM: ~3 % of dWh's
    elements by an ulp between 1 and 2 threads)."""
    mod = MODULES[cell]
    with forced():
        one = _train(cell, dtype, 1, bidirectional=False)
        threaded = mod._weight_grads_calls()[1]
        for threads in (2, 3):
            other = _train(cell, dtype, threads, bidirectional=False)
            for name in one:
                np.testing.assert_array_equal(one[name], other[name],
                                              err_msg=f"{name}, {threads} threads")
    if row_split_enabled():       # rnncore's own threads may run: they did
        assert mod._weight_grads_calls()[1] >= threaded + 2 * 2


# ---------------------------------------------------------------------------
# 4. Where BLAS does it
# ---------------------------------------------------------------------------
def _model_grads(make, x, dy_seed=4):
    m = make()
    y, _ = m(x)
    m.backward(np.random.default_rng(dy_seed).standard_normal(y.shape).astype(x.dtype))
    return {k: v.copy() for k, v in m.grads.items()}


@pytest.mark.parametrize("case", ["gru-rb-offpanel", "gru-offpanel", "off", "below-rule",
                                  "few-rows"])
def test_blas_where_the_kernel_does_not_apply(case, rng):
    h, mode, mods = H, 2, (KG,)
    kw = dict(num_layers=2, bidirectional=True, seed=1, dtype=np.float64)
    if case == "gru-rb-offpanel":
        nr64 = simd._gemm_packed_nr(np.float64)
        h = nr64 // 2 + 1                  # its n block (2H..) starts off a panel boundary
        make = lambda: rnncore.GRU(D, h, reset_after=False, **kw)   # noqa: E731
    elif case == "gru-offpanel":
        h = NR32 // 2 + 4                  # 3H is no multiple of the panel width
        assert (3 * h) % simd._gemm_packed_nr(np.float64) != 0
        make = lambda: rnncore.GRU(D, h, **kw)   # noqa: E731
    elif case == "off":
        mode, mods = 0, (KL,)
        make = lambda: rnncore.LSTM(D, h, **kw)   # noqa: E731
    elif case == "below-rule":
        mode, mods = 1, (KL,)              # the rule: 8 rows * 128 * 42 < 4M
        make = lambda: rnncore.LSTM(10, h, **kw)   # noqa: E731
    else:
        mode, mods = 1, (KL,)              # the rule: 192 rows * 512 * 192 >= 4M, < 256 rows
        make = lambda: rnncore.LSTM(64, 128, **kw)   # noqa: E731
    shape = {"below-rule": (4, 2, 10), "few-rows": (3, 64, 64)}.get(case, (T, 2, D))
    x = rng.standard_normal(shape)
    before = [_calls(m) for m in mods]
    with forced(mode):
        got = _model_grads(make, x)
    assert [_calls(m) for m in mods] == before
    with forced(0):
        want = _model_grads(make, x)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_with_the_row_split_off_the_kernel_runs_on_one_thread(rng):
    """rnncore's own threads run only where the row split is allowed (BLAS's workers
    sleep); without it the kernel still takes the gradients -- the same path, so the
    same bits as with the split -- on one thread."""
    from rnncore._runtime import threads as _threads
    # 640 rows * 512 * 256 = 84M multiply-adds: past the section of one BLAS thread
    x = rng.standard_normal((40, 16, 128)).astype(np.float32)
    make = lambda: rnncore.LSTM(128, 128, seed=1)   # noqa: E731
    was = _threads._ROW_SPLIT                # None: by default, as allowed
    calls, threaded = KL._weight_grads_calls()
    rnncore.set_row_split(False)
    try:
        with threadpool_limits(2, user_api="blas"):
            one = _model_grads(make, x)
        assert KL._weight_grads_calls() == (calls + 1, threaded)
    finally:
        _threads._ROW_SPLIT = was
        _threads.set_loop_parallel_min(_threads.LOOP_PARALLEL_MIN)   # hands it to the kernels
    if row_split_enabled():                  # with the split: on two threads, same bits
        with threadpool_limits(2, user_api="blas"):
            split = _model_grads(make, x)
        assert KL._weight_grads_calls() == (calls + 2, threaded + 1)
        for k in one:
            np.testing.assert_array_equal(one[k], split[k], err_msg=k)


@pytest.mark.skipif(not row_split_enabled(), reason="the row split is off: BLAS keeps dW")
def test_the_default_rule_uses_the_kernel_from_4m_multiply_adds(rng):
    x = rng.standard_normal((40, 16, 64)).astype(np.float32)   # 640 * 512 * 192 = 63M
    before = _calls(KL)
    _model_grads(lambda: rnncore.LSTM(64, 128, seed=1), x)
    assert _calls(KL) == before + 1


def test_hook_modes_route_and_agree(rng):
    """Forced (2) and BLAS (0) on the same model and data: the sums' rounding only."""
    x = rng.standard_normal((T, N, D))

    def make():
        return rnncore.LSTM(D, H, num_layers=2, bidirectional=True, seed=6, dtype=np.float64)
    before = _calls(KL)
    with forced(2):
        a = _model_grads(make, x)
    assert _calls(KL) == before + 4          # two layers, two directions
    with forced(0):
        b = _model_grads(make, x)
    assert _calls(KL) == before + 4
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-11)


# ---------------------------------------------------------------------------
# 5. The saved inputs read in place or from a transposed copy
# ---------------------------------------------------------------------------
def _inplace_terms(mod):
    return mod._weight_grads_inplace_terms()


#: terms (x's, h's) of each cell's dW: the GRU's dWx pairs x with dG's r, z columns
#: and with dAn; the reset-before GRU's dWh pairs h with them and r * h with dG's n
X_TERMS = {"rnn": 1, "gru": 2, "gru-rb": 1, "lstm": 1}
H_TERMS = {"rnn": 1, "gru": 1, "gru-rb": 2, "lstm": 1}


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("layout", ["tm-fwd-T", "bm-rev-lengths"])
@pytest.mark.parametrize("d", [300, 65])
def test_inputs_in_place_and_copied_agree_bitwise(cell, dtype, layout, d, rng):
    """x's rows of 300 elements (over 1 KiB: the rule copies them) or 65 (in place;
    64 + a 1-row block), h's of 32 (in place): never, the rule and always give
    bitwise the same gradients (the same FMAs in the same order), the counts show
    which terms ran in place, and the float64 results match the reference."""
    kind, extra = cell.split("-")[0], {"reset_after": False} if cell == "gru-rb" else {}
    n, t, h = 23, 29, 32                       # 667 rows: two float32 chunks, three float64
    inp, up = _time_major(kind, rng, n, t, d, h, dtype=dtype)
    lengths = "lengths" in layout
    lens = np.sort(rng.integers(1, t + 1, n))[::-1].copy() if lengths else np.full(n, t)
    mod = MODULES[kind]
    got, ran = {}, {}
    for mode in (0, 1, 2):
        before = _inplace_terms(mod)
        with forced(), inplace_mode(mode):
            got[mode] = _run(kind, inp, up, transposed=layout.endswith("-T"),
                             reverse="rev" in layout, batch_major=layout.startswith("bm"),
                             batch_sizes=_batch_sizes(lens, t) if lengths else None, **extra)
        ran[mode] = _inplace_terms(mod) - before
    x_short = d * np.dtype(dtype).itemsize <= 1024
    assert ran == {0: 0, 1: H_TERMS[cell] + X_TERMS[cell] * x_short,
                   2: H_TERMS[cell] + X_TERMS[cell]}
    for mode in (1, 2):
        for name in ("dWx", "dWh", "dx", "dh0"):
            np.testing.assert_array_equal(got[mode][name], got[0][name],
                                          err_msg=f"{name}, mode {mode}")
    want = _reference(kind, inp, up, lens, "rev" in layout, **extra)
    for name in ("dWx", "dWh"):
        if dtype == np.float64:
            assert_close_f64(got[2][name], want[name], atol=1e-9, name=name)
        else:
            assert_close_f32(got[2][name], want[name], name=name)


@pytest.mark.parametrize("cls", ["gru", "lstm"])
def test_layer_normalised_inputs_in_place_and_copied_agree_bitwise(cls, rng):
    """The layer-normalised cells' dW terms (dZ and dZx on their own B) too."""
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    mod = KLG if cls == "gru" else KLL
    make = {"gru": rnncore.GRU, "lstm": rnncore.LSTM}[cls]
    got, ran = {}, {}
    for mode in (0, 2):
        before = _inplace_terms(mod)
        with forced(), inplace_mode(mode):
            got[mode] = _model_grads(lambda: make(D, H, layer_norm=True, seed=3), x)
        ran[mode] = _inplace_terms(mod) - before
    assert ran[0] == 0 and ran[2] >= 2
    for k in got[0]:
        np.testing.assert_array_equal(got[2][k], got[0][k], err_msg=k)


def test_inplace_hook_rejects_a_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        KL._set_weight_grads_inplace(3)


# ---------------------------------------------------------------------------
# 6. The kernel's memory: the backward call's workspace or its own
# ---------------------------------------------------------------------------
class workspace_mode(_hook_mode):
    """The modules' dW kernel in the call's workspace (1) or allocating its own (0)."""
    name = "_set_weight_grads_workspace"


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("transposed", [True, False], ids=["pytorch-dW", "rowmajor-dW"])
@pytest.mark.parametrize("cache_on", [True, False], ids=["cache", "no-cache"])
def test_workspace_and_own_memory_agree_bitwise(cell, dtype, transposed, cache_on, rng,
                                                poisoned_cache):
    """One backward call allocating, three in the workspace (each block, new or
    reused, full of NaN bits: a scratch sum or packed chunk read before written
    would show): bitwise equal, added onto preset gradients; the count of calls in
    a workspace; float64 against the reference. PyTorch-layout targets take a
    scratch sum each (the GRU's dWx two, one per term)."""
    kind, extra = cell.split("-")[0], {"reset_after": False} if cell == "gru-rb" else {}
    n, t, d, h = 23, 29, 65, 32            # 667 rows: two float32 chunks, three float64
    inp, up = _time_major(kind, rng, n, t, d, h, dtype=dtype)
    g = {"rnn": 1, "gru": 3, "lstm": 4}[kind]
    preset = {"dWx": rng.standard_normal((d, g * h)).astype(dtype),
              "dWh": rng.standard_normal((h, g * h)).astype(dtype)}
    if not cache_on:
        _pool.set_limit(0)
    mod = MODULES[kind]
    runs = []
    for mode in (0, 1, 1, 1):
        before = mod._weight_grads_workspace_calls()
        with forced(), workspace_mode(mode):
            got = _run(kind, inp, up, transposed=transposed,
                       preset={k: v.copy() for k, v in preset.items()}, **extra)
        assert mod._weight_grads_workspace_calls() - before == mode
        runs.append(got)
    for got in runs[1:]:
        for name in ("dWx", "dWh", "dx", "dh0"):
            np.testing.assert_array_equal(got[name], runs[0][name], err_msg=name)
    lens = np.full(n, t)
    want = _reference(kind, inp, up, lens, False, **extra)
    for name in ("dWx", "dWh"):
        w = want[name] + preset[name].astype(np.float64)
        if dtype == np.float64:
            assert_close_f64(runs[1][name], w, atol=1e-9, name=name)
        else:
            assert_close_f32(runs[1][name], w, name=name)


#: (D, H) per cell: 48 x 16 rows take >= 2^26 multiply-adds in both layers (the dW
#: kernel on threads)
WS_SHAPES = {"rnn": (256, 256), "gru": (192, 128), "lstm": (128, 128)}


@pytest.mark.parametrize("cls", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_models_train_in_the_workspace(cls, batch_first, rng, poisoned_cache):
    """A 2-layer model's training steps at a shape the default rule routes to the dW
    kernel, on its threads where the row split is allowed (2 BLAS threads; one
    direction: two run theirs side by side, each on one thread): its calls run in the workspace (batch-first too: planned on the shapes
    before the loop has written dG), with the same gradients as allocating."""
    mod = {"rnn": KR, "gru": KG, "lstm": KL}[cls]
    make = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[cls]
    d, h = WS_SHAPES[cls]
    x = rng.standard_normal((16, 48, d) if batch_first else (48, 16, d)).astype(np.float32)
    mk = lambda: make(d, h, num_layers=2, batch_first=batch_first, seed=2)   # noqa: E731
    with threadpool_limits(2), workspace_mode(0):
        want = _model_grads(mk, x)
    before = mod._weight_grads_workspace_calls()
    threaded = mod._weight_grads_calls()[1]
    with threadpool_limits(2):
        for _ in range(2):
            got = _model_grads(mk, x)
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert mod._weight_grads_workspace_calls() - before == 4   # 2 steps x 2 layers
    if row_split_enabled():
        assert mod._weight_grads_calls()[1] - threaded == 4


@pytest.mark.parametrize("cls", ["gru", "lstm"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("d", [96, 32], ids=["dWx-larger", "dWh-larger"])
def test_layer_normalised_models_train_in_the_workspace(cls, batch_first, dtype, d, rng,
                                                        poisoned_cache):
    """The layer-normalised cells' two dW problems (dWh on dZ, then dWx on dZx) share
    one workspace, sized for the larger (D = 96 or 32 against H = 64: either's
    scratch sum the larger): both run in it (two calls counted per backward), with
    the same gradients as allocating, on poisoned reused blocks."""
    mod = KLG if cls == "gru" else KLL
    make = {"gru": rnncore.GRU, "lstm": rnncore.LSTM}[cls]
    x = rng.standard_normal((16, 48, d) if batch_first else (48, 16, d)).astype(dtype)
    mk = lambda: make(d, 64, layer_norm=True, batch_first=batch_first, seed=2,  # noqa: E731
                      dtype=dtype)
    with workspace_mode(0):
        want = _model_grads(mk, x)
    before = mod._weight_grads_workspace_calls()
    for _ in range(2):
        got = _model_grads(mk, x)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert mod._weight_grads_workspace_calls() - before == 4   # 2 steps x (dWh, dWx)
