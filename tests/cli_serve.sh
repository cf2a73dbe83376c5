#!/usr/bin/env bash
# `serve` end to end over HTTP with a tiny GPT: /health and /v1/models; completions that repeat
# exactly (greedy, and sampled with a seed), n choices seeded seed, seed+1; streaming whose chunks
# add up to the non-streamed text; stop strings; every bad request answered with the status and
# the param it names (and the server still serving after them); chat completions through
# --chat-template, plain, with logprobs and a stop, and streamed (role first, deltas adding up to
# the plain content, {} with the finish_reason, usage, [DONE]); /tokenize and /detokenize round
# trip; /metrics counting what was sent (requests by status, tokens, histograms); API keys and
# JWTs (made by PyJWT, an independent implementation) accepted or refused; a full queue's 429;
# slow and half-sent requests timed out (408) without holding a slot; SIGTERM exiting 0.
# Usage: cli_serve.sh path/to/train path/to/serve
set -u

train=${1:?usage: cli_serve.sh path/to/train path/to/serve}
serve=${2:?usage: cli_serve.sh path/to/train path/to/serve}
. "$(dirname "$0")/cli_lib.sh"
py=/usr/bin/python3

test_name=cli_serve
tiny_serve_model cli_serve

# get PATH [CURL ARGS...] / post PATH BODY [CURL ARGS...] -> $status; body in $tmp/body, headers
# in $tmp/headers.
get() {
  local path=$1
  shift
  status=$(curl -s --max-time 30 -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' "$@" \
    "http://127.0.0.1:$port$path")
}
post() {
  local path=$1 body=$2
  shift 2
  status=$(curl -s --max-time 30 -o "$tmp/body" -D "$tmp/headers" -w '%{http_code}' \
    -H 'Content-Type: application/json' --data-binary "$body" "$@" "http://127.0.0.1:$port$path")
}

# expect_status WHAT CODE: a failure unless the last request got CODE.
expect_status() {
  [ "$status" = "$2" ] && return 0
  fail "$1: status $status, expected $2"
  echo "  body: $(head -c 600 "$tmp/body")"
  return 1
}

# check_json WHAT EXPR: a failure unless the Python EXPR holds for the JSON body, `d`.
check_json() {
  "$py" - "$tmp/body" "$2" <<'PY' || { fail "$1 (check: $2)"; echo "  body: $(head -c 600 "$tmp/body")"; }
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if eval(sys.argv[2]) else 1)
PY
}

# text_of FILE [INDEX]: choice INDEX's text of a completion, JSON-quoted (one line).
text_of() {
  "$py" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["choices"][int(sys.argv[2])]["text"]))' \
    "$1" "${2:-0}"
}

# expect_error_param WHAT CODE PARAM BODY: POST BODY gets CODE and an OpenAI error naming PARAM.
expect_error_param() {
  post /v1/completions "$4"
  expect_status "$1" "$2" || return
  check_json "$1: error names the param" \
    "d['error']['param'] == '$3' and d['error']['type'] == 'invalid_request_error' and '$3' in d['error']['message']"
}

# ---- A server without authentication ----
start_server plain --chat-template "$tmp/chat.json"
echo "serve listening on port $port"

get /health
expect_status "GET /health" 200 && check_json "GET /health" "d == {'status': 'ok'}"

get /v1/models
expect_status "GET /v1/models" 200 &&
  check_json "GET /v1/models lists the model, named for the checkpoint directory" \
    "d['object'] == 'list' and [m['id'] for m in d['data']] == ['tiny'] and d['data'][0]['owned_by'] == 'forge' and isinstance(d['data'][0]['created'], int)"

# Greedy: 20 tokens ("length"), usage that adds up, and the same text twice.
greedy='{"model": "tiny", "prompt": "The", "max_tokens": 20, "temperature": 0}'
post /v1/completions "$greedy"
expect_status "greedy completion" 200
check_json "greedy completion: shape and usage" \
  "d['object'] == 'text_completion' and d['id'].startswith('cmpl-') and d['model'] == 'tiny' and len(d['choices']) == 1 and d['choices'][0]['index'] == 0 and d['choices'][0]['finish_reason'] == 'length' and d['choices'][0]['logprobs'] is None and len(d['choices'][0]['text']) == 20 and d['usage'] == {'prompt_tokens': 3, 'completion_tokens': 20, 'total_tokens': 23}"
