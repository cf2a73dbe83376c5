#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one go (a few minutes on an H200):
#   1. builds the CUDA tests, the benchmark and `train` for this GPU's architecture (build-gpu/);
#   2. runs every CUDA test (each op on the GPU against the CPU op, the allocator, NCCL);
#   3. GPT-2 124M (T = 1024, B = 16) training steps in bf16: tokens/s, ms/step and the model FLOP
#      utilisation against the GPU's measured peak (a large bf16 cuBLASLt product timed in the same
#      run, bench/gpt_step.cpp);
#   4. a short `train gpt --device cuda` run on Tiny Shakespeare when $TINYSHAKESPEARE or
#      ../shared/data has it.
# Prints a table at the end; exits non-zero when a build or a test fails.
#
#   bash bench/gpu_check.sh            # from the repository root
#   STEPS=20 BATCH=32 bash bench/gpu_check.sh
#
# On a GPU machine without this project's build dependencies (a bare CUDA image), run what
# bench/gpu_pack.sh built elsewhere instead of building: PREBUILT=build-gpu-pack.tgz (or its folder).
# Its CUDA libraries (runtime, cuBLAS, NCCL) are the GPU machine's own: found in /usr/local/cuda
# or in Python's nvidia-* packages.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
steps=${STEPS:-10}
batch=${BATCH:-16}
dir=build-gpu
log=$(mktemp -d)
t_start=$(date +%s)
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
if [ -n "${PREBUILT:-}" ]; then
  . bench/gpu_prebuilt.sh "$log"
else
  if [ ! -f $dir/build.ninja ]; then
    meson setup $dir -Dcuda=enabled -Dgpu_arch=native -Dbuildtype=release >"$log/setup" 2>&1 ||
      { cat "$log/setup"; exit 1; }
  fi
  tests=$(meson introspect $dir --tests | python3 -c '
import json, sys
print(" ".join(t["name"] for t in json.load(sys.stdin) if "cuda" in t["name"] or "nccl" in t["name"]))')
  targets=$(meson introspect $dir --tests | python3 -c '
import json, os, sys
root = os.path.realpath(sys.argv[1])
for t in json.load(sys.stdin):
    if "cuda" in t["name"] or "nccl" in t["name"]:
        for c in t["cmd"]:
            c = os.path.realpath(c)
            if c.startswith(root + "/"): print(os.path.relpath(c, root))
' $dir | sort -u)
  echo "== build ($(nproc) cores): $targets bench/gpt_step apps/train"
  if ! ninja -C $dir $targets bench/gpt_step apps/train >"$log/build" 2>&1; then
    tail -50 "$log/build"; echo "build failed"; exit 1
  fi
  bin=
fi
t_built=$(date +%s)

# A CUDA test that finds no usable GPU here fails instead of skipping (tests/cuda_testing.h).
export FORGE_REQUIRE_GPU=1
if [ -n "$bin" ]; then
  # meson test's way without meson: exit 0 ok, 77 skipped, else failed; the log of a failure shown
  echo "== GPU tests: $(cut -d' ' -f1 "$pack/tests.txt" | paste -sd' ')"
  tests_ok=0 tests_fail=0 tests_skip=0
  while read -r name cmd; do
    timeout 600 ${cmd//PACK/$pack} </dev/null >"$log/test.$name" 2>&1; rc=$?
    case $rc in
      0) tests_ok=$((tests_ok + 1)); r=OK
         n=$(grep -c SKIPPED "$log/test.$name")
         [ "$n" -gt 0 ] && r="OK, $n cases SKIPPED ($(grep -m1 SKIPPED "$log/test.$name"))" ;;
      77) tests_skip=$((tests_skip + 1)); r="SKIP $(grep -m1 SKIPPED "$log/test.$name")" ;;
      *) tests_fail=$((tests_fail + 1)); r="FAIL (exit $rc)"; tail -40 "$log/test.$name"; status=1 ;;
    esac
    echo "  $name: $r"
  done <"$pack/tests.txt"
else
  echo "== GPU tests: $tests"
  meson test -C $dir --no-rebuild --print-errorlogs $tests | tee "$log/tests" | grep -E "^ *[0-9]+/|SKIP|FAIL" || true
  grep -q "^Fail: *0" "$log/tests" || status=1
  tests_ok=$(awk '/^Ok:/ {print $2}' "$log/tests"); tests_fail=$(awk '/^Fail:/ {print $2}' "$log/tests")
  tests_skip=$(awk '/^Skipped:/ {print $2}' "$log/tests")
fi
t_tested=$(date +%s)

gpt_step=./$dir/bench/gpt_step train=./$dir/apps/train
if [ -n "$bin" ]; then
  gpt_step=$bin/gpt_step train=$bin/train
  [ -f "$pack/tinyshakespeare.txt" ] && TINYSHAKESPEARE=$pack/tinyshakespeare.txt
fi
echo "== GPT-2 124M bf16 training, B=$batch T=1024, $steps timed steps"
$gpt_step --shape gpt2-124m --device cuda --precision bf16 --batch "$batch" \
  --steps "$steps" --warmup 3 | tee "$log/bench" || status=1

if [ -z "${TINYSHAKESPEARE:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  TINYSHAKESPEARE=$(cd ../shared/data && pwd)/tinyshakespeare.txt
fi
if [ -n "${TINYSHAKESPEARE:-}" ]; then
  echo "== train gpt --device cuda (baby preset, 200 steps, bf16)"
  $train gpt --preset baby --device cuda --precision bf16 --max-iters 200 \
    --eval-interval 100 --eval-iters 20 --out "$log/out" --data "$TINYSHAKESPEARE" 2>&1 |
    grep -E "val loss|step +200|error" | tee "$log/train" || status=1
else
  echo "== train gpt --device cuda: skipped (no Tiny Shakespeare: set TINYSHAKESPEARE)"
fi

python3 - "$log/bench" "$tests_ok" "$tests_fail" "$tests_skip" $((t_built - t_start)) \
  $((t_tested - t_built)) $(( $(date +%s) - t_start )) <<'PY'
import json, sys
bench, ok, fail, skip, t_build, t_test, t_all = sys.argv[1:]
r = {}
for line in open(bench):
    if line.startswith("{"): r = json.loads(line)
print("\n| what | value |\n|---|---|")
print(f"| GPU tests | {ok or 0} ok, {fail or 0} failed, {skip or 0} skipped |")
if r:
    print(f"| GPT-2 124M bf16 B={r['batch']} T={r['seq']} | {r['tokens_per_s']:.0f} tokens/s, "
          f"{r['median_ms']:.1f} ms/step (min {r['min_ms']:.1f}) |")
    print(f"| measured bf16 peak | {r['peak_tflops_measured']:.1f} TFLOP/s |")
    print(f"| model FLOP/s | {r['gflops'] / 1e3:.1f} TFLOP/s = {100 * r['mfu']:.1f}% MFU |")
    print(f"| peak memory | {r['peak_bytes'] / 2**30:.2f} GiB |")
    print(f"| final loss | {r['loss']:.4f} |")
else:
    print("| GPT-2 124M | no result |")
print(f"| time | build {t_build} s, tests {t_test} s, total {t_all} s |")
PY
exit $status
