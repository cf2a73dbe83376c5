#!/usr/bin/env bash
# The PyTorch cross-check of the GPT (suite xcheck): gpt_torch_dump writes our weights, batch,
# logits, loss, gradients and AdamW trajectory into a temporary directory, torch_gpt_check.py
# recomputes them with PyTorch and compares. Exit status: the check's (77: skipped, no torch; a
# failure instead under FORGE_REQUIRE_OPTIONAL=1, which CI sets).
# Usage: torch_gpt_check.sh path/to/gpt_torch_dump
set -u

dump=${1:?usage: torch_gpt_check.sh path/to/gpt_torch_dump}
here=$(cd "$(dirname "$0")" && pwd)
python=${TORCH_PYTHON:-/usr/bin/python3}  # Debian's python3-torch lives with the system python
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ ! -x "$python" ]; then
  if [ "${FORGE_REQUIRE_OPTIONAL:-}" = 1 ]; then
    echo "FAIL: FORGE_REQUIRE_OPTIONAL=1 and no Python interpreter at $python (set TORCH_PYTHON)"
    exit 1
  fi
  echo "SKIPPED: no Python interpreter at $python (set TORCH_PYTHON)"
  exit 77
fi
"$dump" "$tmp" || { echo "FAIL: $dump $tmp exited $?"; exit 1; }
"$python" "$here/torch_gpt_check.py" "$tmp"
