"""Side-by-side benchmark: rnncore vs the NumPy reference vs PyTorch, in one run.

Run it as ``python -m rnncore.bench`` (or ``python bench/compare.py`` in a
checkout)::

    python -m rnncore.bench [--quick] [--json OUT.json] [--threads N] [--rows TOKEN ...]

Everything is float32 and batch-first (``x`` is (N, T, D)); every row is timed
for every implementation in the same process, one after the other, so the
columns of one line share the machine's state. The header records the
machine (CPU model, family/model numbers), the thread count, every BLAS
library threadpoolctl sees (rnncore's is SciPy's OpenBLAS), the kernels' SIMD
level, the load average before and after, and a best-sgemm figure measured in
the same run, so a row's GFLOP/s can be read as a fraction of what the BLAS
reaches on this machine ("eff").

Rows (groups, selectable with ``--rows``)
-----------------------------------------
core
    cell in {rnn, gru, lstm} x (T, N, D, H) in {(50, 1, 32, 64), (100, 16, 64, 128),
    (100, 32, 256, 256), (50, 64, 512, 1024)}, forward and forward+backward:
    ``rnncore.RNN/GRU/LSTM(D, H, batch_first=True)`` (*model*), the functional
    API ``rnncore.functional.*_forward/backward`` (*func*), the specification
    ``rnncore.reference.*_forward/backward`` (*ref*) -- with ``--quick`` the
    largest shape runs neither *ref* (slow) nor *func* (the model's kernels) --
    and ``torch.nn.RNN/GRU/LSTM(batch_first=True)``
    with autograd backward of a fixed random ``dout`` (*torch*; ``x`` requires
    grad so torch computes ``dx`` as rnncore does).
bidir
    2-layer bidirectional RNN/GRU/LSTM at (T, N, D, H) = (100, 32, 256, 256):
    rnncore padded, rnncore with ``lengths`` (random in [T/2, T], seeded),
    PyTorch padded, PyTorch ``pack_padded_sequence(enforce_sorted=False)`` ->
    model -> ``pad_packed_sequence`` (packing and unpacking are timed: they
    are what a user pays).
step
    single-step latency, N = 1, D = H in {128, 512}: ``rnncore.RNNCell/GRUCell/
    LSTMCell.forward(x, h, train=False)``, the functional
    ``*_step_forward`` and ``torch.nn.*Cell`` under ``torch.no_grad()``;
    microseconds per step from ``timeit`` (``number`` = 2000, best and median
    of 5 repeats; 500 and 3 with ``--quick``).
charlm
    one training step of the character-level language model
    (``rnncore.charlm.Trainer.train_step``: embedding -> LSTM -> linear ->
    cross-entropy -> backward -> clip -> Adam) and the same network and step
    in PyTorch; skipped when ``rnncore.charlm`` is missing.
memory
    peak memory of one forward+backward for every core row (see below).

Other tokens of ``--rows`` are cell names (``rnn``, ``gru``, ``lstm``) and
restrict the rows to those cells; e.g. ``--rows core memory lstm``. No group
token means every group. ``--rows`` tokens may also be comma-separated.

Timing
------
Each (row, pass, implementation) gets a freshly built model and reuses the
inputs built once per row (nothing of the set-up is inside the timed call).
``first`` is the first call on that fresh model (it includes lazy
initialisation: thread pools, BLAS buffers, torch's autograd and oneDNN
set-up, page faults on fresh buffers; the very first row of a process also
pays process-wide one-time costs). Then, unless the first call already took
longer than the time budget, one untimed warm-up call; then ``n`` timed calls
with ``n`` chosen to fill the budget (``--quick``: 1..50 calls, 0.4 s; full:
3..200 calls, 2 s), garbage collection disabled; ``ms`` is their median.
``--threads N`` limits every thread pool threadpoolctl finds (BLAS and
OpenMP) and sets ``torch.set_num_threads(N)``; rnncore's concurrent
directions of bidirectional layers are switched off when N = 1 (they would
use a second core).

Training-mode forward: rnncore models run ``train=True`` (activations kept
for backward), torch runs with autograd recording, so fb - fwd is the cost of
the backward pass.

FLOP counts (GEMM flops only; bias adds and elementwise work not counted)
--------------------------------------------------------------------------
One layer and one direction of a cell with ``G`` gate blocks (G = 1 RNN,
3 GRU, 4 LSTM) over T steps of N rows; a multiply-add is 2 flops::

    forward          2 T N G H (D + H)    x_t Wx (N, D)(D, GH) + h_{t-1} Wh (N, H)(H, GH)
    backward         4 T N G H (D + H)    dx = dA Wx^T, dWx = x^T dA,
                                          dh_{t-1} = dA Wh^T, dWh = h_{t-1}^T dA
    forward+backward 6 T N G H (D + H)

    rnn  fb = 6 T N H (D + H)     gru fb = 18 T N H (D + H)     lstm fb = 24 T N H (D + H)

(the GRU with PyTorch's ``reset_after`` form multiplies h by all of Wh, so the
count is the same as for a plain 3-gate cell). Stacked and bidirectional
models sum this over layers k and directions, with D_0 = D and
D_k = dirs * H for k > 0. With ``lengths`` only valid steps are counted:
``T N`` becomes ``sum(lengths)`` (PyTorch's packed run does that work too);
padded runs count the full ``T N``. One cell step is ``2 N G H (D + H)``.
GFLOP/s = flops / median time. ``eff`` = an rnncore model's GFLOP/s divided
by the best sgemm GFLOP/s of the same run: the fastest of the timed calls of
a 2048^3 and a (64 x 1024)(1024 x 4096) sgemm through
``scipy.linalg.blas.sgemm`` (SciPy's BLAS, the one rnncore's kernels call;
Fortran-ordered operands, so nothing is copied).

Memory (group ``memory``)
-------------------------
What is measured, for one forward+backward of the model API (weights and
their gradient arrays already exist -- rnncore allocates ``grads`` with the
model, torch's ``.grad`` exist after the warm-up -- so neither counts them):

* ``rc traced``: rnncore, in this process, ``tracemalloc`` peak of the
  allocations made from the start of the forward to the end of the backward,
  with the results (out, h_n, dx, dh0) kept alive to the end. NumPy reports
  its data buffers to tracemalloc, so this is exactly the NumPy-level peak
  (stored activations, workspaces, outputs). It does not see memory OpenBLAS
  or C code allocates outside NumPy.
* ``rc RSS`` / ``torch RSS``: process-level, the same method for both, in a
  fresh subprocess per implementation: after a warm-up call on a 2-step
  sequence (lazy initialisation), ``VmHWM`` (the peak resident set) is reset
  through ``/proc/self/clear_refs``, the fb runs, and the figure is
  peak RSS - RSS before. glibc's mmap threshold is pinned
  (``MALLOC_MMAP_THRESHOLD_=65536``) so large blocks freed by an earlier row
  go back to the OS instead of being reused invisibly. Includes allocator
  and library overheads (oneDNN scratch, thread stacks); untouched pages do
  not count. torch.profiler's CPU memory events were not used: they give
  per-operator net allocations, not the peak of the whole pass.
* ``min``: the reference figure the other columns are divided by: 4 bytes x
  (saved activations + unavoidable new outputs), per layer and direction::

      activations  T N A H   A = 1 (rnn: h), 5 (gru: h, gates r z n 3H, h W_hn + b_hn),
                             6 (lstm: gates i f g o 4H, c, h)
      outputs      T N D (dx) + S N H (h_n [, c_n]) + S N H (dh0 [, dc0]),  S = 1 or 2 (lstm)

  ``out`` is the last layer's h, already counted as an activation. Not
  counted: the inputs and ``dout`` (given), weights and weight gradients
  (pre-existing), the input projection and per-step gate-gradient
  workspaces (an implementation choice). It is the memory an implementation
  holding every activation at once cannot go below; a recompute-based one
  could.

Output
------
A text table per group; ratios are "other / rnncore", so > 1 means rnncore is
faster: ``torch/rc`` compares torch with the rnncore *model* (same API
level), ``ref/rc`` the reference with the rnncore *functional* API (same
functions). ``--json PATH`` writes the header and every figure (one record
per row, pass and implementation, plus the memory, step, charlm and sgemm
records) for tracking across commits.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from contextlib import contextmanager

import numpy as np

import rnncore
from rnncore import functional as F
from rnncore import reference as R

__all__ = ["main", "CORE_SHAPES", "BIDIR_SHAPE", "STEP_SIZES", "gemm_flops", "min_bytes",
           "machine_header"]

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
#: saved activations per step and row, in units of H (see the module docstring)
ACTIVATIONS = {"rnn": 1, "gru": 5, "lstm": 6}
N_STATES = {"rnn": 1, "gru": 1, "lstm": 2}
TORCH_NAMES = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
RC_MODELS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
RC_CELLS = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}

#: (T, N, D, H)
CORE_SHAPES = ((50, 1, 32, 64), (100, 16, 64, 128), (100, 32, 256, 256), (50, 64, 512, 1024))
BIDIR_SHAPE = (100, 32, 256, 256)
BIDIR_LAYERS = 2
STEP_SIZES = (128, 512)
GROUPS = ("core", "bidir", "step", "charlm", "memory")
SEED = 0


# ---------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------
def gemm_flops(cell, T, N, D, H, passes="fb", layers=1, dirs=1, rows_steps=None):
    """GEMM flops of a forward ('fwd') or forward+backward ('fb') pass.

    ``rows_steps`` replaces ``T * N`` (e.g. ``sum(lengths)``).
    """
    G = GATES[cell]
    TN = T * N if rows_steps is None else rows_steps
    per = 2 if passes == "fwd" else 6
    total = 0
    for k in range(layers):
        Dk = D if k == 0 else dirs * H
        total += dirs * per * TN * G * H * (Dk + H)
    return total


def min_bytes(cell, T, N, D, H, layers=1, dirs=1, itemsize=4):
    """The reference memory figure of one fb (module docstring, 'Memory')."""
    A, S = ACTIVATIONS[cell], N_STATES[cell]
    elems = layers * dirs * T * N * A * H  # saved activations
    elems += T * N * D  # dx
    elems += 2 * S * layers * dirs * N * H  # h_n [, c_n] and dh0 [, dc0]
    return elems * itemsize


# ---------------------------------------------------------------------------
# Machine header
# ---------------------------------------------------------------------------
def _cpuinfo():
    out = {"model_name": platform.processor() or "unknown", "vendor": None, "family": None,
           "model": None, "stepping": None, "avx512": None, "flags_simd": []}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return out
    keys = {"model name": "model_name", "vendor_id": "vendor", "cpu family": "family",
            "model": "model", "stepping": "stepping"}
    seen = set()
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k in keys and k not in seen:
            seen.add(k)
            out[keys[k]] = v.strip()
        elif k == "flags" and not out["flags_simd"]:
            flags = v.split()
            out["flags_simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                                             "avx512_bf16", "avx512_vnni", "amx_tile")
                                 if f in flags]
            out["avx512"] = "avx512f" in flags
    return out


def _git_revision():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                             capture_output=True, text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _threadpools():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [dict({k: i.get(k) for k in keep if k in i},
                 library=os.path.basename(i.get("filepath", "")))
            for i in threadpool_info()]


def machine_header(threads, torch_mod=None):
    """The machine, thread and library facts printed above the tables."""
    from ._kernels import simd

    cfg = rnncore.show_config(file=io.StringIO())
    cpu = _cpuinfo()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": platform.node(),
        "cpu": cpu["model_name"],
        "cpu_vendor": cpu["vendor"],
        "cpu_family_model_stepping": f"{cpu['family']}/{cpu['model']}/{cpu['stepping']}",
        "cpu_simd_flags": cpu["flags_simd"],
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "loadavg_start": list(load) if load else None,
        "python": platform.python_version(),
        "rnncore": rnncore.__version__,
        "rnncore_git": _git_revision(),
        "numpy": np.__version__,
        "scipy": cfg.get("scipy"),
        "torch": getattr(torch_mod, "__version__", None),
        "torch_threads": torch_mod.get_num_threads() if torch_mod is not None else None,
        "blas_library": os.path.basename(str(cfg.get("blas_library"))),
        "blas_version": cfg.get("blas_version"),
        "blas_architecture": cfg.get("blas_architecture"),
        "blas_threads": cfg.get("blas_threads"),
        "blas_coretype_override": cfg.get("blas_coretype_override"),
        "kernel_simd": simd.simd_level(),
        "parallel_directions": rnncore._threads.parallel_directions_enabled(),
        "threadpools": _threadpools(),
        "warnings": cfg.get("warnings", []),
    }


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
class Budget:
    """How long each measurement may take."""

    def __init__(self, quick):
        self.quick = quick
        self.min_repeats = 1 if quick else 3
        self.max_repeats = 50 if quick else 200
        self.seconds = 0.4 if quick else 2.0
        self.step_number = 500 if quick else 2000
        self.step_repeat = 3 if quick else 5


@contextmanager
def _gc_off():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def measure(fn, budget):
    """``{'first_ms', 'median_ms', 'min_ms', 'repeats'}`` of calling ``fn()``."""
    pc = time.perf_counter
    with _gc_off():
        t0 = pc()
        fn()
        first = pc() - t0
        est = first
        if first < budget.seconds:
            t0 = pc()
            fn()  # warm-up
            est = pc() - t0
        n = int(budget.seconds / max(est, 1e-7))
        n = max(budget.min_repeats, min(budget.max_repeats, n))
        times = []
        for _ in range(n):
            t0 = pc()
            fn()
            times.append(pc() - t0)
    return {"first_ms": first * 1e3, "median_ms": statistics.median(times) * 1e3,
            "min_ms": min(times) * 1e3, "repeats": n}


def _try_measure(make, budget):
    """measure(make()) with any failure turned into an 'error' record."""
    try:
        fn = make()
        return measure(fn, budget)
    except Exception as e:  # a benchmark reports, never raises
        return {"error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------
# Building the contestants
# ---------------------------------------------------------------------------
def _rng():
    return np.random.default_rng(SEED)


def _inputs(T, N, D, H_out):
    rng = _rng()
    x = rng.standard_normal((N, T, D), dtype=np.float32)
    dout = rng.standard_normal((N, T, H_out), dtype=np.float32)
    return x, dout


def _rc_model(cell, D, H, layers=1, dirs=1, dtype=np.float32):
    cls = getattr(rnncore, RC_MODELS[cell])
    return cls(D, H, num_layers=layers, batch_first=True, bidirectional=dirs == 2, dtype=dtype,
               seed=SEED)


def rc_model_fns(cell, D, H, x, dout, layers=1, dirs=1, lengths=None):
    """(make_fwd, make_fb) for the rnncore model API."""
    def make_fwd():
        m = _rc_model(cell, D, H, layers, dirs)
        return lambda: m(x, lengths=lengths)

    def make_fb():
        m = _rc_model(cell, D, H, layers, dirs)

        def fb():
            m(x, lengths=lengths)
            return m.backward(dout)
        return fb
    return make_fwd, make_fb


def _functional_weights(cell, D, H):
    """C-ordered (D, GH), (H, GH) weights and biases as the functional API takes them."""
    m = _rc_model(cell, D, H)
    p = m.params
    Wx = np.ascontiguousarray(p["weight_ih_l0"].T)
    Wh = np.ascontiguousarray(p["weight_hh_l0"].T)
    bih, bhh = p["bias_ih_l0"], p["bias_hh_l0"]
    if cell == "gru":
        return Wx, Wh, (bih.copy(), bhh.copy())
    return Wx, Wh, ((bih + bhh).astype(np.float32),)


def functional_fns(mod, cell, D, H, x, dout):
    """(make_fwd, make_fb) for rnncore.functional or rnncore.reference (``mod``)."""
    N = x.shape[0]
    h0 = np.zeros((N, H), np.float32)
    Wx, Wh, bs = _functional_weights(cell, D, H)
    fwd_f = getattr(mod, f"{cell}_forward")
    bwd_f = getattr(mod, f"{cell}_backward")

    def fwd():
        return fwd_f(x, h0, Wx, Wh, *bs)

    def fb():
        res = fwd_f(x, h0, Wx, Wh, *bs)
        return bwd_f(dout, res[-1])
    return (lambda: fwd), (lambda: fb)


def _torch_model(torch, cell, D, H, layers=1, dirs=1):
    m = getattr(torch.nn, TORCH_NAMES[cell])(D, H, num_layers=layers, batch_first=True,
                                            bidirectional=dirs == 2)
    rc = _rc_model(cell, D, H, layers, dirs)  # the same weights as rnncore's
    m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in rc.params.items()})
    return m


def torch_fns(torch, cell, D, H, x, dout, layers=1, dirs=1, lengths=None):
    """(make_fwd, make_fb) for torch.nn.RNN/GRU/LSTM; packed when ``lengths``."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T = x.shape[1]
    xt = torch.from_numpy(x).requires_grad_(True)
    dt = torch.from_numpy(dout)
    lt = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)

    def run(m):
        if lt is None:
            return m(xt)[0]
        p = pack_padded_sequence(xt, lt, batch_first=True, enforce_sorted=False)
        out, _ = m(p)
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0]

    def make_fwd():
        m = _torch_model(torch, cell, D, H, layers, dirs)
        return lambda: run(m)

    def make_fb():
        m = _torch_model(torch, cell, D, H, layers, dirs)

        def fb():
            xt.grad = None  # a fresh dx each call, as rnncore returns one
            run(m).backward(dt)
        return fb
    return make_fwd, make_fb


