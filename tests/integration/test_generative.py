"""Generative retrievers (GENRE, SEAL, DSI) with tiny random models built here.

The models are 2-layer Llama models with random weights and a word-level tokenizer made in a
temporary folder, so nothing is downloaded; the tests check constraints, incremental
behaviour through the Collection API, training plumbing and bad input, not quality.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from _synth import make_tiny, strict_transformers

from genseek.errors import GenseekError
from genseek.types import ChangeSet, Document

WORDS = [f"w{i}" for i in range(60)] + ["zebra", "quokka", "title", "@@", "Title:", "Docid:"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny(tmp_path_factory.mktemp("tiny"), WORDS))


def corpus(n: int = 40, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    base = [f"w{i}" for i in range(60)]
    return [Document(f"d{i}", " ".join(rng.choices(base, k=3)), " ".join(rng.choices(base, k=30)))
            for i in range(n)]


def beir_folder(data: Path, docs: list[Document], queries: dict[str, str],
                train: dict[str, str]) -> Path:
    """A BEIR folder: ``docs``, ``queries`` and train qrels ``{query id: relevant doc id}``."""
    (data / "qrels").mkdir(parents=True)
    (data / "corpus.jsonl").write_text("".join(json.dumps(
        {"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    (data / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n"
                                                for q, t in queries.items()))
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t1\n" for q, d in train.items()))
    return data


def ids(hits) -> list[str]:
    return [h.doc_id for h in hits]


# -- GENRE ---------------------------------------------------------------------------------------


def test_genre_decodes_only_live_titles_and_duplicates(tiny, tmp_path):
    from genseek.retrievers.genre import GenreIndex

    ix = GenreIndex.open(tmp_path / "g", {"model": tiny, "num_beams": 6, "max_new_tokens": 8})
    docs = (Document("a", "w1 w2", "x", version=1), Document("b", "w1 w3", "y", version=2),
            Document("c", "w1 w2", "z", version=3))
    ix.apply(ChangeSet(0, 3, docs))
    ix.commit(3)
    got = ix.search(["w5 w6"], 10)[0]
    assert sorted(ids(got)) == ["a", "b", "c"]  # every title decoded; duplicates -> both docs
    by = {h.doc_id: h.score for h in got}
    assert by["a"] == by["c"]  # one title, one score
    ix.apply(ChangeSet(3, 5, (Document("n", "zebra quokka", "t", version=5),),
                       removed=(("a", 1),), deleted_ids=frozenset({"a"})))
    ix.commit(5)
    got = ids(ix.search(["w5 w6"], 10)[0])
    assert "a" not in got and "n" in got and "c" in got
    ix.close()
    ix = GenreIndex.open(tmp_path / "g", {"model": tiny, "num_beams": 6, "max_new_tokens": 8})
    assert ix.applied_seq == 5 and sorted(ids(ix.search(["w5"], 10)[0])) == ["b", "c", "n"]
    ix.close()


def test_genre_missing_and_empty_titles(tiny, tmp_path):
    from genseek.retrievers.genre import GenreIndex

    ix = GenreIndex.open(tmp_path / "g", {"model": tiny})
    with pytest.raises(GenseekError, match="has no title"):
        ix.apply(ChangeSet(0, 2, (Document("a", "w1", "x", version=1),
                                  Document("b", "", "y", version=2))))
    assert ix.table.rows == {}  # nothing half-written
    with pytest.raises(GenseekError, match="tokenises to no token"):
        ix.apply(ChangeSet(0, 1, (Document("a", "~ ~~", "x", version=1),)))
    ix.close()
    ix = GenreIndex.open(tmp_path / "s", {"model": tiny, "missing_title": "skip"})
    ix.apply(ChangeSet(0, 2, (Document("a", "w1", "x", version=1),
                              Document("b", "", "y", version=2))))
    ix.commit(2)
    stats = ix.stats()
    assert stats.details["skipped"] == 1 and stats.documents == 1
    assert stats.to_dict()["skipped"] == 1 and stats.type == "genre"
    assert ix.search([], 5) == [] and ix.search(["w1"], 0) == [[]]
    ix.close()


def test_bad_params_and_model_paths(tiny, tmp_path):
    from genseek.retrievers.dsi import DsiIndex
    from genseek.retrievers.genre import GenreIndex

    with pytest.raises(GenseekError, match="does not exist"):
        GenreIndex.open(tmp_path / "g", {"model": str(tmp_path / "nope")})
    with pytest.raises(GenseekError, match="no config.json"):
        GenreIndex.open(tmp_path / "g2", {"model": str(tmp_path)})
    with pytest.raises(GenseekError, match="unknown parameter"):
        GenreIndex.open(tmp_path / "g3", {"model": tiny, "beams": 3})
    with pytest.raises(GenseekError, match="scheme must be .*'semantic', not 'fancy'"):
        DsiIndex.open(tmp_path / "d", {"model": tiny, "scheme": "fancy"})


def test_query_longer_than_context_is_truncated(tmp_path):
    from genseek.models import load_lm
    from genseek.retrievers.genre import GenreIndex
    from genseek.retrievers.prompts import build_prompt

    small = str(make_tiny(tmp_path / "m", WORDS, context=48))
    lm = load_lm(small)
    long_query = " ".join(f"w{i % 60}" for i in range(500))
    ids_ = build_prompt(lm, "find", long_query, "Title:", reserve=9)
    assert len(ids_) <= 48 - 9
    ix = GenreIndex.open(tmp_path / "g", {"model": small, "max_new_tokens": 8})
    ix.apply(ChangeSet(0, 1, (Document("a", "w1 w2", "x", version=1),)))
    ix.commit(1)
    assert ids(ix.search([long_query], 3)[0]) == ["a"]
    with pytest.raises(GenseekError, match="prompt template alone"):
        build_prompt(lm, " ".join(["w1"] * 60), "q", reserve=9)
    ix.close()


# -- SEAL ----------------------------------------------------------------------------------------


def test_seal_scoring_functions():
    from genseek.retrievers.seal import aggregate, key_weight

    assert key_weight(-20.0, 10, 1000) == 0.0  # unlikely under the LM, frequent in the corpus
    w_rare, w_common = key_weight(-2.0, 1, 10_000), key_weight(-2.0, 100, 10_000)
    assert w_rare > w_common > 0
    s = aggregate({1: [(2.0, (5, 6)), (1.0, (6,))], 2: [(2.0, (5, 6)), (1.0, (7,))]}, alpha=2.0)
    assert s[1] == pytest.approx(4.0)  # (6,) is fully covered by (5, 6): no credit
    assert s[2] == pytest.approx(5.0)
    keys = {1: [(2.0, (5, 6)), (1.0, (6, 8))]}  # (6, 8) is half covered
    assert aggregate(keys, alpha=1.0)[1] == pytest.approx(2.5)
    assert aggregate(keys, alpha=1.0, beta=0.5)[1] == pytest.approx(2.75)
    assert aggregate(keys, alpha=1.0, beta=0.0)[1] == pytest.approx(3.0)  # no discount


def test_seal_keyset_merge_keeps_best_logprob_and_prefixes():
    from genseek.retrievers.seal import KeySet

    ks = KeySet({(1, 2): -1.0, (3,): -4.0}, unigrams=[((3,), -2.0), ((4,), -3.0)],
                query=[((9, 9), -5.0), ((1, 2), -0.5)])
    assert ks.merged(0, 0) == {(1, 2): -1.0, (3,): -4.0}
    assert ks.merged(1, 0) == {(1, 2): -1.0, (3,): -2.0}  # the unigram's higher log-prob
    assert ks.merged(2, 1) == {(1, 2): -1.0, (3,): -2.0, (4,): -3.0, (9, 9): -5.0}
    assert ks.merged(-1, 5)[(1, 2)] == -0.5


def test_genre_and_seal_decoding_emit_no_transformers_deprecation(tiny, tmp_path):
    """Beam search, SEAL's prompt-cache rescoring and the loaders use the current cache API:
    transformers' deprecation warnings are errors here, its deprecation log lines counted."""
    from genseek.retrievers.genre import GenreIndex
    from genseek.retrievers.seal import SealIndex

    docs = tuple(Document(d.doc_id, d.title, d.text, version=i + 1)
                 for i, d in enumerate(corpus(12)))
    with strict_transformers() as logged:
        for cls in (GenreIndex, SealIndex):
            ix = cls.open(tmp_path / cls.kind, {"model": tiny, "num_beams": 3,
                                                "max_new_tokens": 12})
            ix.apply(ChangeSet(0, len(docs), docs))
            hits = ix.search([docs[2].title, "w5 w7"], 5)
            assert len(hits) == 2 and (hits[0] or cls is SealIndex)
            ix.close()
    assert logged == []


