"""The ``options`` row group: what each regularisation option costs, in rnncore and in PyTorch.

rnncore's ``LSTM``/``GRU`` plain and with ``weight_drop=0.5`` (DropConnect on
the hidden-to-hidden weights, Wan et al. 2013; AWD-LSTM, Merity et al. 2018),
``variational_dropout=0.3`` (one mask per sequence, Gal & Ghahramani 2016) and
``layer_norm=True`` (Ba et al. 2016), each as a cost in % over the plain model;
and the same models as a PyTorch user writes them:

* plain: ``torch.nn.LSTM/GRU``;
* weight drop: awd-lstm-lm's ``WeightDrop`` -- a raw ``weight_hh_l0`` parameter,
  ``F.dropout`` of it at every training forward, then the module's fused
  (oneDNN/ATen) path with the masked weight through ``torch.func.functional_call``;
* variational dropout: awd-lstm-lm's ``LockedDropout`` -- one Bernoulli mask per
  sequence, (N, 1, F), broadcast over time, on the layer's input and output
  (the fused path cannot mask the recurrent state);
* layer norm: a Python loop over the steps of an LSTM/GRU cell with
  ``F.layer_norm`` on each gate block of ``x W_ih^T`` (done for all steps before
  the loop) and of ``h W_hh^T`` (and on ``c`` for the LSTM's output), gains and
  biases per gate block.

``fwd`` is inference (rnncore ``eval()``, torch ``inference_mode`` and
``eval()``: no dropout, so the dropout options should cost nothing there);
``fb`` a training forward and backward. An option the installed rnncore lacks
is reported as "n/a (option missing)".
"""
from __future__ import annotations

import inspect

import rnncore

from .contestants import RC_MODELS, SEED, TORCH_NAMES, make_inputs, torch_fns
from .table import Table, fmt_ms, fmt_num, speed_ratio
from .timing import try_measure

OPTION_SHAPES = ((100, 32, 256, 256), (50, 64, 512, 1024))
OPTION_CELLS = ("gru", "lstm")
#: option name -> rnncore model keyword arguments
OPTIONS = {"plain": {}, "weight_drop": {"weight_drop": 0.5},
           "variational_dropout": {"variational_dropout": 0.3},
           "layer_norm": {"layer_norm": True}}
MISSING = "n/a (option missing)"


def missing_keywords(cell, kw):
    """The keywords of ``kw`` the installed rnncore's model of ``cell`` does not take."""
    params = inspect.signature(getattr(rnncore, RC_MODELS[cell])).parameters
    return [k for k in kw if k not in params]


def rc_option_fns(cell, D, H, x, dout, kw):
    """(make_fwd, make_fb) of an rnncore model with the option keywords ``kw``."""
    def build():
        return getattr(rnncore, RC_MODELS[cell])(D, H, batch_first=True, seed=SEED, **kw)

    def make_fwd():
        m = build()
        m.eval()
        return lambda: m(x)

    def make_fb():
        m = build()
        m.train()

        def fb():
            m(x)
            return m.backward(dout)
        return fb
    return make_fwd, make_fb


