#!/usr/bin/env bash
# The tree is formatted: every C++ and CUDA source under the project's folders is what
# clang-format (Debian 12's, version 14, with the project's .clang-format) makes of it. Prints the
# files that are not, with the command that fixes them. Without clang-format the test is skipped
# (77), or fails under FORGE_REQUIRE_OPTIONAL=1 (CI installs it).
# Usage: check_format.sh SOURCE_ROOT
set -u
root=${1:?usage: check_format.sh SOURCE_ROOT}
cd "$root" || exit 1
formatter=$(command -v clang-format-14 || command -v clang-format)
if [ -z "$formatter" ]; then
  if [ "${FORGE_REQUIRE_OPTIONAL:-}" = 1 ]; then
    echo "FAIL: FORGE_REQUIRE_OPTIONAL=1 and clang-format not found (Debian: apt-get install clang-format)"
    exit 1
  fi
  echo "SKIPPED: clang-format not found (Debian: apt-get install clang-format)"
  exit 77
fi
echo "$("$formatter" --version)"
dirs=(apps autograd bench clients io models optim parallel quant recipes serve tensor tests tools)
mapfile -t files < <(find "${dirs[@]}" -type f \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' \
  -o -name '*.cuh' \) 2>/dev/null | sort)
unformatted=()
for f in "${files[@]}"; do
  "$formatter" --dry-run -Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
done
echo "${#files[@]} files checked"
if [ "${#unformatted[@]}" -gt 0 ]; then
  echo "FAIL: ${#unformatted[@]} file(s) differ from clang-format's output:"
  printf '  %s\n' "${unformatted[@]}"
  echo "fix: $formatter -i ${unformatted[*]}"
  exit 1
fi
echo "check_format: all files formatted"
