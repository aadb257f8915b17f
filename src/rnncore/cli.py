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
input (missing/empty text, missing/corrupted/hostile checkpoint, bad options, a
model or sample too large for the available memory, an ``--out`` that cannot
be written); 3 the loss or gradient became nan/inf (the last good checkpoint
is kept); 4 writing an output file failed during the run (disk full, I/O
error: the last checkpoint written is kept, intact); 130 a second interrupt
before the save finished. Every failure is one line on stderr.

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
from dataclasses import asdict, fields

from ._version import __version__
from . import distributed as dist
from ._cli_options import (MAX_SEED, MAX_STEPS, CLIError, OneLineParser, add_train_parser,
                           check_model_options, check_sample_memory, check_text_memory,
                           check_training_memory, check_writable, int_at_least, number)
from ._terminal import (Progress, StopOnSignal, available_memory, fmt_time, rate, silenced,
                        thread_limit)
from .charlm import (DEFAULT_MAX_CHARS, OPTIMIZERS, CorpusError, NonFiniteLossError,
                     TrainConfig, Trainer, Vocab, default_prime, generate, load_charlm,
                     plot_history, read_texts, shard_problem, stdlib_corpus)

EXIT_OK, EXIT_USAGE, EXIT_NONFINITE, EXIT_WRITE, EXIT_INTERRUPTED = 0, 2, 3, 4, 130

#: ``rnncore train`` defaults: the model and optimizer ones are TrainConfig's (see
#: rnncore.charlm, where they are justified); these are the loop's. 1200 steps take
#: about 1.5-2.5 minutes on a 2-core machine. BLAS threads: BLAS's own choice
#: (--threads 0). The kernels run their small per-step GEMMs single-threaded by
#: themselves (rnncore._runtime.threads) and all layers use the same (SciPy's) BLAS, so
#: on an idle 2-core machine 2 threads train at 52k chars/s against 35k with
#: one (measured); on a machine busy with other work, --threads 1 is safer.
#: Options left unset on the command line are None, so that a resumed run can
#: tell given values from defaults.
DEFAULTS = {
    **asdict(TrainConfig()), "steps": 1200, "eval_every": 200, "sample_every": 400,
    "sample_length": 300, "temperature": 0.8, "threads": 0,
}
CHECKPOINT, PLOT, SAMPLES = "checkpoint.npz", "loss.png", "samples.txt"


def build_parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    p = OneLineParser(
        prog="rnncore",
        description="Character-level language models with rnncore's RNN/GRU/LSTM kernels.")
    p.add_argument("--version", action="version", version=f"rnncore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = add_train_parser(sub, d)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a trained checkpoint.")
    s.add_argument("checkpoint", help="a checkpoint.npz written by rnncore train (or its "
                   "folder)")
    s.add_argument("--length", type=int_at_least(0), default=500,
                   help="characters to generate (default 500)")
    s.add_argument("--temperature", type=number(lo=0.0), default=0.8,
                   help="softmax temperature; 0 is greedy (default 0.8)")
    s.add_argument("--prime", default=None,
                   help="text to start from (default 'def ' when the vocabulary has it)")
    s.add_argument("--seed", type=int_at_least(0, MAX_SEED), default=None,
                   help="random seed (default: fresh randomness)")
    s.set_defaults(func=cmd_sample)

    i = sub.add_parser("info", help="show a checkpoint's configuration",
                       description="Show a checkpoint's model, training state and history.")
    i.add_argument("checkpoint", help="a checkpoint.npz written by rnncore train (or its "
                   "folder)")
    i.set_defaults(func=cmd_info)
    return p


#: steps of the training loss the progress bar and the summary line average
RECENT_STEPS = 50


def recent_loss(train_loss) -> float:
    """Mean of the last RECENT_STEPS finite training losses (nats; nan if none):
    what the progress bar shows and the summary line reports."""
    recent = [v for v in train_loss[-RECENT_STEPS:] if math.isfinite(v)]
    return sum(recent) / len(recent) if recent else float("nan")


def main(argv=None) -> int:
    """Entry point of the ``rnncore`` console script; returns the exit code.

    With no command at all, prints the help and returns 0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
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
    """``load_charlm(path)`` (a folder: its checkpoint.npz) with one-line CLIErrors."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    try:
        return load_charlm(path, need_training_state, max_bytes=available_memory())
    except FileNotFoundError:
        raise CLIError(f"checkpoint not found: {path}") from None
    except (ValueError, OSError) as exc:
        raise CLIError(f"cannot load checkpoint {path}: {exc}") from None


