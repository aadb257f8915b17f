"""rnncore's own GEMMs (rc_gemm.h) against NumPy, directly.

The kernels send a per-step product to the small-M kernel when the batch has
at most ``simd.SMALL_M`` rows, and to the unpacked panel kernel for 5-32 rows
with a row-major weight (_gemm.pxd). The shapes below reach every tail of
both: m = 1..4 (small) and m = 5..32 with row blocks of 8 (AVX-512) or 6 (AVX2
and below) cut short (panel); n below, at and off a multiple of the panel width
(two vectors: 128 bytes with AVX-512, 64 below: 32 or 16 float32, 16 or 8
float64 columns) and of the small kernel's four outputs; k below the small
kernel's vector threshold (16), off a multiple of the vector width and of the
panel's k pass (128); beta 0, 1 and other; beta = 0 never reads C (NaN there
does not propagate, as in BLAS).
"""
import itertools

import numpy as np
import pytest

from conftest import TOL, assert_close_f32, assert_close_f64
from rnncore._kernels import simd

DTYPES = [np.float32, np.float64]
SMALL_M = [1, 2, 3, 4]
PANEL_M = [5, 7, 8, 9, 16, 17, 31, 32]
N_SMALL = [1, 3, 4, 5, 17, 64, 130]
N_PANEL = [1, 15, 16, 31, 32, 33, 47, 64, 100, 128]
K = [1, 5, 15, 16, 17, 33, 128, 129, 300]
BETAS = [0.0, 1.0, -0.37]


def _operands(rng, dt, m, n, k, bt):
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((n, k) if bt else (k, n)).astype(dt)
    c = rng.standard_normal((m, n)).astype(dt)
    return a, b, c


def _expected(a, b, c, alpha, beta, bt):
    """alpha a op(b) + beta c in float64 (beta = 0: c is not read)."""
    b64 = b.astype(np.float64)
    prod = alpha * (a.astype(np.float64) @ (b64.T if bt else b64))
    return prod if beta == 0 else prod + beta * c.astype(np.float64)


def _check(got, want, dt, k, name):
    assert got.dtype == dt
    if dt == np.float32:
        # a k-term dot product in float32: error grows with k
        assert_close_f32(got, want, rtol=TOL["f32_rtol"] * max(1.0, k / 16), name=name)
    else:
        assert_close_f64(got, want, atol=TOL["f64_atol"] * max(1.0, k / 16), name=name)


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("bt", [False, True], ids=["B", "Bt"])
def test_gemm_small_matches_numpy(rng, dt, bt):
    for m, n, k, beta, alpha in itertools.product(SMALL_M, N_SMALL, K, BETAS, [1.0, -0.7]):
        a, b, c = _operands(rng, dt, m, n, k, bt)
        want = _expected(a, b, c, alpha, beta, bt)
        got = simd.gemm_small(a, b, c, alpha, beta, bt)
        assert got is not c and np.shares_memory(got, c)   # written in place
        _check(got, want, dt, k, f"gemm_small m={m} n={n} k={k} beta={beta} alpha={alpha}")


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_gemm_small_takes_any_m_here(rng, dt):
    # the kernels never send it more than SMALL_M rows, but the test entry does: its
    # row-by-row path for m > SMALL_M, with B row-major and transposed
    for m, n, k, bt in itertools.product([5, 9], [3, 17, 40], [5, 33], [False, True]):
        a, b, c = _operands(rng, dt, m, n, k, bt)
        want = _expected(a, b, c, -0.7, 0.5, bt)
        got = simd.gemm_small(a, b, c, -0.7, 0.5, bt)
        _check(got, want, dt, k, f"gemm_small m={m} n={n} k={k} bt={bt}")


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
def test_gemm_panel_matches_numpy(rng, dt):
    for m, n, k, beta in itertools.product(PANEL_M, N_PANEL, K, BETAS):
        a, b, c = _operands(rng, dt, m, n, k, False)
        want = _expected(a, b, c, 1.0, beta, False)
        got = simd.gemm_panel(a, b, c, beta)
        _check(got, want, dt, k, f"gemm_panel m={m} n={n} k={k} beta={beta}")


