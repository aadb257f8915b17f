"""Time loops that multiply by Wx in their steps (rc_gemm_packed.h: rc_fuse_input,
rc_step_input_grad): forward x_t Wx, backward dx_t = dA_t Wx^T.

A fused loop packs [Wx; Wh] once and computes each step's pre-activations as one
product [x_t | h_{t-1}] [Wx; Wh] (rc_gemm_packed2_*: the RNN and the LSTM), or x_t Wx
and h_{t-1} Wh as two packed products (the GRU, whose n gate keeps them apart),
instead of one BLAS GEMM over all T*N rows before the loop.

1. The two-segment kernel (`simd._gemm_packed2`) against NumPy in float64 and
   float32, every m, n tail and both segments' k tails, B from row-major, transposed
   and strided sources, a column split, beta 0 (NaN in C never read) and 1; and
   bitwise the one-segment kernel on the concatenated operands (one dot product in
   k order whatever the segments).
2. The rule: shapes, configuration and the CPU's vendor only (not BLAS's thread
   count); not for fewer than 8 rows, no inputs, or one step; with Intel's rules not
   below 32 rows for a stacked weight over N x 160 KiB, with Zen 5's below 16.
3. Every cell on the fused path -- and its backward computing dx_t = dA_t Wx^T in the
   steps on Wx^T packed once (rc_step_input_grad) -- against the reference (float64): the
   RNN (tanh, ReLU), the GRU (both reset placements: the reset-before one packs Wx
   with a column split), the LSTM with and without a projection; lengths, reverse,
   two layers, batch-first; fused and unfused (`_set_packing(True, fuse=False)`)
   agree (float32 results not depending on the thread count: test_gemm_packed.py).
4. Inference (nothing saved) on a fused loop: one step of gates, bitwise the
   outputs of a training forward.
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64
from test_gemm_packed import _operand
from test_kernels import _batch_sizes, _time_major, reference_per_row, run_kernel
from test_models import check_against_reference

import rnncore
from rnncore._runtime import threads as _threads
from rnncore._runtime.blas import _cpu_info   # the vendor, read apart from the kernels
from rnncore._kernels import gru as KG
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as K
from rnncore._kernels import simd

pytestmark = pytest.mark.skipif(not HAVE_PACKED,
                                reason="no packed GEMM layout for this CPU (fusing needs it)")

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


# ---------------------------------------------------------------------------
# 1. The two-segment kernel
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("source", ["row-major", "transposed", "strided"])
@pytest.mark.parametrize("ks", [(1, 1), (7, 64), (64, 7), (33, 40)])
def test_two_segment_product_matches_numpy(ks, source, dtype, rng):
    k, k2 = ks
    for m in [1, 3, 4, 7, 8, 9, 17]:
        for n in [1, 15, 33, 65]:
            a = rng.standard_normal((m, k)).astype(dtype)
            a2 = rng.standard_normal((m, k2 + 3)).astype(dtype)[:, :k2]   # row stride > k2
            b, b2 = _operand(rng, k, n, dtype, source), _operand(rng, k2, n, dtype, source)
            want = (a.astype(np.float64) @ b.astype(np.float64)
                    + a2.astype(np.float64) @ b2.astype(np.float64))
            c = np.full((m, n), np.nan, dtype)                       # beta 0: never read
            simd._gemm_packed2(a, a2, b, b2, c, dtype(0))
            check = assert_close_f64 if dtype == np.float64 else assert_close_f32
            check(c, want, name=f"[A | A2] [B; B2] m={m} n={n}")
            c0 = rng.standard_normal((m, n)).astype(dtype)
            c1 = c0.copy()
            simd._gemm_packed2(a, a2, b, b2, c1, dtype(1))
            check(c1, want + c0, name=f"beta 1 m={m} n={n}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_two_segment_product_is_bitwise_the_concatenated_one(dtype, rng):
    """One dot product over k + k2 in order: the same bits as the one-segment kernel on
    [A | A2] and [B; B2] (what makes a fused loop's rows independent of the split)."""
    for m, n, k, k2 in [(16, 1024, 256, 256), (5, 40, 9, 40), (8, 96, 1, 33)]:
        a, a2 = (rng.standard_normal((m, j)).astype(dtype) for j in (k, k2))
        b, b2 = (rng.standard_normal((j, n)).astype(dtype) for j in (k, k2))
        got = np.empty((m, n), dtype)
        simd._gemm_packed2(a, a2, b, b2, got, dtype(0))
        one = np.empty((m, n), dtype)
        simd._gemm_packed(np.hstack([a, a2]), np.vstack([b, b2]), one, dtype(0))
        assert np.array_equal(got, one)


@pytest.mark.parametrize("split", [11, 16, 22, 32])
def test_two_segment_product_with_a_column_split(split, rng):
    """[Wx; Wh] packed with Wx's and Wh's column blocks [:split], [split:] each from a
    panel boundary (the reset-before GRU's): both blocks read right."""
    m, k, k2, n = 9, 5, 11, 33
    a, a2 = rng.standard_normal((m, k)), rng.standard_normal((m, k2))
    b, b2 = rng.standard_normal((n, k)).T, rng.standard_normal((k2, n))
    c = np.full((m, n), np.nan)
    simd._gemm_packed2(a, a2, b, b2, c, 0.0, split)
    assert_close_f64(c, a @ b + a2 @ b2, name=f"split {split}")


def test_two_segment_hook_errors():
    a = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="shapes or dtypes"):
        simd._gemm_packed2(a, a, np.ones((3, 5), np.float32), np.ones((4, 5), np.float32),
                           np.ones((2, 5), np.float32), np.float32(0))
    with pytest.raises(ValueError, match="contiguous last axis"):
        simd._gemm_packed2(np.ones((2, 6), np.float32)[:, ::2], a,
                           np.ones((3, 5), np.float32), np.ones((3, 5), np.float32),
                           np.ones((2, 5), np.float32), np.float32(0))