def _prepare(args, ckpt, ranks):
    """``(corpus, loaded checkpoint or None, config or None)`` for :func:`_make_trainer`.

    Everything that can fail on bad input, before any collective operation.
    """
    check_sample_memory(_opt(args, "sample_length"), "--sample-length")
    corpus = _read_corpus(args)
    if args.resume:
        return corpus, _load_resumable(args, ckpt, ranks), None
    if os.path.exists(ckpt) and not args.force:
        raise CLIError(f"{ckpt} already exists: add --resume to continue it, --force to "
                       "overwrite it, or choose another --out")
    config = TrainConfig(**{f.name: _opt(args, f.name) for f in fields(TrainConfig)
                            if hasattr(args, f.name)})
    if args.lr is None:
        config.lr = OPTIMIZERS[config.optimizer][1]
    check_model_options(config)
    _check_shards(config.batch_size, ranks)
    check_training_memory(config, len(set(corpus.text)))
    return corpus, None, config


def _read_corpus(args):
    """The text of --text, the standard library's, or None (a resumed run re-reads its own)."""
    try:
        if args.text:
            check_text_memory(args.text, args.max_chars)
            return read_texts(args.text, args.max_chars)
        if not args.resume or args.max_chars is not None:
            return stdlib_corpus(args.max_chars or DEFAULT_MAX_CHARS)
    except CorpusError as exc:
        raise CLIError(str(exc)) from None
    return None


def _load_resumable(args, ckpt, ranks):
    """``--resume``'s checkpoint, refusing options that would change the run it continues."""
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
    return loaded


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
    """``rnncore train``: in one process, or as one rank of ``mpirun -n K`` (--distributed)."""
    launched = dist.launcher_size() or 1
    if args.distributed:
        return _train_distributed(args, launched)
    if launched > 1:
        raise CLIError(f"started by an MPI launcher as {launched} processes without "
                       "--distributed: each would train alone and overwrite the others' "
                       "files; add --distributed")
    return _train(args)


def _train_distributed(args, launched) -> int:
    """Join the MPI job and train this rank's share; a failure on one rank ends every rank."""
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
        with silenced(rank != 0):
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


def _train(args, distributed=False) -> int:
    """The training run of ``rnncore train`` in this process (one rank of a distributed run)."""
    run = _Run(args, distributed)
    run.announce()
    if run.start >= run.total:
        print(f"  {run.ckpt} is already at step {run.start} (target {run.total}); nothing to "
              "train. Raise --steps to continue.", flush=True)
        return EXIT_OK
    run.open_samples()
    return run.fit()


def _total_steps(args, trainer) -> int:
    """The step to train up to: --epochs, --steps, the checkpoint's target, or the default."""
    if args.epochs is not None:
        steps = math.ceil(args.epochs * trainer.steps_per_epoch)
        if steps > MAX_STEPS:
            raise CLIError(f"--epochs {args.epochs:g} is {steps:,} steps, more than "
                           f"{MAX_STEPS:,}")
        return steps
    if args.steps is not None:
        return args.steps
    return trainer.target_steps or DEFAULTS["steps"]


