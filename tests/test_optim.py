"""rnncore.optim: update rules against PyTorch, state dicts, schedulers, allocations."""
import math
import tracemalloc

import numpy as np
import pytest
from conftest import TOL, assert_close_f64

from rnncore.module import Module
from rnncore.optim import SGD, Adagrad, Adam, AdamW, CosineAnnealingLR, RMSprop, StepLR


class Params(Module):
    """A module that is just named parameters (the optimizer only needs dicts)."""

    def __init__(self, rng, shapes=(("weight", (3, 4)), ("bias", (4,))), dtype=np.float64):
        super().__init__()
        for name, shape in shapes:
            self._add_param(name, rng.standard_normal(shape).astype(dtype))


CASES = [
    (SGD, dict(lr=0.1)),
    (SGD, dict(lr=0.1, momentum=0.9)),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.3)),
    (SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (SGD, dict(lr=0.1, weight_decay=0.05)),
    (SGD, dict(lr=0.1, momentum=0.5, weight_decay=0.05, nesterov=True)),
    (Adam, dict()),
    (Adam, dict(lr=0.01, weight_decay=0.1)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (Adam, dict(lr=0.01, betas=(0.4, 0.6), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (AdamW, dict(lr=0.01, weight_decay=0.3, amsgrad=True)),
    (AdamW, dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0)),
    (Adagrad, dict()),
    (Adagrad, dict(lr=0.1, lr_decay=0.2)),
    (Adagrad, dict(lr=0.1, weight_decay=0.1, initial_accumulator_value=0.5, eps=1e-6)),
    (RMSprop, dict()),
    (RMSprop, dict(lr=0.01, centered=True)),
    (RMSprop, dict(lr=0.01, alpha=0.3, centered=True)),
    (RMSprop, dict(lr=0.01, momentum=0.9)),
    (RMSprop, dict(lr=0.01, alpha=0.3, weight_decay=0.1)),
    (RMSprop, dict(lr=0.01, centered=True, momentum=0.5, weight_decay=0.1, eps=1e-4)),
]


def _case_id(case):
    cls, kw = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in kw.items())


def _grad_sequence(rng, module, steps):
    return [{k: rng.standard_normal(p.shape) for k, p in module.params.items()}
            for _ in range(steps)]


def _run(opt, module, grads):
    for g in grads:
        for k, v in g.items():
            module.grads[k][...] = v
        opt.step()


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_optimizer_matches_torch(rng, case):
    torch = pytest.importorskip("torch")
    cls, kw = case
    module = Params(rng)
    grads = _grad_sequence(rng, module, 5)
    tparams = [torch.from_numpy(p.copy()).requires_grad_(True) for p in module.params.values()]
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    opt = cls(module, **kw)
    for g in grads:
        for tp, v in zip(tparams, g.values()):
            tp.grad = torch.from_numpy(v.copy())
        topt.step()
    _run(opt, module, grads)
    for (k, p), tp in zip(module.params.items(), tparams):
        assert_close_f64(p, tp.detach().numpy(), atol=TOL["torch_f64_atol"], name=k)
    assert opt.step_count == 5


@pytest.mark.parametrize("cls", [SGD, Adam, AdamW, Adagrad, RMSprop])
def test_optimizer_float32_matches_torch(rng, cls):
    torch = pytest.importorskip("torch")
    module = Params(rng, dtype=np.float32)
    kw = dict(lr=0.01, weight_decay=0.1)
    kw.update({SGD: dict(momentum=0.9), RMSprop: dict(centered=True, momentum=0.5)}.get(cls, {}))
    grads = [{k: v.astype(np.float32) for k, v in g.items()}
             for g in _grad_sequence(rng, module, 5)]
    tparams = [torch.from_numpy(p.copy()).requires_grad_(True) for p in module.params.values()]
    topt = getattr(torch.optim, cls.__name__)(tparams, **kw)
    opt = cls(module, **kw)
    for g in grads:
        for tp, v in zip(tparams, g.values()):
            tp.grad = torch.from_numpy(v.copy())
        topt.step()
    _run(opt, module, grads)
    for p, tp in zip(module.params.values(), tparams):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=TOL["torch_f32_rtol"],
                                   atol=TOL["torch_f32_atol"])


