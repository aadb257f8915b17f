"""rnncore's packed GEMM against BLIS (the ``blis`` wheel on PyPI) and SciPy's OpenBLAS.

Issue 14 names a well-kept GEMM library as an alternative to rnncore's own kernel
where it measures better, for example ``blis`` on PyPI (explosion/cython-blis:
BLIS with a Cython ``nogil`` API). This script measures the three on one thread
each (that wheel is built without threading; rnncore's loops call their product
from each of their own threads) at the products of the issue's rows, float32,
``C = A B`` with A (M, K) and B (K, N) C-ordered::

    python bench/blis_ab.py [--shapes M,K,N ...] [--rounds 5] [--ms 150]

Default shapes: the per-step recurrent products (N rows)(H, G*H) of the LSTM rows
(16, 128, 512), (32, 256, 1024), (64, 1024, 4096), the single-sequence GEMV-like
(1, 64, 256), and the all-steps input projections (T*N rows) (3200, 256, 1024),
(3200, 512, 4096), and (1024, 1024, 1024).

Each library packs B on every call here (rnncore: ``simd._gemm_packed``, which
packs B as a time loop does once per call, then multiplies; BLIS and OpenBLAS
pack inside their GEMM), and each writes into the same existing C: a per-call
comparison on equal terms. rnncore's time loops pack their weight once for all
T steps, so they run faster than the rnncore column here. OpenBLAS is called on
the transposed problem (C^T = B^T A^T on Fortran-ordered views of A, B and C),
so SciPy copies and allocates nothing. The libraries take turns as in
``compare.py`` (``_harness.timing.measure_interleaved``: ``--rounds`` blocks
each, the order rotating, about ``--ms`` milliseconds a block); the table gives
GFLOP/s at each one's median call and the Python call floor (the median time of
a 1x1x1 product) of each entry point. It also prints the kernel set
BLIS chose for this CPU (``bli_arch_query_id``): a CPU the wheel has no
configuration for runs BLIS's generic reference kernels. Benchmarks never assert.
"""
import argparse
import ctypes
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import parse_shape  # noqa: E402

DEFAULT_SHAPES = [(1, 64, 256), (16, 128, 512), (32, 256, 1024), (64, 1024, 4096),
                  (3200, 256, 1024), (3200, 512, 4096), (1024, 1024, 1024)]


def blis_arch(blis_cy):
    """The kernel set BLIS chose on this CPU (e.g. 'skx', 'zen2', 'generic'), or why unknown."""
    try:
        lib = ctypes.CDLL(blis_cy.__file__)
        name = lib.bli_arch_string
        name.restype = ctypes.c_char_p
        return name(lib.bli_arch_query_id()).decode()
    except (OSError, AttributeError) as e:
        return f"unknown ({type(e).__name__})"


def contestants(a, b, c):
    """{name: a call writing c = a @ b into c}: rnncore (packing b per call), BLIS, OpenBLAS."""
    import blis.py
    from scipy.linalg.blas import sgemm
    from rnncore._kernels import simd
    zero = np.float32(0)
    # Fortran-ordered views: OpenBLAS computes c^T = b^T a^T into c's own memory
    at, bt, ct = a.T, b.T, c.T

    def openblas():
        return sgemm(1.0, bt, at, beta=0.0, c=ct, overwrite_c=1)

    return {"rnncore": lambda: simd._gemm_packed(a, b, c, zero),
            "blis": lambda: blis.py.gemm(a, b, out=c, beta=0.0),
            "openblas": openblas}


def timed(fns, rounds, ms):
    """name -> median ms of one call (nan on an error, reported), the contestants
    interleaved: `rounds` blocks each of about `ms` milliseconds."""
    from _harness.timing import Budget, measure_interleaved
    budget = Budget(quick=True)
    budget.seconds = rounds * ms / 1e3
    budget.max_repeats = 10 ** 7       # microsecond calls: as many as the time allows
    recs = measure_interleaved({k: (lambda f=f: f) for k, f in fns.items()}, budget, rounds)
    for name, rec in recs.items():
        if "error" in rec:
            print(f"{name}: {rec['error']}", file=sys.stderr)
    return {k: recs[k].get("median_ms", float("nan")) for k in fns}


