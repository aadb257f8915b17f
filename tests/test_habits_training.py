"""Training habits and their safety: parameter sets for optimizers and clipping (issue 15),
constant-memory inference, and issue 17's items 1, 2 and 6 (cells' thread ownership, inputs
changed between forward and backward, a rejected dout or a failed forward)."""
import copy
import threading
import tracemalloc

import numpy as np
import pytest

import rnncore
from rnncore import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, nn, optim
from rnncore.clip import clip_grad_norm_

CELLS = {"rnn": RNNCell, "gru": GRUCell, "lstm": LSTMCell}
MODELS = {"rnn": RNN, "gru": GRU, "lstm": LSTM}


def _x(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def _fill_grads(rng, *modules):
    for m in modules:
        for g in m.grads.values():
            g[...] = rng.standard_normal(g.shape)


def _pair(seed=0, dtype=np.float64):
    return GRU(3, 4, num_layers=2, dtype=dtype, seed=seed), nn.Linear(4, 2, dtype=dtype,
                                                                         seed=seed + 1)


# ------------------------------------------------------------------ optimizers
@pytest.mark.parametrize("cls,kw", [(optim.Adam, {"lr": 0.01, "amsgrad": True}),
                                    (optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                    (optim.RMSprop, {"lr": 0.01, "centered": True})])
@pytest.mark.parametrize("form", ["list", "named_parameters", "groups"])
def test_one_optimizer_over_two_modules_equals_two(rng, cls, kw, form):
    a, b = _pair()
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    if form == "list":
        params = [a, b]
    elif form == "named_parameters":
        params = [*a.named_parameters(), *(("head." + k, p) for k, p in b.named_parameters())]
    else:
        params = [{"params": a}, {"params": b.parameters()}]
    one = cls(params, **kw)
    two = [cls(a2, **kw), cls(b2, **kw)]
    for _ in range(4):
        grads = np.random.default_rng(int(rng.integers(1 << 30)))
        _fill_grads(grads, a, b)
        for m, m2 in ((a, a2), (b, b2)):
            for k in m.grads:
                m2.grads[k][...] = m.grads[k]
        one.step()
        for o in two:
            o.step()
    for m, m2 in ((a, a2), (b, b2)):
        for k in m.params:
            np.testing.assert_array_equal(m.params[k], m2.params[k], err_msg=k)
    one.zero_grad()
    assert all(not g.any() for m in (a, b) for g in m.grads.values())


def test_parameter_groups_own_lr_and_state_dict_round_trip(rng):
    a, b = _pair()
    groups = [{"params": a, "lr": 0.05}, {"params": b, "betas": (0.5, 0.9)}]
    opt = optim.Adam(groups, lr=0.01)
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["params"][0] == \
        "0.weight_ih_l0"
    ref_a, ref_b = optim.Adam(copy.deepcopy(a), lr=0.05), optim.Adam(copy.deepcopy(b), lr=0.01,
                                                                    betas=(0.5, 0.9))
    for step in range(6):
        _fill_grads(np.random.default_rng(step), a, b)
        for m, ref in ((a, ref_a.module), (b, ref_b.module)):
            for k in m.grads:
                ref.grads[k][...] = m.grads[k]
        opt.step(), ref_a.step(), ref_b.step()
        if step == 2:  # save, rebuild from scratch, load: continues identically
            sd = opt.state_dict()
            assert sd["group.0.lr"] == 0.05 and sd["group.1.betas"] == (0.5, 0.9)
            opt = optim.Adam([{"params": a}, {"params": b}], lr=0.3)
            opt.load_state_dict(sd)
            assert opt.param_groups[0]["lr"] == 0.05 and opt.lr == 0.01
    for m, ref in ((a, ref_a.module), (b, ref_b.module)):
        for k in m.params:
            np.testing.assert_array_equal(m.params[k], ref.params[k], err_msg=k)


def test_scheduler_scales_each_groups_own_lr():
    a, b = _pair()
    opt = optim.SGD([{"params": a, "lr": 1.0}, {"params": b}], lr=0.1)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5 and opt.lr == 0.05


def test_parameter_sets_refused_clearly(rng):
    a, _ = _pair()
    with pytest.raises(ValueError, match="unknown option 'momentum' for Adam"):
        optim.Adam([{"params": a, "momentum": 0.9}])
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optim.Adam([{"params": a, "lr": -1}])
    with pytest.raises(ValueError, match="parameter names repeat"):
        optim.SGD(list(a.named_parameters()) * 2, lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"SGD expects a Module.* got int"):
        optim.SGD(3, lr=0.1)
    with pytest.raises(ValueError, match="group 0 has no 'params'"):
        optim.SGD([{"lr": 0.1}], lr=0.1)


def test_optimizer_notices_a_module_cast_after_it_was_built():
    a, _ = _pair()
    opt = optim.SGD(a, lr=0.1)
    a.float()
    with pytest.raises(RuntimeError, match="shape or dtype of 'weight_ih_l0' changed"):
        opt.step()


@pytest.mark.parametrize("form", ["list", "parameters", "named_parameters", "groups"])
def test_clip_grad_norm_takes_the_same_parameter_sets(rng, form):
    a, b = _pair()
    _fill_grads(rng, a, b)
    flat = np.concatenate([g.ravel() for m in (a, b) for g in m.grads.values()])
    expected = flat * min(1.0, 1.0 / (np.linalg.norm(flat) + 1e-6))
    params = {"list": [a, b], "parameters": [*a.parameters(), *b.parameters()],
              "named_parameters": [*a.named_parameters(), *b.named_parameters()],
              "groups": [{"params": a}, {"params": list(b.parameters())}]}[form]
    total = clip_grad_norm_(params, 1.0)
    assert total == pytest.approx(np.linalg.norm(flat))
    got = np.concatenate([g.ravel() for m in (a, b) for g in m.grads.values()])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


# ------------------------------------------------------------ constant memory
def _traced_growth(step, n=20_000, warm=2_000):
    """Bytes traced after n steps minus after `warm` steps."""
    tracemalloc.start()
    try:
        for _ in range(warm):
            step()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(n - warm):
            step()
        return tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm", "model.step"])
def test_generation_in_eval_mode_holds_constant_memory(kind):
    if kind == "model.step":
        m = LSTM(8, 16, num_layers=2, seed=0).eval()
        state = [np.zeros(8, np.float32), None]

        def step():
            y, state[1] = m.step(state[0], state[1])
            state[0] = y[:8]
    else:
        m = CELLS[kind](8, 8, seed=0).eval()
        state = [np.zeros(8, np.float32), None]

        def step():
            h = m(state[0], state[1])
            state[1] = h
            state[0] = h[0] if kind == "lstm" else h
    assert _traced_growth(step) < 64 * 1024
    if kind != "model.step":            # a training-mode loop would keep every step
        m.train()
        assert _traced_growth(step, n=600, warm=100) > 500 * 8 * 4


# ---------------------------------------------- issue 17 item 1: cell threads
@pytest.mark.parametrize("kind", CELLS)
def test_cell_steps_belong_to_one_thread(rng, kind):
    cell = CELLS[kind](3, 4, seed=0)
    x = _x(rng, 2, 3)
    cell(x)                                         # main thread's pending step
    errors = []

    def other():
        for call in (lambda: cell(x), lambda: cell.backward(np.ones((2, 4), np.float32))):
            try:
                call()
            except RuntimeError as e:
                errors.append(str(e))
        cell.eval()(x)                              # inference is free for all threads
        cell.train()
    t = threading.Thread(target=other)
    t.start(), t.join()
    assert len(errors) == 2 and all("saved by another thread" in e for e in errors)
    assert len(cell._stack) == 1                    # the main thread's step is intact
    cell.backward(np.ones((2, 4), np.float32))
    cell.clear_saved()


@pytest.mark.parametrize("kind", CELLS)
def test_two_threads_training_their_own_steps_in_turn_match_serial(rng, kind):
    cell = CELLS[kind](3, 4, dtype=np.float64, seed=0)
    ref = copy.deepcopy(cell)
    xs = _x(rng, 2, 5, 3, dtype=np.float64)
    gate = threading.Lock()

    def run(c, x):
        with gate:                                  # one whole forward+backward at a time
            h = c(x)
            c.backward(np.ones_like(h if kind != "lstm" else h[0]))
    threads = [threading.Thread(target=run, args=(cell, x)) for x in xs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for x in xs:
        run(ref, x)
    for k in cell.grads:
        np.testing.assert_allclose(cell.grads[k], ref.grads[k], rtol=1e-13, err_msg=k)


# ------------------------------- issue 17 item 2: inputs changed before backward
def _model_grads(m, x, h0, dout, mutate):
    m.zero_grad()
    hx = (h0, h0.copy()) if isinstance(m, LSTM) else h0
    out, _ = m(x, hx)
    if mutate:
        x[...] = 0
        h0[...] = 7
    dx, _ = m.backward(dout)
    return dx, {k: g.copy() for k, g in m.grads.items()}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_model_gradients_ignore_inputs_changed_after_forward(rng, kind, batch_first):
    m = MODELS[kind](3, 4, num_layers=2, bidirectional=True, batch_first=batch_first,
                     dtype=np.float64, seed=0)
    lead = (2, 5) if batch_first else (5, 2)
    x, h0 = _x(rng, *lead, 3, dtype=np.float64), _x(rng, 4, 2, 4, dtype=np.float64)
    dout = _x(rng, *lead, 8, dtype=np.float64)
    dx0, g0 = _model_grads(m, x.copy(), h0.copy(), dout, mutate=False)
    dx1, g1 = _model_grads(m, x, h0, dout, mutate=True)
    np.testing.assert_array_equal(dx0, dx1)
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)


@pytest.mark.parametrize("kind", CELLS)
def test_cell_loop_refilling_one_buffer_gets_the_right_gradients(rng, kind):
    xs = _x(rng, 6, 2, 3, dtype=np.float64)
    cells = [CELLS[kind](3, 4, dtype=np.float64, seed=0) for _ in range(2)]
    for reuse, cell in zip((False, True), cells):
        buf, h = np.empty((2, 3)), None
        for t in range(6):
            if reuse:
                buf[:] = xs[t]
            h = cell(buf if reuse else xs[t], h)
            if kind == "lstm" and reuse:
                h[0][...] = h[0]          # the caller may also write its own state arrays
        dh = None
        for t in reversed(range(6)):
            dn = np.ones((2, 4)) if dh is None else dh + 1
            _, dh = cell.backward(dn) if kind != "lstm" else cell.backward(dn, None)
            dh = dh[0] if kind == "lstm" else dh
    for k in cells[0].grads:
        np.testing.assert_array_equal(cells[0].grads[k], cells[1].grads[k], err_msg=k)


# ------------------------ issue 17 item 6: rejected dout, failed second forward
@pytest.mark.parametrize("kind", MODELS)
def test_rejected_dout_keeps_the_saved_activations(rng, kind):
    m = MODELS[kind](3, 4, dtype=np.float64, seed=0)
    ref = copy.deepcopy(m)
    x = _x(rng, 5, 2, 3, dtype=np.float64)
    out, _ = m(x)
    ref_out, _ = ref(x)
    with pytest.raises(ValueError, match="dout"):
        m.backward(np.ones((5, 2, 5)))
    with pytest.raises(TypeError, match="dout"):
        m.backward(np.ones((5, 2, 4), np.float32))
    dstate_bad = np.ones((2, 2, 4))
    with pytest.raises(ValueError, match="dh_n"):
        m.backward(np.ones_like(out), (dstate_bad, None) if kind == "lstm" else dstate_bad)
    dx, _ = m.backward(np.ones_like(out))
    ref_dx, _ = ref.backward(np.ones_like(ref_out))
    np.testing.assert_array_equal(dx, ref_dx)


@pytest.mark.parametrize("kind", MODELS)
def test_failed_forward_clears_the_previous_activations(rng, kind):
    m = MODELS[kind](3, 4, seed=0)
    out, _ = m(_x(rng, 5, 2, 3))
    with pytest.raises(ValueError, match="input_size"):
        m(_x(rng, 5, 2, 4))
    with pytest.raises(RuntimeError, match="preceding forward"):
        m.backward(np.ones_like(out))
    lin = nn.Linear(3, 2)
    y = lin(_x(rng, 4, 3))
    with pytest.raises(ValueError):
        lin(_x(rng, 4, 5))
    with pytest.raises(RuntimeError, match="preceding"):
        lin.backward(np.ones_like(y))
