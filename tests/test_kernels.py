"""The compiled kernels (``rnncore._kernels``: rnn, gru, lstm), called directly.

Against :mod:`rnncore.reference` run per sequence: ``reverse``; ``batch_sizes``
(a sorted batch with lengths, compared with the reference run per sequence on
its valid prefix, or reversed suffix, including h_n / c_n gathered at each
row's last step and dh0 / dc0 with dhn / dcn given; padded outputs are zeros,
padded upstream gradients are never read); time-major == batch-major;
transposed-view (PyTorch-layout) weights and weight gradients; gradients
accumulated; ``overwrite_saved``; read-only inputs; inputs never modified;
``saved`` reusable; T=0, D=0; bad shapes, layouts and batch sizes raise
ValueError naming the argument. The small-batch and panel GEMM paths are
reached through the "panel" sizes.
"""
import numpy as np
import pytest
from conftest import (DTYPE_IDS, DTYPES, GATED, GATES, GRAD_NAMES, assert_close,
                      assert_close_f64, draw_sequence)

from rnncore import reference as ref
from rnncore._kernels import gru as kgru
from rnncore._kernels import lstm as klstm
from rnncore._kernels import rnn as K


# ---------------------------------------------------------------------------
# RNN: lengths, reverse, layouts
# ---------------------------------------------------------------------------
def _ref_one_sequence(x, h0, Wx, Wh, b, relu, reverse, dh, dhn):
    """Reference forward/backward of one sequence x (T, D), optionally reversed."""
    nl = "relu" if relu else "tanh"
    xs = x[::-1] if reverse else x
    h, cache = ref.rnn_forward(xs[None], h0[None], Wx, Wh, b, nonlinearity=nl)
    dhs = dh[::-1] if reverse else dh
    grads = ref.rnn_backward(dhs[None], cache, dhn=dhn[None])
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


# ---------------------------------------------------------------------------
# GRU and LSTM: layouts, reverse, lengths
# ---------------------------------------------------------------------------
def _seq(a, batch_major):
    """A (T, N, F) array in the given layout kind (a copy)."""
    if batch_major:
        return np.ascontiguousarray(a.transpose(1, 0, 2)).transpose(1, 0, 2)
    return np.ascontiguousarray(a)


def _empty_seq(T, N, F, dtype, batch_major):
    """A NaN-filled (T, N, F) output, so anything left unwritten shows."""
    return _seq(np.full((T, N, F), np.nan, dtype=dtype), batch_major)


def _mat(a, transposed):
    """A copy of the (r, c) matrix, as a transposed view of a C array if asked."""
    return np.ascontiguousarray(a.T).T if transposed else np.ascontiguousarray(a)


def run_kernel(cell, inp, up, *, reverse=False, batch_sizes=None, batch_major=False,
               transposed=False, preset=None, once=False, reset_after=True):
    """Forward and backward through a kernel; every result as a plain (T, N, ·) array.

    ``inp`` / ``up`` hold time-major (T, N, ·) sequences. Weight gradients start
    from ``preset`` (dict of arrays) when given: the kernel accumulates.
    """
    x = _seq(inp["x"], batch_major)
    T, N, D = x.shape
    H = inp["h0"].shape[1]
    G = GATES[cell]
    dt = x.dtype
    Wx, Wh = _mat(inp["Wx"], transposed), _mat(inp["Wh"], transposed)
    h = _empty_seq(T, N, H, dt, batch_major)
    dx = _empty_seq(T, N, D, dt, batch_major)
    dh = _seq(up["dh"], batch_major)
    dh0 = np.full((N, H), np.nan, dtype=dt)
    preset = preset or {}
    dWx = _mat(preset.get("dWx", np.zeros((D, G * H), dt)), transposed)
    dWh = _mat(preset.get("dWh", np.zeros((H, G * H), dt)), transposed)
    kw = dict(reverse=reverse, batch_sizes=batch_sizes)
    bkw = dict(kw, overwrite_saved=once)
    if cell == "gru":
        dbx = preset.get("dbx", np.zeros(G * H, dt)).copy()
        dbh = preset.get("dbh", np.zeros(G * H, dt)).copy()
        saved = kgru.forward(x, inp["h0"], Wx, Wh, inp["bx"], inp["bh"], h, **kw,
                             reset_after=reset_after)
        kgru.backward(dh, up["dhn"], x, inp["h0"], Wx, Wh, inp["bh"], h, saved,
                      dx, dh0, dWx, dWh, dbx, dbh, **bkw, reset_after=reset_after)
        out = dict(h=h, dx=dx, dh0=dh0, dWx=dWx, dWh=dWh, dbx=dbx, dbh=dbh)
    else:
        c = _empty_seq(T, N, H, dt, batch_major)
        dc0 = np.full((N, H), np.nan, dtype=dt)
        db = preset.get("db", np.zeros(G * H, dt)).copy()
        saved = klstm.forward(x, inp["h0"], inp["c0"], Wx, Wh, inp["b"], h, c, **kw)
        klstm.backward(dh, up["dhn"], up["dcn"], x, inp["h0"], inp["c0"], Wx, Wh, h, c,
                       saved, dx, dh0, dc0, dWx, dWh, db, **bkw)
        out = dict(h=h, c=c, dx=dx, dh0=dh0, dc0=dc0, dWx=dWx, dWh=dWh, db=db)
    return {k: np.array(v) for k, v in out.items()}


