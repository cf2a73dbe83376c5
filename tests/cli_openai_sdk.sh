#!/usr/bin/env bash
# `serve` against a client nobody here wrote: the official OpenAI Node SDK (openai@6) runs
# tests/openai_sdk/check.mjs (models.list, completions plain and streamed adding up to the same
# seeded text, chat streamed through the SDK's own accumulator, 400/404/401 surfacing as the SDK's
# error classes with the param) against a tiny GPT served with an API key; SIGTERM exits 0.
# The SDK is installed once into ${FORGE_NPM_CACHE:-$HOME/.cache/forge-npm}, never into the source
# tree. Without node or npm, or when npm cannot install it (no registry), the test is skipped (77),
# or fails under FORGE_REQUIRE_OPTIONAL=1.
# Usage: cli_openai_sdk.sh path/to/train path/to/serve
set -u

train=${1:?usage: cli_openai_sdk.sh path/to/train path/to/serve}
serve=${2:?usage: cli_openai_sdk.sh path/to/train path/to/serve}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/cli_lib.sh
. "$here/cli_lib.sh"
test_name=cli_openai_sdk

# ---- The SDK, in a cache outside the source tree ----
npm_package openai 6 >"$tmp/npm.msg" || skip_missing "$(tail -1 "$tmp/npm.msg")"
tail -1 "$tmp/npm.msg"
check=$(node_script "$here/openai_sdk/check.mjs" sdk) || { fail "cannot copy check.mjs"; finish cli_openai_sdk; }

# ---- A tiny checkpoint behind serve, with an API key ----
tiny_serve_model cli_openai_sdk
key=sk-forge-sdk-test-key
printf '%s\n' "$key" >"$tmp/keys"
start_server sdk --chat-template "$tmp/chat.json" --api-key-file "$tmp/keys"
echo "serve listening on port $port"

# ---- The SDK's checks (each call has its own 30 s timeout; all of them 180 s) ----
BASE_URL="http://127.0.0.1:$port/v1" API_KEY=$key MODEL=tiny timeout 180 node "$check"
sdk_rc=$?
if [ "$sdk_rc" -ne 0 ]; then
  fail "check.mjs exited $sdk_rc"
  echo "  serve's last log lines:"
  tail -8 "$tmp/sdk.err" | sed 's/^/    /'
fi

stop_server sdk
grep -q "$key" "$tmp/sdk.err" && fail "the API key appears in serve's log"

finish cli_openai_sdk
