"""Hostile checkpoints (issue 17, items 8-9, 12): refused within a memory and a time bound.

Every crafted file is loaded in a child process with a memory cap (RLIMIT_AS:
what the process had after its imports + 1 GiB, so a decompressed bomb ends in
MemoryError, not in a swapping machine) and ``tracemalloc`` running. The
promise checked (docs/RELIABILITY.md, "hostile checkpoints"):

* ``ValueError`` naming the file, nothing else;
* peak traced memory <= 2x the legitimate model (parameters + gradients) of
  the checkpoint it was made from, + 2 MiB (the small headers of these files);
* under 2 s each (measured: milliseconds, bombs included).

The CLI answers the same files with one line on stderr and exit code 2.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import rnncore
from rnncore import io as rio
from rnncore.charlm import CharLM

from _reliability import count

MiB = 1 << 20
BOMB = 1536 * MiB  # the size of the unlisted member
TIME_BOUND = 2.0


def _npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)})
    return buf.getvalue()


def _zeros_member(z, name, head: bytes, nbytes: int) -> None:
    """A member ``head`` + ``nbytes`` zero bytes, deflated (~1000:1)."""
    with z.open(name, "w", force_zip64=True) as f:
        f.write(head)
        chunk = bytes(4 * MiB)
        for start in range(0, nbytes, len(chunk)):
            f.write(chunk[:min(len(chunk), nbytes - start)])


def _craft(good: bytes, path, meta=None, replace=None, add=None) -> str:
    """A copy of the checkpoint ``good`` with its header changed by ``meta`` (a dict of
    changes, or raw JSON text), members replaced (``{entry: bytes or (head, nbytes)}``)
    and added; written with deflate."""
    replace, add = dict(replace or {}), dict(add or {})
    src = zipfile.ZipFile(io.BytesIO(good))
    if meta is not None:
        old = json.loads(bytes(np.load(src.open("__rnncore__.npy"))).decode())
        text = meta if isinstance(meta, str) else json.dumps({**old, **meta})
        replace["__rnncore__"] = _npy(np.frombuffer(text.encode(), dtype=np.uint8))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for info in src.infolist():
            key = info.filename[:-4]
            new = replace.pop(key, None)
            if new is None:
                z.writestr(info.filename, src.read(info.filename))
            elif isinstance(new, tuple):
                _zeros_member(z, info.filename, *new)
            else:
                z.writestr(info.filename, new)
        for key, new in add.items():
            if isinstance(new, tuple):
                _zeros_member(z, key + ".npy", *new)
            else:
                z.writestr(key + ".npy", new)
    return os.fspath(path)


_CHILD = textwrap.dedent("""
    import json, resource, sys, time, tracemalloc
    from rnncore import io as rio
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))
    out = {}
    for name, path, kwargs in json.loads(sys.argv[1]):
        tracemalloc.start()
        t0 = time.perf_counter()
        try:
            rio.load_checkpoint(path, **kwargs)
            result = ["loaded", ""]
        except BaseException as exc:
            result = [type(exc).__name__, str(exc)]
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[name] = result + [peak, seconds]
    print(json.dumps(out))
""")


def _load_in_child(cases: dict) -> dict:
    arg = json.dumps([[name, path, kwargs] for name, (path, kwargs) in cases.items()])
    r = subprocess.run([sys.executable, "-c", _CHILD, arg], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A GRU checkpoint with Adam state and extra: (bytes, legitimate model bytes)."""
    m = rnncore.GRU(8, 16, num_layers=2, seed=0, dtype=np.float64)
    opt = rnncore.optim.Adam(m, lr=1e-3)
    m.grads["weight_hh_l0"][...] = 1.0
    opt.step()
    p = tmp_path_factory.mktemp("good") / "good.npz"
    rio.save(p, m, opt, extra={"step": 1})
    model_bytes = 2 * sum(a.nbytes for a in m.params.values())  # params + grads
    return p.read_bytes(), model_bytes


