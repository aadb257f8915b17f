"""Run-time configuration, imported one way: ``blas`` <- ``threads`` <- ``config``.

blas      loading SciPy's BLAS (CPU kernel selection, thread timeout) and
          ``threadpool_limits``; imports nothing from rnncore
threads   the thread policy: time-loop single-thread sections, row split,
          the two directions of a layer on two threads (``run_pair``)
config    ``show_config``
"""
