"""What the browser tests share (imported as ``_console``: ``from conftest import`` would find
whichever ``conftest`` pytest loaded last): the small collection, the tiny BEIR dataset, the
keys, the browser's settings and :func:`new_page`.

Skipped (with the reason) where ``/usr/bin/chromium`` or the ``playwright`` package is missing;
``.ci/run`` installs Chromium with apt-get where it can.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("GENSEEK_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1000, "height": 700}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"
READ_KEY, WRITE_KEY = "console-read-key", "console-write-key"

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

MISSING = ("the playwright package is not installed (pip install -e '.[dev]')"
           if sync_playwright is None else
           None if CHROMIUM.exists() else f"no Chromium at {CHROMIUM} (apt-get install chromium)")
"""Why the Chromium tests cannot run here (None: they can)."""

DOCS = [
    ("a1", "Wing lift at low speed", "The lift of a wing grows with the angle of attack until "
     "the boundary layer separates and the wing stalls.", {"topic": "aero", "year": 2019}),
    ("a2", "Drag of a cylinder", "Pressure drag dominates the drag of a bluff body such as a "
     "cylinder in a turbulent flow.", {"topic": "aero", "year": 2020}),
    ("a3", "Supersonic nozzles", "A converging-diverging nozzle accelerates the flow past the "
     "speed of sound; shock waves form when the back pressure is wrong.", {"topic": "aero"}),
    ("a4", "Airfoil flutter", "Flutter couples the elastic modes of a wing with the aerodynamic "
     "lift; it can destroy the wing within seconds.", {"topic": "aero"}),
    ("a5", "Birds and lift", "Birds produce lift and thrust by flapping; the wing twists on the "
     "downstroke.", {"topic": "aero"}),
    ("b1", "Protein folding", "A protein folds into its native structure; misfolded proteins "
     "aggregate in many diseases.", {"topic": "bio", "year": 2021}),
    ("b2", "Enzyme kinetics", "Michaelis-Menten kinetics describe how the rate of an enzyme "
     "depends on the concentration of its substrate.", {"topic": "bio"}),
    ("b3", "Immune response to vaccines", "Vaccines train the immune system: antibodies and "
     "memory cells respond faster to a later infection.", {"topic": "bio"}),
    ("b4", "Gene expression in tumors", "Tumor cells change the expression of many genes; some "
     "mutations switch on growth signaling pathways.", {"topic": "bio"}),
    ("b5", "Cell membranes", "The cell membrane is a lipid bilayer with receptor proteins that "
     "pass signals into the cell.", {"topic": "bio"}),
    ("c1", "Cache memory", "A processor cache keeps recently used memory lines close to the "
     "core; misses cost hundreds of cycles.", {"topic": "comp"}),
    ("c2", "Compilers and parsing", "A compiler parses source code into a syntax tree, then "
     "optimises and emits machine code.", {"topic": "comp"}),
    ("c3", "Database query planning", "A query planner chooses join orders and indexes from "
     "statistics of the stored tables.", {"topic": "comp"}),
    ("c4", "Network protocols", "TCP retransmits lost packets and controls congestion; UDP "
     "sends datagrams without those guarantees.", {"topic": "comp"}),
    ("c5", "Parallel scheduling", "Work stealing schedulers balance parallel tasks across "
     "processor cores.", {"topic": "comp"}),
    ("l1", "Library catalogs", "A library catalog describes books by author, title and subject "
     "headings from a controlled thesaurus.", {"topic": "lib"}),
    ("l2", "Search engines and ranking", "Search engines rank documents by relevance: BM25 "
     "weighs term frequency against document length.", {"topic": "lib"}),
    ("l3", "Citation indexes", "A citation index links papers to the later papers that cite "
     "them.", {"topic": "lib"}),
    ("p1", "Quantum tunnelling", "An electron can tunnel through a barrier higher than its "
     "energy; tunnelling microscopes image surfaces.", {"topic": "phys"}),
    ("p2", "Black body radiation", "The spectrum of thermal radiation from a black body depends "
     "only on its temperature.", {"topic": "phys"}),
    ("p3", "Magnetic fields of planets", "The magnetic field of the Earth comes from a dynamo of "
     "liquid iron in its outer core.", {"topic": "phys"}),
    ("x1", "<script>alert(1)</script> & markup", "Text with <b>tags</b> & entities &amp; must "
     "show as text, not markup: lift.", {"topic": "misc"}),
]
# bm25 misses some (no shared words), dense others: the two pipelines differ per query
QUERIES = {"q1": "wing lift", "q2": "why do proteins misfold", "q3": "glow of hot objects",
           "q4": "how do search engines order results", "q5": "flow faster than sound",
           "q6": "vaccination and antibodies", "q7": "planet dynamo",
           "q8": "processor cache memory"}
QRELS = {"q1": {"a1": 2, "a5": 1, "a4": 1}, "q2": {"b1": 2}, "q3": {"p2": 2},
         "q4": {"l2": 2}, "q5": {"a3": 2}, "q6": {"b3": 2}, "q7": {"p3": 2},
         "q8": {"c1": 2, "c5": 1}}


def write_beir(folder: Path) -> Path:
    """A tiny BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv."""
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for doc_id, title, text, _ in DOCS:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{g}" for q, rels in QRELS.items()
                                              for d, g in rels.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def new_page(browser, key: str | None = READ_KEY):
    """A fresh browser context (its own sessionStorage), the key already typed in if given."""
    context = browser.new_context(viewport=VIEWPORT)
    if key:
        context.add_init_script(f"sessionStorage.setItem('genseek.apiKey', {json.dumps(key)})")
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    return page
