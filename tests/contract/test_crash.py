"""Crash safety: kill -9 a writer mid-run, reopen, and find every acknowledged write."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _synth import make_docs, unique_token, write_jsonl

from genseek import Collection
from genseek.cli import main

# The writer's schedule, shared by the child (which executes it) and the test (which
# recomputes what the collection must hold after any number of batches).
SCHEDULE = '''
WORDS = ("wing lift drag cell gene protein library catalog energy photon wave kernel cache "
         "memory network query storage thermal field particle").split()


def token(doc_id, version):
    return f"q{doc_id}v{version}"


def batch(n):
    """Batch n: 8 new documents, 2 updates of batch n-2's, 1 delete from batch n-1."""
    ups = []
    for j in range(8):
        doc_id = f"{n}x{j}"
        words = [WORDS[(n * 7 + j * 3 + i) % len(WORDS)] for i in range(12)]
        ups.append((doc_id, " ".join(words) + " " + token(doc_id, 0)))
    if n >= 2:
        for j in (n % 8, (n + 3) % 8):
            doc_id = f"{n - 2}x{j}"
            ups.append((doc_id, "updated " + WORDS[n % len(WORDS)] + " " + token(doc_id, n)))
    dels = [f"{n - 1}x{(n * 5) % 8}"] if n >= 1 else []
    return ups, dels


def state_after(batches):
    docs = {}
    for n in range(batches):
        ups, dels = batch(n)
        for doc_id, text in ups:
            docs[doc_id] = text
        for doc_id in dels:
            docs.pop(doc_id, None)
    return docs
'''

CHILD = '''
import sys
from pathlib import Path

from genseek import Collection, Document

{schedule}

path = Path(sys.argv[1])
coll = Collection.create(path, {{"bm25": "bm25", "dense": "dense"}})
print("READY", flush=True)
for n in range(100000):
    ups, dels = batch(n)
    coll.write([Document(i, "", text) for i, text in ups], dels)
    print("ACK " + ",".join(i for i, _ in ups), flush=True)
'''

ns: dict = {}
exec(SCHEDULE, ns)  # noqa: S102 - our own constant, the same text the child runs
batch, state_after, token = ns["batch"], ns["state_after"], ns["token"]


class Watchdog:
    """Kill a child that hangs, so a broken run fails instead of stalling the suite."""

    def __init__(self, proc: subprocess.Popen, seconds: float):
        self.timer = threading.Timer(seconds, proc.kill)
        self.timer.start()

    def cancel(self):
        self.timer.cancel()


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("acks_before_kill, max_delay", [(3, 0.0), (5, 0.4)])
def test_kill_during_collection_writes(tmp_path, acks_before_kill, max_delay):
    script = tmp_path / "writer.py"
    script.write_text(CHILD.format(schedule=textwrap.dedent(SCHEDULE)))
    path = tmp_path / "coll"
    errlog = open(tmp_path / "child.err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            stderr=errlog, env=child_env(), text=True)
    dog = Watchdog(proc, 300)
    acked: list[list[str]] = []
    try:
        assert proc.stdout.readline().strip() == "READY", (tmp_path / "child.err").read_text()
        while len(acked) < acks_before_kill:
            line = proc.stdout.readline()
            assert line.startswith("ACK "), (line, (tmp_path / "child.err").read_text()[-3000:])
            acked.append(line.split()[1].split(","))
        time.sleep(random.Random(acks_before_kill).uniform(0, max_delay))
        proc.send_signal(signal.SIGKILL)
        # Acknowledgements printed before the kill count too.
        for line in proc.stdout:
            if line.startswith("ACK "):
                acked.append(line.split()[1].split(","))
        assert proc.wait() == -signal.SIGKILL
    finally:
        dog.cancel()
        errlog.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    n = len(acked)
    for i, ids in enumerate(acked):
        assert ids == [doc_id for doc_id, _ in batch(i)[0]]
    with Collection.open(path) as coll:
        stored = {d.doc_id: d.text for d in coll.store.iter_docs()}
        # Every acknowledged batch is there; at most the one in flight got in too.
        assert stored in (state_after(n), state_after(n + 1))
        for ids in acked:
            for doc_id in ids:
                assert doc_id in stored or any(doc_id in batch(k)[1] for k in range(n + 1))
        seq = coll.store.seq
        for name, index in coll.indexes.items():
            assert index.applied_seq == seq, name
        stats = coll.stats()["indexes"]
        counts = (stats["bm25"]["documents"], stats["dense"]["documents"], len(stored))
        assert counts[0] == counts[1] == counts[2], f"bm25, dense, store: {counts}"
        # and no deleted document left in bm25's statistics (a kill between commit and merge)
        assert stats["bm25"]["max_doc"] == len(stored)
        assert stats["dense"]["vectors"] >= len(stored)
        # bm25: each live version is found by its own token, and only that document.
        tokens = {doc_id: text.split()[-1] for doc_id, text in stored.items()}
        found = coll.search(list(tokens.values()), 3, index="bm25")
        for (doc_id, _), hits in zip(tokens.items(), found, strict=True):
            assert [h.doc_id for h in hits] == [doc_id]
        # Replaced and deleted versions are gone.
        all_ids = {doc_id for k in range(n + 1) for doc_id, _ in batch(k)[0]}
        dead = [token(doc_id, 0) for doc_id in all_ids - set(stored)]
        for hits in coll.search(dead, 3, index="bm25") if dead else []:
            assert hits == []
        # dense: every document exactly once.
        hits = coll.search("wing protein energy", len(stored) + 20, index="dense")
        assert sorted(h.doc_id for h in hits) == sorted(stored)


def committed_line(db_path: Path) -> int:
    if not db_path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)
        try:
            row = db.execute("SELECT value FROM meta WHERE key LIKE 'ingest:%'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return json.loads(row[0])["line"] if row else 0


def genseek_command() -> list[str]:
    script = Path(sys.executable).parent / "genseek"
    return [str(script)] if script.exists() else [sys.executable, "-m", "genseek.cli"]


@pytest.mark.slow
def test_kill_during_cli_index_then_resume(tmp_path, capsys):
    docs = make_docs(1500, seed=5)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", docs)
    path = tmp_path / "coll"
    args = ["index", str(path), "--from", str(corpus), "--index", "bm25", "--batch-size", "10",
            "--no-progress", "--json"]
    errlog = open(tmp_path / "child.err", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(genseek_command() + args, stdout=subprocess.DEVNULL, stderr=errlog,
                            env=child_env())
    dog = Watchdog(proc, 300)
    try:
        while committed_line(path / "docs.sqlite") < 50:
            assert proc.poll() is None, (tmp_path / "child.err").read_text()[-3000:]
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        dog.cancel()
        errlog.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed_at = committed_line(path / "docs.sqlite")
    assert 50 <= killed_at < 1500

    capsys.readouterr()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)  # --json: stdout is one JSON object
    assert summary["resumed_after_line"] == killed_at > 0
    assert summary["read"] == 1500 - killed_at
    assert summary["upserted"] == summary["read"]  # the resume point was exact
    assert summary["unchanged"] == 0
    assert summary["documents"] == 1500

    with Collection.open(path) as coll:
        assert len(coll) == 1500
        assert coll.index("bm25").applied_seq == coll.store.seq == 1500
        assert coll.stats()["indexes"]["bm25"]["documents"] == 1500
        sample = docs[::3]
        found = coll.search([unique_token(int(d.doc_id[1:])) for d in sample], 3, index="bm25")
        for d, hits in zip(sample, found, strict=True):
            assert [h.doc_id for h in hits] == [d.doc_id]
