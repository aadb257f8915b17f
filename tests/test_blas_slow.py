"""The time loops' all-steps products while SciPy's BLAS runs kernels below this CPU's
SIMD level (rc_matmul.h: rc_blas_slow; _gemm.pxd: mm -> own_matmul).

OpenBLAS's AVX2 ("Haswell") kernels on an AVX-512 CPU -- OPENBLAS_CORETYPE=Haswell in
the environment, or a CPU OpenBLAS does not know -- run a GEMM at about half the
CPU's speed. rnncore then runs the products its loops would give BLAS outside their
steps (the input projection, dx after the loop, weight gradients the dW kernel did
not take) on its own packed kernel.

1. The decision (rnncore._runtime.blas.blas_below_cpu) from the kernel set's name
   and the kernels' SIMD tier; what import decided (rnncore._bindings.BLAS_SLOW) is
   what every kernel module holds.
2. With the flag on and the products forced onto the packed kernel, every cell's
   forward and backward (RNN tanh/ReLU, GRU both reset placements, LSTM with and
   without a projection; lengths, two layers, bidirectional) against the reference
   in float64, the products counted; float32 within tolerance of the BLAS path; the
   path does not depend on the row-split setting (bitwise).
3. The hooks refuse bad values, naming the argument.
"""
import io
import os

import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f32
from test_models import check_against_reference

import rnncore
from rnncore import _bindings as B
from rnncore._kernels import gru as KG
from rnncore._kernels import linear as KLIN
from rnncore._kernels import lngru as KLNG
from rnncore._kernels import lnlstm as KLNL
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as K
from rnncore._kernels import simd
from rnncore._runtime import blas as _blas
from rnncore._runtime import threads as _threads

MODULES = {"rnn": K, "gru": KG, "lstm": KL}


# ---------------------------------------------------------------------------
# 1. The decision
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("tier, name, below", [
    (4, "Haswell", True), (4, "Zen", True), (4, "haswell", True),
    (4, "SkylakeX", False), (4, "Cooperlake", False), (4, "SapphireRapids", False),
    (4, "Sandybridge", True), (3, "Sandybridge", True), (3, "Nehalem", True),
    (3, "Haswell", False), (3, "Zen", False), (3, "SkylakeX", False),
    (2, "Prescott", False), (0, "Haswell", False),
    (4, "SomeFutureCore", False), (3, "SomeFutureCore", False),
])
def test_blas_below_cpu_by_kernel_set_and_tier(tier, name, below):
    assert _blas.blas_below_cpu(tier, name) is below


def test_unknown_kernel_set_keeps_blas(monkeypatch):
    assert _blas.blas_below_cpu(4, "") is False
    monkeypatch.setattr(_blas, "blas_corename", lambda: None)
    assert _blas.blas_below_cpu(4) is False


def test_corename_is_what_openblas_reports():
    if _blas.scipy_openblas() is None:
        pytest.skip("SciPy's wheel OpenBLAS is not loaded (another BLAS build)")
    name = _blas.blas_corename()
    assert isinstance(name, str) and name
    info = _blas._blas_info()
    if info is not None and info.get("architecture"):
        assert name.lower() == str(info["architecture"]).lower()


def test_import_decided_once_for_every_module():
    want = _blas.blas_below_cpu(simd.simd_tier())
    assert B.BLAS_SLOW is want
    for mod in (K, KG, KL, KLNL, KLNG, KLIN):
        assert mod._blas_slow() is want
    cfg = rnncore.show_config(file=io.StringIO())
    assert ("packed GEMM" in cfg["all_steps_products"]) is (want and os.cpu_count() <= 8)
    assert any("below this CPU" in w for w in cfg["warnings"]) is want


def test_show_config_follows_the_flag_and_names_the_cause(monkeypatch):
    """all_steps_products reads the kernels' current flag; the warning names the
    kernel set and, for a user's OPENBLAS_CORETYPE, says so."""
    from rnncore._runtime import config
    B.set_blas_slow(not B.BLAS_SLOW)
    try:
        cfg = rnncore.show_config(file=io.StringIO())
        assert ("packed GEMM" in cfg["all_steps_products"]) is (
            (not B.BLAS_SLOW) and os.cpu_count() <= 8)
    finally:
        B.set_blas_slow(B.BLAS_SLOW)
    monkeypatch.setattr(B, "BLAS_SLOW", True)
    monkeypatch.setattr(config, "blas_corename", lambda: "Haswell")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    cfg = rnncore.show_config(file=io.StringIO())
    w = [w for w in cfg["warnings"] if "below this CPU" in w]
    assert w and "Haswell kernels" in w[0] and "OPENBLAS_CORETYPE=Haswell" in w[0]


