"""rnncore.functional (vanilla RNN kernels) against rnncore.reference.

Covers every output and gradient over a shape grid (T=1, N=1, H=1, D != H),
both dtypes, both nonlinearities; the kernel entry points directly for the
reverse direction, variable lengths (sorted batch_sizes), time-/batch-major
layouts and transposed (PyTorch-layout) weights; bad input; inputs never
modified; NaN propagation.
"""
import numpy as np
import pytest

from conftest import TOL, assert_close_f32, assert_close_f64
from rnncore import functional as F
from rnncore import reference as R
from rnncore._kernels import rnn as K

SHAPES = [  # (N, T, D, H)
    (2, 3, 4, 5),
    (1, 1, 3, 2),
    (3, 1, 2, 4),
    (1, 6, 3, 3),
    (4, 5, 1, 1),
    (5, 7, 8, 3),
    (2, 4, 6, 16),
]


def _params(rng, N, T, D, H, dtype=np.float64, scale=0.5):
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H)) * 0.5
    Wx = rng.standard_normal((D, H)) * scale
    Wh = rng.standard_normal((H, H)) * scale
    b = rng.standard_normal(H) * 0.1
    return [a.astype(dtype) for a in (x, h0, Wx, Wh, b)]


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-T%d-D%d-H%d" % s)
def test_sequence_float64_matches_reference(rng, shape, nonlinearity):
    N, T, D, H = shape
    args = _params(rng, N, T, D, H)
    h, cache = F.rnn_forward(*args, nonlinearity=nonlinearity)
    h_ref, cache_ref = R.rnn_forward(*args, nonlinearity=nonlinearity)
    assert_close_f64(h, h_ref, name="h")
    dh = rng.standard_normal((N, T, H))
    dhn = rng.standard_normal((N, H))
    got = F.rnn_backward(dh, cache, dhn=dhn)
    want = R.rnn_backward(dh, cache_ref, dhn=dhn)
    for name, g, w in zip(["dx", "dh0", "dWx", "dWh", "db"], got, want):
        assert_close_f64(g, w, name=name)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("shape", SHAPES + [(16, 50, 32, 64)], ids=lambda s: "N%d-T%d-D%d-H%d" % s)
