"""No data lost: checkpoints survive crashes, bad disks and hostile files.

* A process saving in a loop is SIGKILLed at random moments (many of them in
  the middle of a write): the checkpoint on disk always loads, and is always
  one complete save (its parameters match the step recorded with them).
* Disk failures injected with monkeypatch at every stage of a save (partial
  write + ENOSPC, fsync EIO, chmod, os.replace EXDEV, a KeyboardInterrupt):
  ``save`` raises, the previous checkpoint still loads bit-identically and no
  temporary file is left behind.
* Truncated (at every stride of offsets), bit-flipped, foreign, empty,
  single-``.npy``, pickle and directory "checkpoints" raise ValueError (or
  FileNotFoundError / IsADirectoryError-as-ValueError) naming the path; a
  corruption is never loaded silently as a different model.
* Loading never executes code: pickle payloads that would create a file, in
  any entry or as the whole file, are refused and the file is not created.
* The CLI: SIGINT/SIGTERM during ``rnncore train`` (saving every step) exit 0
  with a loadable checkpoint; SIGKILL leaves a loadable, self-consistent one;
  ``--resume`` continues with the exact optimizer state (bitwise-identical
  parameters and optimizer buffers to an uninterrupted run).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import rnncore
from rnncore import io as rio
from rnncore import optim

from _reliability import LONG, count


def _model_and_opt(seed=0, H=16):
    m = rnncore.LSTM(8, H, num_layers=2, seed=seed, dtype=np.float64)
    opt = optim.Adam(m, lr=1e-2)
    x = np.random.default_rng(seed).standard_normal((4, 3, 8))
    out, _ = m(x)
    m.backward(np.ones_like(out))
    opt.step()
    return m, opt


def _same_model(a, b):
    return list(a.params) == list(b.params) and all(
        np.array_equal(a.params[k], b.params[k]) for k in a.params)


def _tmp_files(d):
    return [p for p in os.listdir(d) if p.endswith(".tmp")]


# ------------------------------------------------------------------ SIGKILL mid-write
WRITER = r"""
import sys, numpy as np, rnncore
from rnncore import io as rio
path = sys.argv[1]
m = rnncore.LSTM(64, 256, num_layers=2, seed=0, dtype=np.float64)   # ~4.5 MB of parameters
print("ready", flush=True)
step = 0
while True:
    step += 1
    for p in m.params.values():
        p[...] = step            # every parameter holds the step number
    rio.save(path, m, extra={"step": step})
    if step == 1:
        print("saved", flush=True)
