"""Long sequences: T = 100,000 steps (N=2, D=4, H=8) forward and backward.

No recursion, no quadratic memory, and the same numbers as short runs:

* forward: the first ``P`` steps equal :mod:`rnncore.reference` on the prefix
  (causality), and running the sequence in two chunks with the state carried
  equals running it at once;
* backward: ``dx`` of the last ``P`` steps equals the reference's backward of
  the suffix started from the kernel's state at ``T - P`` (a gradient at step
  t only depends on steps >= t), and two-chunk BPTT (the second chunk's
  ``dh0``/``dc0`` fed as the first chunk's ``dhn``/``dcn``) equals the
  one-shot backward, weight gradients included;
* models: an RNN/GRU/LSTM model equals the functional path on the same
  weights at T = 100,000, and a 2-layer bidirectional model with ``lengths``
  runs forward and backward;
* memory: the tracemalloc peak (NumPy reports its buffers to tracemalloc) of
  forward + backward stays below a linear bound in T (a quadratic buffer at
  T = 100,000 would be ~10^10 elements).

The T = 1,000,000 cases are marked ``slow``: they run with ``--runslow``,
``RNNCORE_SLOW=1`` or in long mode (``RNNCORE_LONG_TESTS=1``).
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import rnncore
from rnncore import functional as F
from rnncore import reference as R

from _reliability import assert_matches, count

N, D, H = 2, 4, 8
P = 300  # prefix / suffix length compared with the reference
G = {"rnn": 1, "gru": 3, "lstm": 4}


def _args(name, T, rng):
    g = G[name]
    x = rng.standard_normal((N, T, D))
    h0 = rng.standard_normal((N, H)) * 0.5
    Wx = rng.standard_normal((D, g * H)) * 0.4
    Wh = rng.standard_normal((H, g * H)) * 0.4
    if name == "rnn":
        return dict(x=x, h0=h0, Wx=Wx, Wh=Wh, b=rng.standard_normal(H) * 0.1)
    if name == "gru":
        return dict(x=x, h0=h0, Wx=Wx, Wh=Wh, bx=rng.standard_normal(g * H) * 0.1,
                    bh=rng.standard_normal(g * H) * 0.1)
    return dict(x=x, h0=h0, Wx=Wx, Wh=Wh, b=rng.standard_normal(g * H) * 0.1,
                c0=rng.standard_normal((N, H)) * 0.5)


def _fwd(mod, name, a):
    f = getattr(mod, f"{name}_forward")
    if name == "lstm":
        h, c, cache = f(a["x"], a["h0"], a["Wx"], a["Wh"], a["b"], c0=a["c0"])
        return [h, c], cache
    rest = (a["b"],) if name == "rnn" else (a["bx"], a["bh"])
    h, cache = f(a["x"], a["h0"], a["Wx"], a["Wh"], *rest)
    return [h], cache


def _bwd(mod, name, dh, cache, dhn, dcn=None):
    f = getattr(mod, f"{name}_backward")
    if name == "lstm":
        return f(dh, cache, dhn=dhn, dcn=dcn)
    return f(dh, cache, dhn=dhn)


def _with(a, **kw):
    b = dict(a)
    b.update(kw)
    return b


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("T", [100_000, pytest.param(1_000_000, marks=pytest.mark.slow)])
def test_long_sequence_functional(name, T):
    rng = np.random.default_rng(0)
    a = _args(name, T, rng)
    dh = rng.standard_normal((N, T, H))
    dhn = rng.standard_normal((N, H))
    dcn = rng.standard_normal((N, H)) if name == "lstm" else None

    tracemalloc.start()
    try:
        outs, cache = _fwd(F, name, a)
        grads = _bwd(F, name, dh, cache, dhn, dcn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # inputs + outputs + saved gates + workspaces: a few dozen floats per (t, n)
    per_step = N * (D + G[name] * H + 4 * H) * 8
    assert peak < 40 * per_step * T, f"peak {peak / 2**20:.0f} MiB is not linear in T"
    h = outs[0]
    assert np.all(np.isfinite(h)) and all(np.all(np.isfinite(g)) for g in grads)

    # forward prefix == reference
    ref_outs, _ = _fwd(R, name, _with(a, x=a["x"][:, :P]))
    for o, r in zip(outs, ref_outs):
        assert_matches(o[:, :P], r, np.float64, f"{name} prefix")

    # backward suffix == reference started from the kernel's state at T - P
    s0 = dict(h0=h[:, T - P - 1])
    if name == "lstm":
        s0["c0"] = outs[1][:, T - P - 1]
    _, rcache = _fwd(R, name, _with(a, x=a["x"][:, T - P:], **s0))
    rgrads = _bwd(R, name, dh[:, T - P:], rcache, dhn, dcn)
    assert_matches(grads[0][:, T - P:], rgrads[0], np.float64, f"{name} suffix dx")

    # two chunks == one shot, forward and backward
    cut = T // 2 + 17
    o1, c1 = _fwd(F, name, _with(a, x=a["x"][:, :cut]))
    s1 = dict(h0=o1[0][:, -1])
    if name == "lstm":
        s1["c0"] = o1[1][:, -1]
    o2, c2 = _fwd(F, name, _with(a, x=a["x"][:, cut:], **s1))
    for o, p1, p2 in zip(outs, o1, o2):
        np.testing.assert_allclose(np.concatenate([p1, p2], axis=1), o, rtol=0, atol=1e-12)
    g2 = _bwd(F, name, dh[:, cut:], c2, dhn, dcn)
    if name == "lstm":
        g1 = _bwd(F, name, dh[:, :cut], c1, g2[1], g2[2])
        nw = 3
    else:
        g1 = _bwd(F, name, dh[:, :cut], c1, g2[1])
        nw = 2
    np.testing.assert_allclose(np.concatenate([g1[0], g2[0]], axis=1), grads[0], atol=1e-10)
    for i in range(1, nw):  # dh0 (and dc0)
        np.testing.assert_allclose(g1[i], grads[i], atol=1e-10)
    for i in range(nw, len(grads)):  # weight gradients add up over the chunks
        np.testing.assert_allclose(g1[i] + g2[i], grads[i], rtol=1e-9, atol=1e-8)
    count(f"long.functional.{name} (T={T})", "ok")


@pytest.mark.parametrize("cls", ["RNN", "GRU", "LSTM"])
def test_long_sequence_models(cls):
    T = 100_000
    rng = np.random.default_rng(1)
    m = getattr(rnncore, cls)(D, H, dtype=np.float64, seed=0)
    x = rng.standard_normal((T, N, D))
    out, fin = m(x)
    dout = rng.standard_normal(out.shape)
    m.zero_grad()
    dx, _ = m.backward(dout)
    # the functional path on the same weights (time-major model vs batch-major functional)
    p = m.params
    a = dict(x=x.transpose(1, 0, 2), h0=np.zeros((N, H)), Wx=p["weight_ih_l0"].T,
             Wh=p["weight_hh_l0"].T)
    name = cls.lower()
    if name == "rnn":
        a["b"] = p["bias_ih_l0"] + p["bias_hh_l0"]
    elif name == "gru":
        a["bx"], a["bh"] = p["bias_ih_l0"], p["bias_hh_l0"]
    else:
        a["b"], a["c0"] = p["bias_ih_l0"] + p["bias_hh_l0"], np.zeros((N, H))
    outs, cache = _fwd(F, name, a)
    np.testing.assert_allclose(out, outs[0].transpose(1, 0, 2), rtol=0, atol=1e-12)
    grads = _bwd(F, name, dout.transpose(1, 0, 2), cache, np.zeros((N, H)),
                 np.zeros((N, H)) if name == "lstm" else None)
    np.testing.assert_allclose(dx, grads[0].transpose(1, 0, 2), atol=1e-10)
    nw = 3 if name == "lstm" else 2
    np.testing.assert_allclose(m.grads["weight_ih_l0"], grads[nw].T, rtol=1e-9, atol=1e-8)
    np.testing.assert_allclose(m.grads["weight_hh_l0"], grads[nw + 1].T, rtol=1e-9, atol=1e-8)

    # 2 layers, bidirectional, variable lengths, batch_first, float32
    m2 = getattr(rnncore, cls)(D, H, num_layers=2, bidirectional=True, batch_first=True,
                               seed=0)
    xb = x.transpose(1, 0, 2).astype(np.float32)
    lengths = np.array([T, T // 3])
    out2, _ = m2(xb, lengths=lengths)
    assert out2.shape == (N, T, 2 * H) and np.all(np.isfinite(out2))
    assert not np.any(out2[1, T // 3:])
    dx2, _ = m2.backward(np.ones_like(out2))
    assert dx2.shape == xb.shape and np.all(np.isfinite(dx2))
    assert not np.any(dx2[1, T // 3:])
    assert all(np.all(np.isfinite(g)) for g in m2.grads.values())
    count(f"long.models.{cls} (T={T})", "ok")
