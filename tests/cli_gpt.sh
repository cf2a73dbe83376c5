#!/usr/bin/env bash
# `train gpt` and `infer` end to end with a tiny model: checkpoints and metrics lines, --resume
# reproducing the uninterrupted run, a TOML config with flags over it, sampling (greedy with and
# without the KV cache agree), Ctrl-C saving a checkpoint, and bad input failing with a message
# that names the problem. Corpus: $TINYSHAKESPEARE if set, else a small synthetic text.
# Usage: cli_gpt.sh path/to/train path/to/infer
set -u

train=${1:?usage: cli_gpt.sh path/to/train path/to/infer}
infer=${2:?usage: cli_gpt.sh path/to/train path/to/infer}
. "$(dirname "$0")/cli_lib.sh"

# The corpus (cli_lib.sh: without a "~", used for the bad prompt below).
corpus=$(test_corpus)
echo "corpus: $corpus"

tiny=(--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4
  --eval-interval 10 --eval-iters 2 --threads 1)
data=(--data "$corpus")

# Checks a metrics file: one JSON object per step first..last with the expected keys, a number for
# val_loss exactly at the evaluation steps. Usage: check_metrics FILE FIRST LAST EVAL_INTERVAL
check_metrics() {
  python3 - "$@" <<'PY'
import json, math, sys
path, first, last, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lines = open(path).read().splitlines()
problems = []
steps = []
for line in lines:
    try:
        r = json.loads(line)
    except ValueError as e:
        problems.append(f"not JSON: {line!r} ({e})")
        continue
    steps.append(r.get("step"))
    for key in ("step", "loss", "lr", "elapsed_s", "ms_per_step", "tokens_per_s", "peak_bytes"):
        v = r.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            problems.append(f"step {r.get('step')}: {key} = {v!r}")
    if not r.get("loss", 0) > 0 or not r.get("tokens_per_s", 0) > 0 or not r.get("peak_bytes", 0) > 0:
        problems.append(f"step {r.get('step')}: loss, tokens_per_s, peak_bytes must be > 0: {line}")
    evaluated = r.get("step", 0) % every == 0 or r.get("step") == last
    v = r.get("val_loss", "absent")
    if evaluated and not (isinstance(v, float) and 0 < v < 10):
        problems.append(f"step {r.get('step')}: evaluation step without a val_loss number: {line}")
    if not evaluated and v is not None:
        problems.append(f"step {r.get('step')}: val_loss should be null: {line}")
if steps != list(range(first, last + 1)):
    problems.append(f"steps {steps}, expected {first}..{last}")
for p in problems:
    print("  " + p)
sys.exit(1 if problems else 0)
PY
}

# ---- A 20-step run: exit 0, checkpoints at the evaluations, one metrics line per step ----
out="$tmp/out20"
run "$train" gpt "${data[@]}" "${tiny[@]}" --max-iters 20 --out "$out" --metrics "$tmp/m20.jsonl"
if [ "$rc" -ne 0 ]; then
  fail "train gpt --max-iters 20 exited $rc"
  show
fi
for step in 000010 000020; do
  for f in model.safetensors state.safetensors; do
    [ -s "$out/ckpt-$step/$f" ] || fail "no checkpoint file $out/ckpt-$step/$f"
  done
done
grep -q '^step    20 | loss [0-9]' "$tmp/out" || { fail "no 'step    20 | loss' line"; show; }
grep -q '^val loss: [0-9]' "$tmp/out" || { fail "no 'val loss:' line"; show; }
grep -qF "checkpoint: $out/ckpt-000020" "$tmp/out" || { fail "no 'checkpoint: .../ckpt-000020'"; show; }
check_metrics "$tmp/m20.jsonl" 1 20 10 || fail "metrics of the 20-step run (above)"

# ---- --resume continues from the out directory and reproduces the uninterrupted run ----
run "$train" gpt "${data[@]}" "${tiny[@]}" --max-iters 30 --resume "$out" --out "$out" --metrics "$tmp/m21.jsonl"
if [ "$rc" -ne 0 ]; then
  fail "train gpt --resume exited $rc"
  show
fi
grep -qF "resumed from $out/ckpt-000020 at step 20" "$tmp/out" ||
  { fail "--resume: no 'resumed from .../ckpt-000020 at step 20' message"; show; }
