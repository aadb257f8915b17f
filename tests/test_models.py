"""The sequence models :class:`rnncore.models.RNN`, ``GRU`` and ``LSTM``.

What is checked, for every cell (RNN tanh / relu, GRU, LSTM):

* against the model oracle of ``_oracle.py`` (a pure-NumPy composition of
  :mod:`rnncore.reference`, float64): out, final states, dx, initial-state
  gradients and every entry of ``model.grads``, over a curated grid of layers x
  directions x merge modes x lengths x batch_first x given/absent initial state
  x given/absent dh_n;
* a central finite-difference check of a 2-layer bidirectional model with
  dropout (mask fixed by reseeding the model's generator);
* behaviour (gradient accumulation, backward protocol, dropout modes, init,
  names, state dicts, truncated BPTT, repr, inputs untouched, layouts, dtype);
* every error path, with the argument named in the message;
* edge cases T=1, N=1, H=1, D=1, zero lengths, T=0.

PyTorch parity of the models is in ``test_torch_parity.py``.
"""
import numpy as np
import pytest

import rnncore
from _oracle import reference_model
from conftest import (CELLS, GATES, TOL, assert_close_f32, assert_close_f64, kind_of, make_model,
                      n_states, numerical_gradient, run_backward, run_forward)
from rnncore.models import GRU, LSTM, RNN


# ---------------------------------------------------------------------------
# The specification: the model oracle of _oracle.py (float64)
# ---------------------------------------------------------------------------
def check_against_reference(rng, cell, T, N, D, H, num_layers=1, bidirectional=False,
                            merge_mode="concat", batch_first=False, lengths=None,
                            give_h0=True, give_dhn=True, bias=True):
    """Run a float64 model and the reference composition on the same data; compare all."""
    model = make_model(cell, D, H, num_layers=num_layers, bidirectional=bidirectional,
                       merge_mode=merge_mode, batch_first=batch_first, bias=bias,
                       dtype=np.float64, seed=int(rng.integers(1 << 30)))
    nd, ns = (2 if bidirectional else 1), n_states(cell)
    x = rng.standard_normal((T, N, D))  # time-major; padding is left as garbage
    states0 = [rng.standard_normal((num_layers * nd, N, H)) for _ in range(ns)]
    F_out = nd * H if (nd == 1 or merge_mode == "concat") else H
    dout = rng.standard_normal((T, N, F_out))
    dstates_n = [rng.standard_normal((num_layers * nd, N, H)) for _ in range(ns)]

    def user(a):  # the model's layout
        return np.ascontiguousarray(a.transpose(1, 0, 2)) if batch_first else a

    out, st = run_forward(model, user(x), states0 if give_h0 else None, lengths=lengths)
    dx, dst0 = run_backward(model, user(dout), dstates_n if give_dhn else None)

    want = reference_model(
        cell, {k: v.copy() for k, v in model.params.items()}, x,
        states0 if give_h0 else [np.zeros_like(s) for s in states0], lengths, num_layers,
        bidirectional, merge_mode, dout=dout, dstates_n=dstates_n if give_dhn else None)

    assert out.dtype == np.float64
    assert_close_f64(out, user(want["out"]), name="out")
    for si, name in enumerate(["h_n", "c_n"][:ns]):
        assert_close_f64(st[si], want["states"][si], name=name)
    assert_close_f64(dx, user(want["dx"]), name="dx")
    for si, name in enumerate(["dh0", "dc0"][:ns]):
        assert_close_f64(dst0[si], want["dstates0"][si], name=name)
    assert list(model.grads) == list(model.params)
    assert sorted(model.grads) == sorted(want["grads"])
    for name, g in want["grads"].items():
        assert_close_f64(model.grads[name], g, name="d" + name)


# ---------------------------------------------------------------------------
# 1. Against the reference composition (float64)
# ---------------------------------------------------------------------------
DIRMODES = ["uni", "bi-concat", "bi-sum", "bi-mul", "bi-ave"]
#: batch_first, h0 given, dh_n given: an orthogonal array (every pair of values
#: of any two of the three factors appears once), crossed with the rest.
FLAGS = [(False, False, False), (False, True, True), (True, False, True), (True, True, False)]
T1, N1, D1, H1 = 5, 3, 4, 3
LENGTHS1 = np.array([1, 5, 3])  # unsorted; one full-length and one length-1 sequence


def _grid():
    cases = []
    for cell in CELLS:
        for L in (1, 3):
            for dm in DIRMODES:
                for use_len in (False, True):
                    for bf, h0, dhn in FLAGS:
                        cid = (f"{cell}-L{L}-{dm}-{'len' if use_len else 'full'}"
                               f"-{'bf' if bf else 'tm'}-{'h0' if h0 else 'noh0'}"
                               f"-{'dhn' if dhn else 'nodhn'}")
                        cases.append(pytest.param(cell, L, dm, use_len, bf, h0, dhn, id=cid))
    return cases


@pytest.mark.parametrize("cell, L, dirmode, use_len, batch_first, give_h0, give_dhn", _grid())
def test_matches_reference_composition(rng, cell, L, dirmode, use_len, batch_first, give_h0,
                                       give_dhn):
    bidir = dirmode != "uni"
    check_against_reference(
        rng, cell, T1, N1, D1, H1, num_layers=L, bidirectional=bidir,
        merge_mode=dirmode.split("-")[1] if bidir else "concat", batch_first=batch_first,
        lengths=LENGTHS1.copy() if use_len else None, give_h0=give_h0, give_dhn=give_dhn)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("use_len", [False, True], ids=["full", "len"])
def test_matches_reference_no_bias(rng, cell, use_len):
    check_against_reference(rng, cell, T1, N1, D1, H1, num_layers=2, bidirectional=True,
                            lengths=LENGTHS1.copy() if use_len else None, bias=False)


