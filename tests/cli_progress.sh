#!/usr/bin/env bash
# What `train gpt` shows: on a terminal (a pseudo-terminal made by `script`), log lines every
# --log-interval steps with the progress line kept below them, ending in its last state (steps
# done/total, step time, tokens/s, ETA, last loss and val loss); on a pipe, the same log lines
# with no progress line and no terminal escapes. --metrics still has every step.
# Usage: cli_progress.sh path/to/train
set -u

train=${1:?usage: cli_progress.sh path/to/train}
. "$(dirname "$0")/cli_lib.sh"
command -v script >/dev/null || skip_missing "script (bsdutils) for a pseudo-terminal"

corpus=$(test_corpus)
tiny=(--data "$corpus" --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4
  --eval-interval 20 --eval-iters 2 --threads 1 --max-iters 25)

# screen RAW: the lines a terminal shows after RAW's bytes (\r, \n, ESC[K, printable characters).
screen() {
  python3 - "$1" <<'PY'
import re, sys
raw = open(sys.argv[1], "rb").read().decode()
# script(1) writes a header and a footer line around the session when -q does not drop them.
lines, row, col = [[]], 0, 0
for token in re.findall(r"\x1b\[K|\r|\n|[^\r\n\x1b]", raw):
    if token == "\r":
        col = 0
    elif token == "\n":
        row += 1
        if row == len(lines):
            lines.append([])
    elif token == "\x1b[K":
        del lines[row][col:]
    else:
        line = lines[row]
        line.extend(" " * (col - len(line)))
        if col < len(line):
            line[col] = token
        else:
            line.append(token)
        col += 1
for line in lines:
    print("".join(line).rstrip())
PY
}

# on_tty COLUMNS RAW ARGS...: train ARGS under a pseudo-terminal COLUMNS wide; its bytes in RAW.
# (stdin is not the caller's terminal, whose size script(1) would copy; bash runs the command.)
on_tty() {
  local columns=$1 raw=$2
  shift 2
  SHELL=/bin/bash script -qec "stty cols $columns rows 24; exec $(printf '%q ' "$train" "$@")" \
    "$raw" </dev/null >/dev/null 2>"$tmp/err"
}

# 1. Under a pseudo-terminal, the default --log-interval (10).
on_tty 200 "$tmp/raw" gpt "${tiny[@]}" --out "$tmp/tty" --metrics "$tmp/tty.jsonl"
rc=$?
screen "$tmp/raw" >"$tmp/screen"
[ "$rc" -eq 0 ] || { fail "train under a pseudo-terminal exited $rc"; cat "$tmp/err" "$tmp/screen"; }
grep -q $'\r\x1b\[K' "$tmp/raw" || fail "on a terminal: no line was redrawn (no CR + erase-line in the output)"
logged=$(grep -Eo '^step +[0-9]+ \| loss' "$tmp/screen" | grep -Eo '[0-9]+' | tr '\n' ' ')
[ "$logged" = "10 20 25 " ] ||
  fail "on a terminal: log lines at steps '$logged', expected '10 20 25 ' (every 10 and the last)"
bars=$(grep -c '^step [0-9]*/' "$tmp/screen")
[ "$bars" -eq 1 ] || fail "on a terminal: $bars progress lines left on the screen, expected 1"
bar=$(grep '^step [0-9]*/' "$tmp/screen")
val=$(grep -Eo '^val loss: [0-9.]+' "$tmp/screen" | grep -Eo '[0-9.]+$')
echo "last progress line: $bar"
echo "$bar" | grep -Eq '^step 25/25 \[#{20}\] loss [0-9]+\.[0-9]{4} \| val '"$val"' \| [0-9.]+ ms \| [0-9]+ tok/s \| eta 0s \| [0-9]+s elapsed$' ||
  fail "on a terminal: the last progress line is not 'step 25/25 [####################] loss X | val $val | X ms | N tok/s | eta 0s | Ns elapsed'"
# The bar stays below the training log: after the last step's lines, before the summary.
order=$(grep -nE '^step +25 \| train loss|^step [0-9]+/|^peak memory' "$tmp/screen" | cut -d: -f2 | cut -c1-6 | tr '\n' '/')
[ "$order" = "step  /step 2/peak m/" ] || fail "on a terminal: lines in the order '$order', expected the last log line, the bar, the summary"
[ "$(wc -l <"$tmp/tty.jsonl")" -eq 25 ] || fail "--metrics has $(wc -l <"$tmp/tty.jsonl") lines, expected one per step (25)"
[ "$failures" -eq 0 ] || { echo "screen:"; cat "$tmp/screen"; }

# 2. --log-interval 5 on a terminal.
on_tty 200 "$tmp/raw5" gpt "${tiny[@]}" --out "$tmp/tty5" --log-interval 5
rc=$?
screen "$tmp/raw5" >"$tmp/screen5"
[ "$rc" -eq 0 ] || fail "--log-interval 5 under a pseudo-terminal exited $rc"
logged=$(grep -Eo '^step +[0-9]+ \| loss' "$tmp/screen5" | grep -Eo '[0-9]+' | tr '\n' ' ')
[ "$logged" = "5 10 15 20 25 " ] || fail "--log-interval 5: log lines at steps '$logged'"

# 2b. An 80-column terminal: the progress line fits (no wrapped remains), the bar narrowed or gone,
#     and the losses and the ETA still shown.
on_tty 80 "$tmp/raw80" gpt "${tiny[@]}" --out "$tmp/tty80"
rc=$?
screen "$tmp/raw80" >"$tmp/screen80"
bar=$(grep '^step [0-9]*/' "$tmp/screen80")
echo "at 80 columns: $bar"
[ "$rc" -eq 0 ] && [ "$(grep -c '^step [0-9]*/' "$tmp/screen80")" -eq 1 ] && [ "${#bar}" -le 79 ] &&
  echo "$bar" | grep -Eq '^step 25/25 .*loss [0-9.]+ \| val [0-9.]+ \| .* tok/s \| eta 0s' ||
  { fail "80 columns: expected one progress line of <= 79 characters with the losses and the ETA"; cat "$tmp/screen80"; }

# 3. On a pipe: the same log lines, no progress line, no terminal escapes.
run "$train" gpt "${tiny[@]}" --out "$tmp/pipe"
[ "$rc" -eq 0 ] || { fail "train on a pipe exited $rc"; show; }
logged=$(grep -Eo '^step +[0-9]+ \| loss' "$tmp/out" | grep -Eo '[0-9]+' | tr '\n' ' ')
[ "$logged" = "10 20 25 " ] || fail "on a pipe: log lines at steps '$logged', expected '10 20 25 '"
if grep -q $'\r\|\x1b' "$tmp/out"; then fail "on a pipe: carriage returns or escapes in the output"; fi
grep -q '^step [0-9]*/' "$tmp/out" && fail "on a pipe: a progress line was printed"

finish cli_progress
