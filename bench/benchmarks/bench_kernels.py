"""The functional API: one layer, one direction, one kernel call per pass.

``rnncore.functional.<cell>_forward`` / ``<cell>_backward`` with C-ordered
(D, GH) / (H, GH) weights, batch-first x (N, T, D).
"""
import numpy as np

from rnncore import functional as F

from .common import CELLS, DTYPES, SHAPE_NAMES, SHAPES, TIMEOUT, functional_args, sequence


class Functional:
    """Forward and forward+backward of one layer, kernel-backed functional API."""

    params = [CELLS, SHAPE_NAMES, DTYPES]
    param_names = ["cell", "shape", "dtype"]
    timeout = TIMEOUT

    def setup(self, cell, shape, dtype):
        T, N, D, H = SHAPES[shape]
        self.x = sequence(N, T, D, dtype)
        self.dh = sequence(N, T, H, dtype)
        self.args = functional_args(cell, N, D, H, np.dtype(dtype))
        self.fwd = getattr(F, f"{cell}_forward")
        self.bwd = getattr(F, f"{cell}_backward")

    def time_forward(self, cell, shape, dtype):
        self.fwd(self.x, *self.args)

    def time_forward_backward(self, cell, shape, dtype):
        res = self.fwd(self.x, *self.args)
        self.bwd(self.dh, res[-1])

    def peakmem_forward_backward(self, cell, shape, dtype):
        res = self.fwd(self.x, *self.args)
        self.bwd(self.dh, res[-1])
