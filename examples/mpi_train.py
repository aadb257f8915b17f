"""Data-parallel training over MPI with rnncore.distributed, and a scaling benchmark.

Train (a synthetic many-to-one regression: LSTM -> last step -> Linear, MSE)::

    mpirun -n 2 python examples/mpi_train.py                 # 2 ranks
    python examples/mpi_train.py                             # same script, 1 process

(as root in a container add ``--allow-run-as-root``; on a machine with fewer
cores than ranks add ``--oversubscribe``; pin BLAS with ``OMP_NUM_THREADS=1``.)

Benchmark (throughput in samples/s and the all-reduce share of a step)::

    OMP_NUM_THREADS=1 python examples/mpi_train.py --bench
    OMP_NUM_THREADS=1 mpirun -n 2 python examples/mpi_train.py --bench

``--bench`` keeps the *global* batch fixed (strong scaling: each rank takes
``batch / size`` samples); ``--weak`` keeps the per-rank batch fixed instead.
Rank 0 alone prints, and writes the checkpoint (``--save``).
"""
import argparse
import json
import math
import sys
import time

import numpy as np

from rnncore import LSTM, clip_grad_norm_
from rnncore import distributed as dist
from rnncore.losses import mse_loss
from rnncore.nn import Linear
from rnncore.optim import Adam


class Regressor:
    """LSTM (batch-first) -> last step -> Linear; explicit backward."""

    def __init__(self, D, H, O, dtype, seed):
        self.rnn = LSTM(D, H, batch_first=True, dtype=dtype, seed=seed)
        self.head = Linear(H, O, dtype=dtype, seed=seed + 1)
        # one params/grads view over both children (what allreduce_gradients and Adam use)
        self.params, self.grads = {}, {}
        for prefix, child in (("rnn", self.rnn), ("head", self.head)):
            for k in child.params:
                self.params[f"{prefix}.{k}"] = child.params[k]
                self.grads[f"{prefix}.{k}"] = child.grads[k]

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def loss_and_backward(self, x, y):
        out, _ = self.rnn(x, train=True)
        pred = self.head.forward(out[:, -1, :], train=True)
        loss, dpred = mse_loss(pred, y)                 # mean over this rank's shard
        dout = np.zeros(out.shape, dtype=out.dtype)
        dout[:, -1, :] = self.head.backward(dpred)
        self.rnn.backward(dout)
        return loss


def make_batch(rng, N, T, D, O, dtype):
    x = rng.standard_normal((N, T, D)).astype(dtype)
    y = np.stack([x[:, :, :O].mean(axis=1), x[:, -1, :O]], axis=0).sum(axis=0)
    return x, y.astype(dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="global batch (all ranks together)")
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--save", default=None, help="rank 0 writes the final weights here (.npz)")
    ap.add_argument("--bench", action="store_true", help="time steps; print one JSON line")
    ap.add_argument("--weak", action="store_true", help="bench: --batch is per rank")
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)

    rank, size = dist.init()
    dtype = np.float64 if args.float64 else np.float32
    D, H, O, T = args.input, args.hidden, 2, args.seq_len
    global_batch = args.batch * size if args.weak else args.batch
    if global_batch % size:
        sys.exit(f"--batch {global_batch} must be divisible by the {size} ranks")

    model = Regressor(D, H, O, dtype, seed=0)
    dist.broadcast_parameters(model)       # identical start (needed if seeds differed)
    opt = Adam(model, lr=args.lr)
    data_rng = np.random.default_rng(1234)  # same global batches on every rank

    steps = args.steps if not args.bench else args.steps + args.warmup
    t_start = None
    reducer = None
    for step in range(steps):
        if args.bench and step == args.warmup:
            dist.barrier()
            t_start = time.perf_counter()
            if reducer is not None:
                reducer.seconds, reducer.calls = 0.0, 0
        x, y = make_batch(data_rng, global_batch, T, D, O, dtype)
        x, y = dist.shard(x, rank, size), dist.shard(y, rank, size)
        model.zero_grad()
        loss = model.loss_and_backward(x, y)
        reducer = dist.allreduce_gradients(model)       # average over ranks...
        if not dist.all_true(math.isfinite(loss)):      # ...skip together if any diverged
            continue
        clip_grad_norm_(model.grads, args.clip)         # ...then clip the averaged gradient
        opt.step()
        if not args.bench and (step % 50 == 0 or step == steps - 1):
            mean_loss = dist.allreduce_mean(loss)
            if dist.is_root():
                print(f"step {step:4d}  loss {mean_loss:.4f}  ({size} rank(s))", flush=True)

    if args.bench:
        dist.barrier()
        elapsed = time.perf_counter() - t_start
        ar = reducer.seconds if size > 1 else 0.0
        # slowest rank's all-reduce time (includes waiting for the other ranks)
        if dist.get_comm() is not None:
            ar = dist.get_comm().allreduce(ar, op=__import__("mpi4py").MPI.MAX)
        # the all-reduce alone, ranks in step (barrier first: no waiting for a slower
        # rank's compute); median of 50 calls, robust to a noisy shared machine
        pure = 0.0
        if size > 1:
            times = []
            for _ in range(50):
                dist.barrier()
                t0 = time.perf_counter()
                dist.allreduce_gradients(model)
                times.append(time.perf_counter() - t0)
            pure = float(np.median(times))
        nparams = sum(p.size for p in model.params.values())
        result = {"ranks": size, "global_batch": global_batch, "T": T, "D": D, "H": H,
                  "dtype": np.dtype(dtype).name, "params": int(nparams),
                  "grad_bytes": int(nparams * np.dtype(dtype).itemsize),
                  "steps": args.steps, "seconds": round(elapsed, 4),
                  "step_ms": round(1e3 * elapsed / args.steps, 3),
                  "samples_per_s": round(global_batch * args.steps / elapsed, 1),
                  "allreduce_ms": round(1e3 * ar / args.steps, 4),
                  "allreduce_share": round(ar / elapsed, 4),
                  "allreduce_alone_ms": round(1e3 * pure, 4)}
        if dist.is_root():
            print(json.dumps(result), flush=True)
    if args.save and dist.is_root():                     # rank 0 alone writes files
        np.savez(args.save, **model.params)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