[ -s "$out/ckpt-000030/model.safetensors" ] || fail "--resume wrote no $out/ckpt-000030"
check_metrics "$tmp/m21.jsonl" 21 30 10 || fail "metrics of the resumed run (above)"
run "$train" gpt "${data[@]}" "${tiny[@]}" --max-iters 30 --out "$tmp/out30" --metrics "$tmp/m30.jsonl"
[ "$rc" -eq 0 ] || { fail "train gpt --max-iters 30 exited $rc"; show; }
worst=$(compare_losses "$tmp/m30.jsonl" "$tmp/m21.jsonl" 10 0) ||
  fail "steps 21..30 of the resumed run differ from the uninterrupted 30-step run: $worst"

# ---- A TOML config is honoured (tables as namespaces); a flag overrides it ----
cat >"$tmp/run.toml" <<EOF
# tiny run
data = "$corpus"
[model]
n_layer = 1
n_head = 2
n_embd = 8
block_size = 8
[train]
batch_size = 2
max_iters = 6
eval_interval = 3
eval_iters = 1
threads = 1
EOF
run "$train" gpt --config "$tmp/run.toml" --out "$tmp/outc" --metrics "$tmp/mc.jsonl"
[ "$rc" -eq 0 ] || { fail "train gpt --config exited $rc"; show; }
grep -q 'model: 1 layers, 2 heads, 8 wide, block 8,' "$tmp/out" ||
  { fail "--config: the model line does not show the file's 1 layer, 2 heads, 8 wide, block 8"; show; }
grep -q 'batch 2 x 8; 1 threads' "$tmp/out" ||
  { fail "--config: the data line does not show batch 2 x 8 and 1 thread"; show; }
check_metrics "$tmp/mc.jsonl" 1 6 3 || fail "metrics of the --config run (above)"
[ -d "$tmp/outc/ckpt-000006" ] || fail "--config: no ckpt-000006 for the file's max_iters = 6"
run "$train" gpt --config "$tmp/run.toml" --max-iters 4 --n-embd 12 --out "$tmp/outf" \
  --metrics "$tmp/mf.jsonl"
[ "$rc" -eq 0 ] || { fail "train gpt --config --max-iters 4 exited $rc"; show; }
grep -q 'model: 1 layers, 2 heads, 12 wide, block 8,' "$tmp/out" ||
  { fail "--n-embd 12 over the file's n_embd = 8: the model line does not say 12 wide"; show; }
check_metrics "$tmp/mf.jsonl" 1 4 3 || fail "metrics of --config with --max-iters 4 (above)"

# ---- infer samples from the out directory and reports its speed ----
run "$infer" --checkpoint "$out" --prompt "The" --max-tokens 40 --threads 1
if [ "$rc" -ne 0 ]; then
  fail "infer --checkpoint $out exited $rc"
  show
fi
grep -qF "ckpt-000030/model.safetensors (step 30)" "$tmp/err" ||
  { fail "infer did not load the latest checkpoint (step 30)"; show; }
grep -Eq '# 40 tokens in [0-9.]+ s: [0-9.]+ tokens/s' "$tmp/err" ||
  { fail "infer printed no '40 tokens in ... tokens/s' on stderr"; show; }
# stdout: the prompt, 40 generated characters, a newline.
chars=$(wc -c <"$tmp/out")
[ "$chars" -eq 44 ] || { fail "infer: stdout has $chars bytes, expected 3 + 40 + 1"; show; }
head -c 3 "$tmp/out" | grep -q '^The' || { fail "infer: stdout does not start with the prompt"; show; }

# ---- Greedy decoding: the KV cache and the full re-run give the same text (past block_size) ----
run "$infer" --checkpoint "$out" --prompt "First" --max-tokens 60 --temperature 0 --threads 1
[ "$rc" -eq 0 ] || { fail "greedy infer exited $rc"; show; }
cp "$tmp/out" "$tmp/greedy_cache"
run "$infer" --checkpoint "$out" --prompt "First" --max-tokens 60 --temperature 0 --threads 1 --no-cache
[ "$rc" -eq 0 ] || { fail "greedy infer --no-cache exited $rc"; show; }
grep -q 'no cache' "$tmp/err" || { fail "--no-cache: stderr does not say 'no cache'"; show; }
cmp -s "$tmp/greedy_cache" "$tmp/out" || {
  fail "greedy text differs with and without --no-cache"
  echo "  cache:    $(cat "$tmp/greedy_cache")"
  echo "  no cache: $(cat "$tmp/out")"
}