# ---------------------------------------------------------------------------
# 2. Finite differences through a whole model with dropout
# ---------------------------------------------------------------------------
FD_CELLS = ["rnn_tanh", "gru", "lstm"]  # relu's kink makes central differences unreliable


@pytest.mark.parametrize("cell", FD_CELLS)
@pytest.mark.parametrize("use_len", [False, True], ids=["full", "len"])
def test_finite_differences_with_dropout(rng, cell, use_len):
    T, N, D, H, L = 4, 2, 3, 2, 2
    ns = n_states(cell)
    model = make_model(cell, D, H, num_layers=L, bidirectional=True, dropout=0.3,
                       dtype=np.float64, seed=3)
    x = rng.standard_normal((T, N, D))
    states0 = [rng.standard_normal((2 * L, N, H)) for _ in range(ns)]
    dout = rng.standard_normal((T, N, 2 * H))
    dstates_n = [rng.standard_normal((2 * L, N, H)) for _ in range(ns)]
    lengths = np.array([2, 4]) if use_len else None

    def loss():
        model._rng = np.random.default_rng(0)  # the same dropout mask every time
        out, sn = run_forward(model, x, states0, lengths=lengths)
        return np.sum(out * dout) + sum(np.sum(s * ds) for s, ds in zip(sn, dstates_n))

    # dropout is really active in this configuration (else the check proves little)
    model._rng = np.random.default_rng(0)
    out_train, _ = run_forward(model, x, states0, lengths=lengths)
    out_eval, _ = run_forward(model, x, states0, lengths=lengths, train=False)
    assert np.max(np.abs(out_train - out_eval)) > 1e-3

    model._rng = np.random.default_rng(0)
    run_forward(model, x, states0, lengths=lengths)
    model.zero_grad()
    dx, ds0 = run_backward(model, dout, dstates_n)
    fd = dict(rtol=TOL["fd_rtol"], atol=TOL["fd_atol"])
    np.testing.assert_allclose(dx, numerical_gradient(loss, x, 1.0), err_msg="dx", **fd)
    for si in range(ns):
        np.testing.assert_allclose(ds0[si], numerical_gradient(loss, states0[si], 1.0),
                                   err_msg=["dh0", "dc0"][si], **fd)
    for name in ["weight_ih_l0", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0",
                 "weight_ih_l1", "weight_hh_l1", "bias_hh_l1_reverse", "bias_ih_l1"]:
        grad = model.grads[name].copy()
        np.testing.assert_allclose(grad, numerical_gradient(loss, model.params[name], 1.0),
                                   err_msg="d" + name, **fd)


# ---------------------------------------------------------------------------
# 3. Behaviour
# ---------------------------------------------------------------------------
def _data(rng, model, T=4, N=2, dtype=np.float64):
    """x, initial states, dout, final-state gradients for ``model`` (its layout)."""
    nd = model.num_directions
    F_out = nd * model.hidden_size if (nd == 1 or model.merge_mode == "concat") \
        else model.hidden_size
    lead = (N, T) if model.batch_first else (T, N)
    sshape = (model.num_layers * nd, N, model.hidden_size)
    ns = model.n_states
    x = rng.standard_normal(lead + (model.input_size,)).astype(dtype)
    states0 = [rng.standard_normal(sshape).astype(dtype) for _ in range(ns)]
    dout = rng.standard_normal(lead + (F_out,)).astype(dtype)
    dstates_n = [rng.standard_normal(sshape).astype(dtype) for _ in range(ns)]
    return x, states0, dout, dstates_n


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_accumulate_and_zero_grad_clears(rng, cell):
    model = make_model(cell, 3, 2, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model)
    run_forward(model, x, s0)
    run_backward(model, dout, dsn)
    first = {k: g.copy() for k, g in model.grads.items()}
    assert all(np.any(g != 0) for g in first.values())
    run_forward(model, x, s0)
    run_backward(model, dout, dsn)
    for k, g in model.grads.items():
        assert_close_f64(g, 2 * first[k], atol=1e-12, name=k)
    grads_before = {k: id(g) for k, g in model.grads.items()}
    model.zero_grad()
    for k, g in model.grads.items():
        assert id(g) == grads_before[k]  # cleared in place
        assert not np.any(g)


@pytest.mark.parametrize("cell", CELLS)
def test_backward_needs_a_training_forward(rng, cell):
    model = make_model(cell, 3, 2, dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model)
    with pytest.raises(RuntimeError, match="forward"):
        run_backward(model, dout)
    run_forward(model, x, s0, train=False)
    with pytest.raises(RuntimeError, match="train=True"):
        run_backward(model, dout)
    run_forward(model, x, s0)
    run_backward(model, dout)
    with pytest.raises(RuntimeError, match="forward"):
        run_backward(model, dout)
    # an eval forward after a training one drops the saved activations too
    run_forward(model, x, s0)
    run_forward(model, x, s0, train=False)
    with pytest.raises(RuntimeError, match="forward"):
        run_backward(model, dout)


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_disables_dropout(rng, cell):
    model = make_model(cell, 3, 4, num_layers=3, bidirectional=True, dropout=0.5,
                       dtype=np.float64, seed=1)
    plain = make_model(cell, 3, 4, num_layers=3, bidirectional=True, dropout=0.0,
                       dtype=np.float64, seed=2)
    plain.load_state_dict(model.state_dict())
    x, s0, _, _ = _data(rng, model, T=5, N=3)
    out1, sn1 = run_forward(model, x, s0, train=False)
    out2, sn2 = run_forward(model, x, s0, train=False)
    out_p, sn_p = run_forward(plain, x, s0, train=True)
    np.testing.assert_array_equal(out1, out2)
    assert_close_f64(out1, out_p, name="out")
    for a, b in zip(sn1, sn_p):
        assert_close_f64(a, b, name="state")
    # training mode does drop: two draws differ from eval and from each other
    out_t1, _ = run_forward(model, x, s0, train=True)
    out_t2, _ = run_forward(model, x, s0, train=True)
    assert np.max(np.abs(out_t1 - out1)) > 1e-3
    assert np.max(np.abs(out_t1 - out_t2)) > 1e-3