def test_seal_search_is_decode_then_rank(tiny, tmp_path):
    """search() = rank(decode()) = score_keys(collect_keys()); search parameters apply."""
    from genseek.params import GenreSearchParams, SealSearchParams
    from genseek.retrievers.seal import SealIndex

    ix = SealIndex.open(tmp_path / "s", {"model": tiny, "num_beams": 3, "max_new_tokens": 3})
    docs = corpus()
    ix.apply(ChangeSet(0, len(docs), tuple(Document(d.doc_id, d.title, d.text, version=i + 1)
                                           for i, d in enumerate(docs))))
    queries = [docs[3].text[:40], "w5 w7 w9"]
    p = ix._search_params({"beta": 0.0, "max_query_keys": 4})
    keysets = ix.collect_keys(queries, ix.store.provider(), p)
    total = ix.store.total_tokens
    want = [ix.score_keys(ks.merged(int(p["unigrams"]), 4), 10, total, p) for ks in keysets]
    given = SealSearchParams(beta=0.0, max_query_keys=4)
    assert ix.search(queries, 10, given) == want
    assert ix.rank(ix.decode(queries, {"max_query_keys": 4}), 10, given) == want
    assert ix.store._counts and ix.store._located  # answers kept for the next query
    ix.store.clear_caches()  # a cold start gives the same answers
    assert not ix.store._counts and ix.search(queries, 10, given) == want
    ix.apply(ChangeSet(1, 2, (Document("zz", "zebra", "quokka quokka", version=99),)))
    assert not ix.store._counts and not ix.store._located  # dropped on a change
    assert ix.search(["quokka"], 10, SealSearchParams(unigrams=0))[0][0].doc_id == "zz"
    assert all(len(ks.query) <= 4 for ks in keysets) and keysets[0].beam
    with pytest.raises(GenseekError, match="unknown search parameter"):
        ix.decode(queries, {"gamma": 1})
    with pytest.raises(GenseekError, match="expected SealSearchParams"):
        ix.search(queries, 10, GenreSearchParams(num_beams=2))  # type: ignore[arg-type]
    ix.close()


