#!/usr/bin/env bash
# Submit COUNT collection workers as a Slurm job array and the merge job after them.
#   SOURCE=... SOURCE_LAYER=... TARGET=... TARGET_LAYER=... CORPUS=... STORES=/shared/run1 \
#     deploy/slurm/submit.sh 8
set -euo pipefail
count=${1:-8}
cd "$(dirname "$0")/../.."
: "${SOURCE:?}" "${SOURCE_LAYER:?}" "${CORPUS:?}" "${STORES:?}"
array=$(sbatch --parsable --array=0-$((count - 1)) deploy/slurm/collect.sbatch)
merge=$(COUNT=$count sbatch --parsable --dependency=afterok:"$array" deploy/slurm/merge.sbatch)
echo "collection array $array ($count workers), merge job $merge; the merged store: $STORES/merged"
