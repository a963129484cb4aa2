"""Helpers shared by the benchmark scripts: dataset location, machine facts, tables.

The scripts are run as ``python benchmarks/NAME.py`` from the repository root, so
this module is imported as ``_common`` (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def cache(*parts: str) -> Path:
    """A path below genseek's cache root (``$GENSEEK_CACHE``, see :mod:`genseek.cache`)."""
    from genseek.cache import cache_root

    return cache_root().joinpath(*parts)


def quiet_libraries() -> None:
    """What the CLI does before loading models: no tokenizer fork warnings, no bars."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)


def datasets_root() -> Path:
    """:func:`genseek.data.readers.datasets_root`, resolved."""
    from genseek.data.readers import datasets_root as root

    return root().resolve()


def dataset_dir(name: str) -> Path:
    folder = datasets_root() / name
    if not (folder / "corpus.jsonl").is_file():
        sys.exit(f"error: no BEIR dataset at {folder} (set GENSEEK_DATASETS to the folder "
                 "holding scifact/, cranfield/, ...)")
    return folder


def log(msg: str) -> None:
    """A progress line on stderr (stdout is kept for tables and ``--json``)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- cached collections ----------------------------------------------------------------------
#
# Every benchmark that reads a collection of a BEIR dataset (bm25 + dense, what ``genseek index``
# builds by default) reads $GENSEEK_CACHE/collections/NAME, and builds it there with the CLI
# when it is absent or incomplete. Benchmarks copy it (or open it read-only), never write to it.

#: The CLI's default indexes: what every cached collection holds.
DEFAULT_INDEXES = ("bm25", "dense")


