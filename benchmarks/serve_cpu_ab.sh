#!/usr/bin/env bash
# benchmarks/serve_cpu.py on an earlier commit (A) and on this checkout (B), alternating, so two
# serve loops are compared side by side on the same machine, each against its own pass-through.
#
#   benchmarks/serve_cpu_ab.sh REV [ROUNDS] [serve_cpu.py options...]
#   benchmarks/serve_cpu_ab.sh HEAD~3 3 --latency-s 0        # about 1.5 minutes a run
#   benchmarks/serve_cpu_ab.sh HEAD 2 --format v2 --intervals --latency-s 0
#
# Prints one line per run: the side, the round, the serve loop's and the pass-through's CPU µs per
# record (the medians of that run's rounds) and their ratio, pass-through / serve. A runs this
# checkout's benchmark scripts against REV's pipeline (a temporary git worktree, this checkout's
# .venv, PYTHONPATH set to the worktree), so only the library differs; REV needs what
# benchmarks/serve.py imports from pipeline. Options go to both sides; --format v2 stops on a REV
# whose RollingForecaster has no message=. With B_EXTRA set, each round also runs B with those
# options added (B+), say B_EXTRA="--precision auto" for what only this checkout has. Every
# run's JSON and log are kept in a temporary folder, named at the end; with --results FILE
# each run is also a row of FILE (give an absolute path: side A runs in the worktree), with
# its own side's commit.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benchmarks/serve_cpu_ab.sh REV [ROUNDS] [serve_cpu.py options...]}
rounds=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
python=$PWD/.venv/bin/python
script=$PWD/benchmarks/serve_cpu.py
before=$(mktemp -d)
logs=$(mktemp -d --suffix=.serve-cpu-ab)
git worktree add --quiet --detach "$before" "$rev"
trap 'git worktree remove --force "$before"' EXIT
echo "A: $(git -C "$before" rev-parse --short HEAD)  B: this checkout ($(git rev-parse --short HEAD), as it is now)"
printf '%-4s %-5s %10s %16s %7s\n' side round serve_us passthrough_us ratio
sides="A B"; [ -n "${B_EXTRA:-}" ] && sides="A B B+"
for round in $(seq "$rounds"); do
    for side in $sides; do
        dir=$PWD; [ "$side" = A ] && dir=$before
        extra=(); [ "$side" = B+ ] && read -r -a extra <<<"$B_EXTRA"
        run=$logs/$side$round
        if ! (cd "$dir" && PYTHONPATH="$dir" "$python" "$script" --json "$@" "${extra[@]}" >"$run.out" 2>"$run.log"); then
            echo "$side    $round     failed: $(tail -1 "$run.log")"
            continue
        fi
        tail -1 "$run.out" >"$run.json"
        "$python" -c 'import json, sys
f = json.load(open(sys.argv[3]))
print("%-4s %-5s %10s %16s %7s" % (sys.argv[1], sys.argv[2], f["serve_us"], f["passthrough_us"], f["ratio"]))' \
            "$side" "$round" "$run.json"
    done
done
echo "each run's JSON and log: $logs"
