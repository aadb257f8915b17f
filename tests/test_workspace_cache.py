"""The training workspace cache (rnncore._kernels._pool): reused blocks never change
a result, inference never uses it, its limit and release work, and blocks in use
are traced."""
import threading
import tracemalloc

import numpy as np
import pytest

import rnncore
from rnncore._kernels import _pool

from conftest import HAVE_PACKED, run_backward, run_forward

#: (name, constructor, kind): every kernel family the training paths pool for
MODELS = [
    ("rnn_tanh", lambda D, H, **k: rnncore.RNN(D, H, **k), "rnn"),
    ("rnn_relu", lambda D, H, **k: rnncore.RNN(D, H, nonlinearity="relu", **k), "rnn"),
    ("gru", lambda D, H, **k: rnncore.GRU(D, H, **k), "gru"),
    ("gru_reset_before", lambda D, H, **k: rnncore.GRU(D, H, reset_after=False, **k), "gru"),
    ("gru_ln", lambda D, H, **k: rnncore.GRU(D, H, layer_norm=True, **k), "gru"),
    ("lstm", lambda D, H, **k: rnncore.LSTM(D, H, **k), "lstm"),
    ("lstm_proj", lambda D, H, **k: rnncore.LSTM(D, H, proj_size=H // 2, **k), "lstm"),
    ("lstm_ln", lambda D, H, **k: rnncore.LSTM(D, H, layer_norm=True, **k), "lstm"),
]
IDS = [m[0] for m in MODELS]


@pytest.fixture
def cache(poisoned_cache):
    """The cache on, every array pooled, returned blocks poisoned (conftest)."""
    yield


def _step(m, x, dout, lengths):
    """One training step: (output, final states, dx, initial-state grads, weight grads)."""
    m.zero_grad()
    out, states = run_forward(m, x, lengths=lengths)
    out = out.copy()
    dx, dstates = run_backward(m, dout)
    grads = {k: g.copy() for k, g in m.grads.items()}
    return [out, *[s.copy() for s in states], dx.copy(), *[d.copy() for d in dstates]], grads


def _steps_match_cache_off(m, x, dout, lengths, steps=3):
    """A cache-off step, then `steps` steps on the cache: bitwise the same results."""
    _pool.set_limit(0)              # the first step: fresh arrays only
    ref, ref_g = _step(m, x, dout, lengths)
    _pool.set_limit(256 << 20)
    for _ in range(steps):
        got, got_g = _step(m, x, dout, lengths)
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
        for k in ref_g:
            np.testing.assert_array_equal(got_g[k], ref_g[k], err_msg=k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first, with_lengths, bidir", [
    (False, False, False), (True, True, True), (True, False, True), (False, True, False)])
@pytest.mark.parametrize("name, make, kind", MODELS, ids=IDS)
def test_training_steps_bitwise_equal_with_reused_poisoned_blocks(
        cache, name, make, kind, dtype, batch_first, with_lengths, bidir):
    # every array of a training step comes from the cache (min bytes 1) and every
    # block returned is filled with NaN bits before its next use: a kernel reading
    # a workspace before writing it would give NaN or a different result at step 2
    T, N, D, H = 7, 9, 5, 16
    rng = np.random.default_rng(3)
    m = make(D, H, num_layers=2, bidirectional=bidir, batch_first=batch_first, seed=1,
             dtype=dtype)
    shape = (N, T, D) if batch_first else (T, N, D)
    x = rng.standard_normal(shape).astype(dtype)
    lengths = rng.integers(1, T + 1, N) if with_lengths else None
    if lengths is not None:
        lengths[0] = T
    Ho = m.proj_size if getattr(m, "proj_size", 0) else H
    dout = rng.standard_normal(shape[:2] + ((2 if bidir else 1) * Ho,)).astype(dtype)
    before = _pool.info()
    _steps_match_cache_off(m, x, dout, lengths)
    after = _pool.info()
    assert after["hits"] > before["hits"], "the steps did not reuse any block"


def test_second_step_is_served_from_the_cache():
    m = rnncore.LSTM(64, 128, seed=0)
    x = np.random.default_rng(0).standard_normal((50, 16, 64)).astype(np.float32)
    rnncore.empty_cache()
    m(x)
    m.backward(np.ones((50, 16, 128), np.float32))
    first = _pool.info()
    assert first["kept_bytes"] >= 50 * 16 * 4 * 128 * 4, first   # at least the saved gates
    m(x)
    m.backward(np.ones((50, 16, 128), np.float32))
    second = _pool.info()
    assert second["misses"] == first["misses"], (first, second)
    assert second["hits"] > first["hits"]
    assert second["kept_bytes"] == first["kept_bytes"]


@pytest.mark.parametrize("bidir", [False, True])
@pytest.mark.parametrize("name, make, kind", MODELS, ids=IDS)
def test_inference_does_not_use_the_cache(cache, name, make, kind, bidir):
    # every array would qualify (min bytes 1): eval(), no_grad and inference_mode
    # calls, with and without lengths, take none
    m = make(16, 32, num_layers=2, bidirectional=bidir, seed=0).eval()
    x = np.random.default_rng(0).standard_normal((20, 8, 16)).astype(np.float32)
    rnncore.empty_cache()
    before = _pool.info()
    for _ in range(2):
        m(x)
        m(x, lengths=np.arange(20, 12, -1))
    m.train()
    with rnncore.no_grad():
        m(x)
    with rnncore.inference_mode():
        m(x)
    assert _pool.info() == before


@pytest.mark.skipif(not HAVE_PACKED, reason="the unit split needs the packed layout")
def test_unit_split_lstm_on_reused_poisoned_blocks(cache):
    from rnncore._kernels import lstm as KL
    T, N, D, H = 6, 8, 12, 64
    rng = np.random.default_rng(5)
    m = rnncore.LSTM(D, H, seed=2)
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    dout = rng.standard_normal((T, N, H)).astype(np.float32)
    KL._set_unit_split(1, 2)             # forced on: its packed slices from the cache
    try:
        _steps_match_cache_off(m, x, dout, None)
    finally:
        KL._set_unit_split(0)    # the default: the shape rule


def test_small_arrays_stay_numpys_and_blocks_over_the_limit_are_not_kept():
    limit = _pool.limit()
    try:
        rnncore.empty_cache()
        before = _pool.info()
        m = rnncore.GRU(4, 8, seed=0)                 # every array far below MIN_BYTES
        m(np.ones((5, 2, 4), np.float32))
        m.backward(np.ones((5, 2, 8), np.float32))
        assert _pool.info()["kept_bytes"] == 0
        assert _pool.info()["misses"] == before["misses"]
        # gates (50, 16, 4 * 128) float32: 1.6 MB, over a 1 MiB limit; the smaller
        # arrays (h, c, dx: 0.4 MB) are kept and reused, the large ones never kept
        rnncore.set_cache_limit(1 << 20)
        m = rnncore.LSTM(64, 128, seed=0)
        x = np.ones((50, 16, 64), np.float32)
        for _ in range(3):
            m(x)
            m.backward(np.ones((50, 16, 128), np.float32))
            assert 0 < _pool.info()["kept_bytes"] <= 1 << 20
        first = _pool.info()
        m(x)
        m.backward(np.ones((50, 16, 128), np.float32))
        assert _pool.info()["hits"] > first["hits"]           # kept ones served again
        first = _pool.info()
        a = _pool.empty((1 << 19,), np.float32)               # 2 MiB > the limit: NumPy's
        assert a.ctypes.data % 64 == 0 and _pool.info() == first
    finally:
        rnncore.set_cache_limit(limit)


def test_outputs_held_by_the_caller_are_never_reused():
    m = rnncore.GRU(32, 64, seed=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 16, 32)).astype(np.float32)
    y1, _ = m(x)
    keep = y1.copy()
    m.backward(np.ones_like(y1))
    for _ in range(3):
        y, _ = m(rng.standard_normal((40, 16, 32)).astype(np.float32))
        m.backward(np.ones_like(y))
        del y
    np.testing.assert_array_equal(y1, keep)


