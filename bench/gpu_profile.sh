#!/usr/bin/env bash
# Where a GPT training step's GPU time goes, kernel by kernel: Nsight Compute (ncu) times every
# kernel of one warm-up and one measured step of bench/gpt_step (GPT-2 124M, bf16, T = 1024), and
# the second step's kernels are summed by name into a table (share of the step, count, mean time).
#
#   bash bench/gpu_profile.sh                                 # from build-gpu/ (bench/gpu_check.sh)
#   PREBUILT=build-gpu-pack.tgz bash bench/gpu_profile.sh     # from a pack of bench/gpu_pack.sh
#   BATCH=8 SHAPE=baby bash bench/gpu_profile.sh
#
# ncu serialises the kernels, so the step's wall time here is not the real one: the table gives
# each kernel's own duration, which is.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/cuda/bin:$PATH
log=$(mktemp -d)
bin=build-gpu/bench
if [ -n "${PREBUILT:-}" ]; then . bench/gpu_prebuilt.sh "$log"; fi
ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "gpu_profile: no ncu (Nsight Compute) here"; exit 1; }
shape=${SHAPE:-gpt2-124m}
batch=${BATCH:-16}
echo "== $ncu on gpt_step --shape $shape --batch $batch --precision bf16, 1 warm-up + 1 step"
"$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
  "$bin/gpt_step" --shape "$shape" --device cuda --precision bf16 --batch "$batch" --steps 1 \
  --warmup 1 --no-peak >"$log/ncu.csv" 2>"$log/ncu.err" || { tail -20 "$log/ncu.err"; exit 1; }
[ -n "${OUT:-}" ] && cp "$log/ncu.csv" "$OUT/"
python3 - "$log/ncu.csv" <<'PY'
import csv, collections, sys
# ncu's CSV follows the program's own output (gpt_step's JSON line has commas too): it starts at
# the header row, and its rows have the header's length.
rows = list(csv.reader(open(sys.argv[1])))
at = next(i for i, r in enumerate(rows) if "Kernel Name" in r and "Metric Value" in r)
head = rows[at]
name_at, value_at = head.index("Kernel Name"), head.index("Metric Value")
times = [(r[name_at], float(r[value_at].replace(",", ""))) for r in rows[at + 1:]
         if len(r) == len(head)]
step = times[len(times) // 2:]  # the second of two like steps
by = collections.defaultdict(lambda: [0.0, 0])
for name, ns in step:
    short = name.removeprefix("void ").split("(")[0].split("<")[0][:60]
    by[short][0] += ns
    by[short][1] += 1
total = sum(v[0] for v in by.values())
print(f"\n{len(times)} kernels in 2 steps; the second step: {len(step)} kernels, "
      f"{total / 1e6:.1f} ms of kernel time\n")
print("| kernel | share | ms | count | mean us |\n|---|---|---|---|---|")
for name, (ns, n) in sorted(by.items(), key=lambda kv: -kv[1][0])[:25]:
    print(f"| `{name}` | {100 * ns / total:.1f}% | {ns / 1e6:.2f} | {n} | {ns / n / 1e3:.1f} |")
PY
