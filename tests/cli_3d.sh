#!/usr/bin/env bash
# `mpirun -np N train gpt --dp D --tp T --pp P` end to end: tensor x pipeline (and x data) parallel
# runs give the serial run's losses, in f32 and in bf16 with activation checkpointing, and with ZeRO
# stages 1-3 over the replicas; a resumed
# run continues the uninterrupted one under the same layout (identically) and under another
# (within 1e-5); `train reshard` merges the shards into one model that `infer` samples from, and
# splits it again; layouts that cannot work are refused with the reason.
# Corpus: $TINYSHAKESPEARE if set, else a small synthetic text.
# Usage: cli_3d.sh path/to/train path/to/infer
set -u

train=${1:?usage: cli_3d.sh path/to/train path/to/infer}
infer=${2:?usage: cli_3d.sh path/to/train path/to/infer}
. "$(dirname "$0")/cli_lib.sh"
use_mpirun

corpus=$(test_corpus)
# Flags may be given once: per-run ones (--batch-size, --max-iters, layout) are added where used.
tiny=(--n-layer 4 --n-head 4 --n-embd 32 --block-size 16 --eval-iters 2 --threads 1
  --data "$corpus" --eval-interval 10)

# Runs and checks the losses against a reference metrics file: compare NAME REF TOL STEPS CMD...
compare() {
  local name=$1 ref=$2 tol=$3 steps=$4
  shift 4
  run "$@" --metrics "$tmp/$name.jsonl"
  [ "$rc" -eq 0 ] || { fail "$name exited $rc"; show; return; }
  local worst
  if worst=$(compare_losses "$ref" "$tmp/$name.jsonl" "$steps" "$tol"); then
    echo "$name: worst relative loss difference $worst over $steps steps"
  else
    fail "$name: losses against the reference (tolerance $tol): $worst"
  fi
}

# 1. Serial references, batch 8, f32 and bf16 with activation checkpointing.
run "$train" gpt "${tiny[@]}" --batch-size 8 --max-iters 20 --out "$tmp/serial" --metrics "$tmp/serial.jsonl"
[ "$rc" -eq 0 ] || { fail "serial run exited $rc"; show; }
run "$train" gpt "${tiny[@]}" --batch-size 8 --max-iters 10 --precision bf16 --checkpoint blocks \
  --out "$tmp/serial_bf16" --metrics "$tmp/serial_bf16.jsonl"
[ "$rc" -eq 0 ] || { fail "serial bf16 run exited $rc"; show; }

# 2. tp 2 x pp 2, 1F1B over 4 micro-batches, checkpointing every 10 steps.
compare tp2pp2 "$tmp/serial.jsonl" 1e-5 20 "${mpi[@]}" -np 4 "$train" gpt "${tiny[@]}" \
  --batch-size 8 --max-iters 20 --tp 2 --pp 2 --micro-batches 4 --out "$tmp/tp2pp2"
grep -q "model parallel: tp 2 x pp 2" "$tmp/out" || { fail "no model-parallel line"; show; }
[ "$(grep -c '^step .*| loss' "$tmp/out")" -eq 2 ] || { fail "expected 2 step lines (steps 10 and 20) from rank 0 only"; show; }
ls "$tmp/tp2pp2/ckpt-000020/"model-pp1-tp1.safetensors >/dev/null 2>&1 || fail "no shard files in the checkpoint"

# 3. dp 2 x tp 2 x pp 2 on 8 ranks, GPipe, bf16 with activation checkpointing (bf16 rounds at
#    other places in another order: 1e-4).
compare dp2tp2pp2_bf16 "$tmp/serial_bf16.jsonl" 1e-4 10 "${mpi[@]}" -np 8 "$train" gpt "${tiny[@]}" \
  --batch-size 4 --max-iters 10 --dp 2 --tp 2 --pp 2 --micro-batches 2 --schedule gpipe \
  --precision bf16 --checkpoint blocks --out "$tmp/3d"

