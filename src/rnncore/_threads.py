"""Thread policy: the two directions of a bidirectional layer run concurrently.

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

_POOL = None
_PARALLEL = (os.cpu_count() or 1) > 1
PARALLEL_MIN_WORK = 2_000_000
_CONTROLLER = None


def set_parallel_directions(enabled: bool) -> None:
    """Run the two directions of bidirectional layers on two threads (default: on >1 core)."""
    global _PARALLEL
    _PARALLEL = bool(enabled)


def parallel_directions_enabled() -> bool:
    """Whether bidirectional layers run their two directions concurrently."""
    return _PARALLEL


def _blas_single_thread():
    """Context: BLAS limited to one thread (no-op without threadpoolctl)."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
            _CONTROLLER = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl missing or broken
            _CONTROLLER = False
    if not _CONTROLLER:
        return nullcontext()
    return _CONTROLLER.limit(limits=1, user_api="blas")


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
