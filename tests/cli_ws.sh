#!/usr/bin/env bash
# serve's WebSocket channel (GET /v1/stream) against a client nobody here wrote: the npm `ws`
# package runs tests/ws_client/check.mjs against a tiny GPT served with an API key (upgrade
# refused with 401 for a bad token, interleaved requests equal to HTTP's, cancel, refused messages,
# a dropped socket or one that stops reading freeing its slot, metrics by transport); then SIGTERM exits 0 with a socket open.
# `ws` is installed once into ${FORGE_NPM_CACHE:-$HOME/.cache/forge-npm}, never into the source
# tree. Without node 20 and npm, or without the npm registry, the test is skipped (77), or fails
# under FORGE_REQUIRE_OPTIONAL=1.
# Usage: cli_ws.sh path/to/train path/to/serve
set -u

train=${1:?usage: cli_ws.sh path/to/train path/to/serve}
serve=${2:?usage: cli_ws.sh path/to/train path/to/serve}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cli_lib.sh
. "$here/cli_lib.sh"
test_name=cli_ws

npm_package ws 8 >"$tmp/npm.msg" || skip_missing "$(tail -1 "$tmp/npm.msg")"
tail -1 "$tmp/npm.msg"
check=$(node_script "$here/ws_client/check.mjs" client) || { fail "cannot copy check.mjs"; finish cli_ws; }

tiny_serve_model cli_ws
key=sk-forge-ws-test-key
printf '%s\n' "$key" >"$tmp/keys"
start_server ws --chat-template "$tmp/chat.json" --api-key-file "$tmp/keys" --slots 4 \
  --max-tokens-limit 100000 --ws-queue-limit 1048576 --write-timeout 2
echo "serve listening on port $port"

BASE="http://127.0.0.1:$port" API_KEY=$key MODEL=tiny timeout 120 node "$check"
client_rc=$?
if [ "$client_rc" -ne 0 ]; then
  fail "check.mjs exited $client_rc"
  echo "  serve's last log lines:"
  tail -8 "$tmp/ws.err" | sed 's/^/    /'
fi

# SIGTERM with an idle socket open: the server says "going away" and exits 0.
cd "$tmp/client" || exit 1  # node resolves "ws" from the working directory for -e scripts
BASE="http://127.0.0.1:$port" API_KEY=$key timeout 30 node --input-type=module -e '
  import WebSocket from "ws";
  const ws = new WebSocket(process.env.BASE.replace(/^http/, "ws") + "/v1/stream",
                           { headers: { Authorization: `Bearer ${process.env.API_KEY}` } });
  ws.on("open", () => console.log("open"));
  ws.on("close", (code) => { console.log(`closed ${code}`); process.exit(0); });
  ws.on("error", (e) => { console.log(`error ${e.message}`); process.exit(1); });
' >"$tmp/idle.out" 2>&1 &
idle_pid=$!
for _ in $(seq 1 100); do grep -q open "$tmp/idle.out" && break; sleep 0.1; done
stop_server ws
wait_exit "$idle_pid" 10 "the idle socket's client"
grep -q '^closed 1001$' "$tmp/idle.out" || fail "idle socket at SIGTERM: expected close 1001, got $(cat "$tmp/idle.out")"
grep -q "$key" "$tmp/ws.err" && fail "the API key appears in serve's log"

finish cli_ws
