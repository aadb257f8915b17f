"""rnncore.charlm: the character-level language model, its data, sampling and training.

Gradients against finite differences (float64, every cell, the loss included);
the chunked-state identity of truncated BPTT; checkpoints that round-trip and
resume bit-identically; seeded sampling; a corpus that is the same every time.
"""
import math
import os

import numpy as np
import pytest
from conftest import TOL

from rnncore import distributed as dist
from rnncore import io as rio
from rnncore.charlm import (CELLS, DEFAULT_MODULES, CharLM, Corpus, CorpusError,
                            NonFiniteLossError, Streams, TrainConfig, Trainer, Vocab, evaluate,
                            generate, plot_history, read_texts, shard_problem, stdlib_corpus)
from rnncore.losses import cross_entropy
from rnncore.module import Module
from rnncore.gradcheck import gradcheck

GC = dict(rtol=TOL["fd_rtol"], atol=TOL["fd_atol"])
TEXT = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 40


def _tiny(cell, dtype=np.float64, layers=2, V=6, seed=0):
    return CharLM(V, embed_dim=3, hidden_size=4, num_layers=layers, cell=cell, dtype=dtype,
                  seed=seed)


def _state(cell, rng, L=2, N=2, H=4):
    if cell == "lstm":
        return (rng.standard_normal((L, N, H)), rng.standard_normal((L, N, H)))
    return rng.standard_normal((L, N, H))


class _MeanCE(Module):
    """CharLM followed by mean cross-entropy: a (1,) output, for gradcheck."""

    def __init__(self, model, target, state):
        super().__init__()
        self.model, self.target, self.state = model, target, state
        self.params, self.grads = model.params, model.grads

    def forward(self, idx, train=True):
        logits, _ = self.model(idx, self.state, train=train)
        loss, self._dlogits = cross_entropy(logits, self.target)
        return np.array([loss])

    def backward(self, dout):
        return self.model.backward(self._dlogits * dout[0])


# ---------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradcheck_embedding_rnn_linear_cross_entropy(rng, cell):
    model = _tiny(cell)
    idx = rng.integers(0, 6, (2, 3))
    target = rng.integers(0, 6, (2, 3))
    state = _state(cell, rng)  # a carried state: a constant of the chunk
    report = gradcheck(_MeanCE(model, target, state), idx, **GC)
    assert report.passed
    assert {e.name for e in report.entries} >= {f"grads[{k!r}]" for k in model.params}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_gradcheck_logits(rng, cell):
    model = _tiny(cell, layers=1)
    assert gradcheck(model, rng.integers(0, 6, (2, 4)), **GC).passed


def test_params_are_the_childrens_arrays():
    model = _tiny("lstm", layers=1)
    assert list(model.params) == [
        "embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0",
        "rnn.bias_hh_l0", "head.weight", "head.bias"]
    assert model.params["rnn.weight_hh_l0"] is model.rnn.params["weight_hh_l0"]
    assert model.grads["head.bias"] is model.head.grads["bias"]
    assert model.params["embedding.weight"].shape == (6, 3)       # (V, E)
    assert model.params["head.weight"].shape == (6, 4)            # (V, H)
    assert model.num_parameters() == sum(m.num_parameters() for _, m in model.children())


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_state_carried_across_chunks_equals_one_pass(rng, cell):
    """Karpathy's check: two chunks with the state carried = the sequence at once."""
    model = _tiny(cell, dtype=np.float64)
    idx = rng.integers(0, 6, (2, 7))
    whole, s_whole = model(idx, train=False)
    a, s = model(idx[:, :3], train=False)
    b, s = model(idx[:, 3:], s, train=False)
    np.testing.assert_allclose(np.concatenate([a, b], axis=1), whole, rtol=0, atol=1e-12)
    for x, y in zip(np.atleast_1d(s) if cell != "lstm" else s,
                    np.atleast_1d(s_whole) if cell != "lstm" else s_whole):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)


