"""``bench/compare.py --load N``: the busy background processes start, are busy, and end."""
import importlib.util
import os
import pathlib
import time

import pytest

_LOAD = pathlib.Path(__file__).resolve().parents[1] / "bench" / "_harness" / "load.py"


def _load_module():
    if not _LOAD.exists():  # an installed test tree without the source checkout
        pytest.skip("bench/_harness/load.py is not in this tree")
    spec = importlib.util.spec_from_file_location("_bench_load", _LOAD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
def test_load_processes_are_busy_and_are_ended():
    mod = _load_module()
    with mod.Load(2) as load:
        pids = load.pids
        assert len(pids) == 2 and all(p.poll() is None for p in load.procs)
        before = [_cpu_seconds(p) for p in pids]
        time.sleep(0.5)
        after = [_cpu_seconds(p) for p in pids]
        assert all(a > b for a, b in zip(after, before))  # they burn CPU
        procs = list(load.procs)
    assert all(p.poll() is not None for p in procs)  # terminated on exit
    assert load.procs == []
    load.stop()  # idempotent


def test_no_load_starts_nothing():
    mod = _load_module()
    load = mod.Load(0)
    assert load.pids == []
    load.stop()
