"""``impact``: quantised Lucene impact scoring equals the exact dot product; writes like bm25.

A tiny random BERT masked LM and a word-level WordPiece vocabulary are built here (no
downloads), with an IDF table over the synthetic corpus for inference-free queries.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
from _synth import COMMON, TOPICS, make_docs, make_queries

from genseek import Collection, Document
from genseek.encoders import (
    IDF_FILE,
    SparseEncoder,
    corpus_idf,
    load_idf,
    save_idf,
    term_name,
)
from genseek.errors import GenseekError
from genseek.protocols import VectorSearch
from genseek.types import ChangeSet

QUANT = 100


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A folder with a 1-layer BERT MLM (hidden 32), its tokenizer and an idf.json."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-splade")
    words = sorted({w for t in TOPICS.values() for w in t.split()} | set(COMMON.split()))
    pieces = ["tok"] + [f"##{c}" for c in "0123456789v"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "|"] + words + pieces
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        initializer_range=0.5)
    model = BertForMaskedLM(config)
    with torch.no_grad():  # sparser outputs: most logits negative
        model.cls.predictions.bias.fill_(-1.0)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    enc = SparseEncoder(str(folder), max_length=64)
    texts = [d.contents for d in make_docs(200, seed=3)]
    save_idf(folder / IDF_FILE, enc.vocab, corpus_idf(enc.tokenizer, texts))
    return folder


def _index(tmp_path, model, **params):
    from genseek.indexers.impact import ImpactIndex

    return ImpactIndex.open(tmp_path, {"model": str(model), "max_length": 64, **params})


def _dot(q, d) -> float:
    qd = dict(zip(q[0].tolist(), q[1].tolist(), strict=True))
    return float(sum(qd.get(i, 0.0) * w for i, w in zip(d[0].tolist(), d[1].tolist(),
                                                          strict=True)))


def _bound(q, d) -> float:
    """Largest |float dot - quantised dot / quant^2| over the shared terms of q and d."""
    qd = dict(zip(q[0].tolist(), q[1].tolist(), strict=True))
    e = 0.5 / QUANT
    return sum(abs(qd[i]) * e + abs(w) * e + e * e
               for i, w in zip(d[0].tolist(), d[1].tolist(), strict=True) if i in qd)


@pytest.mark.parametrize("mode", ["splade", "inference-free"])
def test_quantised_scores_exact_and_top10_matches_float(tmp_path, tiny_model, mode):
    docs = make_docs(150, seed=11)
    index = _index(tmp_path, tiny_model, mode=mode)
    try:
        index.apply(ChangeSet(0, 150, upserts=tuple(docs)))
        index.commit(150)
        dvecs = dict(zip([d.doc_id for d in docs], index.doc_vectors(docs), strict=True))
        queries = make_queries(12, seed=4)
        qvecs = index.encode_queries(queries)
        hits = index.search(queries, 10)
        checked = 0
        for q, qv, got in zip(queries, qvecs, hits, strict=True):
            bag = index.quantised_query(qv)
            exact = {i: _dot(qv, v) for i, v in dvecs.items()}
            ranked = sorted(exact, key=lambda i: (-exact[i], i))
            assert len(got) == 10, q
            for h in got:  # Lucene's score is the integer dot product of the quantised vectors
                dq = index.quantised_query(dvecs[h.doc_id])
                want = sum(w * dq.get(t, 0) for t, w in bag.items())
                assert h.score * QUANT * QUANT == pytest.approx(want, abs=1e-6), (q, h)
            for a, b in zip([h.doc_id for h in got], ranked[:10], strict=True):
                if a != b:  # only a near-tie within the quantisation error may swap
                    tol = _bound(qv, dvecs[a]) + _bound(qv, dvecs[b]) + 1e-9
                    assert abs(exact[a] - exact[b]) <= tol, (q, a, b)
                else:
                    checked += 1
        assert checked >= 100  # nearly all positions agree outright
    finally:
        index.close()


def test_inference_free_queries_need_no_model(tmp_path, tiny_model):
    no_weights = tmp_path / "tokenizer-only"
    shutil.copytree(tiny_model, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    enc = SparseEncoder(str(no_weights), max_length=64)
    vecs = enc.query_ids_idf(["lift drag wing", "the of"])
    assert not enc.model_loaded
    idf = load_idf(no_weights / IDF_FILE, enc.vocab)
    ids, ws = vecs[0]
    assert len(ids) == 3 and np.allclose(ws, idf[ids])
    with pytest.raises(GenseekError, match="cannot load sparse encoder"):
        enc.encode_ids(["wing"])
    # An index built with the full model is searched with the tokenizer-only encoder.
    docs = make_docs(40, seed=2)
    built = _index(tmp_path / "ix", tiny_model, mode="inference-free")
    built.apply(ChangeSet(0, 40, upserts=tuple(docs)))
    built.commit(40)
    want = built.search(["lift drag wing"], 5)
    built.close()
    from genseek.indexers.impact import ImpactIndex

    reader = ImpactIndex(tmp_path / "ix", {"model": str(tiny_model), "max_length": 64,
                                          "mode": "inference-free"}, encoder=enc)
    try:
        assert reader.search(["lift drag wing"], 5) == want and len(want[0]) == 5
        assert not enc.model_loaded
    finally:
        reader.close()


def test_pruning_and_term_names(tmp_path, tiny_model):
    docs = make_docs(20, seed=5)
    full = _index(tmp_path / "full", tiny_model)
    pruned = _index(tmp_path / "pruned", tiny_model, top_k=4, threshold=0.05)
    try:
        for a, b in zip(full.doc_vectors(docs), pruned.doc_vectors(docs), strict=True):
            assert len(b[0]) <= 4 and (b[1] > 0.05).all()
            keep = a[1] > 0.05
            assert b[0].tolist() == a[0][keep][:4].tolist()  # the heaviest survive
    finally:
        full.close()
        pruned.close()
    assert term_name("|", 7) == "|" and term_name("a b", 5) == "#5" and term_name("", 3) == "#3"
    assert term_name("x\x01y", 9) == "#9"


def test_query_parser_keeps_operator_like_terms_and_ties_break_by_id(tmp_path, tiny_model):
    """Terms that Lucene's query syntax would read as operators are searched as terms, and
    equal scores come back by id, also where the top k cuts through a tie."""
    from genseek.indexers.impact import query_string

    index = _index(tmp_path, tiny_model)
    try:
        names = index.encoder.term_names
        odd = ['AND', '-', '"', '\\', '*', '(', 'a:b', 'NOT', '~x^2']
        ids = list(range(10, 10 + len(odd)))
        saved = [names[i] for i in ids]
        names[ids[0]:ids[-1] + 1] = odd
        try:
            assert '"AND"^3' in query_string({"AND": 3})
            docs = [Document(f"d{n:02d}", "", "x") for n in range(12)]
            order = [7, 3, 11, 0, 9, 5, 1, 10, 2, 8, 6, 4]  # indexed out of id order
            vecs = {}
            for n in order:
                if n < len(odd):  # d00..d08: one odd term each, weight rising with n
                    vecs[f"d{n:02d}"] = (np.array([ids[n]]), np.array([0.1 * (n + 1)], "f4"))
                else:  # d09..d11: all odd terms at one low weight: the same score
                    vecs[f"d{n:02d}"] = (np.array(ids), np.full(len(ids), 0.05, "f4"))
            by_id = {d.doc_id: d for d in docs}
            index.apply_encoded(ChangeSet(0, 12, upserts=tuple(by_id[f"d{n:02d}"] for n in order)),
                                vecs)
            index.commit(12)
            for n, term in enumerate(odd):  # each odd term finds its document and the tied three
                got = index.search_vectors([(np.array([ids[n]]), np.array([1.0], "f4"))], 10)[0]
                assert [h.doc_id for h in got] == [f"d{n:02d}", "d09", "d10", "d11"], term
                assert got[0].score == pytest.approx(0.1 * (n + 1))
                assert got[1].score == got[3].score == pytest.approx(0.05)
            # all odd terms: d08 (0.9) > ... > d04 (0.5) > d09 = d10 = d11 (0.45) > d03 (0.4)
            q = (np.array(ids), np.full(len(ids), 1.0, "f4"))
            top = ["d08", "d07", "d06", "d05", "d04", "d09", "d10", "d11", "d03"]
            for k in (5, 6, 7, 8, 9):  # k = 6 and 7 cut through the tie: ids decide
                assert [h.doc_id for h in index.search_vectors([q], k)[0]] == top[:k], k
        finally:
            names[ids[0]:ids[-1] + 1] = saved
    finally:
        index.close()


def test_reopen_persists_and_rejects_other_doc_settings(tmp_path, tiny_model):
    docs = make_docs(30, seed=8)
    index = _index(tmp_path, tiny_model)
    index.apply(ChangeSet(0, 7, upserts=tuple(docs)))
    index.commit(7)
    queries = make_queries(5, seed=2)
    before = index.search(queries, 10)
    index.apply(ChangeSet(7, 8, deleted_ids=frozenset({docs[0].doc_id})))  # not committed
    index.close()
    again = _index(tmp_path, tiny_model)
    try:
        assert again.applied_seq == 7
        stats = again.stats()
        assert stats.documents == 30 and stats.details["max_doc"] >= 30
        assert isinstance(again, VectorSearch)
        assert again.search_vectors(again.encode_queries(queries), 10) == before
        assert again.search(queries, 10) == before
        with pytest.raises(GenseekError, match="takes no search parameters"):
            again.search(queries, 10, {"quant": 10})  # set in the spec, not per search
    finally:
        again.close()
    with pytest.raises(GenseekError, match="top_k"):
        _index(tmp_path, tiny_model, top_k=3)


def test_windows_max_pool_over_a_long_document(tiny_model):
    """windows=n: the vector is the term-wise max of the windows' SPLADE vectors, so it
    dominates the cut encoder's; short texts are unchanged."""
    import torch

    from genseek.encoders import splade_pool

    cut = SparseEncoder(str(tiny_model), max_length=16)
    whole = SparseEncoder(str(tiny_model), max_length=16, windows=4)
    words = TOPICS[sorted(TOPICS)[0]].split()
    head = " ".join((words * 8)[:30])  # 30 tokens: two windows of 14 at least
    tail_word = next(w for t in TOPICS.values() for w in t.split() if w not in head.split())
    long_text = f"{head} {tail_word}"
    short = " ".join(words[:5])
    texts = [short, long_text, short + " wing"]
    wins = whole.windows_of(texts)
    assert [len(w) for w in wins] == [1, 3, 1]
    assert all(len(w) <= 16 for w in wins[1])
    assert wins[0] == cut.windows_of([short])[0]
    got = whole.encode_ids(texts, batch_size=2)  # windows of one text span two batches
    # expected: splade_pool of each window alone, max over the windows
    model = whole._load_model()
    rows = []
    for w in wins[1]:
        ids = torch.tensor([w])
        with torch.inference_mode():
            rows.append(splade_pool(model, ids, torch.ones_like(ids))[0])
    want = torch.stack(rows).max(dim=0).values
    want[sorted(whole.tokenizer.all_special_ids)] = 0.0
    ids, ws = got[1]
    dense = torch.zeros_like(want)
    dense[torch.from_numpy(ids)] = torch.from_numpy(ws)
    assert torch.allclose(dense, want, atol=1e-5)
    # the first window is the cut encoder's input: every weight is at least the cut one,
    # and the tail (the word that only the last window sees) raises some
    assert wins[1][0] == cut.windows_of([long_text])[0][0]
    cut_ids, cut_ws = cut.encode_ids([long_text])[0]
    assert torch.all(dense[torch.from_numpy(cut_ids)] >= torch.from_numpy(cut_ws) - 1e-6)
    assert float(dense.sum()) > float(cut_ws.sum()) + 1e-3
    for i in (0, 2):  # single-window texts: identical to the cut encoder
        a, b = got[i], cut.encode_ids([texts[i]])[0]
        assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1], atol=1e-5)  # padding changes float order
    with pytest.raises(GenseekError, match="windows must be a positive integer"):
        SparseEncoder(str(tiny_model), windows=0)