cp "$tmp/body" "$tmp/greedy1.json"
post /v1/completions "$greedy"
cp "$tmp/body" "$tmp/greedy2.json"
[ "$(text_of "$tmp/greedy1.json")" = "$(text_of "$tmp/greedy2.json")" ] ||
  fail "greedy completion twice: $(text_of "$tmp/greedy1.json") then $(text_of "$tmp/greedy2.json")"

# Sampling with a seed repeats; another seed differs (30 tokens from a near-uniform model).
sampled() { echo "{\"model\": \"tiny\", \"prompt\": \"The\", \"max_tokens\": 30, \"temperature\": 0.8, \"seed\": $1 ${2-}}"; }
post /v1/completions "$(sampled 5)"
expect_status "sampled completion, seed 5" 200
cp "$tmp/body" "$tmp/seed5a.json"
post /v1/completions "$(sampled 5)"
cp "$tmp/body" "$tmp/seed5b.json"
post /v1/completions "$(sampled 6)"
cp "$tmp/body" "$tmp/seed6.json"
seed5=$(text_of "$tmp/seed5a.json")
[ "$seed5" = "$(text_of "$tmp/seed5b.json")" ] ||
  fail "seed 5 twice: $seed5 then $(text_of "$tmp/seed5b.json")"
[ "$seed5" != "$(text_of "$tmp/seed6.json")" ] || fail "seeds 5 and 6 gave the same text: $seed5"

# n = 2 with seed 5: choice 0 is seed 5's text, choice 1 seed 6's.
post /v1/completions "$(sampled 5 ', "n": 2')"
expect_status "n = 2" 200 &&
  check_json "n = 2: two choices, indices 0 and 1" "[c['index'] for c in d['choices']] == [0, 1]"
[ "$(text_of "$tmp/body" 0)" = "$seed5" ] && [ "$(text_of "$tmp/body" 1)" = "$(text_of "$tmp/seed6.json")" ] ||
  fail "n = 2, seed 5: choices $(text_of "$tmp/body" 0), $(text_of "$tmp/body" 1); expected seed 5's $seed5 and seed 6's $(text_of "$tmp/seed6.json")"

# Streaming the seed-5 request: data lines, [DONE] last, chunks adding up to the same text.
curl -s -N --max-time 30 -H 'Content-Type: application/json' \
  --data-binary "$(sampled 5 ', "stream": true, "stream_options": {"include_usage": true}')" \
  -D "$tmp/stream_headers" "http://127.0.0.1:$port/v1/completions" >"$tmp/stream.txt"
grep -qi '^content-type: text/event-stream' "$tmp/stream_headers" ||
  fail "stream: no Content-Type: text/event-stream"
streamed=$("$py" - "$tmp/stream.txt" <<'PY'
import json, sys
events = [l[len("data: "):] for l in open(sys.argv[1]).read().split("\n\n") if l.startswith("data: ")]
raw = open(sys.argv[1]).read()
assert raw.endswith("data: [DONE]\n\n"), "does not end with data: [DONE]"
assert events[-1] == "[DONE]", "last event is not [DONE]"
chunks = [json.loads(e) for e in events[:-1]]
assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
choice_chunks = [c for c in chunks if c["choices"]]
finishes = [c["choices"][0]["finish_reason"] for c in choice_chunks]
assert finishes[-1] == "length" and all(f is None for f in finishes[:-1]), f"finish reasons {finishes}"
assert choice_chunks[-1]["choices"][0]["text"] == "", "the finishing chunk has text"
usage = chunks[-1]
assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 30, f"usage chunk {usage}"
print(json.dumps("".join(c["choices"][0]["text"] for c in choice_chunks)))
PY
) || fail "stream: malformed event stream (above); it was: $(head -c 400 "$tmp/stream.txt")"
[ "$streamed" = "$seed5" ] || fail "stream: chunks add up to $streamed, the non-stream text is $seed5"