def test_dropout_is_inverted_and_seeded(rng):
    """Inverted dropout on layer 0's output: kept values scaled by 1/(1-p), fraction p zeroed.

    Layer 1 is made transparent (relu, weight_ih = I, no recurrence, no bias) and
    layer 0's output positive, so ``out`` is exactly the dropped-out layer-0 output.
    """
    T, N, D, H, p = 10, 20, 3, 50, 0.4
    model = RNN(D, H, num_layers=2, nonlinearity="relu", dropout=p, dtype=np.float64, seed=7)
    for k in ("weight_hh_l0", "weight_hh_l1", "bias_ih_l1", "bias_hh_l1"):
        model.params[k][...] = 0.0
    model.params["bias_ih_l0"][...] = 5.0
    model.params["weight_ih_l1"][...] = np.eye(H)
    x = rng.uniform(-1, 1, (T, N, D))
    clean, _ = model(x, train=False)
    assert np.all(clean > 1.0)
    out, _ = model(x)
    ratio = out / clean
    kept = ratio != 0
    assert_close_f64(ratio[kept], np.full(kept.sum(), 1 / (1 - p)), atol=1e-12, name="scale")
    assert abs(1 - kept.mean() - p) < 0.03
    # the generator is seeded: a twin model draws the same mask, a later call another
    twin = RNN(D, H, num_layers=2, nonlinearity="relu", dropout=p, dtype=np.float64, seed=7)
    twin.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(twin(x)[0], out)
    assert not np.array_equal(model(x)[0], out)


@pytest.mark.parametrize("cell", CELLS)
def test_seeded_init_reproducible_and_in_pytorch_range(cell):
    H = 16
    a = make_model(cell, 5, H, num_layers=2, bidirectional=True, seed=42)
    b = make_model(cell, 5, H, num_layers=2, bidirectional=True, seed=42)
    c = make_model(cell, 5, H, num_layers=2, bidirectional=True, seed=43)
    bound = 1 / np.sqrt(H)
    allw = np.concatenate([p.ravel() for p in a.params.values()])
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
        assert not np.array_equal(a.params[k], c.params[k])
        assert a.params[k].dtype == np.float32
        assert np.all(np.abs(a.params[k]) <= bound)
    # uniform over the whole range, centred: not a narrower or shifted law
    assert np.max(allw) > 0.95 * bound and np.min(allw) < -0.95 * bound
    assert abs(np.mean(allw)) < 0.05 * bound
    assert abs(np.std(allw) - bound / np.sqrt(3)) < 0.05 * bound
    for k in a.grads:
        assert a.grads[k].shape == a.params[k].shape and not np.any(a.grads[k])


