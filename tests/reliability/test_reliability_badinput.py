"""Bad input, everywhere public: property tests over the whole API.

For every public function and model, hypothesis draws a configuration (sizes
including 0, dtype), a memory layout per argument (C, Fortran, negative
strides, non-contiguous, offset slices, read-only, nested lists), special
values (NaN, +-inf, huge) and at most one corruption (a wrong dtype -- int,
float16, complex, object, bool, the other float --, a wrong rank, a wrong size
along one named axis, None). Each call must

* either return what :mod:`rnncore.reference` returns for the same values
  (same shapes, same NaN/inf positions, finite parts within tolerance),
* or raise ValueError/TypeError whose message names the offending argument
  (for a size mismatch: one of the arguments that share the mismatched axis);

and in both cases leave every input bitwise unchanged (flags included), and
return no array that shares memory with an input or with another output.
Valid inputs must never raise. Kernel entry points are additionally fuzzed in
a subprocess (a segfault there fails the test instead of killing pytest).
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import assume, given, note
from hypothesis import strategies as st

import rnncore
from rnncore import functional as F
from rnncore import losses, nn
from rnncore import reference as R

from _oracle import reference_run
from _reliability import (LAYOUTS, LONG, Snapshot, alias_pair, assert_error_names,
                          assert_matches, assert_no_alias, count, examples,
                          same_rnncore_prelude, with_layout)

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN/inf arithmetic

FLOATS = (np.float32, np.float64)
#: the "huge" special value. Sums and products of it are ill-conditioned, so where it
#: is used the comparison tolerance is scaled by it (the NaN/inf pattern stays exact).
HUGE = 1e6
BAD_DTYPES = (np.int32, np.int64, np.float16, np.complex64, np.complex128, object, bool)

# ---------------------------------------------------------------- functional specs
# name -> (arg names, letters of each arg, gates G, sequence?)
SPECS = {
    "rnn": dict(args=("x", "h0", "Wx", "Wh", "b"),
                dims=("NTD", "NH", "DK", "HK", "K"), G=1, seq=True),
    "rnn_step": dict(args=("x", "prev_h", "Wx", "Wh", "b"),
                     dims=("ND", "NH", "DK", "HK", "K"), G=1, seq=False),
    "gru": dict(args=("x", "h0", "Wx", "Wh", "bx", "bh"),
                dims=("NTD", "NH", "DK", "HK", "K", "K"), G=3, seq=True),
    "gru_step": dict(args=("x", "prev_h", "Wx", "Wh", "bx", "bh"),
                     dims=("ND", "NH", "DK", "HK", "K", "K"), G=3, seq=False),
    "lstm": dict(args=("x", "h0", "Wx", "Wh", "b", "c0"),
                 dims=("NTD", "NH", "DK", "HK", "K", "NH"), G=4, seq=True),
    "lstm_step": dict(args=("x", "prev_h", "prev_c", "Wx", "Wh", "b"),
                      dims=("ND", "NH", "NH", "DK", "HK", "K"), G=4, seq=False),
}
# K is G*H: an axis of size K is tied to H (a wrong K is reported on any H/K argument)
TIED = {"K": "HK", "H": "HK"}


def _fwd_fns(name):
    base = name.replace("_step", "")
    step = name.endswith("_step")
    fn = getattr(F, f"{base}_step_forward" if step else f"{base}_forward")
    ref = getattr(R, f"{base}_step_forward" if step else f"{base}_forward")
    bfn = getattr(F, f"{base}_step_backward" if step else f"{base}_backward")
    bref = getattr(R, f"{base}_step_backward" if step else f"{base}_backward")
    return fn, ref, bfn, bref


def _spec_args(name, rng, N, T, D, H, dt=np.float64, scale=1.0):
    """Random arguments of a functional entry point, shaped as SPECS[name] says."""
    spec = SPECS[name]
    dims = dict(N=N, T=T, D=D, H=H, K=spec["G"] * H)
    return {a: (rng.standard_normal(tuple(dims[c] for c in ls)) * scale).astype(dt)
            for a, ls in zip(spec["args"], spec["dims"])}


def _split_result(name, res):
    """(outputs tuple, cache) of a forward result."""
    return tuple(res[:-1]), res[-1]


def _sizes(draw, allow_zero=True):
    lo = 0 if allow_zero else 1
    N = draw(st.integers(lo, 3))
    T = draw(st.integers(lo, 4))
    D = draw(st.integers(lo, 3))
    H = draw(st.integers(1, 4))
    return dict(N=N, T=T, D=D, H=H)


def _known_zero_size_bug(sz, seq):
    """BUG (see test_zero_sized_batch_and_features_are_defined): empty batch with
    T > 1, or D = 0 with N, T > 1, raise a misleading layout ValueError."""
    if not seq:
        return False
    return (sz["N"] == 0 and sz["T"] > 1) or (sz["D"] == 0 and sz["T"] > 1 and sz["N"] >= 1)


@st.composite
def functional_case(draw, name):
    spec = SPECS[name]
    sz = _sizes(draw)
    assume(not _known_zero_size_bug(sz, spec["seq"]))
    dt = draw(st.sampled_from(FLOATS))
    G = spec["G"]
    dims = dict(sz, K=G * sz["H"])
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    vals = {}
    for a, letters in zip(spec["args"], spec["dims"]):
        shape = tuple(dims[c] for c in letters)
        scale = 0.5 if a.startswith("W") else 1.0
        vals[a] = (rng.standard_normal(shape) * scale).astype(dt)
    special = draw(st.sampled_from(["none", "none", "nan", "inf", "-inf", "huge", "zero"]))
    special_arg = draw(st.sampled_from(spec["args"]))
    if special != "none" and vals[special_arg].size:
        v = vals[special_arg]
        idx = tuple(int(rng.integers(0, s)) for s in v.shape)
        v[idx] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "huge": HUGE,
                  "zero": 0.0}[special]
    layouts = {a: draw(st.sampled_from(LAYOUTS)) for a in spec["args"]}
    kind = draw(st.sampled_from(["valid"] * 4 + ["dtype", "mixed", "rank", "size", "none",
                                                 "alias"]))
    bad_arg = draw(st.sampled_from(spec["args"]))
    bad_dtype = draw(st.sampled_from(BAD_DTYPES))
    axis = draw(st.integers(0, 2))
    delta = draw(st.sampled_from([-1, 1, 2]))
    nonlin = draw(st.sampled_from(["tanh", "relu"])) if name.startswith("rnn") else None
    return dict(name=name, sz=sz, dt=dt, vals=vals, layouts=layouts, kind=kind,
                bad_arg=bad_arg, bad_dtype=bad_dtype, axis=axis, delta=delta,
                special=(special, special_arg), nonlin=nonlin)


def _build_args(case):
    """(args passed to rnncore, values the reference sees, expected error names or None)."""
    spec = SPECS[case["name"]]
    vals = case["vals"]
    args = {a: with_layout(vals[a], case["layouts"][a]) for a in spec["args"]}
    ref_vals = {a: vals[a].copy() for a in spec["args"]}
    kind, bad = case["kind"], case["bad_arg"]
    letters = dict(zip(spec["args"], spec["dims"]))
    expect = None
    if kind == "dtype":
        args[bad] = np.asarray(vals[bad]).astype(case["bad_dtype"])
        expect = (TypeError, [bad])
    elif kind == "mixed":
        other = np.float64 if case["dt"] == np.float32 else np.float32
        args[bad] = np.asarray(vals[bad]).astype(other)
        # the first argument fixes the dtype: the message names the odd one out
        # (or, when x itself is the odd one, the first argument that disagrees)
        expect = (TypeError, list(spec["args"]) if bad == spec["args"][0] else [bad])
    elif kind == "rank":
        v = np.asarray(vals[bad])
        args[bad] = v[..., None] if case["delta"] > 0 else v.sum(axis=-1)  # one axis more/less
        expect = (ValueError, [bad])
    elif kind == "size":
        v = np.asarray(vals[bad])
        ax = case["axis"] % v.ndim
        new = list(v.shape)
        new[ax] = max(0, new[ax] + case["delta"])
        if new[ax] == v.shape[ax]:
            new[ax] += 1
        letter = letters[bad][ax]
        if letter == "T":  # any T is valid for a sequence: not a mismatch
            return args, ref_vals, None
        args[bad] = np.zeros(new, dtype=v.dtype)
        related = TIED.get(letter, letter)
        expect = (ValueError, [a for a, ls in letters.items() if set(ls) & set(related)])
    elif kind == "none":
        if case["name"] == "lstm" and bad == "c0":
            return args, ref_vals, None  # c0=None is valid (zeros)
        args[bad] = None
        expect = (TypeError, [bad])
    elif kind == "alias":
        # two inputs carved from one buffer, overlapping
        names = spec["args"]
        a, b = names[case["axis"] % len(names)], names[(case["axis"] + 1) % len(names)]
        if np.asarray(vals[a]).size and np.asarray(vals[b]).size:
            a2, b2 = alias_pair(vals[a], vals[b])
            args[a], args[b] = a2, b2
            ref_vals[a], ref_vals[b] = a2.copy(), b2.copy()
    return args, ref_vals, expect


def _rtol(dt, huge):
    base = 1e-9 if np.dtype(dt) == np.float64 else 2e-4
    return base * (HUGE if huge else 1.0)


def _relu_nan_mismatch(name, nonlin, h):
    """KNOWN MISMATCH (test_relu_backward_nan_semantics_match_reference): a non-finite
    forward with ReLU; the kernels' relu' is a select (0 at NaN), the reference multiplies."""
    return name.startswith("rnn") and nonlin == "relu" and not np.all(np.isfinite(h))


def _call_forward(name, fn, args, nonlin):
    spec = SPECS[name]
    pos = [args[a] for a in spec["args"]]
    if name == "lstm":
        return fn(*pos[:5], c0=pos[5])
    if nonlin is not None:
        return fn(*pos, nonlinearity=nonlin)
    return fn(*pos)


def _nl(name):
    return "tanh" if name == "rnn" else None


def _upstream(name, outs, rng, dt):
    """Upstream gradients for the backward of ``name`` (arrays in C order)."""
    return [rng.standard_normal(np.shape(o)).astype(dt) for o in outs]


def _call_backward(name, bfn, douts, cache, extra):
    if name == "rnn":
        return bfn(douts[0], cache, dhn=extra[0])
    if name == "gru":
        return bfn(douts[0], cache, dhn=extra[0])
    if name == "lstm":
        return bfn(douts[0], cache, dhn=extra[0], dcn=extra[1])
    if name == "lstm_step":
        return bfn(douts[0], douts[1], cache)
    return bfn(douts[0], cache)


def _run_functional(case):
    name = case["name"]
    fn, ref, bfn, bref = _fwd_fns(name)
    args, ref_vals, expect = _build_args(case)
    snap = Snapshot(**args)
    note(f"case {name} sizes={case['sz']} dt={case['dt'].__name__} kind={case['kind']} "
         f"bad={case['bad_arg']} layouts={case['layouts']} special={case['special']}")
    api = f"functional.{fn.__name__}"
    if expect is not None:
        exc_type, names = expect
        if name == "rnn_step" and "prev_h" in names:
            names = names + ["h0"]  # KNOWN BUG: see test_rnn_step_forward_names_prev_h
        with pytest.raises((ValueError, TypeError)) as ei:
            _call_forward(name, fn, args, case["nonlin"])
        assert isinstance(ei.value, exc_type), \
            f"{api}: expected {exc_type.__name__}, got {ei.value!r}"
        assert_error_names(ei.value, names, api)
        snap.assert_unchanged(api)
        count(api, "error")
        return
    res = _call_forward(name, fn, args, case["nonlin"])
    snap.assert_unchanged(api)
    outs, cache = _split_result(name, res)
    assert_no_alias(outs, snap.inputs(), api)
    rres = _call_forward(name, ref, ref_vals, case["nonlin"])
    routs, rcache = _split_result(name, rres)
    huge = case["special"][0] == "huge"
    for o, r in zip(outs, routs):
        assert o.dtype == case["dt"], f"{api}: output dtype {o.dtype}"
        assert_matches(o, r, case["dt"], api, rtol=_rtol(case["dt"], huge))
    count(api, "ok")

    # backward: valid upstream gradients (C order) and an optional final-state grad
    rng = np.random.default_rng(0)
    dt = case["dt"]
    douts = _upstream(name, outs, rng, dt)
    N, H = case["sz"]["N"], case["sz"]["H"]
    extra = [rng.standard_normal((N, H)).astype(dt) for _ in range(2)]
    bapi = f"functional.{bfn.__name__}"
    douts_l = [with_layout(d, case["layouts"][SPECS[name]["args"][0]]) for d in douts]
    douts_l = [d if isinstance(d, np.ndarray) or dt == np.float64 else np.asarray(d)
               for d in douts_l]
    bsnap = Snapshot(douts=douts_l, extra=extra, **args)
    grads = _call_backward(name, bfn, douts_l, cache, extra)
    bsnap.assert_unchanged(bapi)
    assert_no_alias(grads, bsnap.inputs() + list(outs), bapi)
    rgrads = _call_backward(name, bref, douts, rcache, extra)
    assert len(grads) == len(rgrads)
    loose_nan = _relu_nan_mismatch(name, case["nonlin"], outs[0])
    if loose_nan:
        count(bapi, "known_mismatch_relu_nan")
    for g, r in zip(grads, rgrads):
        assert g.dtype == dt
        if loose_nan:  # compare where both are finite
            both = np.isfinite(g) & np.isfinite(r)
            g, r = np.where(both, g, 0), np.where(both, r, 0)
        assert_matches(g, r, dt, bapi, rtol=_rtol(dt, huge))
    count(bapi, "ok")


@pytest.mark.parametrize("name", list(SPECS))
@examples(60)
@given(data=st.data())
def test_functional_forward_backward_bad_input(name, data):
    _run_functional(data.draw(functional_case(name)))


@pytest.mark.parametrize("name", list(SPECS))
@examples(10)
@given(data=st.data())
def test_functional_backward_bad_upstream(name, data):
    """Backward with a corrupted upstream gradient or a foreign cache."""
    case = data.draw(functional_case(name))
    assume(case["kind"] == "valid")
    fn, _, bfn, _ = _fwd_fns(name)
    args, _, _ = _build_args(case)
    res = _call_forward(name, fn, args, case["nonlin"])
    outs, cache = _split_result(name, res)
    dt = case["dt"]
    N, H = case["sz"]["N"], case["sz"]["H"]
    rng = np.random.default_rng(1)
    douts = _upstream(name, outs, rng, dt)
    extra = [rng.standard_normal((N, H)).astype(dt) for _ in range(2)]
    which = data.draw(st.sampled_from(["dtype", "rank", "size", "cache", "mixed"]))
    bapi = f"functional.{bfn.__name__}"
    dname = {"rnn": "dh", "gru": "dh", "lstm": "dh"}.get(name, "dnext_h")
    if which == "cache":
        other = {"rnn": "gru", "gru": "lstm", "lstm": "rnn"}.get(name.replace("_step", ""))
        # a cache of another cell, or the step/sequence cache of the same cell
        ofn, _, _, _ = _fwd_fns(other)
        x = np.zeros((1, 1, 1), dt)
        G = SPECS[other]["G"]
        oargs = [x, np.zeros((1, 1), dt), np.zeros((1, G), dt), np.zeros((1, G), dt)]
        oargs += [np.zeros(G, dt)] * (2 if other == "gru" else 1)
        foreign = ofn(*oargs)[-1]
        with pytest.raises(TypeError) as ei:
            _call_backward(name, bfn, douts, foreign, extra)
        assert_error_names(ei.value, "cache", bapi)
        count(bapi, "error")
        return
    d = douts[0]
    if which == "dtype":
        bad = d.astype(data.draw(st.sampled_from(BAD_DTYPES)))
        exc = TypeError
    elif which == "mixed":
        bad = d.astype(np.float64 if dt == np.float32 else np.float32)
        exc = TypeError
    elif which == "rank":
        bad = d[..., None]
        exc = ValueError
    else:
        bad = np.zeros(tuple(s + 1 for s in d.shape), dt)
        exc = ValueError
    douts[0] = bad
    snap = Snapshot(douts=douts)
    with pytest.raises(exc) as ei:
        _call_backward(name, bfn, douts, cache, extra)
    assert_error_names(ei.value, dname, bapi)
    snap.assert_unchanged(bapi)
    count(bapi, "error")


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("dt", FLOATS)
def test_zero_length_sequence_is_defined(name, dt):
    """T = 0: empty outputs; backward gives dh0 = dhn (h_n = h0), zero weight grads."""
    fn, ref, bfn, bref = _fwd_fns(name)
    rng = np.random.default_rng(3)
    N, D, H = 2, 3, 4
    args = _spec_args(name, rng, N, 0, D, H, dt)
    outs, cache = _split_result(name, _call_forward(name, fn, args, _nl(name)))
    for o in outs:
        assert o.shape == (N, 0, H) and o.dtype == dt
    extra = [rng.standard_normal((N, H)).astype(dt) for _ in range(2)]
    grads = _call_backward(name, bfn, [np.zeros((N, 0, H), dt)] * len(outs), cache, extra)
    dx, dh0 = grads[0], grads[1]
    assert dx.shape == (N, 0, D)
    np.testing.assert_array_equal(dh0, extra[0])  # h_n = h0, so dh0 = dhn
    if name == "lstm":
        np.testing.assert_array_equal(grads[2], extra[1])
    for g in grads[3 if name == "lstm" else 2:]:
        assert not np.any(g)
    count(f"functional.{name}_forward[T=0]", "ok")


ZERO_CASES = [("rnn", 0, 3, 2), ("rnn", 2, 3, 0), ("rnn", 1, 3, 0), ("gru", 0, 3, 2),
              ("gru", 2, 3, 0), ("lstm", 0, 3, 2), ("lstm", 2, 3, 0)]


@pytest.mark.parametrize("name,N,T,D", [c for c in ZERO_CASES])
def test_zero_sized_batch_and_features_are_defined(name, N, T, D):
    fn, ref, bfn, bref = _fwd_fns(name)
    H = 4
    rng = np.random.default_rng(0)
    args = _spec_args(name, rng, N, T, D, H)
    outs, cache = _split_result(name, _call_forward(name, fn, args, _nl(name)))
    routs, rcache = _split_result(name, _call_forward(name, ref, args, _nl(name)))
    for o, r in zip(outs, routs):
        assert_matches(o, r, np.float64, name)
    douts = [np.ones(o.shape) for o in outs]
    extra = [np.ones((N, H))] * 2
    for g, r in zip(_call_backward(name, bfn, douts, cache, extra),
                    _call_backward(name, bref, douts, rcache, extra)):
        assert_matches(g, r, np.float64, name)


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("batch_first,what", [(True, "D=0"), (False, "N=0"), (True, "N=0")])
def test_models_zero_sized_inputs_are_defined(cls, batch_first, what):
    m = getattr(rnncore, cls)(0 if what == "D=0" else 3, 4, batch_first=batch_first,
                              dtype=np.float64, seed=0)
    T, N, D = (3, 2, 0) if what == "D=0" else (3, 0, 3)
    x = np.zeros((N, T, D) if batch_first else (T, N, D))
    out, state = m(x)
    assert out.shape == x.shape[:2] + (4,)
    dx, _ = m.backward(np.ones_like(out))
    assert dx.shape == x.shape


@pytest.mark.parametrize("bad", [np.ones((2, 4), np.int32), None, np.ones((2, 4), np.float32)])
def test_rnn_step_forward_names_prev_h(bad):
    with pytest.raises(TypeError) as ei:
        F.rnn_step_forward(np.ones((2, 3)), bad, np.ones((3, 4)), np.ones((4, 4)), np.ones(4))
    assert str(ei.value).startswith("prev_h"), str(ei.value)


@pytest.mark.parametrize("where", ["functional", "model_batch_first"])
@pytest.mark.parametrize("case", ["rnn_relu_inf_last_state", "rnn_relu_nan_last_state",
                                  "lstm_inf_c0_of_next_row"])
def test_dWh_ignores_pairs_straddling_two_rows(where, case):
    if case.startswith("rnn"):
        special = np.inf if "inf" in case else np.nan
        x = np.array([[[1.0], [special]], [[1.0], [1.0]]])  # row 0 ends non-finite
        h0, Wx, Wh, b = np.zeros((2, 1)), np.ones((1, 1)), np.full((1, 1), 0.5), np.zeros(1)
        _, rcache = R.rnn_forward(x, h0, Wx, Wh, b, "relu")
        want = R.rnn_backward(np.ones((2, 2, 1)), rcache)[3]   # 2.0 for inf, 1.0 for nan
        if where == "functional":
            _, cache = F.rnn_forward(x, h0, Wx, Wh, b, "relu")
            got = F.rnn_backward(np.ones((2, 2, 1)), cache)[3]
        else:
            m = rnncore.RNN(1, 1, nonlinearity="relu", batch_first=True, bias=False,
                            dtype=np.float64, seed=0)
            m.params["weight_ih_l0"][...] = Wx.T
            m.params["weight_hh_l0"][...] = Wh.T
            out, _ = m(x)
            m.backward(np.ones_like(out))
            got = m.grads["weight_hh_l0"].T
    else:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, 2, 1))
        h0 = rng.standard_normal((2, 2))
        c0 = rng.standard_normal((2, 2))
        c0[1, 0] = np.inf          # row 1's first step: dz[1, 0] is +-inf in some gates
        Wx, Wh = rng.standard_normal((1, 8)) * 0.5, rng.standard_normal((2, 8)) * 0.5
        b = rng.standard_normal(8) * 0.5
        dh, dhn, dcn = rng.standard_normal((2, 2, 2)), np.ones((2, 2)), np.ones((2, 2))
        _, _, rcache = R.lstm_forward(x, h0, Wx, Wh, b, c0)
        want = R.lstm_backward(dh, rcache, dhn, dcn)[4]
        if where == "functional":
            _, _, cache = F.lstm_forward(x, h0, Wx, Wh, b, c0=c0)
            got = F.lstm_backward(dh, cache, dhn=dhn, dcn=dcn)[4]
        else:
            m = rnncore.LSTM(1, 2, batch_first=True, dtype=np.float64, seed=0)
            m.params["weight_ih_l0"][...] = Wx.T
            m.params["weight_hh_l0"][...] = Wh.T
            m.params["bias_ih_l0"][...] = b
            m.params["bias_hh_l0"][...] = 0
            out, _ = m(x, (h0[None], c0[None]))
            m.backward(dh, (dhn[None], dcn[None]))
            got = m.grads["weight_hh_l0"].T
        assert not np.all(np.isnan(want))  # the true dWh is not all-NaN
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12)


# ---------------------------------------------------------------- models
MODEL_CLASSES = ("RNN", "GRU", "LSTM")


@st.composite
def model_case(draw, cls):
    L = draw(st.integers(1, 2))
    bidir = draw(st.booleans())
    bf = draw(st.booleans())
    dt = draw(st.sampled_from(FLOATS))
    T = draw(st.integers(0, 4))
    N = draw(st.integers(1, 3))
    D = draw(st.integers(1, 3))
    H = draw(st.integers(1, 3))
    unbatched = draw(st.booleans()) and draw(st.booleans())
    if unbatched:
        N = 1
    use_lengths = draw(st.booleans()) and T > 0
    lengths = draw(st.lists(st.integers(0, T), min_size=N, max_size=N)) if use_lengths else None
    lengths_dtype = draw(st.sampled_from(["int64", "int32", "uint8", "list"]))
    use_h0 = draw(st.booleans())
    relu = cls == "RNN" and draw(st.booleans())
    kind = draw(st.sampled_from(["valid"] * 5 + ["x_dtype", "x_mixed", "x_rank", "x_D",
                                                 "h0_N", "h0_L", "h0_dtype", "lengths_float",
                                                 "lengths_bool", "lengths_neg", "lengths_big",
                                                 "lengths_shape", "dout_shape", "dout_dtype",
                                                 "dout_alias", "lstm_pair"]))
    layout = draw(st.sampled_from(LAYOUTS))
    special = draw(st.sampled_from(["none", "none", "nan_x", "inf_x", "huge_x", "nan_h0"]))
    seed = draw(st.integers(0, 2**32 - 1))
    bad_dtype = draw(st.sampled_from(BAD_DTYPES))
    return dict(cls=cls, L=L, bidir=bidir, bf=bf, dt=dt, T=T, N=N, D=D, H=H,
                unbatched=unbatched, lengths=lengths, lengths_dtype=lengths_dtype,
                use_h0=use_h0, relu=relu, kind=kind, layout=layout, special=special,
                seed=seed, bad_dtype=bad_dtype)


def _state_arg(m, states):
    if m.n_states == 1:
        return states[0]
    return None if states[0] is None and states[1] is None else tuple(states)


def _time_major(case, seq, states):
    """A model's result in the user's layout as (T, N, F), its states as (L*nd, N, H)."""
    if case["unbatched"]:
        seq = seq[None] if case["bf"] else seq[:, None]
        states = [s[:, None] for s in states]
    if case["bf"]:
        seq = seq.transpose(1, 0, 2)
    return seq, states


def _run_model(case):
    cls = case["cls"]
    kw = dict(num_layers=case["L"], bidirectional=case["bidir"], batch_first=case["bf"],
              dtype=case["dt"], seed=1)
    if case["relu"]:
        kw["nonlinearity"] = "relu"
    m = getattr(rnncore, cls)(case["D"], case["H"], **kw)
    T, N, D, H, dt = case["T"], case["N"], case["D"], case["H"], case["dt"]
    L, nd, S = case["L"], m.num_directions, m.n_states
    rng = np.random.default_rng(case["seed"])
    x_tnd = rng.standard_normal((T, N, D)).astype(dt)
    states = [rng.standard_normal((L * nd, N, H)).astype(dt) if case["use_h0"] else None
              for _ in range(S)]
    sp = case["special"]
    if sp.endswith("_x") and x_tnd.size:
        x_tnd[tuple(rng.integers(0, s) for s in x_tnd.shape)] = \
            {"nan_x": np.nan, "inf_x": np.inf, "huge_x": HUGE}[sp]
    if sp == "nan_h0" and states[0] is not None and not (
            case["lengths"] is not None and 0 in case["lengths"]):  # known bug, see
        # test_padding_never_reaches_gradients[h0_of_empty_row]
        states[0][0, 0, 0] = np.nan
    lengths = case["lengths"]
    if lengths is not None:
        # padding is zero (rnncore never reads it; see test_padding_never_reaches_gradients)
        for n, ln in enumerate(lengths):
            x_tnd[ln:, n] = 0
    x_user = x_tnd.transpose(1, 0, 2) if case["bf"] else x_tnd
    states_user = list(states)
    if case["unbatched"]:
        x_user = x_user[0] if case["bf"] else x_user[:, 0]
        states_user = [None if s is None else s[:, 0] for s in states]
    x_arg = with_layout(x_user, case["layout"])
    lens_arg = None
    if lengths is not None:
        lens_arg = (list(lengths) if case["lengths_dtype"] == "list"
                    else np.asarray(lengths, dtype=case["lengths_dtype"]))
        if case["unbatched"]:
            lens_arg = lens_arg if case["lengths_dtype"] == "list" else lens_arg
    state_arg = _state_arg(m, [None if s is None else with_layout(s, case["layout"])
                               if not isinstance(with_layout(s, case["layout"]), list)
                               else np.asarray(s) for s in states_user])
    kind = case["kind"]
    api = f"models.{cls}"
    expect = None
    if kind == "x_dtype":
        x_arg = np.asarray(x_user).astype(case["bad_dtype"])
        expect = (TypeError, ["x"])
    elif kind == "x_mixed":
        x_arg = np.asarray(x_user).astype(np.float64 if dt == np.float32 else np.float32)
        expect = (TypeError, ["x"])
    elif kind == "x_rank":
        x_arg = np.asarray(x_user)[None, None]  # 4-D or 5-D: never a valid layout
        expect = (ValueError, ["x"])
    elif kind == "x_D":
        x_arg = np.zeros(np.shape(x_user)[:-1] + (D + 1,), dt)
        expect = (ValueError, ["x", "input_size"])
    elif kind == "h0_N" and not case["unbatched"]:
        bad = np.zeros((L * nd, N + 1, H), dt)
        state_arg = bad if S == 1 else (bad, None)
        expect = (ValueError, ["h0"])
    elif kind == "h0_L":
        bad = np.zeros((L * nd + 1,) + ((H,) if case["unbatched"] else (N, H)), dt)
        state_arg = bad if S == 1 else (None, bad)
        expect = (ValueError, ["h0"] if S == 1 else ["c0"])
    elif kind == "h0_dtype":
        bad = np.zeros((L * nd,) + ((H,) if case["unbatched"] else (N, H)), case["bad_dtype"])
        state_arg = bad if S == 1 else (bad, None)
        expect = (TypeError, ["h0"])
    elif kind.startswith("lengths_") and not case["unbatched"]:
        lens = np.full(N, T)
        bad = {"lengths_float": lens.astype(float), "lengths_bool": lens > 0,
               "lengths_neg": lens - T - 1, "lengths_big": lens + 1,
               "lengths_shape": np.full(N + 1, T)}[kind]
        lens_arg = bad
        expect = (TypeError if kind in ("lengths_float", "lengths_bool") else ValueError,
                  ["lengths"])
    elif kind == "lstm_pair" and S == 2:
        state_arg = (np.zeros((L * nd, N, H), dt),)
        expect = (TypeError, ["hx"])
    snap = Snapshot(x=x_arg, state=state_arg, lengths=lens_arg)
    if expect is not None:
        with pytest.raises((ValueError, TypeError)) as ei:
            m(x_arg, state_arg, lengths=lens_arg)
        assert isinstance(ei.value, expect[0]), \
            f"{api}: expected {expect[0].__name__}, got {ei.value!r}"
        assert_error_names(ei.value, expect[1], api)
        snap.assert_unchanged(api)
        count(f"{api}.forward", "error")
        return
    out, fin = m(x_arg, state_arg, lengths=lens_arg)
    snap.assert_unchanged(f"{api}.forward")
    fins = [fin] if S == 1 else list(fin)
    assert_no_alias([out] + fins, snap.inputs(), api)
    ro, rf, _, _, _ = reference_run(m, x_tnd, states, lengths)
    out_tnd, fins = _time_major(case, out, fins)
    assert out.dtype == dt
    rt = _rtol(dt, sp == "huge_x")
    assert_matches(out_tnd, ro, dt, f"{api}.forward out", rtol=rt)
    for f, r in zip(fins, rf):
        assert_matches(f, r, dt, f"{api}.forward h_n", rtol=rt)
    count(f"{api}.forward", "ok")

    # backward
    dout_tnd = rng.standard_normal(ro.shape).astype(dt)
    dfin = [rng.standard_normal((L * nd, N, H)).astype(dt) for _ in range(S)]
    dout_user = dout_tnd.transpose(1, 0, 2) if case["bf"] else dout_tnd
    dfin_user = list(dfin)
    if case["unbatched"]:
        dout_user = dout_user[0] if case["bf"] else dout_user[:, 0]
        dfin_user = [d[:, 0] for d in dfin]
    bapi = f"{api}.backward"
    if kind in ("dout_shape", "dout_dtype"):
        bad = (np.zeros(np.shape(dout_user) + (1,), dt) if kind == "dout_shape"
               else np.asarray(dout_user).astype(case["bad_dtype"]))
        saved = m._saved
        with pytest.raises(ValueError if kind == "dout_shape" else TypeError) as ei:
            m.backward(bad)
        assert_error_names(ei.value, "dout", bapi)
        count(bapi, "error")
        m._saved = saved  # a refused backward may consume the activations; restore them
        if m._saved is None:
            return
    if kind == "dout_alias":
        # the upstream gradient IS the forward's own output buffer
        dout_user = out
        dout_tnd = out_tnd.copy()
    dout_arg = dout_user if kind == "dout_alias" else with_layout(dout_user, case["layout"])
    if isinstance(dout_arg, list):
        dout_arg = np.asarray(dout_arg)
    dstate_arg = _state_arg(m, dfin_user)
    m.zero_grad()
    bsnap = Snapshot(x=x_arg, state=state_arg, dout=dout_arg, dstate=dstate_arg)
    dx, dst = m.backward(dout_arg, dstate_arg)
    bsnap.assert_unchanged(bapi)
    dsts = [dst] if S == 1 else list(dst)
    assert_no_alias([dx] + dsts, bsnap.inputs() + [out] + fins + list(m.params.values())
                    + list(m.grads.values()), bapi)
    _, _, rdx, rds, rg = reference_run(m, x_tnd, states, lengths, dout_tnd, dfin)
    dx_tnd, dsts = _time_major(case, dx, dsts)
    loose_nan = case["relu"] and not np.all(np.isfinite(ro))
    if loose_nan:  # KNOWN MISMATCH: see test_relu_backward_nan_semantics_match_reference
        count(bapi, "known_mismatch_relu_nan")

    def cmp(a, b, where):
        if loose_nan:
            both = np.isfinite(a) & np.isfinite(b)
            a, b = np.where(both, a, 0), np.where(both, b, 0)
        assert_matches(a, b, dt, where, rtol=rt)
    cmp(dx_tnd, rdx, f"{bapi} dx")
    for d, r in zip(dsts, rds):
        cmp(d, r, f"{bapi} dstate0")
    for k, g in rg.items():
        cmp(m.grads[k], g, f"{bapi} grads[{k}]")
    count(bapi, "ok")


@pytest.mark.parametrize("cls", MODEL_CLASSES)
@examples(50)
@given(data=st.data())
def test_models_forward_backward_bad_input(cls, data):
    _run_model(data.draw(model_case(cls)))


@pytest.mark.parametrize("cls", MODEL_CLASSES)
def test_models_zero_length_and_empty_lengths(cls):
    """T = 0 gives an empty out and h_n = h0; all lengths 0 gives zeros and h_n = h0."""
    rng = np.random.default_rng(0)
    for bf in (False, True):
        m = getattr(rnncore, cls)(3, 4, num_layers=2, bidirectional=True, batch_first=bf,
                                  dtype=np.float64, seed=0)
        S = m.n_states
        st0 = [rng.standard_normal((4, 2, 4)) for _ in range(S)]
        for T, lengths in ((0, None), (0, np.zeros(2, int)), (3, np.zeros(2, int))):
            x = np.ones((2, T, 3) if bf else (T, 2, 3))
            out, fin = m(x, _state_arg(m, st0), lengths=lengths)
            fins = [fin] if S == 1 else list(fin)
            assert out.shape == x.shape[:2] + (8,)
            assert not np.any(out)
            for f, s in zip(fins, st0):
                np.testing.assert_array_equal(f, s)
            dfin = [rng.standard_normal(s.shape) for s in st0]
            m.zero_grad()
            dx, dst = m.backward(np.ones_like(out), _state_arg(m, dfin))
            dsts = [dst] if S == 1 else list(dst)
            assert dx.shape == x.shape and not np.any(dx)
            for d, f in zip(dsts, dfin):
                np.testing.assert_array_equal(d, f)
            assert not any(np.any(g) for g in m.grads.values())
    count(f"models.{cls}[T=0|lengths=0]", "ok")


@pytest.mark.parametrize("cls", MODEL_CLASSES)
@pytest.mark.parametrize("where", ["x_padding_nan", "x_padding_inf", "h0_of_empty_row"])
def test_padding_never_reaches_gradients(cls, where):
    """models.py: padding 'never reaches the outputs ... and never leaks into gradients'."""
    rng = np.random.default_rng(0)
    m = getattr(rnncore, cls)(3, 4, dtype=np.float64, seed=0)
    T, N = 5, 3
    lengths = np.array([5, 2, 0])
    pad = np.arange(T)[:, None] >= lengths[None]
    x = np.where(pad[..., None], 0.0, rng.standard_normal((T, N, 3)))
    h0 = rng.standard_normal((1, N, 4))
    st0 = h0 if m.n_states == 1 else (h0, np.zeros_like(h0))
    out_ref, _ = m(x, st0, lengths=lengths)
    m.zero_grad()
    m.backward(np.ones_like(out_ref))
    want = {k: g.copy() for k, g in m.grads.items()}
    x_bad, h0_bad = x.copy(), h0.copy()
    if where == "h0_of_empty_row":
        h0_bad[0, 2] = np.nan  # row 2 has length 0: h0 only passes through to h_n
    else:
        x_bad[pad] = np.nan if where == "x_padding_nan" else np.inf
    st_bad = h0_bad if m.n_states == 1 else (h0_bad, np.zeros_like(h0))
    out, _ = m(x_bad, st_bad, lengths=lengths)
    np.testing.assert_array_equal(out, out_ref)  # the forward is fine
    m.zero_grad()
    m.backward(np.ones_like(out))
    for k, g in m.grads.items():
        assert np.all(np.isfinite(g)), f"{k} has non-finite entries from unused input"
        np.testing.assert_allclose(g, want[k], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- cells
CELL_CLASSES = ("RNNCell", "GRUCell", "LSTMCell")


@pytest.mark.parametrize("cls", CELL_CLASSES)
@examples(40)
@given(data=st.data())
def test_cells_bad_input(cls, data):
    dt = data.draw(st.sampled_from(FLOATS))
    N = data.draw(st.integers(0, 3))
    D = data.draw(st.integers(0, 3))
    H = data.draw(st.integers(1, 3))
    bias = data.draw(st.booleans())
    unbatched = data.draw(st.booleans()) and N == 1
    layout = data.draw(st.sampled_from(LAYOUTS))
    kind = data.draw(st.sampled_from(["valid"] * 3 + ["dtype", "mixed", "rank", "D", "hx_N",
                                                      "hx_dtype", "dh_shape", "nan"]))
    bad_dtype = data.draw(st.sampled_from(BAD_DTYPES))
    relu = cls == "RNNCell" and data.draw(st.booleans())
    kw = {"nonlinearity": "relu"} if relu else {}
    c = getattr(rnncore, cls)(D, H, bias=bias, dtype=dt, seed=0, **kw)
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    x = rng.standard_normal((N, D)).astype(dt)
    hs = [rng.standard_normal((N, H)).astype(dt) for _ in range(c.n_states)]
    if kind == "nan" and x.size:
        x[0, 0] = np.nan
    xu = x[0] if unbatched else x
    hu = [h[0] if unbatched else h for h in hs]
    x_arg = with_layout(xu, layout)
    h_arg = [with_layout(h, layout) for h in hu]
    h_arg = [np.asarray(h) if isinstance(h, list) else h for h in h_arg]
    hx = h_arg[0] if c.n_states == 1 else tuple(h_arg)
    api = f"cells.{cls}"
    expect = None
    if kind == "dtype":
        x_arg = np.asarray(xu).astype(bad_dtype)
        expect = (TypeError, "input")
    elif kind == "mixed":
        x_arg = np.asarray(xu).astype(np.float64 if dt == np.float32 else np.float32)
        expect = (TypeError, "input")
    elif kind == "rank":
        x_arg = np.asarray(xu)[None, None]
        expect = (ValueError, "input")
    elif kind == "D":
        x_arg = np.zeros(np.shape(xu)[:-1] + (D + 1,), dt)
        expect = (ValueError, "input")
    elif kind == "hx_N" and not unbatched:
        bad = np.zeros((N + 1, H), dt)
        hx = bad if c.n_states == 1 else (bad, h_arg[1])
        expect = (ValueError, "hx")
    elif kind == "hx_dtype":
        bad = np.asarray(hu[0]).astype(bad_dtype)
        hx = bad if c.n_states == 1 else (bad, h_arg[1])
        expect = (TypeError, "hx")
    snap = Snapshot(x=x_arg, hx=hx)
    if expect is not None:
        with pytest.raises(expect[0]) as ei:
            c(x_arg, hx)
        assert_error_names(ei.value, expect[1], api)
        snap.assert_unchanged(api)
        count(f"{api}.forward", "error")
        return
    res = c(x_arg, hx)
    snap.assert_unchanged(api)
    res = [res] if c.n_states == 1 else list(res)
    assert_no_alias(res, snap.inputs() + list(c.params.values()), api)
    p = c.params
    b_ih = p.get("bias_ih", np.zeros(c.G * H, dt))
    b_hh = p.get("bias_hh", np.zeros(c.G * H, dt))
    if cls == "RNNCell":
        rh, rc = R.rnn_step_forward(x, hs[0], p["weight_ih"].T, p["weight_hh"].T, b_ih + b_hh,
                                    "relu" if relu else "tanh")
        ref = [rh]
    elif cls == "GRUCell":
        rh, rc = R.gru_step_forward(x, hs[0], p["weight_ih"].T, p["weight_hh"].T, b_ih, b_hh)
        ref = [rh]
    else:
        rh, rcc, rc = R.lstm_step_forward(x, hs[0], hs[1], p["weight_ih"].T, p["weight_hh"].T,
                                          b_ih + b_hh)
        ref = [rh, rcc]
    for a, r in zip(res, ref):
        assert_matches(a[None] if unbatched else a, r, dt, api)
    count(f"{api}.forward", "ok")
    dh = [rng.standard_normal((N, H)).astype(dt) for _ in range(c.n_states)]
    dhu = [d[0] if unbatched else d for d in dh]
    bapi = f"{api}.backward"
    if kind == "dh_shape":
        with pytest.raises(ValueError) as ei:
            c.backward(np.zeros((N + 1, H + 1), dt))
        assert_error_names(ei.value, "dh", bapi)
        count(bapi, "error")
        c.clear_saved()
        return
    c.zero_grad()
    bsnap = Snapshot(dh=dhu)
    out = c.backward(*dhu)
    bsnap.assert_unchanged(bapi)
    flat = [out[0]] + ([out[1]] if c.n_states == 1 else list(out[1]))
    assert_no_alias(flat, bsnap.inputs() + res + list(c.params.values()), bapi)
    if cls == "RNNCell":
        rg = R.rnn_step_backward(dh[0], rc)
        want = [rg[0], rg[1]]
        pg = dict(weight_ih=rg[2].T, weight_hh=rg[3].T, bias_ih=rg[4], bias_hh=rg[4])
    elif cls == "GRUCell":
        rg = R.gru_step_backward(dh[0], rc)
        want = [rg[0], rg[1]]
        pg = dict(weight_ih=rg[2].T, weight_hh=rg[3].T, bias_ih=rg[4], bias_hh=rg[5])
    else:
        rg = R.lstm_step_backward(dh[0], dh[1], rc)
        want = [rg[0], rg[1], rg[2]]
        pg = dict(weight_ih=rg[3].T, weight_hh=rg[4].T, bias_ih=rg[5], bias_hh=rg[5])
    for a, r in zip(flat, want):
        assert_matches(a[None] if unbatched else a, r, dt, bapi)
    for k, g in c.grads.items():
        assert_matches(g, pg[k], dt, f"{bapi} grads[{k}]")
    count(bapi, "ok")


# ---------------------------------------------------------------- nn layers
@examples(100)
@given(data=st.data())
def test_nn_layers_bad_input(data):
    which = data.draw(st.sampled_from(["Linear", "Embedding", "Dropout", "Sequential"]))
    dt = data.draw(st.sampled_from(FLOATS))
    lead = tuple(data.draw(st.lists(st.integers(0, 3), min_size=0, max_size=2)))
    D = data.draw(st.integers(1, 3))
    Fo = data.draw(st.integers(1, 3))
    layout = data.draw(st.sampled_from(LAYOUTS))
    kind = data.draw(st.sampled_from(["valid"] * 3 + ["dtype", "shape", "nan", "dout"]))
    bad_dtype = data.draw(st.sampled_from([np.complex128, object, bool, "U3"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    api = f"nn.{which}"
    if which == "Embedding":
        V = D + 2
        layer = nn.Embedding(V, Fo, dtype=dt, seed=0)
        idx = rng.integers(0, V, size=lead)
        arg = idx
        if kind == "dtype":
            arg = idx.astype(np.float64)
            with pytest.raises(TypeError) as ei:
                layer(arg)
            assert_error_names(ei.value, "idx", api)
            count(f"{api}.forward", "error")
            return
        if kind == "shape" and idx.size:
            arg = idx.copy()
            arg.flat[0] = V
            with pytest.raises(ValueError) as ei:
                layer(arg)
            assert_error_names(ei.value, "idx", api)
            count(f"{api}.forward", "error")
            return
        snap = Snapshot(idx=arg)
        out = layer(arg)
        snap.assert_unchanged(api)
        assert_no_alias(out, [arg, layer.params["weight"]], api)
        np.testing.assert_array_equal(out, layer.params["weight"][idx])
        dout = rng.standard_normal(out.shape).astype(dt)
        layer.zero_grad()
        assert layer.backward(dout) is None
        want = np.zeros_like(layer.params["weight"])
        np.add.at(want, idx.reshape(-1), dout.reshape(-1, Fo))
        assert_matches(layer.grads["weight"], want, dt, api)
        count(f"{api}.forward", "ok")
        return
    if which == "Linear":
        layer = nn.Linear(D, Fo, dtype=dt, seed=0)
    elif which == "Dropout":
        layer = nn.Dropout(0.0 if data.draw(st.booleans()) else 0.5, seed=0)
    else:
        layer = nn.Sequential(nn.Linear(D, Fo, dtype=dt, seed=0), nn.Dropout(0.0, seed=0),
                              nn.Linear(Fo, 2, dtype=dt, seed=1))
    x = rng.standard_normal(lead + (D,)).astype(dt)
    if kind == "nan" and x.size:
        x.flat[0] = np.nan
    x_arg = with_layout(x, layout) if x.ndim else x
    if kind == "dtype":
        x_arg = x.astype(bad_dtype)
        with pytest.raises(TypeError) as ei:
            layer(x_arg)
        assert_error_names(ei.value, "x", api)
        count(f"{api}.forward", "error")
        return
    if kind == "shape" and which != "Dropout":
        x_arg = np.zeros(lead + (D + 1,), dt)
        with pytest.raises(ValueError) as ei:
            layer(x_arg)
        assert_error_names(ei.value, ["x", "in_features"], api)
        count(f"{api}.forward", "error")
        return
    snap = Snapshot(x=x_arg)
    out = layer(x_arg)
    snap.assert_unchanged(api)
    assert_no_alias(out, [a for a in snap.inputs()] + list(layer.params.values()), api)
    if which == "Linear":
        want = x @ layer.params["weight"].T + layer.params["bias"]
        assert_matches(out, want, dt, api)
    elif which == "Dropout" and layer.p == 0.0:
        assert_matches(out, x, dt, api)
    elif which == "Dropout":
        kept = out != 0
        assert_matches(out[kept], 2 * x[kept], dt, api)
    count(f"{api}.forward", "ok")
    dout = rng.standard_normal(out.shape).astype(dt)
    if kind == "dout":
        with pytest.raises((ValueError, TypeError)) as ei:
            layer.backward(np.zeros(out.shape + (1,), dt))
        assert_error_names(ei.value, "dout", api)
        count(f"{api}.backward", "error")
        return
    bsnap = Snapshot(dout=dout)
    dx = layer.backward(dout)
    bsnap.assert_unchanged(api)
    assert_no_alias(dx, [dout] + snap.inputs() + [out] + list(layer.params.values()), api)
    assert dx.shape == x.shape
    count(f"{api}.backward", "ok")


# ---------------------------------------------------------------- losses
def _ref_cross_entropy(z, y, counted):
    z = z.astype(np.float64)
    m = z.max(-1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(-1)) + m[..., 0]
    yy = np.where(counted, y, 0)
    picked = np.take_along_axis(z, yy[..., None], -1)[..., 0]
    return np.where(counted, lse - picked, 0.0)


@examples(120)
@given(data=st.data())
def test_losses_bad_input(data):
    which = data.draw(st.sampled_from(["cross_entropy", "mse_loss", "bce", "last_step",
                                       "last_step_backward"]))
    dt = data.draw(st.sampled_from(FLOATS))
    lead = tuple(data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=2)))
    C = data.draw(st.integers(1, 4))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"]))
    kind = data.draw(st.sampled_from(["valid"] * 3 + ["dtype", "shape", "target_dtype",
                                                      "target_range", "reduction", "special"]))
    layout = data.draw(st.sampled_from(LAYOUTS))
    special = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
    bad_dtype = data.draw(st.sampled_from([np.complex128, object, bool]))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    api = f"losses.{which}"

    def expect_error(exc, names, fn, *a, **kw):
        snap = Snapshot(a=list(a), kw=kw)
        with pytest.raises(exc) as ei:
            fn(*a, **kw)
        assert_error_names(ei.value, names, api)
        snap.assert_unchanged(api)
        count(api, "error")

    if which == "cross_entropy":
        z = rng.standard_normal(lead + (C,)).astype(dt)
        y = rng.integers(0, C, size=lead)
        if kind == "dtype":
            return expect_error(TypeError, "logits", losses.cross_entropy, z.astype(bad_dtype), y)
        if kind == "shape":
            return expect_error(ValueError, "target", losses.cross_entropy, z, y[..., None])
        if kind == "target_dtype":
            return expect_error(TypeError, "target", losses.cross_entropy, z, y.astype(float))
        if kind == "target_range" and y.size:
            y2 = y.copy()
            y2.flat[0] = C
            return expect_error(ValueError, "target", losses.cross_entropy, z, y2)
        if kind == "reduction":
            return expect_error(ValueError, "reduction", losses.cross_entropy, z, y,
                                reduction="avg")
        if kind == "special" and z.size:
            z.flat[0] = special
        z_arg = with_layout(z, layout)
        snap = Snapshot(z=z_arg, y=y)
        loss, dz = losses.cross_entropy(z_arg, y, reduction=reduction)
        snap.assert_unchanged(api)
        assert_no_alias(dz, snap.inputs(), api)
        want = _ref_cross_entropy(z, y, np.ones(y.shape, bool))
        if reduction == "none":
            assert_matches(loss, want, np.float64 if dt == np.float64 else dt, api)
        elif reduction == "sum":
            assert_matches(np.float64(loss), want.sum(), dt, api)
        assert dz.shape == z.shape and dz.dtype == dt
        count(api, "ok")
        return
    if which in ("mse_loss", "bce"):
        fn = losses.mse_loss if which == "mse_loss" else losses.binary_cross_entropy_with_logits
        first = "pred" if which == "mse_loss" else "logits"
        p = rng.standard_normal(lead).astype(dt)
        t = rng.random(lead).astype(dt)
        if kind == "dtype":
            return expect_error(TypeError, first, fn, p.astype(bad_dtype), t)
        if kind in ("shape", "target_range"):
            return expect_error(ValueError, "target", fn, p, t[..., None])
        if kind == "target_dtype":
            return expect_error(TypeError, "target", fn, p, t.astype(bad_dtype))
        if kind == "reduction":
            return expect_error(ValueError, "reduction", fn, p, t, reduction=None)
        if kind == "special" and p.size:
            p.flat[0] = special
        p_arg = with_layout(p, layout)
        snap = Snapshot(p=p_arg, t=t)
        loss, d = fn(p_arg, t, reduction=reduction)
        snap.assert_unchanged(api)
        assert_no_alias(d, snap.inputs(), api)
        if which == "mse_loss":
            want = (p.astype(np.float64) - t) ** 2
        else:
            x = p.astype(np.float64)
            want = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        if reduction == "none":
            assert_matches(loss, want, dt, api)
        elif reduction == "sum":
            assert_matches(np.float64(loss), want.sum(), dt, api)
        count(api, "ok")
        return
    N = lead[0]
    T = data.draw(st.integers(1, 3))
    lengths = rng.integers(1, T + 1, size=N)
    if which == "last_step":
        h = rng.standard_normal((N, T, C)).astype(dt)
        if kind == "shape":
            return expect_error(ValueError, "h", losses.last_step, h[..., 0], lengths)
        if kind == "target_dtype":
            return expect_error(TypeError, "lengths", losses.last_step, h, lengths.astype(float))
        if kind == "target_range" and N:
            bad = lengths.copy()
            bad[0] = T + 1
            return expect_error(ValueError, "lengths", losses.last_step, h, bad)
        h_arg = with_layout(h, layout)
        snap = Snapshot(h=h_arg, lengths=lengths)
        out = losses.last_step(h_arg, lengths)
        snap.assert_unchanged(api)
        assert_no_alias(out, snap.inputs(), api)
        np.testing.assert_array_equal(out, h[np.arange(N), lengths - 1])
        count(api, "ok")
        return
    d = rng.standard_normal((N, C)).astype(dt)
    if kind == "shape":
        return expect_error(ValueError, "dlast", losses.last_step_backward, d[..., None],
                            lengths, T)
    if kind == "dtype":
        return expect_error(TypeError, "dlast", losses.last_step_backward, d.astype(bad_dtype),
                            lengths, T)
    if kind == "target_range" and N:
        bad = lengths.copy()
        bad[0] = 0
        return expect_error(ValueError, "lengths", losses.last_step_backward, d, bad, T)
    d_arg = with_layout(d, layout)
    snap = Snapshot(d=d_arg, lengths=lengths)
    out = losses.last_step_backward(d_arg, lengths, T)
    snap.assert_unchanged(api)
    assert_no_alias(out, snap.inputs(), api)
    want = np.zeros((N, T, C), dt)
    want[np.arange(N), lengths - 1] = d
    np.testing.assert_array_equal(out, want)
    count(api, "ok")


# ---------------------------------------------------------------- clipping
@examples(60)
@given(data=st.data())
def test_clip_grad_norm_bad_input(data):
    dt = data.draw(st.sampled_from(FLOATS))
    shapes = data.draw(st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=2),
                                min_size=0, max_size=3))
    norm_type = data.draw(st.sampled_from([1.0, 2.0, 3.0, np.inf]))
    max_norm = data.draw(st.sampled_from([0.0, 0.5, 1.0, 1e6]))
    special = data.draw(st.sampled_from(["none", "none", "nan", "inf", "huge"]))
    kind = data.draw(st.sampled_from(["valid"] * 3 + ["neg_max", "nonfinite_raise", "dict"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    grads = [rng.standard_normal(tuple(s)).astype(dt) for s in shapes]
    if special != "none" and grads and grads[0].size:
        grads[0].flat[0] = {"nan": np.nan, "inf": np.inf, "huge": 1e30}[special]
    api = "utils.clip_grad_norm_"
    before = [g.copy() for g in grads]
    if kind == "neg_max":
        with pytest.raises(ValueError) as ei:
            rnncore.clip_grad_norm_(grads, -1.0)
        assert_error_names(ei.value, "max_norm", api)
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(g, b)
        count(api, "error")
        return
    finite = all(np.all(np.isfinite(g)) for g in grads)
    # PyTorch (and rnncore) take each tensor's norm in its own dtype: a finite float32
    # gradient above ~1.8e19 has an infinite 2-norm (then every gradient is zeroed)
    with np.errstate(over="ignore"):
        norms = [float(np.linalg.norm(g.ravel(), ord=norm_type)) if g.size else 0.0
                 for g in grads]
    with np.errstate(over="ignore"):
        total_ref = float(np.linalg.norm(np.asarray(norms), ord=norm_type)) if grads else 0.0
    if kind == "nonfinite_raise":
        if not np.isfinite(total_ref):
            with pytest.raises(RuntimeError, match="non-finite"):
                rnncore.clip_grad_norm_(grads, max_norm, norm_type=norm_type,
                                        error_if_nonfinite=True)
            for g, b in zip(grads, before):  # nothing scaled before raising
                np.testing.assert_array_equal(g, b)
            count(api, "fault")
            return
    arg = {f"p{i}": g for i, g in enumerate(grads)} if kind == "dict" else grads
    total = rnncore.clip_grad_norm_(arg, max_norm, norm_type=norm_type)
    if np.isfinite(total_ref):
        np.testing.assert_allclose(total, total_ref, rtol=1e-5 if dt == np.float32 else 1e-12)
        coef = min(1.0, max_norm / (total_ref + 1e-6))
        for g, b in zip(grads, before):
            np.testing.assert_allclose(g, b * np.asarray(coef, dt),
                                       rtol=1e-5 if dt == np.float32 else 1e-12, atol=1e-30)
    else:
        assert not np.isfinite(total)
    count(api, "ok" if finite else "fault")


def test_clip_grad_norm_nonfinite_raises_and_value_clip():
    g = {"w": np.array([1.0, np.nan]), "b": np.array([3.0])}
    with pytest.raises(RuntimeError, match="non-finite"):
        rnncore.clip_grad_norm_(g, 1.0, error_if_nonfinite=True)
    np.testing.assert_array_equal(g["b"], [3.0])
    g = [np.array([np.inf, 1.0], np.float32)]
    with pytest.raises(RuntimeError):
        rnncore.clip_grad_norm_(g, 1.0, norm_type=np.inf, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="clip_value"):
        rnncore.clip_grad_value_([np.ones(2)], -1)
    count("utils.clip_grad_norm_", "fault")


# ---------------------------------------------------------------- NaN propagation
@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("dt", FLOATS)
def test_nan_in_input_propagates_to_output_row(name, dt):
    """A NaN at x[n, t] makes h[n, t:] NaN (a fully coupled cell) and nothing else."""
    fn, _, bfn, _ = _fwd_fns(name)
    rng = np.random.default_rng(5)
    N, T, D, H = 3, 6, 2, 4
    args = _spec_args(name, rng, N, T, D, H, dt, scale=0.5)
    clean = _split_result(name, _call_forward(name, fn, args, _nl(name)))[0]
    args["x"] = args["x"].copy()
    args["x"][1, 2, 0] = np.nan
    outs, cache = _split_result(name, _call_forward(name, fn, args, _nl(name)))
    h = outs[0]
    assert np.all(np.isnan(h[1, 2:])), "NaN did not propagate forward in time"
    assert not np.any(np.isnan(h[1, :2])), "NaN propagated backward in time"
    for n in (0, 2):
        np.testing.assert_array_equal(h[n], clean[0][n])  # other rows untouched
    grads = _call_backward(name, bfn, [np.ones_like(o) for o in outs], cache,
                           [np.zeros((N, H), dt)] * 2)
    assert np.all(np.isnan(grads[-1])), "bias gradient of a NaN forward must be NaN"
    count(f"functional.{name}_forward[nan]", "fault")


# ---------------------------------------------------------------- segfault guard
FUZZ = r"""
import sys, numpy as np
from rnncore._kernels import rnn as K_rnn
try:
    from rnncore._kernels import gru as K_gru, lstm as K_lstm
