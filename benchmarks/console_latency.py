"""Time to first results of the search console (``/ui/``) for a deep link, in headless Chromium.

``genseek serve`` (127.0.0.1, no keys) serves the folder holding the SciFact collection (bm25 +
dense; the cached one unless ``--collection``); for each of the first ``--queries`` SciFact test
queries, headless Debian Chromium (Playwright, ``/usr/bin/chromium``) opens the deep link
``/ui/?collection=NAME&q=QUERY`` (the page's default pipeline: RRF of every index, each stage
to depth 100, k = 10, with explain):

- **cold**: a new browser context per query (empty cache and sessionStorage: the page, its
  modules and stylesheet are fetched again);
- **warm**: the same link opened again in that context (static files revalidated from cache).

The time is the page's own mark ``window.__genseekFirstResults``: ``performance.now()`` when the
first result rows are in the DOM, i.e. milliseconds from the start of the navigation. Beside it:
the API's ``took_ms`` for that search and the search request's duration seen by the browser
(Resource Timing). The server has answered one search before the first measurement (its models
are loaded); the browser starts once.

    python benchmarks/console_latency.py                 # 20 queries, cold and warm
    python benchmarks/console_latency.py --queries 5 --json
    python benchmarks/console_latency.py --report FILE
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import _common as C

KEYS = ("first_results_ms", "api_took_ms", "search_request_ms", "stats_request_ms",
        "dom_content_loaded_ms")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
FIRST = "() => window.__genseekFirstResults !== undefined || document.body.dataset.error === '1'"
READ = r"""() => ({
  first: window.__genseekFirstResults ?? null,
  took: window.__genseekLastResults ? window.__genseekLastResults.took_ms : null,
  error: document.body.dataset.error === '1' ? document.getElementById('error').textContent : null,
  search: (performance.getEntriesByType('resource').find(e => e.name.endsWith('/search')) || {}).duration ?? null,
  stats: (performance.getEntriesByType('resource').find(e => /\/collections\/[^/]+$/.test(e.name)) || {}).duration ?? null,
  dcl: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
})"""


def _stats(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None]
    return {"median": round(C.percentile(vals, 50), 1), "p95": round(C.percentile(vals, 95), 1),
            "min": round(min(vals), 1) if vals else 0.0,
            "max": round(max(vals), 1) if vals else 0.0}


def measure(url: str, name: str, queries: Sequence[str], chromium: str,
            timeout_s: float) -> dict[str, list[dict[str, Any]]]:
    from playwright.sync_api import sync_playwright

    rows: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            for query in queries:
                link = f"{url}/ui/?collection={quote(name)}&q={quote(query)}"
                context = browser.new_context(viewport={"width": 1000, "height": 700})
                try:
                    page = context.new_page()
                    for mode in ("cold", "warm"):
                        page.goto(link, wait_until="commit")
                        page.wait_for_function(FIRST, timeout=timeout_s * 1000)
                        got = page.evaluate(READ)
                        if got["error"]:
                            sys.exit(f"error: the page showed an error for {query!r}: "
                                     f"{got['error']}")
                        rows[mode].append({"query": query, "first_results_ms": round(got["first"], 1),
                                           "api_took_ms": got["took"],
                                           "search_request_ms": None if got["search"] is None
                                           else round(got["search"], 1),
                                           "stats_request_ms": None if got["stats"] is None
                                           else round(got["stats"], 1),
                                           "dom_content_loaded_ms": round(got["dcl"], 1)})
                finally:
                    context.close()
        finally:
            browser.close()
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from api_load import Server

    C.quiet_libraries()
    info = C.machine()
    from genseek.models import cpu_flags

    info["cpu_flags"] = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "sse4")))
    path = C.collection_option(Path(args.collection) if args.collection else None)
    name, root = path.name, path.parent
    _, texts, _ = C.judged_queries(C.dataset_dir(args.dataset), "test")
    queries = texts[:args.queries]
    # only the collections' models: no rerankers loading beside the measurement
    os.environ["GENSEEK_PRELOAD"] = "collections"
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    C.log(f"serving {root} ({name}); server log {log}")
    server = Server(root, log)
    try:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            started = time.perf_counter()
            http.post(f"/collections/{name}/search", json={"query": queries[0]}).raise_for_status()
            warmup_s = time.perf_counter() - started
            stats = http.get(f"/collections/{name}").json()
        C.log(f"first search answered in {warmup_s:.1f} s; {len(queries)} deep links, cold and warm")
        with C.Phase() as ph:
            rows = measure(server.url, name, queries, args.chromium, args.timeout)
    finally:
        rc = server.stop()
    if rc != 0:
        C.log(f"warning: the server exited with {rc}; see {log}")
    summary = {mode: {key: _stats([r[key] for r in rs]) for key in
                      KEYS} for mode, rs in rows.items()}
    return {"benchmark": "console_latency", "machine": info, "collection": str(path),
            "dataset": args.dataset, "documents": stats.get("documents"), "indexes": sorted(stats.get("indexes", {})),
            "pipeline": "the console's default: rrf(bm25, dense), depth 100 each, k=10, "
                        "fields title+text, explain", "queries": len(queries),
            "server_first_search_s": round(warmup_s, 2), "phase": ph.as_dict(),
            "summary": summary, "rows": rows}


def report(result: dict[str, Any]) -> None:
    C.print_machine(result["machine"])
    print(f"cpu flags: {' '.join(result['machine'].get('cpu_flags', []))}")
    print(f"collection: {result['collection']} ({result['documents']} documents, indexes "
          f"{', '.join(result['indexes'])}); {result['queries']} {result['dataset']} test queries; "
          f"{result['pipeline']}")
    print("time from navigation start, ms (median / p95):")
    rows = []
    for mode, s in result["summary"].items():
        rows.append([mode] + [f"{s[k]['median']} / {s[k]['p95']}" for k in KEYS])
    C.table(["load", "first results", "API took_ms", "search request", "stats request",
             "DOMContentLoaded"], rows)
    print(f"other processes' CPU share during the run: {result['phase']['other_cpu_share']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", help="a collection folder with bm25 and dense (default: the "
                   "cached SciFact collection, built when missing); the server serves its "
                   "parent folder")
    p.add_argument("--dataset", default="scifact", help="the dataset of the test queries "
                   "(default: %(default)s)")
    p.add_argument("--queries", type=int, default=20,
                   help="test queries, each opened cold and warm (default: %(default)s)")
    p.add_argument("--chromium", default="/usr/bin/chromium",
                   help="the Chromium binary (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds a page may take to show results (default: %(default)s)")
    p.add_argument("--log", default=str(C.cache("console-latency", "server.log")),
                   help="the server's log (default: %(default)s)")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    if not Path(args.chromium).exists():
        p.error(f"no Chromium at {args.chromium} (apt-get install chromium)")
    if not 1 <= args.queries <= 300:
        p.error("--queries must be from 1 to 300")
    return C.emit(run(args), args.json, report)


if __name__ == "__main__":
    sys.exit(main())
