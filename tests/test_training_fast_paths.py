"""The training step's fast paths give the general paths' results.

The char-LM step computes its cross-entropy gradient into the logits' own
memory (``losses._cross_entropy(..., out=logits)``), takes the no-mask path of
the loss, accumulates ``Linear``'s weight gradient with one in-place GEMM
(``_validation.blas_matmul_add``) and sorts ``Embedding``'s ids as uint16;
each is checked against the plain NumPy formula or the general path, in
float64 and float32, and the whole step against :func:`rnncore.losses.cross_entropy`.
"""
import numpy as np
import pytest

from conftest import assert_close_f32, assert_close_f64
from rnncore import charlm
from rnncore import losses
from rnncore._validation import blas_matmul_add
from rnncore.nn import Embedding


def _softmax_ce(z, t):
    """The formula in float64: mean of logsumexp(z) - z[t], and its gradient."""
    z = z.astype(np.float64).reshape(-1, z.shape[-1])
    t = t.reshape(-1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(t)), t]).mean()
    d = p.copy()
    d[np.arange(len(t)), t] -= 1
    return loss, d / len(t)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_into_logits_matches_the_formula(rng, dtype):
    logits = (3 * rng.standard_normal((4, 5, 7))).astype(dtype)
    target = rng.integers(0, 7, (4, 5))
    want_loss, want_d = _softmax_ce(logits, target)
    plain_loss, plain_d = losses.cross_entropy(logits, target)
    z = logits.copy()
    loss, d = losses._cross_entropy(z, target, out=z)
    assert np.shares_memory(d, z)  # written in place
    assert loss == plain_loss
    np.testing.assert_array_equal(d, plain_d)  # the same arithmetic as without out=
    check = assert_close_f64 if dtype == np.float64 else assert_close_f32
    check(np.float64(loss), np.float64(want_loss), name="loss")
    check(d.reshape(-1, 7), want_d.astype(dtype), name="dlogits")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_fast_path_equals_the_masked_path(rng, reduction):
    logits = rng.standard_normal((3, 6, 5))
    target = rng.integers(0, 5, (3, 6))
    fast = losses.cross_entropy(logits, target, reduction=reduction)
    masked = losses.cross_entropy(logits, target, mask=np.ones((3, 6), bool),
                                  reduction=reduction)
    np.testing.assert_array_equal(fast[0], masked[0])
    np.testing.assert_array_equal(fast[1], masked[1])
    bad = target.copy()
    bad[1, 2] = 5
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 5\).*got 5"):
        losses.cross_entropy(logits, bad)
    bad[1, 2] = -1
    with pytest.raises(ValueError, match="got -1"):
        losses.cross_entropy(logits, bad)


def test_cross_entropy_out_of_another_layout_is_not_used(rng):
    logits = rng.standard_normal((4, 5))
    out = np.zeros((5, 4)).T  # F-ordered: not a view target, so a new array is returned
    loss, d = losses._cross_entropy(logits, rng.integers(0, 5, 4), out=out)
    assert not np.shares_memory(d, out) and (out == 0).all()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", ["C", "F", "transposed"])
def test_blas_matmul_add_accumulates_in_place(rng, dtype, layout):
    a = rng.standard_normal((5, 7)).astype(dtype)
    a = {"C": a, "F": np.asfortranarray(a), "transposed": np.ascontiguousarray(a.T).T}[layout]
    b = rng.standard_normal((7, 3)).astype(dtype)
    out = rng.standard_normal((5, 3)).astype(dtype)
    want = out.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    res = blas_matmul_add(a, b, out)
    assert res is out
    check = assert_close_f64 if dtype == np.float64 else assert_close_f32
    check(out, want.astype(dtype), name="out")
    f = np.asfortranarray(np.zeros((5, 3), dtype))  # another layout: the fallback
    blas_matmul_add(a, b, f)
    check(f, (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype), name="F out")


@pytest.mark.parametrize("V", [5, 70000])
def test_embedding_backward_matches_add_at(rng, V):
    emb = Embedding(V, 3, dtype=np.float64, seed=0)
    idx = rng.integers(0, V, (4, 50))
    idx[0, :10] = V - 1  # repeated ids add up
    dout = rng.standard_normal((4, 50, 3))
    emb.forward(idx, train=True)
    emb.backward(dout)
    want = np.zeros((V, 3))
    np.add.at(want, idx.reshape(-1), dout.reshape(-1, 3))
    assert_close_f64(emb.grads["weight"], want, name="dweight")


def test_charlm_loss_matches_cross_entropy_of_its_forward(rng):
    """CharLM.loss (logits overwritten by their gradient, head input not copied) gives
    the loss and gradients of forward + losses.cross_entropy + backward."""
    a = charlm.CharLM(11, 4, 6, cell="gru", dtype=np.float64, seed=0)
    b = charlm.CharLM(11, 4, 6, cell="gru", dtype=np.float64, seed=0)
    x, y = rng.integers(0, 11, (3, 7)), rng.integers(0, 11, (3, 7))
    loss_a, _ = a.loss(x, y)
    logits, _ = b.forward(x, train=True)
    loss_b, dlogits = losses.cross_entropy(logits, y)
    b.backward(dlogits)
    assert loss_a == loss_b
    for k in a.grads:
        np.testing.assert_array_equal(a.grads[k], b.grads[k], err_msg=k)
