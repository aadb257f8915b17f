"""rnncore.dask_inference.predict equals the in-process model(x, train=False), exactly.

Local schedulers (threaded for arrays, processes for bags) and a
dask.distributed LocalCluster(n_workers=2, threads_per_worker=1,
processes=True). Skipped cleanly without dask / distributed.
"""
from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="dask[array] is not installed (pip install "
                         "'dask[array]' distributed)")
db = pytest.importorskip("dask.bag", reason="dask.bag is not installed")

from rnncore import GRU, LSTM, RNN  # noqa: E402
from rnncore.dask_inference import ModelSpec, predict, run_batch  # noqa: E402

NSEQ, T, D = 37, 6, 3


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((NSEQ, T, D))
    lens = rng.integers(1, T + 1, NSEQ)
    return x, lens


def assert_same(actual, expected):
    """Equal to rounding. The per-step products of a mini-batch of <= 4 rows run in
    rnncore's small-batch kernel, which may sum in another order than BLAS does for
    a larger batch; bit-for-bit equality is only promised for the same batches."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    tol = 1e-12 if actual.dtype == np.float64 else 2e-6
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)


def reference(model, x, lengths=None, output="last"):
    """In-process model(x, train=False), in the shapes predict returns."""
    xin = x if model.batch_first else np.swapaxes(x, 0, 1)
    out, state = model(xin, lengths=lengths, train=False)
    states = state if isinstance(state, tuple) else (state,)
    if output == "outputs":
        return out if model.batch_first else np.swapaxes(out, 0, 1)
    if output == "last":
        return np.concatenate(list(states[0][-model.num_directions:]), axis=-1)
    return np.concatenate([np.concatenate(list(s), axis=-1) for s in states], axis=-1)


MODELS = [
    lambda: LSTM(D, 5, num_layers=2, bidirectional=True, dtype=np.float64, seed=0),
    lambda: GRU(D, 4, batch_first=True, dtype=np.float64, seed=1),
    lambda: RNN(D, 4, num_layers=2, batch_first=True, dtype=np.float64, seed=2),
]


@pytest.mark.parametrize("make", MODELS, ids=["lstm-bi-2l", "gru", "rnn-2l"])
@pytest.mark.parametrize("output", ["last", "outputs", "state"])
def test_array_local_scheduler_exact(make, output):
    model = make()
    x, _ = data()
    X = da.from_array(x, chunks=(10, T, D))
    got = predict(model, X, batch_size=4, output=output)
    assert isinstance(got, da.Array)
    res = got.compute(scheduler="threads")
    assert_same(res, reference(model, x, output=output))
    assert res.dtype == np.float64


@pytest.mark.parametrize("make", MODELS, ids=["lstm-bi-2l", "gru", "rnn-2l"])
def test_array_bitwise_for_the_same_mini_batches(make):
    """Bit for bit the in-process results of the same mini-batches (blocks of 10
    rows, mini-batches of 4: rows 0-3, 4-7, 8-9 of each block)."""
    model = make()
    x, _ = data()
    res = predict(model, da.from_array(x, chunks=(10, T, D)), batch_size=4,
                  output="outputs").compute(scheduler="threads")
    starts = [b + i for b in range(0, len(x), 10) for i in range(0, min(10, len(x) - b), 4)]
    want = np.concatenate([reference(model, x[s:min(s + 4, (s // 10) * 10 + 10)],
                                     output="outputs") for s in starts])
    np.testing.assert_array_equal(res, want)


def test_array_with_lengths_and_odd_chunks():
    model = LSTM(D, 5, batch_first=True, dtype=np.float64, seed=3)
    x, lens = data(1)
    x[np.arange(T)[None, :] >= lens[:, None]] = 0.0  # zero padding
    X = da.from_array(x, chunks=((5, 20, 12), (3, 3), (D,)))  # T split too: rechunked
    for output in ("last", "outputs"):
        res = predict(model, X, batch_size=7, output=output, lengths=lens).compute()
        assert_same(res, reference(model, x, lens, output))


def test_bag_variable_length_exact():
    """A bag of (T_i, D) sequences, default (process-based) bag scheduler."""
    model = GRU(D, 4, num_layers=2, dtype=np.float64, seed=4)
    x, lens = data(2)
    seqs = [x[i, :lens[i]].copy() for i in range(NSEQ)]
    bag = db.from_sequence(seqs, npartitions=4)
    last = predict(model, bag, batch_size=5).compute()
    assert_same(np.stack(last), reference(model, x, lens, "last"))
    outs = predict(model, bag, batch_size=5, output="outputs").compute(scheduler="sync")
    ref = reference(model, x, lens, "outputs")
    assert [o.shape[0] for o in outs] == lens.tolist()
    for i, o in enumerate(outs):
        assert_same(o, ref[i, :lens[i]])


def test_weights_snapshot_and_errors():
    model = RNN(D, 3, batch_first=True, dtype=np.float64, seed=5)
    x, _ = data()
    lazy = predict(model, da.from_array(x, chunks=(10, T, D)))
    before = reference(model, x)
    model.params["weight_hh_l0"][...] += 1.0  # later changes do not leak in
    assert_same(lazy.compute(), before)
    assert ModelSpec(model).token != ModelSpec(RNN(D, 3, batch_first=True,
                                                   dtype=np.float64, seed=5)).token
    with pytest.raises(ValueError):
        predict(model, da.zeros((4, 3)))
    with pytest.raises(ValueError):
        predict(model, da.zeros((4, 2, D)), output="nope")
    with pytest.raises(ValueError):
        predict(model, da.zeros((4, 2, D)), lengths=np.ones(3, int))
    assert run_batch(model, x[:2]).shape == (2, 3)


def test_threads_share_no_model():
    """Threaded scheduler with many blocks: each thread has its own cached copy
    (a model refuses concurrent forwards)."""
    model = LSTM(D, 6, batch_first=True, dtype=np.float64, seed=6)
    x = np.random.default_rng(7).standard_normal((400, T, D))
    res = predict(model, da.from_array(x, chunks=(10, T, D)), batch_size=3).compute(
        scheduler="threads", num_workers=4)
    assert_same(res, reference(model, x))


def test_local_cluster_two_processes():
    distributed = pytest.importorskip("distributed", reason="dask.distributed not installed")
    from rnncore.dask_inference import _process_stats

    model = LSTM(D, 5, num_layers=2, batch_first=True, dtype=np.float64, seed=8)
    x, lens = data(3)
    X = da.from_array(x, chunks=(6, T, D))  # 7 blocks over 2 workers
    seqs = [x[i, :lens[i]].copy() for i in range(NSEQ)]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        for broadcast in (True, False):  # scatter(broadcast=True) or a delayed node
            res = predict(model, X, batch_size=4, broadcast=broadcast).compute()
            assert_same(res, reference(model, x))
        out = predict(model, X, batch_size=4, output="outputs", lengths=lens).compute()
        assert_same(out, reference(model, x, lens, "outputs"))
        bag = db.from_sequence(seqs, npartitions=3)
        last = predict(model, bag, batch_size=5).compute()
        assert_same(np.stack(last), reference(model, x, lens, "last"))
        # the model was rebuilt at most once per worker process (one thread each)
        builds = client.run(_process_stats)
        assert len(builds) == 2
        assert all(1 <= s["builds"] <= 1 for s in builds.values()), builds