class _Run:
    """One ``rnncore train`` session: its trainer, files, progress display and messages."""

    def __init__(self, args, distributed):
        self.wall0 = time.perf_counter()
        self.args, self.distributed, self.out = args, distributed, args.out
        self.ckpt, self.plot_path, self.samples_path = (
            os.path.join(self.out, f) for f in (CHECKPOINT, PLOT, SAMPLES))
        if os.path.exists(self.out) and not os.path.isdir(self.out):
            raise CLIError(f"--out {self.out} exists and is not a folder")
        self.trainer = trainer = _make_trainer(args, self.ckpt, distributed)
        if trainer.is_root:
            check_writable(self.out)
        self.total = trainer.target_steps = _total_steps(args, trainer)
        self.start = trainer.step
        self.eval_every = _opt(args, "eval_every")
        self.save_every = self.eval_every if args.save_every is None else args.save_every
        self.sample_every = _opt(args, "sample_every")
        self.sample_length = _opt(args, "sample_length")
        self.temperature = _opt(args, "temperature")
        self.progress = None
        self.saved_step = self.start if args.resume else None
        self.secs0, self.chars0 = trainer.train_seconds, trainer.chars_seen

    def announce(self):
        """The lines printed before training: model, data-parallel split, text, steps."""
        trainer = self.trainer
        cfg = trainer.config
        n_val = 0 if trainer.val_ids is None else len(trainer.val_ids)
        print(f"rnncore {__version__} train: {cfg.cell.upper()} E={cfg.embed} H={cfg.hidden} "
              f"L={cfg.layers} V={len(trainer.vocab)} "
              f"({trainer.model.num_parameters():,} parameters, {cfg.dtype}); {cfg.optimizer} "
              f"lr {cfg.lr:g}, clip {cfg.clip:g}; batch {cfg.batch_size} x {cfg.seq_len} chars",
              flush=True)
        if self.distributed:
            print(f"  data-parallel: {trainer.size} rank(s) x {cfg.batch_size // trainer.size} "
                  "streams", flush=True)
        print(f"  text: {trainer.corpus.describe()}; {len(trainer.train_ids):,} for training, "
              f"{n_val:,} for validation; {trainer.steps_per_epoch} steps per epoch", flush=True)
        if self.start < self.total:
            epochs = (self.total - self.start) / trainer.steps_per_epoch
            resumed = ", resumed from " + self.ckpt if self.start else ""
            print(f"  steps {self.start} -> {self.total} ({epochs:.2f} epochs){resumed}; "
                  f"output in {self.out}/", flush=True)

    def open_samples(self):
        """Start samples.txt afresh (a resumed run appends to the one it finds)."""
        if self.trainer.is_root and (not self.args.resume
                                     or not os.path.exists(self.samples_path)):
            open(self.samples_path, "w", encoding="utf-8").close()

    def add_sample(self, title, text):
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(f"--- {title} ---\n{text}\n\n")

    def on_event(self, kind, info):
        """:meth:`Trainer.fit`'s events: progress, validation, samples, saves."""
        if kind == "step":
            # the smoothed loss the summary line reports, not the last step's
            self.progress.update(info["step"], recent_loss(self.trainer.train_loss),
                                 info["chars_per_s"])
        elif kind == "eval":
            self.progress.write(f"step {info['step']}: validation {info['bpc']:.3f} bits/char")
        elif kind == "sample":
            title = f"step {info['step']}, temperature {self.temperature:g}"
            self.progress.write(f"--- sample at {title} ---\n{info['text']}\n---")
            self.add_sample(title, info["text"])
        elif kind == "save":
            self.saved_step = info["step"]

    def diverged(self, reason) -> int:
        """Report a nan/inf loss or model and which checkpoint was kept; exit code 3."""
        self.progress.close()
        ckpt = self.ckpt
        if self.saved_step is not None:
            kept = f"the last good checkpoint {ckpt} (step {self.saved_step}) was kept"
        elif os.path.exists(ckpt):
            kept = f"the existing {ckpt} was left untouched"
        else:
            kept = "no checkpoint was saved"
        print(f"rnncore: error: {reason}; training stopped and {kept}. Try a lower --lr, "
              "a --clip, or --skip-nonfinite.", file=sys.stderr)
        return EXIT_NONFINITE

    def fit(self) -> int:
        """:meth:`_fit`, with a failed write (disk full, I/O error) one line and exit 4."""
        try:
            return self._fit()
        except OSError as exc:
            if self.trainer.size > 1:  # the other ranks would wait: abort them all
                raise
            kept = (f"the checkpoint of step {self.saved_step} is intact" if self.saved_step
                    is not None else "no checkpoint of this run was written")
            print(f"rnncore: error: cannot write to {self.out}: {exc.strerror or exc}"
                  f"{f' ({exc.filename})' if exc.filename else ''}; {kept}", file=sys.stderr)
            return EXIT_WRITE

    def _fit(self) -> int:
        """Train to the target under the stop signals, save, then plot and report (rank 0)."""
        trainer = self.trainer
        self.progress = Progress(self.total, self.start)
        # distributed: also SIGUSR1, which Open MPI's mpirun forwards without killing the ranks
        stop = StopOnSignal((signal.SIGUSR1,) if self.distributed
                            and hasattr(signal, "SIGUSR1") else ())
        try:
            with stop, thread_limit(_opt(self.args, "threads")):
                try:
                    outcome = trainer.fit(
                        self.total, eval_every=self.eval_every, sample_every=self.sample_every,
                        save_every=self.save_every, checkpoint=self.ckpt,
                        sample_length=self.sample_length, temperature=self.temperature,
                        on_event=self.on_event, should_stop=stop)
                except NonFiniteLossError as exc:
                    return self.diverged(str(exc))
                self.progress.close()
                if outcome == "stopped":
                    print(f"rnncore: {stop.name or 'a stop signal (on another rank)'} received: "
                          f"saving at step {trainer.step}", file=sys.stderr, flush=True)
                problem = self.final_check()
                if problem:
                    return self.diverged(problem)
                if outcome == "done" and trainer.is_root:
                    self.final_sample()
                trainer.save(self.ckpt)
                self.saved_step = trainer.step
        finally:
            self.progress.close()
        if trainer.is_root:
            self.report(outcome, self.plot())
        return EXIT_OK

    def final_check(self):
        """Evaluate the final step (unless just done); why the model diverged, or None."""
        trainer = self.trainer
        if trainer.val_ids is not None and not (
                trainer.val_history and trainer.val_history[-1][0] == trainer.step):
            trainer.evaluate()
        final_val = trainer.val_history[-1][1] if trainer.val_history else 0.0
        if not (math.isfinite(final_val) and trainer.params_finite()):
            return (f"the model diverged at step {trainer.step} (validation loss "
                    f"{final_val}, parameters finite: {trainer.params_finite()})")
        return None

    def final_sample(self):
        trainer, temperature = self.trainer, self.temperature
        text = trainer.sample(self.sample_length, temperature)
        self.add_sample(f"final, step {trainer.step}, temperature {temperature:g}", text)
        print(f"--- final sample (step {trainer.step}) ---\n{text}\n---", flush=True)

    def plot(self) -> bool:
        """Write loss.png; False (with a note) without matplotlib."""
        cfg = self.trainer.config
        title = (f"{cfg.cell.upper()} H={cfg.hidden} L={cfg.layers} E={cfg.embed}, "
                 f"batch {cfg.batch_size} x {cfg.seq_len}, {cfg.optimizer} lr {cfg.lr:g}")
        plotted = plot_history(self.trainer.train_loss, self.trainer.val_history,
                               self.plot_path, title)
        if not plotted:
            print("(matplotlib is not installed: loss.png not written; pip install matplotlib)",
                  file=sys.stderr)
        return plotted

    def report(self, outcome, plotted):
        """The closing line (and the all-reduce cost of a distributed run)."""
        trainer = self.trainer
        secs = trainer.train_seconds - self.secs0
        cps = (trainer.chars_seen - self.chars0) / secs if secs else 0.0
        val = (f"validation {trainer.val_history[-1][1]:.3f} bits/char"
               if trainer.val_history else "no validation split")
        recent = [v for v in trainer.train_loss[-RECENT_STEPS:] if math.isfinite(v)]
        train_bpc = recent_loss(trainer.train_loss) / math.log(2)
        skipped = f", {trainer.skipped} skipped" if trainer.skipped else ""
        files = ", ".join([self.ckpt] + ([self.plot_path] if plotted else [])
                          + [self.samples_path])
        wall = fmt_time(time.perf_counter() - self.wall0)
        print(f"{'interrupted' if outcome == 'stopped' else 'done'}: step {trainer.step}/"
              f"{self.total} ({trainer.epoch:.2f} epochs{skipped}) | {val} | train "
              f"{train_bpc:.3f} bits/char (last {len(recent)} steps) | {rate(cps)} | wall "
              f"{wall} | wrote {files}", flush=True)
        reducer = trainer.allreducer
        if trainer.size > 1 and reducer is not None and reducer.calls and secs:
            print(f"all-reduce: {1e3 * reducer.seconds / reducer.calls:.2f} ms/step "
                  f"({100 * reducer.seconds / secs:.1f}% of step, waiting for the other ranks "
                  f"included), {reducer.nbytes / 1024:.0f} KB per step; {trainer.size} ranks",
                  flush=True)


