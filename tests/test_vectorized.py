"""The kernels' fused passes are vectorized on every SIMD level they are built for.

GCC vectorizes the float32 activations (rc_activations.h) only if it may compute
both sides of their selects; with AVX-512 it masks the divisions, on the AVX2 and
baseline levels it needs -fno-trapping-math (CMakeLists.txt). Without it those
levels' passes compiled to scalar code -- correct, so no accuracy test noticed,
and 1.65x slower on an LSTM inference. This reads the compiled modules: each must
hold packed single-precision divisions (the activations' 1/(1 + e) and 2/(e + 1))
for every level it carries -- all three clones in the default build, the one
level of a forced build (tools/simd_builds.sh).
"""
import os
import shutil
import subprocess

import pytest

from rnncore._kernels import simd

MODULES = ["rnn", "gru", "lstm", "lnlstm", "lngru", "simd"]
#: level -> (how a packed float32 division of that level reads in objdump's AT&T syntax)
DIVISIONS = {4: ("vdivps", "%zmm"), 3: ("vdivps", "%ymm"), 1: ("divps", "%xmm")}


def _levels():
    tier = simd.simd_tier()
    if "forced" in simd.simd_level():
        return [tier]
    return [4, 3, 1] if tier else []


def _disassembly(name):
    import importlib
    mod = importlib.import_module(f"rnncore._kernels.{name}")
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", mod.__file__],
                         capture_output=True, text=True, check=True).stdout
    return out


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
@pytest.mark.skipif(not _levels(), reason="no SIMD clones on this platform/compiler")
@pytest.mark.parametrize("name", MODULES)
def test_passes_hold_packed_divisions_on_every_level(name):
    lines = _disassembly(name).splitlines()
    for level in _levels():
        op, reg = DIVISIONS[level]
        found = [ln for ln in lines if ln.split("\t")[-1].startswith(op + " ") and reg in ln]
        assert found, (f"{name}: no packed float32 division ({op} on {reg}) for SIMD level "
                       f"{level}: its fused passes / activations were not vectorized")