def test_sgd_explicit_formula(rng):
    module = Params(rng)
    p0 = {k: v.copy() for k, v in module.params.items()}
    grads = _grad_sequence(rng, module, 2)
    _run(SGD(module, lr=0.5, momentum=0.9, weight_decay=0.1), module, grads)
    for k in p0:
        g1 = grads[0][k] + 0.1 * p0[k]
        p1 = p0[k] - 0.5 * g1                      # first step: buf = g
        g2 = grads[1][k] + 0.1 * p1
        p2 = p1 - 0.5 * (0.9 * g1 + g2)
        assert_close_f64(module.params[k], p2, atol=1e-14, name=k)


def test_adam_explicit_formula(rng):
    module = Params(rng, shapes=(("w", (5,)),))
    p = module.params["w"].copy()
    grads = _grad_sequence(rng, module, 3)
    _run(Adam(module, lr=0.1), module, grads)
    m = v = 0
    for t, g in enumerate(grads, 1):
        m = 0.9 * m + 0.1 * g["w"]
        v = 0.999 * v + 0.001 * g["w"] ** 2
        p = p - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    assert_close_f64(module.params["w"], p, atol=1e-13)


@pytest.mark.parametrize("case", CASES[1::2], ids=[_case_id(c) for c in CASES[1::2]])
def test_state_dict_round_trip_continues_bit_identically(rng, case):
    cls, kw = case
    a = Params(rng)
    b = Params(rng)
    grads = _grad_sequence(rng, a, 6)
    opt_a = cls(a, **kw)
    _run(opt_a, a, grads[:3])
    sd = opt_a.state_dict()
    b.load_state_dict(a.state_dict())
    # through an npz-like representation: scalars as 0-d arrays, tuples as arrays
    opt_b = cls(b, lr=123.0) if cls is SGD else cls(b)
    opt_b.load_state_dict({k: np.asarray(v) for k, v in sd.items()})
    assert opt_b.step_count == 3 and opt_b.lr == opt_a.lr
    # the state dict holds copies: changing it changes neither optimizer
    for key, v in sd.items():
        if key.startswith("state."):
            v += 1.0
    _run(opt_a, a, grads[3:])
    _run(opt_b, b, grads[3:])
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_state_dict_layout_and_errors(rng):
    module = Params(rng)
    opt = Adam(module, lr=0.01, amsgrad=True)
    sd = opt.state_dict()
    assert sd["type"] == "Adam" and sd["step"] == 0 and sd["betas"] == (0.9, 0.999)
    assert sorted(k for k in sd if k.startswith("state.")) == sorted(
        f"state.{p}.{b}" for p in ("weight", "bias")
        for b in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))
    with pytest.raises(ValueError, match="state_dict is for optimizer Adam, not SGD"):
        SGD(module, lr=0.1).load_state_dict(sd)
    bad = dict(sd)
    del bad["state.bias.exp_avg"]
    with pytest.raises(KeyError, match=r"missing keys \['state.bias.exp_avg'\]"):
        Adam(module).load_state_dict(bad)
    bad = dict(sd, **{"state.bias.exp_avg": np.zeros(3)})
    with pytest.raises(ValueError, match=r"state_dict\['state.bias.exp_avg'\] must be a real "
                                         r"array of shape \(4,\)"):
        Adam(module).load_state_dict(bad)
    with pytest.raises(ValueError, match=r"state_dict\['step'\] must be a int"):
        Adam(module).load_state_dict(dict(sd, step="x"))
    # flags restored from the state: amsgrad buffers come with it
    plain = Adam(module)
    plain.load_state_dict(sd)
    assert plain.amsgrad and "max_exp_avg_sq" in plain.state["weight"]


