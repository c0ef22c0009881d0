#!/usr/bin/env bash
# The GPU check: one command, one table, one JSON file. Under 8 minutes on one H200.
#
#   launch/gpu_check.sh                      # on a machine with a CUDA device
#   launch/gpu_check.sh --out runs/h200.json
#   launch/gpu_check.sh --dry                # CPU, tiny shapes: every code path, no result
#
# It runs `python -m stpdist.gpu_check` (see that module for what is measured) with the
# project's virtual environment when there is one (PYTHON overrides), offline trackers,
# and unbuffered output. Exit status: 0 when every check passed or was measured, 1 when
# one failed or raised, 2 without a CUDA device (and no --dry).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-}
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
  else
    python=python3
  fi
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1
exec "$python" -m stpdist.gpu_check "$@"
