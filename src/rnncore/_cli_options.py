"""The options of ``rnncore train`` and the argument types of the ``rnncore`` command.

Kept apart from :mod:`rnncore.cli`, which runs the commands.
"""
from __future__ import annotations

import argparse
import math
import os
import stat
import tempfile

from ._safe_npz import config_elements
from ._terminal import available_memory, fmt_bytes
from .charlm import CELLS, DEFAULT_MAX_CHARS, OPTIMIZERS

__all__ = ["add_train_parser", "int_at_least", "number", "probability", "check_model_options",
           "MAX_SEED", "MAX_STEPS", "CLIError",
           "check_training_memory", "check_sample_memory", "check_text_memory", "check_writable",
           "OneLineParser"]

#: Largest ``--seed`` (NumPy seeds are >= 0) and ``--steps`` / step count of ``--epochs``.
MAX_SEED, MAX_STEPS = 2**63 - 1, 10**12


class CLIError(Exception):
    """A problem reported as one line on stderr with exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad option is one line on stderr (no usage block), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _check_memory(need, what, advice):
    """CLIError when ``need`` bytes exceed the available memory (unknown: no check)."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise CLIError(f"{what} needs about {fmt_bytes(need)} of memory, but only "
                       f"{fmt_bytes(avail)} is available; {advice}")


def check_training_memory(config, vocab_size):
    """The model, its gradients and Adam's two buffers, and one batch's activations."""
    itemsize = 8 if config.dtype == "float64" else 4
    params = config_elements("CharLM", {
        "vocab_size": vocab_size, "embed_dim": config.embed, "hidden_size": config.hidden,
        "num_layers": config.layers, "cell": config.cell})
    per_step = config.embed + config.layers * config.hidden * 8 + 3 * vocab_size
    need = itemsize * (4 * params + config.batch_size * config.seq_len * per_step)
    _check_memory(need, f"a {config.cell.upper()} with E={config.embed} H={config.hidden} "
                  f"L={config.layers} (V={vocab_size}) trained on batches of "
                  f"{config.batch_size} x {config.seq_len}",
                  "lower --hidden, --layers, --embed, --batch-size or --seq-len")


def check_text_memory(paths, max_chars):
    """The regular files of --text (read whole when there is no --max-chars) must fit: the
    text, its character ids and the batches take about 16 bytes per byte read."""
    if max_chars is not None:
        return
    total = 0
    for p in paths:
        for dirpath, _, files in os.walk(p) if os.path.isdir(p) else [("", None, [p])]:
            for f in files:
                try:
                    st = os.stat(os.path.join(dirpath, f))
                except OSError:
                    continue
                total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    _check_memory(16 * total, f"--text ({fmt_bytes(total)} of files)",
                  "pass --max-chars to read only the start")


def check_sample_memory(length, flag):
    _check_memory(16 * length, f"{flag} {length:,}", f"lower {flag}")


def check_writable(out):
    """Create ``out`` and write a file there now, so an unwritable --out (a read-only file
    system, no permission) is reported before training, not at the first save."""
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise CLIError(f"--out {out} is not writable: {exc.strerror or exc}") from None


def int_at_least(lo, hi=None):
    """An argparse type: an integer >= ``lo`` (and <= ``hi``)."""
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo or (hi is not None and v > hi):
            want = f">= {lo}" + ("" if hi is None else f" and <= {hi}")
            raise argparse.ArgumentTypeError(f"expected an integer {want}, got {v}")
        return v
    return parse


def number(lo=None, positive=False, hi=None):
    """An argparse type: a finite number, positive or >= ``lo`` (and <= ``hi``)."""
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or (positive and v <= 0) or (lo is not None and v < lo) \
                or (hi is not None and v > hi):
            want = "a positive number" if positive else f"a number >= {lo}"
            want += "" if hi is None else f" and <= {hi:g}"
            raise argparse.ArgumentTypeError(f"expected {want}, got {s}")
        return v
    return parse


