"""The copies a training forward keeps for backward, and their reusable buffers.

A model (and ``nn.Linear``) copies a caller's ``x`` that it must read again in
backward (:func:`rnncore._validation.owned`), into a buffer it reuses once
the previous forward's saved activations are gone
(:class:`rnncore._validation.CopyBuffer`). Checked here: the copy rule never
modifies the caller's arrays (read-only, writable, non-contiguous, views of
one another) and never shares memory with them; a buffer in use is never
overwritten; two forwards before one backward back-propagate the second,
exactly as the NumPy reference; ``out`` and ``y`` handed to the user are
never overwritten by later calls; and the buffer is really reused.
"""
import weakref

import numpy as np
import pytest

from _oracle import reference_run
from conftest import CELLS, assert_close_f64, make_model
from rnncore import _validation as V
from rnncore.nn import Linear


# ------------------------------------------------------------------ the copy rule
def _inputs(rng):
    """(name, a, callers) cases: the array a layer would save, and the caller's arrays."""
    base = rng.standard_normal((50, 40, 8))  # 128 KB: most cases go through the buffer
    ro = base.copy()
    ro.flags.writeable = False
    ro_view = base[:, 1:4]          # a read-only view of a writable array
    ro_view.flags.writeable = False
    return [
        ("writable", base, [base]),
        ("read-only", ro, [ro]),
        ("read-only view of writable", ro_view, [ro_view]),
        ("non-contiguous", base[:, ::2], [base]),
        ("transposed", base.transpose(1, 0, 2), [base]),
        ("reshaped view", base.reshape(-1, 4), [base]),
        ("two callers sharing memory", base[1:], [base[:2], base[3:]]),
    ]


@pytest.mark.parametrize("with_buffer", [False, True], ids=["copy", "buffer"])
def test_owned_copies_shared_inputs_and_never_modifies_them(rng, with_buffer):
    for name, a, callers in _inputs(rng):
        before = [np.array(c, copy=True) for c in callers]
        flags = [c.flags.writeable for c in callers]
        buf = V.CopyBuffer() if with_buffer else None
        got = V.owned(a, callers, buf)
        assert got is not a, name
        if buf is not None and a.nbytes >= V._SMALL_COPY:
            assert got is buf._buf, name  # the copy went into the buffer
        assert not any(np.may_share_memory(got, c) for c in callers), name
        np.testing.assert_array_equal(got, a, err_msg=name)
        # the same memory order as a (a transposed view stays one: no transposing copy)
        assert np.argsort(np.abs(got.strides)).tolist() == \
            np.argsort(np.abs(a.strides)).tolist() or a.ndim < 2, name
        got[...] = -1.0  # writing the copy leaves the callers as they were
        for c, b, w in zip(callers, before, flags):
            np.testing.assert_array_equal(c, b, err_msg=name)
            assert c.flags.writeable == w, name


def test_owned_returns_unshared_arrays_as_they_are(rng):
    a = rng.standard_normal((3, 4))
    other = rng.standard_normal((3, 4))
    assert V.owned(a, [other, None]) is a
    assert V.owned(a, [other], V.CopyBuffer()) is a


def test_copy_buffer_is_reused_only_when_nothing_references_it(rng):
    buf = V.CopyBuffer()
    a = rng.standard_normal((4, 3))
    first = buf.take(a)
    first[...] = 7.0
    second = buf.take(a)  # `first` still held: a new array, `first` untouched
    assert second is not first and not np.may_share_memory(second, first)
    np.testing.assert_array_equal(first, 7.0)
    view = second[1:]
    del first, second
    third = buf.take(a)  # a view of the last one is alive: still not reused
    assert not np.may_share_memory(third, view)
    del view
    ref = weakref.ref(third)
    del third
    assert buf.take(a) is ref()  # nothing references it: the same array again
    # another shape or layout: a new array with that layout
    t = buf.take(a.T)
    assert t.shape == (3, 4) and t.flags.f_contiguous


# ------------------------------------------------------------------ models
def _draw(rng, model, T=5, N=3):
    lead = (N, T) if model.batch_first else (T, N)
    x = rng.standard_normal(lead + (model.input_size,))
    dout = rng.standard_normal(lead + (model.num_directions * model.hidden_size,))
    return x, dout


def _tnd(model, a):
    return a.transpose(1, 0, 2) if model.batch_first else a


def _check_against_reference(model, x, dout, dx, grads):
    _, _, want_dx, _, want_grads = reference_run(model, _tnd(model, x), [None] * model.n_states,
                                                 None, _tnd(model, dout))
    assert_close_f64(_tnd(model, dx), want_dx, name="dx")
    for k in model.params:
        assert_close_f64(grads[k], want_grads[k], name="d" + k)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tnd", "ntd"])
@pytest.mark.parametrize("cell", CELLS)
def test_two_forwards_then_backward_back_propagates_the_second(rng, cell, batch_first):
    """forward(x1), forward(x2), backward: the gradients of x2's forward (x1's
    activations are dropped by the second forward), as the reference gives --
    also when both x share one caller array that is then overwritten."""
    model = make_model(cell, 16, 3, num_layers=2, batch_first=batch_first, dtype=np.float64,
                       seed=1)
    x1, dout = _draw(rng, model, T=10, N=60)  # (10, 60, 16) float64, 77 KB: the buffer
    x2, _ = _draw(rng, model, T=10, N=60)
    x2_kept = x2.copy()
    out1, _ = model(x1)
    out1_kept = out1.copy()
    out2, _ = model(x2)
    x2[...] = np.nan  # the caller reuses its array: backward must not see it
    x1[...] = np.nan
    dx, _ = model.backward(dout)
    _check_against_reference(model, x2_kept, dout, dx, model.grads)
    np.testing.assert_array_equal(out1, out1_kept)  # out of the first call untouched
    with pytest.raises(RuntimeError, match="preceding forward"):
        model.backward(dout)  # each forward is back-propagated once


