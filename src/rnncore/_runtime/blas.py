"""Loading SciPy's BLAS: CPU kernel selection and thread timeout; ``threadpool_limits``.

The bottom of :mod:`rnncore._runtime` (imports nothing from rnncore): run by
``import rnncore`` before any kernel module loads SciPy's BLAS.

BLAS kernel selection
---------------------
rnncore's kernels call the OpenBLAS bundled with SciPy (through
``scipy.linalg.cython_blas``). OpenBLAS picks its CPU-specific kernels once,
when the library is loaded, and builds up to 0.3.x do not recognise every new
CPU: on AMD Zen 5 (family 26) they fall back to the AVX2 "Haswell" kernels,
about half the sgemm throughput of the AVX-512 "SkylakeX" kernels the CPU can
run. OpenBLAS honours the environment variable ``OPENBLAS_CORETYPE`` at load
time. So, on ``import rnncore``, *if and only if*

* SciPy's OpenBLAS is not loaded yet (otherwise changing it is impossible),
* the user has not set ``OPENBLAS_CORETYPE`` (their choice always wins) nor
  ``RNNCORE_NO_CORETYPE=1`` (opt-out),
* the CPU is an AMD CPU with the AVX-512 subset SkylakeX kernels need
  (avx512f, avx512cd, avx512bw, avx512dq, avx512vl),

rnncore sets ``OPENBLAS_CORETYPE=SkylakeX`` for the duration of loading
SciPy's BLAS and then restores the environment exactly as it was, so child
processes and other libraries are unaffected. Intel CPUs are left alone
(OpenBLAS knows them, and forcing SkylakeX could downgrade newer ones); on
Zen 4 OpenBLAS already selects SkylakeX, so the override changes nothing.
:func:`rnncore.show_config` reports the architecture OpenBLAS actually selected and
warns when an AVX-512 machine runs the AVX2 kernels.

BLAS thread timeout
-------------------
After every call OpenBLAS's worker threads spin, waiting for the next one,
for ``2**OPENBLAS_THREAD_TIMEOUT`` cycles (default 2**28, about 0.1 s). The
kernels' time loops can run the rows of a batch on several threads of their
own (``rc_row_threads`` in the kernels' C helpers); with the BLAS workers
spinning next to them on the same cores that was slower than one thread (0.75x on 2
cores), with the workers asleep 1.2-1.9x faster. So, under the same
conditions as above (SciPy's BLAS not loaded yet, the variable not set by the
user, no ``RNNCORE_NO_THREAD_TIMEOUT=1``; any CPU), rnncore loads SciPy's BLAS
with ``OPENBLAS_THREAD_TIMEOUT=4`` (the workers sleep right after a call and
are woken by the next threaded one, a few microseconds) and restores the
environment. Loops split rows only when the timeout is short (ours, or a
user's value <= 12); otherwise they keep running on one thread.

NumPy's BLAS
------------
NumPy's wheels bundle their own OpenBLAS copy (``libscipy_openblas64_``), with
worker threads of its own that spin the same way after every threaded NumPy
matrix product (``a @ b`` above a small size). Spinning next to a row-split
loop they take a core from it: an LSTM forward at (T, N, D, H) = (100, 32,
256, 256) right after a NumPy product measured 34 ms instead of 18 on 2 Zen 4
cores, i.e. one thread's speed (PyTorch's forward, 27 -> 55 ms, suffers the
same). Once NumPy's copy is loaded its timeout cannot change. So:

* ``import rnncore`` before NumPy: rnncore imports NumPy inside the same
  window, and NumPy's copy gets the short timeout too (and, on AMD AVX-512
  CPUs, the SkylakeX kernels);
* NumPy imported first, with ``OPENBLAS_THREAD_TIMEOUT`` unset: nothing can be
  done from here; ``show_config()`` says so and warns, and the fix is to set
  ``OPENBLAS_THREAD_TIMEOUT=4`` in the environment before starting Python (or
  to import rnncore first).

``_NUMPY_STATE`` records which case applies (``"short"``: NumPy's BLAS sleeps
right after a call, or the case is unknown to be harmful).
"""
from __future__ import annotations

