#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "llamacpp,hf,openai,serve,train,synth,dense,report,pyterrier,langchain,llama-index,mcp,dev" || exit 1
# The report's browser tests drive Debian's chromium (Playwright's own browser downloads are not
# reachable here). Without it they skip, saying so in the summary.
if ! command -v chromium >/dev/null 2>&1; then
  echo "test: installing chromium for the report's browser tests (apt-get)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "test: apt-get install chromium FAILED: the browser tests will skip" >&2
  else
    echo "test: not root, cannot apt-get install chromium: the browser tests will skip" >&2
  fi
fi
.venv/bin/python -m pytest -q "$@"
rc=$?
# pytest exits 5 when it collected no test: a wrong selection, not a pass.
[ $rc -eq 5 ] && echo "pytest collected no tests" >&2
exit $rc