@pytest.mark.slow
def test_seal_collection_upserts_and_deletes(tiny, tmp_path):
    from genseek.collection import Collection

    spec = f"seal(model={tiny},num_beams=4,max_new_tokens=4)"
    with Collection.create(tmp_path / "c", {"seal": spec, "genre": f"genre(model={tiny},"
                                                                     "num_beams=48)"}) as c:
        docs = corpus()
        c.upsert(docs)
        c.upsert([Document("new", "zebra w1", "quokka w2 w3")])
        for name in ("seal", "genre"):
            got = ids(c.search("quokka zebra", 50, index=name))
            assert "new" in got, name
        assert ids(c.search("quokka", 5, index="seal"))[0] == "new"
        c.delete(["new", "d0", "d1"])
        c.upsert([Document("d2", "zebra", "fresh quokka text w9")])  # replaces d2
        for name in ("seal", "genre"):
            got = ids(c.search(["quokka", docs[0].text, docs[2].text], 50, index=name)[0])
            assert not {"new", "d0", "d1"} & set(got), name
        assert ids(c.search("quokka", 5, index="seal"))[0] == "d2"
    with Collection.open(tmp_path / "c") as c:  # reopen: same answers from the stored keys
        got = ids(c.search("quokka", 50, index="seal"))
        assert got[0] == "d2" and "new" not in got


def test_seal_empty_corpus(tiny, tmp_path):
    from genseek.retrievers.seal import SealIndex

    ix = SealIndex.open(tmp_path / "s", {"model": tiny})
    assert ix.search(["anything"], 10) == [[]]
    ix.apply(ChangeSet(0, 1, (Document("e", "", ""),)))  # no text: nothing to index
    assert ix.search(["anything"], 10) == [[]]
    ix.close()


