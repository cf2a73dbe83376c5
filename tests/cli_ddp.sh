#!/usr/bin/env bash
# `mpirun -np 2 train gpt --dp 2` end to end: the same losses as one process with twice the batch,
# --resume with the same number of ranks reproducing the uninterrupted run, ZeRO stages 1-3 (the
# same losses as DDP, checkpoints that resume under any stage, DDP or another dp), a memory cap
# that stops a run naming what overflowed, f16 loss scaling skipping the same steps under every
# stage, a grid that does not match the job refused, and faults: a rank that throws at start,
# rank 0 failing mid-run while the other waits for it, and a rank killed from outside, each end
# the whole job with a non-zero status and a message naming the rank, within 30 s.
# Corpus: $TINYSHAKESPEARE if set, else a small synthetic text.
# Usage: cli_ddp.sh path/to/train
set -u

train=${1:?usage: cli_ddp.sh path/to/train}
. "$(dirname "$0")/cli_lib.sh"
use_mpirun

corpus=$(test_corpus)
# Flags may be given once: per-run ones (--data, --eval-interval) are added where used.
# Small buckets (10 KB) take MPI's all-reduce; test 5 uses 1 MiB, which takes the shared-memory one.
tiny=(--n-layer 2 --n-head 2 --n-embd 32 --block-size 16 --eval-iters 2 --threads 1)
tiny_data=("${tiny[@]}" --data "$corpus" --eval-interval 10 --bucket-mb 0.01)

# 1. Two ranks with batch 4 each against one process with batch 8: losses within 1e-5 relative.
run "$train" gpt "${tiny_data[@]}" --batch-size 8 --max-iters 20 --out "$tmp/serial" --metrics "$tmp/serial.jsonl"
[ "$rc" -eq 0 ] || { fail "serial run exited $rc"; show; }
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --max-iters 20 \
  --out "$tmp/dp" --metrics "$tmp/dp.jsonl"
[ "$rc" -eq 0 ] || { fail "dp=2 run exited $rc"; show; }
grep -q "data parallel: 2 ranks" "$tmp/out" || { fail "no data-parallel line"; show; }
[ "$(grep -c '^step .*| loss' "$tmp/out")" -eq 2 ] || { fail "expected 2 step lines (steps 10 and 20) from rank 0 only"; show; }
worst=$(compare_losses "$tmp/serial.jsonl" "$tmp/dp.jsonl" 20 1e-5) || fail "losses differ: $worst"
echo "dp=2 against serial batch 8: worst relative loss difference $worst"

# 2. Resume with the same number of ranks: steps 11-20 as in the uninterrupted run (another
#    number: 2c).
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --max-iters 10 \
  --out "$tmp/half" --metrics "$tmp/half.jsonl"
[ "$rc" -eq 0 ] || { fail "first half exited $rc"; show; }
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --max-iters 20 \
  --out "$tmp/half" --resume "$tmp/half" --metrics "$tmp/half.jsonl"
[ "$rc" -eq 0 ] || { fail "resumed half exited $rc"; show; }
worst=$(compare_losses "$tmp/dp.jsonl" "$tmp/half.jsonl" 20 0) ||
  fail "resumed dp=2 run differs from the uninterrupted one: $worst"

# 2b. ZeRO stage 1 (AdamW's state partitioned over the 2 ranks): DDP's losses within 1e-5; resumed
#     under ZeRO, the uninterrupted ZeRO run's exactly; resumed without ZeRO, within 1e-5.
# zero_against_ddp STAGE NAME [FLAGS...]: 20 steps on 2 ranks under ZeRO stage STAGE into
# $tmp/NAME (checkpoints) and $tmp/NAME.jsonl, its ZeRO line, and DDP's losses within 1e-5.
zero_against_ddp() {
  local z=$1 name=$2
  shift 2
  local what="ZeRO-$z${*:+ with $*}"
  run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --zero "$z" \
    --max-iters 20 --out "$tmp/$name" --metrics "$tmp/$name.jsonl" "$@"
  [ "$rc" -eq 0 ] || { fail "--zero $z run exited $rc"; show; return; }
  grep -q "ZeRO stage $z" "$tmp/out" || { fail "no ZeRO-$z line"; show; }
  worst=$(compare_losses "$tmp/dp.jsonl" "$tmp/$name.jsonl" 20 1e-5) ||
    fail "$what against DDP: $worst"
  echo "$what against DDP: worst relative loss difference $worst"
}
zero_against_ddp 1 zero
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --zero 1 --max-iters 10 \
  --out "$tmp/zhalf" --metrics "$tmp/zhalf.jsonl"