def reference_per_row(cell, inp, up, lengths, reverse, reset_after=True):
    """The reference run per sequence on its valid prefix (or reversed), time-major results.

    Row n covers steps 0..L_n-1; in the reverse direction it runs them from
    L_n-1 down to 0. Padded outputs and input gradients are zeros. ``hn`` /
    ``cn`` are each row's final state (h0 / c0 when L_n = 0).
    """
    T, N, D = inp["x"].shape
    H = inp["h0"].shape[1]
    G = GATES[cell]
    out = {k: np.zeros((T, N, F)) for k, F in (("h", H), ("c", H), ("dx", D))}
    out.update(hn=np.array(inp["h0"], dtype=np.float64), dh0=np.zeros((N, H)))
    out.update(cn=np.array(inp.get("c0", inp["h0"]), dtype=np.float64), dc0=np.zeros((N, H)))
    out.update(dWx=np.zeros((D, G * H)), dWh=np.zeros((H, G * H)))
    out.update({k: np.zeros(G * H) for k in ("dbx", "dbh", "db")})
    for n in range(N):
        L = int(lengths[n])
        steps = np.arange(L)[::-1] if reverse else np.arange(L)
        row = {k: np.asarray(v, dtype=np.float64) for k, v in inp.items()}
        row["x"] = row["x"][steps, n][None]          # (1, L, D)
        row["h0"] = row["h0"][n:n + 1]
        dh = np.asarray(up["dh"][steps, n][None], dtype=np.float64)
        dhn = np.asarray(up["dhn"][n:n + 1], dtype=np.float64)
        if cell == "gru":
            h, cache = ref.gru_forward(**row, reset_after=reset_after)
            grads = dict(zip(GRAD_NAMES["gru"], ref.gru_backward(dh, cache, dhn=dhn)))
        else:
            row["c0"] = row["c0"][n:n + 1]
            h, c, cache = ref.lstm_forward(**row)
            dcn = np.asarray(up["dcn"][n:n + 1], dtype=np.float64)
            grads = dict(zip(GRAD_NAMES["lstm"],
                             ref.lstm_backward(dh, cache, dhn=dhn, dcn=dcn)))
            out["c"][steps, n] = c[0]
            out["dc0"][n] = grads["dc0"][0]
            if L:
                out["cn"][n] = c[0, -1]
        out["h"][steps, n] = h[0]
        out["dx"][steps, n] = grads["dx"][0]
        out["dh0"][n] = grads["dh0"][0]
        if L:
            out["hn"][n] = h[0, -1]
        for k in ("dWx", "dWh", "dbx", "dbh", "db"):
            if k in grads:
                out[k] += grads[k]
    return out


def _time_major(cell, rng, N, T, D, H, dtype=np.float64):
    inp, up = draw_sequence(cell, rng, N, T, D, H, dtype)
    inp["x"] = np.ascontiguousarray(inp["x"].transpose(1, 0, 2))
    up["dh"] = np.ascontiguousarray(up["dh"].transpose(1, 0, 2))
    return inp, up


def _batch_sizes(lengths, T):
    return np.array([(lengths > t).sum() for t in range(T)], dtype=np.intp)


def _gather_final(h, lengths, reverse, h0):
    """Each row's final state from the (T, N, H) outputs: at t = L-1 (t = 0 reverse)."""
    out = np.array(h0, dtype=np.float64)
    for n, L in enumerate(lengths):
        if L:
            out[n] = h[0 if reverse else L - 1, n]
    return out


