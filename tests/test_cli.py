"""The ``rnncore`` command line, end to end in subprocesses (``python -m rnncore``).

Small models on a small slice of the default corpus, so the whole file runs in
well under a minute on two cores: training writes its three files and lowers
the loss; ``--resume`` continues the loss sequence exactly; ``sample`` and
``info`` read the checkpoint; bad input exits with code 2 and one line;
SIGINT/SIGTERM save and exit 0; a diverging run exits 3 and keeps the last
good checkpoint; without tqdm and matplotlib it still trains.
"""
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import rnncore.charlm  # noqa: F401  (registers CharLM, so rnncore.io can load it)
from rnncore import io as rio

SMALL = ["--hidden", "32", "--embed", "16", "--seq-len", "32", "--batch-size", "8",
         "--max-chars", "60000", "--lr", "1e-2", "--threads", "1", "--sample-length", "60"]


def rnncore(*args, env=None, timeout=120):
    """Run ``python -m rnncore ARGS``; returns the CompletedProcess (text mode)."""
    return subprocess.run([sys.executable, "-m", "rnncore", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=env)


def history(path):
    return rio.load_checkpoint(path)["extra"]["history"]["train_loss"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """30 steps straight (A); 15 steps then --resume to 30 (B)."""
    root = tmp_path_factory.mktemp("cli")
    a, b = root / "a", root / "b"
    common = [*SMALL, "--eval-every", "10", "--sample-every", "10"]
    ra = rnncore("train", "--steps", 30, "--out", a, *common)
    rb1 = rnncore("train", "--steps", 15, "--out", b, *common)
    rb2 = rnncore("train", "--resume", "--steps", 30, "--out", b, *common)
    return {"a": a, "b": b, "ra": ra, "rb1": rb1, "rb2": rb2}


def test_train_end_to_end(runs):
    r, out = runs["ra"], runs["a"]
    assert r.returncode == 0, r.stderr
    for name in ("checkpoint.npz", "loss.png", "samples.txt"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    samples = (out / "samples.txt").read_text()
    assert "--- step 10, temperature 0.8 ---" in samples and "--- final, step 30" in samples
    ck = rio.load_checkpoint(out / "checkpoint.npz")
    extra = ck["extra"]
    assert extra["step"] == 30 and ck["optimizer_state"]["step"] == 30
    assert type(ck["model"]).__name__ == "CharLM" and ck["model"].hidden_size == 32
    losses = extra["history"]["train_loss"]
    assert len(losses) == 30 and np.mean(losses[-5:]) < losses[0] - 0.5   # it learns
    assert [s for s, _ in extra["history"]["val"]] == [10, 20, 30]
    assert "validation" in r.stdout and "bits/char" in r.stdout
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith("done: step 30/30") and "chars/s" in summary and "wall" in summary
    assert "Traceback" not in r.stderr


def test_resume_continues_the_same_loss_sequence(runs):
    for key in ("rb1", "rb2"):
        assert runs[key].returncode == 0, runs[key].stderr
    assert "resumed from" in runs["rb2"].stdout
    a = history(runs["a"] / "checkpoint.npz")
    b = history(runs["b"] / "checkpoint.npz")
    assert len(b) == 30
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    assert rio.load_checkpoint(runs["b"] / "checkpoint.npz")["optimizer_state"]["step"] == 30
    # a resumed run cannot change what defines the model or the data
    r = rnncore("train", "--resume", "--steps", 31, "--out", runs["b"], "--hidden", 64)
    assert r.returncode == 2 and "--hidden 32" in r.stderr and "Traceback" not in r.stderr
    # a new run does not overwrite a checkpoint by accident
    r = rnncore("train", "--steps", 1, "--out", runs["b"], *SMALL)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_sample_and_info(runs):
    ck = runs["a"] / "checkpoint.npz"
    r1 = rnncore("sample", ck, "--length", 80, "--temperature", 0.8, "--prime", "def ",
                 "--seed", 0)
    r2 = rnncore("sample", ck, "--length", 80, "--prime", "def ", "--seed", 0)
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout == r2.stdout and r1.stdout.startswith("def ")
    assert len(r1.stdout) == 4 + 80 + 1
    r = rnncore("info", ck)
    assert r.returncode == 0, r.stderr
    model = rio.load(ck)
    assert f"{model.num_parameters():,}" in r.stdout
    for key, value in (("cell", model.cell), ("hidden_size", "32"), ("step", "30")):
        assert re.search(rf"^{key}\s+{value}$", r.stdout, re.M), key
    assert "CharLM" in r.stdout and "vocabulary" in r.stdout
    r = rnncore("sample", ck, "--prime", "\u00e9\u00e9")
    assert r.returncode == 2 and "--prime" in r.stderr


@pytest.mark.parametrize("case", ["missing text", "empty text", "missing checkpoint",
                                  "corrupted checkpoint", "resume without checkpoint"])
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    if case == "missing text":
        r = rnncore("train", "--text", tmp_path / "nope.txt", "--out", tmp_path / "o")
        expected = "text file not found"
    elif case == "empty text":
        (tmp_path / "empty.txt").write_text("")
        r = rnncore("train", "--text", tmp_path / "empty.txt", "--out", tmp_path / "o")
        expected = "is empty"
    elif case == "missing checkpoint":
        r = rnncore("sample", tmp_path / "nope.npz")
        expected = "checkpoint not found"
    elif case == "corrupted checkpoint":
        path = tmp_path / "bad.npz"
        np.savez(path, a=np.arange(1000))
        path.write_bytes(path.read_bytes()[:300])
        r = rnncore("info", path)
        expected = "cannot load checkpoint"
    else:
        r = rnncore("train", "--resume", "--out", tmp_path / "o")
        expected = "no checkpoint to resume"
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnncore: error: ") and expected in lines[0]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_saves_and_exits_0(tmp_path, signum):
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "rnncore", "train", "--steps", "100000",
                          "--out", str(out), "--eval-every", "0", "--sample-every", "0", *SMALL],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("  steps "):    # the last header line: the loop starts
            line = p.stdout.readline()
            assert line, p.stderr.read()
        time.sleep(1.0)
        p.send_signal(signum)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, stderr
    assert f"{signal.Signals(signum).name} received" in stderr
    assert "interrupted: step" in stdout
    ck = rio.load_checkpoint(out / "checkpoint.npz")
    step = ck["extra"]["step"]
    assert 0 < step < 100000 and ck["optimizer_state"]["step"] == step
    assert len(ck["extra"]["history"]["train_loss"]) == step
    assert (out / "loss.png").exists()


def test_nonfinite_loss_exits_3_and_keeps_the_checkpoint(runs, tmp_path):
    out = tmp_path / "o"
    shutil.copytree(runs["a"], out)
    before = sha(out / "checkpoint.npz")
    # Adam with lr 1e38 moves every weight by ~1e38: the next forward overflows to nan.
    # --eval-every 1 asks for a checkpoint after every step: none may be written.
    r = rnncore("train", "--resume", "--steps", 40, "--out", out, "--lr", 1e38,
                "--eval-every", 1, "--threads", 1)
    assert r.returncode == 3, r.stderr
    assert "non-finite loss" in r.stderr and "(step 30) was kept" in r.stderr
    assert "Traceback" not in r.stderr
    assert sha(out / "checkpoint.npz") == before
    # --skip-nonfinite skips the nan steps, but a diverged model is still not saved
    r = rnncore("train", "--resume", "--steps", 40, "--out", out, "--lr", 1e38,
                "--threads", 1, "--skip-nonfinite")
    assert r.returncode == 3 and "diverged at step 40" in r.stderr, r.stderr
    assert sha(out / "checkpoint.npz") == before


def env_without(tmp_path, *modules, base=None):
    """A copy of ``base`` (default os.environ) in which importing ``modules`` fails."""
    base = dict(os.environ if base is None else base)
    blocker = tmp_path / "block"
    blocker.mkdir(exist_ok=True)
    for mod in modules:
        (blocker / f"{mod}.py").write_text(f"raise ImportError('{mod} blocked by the test')\n")
    base["PYTHONPATH"] = os.pathsep.join(
        [str(blocker)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    return base


def test_without_tqdm_and_matplotlib(tmp_path):
    env = env_without(tmp_path, "tqdm", "matplotlib")
    out = tmp_path / "o"
    r = rnncore("train", "--steps", 5, "--out", out, *SMALL, env=env)
    assert r.returncode == 0, r.stderr
    assert "step 5/5" in r.stderr and "tqdm is not installed" in r.stderr
    assert "loss.png not written" in r.stderr
    assert (out / "checkpoint.npz").exists() and not (out / "loss.png").exists()


def test_version_and_help():
    r = rnncore("--version")
    assert r.returncode == 0 and r.stdout.startswith("rnncore ")
    r = rnncore("train", "--help")
    assert r.returncode == 0 and "--skip-nonfinite" in r.stdout and "--resume" in r.stdout
    r = rnncore("train", "--steps", 0)
    assert r.returncode == 2 and "expected an integer >= 1" in r.stderr


def test_no_command_prints_the_help():
    r = rnncore()
    assert r.returncode == 0 and r.stdout.startswith("usage: rnncore")
    assert "train" in r.stdout and "sample" in r.stdout and "info" in r.stdout


def test_progress_shows_the_loss_the_summary_reports(tmp_path):
    # plain progress lines (no tqdm): the last one is printed at the last step
    env = env_without(tmp_path, "tqdm")
    r = rnncore("train", "--steps", 12, "--out", tmp_path / "o", *SMALL, env=env)
    assert r.returncode == 0, r.stderr
    bar = re.findall(r"step 12/12 \| loss ([0-9.]+) bits/char", r.stderr)
    summary = re.search(r"train ([0-9.]+) bits/char \(last 12 steps\)", r.stdout)
    assert bar and summary and bar[-1] == summary.group(1)
    losses = np.asarray(history(tmp_path / "o" / "checkpoint.npz"))
    assert abs(float(bar[-1]) - losses.mean() / np.log(2)) < 6e-4     # the mean, not the last
    assert abs(losses[-1] - losses.mean()) / np.log(2) > 1e-3          # (which differ here)


def test_loss_plot_range_follows_the_later_steps():
    from rnncore.charlm.plot import y_range
    bits = np.concatenate([[7.4, 6.0, 4.5], np.linspace(3.0, 1.6, 197)])
    lo, hi = y_range(bits, [2.4, 1.9, 1.7])
    assert 1.4 < lo < 1.6 and 2.9 < hi < 3.3        # the first steps run off the top
    assert y_range(bits[:10]) is None                # short runs: matplotlib's own range
    lo, hi = y_range(bits, [5.0])
    assert hi > 5.0                                  # validation points stay visible


# ------------------------------------------------- AWD-LSTM regularisation flags
REG = ["--cell", "lstm", "--layers", "2", "--weight-drop", "0.3", "--variational-dropout",
       "0.2", "--eval-every", "0", "--sample-every", "0"]


def test_regularisation_flags_train_resume_exactly_and_rebuild(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    ra = rnncore("train", "--steps", 8, "--out", a, *SMALL, *REG)
    rb1 = rnncore("train", "--steps", 4, "--out", b, *SMALL, *REG)
    rb2 = rnncore("train", "--resume", "--steps", 8, "--out", b, *SMALL)
    for r in (ra, rb1, rb2):
        assert r.returncode == 0, r.stderr
    ck = rio.load_checkpoint(a / "checkpoint.npz")
    model, cfg = ck["model"], ck["extra"]["train_config"]
    assert model.rnn.weight_drop == 0.3 and model.rnn.variational_dropout == (0.2,) * 3
    assert cfg["weight_drop"] == 0.3 and cfg["variational_dropout"] == 0.2
    assert cfg["layer_norm"] is False
    # the masks continue where the first run stopped: the same losses as one run
    np.testing.assert_allclose(history(b / "checkpoint.npz"), history(a / "checkpoint.npz"),
                               rtol=0, atol=1e-6)
    # without the masks (or with other ones) the losses differ
    rc = rnncore("train", "--steps", 8, "--out", tmp_path / "c", *SMALL, *REG[:4],
                 "--eval-every", "0", "--sample-every", "0")
    assert rc.returncode == 0, rc.stderr
    assert np.abs(np.subtract(history(tmp_path / "c" / "checkpoint.npz"),
                              history(a / "checkpoint.npz"))[1:]).max() > 1e-4
    r = rnncore("sample", a, "--length", 20, "--seed", 0)
    assert r.returncode == 0 and len(r.stdout) > 20, r.stderr
    r = rnncore("info", a / "checkpoint.npz")
    assert re.search(r"^weight_drop\s+0.3$", r.stdout, re.M), r.stdout
    r = rnncore("train", "--resume", "--steps", 9, "--out", b, "--weight-drop", "0.5")
    assert r.returncode == 2 and "--weight-drop 0.3" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, expected", [
    (["--weight-drop", "1"], "--weight-drop: expected a number in [0, 1)"),
    (["--weight-drop", "-0.1"], "--weight-drop: expected a number in [0, 1)"),
    (["--variational-dropout", "nan"], "--variational-dropout: expected a number in [0, 1)"),
    (["--variational-dropout", "x"], "--variational-dropout: expected a number in [0, 1)"),
    (["--layer-norm", "--cell", "rnn"], "--layer-norm needs --cell gru or --cell lstm"),
], ids=["wd-1", "wd-negative", "vd-nan", "vd-text", "layer-norm-rnn"])
def test_bad_regularisation_flags_exit_2_with_one_line(tmp_path, args, expected):
    r = rnncore("train", "--steps", 1, "--out", tmp_path / "o", *SMALL, *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and expected in lines[0], r.stderr
    assert not (tmp_path / "o" / "checkpoint.npz").exists()


def test_layer_norm_flag_builds_a_layer_normalised_model(tmp_path):
    """Needs the models' ``layer_norm=`` option (the layernorm branch)."""
    out = tmp_path / "o"
    r = rnncore("train", "--steps", 2, "--out", out, *SMALL, "--cell", "lstm", "--layer-norm",
                "--eval-every", "0", "--sample-every", "0")
    assert r.returncode == 0, r.stderr
    ck = rio.load_checkpoint(out / "checkpoint.npz")
    assert ck["extra"]["train_config"]["layer_norm"] is True
    assert ck["model"].rnn.layer_norm is True and ck["model"].get_config()["layer_norm"] is True
    r = rnncore("sample", out, "--length", 10, "--seed", 0)
    assert r.returncode == 0, r.stderr