@pytest.mark.parametrize("cell", CELLS)
def test_state_dict_round_trip(rng, cell):
    a = make_model(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    b = make_model(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=1)
    sd = a.state_dict()
    assert list(sd) == list(a.params)
    ids = {k: id(v) for k, v in b.params.items()}
    b.load_state_dict(sd)
    for k in a.params:
        np.testing.assert_array_equal(b.params[k], a.params[k])
        assert id(b.params[k]) == ids[k]  # loaded in place, never rebound
    # the state dict holds copies: editing it changes neither model
    for v in sd.values():
        v += 1.0
    for k in a.params:
        np.testing.assert_array_equal(b.params[k], a.params[k])
    x, s0, _, _ = _data(rng, a)
    oa, sa = run_forward(a, x, s0)
    ob, sb = run_forward(b, x, s0)
    np.testing.assert_array_equal(oa, ob)
    for u, v in zip(sa, sb):
        np.testing.assert_array_equal(u, v)
    # a float64 state dict loads into a float32 model (cast)
    c = make_model(cell, 3, 4, num_layers=2, bidirectional=True, seed=5)
    c.load_state_dict(a.state_dict())
    for k in a.params:
        assert c.params[k].dtype == np.float32
        assert_close_f32(c.params[k], a.params[k], name=k)


@pytest.mark.parametrize("cell", CELLS)
def test_load_state_dict_errors(cell):
    model = make_model(cell, 3, 4, num_layers=2, seed=0)
    before = model.state_dict()
    sd = model.state_dict()
    del sd["weight_hh_l1"]
    with pytest.raises(KeyError, match="weight_hh_l1"):
        model.load_state_dict(sd)
    sd = model.state_dict()
    sd["weight_hh_l2"] = np.zeros((4, 4))
    with pytest.raises(KeyError, match="weight_hh_l2"):
        model.load_state_dict(sd)
    sd = {k: np.full_like(v, 0.25) for k, v in model.state_dict().items()}
    G = GATES[kind_of(cell)]
    sd["weight_ih_l1"] = np.zeros((G * 4, 5))
    with pytest.raises(ValueError, match=r"weight_ih_l1.*\(%d, 5\).*\(%d, 4\)" % (G * 4, G * 4)):
        model.load_state_dict(sd)
    for k, v in before.items():  # nothing half-loaded
        np.testing.assert_array_equal(model.params[k], v)


@pytest.mark.parametrize("cell", CELLS)
def test_truncated_bptt_two_chunks_equal_one_run(rng, cell):
    kw = dict(num_layers=2, dtype=np.float64)
    full = make_model(cell, 3, 4, seed=0, **kw)
    first = make_model(cell, 3, 4, seed=1, **kw)
    second = make_model(cell, 3, 4, seed=2, **kw)
    first.load_state_dict(full.state_dict())
    second.load_state_dict(full.state_dict())
    x, s0, dout, dsn = _data(rng, full, T=6, N=3)
    out, sn = run_forward(full, x, s0)
    dx, ds0 = run_backward(full, dout, dsn)

    out1, s_mid = run_forward(first, x[:2], s0)
    out2, sn2 = run_forward(second, x[2:], s_mid)
    assert_close_f64(np.concatenate([out1, out2]), out, name="out")
    for a, b in zip(sn2, sn):
        assert_close_f64(a, b, name="state_n")
    dx2, ds_mid = run_backward(second, dout[2:], dsn)
    dx1, ds0_chunks = run_backward(first, dout[:2], ds_mid)
    assert_close_f64(np.concatenate([dx1, dx2]), dx, name="dx")
    for a, b in zip(ds0_chunks, ds0):
        assert_close_f64(a, b, name="dstate0")
    for k in full.grads:
        assert_close_f64(first.grads[k] + second.grads[k], full.grads[k], name="d" + k)


def test_repr_of_options_torch_lacks():
    # torch's repr omits the nonlinearity; ours names it where it is not the default
    assert repr(RNN(10, 20, num_layers=2, nonlinearity="relu")) == \
        "RNN(10, 20, num_layers=2, nonlinearity='relu')"
    assert repr(GRU(3, 4, bidirectional=True, merge_mode="sum")) == \
        "GRU(3, 4, bidirectional=True, merge_mode='sum')"
    assert repr(LSTM(3, 4, dtype=np.float64)) == "LSTM(3, 4, dtype=float64)"


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_inputs_never_modified(rng, cell, batch_first):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=np.float64, seed=0)
    for lengths in (None, np.array([2, 4, 3])):
        x, s0, dout, dsn = _data(rng, model, T=4, N=3)
        copies = [a.copy() for a in [x, dout, *s0, *dsn]]
        lcopy = None if lengths is None else lengths.copy()
        run_forward(model, x, s0, lengths=lengths)
        run_backward(model, dout, dsn)
        for a, c in zip([x, dout, *s0, *dsn], copies):
            np.testing.assert_array_equal(a, c)
        if lengths is not None:
            np.testing.assert_array_equal(lengths, lcopy)
    # read-only inputs are accepted
    for a in [x, dout, *s0, *dsn]:
        a.flags.writeable = False
    run_forward(model, x, s0)
    run_backward(model, dout, dsn)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_noncontiguous_and_fortran_inputs(rng, cell, batch_first):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model, T=5, N=3)
    lengths = np.array([5, 2, 4])
    out, sn = run_forward(model, x, s0, lengths=lengths)
    dx, ds0 = run_backward(model, dout, dsn)
    grads = {k: g.copy() for k, g in model.grads.items()}

    big = np.zeros(x.shape[:2] + (2 * x.shape[2],))
    big[..., ::2] = x
    strided = big[..., ::2]
    swapped = np.ascontiguousarray(x.transpose(1, 0, 2)).transpose(1, 0, 2)
    variants = {"strided": strided, "fortran": np.asfortranarray(x), "swapped": swapped,
                "reversed": np.ascontiguousarray(x[::-1])[::-1]}
    for vname, xv in variants.items():
        assert not xv.flags.c_contiguous
        model.zero_grad()
        dout_v = np.asfortranarray(dout)
        s0_v = [np.asfortranarray(s) for s in s0]
        dsn_v = [np.ascontiguousarray(s[:, ::-1])[:, ::-1] for s in dsn]
        o, s = run_forward(model, xv, s0_v, lengths=lengths)
        d, d0 = run_backward(model, dout_v, dsn_v)
        assert_close_f64(o, out, name=f"{vname} out")
        assert_close_f64(d, dx, name=f"{vname} dx")
        for a, b in zip(s + d0, sn + ds0):
            assert_close_f64(a, b, name=f"{vname} state")
        for k, g in model.grads.items():
            assert_close_f64(g, grads[k], name=f"{vname} d{k}")


@pytest.mark.parametrize("cell", CELLS)
def test_float32_model_gives_float32(rng, cell):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, seed=0)
    ref = make_model(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    ref.load_state_dict(model.state_dict())
    x, s0, dout, dsn = _data(rng, ref, T=5, N=3)
    f32 = lambda arrs: [a.astype(np.float32) for a in arrs]  # noqa: E731
    out, sn = run_forward(model, x.astype(np.float32), f32(s0), lengths=np.array([5, 1, 3]))
    dx, ds0 = run_backward(model, dout.astype(np.float32), f32(dsn))
    out_r, sn_r = run_forward(ref, x, s0, lengths=np.array([5, 1, 3]))
    dx_r, ds0_r = run_backward(ref, dout, dsn)
    for a, b in zip([out, dx, *sn, *ds0], [out_r, dx_r, *sn_r, *ds0_r]):
        assert a.dtype == np.float32
        assert_close_f32(a, b)
    for k in model.params:
        assert model.params[k].dtype == np.float32 and model.grads[k].dtype == np.float32
        assert_close_f32(model.grads[k], ref.grads[k], name=k)


@pytest.mark.parametrize("cell", CELLS)
def test_out_modified_in_place_does_not_change_gradients(rng, cell):
    """Editing ``out`` in place must never change what backward computes: in
    training mode ``out`` (which shares memory with the saved activations) is
    read-only, so the edit fails loudly (PyTorch refuses such an edit too);
    h_n is a copy and may be edited freely."""
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model)
    run_forward(model, x, s0)
    dx, ds0 = run_backward(model, dout, dsn)
    grads = {k: g.copy() for k, g in model.grads.items()}
    model.zero_grad()
    out, sn = run_forward(model, x, s0)
    with pytest.raises(ValueError, match="read-only"):
        out *= 2.0
    out = out * 2.0  # a copy is fine
    for s in sn:
        s *= 2.0
    dx2, ds02 = run_backward(model, dout, dsn)
    assert_close_f64(dx2, dx, name="dx")
    for a, b in zip(ds02, ds0):
        assert_close_f64(a, b, name="dstate0")
    for k, g in model.grads.items():
        assert_close_f64(g, grads[k], name="d" + k)


