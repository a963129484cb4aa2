#!/usr/bin/env bash
# Every benchmark's --quick mode from a fresh clone and an empty cache, one after another.
#
#   benchmarks/fresh_clone.sh [SUMMARY.json]
#
# 1. `git clone`s this checkout's HEAD (committed work only) into a new folder beside it, so
#    that ../shared/datasets resolves from the clone as it does from the checkout (or set
#    GENSEEK_DATASETS);
# 2. points GENSEEK_CACHE at a new empty folder: every collection, encoded corpus, model copy
#    and trained model a benchmark needs is built there by the benchmark itself;
# 3. runs each quick mode with the existing virtual environment's python (nothing is
#    installed; the scripts run are the clone's, from the clone's root), sequentially, each
#    bounded by `timeout` (TIMEOUT_S, default 1800 s);
# 4. prints, for each: the command, its exit status, wall seconds and the load average before
#    and after (on stderr), and writes a JSON summary to SUMMARY.json (default: stdout).
#
# Environment: PYTHON (default: the checkout's .venv/bin/python), SCRIPTS (space-separated
# script names, a subset of the list below, in the order given), TIMEOUT_S, LOGS (folder for
# each run's stdout/stderr; default a new temporary one, kept), KEEP=1 (keep the clone and
# the cache). Exit status: 0 when every run exited 0, else 1.
#
# It takes long (the first runs build the shared collections and the model copies): run it
# when the machine is quiet, e.g. `nohup benchmarks/fresh_clone.sh sweep.json 2> sweep.log &`.
set -uo pipefail

src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel) || exit 2
python=${PYTHON:-$src/.venv/bin/python}
timeout_s=${TIMEOUT_S:-1800}
summary=${1:-}
[ -x "$python" ] || { echo "error: no python at $python (set PYTHON)" >&2; exit 2; }

# Cheapest first; the first user of a collection builds it (beir_eval: cisi; sparse: scifact;
# vector_indexes: cranfield, cacm, npl).
ALL="beir_eval.py concurrent_writes.py indexing.py incremental.py api_load.py stress.py
constrained_decoding.py fmindex.py sparse.py rerank.py generative.py vector_indexes.py
_vector_quality.py"
scripts=${SCRIPTS:-$ALL}

parent=$(dirname "$src")
if [ -n "${GENSEEK_DATASETS:-}" ]; then  # the datasets are named: the clone can go anywhere
    clone=$(mktemp -d "${TMPDIR:-/tmp}/genseek-fresh-clone.XXXXXX") || exit 2
else
    clone=$(mktemp -d "$parent/genseek-fresh-clone.XXXXXX") || exit 2
fi
cache=$(mktemp -d "${TMPDIR:-/tmp}/genseek-fresh-cache.XXXXXX") || exit 2
logs=${LOGS:-$(mktemp -d "${TMPDIR:-/tmp}/genseek-fresh-logs.XXXXXX")}
mkdir -p "$logs"
cleanup() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "kept: clone $clone, cache $cache" >&2
    else
        rm -rf "$clone" "$cache"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git clone --quiet --no-hardlinks "$src" "$clone" || exit 2
commit=$(git -C "$clone" rev-parse HEAD)
datasets=${GENSEEK_DATASETS:-$parent/shared/datasets}
[ -d "$datasets" ] || { echo "error: no datasets folder $datasets (set GENSEEK_DATASETS)" >&2; exit 2; }
echo "clone of $commit in $clone; GENSEEK_CACHE=$cache (empty); datasets $datasets;" \
     "python $python; logs in $logs" >&2

: > "$logs/runs.tsv"
failed=0
for script in $scripts; do
    case " $(echo $ALL) " in *" $script "*) ;; *) echo "error: unknown script $script" >&2; exit 2;; esac
    stem=${script%.py}
    args=(--quick)
    cmd="$python benchmarks/$script ${args[*]}"
    before=$(cut -d' ' -f1-3 /proc/loadavg)
    start=$(date +%s.%N)
    (cd "$clone" && GENSEEK_CACHE="$cache" timeout "$timeout_s" "$python" "benchmarks/$script" \
        "${args[@]}" > "$logs/$stem.out" 2> "$logs/$stem.err")
    rc=$?
    end=$(date +%s.%N)
    after=$(cut -d' ' -f1-3 /proc/loadavg)
    seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
    [ "$rc" = 0 ] || failed=1
    note=""
    [ "$rc" = 124 ] && note=" (timed out after ${timeout_s}s)"
    echo "== $cmd: exit $rc$note, ${seconds}s wall, load average $before -> $after" >&2
    if [ "$rc" != 0 ]; then
        tail -n 5 "$logs/$stem.err" | sed 's/^/   | /' >&2
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$script" "$cmd" "$rc" "$seconds" "$before" "$after" \
        >> "$logs/runs.tsv"
done

"$python" - "$logs/runs.tsv" "$commit" "$cache" "$datasets" "$logs" "$timeout_s" "$summary" <<'EOF'
import json, os, platform, sys
tsv, commit, cache, datasets, logs, timeout_s, out = sys.argv[1:]
runs = []
for line in open(tsv, encoding="utf-8"):
    script, cmd, rc, seconds, before, after = line.rstrip("\n").split("\t")
    stem = script[:-3]
    runs.append({"script": script, "command": cmd, "exit": int(rc), "seconds": float(seconds),
                 "timed_out": rc == "124", "loadavg_before": [float(x) for x in before.split()],
                 "loadavg_after": [float(x) for x in after.split()],
                 "stdout": os.path.join(logs, stem + ".out"),
                 "stderr": os.path.join(logs, stem + ".err")})
result = {"commit": commit, "cache": cache, "datasets": datasets, "timeout_s": int(timeout_s),
          "cpu_count": os.cpu_count(), "hostname": platform.node(),
          "ok": all(r["exit"] == 0 for r in runs), "runs": runs}
text = json.dumps(result, indent=1) + "\n"
if out:
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"summary: {out}", file=sys.stderr)
else:
    sys.stdout.write(text)
EOF
exit "$failed"
