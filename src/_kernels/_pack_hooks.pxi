# The test and benchmark hooks of packing on threads (rc_gemm_packed.h:
# rc_pack_par_*), of copying A (rc_set_pack_a), of the next panel's L2 prefetch
# (rc_set_next_l2), of the in-step dx bound
# (rc_set_step_dx_max), of the dW kernel (rc_gemm_dw.h), of the per-call packed
# products (rc_matmul.h: rc_set_matmul, rc_set_blas_slow), of the vendor's shape
# rule sets (rc_activations.h: rc_set_rule_set, rc_rule_set; with _fuses_input) and of the thread team
# (rc_threads.h: rc_pool_t), included by every kernel module that packs weights: each
# module has its own copy of the C statics (the team itself is shared: rc_pool_attach). The module cimports set_pack_par,
# pack_par_count and RC_PACK_PAR_BYTES from _gemm.

import operator

from _threads cimport (set_input_single as _set_input_single_c, set_private_rows, private_rows,
                       row_split_count)


def _set_pack_threads(min_bytes=None):
    """Test/benchmark hook: this module's loops pack a weight on their threads when the
    packed weight takes at least `min_bytes` (None: the default, RC_PACK_PAR_BYTES =
    1 MiB; 0: any size; < 0: never) -- still only where the row split is allowed and
    outside single-thread sections."""
    set_pack_par(RC_PACK_PAR_BYTES if min_bytes is None else min_bytes)


def _pack_threads_calls():
    """How many packing calls of this module have run on threads (a count since import)."""
    return pack_par_count()


def _set_private_rows(bint together=True):
    """Test/benchmark hook: a row split gives each thread its rows of this module's
    per-row buffers (scratch, one step's gates, the backward's carries) as one block
    (True, the default) or every P-th row (False, as before session 21). Results are
    the same either way."""
    set_private_rows(together)


def _private_rows():
    """Whether this module's row splits keep each thread's buffer rows together."""
    return bool(private_rows())


def _row_split_runs():
    """How many time loops of this module have run with their rows split over threads
    (a count since import)."""
    return row_split_count()


def _set_intel_rules(intel=None):
    """Test/benchmark hook: this module's rules take the choices measured on Intel's
    server cores (True), the general ones (False), or this CPU's (None, the default;
    see _set_shape_rules, which also names Zen 5's set): the forward's in-step Wx product with N < 32 rows only for a stacked
    weight of at most N x 160 KiB (rc_gemm_packed.h: rc_fuse_input), the LSTM's
    unit split only below 16 rows a thread (rc_threads.h: rc_unit_rows)."""
    if intel is not None and not isinstance(intel, (bool, np.bool_)):
        raise TypeError(f"intel must be True, False or None, not {type(intel).__name__}")
    _set_shape_rules(None if intel is None else "intel" if intel else "general")


def _intel_rules():
    """Whether this module's rules take Intel's choices now (see _set_intel_rules)."""
    return bool(intel_rules())


#: the rule sets by name, in rc_activations.h's order (RC_RULES_*)
SHAPE_RULES = ("general", "intel", "zen5")


def _set_shape_rules(rules=None):
    """Test/benchmark hook: this module's rules take the set named (``"general"``,
    ``"intel"``: see _set_intel_rules; ``"zen5"``: the general rules but the in-step
    Wx product below 16 rows only up to N x 160 KiB stacked, rc_gemm_packed.h:
    RC_FUSE_ZEN5_ROWS) or this CPU's (None, the default: Intel's on Intel CPUs,
    ``"zen5"`` on AMD's from family 26, else the general)."""
    if rules is None:
        set_rule_set(-1)
        return
    if rules not in SHAPE_RULES:
        raise ValueError(f"rules must be one of {SHAPE_RULES} or None, got {rules!r}")
    set_rule_set(SHAPE_RULES.index(rules))


def _shape_rules():
    """The name of the rule set this module takes now (see _set_shape_rules)."""
    return SHAPE_RULES[rule_set()]


def _fuses_input(Py_ssize_t N, Py_ssize_t D, Py_ssize_t n, Py_ssize_t k, Py_ssize_t T,
                 dtype=np.float32):
    """Whether a forward loop of T steps, N rows, D inputs and a per-step (N, k)(k, n)
    product computes x_t Wx in its steps ([x_t | h_{t-1}] [Wx; Wh]), as fused_weight
    decides (rc_fuse_input, with this module's copy of the hooks' settings)."""
    return fuse_input(T, N, D, k, n, np.dtype(dtype).itemsize)


