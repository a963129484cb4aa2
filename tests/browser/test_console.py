"""The search console (``/ui/``) end to end: headless Chromium against a real ``genseek serve``.

Each test opens a fresh browser context; the key is typed in by an init script except in the
key test. Screenshots of each view go to docs/img with GENSEEK_UPDATE_SCREENSHOTS=1.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, quote, urlparse

import httpx
import pytest
from _console import MISSING, QRELS, QUERIES, READ_KEY, WRITE_KEY, new_page

if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.slow


def ui(server, **params) -> str:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
    return f"{server.url}/ui/" + (f"?{query}" if query else "")


def wait_results(page, query: str):
    page.wait_for_selector(f"#columns[data-query={json.dumps(query)}] .hit")


def column_names(page) -> list[str]:
    return page.locator("#columns .column .colname").all_inner_texts()


def column_ids(page, n: int) -> list[str]:
    return page.locator(f"#columns .column:nth-child({n}) .hit").evaluate_all(
        "nodes => nodes.map(n => n.dataset.doc)")


def url_params(page) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def test_search_by_typing_shows_each_index_beside_the_fusion(server, page, shots):
    page.goto(ui(server, collection="papers"))
    expect(page.locator("#collection")).to_have_value("papers")
    page.locator("#q").press_sequentially("wing lift", delay=30)
    wait_results(page, "wing lift")
    assert column_names(page) == ["bm25", "dense", "fused (rrf)"]
    bm25, dense, fused = (column_ids(page, n) for n in (1, 2, 3))
    assert bm25[0] == "a1" and fused[0] == "a1" and "a1" in dense[:3]
    assert len(fused) == 10
    first = page.locator("#columns .column.final .hit").first
    marks = {m.lower() for m in first.locator("mark").all_inner_texts()}
    assert marks <= {"wing", "lift"} and marks, marks
    # its rank in the other columns, and each stage's latency
    expect(first.locator(".others")).to_contain_text("bm25 #1")
    expect(first.locator(".others")).to_contain_text("dense #")
    for took in page.locator("#columns .took").all_inner_texts():
        assert re.search(r"\d ms · \d+ hits", took), took
    expect(page.locator("#search-status")).to_contain_text("retrieve")
    # titles and snippets of stage hits the fusion did not return are fetched
    page.wait_for_function("() => [...document.querySelectorAll('#columns .snippet')]"
                           ".every(n => n.textContent.length > 0)")
    assert url_params(page) == {"collection": "papers", "q": "wing lift"}
    page.screenshot(path=str(shots / "console-search.png"))
    # document text is shown as text: a title holding markup stays characters
    page.locator("#q").fill("markup tags")
    page.locator("#q").press("Enter")
    wait_results(page, "markup tags")
    expect(page.locator("#columns .column.final .hit").first.locator(".title")).to_have_text(
        "<script>alert(1)</script> & markup")
    assert page.locator("#columns script, #columns b").count() == 0
    assert page.errors == []


def test_a_deep_link_opens_on_its_results_and_history_works(server, page):
    page.goto(ui(server, collection="papers", q="protein folding"))
    wait_results(page, "protein folding")
    assert column_ids(page, 3)[0] == "b1"
    first = page.evaluate("window.__genseekFirstResults")
    assert isinstance(first, (int, float)) and first > 0  # performance.now(): may be whole
    page.locator("#q").fill("cache memory")
    page.locator("#q").press("Enter")
    wait_results(page, "cache memory")
    assert url_params(page)["q"] == "cache memory"
    page.go_back()
    wait_results(page, "protein folding")
    expect(page.locator("#q")).to_have_value("protein folding")
    page.go_forward()
    wait_results(page, "cache memory")


def test_the_pipeline_editor_runs_edited_json_and_adds_a_rerank_stage(server, page, shots):
    page.goto(ui(server, collection="papers", q="wing lift"))
    wait_results(page, "wing lift")
    page.locator("#editor summary").click()
    pipeline = json.loads(page.locator("#pipeline").input_value())
    assert [s["index"] for s in pipeline["retrieve"]] == ["bm25", "dense"]
    assert pipeline["k"] == 10 and pipeline["fusion"]["method"] == "rrf"
    pipeline["retrieve"] = [{"index": "bm25", "k": 50}]
    pipeline["k"] = 3
    page.locator("#pipeline").fill(json.dumps(pipeline, indent=2))
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelectorAll('#columns .column').length === 2")
    wait_results(page, "wing lift")
    assert column_names(page) == ["bm25", "results"]
    assert len(column_ids(page, 2)) == 3
    assert json.loads(url_params(page)["pipeline"]) == pipeline
    # a rerank stage from the form
    page.locator("#reranker").fill("biencoder")
    page.locator("#rerank-depth").fill("5")
    page.locator("#add-rerank").click()
    edited = json.loads(page.locator("#pipeline").input_value())
    assert edited["rerank"] == {"reranker": "biencoder", "depth": 5}
    page.locator("#run").click()
    expect(page.locator("#columns .column.final .colname")).to_have_text("rrf → biencoder",
                                                                         timeout=120_000)
    expect(page.locator("#search-status")).to_contain_text("rerank")
    page.locator("#editor").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "console-pipeline.png"))
    # the deep link of the edited pipeline opens on the same results
    link = page.url
    other = new_page(page.context.browser)
    try:
        other.goto(link)
        wait_results(other, "wing lift")
        expect(other.locator("#columns .column.final .colname")).to_have_text("rrf → biencoder")
        assert json.loads(other.locator("#pipeline").input_value()) == edited
    finally:
        other.context.close()


def test_a_bad_pipeline_is_one_readable_message(server, page, shots):
    page.goto(ui(server, collection="papers", q="wing lift"))
    wait_results(page, "wing lift")
    page.locator("#editor summary").click()
    error = page.locator("#error")
    page.locator("#pipeline").fill('{"retrieve": [\n  {"index": "bm25",}\n]}')
    page.locator("#run").click()
    expect(error).to_be_visible()
    expect(error).to_contain_text("pipeline: invalid JSON at line 2, column")
    expect(page.locator("#pipeline")).to_have_attribute("aria-invalid", "true")
    page.screenshot(path=str(shots / "console-bad-pipeline.png"))
    # valid JSON the API refuses: its message line
    page.locator("#pipeline").fill('{"retrieve": [{"index": "bm25", "k": 0}]}')
    page.locator("#run").click()
    expect(error).to_contain_text("422: pipeline.retrieve.0.k: Input should be greater than or equal to 1")
    page.locator("#pipeline").fill('{"retrieve": [{"index": "nope"}]}')
    page.locator("#run").click()
    expect(error).to_contain_text("404: no index named 'nope'")
    page.locator("#pipeline").fill('[1, 2]')
    page.locator("#run").click()
    expect(error).to_contain_text("pipeline: expected a JSON object")
    # the results of the last good search are still on the page
    assert page.locator("#columns .hit").count() > 0


def test_the_document_view_shows_the_stored_document_and_its_ranks(server, page, shots):
    page.goto(ui(server, collection="papers", q="wing lift"))
    wait_results(page, "wing lift")
    page.locator("#columns .column.final .hit .title").first.click()
    expect(page.locator("#view-doc")).to_be_visible()
    expect(page.locator("#doc-title")).to_have_text("Wing lift at low speed")
    assert url_params(page) == {"collection": "papers", "q": "wing lift", "view": "doc",
                                "doc": "a1"}
    expect(page.locator("#doc-text")).to_contain_text("angle of attack")
    expect(page.locator("#doc-text mark").first).to_be_visible()
    assert json.loads(page.locator("#doc-meta").inner_text()) == {"topic": "aero", "year": 2019}
    expect(page.locator("#doc-facts")).to_contain_text("version")
    rows = page.locator("#doc-ranks tbody tr")
    expect(rows).to_have_count(3)
    assert rows.nth(0).inner_text().split("\t")[:2] == ["bm25", "#1"]
    expect(rows.nth(2)).to_contain_text("fused (rrf)")
    page.screenshot(path=str(shots / "console-document.png"))
    page.go_back()
    wait_results(page, "wing lift")
    # a deep link to a document that is not there
    page.goto(ui(server, collection="papers", view="doc", doc="missing-doc"))
    expect(page.locator("#error")).to_contain_text("404: no document 'missing-doc'")


def test_the_collection_view_is_live(server, page, shots):
    page.goto(ui(server, collection="papers", view="collection"))
    facts = page.locator("#coll-facts")
    expect(facts).to_contain_text("documents22")
    expect(page.locator("#coll-health")).to_have_text("healthy: every index current")
    rows = page.locator("#coll-indexes tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("bm25")
    expect(rows.nth(1)).to_contain_text("ready")
    expect(facts).to_contain_text("server memory (RSS)")
    page.screenshot(path=str(shots / "console-collection.png"))
    polls = int(page.locator("#view-collection").get_attribute("data-polls"))
    extra = [{"id": f"live{i}", "text": f"bulk loaded document {i}"} for i in range(3)]
    with httpx.Client(base_url=server.url, headers={"X-API-Key": WRITE_KEY}, timeout=120) as http:
        http.post("/collections/papers/documents",
                  json={"documents": extra, "refresh": True}).raise_for_status()
        try:
            expect(facts).to_contain_text("documents25", timeout=10_000)
            assert int(page.locator("#view-collection").get_attribute("data-polls")) > polls
        finally:
            http.post("/collections/papers/documents/delete",
                      json={"ids": [d["id"] for d in extra], "refresh": True}).raise_for_status()
    expect(facts).to_contain_text("documents22", timeout=10_000)
    # polling stops when the view is left
    page.locator("nav a[data-view=search]").click()
    expect(page.locator("#view-search")).to_be_visible()
    before = page.locator("#view-collection").get_attribute("data-polls")
    page.wait_for_timeout(3200)
    assert page.locator("#view-collection").get_attribute("data-polls") == before


def test_the_evaluation_view_compares_two_pipelines(server, page, shots, tmp_path):
    page.goto(ui(server, collection="papers", view="eval"))
    page.locator("#dataset").select_option("tiny")
    expect(page.locator("#split")).to_have_value("test")
    page.locator("#eval-run").click()
    table = page.locator("#eval-table")
    expect(table).to_be_visible(timeout=60_000)
    expect(table).to_contain_text("nDCG@10")
    expect(table).to_contain_text("R@100")
    expect(table.locator("tbody tr")).to_have_count(3)  # A, B, B − A
    expect(table.locator("tr.diff")).to_contain_text("wins/ties/losses")
    expect(table.locator("tr.diff")).to_contain_text("p =")
    bars = page.locator("#eval-chart .bar")
    expect(bars).to_have_count(len(QUERIES))
    diffs = [float(re.search(r": ([+−-]?[\d.]+)", bars.nth(i).get_attribute("aria-label"))
                   .group(1).replace("−", "-")) for i in range(len(QUERIES))]
    assert diffs == sorted(diffs, reverse=True)
    # a click on a bar: the query's two result lists, relevant documents marked
    bars.first.click()
    compare = page.locator("#eval-compare")
    qid = bars.first.get_attribute("data-qid")
    expect(compare.locator(".column")).to_have_count(2)
    expect(compare).to_contain_text(QUERIES[qid])
    relevant = compare.locator(".hit.relevant")
    expect(relevant.first).to_be_visible()
    marked = set(relevant.evaluate_all("nodes => nodes.map(n => n.dataset.doc)"))
    assert marked <= set(QRELS[qid]) and marked
    page.locator("#eval-status").evaluate("n => n.scrollIntoView()")
    page.screenshot(path=str(shots / "console-eval.png"))
    # by keyboard: focus another bar, press Enter
    bars.last.focus()
    page.keyboard.press("Enter")
    expect(compare).to_have_attribute("data-qid", bars.last.get_attribute("data-qid"))
    # uploaded qrels and queries instead of a server dataset
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("q1\ta1\t1\nq3\tc1\t1\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "wing lift"}\n{"_id": "q3", "text": "cache"}\n')
    page.locator("#dataset").select_option("")
    page.locator("#qrels-file").set_input_files(str(qrels))
    page.locator("#queries-file").set_input_files(str(queries))
    page.locator("#eval-run").click()
    expect(page.locator("#eval-table caption")).to_contain_text("2 judged queries")
    expect(bars).to_have_count(2)


def test_a_wrong_key_asks_for_one_and_the_right_one_works(server, browser, shots):
    page = new_page(browser, key=None)
    try:
        page.goto(ui(server, collection="papers", q="wing lift"))
        error = page.locator("#error")
        expect(error).to_contain_text("This server needs an API key (401:")
        expect(page.locator("#apikey")).to_be_focused()
        page.locator("#apikey").fill("not-a-key")
        page.locator("#apikey").press("Enter")
        expect(error).to_contain_text("The API key was not accepted (401: unknown API key)")
        page.screenshot(path=str(shots / "console-key.png"))
        page.locator("#apikey").fill(READ_KEY)
        page.locator("#keyform button").click()
        wait_results(page, "wing lift")
        expect(error).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('genseek.apiKey')") == READ_KEY
        assert page.evaluate("localStorage.length") == 0
        # the read key cannot write: the server's 403 is shown if the page is asked to
        expect(page.locator("#forget-key")).to_be_visible()
        page.locator("#forget-key").click()
        expect(error).to_contain_text("This server needs an API key")
    finally:
        page.context.close()


def test_an_unknown_collection_and_api_failures_are_messages(server, page):
    page.goto(ui(server, collection="nope", q="wing lift"))
    error = page.locator("#error")
    expect(error).to_contain_text("No collection named 'nope' on this server (collections: "
                                  "papers)")
    expect(page.locator("#collection")).to_have_value("nope")
    page.locator("#collection").select_option("papers")
    expect(error).to_be_hidden()
    expect(page.locator("#q")).to_have_value("wing lift")
    wait_results(page, "wing lift")
    # a 5xx from the API: its message line
    page.route("**/collections/papers/search", lambda route: route.fulfill(
        status=500, content_type="application/json",
        body=json.dumps({"error": {"type": "internal_error", "message": "disk on fire"}})))
    page.locator("#q").fill("drag")
    page.locator("#q").press("Enter")
    expect(error).to_have_text("500: disk on fire")
    # the network down
    page.unroute("**/collections/papers/search")
    page.route("**/collections/papers/search", lambda route: route.abort())
    page.locator("#q").fill("lift drag")
    page.locator("#q").press("Enter")
    expect(error).to_contain_text("cannot reach the genseek server")
    page.unroute("**/collections/papers/search")
    page.locator("#q").press("Enter")
    wait_results(page, "lift drag")
    expect(error).to_be_hidden()
