"""Accuracy of the kernels' vectorized activations (rc_activations.h) over the whole float range."""
import os

import numpy as np
import pytest

from rnncore._kernels import simd


def _all_finite_float32(step):
    """Every `step`-th finite float32 bit pattern (both signs), plus the edges."""
    bits = np.arange(0, 0x7F800000, step, dtype=np.uint32)
    pos = bits.view(np.float32)
    edges = np.array([0.0, np.finfo(np.float32).tiny, np.finfo(np.float32).max,
                      0.625, np.nextafter(np.float32(0.625), np.float32(0)), 9.0, 10.0, 87.0, 88.0, 89.0],
                     dtype=np.float32)
    x = np.concatenate([pos, edges])
    return np.concatenate([x, -x])


def _ulp_error(actual, exact):
    """|actual - exact| in units of the float32 spacing at exact (exact in float64)."""
    ref32 = exact.astype(np.float32)
    spacing = np.spacing(np.abs(ref32)).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


@pytest.mark.parametrize("step", [997])
def test_tanh_float32_within_2ulp_everywhere(step):
    x = _all_finite_float32(step)
    got = simd.tanh(x)
    exact = np.tanh(x.astype(np.float64))
    err = _ulp_error(got, exact)
    assert err.max() <= 2.0, f"max ulp error {err.max():.2f} at x={x[err.argmax()]!r}"
    # and against NumPy's own float32 tanh: never more than 2 ulp apart
    assert np.all(np.abs(got.view(np.int32).astype(np.int64) - np.tanh(x).view(np.int32)) <= 2)


def test_sigmoid_float32_accuracy():
    x = _all_finite_float32(997)
    got = simd.sigmoid(x).astype(np.float64)
    xd = x.astype(np.float64)
    with np.errstate(over="ignore"):
        exact = 1.0 / (1.0 + np.exp(-xd))
    normal = exact > np.finfo(np.float32).tiny * 2**10  # away from float32 denormals
    err = _ulp_error(got[normal], exact[normal])
    assert err.max() <= 3.0, f"max ulp error {err.max():.2f} at x={x[normal][err.argmax()]!r}"
    # deep negative tail: absolute error below float32's smallest normal
    assert np.max(np.abs(got[~normal] - exact[~normal])) < np.finfo(np.float32).tiny


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30], dtype=dtype)
    t = simd.tanh(x)
    s = simd.sigmoid(x)
    np.testing.assert_array_equal(t[:4], np.array([0.0, -0.0, 1.0, -1.0], dtype))
    assert np.signbit(t[1]) and not np.signbit(t[0])  # tanh(-0) is -0
    assert np.isnan(t[4]) and np.isnan(s[4])  # NaN propagates
    np.testing.assert_array_equal(t[5:], [1.0, -1.0])
    np.testing.assert_array_equal(s[[0, 2, 3, 5, 6]], np.array([0.5, 1.0, 0.0, 1.0, 0.0], dtype))


def test_float64_matches_libm_to_1e12_relative(rng):
    x = np.concatenate([rng.standard_normal(10_000) * 5, np.logspace(-300, 2, 1000),
                        -np.logspace(-300, 2, 1000)])
    np.testing.assert_allclose(simd.tanh(x), np.tanh(x), rtol=1e-12, atol=0)
    from scipy.special import expit
    np.testing.assert_allclose(simd.sigmoid(x), expit(x), rtol=1e-12, atol=0)


def test_dense_sweep_near_zero_and_transition(rng):
    """Dense float32 grid where the polynomial/exp branches meet and near 0."""
    x = np.concatenate([np.linspace(-1.5, 1.5, 200_001, dtype=np.float32),
                        rng.standard_normal(100_000).astype(np.float32) * 4])
    err = _ulp_error(simd.tanh(x), np.tanh(x.astype(np.float64)))
    assert err.max() <= 2.0, f"max ulp error {err.max():.2f} at x={x[err.argmax()]!r}"


def test_bad_dtype():
    with pytest.raises(TypeError, match="float32 or float64"):
        simd.tanh(np.arange(3))


def test_simd_level_is_reported():
    assert isinstance(simd.simd_level(), str) and simd.simd_level()
    assert simd.simd_tier() in (0, 1, 3, 4)


#: What each SIMD tier reports, and the packed GEMM's float32 panel width there
#: (rc_gemm_packed.h: two 64-byte vectors, two 32-byte vectors, no packed path).
TIERS = {4: ("AVX-512 (x86-64-v4)", 32), 3: ("AVX2+FMA (x86-64-v3)", 16),
         1: ("SSE2 (x86-64 baseline)", 0), 0: ("portable C", 0)}
FORCED = {"x86-64-v4": 4, "x86-64-v3": 3, "baseline": 1}


def test_simd_tier_decides_the_packed_layout():
    # the level the array functions run at and the packed layout the time loops
    # use come from one decision (rc_simd_tier), whatever the build
    level, nr = TIERS[simd.simd_tier()]
    assert simd.simd_level().startswith(level)
    assert simd._gemm_packed_nr(np.float32) == nr
    assert simd._gemm_packed_nr(np.float64) == nr // 2


def test_cpu_tier_is_at_least_the_builds_level():
    # a forced build runs at most this CPU's level (else it refuses to import); the
    # default build runs exactly it
    assert simd.cpu_tier() >= simd.simd_tier()
    if "forced" not in simd.simd_level():
        assert simd.cpu_tier() == simd.simd_tier()


def test_simd_build_is_the_one_ci_asked_for():
    # .ci/run builds rnncore again with -Ccmake.define.RNNCORE_SIMD=<level> and runs the
    # kernel tests with RNNCORE_EXPECT_SIMD=<level>: this fails if those tests ran on
    # another build (e.g. the cloned one from site-packages) or the level was not forced
    want = os.environ.get("RNNCORE_EXPECT_SIMD")
    if not want:
        assert "forced" not in simd.simd_level(), "a forced build outside the forced-build CI step"
        return
    assert simd.simd_tier() == FORCED[want]
    assert simd.simd_level().endswith(", forced at build")
