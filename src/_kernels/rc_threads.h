/* rc_threads.h -- the kernels' thread policy: BLAS single-thread sections,
 * the row-split thread count and a small pthread runner (no GEMM here: the
 * panel kernel's shape policy is in rc_gemm.h). */
#ifndef RC_THREADS_H
#define RC_THREADS_H

#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <string.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifndef RC_IDX_DEFINED
#define RC_IDX_DEFINED
typedef ptrdiff_t rc_idx; /* 64-bit element counts and strides throughout */
#endif
#include "rc_activations.h"   /* rc_simd_tier: whether the CPU has a packed layout */

/* BLAS thread policy: "single-thread sections".
 *
 * The per-step GEMMs are small: below a few million multiply-adds, handing
 * them to BLAS's thread pool costs more than it saves, and on a busy machine
 * spin-waiting BLAS threads can make a step 5-10x slower. The all-steps GEMMs
 * before and after the loop keep BLAS's threads, except backward's when they are
 * small (rc_gemms_threads_begin) and, with a packed layout, forward's input
 * projection when it is small (rc_input_threads_begin). So a time loop
 * whose per-step work is below rc_loop_parallel_min runs inside a
 * single-thread section; rnncore's Python layer opens one too while the two
 * directions of a bidirectional layer run concurrently.
 *
 * Where the CPU has a packed layout (AVX2+FMA or AVX-512: rc_simd_tier() >= 3,
 * as rc_packed_nr) a section is this thread's alone (RC_SECTION_LOCAL): a depth
 * per thread (a pthread key in the shared state, so every kernel module and the
 * Python layer see one depth per thread), and while it is open every product
 * that would go to BLAS runs on rnncore's own GEMM on this thread instead
 * (_gemm.pxd: mm, rc_gemm_own_*), and rc_own_threads() is 1 here. BLAS's
 * process-wide thread count is never touched, so another thread's products
 * keep their threads and their bits (bug 9: OpenBLAS's Haswell kernels sum
 * float32 products differently on 1 and 2 threads, and switching the count
 * changed a concurrent model's results in the last bits).
 *
 * Without a packed layout (RC_SECTION_BLAS) BLAS's count is set to 1, and it is
 * process-wide, so those sections are reference-counted in ONE state shared by
 * every kernel module and the Python layer (allocated by rnncore._runtime.threads
 * and passed in with the hooks): the first section to open saves the count and
 * sets 1, the last to close restores it, under a spin lock. The hooks are the
 * BLAS's own openblas_{set,get}_num_threads, found by rnncore._runtime.threads at
 * import (NULL: no policy). */
typedef void (*rc_set_threads_fn)(int);
typedef int (*rc_get_threads_fn)(void);
typedef struct { int lock; int depth; int saved; int key_ok; pthread_key_t key; } rc_thread_state;
#define RC_SECTION_BLAS 1    /* a section token: BLAS's process-wide count set to 1 */
#define RC_SECTION_LOCAL 2   /* ... this thread's products on rnncore's own GEMM */
static int rc_local_ok = 0;           /* this module has the shared key (rc_local_key) */
static pthread_key_t rc_local_key;
static rc_set_threads_fn rc_blas_set_threads = NULL;
static rc_get_threads_fn rc_blas_get_threads = NULL;
static rc_thread_state *rc_tstate = NULL;
static long long rc_loop_parallel_min = 4000000LL;
static int rc_row_split = 0;   /* may time loops split the batch rows over threads */

/* The thread state every kernel module shares (rnncore._runtime.threads allocates
 * rc_thread_state_bytes() of it): rc_thread_state, then, from byte
 * RC_THREAD_STATE_TEAM, the thread team (rc_pool_t below). */
#define RC_THREAD_STATE_TEAM 64
static void rc_pool_attach(size_t state);

static void rc_blas_thread_hooks(size_t set_fn, size_t get_fn, long long min_work,
                                 size_t state, int row_split)
{
    rc_thread_state *ts = (rc_thread_state *)state;
    rc_pool_attach(state);
    rc_row_split = row_split;
    rc_blas_set_threads = (rc_set_threads_fn)set_fn;
    rc_blas_get_threads = (rc_get_threads_fn)get_fn;
    if (ts != NULL) {
        /* the per-thread section depth: one key for every module (the first creates it) */
        while (__atomic_exchange_n(&ts->lock, 1, __ATOMIC_ACQUIRE)) { }
        if (!ts->key_ok && pthread_key_create(&ts->key, NULL) == 0) ts->key_ok = 1;
        __atomic_store_n(&ts->lock, 0, __ATOMIC_RELEASE);
        if (ts->key_ok) {
            rc_local_key = ts->key;
            rc_local_ok = 1;
        }
    }
    rc_tstate = ts;
    rc_loop_parallel_min = min_work;
}

/* How many sections this thread has open with RC_SECTION_LOCAL. */
static inline int rc_local_depth(void)
{
    return rc_local_ok ? (int)(intptr_t)pthread_getspecific(rc_local_key) : 0;
}

/* Whether this module's sections are per thread (RC_SECTION_LOCAL): it has the
 * shared key and the CPU a packed layout for the own GEMM (rc_packed_nr). */
static inline int rc_section_local(void)
{
    return rc_local_ok && rc_simd_tier() >= 3;
}

/* Open a single-thread section; returns its token (0: none; pass it to the close). */
static int rc_single_open(void)
{
    if (rc_section_local()) {
        if (pthread_setspecific(rc_local_key, (void *)(intptr_t)(rc_local_depth() + 1)) == 0)
            return RC_SECTION_LOCAL;
    }
    if (rc_blas_set_threads == NULL || rc_blas_get_threads == NULL || rc_tstate == NULL)
        return 0;
    while (__atomic_exchange_n(&rc_tstate->lock, 1, __ATOMIC_ACQUIRE)) { }
    if (rc_tstate->depth++ == 0) {
        rc_tstate->saved = rc_blas_get_threads();
        if (rc_tstate->saved > 1) rc_blas_set_threads(1);
    }
    __atomic_store_n(&rc_tstate->lock, 0, __ATOMIC_RELEASE);
    return RC_SECTION_BLAS;
}