def _torch_option_module(torch, cell, D, H, option):
    """A torch module ``(N, T, D) -> (N, T, H)`` of the option (see the module docstring)."""
    nn, F = torch.nn, torch.nn.functional
    rnn_cls = getattr(nn, TORCH_NAMES[cell])
    G = 4 if cell == "lstm" else 3

    class WeightDrop(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.rnn, self.p = rnn_cls(D, H, batch_first=True), p
            self.raw = nn.Parameter(self.rnn.weight_hh_l0.detach().clone())
            del self.rnn._parameters["weight_hh_l0"]  # awd-lstm-lm: the raw weight is trained
            self.rnn.register_buffer("weight_hh_l0", self.raw.detach().clone())

        def forward(self, x):
            w = F.dropout(self.raw, self.p, self.training)
            return torch.func.functional_call(self.rnn, {"weight_hh_l0": w}, (x,))[0]

    class LockedDropout(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.rnn, self.p = rnn_cls(D, H, batch_first=True), p

        def lock(self, x):
            if not self.training:
                return x
            mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p)
            return x * mask / (1 - self.p)

        def forward(self, x):
            return self.lock(self.rnn(self.lock(x))[0])

    class LayerNormRNN(nn.Module):
        def __init__(self):
            super().__init__()
            ref = rnn_cls(D, H)
            self.w_ih, self.w_hh = ref.weight_ih_l0, ref.weight_hh_l0
            self.b_ih, self.b_hh = ref.bias_ih_l0, ref.bias_hh_l0
            self.g_x, self.g_h = nn.Parameter(torch.ones(G, H)), nn.Parameter(torch.ones(G, H))
            self.g_c, self.b_c = nn.Parameter(torch.ones(H)), nn.Parameter(torch.zeros(H))

        def ln(self, a, gain):  # a (..., G H): each gate block normalised on its own
            s = a.shape
            return (F.layer_norm(a.view(*s[:-1], G, H), (H,)) * gain).view(s)

        def forward(self, x):
            N, T, _ = x.shape
            xp = self.ln(x @ self.w_ih.t(), self.g_x) + self.b_ih  # all steps, before the loop
            h = x.new_zeros(N, H)
            c = x.new_zeros(N, H)
            out = []
            for t in range(T):
                hp = self.ln(h @ self.w_hh.t(), self.g_h) + self.b_hh
                if cell == "lstm":
                    i, f, g, o = (xp[:, t] + hp).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (H,), self.g_c, self.b_c))
                else:
                    xr, xz, xn = xp[:, t].chunk(3, 1)
                    hr, hz, hn = hp.chunk(3, 1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    h = (1 - z) * torch.tanh(xn + r * hn) + z * h
                out.append(h)
            return torch.stack(out, 1)

    if option == "weight_drop":
        return WeightDrop(OPTIONS[option]["weight_drop"])
    if option == "variational_dropout":
        return LockedDropout(OPTIONS[option]["variational_dropout"])
    return LayerNormRNN()


def torch_option_fns(torch, cell, D, H, x, dout, option):
    """(make_fwd, make_fb) of the PyTorch equivalent of ``option``."""
    if option == "plain":
        return torch_fns(torch, cell, D, H, x, dout)
    xt = torch.from_numpy(x).requires_grad_(True)
    dt = torch.from_numpy(dout)

    def make_fwd():
        m = _torch_option_module(torch, cell, D, H, option).eval()

        def fwd():
            with torch.inference_mode():
                return m(xt)
        return fwd

    def make_fb():
        m = _torch_option_module(torch, cell, D, H, option).train()

        def fb():
            xt.grad = None
            m(xt).backward(dt)
        return fb
    return make_fwd, make_fb


def run_options(opts, torch, out, records):
    out.write("\n== options: regularisation options, one layer, float32, batch_first; "
              "ms = median ==\n")
    out.write("   rc +% / torch +% = cost over the same library's plain model; torch/rc = "
              "torch / rnncore with the same option (>1: rnncore faster); fwd = inference "
              "(no dropout)\n")
    tab = Table(out, [("cell", 4, "<"), ("T", 3, ">"), ("N", 3, ">"), ("D", 4, ">"),
                      ("H", 4, ">"), ("pass", 4, "<"), ("option", 19, "<"), ("rc", 8, ">"),
                      ("rc +%", 6, ">"), ("torch", 8, ">"), ("torch +%", 8, ">"),
                      ("torch/rc", 8, ">"), ("note", 16, "<")])
    tab.header()
    cells = [c for c in OPTION_CELLS if c in opts.cells]
    for cell in cells:
        for (T, N, D, H) in OPTION_SHAPES:
            x, dout = make_inputs(T, N, D, H)
            for pi, pas in enumerate(("fwd", "fb")):
                plain = {}
                for option, kw in OPTIONS.items():
                    res = {}
                    missing = missing_keywords(cell, kw)
                    if missing:
                        res["rnncore"] = {"na": MISSING, "missing": missing}
                    else:
                        res["rnncore"] = try_measure(
                            rc_option_fns(cell, D, H, x, dout, kw)[pi], opts.budget)
                    if torch is not None:
                        res["torch"] = try_measure(
                            torch_option_fns(torch, cell, D, H, x, dout, option)[pi],
                            opts.budget)
                    if option == "plain":
                        plain = res
                    rc, tor = res.get("rnncore"), res.get("torch")
                    cost = {k: (100 * (speed_ratio(r, plain.get(k)) - 1)
                                if option != "plain" and speed_ratio(r, plain.get(k))
                                else None) for k, r in res.items()}
                    ratio = speed_ratio(tor, rc)
                    for k, r in res.items():
                        r.update(group="options", cell=cell, T=T, N=N, D=D, H=H, layers=1,
                                 dirs=1, dtype="float32", pass_=pas, option=option,
                                 option_kwargs=kw, impl=k, cost_pct_over_plain=cost[k],
                                 torch_over_rc=ratio)
                        records.append(r)
                    na = "na" in rc  # the rc column and the note read "n/a (option missing)"
                    tab.line([cell, T, N, D, H, pas, option, "n/a" if na else fmt_ms(rc),
                              fmt_num(cost.get("rnncore"), 0), fmt_ms(tor),
                              fmt_num(cost.get("torch"), 0), fmt_num(ratio, 2),
                              MISSING[4:] if na else ""])
