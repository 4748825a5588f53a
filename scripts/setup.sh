#!/usr/bin/env bash
# Create .venv and install specserve with its dependencies (idempotent; fast when already done).
# CPU machines get the CPU build of torch 2.13.0 (a plain `torch` requirement would pull a multi-GB CUDA build);
# machines with an NVIDIA driver get the CUDA build pip picks for the range in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
stamp=.venv/.specserve-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
  fi
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
