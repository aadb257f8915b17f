"""Training the char-LM: truncated BPTT with exact resumption, optionally data-parallel.

- :class:`TrainConfig` -- everything that defines a run (stored in its
  checkpoints); :data:`OPTIMIZERS` and :func:`build_optimizer`.
- :class:`Trainer` -- one training step, validation bits per character, the
  loop with periodic evaluation / samples / checkpoints, and checkpoints that
  resume exactly (model, optimizer state, step, carried hidden state, RNG
  state, loss history; the ``extra`` block is :mod:`.checkpoint`'s); with
  ``distributed=True``, data-parallel over MPI ranks (each rank trains its
  share of the streams; see :class:`Trainer`).

Truncated backpropagation through time over ``N`` carried streams, with the
global gradient norm clipped, follows Graves (2013) and Karpathy's
min-char-rnn.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .. import distributed as dist
from .. import io as _io
from ..clip import clip_grad_norm_
from ..optim import SGD, Adagrad, Adam, AdamW, RMSprop
from . import checkpoint as ckpt
from .data import CorpusError, Streams, Vocab, corpus_from_record
from .model import CharLM, _child_seeds
from .sample import default_prime, evaluate, generate

__all__ = ["Trainer", "TrainConfig", "NonFiniteLossError", "OPTIMIZERS", "build_optimizer",
           "shard_problem"]

#: optimizer name -> (class, default learning rate)
OPTIMIZERS = {"adam": (Adam, 4e-3), "adamw": (AdamW, 4e-3), "rmsprop": (RMSprop, 2e-3),
              "adagrad": (Adagrad, 5e-2), "sgd": (SGD, 1.0)}


class NonFiniteLossError(FloatingPointError):
    """Training produced a nan/inf loss or gradient norm (nothing was updated)."""

    def __init__(self, step, loss, grad_norm, reason=None):
        self.step, self.loss, self.grad_norm = step, loss, grad_norm
        reason = reason or (f"non-finite loss ({loss}) at step {step}" if not math.isfinite(loss)
                            else f"non-finite gradient norm ({grad_norm}) at step {step}")
        super().__init__(reason)


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoints).

    The defaults are those of ``rnncore train``. Measured on a 2-core machine
    with equal compute (one BLAS thread): GRU H=256 and H=192 reach the same
    validation loss (2.02 bits/char after 140 s of CPU) and beat LSTM at
    H=128..256 (whose kernel is slower per step); Adam lr 4e-3 beat 2e-3 by
    0.2 bits/char after 600 steps.
    """

    cell: str = "gru"
    hidden: int = 256
    layers: int = 1
    embed: int = 64
    seq_len: int = 100
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = OPTIMIZERS["adam"][1]
    clip: float = 5.0
    seed: int = 0
    dtype: str = "float32"
    val_fraction: float = 0.05
    #: AWD-LSTM's regularisers and the layer-normalised cell (see CharLM); off by default
    weight_drop: float = 0.0
    variational_dropout: float = 0.0
    layer_norm: bool = False

    #: fields a resumed run must keep (they define the model, the data or the state)
    FIXED = ("cell", "hidden", "layers", "embed", "seq_len", "batch_size", "optimizer", "seed",
             "dtype", "val_fraction", "weight_drop", "variational_dropout", "layer_norm")


def shard_problem(batch_size, size, option="batch_size"):
    """Why ``batch_size`` streams cannot be shared equally by ``size`` ranks, or None.

    ``option`` names the setting in the message (the command line passes
    ``'--batch-size'``).
    """
    if int(batch_size) % int(size) == 0:
        return None
    return (f"{option} {batch_size} is not divisible by the {size} ranks: data-parallel "
            f"training gives every rank an equal share of the streams (use a multiple of "
            f"{size}, or another number of ranks)")


def build_optimizer(name, model, lr):
    """The optimizer ``name`` (a key of :data:`OPTIMIZERS`) over ``model``."""
    try:
        cls, _ = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}") from None
    return cls(model, lr=lr)


def _all_finite(state) -> bool:
    if state is None:
        return True
    arrays = state if isinstance(state, (tuple, list)) else (state,)
    return all(np.isfinite(a).all() for a in arrays)


