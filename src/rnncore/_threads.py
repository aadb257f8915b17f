"""Thread policy.

Time loops. A step's GEMM is small; below ``LOOP_PARALLEL_MIN`` multiply-adds
per step the kernels run their time loop with BLAS limited to one thread and
restore the previous count afterwards (the big all-steps GEMMs before and
after the loop keep BLAS's threads). The switch uses the BLAS's own
``openblas_get/set_num_threads``, found here at import. The count is
process-wide in OpenBLAS: a kernel that finds it already at 1 (another
thread's loop, or the user's ``threadpool_limits(1)``) leaves it alone.
``set_loop_parallel_min(0)`` disables the policy.

Directions. The two directions of a bidirectional layer run concurrently.

The kernels release the GIL for their whole time loop, so the forward and
reverse directions of one layer (independent computations) can run on two
cores at once. While they do, BLAS is limited to one thread per call (via
threadpoolctl, when installed) so the two directions do not oversubscribe the
cores with nested BLAS threads. Small problems run sequentially: below
``PARALLEL_MIN_WORK`` (T*N*H*(H+D) multiply-adds per direction) a thread
hand-off costs more than it saves.

``set_parallel_directions(False)`` turns the policy off (e.g. when the caller
already runs one model per core).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

_POOL = None
_PARALLEL = (os.cpu_count() or 1) > 1
PARALLEL_MIN_WORK = 2_000_000
_CONTROLLER = None


#: per-step multiply-adds (N * G*H * H) from which a time loop keeps BLAS's threads
LOOP_PARALLEL_MIN = 4_000_000
_HOOKS = None


def _find_blas_thread_functions():
    """Addresses of SciPy's OpenBLAS get/set_num_threads, or None."""
    import ctypes

    path = None
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                name = line.rsplit(None, 1)[-1]
                base = os.path.basename(name)
                if base.startswith("libscipy_openblas") and "64_" not in base:
                    path = name
                    break
    except OSError:  # pragma: no cover - non-Linux
        return None
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:  # pragma: no cover
        return None
    for prefix in ("scipy_", ""):
        try:
            set_fn = getattr(lib, prefix + "openblas_set_num_threads")
            get_fn = getattr(lib, prefix + "openblas_get_num_threads")
        except AttributeError:
            continue
        return (lib, ctypes.cast(set_fn, ctypes.c_void_p).value,
                ctypes.cast(get_fn, ctypes.c_void_p).value)
    return None


def set_loop_parallel_min(work: int) -> None:
    """Per-step multiply-adds from which time loops keep BLAS's threads (0: always)."""
    global LOOP_PARALLEL_MIN, _HOOKS
    from ._kernels import gru, lstm, rnn

    LOOP_PARALLEL_MIN = int(work)
    if _HOOKS is None:
        _HOOKS = _find_blas_thread_functions() or False
    set_addr, get_addr = (_HOOKS[1], _HOOKS[2]) if _HOOKS else (0, 0)
    for mod in (rnn, gru, lstm):
        mod._blas_thread_hooks(set_addr, get_addr, LOOP_PARALLEL_MIN)


def loop_policy_active() -> bool:
    """Whether the time-loop BLAS thread policy is installed."""
    return bool(_HOOKS) and LOOP_PARALLEL_MIN > 0


def set_parallel_directions(enabled: bool) -> None:
    """Run the two directions of bidirectional layers on two threads (default: on >1 core)."""
    global _PARALLEL
    _PARALLEL = bool(enabled)


def parallel_directions_enabled() -> bool:
    """Whether bidirectional layers run their two directions concurrently."""
    return _PARALLEL


_LIMIT_LOCK = threading.Lock()
_LIMIT_DEPTH = 0
_LIMITER = None


@contextmanager
def _blas_single_thread():
    """Context: BLAS limited to one thread (no-op without threadpoolctl).

    Reference-counted, so that overlapping uses from several threads restore
    the original limit exactly once, when the last one leaves.
    """
    global _CONTROLLER, _LIMIT_DEPTH, _LIMITER
    with _LIMIT_LOCK:
        if _CONTROLLER is None:
            try:
                from threadpoolctl import ThreadpoolController
                _CONTROLLER = ThreadpoolController()
            except Exception:  # pragma: no cover - threadpoolctl missing or broken
                _CONTROLLER = False
        if _CONTROLLER and _LIMIT_DEPTH == 0:
            _LIMITER = _CONTROLLER.limit(limits=1, user_api="blas")
        _LIMIT_DEPTH += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_DEPTH -= 1
            if _LIMIT_DEPTH == 0 and _LIMITER is not None:
                _LIMITER.restore_original_limits()
                _LIMITER = None


def run_pair(fn, n: int, work: int):
    """[fn(0)] or [fn(0), fn(1)], the pair concurrently when worth it."""
    global _POOL
    if n == 1:
        return [fn(0)]
    if not _PARALLEL or work < PARALLEL_MIN_WORK:
        return [fn(0), fn(1)]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnncore-dir")
    with _blas_single_thread():
        fut = _POOL.submit(fn, 1)
        try:
            r0 = fn(0)
        finally:
            r1 = fut.result()
    return [r0, r1]
