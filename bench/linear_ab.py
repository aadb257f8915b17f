"""In-process A/B of the dense layers' products: rnncore's packed kernel against BLAS.

``rnncore.nn.Linear`` computes ``y = x W^T``, ``dx = dy W`` (``_kernels.linear.matmul``)
and ``dW += dy^T x`` (``matmul_tn_add``, the dW kernel) on rnncore's kernels where their
rules say so (src/_kernels/rc_matmul.h), else on SciPy's BLAS; the test hooks
``_set_matmul(0)`` and ``_set_weight_grads(0)`` send all three to BLAS. This script
times each product at (M, D, F) = (rows, in_features, out_features), and the char-LM's
training step (``rnncore train``'s defaults, whose read-out is such a Linear), with the
kernel and with BLAS in alternate blocks within one process::

    python bench/linear_ab.py 3200,256,96 3200,256,1024 [--charlm] [--threads 2]
        [--blocks 8] [--ms 200]

Prints the median ms of each, GFLOP/s, and ``blas/kernel`` (> 1: the kernel is
faster). Benchmarks never assert.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import timed_ab  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", metavar="M,D,F", help="rows, in and out features")
    ap.add_argument("--charlm", action="store_true", help="also the char-LM training step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--ms", type=float, default=200.0)
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
    if any(len(s) != 3 or min(s) < 1 for s in shapes):
        ap.error("a shape is three positive integers M,D,F")

    from threadpoolctl import threadpool_limits
    from rnncore import _bindings
    from rnncore._kernels import linear
    from rnncore._validation import blas_matmul, blas_matmul_add

    def set_kernel(on):
        linear._set_matmul(1 if on else 0)
        linear._set_weight_grads(1 if on else 0)

    rng = np.random.default_rng(0)
    try:
        with threadpool_limits(args.threads):
            for M, D, F in shapes:
                x = rng.standard_normal((M, D)).astype(np.float32)
                w = rng.standard_normal((F, D)).astype(np.float32)
                dy = rng.standard_normal((M, F)).astype(np.float32)
                g = np.zeros((F, D), np.float32)
                flop = 2.0 * M * D * F
                for name, run in (("y = x W^T", lambda: _bindings.matmul(x, w.T)),
                                  ("dx = dy W", lambda: _bindings.matmul(dy, w)),
                                  ("dW += dy^T x", lambda: _bindings.matmul_tn_add(dy, x, g))):
                    k, b = timed_ab(run, set_kernel, args.blocks, args.ms)
                    print(f"({M},{D},{F}) {name:13s} kernel {k * 1e3:8.3f} ms "
                          f"{flop / k / 1e9:5.0f} GF/s  blas {b * 1e3:8.3f} ms "
                          f"{flop / b / 1e9:5.0f} GF/s  blas/kernel {b / k:.3f}", flush=True)
            if args.charlm:
                from _harness.rows import _charlm_text
                from rnncore import charlm
                cfg = charlm.TrainConfig()
                trainer = charlm.Trainer(_charlm_text(200_000), cfg)
                k, b = timed_ab(trainer.train_step, set_kernel, args.blocks, args.ms * 2)
                print(f"char-LM step ({cfg.cell}, H={cfg.hidden}, N={cfg.batch_size}, "
                      f"T={cfg.seq_len}, V={len(trainer.vocab)}): kernel {k * 1e3:.2f} ms  "
                      f"blas {b * 1e3:.2f} ms  blas/kernel {b / k:.3f}", flush=True)
    finally:
        set_kernel(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