def _import_torch(threads):
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    torch.set_num_threads(threads)
    return torch


# ---------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------
def _ms(r):
    if r is None:
        return "-"
    if "error" in r:
        return "ERR"
    v = r["median_ms"]
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}"


def _num(v, nd=1):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


def _ratio(other, rc):
    if not other or not rc or "median_ms" not in other or "median_ms" not in rc:
        return None
    return other["median_ms"] / rc["median_ms"]


def _gf(r, flops):
    if not r or "median_ms" not in r:
        return None
    return flops / (r["median_ms"] * 1e-3) / 1e9


class Table:
    """Fixed-width columns, printed line by line as rows complete."""

    def __init__(self, out, columns):
        self.out = out
        self.columns = columns  # (title, width, align)

    def header(self):
        self.line([c[0] for c in self.columns])
        self.out.write("-" * (sum(c[1] + 1 for c in self.columns) - 1) + "\n")

    def line(self, values):
        cells = []
        for (title, w, align), v in zip(self.columns, values):
            s = str(v)
            cells.append(s.ljust(w) if align == "<" else s.rjust(w))
        self.out.write(" ".join(cells).rstrip() + "\n")
        self.out.flush()


# ---------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------
def best_sgemm(budget):
    """sgemm GFLOP/s through scipy.linalg.blas (the BLAS rnncore's kernels call)."""
    from scipy.linalg import blas

    rng = _rng()
    res = []
    for m, k, n in ((2048, 2048, 2048), (64, 1024, 4096)):
        a = np.asfortranarray(rng.standard_normal((m, k), dtype=np.float32))
        b = np.asfortranarray(rng.standard_normal((k, n), dtype=np.float32))
        c = np.zeros((m, n), dtype=np.float32, order="F")
        r = measure(lambda: blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=1), budget)
        fl = 2 * m * n * k
        res.append(dict(r, shape=f"({m}x{k})({k}x{n})", gflop=fl / 1e9,
                        gflops=fl / (r["median_ms"] * 1e-3) / 1e9,
                        gflops_best=fl / (r["min_ms"] * 1e-3) / 1e9))
    return res


