"""bench/_harness/timing.py: the interleaved side-by-side measurement of the benchmark rows."""
import importlib.util
import pathlib

import pytest

_TIMING = pathlib.Path(__file__).resolve().parents[1] / "bench" / "_harness" / "timing.py"


@pytest.fixture(scope="module")
def timing():
    if not _TIMING.exists():
        pytest.skip("bench/_harness/timing.py is not in this tree")
    spec = importlib.util.spec_from_file_location("_bench_timing", _TIMING)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.SETTLE_S = 0.0   # one untimed call per block, no waiting (the calls take no time)
    return mod


class _Budget:
    seconds, min_repeats, max_repeats = 0.05, 3, 7


def test_repeats_alternate_between_contestants_in_blocks(timing):
    calls = []
    makers = {name: (lambda name=name: (lambda: calls.append(name))) for name in "abc"}
    out = timing.measure_interleaved(makers, _Budget, blocks=3)
    # the first call and the warm-up of each, then rounds: each contestant a block of
    # one untimed call and ceil(7 / 3) = 3 timed ones (the last block the 1 left), the
    # order rotating by round
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    rest = calls[6:]
    blocks = [rest[i:i + 4] for i in range(0, 24, 4)] + [rest[24:26], rest[26:28], rest[28:30]]
    assert len(rest) == 30
    assert [b[0] for b in blocks] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(set(b)) == 1 for b in blocks)
    for name in "abc":
        rec = out[name]
        assert rec["repeats"] == 7 and rec["min_ms"] <= rec["median_ms"]
        assert rec["first_ms"] >= 0


def test_a_slower_contestant_gets_fewer_repeats_and_failures_are_records(timing):
    import time
    calls = {"fast": 0, "slow": 0, "breaks": 0}

    def fn(name, sleep):
        def call():
            calls[name] += 1
            if name == "breaks" and calls[name] > 3:
                raise RuntimeError("fourth call")   # the first timed one
            time.sleep(sleep)
        return call

    def bad_maker():
        raise ValueError("cannot build")

    out = timing.measure_interleaved({"fast": lambda: fn("fast", 0), "slow": lambda: fn("slow", 0.02),
                                      "breaks": lambda: fn("breaks", 0), "bad": bad_maker},
                                     _Budget)
    assert out["fast"]["repeats"] == 7                 # its budget allows the cap
    assert out["slow"]["repeats"] == 3                 # 0.05 s / 0.02 s -> 2, raised to min_repeats
    assert out["breaks"] == {"error": "RuntimeError: fourth call"}
    assert out["bad"] == {"error": "ValueError: cannot build"}


def test_records_keep_the_mean_which_sees_the_stalls_the_median_ignores(timing):
    """One call in seven stalls (30 ms): the median stays at the fast calls, the mean
    (total time over calls) takes the stall in, in both measure functions; the
    tables' speed_ratio compares either."""
    import sys
    import time
    sys.path.insert(0, str(_TIMING.parents[1]))
    try:
        from _harness.table import speed_ratio
    finally:
        sys.path.remove(str(_TIMING.parents[1]))

    def stalling():
        n = [0]

        def call():
            n[0] += 1
            if n[0] == 5:    # a timed call (after the first call, the warm-up and, in
                             # measure_interleaved, the block's untimed settling call)
                time.sleep(0.03)
        return call

    for rec in (timing.measure(stalling(), _Budget),
                timing.measure_interleaved({"s": stalling}, _Budget, blocks=1)["s"]):
        assert rec["repeats"] == 7
        assert rec["median_ms"] < 5 and rec["min_ms"] <= rec["median_ms"]
        assert rec["mean_ms"] >= 30 / 7 and rec["mean_ms"] > 4 * rec["median_ms"]
    other = {"median_ms": 2.0, "mean_ms": 8.0}
    rc = {"median_ms": 1.0, "mean_ms": 2.0}
    assert speed_ratio(other, rc) == 2.0 and speed_ratio(other, rc, "mean_ms") == 4.0
    assert speed_ratio({"median_ms": 1.0}, rc, "mean_ms") is None


# -- the FMA peak of the header (bench/_harness/machine.py) ---------------------------------
@pytest.fixture
def machine():
    import sys
    bench = str(_TIMING.parents[1])
    if bench not in sys.path:
        sys.path.insert(0, bench)
    from _harness import machine
    return machine


def test_fma_peak_keeps_the_best_total_of_its_tries(machine, monkeypatch):
    """Each try runs every thread once; the try with the largest total wins (not the
    largest single thread), and the record says how it was taken."""
    from rnncore._kernels import simd
    rates = iter([50.0, 60.0,    # try 1: 110
                  100.0, 5.0,    # try 2: 105 (best thread, worse total)
                  70.0, 45.0])   # try 3: 115
    lock = __import__("threading").Lock()

    def fake(seconds):
        with lock:
            return next(rates)
    monkeypatch.setattr(simd, "_fma_rate", fake)
    pk = machine.fma_peak(2, seconds=0.01, repeats=3)
    assert pk["total_gflops"] == 115.0
    assert sorted(pk["per_thread_gflops"]) == [45.0, 70.0]
    assert pk["threads"] == 2 and pk["repeats"] == 3 and pk["seconds"] == 0.01
    assert pk["simd"] == simd.simd_level()


def test_fma_peak_is_none_without_vector_fma(machine, monkeypatch):
    from rnncore._kernels import simd
    monkeypatch.setattr(simd, "_fma_rate", lambda seconds: None)
    assert machine.fma_peak(2, seconds=0.01) is None


def test_fma_peak_measures_this_machine(machine):
    from rnncore._kernels import simd
    pk = machine.fma_peak(2, seconds=0.005, repeats=1)
    if simd.simd_tier() < 3:
        assert pk is None
        return
    assert len(pk["per_thread_gflops"]) == 2 and all(r > 0 for r in pk["per_thread_gflops"])
