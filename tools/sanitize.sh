#!/usr/bin/env bash
# Memory-safety checks of rnncore's Cython kernels, in throwaway builds.
#
#   tools/sanitize.sh [debug|asan|valgrind|all]      (default: all)
#
#   debug     build with Cython bounds checks on (-Ccmake.define.RNNCORE_DEBUG=ON,
#             -O1 -g) and run the kernel tests under it;
#   asan      build the release configuration (-O3, no bounds checks: the code that
#             ships) with AddressSanitizer (-Ccmake.define.RNNCORE_SANITIZE=address) and
#             run the same tests with libasan preloaded (python is not instrumented);
#             RNNCORE_SANITIZE_ASAN_DEBUG=1 adds the bounds checks to this build too;
#   valgrind  run a small kernel script (every cell x dtype, functional and models,
#             forward and backward, lengths, reverse, both layouts) under valgrind
#             memcheck on the debug build, plus a control script doing the same work
#             in pure NumPy (rnncore.reference): CPython 3.11/NumPy/ld.so produce
#             memcheck reports of their own, so only errors whose stack reaches the
#             kernels' code (before any CPython frame) count.
#
# Nothing here touches the main (editable) install: each mode copies the working
# tree to $RNNCORE_SANITIZE_DIR (default /tmp/rnncore-sanitize), builds it into its
# own venv (python -m venv --system-site-packages, so numpy/scipy/pytest/hypothesis
# come from the main environment) with a plain, non-editable
# `pip install --no-build-isolation --no-deps --ignore-installed` (--ignore-installed:
# pip never even considers uninstalling the main environment's rnncore), and runs
# python with the main environment's editable-install import hook removed, after
# checking that every rnncore._kernels module really is the instrumented copy.
#
# Exit status: 0 when every selected mode reports zero errors; the summary lines
# start with "SANITIZE:". Takes ~10 minutes on 2 busy cores (two builds, ~75 s of tests
# each, two valgrind runs).
#
# Environment knobs:
#   RNNCORE_SANITIZE_DIR     work directory (wiped per mode)
#   RNNCORE_SANITIZE_TESTS   pytest selection (default: the kernel/API tests below)
#   PYTHON                   interpreter (default: python3 on PATH)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${RNNCORE_SANITIZE_DIR:-/tmp/rnncore-sanitize}"
PY="${PYTHON:-python3}"
MODE="${1:-all}"
# kernel tests + the reliability properties (leak/RSS and subprocess-heavy checkpoint tests
# are left out: ASan's allocator quarantine makes RSS meaningless).
DEFAULT_TESTS="tests/test_activations.py tests/test_gemm.py tests/test_kernels.py tests/test_functional.py tests/test_models.py tests/test_cells.py tests/reliability/test_reliability_badinput.py tests/reliability/test_reliability_long.py tests/reliability/test_reliability_threads.py"
TESTS="${RNNCORE_SANITIZE_TESTS:-$DEFAULT_TESTS}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Keep runs comparable and cheap on a shared box.
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
mkdir -p "$WORK"
STATUS=0

log() { printf '%s\n' "$*" >&2; }

# Python prologue: drop the main environment's editable finder for rnncore
# (its .pth is processed because the venv sees the system site-packages), then
# prove the instrumented copy is the one imported.
PROLOGUE='
import sys, os
sys.meta_path[:] = [f for f in sys.meta_path
                    if type(f).__name__ not in ("ScikitBuildRedirectingFinder", "ScikitBuildInplaceFinder")]
import rnncore, rnncore._kernels.rnn as _k
venv = os.environ["RNNCORE_VENV"]
for name in ("rnn", "gru", "lstm", "simd"):
    try:
        mod = __import__("rnncore._kernels." + name, fromlist=["x"])
    except ImportError:
        continue
    assert mod.__file__.startswith(venv), (name, mod.__file__, venv)
assert rnncore.__file__.startswith(venv), rnncore.__file__
print("SANITIZE: using", os.path.dirname(rnncore.__file__), file=sys.stderr)
'

build() {  # build <name> <extra -C options...>
    local name="$1"; shift
    local src="$WORK/src-$name" venv="$WORK/venv-$name"
    rm -rf "$src" "$venv" "$WORK/build-$name"
    mkdir -p "$src"
    # the working tree as it is (untracked kernels included), without build outputs
    (cd "$REPO" && tar --exclude=./build --exclude=./.git --exclude='*.so' \
        --exclude=__pycache__ --exclude=.hypothesis --exclude=.pytest_cache -cf - .) \
        | tar -xf - -C "$src"
    "$PY" -m venv --system-site-packages "$venv"
    log "== building $name: $*"
    "$venv/bin/python" -m pip install -q --no-build-isolation --no-deps --ignore-installed \
        "$@" -Cbuild-dir="$WORK/build-$name" "$src" >"$WORK/build-$name.log" 2>&1 || {
        tail -40 "$WORK/build-$name.log" >&2
        log "SANITIZE: $name build FAILED (log: $WORK/build-$name.log)"
        return 1
    }
    local site
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$site"
}