"""


@contextlib.contextmanager
def _reaped(p):
    """Never leave the child ``p`` running, whatever happens in the block."""
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()


def _signal(p, sig, delay, timeout=30):
    """After ``delay`` seconds send ``sig`` to ``p``; wait for it; its (stdout, stderr)."""
    time.sleep(delay)
    p.send_signal(sig)
    return p.communicate(timeout=timeout)


def test_sigkill_during_save_loop_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "ck.npz"
    rng = np.random.default_rng(0)
    kills = 12 if not LONG else 60
    mid_write = 0
    last_step = 0
    for k in range(kills):
        p = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                             text=True, env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        with _reaped(p):
            assert p.stdout.readline().strip() == "ready"
            if k == 0:
                assert p.stdout.readline().strip() == "saved"
            _signal(p, signal.SIGKILL, float(rng.uniform(0.0, 0.25)))
        assert p.returncode == -signal.SIGKILL
        mid_write += bool(_tmp_files(tmp_path))
        for t in _tmp_files(tmp_path):  # what a crash leaves: an orphaned temp file
            os.unlink(tmp_path / t)
        ck = rio.load_checkpoint(path)  # never a half-written file
        step = ck["extra"]["step"]
        assert step >= 1
        for name, v in ck["model"].params.items():
            assert np.all(v == step), f"{name} does not belong to step {step}: a mixed save"
        last_step = step
        count("checkpoint.save (SIGKILL injected)", "fault")
    assert last_step >= 1
    # most kills should land inside a save (the loop does nothing else)
    assert mid_write >= 1, "no SIGKILL landed during a write; the test proved nothing"
    count("checkpoint.save (SIGKILL mid-write)", "fault")
    _report("sigkill_kills", kills)
    _report("sigkill_mid_write", mid_write)


# ------------------------------------------------------------------ failing disk
class _Boom(Exception):
    pass


def _fail_partial_write(monkeypatch):
    real = np.savez

    def savez(file, *a, **kw):  # write some bytes, then the disk is full
        buf = io.BytesIO()
        real(buf, *a, **kw)
        file.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", savez)


def _fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "fsync", fsync)


def _fail_replace(monkeypatch):
    def replace(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    monkeypatch.setattr(os, "replace", replace)


def _fail_interrupt(monkeypatch):
    def savez(file, *a, **kw):
        file.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt
    monkeypatch.setattr(np, "savez", savez)


def _fail_mkstemp(monkeypatch):
    import tempfile

    def mkstemp(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


FAULTS = {"partial_write_ENOSPC": (_fail_partial_write, OSError),
          "fsync_EIO": (_fail_fsync, OSError),
          "replace_EXDEV": (_fail_replace, OSError),
          "KeyboardInterrupt_mid_write": (_fail_interrupt, KeyboardInterrupt),
          "mkstemp_EROFS": (_fail_mkstemp, OSError)}


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("compress", [False, True])
def test_failing_disk_write_keeps_previous_checkpoint(tmp_path, monkeypatch, fault, compress):
    path = tmp_path / "ck.npz"
    m1, opt1 = _model_and_opt(0)
    rio.save(path, m1, opt1, extra={"step": 1}, compress=compress)
    before = path.read_bytes()
    m2, opt2 = _model_and_opt(1)
    inject, exc = FAULTS[fault]
    if fault == "KeyboardInterrupt_mid_write" and compress:
        monkeypatch.setattr(np, "savez_compressed", lambda f, *a, **k: (
            f.write(b"partial"), (_ for _ in ()).throw(KeyboardInterrupt)))
    elif fault == "partial_write_ENOSPC" and compress:
        real = np.savez_compressed

        def savez(file, *a, **kw):
            buf = io.BytesIO()
            real(buf, *a, **kw)
            file.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(np, "savez_compressed", savez)
    else:
        inject(monkeypatch)
    with pytest.raises(exc):
        rio.save(path, m2, opt2, extra={"step": 2}, compress=compress)
    monkeypatch.undo()
    assert path.read_bytes() == before, "the previous checkpoint was modified"
    assert _tmp_files(tmp_path) == [], "a temporary file was left behind"
    ck = rio.load_checkpoint(path)
    assert ck["extra"] == {"step": 1} and _same_model(ck["model"], m1)
    # and the next save works normally
    rio.save(path, m2, opt2, extra={"step": 2}, compress=compress)
    assert _same_model(rio.load(path), m2)
    count("checkpoint.save (disk fault injected)", "fault")


def test_saving_into_a_missing_or_readonly_directory_fails_cleanly(tmp_path):
    m, _ = _model_and_opt(0)
    with pytest.raises(OSError):
        rio.save(tmp_path / "no" / "such" / "dir" / "ck.npz", m)
    assert _tmp_files(tmp_path) == []
    count("checkpoint.save (disk fault injected)", "fault")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "ck.npz").write_bytes(b"")
    os.chmod(ro, 0o500)
    try:
        if not os.access(ro, os.W_OK):  # (as root, permissions are not enforced)
            with pytest.raises(OSError):
                rio.save(ro / "ck.npz", m)
            assert (ro / "ck.npz").read_bytes() == b""
            count("checkpoint.save (disk fault injected)", "fault")
    finally:
        os.chmod(ro, 0o700)


# ------------------------------------------------------------------ bad files
@pytest.fixture(scope="module")
def good_checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    m, opt = _model_and_opt(0, H=4)
    out = {}
    for compress in (False, True):
        p = d / f"ck{int(compress)}.npz"
        rio.save(p, m, opt, extra={"step": 7, "note": "é"}, compress=compress)
        out[compress] = (p.read_bytes(), m, opt.state_dict())
    return out


def _load_expect_clean(path, original_model):
    """load_checkpoint either raises ValueError naming the path, or returns the
    original model exactly (the damage hit bytes nothing reads). Returns the outcome."""
    try:
        ck = rio.load_checkpoint(path)
    except ValueError as e:
        assert str(path) in str(e) or os.fspath(path) in str(e), f"message lacks the path: {e}"
        return "error"
    except Exception as e:  # pragma: no cover - the bug this test looks for
        raise AssertionError(f"{type(e).__name__} (not ValueError) for a damaged file: {e}")
    assert _same_model(ck["model"], original_model), "a damaged file loaded as a different model"
    if ck["extra"] is None:
        # KNOWN BUG (test_lost_zip_entries_are_detected): the zip directory was cut short
        # and the optimizer state and extra were dropped silently.
        return "known_bug_silent_loss"
    assert ck["extra"] == {"step": 7, "note": "é"}
    return "ok"


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_checkpoints_raise_value_error(tmp_path, good_checkpoints, compress):
    data, m, _ = good_checkpoints[compress]
    stride = 7 if LONG else max(1, len(data) // 150)
    outcomes = {"error": 0, "ok": 0, "known_bug_silent_loss": 0}
    for cut in list(range(0, len(data), stride)) + [len(data) - 1, len(data) - 22]:
        p = tmp_path / "t.npz"
        p.write_bytes(data[:cut])
        outcomes[_load_expect_clean(p, m)] += 1
        count("io.load_checkpoint (truncated file)", "fault")
    assert outcomes["ok"] == 0, "a truncated checkpoint loaded"


@pytest.mark.parametrize("compress", [False, True])
def test_bit_flipped_checkpoints_never_load_as_something_else(tmp_path, good_checkpoints,
                                                             compress):
    data, m, _ = good_checkpoints[compress]
    rng = np.random.default_rng(int(compress))
    n = 2000 if LONG else 200
    positions = rng.integers(0, len(data), size=n)
    outcomes = {"error": 0, "ok": 0, "known_bug_silent_loss": 0}
    for pos in positions:
        b = bytearray(data)
        b[pos] ^= 1 << int(rng.integers(0, 8))
        p = tmp_path / "f.npz"
        p.write_bytes(bytes(b))
        outcome = _load_expect_clean(p, m)
        outcomes[outcome] += 1
        count("io.load_checkpoint (bit flip)",
              {"ok": "loaded_identical"}.get(outcome, outcome))
    assert outcomes["error"] > n // 2  # CRCs catch flips in the data


def _flip_comment_length(data: bytes, before: str) -> bytes:
    """Flip one bit: the high bit of the comment length of the central-directory entry
    just before the first entry whose name starts with ``before``. zipfile then reads
    the rest of the directory as that entry's comment: the later entries vanish."""
    import struct
    eocd = data.rfind(b"PK\x05\x06")
    size_cd, off_cd = struct.unpack("<II", data[eocd + 12:eocd + 20])
    pos, prev = off_cd, None
    while pos < off_cd + size_cd:
        n, m, k = struct.unpack("<HHH", data[pos + 28:pos + 34])
        name = data[pos + 46:pos + 46 + n].decode()
        if name.startswith(before):
            break
        prev = pos
        pos += 46 + n + m + k
    assert prev is not None
    b = bytearray(data)
    b[prev + 33] ^= 0x80  # comment length += 32768
    return bytes(b)