# 3b. ZeRO stage 1 composed with tp and pp: dp 2 x tp 2 x pp 2 on 8 ranks, f32, 1F1B.
compare dp2tp2pp2_zero1 "$tmp/serial.jsonl" 1e-5 10 "${mpi[@]}" -np 8 "$train" gpt "${tiny[@]}" \
  --batch-size 4 --max-iters 10 --dp 2 --tp 2 --pp 2 --micro-batches 2 --zero 1 --out "$tmp/3dz"
grep -q "ZeRO stage 1" "$tmp/out" || { fail "no ZeRO line"; show; }

# 3c. ZeRO stage 2 composed the same way (f32, 1F1B), and stage 3 in bf16 with activation
#     checkpointing (GPipe): the tied embedding's gradient is summed between the first and the last
#     stage on the ranks' shares of it.
compare dp2tp2pp2_zero2 "$tmp/serial.jsonl" 1e-5 10 "${mpi[@]}" -np 8 "$train" gpt "${tiny[@]}" \
  --batch-size 4 --max-iters 10 --dp 2 --tp 2 --pp 2 --micro-batches 2 --zero 2 --out "$tmp/3dz2"
compare dp2tp2pp2_zero3_bf16 "$tmp/serial_bf16.jsonl" 1e-4 10 "${mpi[@]}" -np 8 "$train" gpt \
  "${tiny[@]}" --batch-size 4 --max-iters 10 --dp 2 --tp 2 --pp 2 --micro-batches 2 \
  --schedule gpipe --precision bf16 --checkpoint blocks --zero 3 --out "$tmp/3dz3"
grep -q "ZeRO stage 3" "$tmp/out" || { fail "no ZeRO-3 line"; show; }

# 3d. ZeRO checkpoints are per rank: each of the 8 ranks wrote its pieces (zero-pp*-tp*-dp*) and
#     no rank a whole model file. Resumed under tp 4 without ZeRO (each slice joined from the
#     pieces of two tp ranks' four files) and, merged by `train reshard` into one model, in one
#     process: both continue the serial run within 1e-5, and infer samples from the merged model.
z2=$tmp/3dz2/ckpt-000010
n=$(ls "$z2"/zero-pp[01]-tp[01]-dp[01].safetensors 2>/dev/null | wc -l)
[ "$n" -eq 8 ] && ! ls "$z2"/model-* >/dev/null 2>&1 ||
  { fail "ZeRO-2 checkpoint: expected 8 per-rank files and no model file"; ls "$z2"; }
compare zero2_as_tp4 "$tmp/serial.jsonl" 1e-5 10 "${mpi[@]}" -np 4 "$train" gpt "${tiny[@]}" \
  --batch-size 8 --max-iters 20 --tp 4 --resume "$z2" --out "$tmp/z2tp4"
run "$train" reshard --from "$z2" --to "$tmp/z2merged"
[ "$rc" -eq 0 ] && [ -f "$tmp/z2merged/ckpt-000010/model.safetensors" ] ||
  { fail "reshard of a ZeRO checkpoint to one model"; show; }
compare zero2_merged "$tmp/serial.jsonl" 1e-5 10 "$train" gpt "${tiny[@]}" --batch-size 8 \
  --max-iters 20 --resume "$tmp/z2merged" --out "$tmp/z2m"
run "$infer" --checkpoint "$tmp/z2merged" --max-tokens 20 --prompt "The"
[ "$rc" -eq 0 ] && [ -s "$tmp/out" ] || { fail "infer on a merged ZeRO checkpoint"; show; }

# 4. f16 with dynamic loss scaling under tp 2 x pp 2 runs and scales.
run "${mpi[@]}" -np 4 "$train" gpt "${tiny[@]}" --batch-size 8 --max-iters 5 --tp 2 --pp 2 \
  --precision f16 --out "$tmp/f16"
[ "$rc" -eq 0 ] && grep -q "loss scale 65536" "$tmp/out" || { fail "f16 tp2 pp2 run"; show; }

# 5. Resume from step 10 under the same layout (the same losses) and under tp 4 (within 1e-5).
run "${mpi[@]}" -np 4 "$train" gpt "${tiny[@]}" --batch-size 8 --max-iters 20 --tp 2 --pp 2 \
  --micro-batches 4 --resume "$tmp/tp2pp2/ckpt-000010" --out "$tmp/same" --metrics "$tmp/same.jsonl"
