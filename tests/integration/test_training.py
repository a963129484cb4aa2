"""genseek.training: the one loop of the ``genseek train`` recipes, its options, checkpoints
and ``--resume``.

The central property: a run interrupted after some steps and resumed from its checkpoint ends
with the weights of the uninterrupted run with the same seed (the trainer, and each recipe
end to end on a tiny model). Interruptions are simulated by a loss (or a function the loss
calls) that raises at a chosen call; time budgets by a fake clock; nothing here is timed.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import test_generative as generative_tests
import test_impact as impact_tests
import torch

from genseek.errors import GenseekError
from genseek.training import (
    CHECKPOINT_DIR,
    Batches,
    Checkpoint,
    Trainer,
    add_options,
    claim_out,
    holdout,
    holdout_rows,
    recipe_parser,
    save_folder,
)

tiny = generative_tests.tiny  # fixtures: a tiny causal LM folder, a tiny SPLADE folder
tiny_model = impact_tests.tiny_model


class Crash(RuntimeError):
    """The simulated interruption (a kill between two checkpoints)."""


def crash_at(fn, call: int):
    """``fn`` that raises :class:`Crash` on its ``call``-th call (1-based)."""
    seen = {"n": 0}

    def wrapped(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == call:
            raise Crash(f"interrupted at call {call}")
        return fn(*args, **kwargs)

    return wrapped


# ---------------------------------------------------------------------------------- the loop


class Net(torch.nn.Module):
    """A little regression net with dropout, so each step also draws from torch's generator."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.drop = torch.nn.Dropout(0.3)
        self.b = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


DATA_X = torch.randn(23, 4, generator=torch.Generator().manual_seed(3))
DATA_Y = DATA_X.sum(dim=1, keepdim=True) ** 2


def train_net(out: Path | None, *, rng_kind: str, resume: bool = False, crash: int = 0,
              steps: int = 14, every: int = 3, clock=None, max_seconds=None, sam: float = 0.05):
    """Train a fresh Net (seed 0) on the toy data; ``(net, result or None if it crashed)``."""
    torch.manual_seed(0)
    net = Net()
    rng = random.Random(1) if rng_kind == "python" else np.random.default_rng(1)
    batches = Batches(len(DATA_X), 5, rng, from_end=rng_kind == "python")
    ckpt = None
    if out is not None:
        ckpt = claim_out(out, "toy", {"steps": steps}, resume=resume, replace=False)

    def loss(idx, step):
        pred = net(DATA_X[idx])
        return torch.nn.functional.mse_loss(pred, DATA_Y[idx]), {"n": float(len(idx))}

    kw = {} if clock is None else {"clock": clock}
    trainer = Trainer(list(net.parameters()), steps=steps, batches=batches, lr=1e-2, clip=1.0,
                      sam=sam, checkpoint=ckpt, every=every, max_seconds=max_seconds,
                      progress=False, **kw)
    try:
        return net, trainer.run(crash_at(loss, crash) if crash else loss)
    except Crash:
        return net, None


def weights(net) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("rng_kind", ["python", "numpy"])
def test_interrupted_and_resumed_run_ends_with_the_uninterrupted_weights(tmp_path, rng_kind):
    ref, full = train_net(None, rng_kind=rng_kind)
    assert full.complete and full.steps == 14 and len(full.history) == 14
    out = tmp_path / "run"
    # two loss calls a step (SAM): the 15th is in step 8 (0-based 7), after the checkpoint
    # of step 6
    _, crashed = train_net(out, rng_kind=rng_kind, crash=15)
    assert crashed is None
    state = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())
    assert state["step"] == 6 and state["recipe"] == "toy"  # the last checkpoint: step 6
    assert sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir()) == ["state.json",
                                                                        "tensors-6.pt"]
    net, resumed = train_net(out, rng_kind=rng_kind, resume=True)
    assert resumed.complete and resumed.resumed_at == 6 and resumed.steps == 14
    for a, b in zip(weights(net), weights(ref), strict=True):
        torch.testing.assert_close(a, b)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history])
    # a fresh run that is never interrupted is not disturbed by the checkpoints it writes
    plain, _ = train_net(tmp_path / "again", rng_kind=rng_kind)
    for a, b in zip(weights(plain), weights(ref), strict=True):
        assert torch.equal(a, b)


