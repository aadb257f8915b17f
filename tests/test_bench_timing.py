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
    return mod


class _Budget:
    seconds, min_repeats, max_repeats = 0.05, 3, 7


def test_repeats_alternate_between_contestants(timing):
    calls = []
    makers = {name: (lambda name=name: (lambda: calls.append(name))) for name in "abc"}
    out = timing.measure_interleaved(makers, _Budget)
    # the first call and the warm-up of each, then rounds of one call each, the order rotating
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]
    rounds = [calls[i:i + 3] for i in range(6, len(calls), 3)]
    assert len(rounds) == 7 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert [r[0] for r in rounds[:3]] == ["a", "b", "c"]
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
                raise RuntimeError("third call")
            time.sleep(sleep)
        return call

    def bad_maker():
        raise ValueError("cannot build")

    out = timing.measure_interleaved({"fast": lambda: fn("fast", 0), "slow": lambda: fn("slow", 0.02),
                                      "breaks": lambda: fn("breaks", 0), "bad": bad_maker},
                                     _Budget)
    assert out["fast"]["repeats"] == 7                 # its budget allows the cap
    assert out["slow"]["repeats"] == 3                 # 0.05 s / 0.02 s -> 2, raised to min_repeats
    assert out["breaks"] == {"error": "RuntimeError: third call"}
    assert out["bad"] == {"error": "ValueError: cannot build"}
