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
from rnncore.charlm import CELLS, Streams, TrainConfig, Trainer, stdlib_corpus
from rnncore.cli import DEFAULTS


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
    cls = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[args.cell]

    class TorchCharLM(torch.nn.Module):
        def __init__(self, V):
            super().__init__()
            self.embedding = torch.nn.Embedding(V, args.embed)
            self.rnn = cls(args.embed, args.hidden, args.layers, batch_first=True)
            self.head = torch.nn.Linear(args.hidden, V)

        def forward(self, x, state):
            h, state = self.rnn(self.embedding(x), state)
            return self.head(h), state

    model = TorchCharLM(len(trainer.vocab))
    # the same initial weights: rnncore's parameter names are PyTorch's
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in trainer.model.params.items()})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    streams = Streams(trainer.train_ids, args.batch_size, args.seq_len)
    X = torch.from_numpy(streams.inputs)
    Y = torch.from_numpy(streams.targets)
    state, losses, t0 = None, [], None
    for i in range(args.steps):
        if i == args.warmup:
            t0 = time.perf_counter()
        j = i % len(streams)
        if j == 0:
            state = None
        lo = j * args.seq_len
        x, y = X[:, lo:lo + args.seq_len], Y[:, lo:lo + args.seq_len]
        opt.zero_grad()
        logits, state = model(x, state)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        loss.backward()
        if args.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        losses.append(loss.item())
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
