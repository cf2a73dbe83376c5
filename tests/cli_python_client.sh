#!/usr/bin/env bash
# The Python client, clients/python/forge_client.py (standard library only), against serve:
# tests/python_client_check.py runs its checks against a tiny GPT served with an API key (seeded
# text equal plain, streamed and over the WebSocket; chat; cancel freeing the slot; typed errors;
# the `python3 -m forge_client` command line), then against a second serve with one slot and no
# queue (429s raised, and retried until the slot frees). Each serve exits 0 on SIGTERM.
# Usage: cli_python_client.sh path/to/train path/to/serve
set -u

train=${1:?usage: cli_python_client.sh path/to/train path/to/serve}
serve=${2:?usage: cli_python_client.sh path/to/train path/to/serve}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cli_lib.sh
. "$here/cli_lib.sh"
test_name=cli_python_client
py=/usr/bin/python3

tiny_serve_model cli_python_client
key=sk-forge-python-test-key
printf '%s\n' "$key" >"$tmp/keys"

# check GROUP SERVER: python_client_check.py GROUP against the running serve (at most 300 s).
check() {
  FORGE_API_KEY=$key PYTHONDONTWRITEBYTECODE=1 timeout 300 "$py" "$here/python_client_check.py" \
    "$1" "http://127.0.0.1:$port"
  local client_rc=$?
  if [ "$client_rc" -ne 0 ]; then
    fail "python_client_check.py $1 exited $client_rc"
    echo "  serve's last log lines:"
    tail -8 "$tmp/$2.err" | sed 's/^/    /'
  fi
}

start_server main --model-name tiny --chat-template "$tmp/chat.json" --api-key-file "$tmp/keys" \
  --slots 4 --max-tokens-limit 100000
echo "serve (main) listening on port $port"
check main main
stop_server main

start_server busy --model-name tiny --api-key-file "$tmp/keys" --slots 1 --max-queue 0 \
  --max-tokens-limit 10000000
echo "serve (busy: one slot, no queue) listening on port $port"
check rate-limit busy
stop_server busy

grep -q "$key" "$tmp/main.err" "$tmp/busy.err" && fail "the API key appears in serve's log"

finish cli_python_client
