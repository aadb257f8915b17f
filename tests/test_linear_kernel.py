"""The dense layers' products on the packed kernel (``rnncore._kernels.linear``,
src/_kernels/rc_matmul.h): ``matmul`` (y = x W^T, dx = dy W) and ``matmul_tn_add``
(dW += dy^T x), which ``rnncore.nn.Linear`` reaches through ``rnncore._bindings``.

Checked against float64 products (float64 essentially exact, float32 to its
rounding) at shapes that route to the kernel (its rule, and forced with the test
hook), with row counts that are not whole register blocks, column counts that are
not whole panels, transposed and row-strided operands, ``beta`` 0 and 1; results
that do not depend on the thread count (bitwise); bad operands that raise errors
naming the argument; shapes the rule leaves to BLAS, which return False having
written nothing; and ``Linear`` forward/backward on the kernel against the
float64 reference and PyTorch's ``nn.Linear`` where installed.
"""
import os

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64, threaded_kernel_marks
from rnncore import _bindings
from rnncore._kernels import linear as KLIN
from rnncore.nn import Linear

needs_packed = pytest.mark.skipif(not HAVE_PACKED,
                                  reason="no packed GEMM layout for this CPU: BLAS only")

#: (M, K, N): rows below one register block (8) and not a multiple of it, columns
#: not of the panel width (16/32), K from 1 up (forced past the rule's 64 rows)
SHAPES = [(1, 7, 3), (7, 5, 40), (9, 3, 33), (64, 1, 5), (67, 3, 33), (129, 96, 95),
          (200, 256, 96), (517, 40, 257)]


@pytest.fixture
def forced():
    """Every product on the kernel whatever its size (test hooks), restored after."""
    KLIN._set_matmul(2)
    KLIN._set_weight_grads(2)
    yield
    KLIN._set_matmul(1)
    KLIN._set_weight_grads(1)


def _check(dtype, got, exact, name):
    if dtype == np.float64:
        assert_close_f64(got, exact, atol=1e-12 * max(1.0, float(np.abs(exact).max())),
                         name=name)
    else:
        assert_close_f32(got, exact, rtol=2e-6 * np.sqrt(max(exact.shape)), name=name)


@needs_packed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_matmul_matches_float64(forced, rng, dtype, M, K, N):
    a = rng.standard_normal((M, K)).astype(dtype)
    w = rng.standard_normal((N, K)).astype(dtype)        # PyTorch layout (out, in)
    exact = a.astype(np.float64) @ w.T.astype(np.float64)
    out = np.full((M, N), np.nan, dtype)
    assert KLIN.matmul(a, w.T, out)                         # B a transposed view
    _check(dtype, out, exact, "a @ w.T")
    out2 = np.full((M, N), np.nan, dtype)
    assert KLIN.matmul(a, np.ascontiguousarray(w.T), out2)  # B row-major
    _check(dtype, out2, exact, "a @ B")
    # beta = 1 accumulates, any other scales; A as rows of a wider array
    wide = np.concatenate([a, rng.standard_normal((M, 7)).astype(dtype)], axis=1)
    base = rng.standard_normal((M, N)).astype(dtype)
    for beta in (1.0, -0.5):
        acc = base.copy()
        assert KLIN.matmul(wide[:, :K], w.T, acc, beta=beta)
        _check(dtype, acc, exact + beta * base.astype(np.float64), f"beta {beta}")


