"""In-process A/B of the time loops' in-step Wx products, for tuning their rule.

The kernels multiply by Wx inside the time loop (forward ``[x_t | h_{t-1}] [Wx; Wh]``,
backward ``dx_t = dA_t Wx^T``) when ``rc_fuse_input`` / ``rc_step_input_grad``
(src/_kernels/rc_gemm_packed.h) say so; the test hook ``_set_packing(True,
fuse=False)`` turns that off. This script times the same model with it on and off
in alternate blocks within one process, so a slow spell of the machine falls on
both (timings of separate processes varied by up to 40 % on the VM the rule was
set on). Run it on a new machine (an Intel Xeon's 2 MB L2, say) before moving
``RC_FUSE_MIN_ROWS`` or ``RC_FUSE_MAX_BYTES``::

    python bench/fusing_ab.py lstm 100,32,256,256 50,64,512,1024 [--fb] [--forced | --dx-only]
        [--threads 2] [--blocks 8] [--ms 200]

``--forced`` runs every shape fused, whatever the rule (``_set_packing(True, 2)``
lifts its row and byte bounds), so shapes the rule leaves out can be measured too.
``--dx-only`` (forward + backward) moves only the backward's dx: in the steps by the
rule against one GEMM after the loop (the hook ``_set_step_dx_max(-1)``; the forward's
fusing stays by its rule) -- on the Intel Xeon of session 18 the LSTM and GRU at
(50, 64, 512, 1024), whose Wx^T (8 and 6 MiB) the rule keeps in the steps, measured
1.01-1.08 after / in the steps, within that VM's noise. Prints, per shape, the median
ms per call of each and ``unfused / fused`` (> 1: fusing is faster). Benchmarks never assert; the
arithmetic is checked in tests/test_bench_scripts.py.
"""
import argparse
import sys
import time

import numpy as np

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def parse_shape(text, names="T,N,D,H"):
    """'T,N,D,H' -> (T, N, D, H) of positive ints, one per name of `names` (ValueError
    naming the text)."""
    n = names.count(",") + 1
    count = {3: "three", 4: "four"}.get(n, str(n))
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"shape {text!r}: expected {count} integers {names}") from None
    if len(shape) != n or min(shape) < 1:
        raise ValueError(f"shape {text!r}: expected {count} positive integers {names}")
    return shape


def alternate(run, set_fused, blocks, reps):
    """Median seconds per call of run() with set_fused(True) and set_fused(False),
    timed in `blocks` alternating blocks of `reps` calls (each block opened by one
    untimed call). Returns (fused, unfused)."""
    times = {True: [], False: []}
    for _ in range(blocks):
        for on in (True, False):
            set_fused(on)
            run()
            t0 = time.perf_counter()
            for _ in range(reps):
                run()
            times[on].append((time.perf_counter() - t0) / reps)
    return float(np.median(times[True])), float(np.median(times[False]))


def ab_parser(description, cells, forced_help):
    """The A/B scripts' command line: a cell (one of `cells`), shapes T,N,D,H,
    --forced (past the rule under test: `forced_help`) and the timing options."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("cell", choices=cells)
    ap.add_argument("shapes", nargs="+", metavar="T,N,D,H")
    ap.add_argument("--forced", action="store_true", help=forced_help)
    add_timing_args(ap)
    return ap


def parse_ab(ap, argv):
    """(the parsed arguments, their shapes as (T, N, D, H) tuples)."""
    args = ap.parse_args(argv)
    return args, [parse_shape(s) for s in args.shapes]


def add_timing_args(ap):
    """The A/B scripts' shared options: threads, blocks, milliseconds per block."""
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--ms", type=float, default=200.0, help="target milliseconds per block")