def test_resume_without_restoring_the_generators_would_differ(tmp_path, monkeypatch):
    """The test above can fail: skip restoring torch's generator (dropout masks) and the
    resumed weights leave the uninterrupted ones."""
    ref, _ = train_net(None, rng_kind="python")
    out = tmp_path / "run"
    train_net(out, rng_kind="python", crash=15)
    monkeypatch.setattr(torch, "set_rng_state", lambda state: None)
    net, _ = train_net(out, rng_kind="python", resume=True)
    assert not all(torch.allclose(a, b) for a, b in zip(weights(net), weights(ref), strict=True))


def test_time_budget_stops_checkpoints_and_resume_trains_on(tmp_path):
    ref, _ = train_net(None, rng_kind="python", sam=0.0)
    ticks = iter(range(10_000))
    clock = lambda: float(next(ticks))  # noqa: E731 - one second per reading
    out = tmp_path / "run"
    _, part = train_net(out, rng_kind="python", sam=0.0, every=0, clock=clock, max_seconds=5)
    assert part.stopped_by == "time" and 0 < part.steps < 14 and not part.complete
    assert json.loads((out / CHECKPOINT_DIR / "state.json").read_text())["step"] == part.steps
    net, rest = train_net(out, rng_kind="python", sam=0.0, resume=True)
    assert rest.complete and rest.resumed_at == part.steps
    for a, b in zip(weights(net), weights(ref), strict=True):
        torch.testing.assert_close(a, b)


def test_epoch_hooks_and_a_per_epoch_budget():
    seen: list[tuple[str, int, int]] = []
    p = torch.nn.Parameter(torch.zeros(3))
    batches = Batches(7, 3, np.random.default_rng(0))  # 3 steps an epoch: 3 + 3 + 1
    ticks = iter(range(10_000))
    trainer = Trainer([p], steps=12, batches=batches, lr=0.1, per_epoch=True, max_seconds=4.5,
                      started=0.0, clock=lambda: 3.0 * next(ticks), progress=False,
                      on_epoch_start=lambda e: seen.append(("start", e, trainer.step)),
                      on_epoch_end=lambda e: seen.append(("end", e, trainer.step)))
    result = trainer.run(lambda idx, step: ((p - float(idx[0])).pow(2).sum(), {}))
    # the clock is read after each epoch only (3 s a reading): epoch 2 ends past 4.5 s
    assert seen == [("start", 1, 0), ("end", 1, 3), ("start", 2, 3), ("end", 2, 6)]
    assert result.stopped_by == "time" and result.steps == 6


def test_batches_keep_each_recipes_order():
    rng, copy = random.Random(4), random.Random(4)
    from_end = Batches(10, 4, rng, from_end=True)
    order = list(range(10))
    copy.shuffle(order)
    expected = [[order.pop() for _ in range(min(4, len(order)))] for _ in range(3)]
    assert [from_end.next() for _ in range(3)] == expected  # the sparse recipe's pops
    front = Batches(5, 2, np.random.default_rng(2))
    perm = np.random.default_rng(2).permutation(5).tolist()
    assert [front.next() for _ in range(3)] == [perm[0:2], perm[2:4], perm[4:5]]
    assert front.epoch == 1 and front.epoch_done
    assert Batches(3, 2).next() == [0, 1]  # no generator: in order
    # state() / load() carry the order and the generator: the same batches follow
    a = Batches(9, 2, random.Random(7))
    for _ in range(6):
        a.next()
    b = Batches(9, 2, random.Random(99))
    b.load(json.loads(json.dumps(a.state())))
    assert [b.next() for _ in range(8)] == [a.next() for _ in range(8)]
    with pytest.raises(GenseekError, match="this run has 9"):
        Batches(9, 3).load(a.state())
    with pytest.raises(GenseekError, match="no training examples"):
        Batches(0, 2)


