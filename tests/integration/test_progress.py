"""Progress a user sees: stage lines at once, log lines with rate and ETA when stderr is not a
terminal, meters that move within a batch, and summaries that tell the truth."""

from __future__ import annotations

import io
import re
import time

from _synth import make_docs, write_jsonl
from test_cli import run

from genseek.progress import Meter, duration


def test_duration():
    assert [duration(s) for s in (0, 59.4, 61, 3599, 3600, 7325)] == [
        "0s", "59s", "1m01s", "59m59s", "1h00m", "2h02m"]


def test_meter_prints_lines_with_rate_and_eta_when_not_a_terminal():
    out = io.StringIO()
    meter = Meter(1000, "indexing", stream=out, interval=0.05, initial=100)
    meter.update(200)
    time.sleep(0.3)  # the timer thread prints without any update
    meter.update(100)
    meter.close()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, lines  # some ticks, then the final line
    assert all(line.startswith("genseek: indexing: ") for line in lines)
    assert re.search(r"300/1,000 docs \(30%\), \d+s elapsed, [\d,.]+ docs/s, ETA ", lines[0])
    assert lines[-1].startswith("genseek: indexing: 400/1,000 docs (40%)")
    rate = float(re.search(r"([\d,.]+) docs/s", lines[-1]).group(1).replace(",", ""))
    assert rate < 300 / 0.3 + 1  # the 100 done by an earlier run do not count in the rate


def test_a_disabled_meter_prints_nothing():
    out = io.StringIO()
    meter = Meter(10, "x", enabled=False, stream=out, interval=0.01)
    meter.update(5)
    time.sleep(0.05)
    meter.close()
    assert out.getvalue() == ""


def test_index_without_a_terminal_prints_stages_and_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSEEK_PROGRESS_INTERVAL_S", "0.05")
    source = write_jsonl(tmp_path / "c.jsonl", make_docs(30, seed=4))
    coll = tmp_path / "coll"
    rc, out, err = run("index", coll, "--from", source, "--index", "bm25", "--batch-size", "10")
    assert rc == 0, err
    assert "genseek: creating" in err and f"genseek: reading {source} (30 lines)" in err
    assert re.search(r"genseek: indexing: 30/30 docs \(100%\)", err), err
    assert re.match(r"30 documents read from .* in [\d.]+s, opening and catch-up included", out)
    # a second run: nothing new, and it says what an earlier run had done
    rc, out, err = run("index", coll, "--from", source)
    assert rc == 0, err
    assert "resuming after line 30, committed by an earlier run" in err
    assert out.startswith(f"nothing new in {source}: its 30 lines were indexed by an earlier "
                          "run; collection has 30 documents")
    # --no-progress: no stage or progress lines at all
    rc, out, err = run("add", coll, "--from", source, "--no-progress")
    assert rc == 0 and err == "", err


def test_catch_up_reports_from_the_first_batch(tmp_path):
    from genseek import Collection

    path = tmp_path / "coll"
    with Collection.create(path, {"bm25": "bm25"}) as c:
        c.store.write(make_docs(25, seed=1))  # in the store, not yet in the index
        c.sync = lambda *a, **k: None  # the process "dies" before applying them
    calls = []
    with Collection.open(path, progress=lambda *a: calls.append(a)):
        pass
    assert calls[0] == ("bm25", 0, 25)  # a meter exists before the first batch is applied
    assert calls[-1] == ("bm25", 25, 25)