@pytest.mark.slow
def test_store_is_committed_with_the_table_and_rebuilt_when_they_differ(tiny, tmp_path):
    """The docid store is committed with the key table's sequence number: a reopened index
    loads it as committed (delta and tombstones included); after a crash between the table's
    commit and the store's, or with an unreadable store, it is rebuilt from keys.sqlite and
    answers as before."""
    import numpy as np

    from genseek.retrievers.genre import GenreIndex
    from genseek.retrievers.seal import SealIndex

    docs = tuple(Document(d.doc_id, d.title, d.text, version=i + 1)
                 for i, d in enumerate(corpus(12)))
    queries = [docs[2].title, "zebra quokka", docs[5].text[:30]]
    for cls in (GenreIndex, SealIndex):
        spec = {"model": tiny, "num_beams": 4, "max_new_tokens": 6}
        path = tmp_path / cls.kind
        ix = cls.open(path, spec)
        ix.apply(ChangeSet(0, 12, docs))
        ix.commit(12)
        ix.apply(ChangeSet(12, 14, (Document("n", "zebra quokka", "quokka zebra w1", version=13),),
                           removed=(("d0", 1),), deleted_ids=frozenset({"d0"})))
        ix.commit(14)
        stats = ix.stats()
        assert (stats.details["main_docs"], stats.details["delta_docs"],
                stats.details["tombstones"], stats.documents) == (12, 1, 1, 12)
        want = ix.search(queries, 20)
        assert not {"d0"} & {h.doc_id for hits in want for h in hits}
        ix.close()
        manifest = json.loads((path / "store" / "store.json").read_text())
        assert manifest["seq"] == 14 and manifest["delta"] and manifest["tombstones"]
        ix = cls.open(path, spec)  # loaded as committed, not rebuilt
        assert (ix.store.main.name, ix.store.delta.name) == (manifest["main"], manifest["delta"])
        assert ix.stats().details == stats.details and ix.search(queries, 20) == want
        ix.close()
        (path / "store" / manifest["main"] / "labels.npy").write_bytes(b"not an array")
        ix = cls.open(path, spec)  # unreadable: rebuilt as one main segment, same answers
        assert ix.store.delta is None and not ix.store.dead.any() and ix.store.seq == 14
        assert ix.search(queries, 20) == want
        # a crash after the table's commit, before the store's
        ix.apply(ChangeSet(14, 15, (Document("m", "w3 zebra", "zebra w2 w4", version=15),)))
        ix.table.commit(15)
        ix.close()
        ix = cls.open(path, spec)
        assert ix.store.seq == 15 and 15 in ix.store
        assert {v: t.tolist() for v, t in ix.store.items()} == {
            v: np.asarray(k).tolist() for v, (_, k) in ix.table.rows.items()}
        ix.close()


def test_seal_tombstones_are_exact(tiny, tmp_path):
    """A deleted document's n-grams no longer count, decode or locate before any merge, and
    the tombstones survive a reopen."""
    from genseek.retrievers.seal import SealIndex

    docs = [Document(d.doc_id, d.title, d.text, version=i + 1) for i, d in enumerate(corpus(20))]
    docs.append(Document("z", "zebra", "quokka zebra quokka", version=21))
    spec = {"model": tiny, "num_beams": 4, "max_new_tokens": 4, "unigrams": 0}
    ix = SealIndex.open(tmp_path / "s", spec)
    ix.apply(ChangeSet(0, 21, tuple(docs)))
    ix.commit(21)
    quokka = ix.lm.tokenizer.encode(" quokka", add_special_tokens=False)
    assert len(quokka) == 1 and ix.store.count(quokka) == 2
    assert ix.search(["quokka"], 5)[0][0].doc_id == "z"
    tokens, z_tokens = ix.store.total_tokens, len(ix.table.rows[21][1])
    ix.apply(ChangeSet(21, 22, (), removed=(("z", 21),), deleted_ids=frozenset({"z"})))
    ix.commit(22)
    for _ in range(2):
        assert ix.stats().details["tombstones"] == 1  # tombstoned, not merged
        assert ix.store.count(quokka) == 0 and not ix.store.present()[quokka[0]]
        assert ix.store.total_tokens == tokens - z_tokens
        assert ix.store.locate(quokka).size == 0
        cand = ix.store.provider().step(ix.store.provider().root(1, None))
        assert quokka[0] not in cand.tokens[0].tolist()
        assert "z" not in ids(ix.search(["quokka zebra"], 50)[0])
        ix.close()
        ix = SealIndex.open(tmp_path / "s", spec)
    ix.close()


# -- DSI -----------------------------------------------------------------------------------------