# A stop string: the text ends just before its first occurrence, finish_reason "stop".
stop=$("$py" -c 'import json, sys; t = json.load(open(sys.argv[1]))["choices"][0]["text"]; print(json.dumps(t[10:12]))' "$tmp/greedy1.json")
expected=$("$py" -c 'import json, sys; t = json.load(open(sys.argv[1]))["choices"][0]["text"]; print(json.dumps(t[:t.index(t[10:12])]))' "$tmp/greedy1.json")
post /v1/completions "{\"model\": \"tiny\", \"prompt\": \"The\", \"max_tokens\": 20, \"temperature\": 0, \"stop\": [$stop]}"
expect_status "stop $stop" 200 && check_json "stop $stop: finish_reason" "d['choices'][0]['finish_reason'] == 'stop'"
[ "$(text_of "$tmp/body")" = "$expected" ] ||
  fail "stop $stop: text $(text_of "$tmp/body"), expected $expected (the greedy text up to the stop)"

# Bad requests: the status, and the param named.
expect_error_param "temperature 3" 400 temperature '{"model": "tiny", "prompt": "The", "temperature": 3}'
expect_error_param "max_tokens 0" 400 max_tokens '{"model": "tiny", "prompt": "The", "max_tokens": 0}'
expect_error_param "n 9" 400 n '{"model": "tiny", "prompt": "The", "n": 9}'
expect_error_param "no prompt" 400 prompt '{"model": "tiny", "max_tokens": 5}'
expect_error_param "5 stop strings" 400 stop '{"model": "tiny", "prompt": "The", "stop": ["a", "b", "c", "d", "e"]}'
expect_error_param "a prompt outside the vocabulary" 400 prompt '{"model": "tiny", "prompt": "a~b"}'
check_json "a prompt outside the vocabulary: the message shows the character" "'~' in d['error']['message']"
# Streamed, the refusal comes as the same 400 before any event (no stream is opened).
expect_error_param "a streamed prompt outside the vocabulary" 400 prompt '{"model": "tiny", "prompt": "a~b", "stream": true}'
post /v1/completions '{"model": "tiny", "prompt": '
expect_status "malformed JSON" 400 &&
  check_json "malformed JSON: an OpenAI error that says so" "d['error']['type'] == 'invalid_request_error' and 'JSON' in d['error']['message']"
# An unknown model is 404 model_not_found, as OpenAI answers it.
post /v1/completions '{"model": "gpt-4", "prompt": "The"}'
expect_status "unknown model" 404 &&
  check_json "unknown model: param and code" "d['error']['param'] == 'model' and d['error']['code'] == 'model_not_found' and 'gpt-4' in d['error']['message']"

get /v1/nothing
expect_status "GET /v1/nothing" 404 && check_json "GET /v1/nothing" "d['error']['code'] == 'not_found'"
get /v1/completions
expect_status "GET /v1/completions" 405 && grep -qi '^allow: POST' "$tmp/headers" ||
  fail "GET /v1/completions: no 405 with Allow: POST"

"$py" -c 'import json; print(json.dumps({"model": "tiny", "prompt": "The", "padding": "x" * (1 << 20)}))' >"$tmp/big.json"
status=$(curl -s --max-time 30 -o "$tmp/body" -w '%{http_code}' -H 'Content-Type: application/json' \
  --data-binary @"$tmp/big.json" "http://127.0.0.1:$port/v1/completions")
expect_status "a body over 1 MiB" 413 && check_json "a body over 1 MiB" "'1048576 bytes' in d['error']['message']"

# After all that, the server still answers, and the same.
post /v1/completions "$greedy"
expect_status "greedy completion after the bad requests" 200 &&
  [ "$(text_of "$tmp/body")" = "$(text_of "$tmp/greedy1.json")" ] ||
  fail "greedy completion after the bad requests: $(text_of "$tmp/body"), before $(text_of "$tmp/greedy1.json")"

