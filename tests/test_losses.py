"""rnncore.losses against explicit formulas, finite differences and PyTorch."""
import numpy as np
import pytest
from conftest import TOL, assert_close_f64, numerical_gradient

from rnncore.losses import (binary_cross_entropy_with_logits, cross_entropy, last_step,
                            last_step_backward, mse_loss)

FD = dict(rtol=TOL["fd_rtol"], atol=TOL["fd_atol"])
REDUCTIONS = ["mean", "sum", "none"]


def _fd_check(loss_fn, x):
    """Finite differences of the returned loss (dloss = ones for 'none')."""
    loss, dx = loss_fn()
    df = np.ones(np.shape(loss))
    num = numerical_gradient(lambda: np.asarray(loss_fn()[0]), x, df)
    np.testing.assert_allclose(dx, num, **FD)


def _explicit_ce(logits, target, counted):
    """Per-position -log softmax(logits)[target], 0 where not counted."""
    out = np.zeros(target.shape)
    for ix in np.ndindex(*target.shape):
        if counted[ix]:
            z = logits[ix]
            out[ix] = -np.log(np.exp(z[target[ix]]) / np.exp(z).sum())
    return out


# ---------------------------------------------------------------------------
# cross_entropy
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("lead", [(), (4,), (2, 3)], ids=["C", "NC", "NTC"])
def test_cross_entropy_formula_and_gradient(rng, reduction, lead):
    logits = rng.standard_normal(lead + (5,))
    target = rng.integers(0, 5, lead)
    loss, d = cross_entropy(logits, target, reduction=reduction)
    per = _explicit_ce(logits, target, np.ones(lead, bool))
    expected = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    assert_close_f64(loss, expected, name="loss")
    soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    onehot = np.eye(5)[target]
    scale = 1 / max(per.size, 1) if reduction == "mean" else 1.0
    assert_close_f64(d, (soft - onehot) * scale, name="dlogits")
    _fd_check(lambda: cross_entropy(logits, target, reduction=reduction), logits)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_mask_and_ignore_index(rng, reduction):
    logits = rng.standard_normal((3, 4, 6))
    target = rng.integers(0, 6, (3, 4))
    mask = rng.random((3, 4)) < 0.7
    target[0, 1] = -100  # ignored: may be out of range
    counted = mask & (target != -100)
    loss, d = cross_entropy(logits, target, mask=mask, reduction=reduction, ignore_index=-100)
    per = _explicit_ce(logits, target, counted)
    expected = {"mean": per.sum() / counted.sum(), "sum": per.sum(), "none": per}[reduction]
    assert_close_f64(loss, expected, name="loss")
    assert np.all(d[~counted] == 0)
    _fd_check(lambda: cross_entropy(logits, target, mask=mask, reduction=reduction,
                                    ignore_index=-100), logits)
    # 0/1 integer masks are the same as boolean ones
    loss01, d01 = cross_entropy(logits, target, mask=mask.astype(int), reduction=reduction,
                                ignore_index=-100)
    np.testing.assert_array_equal(d01, d)


def test_cross_entropy_is_stable_and_shift_invariant(rng):
    logits = rng.standard_normal((4, 3)) * 5
    target = rng.integers(0, 3, 4)
    loss, d = cross_entropy(logits, target)
    big_loss, big_d = cross_entropy(logits + 1000.0, target)
    assert np.isfinite(big_loss)
    np.testing.assert_allclose(big_loss, loss, rtol=1e-10)
    np.testing.assert_allclose(big_d, d, atol=1e-12)
    # a hugely confident correct prediction: loss 0, no overflow
    l2, d2 = cross_entropy(np.array([[1e4, -1e4]]), np.array([0]))
    assert l2 == 0.0 and np.all(d2 == 0)