LENGTH_CASES = {
    "full": None,
    "ragged": [6, 6, 4, 2, 1],
    "with-empty": [5, 3, 3, 0, 0],
}


#: a batch on the unpacked panel kernel (4 < rows <= 32; 3H, 4H >= 32 columns; H = 11
#: leaves column tails, 13 rows a row tail), lengths shrinking to the small-M kernel;
#: "panel-T" passes the weights as transposed views (PyTorch's layout, as the models do);
#: "panel-H40": H >= 32, so backward's products (H columns) use the panel kernel too,
#: through one row-major copy of Wh^T (the weights here are not transposed views)
PANEL_LENGTHS = [6, 6, 6, 6, 6, 5, 5, 5, 4, 3, 2, 2, 0]


@pytest.mark.parametrize("size", ["small", "panel", "panel-T", "panel-H40"])
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("lengths", list(LENGTH_CASES), ids=list(LENGTH_CASES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", GATED)
def test_kernel_reverse_and_lengths(cell, reverse, lengths, batch_major, size, rng):
    N, T, D, H = {"small": (5, 6, 3, 4), "panel-H40": (13, 6, 5, 40)}.get(size, (13, 6, 5, 11))
    inp, up = _time_major(cell, rng, N, T, D, H)
    lens = np.full(N, T) if LENGTH_CASES[lengths] is None else np.array(
        LENGTH_CASES[lengths] if size == "small" else PANEL_LENGTHS)
    bs = None if LENGTH_CASES[lengths] is None else _batch_sizes(lens, T)
    if bs is not None:
        # padded upstream gradients must never be read
        for n, L in enumerate(lens):
            up["dh"][L:, n] = np.nan
    got = run_kernel(cell, inp, up, reverse=reverse, batch_sizes=bs, batch_major=batch_major,
                     transposed=size == "panel-T")
    want = reference_per_row(cell, inp, up, lens, reverse)
    for name in got:
        assert_close(got[name], want[name], name)
    # the final states as the layer above gathers them, at each row's last step
    assert_close(_gather_final(got["h"], lens, reverse, inp["h0"]), want["hn"], "h_n")
    if cell == "lstm":
        assert_close(_gather_final(got["c"], lens, reverse, inp["c0"]), want["cn"], "c_n")
    # padding is written as exact zeros
    for n, L in enumerate(lens):
        for name in ("h", "c", "dx"):
            if name in got:
                assert np.all(got[name][L:, n] == 0), name


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch_major", [False, True], ids=["time-major", "batch-major"])
@pytest.mark.parametrize("lengths", list(LENGTH_CASES), ids=list(LENGTH_CASES))
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", GATED)
def test_kernel_overwrite_saved_gives_the_same_gradients(cell, reverse, lengths, batch_major,
                                                         dtype, rng):
    """backward(overwrite_saved=True) (the models' and cells' mode: the gradient
    workspace is the saved gates) gives bitwise the results of the default mode."""
    N, T, D, H = 5, 6, 3, 4
    inp, up = _time_major(cell, rng, N, T, D, H, dtype)
    lens = None if LENGTH_CASES[lengths] is None else np.array(LENGTH_CASES[lengths])
    bs = None if lens is None else _batch_sizes(lens, T)
    kw = dict(reverse=reverse, batch_sizes=bs, batch_major=batch_major)
    want = run_kernel(cell, inp, up, **kw)
    got = run_kernel(cell, inp, up, once=True, **kw)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _padded_rows(a):
    """The values of a (T, N, F) array with a row stride > F (a valid, non-contiguous layout)."""
    b = np.empty(a.shape[:2] + (a.shape[2] + 1,), a.dtype)[..., :-1]
    b[...] = a
    return b


@pytest.mark.parametrize("cell", GATED)
def test_kernel_overwrite_saved_reuses_and_checks_the_saved_arrays(cell, rng):
    N, T, D, H = 3, 4, 2, 5
    inp, up = _time_major(cell, rng, N, T, D, H)
    x, h0, dt = inp["x"], inp["h0"], np.float64
    h = np.empty((T, N, H))
    dx, dh0 = np.empty((T, N, D)), np.empty((N, H))
    G = GATES[cell]
    dWx, dWh = np.zeros((D, G * H)), np.zeros((H, G * H))

    def run(saved_fn, **kw):
        if cell == "gru":
            saved = kgru.forward(x, h0, inp["Wx"], inp["Wh"], inp["bx"], inp["bh"], h)
            saved = saved_fn(saved)
            kgru.backward(up["dh"], up["dhn"], x, h0, inp["Wx"], inp["Wh"], inp["bh"], h,
                          saved, dx, dh0, dWx, dWh, np.zeros(G * H), np.zeros(G * H), **kw)
        else:
            c = np.empty((T, N, H))
            saved = klstm.forward(x, h0, inp["c0"], inp["Wx"], inp["Wh"], inp["b"], h, c)
            saved = saved_fn(saved)
            klstm.backward(up["dh"], up["dhn"], up["dcn"], x, h0, inp["c0"], inp["Wx"],
                           inp["Wh"], h, c, saved, dx, dh0, np.empty((N, H)), dWx, dWh,
                           np.zeros(G * H), **kw)
        return saved

    kept = run(lambda s: s)
    before = [a.copy() for a in kept]
    run(lambda s: kept, overwrite_saved=False)      # the default leaves saved alone
    for a, b in zip(kept, before):
        np.testing.assert_array_equal(a, b)
    used = run(lambda s: s, overwrite_saved=True)   # the workspace really is saved
    assert not np.array_equal(used[0], before[0])

    def read_only(s):
        for a in s:
            a.flags.writeable = False
        return s
    with pytest.raises(ValueError, match="saved.gates: overwrite_saved needs the writable"):
        run(read_only, overwrite_saved=True)
    with pytest.raises(ValueError, match="saved.gates: overwrite_saved needs"):
        run(lambda s: type(s)(*[_padded_rows(a) for a in s]), overwrite_saved=True)


@pytest.mark.parametrize("cell", GATED)
def test_kernel_lengths_float32(cell, rng):
    N, T, D, H = 4, 5, 3, 6
    inp, up = _time_major(cell, rng, N, T, D, H, np.float32)
    lens = np.array([5, 4, 2, 1])
    for reverse in (False, True):
        got = run_kernel(cell, inp, up, reverse=reverse, batch_sizes=_batch_sizes(lens, T),
                         batch_major=True)
        want = reference_per_row(cell, inp, up, lens, reverse)
        for name in got:
            assert got[name].dtype == np.float32, name
            assert_close(got[name], want[name], name)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", GATED)
def test_kernel_layouts_and_transposed_weights_agree(cell, reverse, rng):
    N, T, D, H = 3, 5, 4, 3
    inp, up = _time_major(cell, rng, N, T, D, H)
    bs = _batch_sizes(np.array([5, 3, 2]), T)
    base = run_kernel(cell, inp, up, reverse=reverse, batch_sizes=bs)
    for batch_major in (False, True):
        for transposed in (False, True):
            got = run_kernel(cell, inp, up, reverse=reverse, batch_sizes=bs,
                             batch_major=batch_major, transposed=transposed)
            for name in base:
                assert_close_f64(got[name], base[name], atol=1e-13,
                                 name=f"{name} bm={batch_major} tr={transposed}")


@pytest.mark.parametrize("cell", GATED)
def test_kernel_accumulates_weight_gradients(cell, rng):
    N, T, D, H = 3, 4, 2, 3
    inp, up = _time_major(cell, rng, N, T, D, H)
    G = GATES[cell]
    names = ("dWx", "dWh", "dbx", "dbh") if cell == "gru" else ("dWx", "dWh", "db")
    shapes = {"dWx": (D, G * H), "dWh": (H, G * H), "dbx": (G * H,), "dbh": (G * H,),
              "db": (G * H,)}
    preset = {k: rng.standard_normal(shapes[k]) for k in names}
    fresh = run_kernel(cell, inp, up, transposed=True)
    acc = run_kernel(cell, inp, up, transposed=True, preset=preset)
    for k in names:
        assert_close_f64(acc[k], preset[k] + fresh[k], name=k)


@pytest.mark.parametrize("cell", GATED)
def test_kernel_read_only_inputs_unmodified_and_saved_reusable(cell, rng):
    N, T, D, H = 3, 4, 5, 2
    inp, up = _time_major(cell, rng, N, T, D, H)
    want = run_kernel(cell, inp, up)
    before = {k: v.copy() for k, v in {**inp, **up}.items()}
    for v in {**inp, **up}.values():
        v.flags.writeable = False
    x = inp["x"]
    h = np.empty((T, N, H))
    dx, dh0 = np.empty((T, N, D)), np.empty((N, H))
    G = GATES[cell]
    if cell == "gru":
        args = (inp["h0"], inp["Wx"], inp["Wh"], inp["bx"], inp["bh"])
        saved = kgru.forward(x, *args, h)
        for a in saved:
            a.flags.writeable = False
        for _ in range(2):   # backward twice from the same saved arrays
            grads = [np.zeros((D, G * H)), np.zeros((H, G * H)), np.zeros(G * H),
                     np.zeros(G * H)]
            h.flags.writeable = False
            kgru.backward(up["dh"], up["dhn"], x, inp["h0"], inp["Wx"], inp["Wh"], inp["bh"],
                          h, saved, dx, dh0, *grads)
            got = dict(zip(("dWx", "dWh", "dbx", "dbh"), grads), h=h, dx=dx, dh0=dh0)
            for k, v in got.items():
                assert_close_f64(v, want[k], name=k)
    else:
        c = np.empty((T, N, H))
        args = (inp["h0"], inp["c0"], inp["Wx"], inp["Wh"], inp["b"])
        saved = klstm.forward(x, *args, h, c)
        saved.gates.flags.writeable = False
        h.flags.writeable = False
        c.flags.writeable = False
        for _ in range(2):
            dc0 = np.empty((N, H))
            grads = [np.zeros((D, G * H)), np.zeros((H, G * H)), np.zeros(G * H)]
            klstm.backward(up["dh"], up["dhn"], up["dcn"], x, inp["h0"], inp["c0"],
                           inp["Wx"], inp["Wh"], h, c, saved, dx, dh0, dc0, *grads)
            got = dict(zip(("dWx", "dWh", "db"), grads), h=h, c=c, dx=dx, dh0=dh0, dc0=dc0)
            for k, v in got.items():
                assert_close_f64(v, want[k], name=k)
    for k, v in before.items():
        assert np.array_equal({**inp, **up}[k], v), f"{k} was modified"


@pytest.mark.parametrize("cell", GATED)
@pytest.mark.parametrize("N, T, D, H", [(2, 0, 3, 4), (2, 3, 0, 4)], ids=["T0", "D0"])
def test_kernel_empty_dimensions(cell, N, T, D, H, rng):
    inp, up = _time_major(cell, rng, N, T, D, H)
    got = run_kernel(cell, inp, up)
    if T == 0:
        assert_close_f64(got["dh0"], up["dhn"], name="dh0")
        if cell == "lstm":
            assert_close_f64(got["dc0"], up["dcn"], name="dc0")
        for k in ("dWx", "dWh", "dbx", "dbh", "db"):
            if k in got:
                assert np.all(got[k] == 0), k
    else:
        want = reference_per_row(cell, inp, up, np.full(N, T), False)
        for k in got:
            assert_close(got[k], want[k], k)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------
def _kernel_args(cell, rng, N=2, T=3, D=4, H=5):
    """Valid keyword arguments of the kernel forward and backward (time-major)."""
    inp, up = _time_major(cell, rng, N, T, D, H)
    G = GATES[cell]
    fwd = dict(x=inp["x"], h0=inp["h0"], Wx=inp["Wx"], Wh=inp["Wh"], h=np.empty((T, N, H)))
    if cell == "gru":
        fwd.update(bx=inp["bx"], bh=inp["bh"])
        saved = kgru.forward(**fwd)
        bwd = dict(dh=up["dh"], dhn=up["dhn"], x=inp["x"], h0=inp["h0"], Wx=inp["Wx"],
                   Wh=inp["Wh"], bh=inp["bh"], h=fwd["h"], saved=saved,
                   dx=np.empty((T, N, D)), dh0=np.empty((N, H)), dWx=np.zeros((D, G * H)),
                   dWh=np.zeros((H, G * H)), dbx=np.zeros(G * H), dbh=np.zeros(G * H))
    else:
        fwd.update(c0=inp["c0"], b=inp["b"], c=np.empty((T, N, H)))
        saved = klstm.forward(**fwd)
        bwd = dict(dh=up["dh"], dhn=up["dhn"], dcn=up["dcn"], x=inp["x"], h0=inp["h0"],
                   c0=inp["c0"], Wx=inp["Wx"], Wh=inp["Wh"], h=fwd["h"], c=fwd["c"],
                   saved=saved, dx=np.empty((T, N, D)), dh0=np.empty((N, H)),
                   dc0=np.empty((N, H)), dWx=np.zeros((D, G * H)),
                   dWh=np.zeros((H, G * H)), db=np.zeros(G * H))
    return fwd, bwd


FWD_ARGS = {"gru": ["h0", "Wx", "Wh", "bx", "bh", "h"],
            "lstm": ["h0", "c0", "Wx", "Wh", "b", "h", "c"]}
BWD_ARGS = {"gru": ["dh", "dhn", "h0", "Wx", "Wh", "bh", "h", "dx", "dh0", "dWx", "dWh",
                    "dbx", "dbh"],
            "lstm": ["dh", "dhn", "dcn", "h0", "c0", "Wx", "Wh", "h", "c", "dx", "dh0",
                     "dc0", "dWx", "dWh", "db"]}
KERNELS = {"gru": kgru, "lstm": klstm}


@pytest.mark.parametrize("cell", GATED)
def test_kernel_bad_shapes_name_the_argument(cell, rng):
    fwd, bwd = _kernel_args(cell, rng)
    k = KERNELS[cell]
    for name in FWD_ARGS[cell]:
        with pytest.raises(ValueError, match=rf"^{name}: expected"):
            k.forward(**dict(fwd, **{name: _wrong(fwd[name])}))
    for name in BWD_ARGS[cell]:
        with pytest.raises(ValueError, match=rf"^{name}: expected"):
            k.backward(**dict(bwd, **{name: _wrong(bwd[name])}))
    # saved: a wrong object, or arrays of the wrong shape
    with pytest.raises(ValueError, match="^saved"):
        k.backward(**dict(bwd, saved=None))
    bad = tuple(_wrong(a) for a in bwd["saved"])
    with pytest.raises(ValueError, match=r"^saved\.gates: expected"):
        k.backward(**dict(bwd, saved=bad))
    with pytest.raises(ValueError, match="^batch_sizes"):
        k.forward(**fwd, batch_sizes=[2, 2])
    with pytest.raises(ValueError, match="^batch_sizes"):
        k.forward(**fwd, batch_sizes=[1, 2, 2])    # increasing
    with pytest.raises(ValueError, match="^batch_sizes"):
        k.forward(**fwd, batch_sizes=[3, 2, 2])    # > N


@pytest.mark.parametrize("cell", GATED)
def test_kernel_bad_layouts(cell, rng):
    fwd, bwd = _kernel_args(cell, rng, N=2, T=3)
    k = KERNELS[cell]
    T, N, H = fwd["h"].shape
    h_bm = _empty_seq(T, N, H, np.float64, batch_major=True)
    with pytest.raises(ValueError, match="same layout"):
        k.forward(**dict(fwd, h=h_bm))
    with pytest.raises(ValueError, match="^h: layout"):
        k.forward(**dict(fwd, h=np.empty((T, N + 1, H))[:, :N]))   # gaps between steps
    with pytest.raises(ValueError, match="^h: the feature axis"):
        k.forward(**dict(fwd, h=np.empty((T, N, H, 2))[..., 0]))
    with pytest.raises(ValueError, match="^Wh: needs"):
        Wh = fwd["Wh"]
        k.forward(**dict(fwd, Wh=np.zeros((Wh.shape[0], 2 * Wh.shape[1]))[:, ::2]))
    with pytest.raises(ValueError, match="^h0: expected a C-contiguous"):
        k.forward(**dict(fwd, h0=np.asfortranarray(fwd["h0"])))
    with pytest.raises(ValueError, match="same layout"):
        k.backward(**dict(bwd, dx=_empty_seq(T, N, bwd["dx"].shape[2], np.float64, True)))


def _wrong(a):
    """The same kind of array with one axis one longer."""
    shape = list(a.shape)
    shape[-1] += 1
    return np.zeros(shape, dtype=a.dtype)


def test_kernel_rejects_bad_batch_sizes(rng):
    T, N, D, H = 3, 2, 2, 2
    x = np.zeros((T, N, D))
    with pytest.raises(ValueError, match="batch_sizes"):
        K.forward(x, np.zeros((N, H)), np.zeros((D, H)), np.zeros((H, H)), np.zeros(H),
                  np.zeros((T, N, H)), False, False, np.array([1, 2, 2]))
    with pytest.raises(ValueError, match="batch_sizes"):
        K.forward(x, np.zeros((N, H)), np.zeros((D, H)), np.zeros((H, H)), np.zeros(H),
                  np.zeros((T, N, H)), False, False, np.array([3, 2, 2]))