@needs_packed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,M,N", [(256, 5, 33), (300, 96, 256), (1000, 17, 64)])
def test_matmul_tn_add_matches_float64(forced, rng, dtype, K, M, N):
    a = rng.standard_normal((K, M)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    base = rng.standard_normal((M, N)).astype(dtype)
    out = base.copy()
    assert KLIN.matmul_tn_add(a, b, out)
    _check(dtype, out, base + a.T.astype(np.float64) @ b.astype(np.float64), "out + a.T @ b")


@needs_packed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_tn_add_in_place_and_copied_agree_bitwise(forced, rng, dtype):
    """A (K, M) with M = 65 (one 1-row block) read in place (rows 260 / 520 bytes
    apart: the rule's default) and from the transposed copy (0): the same bits."""
    a = rng.standard_normal((700, 65)).astype(dtype)
    b = rng.standard_normal((700, 40)).astype(dtype)
    base = rng.standard_normal((65, 40)).astype(dtype)
    got = {}
    try:
        for mode in (0, 1):
            KLIN._set_weight_grads_inplace(mode)
            before = KLIN._weight_grads_inplace_terms()
            got[mode] = base.copy()
            assert KLIN.matmul_tn_add(a, b, got[mode])
            assert KLIN._weight_grads_inplace_terms() - before == mode
    finally:
        KLIN._set_weight_grads_inplace(1)
    np.testing.assert_array_equal(got[1], got[0])
    _check(dtype, got[1], base + a.T.astype(np.float64) @ b.astype(np.float64), "in place")


@needs_packed
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_tn_add_takes_its_memory_from_the_workspace_cache(forced, rng, dtype,
                                                                 poisoned_cache):
    """The dense layers' dW runs in memory from the workspace cache, like the cells'
    backward calls (poisoned blocks: nothing is read before it is written), or, with
    the hook off, allocates per call: bitwise the same sums, and the counter moves
    only for the former."""
    a = rng.standard_normal((300, 70)).astype(dtype)     # K = 300 rows over two chunks (f64)
    b = rng.standard_normal((300, 45)).astype(dtype)
    base = rng.standard_normal((70, 45)).astype(dtype)
    got = {}
    try:
        for on in (True, False, True):
            KLIN._set_weight_grads_workspace(on)
            before = KLIN._weight_grads_workspace_calls()
            out = base.copy()
            assert KLIN.matmul_tn_add(a, b, out)
            assert KLIN._weight_grads_workspace_calls() - before == (1 if on else 0)
            got.setdefault(on, []).append(out)
    finally:
        KLIN._set_weight_grads_workspace(True)
    for out in got[True] + got[False][1:]:
        np.testing.assert_array_equal(out, got[False][0])
    _check(dtype, got[True][0], base + a.T.astype(np.float64) @ b.astype(np.float64),
           "out + a.T @ b (workspace)")


def _threaded(fn):
    """Skipped where the rule takes no product: no packed layout, the row split off,
    or a machine of more than 8 CPUs (BLAS keeps them there)."""
    for mark in threaded_kernel_marks("the rule takes products only with the row split"):
        fn = mark(fn)
    return pytest.mark.skipif(not KLIN._rule_allows_kernel(),
                              reason="more than 8 CPUs: BLAS keeps the products")(fn)


@_threaded
@pytest.mark.parametrize("threads", [1, 3])
def test_results_do_not_depend_on_the_thread_count(rng, threads):
    """The rule's shapes (no hook): the same bits on 2 threads and on `threads`."""
    a = rng.standard_normal((1000, 256)).astype(np.float32)
    w = rng.standard_normal((96, 256)).astype(np.float32)
    d = rng.standard_normal((1000, 96)).astype(np.float32)

    def run():
        g = np.zeros((96, 256), np.float32)
        return _bindings.matmul(a, w.T), _bindings.matmul(d, w), _bindings.matmul_tn_add(d, a, g)
    with threadpool_limits(2):
        before = KLIN._matmul_calls(), KLIN._weight_grads_calls()
        ref = run()
        # the rule took all three, on 2 threads where BLAS has 2 (a 1-CPU runner: 1)
        assert KLIN._matmul_calls()[0] == before[0][0] + 2
        assert KLIN._weight_grads_calls()[0] == before[1][0] + 1
    with threadpool_limits(threads):
        before = KLIN._matmul_calls()[1]
        got = run()
        if threads > 1 and (os.cpu_count() or 1) > 1:
            assert KLIN._matmul_calls()[1] == before + 2   # the rows really were split
    for r, g in zip(ref, got):
        np.testing.assert_array_equal(r, g)


def test_the_rule_leaves_small_products_to_blas(rng):
    """Below the rule's rows/size the entries return False and write nothing; the
    bindings then give BLAS's product."""
    a = rng.standard_normal((8, 16)).astype(np.float32)
    w = rng.standard_normal((4, 16)).astype(np.float32)
    out = np.full((8, 4), 7.0, np.float32)
    assert not KLIN.matmul(a, w.T, out)
    assert (out == 7.0).all()
    g = np.full((4, 16), 7.0, np.float32)
    d = rng.standard_normal((8, 4)).astype(np.float32)
    assert not KLIN.matmul_tn_add(d, a, g)
    assert (g == 7.0).all()
    assert_close_f32(_bindings.matmul(a, w.T), a.astype(np.float64) @ w.T, name="fallback")
    _bindings.matmul_tn_add(d, a, g)
    assert_close_f32(g, 7.0 + d.T.astype(np.float64) @ a, name="fallback dW")


def test_layouts_the_kernel_does_not_take_fall_back(forced, rng):
    """Negative strides, a column-strided A: False (nothing written), and the
    bindings' product is still right."""
    a = rng.standard_normal((70, 12)).astype(np.float64)
    w = rng.standard_normal((9, 12)).astype(np.float64)
    out = np.zeros((70, 9))
    assert not KLIN.matmul(a[::-1], w.T, out) and not out.any()
    assert not KLIN.matmul(np.asfortranarray(a), w.T, out) and not out.any()
    assert not KLIN.matmul(a, w.T[::-1][::-1, ::-1], out) and not out.any()
    assert_close_f64(_bindings.matmul(np.asfortranarray(a), w.T[:, ::-1]),
                     a @ w.T[:, ::-1], name="fallback")


def test_misaligned_and_foreign_operands_go_to_blas(forced, rng):
    """Arrays the kernel does not take (misaligned, byte-swapped, float16) are left to
    BLAS by the bindings, with the right product."""
    raw = np.zeros(70 * 12 * 4 + 1, np.uint8)
    a = np.frombuffer(raw.data, dtype=np.float32, count=70 * 12, offset=1).reshape(70, 12)
    assert not a.flags.aligned
    w = rng.standard_normal((9, 12)).astype(np.float32)
    out = np.zeros((70, 9), np.float32)
    assert not KLIN.matmul(a, w.T, out) and not out.any()
    assert not KLIN.matmul(np.zeros((0, 12), np.float32), w.T, np.zeros((0, 9), np.float32))
    swapped = rng.standard_normal((70, 12)).astype(">f8")
    assert_close_f64(_bindings.matmul(swapped, w.T.astype(">f8")),
                     swapped.astype(np.float64) @ w.T.astype(np.float64), name="byte-swapped")
    with pytest.raises(TypeError, match="float32/float64"):
        KLIN.matmul(swapped, w.T.astype(">f8"), np.zeros((70, 9), ">f8"))
    # what the bindings ask before calling the kernel entries (which raise)
    assert not KLIN.takes(swapped, w.T.astype(">f8"))
    assert not KLIN.takes(w.astype(np.float16), w.T.astype(np.float16))
    assert KLIN.takes(a, w.T) and KLIN.takes(w, w.T, np.zeros((9, 9), np.float32))
    assert not KLIN.takes(w, w.T, np.zeros((9, 9), np.float32)[:, ::-1])


def test_zero_sized_products_through_linear():
    lin = Linear(4, 3, seed=0)
    y = lin.forward(np.zeros((0, 4), np.float32))
    assert y.shape == (0, 3)
    assert lin.backward(np.zeros((0, 3), np.float32)).shape == (0, 4)
    assert not lin.grads["weight"].any()
    y = _bindings.matmul(np.ones((70, 0), np.float32), np.ones((0, 3), np.float32))
    assert y.shape == (70, 3) and not y.any()


@pytest.mark.skipif(not HAVE_PACKED, reason="no packed GEMM layout for this CPU: BLAS only")
def test_the_weight_gradient_follows_the_row_split_setting(rng):
    """With the kernels' own threads off (rnncore.set_row_split(False)), Linear's
    products go back to BLAS's threads: all three, the weight gradient too."""
    import rnncore
    d = rng.standard_normal((1000, 96)).astype(np.float32)
    x = rng.standard_normal((1000, 256)).astype(np.float32)
    rnncore.set_row_split(False)
    try:
        assert not KLIN.matmul_tn_add(d, x, np.zeros((96, 256), np.float32))
        assert not KLIN.matmul(x, np.ones((256, 96), np.float32), np.zeros((1000, 96), np.float32))
    finally:
        rnncore.set_row_split(True)


@pytest.mark.parametrize("call, match", [
    (lambda: KLIN.matmul(np.ones((64, 3)), np.ones((4, 2)), np.empty((64, 2))), "shapes"),
    (lambda: KLIN.matmul(np.ones((64, 3)), np.ones((3, 2), np.float32), np.empty((64, 2))),
     "dtype"),
    (lambda: KLIN.matmul(np.ones(3), np.ones((3, 2)), np.empty((1, 2))), "a must be a 2-D"),
    (lambda: KLIN.matmul(np.ones((64, 3)), [[1.0, 2.0]] * 3, np.empty((64, 2))),
     "b must be a 2-D"),
    (lambda: KLIN.matmul(np.ones((64, 3)), np.ones((3, 2)), np.empty((2, 64)).T),
     "out must be a writeable C-ordered"),
    (lambda: KLIN.matmul(np.ones((64, 3), np.int64), np.ones((3, 2), np.int64),
                         np.empty((64, 2), np.int64)), "float32/float64"),
    (lambda: KLIN.matmul_tn_add(np.ones((300, 3)), np.ones((299, 2)), np.zeros((3, 2))),
     "shapes"),
])
def test_bad_operands_raise_naming_them(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_out_overlapping_an_operand_is_refused():
    buf = np.ones((64, 4))
    with pytest.raises(ValueError, match="out must not overlap"):
        KLIN.matmul(buf, np.eye(4), buf)
    with pytest.raises(ValueError, match="out must not overlap"):
        KLIN.matmul_tn_add(buf, buf, buf[:4])
    assert (buf == 1).all()


@_threaded
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_on_the_kernel_matches_the_reference(rng, dtype):
    """A read-out at the char-LM's shape (T*N = 3200 rows, 256 -> 96): forward and
    backward through the kernel (counted) against float64 products."""
    lin = Linear(256, 96, dtype=dtype, seed=3)
    x = rng.standard_normal((32, 100, 256)).astype(dtype)
    dy = rng.standard_normal((32, 100, 96)).astype(dtype)
    before = KLIN._matmul_calls()[0], KLIN._weight_grads_calls()[0]
    y = lin.forward(x)
    dx = lin.backward(dy)
    assert KLIN._matmul_calls()[0] == before[0] + 2
    assert KLIN._weight_grads_calls()[0] == before[1] + 1
    W = lin.params["weight"].astype(np.float64)
    x2, d2 = x.reshape(-1, 256).astype(np.float64), dy.reshape(-1, 96).astype(np.float64)
    _check(dtype, y.reshape(-1, 96), x2 @ W.T + lin.params["bias"], "y")
    _check(dtype, dx.reshape(-1, 256), d2 @ W, "dx")
    _check(dtype, lin.grads["weight"], d2.T @ x2, "dweight")


@needs_packed
def test_linear_on_the_kernel_matches_torch(rng):
    torch = pytest.importorskip("torch")
    lin = Linear(128, 200, seed=1)
    ref = torch.nn.Linear(128, 200)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(lin.params["weight"]))
        ref.bias.copy_(torch.from_numpy(lin.params["bias"]))
    x = rng.standard_normal((500, 128)).astype(np.float32)
    dy = rng.standard_normal((500, 200)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = ref(xt)
    yt.backward(torch.from_numpy(dy))
    y = lin.forward(x)
    dx = lin.backward(dy)
    assert_close_f32(y, yt.detach().numpy(), name="y")
    assert_close_f32(dx, xt.grad.numpy(), name="dx")
    assert_close_f32(lin.grads["weight"], ref.weight.grad.numpy(), name="dweight")


def test_linear_module_shares_the_kernels_team():
    """The linear module gets rnncore's thread hooks like the cells' modules."""
    from rnncore._kernels import rnn
    assert KLIN._thread_team_id() == rnn._thread_team_id()
