#!/usr/bin/env bash
# Create the two work pools omnifer deploys to (idempotent).
#   cpu: the nightly ingest (decode, detect, score: CPU-bound, scales with workers)
#   gpu: distillation and retraining
set -euo pipefail
PREFECT=${PREFECT:-.venv/bin/prefect}
for pool in cpu gpu; do
  if "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool exists"
  else
    "$PREFECT" work-pool create "$pool" --type process
  fi
done