def test_cross_entropy_float32_and_padding_with_nan(rng):
    logits = rng.standard_normal((2, 3, 4)).astype(np.float32)
    target = rng.integers(0, 4, (2, 3))
    loss, d = cross_entropy(logits, target)
    assert d.dtype == np.float32
    ref, _ = cross_entropy(logits.astype(np.float64), target)
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    logits[1, 2] = np.nan  # masked garbage must not leak
    mask = np.ones((2, 3), bool)
    mask[1, 2] = False
    loss, d = cross_entropy(logits, target, mask=mask)
    assert np.isfinite(loss) and np.all(np.isfinite(d))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [None, -100, 2])
def test_cross_entropy_matches_torch(rng, reduction, ignore_index):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits = rng.standard_normal((3, 5, 4))
    target = rng.integers(0, 4, (3, 5))
    target[0, :2] = -100 if ignore_index == -100 else target[0, :2]
    loss, d = cross_entropy(logits, target, reduction=reduction, ignore_index=ignore_index)
    tl = torch.from_numpy(logits).requires_grad_(True)
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    ref = F.cross_entropy(tl.permute(0, 2, 1), torch.from_numpy(target), reduction=reduction,
                          **kw)  # PyTorch wants classes on axis 1: (N, C, T)
    ref.sum().backward()
    atol = TOL["torch_f64_atol"]
    assert_close_f64(loss, ref.detach().numpy(), atol=atol, name="loss")
    assert_close_f64(d, tl.grad.numpy(), atol=atol, name="dlogits")


def test_cross_entropy_all_ignored_is_nan_like_torch():
    torch = pytest.importorskip("torch")
    logits = np.ones((2, 3))
    target = np.array([-100, -100])
    loss, d = cross_entropy(logits, target, ignore_index=-100)
    tl = torch.from_numpy(logits).requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(tl, torch.from_numpy(target))
    ref.backward()
    assert np.isnan(loss) and np.isnan(ref.item())
    np.testing.assert_array_equal(d, tl.grad.numpy())
    assert np.all(d == 0)


def test_cross_entropy_bad_inputs():
    logits = np.zeros((2, 3, 4))
    target = np.zeros((2, 3), dtype=int)
    with pytest.raises(TypeError, match="target must be an integer array, got dtype float64"):
        cross_entropy(logits, target.astype(float))
    with pytest.raises(ValueError, match=r"target must have shape \(2, 3\) \(logits.shape\[:-1\]\), "
                                         r"got \(3, 2\)"):
        cross_entropy(logits, target.T)
    bad = target.copy()
    bad[1, 1] = 4
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 4\) .* got 4"):
        cross_entropy(logits, bad)
    bad[1, 1] = -100
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 4\)"):
        cross_entropy(logits, bad)  # -100 without ignore_index is an error
    with pytest.raises(ValueError, match="reduction must be one of"):
        cross_entropy(logits, target, reduction="avg")
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\), got \(2,\)"):
        cross_entropy(logits, target, mask=np.ones(2, bool))
    with pytest.raises(ValueError, match=r"mask must be boolean \(or 0/1\)"):
        cross_entropy(logits, target, mask=np.full((2, 3), 0.5))
    with pytest.raises(TypeError, match="logits must be a real numeric array"):
        cross_entropy(logits.astype(complex), target)
    with pytest.raises(ValueError, match=r"logits must have shape \(\.\.\., C\)"):
        cross_entropy(np.float64(1.0), np.int64(0))