import os
import platform
import sys

_CORETYPE_STATE = {"applied": False, "reason": "not evaluated"}
_AVX512_NEEDED = ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")


def _cpu_info():
    """(vendor, model name, set of flags) from /proc/cpuinfo, or Nones."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return None, platform.processor() or None, set()
    vendor = model = None
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and vendor is None:
            vendor = value.strip()
        elif key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return vendor, model, flags


def _blas_already_loaded() -> bool:
    if "scipy.linalg" in sys.modules or "scipy.linalg.cython_blas" in sys.modules:
        return True
    return _scipy_openblas_path() is not None


def _scipy_openblas_path():
    """The path of SciPy's OpenBLAS if this process has it mapped, else None.

    SciPy's wheels bundle libscipy_openblas-<hash>.so; NumPy's (loaded first in
    most programs) is the separate ILP64 copy libscipy_openblas64_-<hash>.so."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as f:
            for line in f:
                name = line.rsplit(None, 1)[-1]
                base = os.path.basename(name)
                if base.startswith("libscipy_openblas") and "64_" not in base:
                    return name
    except OSError:  # pragma: no cover - non-Linux
        pass
    return None


#: OPENBLAS_THREAD_TIMEOUT rnncore loads SciPy's BLAS with (see the module docstring)
THREAD_TIMEOUT = "4"
#: the largest user-set OPENBLAS_THREAD_TIMEOUT with which time loops still split rows
_SPLIT_MAX_TIMEOUT = 12
_TIMEOUT_STATE = {"short": False, "reason": "not evaluated"}
#: whether NumPy's BLAS workers sleep right after a call (see "NumPy's BLAS" above)
_NUMPY_STATE = {"short": None, "reason": "not evaluated"}


def _user_decides(state, opt_out, var) -> bool:
    """Whether the user opted out (``opt_out``) or set ``var`` themselves (recorded in state)."""
    if os.environ.get(opt_out, "") not in ("", "0"):
        state["reason"] = f"disabled by {opt_out}"
        return True
    if var in os.environ:
        state["reason"] = f"{var}={os.environ[var]} set by the user"
        return True
    return False


def _coretype_wanted(state) -> bool:
    if _user_decides(state, "RNNCORE_NO_CORETYPE", "OPENBLAS_CORETYPE"):
        return False
    vendor, _, flags = _cpu_info()
    if vendor != "AuthenticAMD" or not all(f in flags for f in _AVX512_NEEDED):
        state["reason"] = "not needed on this CPU"
        return False
    return True


def _short_timeout(given) -> bool:
    """Whether a user's OPENBLAS_THREAD_TIMEOUT (a string or None) lets loops split rows."""
    try:
        return given is not None and int(given) <= _SPLIT_MAX_TIMEOUT
    except ValueError:
        return False


def _timeout_wanted(state) -> bool:
    if not _user_decides(state, "RNNCORE_NO_THREAD_TIMEOUT", "OPENBLAS_THREAD_TIMEOUT"):
        return True
    state["short"] = _short_timeout(os.environ.get("OPENBLAS_THREAD_TIMEOUT"))
    return False