def _hostile_files(good, d) -> dict:
    """name -> (path, load_checkpoint kwargs, words the message must contain)."""
    P = "param/weight_hh_l0"
    cases = {
        # items 8: memory
        "unlisted 1.5 GiB member": (dict(add={"junk": (b"", BOMB)}), "does not list"),
        "unlisted small member": (dict(add={"x": _npy(np.zeros(3))}), "does not list"),
        "listed param, npy header != member size (bomb)": (
            dict(replace={P: (_npy_header((48, 16), np.float64), 512 * MiB)}), "corrupted"),
        "listed param, consistent 512 MiB bomb": (
            dict(replace={P: (_npy_header((64 * MiB,), np.float64), 512 * MiB)}),
            "do not fit"),
        "npy header shape 10**12, tiny member": (
            dict(replace={P: _npy_header((10**12,), np.float32)}), "corrupted"),
        "extra: consistent 256 MiB bomb": (
            dict(replace={"extra": (_npy_header((256 * MiB,), np.uint8), 256 * MiB)}),
            "more than"),
        "optimizer state: consistent 256 MiB bomb": (
            dict(replace={"optim/step": (_npy_header((32 * MiB,), np.float64), 256 * MiB)}),
            "optimizer state"),
        "header: consistent 64 MiB bomb": (
            dict(replace={"__rnncore__": (_npy_header((64 * MiB,), np.uint8), 64 * MiB)}),
            "more than"),
        "config hidden_size=9000, num_layers=6": (
            dict(meta={"config": {"input_size": 8, "hidden_size": 9000, "num_layers": 6}}),
            "asks for up to"),
        "config num_layers=10**7": (
            dict(meta={"config": {"input_size": 8, "hidden_size": 16, "num_layers": 10**7}}),
            "asks for up to"),
        # item 9: crafted headers
        "deeply nested JSON": (dict(meta="[" * 200_000 + "]" * 200_000), "nested too deeply"),
        "deeply nested config": (dict(meta='{"format": "rnncore-checkpoint", '
                                      '"format_version": 1, "class": "GRU", "params": [], '
                                      '"config": ' + '{"a": ' * 5000 + "1" + "}" * 5000
                                      + "}"), "nested too deeply"),
        "params: 5": (dict(meta={"params": 5}), "'params' is a int"),
        "class: ['GRU']": (dict(meta={"class": ["GRU"]}), "'class' is a list"),
        "config: a string": (dict(meta={"config": "GRU(8, 16)"}), "'config' is a str"),
        "config: hidden_size a string": (
            dict(meta={"config": {"input_size": 8, "hidden_size": "16", "num_layers": 2,
                                  "dtype": "float64"}}), "must be an integer"),
        "entries: [1, 2]": (dict(meta={"entries": [1, 2]}), "distinct names"),
        "optimizer: 5": (dict(meta={"optimizer": 5}), "'optimizer' is a int"),
        "format_version true": (dict(meta={"format_version": True}), "format_version"),
        "extra: a JSON list": (dict(replace={"extra": _npy(np.frombuffer(b"[1]", np.uint8))}),
                               "not a JSON object"),
        # item 12: a float64 value the float32 model cannot hold
        "param 1e300 into float32": (
            dict(meta={"config": {"input_size": 8, "hidden_size": 16, "num_layers": 2,
                                  "dtype": "float32"}},
                 replace={P: _npy(np.full((48, 16), 1e300))}), "overflows float32"),
    }
    out = {}
    for i, (name, (how, words)) in enumerate(cases.items()):
        out[name] = (_craft(good, d / f"h{i}.npz", **how), {}, words)
    out["max_bytes below the model"] = (_craft(good, d / "mb.npz"), {"max_bytes": 1000},
                                        "more than the 1,000 allowed")
    return out


def test_hostile_checkpoints_refused_within_memory_and_time_bounds(tmp_path, good):
    data, model_bytes = good
    files = _hostile_files(data, tmp_path)
    files["legitimate"] = (_craft(data, tmp_path / "ok.npz"), {}, "")
    results = _load_in_child({k: (p, kw) for k, (p, kw, _) in files.items()})
    kind, _, peak, seconds = results.pop("legitimate")
    assert kind == "loaded"
    assert peak <= 2 * model_bytes + MiB, peak
    for name, (kind, message, peak, seconds) in results.items():
        path, _, words = files[name]
        assert kind == "ValueError", (name, kind, message)
        assert path in message and words in message, (name, message)
        assert peak <= 2 * model_bytes + 2 * MiB, (name, peak, model_bytes)
        assert seconds < TIME_BOUND, (name, seconds)
        count("io.load_checkpoint (hostile file)", "error")
    if os.environ.get("RNNCORE_HOSTILE_REPORT"):
        print(json.dumps(results, indent=0))


# -- the CLI: one line, exit code 2 ------------------------------------------------------
def _charlm_checkpoint(path, **extra_changes):
    model = CharLM(5, embed_dim=4, hidden_size=8, cell="gru", seed=0)
    extra = {"charlm_version": 1, "vocab": "\nabcd", "step": 3,
             "train_config": {"cell": "gru"}, "history": {"train_loss": [1.0], "val": []}}
    extra.update(extra_changes)
    rio.save(path, model, None, extra={k: v for k, v in extra.items() if v is not None})
    return path


def _rnncore(*args):
    return subprocess.run([sys.executable, "-m", "rnncore", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def _one_line_exit_2(r):
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rnncore: error: "), r.stderr[-1500:]


def test_cli_hostile_checkpoints_one_line_exit_2(tmp_path):
    good = _charlm_checkpoint(tmp_path / "good.npz").read_bytes()
    files = {
        "string train_config": _charlm_checkpoint(tmp_path / "a.npz", train_config="fast"),
        "unsorted vocabulary": _charlm_checkpoint(tmp_path / "b.npz", vocab="dcba\n"),
        "history not a dict": _charlm_checkpoint(tmp_path / "c.npz", history=[1, 2]),
        "step a string": _charlm_checkpoint(tmp_path / "d.npz", step="3"),
        "class ['CharLM']": _craft(good, tmp_path / "e.npz", meta={"class": ["CharLM"]}),
        "deep JSON": _craft(good, tmp_path / "f.npz", meta="[" * 100000 + "]" * 100000),
        "unlisted member": _craft(good, tmp_path / "g.npz", add={"x": _npy(np.zeros(2))}),
        "config layers 10**7": _craft(good, tmp_path / "h.npz", meta={"config": {
            "vocab_size": 5, "embed_dim": 4, "hidden_size": 8, "num_layers": 10**7,
            "cell": "gru"}}),
        "not a checkpoint": tmp_path / "missing.npz",
    }
    for name, path in files.items():
        for command in (["info", path], ["sample", path, "--length", 5]):
            r = _rnncore(*command)
            _one_line_exit_2(r)
            count(f"rnncore {command[0]} (hostile checkpoint)", "error")


def test_cli_info_and_sample_accept_the_checkpoint_folder(tmp_path):
    _charlm_checkpoint(tmp_path / "checkpoint.npz")
    r = _rnncore("info", tmp_path)
    assert r.returncode == 0 and "CharLM" in r.stdout, r.stderr
    r = _rnncore("sample", tmp_path, "--length", 5, "--seed", 0)
    assert r.returncode == 0 and len(r.stdout) >= 5, r.stderr
