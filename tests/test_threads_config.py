"""BLAS loading (_config: kernel selection, thread timeout) and row-split time loops."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import rnncore
from rnncore._runtime import blas as _config, threads as _threads
from rnncore._kernels import rnn as K

from conftest import HAVE_PACKED, assert_close_f64, with_and_without_row_split

PROBE = r"""
import json, os, sys
{pre}
import rnncore
from rnncore._runtime import blas as _config, threads as _threads
env_after = {{k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT")}}
try:
    rnncore.set_row_split(True)
    forced = "ok"
except RuntimeError as e:
    forced = str(e)
print(json.dumps(dict(timeout=_config._TIMEOUT_STATE, coretype=_config._CORETYPE_STATE,
                      split=_threads.row_split_enabled(), env_after=env_after, forced=forced,
                      numpy=_config._NUMPY_STATE, numpy_spins=_config.numpy_blas_spins(),
                      numpy_threads=max([i.get("num_threads") or 1 for i in
                                         __import__("threadpoolctl").threadpool_info()
                                         if i.get("internal_api") == "openblas"
                                         and "openblas64_" in i["filepath"]], default=0)
                      if __import__("importlib.util").util.find_spec("threadpoolctl") else 0,
                      numpy_spinning={spinning})))
"""

# NumPy's OpenBLAS worker threads still running (spinning) 20 ms after a threaded product:
# state R in /proc/self/task/<tid>/stat (None: not measurable here)
SPINNING = r"""(lambda: (
    __import__("time").sleep(0.2),
    [__import__("numpy").ones((512, 512), "f4") @ __import__("numpy").ones((512, 512), "f4")
     for _ in range(3)],
    __import__("time").sleep(0.02),
    sum(open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()[0] == "R"
        for t in __import__("os").listdir("/proc/self/task")
        if int(t) != __import__("threading").get_native_id()))[-1]
    if __import__("os").path.exists("/proc/self/task") else None)()"""


def probe(pre="", spinning=False, **env):
    """Import rnncore in a fresh interpreter (after `pre`) and report the BLAS load state."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT", "RNNCORE_NO_CORETYPE",
                      "RNNCORE_NO_THREAD_TIMEOUT")}
    e.update(env)
    code = PROBE.format(pre=pre, spinning=SPINNING if spinning else "None")
    out = subprocess.run([sys.executable, "-c", code], env=e,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_short_thread_timeout_applied_even_after_numpy_and_environment_restored():
    # NumPy's own OpenBLAS copy (libscipy_openblas64_) being loaded first must not
    # count as SciPy's BLAS being loaded (it did, which disabled both settings).
    r = probe(pre="import numpy")
    assert r["timeout"]["short"] is True, r
    assert "applied" in r["timeout"]["reason"]
    assert r["split"] is True and r["forced"] == "ok"
    assert r["env_after"] == {"OPENBLAS_CORETYPE": None, "OPENBLAS_THREAD_TIMEOUT": None}
    assert "loaded before" not in r["coretype"]["reason"], r


def test_numpy_blas_timeout_reported_and_applied_when_rnncore_comes_first():
    pytest.importorskip("threadpoolctl")
    first = probe(spinning=True)           # rnncore imports NumPy inside its window
    assert first["numpy"]["short"] is True and "imported by rnncore" in \
        first["numpy"]["reason"], first
    assert first["numpy_spins"] is False
    after = probe(pre="import numpy", spinning=True)   # NumPy's BLAS: the default timeout
    assert after["numpy"]["short"] is False and "before rnncore" in after["numpy"]["reason"]
    threads = after["numpy_threads"]
    assert after["numpy_spins"] is (threads > 1 and after["split"])
    user = probe(pre="import numpy", OPENBLAS_THREAD_TIMEOUT="4")
    assert user["numpy"]["short"] is True and "set by the user" in user["numpy"]["reason"]
    assert user["numpy_spins"] is False
    out = probe(RNNCORE_NO_THREAD_TIMEOUT="1")     # opted out: not rnncore's to judge
    assert out["numpy"]["short"] is None and out["numpy_spins"] is False
    if threads > 1 and first["numpy_spinning"] is not None:
        # what the report is about: NumPy's workers asleep right after a product when
        # rnncore came first, still running 20 ms later when NumPy came first
        assert first["numpy_spinning"] == 0, first
        assert after["numpy_spinning"] >= 1, after


def test_show_config_warns_when_numpy_blas_spins(monkeypatch, capsys):
    from rnncore._runtime import config
    monkeypatch.setattr(config, "numpy_blas_spins", lambda: True)
    monkeypatch.setattr(_threads, "row_split_enabled", lambda: True)
    cfg = rnncore.show_config()
    assert any("OPENBLAS_THREAD_TIMEOUT=4" in w and "NumPy" in w for w in cfg["warnings"])
    assert "numpy_blas_thread_timeout" in cfg
    monkeypatch.setattr(config, "numpy_blas_spins", lambda: False)
    assert not any("NumPy" in w for w in rnncore.show_config()["warnings"])
    capsys.readouterr()


def test_blas_loaded_before_rnncore_keeps_loops_on_one_thread():
    r = probe(pre="import scipy.linalg")
    assert r["timeout"]["short"] is False
    assert "loaded before rnncore" in r["timeout"]["reason"]
    assert r["split"] is False
    assert "OPENBLAS_THREAD_TIMEOUT" in r["forced"]     # set_row_split(True) refuses


@pytest.mark.parametrize("value, short", [("4", True), ("12", True), ("20", False),
                                          ("x", False)])
def test_user_thread_timeout_wins(value, short):
    r = probe(OPENBLAS_THREAD_TIMEOUT=value)
    assert r["timeout"]["short"] is short
    assert "set by the user" in r["timeout"]["reason"]
    assert r["env_after"]["OPENBLAS_THREAD_TIMEOUT"] == value   # untouched


def test_opt_outs():
    r = probe(RNNCORE_NO_THREAD_TIMEOUT="1", RNNCORE_NO_CORETYPE="1")
    assert r["timeout"]["short"] is False and "RNNCORE_NO_THREAD_TIMEOUT" in \
        r["timeout"]["reason"]
    assert r["coretype"]["applied"] is False and "RNNCORE_NO_CORETYPE" in \
        r["coretype"]["reason"]
    r = probe(OPENBLAS_CORETYPE="Haswell")
    assert r["coretype"]["applied"] is False and "set by the user" in r["coretype"]["reason"]
    assert r["env_after"]["OPENBLAS_CORETYPE"] == "Haswell"


def test_show_config_reports_timeout_and_split(capsys):
    cfg = rnncore.show_config()
    assert "blas_thread_timeout" in cfg and "loop_row_split" in cfg
    assert "blas_thread_timeout" in capsys.readouterr().out


def test_row_threads_policy():
    if not _threads.row_split_enabled():
        pytest.skip("row split not allowed in this process (SciPy's BLAS loaded first)")
    from threadpoolctl import threadpool_limits
    # rows are split only when the threads' products go to the packed kernel
    # (rc_gemm_packed.h; T >= 2), which sums each element alike whatever rows a call
    # gets; without it (a CPU without AVX2, the forced-baseline CI build) never
    split = 2 if HAVE_PACKED else 1
    with threadpool_limits(2, user_api="blas"):
        assert K._row_threads(32, 2_000_000, 100) == split
        assert K._row_threads(7, 2_000_000, 100) == 1        # too few rows (N // 4 < 2)
        assert K._row_threads(32, 1000, 100) == 1            # too little work in all
        # per-step GEMM large: still split on the packed kernel, else BLAS's own
        # threads take each step
        assert K._row_threads(64, 64_000_000, 50) == split
        assert K._row_threads(64, 64_000_000, 1) == 1
        # a loop that would not pack (the test hook turns packing off) keeps its rows
        # on one thread: its kernels (small-M, panel, BLAS) depend on a call's rows
        K._set_packing(False)
        try:
            assert K._row_threads(32, 2_000_000, 100) == 1
        finally:
            K._set_packing(True)
    with threadpool_limits(1, user_api="blas"):
        assert K._row_threads(32, 2_000_000, 100) == 1       # the user's thread limit holds
    rnncore.set_row_split(False)
    try:
        with threadpool_limits(2, user_api="blas"):
            assert K._row_threads(32, 2_000_000, 100) == 1
    finally:
        rnncore.set_row_split(True)


def _run_model(cls, x, lengths, dout_seed, bidirectional):
    m = cls(x.shape[2], 40, num_layers=2, bidirectional=bidirectional, batch_first=True,
            dtype=np.float64, seed=3)
    out, st = m(x, lengths=lengths)
    rng = np.random.default_rng(dout_seed)
    dx, dst = m.backward(rng.standard_normal(out.shape))
    return out, st, dx, dst, {k: v.copy() for k, v in m.grads.items()}


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("cls", [rnncore.RNN, rnncore.GRU, rnncore.LSTM])
def test_row_split_loops_equal_one_thread(cls, with_lengths, bidirectional):
    """Forward and backward with the batch rows split over 2 threads (interleaved rows,
    a sorted variable-length batch, both directions: the directions run one after the
    other here) equal the single-thread loops (float64)."""
    if not _threads.row_split_enabled():
        pytest.skip("row split not allowed in this process (SciPy's BLAS loaded first)")
    from threadpoolctl import threadpool_limits
    N, T, D = 23, 60, 9
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, D))
    lengths = rng.integers(1, T + 1, N) if with_lengths else None
    parallel = _threads.parallel_directions_enabled()
    rnncore.set_parallel_directions(False)
    try:
        with threadpool_limits(2, user_api="blas"):
            # the split really happens (on the packed kernel; without one, one thread)
            assert K._row_threads(N, N * 40 * 40, T) == (2 if HAVE_PACKED else 1)
            split, one = with_and_without_row_split(
                lambda: _run_model(cls, x, lengths, 1, bidirectional))
    finally:
        rnncore.set_parallel_directions(parallel)
    for a, b, name in zip(split, one, ["out", "state", "dx", "dstate", "grads"]):
        if isinstance(a, dict):
            for k in a:
                assert_close_f64(a[k], b[k], name=k, atol=1e-11)
        else:
            for u, v in zip(a if isinstance(a, (list, tuple)) else [a],
                            b if isinstance(b, (list, tuple)) else [b]):
                assert_close_f64(u, v, name=name, atol=1e-11)


