"""In-process A/B of the time loops' two sets of shape rules: Intel's and the general.

The kernels take some choices by the CPU's vendor (src/_kernels/rc_activations.h:
rc_intel_rules; ``loop_shape_rules`` in ``rnncore.show_config()``): with Intel's rules
a forward of fewer than 32 rows multiplies by [Wx; Wh] inside its steps only while the
stacked weight takes at most N x 160 KiB (rc_gemm_packed.h: rc_fuse_input), and the
LSTM splits its hidden units over the threads only while no thread gets 16 rows
(rc_threads.h: rc_unit_threads). Both were measured on an Intel Xeon (Emerald Rapids);
this script times the same model under both sets in alternate blocks within one
process, so that a new machine -- an AMD EPYC, another Intel core -- can say which set
it should take::

    python bench/rules_ab.py lstm 50,8,512,512 50,64,512,1024 [--fb] [--threads 2]
        [--blocks 8] [--ms 200]

Prints, per shape, the median ms of each and ``general/intel`` (> 1: Intel's rules are
faster here). Shapes where the two sets choose alike time the same code twice.
Benchmarks never assert; the arithmetic is checked in tests/test_bench_scripts.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import model_ab_args, run_model_ab  # noqa: E402


def set_rules(intel):
    """Every cell module's rules: Intel's (True), the general (False), the CPU's (None)."""
    from rnncore._kernels import gru, lstm, rnn
    for mod in (rnn, gru, lstm):
        mod._set_intel_rules(intel)


def main(argv=None):
    args, shapes = model_ab_args(__doc__.split("\n\n")[0], argv)

    from rnncore._kernels import lstm

    print(f"this CPU's rules: {'Intel' if lstm._intel_rules() else 'general'}", flush=True)
    run_model_ab(args, shapes, lambda on: set_rules(bool(on)), lambda: set_rules(None),
                 "intel", "general")
    return 0


if __name__ == "__main__":
    sys.exit(main())
