#!/usr/bin/env bash
# Packs the GPU check for a machine that has a GPU, its driver and the CUDA libraries but not this
# project's build dependencies (fmt, toml++, OpenMPI, ...), such as a bare CUDA image:
#   1. builds, here, in build/ (configured with the CUDA backend for -Dgpu_arch), the CUDA tests,
#      bench/gpt_step and apps/train;
#   2. copies them stripped into DIR/bin, with the list of the CUDA tests (DIR/tests.txt: a name,
#      then its command, run from the repository root with PACK standing for the pack's folder), the shared libraries they need beyond the C runtime and CUDA's own
#      (DIR/lib) and Tiny Shakespeare when $TINYSHAKESPEARE or ../shared/data has it.
#
#   3. writes DIR.tgz of it (about 30 MB), to carry.
#
#   bash bench/gpu_pack.sh [DIR]                # DIR defaults to build-gpu-pack (git-ignored)
#   PREBUILT=DIR.tgz bash bench/gpu_check.sh    # then, on the GPU machine, from the repository root
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
dir=${1:-build-gpu-pack}
build=build

[ -f $build/build.ninja ] || meson setup $build --buildtype=release
grep -q "CUDA backend *: *True" $build/meson-logs/meson-log.txt ||
  { echo "gpu_pack: $build/ has no CUDA backend (is nvcc on PATH?)" >&2; exit 1; }

# name, then command with the build's absolute paths made relative to the pack (bin/NAME)
meson introspect $build --tests | /usr/bin/python3 -c '
import json, os, sys
build = os.path.realpath(sys.argv[1])
for t in json.load(sys.stdin):
    if "cuda" not in t["name"] and "nccl" not in t["name"]: continue
    cmd = []
    for c in t["cmd"]:
        r = os.path.realpath(c)
        if r.startswith(build + "/"): c = "PACK/bin/" + os.path.basename(r); print("target", os.path.relpath(r, build), file=sys.stderr)
        elif os.path.isabs(c): c = os.path.relpath(r, os.path.dirname(build))
        cmd.append(c)
    print(t["name"], *cmd)
' $build >/tmp/gpu_pack_tests.$$ 2>/tmp/gpu_pack_targets.$$
targets="$(awk '/^target/ {print $2}' /tmp/gpu_pack_targets.$$ | sort -u) bench/gpt_step apps/train"
ninja -C $build $targets

rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/lib"
mv /tmp/gpu_pack_tests.$$ "$dir/tests.txt" && rm -f /tmp/gpu_pack_targets.$$
for t in $targets; do strip -o "$dir/bin/$(basename $t)" $build/$t; done
# The C runtime and the C++ runtime come from the GPU machine (its own are as new or newer, and
# CUDA's libraries there need them); so do the CUDA runtime, cuBLAS and NCCL.
for t in $targets; do ldd $build/$t; done | awk '$3 ~ /^\// {print $3}' | sort -u |
  grep -v -E '/(libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt|libnccl)\.so' |
  while read -r lib; do cp -L "$lib" "$dir/lib/"; done
if [ -z "${TINYSHAKESPEARE:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  TINYSHAKESPEARE=../shared/data/tinyshakespeare.txt
fi
[ -n "${TINYSHAKESPEARE:-}" ] && cp "$TINYSHAKESPEARE" "$dir/tinyshakespeare.txt"
tar czf "$dir.tgz" -C "$dir" .
echo "gpu_pack: $dir.tgz ($(du -sh "$dir.tgz" | cut -f1)) of $dir ($(du -sh "$dir" | cut -f1)): $(ls "$dir/bin" | wc -l) programs, $(ls "$dir/lib" | wc -l) libraries, $(wc -l <"$dir/tests.txt") tests"
