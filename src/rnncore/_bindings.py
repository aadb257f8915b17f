"""The one door to the compiled kernels: each kernel entry point is called here, once.

:mod:`rnncore.functional`, :mod:`rnncore._stack` (the models) and
:mod:`rnncore.cells` reach ``rnncore._kernels`` only through this module, so
the argument order of ``rnn/gru/lstm.forward``, ``.backward`` and ``.step``
is written down in exactly one place. One binding object per cell
(:data:`RNN_TANH`, :data:`RNN_RELU`, :data:`GRU`, :data:`LSTM`) offers the
same methods; one layer and one direction per call. Arguments:

    x      (T, N, D) sequence view in the kernels' layout (any strides the
           kernels accept; see ``_validation.seq_view``)
    s0     list of initial states, (N, H) C-contiguous each (h; or h, c)
    Wx, Wh (D, G*H), (H, G*H): the kernels' layout, ``weight_ih.T`` and
           ``weight_hh.T`` of PyTorch (BLAS transpose flags, no copies)
    biases the kernel's biases as a tuple: RNN and LSTM ``(b,)`` with
           ``b = b_ih + b_hh``; GRU ``(b_ih, b_hh)`` (``b_hn`` sits inside the
           reset product, so the two cannot be folded; Cho et al. 2014 as
           PyTorch computes it)
    p, g   [weight_ih (GH, D), weight_hh (GH, H), bias_ih (GH,), bias_hh (GH,)]
           in PyTorch's layout, and the gradients matching it (accumulated into)
    outs   list of (T, N, H) outputs (h; or h, c), written by forward
    overwrite_saved
           backward may overwrite ``saved`` (the caller back-propagates once
           and drops it): the gated kernels then use it as their gradient
           workspace instead of allocating T*N*G*H more
    batch_sizes
           active rows per step of a sorted variable-length batch, or None

``kernel_forward``/``kernel_backward`` take the kernels' layout (what the
functional API holds); ``forward``/``backward`` take PyTorch's (what the
models and cells hold) and map it onto the former; ``step`` is the kernels'
single-step entry point for the cells' fast path: no memoryviews, the cell's
``params`` dict (PyTorch's names) read directly, ``zero_bias`` standing in
for both biases of a cell without them; it returns False, having written
nothing, for arrays it does not take. (The hot path of a single step at
H = 128 is a few microseconds, so ``step`` builds no argument lists.)

The GRU has one binding per candidate: :data:`GRU` (PyTorch's,
``reset_after=True``) and :data:`GRU_RESET_BEFORE` (Cho et al. 2014's,
``reset_after=False``); :func:`gru_binding` picks one. :data:`LN_LSTM` and
:data:`LN_GRU` are the layer-normalised cells (``layer_norm=True``; Ba, Kiros &
Hinton 2016): their ``p``/``g`` lists carry the norms' gains and biases after
PyTorch's four, and they offer ``forward``/``backward`` only (the functional API
and the cells' single-step fast path take the plain cells). The module also
installs the kernels' BLAS thread hooks (the policy itself lives in
:mod:`rnncore._runtime.threads`). :func:`matmul` and :func:`matmul_tn_add` are the
dense layers' products (:class:`rnncore.nn.Linear`) on the same packed kernel, or
on BLAS where its rule says so.
"""
from __future__ import annotations

import numpy as np

from ._kernels import _pool as _kpool
from ._kernels import gru as _kgru
from ._kernels import linear as _klinear
from ._kernels import lngru as _klngru
from ._kernels import lnlstm as _klnlstm
from ._kernels import lstm as _klstm
from ._kernels import rnn as _krnn
from ._kernels import simd as _ksimd
from ._runtime import blas as _blas
from ._runtime import threads as _threads
from ._validation import blas_matmul, blas_matmul_add

__all__ = ["RNN_TANH", "RNN_RELU", "GRU", "GRU_RESET_BEFORE", "LSTM", "LN_LSTM", "LN_GRU",
           "rnn_binding", "gru_binding"]


def _by_dtype(fused):
    """``pick(x)``: the fused kernel's specialisation for ``x``'s dtype (``fused["float"]``
    or ``fused["double"]``), ``fused`` itself for any other dtype (which raises as before).
    Calling a specialisation directly skips Cython's signature lookup on every call
    (2-4 us, which shows at small shapes: LSTM inference at (T, N, D, H) = (50, 1, 32, 64)
    is ~100 us). It is chosen by x (Cython's dispatch looked at the first argument): an
    argument of the other dtype raises Cython's ValueError ("Buffer dtype mismatch")
    either way. The models and the functional API check the dtypes first."""
    specs = {np.dtype(np.float32): fused["float"], np.dtype(np.float64): fused["double"]}

    def pick(x):
        return specs.get(getattr(x, "dtype", None), fused)

    return pick


