"""``show_config``: what rnncore runs on (versions, BLAS, CPU, thread policy).

The top of :mod:`rnncore._runtime`: reads :mod:`.blas` and :mod:`.threads`;
nothing imports it but ``rnncore/__init__``.
"""
from __future__ import annotations

import os
import platform
import sys

from .._version import __version__
from .blas import (_CORETYPE_STATE, _NUMPY_STATE, _TIMEOUT_STATE, _blas_info, _cpu_info,
                   blas_corename, numpy_blas_spins)
from . import threads


def _cache_summary() -> str:
    from .._kernels import _pool
    c = _pool.info()
    if c["limit"] == 0:
        return "off"
    return (f"keeps up to {c['limit'] / 2**20:.0f} MiB of training workspaces "
            f"({c['kept_bytes'] / 2**20:.1f} MiB kept now)")


def _all_steps_products(slow: bool, small_machine: bool, level: str) -> str:
    """show_config's ``all_steps_products``: where the time loops' products over all
    steps run outside their steps (rc_matmul.h: rc_blas_slow and its rules)."""
    if not slow:
        return "BLAS"
    if not small_machine:
        return "BLAS (its kernels are below this CPU's level, but this machine has more " \
               "than 8 CPUs, the kernels' thread cap)"
    return (f"rnncore's packed GEMM (BLAS's kernels are below this CPU's {level}), from 64 "
            "rows and 2^20 multiply-adds, on the kernels' threads (one thread with the "
            "row split off)")


def _loop_shape_rules(rules: str, packed: bool, narrow: bool = False) -> str:
    """show_config's ``loop_shape_rules``: which measured choices the time loops'
    shape rules take (rc_activations.h: rc_rule_set, by the CPU: ``"general"``,
    ``"intel"`` or ``"zen5"``; the numbers are rc_gemm_packed.h's RC_FUSE_* and
    rc_threads.h's RC_UNIT_* constants; ``narrow``: the AVX2 packed layout, where
    the LSTM splits its hidden units only for too few rows to split)."""
    if not packed:
        return "none (no packed kernel on this CPU: the loops multiply on BLAS)"
    units = "the LSTM splits hidden units where its weight takes 12 MiB or more"
    if rules == "zen5":
        head = ("Zen 5's: the input weight inside the steps from 8 rows up to 8 MiB "
                "stacked, below 16 rows only up to N x 160 KiB")
    elif rules == "intel":
        head = ("Intel's: below 32 rows the input weight goes inside the steps only up "
                "to N x 160 KiB stacked (else from 8 rows up to 8 MiB)")
        units = ("the LSTM splits hidden units (weight of 12 MiB or more) only while no "
                 "thread gets 16 rows")
    else:
        head = "general: the input weight inside the steps from 8 rows up to 8 MiB stacked"
    if narrow:
        units = ("the LSTM keeps its rows split (AVX2: the kernel prefetches a weight of "
                 "8 MiB or more into L2 as it goes)")
    few = ("; below 8 rows (no row split) the LSTM splits hidden units from 16 steps and "
           "a 256 KiB weight, forward and backward")
    return f"{head}; {units}{few}"


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
    from .._kernels import lstm as _lstm_kernels

    vendor, model, _ = _cpu_info()
    blas = _blas_info()
    slow, small_machine = _bindings.blas_slow(), _bindings.slow_products_machine()
    nr = simd._gemm_packed_nr(np.float32)   # float32 panel width: 16 AVX2, 32 AVX-512
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
        "all_steps_products": _all_steps_products(slow, small_machine, simd.simd_level()),
        "loop_shape_rules": _loop_shape_rules(_lstm_kernels._shape_rules(), nr > 0,
                                              narrow=nr == 16),
        "workspace_cache": _cache_summary(),
    }
    warnings = []
    if _bindings.BLAS_SLOW:
        if "OPENBLAS_CORETYPE" in os.environ:
            advice = (f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} in the environment "
                      "chose them: unset it (on AMD AVX-512 CPUs rnncore then selects "
                      "SkylakeX) or name this CPU's kernel set")
        elif "loaded before rnncore" in _CORETYPE_STATE["reason"]:
            advice = "import rnncore before scipy.linalg"
        else:
            advice = ("set OPENBLAS_CORETYPE to this CPU's kernel set (SkylakeX for AVX-512, "
                      "Haswell for AVX2) before starting Python")
        warnings.append(
            f"SciPy's OpenBLAS runs its {blas_corename()} kernels, below this CPU's "
            f"{simd.simd_level()} (about half the GEMM speed). rnncore's time loops run "
            "their all-steps products on their own kernels instead"
            + ("" if small_machine else " (not on machines of more than 8 CPUs)")
            + f"; other SciPy products do not: {advice}.")
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
