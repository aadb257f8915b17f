"""The model API (``rnncore.RNN/GRU/LSTM``), variable lengths, and single-step cells."""
import numpy as np

import rnncore

from .common import (CELL, CELLS, DIRECTIONS, DTYPES, LENGTHS_LAYERS, LENGTHS_SHAPE, SHAPE_NAMES,
                     SHAPES, STEP_SIZES, TIMEOUT, lengths, model, rng, sequence)


class Models:
    """One layer, 1 or 2 directions, batch_first, training-mode forward (+ BPTT)."""

    params = [CELLS, SHAPE_NAMES, DTYPES, DIRECTIONS]
    param_names = ["cell", "shape", "dtype", "directions"]
    timeout = TIMEOUT

    def setup(self, cell, shape, dtype, directions):
        T, N, D, H = SHAPES[shape]
        self.model = model(cell, D, H, dtype, directions)
        self.x = sequence(N, T, D, dtype)
        self.dout = sequence(N, T, directions * H, dtype)

    def time_forward(self, cell, shape, dtype, directions):
        self.model(self.x)

    def time_forward_inference(self, cell, shape, dtype, directions):
        self.model(self.x, train=False)

    def time_forward_backward(self, cell, shape, dtype, directions):
        self.model(self.x)
        self.model.backward(self.dout)

    def peakmem_forward_backward(self, cell, shape, dtype, directions):
        self.model(self.x)
        self.model.backward(self.dout)


class Lengths:
    """2-layer models on a zero-padded batch: the padded run vs ``lengths=``."""

    params = [CELLS, DIRECTIONS, ["padded", "lengths"]]
    param_names = ["cell", "directions", "batch"]
    timeout = TIMEOUT

    def setup(self, cell, directions, batch):
        T, N, D, H = LENGTHS_SHAPE
        lens = lengths(T, N)
        mask = (np.arange(T)[None, :] < lens[:, None])[:, :, None]
        self.x = (sequence(N, T, D, "float32") * mask).astype(np.float32)
        self.dout = sequence(N, T, directions * H, "float32")
        self.lengths = lens if batch == "lengths" else None
        self.model = model(cell, D, H, "float32", directions, LENGTHS_LAYERS)

    def time_forward(self, cell, directions, batch):
        self.model(self.x, lengths=self.lengths)

    def time_forward_backward(self, cell, directions, batch):
        self.model(self.x, lengths=self.lengths)
        self.model.backward(self.dout)


class Cells:
    """Single-step latency of RNNCell/GRUCell/LSTMCell, N = 1, D = H, inference."""

    params = [CELLS, STEP_SIZES, DTYPES]
    param_names = ["cell", "H", "dtype"]

    def setup(self, cell, H, dtype):
        self.cell = getattr(rnncore, CELL[cell])(H, H, dtype=dtype, seed=0)
        r = rng()
        self.x = r.standard_normal((1, H)).astype(dtype)
        h = (0.1 * r.standard_normal((1, H))).astype(dtype)
        self.hx = (h, h.copy()) if cell == "lstm" else h

    def time_step(self, cell, H, dtype):
        self.cell.forward(self.x, self.hx, train=False)

    def time_step_train(self, cell, H, dtype):
        # a training-mode step saves its activations; drop them so memory stays flat
        self.cell.forward(self.x, self.hx, train=True)
        self.cell.clear_saved()
