#!/usr/bin/env bash
# The GPU check: one command, one table, one JSON file. Under 8 minutes on one H200.
#
#   launch/gpu_check.sh                      # on a machine with a CUDA device
#   launch/gpu_check.sh --out runs/h200.json
#   launch/gpu_check.sh --dry                # CPU, tiny shapes: every code path, no result
#   launch/gpu_check.sh --only graphs,backbones --models mau,phydnet --budget-s 500
#                                            # what an earlier run's budget left out
#
# It runs `python -m stpdist.gpu_check` (see that module for what is measured) with the
# project's virtual environment when there is one (PYTHON overrides), offline trackers,
# and unbuffered output. A relative --out or PYTHON path is taken from the folder it is
# called from (the check itself runs in the repository root). Exit status: 0 when every
# check passed or was measured, 1 when one failed or raised, 2 without a CUDA device (and
# no --dry).
set -euo pipefail

# from the caller's folder: relative paths below are made absolute before the cd
absolute() { if [[ -n "$1" && "$1" != /* ]]; then echo "$PWD/$1"; else echo "$1"; fi; }

args=()
while (($#)); do
  case "$1" in
    # argparse takes any unambiguous prefix of --out, with a space or an =
    --o | --ou | --out)
      args+=("$1")
      shift
      if (($#)); then
        args+=("$(absolute "$1")")
        shift
      fi
      ;;
    --o=* | --ou=* | --out=*) args+=("${1%%=*}=$(absolute "${1#*=}")") && shift ;;
    *) args+=("$1") && shift ;;
  esac
done

python=${PYTHON:-}
if [[ "$python" == */* ]]; then # a path, not a name looked up on PATH
  python=$(absolute "$python")
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "$python" ]]; then
  if [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
  else
    python=python3
  fi
fi
export WANDB_MODE=offline PYTHONUNBUFFERED=1
exec "$python" -m stpdist.gpu_check ${args[@]+"${args[@]}"}