static void rc_single_close(int opened)
{
    if (opened == RC_SECTION_LOCAL) {
        pthread_setspecific(rc_local_key, (void *)(intptr_t)(rc_local_depth() - 1));
        return;
    }
    if (opened != RC_SECTION_BLAS) return;
    while (__atomic_exchange_n(&rc_tstate->lock, 1, __ATOMIC_ACQUIRE)) { }
    if (--rc_tstate->depth == 0 && rc_tstate->saved > 1) rc_blas_set_threads(rc_tstate->saved);
    __atomic_store_n(&rc_tstate->lock, 0, __ATOMIC_RELEASE);
}

/* Around a time loop whose per-step GEMM does `work` multiply-adds. */
static int rc_loop_threads_begin(long long work)
{
    return work < rc_loop_parallel_min ? rc_single_open() : 0;
}

static void rc_loop_threads_end(int opened) { rc_single_close(opened); }

/* Around backward's all-steps GEMMs (dx, dWx, dWh: `work` multiply-adds in all;
 * close with rc_loop_threads_end). Below RC_GEMMS_PARALLEL_MIN (single-threaded:
 * under ~0.7 ms on one core) they run on one thread (a section: rnncore's own GEMM
 * with a packed layout, else one BLAS thread): OpenBLAS splits even such
 * small GEMMs over its threads, and on a busy machine the caller then spins in its
 * inner_thread until a descheduled partner runs again -- the RNN's backward at
 * (T, N, D, H) = (100, 16, 64, 128) took 36 ms instead of 1.9 ms with one other
 * busy process on 2 Zen 4 cores (perf: 61 % of the time in inner_thread), 3.0 ms
 * with this section; on a quiet machine it costs ~0.5 ms there (1.9 -> 2.4 ms).
 * The forward's input projection keeps BLAS's threads down to RC_INPUT_SINGLE_MAX
 * (a section there measured +0.2-0.6 ms at that shape, quiet, and forward did not
 * suffer under load; below it see rc_input_threads_begin). */
#define RC_GEMMS_PARALLEL_MIN 67108864LL  /* 2^26 multiply-adds */
static int rc_gemms_threads_begin(long long work)
{
    return work < RC_GEMMS_PARALLEL_MIN ? rc_single_open() : 0;
}

/* Around forward's all-steps input projection A = X Wx (`work` multiply-adds;
 * close with rc_loop_threads_end): below RC_INPUT_SINGLE_MAX (2^22, ~45-90 us on
 * one core) in a section of this thread, like the small GEMMs above -- on CPUs
 * with a packed layout only (RC_SECTION_LOCAL: the product on rnncore's own GEMM;
 * without one BLAS's count stays as it is). OpenBLAS splits a GEMM over
 * its threads from ~0.26 M multiply-adds on; at these sizes the hand-off costs
 * about what the second thread saves, and when another thread pool of the process
 * spins on the cores (PyTorch's OpenMP workers after a torch call) the caller
 * waits for a partner that is not running. Measured on 2 Zen 3 cores (session 15,
 * float32 LSTM inference, model API, medians of 40, each call right after a torch
 * LSTM call): (T, N, D, H) = (100, 1, 32, 64) (0.8 M) 300 -> 249 us, (200, 1, 32,
 * 64) 607 -> 520 us, (100, 4, 32, 64) 545 -> 504 us; quiet (50, 1, 32, 64) 343 ->
 * 315 us. Above it the product keeps BLAS's threads: at (100, 16, 64, 128), 52 M,
 * a section measured mixed under that load (LSTM slower, GRU faster) and gives up
 * the second core when quiet. Shapes only; the hook (rc_set_input_single) moves
 * the bound for tests. */
#define RC_INPUT_SINGLE_MAX (1LL << 22)
static long long rc_input_single_max = RC_INPUT_SINGLE_MAX;
static void rc_set_input_single(long long work)
{
    rc_input_single_max = work < 0 ? RC_INPUT_SINGLE_MAX : work;
}
static int rc_input_threads_begin(long long work)
{
    /* only where a section is this thread's (a packed layout): without one it
     * would switch BLAS's process-wide count around every small forward */
    return work < rc_input_single_max && rc_section_local() ? rc_single_open() : 0;
}

/* Row-split time loops.
 *
 * The rows of a batch are independent sequences, so a time loop can run on P
 * threads, thread k taking rows k, k+P, k+2P, ... (interleaved: with a sorted
 * variable-length batch every thread gets long and short rows) through all T
 * steps with no synchronisation; the all-steps GEMMs before and after the
 * loop stay whole (BLAS's threads, or a section when small: above). Only a loop whose per-step products
 * all go to the packed kernel (rc_gemm_packed.h: `packed`) is split: it sums
 * every element in the same order whatever rows a call gets. A plain weight's
 * kernels are chosen by a call's row count (small-M up to RC_SMALL_M rows, the
 * panel kernel, BLAS) and round differently, so split rows would make the
 * results depend on the thread count (the forced-baseline build, which has no
 * packed layout, showed it: .ci/run). P = min(BLAS threads, 8, N / 4) when rnncore._runtime.threads allowed it
 * (rc_row_split: only when SciPy's OpenBLAS was loaded with a short thread
 * timeout -- spinning BLAS workers would compete with the loop's threads)
 * and the loop does at least RC_SPLIT_MIN_TOTAL multiply-adds (handing tasks
 * to the team costs a few us, starting threads ~55 us) over at least
 * RC_SPLIT_MIN_ROW_STEPS rows times steps per thread. Above RC_SPLIT_MAX_WORK per step, the rows are split
 * only for T >= 2 steps and more than RC_SPLIT_PACKED_ROWS rows per thread.
 * Measured on 2 Zen 4 cores, (64, 1024)(1024, 4096) and (64, 4096)(4096, 1024)
 * with the rows split over 2 threads: 200-215 GFLOP/s of thread-CPU time,
 * where OpenBLAS on 2 threads reaches ~150 per step (it repacks B every call);
 * LSTM (T, N, D, H) = (50, 64, 512, 1024) forward went from 289 to 205 ms,
 * forward+backward from 747 to 637 ms. Each thread keeps its own rows through
 * all T steps: no per-step hand-off between threads (splitting the columns
 * instead needs a barrier per step, and measured far worse on the shared
 * machine). Otherwise the per-step GEMM itself scales on BLAS's threads. The count may depend on BLAS's thread count; the numbers
 * computed do not (each row's products are the same whichever thread runs
 * them). */
