"""Copying A into the register blocks' order before a packed product
(src/_kernels/rc_gemm_packed.h: rc_pk_pack_a_use, with the next-panel prefetch).

The copy changes where the kernel reads A from, not what it computes: every test
here compares the copying path (hook mode 2: always) with the in-place one (mode 0)
bit for bit, and against float64 products, on both packed layouts and through
every kernel module's loops (forward, backward and the dW kernel), and checks the
rule (mode 1): the AVX2 layout with a packed weight of 4 MiB or more only. The
default is mode 0 (never): see rc_gemm_packed.h for the measurements.
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED, assert_close_f32, assert_close_f64
from test_gemm_packed import LAYOUTS, _operand
from test_linear_kernel import _threaded

import rnncore
from rnncore._kernels import gru as KG
from rnncore._kernels import linear as KLin
from rnncore._kernels import lngru as KLG
from rnncore._kernels import lnlstm as KLL
from rnncore._kernels import lstm as KL
from rnncore._kernels import rnn as KR
from rnncore._kernels import simd

MODULES = {"rnn": KR, "gru": KG, "lstm": KL, "lngru": KLG, "lnlstm": KLL, "linear": KLin}

pytestmark = pytest.mark.skipif(not HAVE_PACKED, reason="no packed layout on this CPU")


@pytest.fixture
def pack_a_modes():
    """Restores every module's default (mode 0: never) after the test."""
    yield
    simd._set_pack_a(0)
    for mod in MODULES.values():
        mod._set_pack_a(0)


def _set_all(mode):
    simd._set_pack_a(mode)
    for mod in MODULES.values():
        mod._set_pack_a(mode)


def _check(got, want, dtype, name):
    (assert_close_f64 if dtype == np.float64 else assert_close_f32)(got, want, name=name)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