class Trainer:
    """Truncated-BPTT training of a :class:`CharLM`, with exact resumption.

    Parameters
    ----------
    corpus : Corpus
        The text; its last ``config.val_fraction`` is held out for validation.
    config : TrainConfig
    vocab : Vocab, optional
        Default: the characters of ``corpus.text``.
    model, optimizer : optional
        Default: built from ``config`` (a resumed run passes the loaded ones).
    skip_nonfinite : bool, default False
        Skip a step whose loss or gradient norm is nan/inf (counted in
        ``skipped``) instead of raising :class:`NonFiniteLossError`.
    distributed : bool, default False
        Data-parallel training over the ranks of :mod:`rnncore.distributed`
        (``mpirun -n K``; one rank, i.e. plain single-process training,
        without an MPI launcher). See the notes.

    Attributes
    ----------
    step : int
        Optimizer steps taken (skipped steps included), over all sessions.
    state : the recurrent state carried into the next batch (None at an
        epoch start); distributed, that of this rank's streams only.
    train_loss : list of float
        Mean cross-entropy (nats/char) of every step, nan where skipped
        (distributed: the mean over all ranks, i.e. over the global batch).
    val_history : list of [step, bits per char]
    chars_seen, train_seconds : totals over all sessions (training steps only;
        ``chars_seen`` counts the global batch).
    rank, size : int
        This process's rank and the number of ranks (0 and 1 unless distributed).
    allreducer : rnncore.distributed.GradientAllreducer or None
        Distributed: the gradient all-reduce of the model, once a step ran
        (its ``seconds`` and ``nbytes`` measure the communication).

    Notes
    -----
    Distributed training (``distributed=True``) is synchronous data
    parallelism that reproduces single-process training with the same global
    batch: every rank builds the same corpus, vocabulary and streams (pass
    the same ``corpus`` and ``config`` everywhere), and trains on its
    contiguous share of the ``config.batch_size`` streams, which must divide
    evenly (ValueError otherwise), carrying their recurrent state. Rank 0's
    initial parameters are broadcast on construction. Each step computes the
    mean loss of this rank's share, averages the gradients over the ranks
    (:func:`rnncore.distributed.allreduce_gradients`: the gradient of the
    global mean loss), clips that, and takes the same optimizer step
    everywhere. The logged loss is the all-reduced mean; the ranks agree on
    skipping a nan/inf step and, in :meth:`fit`, on stopping. Evaluation is
    split across the ranks; :meth:`fit` samples on rank 0 only. The
    collectives (:meth:`train_step`, :meth:`evaluate`, :meth:`fit`,
    :meth:`save`, :meth:`extra`, construction) must be called by every rank
    in the same order; :meth:`save` writes on rank 0 only, with the carried
    state of all the streams gathered, so a checkpoint is the same as a
    single-process one and resumes with any number of ranks that divides
    the batch size. To resume, every rank reads the same checkpoint
    (:meth:`from_checkpoint` / :meth:`resume` with ``distributed=True``).
    """

    def __init__(self, corpus, config, vocab=None, model=None, optimizer=None,
                 skip_nonfinite=False, distributed=False):
        self.corpus, self.config = corpus, config
        self.distributed = bool(distributed)
        self.rank, self.size = ((dist.get_rank(), dist.get_size()) if self.distributed
                                else (0, 1))
        problem = shard_problem(config.batch_size, self.size)
        if problem:
            raise ValueError(problem)
        self.vocab = vocab or Vocab.from_text(corpus.text)
        ids = self.vocab.encode(corpus.text)
        n_val = int(len(ids) * config.val_fraction)
        n_val = n_val if n_val >= 2 else 0
        self.train_ids = ids[:len(ids) - n_val]
        self.val_ids = ids[len(ids) - n_val:] if n_val else None
        self.streams = Streams(self.train_ids, config.batch_size, config.seq_len)
        self.model = model or CharLM(len(self.vocab), config.embed, config.hidden, config.layers,
                                     config.cell, dtype=config.dtype, seed=config.seed,
                                     weight_drop=config.weight_drop,
                                     variational_dropout=config.variational_dropout,
                                     layer_norm=config.layer_norm)
        if self.model.vocab_size != len(self.vocab):
            raise ValueError(f"the model has {self.model.vocab_size} characters, the vocabulary "
                             f"{len(self.vocab)}")
        self.optimizer = optimizer or build_optimizer(config.optimizer, self.model, config.lr)
        self.skip_nonfinite = bool(skip_nonfinite)
        self.step = 0
        self.state = None
        self.sample_rng = np.random.default_rng(_child_seeds(config.seed, 4)[3])
        self.train_loss: list = []
        self.val_history: list = []
        self.skipped = 0
        self.chars_seen = 0
        self.train_seconds = 0.0
        self.target_steps = None
        self.corpus_changed = False
        self.allreducer = None
        if self.distributed:
            dist.broadcast_parameters(self.model)  # rank 0's weights everywhere

    @property
    def is_root(self) -> bool:
        """True on the rank that writes files (always, single-process)."""
        return self.rank == 0

    # -- geometry ------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.streams.num_batches

    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    # -- one step --------------------------------------------------------------
    def train_step(self, before_update=None) -> float:
        """One optimizer step on the next batch; returns its loss (nats/char).

        Parameters
        ----------
        before_update : callable, optional
            Called once the loss and gradient norm are known to be finite and
            before the parameters change: the trainer is then exactly in its
            state after the previous step, now validated by a finite loss
            (:meth:`fit` saves its periodic checkpoints there).

        Raises
        ------
        NonFiniteLossError
            When the loss or the gradient norm is not finite (unless
            ``skip_nonfinite``); nothing is updated and ``step`` is unchanged.

        Notes
        -----
        Distributed, a collective: this rank's share of the batch, the loss
        and the gradients all-reduced (mean) before clipping and the update;
        the returned loss is the global mean, the same on every rank.
        """
        t0 = time.perf_counter()
        i = self.step % self.steps_per_epoch
        if i == 0:
            self.state = None  # every stream restarts at its beginning
        x, y = (dist.shard(a, self.rank, self.size) for a in self.streams.batch(i))
        model = self.model
        model.zero_grad()
        with np.errstate(over="ignore", invalid="ignore"):  # non-finite values are checked
            loss, state = model.loss(x, y, self.state)
            if self.distributed:
                # the global mean (equal shares), the same on every rank and nan/inf when
                # any rank's is: the ranks agree on a skip without another collective
                loss = dist.allreduce_mean(loss)
            norm = float("nan")
            if math.isfinite(loss):
                if self.size > 1:  # the gradient of the global mean; clipped after
                    self.allreducer = dist.allreduce_gradients(model)
                clip = self.config.clip
                norm = clip_grad_norm_(model, clip if clip and clip > 0 else float("inf"))
        if not (math.isfinite(loss) and math.isfinite(norm)):
            if not self.skip_nonfinite:
                raise NonFiniteLossError(self.step + 1, loss, norm)
            model.zero_grad()
            if not self.params_finite():
                raise NonFiniteLossError(self.step + 1, loss, norm,
                                         f"parameters are no longer finite at step "
                                         f"{self.step + 1}; skipping cannot recover")
            self.skipped += 1
            finite = _all_finite(state)
            if self.distributed:  # every rank restarts its streams, or none
                finite = dist.all_true(finite)
            self.state = state if finite else None
            loss = float("nan")
        else:
            if before_update is not None:
                t1 = time.perf_counter()
                before_update()
                t0 += time.perf_counter() - t1  # not training time
            self.optimizer.step()
            self.state = state
        self.step += 1
        self.train_loss.append(float(loss))
        self.chars_seen += x.size * self.size
        self.train_seconds += time.perf_counter() - t0
        return loss

    def params_finite(self) -> bool:
        """True when every parameter is finite."""
        return all(np.isfinite(p).all() for p in self.model.params.values())

    def evaluate(self):
        """Validation bits per character (None without a validation split)."""
        if self.val_ids is None:
            return None
        with np.errstate(over="ignore", invalid="ignore"):
            bpc = evaluate(self.model, self.val_ids, self.config.batch_size,
                           self.config.seq_len, self.distributed)
        if self.val_history and self.val_history[-1][0] == self.step:
            self.val_history[-1][1] = bpc
        else:
            self.val_history.append([self.step, bpc])
        return bpc

    def sample(self, length=200, temperature=0.8, prime=None) -> str:
        """A sample from the trainer's own seeded generator (saved in checkpoints)."""
        return generate(self.model, self.vocab, length, temperature,
                        default_prime(self.vocab) if prime is None else prime, self.sample_rng)

    # -- the loop ----------------------------------------------------------------
    def fit(self, total_steps, *, eval_every=0, sample_every=0, save_every=0,
            checkpoint=None, sample_length=200, temperature=0.8, on_event=None,
            should_stop=None) -> str:
        """Train until ``step == total_steps`` or ``should_stop()`` is true.

        Parameters
        ----------
        total_steps : int
            Target step count (a resumed run continues up to it).
        eval_every, sample_every, save_every : int
            Periods in steps (0: never) of validation, samples, and saving
            ``checkpoint`` (a path). A periodic checkpoint of step ``k`` is
            written only once step ``k + 1`` has computed a finite loss with
            its parameters, so a saved checkpoint is never one that diverged.
        on_event : callable, optional
            ``on_event(kind, info)`` with kind ``'step'`` (info: step, loss,
            chars_per_s), ``'eval'`` (step, bpc), ``'sample'`` (step, text)
            or ``'save'`` (step, path).
        should_stop : callable, optional
            Polled before every step (e.g. a signal flag). Distributed, the
            ranks stop together when it is true on any of them.

        Returns
        -------
        str
            ``'done'`` or ``'stopped'``. The caller saves the final state.

        Raises
        ------
        NonFiniteLossError
            See :meth:`train_step`; the model is left as it was before that
            step and nothing is saved.
        """
        emit = on_event or (lambda kind, info: None)
        stop = should_stop or (lambda: False)
        chars0, secs0 = self.chars_seen, self.train_seconds
        save_due = False

        def save():
            self.save(checkpoint)
            emit("save", {"step": self.step, "path": checkpoint})

        while self.step < total_steps:
            if dist.any_true(stop()) if self.distributed else stop():
                return "stopped"
            loss = self.train_step(before_update=save if save_due else None)
            save_due = False
            secs = self.train_seconds - secs0
            emit("step", {"step": self.step, "loss": loss,
                          "chars_per_s": (self.chars_seen - chars0) / secs if secs else 0.0})
            last = self.step == total_steps
            if eval_every and (self.step % eval_every == 0 or last):
                bpc = self.evaluate()
                if bpc is not None:
                    emit("eval", {"step": self.step, "bpc": bpc})
            if sample_every and self.step % sample_every == 0 and not last and self.is_root:
                emit("sample", {"step": self.step,
                                "text": self.sample(sample_length, temperature)})
            save_due = bool(checkpoint and save_every and self.step % save_every == 0)
        return "done"

    # -- checkpoints -------------------------------------------------------------
    def extra(self) -> dict:
        """The ``extra`` block of a checkpoint: everything besides weights and optimizer.

        Distributed, ``carry`` is the state of all the streams, gathered from
        every rank (a collective).
        """
        return ckpt.training_state(self)

    def save(self, path) -> None:
        """Write model, optimizer state and :meth:`extra` to ``path`` (atomically).

        Distributed: call it on every rank; rank 0 alone writes.
        """
        extra = self.extra()
        if self.is_root:
            _io.save(path, self.model, self.optimizer, extra=extra)

    def global_state(self):
        """The carried state of all ``batch_size`` streams (this rank's, single-process).

        Distributed, a collective: every rank's share, gathered in rank order
        along the stream axis.
        """
        if not self.distributed or self.size == 1:
            return self.state
        parts = dist.allgather(self.state)
        if parts[0] is None:  # the ranks agree on None (an epoch start, a reset)
            return None
        if isinstance(parts[0], (tuple, list)):
            return tuple(np.concatenate(p, axis=1) for p in zip(*parts))
        return np.concatenate(parts, axis=1)

    def _local_state(self, state):
        """This rank's streams of a global carried state ``(L, N, H)`` (or a pair)."""
        if state is None or self.size == 1:
            return state
        if isinstance(state, (tuple, list)):
            return tuple(self._local_state(s) for s in state)
        return np.ascontiguousarray(dist.shard(state, self.rank, self.size, axis=1))

    @classmethod
    def from_checkpoint(cls, path, corpus=None, lr=None, clip=None, skip_nonfinite=False,
                        distributed=False):
        """Rebuild a trainer from :meth:`save`'s file, exactly where it stopped.

        Parameters
        ----------
        path : str
        corpus : Corpus, optional
            Default: re-read the sources recorded in the checkpoint.
        lr, clip : float, optional
            New values for the rest of the run.
        skip_nonfinite, distributed : bool
            As for :class:`Trainer`; distributed, every rank reads ``path``
            and keeps its share of the carried state.

        Raises
        ------
        FileNotFoundError, ValueError
            For a missing or unreadable checkpoint, or one not written by a
            Trainer; CorpusError when the text cannot be read or no longer
            fits the vocabulary.
        """
        return cls.resume(ckpt.load_charlm(path, need_training_state=True), corpus, lr, clip,
                          skip_nonfinite, distributed)

    @classmethod
    def resume(cls, loaded, corpus=None, lr=None, clip=None, skip_nonfinite=False,
               distributed=False):
        """:meth:`from_checkpoint` for an already loaded ``(model, optimizer_state, extra)``."""
        model, opt_state, extra = loaded
        config = TrainConfig(**extra["train_config"])
        if lr is not None:
            config.lr = float(lr)
        if clip is not None:
            config.clip = float(clip)
        if corpus is None:
            corpus = corpus_from_record(extra["corpus"])
        vocab = Vocab(extra["vocab"])
        unknown = set(corpus.text) - set(vocab.chars)
        if unknown:
            raise CorpusError(f"the text has characters the checkpoint's vocabulary lacks "
                              f"({''.join(sorted(unknown))[:20]!r}); train a new model on it")
        optimizer = build_optimizer(config.optimizer, model, config.lr)
        optimizer.load_state_dict(opt_state)
        optimizer.lr = config.lr
        self = cls(corpus, config, vocab=vocab, model=model, optimizer=optimizer,
                   skip_nonfinite=skip_nonfinite, distributed=distributed)
        ckpt.restore_training_state(self, extra)
        return self
