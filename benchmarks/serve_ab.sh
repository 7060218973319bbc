#!/usr/bin/env bash
# The serve benchmark on an earlier commit (A) and on this checkout (B), alternating, in one run,
# so a refactor can be shown not to change the figures on a shared, noisy machine.
#
#   benchmarks/serve_ab.sh REV [ROUNDS] [serve.py options...]
#   benchmarks/serve_ab.sh 6406ecd 2 --records 300000 --timed 100000 --latency-s 10
#
# Prints one line per run: the side (A or B), the round, then benchmarks/serve.py's JSON.
# A runs from a temporary git worktree of REV with this checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benchmarks/serve_ab.sh REV [ROUNDS] [options]}
rounds=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
python=$PWD/.venv/bin/python
before=$(mktemp -d)
git worktree add --quiet --detach "$before" "$rev"
trap 'git worktree remove --force "$before"' EXIT
for round in $(seq "$rounds"); do
    for side in A B; do
        dir=$PWD; [ "$side" = A ] && dir=$before
        json=$(cd "$dir" && PYTHONPATH="$dir" "$python" benchmarks/serve.py --json "$@" 2>/dev/null | tail -1)
        echo "$side $round $json"
    done
done