[ "$rc" -eq 0 ] || { fail "first ZeRO half exited $rc"; show; }
cp -r "$tmp/zhalf" "$tmp/zhalf_ddp"
cp "$tmp/zhalf.jsonl" "$tmp/zhalf_ddp.jsonl"
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --zero 1 --max-iters 20 \
  --out "$tmp/zhalf" --resume "$tmp/zhalf" --metrics "$tmp/zhalf.jsonl"
[ "$rc" -eq 0 ] || { fail "resumed ZeRO half exited $rc"; show; }
worst=$(compare_losses "$tmp/zero.jsonl" "$tmp/zhalf.jsonl" 20 0) ||
  fail "resumed ZeRO run differs from the uninterrupted one: $worst"
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --max-iters 20 \
  --out "$tmp/zhalf_ddp" --resume "$tmp/zhalf_ddp" --metrics "$tmp/zhalf_ddp.jsonl"
[ "$rc" -eq 0 ] || { fail "ZeRO checkpoint resumed under DDP exited $rc"; show; }
worst=$(compare_losses "$tmp/dp.jsonl" "$tmp/zhalf_ddp.jsonl" 20 1e-5) ||
  fail "ZeRO checkpoint resumed under DDP: $worst"
# 2c. ZeRO stages 2 (gradients partitioned too, reduce-scattered during backward) and 3
#     (parameters too, gathered per block): DDP's losses within 1e-5, with 2 micro-batches
#     (gradient accumulation) for stage 3; a stage-3 checkpoint resumed under stage 3 continues
#     the uninterrupted run exactly, and under stage 2 within 1e-5 (the state is keyed by name).
zero_against_ddp 2 z2
zero_against_ddp 3 z3 --micro-batches 2
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --zero 3 --max-iters 20 \
  --micro-batches 2 --out "$tmp/z3r" --resume "$tmp/z3/ckpt-000010" --metrics "$tmp/z3r.jsonl"
[ "$rc" -eq 0 ] || { fail "resumed ZeRO-3 run exited $rc"; show; }
worst=$(compare_losses "$tmp/z3.jsonl" "$tmp/z3r.jsonl" 10 0) ||
  fail "resumed ZeRO-3 run differs from the uninterrupted one: $worst"
run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --batch-size 4 --dp 2 --zero 2 --max-iters 20 \
  --out "$tmp/z3as2" --resume "$tmp/z3/ckpt-000010" --metrics "$tmp/z3as2.jsonl"
[ "$rc" -eq 0 ] || { fail "ZeRO-3 checkpoint resumed under ZeRO-2 exited $rc"; show; }
worst=$(compare_losses "$tmp/dp.jsonl" "$tmp/z3as2.jsonl" 10 1e-5) ||
  fail "ZeRO-3 checkpoint resumed under ZeRO-2: $worst"
# ... and under another dp with the same global batch (dp x batch-size 8): in one process, and
#     on 4 ranks under ZeRO-2 (the partitions cut anew by name and element range).
run "$train" gpt "${tiny_data[@]}" --batch-size 8 --max-iters 20 --out "$tmp/z3as1" \
  --resume "$tmp/z3/ckpt-000010" --metrics "$tmp/z3as1.jsonl"
[ "$rc" -eq 0 ] || { fail "ZeRO-3 dp 2 checkpoint resumed in one process exited $rc"; show; }
grep -q "saved at dp 2, now dp 1" "$tmp/out" || { fail "no dp change in the resume line"; show; }
worst=$(compare_losses "$tmp/dp.jsonl" "$tmp/z3as1.jsonl" 10 1e-5) ||
  fail "ZeRO-3 dp 2 checkpoint resumed in one process: $worst"
run "${mpi[@]}" -np 4 "$train" gpt "${tiny_data[@]}" --batch-size 2 --dp 4 --zero 2 --max-iters 20 \
  --out "$tmp/z3as4" --resume "$tmp/z3/ckpt-000010" --metrics "$tmp/z3as4.jsonl"
