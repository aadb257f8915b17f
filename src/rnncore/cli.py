"""The ``rnncore`` command: train a character-level language model, sample, inspect.

::

    rnncore train [--cell gru] [--hidden 256] [--steps 1200] [--text PATH ...] [--out DIR]
    rnncore train --resume [--out DIR] [--steps 3000]
    mpirun -n 2 rnncore train --distributed [...]     # data-parallel over MPI ranks
    rnncore sample DIR/checkpoint.npz --length 500 --temperature 0.8 --prime "def " --seed 0
    rnncore info DIR/checkpoint.npz
    rnncore --version

The work is done by :mod:`rnncore.charlm`; this module parses arguments, shows
progress (tqdm when installed, plain lines otherwise), handles SIGINT/SIGTERM
(finish the current step, save, exit 0) and writes ``DIR/checkpoint.npz``,
``DIR/loss.png`` (when matplotlib is installed) and ``DIR/samples.txt``.

Exit codes: 0 success (also after a clean save on SIGINT/SIGTERM); 2 bad
input (missing/empty text, missing/corrupted checkpoint, bad options); 3 the
loss or gradient became nan/inf (the last good checkpoint is kept); 130 a
second interrupt before the save finished.

``--distributed`` (under ``mpirun -n K``): every rank builds the same corpus
and model and trains its share of the ``--batch-size`` streams (see
:class:`rnncore.charlm.Trainer`), which equals single-process training with
the same options. Rank 0 alone prints and writes files; the other ranks'
stdout and stderr go to ``os.devnull`` while they train. Setup errors are
agreed on (rank 0 reports, every rank exits 2); an unexpected error on one
rank prints its traceback and aborts every rank (``MPI_Abort``), since the
others would otherwise wait forever. The ranks stop together, and save, when
any of them gets SIGINT, SIGTERM or SIGUSR1. Open MPI's ``mpirun`` passes
SIGINT/SIGTERM on as SIGTERM but kills the ranks ~0.2 s later, too soon to
save: stop a run with ``kill -USR1 <mpirun pid>`` (forwarded as SIGUSR1) or
signal the rank processes themselves.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import traceback
from contextlib import contextmanager, nullcontext, redirect_stderr, redirect_stdout
from dataclasses import asdict, fields

from . import __version__
from . import distributed as dist
from .charlm import (CELLS, DEFAULT_MAX_CHARS, OPTIMIZERS, CorpusError, NonFiniteLossError,
                     TrainConfig, Trainer, Vocab, default_prime, generate, load_charlm,
                     plot_history, read_texts, shard_problem, stdlib_corpus)

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_INTERRUPTED = 0, 2, 3, 130

#: ``rnncore train`` defaults: the model and optimizer ones are TrainConfig's (see
#: rnncore.charlm, where they are justified); these are the loop's. 1200 steps take
#: about 1.5-2.5 minutes on a 2-core machine. BLAS threads: BLAS's own choice
#: (--threads 0). The kernels run their small per-step GEMMs single-threaded by
#: themselves (rnncore._threads) and all layers use the same (SciPy's) BLAS, so
#: on an idle 2-core machine 2 threads train at 52k chars/s against 35k with
#: one (measured); on a machine busy with other work, --threads 1 is safer.
#: Options left unset on the command line are None, so that a resumed run can
#: tell given values from defaults.
DEFAULTS = {
    **asdict(TrainConfig()), "steps": 1200, "eval_every": 200, "sample_every": 400,
    "sample_length": 300, "temperature": 0.8, "threads": 0,
}
CHECKPOINT, PLOT, SAMPLES = "checkpoint.npz", "loss.png", "samples.txt"


class CLIError(Exception):
    """A problem reported as one line on stderr with exit code 2."""


# ---------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------
def _int_at_least(lo):
    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {v}")
        return v
    return parse


def _float(lo=None, positive=False):
    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(v) or (positive and v <= 0) or (lo is not None and v < lo):
            want = "a positive number" if positive else f"a number >= {lo}"
            raise argparse.ArgumentTypeError(f"expected {want}, got {s}")
        return v
    return parse


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="rnncore",
        description="Character-level language models with rnncore's RNN/GRU/LSTM kernels.")
    p.add_argument("--version", action="version", version=f"rnncore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train", help="train a character-level language model",
        description="Train a character-level language model with truncated BPTT. Without "
        "--text it trains on the Python standard library's own sources. Ctrl-C (or "
        "SIGTERM) saves and exits; --resume continues exactly where a run stopped.")
    g = t.add_argument_group("data")
    g.add_argument("--text", action="append", metavar="PATH",
                   help="UTF-8 text file, or a folder of them (repeatable); default: the "
                   "Python standard library sources of this interpreter")
    g.add_argument("--max-chars", type=_int_at_least(2), metavar="N",
                   help=f"cap on the text size (default {DEFAULT_MAX_CHARS:,} for the "
                   "standard library corpus, no cap for --text)")
    g = t.add_argument_group("model")
    g.add_argument("--cell", choices=sorted(CELLS), help=f"recurrent cell (default {d['cell']})")
    g.add_argument("--hidden", type=_int_at_least(1), metavar="H",
                   help=f"hidden size (default {d['hidden']})")
    g.add_argument("--layers", type=_int_at_least(1), metavar="L",
                   help=f"stacked recurrent layers (default {d['layers']})")
    g.add_argument("--embed", type=_int_at_least(1), metavar="E",
                   help=f"character embedding size (default {d['embed']})")
    g.add_argument("--dtype", choices=["float32", "float64"],
                   help=f"parameter dtype (default {d['dtype']})")
    g = t.add_argument_group("training")
    g.add_argument("--seq-len", type=_int_at_least(1), metavar="T",
                   help=f"BPTT chunk length in characters (default {d['seq_len']})")
    g.add_argument("--batch-size", type=_int_at_least(1), metavar="N",
                   help=f"parallel streams per batch (default {d['batch_size']})")
    g.add_argument("--optimizer", choices=sorted(OPTIMIZERS),
                   help=f"optimizer (default {d['optimizer']})")
    g.add_argument("--lr", type=_float(positive=True),
                   help="learning rate (default: " + ", ".join(
                       f"{k} {v[1]:g}" for k, v in sorted(OPTIMIZERS.items())) + ")")
    g.add_argument("--clip", type=_float(lo=0.0),
                   help=f"max global gradient norm, 0 for none (default {d['clip']:g})")
    steps = g.add_mutually_exclusive_group()
    steps.add_argument("--steps", type=_int_at_least(1),
                       help=f"train until this many steps in total (default {d['steps']})")
    steps.add_argument("--epochs", type=_float(positive=True),
                       help="train for this many passes over the text (in total)")
    g.add_argument("--seed", type=int, help=f"initialisation and sampling seed "
                   f"(default {d['seed']})")
    g.add_argument("--skip-nonfinite", action="store_true",
                   help="skip a step whose loss or gradient is nan/inf instead of stopping "
                   "(exit code 3)")
    g.add_argument("--threads", type=_int_at_least(0),
                   help=f"BLAS threads, 0 for BLAS's own choice (needs threadpoolctl; "
                   f"default {d['threads']})")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the ranks of mpirun -n K (needs "
                   "mpi4py): each rank trains --batch-size/K of the streams, gradients are "
                   "averaged every step, rank 0 alone writes; same result as one process. "
                   "Without an MPI launcher: one rank")
    g = t.add_argument_group("output")
    g.add_argument("--out", default="rnncore-out", metavar="DIR",
                   help="output folder for checkpoint.npz, loss.png, samples.txt "
                   "(default rnncore-out)")
    g.add_argument("--resume", action="store_true",
                   help="continue from DIR/checkpoint.npz (same optimizer state, step, data "
                   "position and hidden state)")
    g.add_argument("--force", action="store_true",
                   help="start a new run even if DIR/checkpoint.npz exists (overwrites it)")
    g.add_argument("--eval-every", type=_int_at_least(0), metavar="STEPS",
                   help=f"validation bits/char every STEPS steps, 0 for only at the end "
                   f"(default {d['eval_every']})")
    g.add_argument("--save-every", type=_int_at_least(0), metavar="STEPS",
                   help="save the checkpoint every STEPS steps (default: with every "
                   "evaluation), 0 for only at the end")
    g.add_argument("--sample-every", type=_int_at_least(0), metavar="STEPS",
                   help=f"print a generated sample every STEPS steps, 0 for none "
                   f"(default {d['sample_every']})")
    g.add_argument("--sample-length", type=_int_at_least(1), metavar="CHARS",
                   help=f"length of those samples (default {d['sample_length']})")
    g.add_argument("--temperature", type=_float(lo=0.0),
                   help=f"sampling temperature of those samples (default {d['temperature']})")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a trained checkpoint.")
    s.add_argument("checkpoint", help="a checkpoint.npz written by rnncore train")
    s.add_argument("--length", type=_int_at_least(0), default=500,
                   help="characters to generate (default 500)")
    s.add_argument("--temperature", type=_float(lo=0.0), default=0.8,
                   help="softmax temperature; 0 is greedy (default 0.8)")
    s.add_argument("--prime", default=None,
                   help="text to start from (default 'def ' when the vocabulary has it)")
    s.add_argument("--seed", type=int, default=None,
                   help="random seed (default: fresh randomness)")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser("info", help="show a checkpoint's configuration",
                       description="Show a checkpoint's model, training state and history.")
    i.add_argument("checkpoint", help="a checkpoint.npz written by rnncore train")
    i.set_defaults(func=cmd_info)
    return p


def main(argv=None) -> int:
    """Entry point of the ``rnncore`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"rnncore: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("rnncore: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _load(path, need_training_state=False):
    """``load_charlm(path)`` with its errors turned into one-line CLIErrors."""
    try:
        return load_charlm(path, need_training_state)
    except FileNotFoundError:
        raise CLIError(f"checkpoint not found: {path}") from None
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot load checkpoint {path}: {exc}") from None


def _fmt_time(seconds) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _rate(cps) -> str:
    return f"{cps / 1000:.1f}k chars/s" if cps >= 1000 else f"{cps:.0f} chars/s"


class _Progress:
    """A tqdm bar on stderr, or plain progress lines when tqdm is missing.

    ``write`` prints a message on stdout without breaking the bar.
    """

    def __init__(self, total, initial):
        self.total, self.initial = total, initial
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
            print("(tqdm is not installed: plain progress lines; pip install tqdm for a "
                  "progress bar)", file=sys.stderr)
        else:
            self.bar = tqdm(total=total, initial=initial, unit="step", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.05, mininterval=0.25)

    def update(self, step, loss, cps):
        text = f"loss {loss / math.log(2):.3f} bits/char, {_rate(cps)}"
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.perf_counter()
        if now - self.last_print >= 5.0 or step == self.total:
            done = step - self.initial
            eta = (now - self.t0) / done * (self.total - step) if done else 0.0
            print(f"step {step}/{self.total} | {text} | ETA {_fmt_time(eta)}",
                  file=sys.stderr, flush=True)
            self.last_print = now

    def write(self, msg):
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)
        sys.stdout.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _StopOnSignal:
    """Records SIGINT/SIGTERM so the loop can finish its step and save.

    A second signal interrupts at once (KeyboardInterrupt for SIGINT, the
    default action for SIGTERM); the checkpoint on disk stays intact because
    saving is atomic.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, extra=()):
        self.signals = self.SIGNALS + tuple(extra)
        self.signum = None
        self.previous = {}

    def __enter__(self):
        for s in self.signals:
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)

    def _handle(self, signum, frame):
        self.signum = signum
        for s in self.signals:
            signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""


def _thread_limit(n):
    if not n:
        return nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        print("rnncore: warning: --threads needs threadpoolctl (pip install threadpoolctl); "
              "ignored", file=sys.stderr)
        return nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def _prepare(args, ckpt, ranks):
    """``(corpus, loaded checkpoint or None, config or None)`` for :func:`_make_trainer`.

    Everything that can fail on bad input, before any collective operation.
    """
    try:
        corpus = None
        if args.text:
            corpus = read_texts(args.text, args.max_chars)
        elif not args.resume or args.max_chars is not None:
            corpus = stdlib_corpus(args.max_chars or DEFAULT_MAX_CHARS)
    except CorpusError as exc:
        raise CLIError(str(exc)) from None
    if args.resume:
        if not os.path.exists(ckpt):
            raise CLIError(f"--resume: no checkpoint to resume at {ckpt}")
        loaded = _load(ckpt, need_training_state=True)
        stored = loaded[2]["train_config"]
        for name in TrainConfig.FIXED:
            given = getattr(args, name, None)
            if given is not None and name in stored and given != stored[name]:
                flag = "--" + name.replace("_", "-")
                raise CLIError(f"{ckpt} was trained with {flag} {stored[name]}; a resumed "
                               f"run cannot change it to {given} (drop {flag}, or start a "
                               "new run with another --out)")
        _check_shards(stored.get("batch_size", 1), ranks)
        return corpus, loaded, None
    if os.path.exists(ckpt) and not args.force:
        raise CLIError(f"{ckpt} already exists: add --resume to continue it, --force to "
                       "overwrite it, or choose another --out")
    config = TrainConfig(**{f.name: _opt(args, f.name) for f in fields(TrainConfig)
                            if hasattr(args, f.name)})
    if args.lr is None:
        config.lr = OPTIMIZERS[config.optimizer][1]
    _check_shards(config.batch_size, ranks)
    return corpus, None, config


def _check_shards(batch_size, ranks):
    problem = shard_problem(batch_size, ranks, "--batch-size")
    if problem:
        raise CLIError(problem)


def _make_trainer(args, ckpt, distributed=False):
    """A new Trainer from the options, or the resumed one of ``--resume``.

    Distributed, the ranks first agree on the setup errors (rank 0's message,
    or the first failing rank's, is raised on every rank).
    """
    error = prepared = None
    try:
        prepared = _prepare(args, ckpt, dist.get_size() if distributed else 1)
    except CLIError as exc:
        error = exc
    if distributed:
        error = _agreed_error(error)
    if error is not None:
        raise error
    corpus, loaded, config = prepared
    try:
        if loaded is None:
            return Trainer(corpus, config, skip_nonfinite=args.skip_nonfinite,
                           distributed=distributed)
        try:
            trainer = Trainer.resume(loaded, corpus, lr=args.lr, clip=args.clip,
                                     skip_nonfinite=args.skip_nonfinite,
                                     distributed=distributed)
        except CorpusError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise CLIError(f"cannot resume from {ckpt}: incomplete training state "
                           f"({exc})") from None
        if trainer.corpus_changed:
            print("rnncore: warning: the training text differs from the one in the "
                  "checkpoint; training continues on the new text", file=sys.stderr)
        return trainer
    except CorpusError as exc:
        raise CLIError(str(exc)) from None


def _agreed_error(error):
    """The CLIError every rank raises when any rank has one (None when none has)."""
    messages = dist.allgather(None if error is None else str(error))
    for rank, msg in enumerate(messages):
        if msg is not None:
            return CLIError(msg if rank == 0 else f"(on rank {rank}) {msg}")
    return None


def _opt(args, name):
    v = getattr(args, name)
    return DEFAULTS[name] if v is None else v


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def cmd_train(args) -> int:
    launched = dist.launcher_size() or 1
    if not args.distributed:
        if launched > 1:
            raise CLIError(f"started by an MPI launcher as {launched} processes without "
                           "--distributed: each would train alone and overwrite the others' "
                           "files; add --distributed")
        return _train(args)
    if launched > 1 and not dist.mpi_available():
        raise CLIError(f"--distributed: started as {launched} MPI processes, but mpi4py is "
                       "not installed (pip install mpi4py)")
    try:
        rank, size = dist.init()
    except ImportError as exc:
        raise CLIError(f"--distributed: cannot load MPI ({exc})") from None
    if size == 1:
        print("rnncore: note: --distributed with one rank (start it with mpirun -n K for "
              "K ranks): single-process training", file=sys.stderr)
        return _train(args, distributed=True)
    try:
        with _silenced(rank != 0):
            return _train(args, distributed=True)
    except CLIError:  # agreed by every rank (_make_trainer): rank 0 reports it
        if rank == 0:
            raise
        return EXIT_USAGE
    except BaseException as exc:  # this rank alone: the others would wait forever
        traceback.print_exc()
        sys.stderr.flush()
        dist.abort(EXIT_INTERRUPTED if isinstance(exc, KeyboardInterrupt) else 1)
        raise


@contextmanager
def _silenced(quiet):
    """Send stdout and stderr to os.devnull while ``quiet`` (ranks other than 0)."""
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as null, redirect_stdout(null), redirect_stderr(null):
        yield


def _train(args, distributed=False) -> int:
    wall0 = time.perf_counter()
    out = args.out
    ckpt, plot_path, samples_path = (os.path.join(out, f) for f in (CHECKPOINT, PLOT, SAMPLES))
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out} exists and is not a folder")
    trainer = _make_trainer(args, ckpt, distributed)
    root = trainer.is_root
    if root:
        os.makedirs(out, exist_ok=True)
    cfg, model = trainer.config, trainer.model
    if args.epochs is not None:
        total = math.ceil(args.epochs * trainer.steps_per_epoch)
    elif args.steps is not None:
        total = args.steps
    else:
        total = trainer.target_steps or DEFAULTS["steps"]
    trainer.target_steps = total
    start = trainer.step
    eval_every = _opt(args, "eval_every")
    save_every = eval_every if args.save_every is None else args.save_every
    sample_every = _opt(args, "sample_every")
    sample_length, temperature = _opt(args, "sample_length"), _opt(args, "temperature")

    n_val = 0 if trainer.val_ids is None else len(trainer.val_ids)
    print(f"rnncore {__version__} train: {cfg.cell.upper()} E={cfg.embed} H={cfg.hidden} "
          f"L={cfg.layers} V={len(trainer.vocab)} ({model.num_parameters():,} parameters, "
          f"{cfg.dtype}); {cfg.optimizer} lr {cfg.lr:g}, clip {cfg.clip:g}; "
          f"batch {cfg.batch_size} x {cfg.seq_len} chars", flush=True)
    if distributed:
        print(f"  data-parallel: {trainer.size} rank(s) x {cfg.batch_size // trainer.size} "
              "streams", flush=True)
    print(f"  text: {trainer.corpus.describe()}; {len(trainer.train_ids):,} for training, "
          f"{n_val:,} for validation; {trainer.steps_per_epoch} steps per epoch", flush=True)
    if start >= total:
        print(f"  {ckpt} is already at step {start} (target {total}); nothing to train. "
              "Raise --steps to continue.", flush=True)
        return EXIT_OK
    print(f"  steps {start} -> {total} ({(total - start) / trainer.steps_per_epoch:.2f} epochs)"
          f"{', resumed from ' + ckpt if start else ''}; output in {out}/", flush=True)

    if root and (not args.resume or not os.path.exists(samples_path)):
        open(samples_path, "w", encoding="utf-8").close()

    def add_sample(title, text):
        with open(samples_path, "a", encoding="utf-8") as f:
            f.write(f"--- {title} ---\n{text}\n\n")

    progress = _Progress(total, start)
    saved = {"step": start if args.resume else None}

    def on_event(kind, info):
        if kind == "step":
            progress.update(info["step"], info["loss"], info["chars_per_s"])
        elif kind == "eval":
            progress.write(f"step {info['step']}: validation {info['bpc']:.3f} bits/char")
        elif kind == "sample":
            title = f"step {info['step']}, temperature {temperature:g}"
            progress.write(f"--- sample at {title} ---\n{info['text']}\n---")
            add_sample(title, info["text"])
        elif kind == "save":
            saved["step"] = info["step"]

    def diverged(reason):
        progress.close()
        if saved["step"] is not None:
            kept = f"the last good checkpoint {ckpt} (step {saved['step']}) was kept"
        elif os.path.exists(ckpt):
            kept = f"the existing {ckpt} was left untouched"
        else:
            kept = "no checkpoint was saved"
        print(f"rnncore: error: {reason}; training stopped and {kept}. Try a lower --lr, "
              "a --clip, or --skip-nonfinite.", file=sys.stderr)
        return EXIT_NONFINITE

    # distributed: also SIGUSR1, which Open MPI's mpirun forwards without killing the ranks
    stop = _StopOnSignal((signal.SIGUSR1,) if distributed and hasattr(signal, "SIGUSR1")
                         else ())
    session_secs0, session_chars0 = trainer.train_seconds, trainer.chars_seen
    try:
        with stop, _thread_limit(_opt(args, "threads")):
            try:
                outcome = trainer.fit(total, eval_every=eval_every, sample_every=sample_every,
                                      save_every=save_every, checkpoint=ckpt,
                                      sample_length=sample_length, temperature=temperature,
                                      on_event=on_event, should_stop=stop)
            except NonFiniteLossError as exc:
                return diverged(str(exc))
            progress.close()
            if outcome == "stopped":
                print(f"rnncore: {stop.name or 'a stop signal (on another rank)'} received: "
                      f"saving at step {trainer.step}", file=sys.stderr, flush=True)
            if trainer.val_ids is not None and not (
                    trainer.val_history and trainer.val_history[-1][0] == trainer.step):
                trainer.evaluate()
            final_val = trainer.val_history[-1][1] if trainer.val_history else 0.0
            if not (math.isfinite(final_val) and trainer.params_finite()):
                return diverged(f"the model diverged at step {trainer.step} (validation loss "
                                f"{final_val}, parameters finite: {trainer.params_finite()})")
            if outcome == "done" and root:
                text = trainer.sample(sample_length, temperature)
                add_sample(f"final, step {trainer.step}, temperature {temperature:g}", text)
                print(f"--- final sample (step {trainer.step}) ---\n{text}\n---", flush=True)
            trainer.save(ckpt)
    finally:
        progress.close()
    if not root:
        return EXIT_OK
    title = (f"{cfg.cell.upper()} H={cfg.hidden} L={cfg.layers} E={cfg.embed}, "
             f"batch {cfg.batch_size} x {cfg.seq_len}, {cfg.optimizer} lr {cfg.lr:g}")
    plotted = plot_history(trainer.train_loss, trainer.val_history, plot_path, title)
    if not plotted:
        print("(matplotlib is not installed: loss.png not written; pip install matplotlib)",
              file=sys.stderr)

    secs = trainer.train_seconds - session_secs0
    cps = (trainer.chars_seen - session_chars0) / secs if secs else 0.0
    val = (f"validation {trainer.val_history[-1][1]:.3f} bits/char"
           if trainer.val_history else "no validation split")
    recent = [v for v in trainer.train_loss[-50:] if math.isfinite(v)]
    train_bpc = sum(recent) / len(recent) / math.log(2) if recent else float("nan")
    skipped = f", {trainer.skipped} skipped" if trainer.skipped else ""
    files = ", ".join([ckpt] + ([plot_path] if plotted else []) + [samples_path])
    wall = _fmt_time(time.perf_counter() - wall0)
    print(f"{'interrupted' if outcome == 'stopped' else 'done'}: step {trainer.step}/{total} "
          f"({trainer.epoch:.2f} epochs{skipped}) | {val} | train {train_bpc:.3f} bits/char "
          f"(last {len(recent)} steps) | {_rate(cps)} | wall {wall} | wrote {files}", flush=True)
    reducer = trainer.allreducer
    if trainer.size > 1 and reducer is not None and reducer.calls and secs:
        print(f"all-reduce: {1e3 * reducer.seconds / reducer.calls:.2f} ms/step "
              f"({100 * reducer.seconds / secs:.1f}% of step, waiting for the other ranks "
              f"included), {reducer.nbytes / 1024:.0f} KB per step; {trainer.size} ranks",
              flush=True)
    return EXIT_OK


def cmd_sample(args) -> int:
    model, _, extra = _load(args.checkpoint)
    vocab = Vocab(extra["vocab"])
    prime = default_prime(vocab) if args.prime is None else args.prime
    if prime not in vocab:
        bad = "".join(sorted(set(prime) - set(vocab.chars)))
        raise CLIError(f"--prime has characters the model does not know: {bad!r}")
    text = generate(model, vocab, args.length, args.temperature, prime, args.seed)
    sys.stdout.write(text + "\n")
    return EXIT_OK


def cmd_info(args) -> int:
    model, opt_state, extra = _load(args.checkpoint)
    rows = [("checkpoint", args.checkpoint), ("model", repr(model))]
    rows += [(k, v) for k, v in model.get_config().items()]
    rows.append(("parameters", f"{model.num_parameters():,}"))
    rows += [(f"  {k}", "x".join(map(str, p.shape))) for k, p in model.params.items()]
    vocab = extra["vocab"]
    rows.append(("vocabulary", f"{len(vocab)} characters: {vocab[:60]!r}"
                 + ("..." if len(vocab) > 60 else "")))
    if opt_state is not None:
        rows.append(("optimizer", f"{opt_state.get('type')} (lr {opt_state.get('lr'):g}, "
                     f"step {opt_state.get('step')})"))
    if "step" in extra:
        rows.append(("step", extra["step"]))
    for k, v in (extra.get("train_config") or {}).items():
        rows.append((f"train.{k}", v))
    corpus = extra.get("corpus")
    if corpus:
        src = ("Python standard library" if corpus["kind"] == "stdlib" else
               ", ".join(corpus["sources"][:3]) + (" ..." if len(corpus["sources"]) > 3 else ""))
        rows.append(("text", f"{corpus['chars']:,} characters from {len(corpus['sources'])} "
                     f"file(s): {src}"))
    hist = extra.get("history") or {}
    losses = [v for v in hist.get("train_loss", [])[-50:] if math.isfinite(v)]
    if losses:
        rows.append(("train loss", f"{sum(losses) / len(losses) / math.log(2):.3f} bits/char "
                     f"(mean of the last {len(losses)} steps)"))
    if hist.get("val"):
        s, b = hist["val"][-1]
        rows.append(("validation", f"{b:.3f} bits/char at step {s}"))
    if extra.get("train_seconds"):
        rows.append(("trained", f"{extra.get('chars_seen', 0):,} characters in "
                     f"{_fmt_time(extra['train_seconds'])} "
                     f"({_rate(extra.get('chars_seen', 0) / extra['train_seconds'])})"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