# ---------------------------------------------------------------------------
# 2. The products on the packed kernel
# ---------------------------------------------------------------------------
@pytest.fixture
def forced():
    """The flag on, the products forced onto the packed kernel at any size, x_t Wx and
    dx out of the steps (so the input projection and dx are all-steps products)."""
    if not HAVE_PACKED:
        pytest.skip("no packed GEMM layout for this CPU")
    for mod in MODULES.values():
        mod._set_matmul(2)
        mod._set_packing(True, 0)
    B.set_blas_slow(True)
    try:
        yield
    finally:
        B.set_blas_slow(B.BLAS_SLOW)
        for mod in MODULES.values():
            mod._set_matmul(1)
            mod._set_packing(True)


# (T, N, D, H) per cell: large enough that the input projection (>= 2^22 multiply-adds)
# and backward's all-steps products (>= 2^26) run outside single-thread sections
SHAPES = {"rnn": (20, 32, 256, 256), "gru": (20, 32, 160, 160), "lstm": (20, 32, 128, 128)}
CASES = [
    ("rnn_tanh", {}), ("rnn_relu", {"batch_first": True}), ("gru", {}),
    ("lstm", {}), ("lstm", {"bidirectional": True, "num_layers": 2}),
    ("gru", {"lengths": [20, 13, 5, 20, 17] + [11] * 27}),
]


@pytest.mark.parametrize("cell, kw", CASES, ids=[f"{c}-{i}" for i, (c, _) in enumerate(CASES)])
def test_cells_on_the_packed_products_match_the_reference(forced, rng, cell, kw):
    if kw.get("bidirectional") and (os.cpu_count() or 1) == 1:
        pytest.skip("one CPU: the directions run in single-thread sections (own GEMM)")
    kind = cell.split("_")[0]
    mod = MODULES[kind]
    before = mod._matmul_calls()[0]
    parallel = _threads.parallel_directions_enabled()
    # (the two directions of a layer run concurrently in single-thread sections, whose
    # products are rnncore's own single-thread GEMM: one after the other here)
    _threads.set_parallel_directions(False)
    try:
        check_against_reference(rng, cell, *SHAPES[kind], **kw)
    finally:
        _threads.set_parallel_directions(parallel)
    # forward: x Wx; backward: dx (per layer and direction)
    runs = (2 if kw.get("bidirectional") else 1) * kw.get("num_layers", 1)
    assert mod._matmul_calls()[0] >= before + 2 * runs


@pytest.mark.parametrize("layout", ["time-major", "batch-first"])
def test_reset_before_gru_agrees_with_the_blas_path(forced, rng, layout):
    """The reset-before GRU (Cho et al. 2014; reset_after=False): x Wx, dx and dWh's
    shifted products (C += A^T B, with 2H off the panel width), float64, flag on
    against off."""
    T, N, D, H = 20, 32, 160, 170     # 2H = 340: off the panel width, so dWh's
    bf = layout == "batch-first"      # products go through mm (C += A^T B)
    x = rng.standard_normal((N, T, D) if bf else (T, N, D))
    dout = rng.standard_normal((N, T, H) if bf else (T, N, H))
    h0 = rng.standard_normal((1, N, H))

    def run():
        m = rnncore.GRU(D, H, reset_after=False, batch_first=bf, dtype=np.float64, seed=6)
        out, hn = m(x, h0)
        dx, dh0 = m.backward(dout)
        return [out, hn, dx, dh0] + [g.copy() for g in m.grads.values()]

    before = KG._matmul_calls()[0], KG._weight_grads_calls()[0]
    own = run()
    on = KG._matmul_calls()[0] - before[0], KG._weight_grads_calls()[0] - before[1]
    B.set_blas_slow(False)
    before = KG._matmul_calls()[0], KG._weight_grads_calls()[0]
    blas = run()
    off = KG._matmul_calls()[0] - before[0], KG._weight_grads_calls()[0] - before[1]
    # x Wx and dx (per call)
    assert on[0] >= 2 and off[0] == 0
    assert on[1] > off[1]                # some of dWh's A^T B products took the dW kernel
    for a, b in zip(own, blas):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_mm_outside_a_section_takes_the_packed_products(forced, rng, dtype):
    """_gemm.pxd: mm outside a single-thread section (linear._mm_in_section with
    section=False): A B with B row-major or transposed, beta 0 and 1, and C += A^T B
    (the dW kernel), each counted; with the flag off, none is."""
    KLIN._set_matmul(2)
    KLIN._set_weight_grads(2)
    check = assert_close_f32 if dtype == np.float32 else (
        lambda a, e, name: np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12, err_msg=name))
    try:
        for on in (True, False):
            B.set_blas_slow(on)
            for m, k, n in [(70, 33, 65), (9, 200, 40), (128, 64, 96)]:
                a = rng.standard_normal((m, k)).astype(dtype)
                b = rng.standard_normal((k, n)).astype(dtype)
                for bview in (b, np.asfortranarray(b)):
                    for beta in (0.0, 1.0):
                        c0 = rng.standard_normal((m, n)).astype(dtype)
                        before = KLIN._matmul_calls()[0]
                        c = KLIN._mm_in_section(a, bview, c0.copy(), beta=beta, section=False)
                        check(c, a.astype(np.float64) @ b + beta * c0, name=f"{m, k, n}")
                        assert KLIN._matmul_calls()[0] == before + on
                at = rng.standard_normal((k, m)).astype(dtype).T   # a transposed view
                c0 = rng.standard_normal((m, n)).astype(dtype)
                before = KLIN._weight_grads_calls()[0]
                c = KLIN._mm_in_section(at, b, c0.copy(), beta=1.0, section=False)
                check(c, at.astype(np.float64) @ b + c0, name=f"A^T B {m, k, n}")
                assert KLIN._weight_grads_calls()[0] == before + on
    finally:
        KLIN._set_matmul(1)
        KLIN._set_weight_grads(1)