# ---------------------------------------------------------------------------
# 2. The rule
# ---------------------------------------------------------------------------
#: the two rules' cases: fused; 8 rows fused, 7 not; no inputs; one step; the operand
#: held in the cache over 8 MB (24 MB: every step would stream it from memory); 8 MB
#: exactly, in float32 and float64. Forward: (N, D, n, k, T), the stacked [Wx; Wh]
#: (D + k, n); backward: (N, D, Hp, GH, T), Wx^T (GH, D).
RULES = {
    "forward": ("_fuses_input",
                [(32, 256, 1024, 256, 100), (8, 9, 160, 40, 60), (7, 9, 160, 40, 60),
                 (32, 0, 1024, 256, 100), (32, 256, 1024, 256, 1), (64, 512, 4096, 1024, 50),
                 (64, 512, 2048, 512, 50), (64, 512, 2048, 512, 50, np.float64)]),
    "backward": ("_steps_input_grad",
                 [(32, 256, 256, 1024, 100), (8, 9, 40, 160, 60), (7, 9, 40, 160, 60),
                  (32, 0, 256, 1024, 100), (32, 256, 256, 1024, 1), (64, 1024, 1024, 4096, 50),
                  (64, 512, 1024, 4096, 50), (64, 512, 1024, 4096, 50, np.float64)])}


@pytest.mark.parametrize("rule", list(RULES))
def test_multiplying_by_wx_in_the_steps_depends_on_shapes_not_on_blas_threads(rule):
    """Forward x_t Wx (rc_fuse_input) and backward dx_t = dA_t Wx^T (rc_step_input_grad)
    in the steps: shapes and configuration only."""
    from threadpoolctl import threadpool_limits
    name, cases = RULES[rule]
    with threadpool_limits(2, user_api="blas"):
        two = [getattr(K, name)(*c) for c in cases]
    with threadpool_limits(1, user_api="blas"):
        one = [getattr(K, name)(*c) for c in cases]
    assert one == two == [True, True, False, False, False, False, True, False]


@pytest.fixture
def fusing_off():
    """Forward loops with the all-steps input GEMM (packing stays on)."""
    for mod in (K, KG, KL):
        mod._set_packing(True, fuse=False)
    try:
        yield
    finally:
        for mod in (K, KG, KL):
            mod._set_packing(True)


