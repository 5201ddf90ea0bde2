#!/usr/bin/env bash
# Create the two work pools omnifer deploys to (idempotent). Needs PREFECT_API_URL.
#   cpu: the nightly ingest (decode, detect, score: CPU-bound, scales with workers)
#   gpu: distillation and retraining
# Uses the repository's .venv/bin/prefect when there is one, else `prefect` on PATH
# (override with PREFECT=...).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
default=prefect
[ -x "$repo/.venv/bin/prefect" ] && default="$repo/.venv/bin/prefect"
PREFECT=${PREFECT:-$default}
for pool in cpu gpu; do
  if "$PREFECT" work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "work pool $pool exists"
  else
    "$PREFECT" work-pool create "$pool" --type process
  fi
done
