"""The timed row groups: core, nodx, bidir, step and charlm (memory is in ``memory.py``)."""
from __future__ import annotations

import numpy as np

import rnncore
from rnncore import functional as F
from rnncore import reference as R

from .contestants import (BIDIR_LAYERS, BIDIR_SHAPE, CORE_SHAPES, GATES, NO_FUNCTIONAL, NO_TORCH,
                          RC_CELLS, SEED, STEP_SIZES, TORCH_NAMES, VARIANTS, functional_fns,
                          gemm_flops, make_inputs, out_size, rc_model_fns, seeded_rng,
                          torch_fns)
from .table import Table, fmt_ms, fmt_num, gflops_of, speed_ratio
from .timing import measure_interleaved, timeit_us, try_measure


def run_core(opts, torch, out, records, best_gf, peak=None):
    out.write("\n== core: one layer, one direction, float32, batch_first; ms = median "
              "(first = first call) ==\n")
    out.write("   ratios: torch/rc = torch / rnncore model, ref/rc = reference / rnncore "
              f"functional (>1: rnncore faster); eff = model GF/s / best GEMM (SciPy or torch.mm) "
              f"({best_gf:.1f} GF/s)\n")
    out.write(("   max = FMA peak" + (f" ({peak:.1f} GF/s)" if peak else " (not measured)") +
               " / torch GF/s: the highest torch/rc any implementation of the counted flops "
               "could reach on this machine\n"))
    out.write("   mean t/rc = torch / rnncore of the mean times (total time over calls: what a "
              "loop of calls takes; differs from torch/rc when some calls stall, e.g. under "
              "load)\n")
    t = Table(out, [("cell", 7, "<"), ("T", 3, ">"), ("N", 3, ">"), ("D", 4, ">"), ("H", 4, ">"),
                    ("pass", 4, "<"), ("model", 8, ">"), ("func", 8, ">"), ("ref", 8, ">"),
                    ("torch", 8, ">"), ("GF/s:rc", 7, ">"), ("torch", 6, ">"),
                    ("torch/rc", 8, ">"), ("max", 6, ">"), ("mean t/rc", 9, ">"),
                    ("ref/rc", 6, ">"), ("eff%", 5, ">"),
                    ("first:rc", 8, ">"), ("torch", 8, ">")])
    t.header()
    largest = CORE_SHAPES[-1]
    cells = [v for c in opts.cells for v in (c, *VARIANTS.get(c, ()))]
    for cell in cells:
        for (T, N, D, H) in CORE_SHAPES:
            x, dout = make_inputs(T, N, D, out_size(cell, H))
            impls = {"rnncore-model": rc_model_fns(cell, D, H, x, dout)}
            # --quick: on the largest shape, neither the slow reference nor the functional
            # API (the same kernels as the model's) -- that keeps --quick near 4 minutes
            if not (opts.quick and (T, N, D, H) == largest) and cell not in NO_FUNCTIONAL:
                impls["rnncore-func"] = functional_fns(F, cell, D, H, x, dout)
                impls["reference"] = functional_fns(R, cell, D, H, x, dout)
            if torch is not None and cell not in NO_TORCH:
                impls["torch"] = torch_fns(torch, cell, D, H, x, dout)
            for pi, pas in enumerate(("fwd", "fb")):
                fl = gemm_flops(cell, T, N, D, H, pas)
                res = {}
                # rnncore's model and PyTorch side by side (interleaved repeats); the
                # functional API and the reference after them, as before
                pair = {k: impls[k][pi] for k in ("rnncore-model", "torch") if k in impls}
                timed = measure_interleaved(pair, opts.budget)
                for name, makers in impls.items():
                    r = timed[name] if name in timed else try_measure(makers[pi], opts.budget)
                    r.update(group="core", cell=cell, T=T, N=N, D=D, H=H, layers=1, dirs=1,
                             dtype="float32", pass_=pas, impl=name, gflop=fl / 1e9,
                             gflops=gflops_of(r, fl))
                    res[name] = r
                    records.append(r)
                model, func = res.get("rnncore-model"), res.get("rnncore-func")
                ref, tor = res.get("reference"), res.get("torch")
                gm = gflops_of(model, fl)
                gt = gflops_of(tor, fl)
                ceiling = peak / gt if peak and gt else None
                t.line([cell, T, N, D, H, pas,
                        fmt_ms(model), fmt_ms(func), fmt_ms(ref), fmt_ms(tor),
                        fmt_num(gm), fmt_num(gt),
                        fmt_num(speed_ratio(tor, model), 2), fmt_num(ceiling, 2),
                        fmt_num(speed_ratio(tor, model, "mean_ms"), 2),
                        fmt_num(speed_ratio(ref, func), 2),
                        fmt_num(100 * gm / best_gf if gm and best_gf else None, 0),
                        fmt_num(model.get("first_ms"), 2) if model else "-",
                        fmt_num(tor.get("first_ms"), 2) if tor else "-"])
                for r in res.values():
                    r["torch_over_rc"] = speed_ratio(tor, model)
                    r["torch_over_rc_mean"] = speed_ratio(tor, model, "mean_ms")
                    r["ref_over_rc"] = speed_ratio(ref, func)
                    r["eff_vs_best_sgemm"] = (gm / best_gf) if gm and best_gf else None
                    r["fraction_of_fma_peak"] = (gm / peak) if gm and peak else None
                    r["torch_over_rc_ceiling"] = ceiling