def run_core(opts, torch, out, records, best_gf):
    out.write("\n== core: one layer, one direction, float32, batch_first; ms = median "
              "(first = first call) ==\n")
    out.write("   ratios: torch/rc = torch / rnncore model, ref/rc = reference / rnncore "
              f"functional (>1: rnncore faster); eff = model GF/s / best sgemm "
              f"({best_gf:.1f} GF/s)\n")
    t = Table(out, [("cell", 4, "<"), ("T", 3, ">"), ("N", 3, ">"), ("D", 4, ">"), ("H", 4, ">"),
                    ("pass", 4, "<"), ("model", 8, ">"), ("func", 8, ">"), ("ref", 8, ">"),
                    ("torch", 8, ">"), ("GF/s:rc", 7, ">"), ("torch", 6, ">"),
                    ("torch/rc", 8, ">"), ("ref/rc", 6, ">"), ("eff%", 5, ">"),
                    ("first:rc", 8, ">"), ("torch", 8, ">")])
    t.header()
    largest = CORE_SHAPES[-1]
    for cell in opts.cells:
        for (T, N, D, H) in CORE_SHAPES:
            x, dout = _inputs(T, N, D, H)
            impls = {"rnncore-model": rc_model_fns(cell, D, H, x, dout)}
            # --quick: on the largest shape, neither the slow reference nor the functional
            # API (the same kernels as the model's) -- that keeps --quick near 2 minutes
            if not (opts.quick and (T, N, D, H) == largest):
                impls["rnncore-func"] = functional_fns(F, cell, D, H, x, dout)
                impls["reference"] = functional_fns(R, cell, D, H, x, dout)
            if torch is not None:
                impls["torch"] = torch_fns(torch, cell, D, H, x, dout)
            for pi, pas in enumerate(("fwd", "fb")):
                fl = gemm_flops(cell, T, N, D, H, pas)
                res = {}
                for name, makers in impls.items():
                    r = _try_measure(makers[pi], opts.budget)
                    r.update(group="core", cell=cell, T=T, N=N, D=D, H=H, layers=1, dirs=1,
                             dtype="float32", pass_=pas, impl=name, gflop=fl / 1e9,
                             gflops=_gf(r, fl))
                    res[name] = r
                    records.append(r)
                model, func = res.get("rnncore-model"), res.get("rnncore-func")
                ref, tor = res.get("reference"), res.get("torch")
                gm = _gf(model, fl)
                t.line([cell, T, N, D, H, pas, _ms(model), _ms(func), _ms(ref), _ms(tor),
                        _num(gm), _num(_gf(tor, fl)), _num(_ratio(tor, model), 2),
                        _num(_ratio(ref, func), 2),
                        _num(100 * gm / best_gf if gm and best_gf else None, 0),
                        _num(model.get("first_ms"), 2) if model else "-",
                        _num(tor.get("first_ms"), 2) if tor else "-"])
                for r in res.values():
                    r["torch_over_rc"] = _ratio(tor, model)
                    r["ref_over_rc"] = _ratio(ref, func)
                    r["eff_vs_best_sgemm"] = (gm / best_gf) if gm and best_gf else None