# ---- Chat completions (through --chat-template: the tiny corpus has no 'U' for "User: ") ----
# chat_body EXTRA: a seeded chat request, EXTRA appended to its fields.
chat_body() { echo "{\"model\": \"tiny\", \"messages\": [{\"role\": \"system\", \"content\": \"we\"}, {\"role\": \"user\", \"content\": \"all\"}], \"max_tokens\": 12, \"temperature\": 0.8, \"seed\": 7 ${1-}}"; }
# content_of FILE [INDEX]: choice INDEX's message content of a chat completion, JSON-quoted.
content_of() {
  "$py" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["choices"][int(sys.argv[2])]["message"]["content"]))' \
    "$1" "${2:-0}"
}
post /v1/chat/completions "$(chat_body ', "stop": []')"
expect_status "chat completion" 200
check_json "chat completion: OpenAI's shape, the template's prompt counted in usage" \
  "d['object'] == 'chat.completion' and d['id'].startswith('chatcmpl-') and d['model'] == 'tiny' and isinstance(d['created'], int) and len(d['choices']) == 1 and d['choices'][0]['index'] == 0 and d['choices'][0]['message']['role'] == 'assistant' and d['choices'][0]['logprobs'] is None and d['choices'][0]['finish_reason'] == 'length' and len(d['choices'][0]['message']['content']) == 12 and d['usage'] == {'prompt_tokens': len('T: we\nC: all\nA:'), 'completion_tokens': 12, 'total_tokens': len('T: we\nC: all\nA:') + 12}"
cp "$tmp/body" "$tmp/chat1.json"
chat_text=$(content_of "$tmp/chat1.json")
post /v1/chat/completions "$(chat_body ', "stop": []')"
[ "$(content_of "$tmp/body")" = "$chat_text" ] || fail "chat seed 7 twice: $chat_text then $(content_of "$tmp/body")"
post /v1/chat/completions "$(chat_body ', "stop": [], "logprobs": true, "top_logprobs": 2')"
expect_status "chat with logprobs" 200 &&
  check_json "chat logprobs: one entry per token, its bytes, 2 top ones, the same text" \
    "(lambda c: [e['token'] for e in c] == list(d['choices'][0]['message']['content']) and all(e['bytes'] == list(e['token'].encode()) and e['logprob'] <= 0 and len(e['top_logprobs']) == 2 and e['top_logprobs'][0]['logprob'] >= e['top_logprobs'][1]['logprob'] for e in c))(d['choices'][0]['logprobs']['content'])"
[ "$(content_of "$tmp/body")" = "$chat_text" ] || fail "chat with logprobs: text $(content_of "$tmp/body"), without $chat_text"

# Streaming the same request (with n = 2: choice 0 is the same seed): the role first, content
# deltas adding up to the non-stream content, {} with the finish_reason, the usage, [DONE].
curl -s -N --max-time 30 -H 'Content-Type: application/json' \
  --data-binary "$(chat_body ', "stop": [], "n": 2, "stream": true, "stream_options": {"include_usage": true}')" \
  -D "$tmp/chat_stream_headers" "http://127.0.0.1:$port/v1/chat/completions" >"$tmp/chat_stream.txt"
grep -qi '^content-type: text/event-stream' "$tmp/chat_stream_headers" ||
  fail "chat stream: no Content-Type: text/event-stream"
chat_streamed=$("$py" - "$tmp/chat_stream.txt" <<'PY'
import json, sys
raw = open(sys.argv[1]).read()
assert raw.endswith("data: [DONE]\n\n"), "does not end with data: [DONE]"
events = [l[len("data: "):] for l in raw.split("\n\n") if l.startswith("data: ")]
chunks = [json.loads(e) for e in events[:-1]]
assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] and c["id"].startswith("chatcmpl-") for c in chunks)
assert all(c["usage"] is None for c in chunks[:-1]), "chunks before the last must have usage null"
assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 24, f"usage chunk {chunks[-1]}"
texts = []
for index in (0, 1):
    mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
    assert mine[0]["delta"] == {"role": "assistant", "content": ""}, f"first delta {mine[0]}"
    assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length", f"last {mine[-1]}"
    middle = mine[1:-1]
    assert middle and all(set(m["delta"]) == {"content"} and m["finish_reason"] is None for m in middle)
    texts.append("".join(m["delta"]["content"] for m in middle))