_RNN_FWD, _RNN_BWD = _by_dtype(_krnn.forward), _by_dtype(_krnn.backward)
_GRU_FWD, _GRU_BWD = _by_dtype(_kgru.forward), _by_dtype(_kgru.backward)
_LSTM_FWD, _LSTM_BWD = _by_dtype(_klstm.forward), _by_dtype(_klstm.backward)
_LNLSTM_FWD, _LNLSTM_BWD = _by_dtype(_klnlstm.forward), _by_dtype(_klnlstm.backward)
_LNGRU_FWD, _LNGRU_BWD = _by_dtype(_klngru.forward), _by_dtype(_klngru.backward)


class _Binding:
    """What the three cells share: PyTorch's layout mapped onto the kernels'."""

    #: gates per cell (1, 3, 4) and number of state arrays (h; or h, c)
    G = 1
    n_states = 1
    #: the kernel takes one bias, b_ih + b_hh (else the two separately)
    fused_bias = True
    #: an inference forward (``save=False``) takes the states after h (the LSTM's c)
    #: as running states: (T, N, H) views of one (N, H) array, step stride 0
    running_states = False

    def forward(self, x, s0, p, outs, reverse=False, batch_sizes=None, save=True):
        """Forward of one layer and direction, PyTorch-layout parameters ``p``
        (and the LSTM's ``weight_hr`` as p[4] with a projection). ``save=False``:
        nothing will call backward (the kernels then keep nothing they need not,
        returning None)."""
        w_ih, w_hh, b_ih, b_hh = p[:4]
        biases = (b_ih + b_hh,) if self.fused_bias else (b_ih, b_hh)
        proj = {"Wr": p[4].T} if len(p) > 4 else {}
        return self.kernel_forward(x, s0, w_ih.T, w_hh.T, biases, outs, reverse, batch_sizes,
                                   save=save, **proj)

    def backward(self, dh, dn, x, s0, p, outs, saved, dx, ds0, g, reverse=False,
                 batch_sizes=None, overwrite_saved=False):
        """Backward of one layer and direction; accumulates into the gradients ``g``."""
        if not self.fused_bias:
            self.kernel_backward(dh, dn, x, s0, p[0].T, p[1].T, p[2:], outs, saved, dx, ds0,
                                 (g[0].T, g[1].T, g[2], g[3]), reverse, batch_sizes,
                                 overwrite_saved)
            return
        db = np.zeros(p[1].shape[0], dtype=p[1].dtype)
        proj = {"proj": (p[4].T, g[4].T)} if len(p) > 4 else {}
        self.kernel_backward(dh, dn, x, s0, p[0].T, p[1].T, p[2:4], outs, saved, dx, ds0,
                             (g[0].T, g[1].T, db), reverse, batch_sizes, overwrite_saved,
                             **proj)
        g[2] += db
        g[3] += db

    def step_saved(self, N, H, dtype):
        """Buffers the kernel's ``step`` fills for backward, one step of N rows (or None)."""
        return None


class RNNBinding(_Binding):
    """Elman RNN (Elman 1990), tanh or relu: h' = act(x Wx + h Wh + b)."""

    def __init__(self, relu: bool):
        self.relu = bool(relu)

    def kernel_forward(self, x, s0, Wx, Wh, biases, outs, reverse=False, batch_sizes=None, *,
                       save=True):
        """``save`` unused: the RNN keeps nothing but its outputs."""
        _RNN_FWD(x)(x, s0[0], Wx, Wh, biases[0], outs[0], self.relu, reverse, batch_sizes)
        return None

    def kernel_backward(self, dh, dn, x, s0, Wx, Wh, biases, outs, saved, dx, ds0, dW,
                        reverse=False, batch_sizes=None, overwrite_saved=False):
        """``dW`` = (dWx, dWh, db), accumulated into. ``biases`` and ``saved`` unused."""
        _RNN_BWD(x)(
            dh, dn[0], x, s0[0], Wx, Wh, outs[0], dx, ds0[0], *dW, self.relu, reverse,
            batch_sizes)

    def step(self, x, s0, outs, saved, params, D, H, zero_bias=None):
        b_ih, b_hh = ((params["bias_ih"], params["bias_hh"]) if zero_bias is None
                      else (zero_bias, zero_bias))
        return _krnn.step(x, s0[0], params["weight_ih"], params["weight_hh"], b_ih, b_hh,
                          outs[0], D, H, self.relu)