@pytest.mark.parametrize("cell", CELLS)
def test_two_directions_on_two_threads(rng, cell, monkeypatch):
    """The threaded path of bidirectional layers (forced on for tiny sizes) is exact."""
    import rnncore._runtime.threads as threads
    monkeypatch.setattr(threads, "_PARALLEL", True)
    monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 0)
    for merge_mode in ("concat", "mul"):
        check_against_reference(rng, cell, T1, N1, D1, H1, num_layers=3, bidirectional=True,
                                merge_mode=merge_mode, lengths=LENGTHS1.copy())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", [[5, 3, 1], [3, 3, 2], [5, 5, 5]],
                         ids=["sorted", "ties", "all-full"])
def test_sorted_lengths_match_reference(rng, cell, lengths):
    # already sorted batches skip the permutation: a separate code path
    check_against_reference(rng, cell, T1, N1, D1, H1, num_layers=2, bidirectional=True,
                            lengths=np.array(lengths))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_unbatched_equals_batch_of_one(rng, cell, batch_first):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=np.float64, seed=0)
    T, ns = 5, n_states(cell)
    x = rng.standard_normal((T, 3))
    s0 = [rng.standard_normal((4, 4)) for _ in range(ns)]
    dout = rng.standard_normal((T, 8))
    dsn = [rng.standard_normal((4, 4)) for _ in range(ns)]
    for lengths in (None, 3):
        model.zero_grad()
        out, sn = run_forward(model, x, s0, lengths=lengths)
        dx, ds0 = run_backward(model, dout, dsn)
        grads = {k: g.copy() for k, g in model.grads.items()}
        model.zero_grad()
        b = (lambda a: a[None]) if batch_first else (lambda a: a[:, None])
        out1, sn1 = run_forward(model, b(x), [s[:, None] for s in s0],
                                lengths=None if lengths is None else [lengths])
        dx1, ds01 = run_backward(model, b(dout), [s[:, None] for s in dsn])
        assert out.shape == (T, 8) and dx.shape == x.shape
        assert_close_f64(out, out1[0] if batch_first else out1[:, 0], name="out")
        assert_close_f64(dx, dx1[0] if batch_first else dx1[:, 0], name="dx")
        for a, a1, c, c1 in zip(sn, sn1, ds0, ds01):
            assert a.shape == (4, 4) and c.shape == (4, 4)
            assert_close_f64(a, a1[:, 0], name="state_n")
            assert_close_f64(c, c1[:, 0], name="dstate0")
        for k, g in model.grads.items():
            assert_close_f64(g, grads[k], name="d" + k)
        if lengths is not None:
            assert not np.any(out[lengths:])


def test_lstm_state_pair_with_a_none_member(rng):
    model = make_model("lstm", 3, 4, num_layers=2, dtype=np.float64, seed=0)
    x, (h0, c0), dout, (dhn, dcn) = _data(rng, model)
    zero = np.zeros_like(h0)
    out_a, (h_a, c_a) = model(x, (h0, None))
    dx_a, (dh0_a, dc0_a) = model.backward(dout, (None, dcn))
    out_b, (h_b, c_b) = model(x, (h0, zero))
    dx_b, (dh0_b, dc0_b) = model.backward(dout, (zero, dcn))
    for a, b in zip([out_a, h_a, c_a, dx_a, dh0_a, dc0_a], [out_b, h_b, c_b, dx_b, dh0_b, dc0_b]):
        np.testing.assert_array_equal(a, b)
    assert np.any(c_a != 0) and np.any(dc0_a != 0)