def _set_pack_a(int mode=0):
    """Test/benchmark hook: this module's products on a packed weight copy the rows
    of A into the register blocks' order first (rc_gemm_packed.h: rc_pk_pack_a_use)
    never (0, the default), by their rule (1: the AVX2 layout, a packed weight of
    4 MiB or more) or always (2, any layout and size). Same results, bitwise."""
    set_pack_a(hook_mode(mode))


def _set_next_l2(int mode=1):
    """Test/benchmark hook: this module's products on a packed weight, reading A in
    place, prefetch each panel's successor into L2 as they go (rc_gemm_packed.h:
    rc_pk_next_l2_use) never (0), by their rule (1, the default: the AVX2 layout, a
    packed weight of 8 MiB or more) or always (2, any layout and size). Same
    results, bitwise."""
    set_next_l2(hook_mode(mode))


def _next_l2_calls():
    """How many products of this module on a packed weight prefetched the next panel
    into L2 (a count since import)."""
    return next_l2_count()


def _pack_a_calls():
    """How many products of this module on a packed weight copied A first (a count
    since import)."""
    return pack_a_count()


def _set_step_dx_max(max_bytes=None):
    """Test/benchmark hook: this module's backward loops compute dx_t = dA_t Wx^T in
    their steps (rc_gemm_packed.h: rc_step_input_grad) only while the packed Wx^T
    takes at most `max_bytes` (an int; None: the default, RC_STEP_DX_MAX_BYTES =
    8 MiB; <= 0: never); larger, dx is one GEMM after the loop. The `fuse` modes of
    _set_packing still apply (0: never in the steps, 2: whenever the loop packs,
    whatever this bound). Only the RNN, GRU and LSTM modules' loops compute dx in
    their steps; elsewhere the bound is kept and read by nothing."""
    if max_bytes is None:
        set_step_dx_max(RC_STEP_DX_MAX_BYTES)
        return
    if isinstance(max_bytes, (bool, np.bool_)):
        raise TypeError("max_bytes must be an int or None, got a bool")
    try:
        value = operator.index(max_bytes)
    except TypeError:
        raise TypeError("max_bytes must be an int or None, got "
                        f"{type(max_bytes).__name__}") from None
    set_step_dx_max(max(-1, min(value, 1 << 62)))


def _set_weight_grads(int mode=1):
    """Test/benchmark hook: this module's backward computes the all-steps weight
    gradients on packed chunks of dG (rc_gemm_dw.h: rc_dw_*) by its rule (1, the
    default), at any size (2), or leaves them to BLAS (0)."""
    set_dw(mode)


def _set_weight_grads_inplace(int mode=1):
    """Test/benchmark hook: the packed dW kernel reads a term's saved inputs in place
    by its rule (1, the default: rows at most 1 KiB apart, lda * itemsize;
    rc_gemm_dw.h: rc_dw_inplace),
    always (2), or from a transposed copy per chunk (0: rc_tcopy_*). The same FMAs in
    the same order either way."""
    set_dw_inplace(hook_mode(mode))


def _weight_grads_inplace_terms():
    """How many weight-gradient terms (dWx, dWh, ...) this module's dW kernel has read
    in place, without the transposed copy (count since import)."""
    return dw_inplace_count()


def _set_weight_grads_workspace(bint on=True):
    """Test/benchmark hook: the packed dW kernel takes its memory (the threads' packed
    chunks, a PyTorch-layout target's scratch sum) from the backward call's workspace,
    itself from the workspace cache (True, the default), or allocates it on every
    call (False). The same arithmetic either way. Every cell module's backward
    gives it a workspace, and so does ``linear.matmul_tn_add`` (the dense layers'
    dW); only the products ``mm`` hands it while BLAS is slow allocate."""
    set_dw_workspace(1 if on else 0)


def _weight_grads_workspace_calls():
    """How many of this module's dW kernel calls ran in the backward call's workspace
    (count since import)."""
    return dw_workspace_count()


def _weight_grads_calls():
    """(calls, threaded): how many backward calls of this module have computed weight
    gradients on the packed dW kernel, and how many of them on more than one thread
    (counts since import)."""
    return dw_count(0), dw_count(1)


