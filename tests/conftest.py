"""What the whole suite shares: the tolerance table, the shape grid, the cells
(names and factories), a seeded ``rng`` fixture and the ``slow`` marker.

Layers (see STYLE.md): ``test_reference`` (the specification against finite
differences), ``test_kernels`` (compiled kernels against the reference),
``test_functional`` / ``test_cells`` / ``test_models`` (the API),
``test_torch_parity`` (PyTorch, skipped without it), ``reliability/``.
The one multi-layer model oracle is ``_oracle.py``.
"""
import os

import numpy as np
import pytest

import rnncore
from rnncore._kernels import _pool, simd
from rnncore.models import GRU, LSTM, RNN

#: Whether this build's time loops have a packed-weight layout (AVX2+FMA or AVX-512;
#: not the baseline level): the row split and the packed-GEMM tests depend on it.
HAVE_PACKED = simd._gemm_packed_nr(np.float32) > 0


def threaded_kernel_marks(what):
    """``pytestmark`` of the tests of rnncore's threaded kernel paths (packing on
    threads, the thread team): skipped without a packed layout for this CPU or
    with the row split off; `what` says what is then missing."""
    from rnncore._runtime.threads import row_split_enabled
    return [pytest.mark.skipif(not HAVE_PACKED,
                               reason=f"no packed GEMM layout for this CPU ({what})"),
            pytest.mark.skipif(not row_split_enabled(),
                               reason=f"the row split is off (SciPy's BLAS spins): {what}")]


def cell_kernel_modules():
    """{cell variant: its kernel module} for the threaded-path tests' hooks."""
    from rnncore._kernels import gru, lngru, lnlstm, lstm, rnn
    return {"rnn": rnn, "gru": gru, "gru-rb": gru, "lstm": lstm, "ln-gru": lngru,
            "ln-lstm": lnlstm}

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


#: (N, T, D, H): a base case plus the edge cases N=1, T=1, H=1, D=1, D=H, D>H,
#: D<H and a wider H. The one grid of the reference, kernel and functional tests;
#: finite differences (one forward per input element) use its tiny head.
SHAPES = [(2, 3, 4, 5), (1, 3, 4, 5), (2, 1, 4, 5), (2, 3, 4, 1), (2, 2, 1, 3), (2, 2, 3, 3),
          (3, 4, 1, 3), (2, 5, 3, 3), (4, 6, 7, 2), (1, 1, 3, 2), (3, 1, 2, 4), (1, 6, 3, 3),
          (4, 5, 1, 1), (5, 7, 8, 3), (2, 4, 6, 16)]
SHAPE_IDS = [f"N{N}-T{T}-D{D}-H{H}" for N, T, D, H in SHAPES]
FD_SHAPES, FD_SHAPE_IDS = SHAPES[:6], SHAPE_IDS[:6]
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]

#: The cells: RNN with either nonlinearity, GRU, LSTM; gates per cell kind.
CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm"]
GATED = ["gru", "lstm"]
GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def kind_of(cell):
    """'rnn', 'gru' or 'lstm' for a name in CELLS."""
    return cell.split("_")[0]


def n_states(cell):
    """1 (h), or 2 (h, c) for the LSTM."""
    return 2 if kind_of(cell) == "lstm" else 1


def make_model(cell, D, H, **kw):
    """An rnncore model for ``cell`` in CELLS (keyword arguments as the constructor)."""
    kind = kind_of(cell)
    if kind == "rnn":
        return RNN(D, H, nonlinearity=cell.split("_")[1], **kw)
    return {"gru": GRU, "lstm": LSTM}[kind](D, H, **kw)


def make_cell(kind, D, H, **kw):
    """An rnncore single-step cell for ``kind`` in CELLS."""
    if kind.startswith("rnn"):
        return rnncore.RNNCell(D, H, nonlinearity=kind[4:], **kw)
    return {"gru": rnncore.GRUCell, "lstm": rnncore.LSTMCell}[kind](D, H, **kw)


def call_cell(kind, cell, x, state, train=True):
    """``cell(x, state)`` with the state(s) as a list; returns the new state(s) as a list."""
    if kind == "lstm":
        return list(cell(x, tuple(state), train=train))
    return [cell(x, state[0], train=train)]