def test_step_allocates_no_full_size_arrays(rng):
    big = Params(rng, shapes=(("w", (200, 250)),))  # 400 kB per array
    nbytes = big.params["w"].nbytes
    for opt in [SGD(big, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True),
                SGD(big, lr=0.1, momentum=0.9, dampening=0.5),
                Adam(big, weight_decay=0.1, amsgrad=True), AdamW(big),
                Adagrad(big, weight_decay=0.1),
                RMSprop(big, centered=True, momentum=0.9, weight_decay=0.1)]:
        big.grads["w"][...] = 1.0
        opt.step()  # first step outside the measurement
        tracemalloc.start()
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < nbytes // 4, f"{opt!r} allocated {peak} bytes in step()"


def test_lr_is_mutable_and_grads_are_read_each_step(rng):
    module = Params(rng, shapes=(("w", (3,)),))
    opt = SGD(module, lr=1.0)
    p0 = module.params["w"].copy()
    module.grads["w"][...] = 1.0
    opt.step()
    opt.lr = 0.25
    module.grads["w"][...] = 2.0  # updated in place, as backward does
    opt.step()
    np.testing.assert_array_equal(module.params["w"], p0 - 1.0 - 0.5)
    opt.zero_grad()
    assert np.all(module.grads["w"] == 0)


def test_optimizer_bad_arguments(rng):
    module = Params(rng)
    with pytest.raises(TypeError, match=r"SGD expects a Module \(an object with .params"):
        SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="Invalid learning rate: -1.0"):
        Adam(module, lr=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum"):
        SGD(module, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1: 1.0"):
        Adam(module, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="Invalid weight_decay value: -0.1"):
        RMSprop(module, weight_decay=-0.1)
    with pytest.raises(ValueError, match="Invalid lr_decay value"):
        Adagrad(module, lr_decay=-1)
    opt = SGD(module, lr=0.1)
    module.params["extra"] = np.zeros(2)
    module.grads["extra"] = np.zeros(2)
    with pytest.raises(RuntimeError, match="the module's parameters changed"):
        opt.step()


# ---------------------------------------------------------------------------
# Schedulers
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["step", "cosine"])
def test_schedulers_match_closed_form_and_torch(rng, kind):
    module = Params(rng)
    opt = SGD(module, lr=0.5)
    if kind == "step":
        sched = StepLR(opt, step_size=3, gamma=0.5)
        formula = [0.5 * 0.5 ** (e // 3) for e in range(13)]
    else:
        sched = CosineAnnealingLR(opt, T_max=5, eta_min=0.01)
        formula = [0.01 + 0.49 * (1 + math.cos(math.pi * e / 5)) / 2 for e in range(13)]
    ours = [opt.lr]
    for _ in range(12):
        opt.step()
        sched.step()
        ours.append(sched.get_last_lr())
    np.testing.assert_allclose(ours, formula, rtol=1e-14)
    torch = pytest.importorskip("torch")
    tp = torch.zeros(2, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.5)
    tsched = (torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5) if kind == "step"
              else torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=5, eta_min=0.01))
    ref = [tsched.get_last_lr()[0]]
    for _ in range(12):
        topt.step()
        tsched.step()
        ref.append(tsched.get_last_lr()[0])
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-15)


def test_scheduler_state_dict_and_errors(rng):
    opt = Adam(Params(rng), lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=4)
    for _ in range(3):
        sched.step()
    sd = sched.state_dict()
    opt2 = Adam(Params(rng), lr=0.1)
    sched2 = CosineAnnealingLR(opt2, T_max=10)
    sched2.load_state_dict(sd)
    assert sched2.T_max == 4 and opt2.lr == opt.lr
    sched.step()
    sched2.step()
    assert opt2.lr == opt.lr
    with pytest.raises(ValueError, match="step_size must be a positive int, got 0"):
        StepLR(opt, step_size=0)
    with pytest.raises(ValueError, match="T_max must be a positive int"):
        CosineAnnealingLR(opt, T_max=1.5)
