"""Thread policy.

Time loops. A step's GEMM is small; below ``LOOP_PARALLEL_MIN`` multiply-adds
per step the kernels run their time loop inside a "single-thread section" (the
all-steps GEMMs before and after the loop keep BLAS's threads, except
backward's when they are small: below 2^26 multiply-adds in all they run in a
section too, since OpenBLAS's threads spin against each other on a busy
machine; and, on CPUs with a packed layout, forward's input projection below 2^22;
rc_threads.h).

On a CPU with a packed layout (AVX2+FMA or AVX-512) a section belongs to the
thread that opened it: the products in it that would go to BLAS run on the
kernels' own GEMM, on that thread, and BLAS's process-wide thread count is never
touched (:func:`sections_switch_blas` is False). So models running in several
threads give bitwise the results of sequential runs. The loops of T >= 2 steps
there multiply by their weight packed once and call no BLAS inside anyway.

Without a packed layout a section limits BLAS to one thread, the previous count
restored afterwards, with the BLAS's own ``openblas_get/set_num_threads``,
found here when the kernels attach (:func:`attach_kernels`, called by
:mod:`rnncore._bindings`). That count is process-wide, so sections are
reference-counted in one lock-protected state shared by every kernel module and
this module: the first to open saves the count, the last to close restores it
(the kernels' C thread helpers). A model running in another thread meanwhile
may then compute its large GEMMs on one thread: results of *concurrent* runs
can differ in the last bits from sequential ones (bug 9 of RELIABILITY.md);
under ``rnncore.threadpool_limits(1)`` they are bitwise reproducible.
``set_loop_parallel_min(0)`` disables the time loops' sections.

Directions. The kernels release the GIL for their whole time loop, so the
forward and reverse directions of one layer (independent computations) run
on two cores at once, each inside a single-thread section so the two directions
do not oversubscribe the cores with nested BLAS threads. Small problems run
sequentially: below ``PARALLEL_MIN_WORK`` (T*N*H*(H+D) multiply-adds per
direction) a thread hand-off costs more than it saves.
``set_parallel_directions(False)`` turns this off (e.g. when the caller
already runs one model per core).

Imports: this module reads :mod:`.blas` and never imports a kernel module; the
binding layer (:mod:`rnncore._bindings`) hands it the kernels' hook installer
and single-thread section through :func:`attach_kernels` when it loads them.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from .blas import row_split_allowed, scipy_openblas

_POOL = None
_PARALLEL = (os.cpu_count() or 1) > 1
PARALLEL_MIN_WORK = 2_000_000


#: per-step multiply-adds (N * G*H * H) from which a time loop keeps BLAS's threads
LOOP_PARALLEL_MIN = 4_000_000
_HOOKS = None
#: the user's set_row_split choice (None: split whenever .blas.row_split_allowed says so)
_ROW_SPLIT = None
#: set by attach_kernels: (install(set, get, min_work, state, row_split), open, close)
_KERNELS = None
#: set by attach_kernels: whether the kernels' time loops use packed weights (never BLAS)
_PACKED = False
#: set by attach_kernels: bytes of the state the kernel modules share (the section
#: state, then their thread team)
_STATE_BYTES = 0


def attach_kernels(install, section_open, section_close, packed, state_bytes) -> None:
    """Called once by rnncore._bindings when it loads the kernel modules.

    ``install(set_addr, get_addr, min_work, state_addr, row_split)`` hands the
    policy to every kernel module; ``section_open()``/``section_close(token)``
    are the kernels' single-thread section; ``packed``: the CPU has the kernels'
    packed layout (their time loops multiply by packed weights and open no
    sections; every section is per thread, on their own GEMM);
    ``state_bytes``: the size of the state the kernel modules share (the section
    state, then their thread team). Installs the current policy.
    """
    global _KERNELS, _PACKED, _STATE_BYTES
    _KERNELS = (install, section_open, section_close)
    _PACKED = bool(packed)
    _STATE_BYTES = int(state_bytes)
    set_loop_parallel_min(LOOP_PARALLEL_MIN)


def _find_blas_thread_functions():
    """Addresses of SciPy's OpenBLAS get/set_num_threads, or None."""
    import ctypes

    found = scipy_openblas()
    if found is None:
        return None
    lib = found[1]
    for prefix in ("scipy_", ""):
        try:
            set_fn = getattr(lib, prefix + "openblas_set_num_threads")
            get_fn = getattr(lib, prefix + "openblas_get_num_threads")
        except AttributeError:
            continue
        return (lib, ctypes.cast(set_fn, ctypes.c_void_p).value,
                ctypes.cast(get_fn, ctypes.c_void_p).value)
    return None


def _lasting_zeroed_block(nbytes: int) -> int:
    """The address of `nbytes` zeroed bytes from the C heap that are never freed."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.calloc.restype = ctypes.c_void_p
    libc.calloc.argtypes = (ctypes.c_size_t, ctypes.c_size_t)
    addr = libc.calloc(1, nbytes)
    if not addr:  # pragma: no cover
        raise MemoryError("rnncore: no memory for the kernels' thread state")
    return addr


def set_loop_parallel_min(work: int) -> None:
    """Per-step multiply-adds from which time loops keep BLAS's threads (0: always)."""
    global LOOP_PARALLEL_MIN, _HOOKS
    import ctypes

    LOOP_PARALLEL_MIN = int(work)
    if _KERNELS is None:  # no kernel loaded yet: attach_kernels installs it
        return
    if _HOOKS is None:
        found = _find_blas_thread_functions()
        # the one state every kernel module shares: the section's {lock, depth, saved,
        # key_ok, key} (key: the per-thread section depth), then their thread team
        # (rc_threads.h: RC_THREAD_STATE_TEAM), zeroed, 16-byte aligned, and never
        # freed: the team's workers wait on it until the process ends (a Python
        # object would be freed at interpreter shutdown)
        _HOOKS = (found + (_lasting_zeroed_block(_STATE_BYTES),)) if found else False
    if _HOOKS:
        lib, set_addr, get_addr, state_addr = _HOOKS
    else:
        set_addr = get_addr = state_addr = 0
    _KERNELS[0](set_addr, get_addr, LOOP_PARALLEL_MIN, state_addr, row_split_enabled())


