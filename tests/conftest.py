"""Shared fixtures and the one tolerance table of the test suite."""
import numpy as np
import pytest

#: Tolerances, in one place. float64 comparisons of a kernel against the
#: reference are essentially exact; float32 error grows with T, so looser.
#: Finite-difference checks compare analytic vs central-difference gradients.
TOL = {
    # kernel vs reference (max abs diff)
    "f64_atol": 1e-10,
    # kernel vs reference, float32 (relative to the max magnitude)
    "f32_rtol": 1e-5,
    # analytic gradient vs central finite differences (float64, h = 1e-6)
    "fd_rtol": 1e-6,
    "fd_atol": 1e-8,
    # rnncore vs PyTorch, float32
    "torch_f32_rtol": 1e-5,
    "torch_f32_atol": 1e-5,
    # rnncore vs PyTorch, float64
    "torch_f64_atol": 1e-10,
}


@pytest.fixture
def rng():
    """A seeded generator; tests never touch NumPy's global random state."""
    return np.random.default_rng(12345)


def assert_close_f32(actual, expected, rtol=None, name="value"):
    """float32 check: max |a - e| <= rtol * max(1, max |e|)."""
    rtol = TOL["f32_rtol"] if rtol is None else rtol
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 1.0)
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= rtol * scale, f"{name}: max abs err {err:.3g} > {rtol:g} * {scale:.3g}"


def assert_close_f64(actual, expected, atol=None, name="value"):
    """float64 check: max |a - e| <= atol."""
    atol = TOL["f64_atol"] if atol is None else atol
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert err <= atol, f"{name}: max abs err {err:.3g} > {atol:g}"


def numerical_gradient(f, x, df, h=1e-6):
    """Central finite-difference gradient of sum(f() * df) w.r.t. array x.

    ``f`` takes no arguments and reads ``x`` (which is perturbed in place and
    restored). Returns an array shaped like ``x``.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        old = x[ix]
        x[ix] = old + h
        pos = np.sum(f() * df)
        x[ix] = old - h
        neg = np.sum(f() * df)
        x[ix] = old
        grad[ix] = (pos - neg) / (2 * h)
        it.iternext()
    return grad