def probability(s):
    """An argparse type: a drop probability, a number in [0, 1)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s!r}") from None
    if not 0.0 <= v < 1.0:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {s}")
    return v


def check_model_options(config):
    """CLIError for a combination of model options the model classes refuse."""
    if not config.layer_norm:
        return
    if config.cell == "rnn":
        raise CLIError("--layer-norm needs --cell gru or --cell lstm (the Elman RNN has no "
                       "layer-normalised form here)")
    try:  # the cell class itself says whether it has a layer-normalised form
        CELLS[config.cell](1, 1, layer_norm=True)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise CLIError(f"--layer-norm is not available for --cell {config.cell}: "
                       f"{exc}") from None


def _count_option(group, d, flag, metavar, what, lo=1):
    """An integer option ``>= lo`` whose help ends with its default from ``d``."""
    default = d[flag[2:].replace("-", "_")]
    group.add_argument(flag, type=int_at_least(lo), metavar=metavar,
                       help=f"{what} (default {default})")


def add_train_parser(sub, d):
    """The ``train`` subcommand and its options; ``d`` holds the defaults shown in the help."""
    t = sub.add_parser(
        "train", help="train a character-level language model",
        description="Train a character-level language model with truncated BPTT. Without "
        "--text it trains on the Python standard library's own sources. Ctrl-C (or "
        "SIGTERM) saves and exits; --resume continues exactly where a run stopped.")
    _data_options(t.add_argument_group("data"))
    _model_options(t.add_argument_group("model"), d)
    _training_options(t.add_argument_group("training"), d)
    _output_options(t.add_argument_group("output"), d)
    return t


def _data_options(g):
    """The text to train on."""
    g.add_argument("--text", action="append", metavar="PATH",
                   help="UTF-8 text file, or a folder of them (repeatable); default: the "
                   "Python standard library sources of this interpreter")
    g.add_argument("--max-chars", type=int_at_least(2), metavar="N",
                   help=f"cap on the text size (default {DEFAULT_MAX_CHARS:,} for the "
                   "standard library corpus, no cap for --text)")


def _model_options(g, d):
    """The network."""
    g.add_argument("--cell", choices=sorted(CELLS), help=f"recurrent cell (default {d['cell']})")
    counts = (("--hidden", "H", "hidden size"), ("--layers", "L", "stacked recurrent layers"),
              ("--embed", "E", "character embedding size"))
    for flag, metavar, what in counts:
        _count_option(g, d, flag, metavar, what)
    g.add_argument("--dtype", choices=["float32", "float64"],
                   help=f"parameter dtype (default {d['dtype']})")
    g.add_argument("--weight-drop", type=probability, metavar="P",
                   help="AWD-LSTM weight drop: DropConnect on the recurrent weights, one mask "
                   f"per batch (default {d['weight_drop']:g})")
    g.add_argument("--variational-dropout", type=probability, metavar="P",
                   help="variational dropout: one mask per sequence, reused at every step, on "
                   "each recurrent layer's input and the last one's output (default "
                   f"{d['variational_dropout']:g})")
    g.add_argument("--layer-norm", action="store_true", default=None,
                   help="layer-normalised GRU/LSTM (not with --cell rnn)")


def _training_options(g, d):
    """The optimization and the run."""
    _count_option(g, d, "--seq-len", "T", "BPTT chunk length in characters")
    _count_option(g, d, "--batch-size", "N", "parallel streams per batch")
    g.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                   help=f"optimizer (default {d['optimizer']})")
    g.add_argument("--lr", type=number(positive=True),
                   help="learning rate (default: " + ", ".join(
                       f"{k} {v[1]:g}" for k, v in sorted(OPTIMIZERS.items())) + ")")
    g.add_argument("--clip", type=number(lo=0.0),
                   help=f"max global gradient norm, 0 for none (default {d['clip']:g})")
    steps = g.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=int_at_least(1, MAX_STEPS),
                       help=f"train until this many steps in total (default {d['steps']})")
    steps.add_argument("--epochs", type=number(positive=True, hi=1e9),
                       help="train for this many passes over the text (in total)")
    g.add_argument("--seed", type=int_at_least(0, MAX_SEED),
                   help=f"initialisation and sampling seed (default {d['seed']})")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss or gradient is nan/inf instead of stopping "
                   "(exit code 3)")
    g.add_argument("--threads", type=int_at_least(0),
                   help=f"BLAS threads, 0 for BLAS's own choice (needs threadpoolctl; "
                   f"default {d['threads']})")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks of mpirun -n K (needs "
                   "mpi4py): each rank trains --batch-size/K of the streams, gradients are "
                   "averaged every step, rank 0 alone writes; same result as one process. "
                   "Without an MPI launcher: one rank")


def _output_options(g, d):
    """Files, resuming, and what is reported during the run."""
    g.add_argument("--out", default="rnncore-out", metavar="DIR",
                   help="output folder for checkpoint.npz, loss.png, samples.txt "
                   "(default rnncore-out)")
    g.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.npz (same optimizer state, step, data "
                   "position and hidden state)")
    g.add_argument("--force", action="store_true",
                   help="start a new run even if DIR/checkpoint.npz exists (overwrites it)")
    _count_option(g, d, "--eval-every", "STEPS",
                  "validation bits/char every STEPS steps, 0 for only at the end", lo=0)
    g.add_argument("--save-every", type=int_at_least(0), metavar="STEPS",
                   help="save the checkpoint every STEPS steps (default: with every "
                   "evaluation), 0 for only at the end")
    _count_option(g, d, "--sample-every", "STEPS",
                  "print a generated sample every STEPS steps, 0 for none", lo=0)
    _count_option(g, d, "--sample-length", "CHARS", "length of those samples")
    g.add_argument("--temperature", type=number(lo=0.0),
                   help=f"sampling temperature of those samples (default {d['temperature']})")