[ "$rc" -eq 0 ] || { fail "ZeRO-3 dp 2 checkpoint resumed on dp 4 exited $rc"; show; }
worst=$(compare_losses "$tmp/dp.jsonl" "$tmp/z3as4.jsonl" 10 1e-5) ||
  fail "ZeRO-3 dp 2 checkpoint resumed under ZeRO-2 on dp 4: $worst"
echo "ZeRO-3 dp 2 checkpoint resumed at dp 1 and under ZeRO-2 at dp 4: worst $worst"
run "$train" gpt "${tiny_data[@]}" --zero 4 --max-iters 1 --out "$tmp/z4"
expect_error "--zero 4" "zero must be 0, 1, 2 or 3"

# 2d. A per-rank memory cap too small for the model stops the run at start-up, naming the tag
#     that overflowed; a cap it fits trains.
#     A 4-layer, 256-wide model (12 MiB of parameters) under a 10 MiB cap: the corpus fits (8.5 MiB
#     of tokens when it is Tiny Shakespeare), the parameters do not.
wide=(--n-layer 4 --n-head 4 --n-embd 256 --block-size 16 --eval-iters 2 --threads 1 --data "$corpus")
run "$train" gpt "${wide[@]}" --max-iters 2 --memory-cap-mb 10 --out "$tmp/cap"
expect_error "--memory-cap-mb 10" "memory cap exceeded on cpu: parameters needs"
run "$train" gpt "${tiny_data[@]}" --max-iters 2 --memory-cap-mb 64 --out "$tmp/cap"
[ "$rc" -eq 0 ] || { fail "a 64 MiB cap exited $rc"; show; }
#     What ZeRO is for: an 8-layer, 256-wide model (6.3M parameters) needs 16P = 96 MiB a rank
#     under DDP, more than a 90 MiB cap; ZeRO-3 on 2 ranks (8P, plus two blocks gathered and the
#     corpus) trains under it, and saves under it: each rank writes its own partition (joining the
#     moments on one rank would take 8P = 48 MiB more there). A partition file missing is named.
deep=(--n-layer 8 --n-head 4 --n-embd 256 --block-size 16 --eval-iters 2 --threads 1 --data "$corpus")
run "${mpi[@]}" -np 2 "$train" gpt "${deep[@]}" --dp 2 --batch-size 4 --max-iters 3 --out "" \
  --memory-cap-mb 90
[ "$rc" -ne 0 ] && grep -q "memory cap exceeded on cpu: optimizer needs" "$tmp/err" ||
  { fail "DDP under a 90 MiB cap: expected the optimizer's state to overflow (exit $rc)"; show; }
run "${mpi[@]}" -np 2 "$train" gpt "${deep[@]}" --dp 2 --zero 3 --batch-size 4 --max-iters 3 \
  --out "$tmp/zcap" --memory-cap-mb 90
[ "$rc" -eq 0 ] && grep -q "saved checkpoint" "$tmp/out" ||
  { fail "ZeRO-3 under a 90 MiB cap exited $rc"; show; }
ls "$tmp/zcap/ckpt-000003/zero-pp0-tp0-dp1.safetensors" >/dev/null ||
  { fail "ZeRO-3 checkpoint: no per-rank file"; ls "$tmp/zcap/ckpt-000003"; }
rm "$tmp/zcap/ckpt-000003/zero-pp0-tp0-dp1.safetensors"
run "$train" gpt "${deep[@]}" --batch-size 8 --max-iters 4 --resume "$tmp/zcap" --out "$tmp/zcap2"
expect_error "a ZeRO checkpoint missing a rank's file" "dp rank 1) is missing" \
  "zero-pp0-tp0-dp1.safetensors"

# 2e. f16 with dynamic loss scaling from a scale that overflows: the inf check is global, so DDP,
#     ZeRO-2 and ZeRO-3 skip the same first steps and then agree within 1e-5.
f16=(--batch-size 4 --dp 2 --max-iters 20 --precision f16 --init-scale 3e7 --out "")
for z in 0 2 3; do
  run "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" "${f16[@]}" --zero $z --metrics "$tmp/f16_$z.jsonl"
  [ "$rc" -eq 0 ] || { fail "f16 --zero $z exited $rc"; show; }
  skipped=$(grep -o '"skipped": 1' "$tmp/f16_$z.jsonl" | wc -l)
  [ "$skipped" -ge 1 ] && [ "$skipped" -le 10 ] ||
    fail "f16 --zero $z: $skipped skipped steps, expected a few at the start"
  [ "$z" = 0 ] && skipped0=$skipped
  [ "$skipped" = "${skipped0:-}" ] || fail "f16 --zero $z skipped $skipped steps, DDP $skipped0"
