"""The char-LM of ``rnncore train``, trained by rnncore and by PyTorch: speed and loss.

Both train the same model (``Embedding(V, E) -> LSTM/GRU/RNN(E, H, L) ->
Linear(H, V)``), from the same initial weights (rnncore's, copied into the
PyTorch module by name), on the same batches (the same corpus, ``N`` streams,
``T``-character chunks, hidden state carried and detached), with the same
Adam and gradient clipping, for the same number of steps. Prints chars/s of
each, their ratio, and the final training loss of each (the two loss curves
should agree closely: same data, same start).

    python bench/charlm_vs_torch.py                    # rnncore train's defaults
    python bench/charlm_vs_torch.py --cell gru --hidden 128 --steps 50

A benchmark, not a test: it asserts nothing.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

import rnncore
from rnncore.charlm import CELLS, TrainConfig, Trainer, stdlib_corpus
from rnncore.cli import DEFAULTS

from _harness.torch_charlm import TorchCharLMTrainer, torch_charlm


def parse():
    d = DEFAULTS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", default=d["cell"], choices=sorted(CELLS))
    p.add_argument("--hidden", type=int, default=d["hidden"])
    p.add_argument("--layers", type=int, default=d["layers"])
    p.add_argument("--embed", type=int, default=d["embed"])
    p.add_argument("--seq-len", type=int, default=d["seq_len"])
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--clip", type=float, default=d["clip"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=3, help="untimed first steps of each")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--rnncore-threads", type=int, default=d["threads"],
                   help=f"rnncore's BLAS threads (default {d['threads']}, as rnncore train)")
    p.add_argument("--max-chars", type=int, default=1_500_000)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def run_rnncore(trainer, steps, warmup, threads):
    from threadpoolctl import threadpool_limits
    losses, t0 = [], None
    with threadpool_limits(threads or None, user_api="blas"):
        for i in range(steps):
            if i == warmup:
                t0 = time.perf_counter()
            losses.append(trainer.train_step())
    return losses, time.perf_counter() - t0


def run_torch(trainer, args):
    import torch
    torch.set_num_threads(args.threads)
    # reads the initial weights: call before rnncore trains
    model = torch_charlm(torch, trainer.model)
    tt = TorchCharLMTrainer(torch, model, trainer.train_ids, args.batch_size, args.seq_len,
                            args.lr, args.clip)
    losses, t0 = [], None
    for i in range(args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        losses.append(tt.train_step())
    return losses, time.perf_counter() - t0


def main():
    args = parse()
    corpus = stdlib_corpus(args.max_chars)
    config = TrainConfig(cell=args.cell, hidden=args.hidden, layers=args.layers,
                         embed=args.embed, seq_len=args.seq_len, batch_size=args.batch_size,
                         optimizer="adam", lr=args.lr, clip=args.clip, seed=args.seed)
    trainer = Trainer(corpus, config)
    import torch
    torch_losses, torch_secs = run_torch(trainer, args)  # reads the initial weights first
    ours, our_secs = run_rnncore(trainer, args.steps, args.warmup, args.rnncore_threads)
    timed_chars = (args.steps - args.warmup) * args.batch_size * args.seq_len
    r_cps, t_cps = timed_chars / our_secs, timed_chars / torch_secs
    last = max(1, min(10, args.steps // 5))

    def bpc(losses):
        return np.mean(losses[-last:]) / math.log(2)

    print(f"char-LM {args.cell.upper()} V={len(trainer.vocab)} E={args.embed} H={args.hidden} "
          f"L={args.layers}, batch {args.batch_size} x {args.seq_len}, Adam lr {args.lr:g}, "
          f"clip {args.clip:g}, {args.steps} steps ({args.warmup} untimed), "
          f"threads: rnncore {args.rnncore_threads}, torch {args.threads}; rnncore "
          f"{rnncore.__version__}, torch {torch.__version__}")
    print(f"{'':10}{'chars/s':>12}{'s/step':>10}{'final train loss':>28}")
    for name, cps, secs, losses in (("rnncore", r_cps, our_secs, ours),
                                    ("pytorch", t_cps, torch_secs, torch_losses)):
        print(f"{name:10}{cps:12,.0f}{secs / (args.steps - args.warmup):10.4f}"
              f"{bpc(losses):14.4f} bits/char (last {last} steps)")
    print(f"rnncore / pytorch speed: {r_cps / t_cps:.2f}x; max |loss difference| over the "
          f"run: {np.max(np.abs(np.array(ours) - np.array(torch_losses))):.2e} nats")


if __name__ == "__main__":
    main()
