"""Shared machinery of the reliability suite (``tests/reliability/test_*.py``).

No tests here: the hypothesis profiles, the per-API example counters, the
memory-layout transforms and the "inputs untouched / outputs never alias"
checker. The model oracle is the suite's one, ``tests/_oracle.py``.

Profiles
--------
``rnncore-reliability`` (default): few, *derandomized* examples per property, so
CI is deterministic and the whole reliability suite stays well under four
minutes on two cores. ``rnncore-reliability-long`` (``RNNCORE_LONG_TESTS=1``):
``LONG_FACTOR`` times more examples, random seeds, plus the tests marked
``slow``. Example counts per API are written as JSON to the path in
``RNNCORE_RELIABILITY_COUNTS`` (if set) when the process exits.
"""
from __future__ import annotations

import atexit
import collections
import json
import os

import numpy as np
from hypothesis import HealthCheck, settings

LONG = os.environ.get("RNNCORE_LONG_TESTS", "") not in ("", "0")
LONG_FACTOR = int(os.environ.get("RNNCORE_LONG_FACTOR", "20"))

settings.register_profile(
    "rnncore-reliability", deadline=None, derandomize=True, database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
settings.register_profile(
    "rnncore-reliability-long", deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much])
PROFILE = settings.get_profile("rnncore-reliability-long" if LONG else "rnncore-reliability")


def examples(n: int) -> settings:
    """``settings`` for a property: ``n`` examples by default, ``n * LONG_FACTOR`` in long mode."""
    return settings(PROFILE, max_examples=n * (LONG_FACTOR if LONG else 1))


# ----------------------------------------------------------------- counters
#: (api, outcome) -> number of examples; outcome is "ok" (compared with the
#: reference), "error" (a ValueError/TypeError naming the argument) or
#: "fault" (an injected fault that was handled).
COUNTS: "collections.Counter[tuple[str, str]]" = collections.Counter()


def count(api: str, outcome: str) -> None:
    COUNTS[(api, outcome)] += 1


def counts_by_api() -> dict:
    out: dict = {}
    for (api, outcome), n in sorted(COUNTS.items()):
        out.setdefault(api, {})[outcome] = n
    return out


def _dump_counts():  # pragma: no cover - reporting only
    path = os.environ.get("RNNCORE_RELIABILITY_COUNTS")
    if path and COUNTS:
        old = {}
        if os.path.exists(path):
            try:
                with open(path) as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = {}
        for api, d in counts_by_api().items():
            for k, v in d.items():
                old.setdefault(api, {})
                old[api][k] = old[api].get(k, 0) + v
        with open(path, "w") as f:
            json.dump(old, f, indent=1, sort_keys=True)


atexit.register(_dump_counts)

# ----------------------------------------------------------------- subprocesses
def same_rnncore_prelude() -> str:
    """Python source that makes a child process import *this* process's rnncore.

    Needed when the suite runs against a copy of rnncore that is not the one the
    child would find by itself (tools/sanitize.sh: an instrumented build in a
    venv that also sees the main environment's editable install and its import
    hook). In the normal case it changes nothing.
    """
    import rnncore
    pkg = os.path.dirname(os.path.abspath(rnncore.__file__))
    return (
        "import sys, os, importlib.util\n"
        f"_want = {os.path.join(pkg, '__init__.py')!r}\n"
        "_spec = importlib.util.find_spec('rnncore')\n"
        "if _spec is None or os.path.abspath(_spec.origin) != _want:\n"
        "    sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                        if not type(f).__name__.startswith('ScikitBuild')]\n"
        f"    sys.path.insert(0, {os.path.dirname(pkg)!r})\n"
        "import rnncore\n"
        "assert os.path.abspath(rnncore.__file__) == _want, (rnncore.__file__, _want)\n")


# ----------------------------------------------------------------- layouts
LAYOUTS = ("C", "F", "neg", "strided", "offset", "readonly", "list")


def with_layout(a: np.ndarray, layout: str):
    """An array (or list) with the values of ``a`` in the given memory layout."""
    a = np.asarray(a)
    if layout == "C" or a.ndim == 0:
        return np.ascontiguousarray(a).copy()
    if layout == "F":
        return np.asfortranarray(a.copy())
    if layout == "neg":  # negative strides on every axis
        sl = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[sl])[sl]
    if layout == "strided":  # non-contiguous: every other element of the last axis
        buf = np.full(a.shape[:-1] + (2 * a.shape[-1],), np.nan, dtype=a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]
    if layout == "offset":  # a slice in the middle of a bigger buffer
        buf = np.full((a.shape[0] + 2,) + a.shape[1:], np.nan, dtype=a.dtype)
        buf[1:-1] = a
        return buf[1:-1]
    if layout == "readonly":
        b = a.copy()
        b.flags.writeable = False
        return b
    if layout == "list":  # nested Python lists (float64 only; a zero-size axis loses its shape)
        ok = a.dtype == np.float64 and 0 not in a.shape
        return a.tolist() if ok else np.ascontiguousarray(a).copy()
    raise ValueError(layout)


