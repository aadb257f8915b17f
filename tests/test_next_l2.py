"""The packed kernel's L2 prefetch of the next panel while it reads A in place
(src/_kernels/rc_gemm_packed.h: rc_pk_next_l2_use).

The prefetch changes what is in the caches, not what is computed: every test here
compares the prefetching path (hook mode 2: always) with the plain one (mode 0) bit
for bit and against float64 products: on both packed layouts in one segment, on the
CPU's layout in two ([A | A2] [B; B2]: the second segment prefetches the next
panel's rows after the first's), and through every kernel module's loops and
nn.Linear; and checks the rule
(mode 1, the default): the AVX2 layout with a packed weight of 8 MiB or more, and
never while A is copied (that path prefetches on its own).
"""
import numpy as np
import pytest

from conftest import HAVE_PACKED
from test_gemm_packed import LAYOUTS
from test_linear_kernel import _threaded
from test_pack_a import (MODELS, MODULES, _check, check_linear_bitwise, check_models_bitwise,
                         check_products, check_two_segments, default_counts)

from rnncore._kernels import simd

pytestmark = pytest.mark.skipif(not HAVE_PACKED, reason="no packed layout on this CPU")


def _set_all(mode):
    simd._set_next_l2(mode)
    for mod in MODULES.values():
        mod._set_next_l2(mode)


@pytest.fixture
def next_l2_modes():
    """Restores every module's default (mode 1: the rule) after the test."""
    yield
    _set_all(1)
    simd._set_pack_a(0)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
@pytest.mark.parametrize("layout", ["wide", "narrow"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_prefetching_gives_bitwise_the_plain_product(dtype, layout, beta, rng, next_l2_modes):
    nr = LAYOUTS[dtype][layout]
    # a single row's whole panels go 2-4 at a time to the row kernel, which does not
    # prefetch: a call of m = 1 prefetches (and counts) only with panels left over
    check_products(simd._set_next_l2, simd._next_l2_calls, dtype, nr, beta, rng,
                   [1, 2, 5, 6, 7, 8, 13, 32], [1, nr - 1, nr, nr + 3, 3 * nr + 1, 5 * nr],
                   [1, 7, 64], runs=lambda m, n: m > 1 or n < 2 * nr or n % nr != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_prefetching_in_two_segments(dtype, rng, next_l2_modes):
    """[A | A2] [B; B2] on the default layout, several panels (the prefetch reads the
    next panel's B2 rows after its B rows; the last panel prefetches itself)."""
    check_two_segments(simd._set_next_l2, dtype, rng,
                       [(1, 3, 5, 9), (6, 7, 64, 33), (13, 40, 9, 50), (8, 1, 1, 17),
                        (7, 64, 64, 100)])


def test_the_rule_prefetches_on_the_avx2_layout_from_8_mib(rng, next_l2_modes):
    """Mode 1: a packed weight of >= 8 MiB on the AVX2 layout prefetches; a smaller
    one (a panel less), the AVX-512 layout, or A copied (its own prefetch) does not;
    mode 0 never does."""
    _set_all(1)
    a = rng.standard_normal((8, 1024)).astype(np.float32)
    for n, layout, pack_a, used in [(2048, "narrow", 0, True), (2032, "narrow", 0, False),
                                    (2048, "wide", 0, False), (2048, "narrow", 2, False)]:
        simd._set_pack_a(pack_a)
        b = rng.standard_normal((1024, n)).astype(np.float32)   # 8 MiB at n = 2048
        c = np.empty((8, n), np.float32)
        calls = simd._next_l2_calls()
        simd._gemm_packed(a, b, c, np.float32(0), LAYOUTS[np.float32][layout])
        assert simd._next_l2_calls() - calls == used, (n, layout, pack_a)
        _check(c, a.astype(np.float64) @ b, np.float32, f"n = {n}, {layout}")
    simd._set_pack_a(0)
    # the bound is on B's padded size (n rounded up to whole panels) and on both
    # segments' rows: 2033 columns pad to 2048; 512 + 512 rows reach 8 MiB together
    b = rng.standard_normal((1024, 2033)).astype(np.float32)
    c = np.empty((8, 2033), np.float32)
    calls = simd._next_l2_calls()
    simd._gemm_packed(a, b, c, np.float32(0), LAYOUTS[np.float32]["narrow"])
    assert simd._next_l2_calls() - calls == 1
    if simd._gemm_packed_nr(np.float32) == LAYOUTS[np.float32]["narrow"]:   # packed2's layout
        a1, a2 = a[:, :512], a[:, 512:]
        for n, used in [(2048, True), (2032, False)]:
            b1 = rng.standard_normal((512, n)).astype(np.float32)
            b2 = rng.standard_normal((512, n)).astype(np.float32)
            c = np.empty((8, n), np.float32)
            calls = simd._next_l2_calls()
            simd._gemm_packed2(a1, a2, b1, b2, c, np.float32(0))
            assert simd._next_l2_calls() - calls == used, n
            _check(c, a1.astype(np.float64) @ b1 + a2.astype(np.float64) @ b2, np.float32,
                   f"two segments, n = {n}")
    simd._set_next_l2(0)
    calls = simd._next_l2_calls()
    simd._gemm_packed(a, b, np.empty((8, 2033), np.float32), np.float32(0),
                      LAYOUTS[np.float32]["narrow"])
    assert simd._next_l2_calls() == calls


@pytest.mark.parametrize("name", list(MODULES))
def test_hook_rejects_unknown_modes(name):
    for hook in (MODULES[name]._set_next_l2, simd._set_next_l2):
        for bad in (3, -1):
            with pytest.raises(ValueError, match="mode must be 0, 1 or 2"):
                hook(bad)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_models_prefetching_are_bitwise_the_plain_models(name, dtype, lengths, next_l2_modes):
    """Forward (fused [x_t | h] products: two segments), backward, inference and the
    dW kernel with the prefetch in every packed product give bitwise what they give
    without it, and the prefetching path really ran."""
    check_models_bitwise(name, dtype, lengths, _set_all, "_next_l2_calls", "the prefetch")


@_threaded
def test_linear_prefetching_is_bitwise_the_plain_linear(rng, next_l2_modes):
    """nn.Linear's products on the kernels (x W^T and dy W on a packed weight; dW)."""
    check_linear_bitwise(rng, _set_all, MODULES["linear"]._next_l2_calls)


def test_the_default_is_the_rule():
    """A fresh process (no hook called) prefetches by the rule: on the AVX2 layout at
    8 MiB, not on the AVX-512 one."""
    assert default_counts("_next_l2_calls", 2048, [16, 32]) == ["1", "1"]
