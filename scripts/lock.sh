#!/usr/bin/env bash
# Rewrite constraints.txt (the lock) from the .venv that `bash scripts/test.sh` set up, after a
# deliberate upgrade has passed the tests. The header comment is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  sed -n '1,/^# Regenerate/p' constraints.txt
  # +cpu is a local version label: `torch==2.13.0` matches the CPU build and lets a GPU user swap it.
  .venv/bin/python -m pip freeze --exclude-editable | grep -v '^#' | sed -E 's/^(torch==[^+]+)\+.*/\1/'
} > constraints.txt.new
mv constraints.txt.new constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages" >&2
