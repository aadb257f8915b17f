"""``show_config``: what rnncore runs on (versions, BLAS, CPU, thread policy).

The top of :mod:`rnncore._runtime`: reads :mod:`.blas` and :mod:`.threads`;
nothing imports it but ``rnncore/__init__``.
"""
from __future__ import annotations

import os
import platform
import sys

from .._version import __version__
from .blas import (_AVX512_NEEDED, _CORETYPE_STATE, _NUMPY_STATE, _TIMEOUT_STATE, _blas_info,
                   _cpu_info, numpy_blas_spins)
from . import threads


def _cache_summary() -> str:
    from .._kernels import _pool
    c = _pool.info()
    if c["limit"] == 0:
        return "off"
    return (f"keeps up to {c['limit'] / 2**20:.0f} MiB of training workspaces "
            f"({c['kept_bytes'] / 2**20:.1f} MiB kept now)")


def show_config(file=None) -> dict:
    """Print (and return) what rnncore runs on.

    Reports the rnncore, NumPy, SciPy and Python versions; the BLAS library
    the kernels call, its version, the CPU architecture it selected and its
    thread count (via threadpoolctl when installed); the SIMD level the
    kernels' elementwise code was dispatched to; the CPU; and whether the
    BLAS kernel override and thread timeout described in :mod:`rnncore._runtime.blas`
    were applied, to SciPy's BLAS and to NumPy's. Warns when OpenBLAS runs AVX2
    kernels on an AVX-512 CPU, and when NumPy's own OpenBLAS spins after each call
    (it then takes cores from the time loops' threads).
    """
    import numpy as np
    import scipy

    from .. import _bindings
    from .._kernels import simd  # (here, not at the top: loading it loads SciPy's BLAS)

    vendor, model, flags = _cpu_info()
    blas = _blas_info()
    cfg = {
        "rnncore": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "cpu": model or platform.processor() or "unknown",
        "cpu_vendor": vendor or "unknown",
        "cpu_count": os.cpu_count(),
        "kernel_simd": simd.simd_level(),
        "blas_library": blas.get("filepath") if blas else "unknown (install threadpoolctl)",
        "blas_version": blas.get("version") if blas else None,
        "blas_architecture": blas.get("architecture") if blas else None,
        "blas_threads": blas.get("num_threads") if blas else None,
        "blas_coretype_override": _CORETYPE_STATE["reason"],
        "blas_thread_timeout": _TIMEOUT_STATE["reason"],
        "numpy_blas_thread_timeout": _NUMPY_STATE["reason"],
        "parallel_directions": threads.parallel_directions_enabled(),
        "loop_single_thread_below": (f"{threads.LOOP_PARALLEL_MIN} multiply-adds per step"
                                     if threads.loop_policy_active() else "off"),
        "loop_row_split": threads.row_split_enabled(),
        "all_steps_products": ("rnncore's packed GEMM (BLAS's kernels are below this "
                               f"CPU's {simd.simd_level()})" if _bindings.BLAS_SLOW
                               else "BLAS"),
        "workspace_cache": _cache_summary(),
    }
    warnings = []
    avx512 = all(f in flags for f in _AVX512_NEEDED)
    if blas and avx512 and str(blas.get("architecture", "")).lower() in ("haswell", "zen"):
        warnings.append(
            "OpenBLAS runs its AVX2 kernels on this AVX-512 CPU (about half the sgemm "
            "speed; rnncore's time loops run their large products on their own kernels "
            "meanwhile, other SciPy products do not): set OPENBLAS_CORETYPE=SkylakeX in "
            "the environment before starting Python, or import rnncore before "
            "scipy.linalg.")
    if numpy_blas_spins() and threads.row_split_enabled():
        warnings.append(
            "NumPy's own OpenBLAS keeps its default thread timeout: after each threaded "
            "NumPy matrix product its workers spin for ~0.1 s, and rnncore's (and "
            "PyTorch's) multi-threaded loops run up to P times slower meanwhile. Set "
            "OPENBLAS_THREAD_TIMEOUT=4 in the environment before starting Python"
            + (", or import rnncore before numpy." if "before rnncore" in
               _NUMPY_STATE["reason"] else "."))
    cfg["warnings"] = warnings
    out = file if file is not None else sys.stdout
    width = max(len(k) for k in cfg)
    for k, v in cfg.items():
        if k != "warnings":
            print(f"{k:<{width}} : {v}", file=out)
    for w in warnings:
        print(f"WARNING: {w}", file=out)
    return cfg