def run_nodx(opts, torch, out, records, peak=None):
    """fb without the input gradient: rnncore's ``backward(dout, input_grad=False)``
    beside its backward with dx and PyTorch's with ``x.requires_grad=False``."""
    out.write("\n== nodx: forward+backward without the input gradient (data needs none), "
              "one layer, float32, batch_first; ms = median ==\n")
    out.write("   rc-nodx: backward(dout, input_grad=False); rc-dx: backward(dout) as in "
              "core; torch-nodx: x.requires_grad=False; GF/s on the flops without dx's "
              "2*T*N*G*H*D; ratios > 1: rc-nodx faster\n")
    tab = Table(out, [("cell", 4, "<"), ("T", 3, ">"), ("N", 3, ">"), ("D", 4, ">"),
                      ("H", 4, ">"), ("rc-nodx", 8, ">"), ("rc-dx", 8, ">"),
                      ("torch-nodx", 10, ">"), ("GF/s:rc", 7, ">"), ("torch", 6, ">"),
                      ("rc-dx/nodx", 10, ">"), ("torch/rc", 8, ">"), ("max", 6, ">")])
    tab.header()
    for cell in opts.cells:
        for (T, N, D, H) in CORE_SHAPES[1:]:       # the training shapes
            x, dout = make_inputs(T, N, D, out_size(cell, H))
            impls = {"rnncore-nodx": rc_model_fns(cell, D, H, x, dout, input_grad=False)[1],
                     "rnncore-dx": rc_model_fns(cell, D, H, x, dout)[1]}
            if torch is not None and cell not in NO_TORCH:
                impls["torch-nodx"] = torch_fns(torch, cell, D, H, x, dout,
                                                input_grad=False)[1]
            timed = measure_interleaved(impls, opts.budget)
            fl = gemm_flops(cell, T, N, D, H, "fb") - 2 * T * N * GATES[cell] * H * D
            for name, r in timed.items():
                r.update(group="nodx", cell=cell, T=T, N=N, D=D, H=H, layers=1, dirs=1,
                         dtype="float32", pass_="fb", impl=name, gflop=fl / 1e9,
                         gflops=gflops_of(r, fl))
                records.append(r)
            rc, dx, tor = (timed.get(k) for k in ("rnncore-nodx", "rnncore-dx",
                                                   "torch-nodx"))
            gt = gflops_of(tor, fl)
            ceiling = peak / gt if peak and gt else None
            for r in timed.values():
                r["torch_over_rc"] = speed_ratio(tor, rc)
                r["torch_over_rc_ceiling"] = ceiling
            tab.line([cell, T, N, D, H, fmt_ms(rc), fmt_ms(dx), fmt_ms(tor),
                      fmt_num(gflops_of(rc, fl)), fmt_num(gt),
                      fmt_num(speed_ratio(dx, rc), 2), fmt_num(speed_ratio(tor, rc), 2),
                      fmt_num(ceiling, 2)])


