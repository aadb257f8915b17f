"""Data-parallel synchronous training over MPI (``mpi4py``), for your own loop.

Every rank holds a full copy of the model, takes its own shard of each batch,
runs forward/backward locally, then all ranks average their gradients with
one all-reduce and take the *same* optimizer step, so the replicas stay
bit-identical. With the loss a mean over each rank's (equal-sized) shard,
the averaged gradient is exactly the gradient of the mean over the full
batch: ``p`` ranks with ``N/p`` samples each train like one process with
``N`` samples (to rounding, ~1e-15 relative in float64).

A training step::

    from rnncore import distributed as dist

    rank, size = dist.init()                 # size 1 without mpirun: no-ops
    dist.broadcast_parameters(model)         # same start on every rank
    for x, y in batches:                     # the same global batches everywhere
        x, y = dist.shard(x, rank, size), dist.shard(y, rank, size)
        model.zero_grad()
        loss = forward_backward(model, x, y)     # mean over this rank's shard
        dist.allreduce_gradients(model)          # now the full-batch gradient
        clip_grad_norm_(model, 5.0)              # clip AFTER the all-reduce
        optimizer.step()
        if dist.is_root():
            log / save checkpoint / plot         # rank 0 alone writes files

Clipping. :func:`rnncore.clip_grad_norm_` must run *after*
:func:`allreduce_gradients`, on the averaged gradient: the norm is then the
full-batch norm, identical on every rank, and every rank scales by the same
factor. Clipping each rank's local gradient first would clip by different
factors per rank and no longer equal single-process training.

Non-finite losses. When a loss can be nan/inf on one rank only, decide
together: ``if not dist.all_true(math.isfinite(loss)): skip`` so that every
rank skips (or steps) alike.

Launching: ``mpirun -n 2 python train.py`` (as root in a container add
``--allow-run-as-root`` or set ``OMPI_ALLOW_RUN_AS_ROOT=1
OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1``; on a machine with fewer cores than ranks
add ``--oversubscribe``). Pin BLAS to one thread per rank
(``OMP_NUM_THREADS=1``) when ranks share a machine.

Without ``mpi4py``, or when the process was not started by an MPI launcher,
:func:`init` returns ``(0, 1)`` and every collective is a no-op, so the same
script runs unchanged single-process.
"""
from __future__ import annotations

import os
import time
import weakref

import numpy as np

__all__ = [
    "init", "get_comm", "get_rank", "get_size", "is_root", "barrier", "mpi_available",
    "launcher_size", "abort", "broadcast_parameters", "allreduce_gradients", "allreduce_sum",
    "allreduce_mean", "all_true", "any_true", "allgather", "shard", "shard_bounds",
    "GradientAllreducer", "parameters_in_sync",
]

#: environment variables set by MPI launchers (Open MPI, MPICH/Hydra, PMIx, Slurm-PMI)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK",
                  "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")

_comm = None          # an mpi4py communicator, or None (single process)
_MPI = None           # the mpi4py.MPI module once imported
_initialised = False


def mpi_available() -> bool:
    """True when ``mpi4py`` can be imported."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


def _launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def launcher_size():
    """Number of processes an MPI launcher started, read from its environment.

    Works without ``mpi4py`` (nothing is initialised): Open MPI's
    ``OMPI_COMM_WORLD_SIZE`` or MPICH/Hydra's ``PMI_SIZE``. Returns None when
    the process was not started by one of them (or the size is not in the
    environment), so callers can tell "``mpirun -n 4`` but no ``mpi4py``"
    (every rank would otherwise run alone) from a plain single process.
    """
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        try:
            return int(os.environ[var])
        except (KeyError, ValueError):
            continue
    return None


def init(comm=None, use_mpi=None):
    """Set up the communicator; return ``(rank, size)``.

    Parameters
    ----------
    comm : mpi4py communicator, optional
        Use this one (e.g. a sub-communicator). Default ``MPI.COMM_WORLD``.
    use_mpi : bool or None
        ``None`` (default): use MPI when ``mpi4py`` imports *and* the process
        was started by an MPI launcher (``mpirun``/``mpiexec``/``srun``), so
        a plain ``python train.py`` never initialises MPI. ``True``: always
        use MPI (a singleton MPI job if not launched; raises ImportError
        without mpi4py). ``False``: single process.

    Returns
    -------
    rank, size : int
        ``(0, 1)`` without MPI.

    Calling it again re-initialises with the new arguments.
    """
    global _comm, _MPI, _initialised
    if comm is not None:
        from mpi4py import MPI
        _MPI, _comm = MPI, comm
    else:
        if use_mpi is None:
            use_mpi = _launched_by_mpi() and mpi_available()
        if use_mpi:
            from mpi4py import MPI
            _MPI, _comm = MPI, MPI.COMM_WORLD
        else:
            _comm = None
    _initialised = True
    return get_rank(), get_size()


def _mpi():
    """The mpi4py.MPI module (imported on first need)."""
    global _MPI
    if _MPI is None:
        from mpi4py import MPI
        _MPI = MPI
    return _MPI


def _ensure():
    if not _initialised:
        init()


def get_comm():
    """The communicator in use, or None single-process."""
    _ensure()
    return _comm


def get_rank() -> int:
    """This process's rank (0 single-process)."""
    _ensure()
    return 0 if _comm is None else _comm.Get_rank()