def _set_matmul(int mode=1):
    """Test/benchmark hook: this module's products on the packed kernel with B packed
    per call (rc_matmul.h: ``linear.matmul``, and ``mm``'s all-steps products while
    BLAS is slow: _set_blas_slow) run by their rule (1, the default), at any size
    (2; still not without a packed layout) or never (0). C += A^T B follows
    ``_set_weight_grads``."""
    set_matmul(hook_mode(mode))


def _matmul_calls():
    """(calls, threaded): this module's products on the packed kernel with B packed
    per call (rc_matmul_*), and of them on more than one thread (counts since
    import)."""
    return matmul_count(0), matmul_count(1)


def _set_blas_slow(on):
    """Whether SciPy's BLAS runs kernels below this CPU's SIMD level (rc_matmul.h:
    rc_blas_slow): then this module's all-steps products outside single-thread
    sections (``mm``: the input projection, dx after the loop, weight gradients the
    dW kernel did not take) run on the packed kernel by rc_matmul_use's rule instead
    of BLAS. rnncore sets it once at import (rnncore._runtime.blas:
    blas_below_cpu); tests and benchmarks flip it. `on`: a bool."""
    if not isinstance(on, (bool, np.bool_)):
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    set_blas_slow(1 if on else 0)


def _blas_slow():
    """This module's rc_blas_slow (see _set_blas_slow)."""
    return bool(blas_slow)


def _matmul_small_machine():
    """Whether this machine has at most the kernels' thread cap of CPUs
    (rc_matmul_small_machine): where the products move while BLAS is slow."""
    return bool(matmul_small_machine())


def _own_gemm_calls():
    """How many products of this module ran on rnncore's own GEMM instead of BLAS
    inside a single-thread section of their thread (rc_gemm_own_*; a count since
    import)."""
    return gemm_own_count()


def _section_probe():
    """Test hook: (token, this thread's section depth inside it, rnncore's own thread
    count inside it): a single-thread section opened and closed here."""
    cdef int tok = single_open()
    cdef int depth = local_depth(), own = own_threads()
    single_close(tok)
    return tok, depth, own


from _gemm cimport (set_pack_a, pack_a_count, set_next_l2, next_l2_count, gemm_own_count,
                    local_depth, set_step_dx_max, hook_mode,
                    RC_STEP_DX_MAX_BYTES, set_matmul, matmul_count, set_blas_slow, blas_slow,
                    matmul_small_machine, intel_rules, rule_set, set_rule_set, fuse_input)
from _threads cimport (set_pool, set_pool_take, set_pool_apart, pool_worker_cpu, pool_taken,
                       pool_count, pool_id,
                       thread_state_bytes, run_tasks, single_open, single_close, own_threads)


cdef struct _TeamProbe:
    long long count
    char pad[56]      # one task per cache line


cdef void _team_probe(void *arg) noexcept nogil:
    (<_TeamProbe *>arg).count += 1


def _set_thread_team(bint enabled=True, long spin_ns=-1, bint take=True):
    """Test/benchmark hook: this module's threaded work (row-split loops, packing
    and dW on threads) runs on the kernels' shared team of workers (rc_threads.h:
    rc_pool_t; True, the default) or on threads started per call (False); after
    this module's tasks the workers and the caller spin `spin_ns` nanoseconds
    before they sleep (-1: the default, 100 us; 0: sleep at once); `take`: in this
    module's calls the caller, done with its own task, runs the tasks no worker
    has started yet (True, the default) rather than wait for those workers."""
    set_pool(enabled, spin_ns)
    set_pool_take(take)


def _set_thread_team_apart(bint apart=True):
    """Test/benchmark hook: this module's calls keep the team's workers off the
    submitting thread's CPU (rc_threads.h: rc_pool_keep_apart; True, the default) or
    leave their affinity to the scheduler (False: restored to the submitter's)."""
    set_pool_apart(apart)


def _thread_team_worker_cpus(int k=0):
    """Test hook: the CPUs worker k of the team may run on (a set of CPU numbers;
    empty without that worker)."""
    cdef int c
    return {c for c in range(1024) if pool_worker_cpu(k, c) == 1}


def _thread_team_taken():
    """Test hook: tasks a caller ran itself because their worker had not started
    them yet (this module's count of them, since import)."""
    return pool_taken()