def _lengths(T, N):
    rng = np.random.default_rng(SEED + 1)
    return rng.integers(T // 2, T + 1, size=N).astype(np.int64)


def run_bidir(opts, torch, out, records, peak=None):
    T, N, D, H = BIDIR_SHAPE
    L = BIDIR_LAYERS
    lens = _lengths(T, N)
    out.write(f"\n== bidir: {L}-layer bidirectional, (T, N, D, H) = {BIDIR_SHAPE}, float32; "
              f"lengths ~ U[{T // 2}, {T}] (sum {int(lens.sum())} of {T * N}) ==\n")
    out.write("   ms = median; GF/s on valid steps for lengths/packed, on T*N for padded; "
              "ratios >1: the rnncore-lengths run is faster; max = FMA peak / torch-pad GF/s "
              "(the highest t-pad/rc-pad any implementation could reach here)\n")
    tab = Table(out, [("cell", 4, "<"), ("pass", 4, "<"), ("rc-pad", 8, ">"), ("rc-len", 8, ">"),
                      ("torch-pad", 9, ">"), ("torch-pack", 10, ">"), ("GF/s:rc-len", 11, ">"),
                      ("rc-pad/len", 10, ">"), ("t-pad/rc-len", 12, ">"),
                      ("t-pack/rc-len", 13, ">"), ("t-pad/rc-pad", 12, ">"), ("max", 6, ">")])
    tab.header()
    for cell in opts.cells:
        x, dout = make_inputs(T, N, D, 2 * H)
        # zero padding, as a padded batch has
        mask = (np.arange(T)[None, :] < lens[:, None])[:, :, None]
        x = x * mask
        impls = {"rnncore-padded": rc_model_fns(cell, D, H, x, dout, L, 2),
                 "rnncore-lengths": rc_model_fns(cell, D, H, x, dout, L, 2, lengths=lens)}
        if torch is not None:
            impls["torch-padded"] = torch_fns(torch, cell, D, H, x, dout, L, 2)
            impls["torch-packed"] = torch_fns(torch, cell, D, H, x, dout, L, 2, lengths=lens)
        for pi, pas in enumerate(("fwd", "fb")):
            res = {}
            # all four side by side: interleaved repeats (timing.measure_interleaved)
            timed = measure_interleaved({k: m[pi] for k, m in impls.items()}, opts.budget)
            for name, makers in impls.items():
                valid = int(lens.sum()) if name in ("rnncore-lengths", "torch-packed") else None
                fl = gemm_flops(cell, T, N, D, H, pas, L, 2, rows_steps=valid)
                r = timed[name]
                r.update(group="bidir", cell=cell, T=T, N=N, D=D, H=H, layers=L, dirs=2,
                         dtype="float32", pass_=pas, impl=name, gflop=fl / 1e9,
                         gflops=gflops_of(r, fl), lengths_sum=int(lens.sum()))
                res[name] = r
                records.append(r)
            pad, ln = res.get("rnncore-padded"), res.get("rnncore-lengths")
            tp, tk = res.get("torch-padded"), res.get("torch-packed")
            gtp = tp.get("gflops") if tp else None
            ceiling = peak / gtp if peak and gtp else None
            for r in res.values():
                r["torch_pad_over_rc_pad_ceiling"] = ceiling
            tab.line([cell, pas, fmt_ms(pad), fmt_ms(ln), fmt_ms(tp), fmt_ms(tk),
                      fmt_num(ln.get("gflops") if ln else None),
                      fmt_num(speed_ratio(pad, ln), 2), fmt_num(speed_ratio(tp, ln), 2),
                      fmt_num(speed_ratio(tk, ln), 2), fmt_num(speed_ratio(tp, pad), 2),
                      fmt_num(ceiling, 2)])


def run_step(opts, torch, out, records):
    b = opts.budget
    out.write(f"\n== step: single-step latency, N = 1, D = H, float32, inference; "
              f"us per step (timeit number={b.step_number}, best / median of "
              f"{b.step_repeat}) ==\n")
    tab = Table(out, [("cell", 4, "<"), ("H", 4, ">"), ("rc-cell", 8, ">"), ("(med)", 8, ">"),
                      ("rc-func", 8, ">"), ("torch", 8, ">"), ("(med)", 8, ">"),
                      ("torch/rc", 8, ">"), ("GF/s:rc", 7, ">")])
    tab.header()
    for cell in opts.cells:
        for H in STEP_SIZES:
            D, N = H, 1
            rng = seeded_rng()
            x = rng.standard_normal((N, D), dtype=np.float32)
            h = rng.standard_normal((N, H), dtype=np.float32) * 0.1
            c = rng.standard_normal((N, H), dtype=np.float32) * 0.1
            res = {}
            try:
                rc = getattr(rnncore, RC_CELLS[cell])(D, H, seed=SEED)
                hx = (h, c) if cell == "lstm" else h
                res["rnncore-cell"] = timeit_us(lambda: rc.forward(x, hx, train=False), b)
                p = rc.params
                Wx = np.ascontiguousarray(p["weight_ih"].T)
                Wh = np.ascontiguousarray(p["weight_hh"].T)
                if cell == "rnn":
                    bb = p["bias_ih"] + p["bias_hh"]
                    f = lambda: F.rnn_step_forward(x, h, Wx, Wh, bb)  # noqa: E731
                elif cell == "gru":
                    bi, bh = p["bias_ih"], p["bias_hh"]
                    f = lambda: F.gru_step_forward(x, h, Wx, Wh, bi, bh)  # noqa: E731
                else:
                    bb = p["bias_ih"] + p["bias_hh"]
                    f = lambda: F.lstm_step_forward(x, h, c, Wx, Wh, bb)  # noqa: E731
                res["rnncore-func"] = timeit_us(f, b)
            except Exception as e:
                res["rnncore-cell"] = {"error": f"{type(e).__name__}: {e}"}
            if torch is not None:
                tc = getattr(torch.nn, TORCH_NAMES[cell] + "Cell")(D, H)
                tcell_state = rc.state_dict() if "rnncore-cell" in res and \
                    "error" not in res["rnncore-cell"] else None
                if tcell_state is not None:
                    tc.load_state_dict({k: torch.from_numpy(v) for k, v in tcell_state.items()})
                xt, ht, ct = (torch.from_numpy(a) for a in (x, h, c))
                thx = (ht, ct) if cell == "lstm" else ht

                def tf():
                    with torch.no_grad():
                        return tc(xt, thx)
                res["torch"] = timeit_us(tf, b)
            fl = 2 * N * GATES[cell] * H * (D + H)
            for name, r in res.items():
                r.update(group="step", cell=cell, N=N, D=D, H=H, dtype="float32", impl=name,
                         gflop=fl / 1e9,
                         gflops=fl / (r["best_us"] * 1e-6) / 1e9 if "best_us" in r else None)
                records.append(r)
            rcr, tr, fr = res.get("rnncore-cell", {}), res.get("torch", {}), \
                res.get("rnncore-func", {})

            def us(r, k="best_us"):
                return "ERR" if "error" in r else fmt_num(r.get(k), 1)
            ratio = (tr["best_us"] / rcr["best_us"]) if "best_us" in tr and "best_us" in rcr \
                else None
            tab.line([cell, H, us(rcr), us(rcr, "median_us"), us(fr), us(tr),
                      us(tr, "median_us"), fmt_num(ratio, 2), fmt_num(rcr.get("gflops"), 2)])


def _charlm_text(n_chars):
    from rnncore import charlm
    try:
        return charlm.stdlib_corpus(max_chars=n_chars)
    except Exception:
        rng = seeded_rng()
        alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz ,.\n()=:_"))
        text = "".join(alphabet[rng.integers(0, len(alphabet), n_chars)])
        return charlm.Corpus(text=text, kind="files", sources=[])


def run_charlm(opts, torch, out, records):
    out.write("\n== charlm: one training step (Trainer.train_step: embedding -> RNN -> linear -> "
              "cross-entropy -> backward -> clip -> Adam), float32 ==\n")
    try:
        from rnncore import charlm
    except ImportError as e:
        out.write(f"   skipped: rnncore.charlm is not available ({e})\n")
        records.append({"group": "charlm", "skipped": str(e)})
        return
    try:
        cfg = charlm.TrainConfig()
        corpus = _charlm_text(max(200_000, 4 * cfg.batch_size * cfg.seq_len))
        trainer = charlm.Trainer(corpus, cfg)
    except Exception as e:
        out.write(f"   skipped: could not build a charlm.Trainer ({type(e).__name__}: {e})\n")
        records.append({"group": "charlm", "skipped": f"{type(e).__name__}: {e}"})
        return
    N, T, V = cfg.batch_size, cfg.seq_len, len(trainer.vocab)
    E, H, L, cell = cfg.embed, cfg.hidden, cfg.layers, cfg.cell
    desc = (f"cell={cell} L={L} E={E} H={H} V={V} N={N} T={T} optimizer={cfg.optimizer} "
            f"clip={cfg.clip}")
    out.write(f"   {desc}\n")
    fl = gemm_flops(cell, T, N, E, H, "fb", L) + 6 * T * N * H * V  # + the read-out layer
    makers = {"rnncore": lambda: trainer.train_step}
    if torch is not None:
        def make_torch():
            nn = torch.nn
            torch.manual_seed(SEED)

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.embedding = nn.Embedding(V, E)
                    self.rnn = getattr(nn, TORCH_NAMES[cell])(E, H, L, batch_first=True)
                    self.head = nn.Linear(H, V)

                def forward(self, idx):
                    return self.head(self.rnn(self.embedding(idx))[0])
            net = Net()
            opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
            lossf = nn.CrossEntropyLoss()
            streams = trainer.streams
            state = {"i": 0}

            def step():
                i = state["i"] % streams.num_batches
                state["i"] += 1
                x, y = streams.batch(i)
                xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
                yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
                opt.zero_grad()
                loss = lossf(net(xt).reshape(-1, V), yt.reshape(-1))
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
                opt.step()
                return loss
            return step
        makers["torch"] = make_torch
    # the two take turns (as the core rows): a slow spell of a shared VM falls on both
    res = measure_interleaved(makers, opts.budget)
    tab = Table(out, [("impl", 8, "<"), ("ms/step", 8, ">"), ("first", 8, ">"),
                      ("kchar/s", 8, ">"), ("GF/s", 6, ">"), ("torch/rc", 8, ">")])
    tab.header()
    for name, r in res.items():
        r.update(group="charlm", impl=name, config=desc, gflop=fl / 1e9, gflops=gflops_of(r, fl),
                 kchars_per_s=(N * T / (r["median_ms"] * 1e-3) / 1e3) if "median_ms" in r
                 else None)
        records.append(r)
        vs_torch = speed_ratio(res.get("torch"), res["rnncore"]) if name == "rnncore" else None
        tab.line([name, fmt_ms(r), fmt_num(r.get("first_ms"), 1),
                  fmt_num(r.get("kchars_per_s"), 1), fmt_num(r.get("gflops")),
                  fmt_num(vs_torch, 2) if name == "rnncore" else ""])
