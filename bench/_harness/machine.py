"""The machine header: CPU, threads, library versions, BLAS, the best-sgemm ceiling and the
FMA peak."""
from __future__ import annotations

import io
import os
import platform
import subprocess
import threading
import time

import numpy as np

import rnncore
from rnncore._runtime.threads import parallel_directions_enabled as _parallel_directions_enabled

from .contestants import seeded_rng
from .timing import measure


def _cpuinfo():
    out = {"model_name": platform.processor() or "unknown", "vendor": None, "family": None,
           "model": None, "stepping": None, "avx512": None, "flags_simd": []}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return out
    keys = {"model name": "model_name", "vendor_id": "vendor", "cpu family": "family",
            "model": "model", "stepping": "stepping"}
    seen = set()
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k in keys and k not in seen:
            seen.add(k)
            out[keys[k]] = v.strip()
        elif k == "flags" and not out["flags_simd"]:
            flags = v.split()
            out["flags_simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                             "avx512_bf16", "avx512_vnni", "amx_tile")
                                 if f in flags]
            out["avx512"] = "avx512f" in flags
    return out


def _git_revision():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _threadpools():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads",
            "threading_layer")
    return [dict({k: i.get(k) for k in keep if k in i},
                 library=os.path.basename(i.get("filepath", "")))
            for i in threadpool_info()]


_ISA_ENV = ("OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
            "MKL_ENABLE_INSTRUCTIONS")


def _torch_capability(torch_mod):
    try:
        return torch_mod.backends.cpu.get_cpu_capability()
    except Exception:  # no torch, or a torch without the query
        return None


def machine_header(threads, torch_mod=None):
    """The machine, thread and library facts printed above the tables."""
    from rnncore._kernels import simd

    cfg = rnncore.show_config(file=io.StringIO())
    cpu = _cpuinfo()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpu": cpu["model_name"],
        "cpu_vendor": cpu["vendor"],
        "cpu_family_model_stepping": f"{cpu['family']}/{cpu['model']}/{cpu['stepping']}",
        "cpu_simd_flags": cpu["flags_simd"],
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "loadavg_start": list(load) if load else None,
        "python": platform.python_version(),
        "rnncore": rnncore.__version__,
        "rnncore_git": _git_revision(),
        "numpy": np.__version__,
        "scipy": cfg.get("scipy"),
        "torch": getattr(torch_mod, "__version__", None),
        "torch_threads": torch_mod.get_num_threads() if torch_mod is not None else None,
        "torch_cpu_capability": _torch_capability(torch_mod),
        # instruction-set and BLAS-kernel overrides in effect (e.g. an AVX2-only run on an
        # AVX-512 machine: see bench/README.md)
        "isa_env": {k: os.environ[k] for k in _ISA_ENV if k in os.environ},
        "blas_library": os.path.basename(str(cfg.get("blas_library"))),
        "blas_version": cfg.get("blas_version"),
        "blas_architecture": cfg.get("blas_architecture"),
        "blas_threads": cfg.get("blas_threads"),
        "blas_coretype_override": cfg.get("blas_coretype_override"),
        "kernel_simd": simd.simd_level(),
        # where the time loops' all-steps products run (BLAS, or rnncore's packed GEMM
        # while BLAS's kernels are below the CPU's level; older rnncore: not reported)
        "all_steps_products": cfg.get("all_steps_products"),
        # which vendor's measured choices the loops' shape rules take (older: not reported)
        "loop_shape_rules": cfg.get("loop_shape_rules"),
        "parallel_directions": _parallel_directions_enabled(),
        "threadpools": _threadpools(),
        "warnings": cfg.get("warnings", []),
    }


def best_sgemm(budget, torch_mod=None):
    """float32 GEMM GFLOP/s: SciPy's sgemm (the BLAS rnncore's kernels call) at 2048^3
    and at an LSTM step's (64x1024)(1024x4096), and ``torch.mm`` at 2048^3 when
    PyTorch is there (MKL/oneDNN: the ceiling PyTorch's RNNs run against)."""
    from scipy.linalg import blas

    rng = seeded_rng()
    res = []

    def record(lib, m, k, n, r):
        fl = 2 * m * n * k
        res.append(dict(r, lib=lib, shape=f"({m}x{k})({k}x{n})", gflop=fl / 1e9,
                        gflops=fl / (r["median_ms"] * 1e-3) / 1e9,
                        gflops_best=fl / (r["min_ms"] * 1e-3) / 1e9))

    for m, k, n in ((2048, 2048, 2048), (64, 1024, 4096)):
        a = np.asfortranarray(rng.standard_normal((m, k), dtype=np.float32))
        b = np.asfortranarray(rng.standard_normal((k, n), dtype=np.float32))
        c = np.zeros((m, n), dtype=np.float32, order="F")
        record("scipy", m, k, n,
               measure(lambda: blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=1), budget))
    if torch_mod is not None:
        for m, k, n in ((2048, 2048, 2048), (64, 1024, 4096)):
            a = torch_mod.from_numpy(rng.standard_normal((m, k), dtype=np.float32))
            b = torch_mod.from_numpy(rng.standard_normal((k, n), dtype=np.float32))
            c = torch_mod.empty((m, n), dtype=torch_mod.float32)
            record("torch", m, k, n, measure(lambda: torch_mod.mm(a, b, out=c), budget))
    return res