# ---------------------------------------------------------------------------
# 5. Bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_bad_x(rng, cell):
    model = make_model(cell, 3, 4, num_layers=2, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match=r"x: .*input_size.*3.*got 5"):
        model(rng.standard_normal((4, 2, 5)))
    with pytest.raises(ValueError, match=r"x: .*\(T, N, D\).*\(4,\)"):
        model(rng.standard_normal(4))
    with pytest.raises(ValueError, match=r"x: .*\(2, 4, 2, 3\)"):
        model(rng.standard_normal((2, 4, 2, 3)))
    with pytest.raises(TypeError, match="x: .*int64"):
        model(np.ones((4, 2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="x: "):
        model(np.ones((4, 2, 3), dtype=np.float16))
    with pytest.raises(TypeError, match="x: .*float32.*float64"):
        make_model(cell, 3, 4)(rng.standard_normal((4, 2, 3)))  # float64 into float32


@pytest.mark.parametrize("cell", CELLS)
def test_bad_lengths(rng, cell):
    model = make_model(cell, 3, 4, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 2, 3))
    with pytest.raises(ValueError, match=r"lengths: .*\[0, 4\]"):
        model(x, lengths=np.array([5, 2]))
    with pytest.raises(ValueError, match=r"lengths: .*\[0, 4\]"):
        model(x, lengths=np.array([-1, 2]))
    with pytest.raises(ValueError, match=r"lengths: .*\(2,\)"):
        model(x, lengths=np.array([4, 2, 1]))
    with pytest.raises(TypeError, match="lengths: .*float"):
        model(x, lengths=np.array([4.0, 2.0]))


@pytest.mark.parametrize("cell", CELLS)
def test_bad_states_and_gradients(rng, cell):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model, T=4, N=2)
    bad = rng.standard_normal((2, 2, 4))  # L * dirs is 4
    with pytest.raises(ValueError, match=r"h0: .*\(4, 2, 4\).*\(2, 2, 4\)"):
        run_forward(model, x, [bad] + s0[1:])
    with pytest.raises(ValueError, match="h0: "):
        run_forward(model, x, [s0[0][:, :, :3]] + s0[1:])
    with pytest.raises(TypeError, match="h0: "):
        run_forward(model, x, [s0[0].astype(np.float32)] + s0[1:])
    if cell == "lstm":
        with pytest.raises(ValueError, match="c0: "):
            model(x, (s0[0], bad))
        with pytest.raises(TypeError, match="hx"):
            model(x, s0[0])
    run_forward(model, x, s0)
    with pytest.raises(ValueError, match=r"dout: .*\(4, 2, 8\).*\(4, 2, 4\)"):
        run_backward(model, dout[..., :4], dsn)
    run_forward(model, x, s0)
    with pytest.raises(ValueError, match=r"dh_n: .*\(2, 2, 4\)"):
        run_backward(model, dout, [bad] + dsn[1:])
    if cell == "lstm":
        run_forward(model, x, s0)
        with pytest.raises(ValueError, match="dc_n: "):
            model.backward(dout, (dsn[0], bad))
    run_forward(model, x, s0)
    with pytest.raises(TypeError, match="dout: "):
        run_backward(model, dout.astype(np.float32), dsn)


@pytest.mark.parametrize("cell", CELLS)
def test_bad_constructor_arguments(cell):
    for p in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="dropout"):
            make_model(cell, 3, 4, dropout=p)
    for p in ("0.5", None, True, [0.1]):
        with pytest.raises((TypeError, ValueError), match="dropout"):
            make_model(cell, 3, 4, dropout=p)
    with pytest.raises(ValueError, match="merge_mode: .*'max'"):
        make_model(cell, 3, 4, bidirectional=True, merge_mode="max")
    with pytest.raises(ValueError, match="hidden_size"):
        make_model(cell, 3, 0)
    with pytest.raises(TypeError, match="hidden_size"):
        make_model(cell, 3, 4.0)
    with pytest.raises(ValueError, match="num_layers"):
        make_model(cell, 3, 4, num_layers=0)
    with pytest.raises(TypeError, match="dtype"):
        make_model(cell, 3, 4, dtype=np.int32)


def test_bad_nonlinearity():
    with pytest.raises(ValueError, match="nonlinearity: .*'sigmoid'"):
        RNN(3, 4, nonlinearity="sigmoid")


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_accepts_numpy_scalars(cell):
    # a NumPy float is a number (numbers.Real), as PyTorch's check accepts
    model = make_model(cell, 3, 4, num_layers=2, dropout=np.float32(0.25))
    assert model.dropout == 0.25


# ---------------------------------------------------------------------------
# 6. Edge cases
# ---------------------------------------------------------------------------
EDGE_SHAPES = [  # (T, N, D, H)
    (1, 3, 2, 2),
    (4, 1, 2, 3),
    (3, 2, 2, 1),
    (3, 2, 1, 3),
]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", EDGE_SHAPES, ids=lambda s: "T%d-N%d-D%d-H%d" % s)
@pytest.mark.parametrize("use_len", [False, True], ids=["full", "len"])
def test_edge_shapes_match_reference(rng, cell, shape, use_len):
    T, N, D, H = shape
    lengths = None
    if use_len:
        lengths = np.arange(N)[::-1] % T + 1
        lengths[0] = T
        lengths = np.roll(lengths, 1)
    check_against_reference(rng, cell, T, N, D, H, num_layers=2, bidirectional=True,
                            batch_first=use_len, lengths=lengths)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_some_zero_lengths_match_reference(rng, cell, batch_first):
    check_against_reference(rng, cell, 4, 3, 2, 3, num_layers=2, bidirectional=True,
                            batch_first=batch_first, lengths=np.array([0, 4, 2]))


