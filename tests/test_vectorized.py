"""The kernels' fused passes are vectorized on every SIMD level they are built for.

GCC vectorizes the float32 activations (rc_activations.h) only if it may compute
both sides of their selects; with AVX-512 it masks the divisions, on the AVX2 and
baseline levels it needs -fno-trapping-math (CMakeLists.txt). Without it those
levels' passes compiled to scalar code -- correct, so no accuracy test noticed,
and 1.65x slower on an LSTM inference. This reads the compiled modules for the
packed single-precision divisions of the activations (1/(1 + e), 2/(e + 1)):

* the default build carries all three clones in one module, without symbols, so
  only levels whose division tells them apart are checked: AVX-512 (on zmm) and
  the baseline (SSE ``divps``, no VEX prefix); the AVX2 clone's ymm divisions
  cannot be told from the AVX-512 clone's tail loops;
* a forced single-level build (tools/simd_builds.sh, which CI runs for AVX2 and
  the baseline on AVX-512 machines) holds that level's code only: any of its
  packed divisions is that level's.

(A debug build, -Ccmake.define.RNNCORE_DEBUG=ON at -O1, vectorizes nothing: run
these on release builds.)
"""
import importlib
import re
import shutil
import subprocess

import pytest

from rnncore._kernels import simd

MODULES = ["rnn", "gru", "lstm", "lnlstm", "lngru", "simd"]
#: level -> a packed float32 division of that level in objdump's AT&T syntax (GNU
#: objdump separates mnemonic and operands by spaces, llvm-objdump by a tab)
DIVISIONS = {4: re.compile(r"\bvdivps\s.*%zmm"), 3: re.compile(r"\bvdivps\s.*%ymm"),
             1: re.compile(r"(?<![\w])divps\s.*%xmm")}


def _levels():
    tier = simd.simd_tier()
    if "forced" in simd.simd_level():
        return [tier]
    return [4, 1] if tier else []


def _disassembly(name):
    mod = importlib.import_module(f"rnncore._kernels.{name}")
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", mod.__file__],
                          capture_output=True, text=True, check=True).stdout


def test_division_patterns_tell_the_levels_apart():
    # the patterns themselves: each matches its level's instruction only
    lines = {4: "  1f0:\tvdivps %zmm1,%zmm0,%zmm6{%k1}", 3: "  1f0:\tvdivps\t%ymm12,%ymm0,%ymm0",
             1: "  1f0:\tdivps  %xmm1,%xmm0"}
    for level, pattern in DIVISIONS.items():
        assert [lv for lv, ln in lines.items() if pattern.search(ln)] == [level]
    assert not DIVISIONS[1].search("  1f0:\tvdivps %xmm1,%xmm2,%xmm0")   # VEX, not SSE


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
@pytest.mark.skipif(not _levels(), reason="no SIMD clones on this platform/compiler")
@pytest.mark.parametrize("name", MODULES)
def test_passes_hold_packed_divisions_on_every_level(name):
    code = _disassembly(name)
    for level in _levels():
        assert DIVISIONS[level].search(code), (
            f"{name}: no packed float32 division for SIMD level {level}: its fused passes "
            f"and activations were not vectorized")