[ "$rc" -eq 0 ] || { fail "resume under the same layout exited $rc"; show; }
worst=$(compare_losses "$tmp/tp2pp2.jsonl" "$tmp/same.jsonl" 10 0) ||
  fail "resumed tp2 pp2 run differs from the uninterrupted one: $worst"

compare resume_tp4 "$tmp/tp2pp2.jsonl" 1e-5 10 "${mpi[@]}" -np 4 "$train" gpt "${tiny[@]}" \
  --batch-size 8 --max-iters 20 --tp 4 --resume "$tmp/tp2pp2/ckpt-000010" --out "$tmp/tp4"
grep -q "saved at tp 2 x pp 2, now tp 4 x pp 1" "$tmp/out" || { fail "no layout-change line"; show; }

# 6. Merge the shards into one model: infer samples from it, a serial run resumes from it like
#    the sharded run went on, and it splits again into pp 4 whose resume matches as well.
run "$infer" --checkpoint "$tmp/tp2pp2" --max-tokens 5
expect_error "infer on a sharded checkpoint" "sharded checkpoint" "train reshard"
run "$train" reshard --from "$tmp/tp2pp2" --to "$tmp/merged"
[ "$rc" -eq 0 ] && [ -f "$tmp/merged/ckpt-000020/model.safetensors" ] || { fail "reshard to one model"; show; }
run "$infer" --checkpoint "$tmp/merged" --max-tokens 20 --prompt "The"
[ "$rc" -eq 0 ] && grep -q "tokens/s" "$tmp/err" && [ -s "$tmp/out" ] || { fail "infer on the merged model"; show; }
run "$train" reshard --from "$tmp/tp2pp2/ckpt-000010" --to "$tmp/merged10"
[ "$rc" -eq 0 ] || { fail "reshard step 10 exited $rc"; show; }
compare resume_serial "$tmp/tp2pp2.jsonl" 1e-5 10 "$train" gpt "${tiny[@]}" --batch-size 8 \
  --max-iters 20 --resume "$tmp/merged10" --out "$tmp/serial_resumed"
run "$train" reshard --from "$tmp/merged10" --to "$tmp/pp4" --pp 4
[ "$rc" -eq 0 ] && [ -f "$tmp/pp4/ckpt-000010/model-pp3-tp0.safetensors" ] || { fail "reshard to pp 4"; show; }
compare resume_pp4 "$tmp/tp2pp2.jsonl" 1e-5 10 "${mpi[@]}" -np 4 "$train" gpt "${tiny[@]}" \
  --batch-size 8 --max-iters 20 --pp 4 --micro-batches 2 --schedule gpipe --resume "$tmp/pp4" \
  --out "$tmp/pp4run"

# 7. Layouts that cannot work.
run "$train" gpt "${tiny[@]}" --tp 3 --max-iters 1 --out "$tmp/bad"
expect_error "--tp 3 with 4 heads" "tp 3 must divide n_head 4"
run "$train" gpt "${tiny[@]}" --pp 5 --max-iters 1 --out "$tmp/bad"
expect_error "--pp 5 with 4 layers" "pp 5 is more stages than n_layer 4"
run "$train" gpt "${tiny[@]}" --batch-size 6 --micro-batches 4 --max-iters 1 --out "$tmp/bad"
expect_error "4 micro-batches of batch 6" "micro_batches 4 must divide batch_size 6"
run timeout 60 "${mpi[@]}" -np 2 "$train" gpt "${tiny[@]}" --tp 2 --pp 2 --max-iters 1 --out "$tmp/bad"
expect_error "tp 2 x pp 2 on 2 ranks" "needs 4 ranks" "has 2"
run "$train" reshard --from "$tmp/merged" --to "$tmp/bad" --tp 3
expect_error "reshard to tp 3" "tp 3 does not divide the model's 4 heads"
run "$train" reshard --from "$tmp/merged" --to "$tmp/merged" --tp 2
expect_error "reshard onto itself" "would replace the checkpoint it reads"

finish cli_3d