def test_dsi_schemes_and_trie(tiny, tmp_path):
    import numpy as np

    from genseek.retrievers.dsi import DsiIndex, hierarchical_kmeans

    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(450, 8)).astype("float32")
    paths, cents = hierarchical_kmeans(vecs, k=10, leaf_size=100)
    assert len({tuple(p) for p in paths}) == 450  # unique ids
    assert all(len(p) >= 3 for p in paths) and "" in cents
    leaves: dict[tuple, int] = {}
    for p in paths:
        leaves[tuple(p[:-2])] = leaves.get(tuple(p[:-2]), 0) + 1
    assert max(leaves.values()) <= 100
    for scheme in ("naive", "atomic"):
        ix = DsiIndex.open(tmp_path / scheme, {"model": tiny, "scheme": scheme, "num_beams": 5})
        docs = tuple(Document(f"{100 + i}", "t", "w1", version=i + 1) for i in range(4))
        ix.apply(ChangeSet(0, 4, docs))
        ix.commit(4)
        keys = [tuple(k.tolist()) for _, k in ix.table.rows.values()]
        assert len(set(keys)) == 4
        got = ids(ix.search(["w1 w2"], 10)[0])
        assert sorted(got) == ["100", "101", "102", "103"]  # only valid docids decode
        ix.close()


@pytest.mark.slow
def test_train_examples_in_bf16_autocast_tracks_fp32_with_fp32_weights(tiny):
    import torch

    from genseek.models import load_lm
    from genseek.retrievers.generative_train import train_examples
    from genseek.retrievers.prompts import lora_wrap

    runs = {}
    for autocast in (False, True):
        lm = load_lm.__wrapped__(tiny, "cpu")
        torch.manual_seed(0)
        model = lora_wrap(lm, dropout=0.0)
        enc = lm.tokenizer
        ex = [(enc.encode(f"w{i} w{i + 1}", add_special_tokens=False),
               enc.encode(f"w{2 * i}", add_special_tokens=False) + [lm.eos_id]) for i in range(4)]
        runs[autocast] = train_examples(model, ex, pad_id=lm.pad_id, steps=20, batch=4, lr=1e-2,
                                        max_len=16, progress=False, autocast=autocast)
        trained = [p for p in model.parameters() if p.requires_grad]
        assert trained and all(p.dtype == torch.float32 for p in trained)  # fp32 master weights
    fp32, bf16 = runs[False], runs[True]
    assert bf16["loss_last"] < bf16["loss_first"] - 0.2  # it learns
    assert abs(bf16["loss_first"] - fp32["loss_first"]) < 0.02
    assert abs(bf16["loss_last"] - fp32["loss_last"]) < 0.1  # and follows the fp32 run


