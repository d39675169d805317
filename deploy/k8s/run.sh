#!/usr/bin/env bash
# Run the collection Indexed Job, wait for every index to complete, then the merge Job.
#   deploy/k8s/run.sh [timeout, default 24h]
set -euo pipefail
cd "$(dirname "$0")"
timeout=${1:-24h}
kubectl apply -f collect-job.yaml
kubectl wait --for=condition=complete --timeout="$timeout" job/rosetta-collect
kubectl apply -f merge-job.yaml
kubectl wait --for=condition=complete --timeout=30m job/rosetta-merge
kubectl logs job/rosetta-merge