class GRUBinding(_Binding):
    """GRU (Cho et al. 2014), gates r, z, n; PyTorch's candidate (reset_after=True,
    n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn))) or the reset-before one
    (reset_after=False, n = tanh(x W_in + b_in + (r ⊙ h) W_hn + b_hn))."""

    G = 3
    fused_bias = False
    #: what the kernel's forward saves for backward: (gates (T, N, 3H), hidden_n (T, N, H));
    #: with reset_after=False hidden_n holds r ⊙ h_prev
    Saved = _kgru.GRUSaved

    def __init__(self, reset_after: bool = True):
        self.reset_after = bool(reset_after)

    def kernel_forward(self, x, s0, Wx, Wh, biases, outs, reverse=False, batch_sizes=None, *,
                       save=True):
        return _GRU_FWD(x)(x, s0[0], Wx, Wh, biases[0], biases[1], outs[0], reverse,
                           batch_sizes, self.reset_after, save)

    def kernel_backward(self, dh, dn, x, s0, Wx, Wh, biases, outs, saved, dx, ds0, dW,
                        reverse=False, batch_sizes=None, overwrite_saved=False):
        """``dW`` = (dWx, dWh, dbx, dbh), accumulated into; ``biases[1]`` is b_hh."""
        _GRU_BWD(x)(
            dh, dn[0], x, s0[0], Wx, Wh, biases[1], outs[0], saved, dx, ds0[0], *dW, reverse,
            batch_sizes, overwrite_saved, self.reset_after)

    def step(self, x, s0, outs, saved, params, D, H, zero_bias=None):
        b_ih, b_hh = ((params["bias_ih"], params["bias_hh"]) if zero_bias is None
                      else (zero_bias, zero_bias))
        gates, hidden_n = (None, None) if saved is None else saved
        return _kgru.step(x, s0[0], params["weight_ih"], params["weight_hh"], b_ih, b_hh,
                          outs[0], gates, hidden_n, D, H, self.reset_after)

    def step_saved(self, N, H, dtype):
        return self.Saved(gates=np.empty((1, N, 3 * H), dtype),
                          hidden_n=np.empty((1, N, H), dtype))


class LSTMBinding(_Binding):
    """LSTM (Hochreiter & Schmidhuber 1997; Graves 2013's form), gates i, f, g, o."""

    G = 4
    n_states = 2
    running_states = True
    #: what the kernel's forward saves for backward: gates (T, N, 4H)
    Saved = _klstm.LSTMSaved

    def kernel_forward(self, x, s0, Wx, Wh, biases, outs, reverse=False, batch_sizes=None, *,
                       save=True, Wr=None):
        """``Wr`` (H, P): the projection (``weight_hr.T``), or None."""
        return _LSTM_FWD(x)(x, s0[0], s0[1], Wx, Wh, biases[0], outs[0], outs[1], reverse,
                            batch_sizes, Wr, save)

    def kernel_backward(self, dh, dn, x, s0, Wx, Wh, biases, outs, saved, dx, ds0, dW,
                        reverse=False, batch_sizes=None, overwrite_saved=False, proj=None):
        """``dn``/``ds0`` = [h, c] each; ``dW`` = (dWx, dWh, db). ``biases`` unused.
        ``proj`` = (Wr, dWr) (H, P) each with a projection (dWr accumulated into)."""
        _LSTM_BWD(x)(
            dh, dn[0], dn[1], x, s0[0], s0[1], Wx, Wh, outs[0], outs[1], saved, dx, ds0[0],
            ds0[1], *dW, reverse, batch_sizes, overwrite_saved, proj)

    def step(self, x, s0, outs, saved, params, D, H, zero_bias=None):
        b_ih, b_hh = ((params["bias_ih"], params["bias_hh"]) if zero_bias is None
                      else (zero_bias, zero_bias))
        return _klstm.step(x, s0[0], s0[1], params["weight_ih"], params["weight_hh"], b_ih,
                           b_hh, outs[0], outs[1], None if saved is None else saved.gates, D, H)

    def step_saved(self, N, H, dtype):
        return self.Saved(gates=np.empty((1, N, 4 * H), dtype))


class _LayerNormOnly:
    """What the layer-normalised bindings share: no functional API (``kernel_forward``,
    ``kernel_backward`` refuse) and no single-step kernel (the cells take the sequence
    kernel with T = 1). ``_cell`` names the model ("LSTM", "GRU")."""

    _cell = ""

    def kernel_forward(self, *args, **kwargs):
        raise NotImplementedError(f"layer_norm: the functional API has no layer-normalised "
                                  f"{self._cell}; use rnncore.{self._cell}(..., layer_norm=True)")

    kernel_backward = kernel_forward

    def step(self, *args, **kwargs):
        return False    # the cells take the sequence kernel with T = 1

    def step_saved(self, N, H, dtype):
        return None


