"""The search console in Firefox: Debian's Firefox ESR, headless, over WebDriver BiDi
(``_bidi.py``), against the same real ``genseek serve`` as the Chromium tests.

The Chromium tests (``test_console.py``) cover every view in depth; these check that the page
works in the other engine: typing a query, the side-by-side columns with highlighting and
cross-ranks, markup in a document shown as text, a deep link, the document view, the
evaluation view, a bad pipeline and a wrong key as one message each.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest
from _console import QUERIES, READ_KEY

FIREFOX = Path(os.environ.get("GENSEEK_FIREFOX", "/usr/bin/firefox-esr"))
if not FIREFOX.exists():
    pytest.skip(f"no Firefox at {FIREFOX} (apt-get install firefox-esr)", allow_module_level=True)
pytest.importorskip("websockets", reason="the websockets package is missing")

from _bidi import Firefox  # noqa: E402

pytestmark = pytest.mark.slow


def ui(server, **params) -> str:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in params.items())
    return f"{server.url}/ui/" + (f"?{query}" if query else "")


@pytest.fixture(scope="module")
def ff(server, tmp_path_factory):
    browser = Firefox(FIREFOX, tmp_path_factory.mktemp("firefox") / "profile")
    try:
        yield browser
    finally:
        browser.close()


def with_key(ff: Firefox, server, key: str | None = READ_KEY) -> None:
    """The key in this tab's sessionStorage (as the page keeps it), or none."""
    ff.goto(f"{server.url}/ui/")
    ff.js("sessionStorage.clear()")
    if key:
        ff.js(f"sessionStorage.setItem('genseek.apiKey', {json.dumps(key)})")


def results(ff: Firefox, query: str) -> None:
    ff.wait(f"document.querySelector('#columns[data-query={json.dumps(query)}] .hit')")


def columns(ff: Firefox) -> list[str]:
    return ff.js("[...document.querySelectorAll('#columns .column .colname')]"
                 ".map(n => n.textContent)")


def column_ids(ff: Firefox, n: int) -> list[str]:
    return ff.js(f"[...document.querySelectorAll('#columns .column:nth-child({n}) .hit')]"
                 ".map(n => n.dataset.doc)")


def error_text(ff: Firefox) -> str:
    return ff.wait("(e => !e.hidden && e.textContent.trim())(document.querySelector('#error'))")


def test_typing_a_query_shows_the_columns(ff, server):
    with_key(ff, server)
    ff.goto(ui(server, collection="papers"))
    ff.wait("document.querySelector('#collection').value === 'papers'")
    ff.js("document.querySelector('#q').focus()")
    ff.type("wing lift")
    results(ff, "wing lift")
    assert columns(ff) == ["bm25", "dense", "fused (rrf)"]
    bm25, dense, fused = (column_ids(ff, n) for n in (1, 2, 3))
    assert bm25[0] == "a1" and fused[0] == "a1" and "a1" in dense[:3] and len(fused) == 10
    marks = ff.js("[...document.querySelector('#columns .column.final .hit').querySelectorAll("
                  "'mark')].map(m => m.textContent.toLowerCase())")
    assert marks and set(marks) <= {"wing", "lift"}
    others = ff.js("document.querySelector('#columns .column.final .hit .others').textContent")
    assert "bm25 #1" in others and "dense #" in others
    assert "wing lift" in ff.js("location.search.replace(/\\+/g, ' ')") or \
        "wing%20lift" in ff.js("location.search")
    # markup in a document stays text
    ff.js("(q => { q.value = ''; q.focus(); })(document.querySelector('#q'))")
    ff.type("markup tags")
    results(ff, "markup tags")
    title = ff.js("document.querySelector('#columns .column.final .hit .title').textContent")
    assert title == "<script>alert(1)</script> & markup"


def test_a_deep_link_and_the_document_view(ff, server):
    with_key(ff, server)
    ff.goto(ui(server, collection="papers", q="protein folding"))
    results(ff, "protein folding")
    assert column_ids(ff, 3)[0] == "b1"
    first = ff.js("window.__genseekFirstResults")
    assert isinstance(first, (int, float)) and first > 0
    ff.goto(ui(server, collection="papers", q="protein folding", view="doc", doc="b1"))
    ff.wait("document.querySelector('#doc-title').textContent === 'Protein folding'")
    ranks = ff.wait("(n => n && n.textContent.includes('bm25') && n.textContent)"
                    "(document.querySelector('#doc-ranks'))")
    assert "dense" in ranks


def test_the_evaluation_view(ff, server):
    with_key(ff, server)
    ff.goto(ui(server, collection="papers", view="eval"))
    ff.wait("[...document.querySelector('#dataset').options].some(o => o.value === 'tiny')")
    ff.js("(s => { s.value = 'tiny'; s.dispatchEvent(new Event('change', {bubbles: true})); })"
          "(document.querySelector('#dataset'))")
    ff.js("document.querySelector('#eval-run').click()")
    ff.wait("(t => !t.hidden && t.querySelectorAll('tbody tr').length === 3)"
            "(document.querySelector('#eval-table'))", timeout=60)
    text = ff.js("document.querySelector('#eval-table').textContent")
    assert "nDCG@10" in text and "R@100" in text and "wins/ties/losses" in text
    assert ff.js("document.querySelectorAll('#eval-chart .bar').length") == len(QUERIES)
    ff.js("document.querySelector('#eval-chart .bar').dispatchEvent("
          "new MouseEvent('click', {bubbles: true}))")
    ff.wait("document.querySelectorAll('#eval-compare .column').length === 2")


def test_a_bad_pipeline_and_a_wrong_key_are_messages(ff, server):
    with_key(ff, server)
    ff.goto(ui(server, collection="papers", q="wing lift"))
    results(ff, "wing lift")
    ff.js("(p => { p.value = '{\"retrieve\": [\\n  {\"index\": \"bm25\",}\\n]}'; })"
          "(document.querySelector('#pipeline'))")
    ff.js("document.querySelector('#run').click()")
    assert "pipeline: invalid JSON at line 2, column" in error_text(ff)
    with_key(ff, server, "wrong-key")
    ff.goto(ui(server, collection="papers", q="wing lift"))
    message = error_text(ff)
    assert "401" in message or "key" in message.lower(), message
    assert ff.js("!document.querySelector('#keyform').hidden")
