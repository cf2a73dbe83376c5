#!/usr/bin/env bash
# The train app's command line: a one-epoch run writes its metrics line, and bad input fails with a
# clear message on stderr. Usage: cli_train.sh path/to/train
set -u

train=${1:?usage: cli_train.sh path/to/train}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}

# Runs the app with the given arguments; leaves the exit status in $rc, output in $tmp/out, $tmp/err.
run() {
  "$train" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
}

show() {
  echo "  stdout: $(head -c 600 "$tmp/out")"
  echo "  stderr: $(head -c 600 "$tmp/err")"
}

# ---- One epoch on one thread: exit 0 and one JSON line with the four keys ----
metrics="$tmp/run.jsonl"
run mnist --epochs 1 --metrics "$metrics" --threads 1
if [ "$rc" -ne 0 ]; then
  fail "mnist --epochs 1 exited $rc"
  show
fi
if [ ! -f "$metrics" ]; then
  fail "mnist --epochs 1 wrote no metrics file $metrics"
else
  lines=$(wc -l <"$metrics")
  [ "$lines" -eq 1 ] || fail "metrics file has $lines lines, expected 1: $(cat "$metrics")"
  grep -Eq '^\{"epoch": 1, ' "$metrics" || fail "metrics line lacks \"epoch\": 1: $(cat "$metrics")"
  for key in train_loss test_acc epoch_s; do
    grep -Eq "\"$key\": [0-9][0-9.eE+-]*[,}]" "$metrics" ||
      fail "metrics line lacks a number for \"$key\": $(cat "$metrics")"
  done
  grep -Eq '\}$' "$metrics" || fail "metrics line is not one JSON object: $(cat "$metrics")"
fi
grep -q 'test accuracy: 0\.[0-9]' "$tmp/out" || { fail "no 'test accuracy: 0.x' line on stdout"; show; }

# ---- Bad input: non-zero exit and a message on stderr that says what was wrong ----
run mnist --epochs -1
if [ "$rc" -eq 0 ]; then fail "--epochs -1 exited 0"; fi
grep -q -- '--epochs' "$tmp/err" || { fail "--epochs -1: stderr does not name --epochs"; show; }

run mnist --no-such-option
if [ "$rc" -eq 0 ]; then fail "an unknown option exited 0"; fi
grep -q -- '--no-such-option' "$tmp/err" ||
  { fail "unknown option: stderr does not name --no-such-option"; show; }

run mnist --data /nonexistent --epochs 1 --threads 1
if [ "$rc" -eq 0 ]; then fail "--data /nonexistent exited 0"; fi
grep -q '/nonexistent' "$tmp/err" || { fail "--data /nonexistent: stderr does not name the path"; show; }
grep -qi 'not found\|no such' "$tmp/err" ||
  { fail "--data /nonexistent: stderr does not say the file is missing"; show; }

run
if [ "$rc" -eq 0 ]; then fail "no subcommand exited 0"; fi

# ---- Devices: an unknown one is named; a GPU that is not there is refused with the reason ----
run mnist --device gpu --epochs 1
if [ "$rc" -eq 0 ]; then fail "--device gpu exited 0"; fi
grep -q "unknown device 'gpu'" "$tmp/err" || { fail "--device gpu: stderr does not name it"; show; }
run gpt --device tpu:0 --max-iters 1
if [ "$rc" -eq 0 ]; then fail "gpt --device tpu:0 exited 0"; fi
grep -q "unknown device 'tpu:0'" "$tmp/err" || { fail "gpt --device tpu:0: stderr does not name it"; show; }
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  run mnist --device cuda:7 --epochs 1
  if [ "$rc" -eq 0 ]; then fail "--device cuda:7 without a GPU exited 0"; fi
  grep -q -- "--device: cuda:7 asked for" "$tmp/err" || { fail "--device cuda:7: no clear refusal"; show; }
fi

if [ "$failures" -ne 0 ]; then
  echo "cli_train: $failures check(s) failed"
  exit 1
fi
echo "cli_train: all checks passed"
