#!/usr/bin/env bash
# The Java client (clients/java, package dev.forge.client: the JDK alone, its own JSON) against a
# tiny GPT served with an API key: tests/java_client/ClientCheck.java checks its JSON reader and
# writer, then, against one server, seeded completions equal over HTTP, server-sent events and the
# WebSocket, chat, a WebSocket cancel freeing its slot, the error classes (401, 400 with the param,
# 404) never retried, hang-ups freeing slots; then the CLI (dev.forge.client.Main) printing the same
# text all three ways; then, against a server of one slot and no queue, 429s retried until they
# succeed. Compiled with plain javac into $tmp. Without javac and java (JDK 17 or later), the test
# is skipped (77), or fails under FORGE_REQUIRE_OPTIONAL=1.
# Usage: cli_java_client.sh path/to/train path/to/serve
set -u

train=${1:?usage: cli_java_client.sh path/to/train path/to/serve}
serve=${2:?usage: cli_java_client.sh path/to/train path/to/serve}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cli_lib.sh
. "$here/cli_lib.sh"
test_name=cli_java_client

# ---- A JDK ----
if ! command -v javac >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
  skip_missing "javac or java not found (a JDK 17 or later; Debian: apt-get install openjdk-17-jdk-headless)"
fi
jdk=$(javac -version 2>&1 | sed -n 's/^javac \([0-9]*\).*/\1/p')
if [ -z "$jdk" ] || [ "$jdk" -lt 17 ]; then
  skip_missing "javac $(javac -version 2>&1) is older than 17"
fi
echo "$(javac -version 2>&1), $(java -version 2>&1 | head -1)"

run javac -Xlint:all -d "$tmp/classes" "$here"/../clients/java/src/dev/forge/client/*.java \
  "$here/java_client/ClientCheck.java"
if [ "$rc" -ne 0 ]; then
  fail "javac exited $rc"
  show
  finish cli_java_client
fi
# Lint warnings are shown, not failed on (a newer JDK may add kinds of them).
[ -s "$tmp/err" ] && sed 's/^/note javac: /' "$tmp/err" | head -20
# The serial collector and no C2: a quicker start, and light on a small machine.
java=(java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$tmp/classes")

# check NAME SECONDS PHASE ARGS...: runs ClientCheck PHASE, its output shown, bounded in time.
check() {
  local name=$1 seconds=$2
  shift 2
  timeout "$seconds" "${java[@]}" ClientCheck "$@"
  local check_rc=$?
  if [ "$check_rc" -ne 0 ]; then
    fail "ClientCheck $1 exited $check_rc"
    echo "  serve's last log lines:"
    tail -8 "$tmp/$name.err" 2>/dev/null | sed 's/^/    /'
  fi
}

check none 60 json

# ---- One server: completions, streams, chat, cancel, errors ----
tiny_serve_model cli_java_client
key=sk-forge-java-test-key
printf '%s\n' "$key" >"$tmp/keys"
start_server main --model-name tiny --chat-template "$tmp/chat.json" --api-key-file "$tmp/keys" \
  --slots 4 --max-tokens-limit 100000
echo "serve listening on port $port"
url="http://127.0.0.1:$port"
check main 240 main "$url" "$key" tiny

# ---- The CLI: the same seeded text plain, over SSE and over the WebSocket ----
cli_args=(--url "$url" --api-key "$key" --model tiny --prompt "we" --max-tokens 30 --temperature 1
  --seed 7)
for mode in plain stream ws; do
  flag=()
  [ "$mode" = plain ] || flag=("--$mode")
  run timeout 60 "${java[@]}" dev.forge.client.Main "${cli_args[@]}" "${flag[@]}"
  cp "$tmp/out" "$tmp/cli_$mode.out"
  if [ "$rc" -ne 0 ] || ! grep -q '^finish_reason: length$' "$tmp/err"; then
    fail "Main ($mode): exit $rc, expected 0 and 'finish_reason: length' on stderr"
    show
  fi
done
if [ ! -s "$tmp/cli_plain.out" ] || ! cmp -s "$tmp/cli_plain.out" "$tmp/cli_stream.out" ||
  ! cmp -s "$tmp/cli_plain.out" "$tmp/cli_ws.out"; then
  fail "Main: plain, --stream and --ws printed different texts:" \
    "$(head -c 200 "$tmp/cli_plain.out") / $(head -c 200 "$tmp/cli_stream.out") / $(head -c 200 "$tmp/cli_ws.out")"
else
  echo "ok   Main: the same text plain, --stream and --ws ($(wc -c <"$tmp/cli_plain.out") bytes)"
fi
run timeout 60 "${java[@]}" dev.forge.client.Main --url "$url" --api-key sk-wrong --model tiny --prompt we
expect_error "Main with a wrong key" "AuthenticationException 401"
[ "$rc" -eq 1 ] || fail "Main with a wrong key: exit $rc, expected 1"
run timeout 60 "${java[@]}" dev.forge.client.Main --url "$url" --max-tokens many --prompt we
expect_error "Main with a bad --max-tokens" "usage:"
[ "$rc" -eq 2 ] || fail "Main with a bad --max-tokens: exit $rc, expected 2"
stop_server main

# ---- One slot, no queue: 429 with Retry-After, retried until it succeeds ----
start_server busy --model-name tiny --chat-template "$tmp/chat.json" --api-key-file "$tmp/keys" \
  --slots 1 --max-queue 0 --max-tokens-limit 1000000
echo "serve (one slot, no queue) listening on port $port"
check busy 180 retry "http://127.0.0.1:$port" "$key" tiny
stop_server busy

grep -q "$key" "$tmp/main.err" "$tmp/busy.err" && fail "the API key appears in serve's log"

finish cli_java_client