def test_windows_is_a_document_side_setting(tmp_path, tiny_model):
    import json

    docs = make_docs(10, seed=5)
    index = _index(tmp_path, tiny_model, windows=3)
    index.apply(ChangeSet(0, 1, upserts=tuple(docs)))
    index.commit(1)
    index.close()
    assert json.loads((tmp_path / "impact.json").read_text())["windows"] == 3
    with pytest.raises(GenseekError, match="windows=3"):
        _index(tmp_path, tiny_model)
    _index(tmp_path, tiny_model, windows=3).close()
    # an impact.json that does not record windows (written before it existed) is refused
    meta = json.loads((tmp_path / "impact.json").read_text())
    del meta["windows"]
    (tmp_path / "impact.json").write_text(json.dumps(meta))
    with pytest.raises(GenseekError, match="built with windows=None"):
        _index(tmp_path, tiny_model)


@pytest.mark.parametrize("params, match", [
    ({"nope": 1}, "unknown parameter"),
    ({"mode": "dense"}, "mode must be .splade. or .inference-free."),
    ({"top_k": -1}, "top_k must be"),
    ({"quant": 0}, "quant must be"),
    ({"windows": 0}, "windows must be"),
    ({"threads": 2}, "unknown parameter 'threads'"),  # older specs named it; it did nothing
    ({"threshold": "x"}, "threshold must be"),
    ({"mode": "inference-free", "idf": "/nonexistent/idf.json"}, "no IDF table"),
])
def test_bad_params(tmp_path, tiny_model, params, match):
    with pytest.raises(GenseekError, match=match):
        _index(tmp_path, tiny_model, **params)
    assert not (tmp_path / "impact.json").exists()


