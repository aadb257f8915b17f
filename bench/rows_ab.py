"""In-process A/B of where a row split keeps its threads' rows of the loop's own buffers.

A time loop splits the batch rows over threads (rows k, k+P, ... to thread k). Its
own per-row buffers -- the (N, G*H) scratch, and in inference one step's gates --
hold each thread's rows together (the default; _loop.pxd: loop_share) or every P-th
row, like the callers' arrays (the hook ``_set_private_rows(False)`` on every cell
module). This script times the same model both ways in alternate blocks within one
process::

    python bench/rows_ab.py gru 100,32,64,256 100,32,256,256 [--fb] [--threads 2]
        [--blocks 8] [--ms 200]

Prints, per shape, the median ms of each and ``interleaved/together`` (> 1: the rows
together are faster). Results are bitwise the same either way
(tests/test_private_rows.py). Benchmarks never assert.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusing_ab import model_ab_args, run_model_ab  # noqa: E402


def set_together(on):
    """Every cell module's row layout: together (True) or every P-th row (False)."""
    from rnncore._kernels import gru, lngru, lnlstm, lstm, rnn
    for mod in (rnn, gru, lstm, lngru, lnlstm):
        mod._set_private_rows(on)


def main(argv=None):
    args, shapes = model_ab_args(__doc__.split("\n\n")[0], argv)
    run_model_ab(args, shapes, lambda on: set_together(bool(on)), lambda: set_together(True),
                 "together", "interleaved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