# ---- Ctrl-C after the first step: saves a checkpoint, says so, exits 0 ----
"$train" gpt "${data[@]}" "${tiny[@]}" --max-iters 1000000 --out "$tmp/outi" >"$tmp/int_out" 2>"$tmp/int_err" &
bg_pid=$!
for _ in $(seq 1 300); do
  grep -q '^step ' "$tmp/int_out" && break
  kill -0 "$bg_pid" 2>/dev/null || break
  sleep 0.1
done
kill -INT "$bg_pid"
wait_exit "$bg_pid" 30 "Ctrl-C: train after SIGINT"
bg_pid=
stopped=$(grep -o 'stopped at step [0-9]*' "$tmp/int_out" | grep -o '[0-9]*$')
if [ "$rc" -ne 0 ] || [ -z "$stopped" ]; then
  fail "Ctrl-C: exit $rc, expected 0 and a 'stopped at step N' message"
  echo "  stdout: $(tail -c 600 "$tmp/int_out")"
  echo "  stderr: $(head -c 600 "$tmp/int_err")"
else
  ckpt=$(printf '%s/ckpt-%06d' "$tmp/outi" "$stopped")
  [ -s "$ckpt/model.safetensors" ] && [ -s "$ckpt/state.safetensors" ] ||
    fail "Ctrl-C at step $stopped: no checkpoint $ckpt"
  grep -qF "saved checkpoint $ckpt" "$tmp/int_out" || fail "Ctrl-C: no 'saved checkpoint $ckpt' line"
  grep -Eq "stopped at step $stopped \(loss [0-9]+\.[0-9]{4}\)" "$tmp/int_out" ||
    fail "Ctrl-C: the 'stopped at step $stopped' line does not give the step's loss"
fi

# ---- Bad input: non-zero exit and a message on stderr that names the problem ----
run "$train" gpt --preset no-such-preset "${data[@]}" "${tiny[@]}" --max-iters 1
expect_error "--preset no-such-preset" "unknown preset" "no-such-preset"

printf 'max_iters = 5\nno_such_key = 3\n' >"$tmp/bad.toml"
run "$train" gpt --config "$tmp/bad.toml" "${data[@]}" "${tiny[@]}"
expect_error "a config file with an unknown key" "$tmp/bad.toml:2" "no_such_key"

run "$train" gpt "${tiny[@]}" --data "$tmp/no-such-corpus.txt" --max-iters 1 --out "$tmp/outm"
expect_error "--data of a missing file" "$tmp/no-such-corpus.txt" "not found"

mkdir -p "$tmp/empty"
run "$train" gpt "${data[@]}" "${tiny[@]}" --max-iters 1 --resume "$tmp/empty" --out "$tmp/outr"
expect_error "--resume of a directory without checkpoints" "--resume $tmp/empty" "no complete checkpoint"
run "$train" gpt "${data[@]}" "${tiny[@]}" --max-iters 40 --resume "$out" --gelu erf --out "$tmp/outg"
expect_error "--resume of a tanh-GELU model with --gelu erf" "gelu = tanh" "asks for erf"

run "$infer" --checkpoint "$tmp/no-such-checkpoint" --max-tokens 5
expect_error "infer with a nonexistent checkpoint" "$tmp/no-such-checkpoint" "no such checkpoint"

model="$out/ckpt-000030/model.safetensors"
cp "$model" "$tmp/truncated.safetensors"
truncate -s $(($(stat -c %s "$model") - 100)) "$tmp/truncated.safetensors"
run "$infer" --checkpoint "$tmp/truncated.safetensors" --max-tokens 5
expect_error "infer of a truncated model file" "$tmp/truncated.safetensors" "truncated"

run "$infer" --checkpoint "$out" --prompt "a~b" --max-tokens 5
expect_error "a prompt with a character outside the vocabulary" "prompt" "~" "position 1"
[ ! -s "$tmp/out" ] || { fail "a refused prompt printed on stdout (the error alone is expected)"; show; }
run "$infer" --checkpoint "$out" --prompt "The" --top-p 2 --max-tokens 5
expect_error "infer --top-p 2" "top_p must be in (0, 1]"
[ ! -s "$tmp/out" ] || { fail "infer --top-p 2 printed on stdout (the error alone is expected)"; show; }

finish cli_gpt