print(json.dumps(texts[0]))
PY
) || fail "chat stream: malformed event stream (above); it was: $(head -c 400 "$tmp/chat_stream.txt")"
[ "$chat_streamed" = "$chat_text" ] ||
  fail "chat stream: deltas add up to $chat_streamed, the non-stream content is $chat_text"

# A stop string: the content ends just before it; without "stop", the template's "\nC:" applies.
chat_stop=$("$py" -c 'import json, sys; t = json.loads(sys.argv[1]); print(json.dumps(t[5:7]))' "$chat_text")
chat_expected=$("$py" -c 'import json, sys; t = json.loads(sys.argv[1]); print(json.dumps(t[:t.index(t[5:7])]))' "$chat_text")
post /v1/chat/completions "$(chat_body ", \"stop\": $chat_stop")"
expect_status "chat stop $chat_stop" 200 &&
  check_json "chat stop $chat_stop: finish_reason" "d['choices'][0]['finish_reason'] == 'stop'"
[ "$(content_of "$tmp/body")" = "$chat_expected" ] ||
  fail "chat stop $chat_stop: content $(content_of "$tmp/body"), expected $chat_expected"

# expect_error_at PATH WHAT CODE PARAM BODY: POST BODY to PATH gets CODE and an error naming PARAM.
expect_error_at() {
  post "$1" "$5"
  expect_status "$2" "$3" || return
  check_json "$2: error names the param" "d['error']['param'] == '$4' and d['error']['type'] == 'invalid_request_error'"
}
expect_error_at /v1/chat/completions "chat without messages" 400 messages '{"model": "tiny"}'
expect_error_at /v1/chat/completions "chat with role robot" 400 messages \
  '{"model": "tiny", "messages": [{"role": "robot", "content": "we"}]}'
check_json "chat with role robot: the message names the role" "'robot' in d['error']['message']"
expect_error_at /v1/chat/completions "chat top_logprobs 9" 400 top_logprobs \
  '{"model": "tiny", "messages": [{"role": "user", "content": "we"}], "logprobs": true, "top_logprobs": 9}'

# ---- /tokenize and /detokenize ----
post /tokenize '{"model": "tiny", "prompt": "we are"}'
expect_status "tokenize" 200 &&
  check_json "tokenize: 6 ids, the count" "len(d['tokens']) == 6 and d['count'] == 6 and all(isinstance(t, int) for t in d['tokens']) and d['tokens'][0] != d['tokens'][2]"
ids=$("$py" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["tokens"]))' "$tmp/body")
post /detokenize "{\"tokens\": $ids}"
expect_status "detokenize" 200 && check_json "detokenize $ids: the text back" "d == {'prompt': 'we are'}"
expect_error_at /tokenize "tokenize outside the vocabulary" 400 prompt '{"prompt": "a~b"}'
expect_error_at /tokenize "tokenize without a prompt" 400 prompt '{"text": "we"}'
expect_error_at /detokenize "detokenize an id past the vocabulary" 400 tokens '{"tokens": [1, 100000]}'
expect_error_at /detokenize "detokenize a string" 400 tokens '{"tokens": ["we"]}'

# ---- /metrics: counters that count what was sent ----
# metric NAME_AND_LABELS: the value of that sample in $tmp/metrics (0 when absent).
metric() {
  awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }' "$tmp/metrics"
}
completions_ok='forge_requests_total{endpoint="/v1/completions",status="200",transport="http"}'
get /metrics
expect_status "GET /metrics" 200
grep -qi '^content-type: text/plain; version=0.0.4' "$tmp/headers" ||
  fail "GET /metrics: no Content-Type: text/plain; version=0.0.4"
cp "$tmp/body" "$tmp/metrics"
before=$(metric "$completions_ok")
generated_before=$(metric 'forge_generated_tokens_total{transport="http"}')
for _ in 1 2 3; do post /v1/completions '{"model": "tiny", "prompt": "The", "max_tokens": 4}'; done
post /v1/completions '{"model": "tiny", "prompt": "The", "temperature": 3}'
get /metrics
cp "$tmp/body" "$tmp/metrics"
after=$(metric "$completions_ok")
[ "$after" -eq $((before + 3)) ] || fail "/metrics: $completions_ok went $before -> $after after 3 completions"
[ "$(metric 'forge_generated_tokens_total{transport="http"}')" -eq $((generated_before + 12)) ] ||
  fail "/metrics: forge_generated_tokens_total went $generated_before -> $(metric 'forge_generated_tokens_total{transport="http"}') after 3 x 4 tokens"