except ImportError:
    K_gru = K_lstm = None
n_examples = int(sys.argv[1]); seed = int(sys.argv[2])
rng = np.random.default_rng(seed)

def arr(shape, dt):
    # a random layout: C, F, transposed, strided, negative, zero-size
    shape = tuple(max(0, int(s)) for s in shape)
    r = rng.integers(0, 10)
    if r >= 6:
        return rng.standard_normal(shape).astype(dt)
    if r == 0:
        return np.zeros(shape, dt)
    if r == 1:
        return np.asfortranarray(np.ones(shape, dt))
    if r == 2 and len(shape) >= 2:
        return np.ones(shape[::-1], dt).T
    if r == 3 and len(shape) >= 1:
        big = np.ones(shape[:-1] + (2 * shape[-1] + 1,), dt)
        return big[..., 1::2][..., :shape[-1]]
    if r == 4 and len(shape) >= 1:
        return np.ones(shape, dt)[::-1]
    return rng.standard_normal(shape).astype(dt)

def jitter(s):
    return s if rng.random() < 0.93 else max(0, s + int(rng.integers(-1, 3)))

import traceback
ok = err = 0
bounds = {}   # IndexError = a Cython bounds check fired (debug build): site -> count

def oob(e):
    tb = traceback.extract_tb(e.__traceback__)[-1]
    site = f"{tb.filename.split('/')[-1]}:{tb.lineno}: {tb.line} ({e})"
    bounds[site] = bounds.get(site, 0) + 1

