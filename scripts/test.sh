#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "llamacpp,hf,openai,serve,train,synth,dense,dev" || exit 1
.venv/bin/python -m pytest -q "$@"
rc=$?
# pytest exits 5 when it collected no test: a wrong selection, not a pass.
[ $rc -eq 5 ] && echo "pytest collected no tests" >&2
exit $rc