#define RC_SPLIT_MAX_WORK 33554432LL     /* 32 M multiply-adds per step */
#define RC_SPLIT_MIN_TOTAL 2000000LL
/* ... and at least RC_SPLIT_MIN_ROW_STEPS (row, step) pairs per thread: a thread
 * reads the whole packed weight into its own core's caches before its first step
 * (the caller packed it into its own), which a short loop over few rows does not
 * repay. Row split on / off in one process, 2 Zen 4 cores, float32 inference
 * (fb): LSTM (T, N, D, H) = (2, 16, 64, 128) 0.85 (0.87), (4, 16, ..) 0.89 (0.96),
 * (8, 16, ..) 1.16 (1.09), (2, 64, 256, 256) 1.21 (0.95); GRU (4, 16, ..) 0.88
 * (0.99), (16, 16, ..) 1.43 (1.21); RNN (8, 16, ..) 1.27 (0.99): from 64 pairs
 * (T = 8 at 8 rows a thread). */
#define RC_SPLIT_MIN_ROW_STEPS 64
#define RC_SPLIT_PACKED_ROWS 4
/* The most threads rnncore's own loops and packing run at once (rc_run_tasks). */
#define RC_MAX_THREADS 8

/* How many threads rnncore's own work may use now: BLAS's current count, at most
 * RC_MAX_THREADS, where the row split is allowed (the BLAS workers sleep); 1
 * otherwise, and inside a single-thread section. The row split and the packing on
 * threads (rc_gemm_packed.h: rc_pack_par_*) both start from it. */
static int rc_own_threads(void)
{
    if (!rc_row_split || rc_blas_get_threads == NULL || rc_local_depth() > 0) return 1;
    int P = rc_blas_get_threads();
    return P > RC_MAX_THREADS ? RC_MAX_THREADS : P;
}

static int rc_row_threads(rc_idx N, long long work, rc_idx T, int packed)
{
    if (!packed || work * (long long)T < RC_SPLIT_MIN_TOTAL) return 1;
    int P = rc_own_threads();
    if (P > N / 4) P = (int)(N / 4);
    if (P < 2) return 1;
    if ((long long)T * ((N + P - 1) / P) < RC_SPLIT_MIN_ROW_STEPS) return 1;
    if (work <= RC_SPLIT_MAX_WORK) return P;
    return T >= 2 && (N + P - 1) / P > RC_SPLIT_PACKED_ROWS ? P : 1;
}

/* Rows of thread k of P among the first B rows (k, k+P, ... < B). */
static rc_idx rc_share(rc_idx B, int k, int P)
{
    return B > k ? (B - k + P - 1) / P : 0;
}

typedef void (*rc_task_fn)(void *);
typedef struct { rc_task_fn fn; void *arg; } rc_task;
static void *rc_task_main(void *p) { rc_task *t = (rc_task *)p; t->fn(t->arg); return NULL; }