done
for z in 2 3; do
  worst=$(compare_losses "$tmp/f16_0.jsonl" "$tmp/f16_$z.jsonl" 20 1e-5) ||
    fail "f16 ZeRO-$z against DDP: $worst"
done
echo "f16 with loss scaling: $skipped0 steps skipped alike; ZeRO-3 against DDP: worst $worst"

# 3. A grid that does not match the job.
run timeout 60 "${mpi[@]}" -np 2 "$train" gpt "${tiny_data[@]}" --dp 3 --max-iters 5 --out "$tmp/bad"
expect_error "--dp 3 on 2 ranks" "needs 3 ranks" "has 2"

# 4. A rank that throws (rank 1 alone cannot read its corpus) ends the job, naming the rank.
start=$(date +%s)
run timeout 60 "${mpi[@]}" -np 1 "$train" gpt "${tiny_data[@]}" --dp 2 --max-iters 5 --out "$tmp/t" : \
  -np 1 "$train" gpt "${tiny[@]}" --eval-interval 10 --bucket-mb 0.01 --dp 2 --max-iters 5 --out "$tmp/t" \
  --data "$tmp/missing.txt"
took=$(($(date +%s) - start))
expect_error "a rank that throws" "rank 1: error" "missing.txt"
[ "$rc" -ne 124 ] && [ "$took" -le 30 ] || fail "a rank that throws: the job took ${took}s (rc $rc)"
echo "a rank that throws: exit $rc after ${took}s"

# 5. Rank 0 failing mid-run (its checkpoint cannot be written) while rank 1 waits in the next
#    step's all-reduce, with buckets large enough for the shared-memory path: the job ends.
touch "$tmp/not-a-dir"
start=$(date +%s)
run timeout 60 "${mpi[@]}" -np 2 "$train" gpt "${tiny[@]}" --data "$corpus" --eval-interval 10 \
  --batch-size 4 --dp 2 --max-iters 30 --bucket-mb 1 --out "$tmp/not-a-dir/out"
took=$(($(date +%s) - start))
expect_error "rank 0 failing at its checkpoint" "rank 0: error" "not-a-dir"
[ "$rc" -ne 124 ] && [ "$took" -le 30 ] || fail "rank 0 failing: the job took ${took}s (rc $rc)"
echo "rank 0 failing at its checkpoint: exit $rc after ${took}s"

# 6. A rank killed from outside (SIGKILL) ends the job, naming the rank.
"${mpi[@]}" -np 2 "$train" gpt "${tiny[@]}" --data "$corpus" --batch-size 4 --dp 2 --max-iters 100000 \
  --eval-interval 100000 --out "$tmp/kill" --metrics "$tmp/kill.jsonl" >"$tmp/out" 2>"$tmp/err" &
bg_pid=$!
for _ in $(seq 1 300); do
  [ -f "$tmp/kill.jsonl" ] && [ "$(wc -l <"$tmp/kill.jsonl")" -ge 3 ] && break
  sleep 0.1
done
victim=
for p in $(pgrep -f -- "$tmp/kill"); do
  if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1' &&
    tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "^$train "; then
    victim=$p
  fi
done
if [ -z "$victim" ]; then
  fail "could not find rank 1's process"
  show
else
  start=$(date +%s)
  kill -9 "$victim"
  rc=
  for _ in $(seq 1 300); do
    kill -0 "$bg_pid" 2>/dev/null || break
    sleep 0.1
  done
  took=$(($(date +%s) - start))
  if kill -0 "$bg_pid" 2>/dev/null; then
    fail "the job still runs ${took}s after rank 1 was killed"
    kill -9 "$bg_pid"
  fi
  wait "$bg_pid"
  rc=$?
  bg_pid=
  expect_error "a killed rank" "rank 1"
  grep -h "rank 1" "$tmp/err" | head -2
  echo "a killed rank: exit $rc after ${took}s"
fi

finish cli_ddp