def select_blas_kernels() -> None:
    """Load SciPy's BLAS with the right CPU kernels and a short thread timeout.

    See the module docstring. Both environment variables are set only while
    SciPy's BLAS loads, only if it is not loaded yet and the user has not set
    them (or opted out); the environment is restored right after.
    """
    numpy_first = "numpy" in sys.modules
    _numpy_timeout_state(numpy_first)
    env = {}
    if _coretype_wanted(_CORETYPE_STATE):
        env["OPENBLAS_CORETYPE"] = "SkylakeX"
    if _timeout_wanted(_TIMEOUT_STATE):
        env["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    if not env:
        return
    if _blas_already_loaded():
        msg = "SciPy's BLAS was loaded before rnncore; cannot change its {}"
        if "OPENBLAS_CORETYPE" in env:
            _CORETYPE_STATE["reason"] = msg.format("kernels")
        if "OPENBLAS_THREAD_TIMEOUT" in env:
            _TIMEOUT_STATE["reason"] = msg.format("thread timeout")
        return
    os.environ.update(env)
    try:
        import numpy  # noqa: F401  (if not loaded yet: NumPy's BLAS, too, loads now)
        import scipy.linalg.cython_blas  # noqa: F401  (loads libscipy_openblas now)
    finally:
        for k in env:
            del os.environ[k]
    if not numpy_first and "OPENBLAS_THREAD_TIMEOUT" in env:
        _NUMPY_STATE["short"] = True
        _NUMPY_STATE["reason"] = (f"OPENBLAS_THREAD_TIMEOUT={THREAD_TIMEOUT} applied: NumPy was "
                                  "imported by rnncore")
    if "OPENBLAS_CORETYPE" in env:
        _CORETYPE_STATE["applied"] = True
        _CORETYPE_STATE["reason"] = ("OPENBLAS_CORETYPE=SkylakeX applied while loading SciPy's "
                                     "BLAS (AMD AVX-512 CPU)")
    if "OPENBLAS_THREAD_TIMEOUT" in env:
        _TIMEOUT_STATE["short"] = True
        _TIMEOUT_STATE["reason"] = (f"OPENBLAS_THREAD_TIMEOUT={THREAD_TIMEOUT} applied while "
                                    "loading SciPy's BLAS")


def _numpy_timeout_state(numpy_first: bool) -> None:
    """Fill _NUMPY_STATE for NumPy imported before rnncore (``numpy_first``) or not.

    ``short`` None: not rnncore's to judge (the user opted out, or set the variable
    after NumPy had loaded, which cannot be told from here)."""
    given = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    if os.environ.get("RNNCORE_NO_THREAD_TIMEOUT", "") not in ("", "0"):
        _NUMPY_STATE.update(short=None, reason="disabled by RNNCORE_NO_THREAD_TIMEOUT")
    elif given is not None:
        when = " (in the environment when rnncore loaded; NumPy loaded earlier)" \
            if numpy_first else ""
        _NUMPY_STATE.update(short=_short_timeout(given),
                            reason=f"OPENBLAS_THREAD_TIMEOUT={given} set by the user{when}")
    elif numpy_first:
        _NUMPY_STATE.update(short=False, reason=(
            "NumPy was imported before rnncore, with OpenBLAS's default thread timeout"))
    else:
        _NUMPY_STATE.update(short=False, reason=(
            "NumPy imported by rnncore, with OpenBLAS's default thread timeout"))


def numpy_blas_spins() -> bool:
    """Whether NumPy's BLAS is a separate threaded OpenBLAS whose workers spin (~0.1 s)
    after each call: loaded before rnncore, or with the timeout unchanged.

    False when NumPy's BLAS sleeps right after a call, is SciPy's own (the one
    the kernels call, covered by :func:`row_split_allowed`), is not OpenBLAS,
    runs one thread, or threadpoolctl is not installed (unknown); and when the
    time loops do not split rows (:func:`row_split_allowed`) or the user opted
    out (``RNNCORE_NO_THREAD_TIMEOUT``).
    """
    if _NUMPY_STATE["short"] is not False or not row_split_allowed():
        return False    # (no row-split loops: nothing of rnncore's to take a core from)
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    for info in threadpool_info():
        name = os.path.basename(info.get("filepath", ""))
        if info.get("internal_api") == "openblas" and "openblas64_" in name:
            return (info.get("num_threads") or 1) > 1
    return False


def row_split_allowed() -> bool:
    """Whether SciPy's BLAS threads sleep right after a call (short thread timeout).

    Only then may the kernels' time loops run the batch rows on several
    threads: BLAS workers spinning for their default ~0.1 s after every call
    would compete with them for the cores (measured: 0.75x instead of 1.2-1.9x
    on 2 cores).
    """
    return bool(_TIMEOUT_STATE["short"])


def scipy_openblas():
    """(path, ctypes library) of SciPy's OpenBLAS as loaded in this process (the one
    the kernels call: ``libscipy_openblas-*``, not NumPy's ``libscipy_openblas64_``),
    or None when it is not loaded or cannot be opened."""
    import ctypes

    path = _scipy_openblas_path()
    if path is None:
        return None
    try:
        return path, ctypes.CDLL(path)
    except OSError:  # pragma: no cover
        return None


#: OpenBLAS's x86-64 kernel sets (``openblas_get_corename``, lower case) by the SIMD
#: tier of their kernels, as rnncore's kernels number them (4: AVX-512, 3: AVX2+FMA,
#: 2: older); a name not listed counts as unknown (not below: BLAS keeps its products)
_CORE_TIERS = {"skylakex": 4, "cooperlake": 4, "sapphirerapids": 4,
               "haswell": 3, "zen": 3,
               **dict.fromkeys(("sandybridge", "nehalem", "core2", "penryn", "dunnington",
                                "prescott", "atom", "barcelona", "bobcat", "bulldozer",
                                "piledriver", "steamroller", "excavator", "opteron",
                                "opteron_sse3", "nano", "katmai", "coppermine", "northwood",
                                "banias", "athlon", "generic"), 2)}


def blas_corename():
    """The kernel set SciPy's OpenBLAS selected at load time (``openblas_get_corename``:
    "Haswell", "SkylakeX", ...), or None when unknown."""
    import ctypes

    found = scipy_openblas()
    if found is None:
        return None
    for prefix in ("scipy_", ""):
        fn = getattr(found[1], prefix + "openblas_get_corename", None)
        if fn is None:
            continue
        fn.restype = ctypes.c_char_p
        fn.argtypes = ()
        name = fn()
        return name.decode("ascii", "replace").strip() if name else None
    return None


def blas_below_cpu(kernel_tier: int, corename=None) -> bool:
    """Whether SciPy's OpenBLAS runs kernels below ``kernel_tier``, the SIMD level
    rnncore's kernels dispatched to (4: AVX-512, 3: AVX2+FMA; lower: none packed).

    True for OpenBLAS's AVX2 kernels ("Haswell", "Zen") on an AVX-512 CPU -- what
    ``OPENBLAS_CORETYPE=Haswell`` in the environment, or an OpenBLAS that does not
    know the CPU, gives -- and for pre-AVX2 kernel sets on either level. Then the
    kernels run the time loops' all-steps products on their own packed GEMM
    (rc_matmul.h: rc_blas_slow). An unknown kernel set (``corename`` None, not
    given and not found, or a name not in ``_CORE_TIERS``) counts as not below:
    BLAS keeps its products.
    """
    if kernel_tier < 3:
        return False
    name = blas_corename() if corename is None else corename
    if not name:
        return False
    tier = _CORE_TIERS.get(name.lower())
    return tier is not None and tier < kernel_tier


def _blas_info():
    """threadpoolctl's record for SciPy's BLAS (the one the kernels call), or None."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    for info in infos:
        if "scipy" in os.path.basename(info.get("filepath", "")) and \
                "64_" not in os.path.basename(info.get("filepath", "")):
            return info
    return infos[0] if infos else None


def _kernel_blas_threads():
    """The thread count of the BLAS :func:`_blas_info` finds -- SciPy's OpenBLAS, the
    one the kernels call and single-thread sections switch, else the first BLAS
    threadpoolctl lists -- or None (threadpoolctl missing, or no BLAS listed). NumPy's
    ``libscipy_openblas64_`` also has "scipy" in its name, and the order in which
    threadpoolctl lists the two varies between processes: :func:`_blas_info` tells
    them apart. (The thread tests and the reliability suite read it here.)"""
    info = _blas_info()
    return info["num_threads"] if info else None


def threadpool_limits(limits=1):
    """Context manager/decorator limiting BLAS threads (threadpoolctl's).

    ``with rnncore.threadpool_limits(1): ...`` runs the kernels' GEMMs on one
    thread. Requires threadpoolctl (``pip install rnncore[perf]``).
    """
    try:
        from threadpoolctl import threadpool_limits as _tl
    except ImportError as e:  # pragma: no cover
        raise ImportError("threadpool_limits needs threadpoolctl: pip install threadpoolctl") from e
    return _tl(limits=limits, user_api="blas")