def test_fusing_hook_turns_the_rule_off(fusing_off):
    assert not K._fuses_input(32, 256, 1024, 256, 100)
    assert not K._steps_input_grad(32, 256, 256, 1024, 100)


def test_step_dx_bound_hook_moves_only_the_backward_rule():
    """_set_step_dx_max: the in-step dx's own byte bound (RC_STEP_DX_MAX_BYTES = 8 MiB
    by default), lowered and raised; the forward rule does not move, fuse=2 still
    forces, bad values are refused, and a model's gradients with dx after the loop
    match those with dx in the steps."""
    case = (32, 256, 256, 1024, 100)          # Wx^T (1024, 256) float32: 1 MiB
    edge = (64, 512, 1024, 4096, 50)          # Wx^T (4096, 512) float32: 8 MiB exactly
    big = (64, 1024, 1024, 4096, 50)          # 16 MiB

    def default_bound():
        assert K._steps_input_grad(*edge) and not K._steps_input_grad(*edge, np.float64)
        assert not K._steps_input_grad(*big)

    default_bound()
    assert K._steps_input_grad(*case) and K._fuses_input(32, 256, 1024, 256, 100)
    try:
        K._set_step_dx_max((1 << 20) - 4)
        assert not K._steps_input_grad(*case)
        assert K._steps_input_grad(32, 255, 256, 1024, 100)   # 1 MiB - 4 KiB
        assert K._fuses_input(32, 256, 1024, 256, 100)
        K._set_step_dx_max(16 << 20)                          # raised past the forward's
        assert K._steps_input_grad(*big) and not K._steps_input_grad(*big, np.float64)
        assert not K._fuses_input(64, 512, 4096, 256, 50)     # 12 MiB: the forward bound stays
        K._set_step_dx_max(0)
        assert not K._steps_input_grad(8, 9, 40, 160, 60)
        K._set_step_dx_max(-5)
        assert not K._steps_input_grad(8, 9, 40, 160, 60)
        K._set_packing(True, 2)
        assert K._steps_input_grad(*case)
        for bad in (1.5, "8", True):
            with pytest.raises(TypeError, match="max_bytes"):
                K._set_step_dx_max(bad)
    finally:
        K._set_packing(True)
        K._set_step_dx_max()
    default_bound()
    assert K._steps_input_grad(*case)
    T, N, D, H = 6, 9, 40, 40

    def run():
        m = rnncore.RNN(D, H, dtype=np.float64, seed=5)
        x = np.random.default_rng(1).standard_normal((T, N, D))
        m(x)
        dx, _ = m.backward(np.random.default_rng(2).standard_normal((T, N, H)))
        return [dx] + [g.copy() for g in m.grads.values()]

    assert K._steps_input_grad(N, D, H, H, T, np.float64)
    in_steps = run()
    K._set_step_dx_max(0)
    try:
        assert not K._steps_input_grad(N, D, H, H, T, np.float64)
        after = run()
    finally:
        K._set_step_dx_max()
    for a, b in zip(in_steps, after):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.fixture
def intel_rules():
    """A setter of the rules' vendor choice in every cell module; restores the CPU's."""
    def put(intel):
        for mod in (K, KG, KL):
            mod._set_intel_rules(intel)
    try:
        yield put
    finally:
        put(None)