def test_sequence_float32_matches_reference(rng, shape, nonlinearity):
    N, T, D, H = shape
    args64 = _params(rng, N, T, D, H, scale=1 / np.sqrt(H))
    args32 = [a.astype(np.float32) for a in args64]
    h, cache = F.rnn_forward(*args32, nonlinearity=nonlinearity)
    assert h.dtype == np.float32
    h_ref, cache_ref = R.rnn_forward(*args64, nonlinearity=nonlinearity)
    assert_close_f32(h, h_ref, name="h")
    dh = rng.standard_normal((N, T, H))
    got = F.rnn_backward(dh.astype(np.float32), cache)
    want = R.rnn_backward(dh, cache_ref)
    for name, g, w in zip(["dx", "dh0", "dWx", "dWh", "db"], got, want):
        assert g.dtype == np.float32, name
        assert_close_f32(g, w, name=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_step_functions_match_reference(rng, dtype, nonlinearity):
    N, D, H = 3, 4, 5
    x, h0, Wx, Wh, b = _params(rng, N, 1, D, H, dtype)
    x = x[:, 0]
    nh, cache = F.rnn_step_forward(x, h0, Wx, Wh, b, nonlinearity=nonlinearity)
    nh_ref, cache_ref = R.rnn_step_forward(x, h0, Wx, Wh, b, nonlinearity=nonlinearity)
    check = assert_close_f64 if dtype == np.float64 else assert_close_f32
    check(nh, nh_ref, name="next_h")
    d = rng.standard_normal((N, H)).astype(dtype)
    for name, g, w in zip(["dx", "dprev_h", "dWx", "dWh", "db"],
                          F.rnn_step_backward(d, cache), R.rnn_step_backward(d, cache_ref)):
        check(g, w, name=name)


# ---------------------------------------------------------------- kernel level

def _ref_one_sequence(x, h0, Wx, Wh, b, relu, reverse, dh, dhn):
    """Reference forward/backward of one sequence x (T, D), optionally reversed."""
    nl = "relu" if relu else "tanh"
    xs = x[::-1] if reverse else x
    h, cache = R.rnn_forward(xs[None], h0[None], Wx, Wh, b, nonlinearity=nl)
    dhs = dh[::-1] if reverse else dh
    grads = R.rnn_backward(dhs[None], cache, dhn=dhn[None])
    dx, dh0, dWx, dWh, db = grads
    dx = dx[0][::-1] if reverse else dx[0]
    h = h[0][::-1] if reverse else h[0]
    return h, dx, dh0[0], dWx, dWh, db


#: (T, N, D, H) and sorted lengths (one empty sequence each). The second size
#: puts the per-step products on the unpacked panel kernel (rc_gemm_panel: 4 < rows
#: <= 32, >= 32 columns; H = 40 leaves a column tail, 13 rows a row tail) and, as
#: the active rows shrink, on the small-M kernel.
KERNEL_SIZES = {
    "small": ((6, 5, 3, 4), [6, 5, 5, 2, 0]),
    "panel": ((6, 13, 5, 40), [6, 6, 6, 6, 6, 5, 5, 5, 4, 3, 2, 2, 0]),
}


@pytest.mark.parametrize("size", list(KERNEL_SIZES))
@pytest.mark.parametrize("batch_major", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_kernel_lengths_reverse_layouts(rng, batch_major, reverse, relu, size):
    """Sorted variable-length batch: per-sequence reference on the valid part."""
    (T, N, D, H), lengths = KERNEL_SIZES[size]
    lengths = np.array(lengths)
    bs = (lengths[None, :] > np.arange(T)[:, None]).sum(1)
    x = rng.standard_normal((T, N, D))
    h0 = rng.standard_normal((N, H))
    Wx = rng.standard_normal((D, H)) * 0.5
    Wh_pt = rng.standard_normal((H, H)) * 2 / np.sqrt(H)  # PyTorch layout: pass .T (a view)
    Wh = Wh_pt.T
    b = rng.standard_normal(H) * 0.1
    dh = rng.standard_normal((T, N, H))
    dhn = rng.standard_normal((N, H))

    def seq(a):  # a (T, N, F) array in the requested layout kind
        return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2) if batch_major else a.copy()

    xk = seq(x)
    h = seq(np.full((T, N, H), np.nan))
    K.forward(xk, h0, Wx, Wh, b, h, relu, reverse, bs)
    dx = seq(np.full((T, N, D), np.nan))
    dh0 = np.full((N, H), np.nan)
    dWx = np.ones((D, H))  # gradients accumulate: start from ones
    dWh_pt = np.ones((H, H))  # PyTorch-layout gradient, passed as a transposed view
    db = np.ones(H)
    dh_in = dh.copy()
    dh_in[bs[:, None] <= np.arange(N)[None, :]] = 1e6  # padding must never be read
    K.backward(seq(dh_in), dhn, xk, h0, Wx, Wh, h, dx, dh0, dWx, dWh_pt.T, db, relu, reverse, bs)

    sW = [np.ones((D, H)), np.ones((H, H)), np.ones(H)]
    for n in range(N):
        L = lengths[n]
        assert np.all(h[L:, n] == 0) and np.all(dx[L:, n] == 0), "padding must be zero"
        if L == 0:
            assert_close_f64(dh0[n], dhn[n], name="dh0 of an empty sequence")
            continue
        hr, dxr, dh0r, dWxr, dWhr, dbr = _ref_one_sequence(
            x[:L, n], h0[n], Wx, Wh, b, relu, reverse, dh[:L, n], dhn[n])
        assert_close_f64(h[:L, n], hr, name=f"h[{n}]")
        assert_close_f64(dx[:L, n], dxr, name=f"dx[{n}]")
        assert_close_f64(dh0[n], dh0r, name=f"dh0[{n}]")
        sW[0] += dWxr
        sW[1] += dWhr
        sW[2] += dbr
    assert_close_f64(dWx, sW[0], name="dWx")
    assert_close_f64(dWh_pt.T, sW[1], name="dWh")
    assert_close_f64(db, sW[2], name="db")


def test_fortran_and_noncontiguous_inputs_give_same_result(rng):
    N, T, D, H = 3, 4, 5, 6
    x, h0, Wx, Wh, b = _params(rng, N, T, D, H)
    h, _ = F.rnn_forward(x, h0, Wx, Wh, b)
    big = np.zeros((N, 2 * T, D))
    big[:, ::2] = x
    h2, _ = F.rnn_forward(big[:, ::2], np.asfortranarray(h0), np.asfortranarray(Wx),
                          Wh[:, ::-1][:, ::-1], b)
    assert_close_f64(h2, h, atol=1e-13)
    # Fortran-ordered x, a strided (non-contiguous) bias
    h3, _ = F.rnn_forward(np.asfortranarray(x), h0, Wx, Wh, np.repeat(b, 2)[::2])
    assert_close_f64(h3, h, atol=1e-13)


def test_read_only_inputs_and_inputs_unchanged(rng):
    N, T, D, H = 2, 3, 4, 5
    args = _params(rng, N, T, D, H)
    copies = [a.copy() for a in args]
    for a in args:
        a.setflags(write=False)
    h, cache = F.rnn_forward(*args)
    dh = rng.standard_normal((N, T, H))
    dh.setflags(write=False)
    dh_copy = dh.copy()
    F.rnn_backward(dh, cache)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(dh, dh_copy)


def test_nan_propagates_without_crash(rng):
    x, h0, Wx, Wh, b = _params(rng, 2, 4, 3, 3)
    x[0, 1, 0] = np.nan
    h, cache = F.rnn_forward(x, h0, Wx, Wh, b)
    assert np.all(np.isnan(h[0, 1:])) and np.all(np.isfinite(h[1]))
    dx, *_ = F.rnn_backward(np.ones_like(h), cache)
    assert np.isnan(dx[0]).any() and np.all(np.isfinite(dx[1]))


def test_zero_length_sequence(rng):
    x, h0, Wx, Wh, b = _params(rng, 2, 0, 3, 4)
    h, cache = F.rnn_forward(x, h0, Wx, Wh, b)
    assert h.shape == (2, 0, 4)
    dhn = rng.standard_normal((2, 4))
    dx, dh0, dWx, dWh, db = F.rnn_backward(np.zeros((2, 0, 4)), cache, dhn=dhn)
    assert dx.shape == (2, 0, 3)
    np.testing.assert_array_equal(dh0, dhn)
    assert not dWx.any() and not dWh.any() and not db.any()


@pytest.mark.parametrize("bad, exc, match", [
    (dict(x=np.zeros((2, 3))), ValueError, r"x: expected shape \(N, T, D\)"),
    (dict(h0=np.zeros((3, 5))), ValueError, r"h0: expected shape \(N, H\) = \(2, 5\)"),
    (dict(Wx=np.zeros((5, 5))), ValueError, r"Wx: expected shape \(D, H\) = \(4, 5\)"),
    (dict(Wh=np.zeros((5, 4))), ValueError, r"Wh: expected shape \(H, H\)"),
    (dict(b=np.zeros(4)), ValueError, r"b: expected shape \(H,\) = \(5,\)"),
    (dict(x=np.zeros((2, 3, 4), dtype=np.int64)), TypeError, r"x: expected a float32 or float64"),
    (dict(h0=np.zeros((2, 5), dtype=np.float32)), TypeError, r"h0: dtype float32 does not match"),
    (dict(x=np.zeros((2, 3, 4), dtype=np.complex128)), TypeError, r"x: expected a float32"),
    (dict(x=np.zeros((2, 3, 4), dtype=np.float16)), TypeError, r"x: expected a float32"),
    (dict(nonlinearity="sigmoid"), ValueError, r"nonlinearity: expected 'tanh' or 'relu'"),
])
def test_bad_input(rng, bad, exc, match):
    N, T, D, H = 2, 3, 4, 5
    x, h0, Wx, Wh, b = _params(rng, N, T, D, H)
    kw = dict(x=x, h0=h0, Wx=Wx, Wh=Wh, b=b)
    kw.update(bad)
    with pytest.raises(exc, match=match):
        F.rnn_forward(**kw)


def test_bad_backward_input(rng):
    x, h0, Wx, Wh, b = _params(rng, 2, 3, 4, 5)
    h, cache = F.rnn_forward(x, h0, Wx, Wh, b)
    with pytest.raises(ValueError, match=r"dh: expected shape \(N, T, H\) = \(2, 3, 5\)"):
        F.rnn_backward(np.zeros((2, 3, 4)), cache)
    with pytest.raises(ValueError, match=r"dhn: expected shape \(N, H\)"):
        F.rnn_backward(np.zeros((2, 3, 5)), cache, dhn=np.zeros(5))
    with pytest.raises(TypeError, match="cache"):
        F.rnn_backward(np.zeros((2, 3, 5)), (1, 2))
    _, step_cache = F.rnn_step_forward(x[:, 0], h0, Wx, Wh, b)
    with pytest.raises(TypeError, match="rnn_forward"):
        F.rnn_backward(np.zeros((2, 3, 5)), step_cache)


def test_kernel_rejects_bad_batch_sizes(rng):
    T, N, D, H = 3, 2, 2, 2
    x = np.zeros((T, N, D))
    with pytest.raises(ValueError, match="batch_sizes"):
        K.forward(x, np.zeros((N, H)), np.zeros((D, H)), np.zeros((H, H)), np.zeros(H),
                  np.zeros((T, N, H)), False, False, np.array([1, 2, 2]))
    with pytest.raises(ValueError, match="batch_sizes"):
        K.forward(x, np.zeros((N, H)), np.zeros((D, H)), np.zeros((H, H)), np.zeros(H),
                  np.zeros((T, N, H)), False, False, np.array([3, 2, 2]))


def test_matches_torch(rng):
    torch = pytest.importorskip("torch")
    N, T, D, H = 3, 7, 4, 6
    for nl in ["tanh", "relu"]:
        m = torch.nn.RNN(D, H, nonlinearity=nl, batch_first=True).double()
        x = rng.standard_normal((N, T, D))
        h0 = rng.standard_normal((N, H))
        xt = torch.tensor(x, requires_grad=True)
        h0t = torch.tensor(h0[None], requires_grad=True)
        out, hn = m(xt, h0t)
        dh = rng.standard_normal((N, T, H))
        out.backward(torch.tensor(dh))
        sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
        b = sd["bias_ih_l0"] + sd["bias_hh_l0"]
        h, cache = F.rnn_forward(x, h0, sd["weight_ih_l0"].T, sd["weight_hh_l0"].T, b, nl)
        assert_close_f64(h, out.detach().numpy(), atol=TOL["torch_f64_atol"], name="h")
        dx, dh0, dWx, dWh, db = F.rnn_backward(dh, cache)
        assert_close_f64(dx, xt.grad.numpy(), atol=TOL["torch_f64_atol"], name="dx")
        assert_close_f64(dh0, h0t.grad.numpy()[0], atol=TOL["torch_f64_atol"], name="dh0")
        assert_close_f64(dWx.T, m.weight_ih_l0.grad.numpy(), atol=TOL["torch_f64_atol"])
        assert_close_f64(dWh.T, m.weight_hh_l0.grad.numpy(), atol=TOL["torch_f64_atol"])
        assert_close_f64(db, m.bias_ih_l0.grad.numpy(), atol=TOL["torch_f64_atol"])