class LNLSTMBinding(_LayerNormOnly, LSTMBinding):
    """Layer-normalised LSTM (Ba, Kiros & Hinton 2016, §3.1), gates i, f, g, o.

    ``p`` (and ``g``) = [weight_ih, weight_hh, bias_ih, bias_hh, layer_norm_ih_weight,
    layer_norm_ih_bias, layer_norm_hh_weight, layer_norm_hh_bias, layer_norm_c_weight,
    layer_norm_c_bias]: PyTorch's four, then the norms' gains and biases ((4H,) x 4,
    (H,) x 2). No projection.
    """

    running_states = False

    #: what the kernel's forward saves for backward (gates and the norms' x̂, 1/σ)
    Saved = _klnlstm.LNLSTMSaved
    _cell = "LSTM"

    def forward(self, x, s0, p, outs, reverse=False, batch_sizes=None, save=True):
        w_ih, w_hh, b_ih, b_hh = p[:4]
        return _LNLSTM_FWD(x)(
            x, s0[0], s0[1], w_ih.T, w_hh.T, b_ih + b_hh, *p[4:10], outs[0], outs[1], reverse,
            batch_sizes, save)

    def backward(self, dh, dn, x, s0, p, outs, saved, dx, ds0, g, reverse=False,
                 batch_sizes=None, overwrite_saved=False):
        """Accumulates into ``g``; ``overwrite_saved`` is accepted and ignored."""
        db = np.zeros(p[1].shape[0], dtype=p[1].dtype)
        _LNLSTM_BWD(x)(
            dh, dn[0], dn[1], x, s0[0], s0[1], p[0].T, p[1].T, p[4], p[6], p[8], p[9], outs[0],
            outs[1], saved, dx, ds0[0], ds0[1], g[0].T, g[1].T, db, *g[4:10], reverse,
            batch_sizes)
        g[2] += db
        g[3] += db


class LNGRUBinding(_LayerNormOnly, GRUBinding):
    """Layer-normalised GRU (Ba, Kiros & Hinton 2016, §3.1, on PyTorch's candidate), gates
    r, z, n.

    ``p`` (and ``g``) = [weight_ih, weight_hh, bias_ih, bias_hh, layer_norm_ih_weight,
    layer_norm_ih_bias, layer_norm_hh_weight, layer_norm_hh_bias] (the norms' (3H,) each).
    """

    #: what the kernel's forward saves for backward (gates, S_n and the norms' x̂, 1/σ)
    Saved = _klngru.LNGRUSaved
    _cell = "GRU"

    def __init__(self):
        super().__init__(reset_after=True)

    def forward(self, x, s0, p, outs, reverse=False, batch_sizes=None, save=True):
        w_ih, w_hh, b_ih, b_hh = p[:4]
        return _LNGRU_FWD(x)(
            x, s0[0], w_ih.T, w_hh.T, b_ih, b_hh, *p[4:8], outs[0], reverse, batch_sizes, save)

    def backward(self, dh, dn, x, s0, p, outs, saved, dx, ds0, g, reverse=False,
                 batch_sizes=None, overwrite_saved=False):
        """Accumulates into ``g``; ``overwrite_saved`` is accepted and ignored."""
        _LNGRU_BWD(x)(
            dh, dn[0], x, s0[0], p[0].T, p[1].T, p[4], p[6], outs[0], saved, dx, ds0[0], g[0].T,
            g[1].T, g[2], g[3], *g[4:8], reverse, batch_sizes)


RNN_TANH = RNNBinding(relu=False)
RNN_RELU = RNNBinding(relu=True)
GRU = GRUBinding()
GRU_RESET_BEFORE = GRUBinding(reset_after=False)
LSTM = LSTMBinding()
LN_LSTM = LNLSTMBinding()
LN_GRU = LNGRUBinding()


def rnn_binding(relu: bool) -> RNNBinding:
    """The RNN binding for a nonlinearity (relu True/False)."""
    return RNN_RELU if relu else RNN_TANH


def gru_binding(reset_after: bool) -> GRUBinding:
    """The GRU binding for a candidate (reset_after True/False)."""
    return GRU if reset_after else GRU_RESET_BEFORE