# ------------------------------------------------------------------- checkpoints and OUT


def test_claim_out_refuses_what_it_must(tmp_path):
    out = tmp_path / "m"
    assert not claim_out(out, "toy", {}, resume=False, replace=False).resuming
    out.mkdir()
    assert claim_out(out, "toy", {}, resume=False, replace=False)  # empty: fine
    (out / "model.bin").write_text("x")
    with pytest.raises(GenseekError, match="exists and is not empty .--force replaces it"):
        claim_out(out, "toy", {}, resume=False, replace=False, flag="--force")
    assert claim_out(out, "toy", {}, resume=False, replace=True)
    with pytest.raises(GenseekError, match="holds no checkpoint"):
        claim_out(out, "toy", {}, resume=True, replace=False)
    Checkpoint(out, "toy", {"lr": 0.1, "seed": 0}).write({"step": 2}, {"params": []})
    with pytest.raises(GenseekError, match="--resume continues it, or choose a new folder"):
        claim_out(out, "toy", {}, resume=False, replace=False)
    with pytest.raises(GenseekError, match=r"other options \(lr 0.1 there, 0.2 here\)"):
        claim_out(out, "toy", {"lr": 0.2, "seed": 0}, resume=True, replace=False)
    with pytest.raises(GenseekError, match="recipe 'toy', not 'other'"):
        claim_out(out, "other", {"lr": 0.1, "seed": 0}, resume=True, replace=False)
    assert claim_out(out, "toy", {"seed": 0, "lr": 0.1}, resume=True, replace=False).resuming


