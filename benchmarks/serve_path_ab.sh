#!/usr/bin/env bash
# benchmarks/serve_path.py on an earlier commit (A) and on this checkout (B), alternating.
#
#   benchmarks/serve_path_ab.sh REV [ROUNDS]
#
# Prints one line per run: the side, the round, then serve_path.py's JSON. A runs this checkout's
# benchmark script against REV's pipeline (a temporary git worktree), so only the library differs.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: benchmarks/serve_path_ab.sh REV [ROUNDS]}
rounds=${2:-3}
python=$PWD/.venv/bin/python
script=$PWD/benchmarks/serve_path.py
before=$(mktemp -d)
git worktree add --quiet --detach "$before" "$rev"
trap 'git worktree remove --force "$before"' EXIT
for round in $(seq "$rounds"); do
    for side in A B; do
        dir=$PWD; [ "$side" = A ] && dir=$before
        echo "$side $round $(cd "$dir" && PYTHONPATH="$dir" "$python" "$script" --json | tail -1)"
    done
done