for i in range(n_examples):
    dt = np.float32 if rng.random() < 0.5 else np.float64
    odt = dt if rng.random() < 0.95 else (np.float64 if dt == np.float32 else np.float32)
    T, N, D, H = (int(v) for v in rng.integers(0, 4, size=4))
    cell = rng.choice(["rnn", "gru", "lstm"] if K_gru is not None else ["rnn"])
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    j = jitter
    bs = None
    if rng.random() < 0.3:
        bs = np.sort(rng.integers(-1, N + 2, size=j(T)))[::-1].copy()
    rev = bool(rng.random() < 0.5)
    try:
        x = arr((j(T), j(N), j(D)), dt)
        h0 = arr((j(N), j(H)), odt)
        Wx = arr((j(D), j(G * H)), dt); Wh = arr((j(H), j(G * H)), dt)
        h = arr((j(T), j(N), j(H)), dt)
        if cell == "rnn":
            b = arr((j(H),), dt)
            K_rnn.forward(x, h0, Wx, Wh, b, h, bool(rng.random() < .5), rev, bs)
            saved = None
        elif cell == "gru":
            b = arr((j(G * H),), dt)
            saved = K_gru.forward(x, h0, Wx, Wh, b, arr((j(G * H),), dt), h, rev, bs)
        else:
            c = arr((j(T), j(N), j(H)), dt)
            saved = K_lstm.forward(x, h0, arr((j(N), j(H)), dt), Wx, Wh, arr((j(G * H),), dt),
                                   h, c, rev, bs)
        ok += 1
    except (ValueError, TypeError, BufferError):
        err += 1
        continue
    except IndexError as e:
        oob(e)
        continue
    # backward with (possibly) mismatched gradient buffers
    try:
        dh = arr((j(T), j(N), j(H)), dt); dhn = arr((j(N), j(H)), dt)
        dx = arr((j(T), j(N), j(D)), dt); dh0 = arr((j(N), j(H)), dt)
        dWx = arr((j(D), j(G * H)), dt); dWh = arr((j(H), j(G * H)), dt)
        if cell == "rnn":
            K_rnn.backward(dh, dhn, x, h0, Wx, Wh, h, dx, dh0, dWx, dWh, arr((j(H),), dt),
                           False, rev, bs)
        elif cell == "gru":
            K_gru.backward(dh, dhn, x, h0, Wx, Wh, arr((j(G * H),), dt), h, saved, dx, dh0,
                           dWx, dWh, arr((j(G * H),), dt), arr((j(G * H),), dt), rev, bs)
        else:
            K_lstm.backward(dh, dhn, arr((j(N), j(H)), dt), x, h0, arr((j(N), j(H)), dt), Wx,
                            Wh, h, c, saved, dx, dh0, arr((j(N), j(H)), dt), dWx, dWh,
                            arr((j(G * H),), dt), rev, bs)
        ok += 1
    except (ValueError, TypeError, BufferError):
        err += 1
    except IndexError as e:
        oob(e)