def test_flag_off_leaves_the_products_to_blas(forced, rng):
    B.set_blas_slow(False)
    before = K._matmul_calls()[0]
    check_against_reference(rng, "rnn_tanh", *SHAPES["rnn"])
    assert K._matmul_calls()[0] == before


def test_projection_weight_gradient_takes_the_transposed_product(forced, rng):
    """dWr += m^T E (the LSTM's projection) is a C += A^T B product: the dW kernel."""
    KL._set_weight_grads(2)
    try:
        before = KL._weight_grads_calls()[0]
        T, N, D, H, P = 6, 7, 5, 8, 3
        m = rnncore.LSTM(D, H, proj_size=P, dtype=np.float64, seed=3)
        x = rng.standard_normal((T, N, D))
        out, _ = m(x)
        dout = rng.standard_normal(out.shape)
        m.backward(dout)
        got = {k: g.copy() for k, g in m.grads.items()}
        after = KL._weight_grads_calls()[0]
        B.set_blas_slow(False)
        m.zero_grad()
        m(x)
        m.backward(dout)
        for k, g in m.grads.items():
            np.testing.assert_allclose(got[k], g, rtol=1e-11, atol=1e-12, err_msg=k)
    finally:
        KL._set_weight_grads(1)
    # the layer's dW problem plus the projection's own product
    assert after >= before + 2


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_float32_agrees_with_blas_and_ignores_the_row_split(forced, rng, cell):
    """The products really on the path (counted); float32 bitwise the same with the
    kernels' row split off (one thread) and by default; within tolerance of BLAS."""
    T, N, D, H = SHAPES[cell]
    mod = MODULES[cell]
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    dout = rng.standard_normal((T, N, H)).astype(np.float32)

    def run():
        m = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[cell](D, H, seed=4)
        out, _ = m(x)
        dx, _ = m.backward(dout)
        return [out, dx] + [g.copy() for g in m.grads.values()]

    before = mod._matmul_calls()[0]
    own = run()
    assert mod._matmul_calls()[0] >= before + 2
    was = _threads._ROW_SPLIT
    rnncore.set_row_split(False)
    try:
        before = mod._matmul_calls()
        one = run()
        after = mod._matmul_calls()
    finally:
        _threads._ROW_SPLIT = was
        _threads.set_loop_parallel_min(_threads.LOOP_PARALLEL_MIN)   # hands it to the kernels
    assert after[0] >= before[0] + 2 and after[1] == before[1]      # on one thread
    for a, b in zip(own, one):
        np.testing.assert_array_equal(a, b)
    B.set_blas_slow(False)
    blas = run()
    for a, b in zip(own, blas):
        assert_close_f32(a, b, name=cell)


# ---------------------------------------------------------------------------
# 3. Bad values
# ---------------------------------------------------------------------------
def test_hooks_refuse_bad_values():
    with pytest.raises(TypeError, match="on must be a bool"):
        K._set_blas_slow(1)
    with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
        K._set_matmul(3)
    assert K._blas_slow() is B.BLAS_SLOW