def _lengths(T, N):
    rng = np.random.default_rng(SEED + 1)
    return rng.integers(T // 2, T + 1, size=N).astype(np.int64)


def run_bidir(opts, torch, out, records):
    T, N, D, H = BIDIR_SHAPE
    L = BIDIR_LAYERS
    lens = _lengths(T, N)
    out.write(f"\n== bidir: {L}-layer bidirectional, (T, N, D, H) = {BIDIR_SHAPE}, float32; "
              f"lengths ~ U[{T // 2}, {T}] (sum {int(lens.sum())} of {T * N}) ==\n")
    out.write("   ms = median; GF/s on valid steps for lengths/packed, on T*N for padded; "
              "ratios >1: the rnncore-lengths run is faster\n")
    tab = Table(out, [("cell", 4, "<"), ("pass", 4, "<"), ("rc-pad", 8, ">"), ("rc-len", 8, ">"),
                      ("torch-pad", 9, ">"), ("torch-pack", 10, ">"), ("GF/s:rc-len", 11, ">"),
                      ("rc-pad/len", 10, ">"), ("t-pad/rc-len", 12, ">"),
                      ("t-pack/rc-len", 13, ">"), ("t-pad/rc-pad", 12, ">")])
    tab.header()
    for cell in opts.cells:
        x, dout = _inputs(T, N, D, 2 * H)
        # zero padding, as a padded batch has
        mask = (np.arange(T)[None, :] < lens[:, None])[:, :, None]
        x = x * mask
        impls = {"rnncore-padded": rc_model_fns(cell, D, H, x, dout, L, 2),
                 "rnncore-lengths": rc_model_fns(cell, D, H, x, dout, L, 2, lengths=lens)}
        if torch is not None:
            impls["torch-padded"] = torch_fns(torch, cell, D, H, x, dout, L, 2)
            impls["torch-packed"] = torch_fns(torch, cell, D, H, x, dout, L, 2, lengths=lens)
        for pi, pas in enumerate(("fwd", "fb")):
            res = {}
            for name, makers in impls.items():
                valid = int(lens.sum()) if name in ("rnncore-lengths", "torch-packed") else None
                fl = gemm_flops(cell, T, N, D, H, pas, L, 2, rows_steps=valid)
                r = _try_measure(makers[pi], opts.budget)
                r.update(group="bidir", cell=cell, T=T, N=N, D=D, H=H, layers=L, dirs=2,
                         dtype="float32", pass_=pas, impl=name, gflop=fl / 1e9,
                         gflops=_gf(r, fl), lengths_sum=int(lens.sum()))
                res[name] = r
                records.append(r)
            pad, ln = res.get("rnncore-padded"), res.get("rnncore-lengths")
            tp, tk = res.get("torch-padded"), res.get("torch-packed")
            tab.line([cell, pas, _ms(pad), _ms(ln), _ms(tp), _ms(tk),
                      _num(ln.get("gflops") if ln else None),
                      _num(_ratio(pad, ln), 2), _num(_ratio(tp, ln), 2), _num(_ratio(tk, ln), 2),
                      _num(_ratio(tp, pad), 2)])


def _timeit_us(fn, budget):
    try:
        fn()  # warm-up
        tm = timeit.Timer(fn)
        runs = tm.repeat(repeat=budget.step_repeat, number=budget.step_number)
        per = [r / budget.step_number * 1e6 for r in runs]
        return {"best_us": min(per), "median_us": statistics.median(per),
                "number": budget.step_number, "repeat": budget.step_repeat}
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def run_step(opts, torch, out, records):
    b = opts.budget
    out.write(f"\n== step: single-step latency, N = 1, D = H, float32, inference; "
              f"us per step (timeit number={b.step_number}, best / median of {b.step_repeat}) ==\n")
    tab = Table(out, [("cell", 4, "<"), ("H", 4, ">"), ("rc-cell", 8, ">"), ("(med)", 8, ">"),
                      ("rc-func", 8, ">"), ("torch", 8, ">"), ("(med)", 8, ">"),
                      ("torch/rc", 8, ">"), ("GF/s:rc", 7, ">")])
    tab.header()
    for cell in opts.cells:
        for H in STEP_SIZES:
            D, N = H, 1
            rng = _rng()
            x = rng.standard_normal((N, D), dtype=np.float32)
            h = rng.standard_normal((N, H), dtype=np.float32) * 0.1
            c = rng.standard_normal((N, H), dtype=np.float32) * 0.1
            res = {}
            try:
                rc = getattr(rnncore, RC_CELLS[cell])(D, H, seed=SEED)
                hx = (h, c) if cell == "lstm" else h
                res["rnncore-cell"] = _timeit_us(lambda: rc.forward(x, hx, train=False), b)
                p = rc.params
                Wx = np.ascontiguousarray(p["weight_ih"].T)
                Wh = np.ascontiguousarray(p["weight_hh"].T)
                if cell == "rnn":
                    bb = p["bias_ih"] + p["bias_hh"]
                    f = lambda: F.rnn_step_forward(x, h, Wx, Wh, bb)  # noqa: E731
                elif cell == "gru":
                    bi, bh = p["bias_ih"], p["bias_hh"]
                    f = lambda: F.gru_step_forward(x, h, Wx, Wh, bi, bh)  # noqa: E731
                else:
                    bb = p["bias_ih"] + p["bias_hh"]
                    f = lambda: F.lstm_step_forward(x, h, c, Wx, Wh, bb)  # noqa: E731
                res["rnncore-func"] = _timeit_us(f, b)
            except Exception as e:
                res["rnncore-cell"] = {"error": f"{type(e).__name__}: {e}"}
            if torch is not None:
                tc = getattr(torch.nn, TORCH_NAMES[cell] + "Cell")(D, H)
                tcell_state = rc.state_dict() if "rnncore-cell" in res and \
                    "error" not in res["rnncore-cell"] else None
                if tcell_state is not None:
                    tc.load_state_dict({k: torch.from_numpy(v) for k, v in tcell_state.items()})
                xt, ht, ct = (torch.from_numpy(a) for a in (x, h, c))
                thx = (ht, ct) if cell == "lstm" else ht

                def tf():
                    with torch.no_grad():
                        return tc(xt, thx)
                res["torch"] = _timeit_us(tf, b)
            fl = 2 * N * GATES[cell] * H * (D + H)
            for name, r in res.items():
                r.update(group="step", cell=cell, N=N, D=D, H=H, dtype="float32", impl=name,
                         gflop=fl / 1e9,
                         gflops=fl / (r["best_us"] * 1e-6) / 1e9 if "best_us" in r else None)
                records.append(r)
            rcr, tr, fr = res.get("rnncore-cell", {}), res.get("torch", {}), \
                res.get("rnncore-func", {})

            def us(r, k="best_us"):
                return "ERR" if "error" in r else _num(r.get(k), 1)
            ratio = (tr["best_us"] / rcr["best_us"]) if "best_us" in tr and "best_us" in rcr \
                else None
            tab.line([cell, H, us(rcr), us(rcr, "median_us"), us(fr), us(tr),
                      us(tr, "median_us"), _num(ratio, 2), _num(rcr.get("gflops"), 2)])


def _charlm_text(n_chars):
    from . import charlm
    try:
        return charlm.stdlib_corpus(max_chars=n_chars)
    except Exception:
        rng = _rng()
        alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ,.\n()=:_"))
        text = "".join(alphabet[rng.integers(0, len(alphabet), n_chars)])
        return charlm.Corpus(text=text, kind="files", sources=[])


def run_charlm(opts, torch, out, records):
    out.write("\n== charlm: one training step (Trainer.train_step: embedding -> RNN -> linear -> "
              "cross-entropy -> backward -> clip -> Adam), float32 ==\n")
    try:
        from . import charlm
    except ImportError as e:
        out.write(f"   skipped: rnncore.charlm is not available ({e})\n")
        records.append({"group": "charlm", "skipped": str(e)})
        return
    try:
        cfg = charlm.TrainConfig()
        corpus = _charlm_text(max(200_000, 4 * cfg.batch_size * cfg.seq_len))
        trainer = charlm.Trainer(corpus, cfg)
    except Exception as e:
        out.write(f"   skipped: could not build a charlm.Trainer ({type(e).__name__}: {e})\n")
        records.append({"group": "charlm", "skipped": f"{type(e).__name__}: {e}"})
        return
    N, T, V = cfg.batch_size, cfg.seq_len, len(trainer.vocab)
    E, H, L, cell = cfg.embed, cfg.hidden, cfg.layers, cfg.cell
    desc = (f"cell={cell} L={L} E={E} H={H} V={V} N={N} T={T} optimizer={cfg.optimizer} "
            f"clip={cfg.clip}")
    out.write(f"   {desc}\n")
    fl = gemm_flops(cell, T, N, E, H, "fb", L) + 6 * T * N * H * V  # + the read-out layer
    res = {"rnncore": _try_measure(lambda: trainer.train_step, opts.budget)}
    if torch is not None:
        def make_torch():
            nn = torch.nn
            torch.manual_seed(SEED)

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.embedding = nn.Embedding(V, E)
                    self.rnn = getattr(nn, TORCH_NAMES[cell])(E, H, L, batch_first=True)
                    self.head = nn.Linear(H, V)

                def forward(self, idx):
                    return self.head(self.rnn(self.embedding(idx))[0])
            net = Net()
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
            lossf = nn.CrossEntropyLoss()
            streams = trainer.streams
            state = {"i": 0}

            def step():
                i = state["i"] % streams.num_batches
                state["i"] += 1
                x, y = streams.batch(i)
                xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
                yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
                opt.zero_grad()
                loss = lossf(net(xt).reshape(-1, V), yt.reshape(-1))
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
                opt.step()
                return loss
            return step
        res["torch"] = _try_measure(make_torch, opts.budget)
    tab = Table(out, [("impl", 8, "<"), ("ms/step", 8, ">"), ("first", 8, ">"),
                      ("kchar/s", 8, ">"), ("GF/s", 6, ">"), ("torch/rc", 8, ">")])
    tab.header()
    for name, r in res.items():
        r.update(group="charlm", impl=name, config=desc, gflop=fl / 1e9, gflops=_gf(r, fl),
                 kchars_per_s=(N * T / (r["median_ms"] * 1e-3) / 1e3) if "median_ms" in r
                 else None)
        records.append(r)
        tab.line([name, _ms(r), _num(r.get("first_ms"), 1), _num(r.get("kchars_per_s"), 1),
                  _num(r.get("gflops")),
                  _num(_ratio(res.get("torch"), res["rnncore"]), 2) if name == "rnncore" else ""])


# -- memory ------------------------------------------------------------------
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
    x, dout = _inputs(T, N, D, H)
    xs, ds = np.ascontiguousarray(x[:, :2]), np.ascontiguousarray(dout[:, :2])
    if impl == "rnncore":
        m = _rc_model(cell, D, H)

        def warm():
            m(xs)
            m.backward(ds)

        def fb():
            y, hn = m(x)
            dx, dh0 = m.backward(dout)
            return y, hn, dx, dh0
        return fb, warm
    m = _torch_model(torch, cell, D, H)
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
    torch = _import_torch(threads) if impl == "torch" else None
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
    cmd = [sys.executable, "-c",
           "import sys, json; from rnncore.bench import memory_worker; "
           "memory_worker(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))",
           impl, str(threads), json.dumps(rows)]
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


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------
class Options:
    pass


def _parse(argv):
    ap = argparse.ArgumentParser(
        prog="python -m rnncore.bench",
        description="rnncore vs the NumPy reference vs PyTorch, side by side (float32).",
        epilog="Row groups: " + ", ".join(GROUPS) + "; cells: " + ", ".join(CELLS) +
               ". See the module docstring (python -c 'import rnncore.bench as b; "
               "help(b)') for what is counted.")
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats; on the largest core shape only the rnncore model and "
                         "torch run and no memory row (~2 min on a quiet 2-core machine)")
    ap.add_argument("--json", metavar="PATH", help="write every figure and the header here")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS/OpenMP and torch (default: the CPUs this process "
                         "may run on)")
    ap.add_argument("--rows", nargs="+", metavar="TOKEN", default=[],
                    help="groups (" + ", ".join(GROUPS) + ") and/or cells (" +
                         ", ".join(CELLS) + "); default: everything")
    ap.add_argument("--no-torch", action="store_true", help="do not import PyTorch")
    a = ap.parse_args(argv)
    toks = [t.strip().lower() for tok in a.rows for t in tok.split(",") if t.strip()]
    bad = [t for t in toks if t not in GROUPS and t not in CELLS]
    if bad:
        ap.error(f"--rows: unknown token(s) {bad}; expected groups {GROUPS} or cells {CELLS}")
    o = Options()
    o.quick = a.quick
    o.json = a.json
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    o.threads = a.threads or ncpu or 1
    if o.threads < 1:
        ap.error("--threads must be >= 1")
    o.groups = [g for g in GROUPS if g in toks] or list(GROUPS)
    o.cells = [c for c in CELLS if c in toks] or list(CELLS)
    o.no_torch = a.no_torch
    o.budget = Budget(a.quick)
    return o