def workspace_empty(shape, dtype):
    """An uninitialized C-contiguous array for a training call (a forward that keeps
    its activations, or backward): large ones from the workspace cache
    (``rnncore._kernels._pool``: kept between calls instead of freed), else NumPy's."""
    return _kpool.empty(shape, dtype)


def empty_cache() -> None:
    """Free the training workspaces rnncore keeps between calls.

    A training step (a forward keeping its activations, then backward) allocates
    the same large arrays every time; rnncore keeps them when they are released
    and hands them out again on the next step of the same shapes, instead of
    returning them to the system and taking page faults on them again (the
    ``rnncore train`` step: ~6 % faster on 2 Zen 4 cores). At most
    :func:`set_cache_limit` bytes are kept (256 MiB by default); inference never
    uses the cache. Arrays still in use are not affected: they return to the
    cache when released. Like ``torch.cuda.empty_cache()``.
    """
    _kpool.clear()


def set_cache_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of released training workspaces (0: keep none).

    See :func:`empty_cache`. Lowering the limit frees the least recently
    released blocks at once.
    """
    n = int(nbytes)
    if n < 0:
        raise ValueError(f"nbytes: expected a non-negative byte count, got {nbytes!r}")
    _kpool.set_limit(n)


def cache_info() -> dict:
    """The workspace cache: ``{'limit', 'kept_bytes', 'kept_blocks', 'hits', 'misses'}``.

    ``kept_bytes`` are released blocks held for reuse (not in use, not counted by
    ``tracemalloc``); ``hits`` and ``misses`` count the requests served from them
    or newly mapped since the process started.
    """
    return _kpool.info()


# ---------------------------------------------------------------------------
# Dense layers' products
# ---------------------------------------------------------------------------
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D arrays of one float dtype, a C-ordered result: on the
    kernels' packed GEMM (``_kernels.linear``: B packed once, rows on the kernels'
    threads) where its rule says so, else :func:`~rnncore._validation.blas_matmul`."""
    if _klinear.takes(a, b):
        out = np.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
        if _klinear.matmul(a, b, out):
            return out
    return blas_matmul(a, b)


def matmul_tn_add(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out += a.T @ b`` in place (a weight gradient): on the kernels' dW kernel where
    the cells' rule says so, else :func:`~rnncore._validation.blas_matmul_add`."""
    if _klinear.takes(a, b, out) and _klinear.matmul_tn_add(a, b, out):
        return out
    return blas_matmul_add(a.T, b, out)


# ---------------------------------------------------------------------------
# BLAS thread hooks and the single-thread section
# ---------------------------------------------------------------------------
_KERNEL_MODULES = (_krnn, _kgru, _klstm, _klnlstm, _klngru, _klinear)


def _install_thread_hooks(set_addr, get_addr, min_work, state_addr, row_split):
    """Hand the thread policy of rnncore._runtime.threads to every kernel module."""
    for mod in _KERNEL_MODULES:
        mod._blas_thread_hooks(set_addr, get_addr, min_work, state_addr, row_split)


_threads.attach_kernels(_install_thread_hooks, _krnn._single_thread_open,
                        _krnn._single_thread_close, packed=_krnn._packed_layout(),
                        state_bytes=_krnn._thread_state_bytes())


# ---------------------------------------------------------------------------
# BLAS below the CPU's SIMD level
# ---------------------------------------------------------------------------
def set_blas_slow(slow: bool) -> None:
    """Tell every kernel module whether SciPy's BLAS runs kernels below this CPU's SIMD
    level (rc_matmul.h: rc_blas_slow); then their all-steps products outside the time
    steps run on the kernels' packed GEMM instead of BLAS. Decided once at import
    (:data:`BLAS_SLOW`); tests and benchmarks flip it."""
    for mod in _KERNEL_MODULES:
        mod._set_blas_slow(bool(slow))


def blas_slow() -> bool:
    """The kernels' current rc_blas_slow (:data:`BLAS_SLOW` unless a test flipped it)."""
    return _krnn._blas_slow()


def slow_products_machine() -> bool:
    """Whether the products move at all on this machine while BLAS is slow: at most the
    kernels' thread cap of CPUs (rc_matmul.h: rc_matmul_small_machine)."""
    return _krnn._matmul_small_machine()


#: whether SciPy's OpenBLAS selected kernels below the level rnncore's kernels run at
#: (e.g. its AVX2 "Haswell" kernels on an AVX-512 CPU: ``OPENBLAS_CORETYPE`` set in
#: the environment, or a CPU OpenBLAS does not know; rnncore._runtime.blas)
BLAS_SLOW = _blas.blas_below_cpu(_ksimd.simd_tier())
set_blas_slow(BLAS_SLOW)