def _thread_team_id():
    """Test hook: the address of the thread team this module uses (every kernel
    module's is the same once rnncore installed its thread hooks)."""
    return pool_id()


def _thread_state_bytes():
    """Bytes of the thread state rnncore._runtime.threads shares with the kernel
    modules (rc_threads.h: the single-thread section state and the thread team)."""
    return thread_state_bytes()


def _thread_team_runs():
    """How many threaded runs of this module have used the shared team (a count
    since import)."""
    return pool_count()


cdef extern from *:
    """
    static unsigned rc_hook_get_mxcsr(void)
    {
    #if defined(__x86_64__) || defined(__i386__)
        return __builtin_ia32_stmxcsr();
    #else
        return 0;
    #endif
    }
    static void rc_hook_set_mxcsr(unsigned v)
    {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_ldmxcsr(v);
    #else
        (void)v;
    #endif
    }
    """
    unsigned get_mxcsr "rc_hook_get_mxcsr"() nogil
    void set_mxcsr "rc_hook_set_mxcsr"(unsigned v) nogil


cdef struct _MxcsrProbe:
    unsigned mxcsr
    char pad[60]      # one task per cache line


cdef void _mxcsr_probe(void *arg) noexcept nogil:
    (<_MxcsrProbe *>arg).mxcsr = get_mxcsr()


def _thread_team_mxcsr(int threads, unsigned bits, bint team=True):
    """Test hook: `threads` tasks through rc_run_tasks (on the team, or on threads
    started for them) while the caller's SSE control word (MXCSR) has `bits` set
    (e.g. 0x8040, flush-to-zero and denormals-are-zero); returns (the caller's
    MXCSR during the call, [each task's MXCSR]). The caller does not take its
    workers' tasks here (tasks 1.. run on workers or started threads). The caller's
    MXCSR is restored and the team and taking are on again afterwards. (0, [0, ...])
    off x86."""
    cdef _MxcsrProbe tasks[8]
    cdef unsigned saved, during
    cdef int k
    if threads < 1 or threads > 8:
        raise ValueError(f"threads must be in 1..8, got {threads}")
    if bits > 0xFFFF:   # bits 16-31 are reserved: loading one faults
        raise ValueError(f"bits must lie in MXCSR's low 16 bits, got {bits:#x}")
    for k in range(8):
        tasks[k].mxcsr = 0
    set_pool(team, -1)
    set_pool_take(False)
    try:
        with nogil:
            saved = get_mxcsr()
            set_mxcsr(saved | bits)
            during = get_mxcsr()
            run_tasks(_mxcsr_probe, tasks, sizeof(_MxcsrProbe), threads)
            set_mxcsr(saved)
    finally:
        set_pool(True, -1)
        set_pool_take(True)
    return during, [tasks[k].mxcsr for k in range(threads)]


def _thread_team_stress(long long calls, int threads, long spin_ns=-1, bint take=True):
    """Test hook: `calls` runs of `threads` tiny tasks each through rc_run_tasks (the
    team, its workers spinning `spin_ns` ns after a task: 0 sleeps at once, so
    nearly every hand-off wakes a sleeping or falling-asleep worker; `take`: the
    caller runs the tasks no worker has started -- False makes every task wait for
    its worker's wake-up). Returns each task's run count: all equal `calls` unless a
    hand-off was lost. Taking is on again afterwards."""
    cdef _TeamProbe tasks[8]
    cdef long long i
    cdef int k
    if threads < 1 or threads > 8:
        raise ValueError(f"threads must be in 1..8, got {threads}")
    for k in range(8):
        tasks[k].count = 0
    set_pool(True, spin_ns)
    set_pool_take(take)
    try:
        with nogil:
            for i in range(calls):
                run_tasks(_team_probe, tasks, sizeof(_TeamProbe), threads)
    finally:
        set_pool(True, -1)
        set_pool_take(True)
    return [tasks[k].count for k in range(threads)]


def _set_input_single(work=None):
    """Test/benchmark hook: this module's forward loops run their all-steps input
    projection in a single-thread section below `work` multiply-adds (None: the
    default, rc_threads.h: RC_INPUT_SINGLE_MAX = 2^22; 0: never)."""
    _set_input_single_c(-1 if work is None else max(0, int(work)))