class Boom:
    """Unpickling this would write a marker file: a checkpoint must never unpickle it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_a_checkpoint_is_never_unpickled(tmp_path):
    ckpt = Checkpoint(tmp_path / "m", "toy", {})
    ckpt.write({"step": 1}, {"params": [torch.ones(2)]})
    _, tensors = ckpt.read()
    assert torch.equal(tensors["params"][0], torch.ones(2))
    marker = tmp_path / "marker"
    with open(ckpt.folder / "tensors-1.pt", "wb") as fh:
        pickle.dump({"params": [Boom(marker)]}, fh, protocol=2)
    with pytest.raises(GenseekError, match="unreadable checkpoint"):
        ckpt.read()
    assert not marker.exists()
    (ckpt.folder / "state.json").write_text('{"format": "other"}')
    with pytest.raises(GenseekError, match="expected 'genseek-train-checkpoint'"):
        ckpt.read()


def test_save_folder_is_atomic_and_keeps_a_checkpoint_only_when_asked(tmp_path):
    out = tmp_path / "model"
    save_folder(out, lambda tmp: (tmp / "w.txt").write_text("v1"))
    Checkpoint(out, "toy", {}).write({"step": 3}, {"params": []})

    def broken(tmp: Path) -> None:
        (tmp / "w.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_folder(out, broken)
    assert (out / "w.txt").read_text() == "v1" and (out / CHECKPOINT_DIR).is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left
    save_folder(out, lambda tmp: (tmp / "w.txt").write_text("v2"), keep_checkpoint=True)
    assert (out / "w.txt").read_text() == "v2" and Checkpoint(out, "toy", {}).exists()
    save_folder(out, lambda tmp: (tmp / "w.txt").write_text("v3"))
    assert sorted(p.name for p in out.iterdir()) == ["w.txt"]


def test_shared_options_show_defaults_and_refuse_bad_values(capsys):
    p = recipe_parser("toy", "A toy recipe.")
    add_options(p, max_minutes=7.0, minutes_alias="--minutes", lr=0.01, steps=9,
                autocast=True, replace="--force")
    args = p.parse_args(["--dataset", "d", "--out", "o", "--minutes", "2"])
    assert (args.max_minutes, args.lr, args.steps, args.seed, args.device, args.autocast,
            args.checkpoint_every, args.resume, args.force) == (2.0, 0.01, 9, 0, "auto", "off",
                                                                50, False, False)
    text = " ".join(p.format_help().split())
    assert text.startswith("usage: genseek train toy ")
    for shown in ("(default: 7.0)", "(default: 0.01)", "(default: 9)", "(default: auto)",
                  "(default: 50)", "(default: off)", "--max-minutes MIN, --minutes MIN"):
        assert shown in text
    for bad in (["--lr", "0"], ["--max-minutes", "-1"], ["--checkpoint-every", "-2"],
                ["--lr", "nan"]):
        with pytest.raises(SystemExit):
            p.parse_args(["--dataset", "d", "--out", "o", *bad])
    assert "must be > 0" in capsys.readouterr().err


def test_holdout_is_seeded_sorted_and_checked():
    ids = [f"q{i}" for i in range(20)]
    held = holdout(reversed(ids), 5, seed=3)
    assert held == sorted(held) and len(set(held)) == 5 and set(held) <= set(ids)
    assert holdout(ids, 5, seed=3) == held  # the order ids come in does not matter
    assert holdout(ids, 5, seed=4) != held and holdout(ids, 0, seed=3) == []
    for n in (-1, 20):
        with pytest.raises(GenseekError, match="--holdout"):
            holdout(ids, n, seed=0)


def test_holdout_rows_split_a_seeded_permutation():
    import numpy as np

    dev, fit = holdout_rows(20, 0.15, np.random.default_rng(7))
    assert len(dev) == 3 and len(fit) == 17
    assert sorted([*dev, *fit]) == list(range(20))  # a partition of the rows
    again = holdout_rows(20, 0.15, np.random.default_rng(7))
    assert list(again[0]) == list(dev) and list(again[1]) == list(fit)
    assert list(holdout_rows(20, 0.15, np.random.default_rng(8))[0]) != list(dev)
    assert len(holdout_rows(2, 0.01, np.random.default_rng(0))[0]) == 1  # at least one
    assert len(holdout_rows(1, 0.5, np.random.default_rng(0))[0]) == 0  # none to spare
    for bad in (-0.1, 1.0):
        with pytest.raises(GenseekError, match="dev fraction"):
            holdout_rows(10, bad, np.random.default_rng(0))


# ------------------------------------------------------------------------ recipes end to end


@pytest.fixture
def one_thread():
    """torch on one thread for the test: CPU kernels that accumulate in parallel (the backward
    of an index) may sum in another order from run to run, and Adam turns the noise in a
    gradient that is zero in exact arithmetic (a BERT key bias) into whole steps of lr."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_weights(a: Path, b: Path, name: str) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / name)), load_file(str(b / name))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], msg=key)


def interrupt(monkeypatch, run, module, name: str, call: int) -> None:
    """``run("full")`` uninterrupted, then ``run("cut")`` killed (:class:`Crash`) at the
    ``call``-th call of ``module.name`` (a function its loss calls)."""
    assert run("full") == 0
    fn = getattr(module, name)
    monkeypatch.setattr(module, name, crash_at(fn, call))
    with pytest.raises(Crash):
        run("cut")
    monkeypatch.setattr(module, name, fn)


def recipe(tmp_path: Path, main, argv: list[str]):
    """``run(name, *extra)``: the recipe's ``main`` with ``argv``, ``--out tmp_path/name``."""
    return lambda name, *extra: main([*argv, "--out", str(tmp_path / name), *extra])