def test_bad_idf_table(tmp_path, tiny_model):
    bad = tmp_path / "idf.json"
    bad.write_text('{"notatoken_xyz": 1.0}')
    with pytest.raises(GenseekError, match="not in the model's vocabulary"):
        _index(tmp_path / "ix", tiny_model, mode="inference-free", idf=str(bad))


def test_incremental_equals_rebuilt_like_bm25(tmp_path, tiny_model):
    """Adds, updates and deletes through a Collection give bm25's guarantees."""
    rng = random.Random(42)
    docs = make_docs(120, seed=7)
    rng.shuffle(docs)
    initial, added = docs[:100], docs[100:]
    ids = [d.doc_id for d in docs]
    rng.shuffle(ids)
    deleted, updated = ids[:9], ids[9:18]
    fresh = {d.doc_id: d for d in make_docs(120, seed=99, version=1)}
    updates = [Document(i, fresh[i].title, fresh[i].text) for i in updated]
    final = {d.doc_id: d for d in docs}
    for d in updates:
        final[d.doc_id] = d
    for i in deleted:
        del final[i]
    spec = {"impact": f"impact(model={tiny_model},max_length=64,mode=inference-free)",
            "bm25": "bm25"}
    a = Collection.create(tmp_path / "a", spec)
    b = Collection.create(tmp_path / "b", spec)
    try:
        for start in range(0, len(initial), 40):
            a.write(initial[start:start + 40])
        a.write(added)
        a.write(updates[:4], deletes=deleted[:5])
        a.delete(deleted[5:])
        a.upsert(updates[4:])
        b.write(list(final.values()))
        queries = make_queries(15, seed=5)
        n = len(final)
        for name in ("impact", "bm25"):
            assert a.stats()["indexes"][name]["documents"] == n
        hits_a = a.search(queries, n, index="impact")
        hits_b = b.search(queries, n, index="impact")
        assert any(len(h) >= 10 for h in hits_a)
        for q, ha, hb in zip(queries, hits_a, hits_b, strict=True):
            assert [(h.doc_id, h.score) for h in ha] == [(h.doc_id, h.score) for h in hb], q
            assert not {h.doc_id for h in ha} & set(deleted), q
    finally:
        a.close()
        b.close()
    reopened = Collection.open(tmp_path / "a")  # catches up and keeps the same state
    try:
        assert reopened.stats()["indexes"]["impact"]["documents"] == len(final)
    finally:
        reopened.close()