def test_save_load_round_trip(tmp_path, rng):
    model = CharLM(7, embed_dim=5, hidden_size=6, num_layers=2, cell="gru", seed=3)
    path = tmp_path / "m.npz"
    rio.save(path, model)
    loaded = rio.load(path)
    assert type(loaded) is CharLM
    assert loaded.get_config() == model.get_config()
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
    idx = rng.integers(0, 7, (3, 5))
    np.testing.assert_array_equal(loaded(idx, train=False)[0], model(idx, train=False)[0])


def test_same_seed_same_init_and_bad_cell():
    a, b = CharLM(5, 4, 8, seed=1), CharLM(5, 4, 8, seed=1)
    c = CharLM(5, 4, 8, seed=2)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["rnn.weight_hh_l0"], c.params["rnn.weight_hh_l0"])
    with pytest.raises(ValueError, match="cell must be one of"):
        CharLM(5, cell="transformer")


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------
def test_generate_is_seeded():
    vocab = Vocab.from_text(TEXT)
    model = CharLM(len(vocab), 8, 16, cell="lstm", seed=0)
    a = generate(model, vocab, 50, temperature=1.0, prime="def ", seed=7)
    b = generate(model, vocab, 50, temperature=1.0, prime="def ", seed=7)
    c = generate(model, vocab, 50, temperature=1.0, prime="def ", seed=8)
    assert a == b and a != c
    assert a.startswith("def ") and len(a) == 54 and set(a) <= set(vocab.chars)
    # temperature 0 is greedy: independent of the seed
    assert generate(model, vocab, 30, 0.0, "x", seed=1) == generate(model, vocab, 30, 0.0, "x",
                                                                      seed=2)
    assert len(generate(model, vocab, 5, seed=0)) == 5  # empty prime: starts from "\n"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        generate(model, vocab, 5, prime="é")


def test_sampling_follows_the_distribution():
    """With one logit far above the rest, temperature 1 almost always picks it."""
    vocab = Vocab("ab")
    model = CharLM(2, 2, 3, cell="rnn", seed=0)
    model.head.params["weight"][...] = 0
    model.head.params["bias"][...] = [10.0, -10.0]
    assert generate(model, vocab, 40, 1.0, "b", seed=0) == "b" + "a" * 40


# ---------------------------------------------------------------------------
# Text and batches
# ---------------------------------------------------------------------------
def test_vocab_round_trip_and_errors():
    vocab = Vocab.from_text("hello world")
    assert vocab.chars == " dehlorw"
    ids = vocab.encode("hello")
    assert ids.dtype == np.int64 and vocab.decode(ids) == "hello"
    with pytest.raises(ValueError, match="1 character.*'z'"):
        vocab.encode("hez")
    with pytest.raises(ValueError, match="sorted"):
        Vocab("ba")


def test_stdlib_corpus_is_deterministic():
    a = stdlib_corpus(200_000)
    b = stdlib_corpus(200_000)
    assert a.text == b.text and a.sources == b.sources and a.kind == "stdlib"
    assert 150_000 < len(a.text) <= 200_000 and a.text.endswith("\n")
    names = [os.path.basename(s) for s in a.sources]
    assert names[:2] == ["abc.py", "argparse.py"]          # sorted module order
    assert "import" in a.text and "\r" not in a.text


