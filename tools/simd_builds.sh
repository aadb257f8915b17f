#!/usr/bin/env bash
# The kernels' array code is cloned for three SIMD levels (AVX-512, AVX2+FMA,
# baseline SSE2) and the CPU picks one at load time, so on an AVX-512 machine
# the tests only ever run the AVX-512 clones. This script builds rnncore again
# with the code forced to each lower level (CMake RNNCORE_SIMD, see
# CMakeLists.txt and rc_activations.h) and runs the kernel, model and parity
# tests on each build. RNNCORE_EXPECT_SIMD makes
# tests/test_activations.py::test_simd_build_is_the_one_ci_asked_for fail if
# the tests did not run on the forced build.
#
#   tools/simd_builds.sh                 # the levels below this CPU's own
#   tools/simd_builds.sh baseline        # or the ones named (x86-64-v4 | x86-64-v3 | baseline)
#
# Needs rnncore installed (pip install ".[test]"): it reads this CPU's level
# from it, and the tests import their helpers from the installed environment.
# ~1.5 min per level on 2 cores. .ci/run calls it after the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  levels=("$@")
else
  # this CPU's level (cpu_tier: whatever level the installed build was made for)
  tier=$(cd /tmp && python -c "from rnncore._kernels import simd; print(simd.cpu_tier())")
  case "$tier" in
    4) levels=(x86-64-v3 baseline) ;;
    3) levels=(baseline) ;;
    *) echo "simd_builds: this CPU runs the baseline (or portable) code already; nothing to force"; exit 0 ;;
  esac
fi
tests=(tests/test_activations.py tests/test_gemm.py tests/test_gemm_packed.py tests/test_kernels.py
       tests/test_layer_norm.py tests/test_gru_reset_before.py tests/test_lstm_proj.py
       tests/test_unit_split.py tests/test_cells.py tests/test_models.py tests/test_functional.py
       tests/test_torch_parity.py tests/test_threads_config.py tests/test_vectorized.py
       tests/test_fused_input.py tests/test_chunked_inference.py tests/test_pack_threads.py
       tests/test_weight_grads.py tests/test_thread_team.py tests/test_zero_start.py
       tests/test_linear_kernel.py tests/test_pack_a.py tests/test_thread_sections.py
       tests/test_blas_slow.py tests/test_private_rows.py)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for level in "${levels[@]}"; do
  echo "== rnncore built for $level only: ${tests[*]}"
  # its own build directory: never the tree's build/ (pyproject's build-dir), whose
  # CMake cache a developer's next plain build reuses
  python -m pip install -q --no-deps --target "$work/$level" . \
      -Ccmake.define.RNNCORE_SIMD="$level" -Cbuild-dir="$work/build-$level"
  # (an editable install's import hook, processed from its .pth at start-up, would
  # shadow PYTHONPATH: the prologue drops it, as tools/sanitize.sh does)
  RNNCORE_EXPECT_SIMD="$level" PYTHONPATH="$work/$level" python -c '
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if type(f).__name__ not in ("ScikitBuildRedirectingFinder", "ScikitBuildInplaceFinder")]
import pytest
sys.exit(pytest.main(sys.argv[1:]))' -q -p no:cacheprovider "${tests[@]}"
done