@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm", "lnlstm", "lngru"])
def test_unpacked_loops_do_not_depend_on_the_row_split(cell, with_lengths):
    """With the weight not packed (the test hook; on a CPU without AVX2 always), the
    per-step kernels are chosen by a call's row count (small-M, panel, BLAS), so the
    rows must stay on one thread: float64 results bitwise equal with the row split
    allowed and not. (Splitting them gave 2e-10 differences for the layer-normalised
    LSTM with lengths, found on the forced-baseline build.)"""
    if not _threads.row_split_enabled():
        pytest.skip("row split not allowed in this process (SciPy's BLAS loaded first)")
    import importlib
    from threadpoolctl import threadpool_limits
    kern = importlib.import_module(f"rnncore._kernels.{cell}")
    cls = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM,
           "lnlstm": rnncore.LSTM, "lngru": rnncore.GRU}[cell]
    extra = {"layer_norm": True} if cell.startswith("ln") else {}
    N, T, D, H = 23, 60, 9, 40
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, D))
    lengths = rng.integers(1, T + 1, N) if with_lengths else None
    dout = rng.standard_normal((N, T, H))

    def run():
        m = cls(D, H, batch_first=True, dtype=np.float64, seed=5, **extra)
        out, _ = m(x, lengths=lengths)
        dx, _ = m.backward(dout)
        return [out, dx] + [g.copy() for g in m.grads.values()]

    kern._set_packing(False)
    try:
        with threadpool_limits(2, user_api="blas"):
            # unpacked, this kernel's loops stay on one thread (rnn's _row_threads
            # reads its own module's packing switch)
            if cell == "rnn":
                assert K._row_threads(N, N * H * H, T) == 1
            split_allowed, one = with_and_without_row_split(run)
    finally:
        kern._set_packing(True)
    for a, b in zip(split_allowed, one):
        assert np.array_equal(a, b)
