#!/usr/bin/env bash
# Fanned-out collection, checked locally: the commands the Slurm array and the Kubernetes Indexed Job run
# (deploy/worker.sh, deploy/merge.sh), here with 3 workers on the CPU, against one worker over the whole
# corpus. Passes when the merged store holds exactly the single worker's rows: the same documents, token
# ids, positions and bit-identical activations (collect --compare). Workers use --batch-size 1 so that a
# document's activations do not depend on which other documents share its padded batch.
#
#   scripts/fanout-check.sh [WORKERS=3] [DOCS=45]     (after `make models build`; `make fanout-check`)
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-3}
docs=${2:-45}
models=${ROSETTA_MODELS:-$HOME/.cache/rosetta/models}
export ROSETTA_COLLECT=${ROSETTA_COLLECT:-${CARGO_TARGET_DIR:-target}/release/examples/collect}
[[ -x "$ROSETTA_COLLECT" ]] || { echo "fanout-check: $ROSETTA_COLLECT not built (make build)" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rosetta-fanout.XXXXXX")
trap 'rm -rf "$work"' EXIT
# A cross-tokenizer pair, so the check covers alignment: SmolLM2 -> Qwen2.5-Coder 0.5B, chat rows.
python3 - "$docs" > "$work/corpus.jsonl" <<'PY'
import json, sys
n = int(sys.argv[1])
with open("crates/tasks/data/map_prompts.jsonl") as f:
    for line in f.readlines()[:n]:
        print(json.dumps({"messages": [{"role": "user", "content": json.loads(line)["instruction"]}]}))
PY
export SOURCE=$models/smollm2-135m-instruct SOURCE_LAYER=15
export TARGET=$models/qwen2.5-coder-0.5b-instruct TARGET_LAYER=12
export CORPUS=$work/corpus.jsonl DEVICE=cpu COLLECT_ARGS="--batch-size 1 --dtype f32 --shard-mb 1"
echo "[fanout] $workers workers over $docs documents"
pids=()
for ((i = 0; i < workers; i++)); do
  STORES=$work/stores deploy/worker.sh "$i" "$workers" > "$work/worker-$i.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { cat "$work/worker-$i.log" >&2; echo "fanout-check: worker $i failed" >&2; exit 1; }
  tail -n 1 "$work/worker-$i.log"
done
STORES=$work/stores deploy/merge.sh "$workers"
echo "[fanout] one worker over the whole corpus"
STORES=$work/single deploy/worker.sh 0 1
"$ROSETTA_COLLECT" --compare "$work/single/worker-0" --out "$work/stores/merged"
echo "[fanout] passed: the merged store of $workers workers holds exactly the single worker's rows"
