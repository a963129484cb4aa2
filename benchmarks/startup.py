"""What one CLI call costs: wall and CPU seconds of `genseek --help`, `stats`, a bm25, a dense
and a GENRE search on a SciFact collection (bm25 + dense + genre), each in a fresh process.

Every command runs ``--repeats`` times (3) in a new interpreter and the median is reported,
with the ratio to ``genseek --help`` (the cost of starting Python and importing the CLI). The
GENRE search is run twice more on its own: the *first* call after genseek's converted-model
cache is emptied (it de-quantises the GGUF checkpoint and writes the cache) and the *second*
call (it loads the cached safetensors).

``--before REV`` also measures the same commands with genseek as it was at git revision REV
(exported with ``git archive`` into the cache, run from there), interleaved with the current
tree in one run, so the two sides share the machine's state.

The collection is built when missing (``$GENSEEK_CACHE/startup/scifact``, from
``../shared/datasets/scifact``; about 5 minutes on 2 cores).

    python benchmarks/startup.py
    python benchmarks/startup.py --before 4ef52fc --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import _common as C

QUERY = "vitamin D deficiency and cancer risk"
# Runs genseek's CLI from a source tree given as argv[1] ("-" for the installed one).
RUNNER = """
import sys
tree = sys.argv[1]
if tree != "-":
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, tree)
sys.argv = ["genseek", *sys.argv[2:]]
from genseek.cli import main
sys.exit(main())
"""
LAYOUT = ("indexers", "retrievers", "rerankers", "api", "kernels", "data")


def commands(coll: Path) -> dict[str, list[str]]:
    c = str(coll)
    return {
        "--help": ["--help"],
        "stats": ["stats", c],
        "search bm25": ["search", c, QUERY, "--index", "bm25"],
        "search dense": ["search", c, QUERY, "--index", "dense"],
        "search bm25+dense": ["search", c, QUERY, "--index", "bm25", "--index", "dense"],
    }


def run_once(tree: str, argv: list[str]) -> dict[str, float]:
    """Wall and CPU seconds (user + system, the child's and its children's) of one call."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, tree, *argv], env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode != 0:
        raise SystemExit(f"error: genseek {' '.join(argv)} failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system)
    return {"wall_s": wall, "cpu_s": cpu}


def export_tree(rev: str) -> Path:
    """genseek at ``rev``, as an importable package folder in the cache."""
    out = C.cache("startup", f"tree-{rev}")
    pkgs = out / "pkgs"
    if (pkgs / "genseek" / "cli.py").exists():
        return pkgs
    src = out / "src"
    shutil.rmtree(out, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(C.REPO), "archive", rev], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    # the import layout of pyproject.toml: genseek/ holds the core, the other folders are
    # its subpackages
    shutil.copytree(src / "genseek", pkgs / "genseek")
    for name in LAYOUT:
        shutil.copytree(src / name, pkgs / "genseek" / name)
    return pkgs


def build(coll: Path) -> None:
    if (coll / "collection.json").exists() and (coll / "indexes" / "genre").is_dir():
        return
    source = str(C.dataset_dir("scifact"))
    print(f"building {coll} (bm25 + dense + genre over SciFact; about 5 minutes)",
          file=sys.stderr)
    for extra in ([], ["--index", "genre"]):
        args = ["index", str(coll), "--from", source, *extra]
        subprocess.run([sys.executable, "-c", RUNNER, "-", *args], check=True)


def model_cache_dir() -> Path | None:
    try:
        from genseek.models import gguf_cache_dir
    except ImportError:
        return None
    return gguf_cache_dir()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    coll = Path(args.collection) if args.collection else C.cache("startup", "scifact")
    build(coll)
    sides = {"now": "-"}
    if args.before:
        sides = {f"at {args.before}": str(export_tree(args.before)), **sides}
    # The current tree records each index's state at its first open: do it before timing.
    subprocess.run([sys.executable, "-c", RUNNER, "-", "sync", str(coll), "--no-progress"],
                   check=True, capture_output=True)
    info = C.machine()
    cmds = commands(coll)
    times: dict[str, dict[str, list[dict[str, float]]]] = {s: {c: [] for c in cmds}
                                                            for s in sides}
    for _ in range(args.repeats):
        for name, argv in cmds.items():
            for side, tree in sides.items():  # interleaved: both sides see the same machine
                times[side][name].append(run_once(tree, argv))
                print(f"{side:>12}  {name:<18} {times[side][name][-1]['wall_s']:7.2f} s",
                      file=sys.stderr)
    genre = ["search", str(coll), QUERY, "--index", "genre"]
    generative: dict[str, dict[str, dict[str, float]]] = {}
    if not args.no_genre:
        cache = model_cache_dir()
        for side, tree in sides.items():
            if cache is not None:
                shutil.rmtree(cache, ignore_errors=True)
            generative[side] = {"first": run_once(tree, genre), "second": run_once(tree, genre)}
            print(f"{side:>12}  genre first {generative[side]['first']['wall_s']:.1f} s, "
                  f"second {generative[side]['second']['wall_s']:.1f} s", file=sys.stderr)
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    medians = {side: {name: {k: statistics.median(r[k] for r in runs) for k in ("wall_s",
                                                                              "cpu_s")}
                      for name, runs in per.items()} for side, per in times.items()}
    return {"machine": info, "collection": str(coll), "repeats": args.repeats,
            "query": QUERY, "median": medians, "runs": times, "genre": generative}


def report(result: dict[str, Any]) -> None:
    C.print_machine(result["machine"])
    print(f"load average at end {result['machine'].get('loadavg_end')}; "
          f"{result['repeats']} runs per command, medians; collection {result['collection']}")
    print()
    rows = []
    for side, per in result["median"].items():
        base = per["--help"]["wall_s"]
        for name, m in per.items():
            rows.append([side, name, f"{m['wall_s']:.2f}", f"{m['cpu_s']:.2f}",
                         f"{m['wall_s'] / base:.1f}x"])
        for call, m in result["genre"].get(side, {}).items():
            rows.append([side, f"search genre ({call})", f"{m['wall_s']:.2f}",
                         f"{m['cpu_s']:.2f}", f"{m['wall_s'] / base:.1f}x"])
    C.table(["code", "command", "wall s", "CPU s", "wall / --help"], rows)
    now = result["median"].get("now")
    if now:
        help_s = now["--help"]["wall_s"]
        print()
        print(f"goals (now): stats {now['stats']['wall_s'] / help_s:.2f}x --help (<= 2), "
              f"bm25 search {now['search bm25']['wall_s'] / help_s:.2f}x --help (<= 4)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--collection", help="the collection to use (default: "
                   "$GENSEEK_CACHE/startup/scifact, built when missing)")
    p.add_argument("--repeats", type=int, default=3, help="calls per command (median)")
    p.add_argument("--before", metavar="REV", help="also measure genseek at this git revision")
    p.add_argument("--no-genre", action="store_true", help="skip the GENRE searches")
    args = C.parse_args(p, argv, report)
    if args is None:
        return 0
    return C.emit(measure(args), args.json, report)


if __name__ == "__main__":
    sys.exit(main())
