"""In-process A/B of the time loops' all-steps products while BLAS runs below the CPU's level.

When SciPy's OpenBLAS runs kernels below the CPU's SIMD level (its AVX2 "Haswell"
kernels on an AVX-512 CPU: ``OPENBLAS_CORETYPE=Haswell`` in the environment, or a CPU
OpenBLAS does not know), rnncore runs the products its loops would give BLAS outside
their steps (the input projection, dx after the loop, weight gradients the dW kernel
did not take) on its own packed GEMM (src/_kernels/rc_matmul.h: rc_blas_slow; decided
at import, ``rnncore._bindings.BLAS_SLOW``). This script times the same model with the
flag on (rnncore's kernel) and off (BLAS) in alternate blocks within one process::

    OPENBLAS_CORETYPE=Haswell python bench/blas_slow_ab.py lstm 100,32,256,256 \\
        50,64,512,1024 [--fb] [--threads 2] [--blocks 8] [--ms 200]

Run it with the BLAS kernels under test (the flag changes only where rnncore's
products go, not OpenBLAS's kernels). Prints, per shape, the median ms of each and
``blas/kernel`` (> 1: rnncore's kernel is faster). Benchmarks never assert.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import model_ab_args, run_model_ab  # noqa: E402


def main(argv=None):
    args, shapes = model_ab_args(__doc__.split("\n\n")[0], argv)

    from rnncore import _bindings
    from rnncore._runtime import blas

    print(f"SciPy's OpenBLAS kernels: {blas.blas_corename()}; at import BLAS_SLOW = "
          f"{_bindings.BLAS_SLOW}", flush=True)
    run_model_ab(args, shapes, lambda on: _bindings.set_blas_slow(on),
                 lambda: _bindings.set_blas_slow(_bindings.BLAS_SLOW), "kernel", "blas")
    return 0


if __name__ == "__main__":
    sys.exit(main())