def check_agree(fns, a, b, c):
    """Every contestant's product equals a @ b (float64) within float32 GEMM rounding."""
    want = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 * np.sqrt(a.shape[1]) * (np.abs(a) @ np.abs(b)).max()
    for name, fn in fns.items():
        c[...] = np.nan
        fn()
        err = float(np.abs(c - want).max())
        if not err <= tol:
            raise RuntimeError(f"{name}'s product is off by {err:.3g} (tolerance {tol:.3g})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", metavar="M,K,N", help="products (default: the issue's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--ms", type=float, default=150.0)
    args = ap.parse_args(argv)
    try:
        shapes = ([parse_shape(s, "M,K,N") for s in args.shapes] if args.shapes
                  else DEFAULT_SHAPES)
    except ValueError as e:
        ap.error(str(e))
    if args.rounds < 1 or not 0 < args.ms < float("inf"):
        ap.error("--rounds must be >= 1 and --ms a positive number of milliseconds")
    try:
        import blis
        import blis.cy
        import blis.about
    except ImportError:
        print("blis is not installed (pip install blis): nothing to compare", file=sys.stderr)
        return 2

    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        print("threadpoolctl is not installed (pip install threadpoolctl): it limits "
              "OpenBLAS to one thread here", file=sys.stderr)
        return 2
    import rnncore
    from _harness.machine import _cpuinfo, _git_revision
    from rnncore._kernels import simd

    if simd._gemm_packed_nr(np.float32) <= 0:
        print("rnncore has no packed GEMM on this CPU (needs AVX2+FMA or AVX-512)",
              file=sys.stderr)
        return 2
    cpu = _cpuinfo()
    # SciPy's OpenBLAS (NumPy may load another one)
    ob = [p for p in threadpool_info() if p.get("internal_api") == "openblas"
          and "scipy" in os.path.basename(os.path.dirname(p.get("filepath", "")))]
    print(f"cpu       {cpu['model_name']} ({cpu['vendor']}, family/model {cpu['family']}/"
          f"{cpu['model']}; {', '.join(cpu['flags_simd'])})")
    rev = _git_revision()
    print(f"rnncore   {rnncore.__version__}{f' ({rev})' if rev else ''}, packed GEMM at "
          f"{simd.simd_level()}, panels {simd._gemm_packed_nr(np.float32)} wide")
    print(f"blis      {blis.about.__version__}, kernel set '{blis_arch(blis.cy)}'")
    if ob:
        print(f"openblas  {ob[0].get('version')} {ob[0].get('architecture')} "
              f"({os.path.basename(ob[0].get('filepath', ''))})"
              + (f", OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']}"
                 if os.environ.get("OPENBLAS_CORETYPE") else ""))
    else:
        print("openblas  SciPy's BLAS (threadpoolctl did not find its OpenBLAS)")
    print("threads   1 each (BLIS's wheel has no threading; OpenBLAS limited by threadpoolctl)")
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        one = np.ones((1, 1), np.float32)
        floor = timed(contestants(one, one, np.zeros((1, 1), np.float32)), 1, 20.0)
        print("call floor (1x1x1) " + "  ".join(f"{k} {v * 1e3:.1f} us"
                                                for k, v in floor.items()))
        print(f"{'(M, K, N)':>20s} {'rnncore':>9s} {'blis':>9s} {'openblas':>9s}   GFLOP/s, "
              f"at the median call of {args.rounds} interleaved blocks; rnncore/blis, "
              "rnncore/openblas", flush=True)
        for M, K, N in shapes:
            a = rng.standard_normal((M, K)).astype(np.float32)
            b = rng.standard_normal((K, N)).astype(np.float32)
            c = np.zeros((M, N), np.float32)
            fns = contestants(a, b, c)
            check_agree(fns, a, b, c)
            med = {k: 2.0 * M * K * N / (v / 1e3) / 1e9
                   for k, v in timed(fns, args.rounds, args.ms).items()}
            print(f"{str((M, K, N)):>20s} {med['rnncore']:9.1f} {med['blis']:9.1f} "
                  f"{med['openblas']:9.1f}   {med['rnncore'] / med['blis']:5.2f}x "
                  f"{med['rnncore'] / med['openblas']:5.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
