"""Fixtures of the browser tests: a real ``genseek serve`` with a small bm25 + dense collection and
a tiny BEIR dataset, and headless Debian Chromium driven by Playwright (the shared data and
helpers are in ``_console.py``).

Skipped (with the reason) where ``/usr/bin/chromium`` or the ``playwright`` package is missing;
``.ci/run`` installs Chromium with apt-get where it can.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from _apiserver import ServerProcess
from _console import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCS,
    READ_KEY,
    SCREENSHOTS,
    WRITE_KEY,
    new_page,
    sync_playwright,
    write_beir,
)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``genseek serve`` on 127.0.0.1 with keys, collection ``papers`` (bm25 + dense) and the
    dataset ``tiny`` in its datasets folder; stopped by its PID at the end."""
    base = tmp_path_factory.mktemp("console")
    write_beir(base / "datasets" / "tiny")
    proc = ServerProcess(base / "root", base / "server.log", env={
        "GENSEEK_API_KEYS": f"{READ_KEY}:read,{WRITE_KEY}:write",
        "GENSEEK_API_DATASETS": str(base / "datasets"),
        "GENSEEK_PRELOAD": "collections",
        "GENSEEK_RERANKERS": "biencoder=biencoder",
    })
    try:
        headers = {"X-API-Key": WRITE_KEY}
        with httpx.Client(base_url=proc.url, headers=headers, timeout=300) as http:
            http.post("/collections", json={"name": "papers", "indexes": {
                "bm25": "bm25", "dense": "dense"}}).raise_for_status()
            docs = [{"id": i, "title": t, "text": x, "metadata": m} for i, t, x, m in DOCS]
            http.post("/collections/papers/documents",
                      json={"documents": docs, "refresh": True}).raise_for_status()
        yield proc
    finally:
        assert proc.stop() == 0, proc.output()[-4000:]


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for one module: Playwright's sync API keeps an event loop running in
    this thread while it is open, which breaks any later test that calls ``asyncio.run``."""
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser):
    page = new_page(browser)
    yield page
    page.context.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: docs/img with GENSEEK_UPDATE_SCREENSHOTS=1, else a temp folder."""
    if os.environ.get("GENSEEK_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")