[ "$(metric 'forge_requests_total{endpoint="/v1/completions",status="400",transport="http"}')" -ge 1 ] ||
  fail "/metrics: no 400 counted for /v1/completions"
[ "$(metric 'forge_requests_total{endpoint="/v1/chat/completions",status="200",transport="http"}')" -ge 5 ] ||
  fail "/metrics: fewer than 5 chat completions counted"
[ "$(metric forge_active_slots)" -eq 0 ] || fail "/metrics: forge_active_slots $(metric forge_active_slots) with nothing running"
[ "$(metric forge_slots)" -eq 8 ] || fail "/metrics: forge_slots $(metric forge_slots), expected 8"
for h in forge_batch_size forge_time_to_first_token_seconds forge_inter_token_latency_seconds; do
  grep -q "^# TYPE $h histogram$" "$tmp/metrics" && grep -q "^${h}_bucket{.*le=\"+Inf\"} [0-9]" "$tmp/metrics" &&
    grep -q "^${h}_sum" "$tmp/metrics" && grep -q "^${h}_count" "$tmp/metrics" ||
    fail "/metrics: histogram $h lacks its TYPE, +Inf bucket, _sum or _count"
done
# Every choice so far had a first token: TTFT's count is at least the completions sent.
ttft_count=$(metric 'forge_time_to_first_token_seconds_count{transport="http"}')
[ "$ttft_count" -ge $((after + 5)) ] || fail "/metrics: time to first token counted $ttft_count choices"

stop_server plain
grep -Eq '^serve: 127\.0\.0\.1:[0-9]+ POST /v1/completions 200 [0-9.]+ ms$' "$tmp/plain.err" ||
  { fail "no request log line 'serve: ADDR POST /v1/completions 200 MS ms' on stderr"; tail -5 "$tmp/plain.err"; }

# ---- Startup errors name the file ----
: >"$tmp/empty_keys"
run "$serve" --checkpoint "$tmp/tiny" --port 0 --api-key-file "$tmp/empty_keys"
expect_error "an empty --api-key-file" "error:" "$tmp/empty_keys" "no keys"
printf 'zq7x5\n' >"$tmp/small.secret"
run "$serve" --checkpoint "$tmp/tiny" --port 0 --jwt-secret-file "$tmp/small.secret"
expect_error "a 5-byte --jwt-secret-file" "error:" "$tmp/small.secret" "at least 32"
grep -q zq7x5 "$tmp/err" && fail "the short secret's text appears in the error"

# ---- API keys and JWTs ----
printf '# keys of the test\n\nsk-first-key\n  sk-second-key  \n' >"$tmp/keys"
secret=0123456789abcdef0123456789abcdef-test-secret
printf '%s\n' "$secret" >"$tmp/jwt.secret"
start_server auth --model-name forge-tiny --api-key-file "$tmp/keys" --jwt-secret-file "$tmp/jwt.secret" \
  --jwt-audience forge-test --log-format json

get /health
expect_status "GET /health with auth on, no key" 200
get /v1/models
expect_status "GET /v1/models without a key" 401 &&
  check_json "401 without a key" "d['error']['code'] == 'invalid_api_key'"
grep -qi '^www-authenticate: Bearer' "$tmp/headers" || fail "401 without a key: no WWW-Authenticate: Bearer"
get /v1/models -H 'Authorization: Bearer sk-wrong-key'
expect_status "GET /v1/models with a wrong key" 401
get /v1/models -H 'Authorization: Bearer sk-second-key'
expect_status "GET /v1/models with the second key" 200 &&
  check_json "--model-name forge-tiny" "[m['id'] for m in d['data']] == ['forge-tiny']"
