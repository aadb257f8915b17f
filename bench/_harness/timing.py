"""How a call is timed: a time budget, a median of repeated calls with gc off, timeit for steps."""
from __future__ import annotations

import gc
import statistics
import time
import timeit
from contextlib import contextmanager


class Budget:
    """How long each measurement may take."""

    def __init__(self, quick):
        self.quick = quick
        # --quick: at least 3 timed calls even for a 0.2-0.7 s call (the largest
        # core rows): with 1 (the budget's count) one slow spell of a shared VM
        # decided a row's ratio (5 made --quick take 5.5 min instead of 3)
        self.min_repeats = 3
        self.max_repeats = 50 if quick else 200
        self.seconds = 0.4 if quick else 2.0
        self.step_number = 500 if quick else 2000
        self.step_repeat = 3 if quick else 5


@contextmanager
def _gc_off():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


#: How long a measurement waits before a first call (sleeping) and each block of
#: interleaved repeats runs untimed (calling), for the previous one's threads to settle.
SETTLE_S = 0.01


def _first_and_repeats(fn, budget):
    """Time ``fn``'s first call, warm it up once (unless the first call already used
    the budget), and return (first call's seconds, repeats the budget allows)."""
    pc = time.perf_counter
    t0 = pc()
    fn()
    first = pc() - t0
    est = first
    if first < budget.seconds:
        t0 = pc()
        fn()  # warm-up
        est = pc() - t0
    n = int(budget.seconds / max(est, 1e-7))
    return first, max(budget.min_repeats, min(budget.max_repeats, n))


def measure(fn, budget):
    """``{'first_ms', 'median_ms', 'mean_ms', 'min_ms', 'repeats'}`` of calling ``fn()``
    (the median is the rows' figure; the mean, total time over calls, is what a loop of
    calls takes, and tells the two apart when some calls stall: under load)."""
    pc = time.perf_counter
    with _gc_off():
        time.sleep(SETTLE_S)  # the previous measurement's threads may still be spinning
        first, n = _first_and_repeats(fn, budget)
        times = []
        for _ in range(n):
            t0 = pc()
            fn()
            times.append(pc() - t0)
    return {"first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3,
            "mean_ms": statistics.fmean(times) * 1e3, "min_ms": min(times) * 1e3,
            "repeats": n}


def try_measure(make, budget):
    """measure(make()) with any failure turned into an 'error' record."""
    try:
        fn = make()
        return measure(fn, budget)
    except Exception as e:  # a benchmark reports, never raises
        return {"error": f"{type(e).__name__}: {e}"}


def measure_interleaved(makers, budget, blocks=4):
    """Like `try_measure` for each of ``makers`` (name -> zero-argument maker of the
    timed callable), but the contestants take turns: each one's repeats come in
    `blocks` blocks, round after round (the order rotating by round), so a slow
    spell of the machine -- on a shared VM one vCPU may run at half speed for a
    second or so, which slowed both libraries at once when measured -- falls on
    all of them instead of on whichever was being timed.

    Each block starts with untimed calls (SETTLE_S, at least one): the previous
    contestant's threads may still be spinning (PyTorch's OpenMP workers spin
    after a call: an LSTM inference of 18.7 ms measured 25.5 ms right after a
    PyTorch call, and a 0.03 ms one twice its time). Each contestant gets as many
    repeats as its own budget would give it alone (capped by the budget's
    limits). Returns name -> record (an 'error' record for a failure).
    """
    pc = time.perf_counter
    out, fns, want, times = {}, {}, {}, {}
    with _gc_off():
        for name, make in makers.items():
            try:
                fn = make()
                time.sleep(SETTLE_S)  # the first call, too, after others' threads settle
                first, want[name] = _first_and_repeats(fn, budget)
            except Exception as e:  # a benchmark reports, never raises
                out[name] = {"error": f"{type(e).__name__}: {e}"}
                continue
            fns[name] = fn
            times[name] = []
            out[name] = {"first_ms": first * 1e3}
        size = {name: -(-want[name] // blocks) for name in fns}
        order = list(fns)
        r = 0
        while order:
            k = r % len(order)
            for name in order[k:] + order[:k]:
                try:
                    # untimed calls, for SETTLE_S at least: the previous contestant's
                    # threads may still be spinning
                    t_end = pc() + SETTLE_S
                    fns[name]()
                    while pc() < t_end:
                        fns[name]()
                    for _ in range(min(size[name], want[name] - len(times[name]))):
                        t0 = pc()
                        fns[name]()
                        times[name].append(pc() - t0)
                except Exception as e:
                    out[name] = {"error": f"{type(e).__name__}: {e}"}
                    want[name] = 0
            order = [nm for nm in order if len(times[nm]) < want[nm]]
            r += 1
    for name, ts in times.items():
        if "error" not in out[name]:
            out[name].update(median_ms=statistics.median(ts) * 1e3,
                             mean_ms=statistics.fmean(ts) * 1e3, min_ms=min(ts) * 1e3,
                             repeats=len(ts))
    return out


def timeit_us(fn, budget):
    try:
        fn()  # warm-up
        tm = timeit.Timer(fn)
        runs = tm.repeat(repeat=budget.step_repeat, number=budget.step_number)
        per = [r / budget.step_number * 1e6 for r in runs]
        return {"best_us": min(per), "median_us": statistics.median(per),
                "number": budget.step_number, "repeat": budget.step_repeat}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
