"""Batch inference over Dask collections: :func:`predict`.

Scores or embeds many sequences partition by partition -- a Dask array
``(num_sequences, T, D)`` with ``map_blocks``, or a Dask bag of
variable-length ``(T_i, D)`` sequences with ``map_partitions`` (each
mini-batch zero-padded and run with ``lengths``, so padding never changes a
result) -- on any Dask scheduler: the default local (threaded) one, or a
``dask.distributed`` cluster.

The model is shipped once per worker, not once per task: :func:`predict`
turns it into a small picklable :class:`ModelSpec` (class name, config and
``state_dict``; an rnncore model itself holds a lock and activations and is
not meant to be pickled), puts that in the graph as a single
``dask.delayed`` node (or, with ``broadcast=True`` on a distributed client,
``client.scatter(spec, broadcast=True)``), and every task rebuilds the model
lazily through a per-process, per-thread cache keyed by the weights' hash.
A model keeps its last forward's activations and refuses concurrent use, so
each worker *thread* gets its own copy.

Example::

    import dask.array as da
    from rnncore import LSTM
    from rnncore.dask_inference import predict

    model = LSTM(16, 64, batch_first=True, seed=0)
    x = da.random.random((100_000, 50, 16), chunks=(5_000, 50, 16)).astype("float32")
    emb = predict(model, x, batch_size=512)      # lazy (100_000, 64): final h
    emb = emb.compute()                          # or .to_zarr(...), .persist() ...

This module is named ``dask_inference`` (not ``dask``) so that it does not
shadow the ``dask`` package for code inside rnncore.
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from .module import module_registry, registered_name

__all__ = ["predict", "ModelSpec", "run_batch", "OUTPUTS"]

#: what :func:`predict` returns per sequence
OUTPUTS = ("last", "outputs", "state")


class ModelSpec:
    """A picklable recipe for a model: registered class name, config, weights.

    ``build()`` returns a fresh model; :meth:`get` a cached one for the calling
    (process, thread), keyed by :attr:`token` (a hash of class, config and
    weights), so the model is rebuilt at most once per worker thread.
    """

    def __init__(self, model):
        name = registered_name(model, "{name} is not registered "
                                      "(@rnncore.module.register_module), so it cannot be "
                                      "rebuilt on a worker")
        self.class_name = name
        self.config = model.get_config()
        self.state = OrderedDict((k, np.ascontiguousarray(v)) for k, v in
                                 model.state_dict().items())
        h = hashlib.sha256(repr((name, sorted(self.config.items()))).encode())
        for k, v in self.state.items():
            h.update(k.encode())
            h.update(str(v.dtype).encode() + str(v.shape).encode())
            h.update(v.tobytes())
        self.token = h.hexdigest()

    def build(self):
        model = module_registry[self.class_name](**self.config)
        model.load_state_dict(self.state)
        return model

    def get(self):
        cache = getattr(_local, "models", None)
        if cache is None:
            cache = _local.models = OrderedDict()
        model = cache.get(self.token)
        if model is None:
            model = cache[self.token] = self.build()
            _stats["builds"] += 1
            while len(cache) > 4:
                cache.popitem(last=False)
        else:
            cache.move_to_end(self.token)
        return model

    def __repr__(self):
        return f"ModelSpec({self.class_name}, token={self.token[:12]})"


_local = threading.local()
_stats = {"builds": 0}  # models built in this process (see tests)


def _process_stats():
    return dict(_stats)


# ---------------------------------------------------------------------------
# One mini-batch
# ---------------------------------------------------------------------------
def _is_rnn(model) -> bool:
    return hasattr(model, "num_directions") and hasattr(model, "hidden_size") and \
        hasattr(model, "batch_first")


def run_batch(model, x, lengths=None, output="last"):
    """Run ``model`` on one batch ``x`` (n, T, D), batch-first, in inference mode.

    For rnncore ``RNN``/``GRU``/``LSTM`` (either ``batch_first``):

    - ``"last"``: the last layer's final hidden state, (n, dirs*H) -- with
      ``lengths``, the state at each sequence's last valid step;
    - ``"outputs"``: the per-step outputs, (n, T, F), zero past each length;
    - ``"state"``: ``h_n`` as (n, L*dirs*H) (LSTM: ``h_n`` then ``c_n``,
      (n, 2*L*dirs*H)).

    Any other module: ``model(x, train=False)`` (its first element if it
    returns a tuple); ``lengths`` is then passed only when given.
    """
    if _is_rnn(model):
        xin = x if model.batch_first else np.swapaxes(x, 0, 1)
        out, state = model(xin, lengths=lengths, train=False)
        if output == "outputs":
            return out if model.batch_first else np.swapaxes(out, 0, 1)
        states = state if isinstance(state, tuple) else (state,)
        if output == "last":
            h = states[0][-model.num_directions:]           # (dirs, n, H)
            return np.concatenate(list(h), axis=-1)           # (n, dirs*H)
        return np.concatenate([np.concatenate(list(s), axis=-1) for s in states], axis=-1)
    res = model(x, train=False) if lengths is None else model(x, lengths=lengths, train=False)
    return res[0] if isinstance(res, tuple) else res


def _out_width(model, output, D, T):
    """Feature size of one result (probe with a tiny batch for other modules)."""
    if _is_rnn(model):
        F = model.hidden_size * model.num_directions
        if getattr(model, "merge_mode", "concat") != "concat" and output == "outputs":
            F = model.hidden_size
        if output == "state":
            return model.hidden_size * model.num_directions * model.num_layers * \
                int(getattr(model, "n_states", 1))
        return F
    probe = run_batch(model, np.zeros((1, T, D), dtype=getattr(model, "dtype", np.float64)),
                      None, output)
    return probe.shape[-1]


# ---------------------------------------------------------------------------
# Block / partition functions (run on the workers)
# ---------------------------------------------------------------------------
def _array_block(x, lengths, spec, batch_size, output, tail=None):
    if x.shape[0] == 0 and tail is not None:  # an empty block (a zero-size chunk)
        return np.zeros((0,) + tuple(tail), dtype=x.dtype)
    model = spec.get()
    n = x.shape[0]
    lens = None if lengths is None else np.asarray(lengths).reshape(-1)
    parts = []
    for i in range(0, n, batch_size):
        xb = x[i:i + batch_size]
        lb = None if lens is None else lens[i:i + batch_size]
        parts.append(np.array(run_batch(model, xb, lb, output), copy=True))
    return np.concatenate(parts, axis=0)


def _bag_partition(seqs, spec, batch_size, output, dtype):
    model = spec.get()
    seqs = [np.asarray(s, dtype=dtype) for s in seqs]
    results = []
    for i in range(0, len(seqs), batch_size):
        batch = seqs[i:i + batch_size]
        lens = np.array([s.shape[0] for s in batch], dtype=np.int64)
        T = int(lens.max())
        D = batch[0].shape[1]
        x = np.zeros((len(batch), T, D), dtype=dtype)
        for j, s in enumerate(batch):
            x[j, :s.shape[0]] = s
        out = run_batch(model, x, lens, output)
        for j in range(len(batch)):
            r = out[j, :lens[j]] if output == "outputs" else out[j]
            results.append(np.array(r, copy=True))
    return results


# ---------------------------------------------------------------------------
def _ship(spec, broadcast):
    """The spec as one graph node: a scattered Future (broadcast) or a delayed."""
    import dask

    if broadcast in ("auto", True):
        try:
            from distributed import get_client
            client = get_client()
        except (ImportError, ValueError):
            client = None
        if client is not None:
            return client.scatter(spec, broadcast=True, hash=False)  # a fresh key: no race with
            # the release of an identical earlier scatter
        if broadcast is True:
            raise ValueError("broadcast=True needs an active dask.distributed Client")
    return dask.delayed(spec, pure=True, traverse=False)


def predict(model, sequences, batch_size=256, output="last", lengths=None, broadcast="auto"):
    """Run ``model`` over every sequence of a Dask collection, lazily.

    Parameters
    ----------
    model : Module
        A registered rnncore module (``RNN``/``GRU``/``LSTM`` or one with
        ``get_config``). Its *current* weights are used (a snapshot is taken
        now; later changes to ``model`` do not affect the result).
    sequences : dask.array.Array (num_sequences, T, D), or dask.bag.Bag
        An array: any chunking along axis 0 (each block of sequences is one
        task); axes 1 and 2 are merged into one chunk. A bag: elements are
        array-likes (T_i, D) of varying length; each partition is one task.
    batch_size : int, default 256
        Sequences per model call inside a task (bounds the activations kept).
    output : {'last', 'outputs', 'state'}, default 'last'
        See :func:`run_batch`. For models other than RNN/GRU/LSTM the
        model's own ``forward(x, train=False)`` result is returned.
    lengths : dask or NumPy array (num_sequences,), optional
        Valid lengths of a zero-padded array ``sequences`` (ignored for a
        bag, where each element's own length is used).
    broadcast : 'auto', bool
        With a dask.distributed Client: ``client.scatter(..., broadcast=True)``
        the weights to every worker up front ('auto' does when a client is
        active). Otherwise the weights are one ``dask.delayed`` node that
        each worker fetches once.

    Returns
    -------
    dask.array.Array or dask.bag.Bag
        Array input: ``(num_sequences, F)`` for 'last'/'state', ``(num_sequences,
        T, F)`` for 'outputs', in the model's dtype. Bag input: a bag of
        ``(F,)`` or ``(T_i, F)`` arrays. Call ``.compute()``.
    """
    import dask.array as da

    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spec = ModelSpec(model)
    dtype = np.dtype(getattr(model, "dtype", np.float64))
    shipped = _ship(spec, broadcast)

    try:
        import dask.bag as db
        is_bag = isinstance(sequences, db.Bag)
    except ImportError:
        is_bag = False
    if is_bag:
        return sequences.map_partitions(_bag_partition, shipped, batch_size, output, dtype)

    x = sequences if isinstance(sequences, da.Array) else da.asarray(sequences)
    if x.ndim != 3:
        raise ValueError(f"sequences must have shape (num_sequences, T, D), got {x.shape}")
    x = x.rechunk({1: -1, 2: -1})
    if x.dtype != dtype:
        x = x.astype(dtype)
    N, T, D = x.shape
    F = _out_width(model, output, D, T)
    if lengths is not None:
        lens = da.asarray(lengths)
        if lens.shape != (N,):
            raise ValueError(f"lengths must have shape ({N},), got {lens.shape}")
        lens = lens.rechunk((x.chunks[0],)).reshape((N, 1, 1))
    if output == "outputs":
        chunks, drop = (x.chunks[0], (T,), (F,)), []
    else:
        chunks, drop = (x.chunks[0], (F,)), [1]

    tail = (T, F) if output == "outputs" else (F,)
    kw = dict(dtype=dtype, chunks=chunks, drop_axis=drop, token="rnncore-predict")
    if lengths is None:
        return da.map_blocks(_array_block, x, None, shipped, batch_size, output, tail, **kw)
    return da.map_blocks(_array_block, x, lens, shipped, batch_size, output, tail, **kw)
