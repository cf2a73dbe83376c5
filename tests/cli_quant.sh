#!/usr/bin/env bash
# Quantization from the command line: `train mnist --quant dynamic|qat` appends its metrics line
# (int8 accuracy near f32, a quarter of the bytes); `train gpt --eval-only` reproduces the run's
# logged val loss in f32 and stays near it in int8 and int4; `infer --quant int8 --save-quantized`
# writes a file that `infer` then runs as saved, giving the same greedy text; bad input is refused.
# Fashion-MNIST: /usr/share/datasets/fashion-mnist (skipped when absent, failed when absent under
# FORGE_REQUIRE_OPTIONAL=1). Corpus: as cli_gpt.sh.
# Usage: cli_quant.sh path/to/train path/to/infer
set -u

train=${1:?usage: cli_quant.sh path/to/train path/to/infer}
infer=${2:?usage: cli_quant.sh path/to/train path/to/infer}
. "$(dirname "$0")/cli_lib.sh"

# The value of KEY in the last JSON line of FILE that has it.
json_value() {
  python3 -c '
import json, sys
v = None
for line in open(sys.argv[1]):
    r = json.loads(line)
    if sys.argv[2] in r: v = r[sys.argv[2]]
print(v)' "$1" "$2"
}

# ---- Fashion-MNIST: dynamic int8 after one epoch, QAT in the second of two ----
if [ -d /usr/share/datasets/fashion-mnist ]; then
  for method in dynamic qat; do
    epochs=1
    [ "$method" = qat ] && epochs=2
    m="$tmp/mnist-$method.jsonl"
    run "$train" mnist --epochs "$epochs" --quant "$method" --metrics "$m" --threads 2
    if [ "$rc" -ne 0 ]; then
      fail "train mnist --quant $method exited $rc"
      show
      continue
    fi
    grep -q "^quantized ($method): test accuracy f32 0\.[0-9]* -> int8 0\.[0-9]*" "$tmp/out" ||
      { fail "--quant $method: no 'quantized ($method): ...' line"; show; }
    python3 - "$m" "$method" <<'PY' || fail "--quant $method: metrics line (above)"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])][-1]
print(f"  {sys.argv[2]}: {r}")
ok = r.get("quant") == sys.argv[2]
ok &= 0.75 < r["test_acc_f32"] < 1 and abs(r["test_acc_f32"] - r["test_acc_int8"]) < 0.02
ok &= r["bytes_int8"] <= 0.26 * r["bytes_f32"] and r["bytes_f32"] == 4 * (784 * 256 + 256 * 256 + 256 * 10 + 522)
sys.exit(0 if ok else 1)
PY
  done
  run "$train" mnist --epochs 1 --quant qat --qat-epochs 2
  expect_error "--qat-epochs above --epochs" "qat-epochs" "between 1 and the 1 epochs"
  run "$train" mnist --epochs 1 --quant qat --qat-freeze-steps 0
  expect_error "--qat-freeze-steps 0" "--qat-freeze-steps must be at least 1"
  run "$train" mnist --epochs 1 --quant dynamic --qat-epochs 1
  expect_error "--qat-epochs without --quant qat" "apply to --quant qat"
else
  optional_missing "the Fashion-MNIST part: /usr/share/datasets/fashion-mnist is missing"
fi
run "$train" mnist --quant int4
expect_error "train mnist --quant int4" "--quant" "int4"

# ---- GPT: eval-only in f32 reproduces the run; int8 and int4 stay near it ----
corpus=$(test_corpus)
# No warm-up and a large rate, so that 30 steps move the weights well away from their
# initialisation (where quantization would change the loss by almost nothing).
tiny=(--n-layer 1 --n-head 2 --n-embd 32 --block-size 16 --batch-size 4 --eval-interval 30
  --eval-iters 4 --threads 1 --data "$corpus" --warmup-iters 0 --lr 1e-2 --min-lr 1e-3
  --lr-decay-iters 30)
out="$tmp/gpt"
run "$train" gpt "${tiny[@]}" --max-iters 30 --out "$out"
[ "$rc" -eq 0 ] || { fail "train gpt exited $rc"; show; }
trained=$(sed -n 's/^val loss: //p' "$tmp/out")
declare -A val
for q in none int8 int4; do
  group=()
  [ "$q" = int4 ] && group=(--group 32)
  run "$train" gpt "${tiny[@]}" --eval-only --resume "$out" --quant "$q" "${group[@]}" \
    --metrics "$tmp/eval-$q.jsonl"
  [ "$rc" -eq 0 ] || { fail "train gpt --eval-only --quant $q exited $rc"; show; continue; }
  val[$q]=$(sed -n 's/^val loss: //p' "$tmp/out")
  echo "  eval-only --quant $q: $(head -n 1 "$tmp/out")"
  want=$(case $q in none) echo none ;; int8) echo int8-dynamic ;; int4) echo int4-g32 ;; esac)
  grep -q "^eval .* (step 30, $want): train loss [0-9.]* | val loss [0-9.]* |" "$tmp/out" ||
    { fail "--eval-only --quant $q: no 'eval ... (step 30, $want): ...' line"; show; }
