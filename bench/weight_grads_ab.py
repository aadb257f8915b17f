"""In-process A/B of backward's weight gradients: rnncore's dW kernel against BLAS.

After backward's time loop, ``dWx += x^T dG`` and ``dWh += sum_t h_prev(t)^T dG_t``
run on rnncore's dW kernel (src/_kernels/rc_gemm_dw.h) where its rule says so, or on
BLAS (the test hook ``_set_weight_grads(0)``). This script times the same model's
forward+backward with each, in alternate blocks within one process, so a slow spell
of the machine falls on both. Run it on a new machine before moving the rule's
bounds (``RC_DW_MIN_WORK``, ``RC_DW_MIN_ROWS``) or the chunk size::

    python bench/weight_grads_ab.py lstm 100,32,256,256 50,64,512,1024 [--forced]
        [--threads 2] [--blocks 8] [--ms 200]

Cells: rnn, gru, gru-rb (``reset_after=False``), lstm, ln-gru, ln-lstm
(``layer_norm=True``). ``--forced`` puts every shape on the kernel, past the rule
(mode 2). Prints, per shape, the median ms per call of each and ``blas/kernel``
(> 1: the kernel is faster). ``--inplace`` times the kernel both ways instead: the
saved inputs read in place by its rule (or always, and the kernel at any size, with
``--forced``) against the
transposed copy (the hook ``_set_weight_grads_inplace(0)``), and prints
``copy/inplace``. ``--workspace`` times the kernel's memory taken from the backward
call's workspace (the workspace cache) against allocated per call (the hook
``_set_weight_grads_workspace(False)``), and prints ``alloc/workspace`` (glibc
settles after ~10 calls of a shape: the page faults the workspace saves are in the
first calls, before the blocks are timed). Benchmarks never assert; the arithmetic
is checked in tests/test_bench_scripts.py.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import ab_parser, parse_ab, timed_ab  # noqa: E402

CELLS = ("rnn", "gru", "gru-rb", "lstm", "ln-gru", "ln-lstm")


def make_model(cell, D, H):
    """The float32 batch-first model of a cell name (CELLS)."""
    import rnncore
    if cell == "rnn":
        return rnncore.RNN(D, H, batch_first=True, seed=0)
    cls = rnncore.LSTM if cell.endswith("lstm") else rnncore.GRU
    kw = {"reset_after": False} if cell == "gru-rb" else {}
    return cls(D, H, batch_first=True, seed=0, layer_norm=cell.startswith("ln-"), **kw)


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], CELLS,
                   "the kernel at every size, past the rule (mode 2)")
    ap.add_argument("--inplace", action="store_true",
                    help="A/B the kernel's inputs read in place against the transposed copy "
                         "(with --forced: every term in place, the kernel at any size)")
    ap.add_argument("--workspace", action="store_true",
                    help="A/B the kernel's memory from the call's workspace against "
                         "allocated per call (with --forced: the kernel at any size)")
    args, shapes = parse_ab(ap, argv)
    if args.inplace and args.workspace:
        ap.error("--inplace and --workspace: one A/B at a time")

    from threadpoolctl import threadpool_limits
    from rnncore._kernels import gru, lngru, lnlstm, lstm, rnn
    mods = (rnn, gru, lstm, lngru, lnlstm)

    def set_kernel(on):
        for m in mods:
            if args.inplace:   # the kernel (forced: at any size), A in place or copied
                m._set_weight_grads(2 if args.forced else 1)
                m._set_weight_grads_inplace((2 if args.forced else 1) if on else 0)
            elif args.workspace:   # the kernel, in the workspace or allocating
                m._set_weight_grads(2 if args.forced else 1)
                m._set_weight_grads_workspace(on)
            else:
                m._set_weight_grads((2 if args.forced else 1) if on else 0)
    names = (("inplace", "copy") if args.inplace else ("workspace", "alloc") if args.workspace
             else ("kernel", "blas"))

    def count():   # what the "on" half adds to: in-place terms, workspace or kernel calls
        return sum(m._weight_grads_inplace_terms() if args.inplace
                   else m._weight_grads_workspace_calls() if args.workspace
                   else m._weight_grads_calls()[0] for m in mods)

    try:
        with threadpool_limits(args.threads):
            for T, N, D, H in shapes:
                x = np.random.default_rng(0).standard_normal((N, T, D)).astype(np.float32)
                dout = np.ones((N, T, H), np.float32)
                m = make_model(args.cell, D, H)

                def run():
                    m(x)
                    m.backward(dout)
                before = count()
                on, off = timed_ab(run, set_kernel, args.blocks, args.ms)
                note = "" if count() > before else (
                    "  (no term read in place: both halves the same code)" if args.inplace
                    else "  (no call in a workspace: both halves allocate)" if args.workspace
                    else "  (the kernel never ran: both halves BLAS)")
                print(f"{args.cell} {T},{N},{D},{H} fb: {names[0]} {on * 1e3:.3f} ms  "
                      f"{names[1]} {off * 1e3:.3f} ms  {names[1]}/{names[0]} {off / on:.3f}"
                      f"{note}", flush=True)
    finally:
        for m in mods:
            m._set_weight_grads(1)
            m._set_weight_grads_inplace(1)
            m._set_weight_grads_workspace(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