def _print_header(h, sg, out):
    out.write("rnncore benchmark: rnncore vs rnncore.reference vs PyTorch (float32)\n")
    out.write(f"  time        {h['time']}   host {h['host']}\n")
    out.write(f"  cpu         {h['cpu']} ({h['cpu_vendor']}, family/model/stepping "
              f"{h['cpu_family_model_stepping']}; {', '.join(h['cpu_simd_flags'])}); "
              f"{h['cpu_count']} CPUs, {h['affinity']} usable\n")
    la = h.get("loadavg_start")
    out.write(f"  threads     {h['threads']} (BLAS/OpenMP via threadpoolctl; torch "
              f"{h['torch_threads']}); parallel directions {h['parallel_directions']}; "
              f"load average {', '.join(f'{v:.2f}' for v in la) if la else '?'}\n")
    out.write(f"  versions    rnncore {h['rnncore']} ({h['rnncore_git'] or 'no git'}), numpy "
              f"{h['numpy']}, scipy {h['scipy']}, torch {h['torch'] or 'not available'}, "
              f"python {h['python']}\n")
    out.write(f"  BLAS        {h['blas_library']} {h['blas_version']} arch "
              f"{h['blas_architecture']}, {h['blas_threads']} threads "
              f"({h['blas_coretype_override']})\n")
    others = [p for p in h["threadpools"] if p.get("library") != h["blas_library"]]
    for p in others:
        out.write(f"  also        {p.get('library')} {p.get('internal_api')} {p.get('version')} "
                  f"{p.get('architecture') or ''} {p.get('num_threads')} threads\n")
    out.write(f"  kernels     SIMD {h['kernel_simd']}\n")
    for w in h.get("warnings") or []:
        out.write(f"  WARNING     {w}\n")
    for s in sg:
        out.write(f"  sgemm       {s['shape']:<22} {s['gflops']:7.1f} GFLOP/s median, "
                  f"{s['gflops_best']:7.1f} best\n")
    out.flush()