done
[ -n "$trained" ] && [ "${val[none]:-}" = "$trained" ] ||
  fail "--eval-only in f32 gives val loss ${val[none]:-?}, the run logged $trained"
# The full-precision val losses (--metrics): each quantized model's differs from f32's (so the
# quantization did something) by at most its bound. Measured: int8 5.5e-4, int4 g32 2.8e-3.
for q in int8:0.005 int4:0.03; do
  python3 - "$tmp/eval-none.jsonl" "$tmp/eval-${q%%:*}.jsonl" "${q#*:}" <<'PY' ||
import json, sys
f32, quant = (json.loads(open(p).read().splitlines()[-1]) for p in sys.argv[1:3])
bound = float(sys.argv[3])
d = abs(quant["val_loss"] - f32["val_loss"]) / f32["val_loss"]
print(f"  {quant['quantization']}: val loss {quant['val_loss']:.8f} against f32 {f32['val_loss']:.8f}: "
      f"relative difference {d:.2e} (must be in (1e-6, {bound}])")
sys.exit(0 if 1e-6 < d <= bound else 1)
PY
    fail "--quant ${q%%:*}: val loss not in its bound of f32's (above)"
done

# ---- infer: quantize, save, load the saved file; same greedy text ----
run "$infer" --checkpoint "$out" --quant int8 --temperature 0 --max-tokens 40 --prompt "a" \
  --save-quantized "$tmp/q8.safetensors"
[ "$rc" -eq 0 ] || { fail "infer --quant int8 --save-quantized exited $rc"; show; }
grep -q "quantization int8-dynamic" "$tmp/err" || { fail "infer --quant int8: no 'quantization int8-dynamic'"; show; }
cp "$tmp/out" "$tmp/text8"
run "$infer" --checkpoint "$tmp/q8.safetensors" --temperature 0 --max-tokens 40 --prompt "a"
[ "$rc" -eq 0 ] || { fail "infer on the saved int8 file exited $rc"; show; }
cmp -s "$tmp/out" "$tmp/text8" || fail "the saved int8 model generates other text than the one quantized in memory"
f32_bytes=$(stat -c %s "$out"/ckpt-000030/model.safetensors)
q8_bytes=$(stat -c %s "$tmp/q8.safetensors")
echo "  model file: f32 $f32_bytes bytes, int8 $q8_bytes bytes"
[ "$q8_bytes" -lt "$f32_bytes" ] || fail "the int8 file ($q8_bytes) is not smaller than the f32 one ($f32_bytes)"
run "$infer" --checkpoint "$out" --quant int4 --group 32 --temperature 0 --max-tokens 20
[ "$rc" -eq 0 ] || { fail "infer --quant int4 exited $rc"; show; }
grep -q "quantization int4-g32" "$tmp/err" || { fail "infer --quant int4: no 'quantization int4-g32'"; show; }

run "$infer" --checkpoint "$tmp/q8.safetensors" --quant int4
expect_error "infer --quant on a quantized file" "already quantized" "int8-dynamic"
run "$infer" --checkpoint "$out" --quant int4 --group 128
expect_error "infer --quant int4 with a group above n_embd" "not a multiple of the int4 group 128"
mkdir -p "$tmp/qc/ckpt-000030"
cp "$tmp/q8.safetensors" "$tmp/qc/ckpt-000030/model.safetensors"
cp "$out/ckpt-000030/state.safetensors" "$tmp/qc/ckpt-000030/"
run "$train" gpt "${tiny[@]}" --max-iters 40 --resume "$tmp/qc" --out "$tmp/x"
expect_error "train gpt --resume from a quantized checkpoint" "a quantized model (int8-dynamic)"
run "$train" reshard --from "$tmp/qc" --to "$tmp/qr" --tp 2
expect_error "train reshard of a quantized checkpoint" "a quantized model"
run "$infer" --checkpoint "$tmp/qc" --quant int8 --save-quantized "$tmp/qc/ckpt-000030/model.safetensors"
expect_error "infer --save-quantized onto its own input" "is the model being read"
run "$infer" --checkpoint "$out" --group 32
expect_error "infer --group without --quant int4" "--group applies to --quant int4"
run "$train" gpt "${tiny[@]}" --max-iters 2 --quant int8 --out "$tmp/y"
expect_error "train gpt --quant without --eval-only" "--eval-only"

finish cli_quant