def test_train_dsi_then_index(tiny, tmp_path):
    from genseek.retrievers.dsi import DsiIndex
    from genseek.retrievers.generative_train import main

    docs = corpus(12)
    data = beir_folder(tmp_path / "ds", docs, {"q1": "w1 w2"}, {"q1": "d3"})
    out = tmp_path / "model"
    rc = main(["dsi", "--dataset", str(data), "--out", str(out), "--model", tiny,
               "--scheme", "atomic", "--steps", "3", "--batch", "4", "--max-len", "48"])
    assert rc == 0 and (out / "docids.json").is_file() and (out / "genseek_model.json").is_file()
    (tmp_path / "new.txt").write_text("d11\n")
    rc = main(["dsi", "--dataset", str(data), "--out", str(tmp_path / "m2"), "--continue-from",
               str(out), "--new-docs", str(tmp_path / "new.txt"), "--steps", "2", "--sam",
               "0.05", "--max-len", "48", "--autocast", "bf16"])
    assert rc == 0
    meta = json.loads((tmp_path / "m2" / "genseek_model.json").read_text())
    # DSI++ defaults: 4 replayed pseudo-queries of earlier documents per new example, lr 3e-4
    assert meta["lr"] == 3e-4 and meta["autocast"] == "bf16" and meta["new_docs"] == 1
    assert meta["replayed"] == 4 * (meta["examples"] - meta["replayed"]) > 0
    ix = DsiIndex.open(tmp_path / "ix", {"model": str(tmp_path / "m2"), "num_beams": 4})
    assert ix.params["scheme"] == "atomic"
    ix.apply(ChangeSet(0, 12, tuple(Document(d.doc_id, d.title, d.text, version=i + 1)
                                    for i, d in enumerate(docs))))
    ix.commit(12)
    mapping = json.loads((out / "docids.json").read_text())["ids"]
    assert [int(t) for t in ix.table.rows[4][1]] == mapping["d3"]  # the model's own ids
    assert len(ix.search(["w1 w2"], 4)[0]) == 4
    ix.close()
    assert main(["dsi", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(GenseekError, match="semantic scheme"):
        from genseek.models import load_lm
        from genseek.retrievers.dsi import digit_ids

        class Bad:
            def encode(self, s, add_special_tokens=False):
                return [1, 2]

        digit_ids(Bad())
    assert load_lm(tiny).eos_id == 2


def test_train_seal_holdout_and_spans(tiny, tmp_path):
    """--holdout keeps N train queries out (ids in genseek_model.json); --spans per pair."""
    from genseek.retrievers.generative_train import main

    docs = corpus(8)
    data = beir_folder(tmp_path / "ds", docs, {f"q{i}": docs[i].text[:20] for i in range(6)},
                       {f"q{i}": f"d{i}" for i in range(6)})
    common = ["--dataset", str(data), "--model", tiny, "--steps", "1", "--batch", "2",
              "--max-len", "48", "--span-len", "4"]
    assert main(["seal", "--out", str(tmp_path / "a"), "--spans", "3", *common]) == 0
    meta = json.loads((tmp_path / "a" / "genseek_model.json").read_text())
    assert meta["examples"] == 6 * 3 and "holdout" not in meta
    assert main(["seal", "--out", str(tmp_path / "b"), "--holdout", "2", *common]) == 0
    meta = json.loads((tmp_path / "b" / "genseek_model.json").read_text())
    held = meta["holdout"]["queries"]
    assert meta["holdout"]["split"] == "train" and len(held) == 2 == len(set(held))
    assert meta["examples"] == (6 - 2) * 2  # the held-out queries gave no example
    assert main(["seal", "--out", str(tmp_path / "c"), "--holdout", "2", "--seed", "0",
                 *common]) == 0  # the same seed holds out the same queries
    assert json.loads((tmp_path / "c" / "genseek_model.json").read_text())["holdout"][
        "queries"] == held
    assert main(["seal", "--out", str(tmp_path / "d"), "--holdout", "6", *common]) == 2
    assert main(["seal", "--out", str(tmp_path / "e"), "--spans", "0", *common]) == 2
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    # genre --index-docs: one span -> title example per corpus document (all, or N of them)
    assert main(["genre", "--out", str(tmp_path / "g1"), "--pseudo", "0", "--index-docs", "-1",
                 *common]) == 0
    assert json.loads((tmp_path / "g1" / "genseek_model.json").read_text())["examples"] == 6 + 8
    assert main(["genre", "--out", str(tmp_path / "g2"), "--pseudo", "0", "--index-docs", "3",
                 *common]) == 0
    assert json.loads((tmp_path / "g2" / "genseek_model.json").read_text())["examples"] == 6 + 3
    assert main(["genre", "--out", str(tmp_path / "g3"), "--index-docs", "-2", *common]) == 2
    assert main(["dsi", "--out", str(tmp_path / "g4"), "--index-docs", "3", *common]) == 2
    assert not (tmp_path / "g3").exists() and not (tmp_path / "g4").exists()
    # seal --index-docs: one unsupervised span -> another span example per corpus document
    assert main(["seal", "--out", str(tmp_path / "s1"), "--index-docs", "-1", *common]) == 0
    assert json.loads((tmp_path / "s1" / "genseek_model.json").read_text())["examples"] == \
        6 * 2 + 8
    # --continue-from goes on training a seal model: the new folder names it as its base
    assert main(["seal", "--out", str(tmp_path / "s2"), "--continue-from", str(tmp_path / "s1"),
                 *common]) == 0
    meta = json.loads((tmp_path / "s2" / "genseek_model.json").read_text())
    assert meta["base"] == str(tmp_path / "s1") and meta["lr"] == 3e-4


def test_span_pair_gives_disjoint_spans_of_the_text(tiny):
    """SEAL's unsupervised pairs: query span and target span come from the text, never overlap."""
    from genseek.models import load_lm
    from genseek.retrievers.generative_train import disjoint_windows, span_pair

    rng = random.Random(0)
    for _ in range(500):
        n, ql, sl = rng.randrange(1, 40), rng.randrange(1, 10), rng.randrange(1, 10)
        got = disjoint_windows(n, rng, ql, sl)
        if n < ql + sl:
            assert got is None
            continue
        q, t = got
        assert 0 <= q <= n - ql and 0 <= t <= n - sl
        assert t + sl <= q or t >= q + ql  # disjoint
    tok = load_lm(tiny).tokenizer
    for seed, doc in enumerate(corpus(10, seed=3)):
        ids = tok.encode(" " + doc.text, add_special_tokens=False)
        query, target = span_pair(tok, doc.text, random.Random(seed), 6, 5)
        assert query.strip() and len(target) == 5
        assert any(ids[i:i + 5] == target for i in range(len(ids)))  # a window of the text
    assert span_pair(tok, "w1 w2", random.Random(0), 6, 5) is None  # too short for two