def model_ab_args(description, argv=None, extra=None):
    """The model-level A/B scripts' command line (blas_slow_ab, rules_ab): a cell
    (rnn, gru, lstm), shapes T,N,D,H, --fb, the timing options and whatever
    ``extra(parser)`` adds. Returns (args, shapes); a bad shape exits with the
    parser's error."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("cell", choices=["rnn", "gru", "lstm"])
    ap.add_argument("shapes", nargs="+", metavar="T,N,D,H")
    ap.add_argument("--fb", action="store_true", help="time forward+backward (default: eval())")
    if extra is not None:
        extra(ap)
    add_timing_args(ap)
    args = ap.parse_args(argv)
    try:
        return args, [parse_shape(s) for s in args.shapes]
    except ValueError as e:
        ap.error(str(e))


def run_model_ab(args, shapes, set_on, restore, on_name, off_name):
    """The model-level A/B loop (blas_slow_ab, rules_ab): under `args.threads` threads,
    each shape's model (model_call) timed with set_on(True) and set_on(False) in
    alternate blocks (timed_ab); prints both medians as `on_name` and `off_name` and
    `off_name/on_name`; restore() at the end, also on an error."""
    from threadpoolctl import threadpool_limits
    try:
        with threadpool_limits(args.threads):
            for T, N, D, H in shapes:
                run = model_call(args.cell, T, N, D, H, args.fb)
                on, off = timed_ab(run, set_on, args.blocks, args.ms)
                print(f"{args.cell} {T},{N},{D},{H} {'fb' if args.fb else 'fwd'}: "
                      f"{on_name} {on * 1e3:.3f} ms  {off_name} {off * 1e3:.3f} ms  "
                      f"{off_name}/{on_name} {off / on:.3f}", flush=True)
    finally:
        restore()


def model_call(cell, T, N, D, H, fb):
    """A zero-argument call of a fresh float32 batch-first model of `cell` at (T, N, D,
    H) on fixed random inputs: forward + backward (`fb`) or eval() inference."""
    import rnncore
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    m = {"rnn": rnncore.RNN, "gru": rnncore.GRU, "lstm": rnncore.LSTM}[cell](
        D, H, batch_first=True, seed=0)
    if fb:
        dout = np.ones((N, T, H), np.float32)

        def run():
            m(x)
            m.backward(dout)
        return run
    m.eval()
    return lambda: m(x)


def timed_ab(run, set_on, blocks, ms):
    """(on, off): alternate() with as many calls per block as fill about `ms`
    milliseconds, from one untimed and one timed call."""
    run()
    t0 = time.perf_counter()
    run()
    reps = max(1, int(ms / 1e3 / max(time.perf_counter() - t0, 1e-6)))
    return alternate(run, set_on, blocks, reps)


def main(argv=None):
    ap = ab_parser(__doc__.split("\n\n")[0], ["rnn", "gru", "lstm"],
                   "fuse every shape, lifting the rule's row and byte bounds")
    ap.add_argument("--fb", action="store_true", help="time forward+backward (default: eval())")
    ap.add_argument("--dx-only", action="store_true",
                    help="forward+backward, moving only the backward's dx (in the steps by the "
                         "rule, or after the loop); the forward fuses by its rule")
    args, shapes = parse_ab(ap, argv)
    if args.dx_only and args.forced:
        ap.error("--dx-only and --forced are exclusive")
    args.fb = args.fb or args.dx_only

    from threadpoolctl import threadpool_limits
    from rnncore._kernels import gru as KG
    from rnncore._kernels import lstm as KL
    from rnncore._kernels import rnn as K
    mods = (K, KG, KL)

    def set_fused(on):
        for m in mods:
            if args.dx_only:
                m._set_step_dx_max(None if on else -1)
            else:
                m._set_packing(True, fuse=(2 if args.forced else 1) if on else 0)

    try:
        with threadpool_limits(args.threads):
            for T, N, D, H in shapes:
                run = model_call(args.cell, T, N, D, H, args.fb)
                # (asked before timing: timed_ab leaves the hooks in the "off" state)
                note = ""
                if args.dx_only and not K._steps_input_grad(N, D, H, GATES[args.cell] * H, T):
                    note = "  (the rule puts dx after the loop here: both sides alike)"
                fused, unfused = timed_ab(run, set_fused, args.blocks, args.ms)
                print(f"{args.cell} {T},{N},{D},{H} "
                      f"{'fb, dx only' if args.dx_only else 'fb' if args.fb else 'fwd'}: "
                      f"fused {fused * 1e3:.3f} ms  unfused {unfused * 1e3:.3f} ms  "
                      f"unfused/fused {unfused / fused:.3f}{note}", flush=True)
    finally:
        for m in mods:
            m._set_packing(True)
            m._set_step_dx_max()
    return 0


if __name__ == "__main__":
    sys.exit(main())
