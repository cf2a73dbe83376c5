#!/usr/bin/env bash
# `plan` end to end: the layouts of a run on N ranks with their refusals, the table, JSON and CSV
# outputs, bad input refused with a message naming it, and a memory budget read the same way by
# plan and by train: a layout plan says overflows the budget (naming the tag) stops `train
# --memory-cap-mb` with that tag, and one it says fits trains within it.
# Corpus: $TINYSHAKESPEARE if set, else a small synthetic text.
# Usage: cli_plan.sh path/to/plan path/to/train
set -u

plan=${1:?usage: cli_plan.sh path/to/plan path/to/train}
train=${2:?usage: cli_plan.sh path/to/plan path/to/train}
. "$(dirname "$0")/cli_lib.sh"

corpus=$(test_corpus)
model=(--preset cpu --data "$corpus" --n-layer 4 --n-head 4 --n-embd 64 --block-size 32)

# 1. Four ranks, global batch 12: 214 layouts run, 234 refused (counted in test_plan.cpp).
run "$plan" "${model[@]}" --world 4 --global-batch 12
[ "$rc" -eq 0 ] || { fail "plan --world 4 exited $rc"; show; }
grep -q "214 layouts run, 234 refused" "$tmp/out" || { fail "expected 214 run, 234 refused"; show; }
grep -q "^dp2 tp2 pp1 mb1 1f1b z0 ckpt-none " "$tmp/out" || { fail "no dp2 tp2 row"; show; }

# 2. JSON: --top 5 lines, ascending peak, each with its split and the flags that run it.
run "$plan" "${model[@]}" --world 4 --global-batch 12 --format json --top 5
[ "$rc" -eq 0 ] || { fail "plan --format json exited $rc"; show; }
python3 - "$tmp/out" <<'PY' || fail "JSON output"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 5, len(rows)
peaks = [r["peak_bytes"] for r in rows]
assert peaks == sorted(peaks), peaks
for r in rows:
    tags = sum(r[f"peak_{t}_bytes"] for t in ("parameters", "gradients", "optimizer", "activations", "other"))
    assert tags == r["peak_bytes"], (tags, r)
    assert r["dp"] * r["tp"] * r["pp"] == 4 and r["flags"].startswith("--dp "), r
PY

# 3. CSV with the refusals and their reasons (8 ranks: tp 8 and pp 8 do not fit 4 heads, 4 blocks).
run "$plan" "${model[@]}" --world 8 --global-batch 16 --format csv --show-refused
[ "$rc" -eq 0 ] || { fail "plan --format csv exited $rc"; show; }
head -1 "$tmp/out" | grep -q "^layout,dp,tp,pp," || { fail "CSV header"; show; }
grep -q "tp 8 must divide n_head 4" "$tmp/out" || { fail "no tp refusal in the CSV"; show; }
grep -q "pp 8 is more stages than n_layer 4" "$tmp/out" || { fail "no pp refusal in the CSV"; show; }

# 4. Bad input: named, non-zero exit.
run "$plan" "${model[@]}" --memory-per-rank 12XB
expect_error "a bad size" "--memory-per-rank" "12XB"
run "$plan" --preset cpu --data "$corpus" --n-embd 64 --n-head 3
expect_error "heads that do not divide the width" "n_head"
run "$plan" "${model[@]}" --world 3 --dp 2
expect_error "no layout" "no layout of 3 ranks"

