"""Per-cell adapters between the Python layer and the Cython kernels.

One adapter per cell type knows its kernel's argument order; the models
(:mod:`rnncore.models`) and the single-step cells (:mod:`rnncore.cells`) both
call through it, so the two can never disagree.

Arguments, for one layer and one direction:
    x      (T, N, D) sequence view in the kernels' layout
    s0     list of initial states, (N, H) C-contiguous each (h; or h, c)
    p      [weight_ih (GH, D), weight_hh (GH, H), bias_ih (GH,), bias_hh (GH,)]
           in PyTorch layout; the kernels receive ``weight.T`` views (BLAS
           transpose flags, no copies)
    outs   list of (T, N, H) outputs (h; or h, c), written by forward
    once   backward may overwrite ``saved`` (the caller back-propagates once
           and drops it): the gated kernels then use it as their gradient
           workspace instead of allocating T*N*4H more
    g      gradients matching p, accumulated into by backward
    bs     batch_sizes (sorted variable-length batch) or None
"""
from __future__ import annotations

import numpy as np

from ._kernels import gru as _kgru
from ._kernels import lstm as _klstm
from ._kernels import rnn as _krnn


class RNNKernel:
    """Vanilla RNN (tanh or relu): h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)."""

    G = 1
    n_states = 1

    def __init__(self, relu: bool):
        self.relu = bool(relu)

    def forward(self, x, s0, p, outs, reverse, bs):
        w_ih, w_hh, b_ih, b_hh = p
        _krnn.forward(x, s0[0], w_ih.T, w_hh.T, b_ih + b_hh, outs[0], self.relu, reverse, bs)
        return None

    def backward(self, dh, dn, x, s0, p, outs, saved, dx, ds0, g, reverse, bs, once=False):
        w_ih, w_hh = p[0], p[1]
        db = np.zeros(w_hh.shape[0], dtype=w_hh.dtype)
        _krnn.backward(dh, dn[0], x, s0[0], w_ih.T, w_hh.T, outs[0], dx, ds0[0],
                       g[0].T, g[1].T, db, self.relu, reverse, bs)
        g[2] += db
        g[3] += db


class GRUKernel:
    """GRU (r, z, n), PyTorch's equations; b_hn stays inside the reset product."""

    G = 3
    n_states = 1

    def forward(self, x, s0, p, outs, reverse, bs):
        w_ih, w_hh, b_ih, b_hh = p
        return _kgru.forward(x, s0[0], w_ih.T, w_hh.T, b_ih, b_hh, outs[0], reverse, bs)

    def backward(self, dh, dn, x, s0, p, outs, saved, dx, ds0, g, reverse, bs, once=False):
        w_ih, w_hh, _, b_hh = p
        _kgru.backward(dh, dn[0], x, s0[0], w_ih.T, w_hh.T, b_hh, outs[0], saved, dx, ds0[0],
                       g[0].T, g[1].T, g[2], g[3], reverse, bs, once)


class LSTMKernel:
    """LSTM (i, f, g, o); the two biases enter as their sum."""

    G = 4
    n_states = 2

    def forward(self, x, s0, p, outs, reverse, bs):
        w_ih, w_hh, b_ih, b_hh = p
        return _klstm.forward(x, s0[0], s0[1], w_ih.T, w_hh.T, b_ih + b_hh, outs[0], outs[1],
                              reverse, bs)

    def backward(self, dh, dn, x, s0, p, outs, saved, dx, ds0, g, reverse, bs, once=False):
        w_ih, w_hh = p[0], p[1]
        db = np.zeros(w_hh.shape[0], dtype=w_hh.dtype)
        _klstm.backward(dh, dn[0], dn[1], x, s0[0], s0[1], w_ih.T, w_hh.T, outs[0], outs[1],
                        saved, dx, ds0[0], ds0[1], g[0].T, g[1].T, db, reverse, bs, once)
        g[2] += db
        g[3] += db