def test_forward_rule_with_few_rows_on_intel(intel_rules):
    """Intel's rules (rc_fuse_input): N < 32 rows fuse only a stacked weight of at
    most N x 160 KiB; 32 rows and more as before; the backward's dx rule does not
    move; fuse=2 still forces. The others' rules keep fusing from 8 rows. By default
    the CPU's vendor decides."""
    fits = (16, 64, 2048, 256, 50)            # (64 + 256) x 2048 float32: 2.5 MiB = 16 x 160 KiB
    over = (16, 64, 2049, 256, 50)            # 4 KiB past it
    eight = (8, 64, 1024, 256, 50)            # 1.25 MiB = 8 x 160 KiB
    eight_over = (8, 64, 1025, 256, 50)
    big = (8, 512, 2048, 512, 50)             # 8 MiB: fused by the general rule
    rows32, rows31 = (32, 512, 2048, 512, 50), (31, 512, 2048, 512, 50)   # 8 MiB; 31 x 160 KiB: 4.8
    f64 = (16, 64, 2048, 256, 50, np.float64)  # 5 MiB
    cases = [fits, over, eight, eight_over, big, rows32, rows31, f64]
    intel_rules(False)
    assert not K._intel_rules()
    assert [K._fuses_input(*c) for c in cases] == [True] * 8
    intel_rules(True)
    assert K._intel_rules() and KG._intel_rules() and KL._intel_rules()
    want = [True, False, True, False, False, True, False, False]
    assert [K._fuses_input(*c) for c in cases] == want
    assert [KG._fuses_input(*c) for c in cases] == [KL._fuses_input(*c) for c in cases] == want
    KG._set_intel_rules(False)                     # each module keeps its own setting
    assert KG._fuses_input(*over) and not KL._fuses_input(*over)
    KG._set_intel_rules(True)
    assert K._steps_input_grad(8, 512, 512, 2048, 50)       # dx keeps its rule
    K._set_packing(True, 2)
    try:
        assert K._fuses_input(*big) and K._fuses_input(*over)
    finally:
        K._set_packing(True)
    for bad in (1, "True"):
        with pytest.raises(TypeError, match="intel"):
            K._set_intel_rules(bad)
    intel_rules(None)
    assert K._intel_rules() == (_cpu_info()[0] == "GenuineIntel")