def run_forward(model, x, states=None, lengths=None, train=True):
    """``model(x, ...)`` with the initial state(s) as a list; returns (out, [h_n(, c_n)])."""
    if isinstance(model, LSTM):
        hx = None if states is None else tuple(states)
        out, (h, c) = model(x, hx, lengths=lengths, train=train)
        return out, [h, c]
    out, h = model(x, None if states is None else states[0], lengths=lengths, train=train)
    return out, [h]


def run_backward(model, dout, dstates=None):
    """``model.backward`` with final-state gradient(s) as a list; returns (dx, [dh0(, dc0)])."""
    if isinstance(model, LSTM):
        dx, (dh0, dc0) = model.backward(dout, None if dstates is None else tuple(dstates))
        return dx, [dh0, dc0]
    dx, dh0 = model.backward(dout, None if dstates is None else dstates[0])
    return dx, [dh0]


#: The gradients the GRU and LSTM sequence functions return, in order.
GRAD_NAMES = {
    "gru": ("dx", "dh0", "dWx", "dWh", "dbx", "dbh"),
    "lstm": ("dx", "dh0", "dc0", "dWx", "dWh", "db"),
}
#: Weight scale of drawn inputs, keeping gates out of saturation so every term matters.
SCALE = 0.5


def randn(rng, *shape):
    return SCALE * rng.standard_normal(shape)


def draw_sequence(kind, rng, N, T, D, H, dtype=np.float64):
    """Random sequence inputs (batch-major) and upstream gradients of a cell kind
    ('rnn', 'gru', 'lstm'), named like the API: ``(inputs, upstream)``."""
    G = GATES[kind]
    inp = {"x": rng.standard_normal((N, T, D)), "h0": randn(rng, N, H)}
    inp["Wx"] = randn(rng, D, G * H)
    inp["Wh"] = randn(rng, H, G * H)
    if kind == "gru":
        inp["bx"] = randn(rng, G * H)
        inp["bh"] = randn(rng, G * H)
    else:
        inp["b"] = randn(rng, G * H)
    if kind == "lstm":
        inp["c0"] = randn(rng, N, H)
    up = {"dh": rng.standard_normal((N, T, H)), "dhn": rng.standard_normal((N, H))}
    if kind == "lstm":
        up["dcn"] = rng.standard_normal((N, H))
    cast = lambda d: {k: v.astype(dtype) for k, v in d.items()}  # noqa: E731
    return cast(inp), cast(up)


# ----------------------------------------------------------------- slow tests
def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (or set RNNCORE_SLOW=1)")


def _on(name):
    return os.environ.get(name, "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` skip unless ``--runslow``, ``RNNCORE_SLOW=1`` or the
    reliability suite's long mode (``RNNCORE_LONG_TESTS=1``) asks for them."""
    if config.getoption("--runslow") or _on("RNNCORE_SLOW") or _on("RNNCORE_LONG_TESTS"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or RNNCORE_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


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


def with_and_without_row_split(run):
    """(run() with the time loops' row split allowed, run() with it off): the
    setting is restored (on) afterwards."""
    import rnncore
    split = run()
    rnncore.set_row_split(False)
    try:
        one = run()
    finally:
        rnncore.set_row_split(True)
    return split, one


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


def assert_close(actual, expected, name):
    """float64: 1e-10 abs; float32: 1e-5 relative to max(1, |expected|)."""
    actual = np.asarray(actual)
    if actual.dtype == np.float32:
        assert_close_f32(actual, expected, name=name)
    else:
        assert actual.dtype == np.float64, f"{name}: dtype {actual.dtype}"
        assert_close_f64(actual, expected, name=name)


@pytest.fixture
def poisoned_cache():
    """The workspace cache on, every array pooled, returned blocks poisoned with NaN
    bits (a kernel reading a workspace before writing it shows); restored (and
    emptied) afterwards."""
    limit = _pool.limit()
    _pool.set_limit(256 << 20)
    _pool._set_min_bytes(1)
    _pool._set_poison(True)
    try:
        yield
    finally:
        _pool._set_poison(False)
        _pool._set_min_bytes(_pool.MIN_BYTES)
        _pool.set_limit(limit)
        rnncore.empty_cache()
