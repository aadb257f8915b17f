"""The kernels' persistent thread team (rc_threads.h: rc_pool_t, rc_run_tasks).

Row-split loops, packing on threads and the dW kernel hand their tasks to a team
of workers the kernel modules share (started on first use; they spin briefly after
a task, then sleep), or -- when the team is taken by another caller, or off
(``_set_thread_team(False)``) -- to threads started for the call. The tasks are the
same either way, so:

1. Every cell's training step and inference on 2 and 3 BLAS threads give bitwise
   the results of threads started per call and of the workers sleeping at once
   (spin 0: the futex path), and match the float64 reference; the team's count
   shows it ran (and did not, when off).
2. Models in four concurrent Python threads (one takes the team, the others start
   threads) get the serial results.
3. A child forked after the team ran (it has no workers) runs threaded loops
   correctly on a team of its own and does not hang.
4. Tens of thousands of tiny runs through the team (workers sleeping at once or
   spinning briefly; 2, 3 and 8 threads) lose no hand-off.
5. Every task runs under its caller's floating-point control (MXCSR: FTZ/DAZ set,
   then cleared), on the team and on started threads.
6. A caller done with its own task runs the tasks no worker has started yet: each
   task still runs exactly once, and it happens (workers asleep at once); the
   results are those of a caller that waits for its workers (point 1).
7. The workers are kept off the caller's CPU (their affinity: the caller's own minus
   the CPU it runs on), back to the caller's with the hook off, left alone when the
   caller may run on one CPU only; the results are the same either way.
"""
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from _oracle import reference_run
from conftest import cell_kernel_modules, threaded_kernel_marks

import rnncore
from rnncore._kernels import lstm as KL

pytestmark = threaded_kernel_marks("no threaded loops")

MODULES = cell_kernel_modules()
T, N, D, H = 24, 24, 20, 64     # T N H H = 2.4M multiply-adds (an RNN; more for the rest): rows split


def _model(cell, dtype):
    kw = dict(num_layers=2, batch_first=True, seed=5, dtype=dtype)
    if cell == "rnn":
        return rnncore.RNN(D, H, **kw)
    if cell in ("lstm", "ln-lstm"):
        return rnncore.LSTM(D, H, layer_norm=cell == "ln-lstm", **kw)
    return rnncore.GRU(D, H, reset_after=cell != "gru-rb", layer_norm=cell == "ln-gru", **kw)


def _inputs(dtype):
    rng = np.random.default_rng(11)
    return (rng.standard_normal((N, T, D)).astype(dtype),
            rng.standard_normal((N, T, H)).astype(dtype))


def _step(cell, dtype, threads=2):
    """A training step and an inference: [y, dx, y_inference, grads...]."""
    m = _model(cell, dtype)
    x, dy = _inputs(dtype)
    with threadpool_limits(threads, user_api="blas"):
        y, _ = m(x)
        dx = m.backward(dy)[0]
        grads = {k: v.copy() for k, v in m.grads.items()}
        m.eval()
        yi, _ = m(x)
    return [y, dx, yi] + [grads[k] for k in sorted(grads)]


def _with_team(cell, dtype, enabled, spin_ns=-1, threads=2, take=True):
    mod = MODULES[cell]
    runs = mod._thread_team_runs()
    mod._set_thread_team(enabled, spin_ns, take)
    try:
        out = _step(cell, dtype, threads)
    finally:
        mod._set_thread_team(True)
    return out, mod._thread_team_runs() - runs