def test_training_pool_matches_splade_pool_values_and_gradients(tiny_model):
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from genseek.encoders import splade_pool
    from genseek.indexers.sparse_train import pool_for_training

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForMaskedLM.from_pretrained(tiny_model)
    enc = tok(["wing lift drag", "cell protein gene expression in tissue"], padding=True,
              return_tensors="pt")
    mix = torch.randn(len(tok), generator=torch.Generator().manual_seed(1))
    grads = []
    for pool in (splade_pool, pool_for_training):
        model.zero_grad()
        reps = pool(model, enc["input_ids"], enc["attention_mask"])[:, :len(tok)]
        (reps * mix).sum().backward()
        grads.append((reps.detach(), model.bert.embeddings.word_embeddings.weight.grad.clone(),
                      model.bert.encoder.layer[0].attention.self.query.weight.grad.clone()))
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


def test_teacher_ensemble_and_examples():
    from genseek.indexers.sparse_train import build_examples, ensemble, minmax

    assert minmax({"a": 2.0, "b": 4.0, "c": 3.0}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    t = ensemble({"a": 10.0, "b": 5.0}, {"b": 0.9, "c": 0.1})
    assert t == pytest.approx({"a": 1.0, "b": 1.0, "c": 0.0})
    ex = build_examples(["q"], {"q": {"b": 1, "z": 1}}, {"q": t}, negatives=1, pool=5,
                        rng=random.Random(0))
    assert [e[1][0] for e in ex] == ["b", "z"]  # one example per judged positive
    assert all(e[1][1] in {"a", "c"} for e in ex)  # negatives are never judged documents
    assert ex[1][2][0] == pytest.approx(1.0)  # an unretrieved positive gets the top score


def _tiny_beir(folder, docs, queries, rng):
    """A BEIR folder: corpus, queries and qrels/train.tsv (each query judges one document)."""
    import json

    from _synth import write_jsonl

    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", docs)
    with open(folder / "queries.jsonl", "w", encoding="utf-8") as fh:
        for i, q in enumerate(queries):
            fh.write(json.dumps({"_id": f"q{i}", "text": q}) + "\n")
    judged = {f"q{i}": rng.choice(docs).doc_id for i in range(len(queries))}
    (folder / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in judged.items()))
    return judged