def main(argv=None):
    """Run the comparison; returns 0. ``argv`` as for the command line."""
    opts = _parse(sys.argv[1:] if argv is None else argv)
    out = sys.stdout
    t_start = time.perf_counter()
    try:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(limits=opts.threads)
    except ImportError:
        limiter = None
        out.write("note: threadpoolctl not installed; --threads only sets torch's threads\n")
    rnncore.set_parallel_directions(opts.threads > 1)
    torch = None if opts.no_torch else _import_torch(opts.threads)
    header = machine_header(opts.threads, torch)
    header["quick"] = opts.quick
    header["groups"], header["cells"] = opts.groups, opts.cells
    sg = best_sgemm(opts.budget)
    # the ceiling: the fastest call of either shape (a median can sink under load and
    # would let a row's efficiency exceed 100%)
    best_gf = max(s["gflops_best"] for s in sg)
    header["best_sgemm_gflops"] = best_gf
    _print_header(header, sg, out)
    records = []
    runners = {"core": lambda: run_core(opts, torch, out, records, best_gf),
               "bidir": lambda: run_bidir(opts, torch, out, records),
               "step": lambda: run_step(opts, torch, out, records),
               "charlm": lambda: run_charlm(opts, torch, out, records),
               "memory": lambda: run_memory(opts, torch, out, records)}
    try:
        for g in opts.groups:
            runners[g]()
    except KeyboardInterrupt:
        header["interrupted"] = True
        out.write("\ninterrupted; the figures so far are kept\n")
    elapsed = time.perf_counter() - t_start
    header["elapsed_s"] = elapsed
    header["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    la = header["loadavg_end"]
    out.write(f"\ndone in {elapsed:.0f} s; load average at the end "
              f"{', '.join(f'{v:.2f}' for v in la) if la else '?'}"
              f"{'  (above the thread count: timings are noisy)' if la and la[0] > opts.threads + 0.5 else ''}\n")
    if opts.json:
        for r in records:  # 'pass' is a keyword in Python, not in JSON
            if "pass_" in r:
                r["pass"] = r.pop("pass_")
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump({"header": header, "sgemm": sg, "records": records}, f, indent=1,
                      default=str)
        out.write(f"wrote {opts.json}\n")
    if limiter is not None:
        limiter.restore_original_limits()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
