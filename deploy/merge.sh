#!/usr/bin/env bash
# The merge step after every worker finished: $STORES/worker-0 .. worker-(COUNT-1) into $STORES/merged
# (no data is copied; the merged manifest refers to the worker shards, so keep the tree together).
# Refuses to run when a worker store is missing; collect --merge refuses incomplete or mismatched ones.
#
#   deploy/merge.sh COUNT
set -euo pipefail
count=${1:?usage: merge.sh COUNT}
bin=${ROSETTA_COLLECT:-target/release/examples/collect}
: "${STORES:?}"
workers=()
for ((i = 0; i < count; i++)); do
  [[ -d "$STORES/worker-$i" ]] || { echo "merge: $STORES/worker-$i is missing (worker $i of $count did not run)" >&2; exit 1; }
  workers+=("$STORES/worker-$i")
done
"$bin" --merge "${workers[@]}" --out "$STORES/merged"
"$bin" --stats --out "$STORES/merged"