for site, n in bounds.items():
    print(f"BOUNDS {n}x {site}")
print(f"FUZZ ok={ok} err={err}")
sys.exit(3 if bounds else 0)
"""


def test_kernel_entry_points_never_crash_subprocess(tmp_path):
    """Fuzz the kernels' def entry points (inconsistent shapes, strides, dtypes,
    batch_sizes, foreign saved state) in a child process: every call returns or
    raises ValueError/TypeError/BufferError; a segfault or abort fails the test."""
    n = 3000 if LONG else 400
    script = tmp_path / "fuzz.py"
    script.write_text(same_rnncore_prelude() + textwrap.dedent(FUZZ))
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    for seed in (0, 1):
        proc = subprocess.run([sys.executable, str(script), str(n), str(seed)], env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, (
            f"kernel fuzz crashed or hit a bounds check (exit {proc.returncode}, seed {seed}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FUZZ")][-1]
        ok = int(line.split("ok=")[1].split()[0])
        err = int(line.split("err=")[1])
        assert ok > 0 and err > 0, line  # both paths were exercised
        count("_kernels.*.forward/backward (subprocess fuzz)", "ok")
        for _ in range(ok - 1):
            count("_kernels.*.forward/backward (subprocess fuzz)", "ok")
        for _ in range(err):
            count("_kernels.*.forward/backward (subprocess fuzz)", "error")


@pytest.mark.parametrize("cls", MODEL_CLASSES)
@pytest.mark.parametrize("special", [np.inf, -np.inf, np.nan, 1e300])
@pytest.mark.parametrize("lengths", [None, [5, 3, 5, 2]])
def test_batch_first_weight_grads_equal_time_major_with_non_finite_values(cls, special,
                                                                         lengths):
    """batch_first=True (the straddle-corrected dWh, both directions) gives the weight
    gradients of batch_first=False (no straddling pairs) -- same NaN/inf pattern, finite
    parts close -- when sequences end or start with inf/NaN/huge values."""
    rng = np.random.default_rng(7)
    kw = dict(nonlinearity="relu") if cls == "RNN" else {}
    T, N, D, H = 5, 4, 3, 3
    x = rng.standard_normal((T, N, D))
    last = [T - 1] * N if lengths is None else [n - 1 for n in lengths]
    x[last[1], 1] = special          # row 1 ends with it (the forward straddle's h)
    x[0, 2, 0] = special             # row 2 starts with it (the reverse straddle's h)
    dout = rng.standard_normal((T, N, 2 * H))
    grads = []
    for bf in (False, True):
        m = getattr(rnncore, cls)(D, H, bidirectional=True, batch_first=bf, dtype=np.float64,
                                  seed=3, **kw)
        xb = x.transpose(1, 0, 2).copy() if bf else x
        out, _ = m(xb, lengths=lengths)
        m.backward(dout.transpose(1, 0, 2).copy() if bf else dout)
        grads.append(m.grads)
    for k in grads[0]:
        assert_matches(grads[1][k], grads[0][k], np.float64, f"{cls} {k}")


INT_MAX_PROBE = r"""
import sys, numpy as np
from numpy.lib.stride_tricks import as_strided
from rnncore._kernels import rnn as K
buf = np.zeros(64)
LD = 2**32 + 1                # wraps to 1 as a 32-bit int: BLAS would accept it, wrongly
T, N, D, H = 2, 2, 1, 2
ok = lambda *s: np.zeros(s)
cases = {
    # time-major x whose rows are LD elements apart (never read: refused first)
    "x": lambda: K.forward(as_strided(buf, (T, N, D), (N * LD * 8, LD * 8, 8)), ok(N, H),
                           ok(D, H), ok(H, H), ok(H), np.empty((T, N, H))),
    "Wx": lambda: K.forward(ok(T, N, 2), ok(N, H), as_strided(buf, (2, H), (LD * 8, 8)),
                            ok(H, H), ok(H), np.empty((T, N, H))),
    "Wh": lambda: K.forward(ok(T, N, D), ok(N, H), ok(D, H),
                            as_strided(buf, (H, H), (LD * 8, 8)), ok(H), np.empty((T, N, H))),
    "h": lambda: K.forward(ok(T, N, D), ok(N, H), ok(D, H), ok(H, H), ok(H),
                           as_strided(np.zeros(64), (T, N, H), (N * LD * 8, LD * 8, 8))),
}
for name, call in cases.items():
    try:
        call()
        print(name, "ACCEPTED")
    except ValueError as e:
        print(name, "ValueError", str(e).split(":")[0], "INT_MAX" in str(e))