run_tests() {  # run_tests <name> <site> [env...]
    local name="$1" site="$2"; shift 2
    local src="$WORK/src-$name" rc=0
    log "== pytest under $name: $TESTS"
    (cd "$src" && env RNNCORE_VENV="$WORK/venv-$name" "$@" \
        "$WORK/venv-$name/bin/python" -c "$PROLOGUE
import pytest
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider'] + sys.argv[1:]))" \
        $TESTS) >"$WORK/test-$name.log" 2>&1 || rc=$?
    tail -5 "$WORK/test-$name.log" >&2
    local asan_errors
    asan_errors=$(grep -c "ERROR: AddressSanitizer" "$WORK/test-$name.log" || true)
    local oob
    oob=$(grep -c "Out of bounds on buffer access" "$WORK/test-$name.log" || true)
    log "SANITIZE: $name pytest exit=$rc asan_errors=$asan_errors bounds_errors=$oob (log: $WORK/test-$name.log)"
    [ "$rc" -eq 0 ] && [ "$asan_errors" -eq 0 ] && [ "$oob" -eq 0 ]
}

KERNEL_SCRIPT='
import numpy as np
from rnncore import functional as F, RNN, GRU, LSTM
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    N, T, D, H = 3, 4, 5, 6
    x = rng.standard_normal((N, T, D)).astype(dt)
    h0 = rng.standard_normal((N, H)).astype(dt)
    for relu in ("tanh", "relu"):
        Wx = rng.standard_normal((D, H)).astype(dt); Wh = rng.standard_normal((H, H)).astype(dt)
        h, c = F.rnn_forward(x, h0, Wx, Wh, np.zeros(H, dt), relu)
        F.rnn_backward(np.ones_like(h), c, dhn=np.ones_like(h0))
        h, c = F.rnn_step_forward(x[:, 0], h0, np.asfortranarray(Wx), Wh, np.zeros(H, dt), relu)
        F.rnn_step_backward(np.ones_like(h), c)
    h, c = F.gru_forward(x, h0, rng.standard_normal((D, 3 * H)).astype(dt),
                         rng.standard_normal((H, 3 * H)).astype(dt), np.ones(3 * H, dt), np.ones(3 * H, dt))
    F.gru_backward(np.ones_like(h), c)
    h, cc, c = F.lstm_forward(x, h0, rng.standard_normal((D, 4 * H)).astype(dt),
                              rng.standard_normal((H, 4 * H)).astype(dt), np.ones(4 * H, dt))
    F.lstm_backward(np.ones_like(h), c, dcn=np.ones_like(h0))
    for cls in (RNN, GRU, LSTM):
        for bf in (False, True):
            m = cls(D, H, num_layers=2, bidirectional=True, batch_first=bf, dtype=dt, seed=0)
            xin = x if bf else x.transpose(1, 0, 2).copy()
            out, _ = m(xin, lengths=np.array([4, 1, 3]))
            m.backward(np.ones_like(out))
            out, _ = m(xin)
            m.backward(np.ones_like(out))
print("kernel script done")
'

mode_debug() {
    local site; site="$(build debug -Ccmake.define.RNNCORE_DEBUG=ON)" || { STATUS=1; return; }
    run_tests debug "$site" || STATUS=1
}

mode_asan() {
    local dbg=OFF
    [ "${RNNCORE_SANITIZE_ASAN_DEBUG:-0}" = "1" ] && dbg=ON
    local site; site="$(build asan -Ccmake.define.RNNCORE_DEBUG=$dbg -Ccmake.define.RNNCORE_SANITIZE=address)" \
        || { STATUS=1; return; }
    local so; so="$(find "$site/rnncore/_kernels" -name 'rnn.*.so' | head -1)"
    local syms; syms="$(nm -D "$so" 2>/dev/null || true)"   # (no `nm | grep -q`: SIGPIPE + pipefail)
    if ! grep -q __asan_init <<<"$syms"; then
        log "SANITIZE: asan build is NOT instrumented ($so has no __asan_init)"; STATUS=1; return
    fi
    local libasan; libasan="$(gcc -print-file-name=libasan.so)"
    run_tests asan "$site" LD_PRELOAD="$libasan" \
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:print_summary=1" || STATUS=1
}

CONTROL_SCRIPT='
import numpy as np
from rnncore import reference as R     # pure NumPy: the same work without any rnncore kernel
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    N, T, D, H = 3, 4, 5, 6
    x = rng.standard_normal((N, T, D)).astype(dt)
    h0 = rng.standard_normal((N, H)).astype(dt)
    h, c = R.rnn_forward(x, h0, rng.standard_normal((D, H)).astype(dt),
                         rng.standard_normal((H, H)).astype(dt), np.zeros(H, dt))
    R.rnn_backward(np.ones_like(h), c)
    h, c = R.gru_forward(x, h0, rng.standard_normal((D, 3 * H)).astype(dt),
                         rng.standard_normal((H, 3 * H)).astype(dt), np.ones(3 * H, dt), np.ones(3 * H, dt))
    R.gru_backward(np.ones_like(h), c)
    h, cc, c = R.lstm_forward(x, h0, rng.standard_normal((D, 4 * H)).astype(dt),
                              rng.standard_normal((H, 4 * H)).astype(dt), np.ones(4 * H, dt))
    R.lstm_backward(np.ones_like(h), c)
print("control script done")
'

# Attribute each memcheck error to rnncore's kernels or not: walk its stack from the
# faulting frame; a frame in the kernels (generated C, rc_*.h, __pyx_*) before the
# first CPython frame makes it a kernel error (BLAS/libc/libm frames are walked through,
# so a bad pointer handed to BLAS by a kernel counts too).
CLASSIFY='
import re, sys
blocks, cur = [], []
for ln in open(sys.argv[1], errors="replace"):
    m = re.match(r"==\d+== ?(.*)", ln.rstrip("\n"))
    if not m:
        continue
    t = m.group(1)
    if not t.strip():
        if cur: blocks.append(cur)
        cur = []
    else:
        cur.append(t)
if cur: blocks.append(cur)
kinds = r"(Invalid (read|write|free)|Conditional jump|Use of uninitialised|Syscall param|Mismatched free|Source and destination|Argument .* of function)"
errors = [b for b in blocks if re.match(kinds, b[0])]
def kernel(f):
    return ("rnncore-sanitize" in f or "/_kernels/" in f or "/rc_" in f or "__pyx_" in f
            or re.search(r"\b(rnn|gru|lstm|simd)\.c:", f) is not None)
def cpython(f):
    return re.search(r"/Python-3\.|libpython|: _?Py[A-Z_]", f) is not None
hits = []
for b in errors:
    for f in (l for l in b[1:] if re.match(r"\s*(at|by) 0x", l)):
        if kernel(f):
            hits.append(b); break
        if cpython(f):
            break
for b in hits[:5]:
    print("\n".join("    " + l for l in b[:12]), file=sys.stderr)
print(len(errors), len(hits))
'

run_valgrind() {  # run_valgrind <name> <python source> -> "contexts kernel_contexts"
    local name="$1" src="$2" rc=0
    (cd "$WORK" && env RNNCORE_VENV="$WORK/venv-debug" PYTHONMALLOC=malloc \
        RNNCORE_NO_CORETYPE=1 OPENBLAS_CORETYPE=Haswell OPENBLAS_NUM_THREADS=1 \
        valgrind --tool=memcheck --track-origins=no --leak-check=no --num-callers=40 \
        --fullpath-after= "$WORK/venv-debug/bin/python" -c "$PROLOGUE
$src") >"$WORK/valgrind-$name.log" 2>&1 || rc=$?
    grep -E "script done|ERROR SUMMARY" "$WORK/valgrind-$name.log" >&2 || true
    [ "$rc" -eq 0 ] || log "SANITIZE: valgrind $name exit=$rc"
    "$PY" -c "$CLASSIFY" "$WORK/valgrind-$name.log"
}

mode_valgrind() {
    command -v valgrind >/dev/null || { log "SANITIZE: valgrind not installed"; STATUS=1; return; }
    [ -d "$WORK/venv-debug" ] || mode_debug
    log "== valgrind memcheck: a small kernel script and a control script without kernels (debug build)"
    # PYTHONMALLOC=malloc: let memcheck see every allocation (no pymalloc arenas).
    # RNNCORE_NO_CORETYPE=1 and OPENBLAS_CORETYPE=Haswell: valgrind 3.19 cannot
    # execute AVX-512, which rnncore would otherwise select for OpenBLAS on AMD CPUs
    # (the kernels' own target_clones follow valgrind's CPUID and pick AVX2 there).
    # CPython 3.11, NumPy and ld.so report errors of their own under memcheck (even for
    # `import numpy`); the control script measures that noise, and only errors whose
    # stack reaches rnncore's kernels before CPython count.
    local ctl ker
    ctl=$(run_valgrind control "$CONTROL_SCRIPT")
    ker=$(run_valgrind kernels "$KERNEL_SCRIPT")
    local ctl_ctx=${ctl% *} ker_ctx=${ker% *} ker_hits=${ker#* } ctl_hits=${ctl#* }
    log "SANITIZE: valgrind error contexts: kernel script $ker_ctx ($ker_hits in rnncore kernels), control script without kernels $ctl_ctx ($ctl_hits) (logs: $WORK/valgrind-*.log)"
    grep -q "kernel script done" "$WORK/valgrind-kernels.log" || { log "SANITIZE: valgrind kernel script did not finish"; STATUS=1; }
    [ "$ker_hits" = "0" ] || STATUS=1
}

case "$MODE" in
    debug) mode_debug ;;
    asan) mode_asan ;;
    valgrind) mode_valgrind ;;
    all) mode_debug; mode_asan; mode_valgrind ;;
    *) log "usage: $0 [debug|asan|valgrind|all]"; exit 2 ;;
esac
log "SANITIZE: overall $([ $STATUS -eq 0 ] && echo PASS || echo FAIL)"
exit $STATUS