static inline void rc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* A persistent team for rc_run_tasks (Linux: futexes).
 *
 * Starting a thread per task and joining it costs ~55 us on a 2-core Zen 4 VM (a
 * futex wake of a sleeping thread ~25 us: the hypervisor's IPI), and a forward or
 * backward call runs one to three such teams (packing on threads, the row-split
 * loop, the dW kernel): at short sequences that was most of the call -- an LSTM
 * (T, N, D, H) = (2, 16, 64, 128) inference took 262 us on 2 threads against
 * 139 us on one. So the kernel modules keep one team of up to RC_MAX_THREADS - 1
 * workers (shared through the thread state: rc_pool_attach), started on first
 * use. After a task a worker spins for the submitting module's rc_pool_spin_ns (pause;
 * every 32 rounds it reads the clock and yields the core to any other runnable
 * thread there, such as BLAS's) before it sleeps on its futex word, so the
 * calls of a training or inference loop find it awake; the caller waits for the
 * team the same way. PyTorch's OpenMP threads spin the same way between calls
 * (libgomp: GOMP_SPINCOUNT), OpenBLAS's for OPENBLAS_THREAD_TIMEOUT; ours only
 * for a bounded, short time, then sleep.
 *
 * The caller runs task 0, then any task whose worker has not started it yet
 * (asleep, still waking, or its core taken by another process: `claim`, swapped
 * 0 -> 1 by whoever runs it) instead of waiting for that worker; the same tasks,
 * so the same numbers. In one process, taking / waiting (bench/compare-results/
 * 2026-11-30-take-ab.*, 2 Zen 4 cores): quiet 0.94-1.16x (noise), with one busy process
 * beside it 0.86-1.15x (the 0.86, RNN (100, 32) fb, where it took 4 tasks, was
 * 1.06 and 0.93 repeated), most rows 1.00-1.05x; the caller took thousands of
 * tasks under load at (T, N) = (8, 16) and (100, 16), few at (100, 32).
 *
 * One submitter at a time (`busy`): a second thread calling rc_run_tasks while the
 * team works (two Python threads, a nested call) starts its own threads as before
 * (rc_run_spawned). The same tasks run with the same arguments either way, so
 * results do not depend on which path ran them. After fork() the child has no
 * workers: a pthread_atfork handler empties the team (the child starts its own).
 * Test hooks: rc_set_pool (0: always spawn; the spin time). */
#define RC_POOL_SPIN_NS_DEFAULT 100000L
#if defined(__linux__)
#define RC_POOL 1
#include <time.h>
typedef struct {
    int gen;            /* futex word: bumped by the submitter for each task posted */
    int sleeping;       /* the worker sleeps (or is about to) on gen */
    int claim;          /* 0: the posted task is not taken yet; 1: the worker or the
                           submitter took it (whoever swaps 0 -> 1 runs it) */
    unsigned mxcsr;     /* the submitter's SSE control (rounding, FTZ/DAZ), for the task */
    long spin_ns;       /* how long to spin after the task (the submitter's module's setting) */
    rc_task task;
    pthread_t th;
    char pad[64];
} rc_worker;
typedef struct {
    int busy;           /* a submitter owns the team */
    int n;              /* workers started */
    int pending;        /* futex word: workers still running the current tasks */
    int waiting;        /* the submitter sleeps (or is about to) on pending */
    int failed;         /* a worker could not be started: spawn from now on */
    int caller_cpu1;    /* 1 + the CPU the workers' affinity leaves to the submitter (0:
                           to be set at the next run; rc_pool_keep_apart) */
    int masked;         /* some worker's affinity was narrowed (to undo when turned off) */
    rc_worker w[RC_MAX_THREADS];
} rc_pool_t;
/* The team: this module's own until rc_blas_thread_hooks hands every kernel
 * module the same one, in the thread state rnncore._runtime.threads allocates
 * (rc_thread_state_bytes(): the section state, then the team), so the modules share
 * one team -- a model mixing cells does not get one spinning team per module. */
static rc_pool_t rc_pool_local;
static rc_pool_t *rc_pool_p = &rc_pool_local;
#else
#define RC_POOL 0
#endif
static int rc_pool_registered = 0;   /* the atfork handler is installed (kept across fork) */
static int rc_pool_enabled = 1;
static int rc_pool_take = 1;           /* the submitter takes tasks no worker has started */
static int rc_pool_apart = 1;          /* the workers kept off the submitter's CPU */
static long rc_pool_spin_ns = RC_POOL_SPIN_NS_DEFAULT;
static long long rc_pool_runs = 0;     /* team runs (a count for tests) */
static long long rc_pool_taken = 0;    /* tasks the submitter took from a worker (tests) */
static long long rc_pool_taken_count(void)
{
    return __atomic_load_n(&rc_pool_taken, __ATOMIC_RELAXED);
}
static void rc_set_pool_take(int take) { __atomic_store_n(&rc_pool_take, take, __ATOMIC_RELAXED); }
static void rc_set_pool_apart(int apart)
{
    __atomic_store_n(&rc_pool_apart, apart, __ATOMIC_RELAXED);
}

static long long rc_pool_count(void) { return __atomic_load_n(&rc_pool_runs, __ATOMIC_RELAXED); }
#if RC_POOL
static size_t rc_thread_state_bytes(void) { return RC_THREAD_STATE_TEAM + sizeof(rc_pool_t); }
static size_t rc_pool_id(void) { return (size_t)rc_pool_p; }
static void rc_pool_attach(size_t state)
{
    /* (before any kernel call: rnncore._bindings installs the hooks at import;
     * a module whose own team has already started keeps it) */
    if (state != 0 && rc_pool_p == &rc_pool_local && rc_pool_local.n == 0)
        rc_pool_p = (rc_pool_t *)((char *)state + RC_THREAD_STATE_TEAM);
}
#else
static size_t rc_thread_state_bytes(void) { return RC_THREAD_STATE_TEAM; }
static size_t rc_pool_id(void) { return 0; }
static void rc_pool_attach(size_t state) { (void)state; }
#endif
static void rc_set_pool(int enabled, long spin_ns)
{
    __atomic_store_n(&rc_pool_enabled, enabled, __ATOMIC_RELAXED);
    __atomic_store_n(&rc_pool_spin_ns, spin_ns < 0 ? RC_POOL_SPIN_NS_DEFAULT : spin_ns,
                     __ATOMIC_RELAXED);
}

/* Run fn(args + k * size) for k = 0..P-1, task 0 on the calling thread, the
 * others on new threads; joins them all. If a thread cannot be created its
 * task runs on the calling thread (same result). */
static void rc_run_spawned(rc_task_fn fn, void *args, size_t size, int P)
{
    pthread_t th[RC_MAX_THREADS];
    rc_task tk[RC_MAX_THREADS];
    int started[RC_MAX_THREADS] = {0};
    for (int k = 1; k < P; k++) {
        tk[k].fn = fn;
        tk[k].arg = (char *)args + k * size;
        started[k] = pthread_create(&th[k], NULL, rc_task_main, &tk[k]) == 0;
    }
    fn(args);
    for (int k = 1; k < P; k++) {
        if (started[k]) pthread_join(th[k], NULL);
        else fn((char *)args + k * size);
    }
}

#if RC_POOL
static long long rc_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Spin until (*word == value) == until_equal, or `spin` ns have passed;
 * 1: the condition holds. */
static int rc_pool_spin(int *word, int value, int until_equal, long spin)
{
    long long end = 0;
    for (unsigned i = 0;; i++) {
        if ((__atomic_load_n(word, __ATOMIC_ACQUIRE) == value) == until_equal) return 1;
        if (spin <= 0) return 0;
        if ((i & 31) == 0) {
            long long now = rc_now_ns();
            if (end == 0) end = now + spin;
            else if (now >= end) return 0;
            if (i > 0) sched_yield();   /* a runnable thread on this core (BLAS's) goes first */
        }
        rc_cpu_relax();
    }
}

/* Sleep until (*word == value) == until_equal, as rc_pool_spin; *flag says so to
 * the waker (both sequentially consistent: the waker stores the word, then reads
 * the flag; we store the flag, then read the word -- one of us sees the other's
 * store). */
static void rc_pool_sleep(int *word, int value, int until_equal, int *flag)
{
    int now;
    __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
    while (((now = __atomic_load_n(word, __ATOMIC_SEQ_CST)) == value) != until_equal)
        syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, now, NULL, NULL, 0);
    __atomic_store_n(flag, 0, __ATOMIC_SEQ_CST);
}