@pytest.mark.parametrize("dt", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("kernel", ["small", "small_bt", "panel"])
def test_beta_zero_does_not_read_c(rng, dt, kernel):
    # NaN (and inf) in C with beta = 0: overwritten, as BLAS does, in every tail
    ms = PANEL_M if kernel == "panel" else SMALL_M
    bt = kernel == "small_bt"
    for m, n, k in itertools.product(ms, [3, 33, 100], [5, 130]):
        a, b, _ = _operands(rng, dt, m, n, k, bt)
        c = np.full((m, n), np.nan, dtype=dt)
        c[:, ::2] = np.inf
        if kernel == "panel":
            got = simd.gemm_panel(a, b, c, 0.0)
        else:
            got = simd.gemm_small(a, b, c, 1.0, 0.0, bt)
        assert np.all(np.isfinite(got)), f"{kernel} m={m} n={n} k={k}: C leaked through beta = 0"
        _check(got, _expected(a, b, c, 1.0, 0.0, bt), dt, k, f"{kernel} m={m} n={n} k={k}")


def test_nan_in_operands_propagates(rng):
    # a NaN in A reaches its row of C (no select or zero-skip hides it)
    for kernel, m in (("small", 3), ("panel", 12)):
        a, b, c = _operands(rng, np.float32, m, 40, 20, False)
        a[1, 7] = np.nan
        got = simd.gemm_panel(a, b, c, 0.0) if kernel == "panel" else \
            simd.gemm_small(a, b, c, 1.0, 0.0, False)
        assert np.all(np.isnan(got[1])) and np.all(np.isfinite(np.delete(got, 1, axis=0)))


def test_small_m_is_the_kernels_threshold():
    assert simd.SMALL_M == 4


@pytest.mark.parametrize("kernel, b_shape, c_shape, bt", [
    ("small", (6, 3), (4, 8), False),     # c has the wrong n
    ("panel", (6, 8), (4, 5), False),
    ("small", (6, 8), (4, 8), True),      # b^T is (8, 6): k does not fit
    ("panel", (5, 8), (4, 8), False),
])
def test_shape_mismatch_raises(kernel, b_shape, c_shape, bt):
    a, b, c = np.ones((4, 6)), np.ones(b_shape), np.zeros(c_shape)
    with pytest.raises(ValueError, match="shapes do not fit"):
        if kernel == "panel":
            simd.gemm_panel(a, b, c)
        else:
            simd.gemm_small(a, b, c, 1.0, 0.0, bt)


def test_mixed_dtypes_rejected():
    a = np.ones((2, 3), np.float32); b = np.ones((3, 4), np.float64); c = np.zeros((2, 4))
    with pytest.raises((TypeError, ValueError)):
        simd.gemm_small(a, b, c)


# -- the FMA ceiling the benchmarks report (simd._fma_rate) --------------------------------
def test_fma_rate_is_a_plausible_rate_or_none_without_vector_fma():
    """One thread's float32 FMA rate at the kernels' level. An upper bound any x86 core
    obeys (2 x 16-lane FMA units at 6 GHz = 384 GFLOP/s): a burn loop the compiler folded
    or shortened reports far more (a first version, its accumulators spilled and the
    rounds not kept opaque, measured 1360). No lower bound: the machine may be busy."""
    rate = simd._fma_rate(0.01)
    if simd.simd_tier() < 3:
        assert rate is None   # baseline (SSE2) or portable builds: no vector FMA level
        return
    assert isinstance(rate, float) and 0 < rate < 384


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), float("inf"), 61.0])
def test_fma_rate_rejects_a_duration_outside_0_60_s(seconds):
    with pytest.raises(ValueError, match="seconds"):
        simd._fma_rate(seconds)
