"""``rnncore train --distributed`` under ``mpirun -n 2`` equals single-process training.

The key test trains a small float64 LSTM char-LM twice with the same options
and seed: ``mpirun -n 2 python -m rnncore train --distributed`` (each rank
trains 2 of the 4 streams; gradients all-reduced, clipped after) and plain
``python -m rnncore train``; the two checkpoints agree to 1e-10 in every
parameter, the optimizer state, the loss history, the validation history and
the carried state of all four streams (gathered from both ranks). Also: rank
0 alone prints and writes (nothing duplicated); a run started as one rank
(``--distributed`` without mpirun) resumes under ``mpirun -n 2`` to the same
result; the ranks agree on setup errors (``--batch-size`` not divisible: one
message, exit 2), on stopping after a signal that only one rank or mpirun
got (save, exit 0) and on a nan loss on one rank (exit 3, or skip the step
together), and an exception on one rank aborts the job instead of hanging
it. Skipped when mpi4py or mpirun is missing (except the checks of the
launcher environment, which need neither).
"""
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from test_cli import env_without, rnncore
from test_distributed import mpi_env, mpirun_command, require_mpi

from rnncore.charlm import TrainConfig, Trainer, load_charlm, stdlib_corpus
from rnncore.charlm.checkpoint import _decode_state
from rnncore.clip import clip_grad_norm_

STEPS, CLIP, MAX_CHARS = 12, 0.05, 20000
MODEL = dict(cell="lstm", hidden=16, embed=8, layers=2, seq_len=8, batch_size=4,
             dtype="float64", seed=3)
ARGS = ["--max-chars", MAX_CHARS, "--clip", CLIP, "--threads", 1, "--eval-every", 5,
        "--sample-every", 5, "--sample-length", 20,
        *[a for k, v in MODEL.items() for a in ("--" + k.replace("_", "-"), v)]]
ATOL = 1e-10


def mpi_rnncore(n, *args, env=None, timeout=120):
    """``mpirun -n N python -m rnncore ARGS`` (root- and few-core-proof)."""
    cmd = mpirun_command(n, sys.executable, "-m", "rnncore", *map(str, args))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or mpi_env())


def assert_ok(r):
    assert r.returncode == 0, f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"