static void rc_pool_wake(int *word, int *flag)
{
    if (__atomic_load_n(flag, __ATOMIC_SEQ_CST))
        syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void *rc_pool_main(void *p)
{
    rc_worker *w = (rc_worker *)p;
    int seen = 0;   /* gen was 0 when the thread was started (rc_pool_acquire) */
    for (;;) {
        if (!rc_pool_spin(&w->gen, seen, 0, __atomic_load_n(&w->spin_ns, __ATOMIC_RELAXED)))
            rc_pool_sleep(&w->gen, seen, 0, &w->sleeping);
        seen = __atomic_load_n(&w->gen, __ATOMIC_ACQUIRE);
        /* the task posted last, unless the submitter took it (the worker woke
         * late: then there is nothing to do; a later post bumps gen again) */
        if (__atomic_exchange_n(&w->claim, 1, __ATOMIC_ACQ_REL) != 0) continue;
#if defined(__x86_64__) || defined(__i386__)
        /* a thread started per call inherits the caller's rounding and
         * flush-to-zero modes; a worker takes them with each task */
        __builtin_ia32_ldmxcsr(w->mxcsr);
#endif
        w->task.fn(w->task.arg);
        if (__atomic_sub_fetch(&rc_pool_p->pending, 1, __ATOMIC_SEQ_CST) == 0)
            rc_pool_wake(&rc_pool_p->pending, &rc_pool_p->waiting);
    }
    return NULL;
}

/* In a forked child: no workers (only the forking thread survives). */
static void rc_pool_atfork_child(void)
{
    memset(rc_pool_p, 0, sizeof *rc_pool_p);
}

/* Take the team for P - 1 workers (starting any missing); 0: spawn instead. */
static int rc_pool_acquire(int P)
{
    if (!__atomic_load_n(&rc_pool_enabled, __ATOMIC_RELAXED)
        || __atomic_exchange_n(&rc_pool_p->busy, 1, __ATOMIC_ACQUIRE))
        return 0;
    if (!rc_pool_registered) {
        rc_pool_registered = 1;
        if (pthread_atfork(NULL, NULL, rc_pool_atfork_child) != 0) rc_pool_p->failed = 1;
    }
    while (!rc_pool_p->failed && rc_pool_p->n < P - 1) {
        rc_worker *w = &rc_pool_p->w[rc_pool_p->n];
        w->gen = 0;
        w->sleeping = 0;
        w->claim = 1;   /* no task posted yet */
        if (pthread_create(&w->th, NULL, rc_pool_main, w) != 0) rc_pool_p->failed = 1;
        else {
            rc_pool_p->n++;
            rc_pool_p->caller_cpu1 = 0;   /* a new worker: its affinity set at the next run */
        }
    }
    if (rc_pool_p->n < P - 1) {
        __atomic_store_n(&rc_pool_p->busy, 0, __ATOMIC_RELEASE);
        return 0;
    }
    return 1;
}

/* Keep the workers off the submitter's CPU: every worker's affinity becomes the
 * submitter's own minus the CPU it runs on, set again whenever that CPU changes or
 * a worker was started (one sched_getcpu a run; 1 + n syscalls a change). Why: a
 * woken worker may be put on its waker's CPU, behind the submitter, and run only
 * when that yields. On a 2-vCPU KVM guest whose scheduler packs wake-ups onto busy
 * vCPUs (sched_vcpu_pack on its kernel command line; an idle vCPU halted at once),
 * after a pause of 50 ms or more the workers stayed on the submitter's CPU for the
 * next 20 calls: an RNN (100, 16, 64, 128) inference ran at one thread's speed, the
 * submitter taking 40-95 of 100 tasks (0.41-0.51 ms a call against 0.26-0.29 back to
 * back; the worker pinned apart: 0.24-0.25 ms, none taken). A submitter allowed one
 * CPU (taskset) leaves the workers as they are; so do failures. The submitter's set
 * is read when its CPU changes: a change of that set alone reaches the workers at
 * the next change of CPU (before this, the workers kept the set they were started
 * with). The tasks are the same wherever they run: results do not depend on it. */
static void rc_pool_keep_apart(void)
{
#if defined(__linux__) && defined(CPU_SET) && defined(_GNU_SOURCE)
    cpu_set_t set;
    if (!__atomic_load_n(&rc_pool_apart, __ATOMIC_RELAXED)) {
        if (rc_pool_p->masked && sched_getaffinity(0, sizeof set, &set) == 0) {
            /* turned off: every worker back to the submitter's set */
            for (int k = 0; k < rc_pool_p->n; k++)
                pthread_setaffinity_np(rc_pool_p->w[k].th, sizeof set, &set);
            rc_pool_p->masked = 0;
        }
        rc_pool_p->caller_cpu1 = 0;
        return;
    }
    int cpu = sched_getcpu();
    if (cpu < 0 || cpu + 1 == rc_pool_p->caller_cpu1) return;
    if (sched_getaffinity(0, sizeof set, &set) != 0 || !CPU_ISSET(cpu, &set)
        || CPU_COUNT(&set) < 2)
        return;
    CPU_CLR(cpu, &set);
    for (int k = 0; k < rc_pool_p->n; k++)
        pthread_setaffinity_np(rc_pool_p->w[k].th, sizeof set, &set);
    rc_pool_p->caller_cpu1 = cpu + 1;
    rc_pool_p->masked = 1;
#endif
}

/* Test hook: whether worker k may run on CPU c (0/1), -1 without that worker or on
 * failure. */
static int rc_pool_worker_cpu(int k, int c)
{
#if defined(__linux__) && defined(CPU_SET) && defined(_GNU_SOURCE)
    cpu_set_t set;
    if (k < 0 || k >= rc_pool_p->n || c < 0 || c >= CPU_SETSIZE
        || pthread_getaffinity_np(rc_pool_p->w[k].th, sizeof set, &set) != 0)
        return -1;
    return CPU_ISSET(c, &set) ? 1 : 0;
#else
    (void)k; (void)c;
    return -1;
#endif
}

static void rc_run_pooled(rc_task_fn fn, void *args, size_t size, int P)
{
    unsigned mxcsr = 0;
    const long spin = __atomic_load_n(&rc_pool_spin_ns, __ATOMIC_RELAXED);
#if defined(__x86_64__) || defined(__i386__)
    mxcsr = __builtin_ia32_stmxcsr();
#endif
    rc_pool_keep_apart();
    __atomic_store_n(&rc_pool_p->pending, P - 1, __ATOMIC_SEQ_CST);
    for (int k = 1; k < P; k++) {
        rc_worker *w = &rc_pool_p->w[k - 1];
        w->mxcsr = mxcsr;
        __atomic_store_n(&w->spin_ns, spin, __ATOMIC_RELAXED);
        w->task.fn = fn;
        w->task.arg = (char *)args + k * size;
        __atomic_store_n(&w->claim, 0, __ATOMIC_RELEASE);   /* after the task's fields */
        __atomic_add_fetch(&w->gen, 1, __ATOMIC_SEQ_CST);
        rc_pool_wake(&w->gen, &w->sleeping);
    }
    fn(args);
    /* a worker that has not started its task by now (asleep, not yet awake, or
     * its core taken by another process): run the task here instead of waiting
     * for it -- the same task, so the same numbers */
    if (__atomic_load_n(&rc_pool_take, __ATOMIC_RELAXED))
        for (int k = 1; k < P; k++) {
            rc_worker *w = &rc_pool_p->w[k - 1];
            if (__atomic_load_n(&w->claim, __ATOMIC_RELAXED) != 0
                || __atomic_exchange_n(&w->claim, 1, __ATOMIC_ACQ_REL) != 0)
                continue;
            fn((char *)args + k * size);
            __atomic_add_fetch(&rc_pool_taken, 1, __ATOMIC_RELAXED);
            __atomic_sub_fetch(&rc_pool_p->pending, 1, __ATOMIC_SEQ_CST);
        }
    if (!rc_pool_spin(&rc_pool_p->pending, 0, 1, spin))
        rc_pool_sleep(&rc_pool_p->pending, 0, 1, &rc_pool_p->waiting);
    __atomic_add_fetch(&rc_pool_runs, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&rc_pool_p->busy, 0, __ATOMIC_RELEASE);
}
#else
static int rc_pool_worker_cpu(int k, int c) { (void)k; (void)c; return -1; }   /* no team */
#endif

/* Run fn(args + k * size) for k = 0..P-1 (each a task of `size` bytes), task 0
 * on the calling thread, the others on the team's workers (rc_pool_t) or, when the
 * team is taken or off, on threads started for them; returns when all are done. */
static void rc_run_tasks(rc_task_fn fn, void *args, size_t size, int P)
{
    if (P > RC_MAX_THREADS) P = RC_MAX_THREADS;
    if (P <= 1) {
        fn(args);
        return;
    }
#if RC_POOL
    if (rc_pool_acquire(P)) {
        rc_run_pooled(fn, args, size, P);
        return;
    }
#endif
    rc_run_spawned(fn, args, size, P);
}

/* Unit-split time loops (the LSTM's; lstm.pyx: fwd_units, bwd_units).
 *
 * Weight-stationary (DeepCPU, Zhang et al., USENIX ATC 2018; oneDNN splits the
 * cell GEMM over column blocks the same way): thread k of P owns the hidden units
 * [u_k, u_{k+1}) -- the columns of all four gates for them -- and keeps its slice
 * of the packed recurrent weight (H x 4U forward, 4H x U backward) for all T
 * steps, so at H = 256 float32 each thread reads 512 KB from its own L2 every
 * step instead of the whole 1 MB weight from L3 (the row split). Every thread
 * runs every row for its units; a step's h_t (forward) or dA_t (backward) must be
 * complete before the next product reads it (rc_units_* below). Each element is still one packed-kernel dot
 * product in k order, so the results are bitwise those of the row split and of
 * one thread.
 *
 * Default (mode 0, the shape rule below): only the forward loops whose recurrent
 * weight is so large that it streams from L3 every step anyway (at least
 * RC_UNIT_L3_BYTES in all: float32 H >= 887, float64 H >= 628), training and
 * inference; with Intel's rules only where a thread gets fewer than
 * RC_UNIT_INTEL_ROWS rows (below); never on the AVX2 layout (the comment before
 * rc_unit_threads). There the row split makes every core stream the WHOLE weight from
 * L3 each step, the unit split a 1/P share of it. Measured on 2 Zen 3 cores
 * (512 KB L2, 32 MB L3; session 14, float32 LSTM through the model API, 9-15
 * alternating repeats in one process, time with the rows split / with the rule):
 * forward + backward at (T, N, D, H) = (50, 64, 512, 1024) 1.076, 1.014, 1.012 in
 * three runs (the forward split, the backward on rows), 1.024 and 0.944 with the
 * backward split too (forced); (50, 64, 256, 1024) 0.998. Inference (session 15)
 * computes its input projection in chunks of steps in the unit loops too
 * (rc_infer_chunk: memory for a chunk, not all T; lstm.pyx: block_input, each
 * block the columns of its units at a chunk's first step, on the first D rows of
 * its packed [Wx; Wh] slices): rows / units, the median of 21 alternating pairs,
 * 1.045 (quartiles 1.00-1.11) at (50, 64, 512, 1024), 1.02 (0.83-1.12, noise) at
 * (50, 64, 256, 1024); bitwise the row split's results, about its memory;
 * session 14 had measured 1.03-1.10 with the units forced and the chunks off (the
 * full (T, N, 4H) memory). At H <= 768 the rows won (forced, inference:
 * (50, 64, 512, 768) 0.926, (50, 64, 512, 512) 0.970, (100, 64, 256, 512) 0.939,
 * (100, 32, 256, 256) 0.949). Only P = 2 was measured; the threshold is on the
 * whole weight, so at more threads each share is smaller still. The L2-sized
 * window of earlier sessions (a share small enough to stay in L2: the figures
 * below) measured no better than the row split in the quietest run, so it is
 * gone from the rule; forced on (mode 1) the split stays a tested path, forward
 * and backward. Modes: rc_set_unit_split, rnncore._kernels.lstm._set_unit_split:
 * 0 the shape rule, 1 forced, -1 off.
 *
 * Shape rule (mode 0; rc_unit_threads; shapes, the thread configuration and the
 * CPU's vendor only, as for the row split): the forward loop of an LSTM without
 * projection whose weight is packed, T >= 2, whose rows the row split would put on
 * P >= 2 threads, and whose recurrent weight takes at least RC_UNIT_L3_BYTES; on
 * Intel CPUs also fewer than RC_UNIT_INTEL_ROWS rows a thread (rc_unit_rows);
 * not on the AVX2 layout. And, forward and backward, a loop of fewer rows than
 * the row split takes (RC_UNIT_FEW_ROWS, below) over at least RC_UNIT_FEW_MIN_T
 * steps with a weight of at least RC_UNIT_FEW_MIN_BYTES.
 *
 * Measured (indicative only: a 2-core Zen 4 VM with a load average of 4-9 from other
 * jobs, minima of 15-30 interleaved repeats, float32, 2 threads; forward, backward
 * in ms, rows split -> unit split):
 *   kernel, x Wx negligible (D = 8): (T, N, H) = (100, 32, 256): fwd 39.9 -> 31.6,
 *     bwd 130.7 -> 173.7; (50, 64, 512): fwd 174.5 -> 156.2, bwd 452.6 -> 460.2;
 *     (100, 16, 128): fwd 3.1 -> 6.3; (100, 4, 256) (rows: one thread): fwd 16.3 -> 18.5
 *   model API, LSTM (100, 32, 256, 256): fwd 85.5 -> 54.2 and 69.9 -> 83.1 in two
 *     runs, fb 163 -> 208 and 251 -> 255.
 *   with each thread claiming its own blocks together (the final schedule), load 9:
 *     kernel (100, 32, 256) fwd 45.8 -> 36.7, bwd 280.7 -> 201.9 (units forced on);
 *     model API (100, 32, 256, 256) fwd 118.2 -> 118.1 (by policy), fb 365 -> 388.
 *   the quietest run (load 1.5-2.5), kernel, units forced on: (100, 32, 256) fwd
 *     10.5 -> 11.4 (the row loop at 160 GFLOP/s: the L3 reads of the whole weight do
 *     not limit it), bwd 21.7 -> 22.5; (100, 64, 256) fwd 36.4 -> 35.6, bwd 72.9 ->
 *     105.5; (100, 32, 300) fwd 41.9 -> 30.9, bwd 120.0 -> 132.2 (load 2.5).
 * Hence the L2 window left the rule (session 14); recheck on a quiet machine with
 * `_set_unit_split(1)` against `(-1)` around the same timings.
 * The forward gain at H = 256 is the L2 effect (each thread reads its 512 KB slice
 * from its own L2 instead of the whole 1 MB weight from L3); the backward has two
 * hand-offs per step and measured no better, so it keeps the row split; small
 * weights (in L2 anyway) keep theirs too (loops of too few rows for the row split
 * take the units: RC_UNIT_FEW_ROWS below). A first version with a
 * static split and a plain barrier per step measured 10-60% slower than the row
 * split under this load (a descheduled thread stalls every step): hence the block
 * claiming below. */
#define RC_UNIT_L3_BYTES (12LL << 20)
/* On Intel's server cores the rule also asks for few rows: a unit split only where
 * the row split would give each thread fewer than RC_UNIT_INTEL_ROWS rows. There
 * (2 MiB L2 per core, the L3 a mesh) a core streaming the whole weight from L3 for
 * 16 or more rows lost little, and the unit split's per-step hand-off cost more
 * than the halved stream saved. Measured on 2 Intel Xeon cores (Emerald Rapids,
 * session 20; float32 LSTM inference, the rule's units against rows forced, 10
 * alternating blocks in one process, rows / units): (T, N, D, H) = (50, 64, 512,
 * 1024) 0.886, 0.897, 0.914, 0.931, 0.994 in five runs; (50, 32, 512, 1024) 0.920,
 * 0.957; (20, 64, 1024, 1024) 0.903, 1.012; but (50, 16, 256, 1024), 8 rows a
 * thread, 1.038, 1.047 (the units won); forward + backward at (50, 64, 512, 1024)
 * 0.993 (the backward keeps the rows anyway). perf of the forced split at (100,
 * 32, 256, 256): 8 % of the samples waiting at the step's hand-off
 * (rc_units_wait). The AMD cores measured above (Zen 3; Zen 5, session 19: 1.06
 * inference, 1.03 forward + backward at (50, 64, 512, 1024); Zen 4, session 21,
 * bench/rules_ab.py, rows / units: 1.00 inference and 1.11 forward + backward there
 * -- one 6-block timing; the backward runs on rows either way, and the row's time
 * moved by up to 1.35x between runs on that VM -- and 0.96 inference at (50, 32,
 * 512, 1024)) keep the rule without
 * the bound (rc_activations.h: rc_intel_rules; measured on Emerald Rapids only,
 * applied to every Intel CPU by extrapolation). */
#define RC_UNIT_INTEL_ROWS 16
static int rc_unit_rows(void) { return rc_intel_rules() ? RC_UNIT_INTEL_ROWS : 0; }
/* Whether a row split gives each share its rows of the loop's own per-row buffers
 * (the scratch; one step's gates in inference; the backward's carries) as one
 * block (1, the default; _loop.pxd: loop_share) or every P-th row as in the callers' arrays (0: the test
 * and benchmark hook rc_set_private_rows; the same arithmetic either way). */
static int rc_private_rows_on = 1;
static void rc_set_private_rows(int on) { rc_private_rows_on = on != 0; }
static int rc_private_rows(void) { return rc_private_rows_on; }
static long long rc_row_splits = 0;   /* time loops run with their rows split (test hook) */
static void rc_count_row_split(void) { __atomic_fetch_add(&rc_row_splits, 1, __ATOMIC_RELAXED); }
static long long rc_row_split_count(void) { return __atomic_load_n(&rc_row_splits, __ATOMIC_RELAXED); }

static int rc_unit_mode = 0;   /* -1: never, 0: by shape (the default), 1: always (rc_unit_forced threads) */
static int rc_unit_forced = 2;
static void rc_set_unit_split(int mode, int threads)
{
    rc_unit_mode = mode;
    rc_unit_forced = threads < 1 ? 1 : threads > 8 ? 8 : threads;
}

/* Few rows (any CPU, forward and backward): below RC_UNIT_FEW_ROWS rows the row
 * split has no second thread (it gives each at least 4 rows), and a loop of one
 * to seven sequences ran on one core, streaming the whole weight every step --
 * PyTorch's LSTM (oneDNN), splitting each step over both cores, was 1.2-1.35x
 * faster at N = 1..6, H = 512 (bench/sweep.py). Such a loop splits the hidden
 * units over the threads from RC_UNIT_FEW_MIN_T steps and a weight of
 * RC_UNIT_FEW_MIN_BYTES on. Measured on 2 AMD EPYC Zen 4 cores with AVX-512
 * hidden (session 29; float32 through the model API, 6-8 alternating rounds in
 * one process, medians; rows / units, > 1: units faster), inference: (T, N, D, H)
 * = (100, 1, 512, 512) 1.42, (100, 4, 512, 512) 1.31, (50, 1, 512, 1024) 1.66,
 * (50, 4, 1024, 1024) 1.47, (100, 6, 512, 512) 1.23, (20, 4, 512, 512) 1.21,
 * (100, 2, 256, 256) 1.42, (100, 4, 192, 192) 1.29, (100, 4, 256, 256) 1.02,
 * (100, 1, 256, 256) 0.98, (100, 4, 128, 128) 1.09, (100, 1, 128, 128) 1.07;
 * but (8, 4, 512, 512) 0.97, (4, 4, 512, 512) 0.91 (the bound on T), (100, 4, 64,
 * 64) 0.95 and (100, 2, 96, 96) 1.00 (the bound on bytes); forward + backward:
 * (100, 1, 512, 512) 1.26, (100, 4, 512, 512) 1.25, (50, 1, 512, 1024) 1.45,
 * (100, 4, 256, 256) 1.29, (100, 1, 256, 256) 1.28, (100, 6, 512, 512) 1.27,
 * (20, 4, 512, 512) 1.20, (100, 4, 192, 192) 1.09, (100, 4, 128, 128) 1.06,
 * (100, 1, 128, 128) 1.19; (100, 4, 64, 64) 0.91, (4, 4, 512, 512) 0.99. The
 * results are bitwise those of one thread (each unit's products are the same
 * whichever thread runs them; checked at every shape above). */
#define RC_UNIT_FEW_ROWS 8
#define RC_UNIT_FEW_MIN_T 16
#define RC_UNIT_FEW_MIN_BYTES (256LL << 10)

/* On the AVX2 layout (rc_simd_tier() == 3) the rule never splits the units of a
 * loop the row split takes (too few rows: above, on any layout): there
 * the packed kernel prefetches each next panel of a large weight into
 * L2 as it goes (rc_gemm_packed.h: rc_pk_next_l2_use; 8 MiB or more, so any
 * weight of RC_UNIT_L3_BYTES), so every thread
 * streaming the whole weight from L3 for its rows costs little, and the row
 * split has no per-step hand-off. On 2 AMD EPYC Zen 4 cores with AVX-512 hidden
 * (session 27; float32 LSTM inference through the model API, 21 alternating
 * rounds in one process, median, units / rows): (T, N, D, H) = (50, 64, 512,
 * 1024) 1.16; (50, 32, 512, 1024) 1.18; (50, 16, 256, 1024) 1.10; (50, 8, 256,
 * 1024) 1.11 (bench/compare-results/2026-12-03-*-zen4avx2-s27-next-l2-ab.txt
 * and ...-harness-and-units.txt); without the prefetch the split had won
 * 1.01-1.10 on the AVX2 cores of Zen 3 (above). Measured on that Zen 4 VM only
 * and applied to every CPU on the AVX2 layout by extrapolation.
 *
 * Threads of a unit split for an LSTM loop (N rows, hidden size H, G gates, T
 * steps, elsize-byte elements, packed weight, forward or backward), or 1: none. */
static int rc_unit_threads(rc_idx N, rc_idx H, rc_idx G, rc_idx T, size_t elsize, int packed,
                           int backward)
{
    if (!packed || T < 2 || N < 1 || H < 2 || rc_unit_mode < 0) return 1;
    if (rc_unit_mode > 0) return rc_unit_forced < H ? rc_unit_forced : (int)H;
    long long bytes = (long long)G * H * H * (long long)elsize;
    if (N < RC_UNIT_FEW_ROWS) {   /* too few rows to split: below */
        if (T < RC_UNIT_FEW_MIN_T || bytes < RC_UNIT_FEW_MIN_BYTES) return 1;
        int P = rc_own_threads();
        return P < 2 ? 1 : P < H ? P : (int)H;
    }
    if (backward) return 1;
    long long work = (long long)N * G * H * H;
    int P = rc_row_threads(N, work, T, packed);
    if (P < 2) return 1;
    if (bytes < RC_UNIT_L3_BYTES || rc_simd_tier() == 3) return 1;   /* AVX2: above */
    const int rows = rc_unit_rows();   /* Intel: only where each thread has few rows */
    return rows > 0 && (N + P - 1) / P >= rows ? 1 : P;   /* the most rows a thread gets */
}

/* The schedule of a unit split: the units in nb blocks, each step (forward) or
 * half-step (backward: the fused pass, then the dh carry) a "phase" of nb block
 * tasks. A thread may start phase p once all nb * p earlier tasks are done
 * (rc_units_wait), then claims all its own blocks of phase p at once, runs them,
 * then claims and runs any other block still unclaimed (rc_units_claim: a
 * compare-and-swap of the block's last phase, so each block runs once per
 * phase), and counts each finished task (rc_units_done). On an idle machine every
 * thread runs its own blocks (its weight slices stay in its L2); on a busy one a
 * thread that has not reached the phase holds up nobody: the other takes its
 * blocks. Waiting spins (pause) for a while, then sleeps on a futex
 * (sched_yield elsewhere). */
#define RC_UNITS_MAX_BLOCKS 16
typedef struct {
    int done, waiters, nb, pad;
    int last[RC_UNITS_MAX_BLOCKS];               /* the phase each block last ran in */
    rc_idx ub[RC_UNITS_MAX_BLOCKS + 1];          /* block b: units [ub[b], ub[b+1]) */
    rc_idx off[RC_UNITS_MAX_BLOCKS];             /* its packed weight slice, elements in */
    rc_idx ws[RC_UNITS_MAX_BLOCKS];              /* forward: gate q's panels at q * ws */
} rc_units;
#define RC_UNITS_SPINS 4000

static void rc_units_init(rc_units *u, int nb)
{
    u->done = 0; u->waiters = 0; u->nb = nb;
    for (int b = 0; b < RC_UNITS_MAX_BLOCKS; b++) u->last[b] = -1;
}

/* Wait until phase p may start: all nb * p earlier tasks done. */
static void rc_units_wait(rc_units *u, int p)
{
    const int target = p * u->nb;
    int d;
    for (int i = 0; i < RC_UNITS_SPINS; i++) {
        if (__atomic_load_n(&u->done, __ATOMIC_ACQUIRE) >= target) return;
        rc_cpu_relax();
    }
    __atomic_add_fetch(&u->waiters, 1, __ATOMIC_SEQ_CST);
    while ((d = __atomic_load_n(&u->done, __ATOMIC_SEQ_CST)) < target) {
#if defined(__linux__)
        syscall(SYS_futex, &u->done, FUTEX_WAIT_PRIVATE, d, NULL, NULL, 0);
#else
        sched_yield();
#endif
    }
    __atomic_sub_fetch(&u->waiters, 1, __ATOMIC_SEQ_CST);
}

/* Claim block b for phase p (1: ours to run, 0: another thread has it). */
static int rc_units_claim(rc_units *u, int b, int p)
{
    int expected = p - 1;
    if (__atomic_load_n(&u->last[b], __ATOMIC_RELAXED) != expected) return 0;
    return __atomic_compare_exchange_n(&u->last[b], &expected, p, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_RELAXED);
}

/* A claimed task is finished (its writes visible to whoever waits on the count). */
static void rc_units_done(rc_units *u)
{
    __atomic_add_fetch(&u->done, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&u->waiters, __ATOMIC_SEQ_CST) > 0) {
#if defined(__linux__)
        syscall(SYS_futex, &u->done, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
#endif
    }
}

#endif /* RC_THREADS_H */