def set_row_split(enabled: bool) -> None:
    """Let time loops run the rows of a batch on several threads (default: when allowed).

    A loop whose per-step products go to rnncore's packed kernel (CPUs with
    AVX2 or AVX-512, T >= 2) splits its rows over min(BLAS threads, 8, N/4)
    threads when it does at least ~2M multiply-adds in all over at least 64
    (row, step) pairs a thread; each thread multiplies its own rows by the
    packed weight (shared, read-only) and calls no BLAS, so the results are
    bitwise those of one thread. The threads are one team the kernel modules
    share (started on first use; after a task they spin up to 0.1 ms, yielding
    the core, then sleep). Loops without a packed weight keep their rows on
    one thread. Allowed only when SciPy's BLAS workers sleep
    right after a call (:func:`rnncore._runtime.blas.row_split_allowed`): enabling it
    otherwise raises RuntimeError. ``threadpool_limits(1)`` also keeps loops
    on one thread.
    """
    global _ROW_SPLIT
    if enabled and not row_split_allowed():
        raise RuntimeError("row-split time loops need SciPy's OpenBLAS loaded with a short "
                           "OPENBLAS_THREAD_TIMEOUT (import rnncore before scipy.linalg, or "
                           "set OPENBLAS_THREAD_TIMEOUT=4 before starting Python)")
    _ROW_SPLIT = bool(enabled)
    set_loop_parallel_min(LOOP_PARALLEL_MIN)


def row_split_enabled() -> bool:
    """Whether time loops may split the rows of a batch over threads."""
    return bool(_HOOKS) and (row_split_allowed() if _ROW_SPLIT is None else _ROW_SPLIT)


def loop_policy_active() -> bool:
    """Whether time loops switch BLAS's process-wide thread count (the loop policy is
    installed and the CPU has no packed layout for the kernels' own GEMM)."""
    return sections_switch_blas() and LOOP_PARALLEL_MIN > 0


def sections_switch_blas() -> bool:
    """Whether the kernels' single-thread sections set BLAS's process-wide thread count
    to 1 (the policy is installed and the CPU has no packed layout). With a packed
    layout a section belongs to its thread: the BLAS products inside it run on the
    kernels' own GEMM, and other threads keep BLAS's threads and their results."""
    return bool(_HOOKS) and not _PACKED


def set_parallel_directions(enabled: bool) -> None:
    """Run the two directions of bidirectional layers on two threads (default: on >1 core).

    Off, the directions run one after the other, each with all threads (BLAS's
    and the kernels' own); on a CPU with AVX2 or AVX-512 the float32 results of
    layers above ``PARALLEL_MIN_WORK`` may then differ in the last bits from the
    concurrent run's (whose products run on the kernels' own GEMM, one thread
    each)."""
    global _PARALLEL
    _PARALLEL = bool(enabled)


def parallel_directions_enabled() -> bool:
    """Whether bidirectional layers run their two directions concurrently."""
    return _PARALLEL


@contextmanager
def _blas_single_thread():
    """Context: a "single-thread section" of the kernels (their C thread helpers).

    On a CPU with a packed layout it is this thread's: the kernels it calls run
    their products on one thread, on their own GEMM instead of BLAS, and BLAS's
    thread count is left alone. Otherwise BLAS is limited to one thread for the
    whole process, reference-counted in the state the kernels' own time loops
    share, so overlapping sections from several threads restore the original count
    exactly once, when the last one closes. A no-op where the BLAS's thread
    functions were not found.
    """
    _, section_open, section_close = _KERNELS
    token = section_open()
    try:
        yield
    finally:
        section_close(token)


def _in_section(fn, d):
    with _blas_single_thread():
        return fn(d)


def run_pair(fn, n: int, work: int):
    """[fn(0)] or [fn(0), fn(1)], the pair concurrently when worth it.

    From ``PARALLEL_MIN_WORK`` on, each direction runs in a single-thread section
    of its thread: concurrently, or one after the other on a machine with one CPU
    (nothing to lose there). With per-thread sections (:func:`sections_switch_blas`
    False) its products run on the kernels' own GEMM either way, so the default
    results do not depend on the CPU count. Turned off on a multi-core machine
    (:func:`set_parallel_directions`), the directions keep all threads, BLAS's
    and the kernels' own: their float32 results may then differ in the last bits.
    """
    global _POOL
    if n == 1:
        return [fn(0)]
    if work < PARALLEL_MIN_WORK:
        return [fn(0), fn(1)]
    if not _PARALLEL:
        if sections_switch_blas() or (os.cpu_count() or 1) > 1:
            return [fn(0), fn(1)]
        return [_in_section(fn, 0), _in_section(fn, 1)]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnncore-dir")
    with _blas_single_thread():
        # each direction in a section of its own thread: on a CPU with a packed layout
        # the sections are per thread (the BLAS products run on the kernels' own GEMM)
        fut = _POOL.submit(_in_section, fn, 1)
        try:
            r0 = fn(0)
        finally:
            r1 = fut.result()
    return [r0, r1]