def assert_same_training_state(path_a, path_b, resumed=False):
    """Two CharLM checkpoints hold the same weights, optimizer and training state.

    ``resumed``: ``path_b`` was stopped and resumed, and so also drew a final
    sample and evaluated at the stop (its sampling generator's state and
    extra validation entries are not compared).
    """
    model_a, opt_a, extra_a = load_charlm(path_a, need_training_state=True)
    model_b, opt_b, extra_b = load_charlm(path_b, need_training_state=True)
    assert list(model_a.params) == list(model_b.params)
    for k, p in model_a.params.items():
        np.testing.assert_allclose(model_b.params[k], p, rtol=0, atol=ATOL, err_msg=k)
    assert sorted(opt_a) == sorted(opt_b)
    for k, v in opt_a.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_allclose(opt_b[k], v, rtol=0, atol=ATOL, err_msg=k)
        else:
            assert opt_b[k] == v, k
    for k in ("step", "vocab", "train_config", "corpus", "skipped", "chars_seen",
              "target_steps") + (() if resumed else ("sample_rng",)):
        assert extra_b[k] == extra_a[k], k
    hist_a, hist_b = extra_a["history"], extra_b["history"]
    np.testing.assert_allclose(hist_b["train_loss"], hist_a["train_loss"], rtol=0, atol=ATOL)
    val_b = [v for v in hist_b["val"] if v[0] in {s for s, _ in hist_a["val"]}]
    np.testing.assert_allclose(val_b, hist_a["val"], rtol=0, atol=ATOL)
    carry_a, carry_b = _decode_state(extra_a["carry"]), _decode_state(extra_b["carry"])
    assert len(carry_a) == len(carry_b) == 2  # LSTM: (h, c) of all the streams
    for a, b in zip(carry_a, carry_b):
        assert a.shape == (MODEL["layers"], MODEL["batch_size"], MODEL["hidden"])
        np.testing.assert_allclose(b, a, rtol=0, atol=ATOL)
    return model_a, extra_a


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process; two ranks; one rank for half the steps then two ranks to the end."""
    require_mpi()
    root = tmp_path_factory.mktemp("cli_distributed")
    env = mpi_env()
    quiet_env = env_without(root, "tqdm", base=env)  # plain progress lines: countable
    res = {"root": root}
    res["single"] = rnncore("train", "--steps", STEPS, "--out", root / "single", *ARGS, env=env)
    res["two"] = mpi_rnncore(2, "train", "--distributed", "--steps", STEPS, "--out",
                             root / "two", *ARGS, env=quiet_env)
    res["half"] = rnncore("train", "--distributed", "--steps", STEPS // 2, "--out",
                          root / "resumed", *ARGS, env=env)
    res["resumed"] = mpi_rnncore(2, "train", "--distributed", "--resume", "--steps", STEPS,
                                 "--out", root / "resumed", *ARGS)
    return res


def test_two_ranks_train_like_one_process(runs):
    assert_ok(runs["single"])
    assert_ok(runs["two"])
    root = runs["root"]
    model, extra = assert_same_training_state(root / "single" / "checkpoint.npz",
                                              root / "two" / "checkpoint.npz")
    assert extra["step"] == STEPS and [s for s, _ in extra["history"]["val"]] == [5, 10, 12]
    # the same weights give the same samples from the same (rank 0's) generator
    samples = (root / "two" / "samples.txt").read_text()
    assert samples == (root / "single" / "samples.txt").read_text()
    assert samples.count("--- step 5,") == 1 and samples.count("--- final, step 12") == 1
    assert (root / "two" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # the comparison is not vacuous: the gradient norm exceeds --clip, so the
    # all-reduced gradient is clipped on both ranks (by the same factor)
    trainer = Trainer(stdlib_corpus(MAX_CHARS), TrainConfig(**MODEL))
    x, y = trainer.streams.batch(0)
    trainer.model.loss(x, y)
    assert clip_grad_norm_(trainer.model, float("inf")) > 2 * CLIP


def test_only_rank_0_prints(runs):
    r = runs["two"]
    assert r.stdout.count("rnncore 0.1.0 train:") == 1
    assert "data-parallel: 2 rank(s) x 2 streams" in r.stdout
    assert r.stdout.count("step 10: validation") == 1
    assert r.stdout.count("--- sample at step 5") == 1
    assert r.stdout.count("done: step 12/12") == 1
    assert r.stderr.count("tqdm is not installed") == 1
    assert r.stderr.count(f"step {STEPS}/{STEPS} |") == 1  # the final progress line
    ar = [line for line in r.stdout.splitlines() if line.startswith("all-reduce:")]
    nparams = load_charlm(runs["root"] / "two" / "checkpoint.npz")[0].num_parameters()
    assert len(ar) == 1 and f"{nparams * 8 / 1024:.0f} KB per step" in ar[0], ar
    assert "ms/step" in ar[0] and "% of step" in ar[0]
    assert "Traceback" not in r.stderr


def test_one_rank_run_resumes_on_two_ranks(runs):
    half = runs["half"]
    assert_ok(half)
    assert "--distributed with one rank" in half.stderr   # no mpirun: a plain run, said so
    assert "data-parallel: 1 rank(s) x 4 streams" in half.stdout
    assert "all-reduce:" not in half.stdout
    assert_ok(runs["resumed"])
    assert "resumed from" in runs["resumed"].stdout
    # every rank read the step-6 checkpoint and took its streams' share of the carried state
    root = runs["root"]
    assert_same_training_state(root / "single" / "checkpoint.npz",
                               root / "resumed" / "checkpoint.npz", resumed=True)


def test_batch_size_not_divisible_by_ranks(tmp_path):
    require_mpi()
    out = tmp_path / "o"
    r = mpi_rnncore(2, "train", "--distributed", "--steps", 2, "--out", out,
                    *ARGS, "--batch-size", 3)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("rnncore: error:")]
    assert len(errors) == 1, r.stderr                 # rank 0 alone reports it
    assert "--batch-size 3 is not divisible by the 2 ranks" in errors[0]
    assert "Traceback" not in r.stderr and not out.exists()


def _rank_pid(tag, rank):
    """The pid of the process of ``rank`` of the job whose environment holds ``tag``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if tag.encode() in env and f"OMPI_COMM_WORLD_RANK={rank}".encode() in env:
            return int(pid)
    return None