post /v1/completions '{"model": "forge-tiny", "prompt": "The", "max_tokens": 5}' -H 'Authorization: Bearer sk-first-key'
expect_status "a completion with the first key" 200
post /v1/completions '{"model": "forge-tiny", "prompt": "The", "max_tokens": 5}' -H 'Authorization: Bearer sk-first-ke'
expect_status "a completion with a prefix of a key" 401
for route in /v1/chat/completions /tokenize /detokenize; do
  post "$route" '{"model": "forge-tiny", "prompt": "we", "tokens": [1]}'
  expect_status "POST $route without a key" 401
done
get /metrics
expect_status "GET /metrics without a key" 401
get /metrics -H 'Authorization: Bearer sk-first-key'
expect_status "GET /metrics with a key" 200
post /tokenize '{"prompt": "we"}' -H 'Authorization: Bearer sk-first-key'
expect_status "POST /tokenize with a key" 200
# Through the default chat template, a message with a character outside the vocabulary ('~': in
# neither the synthetic corpus nor Tiny Shakespeare; the synthetic one lacks the template's 'U'
# too): a 400 naming messages.
post /v1/chat/completions '{"model": "forge-tiny", "messages": [{"role": "user", "content": "w~"}]}' \
  -H 'Authorization: Bearer sk-first-key'
expect_status "chat through the default template" 400 &&
  check_json "chat through the default template: names messages and the character" \
    "d['error']['param'] == 'messages' and \"not in the model's vocabulary\" in d['error']['message']"

