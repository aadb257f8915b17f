"""In-process A/B of the time loops' shape rule sets: Intel's (or Zen 5's) and the general.

The kernels take some choices by the CPU's vendor (src/_kernels/rc_activations.h:
rc_rule_set; ``loop_shape_rules`` in ``rnncore.show_config()``): with Intel's rules
a forward of fewer than 32 rows multiplies by [Wx; Wh] inside its steps only while the
stacked weight takes at most N x 160 KiB (rc_gemm_packed.h: rc_fuse_input), and the
LSTM splits its hidden units over the threads only while no thread gets 16 rows
(rc_threads.h: rc_unit_threads). Both were measured on an Intel Xeon (Emerald Rapids);
this script times the same model under both sets in alternate blocks within one
process, so that a new machine -- an AMD EPYC, another Intel core -- can say which set
it should take::

    python bench/rules_ab.py lstm 50,8,512,512 50,64,512,1024 [--fb] [--zen5] [--threads 2]
        [--blocks 8] [--ms 200]

Prints, per shape, the median ms of each and ``general/intel`` (> 1: Intel's rules are
faster here). ``--zen5`` times Zen 5's set (the general rules with the in-step input
bound below 16 rows) against the general instead: ``general/zen5``. Shapes where the
two sets choose alike time the same code twice.
Benchmarks never assert; the arithmetic is checked in tests/test_bench_scripts.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import model_ab_args, run_model_ab  # noqa: E402


def set_rules(rules):
    """Every cell module's rule set by name ("general", "intel", "zen5"), or the CPU's
    (None)."""
    from rnncore._kernels import gru, lstm, rnn
    for mod in (rnn, gru, lstm):
        mod._set_shape_rules(rules)


def main(argv=None):
    args, shapes = model_ab_args(
        __doc__.split("\n\n")[0], argv,
        lambda ap: ap.add_argument("--zen5", action="store_true",
                                   help="Zen 5's set against the general (default: Intel's)"))

    from rnncore._kernels import lstm

    other = "zen5" if args.zen5 else "intel"
    print(f"this CPU's rules: {lstm._shape_rules()}", flush=True)
    run_model_ab(args, shapes, lambda on: set_rules(other if on else "general"),
                 lambda: set_rules(None), other, "general")
    return 0


if __name__ == "__main__":
    sys.exit(main())