@pytest.mark.parametrize("target", ["SIGTERM to rank 1", "SIGUSR1 to mpirun"])
def test_a_signal_stops_every_rank_with_a_save(tmp_path, target):
    require_mpi()
    if not os.path.isdir("/proc") or "open mpi" not in subprocess.run(
            [mpirun_command(1)[0], "--version"], capture_output=True, text=True).stdout.lower():
        pytest.skip("needs Linux /proc and Open MPI (its rank environment and SIGUSR1 forwarding)")
    tag = f"RNNCORE_TEST_JOB={uuid.uuid4().hex}"
    env = dict(mpi_env(), RNNCORE_TEST_JOB=tag.split("=", 1)[1])
    out = tmp_path / "o"
    cmd = mpirun_command(2, sys.executable, "-m", "rnncore", "train", "--distributed",
                         "--steps", "100000", "--out", str(out), "--eval-every", "0",
                         "--sample-every", "0", *map(str, ARGS[:4]))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        while not line.startswith("  steps "):    # rank 0's last header line: the loop starts
            line = p.stdout.readline()
            assert line, p.stderr.read()
        time.sleep(0.3)
        if target == "SIGUSR1 to mpirun":          # forwarded to every rank
            p.send_signal(signal.SIGUSR1)
            expected = "SIGUSR1 received"
        else:                                      # rank 0 learns it from rank 1
            pid = _rank_pid(tag, 1)
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            expected = "a stop signal (on another rank) received"
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 0, stderr
    assert expected in stderr and "interrupted: step" in stdout
    _, opt_state, extra = load_charlm(out / "checkpoint.npz", need_training_state=True)
    assert 0 < extra["step"] < 100000 and opt_state["step"] == extra["step"]
    assert len(extra["history"]["train_loss"]) == extra["step"]


FAULTY_RANK_1 = """\
import os, sys
from rnncore import charlm, cli
fault = os.environ["RNNCORE_TEST_FAULT"]
train_step, loss = charlm.Trainer.train_step, charlm.CharLM.loss
def faulty_step(self, *args, **kwargs):
    if self.rank == 1 and self.step == 2:
        if fault == "error":
            raise RuntimeError("injected failure on rank 1")
        self.model.loss = lambda *a, **k: (float("nan"), loss(self.model, *a, **k)[1])
    elif self.rank == 1:
        self.model.__dict__.pop("loss", None)
    return train_step(self, *args, **kwargs)
charlm.Trainer.train_step = faulty_step
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fault", ["error", "nan loss", "nan loss, skipped"])
def test_a_fault_on_one_rank_ends_every_rank(tmp_path, fault):
    """Rank 1 alone raises, or has a nan loss in step 3: no rank is left waiting."""
    require_mpi()
    script = tmp_path / "faulty_rank_1.py"
    script.write_text(FAULTY_RANK_1)
    out = tmp_path / "o"
    cmd = mpirun_command(2, sys.executable, str(script), "train", "--distributed", "--steps",
                         "6", "--out", str(out), *map(str, ARGS))
    if fault == "nan loss, skipped":
        cmd.append("--skip-nonfinite")
    env = dict(mpi_env(), RNNCORE_TEST_FAULT=fault.split(",")[0])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    if fault == "error":       # MPI_Abort of the job (rank 0 would wait in the all-reduce)
        assert r.returncode != 0
        assert "injected failure on rank 1" in r.stderr and "Traceback" in r.stderr
    elif fault == "nan loss":  # the all-reduced loss is nan on both ranks: both stop
        assert r.returncode == 3, r.stderr
        errors = [line for line in r.stderr.splitlines() if line.startswith("rnncore: error:")]
        assert len(errors) == 1 and "non-finite loss (nan) at step 3" in errors[0]
        assert "Traceback" not in r.stderr
    else:                      # both ranks skip step 3 and go on
        assert_ok(r)
        _, opt_state, extra = load_charlm(out / "checkpoint.npz", need_training_state=True)
        losses = extra["history"]["train_loss"]
        assert extra["skipped"] == 1 and np.isnan(losses[2]) and np.isfinite(losses[3:]).all()
        assert extra["step"] == 6 and opt_state["step"] == 5


@pytest.mark.parametrize("case", ["without --distributed", "without mpi4py"])
def test_launched_by_mpirun_needs_distributed_and_mpi4py(tmp_path, case):
    # the launcher's environment alone (no MPI is started): every rank would train alone
    env = dict(os.environ, OMPI_COMM_WORLD_SIZE="2", OMPI_COMM_WORLD_RANK="0")
    if case == "without mpi4py":
        env = env_without(tmp_path, "mpi4py", base=env)
        args, expected = ["--distributed"], "mpi4py is not installed"
    else:
        args, expected = [], "add --distributed"
    r = rnncore("train", *args, "--steps", 1, "--out", tmp_path / "o", *ARGS, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnncore: error: ") and expected in lines[0]
    assert not (tmp_path / "o").exists()


def test_two_ranks_with_weight_drop_train_like_one_process(tmp_path):
    """Every rank draws the same weight-drop masks from the model's seeded generator."""
    require_mpi()
    args = [*ARGS, "--weight-drop", 0.4]
    assert_ok(rnncore("train", "--steps", 6, "--out", tmp_path / "single", *args,
                      env=mpi_env()))
    assert_ok(mpi_rnncore(2, "train", "--distributed", "--steps", 6, "--out", tmp_path / "two",
                          *args))
    assert_same_training_state(tmp_path / "single" / "checkpoint.npz",
                               tmp_path / "two" / "checkpoint.npz")