def test_sparse_recipe_resumes_to_the_uninterrupted_model(tmp_path, tiny_model, monkeypatch,
                                                          one_thread):
    from _synth import make_docs, make_queries

    from genseek.indexers import sparse_train

    rng = random.Random(5)
    docs = make_docs(40, seed=21)
    judged = impact_tests._tiny_beir(tmp_path / "ds", docs, make_queries(12, seed=9), rng)
    teacher = {q: {d.doc_id: rng.uniform(0, 2) for d in rng.sample(docs, 10)} for q in judged}
    (tmp_path / "teacher.json").write_text(json.dumps({"depth": 50, "lists": teacher}))
    run = recipe(tmp_path, sparse_train.main, [
        "sparse", "--dataset", str(tmp_path / "ds"), "--collection", str(tmp_path / "none"),
        "--base", str(tiny_model), "--teacher-cache", str(tmp_path / "teacher.json"),
        "--batch-queries", "4", "--doc-max-length", "32", "--lr", "1e-3", "--epochs", "3",
        "--checkpoint-every", "2"])
    # the scale probe encodes 12 examples in 2 batches, then one encoding a step: the 8th
    # call is in step 6 (0-based 5), after the checkpoint of step 4
    interrupt(monkeypatch, run, sparse_train, "pool_for_training", 8)
    assert json.loads((tmp_path / "cut" / CHECKPOINT_DIR / "state.json").read_text())[
        "step"] == 4
    with pytest.raises(GenseekError, match="--resume continues it"):
        run("cut")
    with pytest.raises(GenseekError, match="other options"):
        run("cut", "--resume", "--flops", "1e-3")
    assert run("cut", "--resume") == 0
    info = json.loads((tmp_path / "cut" / "train_info.json").read_text())
    full = json.loads((tmp_path / "full" / "train_info.json").read_text())
    assert info["steps"] == full["steps"] == 9 and info["resumed_at"] == 4
    assert info["kl_first"] == pytest.approx(full["kl_first"])
    assert info["kl_last"] == pytest.approx(full["kl_last"])
    assert_same_weights(tmp_path / "cut", tmp_path / "full", "model.safetensors")
    assert not (tmp_path / "cut" / CHECKPOINT_DIR).exists()  # a complete run keeps none
    idf = [json.loads((tmp_path / f / "idf.json").read_text()) for f in ("cut", "full")]
    assert idf[0] == pytest.approx(idf[1], abs=2e-6)  # the learned query weights


def test_generative_recipe_resumes_to_the_uninterrupted_adapter(tmp_path, tiny, monkeypatch,
                                                                one_thread):
    from genseek.retrievers import generative_train

    docs = generative_tests.corpus(10)
    data = generative_tests.beir_folder(tmp_path / "ds", docs, {"q1": "w1 w2", "q2": "w3 w4"},
                                        {"q1": "d3", "q2": "d5"})
    run = recipe(tmp_path, generative_train.main, [
        "dsi", "--dataset", str(data), "--model", tiny, "--scheme", "atomic", "--steps", "7",
        "--batch", "3", "--max-len", "48", "--sam", "0.05", "--checkpoint-every", "3"])
    # two calls a step with SAM: the 13th is in step 7 (0-based 6), after the checkpoint of
    # step 6 (and LoRA dropout draws from torch's generator every step)
    interrupt(monkeypatch, run, generative_train, "collate", 13)
    assert run("cut") == 2  # not without --resume
    assert run("cut", "--resume") == 0
    meta = json.loads((tmp_path / "cut" / "genseek_model.json").read_text())
    ref = json.loads((tmp_path / "full" / "genseek_model.json").read_text())
    assert meta["steps"] == ref["steps"] == 7 and meta["resumed_at"] == 6
    assert meta["loss_first"] == pytest.approx(ref["loss_first"])
    assert meta["loss_last"] == pytest.approx(ref["loss_last"])
    assert_same_weights(tmp_path / "cut", tmp_path / "full", "adapter_model.safetensors")
    assert (tmp_path / "cut" / "docids.json").read_text() == \
        (tmp_path / "full" / "docids.json").read_text()