def test_lost_zip_entries_are_detected(tmp_path, good_checkpoints):
    data, m, opt_state = good_checkpoints[False]
    bad = _flip_comment_length(data, "optim/")
    path = tmp_path / "flipped.npz"
    path.write_bytes(bad)
    assert sum(x != y for x, y in zip(bad, data)) == 1
    with pytest.raises(ValueError) as ei:
        rio.load_checkpoint(path)
    assert str(path) in str(ei.value)


def test_foreign_and_odd_files_raise_clear_errors(tmp_path):
    cases = {}
    np.savez(tmp_path / "foreign.npz", a=np.arange(3), b=np.ones(2))
    cases["foreign.npz"] = "not an rnncore checkpoint"
    np.save(tmp_path / "single.npy", np.arange(3))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    cases["single.npz"] = "single .npy"
    (tmp_path / "empty.npz").write_bytes(b"")
    cases["empty.npz"] = "npz"
    (tmp_path / "text.npz").write_text("hello, I am not a zip file\n" * 10)
    cases["text.npz"] = "npz"
    with zipfile.ZipFile(tmp_path / "zip_other.npz", "w") as z:
        z.writestr("readme.txt", "a zip, but no .npy inside")
        z.writestr("__rnncore__.npy", b"\x93NUMPY garbage header")
    cases["zip_other.npz"] = "rnncore"
    with zipfile.ZipFile(tmp_path / "header_not_json.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(b"{not json", dtype=np.uint8))
        z.writestr("__rnncore__.npy", buf.getvalue())
    cases["header_not_json.npz"] = "JSON"
    with zipfile.ZipFile(tmp_path / "newer.npz", "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.frombuffer(b'{"format": "rnncore-checkpoint", "format_version": 99}',
                                   dtype=np.uint8))
        z.writestr("__rnncore__.npy", buf.getvalue())
    cases["newer.npz"] = "format_version"
    for name, words in cases.items():
        with pytest.raises(ValueError) as ei:
            rio.load_checkpoint(tmp_path / name)
        assert name in str(ei.value), ei.value
        assert words.lower() in str(ei.value).lower(), (name, str(ei.value))
        count("io.load_checkpoint (foreign file)", "error")
    with pytest.raises(FileNotFoundError):
        rio.load_checkpoint(tmp_path / "missing.npz")
    with pytest.raises((FileNotFoundError, ValueError, IsADirectoryError)):
        rio.load_checkpoint(tmp_path)
    count("io.load_checkpoint (foreign file)", "error")


class _Payload:
    """Unpickling this creates a file (what an attacker would do instead)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("where", ["__rnncore__", "param/weight_ih_l0", "optim/step", "extra",
                                   "whole_file_pickle", "npy_pickle"])
def test_loading_never_executes_code(tmp_path, good_checkpoints, where):
    marker = tmp_path / "PWNED"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(str(marker))
    path = tmp_path / "evil.npz"
    if where == "whole_file_pickle":
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    elif where == "npy_pickle":
        with open(path, "wb") as f:
            np.save(f, payload, allow_pickle=True)
    else:
        data, _, _ = good_checkpoints[False]
        src = zipfile.ZipFile(io.BytesIO(data))
        with zipfile.ZipFile(path, "w") as z:
            for info in src.infolist():
                if info.filename == where + ".npy":
                    buf = io.BytesIO()
                    np.save(buf, payload, allow_pickle=True)
                    z.writestr(info.filename, buf.getvalue())
                else:
                    z.writestr(info, src.read(info.filename))
            if where + ".npy" not in src.namelist():
                buf = io.BytesIO()
                np.save(buf, payload, allow_pickle=True)
                z.writestr(where + ".npy", buf.getvalue())
    assert not marker.exists()
    with pytest.raises(ValueError):
        rio.load_checkpoint(path)
    with pytest.raises(ValueError):
        rio.load(path)
    assert not marker.exists(), "loading a checkpoint executed code"
    # the payload really is live: unpickling it would have created the file
    pickle.loads(pickle.dumps(_Payload(str(tmp_path / "control")))).close()
    assert (tmp_path / "control").exists()
    count("io.load_checkpoint (pickle payload)", "fault")


# ------------------------------------------------------------------ the CLI
TEXT = ("def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
        "    return a\n\n") * 150
TINY = ["--hidden", "16", "--embed", "8", "--seq-len", "16", "--batch-size", "4",
        "--threads", "1", "--sample-every", "0", "--eval-every", "0", "--lr", "5e-3"]


def _cli_available():
    try:
        import rnncore.cli  # noqa: F401
        import rnncore.charlm  # noqa: F401
    except ImportError:
        return False
    return True


needs_cli = pytest.mark.skipif(not _cli_available(), reason="rnncore.cli not available yet")


def _train_cmd(out, text, *extra):
    return [sys.executable, "-m", "rnncore", "train", "--text", str(text), "--out", str(out),
            *TINY, *map(str, extra)]


def _ckpt_arrays(path):
    ck = rio.load_checkpoint(path)
    params = {k: v.copy() for k, v in ck["model"].params.items()}
    opt = {k: (np.asarray(v).copy() if not isinstance(v, str) else v)
           for k, v in ck["optimizer_state"].items()}
    return ck, params, opt


def _start_and_wait_for_loop(cmd, env):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = ""
    while not line.startswith("  steps "):  # the last header line: the loop starts next
        line = p.stdout.readline()
        if not line:
            p.wait(30)
            raise AssertionError(f"train did not start: {p.stderr.read()[-2000:]}")
    return p


@needs_cli
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_signal_during_saves_exits_cleanly_and_resume_is_exact(tmp_path, signum):
    """Saving after every step, a signal lands during or between saves: exit 0,
    loadable checkpoint; resuming to step S gives bitwise the parameters and
    optimizer state of an uninterrupted run to S."""
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = tmp_path / "interrupted"
    p = _start_and_wait_for_loop(_train_cmd(out, text, "--steps", 100000, "--save-every", 1),
                                 env)
    with _reaped(p):
        deadline = time.time() + 60
        while not (out / "checkpoint.npz").exists() and time.time() < deadline:
            time.sleep(0.02)
        stdout, stderr = _signal(p, signum, 0.3, timeout=120)
    assert p.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    ck, _, opt = _ckpt_arrays(out / "checkpoint.npz")
    k = ck["extra"]["step"]
    assert 0 < k < 100000 and int(opt["step"]) == k
    assert _tmp_files(out) == []
    count("cli.train (signal injected)", "fault")

    S = k + 5
    r = subprocess.run(_train_cmd(out, text, "--resume", "--steps", S), capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = tmp_path / "straight"
    r = subprocess.run(_train_cmd(ref, text, "--steps", S), capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ck_a, pa, oa = _ckpt_arrays(out / "checkpoint.npz")
    ck_b, pb, ob = _ckpt_arrays(ref / "checkpoint.npz")
    assert ck_a["extra"]["step"] == ck_b["extra"]["step"] == S
    assert pa.keys() == pb.keys() and oa.keys() == ob.keys()
    for key in pa:
        assert np.array_equal(pa[key], pb[key]), f"param {key} differs after resume"
    for key in oa:
        if isinstance(oa[key], str):
            assert oa[key] == ob[key], key
        else:
            assert np.array_equal(oa[key], ob[key]), f"optimizer state {key} differs"
    assert ck_a["extra"]["history"]["train_loss"] == ck_b["extra"]["history"]["train_loss"]
    count("cli.train --resume (exact)", "ok")


@needs_cli
def test_cli_sigkill_while_saving_every_step_keeps_a_consistent_checkpoint(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    out = tmp_path / "o"
    rng = np.random.default_rng(1)
    for k in range(3 if not LONG else 10):
        cmd = _train_cmd(out, text, "--steps", 100000, "--save-every", 1,
                         *(["--resume"] if k else []))
        p = _start_and_wait_for_loop(cmd, env)
        with _reaped(p):
            _signal(p, signal.SIGKILL, float(rng.uniform(0.3, 1.5)))
        for t in _tmp_files(out):
            os.unlink(out / t)
        if not (out / "checkpoint.npz").exists():
            assert k == 0
            continue
        ck = rio.load_checkpoint(out / "checkpoint.npz")
        step = ck["extra"]["step"]
        assert ck["optimizer_state"]["step"] == step
        assert len(ck["extra"]["history"]["train_loss"]) == step
        count("cli.train (SIGKILL injected)", "fault")
    r = subprocess.run(_train_cmd(out, text, "--resume", "--steps", step + 2),
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def _report(key, value):
    path = os.environ.get("RNNCORE_RELIABILITY_COUNTS")
    if path:
        import json
        extra = path + ".extra.json"
        d = {}
        if os.path.exists(extra):
            with open(extra) as f:
                d = json.load(f)
        d[key] = d.get(key, 0) + value
        with open(extra, "w") as f:
            json.dump(d, f)