def test_train_sparse_end_to_end(tmp_path, tiny_model):
    """``genseek train sparse`` on a tiny model: a learned score scale, a model folder that
    an inference-free impact index opens, and clear refusals."""
    import json

    from genseek.indexers import sparse_train
    from genseek.indexers.impact import ImpactIndex

    rng = random.Random(5)
    docs = make_docs(40, seed=21)
    judged = _tiny_beir(tmp_path / "ds", docs, make_queries(12, seed=9), rng)
    teacher = {q: {d.doc_id: rng.uniform(0, 2) for d in rng.sample(docs, 10)}
               for q in [*judged, *(f"pseudo:{d.doc_id}" for d in docs)]}
    cache = tmp_path / "teacher.json"
    cache.write_text(json.dumps({"depth": 50, "lists": teacher}))
    out = tmp_path / "model"
    argv = ["sparse", "--dataset", str(tmp_path / "ds"), "--collection", str(tmp_path / "none"),
            "--out", str(out), "--base", str(tiny_model), "--teacher-cache", str(cache),
            "--batch-queries", "4", "--doc-max-length", "32", "--lr", "1e-3", "--epochs", "1"]
    assert sparse_train.main(argv) == 0
    info = json.loads((out / "train_info.json").read_text())
    assert info["steps"] == 3 and info["examples"] == 12  # 12 pairs, 4 per step, one epoch
    assert info["scale_first"] > 0 and info["scale_last"] != info["scale_first"]  # learned
    assert (out / "idf.json").is_file() and (out / "model.safetensors").is_file()
    index = ImpactIndex.open(tmp_path / "ix", {"model": str(out), "max_length": 64,
                                               "mode": "inference-free"})
    try:
        index.apply(ChangeSet(0, 40, upserts=tuple(docs)))
        index.commit(40)
        hits = index.search(make_queries(3, seed=2), 5)
        assert all(len(h) == 5 for h in hits)
    finally:
        index.close()
    with pytest.raises(GenseekError, match="exists"):
        sparse_train.main(argv)
    assert sparse_train.main([*argv, "--force", "--scale", "2"]) == 0
    info = json.loads((out / "train_info.json").read_text())
    assert info["scale_first"] == info["scale_last"] == 2.0  # a fixed scale stays fixed
    # span pseudo-queries of 5 sampled documents join the 12 judged queries
    assert sparse_train.main([*argv, "--force", "--pseudo", "5", "--ce", "0.5"]) == 0
    info = json.loads((out / "train_info.json").read_text())
    assert (info["queries"], info["pseudo_queries"], info["examples"]) == (12, 5, 17)
    assert info["steps"] == 5
    for bad in (["--scale", "0"], ["--scale", "hot"], ["--ce", "-1"], ["--pseudo", "-2"]):
        with pytest.raises(SystemExit):
            sparse_train.parse_args([*argv[1:], *bad])
    with pytest.raises(SystemExit):  # a frozen encoder with nothing else to learn
        sparse_train.parse_args([*argv[1:], "--query-weights", "idf", "--freeze-encoder"])