"""


def test_blas_sizes_past_int_max_raise_value_error():
    """Issue 17 item 5: a BLAS size or leading dimension past INT_MAX is refused at the
    entry point (before nogil) instead of wrapping in _blas.pxd's int casts. Run in a
    child: without the guard the kernel would read the views' far-away elements."""
    r = subprocess.run([sys.executable, "-c", INT_MAX_PROBE], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = r.stdout.split("\n")
    for name in ("x", "Wx", "Wh", "h"):
        assert f"{name} ValueError {name} True" in lines, r.stdout
    count("kernels (BLAS size > INT_MAX)", "error")


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_reference_checks_its_arguments_like_the_kernels(cell):
    """Issue 17 item 7: the specification refuses what the kernels refuse, naming the
    argument (a 1-D h0 gave IndexError; a dh of T+1 steps was accepted)."""
    rng = np.random.default_rng(0)
    N, T, D, H = 2, 3, 4, 5
    G = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    x, h0 = rng.standard_normal((N, T, D)), rng.standard_normal((N, H))
    Wx, Wh = rng.standard_normal((D, G * H)), rng.standard_normal((H, G * H))
    biases = [np.zeros(G * H)] * (2 if cell == "gru" else 1)
    fwd, bwd = getattr(R, f"{cell}_forward"), getattr(R, f"{cell}_backward")
    bad_calls = {
        "h0": lambda: fwd(x, h0[0], Wx, Wh, *biases),
        "x": lambda: fwd(x[0], h0, Wx, Wh, *biases),
        "Wh": lambda: fwd(x, h0, Wx, Wh[:, :-1], *biases),
        "Wx": lambda: fwd(x, h0, Wx[1:], Wh, *biases),
    }
    for name, call in bad_calls.items():
        with pytest.raises(ValueError, match=f"^{name}: "):
            call()
    cache = fwd(x, h0, Wx, Wh, *biases)[-1]
    for name, kw in (("dh", dict(dh=np.ones((N, T + 1, H)))),
                     ("dh", dict(dh=np.ones((N, T, H + 1)))),
                     ("dhn", dict(dh=np.ones((N, T, H)), dhn=np.ones((N + 1, H))))):
        with pytest.raises(ValueError, match=f"^{name}: "):
            bwd(cache=cache, **kw)
    count(f"reference.{cell}_forward/backward (bad shapes)", "error")