def _same(a_list, b_list):
    for a, b in zip(a_list, b_list, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", list(MODULES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("threads", [2, 3])
def test_team_gives_the_results_of_threads_started_per_call(cell, dtype, threads):
    spawned, n_off = _with_team(cell, dtype, False, threads=threads)
    team, n_on = _with_team(cell, dtype, True, threads=threads)
    sleeping, n_sleep = _with_team(cell, dtype, True, spin_ns=0, threads=threads)
    taken = MODULES[cell]._thread_team_taken()
    waiting, _ = _with_team(cell, dtype, True, spin_ns=0, threads=threads, take=False)
    assert MODULES[cell]._thread_team_taken() == taken   # the caller ran no worker's task
    _same(spawned, team)
    _same(spawned, sleeping)
    _same(spawned, waiting)
    assert n_off == 0
    assert n_on > 0 and n_sleep > 0    # the team ran the split loops
    assert all(np.isfinite(a).all() for a in team)


@pytest.mark.parametrize("cell", ["rnn", "gru", "gru-rb", "lstm"])
def test_team_matches_the_reference_float64(cell):
    """On the team (2 threads, rows split), forward and backward against the
    reference at tolerances that catch a wrong gate or a missing term."""
    m = _model(cell, np.float64)
    x, dy = _inputs(np.float64)
    runs = MODULES[cell]._thread_team_runs()
    with threadpool_limits(2, user_api="blas"):
        y, _ = m(x)
        dx = m.backward(dy)[0]
    assert MODULES[cell]._thread_team_runs() > runs
    tnd = lambda a: np.swapaxes(a, 0, 1)   # noqa: E731  (batch_first -> (T, N, .))
    want_y, _, want_dx, _, want_grads = reference_run(m, tnd(x), [None] * m.n_states, None,
                                                      tnd(dy))
    np.testing.assert_allclose(y, tnd(want_y), rtol=0, atol=1e-11)
    np.testing.assert_allclose(dx, tnd(want_dx), rtol=0, atol=1e-10)
    for k, g in want_grads.items():
        np.testing.assert_allclose(m.grads[k], g, rtol=0, atol=1e-9, err_msg=k)


def test_models_in_concurrent_python_threads_share_the_team_correctly():
    """Four Python threads each run training steps at once: whichever call takes the
    team and whichever starts its own threads, each gets the serial results."""
    want = {c: _with_team(c, np.float32, False)[0] for c in ("lstm", "gru")}
    got, errors = {}, []

    def work(i):
        try:
            cell = ("lstm", "gru")[i % 2]
            for _ in range(3):
                got.setdefault(i, []).append((cell, _step(cell, np.float32)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    with threadpool_limits(2, user_api="blas"):
        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    assert not errors
    assert sum(len(v) for v in got.values()) == 12
    for runs in got.values():
        for cell, out in runs:
            _same(want[cell], out)


def _child(q):
    runs = KL._thread_team_runs()
    out = _step("lstm", np.float64)
    q.put((out, KL._thread_team_runs() - runs))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="no fork() on this platform")
def test_a_forked_child_runs_threaded_loops():
    """The parent's workers do not exist in a forked child: the team is emptied
    there (pthread_atfork) and the child's threaded loops start their own."""
    want = _step("lstm", np.float64)           # the parent's team has run
    assert KL._thread_team_runs() > 0
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    try:
        got, child_runs = q.get(timeout=120)
    finally:
        p.join(timeout=30)
        if p.is_alive():  # pragma: no cover - the failure this test looks for
            p.kill()
    assert p.exitcode == 0
    assert child_runs > 0      # the child's loops ran on its own (new) team
    _same(want, got)


STRESS = r"""
import sys
from rnncore._kernels import lstm
calls, threads, spin, take = map(int, sys.argv[1:])
counts = lstm._thread_team_stress(calls, threads, spin, bool(take))
assert counts == [calls] * threads, counts
print("ok")
"""


@pytest.mark.parametrize("threads", [2, 3, 8])
@pytest.mark.parametrize("spin_ns, calls, take", [
    (0, 3000, False), (300, 20000, False), (0, 3000, True), (300, 20000, True),
    (2000, 20000, True), (-1, 20000, True)])
def test_team_hand_offs_are_never_lost(threads, spin_ns, calls, take):
    """Many tiny runs through the team, its workers sleeping at once or spinning
    briefly (the moment a worker falls asleep as the caller posts is then frequent),
    more threads than cores too: every task runs once per call. With the caller
    not taking tasks every task waits for its worker's wake-up (a lost wake-up
    hangs); with it, the caller and late workers race for the tasks. In a child
    process under a watchdog, so a lost wake-up fails instead of hanging the suite."""
    r = subprocess.run([sys.executable, "-c", STRESS, str(calls), str(threads), str(spin_ns),
                        str(int(take))],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_kernel_modules_share_one_team():
    """rnncore hands every kernel module the same team (in the thread state it
    shares with them): a model mixing cells does not get a spinning team per
    module. An LSTM then a GRU run their threaded loops on it."""
    from rnncore._runtime import threads as _threads
    ids = {name: mod._thread_team_id() for name, mod in MODULES.items()}
    state = _threads._HOOKS[3]            # the thread state rnncore allocated
    assert set(ids.values()) == {state + 64}, (ids, state)   # (RC_THREAD_STATE_TEAM)
    before = {m: m._thread_team_runs() for m in (KL, MODULES["gru"])}
    _step("lstm", np.float32)
    _step("gru", np.float32)
    assert all(m._thread_team_runs() > n for m, n in before.items())


@pytest.mark.skipif(not (sys.platform.startswith("linux")
                         and __import__("platform").machine() in ("x86_64", "AMD64")),
                    reason="MXCSR is x86's SSE control word")
@pytest.mark.parametrize("team", [True, False], ids=["team", "started"])
@pytest.mark.parametrize("threads", [2, 3])
def test_tasks_run_with_the_callers_floating_point_control(team, threads):
    """A task runs under its caller's MXCSR (rounding, flush-to-zero,
    denormals-are-zero): a worker of the team takes it with each task, a started
    thread inherits it. Set FTZ | DAZ, then clear it again: no worker keeps a stale
    one from an earlier caller."""
    FTZ_DAZ = 0x8040
    during, seen = KL._thread_team_mxcsr(threads, FTZ_DAZ, team)
    assert during & FTZ_DAZ == FTZ_DAZ
    assert seen == [during] * threads, [hex(v) for v in seen]
    during, seen = KL._thread_team_mxcsr(threads, 0, team)
    assert during & FTZ_DAZ == 0                      # the caller's own was restored
    assert seen == [during] * threads, [hex(v) for v in seen]


def test_the_mxcsr_hook_refuses_reserved_bits():
    with pytest.raises(ValueError, match="low 16 bits"):
        KL._thread_team_mxcsr(2, 0x10000)


TAKEN = r"""
from rnncore._kernels import lstm as KL
taken = KL._thread_team_taken()
assert KL._thread_team_stress(2000, 3, 0) == [2000] * 3
assert KL._thread_team_taken() > taken, "the caller never took a task"
taken = KL._thread_team_taken()
assert KL._thread_team_stress(500, 3, 0, False) == [500] * 3
assert KL._thread_team_taken() == taken, "took tasks with taking off"
print("ok")
"""


def test_the_caller_takes_the_tasks_no_worker_started():
    """Workers that sleep at once take ~25-50 us to wake; the caller's own tiny task
    is long done by then, so it runs theirs: it happens, and every task still runs
    exactly once per call (taken or not); with taking off it never happens. In a
    child process under a watchdog, as the hand-off test."""
    r = subprocess.run([sys.executable, "-c", TAKEN], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


APART = r"""
import os, numpy as np, rnncore
from threadpoolctl import threadpool_limits
from rnncore._kernels import rnn as K
m = rnncore.RNN(20, 64, batch_first=True, seed=5)
x = np.random.default_rng(1).standard_normal((24, 24, 20)).astype(np.float32)
mine = os.sched_getaffinity(0)
def run(threads):
    with threadpool_limits(threads, user_api="blas"):
        return m(x, train=False)[0]
def masks():
    return [K._thread_team_worker_cpus(k) for k in range(2)]
def apart(w):
    return w < mine and len(w) == len(mine) - 1      # all but one of the caller's CPUs
ys = [run(2)]                        # the team's first worker, kept apart
w = masks()
assert apart(w[0]) and w[1] == set(), w
ys.append(run(3))                    # a second worker started: both apart, alike
w = masks()
assert apart(w[0]) and w[1] == w[0], w
ys.append(run(2))                    # a smaller team after a larger one: every worker
assert masks() == w, masks()
K._set_thread_team_apart(False)      # off: every worker back to the caller's set
ys.append(run(2))
assert masks() == [mine, mine], masks()
K._set_thread_team_apart(True)
ys.append(run(2))
w = masks()
assert apart(w[0]) and w[1] == w[0], w
one = {min(mine)}
os.sched_setaffinity(0, one)         # the caller on one CPU, the hook on: left alone
ys.append(run(3))
assert masks() == w, masks()
K._set_thread_team_apart(False)      # off: the caller's set, now one CPU
ys.append(run(3))
assert masks() == [one, one], masks()
for y in ys:
    np.testing.assert_array_equal(y, ys[0])
print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and at least two usable CPUs")
def test_the_workers_are_kept_off_the_callers_cpu():
    """Every worker's affinity is the caller's set minus one CPU (the caller's), also
    after the team grew or shrank; back to the caller's set with the hook off; left
    alone when the caller may run on one CPU only; the results are the same. In a
    child process (it changes its own thread's affinity)."""
    r = subprocess.run([sys.executable, "-c", APART], capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_worker_cpus_hook_has_no_worker_out_of_range():
    assert KL._thread_team_worker_cpus(-1) == set()
    assert KL._thread_team_worker_cpus(10 ** 6) == set()