def test_train_sparse_learned_query_weights(tmp_path, tiny_model):
    """--query-weights learn: the saved idf.json moves away from IDF on the training
    queries' tokens only, and --freeze-encoder leaves the document encoder's weights as
    they were (so an existing corpus encoding stays valid)."""
    import json

    from safetensors.numpy import load_file

    from genseek.indexers import sparse_train

    rng = random.Random(6)
    docs = make_docs(40, seed=22)
    queries = make_queries(12, seed=10)
    judged = _tiny_beir(tmp_path / "ds", docs, queries, rng)
    teacher = {q: {d.doc_id: rng.uniform(0, 2) for d in rng.sample(docs, 10)} for q in judged}
    cache = tmp_path / "teacher.json"
    cache.write_text(json.dumps({"depth": 50, "lists": teacher}))
    out = tmp_path / "model"
    argv = ["sparse", "--dataset", str(tmp_path / "ds"), "--collection", str(tmp_path / "none"),
            "--out", str(out), "--base", str(tiny_model), "--teacher-cache", str(cache),
            "--batch-queries", "4", "--doc-max-length", "32", "--epochs", "3",
            "--query-weights", "learn", "--query-lr", "0.05", "--freeze-encoder"]
    assert sparse_train.main(argv) == 0
    info = json.loads((out / "train_info.json").read_text())
    assert info["query_weights"] == "learn" and info["steps"] == 9
    enc = SparseEncoder(str(out), max_length=64)
    learned = load_idf(out / IDF_FILE, enc.vocab)
    idf = corpus_idf(enc.tokenizer, [d.contents for d in docs])
    seen = {i for ids, _ in enc.query_ids_idf(queries) for i in ids.tolist()}
    moved = set(np.flatnonzero(np.abs(learned - idf) > 1e-4).tolist())
    assert moved and moved <= seen
    assert info["query_weights_changed"] == len(moved)
    assert np.all(learned[idf > 0] > 0)  # exp(offset) keeps every weight positive
    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