def alias_pair(a: np.ndarray, b: np.ndarray):
    """Views ``(a2, b2)`` of ONE buffer that overlap, holding the values
    ``a2 == a`` and ``b2`` = whatever the overlap leaves (returned as third
    item: the values the callee must see for ``b``).

    ``b2`` starts inside ``a2``'s memory, so a callee that wrote into either
    input would change the other.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    buf = np.empty(a.size + b.size + 1, dtype=a.dtype)
    buf[:a.size] = a.ravel()
    start = a.size // 2
    buf[a.size:] = np.linspace(-1, 1, buf.size - a.size)
    a2 = buf[:a.size].reshape(a.shape)
    b2 = buf[start:start + b.size].reshape(b.shape)
    return a2, b2


# ----------------------------------------------------------------- integrity
def _leaves(obj, path="arg"):
    """(path, ndarray) for every array inside nested tuples/lists/dicts."""
    if isinstance(obj, np.ndarray):
        yield path, obj
    elif isinstance(obj, (tuple, list)):
        for i, o in enumerate(obj):
            yield from _leaves(o, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, o in obj.items():
            yield from _leaves(o, f"{path}[{k!r}]")


class Snapshot:
    """Bitwise copies (and the writeable flags) of every array in ``args``."""

    def __init__(self, **args):
        self.items = [(p, a, a.copy(), a.flags.writeable, a.dtype)
                      for name, v in args.items() for p, a in _leaves(v, name)]
        self.lists = {name: json.dumps(v) for name, v in args.items() if isinstance(v, list)
                      and _is_float_list(v)}
        self.args = args

    def assert_unchanged(self, where=""):
        for p, a, c, w, dt in self.items:
            assert a.dtype == dt, f"{where}: input {p} changed dtype"
            assert a.flags.writeable == w, f"{where}: input {p} changed its writeable flag"
            assert a.shape == c.shape and a.tobytes() == c.tobytes(), \
                f"{where}: input {p} was modified"
        for name, js in self.lists.items():
            assert json.dumps(self.args[name]) == js, f"{where}: list input {name} was modified"

    def inputs(self):
        return [a for _, a, _, _, _ in self.items]


def _is_float_list(v):
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def assert_no_alias(outputs, inputs, where=""):
    """No output array shares memory with an input array or with another output."""
    outs = [(p, o) for p, o in _leaves(outputs, "out") if o.size]
    for p, o in outs:
        for i in inputs:
            if isinstance(i, np.ndarray) and i.size:
                assert not np.shares_memory(o, i), f"{where}: output {p} aliases an input"
    for j, (p, o) in enumerate(outs):
        for q, o2 in outs[j + 1:]:
            assert not np.shares_memory(o, o2), f"{where}: outputs {p} and {q} share memory"


# ----------------------------------------------------------------- comparing
def assert_matches(actual, expected, dtype, where="", rtol=None):
    """Same shape, same NaN positions, same infinities, finite parts close.

    float64: max abs err <= 1e-9 * max(1, max|expected|); float32: 2e-4 * scale
    (the float32 kernels use vectorised approximations of tanh/sigmoid).
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if rtol is None:
        rtol = 1e-9 if np.dtype(dtype) == np.float64 else 2e-4
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), (
        f"{where}: NaN at {np.argwhere(nan_a != nan_e)[:3].tolist()} differs "
        f"(got nan={nan_a.sum()}, expected nan={nan_e.sum()})")
    inf_a, inf_e = np.isinf(a), np.isinf(e)
    assert np.array_equal(inf_a, inf_e) and np.array_equal(a[inf_a], e[inf_e]), \
        f"{where}: infinities differ"
    fin = np.isfinite(e)
    if fin.any():
        scale = max(1.0, float(np.max(np.abs(e[fin]))))
        err = float(np.max(np.abs(a[fin] - e[fin])))
        assert err <= rtol * scale, f"{where}: max abs err {err:.3g} > {rtol:g} * {scale:.3g}"


def assert_error_names(exc: BaseException, names, where=""):
    msg = str(exc)
    names = [names] if isinstance(names, str) else list(names)
    assert any(n in msg for n in names), \
        f"{where}: {type(exc).__name__}({msg!r}) names none of {names}"