def get_size() -> int:
    """Number of ranks (1 single-process)."""
    _ensure()
    return 1 if _comm is None else _comm.Get_size()


def is_root(root: int = 0) -> bool:
    """True on the rank that alone writes checkpoints, logs and plots."""
    return get_rank() == root


def barrier() -> None:
    """Wait for every rank (no-op single-process)."""
    if get_comm() is not None:
        _comm.Barrier()


def abort(errorcode: int = 1) -> None:
    """End the processes of every rank at once (``MPI_Abort``).

    For an error that only some ranks hit: the others would wait forever in
    their next collective (a rank that merely exits blocks in
    ``MPI_Finalize`` and ``mpirun`` never returns). Single-process (or a
    single rank) it raises ``SystemExit(errorcode)`` instead.
    """
    comm = get_comm()
    if comm is None or comm.Get_size() == 1:
        raise SystemExit(errorcode)
    comm.Abort(int(errorcode))


# ---------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------
def shard_bounds(n: int, rank: int, size: int) -> tuple:
    """``[start, stop)`` of ``rank``'s contiguous share of ``n`` items.

    The first ``n % size`` ranks get one item more (``np.array_split``'s
    rule). For exact equivalence with single-process training on a batch
    whose loss is a mean, make ``n`` divisible by ``size`` (equal shards).
    """
    n, rank, size = int(n), int(rank), int(size)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"need 0 <= rank < size, got rank={rank}, size={size}")
    q, r = divmod(n, size)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def shard(data, rank=None, size=None, axis=0):
    """This rank's contiguous share of ``data`` along ``axis`` (a view for arrays).

    Parameters
    ----------
    data : ndarray, list, str, or anything sliceable with ``len``
        A batch (shard the batch axis: ``axis=0`` for batch-first arrays,
        ``axis=1`` for time-major ``(T, N, D)``), a corpus (a token array or
        text: each rank trains on its own contiguous slice), or a list of
        files.
    rank, size : int, optional
        Default: :func:`get_rank`, :func:`get_size`.
    axis : int, default 0
        Axis of an ndarray to split.
    """
    rank = get_rank() if rank is None else rank
    size = get_size() if size is None else size
    if isinstance(data, np.ndarray):
        lo, hi = shard_bounds(data.shape[axis], rank, size)
        index = [slice(None)] * data.ndim
        index[axis] = slice(lo, hi)
        return data[tuple(index)]
    if axis != 0:
        raise ValueError("axis != 0 is only supported for ndarrays")
    lo, hi = shard_bounds(len(data), rank, size)
    return data[lo:hi]


# ---------------------------------------------------------------------------
# Parameters and gradients
# ---------------------------------------------------------------------------
def _arrays(module, which):
    d = getattr(module, which, None)
    if d is None or not hasattr(d, "values"):
        raise TypeError(f"expected a Module with a .{which} dict, got {type(module).__name__}")
    return list(d.values())


def broadcast_parameters(module, root: int = 0) -> None:
    """Copy ``root``'s parameters into every rank's ``module.params``, in place.

    Call once after building the model (and after loading a checkpoint on
    ``root`` only). One ``Bcast`` per parameter; the arrays are not rebound.
    """
    comm = get_comm()
    if comm is None:
        return
    for p in _arrays(module, "params"):
        if p.flags.c_contiguous:
            comm.Bcast(p, root=root)
        else:
            tmp = np.ascontiguousarray(p)
            comm.Bcast(tmp, root=root)
            p[...] = tmp