def test_stdlib_corpus_skips_missing_modules_and_finds_packages(tmp_path):
    (tmp_path / "abc.py").write_text("x = 1\r\n")
    (tmp_path / "zipfile").mkdir()
    (tmp_path / "zipfile" / "__init__.py").write_text("y = 2")  # a module turned package
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "decoder.py").write_text("z = 3\n")
    c = stdlib_corpus(None, stdlib_dir=str(tmp_path))
    assert c.text == "x = 1\nz = 3\ny = 2\n"                 # abc, json.decoder, zipfile
    assert [os.path.relpath(s, tmp_path) for s in c.sources] == [
        "abc.py", os.path.join("json", "decoder.py"), os.path.join("zipfile", "__init__.py")]
    assert stdlib_corpus(8, stdlib_dir=str(tmp_path)).text == "x = 1\n"  # the cap
    with pytest.raises(CorpusError, match="no standard-library sources"):
        stdlib_corpus(stdlib_dir=str(tmp_path / "nowhere"))
    assert "typing" in DEFAULT_MODULES and list(DEFAULT_MODULES) == sorted(DEFAULT_MODULES)


def test_read_texts_files_and_folders(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "img.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".hidden").write_text("hidden")
    c = read_texts([str(tmp_path)])
    assert c.text == "first\nsecond\n" and c.kind == "files" and len(c.sources) == 2
    assert read_texts(str(tmp_path / "b.txt")).text == "second\n"
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        read_texts([str(tmp_path / "empty.txt")])
    with pytest.raises(CorpusError, match="not found"):
        read_texts([str(tmp_path / "missing.txt")])
    with pytest.raises(CorpusError, match="binary"):
        read_texts([str(tmp_path / "img.bin")])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        read_texts([str(tmp_path / "latin1.txt")])
    (tmp_path / "void").mkdir()
    with pytest.raises(CorpusError, match="no non-empty UTF-8 text files"):
        read_texts([str(tmp_path / "void")])


def test_streams_continue_each_stream():
    ids = np.arange(101)
    s = Streams(ids, batch_size=4, seq_len=5)                 # S = 25 per stream
    assert s.stream_len == 25 and len(s) == 5
    x0, y0 = s.batch(0)
    x1, _ = s.batch(1)
    assert x0.shape == (4, 5)
    np.testing.assert_array_equal(x0[:, 0], [0, 25, 50, 75])
    np.testing.assert_array_equal(y0, x0 + 1)                 # next character
    np.testing.assert_array_equal(x1[:, 0], x0[:, -1] + 1)    # batch i + 1 continues batch i
    part = Streams(np.arange(23), 2, 5, partial=True)         # S = 11: 5 + 5 + 1
    assert [x.shape[1] for x, _ in part] == [5, 5, 1]
    with pytest.raises(CorpusError, match="too few"):
        Streams(np.arange(20), batch_size=4, seq_len=5)


def test_evaluate_uniform_model_is_log2_V():
    vocab = Vocab.from_text(TEXT)
    model = CharLM(len(vocab), 4, 8, cell="gru", seed=0)
    model.head.params["weight"][...] = 0
    model.head.params["bias"][...] = 0
    bpc = evaluate(model, vocab.encode(TEXT), batch_size=4, seq_len=16)
    assert bpc == pytest.approx(math.log2(len(vocab)), abs=1e-6)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def _trainer(distributed=False, **kw):
    cfg = dict(cell="lstm", hidden=16, embed=8, seq_len=12, batch_size=4, lr=1e-2, seed=0)
    cfg.update(kw)
    return Trainer(Corpus(TEXT, "files"), TrainConfig(**cfg), distributed=distributed)


def test_training_lowers_the_loss_and_wraps_epochs():
    tr = _trainer()
    assert tr.steps_per_epoch == (len(tr.train_ids) - 1) // 4 // 12
    first = tr.evaluate()
    tr.fit(2 * tr.steps_per_epoch + 3)
    assert tr.step == 2 * tr.steps_per_epoch + 3
    assert tr.evaluate() < first - 1.0
    assert tr.val_history[-1][0] == tr.step
    assert np.mean(tr.train_loss[-5:]) < tr.train_loss[0]


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_resume_is_bit_identical(tmp_path, cell):
    straight = _trainer(cell=cell)
    straight.fit(14)
    first = _trainer(cell=cell)
    first.fit(7)
    first.sample(10)                                   # uses (and advances) the sample RNG
    first.save(tmp_path / "ck.npz")
    resumed = Trainer.from_checkpoint(tmp_path / "ck.npz", Corpus(TEXT, "files"))
    assert resumed.step == 7 and resumed.optimizer.step_count == 7
    assert resumed.sample(10) == first.sample(10)
    resumed.sample_rng = straight.sample_rng           # (only the losses are compared)
    resumed.fit(14)
    assert resumed.train_loss == straight.train_loss   # exactly, not just closely
    for k in straight.model.params:
        np.testing.assert_array_equal(resumed.model.params[k], straight.model.params[k])


def test_periodic_checkpoint_and_events(tmp_path):
    tr = _trainer()
    events = []
    tr.fit(9, eval_every=4, sample_every=3, save_every=4, checkpoint=str(tmp_path / "c.npz"),
           sample_length=5, on_event=lambda kind, info: events.append((kind, info["step"])))
    kinds = [k for k, _ in events]
    assert kinds.count("step") == 9
    assert [s for k, s in events if k == "eval"] == [4, 8, 9]
    assert [s for k, s in events if k == "sample"] == [3, 6]
    # the checkpoint of step k is written during step k + 1, once that loss is finite
    assert [s for k, s in events if k == "save"] == [4, 8]
    assert rio.load_checkpoint(tmp_path / "c.npz")["extra"]["step"] == 8


def test_nonfinite_loss_raises_or_is_skipped(monkeypatch):
    tr = _trainer()
    tr.fit(2)
    before = {k: v.copy() for k, v in tr.model.params.items()}
    real_loss = tr.model.loss
    monkeypatch.setattr(tr.model, "loss", lambda x, y, s: (float("nan"), s))
    with pytest.raises(NonFiniteLossError, match="non-finite loss \\(nan\\) at step 3"):
        tr.train_step()
    assert tr.step == 2 and tr.optimizer.step_count == 2
    assert all(np.array_equal(before[k], v) for k, v in tr.model.params.items())
    tr.skip_nonfinite = True
    tr.train_step()
    assert tr.step == 3 and tr.skipped == 1 and tr.optimizer.step_count == 2
    assert math.isnan(tr.train_loss[-1])
    monkeypatch.setattr(tr.model, "loss", real_loss)
    tr.train_step()
    assert tr.optimizer.step_count == 3
    tr.model.params["head.bias"][0] = np.inf               # unrecoverable
    with pytest.raises(NonFiniteLossError):
        tr.train_step()


def test_distributed_with_one_rank_is_plain_training(tmp_path):
    # (two ranks under mpirun: tests/test_cli_distributed.py)
    dist.init(use_mpi=False)
    plain, one = _trainer(), _trainer(distributed=True)
    assert (one.rank, one.size, one.is_root) == (0, 1, True)
    for tr in (plain, one):
        tr.fit(5, eval_every=5)
    assert one.train_loss == plain.train_loss and one.val_history == plain.val_history
    for k in plain.model.params:
        np.testing.assert_array_equal(one.model.params[k], plain.model.params[k])
    assert one.global_state() is one.state and one.chars_seen == plain.chars_seen
    one.save(tmp_path / "c.npz")
    resumed = Trainer.from_checkpoint(tmp_path / "c.npz", Corpus(TEXT, "files"),
                                      distributed=True)
    for a, b in zip(resumed.state, one.state):
        np.testing.assert_array_equal(a, b)
    assert shard_problem(4, 2) is None and shard_problem(4, 1) is None
    assert "--batch-size 6 is not divisible by the 4 ranks" in shard_problem(6, 4, "--batch-size")


def test_plot_history(tmp_path):
    path = tmp_path / "loss.png"
    pytest.importorskip("matplotlib")
    assert plot_history([4.0, 3.5, float("nan"), 3.0], [[2, 5.0], [4, 4.5]], str(path), "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
