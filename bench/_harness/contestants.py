"""What is timed: the constants of the rows, their inputs, and each implementation's calls.

``rc_model_fns`` / ``functional_fns`` / ``torch_fns`` return ``(make_fwd, make_fb)``:
each ``make_*`` builds a fresh model and returns the call to time, so no set-up
is inside a timed call. Also the GEMM-flop and minimum-memory counts the tables
divide by (see ``bench/compare.py``'s docstring).
"""
from __future__ import annotations

import numpy as np

import rnncore

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
#: saved activations per step and row, in units of H (see the module docstring)
ACTIVATIONS = {"rnn": 1, "gru": 5, "lstm": 6}
N_STATES = {"rnn": 1, "gru": 1, "lstm": 2}
TORCH_NAMES = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
RC_MODELS = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}
RC_CELLS = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}

#: the core group's variants of a cell, timed after it: cell -> {name: model keyword
#: arguments as a function of H}; torch has no reset-before GRU (no torch column), the
#: functional API no projection (no func/ref columns)
VARIANTS = {"gru": {"gru-rb": lambda H: {"reset_after": False}},
            "lstm": {"lstm-proj": lambda H: {"proj_size": H // 2}}}
NO_TORCH = ("gru-rb",)
NO_FUNCTIONAL = ("lstm-proj",)


def base_cell(cell):
    """The cell of a variant name ('gru-rb' -> 'gru'), or the name itself."""
    return cell.split("-")[0]


def variant_kw(cell, H):
    """The model keyword arguments of a variant name at hidden size H ({}: a plain cell)."""
    make = VARIANTS.get(base_cell(cell), {}).get(cell)
    return make(H) if make else {}


def out_size(cell, H):
    """The width of a model's output: H, or the projection's."""
    return variant_kw(cell, H).get("proj_size") or H


#: (T, N, D, H)
CORE_SHAPES = ((50, 1, 32, 64), (100, 16, 64, 128), (100, 32, 256, 256), (50, 64, 512, 1024))
BIDIR_SHAPE = (100, 32, 256, 256)
BIDIR_LAYERS = 2
STEP_SIZES = (128, 512)
GROUPS = ("core", "nodx", "bidir", "step", "charlm", "options", "memory")
SEED = 0


def gemm_flops(cell, T, N, D, H, passes="fb", layers=1, dirs=1, rows_steps=None):
    """GEMM flops of a forward ('fwd') or forward+backward ('fb') pass.

    ``rows_steps`` replaces ``T * N`` (e.g. ``sum(lengths)``).
    """
    G, Ho = GATES[base_cell(cell)], out_size(cell, H)
    TN = T * N if rows_steps is None else rows_steps
    per = 2 if passes == "fwd" else 6
    total = 0
    for k in range(layers):
        Dk = D if k == 0 else dirs * Ho
        total += dirs * per * TN * (G * H * (Dk + Ho) + (H * Ho if Ho != H else 0))
    return total


def min_bytes(cell, T, N, D, H, layers=1, dirs=1, itemsize=4):
    """The reference memory figure of one fb (module docstring, 'Memory')."""
    A, S = ACTIVATIONS[cell], N_STATES[cell]
    elems = layers * dirs * T * N * A * H  # saved activations
    elems += T * N * D  # dx
    elems += 2 * S * layers * dirs * N * H  # h_n [, c_n] and dh0 [, dc0]
    return elems * itemsize


def seeded_rng():
    return np.random.default_rng(SEED)


def make_inputs(T, N, D, H_out):
    rng = seeded_rng()
    x = rng.standard_normal((N, T, D), dtype=np.float32)
    dout = rng.standard_normal((N, T, H_out), dtype=np.float32)
    return x, dout


def rc_model(cell, D, H, layers=1, dirs=1, dtype=np.float32):
    cls = getattr(rnncore, RC_MODELS[base_cell(cell)])
    return cls(D, H, num_layers=layers, batch_first=True, bidirectional=dirs == 2, dtype=dtype,
               seed=SEED, **variant_kw(cell, H))


def rc_model_fns(cell, D, H, x, dout, layers=1, dirs=1, lengths=None, input_grad=True):
    """(make_fwd, make_fb) for the rnncore model API (``input_grad=False``: backward
    computes no dx)."""
    def make_fwd():
        # forward-only inference: nothing saved for backward, no dropout
        m = rc_model(cell, D, H, layers, dirs)
        if hasattr(m, "eval"):
            m.eval()
            return lambda: m(x, lengths=lengths)
        return lambda: m(x, lengths=lengths, train=False)

    # the keyword only when False: the rows with dx also time rnncore builds without it
    kw = {} if input_grad else {"input_grad": False}

    def make_fb():
        m = rc_model(cell, D, H, layers, dirs)

        def fb():
            m(x, lengths=lengths)
            return m.backward(dout, **kw)
        return fb
    return make_fwd, make_fb


def _functional_weights(cell, D, H):
    """C-ordered (D, GH), (H, GH) weights and biases as the functional API takes them."""
    m = rc_model(cell, D, H)
    p = m.params
    Wx = np.ascontiguousarray(p["weight_ih_l0"].T)
    Wh = np.ascontiguousarray(p["weight_hh_l0"].T)
    bih, bhh = p["bias_ih_l0"], p["bias_hh_l0"]
    if base_cell(cell) == "gru":
        return Wx, Wh, (bih.copy(), bhh.copy())
    return Wx, Wh, ((bih + bhh).astype(np.float32),)


def functional_fns(mod, cell, D, H, x, dout):
    """(make_fwd, make_fb) for rnncore.functional or rnncore.reference (``mod``)."""
    N = x.shape[0]
    h0 = np.zeros((N, H), np.float32)
    Wx, Wh, bs = _functional_weights(cell, D, H)
    fwd_f = getattr(mod, f"{base_cell(cell)}_forward")
    bwd_f = getattr(mod, f"{base_cell(cell)}_backward")
    kw = variant_kw(cell, H)

    def fwd():
        return fwd_f(x, h0, Wx, Wh, *bs, **kw)

    def fb():
        res = fwd_f(x, h0, Wx, Wh, *bs, **kw)
        return bwd_f(dout, res[-1])
    return (lambda: fwd), (lambda: fb)


def torch_model(torch, cell, D, H, layers=1, dirs=1):
    cls = getattr(torch.nn, TORCH_NAMES[base_cell(cell)])
    m = cls(D, H, num_layers=layers, batch_first=True, bidirectional=dirs == 2,
            **variant_kw(cell, H))
    rc = rc_model(cell, D, H, layers, dirs)  # the same weights as rnncore's
    m.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in rc.params.items()})
    return m


def torch_fns(torch, cell, D, H, x, dout, layers=1, dirs=1, lengths=None, input_grad=True):
    """(make_fwd, make_fb) for torch.nn.RNN/GRU/LSTM; packed when ``lengths``;
    ``input_grad=False``: x does not require grad."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T = x.shape[1]
    xt = torch.from_numpy(x).requires_grad_(input_grad)
    dt = torch.from_numpy(dout)
    lt = None if lengths is None else torch.as_tensor(lengths, dtype=torch.int64)

    def run(m):
        if lt is None:
            return m(xt)[0]
        p = pack_padded_sequence(xt, lt, batch_first=True, enforce_sorted=False)
        out, _ = m(p)
        return pad_packed_sequence(out, batch_first=True, total_length=T)[0]

    def make_fwd():
        # forward-only inference: no autograd graph (torch.inference_mode)
        m = torch_model(torch, cell, D, H, layers, dirs)

        def fwd():
            with torch.inference_mode():
                return run(m)
        return fwd

    def make_fb():
        m = torch_model(torch, cell, D, H, layers, dirs)

        def fb():
            xt.grad = None  # a fresh dx each call, as rnncore returns one
            run(m).backward(dt)
        return fb
    return make_fwd, make_fb


def import_torch(threads):
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    torch.set_num_threads(threads)
    return torch