def _cpu_family():
    """The CPU family from /proc/cpuinfo (None if unread): AMD's Zen 5 is 26."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "cpu family":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def test_forward_rule_with_few_rows_on_zen5(intel_rules):
    """Zen 5's set (rc_activations.h: RC_RULES_ZEN5): the bound of N x 160 KiB below
    16 rows only; the general rules otherwise (no unit-split bound). By default the
    CPU decides: Intel's on Intel, Zen 5's on AMD from family 26, else the general."""
    fits = (16, 64, 2048, 256, 50)            # 16 rows: past the Zen 5 bound's reach
    over = (16, 64, 2049, 256, 50)
    eight = (8, 64, 1024, 256, 50)            # 1.25 MiB = 8 x 160 KiB
    eight_over = (8, 64, 1025, 256, 50)
    big = (8, 512, 2048, 512, 50)             # 8 MiB
    fifteen = (15, 512, 2048, 512, 50)        # 8 MiB at 15 rows: over 15 x 160 KiB
    rows16 = (16, 512, 2048, 512, 50)         # 8 MiB at 16 rows: the general rule
    cases = [fits, over, eight, eight_over, big, fifteen, rows16]
    for mod in (K, KG, KL):
        mod._set_shape_rules("zen5")
    try:
        assert K._shape_rules() == KG._shape_rules() == KL._shape_rules() == "zen5"
        assert not K._intel_rules()
        want = [True, True, True, False, False, False, True]
        assert [m._fuses_input(*c) for m in (K, KG, KL) for c in cases] == want * 3
        assert KL._unit_rows() == 0                           # the general unit split
        K._set_shape_rules("general")
        assert [K._fuses_input(*c) for c in cases] == [True] * 7
        K._set_shape_rules("intel")
        assert K._intel_rules() and K._shape_rules() == "intel"
        assert not K._fuses_input(*rows16) and not K._fuses_input(*over)
        for bad in ("zen4", "Intel", 1):
            with pytest.raises(ValueError, match="rules"):
                K._set_shape_rules(bad)
        assert K._shape_rules() == "intel"
    finally:
        intel_rules(None)
    vendor, family = _cpu_info()[0], _cpu_family()
    want = ("intel" if vendor == "GenuineIntel"
            else "zen5" if vendor == "AuthenticAMD" and family is not None and family >= 26
            else "general")
    assert K._shape_rules() == KG._shape_rules() == KL._shape_rules() == want


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "lstm"])
def test_models_either_side_of_the_intel_bound_match_reference(cell, intel_rules, rng):
    """A float64 model at 8 rows with a stacked weight over 8 x 160 KiB (and under
    the general 8 MiB) runs fused under the others' rules and unfused under Intel's:
    it matches the reference either way."""
    T, N, D, H = 3, 8, 900, 200
    G = {"rnn_tanh": 1, "gru": 3, "lstm": 4}[cell]
    mod = {"rnn_tanh": K, "gru": KG, "lstm": KL}[cell]      # the module that runs it
    for intel in (False, True):
        intel_rules(intel)
        assert mod._fuses_input(N, D, G * H, H, T, np.float64) == (not intel)
        check_against_reference(rng, cell, T, N, D, H)
    mod._set_shape_rules("zen5")                  # 8 rows: Zen 5's bound applies too
    assert not mod._fuses_input(N, D, G * H, H, T, np.float64)


def test_fusing_hook_forces_the_products_past_the_rule():
    """fuse=2 (bench/fusing_ab.py --forced): whenever the loop packs, whatever its rows
    and weight size; never without inputs or for one step."""
    args = [(2, 9, 160, 40, 60), (64, 512, 4096, 1024, 50), (32, 0, 1024, 256, 100),
            (32, 256, 1024, 256, 1)]
    assert [K._fuses_input(*a) for a in args] == [False] * 4
    K._set_packing(True, 2)
    try:
        assert [K._fuses_input(*a) for a in args] == [True, True, False, False]
        assert K._steps_input_grad(2, 9, 40, 160, 60)
    finally:
        K._set_packing(True)
    assert not K._fuses_input(*args[0])
    assert K._packs_step_weight(32, 1024, 256, 100)


# ---------------------------------------------------------------------------
# 3. Cells on the fused path
# ---------------------------------------------------------------------------
#: (T, N, D, H); N >= 8 fuses; H = 40 / 11 leave the gates off panel boundaries
FUSED_CASES = {"N23": (12, 23, 9, 40), "N8": (7, 8, 5, 11), "D1": (9, 10, 1, 24)}


@pytest.mark.parametrize("case", list(FUSED_CASES))
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_models_on_the_fused_path_match_reference(cell, case, rng):
    T, N, D, H = FUSED_CASES[case]
    assert K._fuses_input(N, D, GATES[cell.split("_")[0]] * H, H, T)
    lengths = rng.integers(1, T + 1, N)
    check_against_reference(rng, cell, T, N, D, H, lengths=lengths)
    check_against_reference(rng, cell, T, N, D, H, num_layers=2, bidirectional=True,
                            batch_first=True)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("transposed", [False, True], ids=["rowmajor-W", "pytorch-W"])
@pytest.mark.parametrize("cell", ["gru", "gru-rb", "lstm"])
def test_kernels_on_the_fused_path_match_reference_per_row(cell, transposed, reverse, rng):
    """The gated kernels directly (the RNN's through its model, above): lengths (rows starting from h0 in the middle of the batch
    in reverse), PyTorch-layout weights (Wx packed from a transposed view), the
    reset-before GRU (Wx and Wh packed with a column split at 2H = 22)."""
    N, T, D, H = 13, 6, 5, 11
    kind = cell.split("-")[0]
    assert K._fuses_input(N, D, GATES[kind] * H, H, T)
    inp, up = _time_major(kind, rng, N, T, D, H)
    lens = np.sort(rng.integers(1, T + 1, N))[::-1].copy()
    extra = {"reset_after": False} if cell == "gru-rb" else {}
    got = run_kernel(kind, inp, up, reverse=reverse, batch_sizes=_batch_sizes(lens, T),
                     transposed=transposed, **extra)
    want = reference_per_row(kind, inp, up, lens, reverse, **extra)
    for name in got:
        assert_close_f64(got[name], want[name], name=name)


def test_projected_lstm_on_the_fused_path_matches_torch_semantics(rng):
    """proj_size: the fused product is [x_t | h_{t-1}] (D + P columns) times [Wx; Wh]."""
    from test_lstm_proj import check_kernel_lengths_reverse
    N, T, D, H, P = 13, 6, 5, 11, 7
    assert K._fuses_input(N, D, 4 * H, P, T)
    check_kernel_lengths_reverse(rng, N, T, D, H, P)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "gru_rb", "lstm"])
def test_fused_and_unfused_loops_agree(cell, rng):
    """The same model, data and lengths with fusing on and off: only the rounding of
    the input projection's sum differs."""
    from threadpoolctl import threadpool_limits
    T, N, D, H = 30, 24, 7, 64
    kind = cell.split("_")[0]
    kw = {"reset_after": False} if cell == "gru_rb" else {}
    if cell == "rnn_tanh":
        cls = rnncore.RNN
    else:
        cls = {"gru": rnncore.GRU, "lstm": rnncore.LSTM}[kind]
    x = rng.standard_normal((T, N, D))
    dout = rng.standard_normal((T, N, H))
    lengths = rng.integers(1, T + 1, N)

    def run():
        m = cls(D, H, bidirectional=True, dtype=np.float64, seed=3, **kw)
        out, _ = m(x, lengths=lengths)
        dx, _ = m.backward(np.concatenate([dout, dout[..., ::-1]], axis=-1))
        return [out, dx] + [g.copy() for g in m.grads.values()]

    assert K._fuses_input(N, D, GATES[kind] * H, H, T, np.float64)
    with threadpool_limits(2, user_api="blas"):
        if _threads.row_split_enabled():       # the rows really split (else one thread)
            assert K._row_threads(N, N * GATES[kind] * H * H, T) == 2
        fused = run()
        for mod in (K, KG, KL):
            mod._set_packing(True, fuse=False)
        try:
            plain = run()
        finally:
            for mod in (K, KG, KL):
                mod._set_packing(True)
    for f, p in zip(fused, plain):
        np.testing.assert_allclose(f, p, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# 4. Inference on a fused loop keeps one step of gates
# ---------------------------------------------------------------------------
def _models(D, H):
    return {"gru": rnncore.GRU(D, H, bidirectional=True, seed=4),
            "gru_rb": rnncore.GRU(D, H, reset_after=False, bidirectional=True,
                                  batch_first=True, seed=4),
            "lstm": rnncore.LSTM(D, H, num_layers=2, bidirectional=True, seed=4),
            "lstm_bf": rnncore.LSTM(D, H, bidirectional=True, batch_first=True, seed=4),
            "lstm_proj": rnncore.LSTM(D, H, proj_size=5, seed=4)}


def _eval_matches_train(m, x, lengths):
    m.train()
    out_t, st_t = m(x, lengths=lengths)
    m.eval()
    out_e, st_e = m(x, lengths=lengths)
    assert np.array_equal(out_t, out_e)
    for a, b in zip(st_t if isinstance(st_t, tuple) else (st_t,),
                    st_e if isinstance(st_e, tuple) else (st_e,)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kind", ["gru", "gru_rb", "lstm", "lstm_bf", "lstm_proj"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("size", [(9, 11, 6, 13), (20, 24, 5, 64)], ids=["one-thread", "split"])
def test_inference_gives_bitwise_the_training_forward(size, kind, dtype, rng):
    """eval() (nothing saved: the gates of one step reused for all) and train() (all
    saved) run the same products and passes: outputs and final states bit for bit,
    with lengths, in both directions, batch-first, through two layers, with the rows
    on one thread and split over two (each share its own rows of the one step)."""
    from threadpoolctl import threadpool_limits
    T, N, D, H = size
    m = _models(D, H)[kind].to(dtype)
    assert K._fuses_input(N, D, 3 * H, H, T, dtype)
    x = rng.standard_normal((N, T, D) if kind.endswith(("_bf", "_rb")) else (T, N, D))
    lengths = rng.integers(1, T + 1, N)
    with threadpool_limits(2, user_api="blas"):
        if size[1] == 24 and _threads.row_split_enabled():
            assert K._row_threads(N, N * 3 * H * H, T) == 2
        _eval_matches_train(m, x.astype(dtype), lengths)


@pytest.mark.parametrize("threads", [2, 3])
def test_inference_with_the_unit_split_gives_bitwise_the_training_forward(threads, rng):
    """The LSTM's unit split (forced) on a fused loop: one step of gates shared by the
    blocks of every step, eval() bitwise train()."""
    T, N, D, H = 7, 13, 5, 40
    m = rnncore.LSTM(D, H, bidirectional=True, seed=5, dtype=np.float32)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    KL._set_unit_split(1, threads)
    try:
        _eval_matches_train(m, x, rng.integers(1, T + 1, N))
    finally:
        KL._set_unit_split(0)    # the default: the shape rule


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru", "gru_rb", "lstm"])
def test_fused_loops_never_read_padded_inputs(cell, rng):
    """NaN in x and dout at padded positions (t >= length): the fused products read x_t
    and dA_t of active rows only, so outputs, dx (zeros at padding) and the weight
    gradients are those of zero padding."""
    T, N, D, H = 12, 16, 5, 24
    kind = cell.split("_")[0]
    cls = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[kind]
    kw = {"reset_after": False} if cell == "gru_rb" else {}
    assert K._fuses_input(N, D, GATES[kind] * H, H, T, np.float64)
    assert K._steps_input_grad(N, D, H, GATES[kind] * H, T, np.float64)
    lengths = rng.integers(1, T + 1, N)
    pad = np.arange(T)[:, None] >= lengths[None, :]                    # (T, N)
    x = rng.standard_normal((T, N, D))
    dout = rng.standard_normal((T, N, H))
    x[pad], dout[pad] = 0, 0
    runs = []
    for fill in (0.0, np.nan):
        xf, df = x.copy(), dout.copy()
        xf[pad], df[pad] = fill, fill
        m = cls(D, H, seed=6, dtype=np.float64, **kw)
        out, _ = m(xf, lengths=lengths)
        dx, _ = m.backward(df)
        runs.append([out, dx] + [g.copy() for g in m.grads.values()])
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    assert not np.any(runs[1][1][pad])                                  # dx padding: zeros


def kernel_inference_peak(cell, T, N, D, H, rng, w_scale=0.3, batch_major=False,
                          reverse_lengths=False):
    """Run the GRU or LSTM kernel's forward on random float32 data with save=True,
    then save=False under tracemalloc (which sees NumPy's allocations, the outputs
    included): returns (peak bytes of the second call, its outputs [h(, c)], the first
    call's). Asserts save=True returns saved arrays and save=False None.
    batch_major: x and the outputs (N, T, F) arrays passed as (T, N, F) views;
    reverse_lengths: the reverse direction over a sorted batch of lengths."""
    import tracemalloc
    G = GATES[cell]

    def seq(F):   # a (T, N, F) array, or the (T, N, F) view of an (N, T, F) one
        return np.empty((N, T, F), np.float32).transpose(1, 0, 2) if batch_major else \
            np.empty((T, N, F), np.float32)

    x = seq(D)
    x[...] = rng.standard_normal((T, N, D))
    Wx = (0.3 * rng.standard_normal((D, G * H))).astype(np.float32)
    Wh = (w_scale * rng.standard_normal((H, G * H))).astype(np.float32)
    b = (0.1 * rng.standard_normal(G * H)).astype(np.float32)
    h0 = np.zeros((N, H), np.float32)
    kw = {}
    if reverse_lengths:
        lengths = np.sort(rng.integers(1, T + 1, N))[::-1]
        kw = dict(reverse=True, batch_sizes=_batch_sizes(lengths, T))

    def run(save):
        h = seq(H)
        if cell == "lstm":
            c = seq(H)
            return KL.forward(x, h0, h0, Wx, Wh, b, h, c, save=save, **kw), [h, c]
        return KG.forward(x, h0, Wx, Wh, b, b, h, save=save, **kw), [h]

    saved, want = run(True)
    assert saved is not None
    tracemalloc.start()
    try:
        got_saved, got = run(False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got_saved is None
    return peak, got, want


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_kernel_forward_without_save_keeps_one_step(cell, rng):
    """save=False on a fused loop returns None, writes the same h (and c), and
    allocates about one step of gates, not (T, N, G*H) (tracemalloc sees NumPy's
    allocations)."""
    T, N, D, H = 200, 16, 8, 32
    G = GATES[cell]
    assert K._fuses_input(N, D, G * H, H, T)
    peak, got, want = kernel_inference_peak(cell, T, N, D, H, rng)
    for a, w in zip(got, want):
        assert np.array_equal(a, w)
    outputs = len(got) * T * N * H * 4
    gates = T * N * G * H * 4
    # the outputs, the packed [Wx; Wh] and one step's arrays; not the (T, N, G*H) gates
    assert peak < outputs + gates // 4, (peak, outputs, gates)
