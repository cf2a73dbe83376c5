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

# skip WHAT: an optional input is missing; exits 77 (skipped), or 1 under FORGE_REQUIRE_OPTIONAL=1.
skip() {
  optional_missing "$*"
  [ "$failures" -eq 0 ] && exit 77
  finish cli_openai_sdk
}

# ---- The SDK, in a cache outside the source tree ----
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  skip "node or npm not found (Node 20 or later, with its npm)"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || skip "node $(node --version) is older than 20, which openai@6 needs"
npm_dir=${FORGE_NPM_CACHE:-$HOME/.cache/forge-npm}
sdk_version() {
  node -p 'require(process.argv[1]).version' "$npm_dir/node_modules/openai/package.json" 2>/dev/null
}
if [[ "$(sdk_version)" != 6.* ]]; then
  mkdir -p "$npm_dir" || skip "cannot create $npm_dir for the SDK"
  echo "installing openai@6 into $npm_dir"
  # flock: two runs sharing the cache do not install into it at once.
  if ! (flock 9 && timeout 300 npm install --prefix "$npm_dir" --no-audit --no-fund --no-update-notifier \
    openai@6) 9>"$npm_dir/.lock" >"$tmp/npm.log" 2>&1; then
    tail -5 "$tmp/npm.log"
    skip "npm install openai@6 failed or took over 300 s (is the registry reachable?)"
  fi
  [[ "$(sdk_version)" == 6.* ]] || skip "npm install openai@6 left no openai 6.x in $npm_dir"
fi
echo "openai SDK $(sdk_version) in $npm_dir, node $(node --version)"
# ESM imports resolve from the script's own directory, not NODE_PATH: run a copy from $tmp, where
# node_modules is a link to the cache's.
mkdir "$tmp/sdk"
cp "$here/openai_sdk/check.mjs" "$tmp/sdk/check.mjs"
ln -s "$npm_dir/node_modules" "$tmp/sdk/node_modules"

# ---- A tiny checkpoint behind serve, with an API key ----
tiny_serve_model cli_openai_sdk
key=sk-forge-sdk-test-key
printf '%s\n' "$key" >"$tmp/keys"
"$serve" --checkpoint "$tmp/tiny" --host 127.0.0.1 --port 0 --threads 1 --chat-template "$tmp/chat.json" \
  --api-key-file "$tmp/keys" >"$tmp/serve.out" 2>"$tmp/serve.err" &
bg_pid=$!
port=
for _ in $(seq 1 300); do
  port=$(sed -n 's|^serve: listening on http://127\.0\.0\.1:\([0-9]*\) model .* slots [0-9]*$|\1|p' "$tmp/serve.out")
  [ -n "$port" ] && break
  kill -0 "$bg_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  fail "serve: no 'serve: listening on http://127.0.0.1:PORT model NAME slots N' line in 30 s"
  echo "  stdout: $(head -c 600 "$tmp/serve.out")"
  echo "  stderr: $(head -c 600 "$tmp/serve.err")"
  finish cli_openai_sdk
fi
echo "serve listening on port $port"

# ---- The SDK's checks (each call has its own 30 s timeout; all of them 180 s) ----
BASE_URL="http://127.0.0.1:$port/v1" API_KEY=$key MODEL=tiny timeout 180 node "$tmp/sdk/check.mjs"
sdk_rc=$?
if [ "$sdk_rc" -ne 0 ]; then
  fail "check.mjs exited $sdk_rc"
  echo "  serve's last log lines:"
  tail -8 "$tmp/serve.err" | sed 's/^/    /'
fi

kill -TERM "$bg_pid"
wait_exit "$bg_pid" 15 "serve after SIGTERM"
bg_pid=
[ "$rc" -eq 0 ] || { fail "serve: exit $rc after SIGTERM, expected 0"; tail -5 "$tmp/serve.err"; }
grep -q "$key" "$tmp/serve.err" && fail "the API key appears in serve's log"

finish cli_openai_sdk