# 5. One budget, two readers: halfway between the serial layout's predicted peaks without and
#    with checkpointed blocks. plan says the first overflows it and names the tag of the
#    allocation that does; `train --memory-cap-mb` stops that run naming the same tag, and trains
#    the checkpointed one within it.
fixed=(--dp 1 --tp 1 --pp 1 --micro-batches 1 --schedule 1f1b --zero 0)
run "$plan" "${model[@]}" "${fixed[@]}" --checkpoint none --format json
peak_none=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["peak_bytes"])' "$tmp/out")
run "$plan" "${model[@]}" "${fixed[@]}" --checkpoint blocks --format json
peak_ckpt=$(python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["peak_bytes"])' "$tmp/out")
cap_mb=$(python3 -c "print(round(($peak_none + $peak_ckpt) / 2 / 2**20, 3))")
echo "predicted peaks: $peak_none bytes (no checkpointing), $peak_ckpt (blocks); budget $cap_mb MiB"
run "$plan" "${model[@]}" "${fixed[@]}" --memory-per-rank "${cap_mb}MiB"
[ "$rc" -eq 0 ] || { fail "plan with a budget exited $rc"; show; }
tag=$(sed -n 's/^dp1 tp1 pp1 mb1 1f1b z0 ckpt-none .* no: \([a-z]*\) overflows.*/\1/p' "$tmp/out")
[ -n "$tag" ] || { fail "plan: ckpt-none should overflow the budget, naming a tag"; show; }
grep -q "ckpt-blocks .* yes$" "$tmp/out" || { fail "plan: ckpt-blocks should fit"; show; }
run "$train" gpt "${model[@]}" "${fixed[@]}" --checkpoint none --memory-cap-mb "$cap_mb" \
  --batch-size 12 --max-iters 3 --eval-interval 100 --eval-iters 1 --threads 1 --out "$tmp/none"
expect_error "train over the budget" "memory cap exceeded" "${tag:-?} needs"
run "$train" gpt "${model[@]}" "${fixed[@]}" --checkpoint blocks --memory-cap-mb "$cap_mb" \
  --batch-size 12 --max-iters 3 --eval-interval 100 --eval-iters 1 --threads 1 --out "$tmp/blocks"
[ "$rc" -eq 0 ] || { fail "train with checkpointed blocks under the budget exited $rc"; show; }

# 6. calibrate writes this machine's profile (under mpirun: with the collectives of 2 ranks);
#    with it, plan adds the predicted step time and ranks by it.
if command -v mpirun >/dev/null 2>&1; then
  launch=(mpirun --allow-run-as-root --oversubscribe --bind-to none -np 2)
  export OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_btl=self,vader
  want_collectives=1
else
  optional_missing "mpirun not found: calibrating on one rank (no collectives)"
  launch=()
  want_collectives=0
fi
run "${launch[@]}" "$plan" calibrate --out "$tmp/profile.json" "${model[@]}" --threads 1 --world 2 --global-batch 12
[ "$rc" -eq 0 ] || { fail "plan calibrate exited $rc"; show; }
python3 - "$tmp/profile.json" "$want_collectives" <<'PY' || fail "the profile"
import json, sys
p = json.load(open(sys.argv[1]))
for k in ("peak_gflops", "attention_gflops", "bandwidth_gbs", "op_overhead_us"):
    assert p[k] > 0, (k, p[k])
assert len(p["gemm"]) > 10 and all(g[4] > 0 for g in p["gemm"]), len(p["gemm"])
if sys.argv[2] == "1":
    for op in ("all_reduce", "reduce_scatter", "all_gather", "send"):
        assert p["collectives"][op]["2"]["gbs"] > 0, op
    # the ranks' pace in step against one alone: measured, and not absurd even on a busy machine
    assert 0.3 < p["busy_pace"] < 20, p["busy_pace"]
PY
if [ "$want_collectives" = 1 ]; then
  run "$plan" "${model[@]}" --world 2 --global-batch 12 --profile "$tmp/profile.json" --format json
  [ "$rc" -eq 0 ] || { fail "plan --profile exited $rc"; show; }
  python3 - "$tmp/out" <<'PY' || fail "plan --profile: step times"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
times = [r["ms_per_step"] for r in rows]
assert len(rows) == 102 and times == sorted(times), (len(rows), times[:5])
for r in rows:
    assert 0 < r["mfu"] < 1 and r["tokens_per_s"] > 0 and r["bubble_ms"] >= 0, r
    assert (r["pp"] == 1) == (r["bubble_ms"] < 1e-9), r
PY
fi
run "$plan" "${model[@]}" --profile "$tmp/nothing.json"
expect_error "a missing profile" "nothing.json"

finish cli_plan