@pytest.mark.parametrize("cell", CELLS)
def test_all_lengths_zero(rng, cell):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model, T=3, N=2)
    out, sn = run_forward(model, x, s0, lengths=np.array([0, 0]))
    assert out.shape == (3, 2, 8)
    assert not np.any(out)
    for a, b in zip(sn, s0):
        np.testing.assert_array_equal(a, b)
    dx, ds0 = run_backward(model, dout, dsn)
    assert dx.shape == x.shape and not np.any(dx)
    for a, b in zip(ds0, dsn):
        np.testing.assert_array_equal(a, b)
    assert not any(np.any(g) for g in model.grads.values())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("use_len", [False, True], ids=["full", "len"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
def test_empty_sequence(rng, cell, use_len, batch_first):
    model = make_model(cell, 3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                       dtype=np.float64, seed=0)
    x, s0, dout, dsn = _data(rng, model, T=0, N=2)
    lengths = np.array([0, 0]) if use_len else None
    out, sn = run_forward(model, x, s0, lengths=lengths)
    assert out.shape == ((2, 0, 8) if batch_first else (0, 2, 8))
    for a, b in zip(sn, s0):
        np.testing.assert_array_equal(a, b)
    dx, ds0 = run_backward(model, dout, dsn)
    assert dx.shape == x.shape
    for a, b in zip(ds0, dsn):
        np.testing.assert_array_equal(a, b)
    assert not any(np.any(g) for g in model.grads.values())
    # without an initial state the final state is zero
    out, sn = run_forward(model, x, lengths=lengths)
    assert all(s.shape == (4, 2, 4) and not np.any(s) for s in sn)


@pytest.mark.parametrize("cell", CELLS)
def test_out_is_writable_in_eval_mode(rng, cell):
    """Without train=True nothing is saved, so ``out`` is the caller's to edit."""
    model = make_model(cell, 3, 4, dtype=np.float64, seed=0)
    x, s0, _, _ = _data(rng, model)
    out, _ = run_forward(model, x, s0, train=False)
    out *= 2.0
    assert out.flags.writeable


@pytest.mark.parametrize("variant", ["rnn", "rnn-relu", "gru", "gru-rb", "lstm", "lstm-proj",
                                     "gru-ln", "lstm-ln"])
@pytest.mark.parametrize("layout", ["tm", "bf", "unbatched"])
@pytest.mark.parametrize("given", [False, True], ids=["zeros", "h0"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_layer_inference_short_path_matches_the_general_one(rng, variant, layout, given,
                                                                 dtype, monkeypatch):
    """An inference call of one layer and direction without lengths runs
    _stack._forward_one (the stacking code's general loop is never entered) and gives
    the same bits as the general path (a training forward of the same model), states
    given or zeros; out is writable and shares nothing with the final states."""
    from rnncore import _stack
    T, N, D, H = 7, 3, 5, 6
    kw = {"gru-rb": dict(reset_after=False), "lstm-proj": dict(proj_size=4),
          "gru-ln": dict(layer_norm=True), "lstm-ln": dict(layer_norm=True)}.get(variant, {})
    batch_first = layout == "bf"
    cell = {"rnn": "rnn_tanh", "rnn-relu": "rnn_relu"}.get(variant, variant.split("-")[0])
    model = make_model(cell, D, H, dtype=dtype, seed=3, batch_first=batch_first, **kw)
    unbatched = layout == "unbatched"
    lead = (T,) if unbatched else (N, T) if batch_first else (T, N)
    x = rng.standard_normal(lead + (D,)).astype(dtype)
    widths = [model._h_size] + [H] * (model.n_states - 1)
    s0 = ([rng.standard_normal((1,) + (() if unbatched else (N,)) + (w,)).astype(dtype)
           for w in widths] if given else None)
    x_before = x.copy()
    want_out, want_fin = run_forward(model, x, s0, train=True)      # the general path

    def general(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_stack, "_run_layers", general)
    out, finals = run_forward(model, x, s0, train=False)
    np.testing.assert_array_equal(out, want_out)
    assert out.shape == want_out.shape and out.dtype == dtype and out.flags.writeable
    for f, w in zip(finals, want_fin):
        np.testing.assert_array_equal(f, w)
        assert f.shape == w.shape and f.flags.c_contiguous and not np.shares_memory(f, out)
    np.testing.assert_array_equal(x, x_before)
    with pytest.raises(AssertionError, match="general path"):
        run_forward(model, x, s0, train=True)        # a training forward does not take it


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_short_path_hands_bad_or_empty_input_to_the_general_checks(rng, cell, batch_first):
    """The short path runs before forward's checks and takes only a 2-D or 3-D array
    of the model's dtype with T > 0 steps of input_size features: anything else gives
    the general path's errors (the same as a training forward's) or its result (T = 0),
    and a float64 array or a list is never cast silently."""
    T, N, D, H = 5, 2, 4, 3
    model = make_model(cell, D, H, dtype=np.float32, seed=1, batch_first=batch_first)
    lead = (N, T) if batch_first else (T, N)
    bad = {"D": np.zeros(lead + (D + 1,), np.float32),
           "rank": np.zeros((1,) + lead + (D,), np.float32),
           "dtype": np.zeros(lead + (D,), np.float64),
           "list": np.zeros(lead + (D,), np.float32).tolist(),
           "h0": (np.zeros(lead + (D,), np.float32), np.zeros((1, N + 1, H), np.float32))}
    for what, args in bad.items():
        args = args if isinstance(args, tuple) else (args,)
        errors = []
        for train in (True, False):
            with pytest.raises((ValueError, TypeError)) as e:
                model(*args, train=train)
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1], what
    widths = [model._h_size] + [H] * (model.n_states - 1)
    good = [np.zeros((1, N, w), np.float32) for w in widths]
    bad_states = {"unbatched h0": (np.zeros((T, D), np.float32),
                                   [np.zeros((1, N, w), np.float32) for w in widths])}
    if model.n_states == 2:      # the LSTM: only c0 wrong
        bad_states["c0"] = (np.zeros(lead + (D,), np.float32),
                            [good[0], np.zeros((1, N, H + 1), np.float32)])
    for what, (xs, states) in bad_states.items():
        errors = []
        for train in (True, False):
            with pytest.raises(ValueError) as e:
                model(xs, states if model.n_states == 2 else states[0], train=train)
            errors.append(str(e.value))
        assert errors[0] == errors[1], what
    empty = np.zeros((N, 0, D) if batch_first else (0, N, D), np.float32)
    out, *finals = model(empty, train=False)
    want_out, *want_finals = model(empty, train=True)
    assert out.shape == want_out.shape
    for f, w in zip(finals, want_finals):
        for a, b in zip(f if isinstance(f, tuple) else (f,), w if isinstance(w, tuple) else (w,)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_short_path_takes_converted_and_odd_inputs(rng, cell, monkeypatch):
    """What forward's first check converts (a list for a float64 model, an ndarray
    subclass) and a Fortran-ordered or read-only x take the short path too, with the
    general path's bits and without touching the caller's x."""
    from rnncore import _stack
    T, N, D, H = 5, 3, 4, 6
    model = make_model(cell, D, H, dtype=np.float64, seed=2)
    x = rng.standard_normal((T, N, D))
    want_out, *want_fin = model(x, train=True)
    ro = x.copy()
    ro.flags.writeable = False
    inputs = {"list": x.tolist(), "subclass": x.view(type("Sub", (np.ndarray,), {})),
              "fortran": np.asfortranarray(x), "read-only": ro}

    def general(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_stack, "_run_layers", general)
    for what, xi in inputs.items():
        before = np.array(xi, copy=True)
        out, *fin = model(xi, train=False)
        np.testing.assert_array_equal(out, want_out, err_msg=what)
        assert type(out) is np.ndarray and out.flags.writeable, what
        for f, w in zip(fin, want_fin):
            for a, b in zip(f if isinstance(f, tuple) else (f,),
                            w if isinstance(w, tuple) else (w,)):
                np.testing.assert_array_equal(a, b, err_msg=what)
        np.testing.assert_array_equal(np.asarray(xi), before, err_msg=what)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_short_path_without_bias_under_no_grad_with_regularisation_and_odd_layouts(
        rng, cell, monkeypatch):
    """The short path (_stack._forward_one) in the other calls that reach it: a model
    without biases; a model in training mode under no_grad (train=True, nothing
    saved), with weight drop and variational dropout -- which act only on a forward
    that saves, so the result is eval's -- and nothing kept for backward; an h0 that
    is a strided view and a Fortran-ordered x (the same bits as their contiguous
    copies, the caller's arrays unchanged); an empty batch (N = 0)."""
    from rnncore import _stack
    T, N, D, H = 6, 3, 4, 5
    x = rng.standard_normal((T, N, D)).astype(np.float32)
    big = [rng.standard_normal((1, N, 2 * H)).astype(np.float32) for _ in range(2)]
    s0 = [b[..., ::2] for b in big][:2 if cell == "lstm" else 1]
    plain = make_model(cell, D, H, dtype=np.float32, seed=4, bias=False)
    reg = make_model(cell, D, H, dtype=np.float32, seed=4, weight_drop=0.5,
                     variational_dropout=0.3)
    want_plain = run_forward(plain, x, [np.ascontiguousarray(s) for s in s0], train=True)
    plain.eval()
    want_reg = run_forward(reg, x, [np.ascontiguousarray(s) for s in s0], train=False)

    def general(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_stack, "_run_layers", general)
    before = [s.copy() for s in s0] + [x.copy()]
    xf = np.asfortranarray(x)
    got = run_forward(plain, xf, s0, train=None)                    # bias=False, eval
    for a, b in zip([got[0]] + got[1], [want_plain[0]] + want_plain[1]):
        np.testing.assert_array_equal(a, b)
    reg.train()
    with rnncore.no_grad():
        got = run_forward(reg, x, s0, train=None)                   # training mode, no_grad
    for a, b in zip([got[0]] + got[1], [want_reg[0]] + want_reg[1]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError):
        reg.backward(np.ones_like(got[0]))                          # nothing was kept
    for a, b in zip(s0 + [xf], before):
        np.testing.assert_array_equal(a, b)
    out, finals = run_forward(plain, np.zeros((T, 0, D), np.float32), train=None)
    assert out.shape == (T, 0, H) and all(f.shape == (1, 0, H) for f in finals)


@pytest.mark.parametrize("cell", CELLS + ["lstm-proj"])
@pytest.mark.parametrize("layout", ["tm", "bf", "unbatched"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_layer_final_states_are_the_last_step_copied(rng, cell, layout, dtype, monkeypatch):
    """One layer, one direction, no lengths (the forward's shortcut for the final
    states, taken: the general per-state helper is never called): h_n (and c_n) are
    the last step's states, equal between eval and training forwards, each a
    C-contiguous array of its own -- editing ``out`` leaves them unchanged -- and the
    reference's (float64). With a projection, h_n is P wide and c_n H wide."""
    from rnncore import _stack

    def general(*args):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_stack, "_final_state", general)
    T, N, D, H = 6, 3, 4, 5
    proj = 2 if cell == "lstm-proj" else 0
    kw = dict(proj_size=proj) if proj else {}
    batch_first = layout == "bf"
    model = make_model(cell.split("-")[0], D, H, dtype=dtype, seed=1, batch_first=batch_first,
                       **kw)
    widths = [proj or H] + [H] * (model.n_states - 1)
    unbatched = layout == "unbatched"
    lead = (T,) if unbatched else (N, T) if batch_first else (T, N)
    x = rng.standard_normal(lead + (D,)).astype(dtype)
    s0 = [rng.standard_normal((1,) + (() if unbatched else (N,)) + (w,)).astype(dtype)
          for w in widths]
    got = {}
    for train in (True, False):
        out, finals = run_forward(model, x, s0, train=train)
        last = out[:, -1] if batch_first else out[-1]
        np.testing.assert_array_equal(finals[0][0], last)
        for f, w in zip(finals, widths):
            assert f.shape == ((1, w) if unbatched else (1, N, w)) and f.dtype == dtype
            assert f.flags.c_contiguous and f.flags.writeable and not np.shares_memory(f, out)
        if not train:
            before = [f.copy() for f in finals]
            out[...] = 7.0
            for f, b in zip(finals, before):
                np.testing.assert_array_equal(f, b)
        got[train] = finals
    for a, b in zip(got[True], got[False]):
        np.testing.assert_array_equal(a, b)
    if dtype == np.float64 and not proj:
        xt = x[:, None] if unbatched else (x.transpose(1, 0, 2) if batch_first else x)
        st = [s[:, None] for s in s0] if unbatched else s0
        want = reference_model(cell, model.params, xt, st, None, 1, False)
        for si, f in enumerate(got[False]):
            assert_close_f64(f.reshape(1, 1 if unbatched else N, -1), want["states"][si],
                             name=f"state {si}")
