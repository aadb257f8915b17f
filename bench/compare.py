"""Side-by-side benchmark: rnncore vs the NumPy reference vs PyTorch, in one run.

Run it from a source checkout, against the rnncore the interpreter imports::

    python bench/compare.py [--quick] [--json OUT.json] [--threads N] [--rows TOKEN ...]
                            [--load N]

The harness is this file (options, the run, the JSON) and ``bench/_harness/``:
``contestants.py`` (what is timed, flop and memory counts), ``timing.py``,
``machine.py`` (the header, the best-sgemm ceiling, the FMA peak), ``rows.py`` (the
core, bidir, step and charlm groups), ``options.py``, ``memory.py`` and
``table.py``. It is
not part of the installed package.

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
nodx
    forward+backward without the input gradient, as for data (which needs
    none), at the three training shapes of core: ``model.backward(dout,
    input_grad=False)`` (*rc-nodx*), beside the core row's backward with dx
    (*rc-dx*) and PyTorch with ``x.requires_grad=False`` (*torch-nodx*; its
    oneDNN/native RNN backward computes dx anyway). GF/s on the flops without
    dx's 2*T*N*G*H*D.
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
options
    the regularisation options of ``rnncore.LSTM/GRU`` at (T, N, D, H) in
    {(100, 32, 256, 256), (50, 64, 512, 1024)}, inference and forward+backward:
    plain, ``weight_drop=0.5``, ``variational_dropout=0.3``, ``layer_norm=True``,
    each as a cost in % over the plain model, and the PyTorch equivalents
    (``nn.LSTM/GRU``; awd-lstm-lm's WeightDrop wrapper -- ``W_hh`` masked at each
    forward, then the fused path through ``torch.func.functional_call``; its
    LockedDropout, a (N, 1, F) mask on the input and output; a Python loop of a
    LayerNorm cell, ``F.layer_norm`` per gate block) with ``torch/rc``. An option
    the installed rnncore lacks shows "n/a (option missing)". See
    ``_harness/options.py``.
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
with ``n`` chosen to fill the budget (``--quick``: 3..50 calls, 0.4 s; full:
3..200 calls, 2 s), garbage collection disabled; ``ms`` is their median (each record also keeps
``mean_ms``, the total time over the calls).
``--threads N`` limits every thread pool threadpoolctl finds (BLAS and
OpenMP) and sets ``torch.set_num_threads(N)``; rnncore's concurrent
directions of bidirectional layers are switched off when N = 1 (they would
use a second core).

Under load: ``--load N`` starts N busy background processes (each a
one-thread NumPy matmul loop, ``_harness/load.py``) after the sgemm ceiling is
measured and before the first row, and ends them after the last: the same
tables, measured with N cores' worth of competition (e.g. ``--load 1`` on a
2-core machine checks that a ratio stays near its quiet value when a
neighbour takes one core). The header and the JSON record the setting
(``load``, ``load_kind``). Under load a call's time has a long tail (a thread
waiting for a core), and the median, which ignores it, can hide most of a
library's time: the core table's ``mean t/rc`` (JSON ``torch_over_rc_mean``)
is the ratio of the mean times, what a loop of calls takes -- PyTorch's LSTM
inference at (100, 16, 64, 128) with one busy process on 2 Zen 5 cores: median
2.82-6.50 ms, mean 6.57-8.23 (quiet 1.36 / 1.39;
``compare-results/2026-12-03-zen5-s25-load-tail.txt``).

Passes: ``fwd`` is forward-only inference -- rnncore models in ``eval()``
mode (nothing kept for backward, no dropout), torch under
``torch.inference_mode()``; the functional API and the reference keep their
caches (they have no inference mode). ``fb`` is a training-mode forward
(activations kept) plus the backward pass, torch with autograd recording.

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
by the best GEMM GFLOP/s of the same run: the fastest of the timed calls of
a 2048^3 and a (64 x 1024)(1024 x 4096) float32 GEMM through
``scipy.linalg.blas.sgemm`` (SciPy's BLAS, the one rnncore's kernels call;
Fortran-ordered operands, so nothing is copied) and, when PyTorch is there,
through ``torch.mm`` (MKL) -- whichever library is faster sets the ceiling.

``fma peak`` (header) is the arithmetic ceiling of the machine in this run at
the SIMD level rnncore's kernels run at: as many threads as ``--threads``,
started together, each running independent float32 vector FMAs on registers
only (no loads, no stores; ``rnncore._kernels.simd._fma_rate``; 12 chains,
enough for two FMA units of latency 4), the best total of 3 tries of 0.1 s;
measured again after the rows (``fma_peak_end`` in the JSON), with a note
when the end's is more than 10 % higher: the start was slowed, and the
``max`` columns understate the ceiling.
No GEMM at that level reaches it (a library running wider vectors than a
forced lower-level rnncore build could: compare such runs by their ratios).
In the core table, ``max`` = FMA peak / torch's GFLOP/s: the largest
``torch/rc`` any implementation that does the counted flops could
show on this machine (it would have to run at the FMA peak from the first
step to the last) -- a goal above ``max`` cannot be met here. The JSON
records keep both (``torch_over_rc_ceiling``, and ``fraction_of_fma_peak`` =
rnncore's GFLOP/s / FMA peak). The bidir table's ``max`` is the same bound for
``t-pad/rc-pad`` (FMA peak / torch-pad GFLOP/s; JSON
``torch_pad_over_rc_pad_ceiling``).

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
import json
import os
import sys
import time

import rnncore  # first: it picks SciPy's BLAS kernels before scipy.linalg loads

from _harness.contestants import CELLS, GROUPS, import_torch
from _harness.load import DESCRIPTION as LOAD_KIND, Load
from _harness.machine import threads_arg, best_sgemm, fma_peak, machine_header, print_header
from _harness.memory import run_memory
from _harness.options import run_options
from _harness.rows import run_bidir, run_charlm, run_core, run_nodx, run_step
from _harness.timing import Budget


class Options:
    pass


def _parse(argv):
    ap = argparse.ArgumentParser(
        prog="python bench/compare.py",
        description="rnncore vs the NumPy reference vs PyTorch, side by side (float32).",
        epilog="Row groups: " + ", ".join(GROUPS) + "; cells: " + ", ".join(CELLS) +
               ". See the docstring of bench/compare.py for what is counted.")
    ap.add_argument("--quick", action="store_true",
                    help="fewer repeats; on the largest core shape only the rnncore model and "
                         "torch run and no memory row (~4 min on a quiet 2-core machine)")
    ap.add_argument("--json", metavar="PATH", help="write every figure and the header here")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for BLAS/OpenMP and torch (default: the CPUs this process "
                         "may run on)")
    ap.add_argument("--rows", nargs="+", metavar="TOKEN", default=[],
                    help="groups (" + ", ".join(GROUPS) + ") and/or cells (" +
                         ", ".join(CELLS) + "); default: everything")
    ap.add_argument("--no-torch", action="store_true", help="do not import PyTorch")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="run the rows with N busy background processes (1-thread NumPy "
                         "matmul loops), to measure the ratios under load (default 0)")
    a = ap.parse_args(argv)
    toks = [t.strip().lower() for tok in a.rows for t in tok.split(",") if t.strip()]
    bad = [t for t in toks if t not in GROUPS and t not in CELLS]
    if bad:
        ap.error(f"--rows: unknown token(s) {bad}; expected groups {GROUPS} or cells {CELLS}")
    o = Options()
    o.quick = a.quick
    o.json = a.json
    o.threads = threads_arg(ap, a.threads)
    o.groups = [g for g in GROUPS if g in toks] or list(GROUPS)
    o.cells = [c for c in CELLS if c in toks] or list(CELLS)
    o.no_torch = a.no_torch
    if a.load < 0:
        ap.error("--load must be >= 0")
    o.load = a.load
    o.budget = Budget(a.quick)
    return o


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
    torch = None if opts.no_torch else import_torch(opts.threads)
    header = machine_header(opts.threads, torch)
    header["quick"] = opts.quick
    header["groups"], header["cells"] = opts.groups, opts.cells
    header["load"] = opts.load
    header["load_kind"] = LOAD_KIND if opts.load else None
    header["fma_peak"] = fma_peak(opts.threads)
    sg = best_sgemm(opts.budget, torch)
    # the ceiling: the fastest call of any shape and library (a median can sink under
    # load and would let a row's efficiency exceed 100%)
    best_gf = max(s["gflops_best"] for s in sg)
    header["best_sgemm_gflops"] = best_gf
    header["best_gemm_by_lib"] = {lib: max(s["gflops_best"] for s in sg if s["lib"] == lib)
                                  for lib in sorted({s["lib"] for s in sg})}
    print_header(header, sg, out)
    records = []
    peak = header["fma_peak"]["total_gflops"] if header["fma_peak"] else None
    runners = {"core": lambda: run_core(opts, torch, out, records, best_gf, peak),
               "nodx": lambda: run_nodx(opts, torch, out, records, peak),
               "bidir": lambda: run_bidir(opts, torch, out, records, peak),
               "step": lambda: run_step(opts, torch, out, records),
               "charlm": lambda: run_charlm(opts, torch, out, records),
               "options": lambda: run_options(opts, torch, out, records),
               "memory": lambda: run_memory(opts, torch, out, records)}
    load = None
    try:
        if opts.load:
            load = Load(opts.load)
            out.write(f"\nunder load: {opts.load} busy process(es) started (pids "
                      f"{', '.join(map(str, load.pids))}; {LOAD_KIND})\n")
        for g in opts.groups:
            runners[g]()
    except KeyboardInterrupt:
        header["interrupted"] = True
        out.write("\ninterrupted; the figures so far are kept\n")
    finally:
        if load is not None:
            load.stop()
    elapsed = time.perf_counter() - t_start
    header["elapsed_s"] = elapsed
    header["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    la = header["loadavg_end"]
    noisy = la and la[0] > opts.threads + opts.load + 0.5  # the load processes count
    out.write(f"\ndone in {elapsed:.0f} s; load average at the end "
              f"{', '.join(f'{v:.2f}' for v in la) if la else '?'}"
              f"{'  (above the thread count: timings are noisy)' if noisy else ''}\n")
    # the ceiling again: a VM that was slowed while the header measured it (seen on
    # a Zen 3 VM: 115 GFLOP/s at the start of one run, ~200 in every other) would
    # leave every row's `max` too low without a word
    try:
        end_pk = fma_peak(opts.threads)
    except (Exception, KeyboardInterrupt):   # the rows' figures are written regardless
        end_pk = None
    start_pk = header["fma_peak"]
    header["fma_peak_end"] = end_pk
    if start_pk and end_pk:
        out.write(f"fma peak at the end {end_pk['total_gflops']:.1f} GFLOP/s "
                  f"(start {start_pk['total_gflops']:.1f})")
        if end_pk["total_gflops"] > 1.1 * start_pk["total_gflops"]:
            out.write(": the start was low, so the `max` columns understate the ceiling "
                      f"by {end_pk['total_gflops'] / start_pk['total_gflops']:.2f}x")
        out.write("\n")
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
