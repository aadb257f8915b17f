"""Background load for ``compare.py --load N``: N busy processes while the rows run.

Each is a separate Python process doing a one-thread NumPy matmul loop
((256 x 256)(256 x 256) float64, ~30 MFLOP a product), the kind of neighbour a
shared machine has. It measures how a ratio holds up when one core is taken
(the issue's "each ratio stays >= 0.9x its quiet value under one other busy
process"). The processes are started with the BLAS/OpenMP thread variables
set to 1, wait until each has reported it is running, and are terminated (by
their own process ids) when the rows are done, also after an error or Ctrl-C.
"""
from __future__ import annotations

import os
import subprocess
import sys

#: what every load process runs (prints one line once it is busy)
_BUSY = """
import numpy as np
a = np.random.default_rng(0).standard_normal((256, 256))
b = a @ a
print("busy", flush=True)
while True:
    b = a @ a
"""

DESCRIPTION = "1-thread NumPy (256x256) float64 matmul loop per process"

_ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


class Load:
    """``n`` busy background processes; :meth:`stop` ends them (idempotent)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.procs = []
        env = dict(os.environ, **{k: "1" for k in _ONE_THREAD})
        try:
            for _ in range(self.n):
                p = subprocess.Popen([sys.executable, "-c", _BUSY], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
                self.procs.append(p)
            for p in self.procs:  # each is busy before the first row is timed
                if p.stdout.readline().strip() != "busy":
                    raise RuntimeError(f"--load: a load process exited (code {p.poll()})")
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list:
        return [p.pid for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
