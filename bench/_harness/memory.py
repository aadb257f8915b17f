"""The memory group: peak bytes of one forward+backward (traced here; RSS in a fresh process)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import numpy as np

from .contestants import CORE_SHAPES, import_torch, make_inputs, min_bytes, rc_model, torch_model
from .table import Table


def _mib(v):
    m = v / 2.0 ** 20
    return f"{m:.3f}" if m < 1 else f"{m:.2f}" if m < 10 else f"{m:.1f}"


def _proc_status():
    d = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":")
                d[k] = int(v.split()[0]) * 1024
    return d


def _reset_hwm():
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _malloc_trim():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _mem_fb(impl, torch, cell, T, N, D, H):
    """(setup-free fb callable, warm-up callable) for the memory rows."""
    x, dout = make_inputs(T, N, D, H)
    xs, ds = np.ascontiguousarray(x[:, :2]), np.ascontiguousarray(dout[:, :2])
    if impl == "rnncore":
        m = rc_model(cell, D, H)

        def warm():
            m(xs)
            m.backward(ds)

        def fb():
            y, hn = m(x)
            dx, dh0 = m.backward(dout)
            return y, hn, dx, dh0
        return fb, warm
    m = torch_model(torch, cell, D, H)
    xt = torch.from_numpy(x).requires_grad_(True)
    dt = torch.from_numpy(dout)
    xst = torch.from_numpy(xs).requires_grad_(True)
    dst = torch.from_numpy(ds)

    def warm():
        m(xst)[0].backward(dst)

    def fb():
        xt.grad = None
        y, hn = m(xt)
        y.backward(dt)
        return y, hn, xt.grad
    return fb, warm


def memory_worker(impl, threads, rows):
    """In a fresh process: peak-RSS delta of one fb per row; prints JSON lines."""
    try:
        from threadpoolctl import threadpool_limits
        _lim = threadpool_limits(limits=threads)  # noqa: F841
    except ImportError:
        pass
    torch = import_torch(threads) if impl == "torch" else None
    if impl == "torch" and torch is None:
        print(json.dumps({"error": "torch not importable"}), flush=True)
        return
    for cell, T, N, D, H in rows:
        rec = {"cell": cell, "T": T, "N": N, "D": D, "H": H, "impl": impl}
        try:
            fb, warm = _mem_fb(impl, torch, cell, T, N, D, H)
            warm()
            gc.collect()
            _malloc_trim()
            before = _proc_status()["VmRSS"]
            _reset_hwm()
            keep = fb()
            peak = _proc_status()["VmHWM"]
            rec.update(rss_before=before, rss_peak=peak, rss_delta=peak - before)
            del keep, fb, warm
        except Exception as e:
            rec["error"] = f"{type(e).__name__}: {e}"
        gc.collect()
        _malloc_trim()
        print(json.dumps(rec), flush=True)


def _run_memory_worker(impl, threads, rows, timeout=900):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="131072")
    bench_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-c",
           "import sys, json; sys.path.insert(0, sys.argv[4]); "
           "from _harness.memory import memory_worker; "
           "memory_worker(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))",
           impl, str(threads), json.dumps(rows), bench_dir]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}, "timed out"
    res = {}
    for line in p.stdout.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if "cell" in r:
            res[(r["cell"], r["T"], r["N"], r["D"], r["H"])] = r
    err = None if p.returncode == 0 else (p.stderr.strip().splitlines() or ["?"])[-1]
    return res, err


def _traced_peak(cell, T, N, D, H):
    import tracemalloc

    fb, warm = _mem_fb("rnncore", None, cell, T, N, D, H)
    warm()
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        keep = fb()
        cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del keep
    return peak, cur


def run_memory(opts, torch, out, records):
    shapes = CORE_SHAPES[:-1] if opts.quick else CORE_SHAPES
    rows = [(cell, *s) for cell in opts.cells for s in shapes]
    out.write("\n== memory: peak bytes of one forward+backward (model API, float32), MB = 2^20 "
              "bytes; (x) = multiple of min ==\n")
    out.write("   min = 4 B x (saved activations T*N*A*H, A = rnn 1, gru 5, lstm 6; + dx T*N*D; "
              "+ h_n/dh0 [c_n/dc0] S*N*H each)\n")
    out.write("   rc traced = tracemalloc peak (NumPy allocations, this process); "
              "RSS = peak-RSS delta in a fresh process (VmHWM reset), same method for both\n")
    if opts.quick:
        out.write(f"   (--quick: largest shape {CORE_SHAPES[-1]} skipped)\n")
    have_clear_refs = os.path.exists("/proc/self/clear_refs")
    rss = {}
    errs = {}
    if have_clear_refs:
        rss["rnncore"], errs["rnncore"] = _run_memory_worker("rnncore", opts.threads, rows)
        if torch is not None:
            rss["torch"], errs["torch"] = _run_memory_worker("torch", opts.threads, rows)
    else:
        out.write("   (no /proc/self/clear_refs: RSS columns not measured)\n")
    for k, e in errs.items():
        if e:
            out.write(f"   note: {k} memory worker: {e}\n")
    tab = Table(out, [("cell", 4, "<"), ("T", 3, ">"), ("N", 3, ">"), ("D", 4, ">"),
                      ("H", 4, ">"), ("min MB", 8, ">"), ("rc traced", 9, ">"), ("(x)", 5, ">"),
                      ("rc RSS", 8, ">"), ("(x)", 5, ">"), ("torch RSS", 9, ">"),
                      ("(x)", 5, ">")])
    tab.header()
    for row in rows:
        cell, T, N, D, H = row
        mn = min_bytes(cell, T, N, D, H)
        rec = {"group": "memory", "cell": cell, "T": T, "N": N, "D": D, "H": H,
               "dtype": "float32", "min_bytes": mn}
        try:
            peak, _ = _traced_peak(cell, T, N, D, H)
            rec["rc_traced_peak"] = peak
        except Exception as e:
            rec["rc_traced_error"] = f"{type(e).__name__}: {e}"
        for impl in ("rnncore", "torch"):
            r = rss.get(impl, {}).get(row)
            if r and "rss_delta" in r:
                rec[f"{'rc' if impl == 'rnncore' else impl}_rss_delta"] = r["rss_delta"]
            elif r and "error" in r:
                rec[f"{impl}_rss_error"] = r["error"]
        records.append(rec)

        def mb(k):
            v = rec.get(k)
            return ("-", "-") if v is None else (_mib(v), f"{v / mn:.1f}")
        a, b, c = mb("rc_traced_peak"), mb("rc_rss_delta"), mb("torch_rss_delta")
        tab.line([cell, T, N, D, H, _mib(mn), *a, *b, *c])