class GradientAllreducer:
    """Averages a module's gradients across ranks through one flat buffer.

    The buffer (one array, the gradients' common dtype) and one view of it
    per gradient are built once; every call then copies the gradients into
    the views, runs a single in-place ``Allreduce`` (``MPI.IN_PLACE``, SUM),
    divides by the number of ranks and copies back -- no array is allocated
    per step. The buffer is rebuilt only if the module's gradient arrays
    change (a different set, shape or object).

    Attributes
    ----------
    nbytes : int
        Size of the flat buffer (the bytes every rank sends per step).
    seconds : float
        Total wall time spent in :meth:`allreduce` (pack + reduce + unpack).
    calls : int
    """

    def __init__(self, module, comm=None):
        self.module = module
        self.comm = comm
        self.seconds = 0.0
        self.calls = 0
        self._key = None
        self._build()

    def _build(self):
        grads = _arrays(self.module, "grads")
        self._key = [(id(g), g.shape) for g in grads]
        self._grads = grads
        dtype = np.result_type(*grads) if grads else np.float64
        total = int(sum(g.size for g in grads))
        self.flat = np.zeros(total, dtype=dtype)
        self._views = []
        offset = 0
        for g in grads:
            self._views.append(self.flat[offset:offset + g.size].reshape(g.shape))
            offset += g.size
        self.nbytes = self.flat.nbytes

    def _stale(self) -> bool:
        grads = self.module.grads
        if len(grads) != len(self._key):
            return True
        for (i, shape), g in zip(self._key, grads.values()):
            if id(g) != i or g.shape != shape:
                return True
        return False

    def allreduce(self, average: bool = True) -> None:
        """Sum (``average=True``: mean) every gradient over all ranks, in place."""
        comm = self.comm if self.comm is not None else get_comm()
        if comm is None or comm.Get_size() == 1:
            return
        t0 = time.perf_counter()
        if self._stale():
            self._build()
        for v, g in zip(self._views, self._grads):
            np.copyto(v, g)
        MPI = _mpi()
        comm.Allreduce(MPI.IN_PLACE, self.flat, op=MPI.SUM)
        if average:
            self.flat /= comm.Get_size()
        for v, g in zip(self._views, self._grads):
            np.copyto(g, v)
        self.seconds += time.perf_counter() - t0
        self.calls += 1


_reducers: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def allreduce_gradients(module, average: bool = True, comm=None) -> GradientAllreducer:
    """Average (or sum) ``module.grads`` over all ranks, in place.

    Packs every gradient into one preallocated flat buffer (cached per
    module), does one in-place ``Allreduce``, divides by the number of ranks
    and unpacks. A no-op single-process. Returns the module's
    :class:`GradientAllreducer` (its ``seconds``/``nbytes`` are handy for
    profiling).

    Clip *after* this call (see the module docstring).
    """
    r = _reducers.get(module)
    if r is None or r.comm is not comm:
        r = _reducers[module] = GradientAllreducer(module, comm)
    r.allreduce(average)
    return r


def allreduce_sum(value):
    """Sum of a Python scalar (int or float) over all ranks, the same on every rank."""
    comm = get_comm()
    if comm is None:
        return value
    return comm.allreduce(value, op=_mpi().SUM)


def allreduce_mean(value: float) -> float:
    """Mean of a scalar (e.g. the loss, for logging) over all ranks.

    The same value on every rank; non-finite when any rank's value is (so it
    doubles as an agreement on skipping a step with a nan/inf loss).
    """
    return float(allreduce_sum(float(value))) / get_size()


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (agree on skipping a step)."""
    comm = get_comm()
    if comm is None:
        return bool(flag)
    return bool(comm.allreduce(bool(flag), op=_mpi().LAND))


def any_true(flag: bool) -> bool:
    """True when ``flag`` is true on some rank (agree on stopping, e.g. after a signal)."""
    return not all_true(not flag)


def allgather(obj) -> list:
    """Every rank's ``obj`` (any picklable object), in rank order, on every rank.

    For small things only (messages, a recurrent state): it pickles.
    ``[obj]`` single-process.
    """
    comm = get_comm()
    if comm is None:
        return [obj]
    return comm.allgather(obj)


def parameters_in_sync(module, atol: float = 0.0) -> bool:
    """True when every rank's parameters equal ``root``'s (a debugging check)."""
    comm = get_comm()
    if comm is None:
        return True
    ok = True
    for p in _arrays(module, "params"):
        ref = np.ascontiguousarray(p).copy()
        comm.Bcast(ref, root=0)
        ok &= bool(np.allclose(p, ref, rtol=0.0, atol=atol)) if atol else bool(
            np.array_equal(p, ref))
    return all_true(ok)