@pytest.mark.parametrize("cell", CELLS)
def test_training_forward_between_inference_forwards(rng, cell):
    """forward(train) then an inference forward drops the saves (backward refuses);
    a later forward+backward from the same caller array is exact again."""
    model = make_model(cell, 4, 3, dtype=np.float64, seed=2)
    x, dout = _draw(rng, model)
    model(x)
    out_eval, _ = model(x, train=False)
    with pytest.raises(RuntimeError, match="preceding forward"):
        model.backward(dout)
    model.zero_grad()
    model(x)
    dx, _ = model.backward(dout)
    _check_against_reference(model, x, dout, dx, model.grads)


@pytest.mark.parametrize("cell", CELLS)
def test_repeated_steps_reuse_the_copy_and_stay_exact(rng, cell):
    """Training steps from one caller array (refilled each step, as a data loader
    does): every step's gradients are the reference's, ``out`` of every step
    is kept unchanged, and from the second step on the model's copy of x is
    the same buffer (no allocation)."""
    model = make_model(cell, 16, 3, batch_first=True, dtype=np.float64, seed=3)
    x, dout = _draw(rng, model, T=10, N=60)  # 77 KB: above the small-copy threshold
    assert x.nbytes >= V._SMALL_COPY
    outs, buffers = [], []
    for _ in range(3):
        x[...] = rng.standard_normal(x.shape)
        want = x.copy()
        model.zero_grad()
        out, _ = model(x)
        outs.append((out, out.copy()))
        saved_x = model._saved.inputs[0]
        buf = model._input_copy._buf
        assert saved_x is buf or saved_x.base is buf  # the copy is the model's buffer
        buffers.append(weakref.ref(buf))
        del saved_x, buf
        assert not np.may_share_memory(model._saved.inputs[0], x)
        x[...] = 0.0  # changed between forward and backward
        dx, _ = model.backward(dout)
        _check_against_reference(model, want, dout, dx, model.grads)
    assert buffers[0]() is not None and buffers[0]() is buffers[2]()  # one array, reused
    for out, kept in outs:
        np.testing.assert_array_equal(out, kept)


def test_copy_buffer_not_reused_while_a_saved_forward_is_alive(rng):
    """A reference to the saved activations kept elsewhere (here: by hand) keeps
    the buffer busy: the next forward copies into a new one."""
    model = make_model("gru", 16, 3, dtype=np.float64, seed=4)
    x, _ = _draw(rng, model, T=10, N=60)
    model(x)
    held = model._saved
    kept = held.inputs[0].copy()
    model(-x)
    assert not np.may_share_memory(held.inputs[0], model._saved.inputs[0])
    np.testing.assert_array_equal(held.inputs[0], kept)


# ------------------------------------------------------------------ Linear
def _linear_reference(layer, x, dy):
    W = layer.params["weight"]
    x2, d2 = x.reshape(-1, W.shape[1]), dy.reshape(-1, W.shape[0])
    return d2.T @ x2, d2.sum(axis=0), (d2 @ W).reshape(x.shape)


@pytest.mark.parametrize("kind", ["writable", "read-only", "read-only view", "non-contiguous"])
def test_linear_keeps_its_own_copy_of_x(rng, kind):
    """Linear's rule is the models' one: a read-only view of a writable array is
    copied too (it used to be saved as is, so editing the base changed dW)."""
    layer = Linear(4, 3, dtype=np.float64, seed=0)
    base = rng.standard_normal((2, 5, 8))
    x = {"writable": base[..., :4].copy(), "read-only": base[..., :4].copy(),
         "read-only view": base[..., :4], "non-contiguous": base[..., ::2]}[kind]
    if kind.startswith("read-only"):
        x.flags.writeable = False
    want_x = x.copy()
    dy = rng.standard_normal((2, 5, 3))
    y = layer.forward(x, train=True)
    y_kept = y.copy()
    base[...] = np.nan
    if kind == "writable":
        x[...] = np.nan
    dx = layer.backward(dy)
    dW, db, want_dx = _linear_reference(layer, want_x, dy)
    assert_close_f64(layer.grads["weight"], dW, name="dweight")
    assert_close_f64(layer.grads["bias"], db, name="dbias")
    assert_close_f64(dx, want_dx, name="dx")
    layer.forward(want_x, train=True)  # a later call never overwrites y
    np.testing.assert_array_equal(y, y_kept)


def test_linear_two_forwards_then_backward(rng):
    layer = Linear(4, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((6, 4))
    x1 = x.copy()
    y1 = layer.forward(x, train=True)
    y1_kept = y1.copy()
    x[...] = rng.standard_normal(x.shape)  # the caller refills its array
    x2 = x.copy()
    layer.forward(x, train=True)
    x[...] = np.nan
    dy = rng.standard_normal((6, 3))
    layer.backward(dy)
    dW, db, _ = _linear_reference(layer, x2, dy)
    assert_close_f64(layer.grads["weight"], dW, name="dweight")
    assert_close_f64(layer.grads["bias"], db, name="dbias")
    np.testing.assert_array_equal(y1, y1_kept)
    assert not np.allclose(x1, x2)