@pytest.mark.parametrize("source", ["row-major", "transposed"])
@pytest.mark.parametrize("layout", ["wide", "narrow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_copied_a_gives_bitwise_the_in_place_product(dtype, layout, source, beta, rng,
                                                     pack_a_modes):
    nr = LAYOUTS[dtype][layout]
    check_products(simd._set_pack_a, simd._pack_a_calls, dtype, nr, beta, rng,
                   [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 17, 32],
                   [1, nr - 1, nr, nr + 3, 3 * nr + 1], [1, 7, 64, 71], source)


def check_products(set_mode, count, dtype, nr, beta, rng, ms, ns, ks, source="row-major",
                   runs=lambda m, n: True):
    """C := A B + beta C on the layout of panel width ``nr`` with hook ``set_mode`` at
    0 and at 2, for each m, n, k: bitwise the same, close to the float64 product, and
    ``count()`` grew by one exactly at 2 where ``runs(m, n)`` (the path ran)."""
    for m in ms:
        for n in ns:
            for k in ks:
                a = rng.standard_normal((m, k + 3)).astype(dtype)[:, :k]   # lda > k
                b = _operand(rng, k, n, dtype, source)
                c0 = rng.standard_normal((m, n)).astype(dtype)
                got = {}
                for mode in (0, 2):
                    set_mode(mode)
                    calls = count()
                    c = c0.copy()
                    simd._gemm_packed(a, b, c, dtype(beta), nr)
                    assert count() - calls == (mode == 2 and runs(m, n)), (m, n, k)
                    got[mode] = c
                want = a.astype(np.float64) @ b.astype(np.float64) + beta * c0
                _check(got[2], want, dtype, f"C (m, n, k) = {(m, n, k)}")
                assert np.array_equal(got[0], got[2]), (m, n, k, beta)


def check_two_segments(set_mode, dtype, rng, cases):
    """[A | A2] [B; B2] (the default layout) with hook ``set_mode`` at 0 and at 2:
    bitwise the same, and close to the float64 product, at each (m, k, k2, n)."""
    for m, k, k2, n in cases:
        a = rng.standard_normal((m, k)).astype(dtype)
        a2 = rng.standard_normal((m, k2 + 2)).astype(dtype)[:, :k2]
        b = rng.standard_normal((k, n)).astype(dtype)
        b2 = rng.standard_normal((n, k2)).astype(dtype).T
        got = {}
        for mode in (0, 2):
            set_mode(mode)
            c = np.full((m, n), np.nan, dtype)       # beta = 0: written, never read
            simd._gemm_packed2(a, a2, b, b2, c, dtype(0))
            got[mode] = c
        want = a.astype(np.float64) @ b + a2.astype(np.float64) @ b2
        _check(got[2], want, dtype, f"(m, k, k2, n) = {(m, k, k2, n)}")
        assert np.array_equal(got[0], got[2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_copied_a_in_two_segments(dtype, rng, pack_a_modes):
    """[A | A2] [B; B2]: both segments go into the copy, A's k rows then A2's k2."""
    check_two_segments(simd._set_pack_a, dtype, rng,
                       [(1, 3, 5, 9), (6, 7, 64, 33), (13, 40, 9, 50), (8, 1, 1, 17)])


def test_the_rule_copies_on_the_avx2_layout_from_4_mib(rng, pack_a_modes):
    """Mode 1: a packed weight of >= 4 MiB on the AVX2 layout copies A; a smaller one,
    or the AVX-512 layout, reads it in place; mode 0 (the default) never copies."""
    _set_all(1)
    a = rng.standard_normal((8, 1024)).astype(np.float32)
    for n, layout, copies in [(1024, "narrow", True), (1008, "narrow", False),
                              (1024, "wide", False)]:
        b = rng.standard_normal((1024, n)).astype(np.float32)   # 4 MiB at n = 1024
        c = np.empty((8, n), np.float32)
        calls = simd._pack_a_calls()
        simd._gemm_packed(a, b, c, np.float32(0), LAYOUTS[np.float32][layout])
        assert simd._pack_a_calls() - calls == copies, (n, layout)
    simd._set_pack_a(0)
    calls = simd._pack_a_calls()
    simd._gemm_packed(a, b, c, np.float32(0), LAYOUTS[np.float32]["narrow"])
    assert simd._pack_a_calls() == calls


@pytest.mark.parametrize("name", list(MODULES))
def test_hook_rejects_unknown_modes(name):
    for hook in (MODULES[name]._set_pack_a, simd._set_pack_a):
        with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
            hook(3)


def _model_run(cls, kw, T, N, D, H, dtype, rng_seed, lengths=False):
    rng = np.random.default_rng(rng_seed)
    x = rng.standard_normal((N, T, D)).astype(dtype)
    m = cls(D, H, batch_first=True, dtype=dtype, seed=3, **kw)
    lens = rng.integers(1, T + 1, N) if lengths else None
    out, _ = m(x, lengths=lens)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx, _ = m.backward(dout)
    inf, _ = m(x, lengths=lens, train=False)
    return [out, dx, inf] + [g.copy() for g in m.grads.values()]


MODELS = {
    "rnn": (rnncore.RNN, {}, KR),
    "gru": (rnncore.GRU, {}, KG),
    "gru-rb": (rnncore.GRU, {"reset_after": False}, KG),
    "lstm": (rnncore.LSTM, {}, KL),
    "lstm-proj": (rnncore.LSTM, {"proj_size": 7}, KL),
    "lngru": (rnncore.GRU, {"layer_norm": True}, KLG),
    "lnlstm": (rnncore.LSTM, {"layer_norm": True}, KLL),
}


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_models_copying_a_are_bitwise_the_in_place_models(name, dtype, lengths, pack_a_modes):
    """Forward (fused [x_t | h] products too), backward, inference and the dW kernel
    (forced on where it takes the shapes: its packed products copy A too; the
    float32 reset-after GRU's here it does not) with A copied in every packed
    product give bitwise what they give reading it in place (the row split over 2
    threads where this machine allows it), and the copying path really ran."""
    check_models_bitwise(name, dtype, lengths, _set_all, "_pack_a_calls", "A copied")


def check_models_bitwise(name, dtype, lengths, set_all, counter, what):
    """One of MODELS run with every module's hook ``set_all`` at 0, then at 2 (the dW
    kernel forced on): the same arrays bit for bit, and the module's ``counter``
    (the name of its count of calls that took the path) grew."""
    cls, kw, mod = MODELS[name]
    T, N, D, H = 12, 29, 9, 24
    mod._set_weight_grads(2)
    try:
        set_all(0)
        base = _model_run(cls, kw, T, N, D, H, dtype, 5, lengths)
        set_all(2)
        calls = getattr(mod, counter)()
        got = _model_run(cls, kw, T, N, D, H, dtype, 5, lengths)
        assert getattr(mod, counter)() > calls
    finally:
        mod._set_weight_grads(1)
    for i, (g, b) in enumerate(zip(got, base)):
        assert np.array_equal(g, b), f"{name}: array {i} differs with {what}"


@_threaded
def test_linear_copying_a_is_bitwise_the_in_place_linear(rng, pack_a_modes):
    """nn.Linear's products on the kernels (x W^T and dy W on a packed weight; dW)."""
    check_linear_bitwise(rng, _set_all, KLin._pack_a_calls)


def check_linear_bitwise(rng, set_all, count):
    """nn.Linear forward and backward with every module's hook ``set_all`` at 0 and
    at 2: the same arrays bit for bit, and linear's ``count()`` grew only at 2."""
    x = rng.standard_normal((300, 96)).astype(np.float32)
    dy = rng.standard_normal((300, 130)).astype(np.float32)
    res = {}
    for mode in (0, 2):
        set_all(mode)
        calls = count()
        lin = rnncore.nn.Linear(96, 130, dtype=np.float32, seed=1)
        y = lin(x)
        dx = lin.backward(dy)
        assert (count() > calls) == (mode == 2)
        res[mode] = [y, dx] + [g.copy() for g in lin.grads.values()]
    for a, b in zip(res[0], res[2]):
        assert np.array_equal(a, b)


def default_counts(counter, n, widths):
    """In a fresh process (no hook called): A (8, 1024) B (1024, n), all ones, on the
    packed layout of each panel width in ``widths`` (the product checked), and
    ``simd``'s ``counter`` read after each: the counts as strings."""
    import subprocess
    import sys
    code = ("import numpy as np; from rnncore._kernels import simd\n"
            f"a = np.ones((8, 1024), np.float32); b = np.ones((1024, {n}), np.float32)\n"
            f"c = np.empty((8, {n}), np.float32); counts = []\n"
            f"for nr in {list(widths)}:\n"
            "    simd._gemm_packed(a, b, c, np.float32(0), nr)\n"
            "    assert (c == 1024).all()\n"
            f"    counts.append(simd.{counter}())\n"
            "print(*counts)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_default_never_copies():
    """A fresh process (no hook called) reads A in place even where the rule would copy."""
    assert default_counts("_pack_a_calls", 1024, [16]) == ["0"]