def cmd_sample(args) -> int:
    check_sample_memory(args.length, "--length")
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
    """``rnncore info``: the checkpoint's model, then its training state and history."""
    model, opt_state, extra = _load(args.checkpoint)
    rows = _model_rows(args.checkpoint, model, extra["vocab"]) + _training_rows(opt_state, extra)
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return EXIT_OK


def _model_rows(path, model, vocab):
    """``(label, value)`` rows of ``rnncore info`` about the model and its vocabulary."""
    rows = [("checkpoint", path), ("model", repr(model))]
    rows += [(k, v) for k, v in model.get_config().items()]
    rows.append(("parameters", f"{model.num_parameters():,}"))
    rows += [(f"  {k}", "x".join(map(str, p.shape))) for k, p in model.params.items()]
    rows.append(("vocabulary", f"{len(vocab)} characters: {vocab[:60]!r}"
                 + ("..." if len(vocab) > 60 else "")))
    return rows


def _training_rows(opt_state, extra):
    """``(label, value)`` rows of ``rnncore info`` about the optimizer, the run and its text."""
    rows = []
    if opt_state is not None:
        lr = opt_state.get("lr")
        lr = f"{lr:g}" if isinstance(lr, (int, float)) else repr(lr)
        rows.append(("optimizer", f"{opt_state.get('type')} (lr {lr}, "
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
                     f"{fmt_time(extra['train_seconds'])} "
                     f"({rate(extra.get('chars_seen', 0) / extra['train_seconds'])})"))
    return rows


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