def _last_line(file: Path) -> int:
    """The number of the last non-blank line of ``file``: where a complete ingest stopped."""
    last = 0
    with open(file, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if raw.strip():
                last = number
    return last


def _ingested_line(path: Path, corpus: Path) -> int:
    """The last line of ``corpus`` that an ingest (``genseek index``) committed into the
    collection at ``path`` (0: none), from the resume point its store records."""
    import sqlite3

    stat = corpus.stat()
    prefix = f"ingest:{corpus.resolve()}:{stat.st_size}:"  # any mtime: the same file's bytes
    try:
        con = sqlite3.connect((path / "docs.sqlite").resolve().as_uri() + "?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT key, value FROM meta WHERE key LIKE 'ingest:%'").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return 0
    lines = [int(json.loads(v).get("line", 0)) for k, v in rows if k.startswith(prefix)]
    return max(lines, default=0)


def collection_gaps(path: Path, folder: Path | None,
                    indexes: Sequence[str] = DEFAULT_INDEXES, states: bool = True) -> list[str]:
    """What keeps ``path`` from being a complete collection with ``indexes`` (empty: nothing).

    Read without opening it (no lock, no JVM, no model): the manifest, the store's counts,
    with ``states`` the state each index recorded (an index behind the store catches up when
    it is opened), and with ``folder`` (the BEIR dataset) whether the ingest of its corpus
    reached the last line.
    """
    from genseek.collection import Collection
    from genseek.errors import GenseekError

    path = Path(path)
    if not (path / "collection.json").is_file():
        return ["absent"]
    try:
        desc = Collection.describe(path)
    except GenseekError as exc:
        return [f"unusable ({exc})"]
    have = desc["indexes"]
    gaps = [f"no {n} index" for n in indexes if n not in have]
    gaps += [f"index {n} is {have[n]['state']}" for n in indexes
             if states and n in have and have[n]["state"] != "ready"]
    if not desc["documents"]:
        gaps.append("no documents")
    if folder is not None:
        corpus = Path(folder) / "corpus.jsonl"
        done, last = _ingested_line(path, corpus), _last_line(corpus)
        if done < last:
            gaps.append(f"{corpus} indexed up to line {done:,} of {last:,}")
    return gaps


class _FileLock:
    """An exclusive ``flock`` on ``path`` for a ``with`` block (two builds never overlap)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _FileLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def build_collection(name: str = "scifact", indexes: Sequence[str] = DEFAULT_INDEXES,
                     path: Path | None = None) -> dict[str, Any]:
    """Make ``path`` (default ``$GENSEEK_CACHE/collections/NAME``) a complete collection of
    the BEIR dataset ``name`` with ``indexes``, and say what it took.

    Nothing runs when it already is one. Otherwise ``genseek index PATH --from DATASET
    [--index ...]`` (the CLI, in a child process; its progress lines on stderr) creates it,
    resumes an interrupted build, adds the missing indexes or lets them catch up; the result is
    checked again afterwards. Returns ``{"path", "built", "gaps", "documents", "seconds",
    "cpu_seconds", "other_cpu_share", "cli"}`` (``cli``: ``genseek index --json``'s summary).
    """
    import resource
    import subprocess

    from genseek.collection import Collection

    folder = dataset_dir(name)
    path = Path(path) if path is not None else cache("collections", name)
    with _FileLock(path.parent / f".{path.name}.build.lock"):
        gaps = collection_gaps(path, folder, indexes)
        out: dict[str, Any] = {"path": str(path), "built": bool(gaps), "gaps": gaps,
                               "seconds": 0.0, "cpu_seconds": 0.0, "other_cpu_share": None,
                               "cli": None}
        if gaps:
            pending = Collection.interrupted(path)
            if pending is not None:  # finish the interrupted creation with its own specs
                specs = [f"{n}={s}" for n, s in pending.items()]
            elif Collection.exists(path):  # add only what is missing (others are untouched)
                have = Collection.describe(path)["indexes"]
                specs = [n for n in indexes if n not in have]
            else:
                specs = list(indexes)
            cmd = [sys.executable, "-m", "genseek.cli", "index", str(path), "--from",
                   str(folder), *(a for s in specs for a in ("--index", s)), "--json"]
            log(f"collection {name}: {'; '.join(gaps)}; building it (once, then reused) with "
                f"`genseek {' '.join(cmd[3:])}`")
            busy, load = busy_cpu_seconds(), os.getloadavg()[0]
            child = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime + after.ru_stime) - (child.ru_utime + child.ru_stime)
            if proc.returncode != 0:
                sys.exit(f"error: `genseek index` exited with {proc.returncode} while building "
                         f"{path} from {folder} (see above); run the benchmark again to resume")
            left = collection_gaps(path, folder, indexes)
            if left:
                sys.exit(f"error: {path} is still incomplete after `genseek index`: "
                         f"{'; '.join(left)}")
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            busy_after = busy_cpu_seconds()
            other = None
            if busy is not None and busy_after is not None and seconds > 0:
                other = max(0.0, busy_after - busy - cpu) / (seconds * (os.cpu_count() or 1))
            out.update(seconds=round(seconds, 2), cpu_seconds=round(cpu, 2),
                       other_cpu_share=None if other is None else round(other, 3),
                       load1_before=round(load, 2), load1_after=round(os.getloadavg()[0], 2),
                       cli=json.loads(lines[-1]) if lines else None)
            log(f"collection {name}: ready in {seconds:.0f} s ({path})")
        out["documents"] = Collection.describe(path)["documents"]
    return out


def collection(name: str = "scifact", indexes: Sequence[str] = DEFAULT_INDEXES) -> Path:
    """``$GENSEEK_CACHE/collections/NAME``, complete with ``indexes``: built (or completed)
    from the BEIR dataset ``name`` first when it is not (see :func:`build_collection`)."""
    return Path(build_collection(name, indexes)["path"])


def scifact_collection(indexes: Sequence[str] = DEFAULT_INDEXES) -> Path:
    """The SciFact collection most benchmarks copy (bm25 + dense), built when missing."""
    return collection("scifact", indexes)


def collection_option(given: Path | None, name: str = "scifact",
                      needs: Sequence[str] = DEFAULT_INDEXES,
                      flag: str = "--collection") -> Path:
    """The collection a benchmark reads: ``given`` (a ``flag`` value; checked for the indexes
    it ``needs``, never built or modified: one clear line and exit 2 when it lacks something),
    else the cached collection of ``name`` (bm25 + dense), built when missing."""
    if given is None:
        return collection(name)
    gaps = collection_gaps(Path(given), None, needs, states=False)
    if gaps:
        print(f"error: {flag} {given}: {'; '.join(gaps)} (leave {flag} out to use "
              f"{cache('collections', name)}, built there when missing)", file=sys.stderr)
        sys.exit(2)
    return Path(given)


def judged_queries(folder: Path, split: str = "test") -> tuple[list[str], list[str], dict]:
    """``(query ids, query texts, qrels)`` for the judged queries of ``split``, in file order."""
    from genseek.data.readers import read_qrels, read_queries

    qrels = read_qrels(folder, split)
    queries = read_queries(folder)
    qids = [q for q in queries if q in qrels]
    return qids, [queries[q] for q in qids], qrels


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a missing optional library is reported as None
        return None
    return str(getattr(mod, "__version__", "?"))


def machine() -> dict[str, Any]:
    """CPU, memory, GPU presence and library versions of this run."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        pass
    for name in ("numpy", "torch", "faiss", "sentence_transformers", "transformers"):
        info[name] = _version(name)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        info["gpu"] = None
    info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def print_machine(info: dict[str, Any], file=sys.stdout) -> None:
    print(f"machine: {info['cpu_count']} CPUs ({info['cpu_model']}), "
          f"{info.get('memory_gib', '?')} GiB RAM, GPU: {info.get('gpu') or 'none'}; "
          f"load average at start {info['loadavg_start']}", file=file)
    print(f"software: python {info['python']}, torch {info['torch']} "
          f"({info.get('torch_threads')} threads), faiss {info['faiss']}, "
          f"sentence-transformers {info['sentence_transformers']}, "
          f"transformers {info['transformers']}, numpy {info['numpy']}", file=file)
    print(f"date: {info['date']}", file=file)


def busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have used since boot (/proc/stat)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall time, process CPU time and load average of a block (``with Phase() as p``).

    ``cpu_ratio`` (process CPU seconds / wall seconds) shows whether the run got the
    cores it asked for: about 2.0 for a two-thread encoder on an idle two-core machine.
    ``other_cpu_share`` is the CPU time other processes used during the block, as a
    fraction of all the machine's cores over the block: near 0 on a quiet machine.
    """

    def __enter__(self) -> Phase:
        self._busy = busy_cpu_seconds()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()
        self.load_before = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu_seconds = time.process_time() - self._cpu
        self.load_after = os.getloadavg()[0]
        busy = busy_cpu_seconds()
        self.other_cpu_share = None
        if busy is not None and self._busy is not None and self.seconds > 0:
            other = max(0.0, busy - self._busy - self.cpu_seconds)
            self.other_cpu_share = other / (self.seconds * (os.cpu_count() or 1))

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, float | None]:
        return {"seconds": round(self.seconds, 3), "cpu_seconds": round(self.cpu_seconds, 3),
                "cpu_ratio": round(self.cpu_ratio, 2), "load1_before": round(self.load_before, 2),
                "load1_after": round(self.load_after, 2),
                "other_cpu_share": None if self.other_cpu_share is None
                else round(self.other_cpu_share, 3)}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default)."""
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else 0.0


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], file=sys.stdout) -> None:
    """A plain text table; floats are printed with 4 significant decimals."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4f}" if abs(v) < 10 else f"{v:,.1f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "-" if v is None else str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(headers, widths, strict=True))), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for r in cells:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths, strict=True))), file=file)


def key_numbers(text: str) -> dict[str, float]:
    """``"alpha=1.5,beta=1"`` as ``{"alpha": 1.5, "beta": 1.0}`` (an argparse ``type``)."""
    import argparse

    out: dict[str, float] = {}
    for part in (x.strip() for x in text.split(",") if x.strip()):
        key, sep, val = part.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(val)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected key=number, e.g. alpha=1.5") from None
    return out


#: RRF weights tried when a fusion is tuned on a split that is not reported (the first run's
#: weight stays 1).
WEIGHT_GRID = (0.5, 1.0, 1.5, 2.0)


def fused_metrics(runs: dict[str, list], names: Sequence[str], qids: Sequence[str], qrels: dict,
                  measures: Sequence[str] = ("nDCG@10", "R@100"),
                  weights: Sequence[float] | None = None, depth: int = 100,
                  rrf_k: float = 60.0) -> dict[str, float]:
    """``measures`` of the RRF fusion (top ``depth``) of ``runs[n]`` for ``n`` in ``names``:
    each run a list, per query (in ``qids`` order), of best-first ``(doc_id, score)`` pairs."""
    from genseek.evaluation import evaluate
    from genseek.kernels.fusion import rrf
    from genseek.types import Hit

    fused = [[Hit(d, s) for d, s in rrf([runs[n][qi] for n in names], depth, rrf_k, weights)]
             for qi in range(len(qids))]
    return evaluate(dict(zip(qids, fused, strict=True)), qrels, measures)


def best_rrf_weights(runs: dict[str, list], names: Sequence[str], qids: Sequence[str],
                     qrels: dict, grid: Sequence[float] = WEIGHT_GRID
                     ) -> tuple[list[float], float, float]:
    """``(weights, tuned nDCG@10, equal-weights nDCG@10)``: the RRF weights of ``names``
    (the first fixed at 1, the others from ``grid``) with the best nDCG@10 on ``qrels``.
    Ties go to the first in grid order. Tune on a split that is not the one reported."""
    import itertools

    scored = [(fused_metrics(runs, names, qids, qrels, ("nDCG@10",), [1.0, *rest])["nDCG@10"],
               [1.0, *rest]) for rest in itertools.product(grid, repeat=len(names) - 1)]
    best = max(scored, key=lambda x: x[0])
    equal = next((sc for sc, w in scored if w == [1.0] * len(names)), None)
    if equal is None:  # 1 is not in the grid
        equal = fused_metrics(runs, names, qids, qrels, ("nDCG@10",))["nDCG@10"]
    return best[1], best[0], equal


def dump_json(obj: Any) -> None:
    print(json.dumps(obj, indent=None, sort_keys=False))


def load_json(path: str) -> Any:
    """A result saved with ``--json`` (the last line that is a JSON object)."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.startswith("{")]
    if not lines:
        sys.exit(f"error: {path} holds no JSON result")
    return json.loads(lines[-1])


def add_output_options(parser) -> None:
    """``--json`` and ``--report FILE``, shared by every benchmark script."""
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--report", metavar="FILE",
                        help="measure nothing: print the tables of a result saved with --json")


def parse_args(parser, argv, report):
    """``parser`` with ``--json`` and ``--report`` added, parsed; None once ``--report`` has
    printed a saved result (the script then exits 0)."""
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.report:
        report(load_json(args.report))
        return None
    return args


def emit(result: Any, as_json: bool, report) -> int:
    """Print ``result`` as JSON or through ``report``; the scripts' exit status."""
    if as_json:
        dump_json(result)
    else:
        report(result)
    return 0