def test_repconc_training_resumes_to_the_uninterrupted_codebooks(tmp_path, monkeypatch,
                                                                  one_thread):
    from genseek.indexers import repconc_train as rt

    rng = np.random.default_rng(0)
    docs = rng.standard_normal((256, 16)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    targets = rng.integers(0, 256, size=60)
    queries = docs[targets] + 0.3 * rng.standard_normal((60, 16)).astype(np.float32)
    positives = [{int(t): 1} for t in targets]
    kw = {"m": 4, "epochs": 3, "batch_size": 16, "progress": False, "sinkhorn_iters": 5,
          "opq_iters": 2, "lr": 1e-2, "mse_weight": 0.1, "every": 2}
    runs: dict[str, dict] = {}

    def run(name: str, *extra: str) -> int:  # 51 training pairs: 4 steps an epoch
        out = tmp_path / name
        ckpt = claim_out(out, "repconc", {}, resume="--resume" in extra, replace=True)
        runs[name] = rt.train(docs, queries, positives, checkpoint=ckpt, **kw)
        return 0

    # one call per dev score and per step: 1 (epoch 0), 2-5 and 6 (epoch 1), 7-10 (epoch 2):
    # the 10th is step 8 (0-based 7), after the checkpoint of step 6, in the middle of epoch 2
    interrupt(monkeypatch, run, rt, "quantise", 10)
    run("cut", "--resume")
    full, resumed = runs["full"], runs["cut"]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in resumed["log"]] == \
        [{k: v for k, v in e.items() if k != "seconds"} for e in full["log"]]
    assert resumed["best_epoch"] == full["best_epoch"]
    np.testing.assert_allclose(resumed["codebooks"], full["codebooks"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(resumed["query_proj"], full["query_proj"], rtol=1e-6, atol=1e-6)


def test_first_recipe_resumes_to_the_uninterrupted_model(tmp_path, monkeypatch, one_thread):
    from test_first import char_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from genseek import Collection
    from genseek.rerankers import first_train
    from genseek.types import Document

    tok = char_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tok.pad_token_id)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    docs = [Document(f"d{i}", f"title {i}", f"passage {i}") for i in range(8)]
    qids = [f"q{i}" for i in range(6)]
    generative_tests.beir_folder(tmp_path / "ds", docs, {q: f"topic {q}" for q in qids},
                                 {q: f"d{(i + 3) % 8}" for i, q in enumerate(qids)})
    with Collection.create(tmp_path / "coll", {}) as coll:
        coll.upsert(docs)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "firststage_ds_train_100.json").write_text(json.dumps(
        {"run": {q: [[d.doc_id, 1.0 / (j + 1)] for j, d in enumerate(docs)] for q in qids}}))
    run = recipe(tmp_path, first_train.main, [
        "first", "--model", str(tmp_path / "base"), "--dataset", str(tmp_path / "ds"),
        "--collection", str(tmp_path / "coll"), "--cache", str(tmp_path / "cache"),
        "--window", "4", "--max-passage-tokens", "8", "--lora-layers", "1", "--lr", "1e-2",
        "--checkpoint-every", "2"])
    # one RankNet loss a step: the 4th is in step 4 (0-based 3), after the checkpoint of step 2
    interrupt(monkeypatch, run, first_train, "ranknet_loss", 4)
    assert run("cut", "--resume") == 0
    got = json.loads((tmp_path / "cut" / "first_train.json").read_text())
    ref = json.loads((tmp_path / "full" / "first_train.json").read_text())
    assert got["steps"] == ref["steps"] == 6 and got["resumed_at"] == 2
    assert [h["loss"] for h in got["history"]] == pytest.approx([h["loss"] for h in
                                                                  ref["history"]])
    assert_same_weights(tmp_path / "cut", tmp_path / "full", "model.safetensors")
