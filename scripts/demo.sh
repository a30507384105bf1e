#!/usr/bin/env bash
# The main job: rerank BM25 top-20 of real SciFact test queries with the embedded model, print the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh llamacpp,report  # report: the plots of runs/demo/report.html
exec .venv/bin/reasonrank demo "$@"
