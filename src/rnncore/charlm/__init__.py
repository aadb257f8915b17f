"""A character-level language model: data, model, sampling, training and plotting.

The library half of ``rnncore train`` (the command line in :mod:`rnncore.cli`
only parses arguments, shows progress and writes files). One job per module:

- :mod:`.data` -- :class:`Corpus` (the embedded default corpus of the Python
  standard library's own sources, :func:`stdlib_corpus`, or the user's files,
  :func:`read_texts`), :class:`Vocab`, and :class:`Streams` (truncated-BPTT
  batches: ``N`` parallel streams cut into ``T``-step chunks).
- :mod:`.model` -- :class:`CharLM`: ``Embedding(V, E)`` ->
  ``RNN``/``GRU``/``LSTM(E, H, L)`` -> ``Linear(H, V)``.
- :mod:`.sample` -- :func:`generate` (temperature, prime string, seeded) and
  :func:`evaluate` (bits per character).
- :mod:`.train` -- :class:`TrainConfig` and :class:`Trainer` (the step, the
  loop, exact resumption, data parallelism over MPI).
- :mod:`.checkpoint` -- the ``extra`` block a Trainer writes into its
  checkpoints and :func:`load_charlm`.
- :mod:`.plot` -- :func:`plot_history`, the loss curve.

Shape letters: ``N`` streams (batch), ``T`` steps per chunk, ``V`` vocabulary
size, ``E`` embedding size, ``H`` hidden size, ``L`` layers.

Examples
--------
>>> from rnncore.charlm import CharLM, Vocab, generate
>>> vocab = Vocab.from_text("hello world")
>>> model = CharLM(len(vocab), embed_dim=8, hidden_size=16, cell="gru", seed=0)
>>> logits, state = model(vocab.encode("hello")[None, :], train=False)
>>> logits.shape                                  # (N, T, V)
(1, 5, 8)
>>> len(generate(model, vocab, 20, prime="he", seed=0))
22
"""
from .checkpoint import CHECKPOINT_VERSION, load_charlm
from .data import (DEFAULT_MAX_CHARS, DEFAULT_MODULES, Corpus, CorpusError, Streams, Vocab,
                   corpus_from_record, read_texts, stdlib_corpus)
from .model import CELLS, CharLM
from .plot import plot_history
from .sample import default_prime, evaluate, generate
from .train import (OPTIMIZERS, NonFiniteLossError, TrainConfig, Trainer, build_optimizer,
                    shard_problem)

__all__ = [
    "CharLM", "Vocab", "Corpus", "CorpusError", "NonFiniteLossError", "Streams", "TrainConfig",
    "Trainer", "stdlib_corpus", "read_texts", "corpus_from_record", "generate", "default_prime",
    "evaluate", "plot_history", "build_optimizer", "shard_problem", "load_charlm",
    "DEFAULT_MODULES",
    "DEFAULT_MAX_CHARS", "CELLS", "OPTIMIZERS",
]