if "$py" -c 'import jwt' 2>/dev/null; then
  # token CLAIMS_PY [KEY [ALG]]: a JWT from PyJWT with these claims (`now` is the time).
  token() {
    "$py" -c 'import jwt, sys, time; now = int(time.time())
print(jwt.encode(eval(sys.argv[1]), sys.argv[2], algorithm=sys.argv[3]))' "$1" "${2:-$secret}" "${3:-HS256}"
  }
  jwt_case() {  # WHAT CODE CLAIMS [KEY [ALG]]
    get /v1/models -H "Authorization: Bearer $(token "$3" "${4:-$secret}" "${5:-HS256}")"
    expect_status "JWT: $1" "$2"
  }
  jwt_case "valid" 200 "{'exp': now + 60, 'aud': 'forge-test'}"
  jwt_case "valid, aud in a list, nbf past" 200 "{'exp': now + 60, 'nbf': now - 5, 'aud': ['x', 'forge-test']}"
  jwt_case "expired 20 s ago (within the 30 s leeway)" 200 "{'exp': now - 20, 'aud': 'forge-test'}"
  jwt_case "expired 2 minutes ago" 401 "{'exp': now - 120, 'aud': 'forge-test'}"
  jwt_case "nbf in an hour" 401 "{'exp': now + 7200, 'nbf': now + 3600, 'aud': 'forge-test'}"
  jwt_case "no exp" 401 "{'aud': 'forge-test'}"
  jwt_case "wrong audience" 401 "{'exp': now + 60, 'aud': 'other'}"
  jwt_case "no audience" 401 "{'exp': now + 60}"
  jwt_case "signed with another secret" 401 "{'exp': now + 60, 'aud': 'forge-test'}" "another-secret-of-enough-length-0123456789"
  jwt_case "HS512" 401 "{'exp': now + 60, 'aud': 'forge-test'}" "$secret" HS512
  unsigned=$("$py" -c 'import base64, json, time
b = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()
print(b({"alg": "none", "typ": "JWT"}) + "." + b({"exp": int(time.time()) + 60, "aud": "forge-test"}) + ".")')
  get /v1/models -H "Authorization: Bearer $unsigned"
  expect_status "JWT: alg none" 401
else
  optional_missing "PyJWT not found (Debian: apt-get install python3-jwt): JWT checks skipped"
fi

stop_server auth
"$py" - "$tmp/auth.err" <<'PY' || fail "--log-format json: request log lines (above)"
import json, sys
lines = [l for l in open(sys.argv[1]).read().splitlines() if l.startswith("{")]
assert lines, "no JSON lines"
for l in lines:
    r = json.loads(l)
    assert {"method", "path", "status", "ms"} <= r.keys(), l
assert any(json.loads(l)["status"] == 401 for l in lines), "no 401 logged"
PY
if grep -qE 'sk-(first|second|wrong)|Bearer|test-secret' "$tmp/auth.err"; then
  fail "a key, token or secret appears in the log"
fi

# ---- A full queue: one slot busy and no room to wait -> 429 with Retry-After, then served again.
# The long request asks for 10^8 tokens (hours for this model), so it holds the slot until its
# client leaves; not streamed, so nothing piles up meanwhile.
start_server queue --slots 1 --max-queue 0 --model-name q --max-tokens-limit 100000000
curl -s --max-time 30 -H 'Content-Type: application/json' \
  --data-binary '{"model": "q", "prompt": "we", "max_tokens": 100000000}' \
  "http://127.0.0.1:$port/v1/completions" >"$tmp/long.out" 2>/dev/null &
long_pid=$!
busy=0
for _ in $(seq 1 100); do  # bounded: 10 s for the long request to hold the slot
  get /metrics
  grep -q '^forge_active_slots 1$' "$tmp/body" && { busy=1; break; }
  sleep 0.1
done
if [ "$busy" = 1 ]; then
  post /v1/completions '{"model": "q", "prompt": "we", "max_tokens": 3}'
  expect_status "full queue" 429 &&
    check_json "full queue: an OpenAI error" "d['error']['type'] == 'rate_limit_error'"
  grep -qi '^retry-after: [0-9]' "$tmp/headers" || fail "429 without Retry-After"
else
  fail "queue: the long request never held the slot"
fi
kill "$long_pid" 2>/dev/null
wait "$long_pid" 2>/dev/null
free=0
for _ in $(seq 1 100); do  # the client left: its slot is freed
  get /metrics
  grep -q '^forge_active_slots 0$' "$tmp/body" && { free=1; break; }
  sleep 0.1
done
[ "$free" = 1 ] || fail "queue: the slot of a client that left was not freed within 10 s"
post /v1/completions '{"model": "q", "prompt": "we", "max_tokens": 3}'
expect_status "after the full queue" 200
stop_server queue

# ---- Slow and half-sent requests: 408 after --read-timeout, no slot held, others served meanwhile.
# Three clients with the only slot's server: half a header, a header with half its body, and a
# connection that sends nothing. While they stall, a normal request is answered; then the first
# two get 408 and every one is closed, within 10 s (bounded reads).
start_server slow --slots 1 --read-timeout 2 --model-name s
$py - "$port" >"$tmp/slow.log" 2>&1 <<'PY' &
import socket, sys, time
port = int(sys.argv[1])
def open_with(data):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(data)
    return s
clients = {
    "half header": open_with(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Ty"),
    "half body": open_with(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
                           b'{"model": "s", "prompt'),
    "silent": open_with(b""),
}
start = time.monotonic()
for name, s in clients.items():
    got = b""
    while True:  # bounded by the socket timeout (10 s) per read
        try:
            part = s.recv(4096)
        except socket.timeout:
            print(f"{name}: still open after 10 s")
            break
        if not part:
            break
        got += part
    status = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/1.1 ") else "closed"
    print(f"{name}: {status} after {time.monotonic() - start:.1f} s")
PY
slow_pid=$!
sleep 0.5
post /v1/completions '{"model": "s", "prompt": "we", "max_tokens": 3}'
expect_status "a request while three clients stall" 200
wait_exit "$slow_pid" 40 "the slow clients"
grep -q '^half header: 408 after' "$tmp/slow.log" || fail "half a header: no 408 ($(cat "$tmp/slow.log"))"
grep -q '^half body: 408 after' "$tmp/slow.log" || fail "half a body: no 408 ($(cat "$tmp/slow.log"))"
grep -q '^silent: closed after' "$tmp/slow.log" || fail "a silent connection was not closed ($(cat "$tmp/slow.log"))"
get /metrics
cp "$tmp/body" "$tmp/metrics"
[ "$(metric forge_active_slots)" -eq 0 ] || fail "slow clients: forge_active_slots $(metric forge_active_slots)"
post /v1/completions '{"model": "s", "prompt": "we", "max_tokens": 3}'
expect_status "after the slow clients" 200
stop_server slow

finish cli_serve
