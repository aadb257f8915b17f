# cython: language_level=3
"""Training workspaces reused between calls (a bounded cache of freed blocks).

A training step allocates the same large arrays every time -- the activations
forward keeps for backward, backward's gradient workspaces, the weights packed
for the time loops, the layers' outputs -- and frees them when it is done. With
glibc's malloc those blocks come from fresh ``mmap``s or from the top of the
heap, which ``free`` hands back to the kernel once enough of it is free (the
trim threshold, adapted at run time); the next step then takes page faults,
and the kernel zeroes every page (2 MB pages with transparent huge pages)
before the step may write it. Measured on 2 Zen 4 cores, the ``rnncore train``
step (GRU, (T, N, E, H) = (100, 32, 64, 256)) spent ~7 % of its samples in the
kernel's page-fault path (``perf``: clear_page_erms, exc_page_fault); with
malloc's thresholds raised by hand (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) it ran 39.8 -> 36.2 ms, with this cache 37.4 ms
(medians of 6 runs each).

So the training paths (a forward that keeps its activations, and backward)
take their large arrays (:data:`MIN_BYTES` and up) from here: a block that
comes back (its last array or view gone) is kept, by exact size, for the next
request of that size, instead of being freed -- up to :func:`limit` bytes of
kept blocks (the least recently returned go first); a block larger than the
limit is NumPy's. Calls that keep nothing for backward (inference) never use
it. Like MKL's and oneDNN's scratchpads, or PyTorch's caching allocator on GPUs; ``rnncore.empty_cache()`` frees the kept blocks,
``rnncore.set_cache_limit(0)`` turns the cache off.

Blocks are mapped (``mmap``) apart from malloc's heap, so a kept block never pins
heap memory below it (a long-lived heap block keeps every free byte under it
resident: glibc trims only the top), and an evicted one goes back to the kernel
at once. Blocks of 4 MiB and more ask for transparent huge pages, as NumPy does
for its large arrays.

Blocks in use are reported to ``tracemalloc`` (domain :data:`TRACE_DOMAIN`) like
NumPy's own arrays, so traced memory still counts what the arrays hold; kept
blocks are not in use and are not traced (:func:`info` counts them).
"""
from libc.stdint cimport uintptr_t
from libc.string cimport memset

from _buffer cimport array_data

import numpy as np

cdef extern from "sys/mman.h" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    int madvise(void *addr, size_t length, int advice)
    void *MAP_FAILED
    int PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_ANONYMOUS
    int MADV_HUGEPAGE

cdef extern from "Python.h":
    int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr)

#: tracemalloc domain of the blocks in use ('rnnc')
TRACE_DOMAIN = 0x726E6E63
cdef unsigned int _DOMAIN = 0x726E6E63
#: smallest array (bytes) the training paths take from the cache; smaller ones are NumPy's
MIN_BYTES = 1 << 18
cdef size_t _min_bytes = MIN_BYTES
#: default limit of kept bytes
DEFAULT_LIMIT = 256 << 20

cdef size_t _limit = DEFAULT_LIMIT
cdef size_t _kept = 0
cdef dict _free = {}            # size -> list of addresses (most recently returned last)
cdef dict _order = {}           # address -> size, in the order returned (oldest first)
cdef Py_ssize_t _hits = 0, _misses = 0
cdef bint _poison = False      # test hook: fill returned blocks with NaN bits


cdef size_t _rounded(size_t n):
    return (n + 4095) & ~(<size_t>4095)


cdef void *_map(size_t n):
    cdef void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    if n >= (4 << 20):
        madvise(p, n, MADV_HUGEPAGE)    # (advice only: failure changes nothing)
    return p


cdef void _evict(size_t need):
    """Free the least recently returned blocks until `need` more bytes fit the limit."""
    global _kept
    cdef uintptr_t a
    cdef size_t n
    while _kept > 0 and _kept + need > _limit:
        a, n = next(iter(_order.items()))
        del _order[a]
        _free[n].remove(a)
        if not _free[n]:
            del _free[n]
        _kept -= n
        munmap(<void *>a, n)


cdef void _give_back(void *p, size_t n):
    global _kept
    PyTraceMalloc_Untrack(_DOMAIN, <uintptr_t>p)
    if _poison:
        memset(p, 0xFF, n)      # every float32/float64 a NaN: a read before a write shows
    if _free is None or n > _limit:     # (defensive: module state gone at shutdown)
        munmap(p, n)
        return
    _evict(n)
    _free.setdefault(n, []).append(<uintptr_t>p)
    _order[<uintptr_t>p] = n
    _kept += n