def test_limit_and_empty_cache():
    limit = _pool.limit()
    try:
        m = rnncore.LSTM(64, 128, seed=0)
        x = np.ones((50, 16, 64), np.float32)
        m(x)
        m.backward(np.ones((50, 16, 128), np.float32))
        assert rnncore.cache_info()["kept_bytes"] > 0
        rnncore.empty_cache()
        assert rnncore.cache_info()["kept_bytes"] == 0
        assert rnncore.cache_info()["limit"] == limit
        m(x)
        m.backward(np.ones((50, 16, 128), np.float32))
        kept = rnncore.cache_info()["kept_bytes"]
        rnncore.set_cache_limit(kept // 2)          # the oldest blocks go at once
        assert rnncore.cache_info()["kept_bytes"] <= kept // 2
        rnncore.set_cache_limit(0)                   # off: nothing kept any more
        assert rnncore.cache_info()["kept_bytes"] == 0
        m(x)
        m.backward(np.ones((50, 16, 128), np.float32))
        assert rnncore.cache_info()["kept_bytes"] == 0
        with pytest.raises(ValueError, match="nbytes"):
            rnncore.set_cache_limit(-1)
        with pytest.raises((TypeError, ValueError)):
            rnncore.set_cache_limit("a lot")
    finally:
        rnncore.set_cache_limit(limit)


def test_blocks_in_use_are_traced_and_kept_ones_are_not():
    m = rnncore.LSTM(64, 128, seed=0)
    x = np.ones((50, 16, 64), np.float32)
    gates = 50 * 16 * 4 * 128 * 4
    m(x)
    m.backward(np.ones((50, 16, 128), np.float32))      # warm: blocks kept
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        m(x)                                             # saved gates from the cache
        held = tracemalloc.get_traced_memory()[0] - base
        m.backward(np.ones((50, 16, 128), np.float32))   # released: back to the cache
        after = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert held >= gates, held
    assert after < gates, after


def test_concurrent_training_in_threads_matches_serial():
    rng = np.random.default_rng(0)
    models = [rnncore.GRU(32, 64, seed=s) for s in range(2)] + \
        [rnncore.LSTM(32, 64, seed=s) for s in range(2)]
    xs = [rng.standard_normal((30, 16, 32)).astype(np.float32) for _ in models]
    douts = [rng.standard_normal((30, 16, 64)).astype(np.float32) for _ in models]
    serial = [_step(m, x, d, None) for m, x, d in zip(models, xs, douts)]
    got = [None] * len(models)
    errors = []

    def work(i):
        try:
            for _ in range(5):
                got[i] = _step(models[i], xs[i], douts[i], None)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for (a, ag), (b, bg) in zip(got, serial):
        for u, v in zip(a, b):
            np.testing.assert_array_equal(u, v)
        for k in bg:
            np.testing.assert_array_equal(ag[k], bg[k])


def test_show_config_reports_the_cache(capsys):
    cfg = rnncore.show_config()
    assert "MiB" in cfg["workspace_cache"] or cfg["workspace_cache"] == "off"
    capsys.readouterr()


def test_small_arrays_and_bad_shapes():
    for _ in range(8):                              # below MIN_BYTES: NumPy's own, aligned
        a = _pool.empty((3, 4), np.float32)
        assert a.shape == (3, 4) and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % 64 == 0
    b = _pool.empty((1024, 1024), np.float64)     # 8 MiB: a block, aligned
    assert b.shape == (1024, 1024) and b.flags.c_contiguous and b.flags.writeable
    assert b.ctypes.data % 64 == 0
    with pytest.raises(ValueError, match="negative"):
        _pool.empty((-1, 4), np.float32)


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("shape, want", [
    (5, (5,)), ((5,), (5,)), ((2, 3, 4), (2, 3, 4)), ((np.int64(3), 7), (3, 7)),
    (np.intp(6), (6,)), ((), ()), ((0, 4), (0, 4)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.dtype(np.float64), "float32"])
def test_empty_takes_int_and_tuple_shapes_and_any_dtype_spelling(shape, want, dtype, pool):
    # an int (the kernels' 1-D workspaces), a tuple, NumPy integers; the dtype as a
    # type, a dtype or a name: the same array either way, 64-byte aligned
    a = _pool.empty(shape, dtype, pool)
    assert a.shape == want and a.dtype == np.dtype(dtype)
    assert a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % 64 == 0      # (an empty array's address is moot)
    a[...] = 1.0        # the whole array is ours to write
    assert np.all(a == 1.0)


def test_empty_rejects_negative_and_non_integer_sizes():
    with pytest.raises(ValueError, match="negative"):
        _pool.empty(-3, np.float32)
    with pytest.raises(ValueError, match="negative"):
        _pool.empty((4, -1), np.float64, True)
    with pytest.raises(TypeError):
        _pool.empty((2.5, 3), np.float32)
    with pytest.raises(TypeError):
        _pool.empty([2, 3], np.float32)     # a list is not a shape here


@pytest.mark.parametrize("shape", [1 << 17, (1 << 17,), (256, 512)])
def test_empty_from_the_cache_takes_an_int_shape_too(cache, shape):
    # a pooled request as the kernels make it (a bare int: 1-D) or as a tuple: a
    # page-aligned block, served again from the cache once the array is gone
    a = _pool.empty(shape, np.float32, True)
    assert a.shape == (shape if isinstance(shape, tuple) else (shape,))
    assert a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % 4096 == 0
    address = a.ctypes.data
    del a
    before = _pool.info()
    b = _pool.empty(shape, np.float32, True)
    assert _pool.info()["hits"] == before["hits"] + 1 and b.ctypes.data == address
