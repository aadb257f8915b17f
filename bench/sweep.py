"""rnncore vs PyTorch over a grid of shapes: where is rnncore not faster?

Usage::

    python bench/sweep.py [--quick] [--cells rnn,gru,lstm] [--passes fwd,fb]
                          [--threads N] [--layers L] [--bidirectional]
                          [--max-gflop G] [--only T,N,D,H ...] [--json OUT.json]

``bench/compare.py`` times four shapes in depth; the project's promise is
"never slower than PyTorch at any shape". This script times each cell at every
(T, N, D, H) of a grid -- T in (1, 8, 100), N in (1, 4, 16, 64, 256), H in (32,
128, 512) with D = H, and a few others (EXTRA) -- in forward-only inference (rnncore
``eval()``, torch ``inference_mode``) and forward+backward, the two libraries
side by side (interleaved repeats, as compare.py's rows), float32, batch_first,
one layer and direction unless ``--layers`` / ``--bidirectional`` say otherwise.
Shapes whose forward+backward exceeds ``--max-gflop`` GEMM GFLOP (default 20)
are left out: the large training shapes are compare.py's.

It prints a row per shape and pass (torch / rnncore of the median times: > 1
means rnncore is faster), then every row below 1.0 sorted by its ratio, and
the lowest ratio per cell and pass. A ratio under 1.0 on a shared VM can be a
slow spell: rerun the shape (``--only T,N,D,H``) before believing it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import rnncore  # first: it picks SciPy's BLAS kernels before scipy.linalg loads

from _harness.contestants import (CELLS, gemm_flops, import_torch, make_inputs, rc_model_fns,
                                  torch_fns)
from _harness.machine import threads_arg, machine_header, print_header
from _harness.table import Table, fmt_ms, fmt_num, speed_ratio
from _harness.timing import Budget, measure_interleaved

TS = (1, 8, 100)
NS = (1, 4, 16, 64, 256)
HS = (32, 128, 512)
#: D != H: a narrow input (embeddings, features) and a wide one (a stacked layer's)
EXTRA = ((100, 16, 16, 256), (100, 16, 1024, 256), (50, 1, 512, 1024), (20, 64, 64, 1024))


def grid(max_gflop, cells, layers, dirs):
    """(T, N, D, H) of the sweep, smallest first, those within max_gflop (fb, any cell)."""
    shapes = [(T, N, H, H) for H in HS for N in NS for T in TS] + list(EXTRA)
    keep = [s for s in shapes
            if max(gemm_flops(c, *s, "fb", layers, dirs) for c in cells) <= max_gflop * 1e9]
    return sorted(set(keep), key=lambda s: gemm_flops("lstm", *s, "fb"))


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python bench/sweep.py",
                                 description="rnncore vs PyTorch over a grid of shapes.")
    ap.add_argument("--quick", action="store_true", help="fewer repeats (0.4 s a contestant)")
    ap.add_argument("--cells", default=",".join(CELLS), help="comma-separated: rnn,gru,lstm")
    ap.add_argument("--passes", default="fwd,fb", help="comma-separated: fwd,fb")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS/OpenMP and torch (default: the usable CPUs)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--max-gflop", type=float, default=20.0,
                    help="leave out shapes whose fb exceeds this many GEMM GFLOP (default 20)")
    ap.add_argument("--only", nargs="+", metavar="T,N,D,H", default=None,
                    help="time these shapes instead of the grid")
    ap.add_argument("--json", metavar="PATH", help="write the header and every figure here")
    a = ap.parse_args(argv)
    a.cells = [c.strip() for c in a.cells.split(",") if c.strip()]
    a.passes = [p.strip() for p in a.passes.split(",") if p.strip()]
    if not a.cells or any(c not in CELLS for c in a.cells):
        ap.error(f"--cells: expected some of {CELLS}, got {a.cells}")
    if not a.passes or any(p not in ("fwd", "fb") for p in a.passes):
        ap.error(f"--passes: expected some of ('fwd', 'fb'), got {a.passes}")
    if a.layers < 1:
        ap.error("--layers must be >= 1")
    if a.max_gflop <= 0:
        ap.error("--max-gflop must be > 0")
    if a.only is not None:
        try:
            a.only = [tuple(int(v) for v in s.split(",")) for s in a.only]
        except ValueError:
            ap.error("--only: shapes are T,N,D,H (integers)")
        if any(len(s) != 4 or min(s) < 1 for s in a.only):
            ap.error("--only: shapes are T,N,D,H (four positive integers)")
    a.threads = threads_arg(ap, a.threads)
    a.budget = Budget(a.quick)
    return a


def main(argv=None):
    o = _parse(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    t_start = time.perf_counter()
    from threadpoolctl import threadpool_limits
    limiter = threadpool_limits(limits=o.threads)
    rnncore.set_parallel_directions(o.threads > 1)
    torch = import_torch(o.threads)
    if torch is None:
        out.write("PyTorch is not installed: nothing to compare against\n")
        return 1
    dirs = 2 if o.bidirectional else 1
    header = machine_header(o.threads, torch)
    header.update(quick=o.quick, layers=o.layers, dirs=dirs, cells=o.cells, passes=o.passes)
    print_header(header, [], out)
    shapes = o.only or grid(o.max_gflop, o.cells, o.layers, dirs)
    out.write(f"\n== sweep: {len(shapes)} shapes x {len(o.cells)} cells x {len(o.passes)} "
              f"passes; layers {o.layers}, {'bi' if dirs == 2 else 'uni'}directional, float32, "
              "batch_first; ms = median; torch/rc > 1: rnncore faster ==\n")
    t = Table(out, [("cell", 4, "<"), ("T", 3, ">"), ("N", 3, ">"), ("D", 4, ">"),
                    ("H", 4, ">"), ("pass", 4, "<"), ("rnncore", 8, ">"), ("torch", 8, ">"),
                    ("torch/rc", 8, ">"), ("mean t/rc", 9, ">"), ("GF/s:rc", 7, ">")])
    t.header()
    records = []
    try:
        for cell in o.cells:
            for (T, N, D, H) in shapes:
                x, dout = make_inputs(T, N, D, H * dirs)
                rc = rc_model_fns(cell, D, H, x, dout, o.layers, dirs)
                th = torch_fns(torch, cell, D, H, x, dout, o.layers, dirs)
                for pas in o.passes:
                    pi = 0 if pas == "fwd" else 1
                    res = measure_interleaved({"rnncore": rc[pi], "torch": th[pi]}, o.budget)
                    r, q = res["rnncore"], res["torch"]
                    ratio = speed_ratio(q, r)
                    fl = gemm_flops(cell, T, N, D, H, pas, o.layers, dirs)
                    gf = fl / (r["median_ms"] * 1e-3) / 1e9 if "median_ms" in r else None
                    t.line([cell, T, N, D, H, pas, fmt_ms(r), fmt_ms(q), fmt_num(ratio, 2),
                            fmt_num(speed_ratio(q, r, "mean_ms"), 2), fmt_num(gf)])
                    records.append(dict(cell=cell, T=T, N=N, D=D, H=H, pass_=pas,
                                        layers=o.layers, dirs=dirs, rnncore=r, torch=q,
                                        ratio=ratio, gflop=fl / 1e9))
    except KeyboardInterrupt:
        header["interrupted"] = True
        out.write("\ninterrupted; the figures so far are kept\n")
    finally:
        if limiter is not None:
            limiter.restore_original_limits()
    rated = [rec for rec in records if rec["ratio"] is not None]
    slow = sorted((rec for rec in rated if rec["ratio"] < 1.0), key=lambda rec: rec["ratio"])
    out.write(f"\n== rows where rnncore is slower (torch/rc < 1.0): {len(slow)} of {len(rated)} ==\n")
    for rec in slow:
        out.write(f"{rec['cell']:4} {rec['T']:>3} {rec['N']:>3} {rec['D']:>4} {rec['H']:>4} "
                  f"{rec['pass_']:4} {rec['ratio']:.2f} (rnncore "
                  f"{fmt_ms(rec['rnncore'])}, torch {fmt_ms(rec['torch'])} ms)\n")
    out.write("\n== lowest torch/rc per cell and pass ==\n")
    for cell in o.cells:
        for pas in o.passes:
            mine = [rec for rec in rated if rec["cell"] == cell and rec["pass_"] == pas]
            if mine:
                lo = min(mine, key=lambda rec: rec["ratio"])
                out.write(f"{cell:4} {pas:4} {lo['ratio']:.2f} at (T, N, D, H) = "
                          f"({lo['T']}, {lo['N']}, {lo['D']}, {lo['H']}); median of the "
                          f"row ratios {sorted(r_['ratio'] for r_ in mine)[len(mine) // 2]:.2f}\n")
    elapsed = time.perf_counter() - t_start
    out.write(f"\ndone in {elapsed:.0f} s\n")
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"header": header, "records": records, "elapsed_s": elapsed}, f, indent=1,
                      default=str)
        out.write(f"wrote {o.json}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