# ---------------------------------------------------------------------------
# mse_loss and binary_cross_entropy_with_logits
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_formula_gradient_and_torch(rng, reduction):
    pred = rng.standard_normal((3, 4))
    target = rng.standard_normal((3, 4))
    loss, d = mse_loss(pred, target, reduction)
    sq = (pred - target) ** 2
    assert_close_f64(loss, {"mean": sq.mean(), "sum": sq.sum(), "none": sq}[reduction])
    _fd_check(lambda: mse_loss(pred, target, reduction), pred)
    torch = pytest.importorskip("torch")
    tp = torch.from_numpy(pred).requires_grad_(True)
    ref = torch.nn.functional.mse_loss(tp, torch.from_numpy(target), reduction=reduction)
    ref.sum().backward()
    assert_close_f64(loss, ref.detach().numpy(), atol=TOL["torch_f64_atol"], name="loss")
    assert_close_f64(d, tp.grad.numpy(), atol=TOL["torch_f64_atol"], name="dpred")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_formula_gradient_and_torch(rng, reduction):
    x = rng.standard_normal((4, 3)) * 3
    t = rng.random((4, 3))  # soft labels
    loss, d = binary_cross_entropy_with_logits(x, t, reduction)
    s = 1 / (1 + np.exp(-x))
    per = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    assert_close_f64(loss, {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction],
                     atol=1e-12)
    _fd_check(lambda: binary_cross_entropy_with_logits(x, t, reduction), x)
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(x).requires_grad_(True)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.from_numpy(t),
                                                               reduction=reduction)
    ref.sum().backward()
    assert_close_f64(loss, ref.detach().numpy(), atol=TOL["torch_f64_atol"], name="loss")
    assert_close_f64(d, tx.grad.numpy(), atol=TOL["torch_f64_atol"], name="dlogits")


def test_bce_with_logits_is_stable_for_large_logits():
    x = np.array([-1000.0, -40.0, 40.0, 1000.0])
    t = np.array([1.0, 0.0, 1.0, 0.0])
    loss, d = binary_cross_entropy_with_logits(x, t, reduction="none")
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(d))
    np.testing.assert_allclose(loss, [1000.0, 0.0, 0.0, 1000.0], atol=1e-15)
    np.testing.assert_allclose(d, [-1.0, 0.0, 0.0, 1.0], atol=1e-15)
    l32, d32 = binary_cross_entropy_with_logits(x.astype(np.float32), t, reduction="none")
    assert d32.dtype == np.float32 and np.all(np.isfinite(l32))


def test_mse_and_bce_bad_inputs():
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(2, 3\), got \(3,\)"):
        mse_loss(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="reduction must be one of"):
        mse_loss(np.zeros(3), np.zeros(3), reduction="max")
    with pytest.raises(ValueError, match=r"target must have the shape of logits \(4,\)"):
        binary_cross_entropy_with_logits(np.zeros(4), np.zeros((4, 1)))
    with pytest.raises(TypeError, match="pred must be a real numeric array, got dtype <U1"):
        mse_loss(np.array(["a"]), np.zeros(1))


# ---------------------------------------------------------------------------
# last_step
# ---------------------------------------------------------------------------
def test_last_step_and_its_backward_are_adjoint(rng):
    h = rng.standard_normal((3, 5, 2))
    lengths = np.array([5, 1, 3])
    last = last_step(h, lengths)
    expected = np.stack([h[0, 4], h[1, 0], h[2, 2]])
    np.testing.assert_array_equal(last, expected)
    dlast = rng.standard_normal((3, 2))
    dh = last_step_backward(dlast, lengths, 5)
    assert dh.shape == (3, 5, 2)
    mask = np.zeros((3, 5), bool)
    mask[[0, 1, 2], [4, 0, 2]] = True
    np.testing.assert_array_equal(dh[mask], dlast)
    assert np.all(dh[~mask] == 0)
    np.testing.assert_allclose(np.sum(last * dlast), np.sum(h * dh), rtol=1e-14)
    num = numerical_gradient(lambda: last_step(h, lengths), h, dlast)
    np.testing.assert_allclose(dh, num, **FD)


def test_last_step_bad_inputs():
    h = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\] = \[1, 4\]"):
        last_step(h, np.array([0, 2]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T\] = \[1, 4\]"):
        last_step_backward(np.zeros((2, 3)), np.array([5, 2]), 4)
    with pytest.raises(ValueError, match=r"lengths must have shape \(N,\) = \(2,\), got \(3,\)"):
        last_step(h, np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="lengths must be an integer array"):
        last_step(h, np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"h must have shape \(N, T, F\)"):
        last_step(np.zeros((2, 4)), np.array([1, 2]))
    with pytest.raises(ValueError, match=r"dlast must have shape \(N, F\)"):
        last_step_backward(np.zeros((2, 4, 1)), np.array([1, 2]), 4)
