#!/usr/bin/env bash
# The C++ client against live servers: tests/client_cpp_check.cpp (plain, SSE and WebSocket
# agreeing, chat, cancel freeing the slot, typed errors, 429 retried until served, a closed port)
# and build/apps/complete (plain, --stream and --ws printing the same text; an error's status and
# param on stderr with exit 1).
# Usage: cli_cpp_client.sh path/to/train path/to/serve path/to/client_cpp_check path/to/complete
set -u

train=${1:?usage: cli_cpp_client.sh train serve client_cpp_check complete}
serve=${2:?usage: cli_cpp_client.sh train serve client_cpp_check complete}
check_exe=${3:?usage: cli_cpp_client.sh train serve client_cpp_check complete}
complete=${4:?usage: cli_cpp_client.sh train serve client_cpp_check complete}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cli_lib.sh
. "$here/cli_lib.sh"
test_name=cli_cpp_client

tiny_serve_model cli_cpp_client
key=sk-forge-cpp-test-key
printf '%s\n' "$key" >"$tmp/keys"
start_server busy --model-name tiny --api-key-file "$tmp/keys" --slots 1 --max-queue 0 \
  --max-tokens-limit 10000000
busy_port=$port busy_pid=$bg_pid
start_server main --model-name tiny --api-key-file "$tmp/keys" --chat-template "$tmp/chat.json" \
  --max-tokens-limit 100000
echo "serve listening on ports $port and $busy_port (one slot, no queue)"

timeout 120 "$check_exe" "http://127.0.0.1:$port" "$key" "http://127.0.0.1:$busy_port"
rc=$?
[ "$rc" -eq 0 ] || fail "client_cpp_check exited $rc"

# build/apps/complete: the three transports print the same text for a seed.
for mode in "" --stream --ws; do
  run timeout 30 "$complete" --url "http://127.0.0.1:$port" --api-key "$key" --prompt "we" \
    --max-tokens 12 --seed 9 $mode
  [ "$rc" -eq 0 ] || { fail "complete $mode exited $rc"; show; }
  cp "$tmp/out" "$tmp/complete$mode.out"
done
cmp -s "$tmp/complete.out" "$tmp/complete--stream.out" && cmp -s "$tmp/complete.out" "$tmp/complete--ws.out" ||
  fail "complete: plain, --stream and --ws printed different texts: $(cat "$tmp"/complete*.out)"
[ "$(head -c 2 "$tmp/complete.out")" = "we" ] || fail "complete: the output does not start with the prompt"
grep -q '^# finish_reason length$' "$tmp/err" || fail "complete: no '# finish_reason length' on stderr"
FORGE_API_KEY=$key run timeout 30 "$complete" --url "http://127.0.0.1:$port" --prompt "we" \
  --temperature 0 --chat --max-tokens 4
[ "$rc" -eq 0 ] || { fail "complete --chat (key from FORGE_API_KEY) exited $rc"; show; }
run timeout 30 "$complete" --url "http://127.0.0.1:$port" --api-key "$key" --prompt "we" --top-k 99999999999999999999
[ "$rc" -ne 0 ] || fail "complete: a top-k out of range was accepted"
for mode in "" --stream --ws; do
  run timeout 30 "$complete" --url "http://127.0.0.1:$port" --api-key "$key" --prompt "we~" $mode
  [ "$rc" -eq 1 ] && grep -q '^error: 400 invalid_request_error (param prompt): ' "$tmp/err" ||
    { fail "complete $mode with a character outside the vocabulary: expected 'error: 400 ... (param prompt)' and exit 1"; show; }
  [ ! -s "$tmp/out" ] || { fail "complete $mode: a refused prompt printed on stdout"; show; }
done
run timeout 30 "$complete" --url "http://127.0.0.1:$port" --api-key sk-wrong --prompt "we" --ws
[ "$rc" -eq 1 ] && grep -q '^error: 401 ' "$tmp/err" || { fail "complete --ws with a wrong key: expected 'error: 401' and exit 1"; show; }

stop_server main
bg_pid=$busy_pid
stop_server busy
finish cli_cpp_client