cdef class _Block:
    """`n` bytes (a multiple of 4096), page-aligned, exported as a writable buffer; returned to the
    cache when the last array on it is gone."""
    cdef void *p
    cdef size_t n
    cdef Py_ssize_t shape[1]
    cdef Py_ssize_t strides[1]

    def __getbuffer__(self, Py_buffer *buf, int flags):
        buf.buf = self.p
        buf.obj = self
        buf.len = self.n
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = b"B"
        buf.ndim = 1
        self.shape[0] = self.n
        self.strides[0] = 1
        buf.shape = self.shape
        buf.strides = self.strides
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __dealloc__(self):
        if self.p != NULL:
            _give_back(self.p, self.n)
            self.p = NULL


cdef _Block _take(size_t n):
    global _kept, _hits, _misses
    cdef _Block b = _Block.__new__(_Block)
    cdef void *p = NULL
    cdef list lst = _free.get(n)
    if lst:
        a = lst.pop()
        if not lst:
            del _free[n]
        del _order[a]
        _kept -= n
        p = <void *><uintptr_t>a
        _hits += 1
    else:
        # (no eviction here: kept blocks of other sizes may serve the next requests;
        # _give_back keeps the total under the limit when this one comes back)
        p = _map(n)
        if p == NULL:
            raise MemoryError(f"cannot allocate {n} bytes")
        _misses += 1
    b.p = p
    b.n = n
    if _poison:
        memset(p, 0xFF, n)      # a new block too: code adding into it before writing shows
    PyTraceMalloc_Track(_DOMAIN, <uintptr_t>p, n)
    return b


def empty(shape, dtype, bint pool=True):
    """An uninitialized C-contiguous array, 64-byte aligned: from the cache (page-aligned)
    when `pool` (a training call's) and it takes at least MIN_BYTES and at most the
    limit, else NumPy's (over-allocated and sliced to a 64-byte boundary: NumPy aligns
    to 16; whole-line vector loads and stores).

    `shape`: an int or a tuple of ints (a float size raises TypeError). Called on
    every kernel call (its packed weights, workspaces), so it stays cheap: ~1 us
    for a NumPy array (the address from the buffer protocol, not
    ``ndarray.ctypes``: that alone took ~1.8 us; a dtype object is used as given)."""
    dt = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
    cdef tuple shp = tuple(shape) if isinstance(shape, tuple) else (shape,)
    cdef Py_ssize_t count = 1, s
    for d in shp:
        s = d
        if s < 0:
            raise ValueError(f"negative dimensions are not allowed: {shape}")
        count *= s
    cdef Py_ssize_t isz = dt.itemsize, off
    cdef size_t nbytes = count * isz
    if not pool or nbytes < _min_bytes or _rounded(nbytes) > _limit:
        buf = np.empty(count + 64 // isz, dtype=dt)
        off = ((-<uintptr_t>array_data(buf)) % 64) // isz
        a = buf[off:off + count]
        return a if len(shp) == 1 else a.reshape(shp)
    b = _take(_rounded(nbytes))
    a = np.frombuffer(b, dtype=dt, count=count)
    return a if len(shp) == 1 else a.reshape(shp)


def set_limit(size_t nbytes):
    """Keep at most `nbytes` of returned blocks (0: keep none, the cache is off)."""
    global _limit
    _limit = nbytes
    _evict(0)


def limit():
    """The current limit (bytes)."""
    return _limit


def clear():
    """Free every kept block (blocks in use return to the cache later as usual)."""
    cdef size_t saved = _limit
    set_limit(0)
    set_limit(saved)


def info():
    """{'limit', 'kept_bytes', 'kept_blocks', 'hits', 'misses'} of the cache."""
    return {"limit": _limit, "kept_bytes": _kept, "kept_blocks": len(_order),
            "hits": _hits, "misses": _misses}


def _set_poison(bint on):
    """Test hook: fill every returned block with NaN bits (0xFF bytes), so a kernel
    reading a reused workspace before writing it gives NaN instead of stale values."""
    global _poison
    _poison = on


def _set_min_bytes(size_t n):
    """Test hook: pool arrays from `n` bytes (MIN_BYTES by default; 1: every array)."""
    global _min_bytes
    _min_bytes = n