def fma_peak(threads, seconds=0.1, repeats=3):
    """The machine's arithmetic ceiling for this run: float32 GFLOP/s of ``threads``
    threads each running independent vector FMAs in registers at the kernels' SIMD
    level (``rnncore._kernels.simd._fma_rate``), all at once; the best of ``repeats``
    tries. No GEMM and no RNN passes it, so ``total / torch GF/s`` bounds the
    torch/rc ratio any implementation of a row's counted flops can reach here.
    None when the kernels' level has no vector FMA (baseline builds)."""
    try:
        from rnncore._kernels.simd import _fma_rate, simd_level
    except ImportError:  # an rnncore without the hook
        return None
    best = None
    for _ in range(repeats):
        start = threading.Barrier(threads)
        rates = [None] * threads

        def run(i):
            start.wait()
            rates[i] = _fma_rate(seconds)   # releases the GIL: one core per thread

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if any(r is None for r in rates):
            return None
        if best is None or sum(rates) > best["total_gflops"]:
            best = {"total_gflops": sum(rates), "per_thread_gflops": rates}
    best.update(threads=threads, simd=simd_level(), seconds=seconds, repeats=repeats)
    return best


def print_header(h, sg, out):
    """The header lines above the tables."""
    out.write("rnncore benchmark: rnncore vs rnncore.reference vs PyTorch (float32)\n")
    out.write(f"  time        {h['time']}   host {h['host']}\n")
    out.write(f"  cpu         {h['cpu']} ({h['cpu_vendor']}, family/model/stepping "
              f"{h['cpu_family_model_stepping']}; {', '.join(h['cpu_simd_flags'])}); "
              f"{h['cpu_count']} CPUs, {h['affinity']} usable\n")
    la = h.get("loadavg_start")
    out.write(f"  threads     {h['threads']} (BLAS/OpenMP via threadpoolctl; torch "
              f"{h['torch_threads']}); parallel directions {h['parallel_directions']}; "
              f"load average {', '.join(f'{v:.2f}' for v in la) if la else '?'}\n")
    out.write(f"  versions    rnncore {h['rnncore']} ({h['rnncore_git'] or 'no git'}), numpy "
              f"{h['numpy']}, scipy {h['scipy']}, torch {h['torch'] or 'not available'}"
              f"{' (CPU capability ' + h['torch_cpu_capability'] + ')' if h.get('torch_cpu_capability') else ''}, "
              f"python {h['python']}\n")
    if h.get("isa_env"):
        out.write("  isa env     " + " ".join(f"{k}={v}" for k, v in h["isa_env"].items()) + "\n")
    out.write(f"  BLAS        {h['blas_library']} {h['blas_version']} arch "
              f"{h['blas_architecture']}, {h['blas_threads']} threads "
              f"({h['blas_coretype_override']})\n")
    others = [p for p in h["threadpools"] if p.get("library") != h["blas_library"]]
    for p in others:
        out.write(f"  also        {p.get('library')} {p.get('internal_api')} {p.get('version')} "
                  f"{p.get('architecture') or ''} {p.get('num_threads')} threads\n")
    out.write(f"  kernels     SIMD {h['kernel_simd']}"
              + (f"; all-steps products on {h['all_steps_products']}"
                 if h.get("all_steps_products") else "")
              + (f"; shape rules {h['loop_shape_rules'].split(':')[0]}"
                 if h.get("loop_shape_rules") else "") + "\n")
    if "load" in h:
        out.write(f"  load        {h['load']} busy background process(es) during the rows"
                  f"{' (' + h['load_kind'] + ')' if h['load'] else ' (none)'}\n")
    for w in h.get("warnings") or []:
        if "OPENBLAS_CORETYPE" in w and "OPENBLAS_CORETYPE" in (h.get("isa_env") or {}):
            continue  # the kernel choice was capped on purpose (the isa env line says so)
        out.write(f"  WARNING     {w}\n")
    pk = h.get("fma_peak")
    if pk:
        out.write(f"  fma peak    {pk['total_gflops']:.1f} GFLOP/s on {pk['threads']} thread(s) "
                  f"({', '.join(f'{r:.1f}' for r in pk['per_thread_gflops'])}): float32 vector "
                  f"FMAs in registers at the kernels' level, the ceiling no GEMM there passes\n")
    for s in sg:
        name = "sgemm" if s.get("lib", "scipy") == "scipy" else "torch.mm"
        out.write(f"  {name:<11} {s['shape']:<22} {s['gflops']:7.1f} GFLOP/s median, "
                  f"{s['gflops_best']:7.1f} best\n")
    out.flush()


def threads_arg(ap, requested):
    """A script's ``--threads``: the count asked for, or (none or 0) the CPUs this
    process may run on (its affinity); ``ap.error`` (argparse) for a negative count."""
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = requested or ncpu or 1
    if threads < 1:
        ap.error("--threads must be >= 1")
    return threads
