#!/usr/bin/env bash
# One collection worker: documents with `id % COUNT == INDEX` of $CORPUS into $STORES/worker-INDEX.
# The same command runs under Slurm (slurm/collect.sbatch), Kubernetes (k8s/collect-job.yaml) and locally
# (scripts/fanout-check.sh). Re-running it resumes an interrupted worker.
#
#   deploy/worker.sh INDEX COUNT
#
# Environment (all required unless a default is shown):
#   ROSETTA_COLLECT  the collect binary (default: target/release/examples/collect)
#   SOURCE, SOURCE_LAYER            source checkpoint directory and layer
#   TARGET, TARGET_LAYER            target checkpoint directory and layer (optional: unpaired store)
#   CORPUS                          JSONL ({"text"} / {"messages"} rows) or .txt corpus
#   STORES                          shared directory that receives worker-INDEX/
#   DEVICE                          default cuda:0
#   COLLECT_ARGS                    extra collect flags (e.g. "--dtype f16 --batch-size 16")
set -euo pipefail
index=${1:?usage: worker.sh INDEX COUNT}
count=${2:?usage: worker.sh INDEX COUNT}
bin=${ROSETTA_COLLECT:-target/release/examples/collect}
: "${SOURCE:?}" "${SOURCE_LAYER:?}" "${CORPUS:?}" "${STORES:?}"
pair=()
if [[ -n "${TARGET:-}" ]]; then
  pair=(--target "$TARGET" --target-layer "${TARGET_LAYER:?TARGET needs TARGET_LAYER}")
fi
mkdir -p "$STORES"
# shellcheck disable=SC2086 # COLLECT_ARGS is a list of flags
exec "$bin" --source "$SOURCE" --source-layer "$SOURCE_LAYER" "${pair[@]}" --input "$CORPUS" \
  --shard "$index/$count" --device "${DEVICE:-cuda:0}" --out "$STORES/worker-$index" ${COLLECT_ARGS:-}
