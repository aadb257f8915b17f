# The kernels' thread policy (rc_threads.h): BLAS single-thread sections, the
# row-split thread count and the pthread runner. rnncore._runtime.threads installs the
# BLAS's thread functions at import (`_blas_thread_hooks` in each kernel).

cdef extern from "rc_threads.h" nogil:
    int loop_threads_begin "rc_loop_threads_begin"(long long work)
    void loop_threads_end "rc_loop_threads_end"(int saved)
    int gemms_threads_begin "rc_gemms_threads_begin"(long long work)
    int input_threads_begin "rc_input_threads_begin"(long long work)
    void set_input_single "rc_set_input_single"(long long work)
    void blas_thread_hooks "rc_blas_thread_hooks"(size_t set_fn, size_t get_fn,
                                                  long long min_work, size_t state,
                                                  int row_split)
    int row_threads "rc_row_threads"(Py_ssize_t N, long long work, Py_ssize_t T, bint packed)
    Py_ssize_t share "rc_share"(Py_ssize_t B, int k, int P)
    ctypedef void (*task_fn "rc_task_fn")(void *) noexcept nogil
    void run_tasks "rc_run_tasks"(task_fn fn, void *args, size_t size, int P)
    void set_pool "rc_set_pool"(int enabled, long spin_ns)
    void set_pool_take "rc_set_pool_take"(int take)
    void set_pool_apart "rc_set_pool_apart"(int apart)
    int pool_worker_cpu "rc_pool_worker_cpu"(int k, int c)
    long long pool_taken "rc_pool_taken_count"()
    size_t pool_id "rc_pool_id"()
    size_t thread_state_bytes "rc_thread_state_bytes"()
    long long pool_count "rc_pool_count"()
    int own_threads "rc_own_threads"()
    int single_open "rc_single_open"()
    void single_close "rc_single_close"(int opened)
    enum: RC_UNITS_MAX_BLOCKS
    ctypedef struct rc_units:
        int nb
        Py_ssize_t ub[17]
        Py_ssize_t off[16]
        Py_ssize_t ws[16]
    void units_init "rc_units_init"(rc_units *u, int nb)
    void units_wait "rc_units_wait"(rc_units *u, int p)
    bint units_claim "rc_units_claim"(rc_units *u, int b, int p)
    void units_done "rc_units_done"(rc_units *u)
    int unit_threads "rc_unit_threads"(Py_ssize_t N, Py_ssize_t H, Py_ssize_t G, Py_ssize_t T,
                                       size_t elsize, bint packed, bint backward)
    void set_unit_split "rc_set_unit_split"(int mode, int threads)
    void set_private_rows "rc_set_private_rows"(int on)
    int private_rows "rc_private_rows"()
    void count_row_split "rc_count_row_split"()
    long long row_split_count "rc_row_split_count"()
    int unit_rows "rc_unit_rows"()
