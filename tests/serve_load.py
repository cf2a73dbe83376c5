#!/usr/bin/python3
"""`serve` under concurrent load and client faults, with a tiny GPT (bounded in time and count).

1. Batch invariance: 64 seeded requests (completions and chat, plain and streamed, some with
   logprobs 2), each first sent alone, then all 64 at once from 64 threads, three times: every
   run's texts, finish reasons, tokens and logprobs equal the ones sent alone, exactly.
2. Load and faults for SERVE_LOAD_SECONDS (default 60): 64 client loops mixing plain and streamed
   /v1/completions and /v1/chat/completions, 10% invalid requests (bad JSON, bad fields: a 4xx
   with OpenAI's error object) and 10% streams dropped after an event or two (closed, or reset).
   Every valid request ends in 200 with a well-formed body or stream (ending in [DONE]) or in 429
   (counted); the server never dies; afterwards /metrics shows no active slot and no queue within
   5 s, and the resident memory is within 10% above its value after 5 s of load (a leak of the
   dropped or refused requests would grow it).
3. SIGTERM: exit 0 within 15 s.

Usage: serve_load.py path/to/train path/to/serve   (standard library only; prints a summary, a
FAIL line per violation, and exits 1 on any)
"""
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"
MODEL = "tiny"
CLIENTS = 64
TIMEOUT = 30  # seconds, on every socket
LOAD_SECONDS = float(os.environ.get("SERVE_LOAD_SECONDS", "60"))
WARMUP_SECONDS = 5
RSS_GROWTH_LIMIT = 0.10
IDLE_WAIT_SECONDS = 5

# Words of the synthetic corpus (prompts of at most 16 characters: the model's context).
WORDS = ["we", "are", "the", "people", "all", "speak", "good", "know", "it", "poor", "shall",
         "have", "citizens", "First", "The", "Resolved"]
# A chat template in the corpus's characters (the default "User: " needs a 'U' it lacks):
# "C: <content>\nA:" with one user message of up to 10 characters fits the 16-token context.
CHAT_TEMPLATE = {"role_prefix": {"system": "T: ", "user": "C: ", "assistant": "A: "},
                 "generation_prefix": "A:", "default_stop": ["\nC:"]}

failures = []
print_lock = threading.Lock()


class Fatal(Exception):
    """A failure after which the test cannot go on."""


def fail(message):
    with print_lock:
        failures.append(message)
        if len(failures) <= 40:
            print(f"FAIL: {message}", flush=True)


def say(message):
    with print_lock:
        print(message, flush=True)


# ---- Setup: corpus, checkpoint, server ----

def write_corpus(path):
    with open(path, "w") as f:
        for i in range(1, 301):
            f.write(f"First Citizen: we are accounted poor citizens, the patricians good {i}.\n")
            f.write("All: speak, speak. Resolved, resolved; we know it, we know it!\n")
            f.write("The people shall have it.\n")


def train_tiny(train, tmp):
    corpus = os.path.join(tmp, "corpus.txt")
    write_corpus(corpus)
    out = os.path.join(tmp, MODEL)
    r = subprocess.run([train, "gpt", "--data", corpus, "--n-layer", "1", "--n-head", "2",
                        "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
                        "--eval-interval", "10", "--eval-iters", "2", "--threads", "1",
                        "--max-iters", "10", "--out", out],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise Fatal(f"train gpt exited {r.returncode}\n{r.stderr[-800:]}")
    return out


class Server:
    """The serve process; its stdout and stderr go to files (the request log is long)."""

    def __init__(self, serve, checkpoint, tmp):
        template = os.path.join(tmp, "chat.json")
        with open(template, "w") as f:
            json.dump(CHAT_TEMPLATE, f)
        self.out_path = os.path.join(tmp, "serve.out")
        self.err_path = os.path.join(tmp, "serve.err")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [serve, "--checkpoint", checkpoint, "--host", HOST, "--port", "0", "--slots", "8",
                 "--max-queue", "256", "--threads", "1", "--chat-template", template],
                stdout=out, stderr=err)
        self.port = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.out_path) as f:
                for line in f:
                    prefix = f"serve: listening on http://{HOST}:"
                    if line.startswith(prefix) and f" model {MODEL} slots 8" in line:
                        self.port = int(line[len(prefix):].split()[0])
                        return
            time.sleep(0.1)
        self.kill()
        rc = self.proc.poll()
        raise Fatal("serve: no 'serve: listening on http://127.0.0.1:PORT model tiny slots 8' "
                    + (f"line: it exited {rc}\n" if rc is not None else "line in 30 s\n")
                    + self.tail())

    def tail(self, n=800):
        text = ""
        for path in (self.out_path, self.err_path):
            with open(path, errors="replace") as f:
                text += f"  {os.path.basename(path)}: {f.read()[-n:]}\n"
        return text

    def alive(self):
        return self.proc.poll() is None

    def rss_kib(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# ---- HTTP ----

def connect(port):
    return http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)


def request(conn, method, path, body=None):
    """-> (status, headers dict (lower-case names), body bytes), read whole."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def metrics(port):
    conn = connect(port)
    try:
        status, _, body = request(conn, "GET", "/metrics")
    finally:
        conn.close()
    values = {}
    if status == 200:
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
    return values


def sse_events(raw):
    """The data of each server-sent event; raises ValueError unless it ends with [DONE]."""
    text = raw.decode()
    if not text.endswith("data: [DONE]\n\n"):
        raise ValueError(f"does not end with 'data: [DONE]': ...{text[-200:]!r}")
    blocks = text.split("\n\n")[:-1]
    if not all(b.startswith("data: ") for b in blocks):
        raise ValueError("a block that is not a data line")
    return [json.loads(b[len("data: "):]) for b in blocks[:-1]]


def outcome(kind, stream, status, headers, raw):
    """What a completion produced, for exact comparisons: [(text, finish, tokens, logprobs,
    top_logprobs)] per choice. Raises ValueError when the reply is not well formed."""
    if status != 200:
        raise ValueError(f"status {status}: {raw[:300]!r}")
    chat = kind == "chat"
    if not stream:
        d = json.loads(raw)
        if d["object"] != ("chat.completion" if chat else "text_completion"):
            raise ValueError(f"object {d['object']}")
        result = []
        for i, c in enumerate(d["choices"]):
            if c["index"] != i or c["finish_reason"] not in ("stop", "length"):
                raise ValueError(f"choice {c}")
            lp = c["logprobs"]
            if chat:
                text = c["message"]["content"]
                entries = lp["content"] if lp else []
                toks = [e["token"] for e in entries]
                lps = [e["logprob"] for e in entries]
                tops = [[(t["token"], t["logprob"]) for t in e["top_logprobs"]] for e in entries]
            else:
                text = c["text"]
                toks = lp["tokens"] if lp else []
                lps = lp["token_logprobs"] if lp else []
                tops = [sorted(t.items()) for t in lp["top_logprobs"]] if lp else []
            # A stop string ends the text before it, yet its tokens keep their logprobs.
            if lp and not "".join(toks).startswith(text):
                raise ValueError(f"logprob tokens {toks} do not spell the text {text!r}")
            result.append((text, c["finish_reason"], toks, lps, tops))
        return result, d["usage"]["completion_tokens"]
    if not headers.get("content-type", "").startswith("text/event-stream"):
        raise ValueError(f"stream Content-Type {headers.get('content-type')}")
    chunks = sse_events(raw)
    usage = None
    per = {}
    for ch in chunks:
        if "error" in ch:
            raise ValueError(f"an error event {ch}")
        if ch["object"] != ("chat.completion.chunk" if chat else "text_completion"):
            raise ValueError(f"chunk object {ch['object']}")
        if not ch["choices"]:
            usage = ch["usage"]
            continue
        (c,) = ch["choices"]
        p = per.setdefault(c["index"], {"text": "", "finish": None, "toks": [], "lps": [],
                                        "tops": []})
        if p["finish"] is not None:
            raise ValueError(f"a chunk after choice {c['index']}'s finish_reason")
        p["text"] += c["delta"].get("content", "") if chat else c["text"]
        if c["finish_reason"] is not None:
            p["finish"] = c["finish_reason"]
        lp = c["logprobs"]
        if lp and chat:
            for e in lp["content"]:
                p["toks"].append(e["token"])
                p["lps"].append(e["logprob"])
                p["tops"].append([(t["token"], t["logprob"]) for t in e["top_logprobs"]])
        elif lp:
            p["toks"] += lp["tokens"]
            p["lps"] += lp["token_logprobs"]
            p["tops"] += [sorted(t.items()) for t in lp["top_logprobs"]]
    if sorted(per) != list(range(len(per))) or not per:
        raise ValueError(f"choice indices {sorted(per)}")
    result = []
    for i in range(len(per)):
        p = per[i]
        if p["finish"] not in ("stop", "length"):
            raise ValueError(f"choice {i} finish_reason {p['finish']}")
        result.append((p["text"], p["finish"], p["toks"], p["lps"], p["tops"]))
    return result, usage["completion_tokens"] if usage else None


def send(port, spec, conn=None):
    """Sends one completion request `spec` = (kind, stream, body); -> (status, headers, raw)."""
    kind, stream, body = spec
    path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
    own = conn is None
    conn = conn or connect(port)
    try:
        return request(conn, "POST", path, body)
    finally:
        if own:
            conn.close()


# ---- 1. Batch invariance ----

def prompt_text(rng, limit=16):
    text = rng.choice(WORDS)
    while True:
        w = rng.choice(WORDS)
        if len(text) + 1 + len(w) > limit or rng.random() < 0.3:
            return text
        text += " " + w


def invariance_workload():
    rng = random.Random(17)
    specs = []
    for i in range(CLIENTS):
        kind = "chat" if i % 5 == 4 else "completions"
        stream = i % 3 == 1
        body = {"model": MODEL, "max_tokens": rng.randint(8, 40), "seed": 1000 + 7 * i,
                "temperature": round(0.8 + 0.2 * rng.random(), 3)}
        if kind == "chat":
            body["messages"] = [{"role": "user", "content": prompt_text(rng, 10)}]
            body["stop"] = []  # the template's "\nC:" would end many early
            if i % 2 == 0:
                body["logprobs"], body["top_logprobs"] = True, 2
        else:
            body["prompt"] = prompt_text(rng)
            if i % 2 == 0:
                body["logprobs"] = 2
        if i % 8 == 3:
            body["top_k"] = 5
        if i % 8 == 5:
            body["top_p"] = 0.9
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        specs.append((kind, stream, body))
    return specs


def batch_invariance(port):
    specs = invariance_workload()
    alone = []
    for i, spec in enumerate(specs):
        try:
            alone.append(outcome(spec[0], spec[1], *send(port, spec))[0])
        except (ValueError, KeyError, TypeError, OSError, http.client.HTTPException) as e:
            fail(f"invariance: request {i} alone: {type(e).__name__}: {e}")
            return
    before = metrics(port)
    for run in range(3):
        results = [None] * len(specs)
        barrier = threading.Barrier(len(specs), timeout=60)

        def client(i):
            try:
                barrier.wait()
                results[i] = outcome(specs[i][0], specs[i][1], *send(port, specs[i]))[0]
            except Exception as e:  # noqa: BLE001 (reported, not raised, from a thread)
                results[i] = f"{type(e).__name__}: {e}"

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(specs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 3)
        if any(t.is_alive() for t in threads):
            fail(f"invariance run {run + 1}: a client still waiting after {TIMEOUT * 3} s")
            return
        differ = [i for i in range(len(specs)) if results[i] != alone[i]]
        for i in differ[:3]:
            fail(f"invariance run {run + 1}: request {i} ({specs[i][0]}, "
                 f"{'stream' if specs[i][1] else 'plain'}, {json.dumps(specs[i][2])}) batched "
                 f"gave {str(results[i])[:300]}, alone {str(alone[i])[:300]}")
        if differ:
            fail(f"invariance run {run + 1}: {len(differ)} of {len(specs)} requests differ from "
                 "the same request alone")
            return
    # Not vacuous: the requests differ from one another, carry logprobs, and were batched.
    after = metrics(port)
    steps = after["forge_batch_size_count"] - before["forge_batch_size_count"]
    rows = after["forge_batch_size_sum"] - before["forge_batch_size_sum"]
    batched = steps - (after['forge_batch_size_bucket{le="1"}'] -
                       before['forge_batch_size_bucket{le="1"}'])
    tokens = sum(len(r[0][2]) for r in alone)
    lengths = sum(len(r[0][0]) for r in alone)
    distinct = len({r[0][0] for r in alone})
    say(f"invariance: {len(specs)} requests x 3 concurrent runs equal to each alone "
        f"({lengths} characters, {tokens} logprob entries, {distinct} distinct texts); "
        f"the concurrent runs took {steps:.0f} decode steps of {rows / max(steps, 1):.2f} rows "
        f"on average, {batched:.0f} of them with more than one row")
    if distinct < len(specs) // 2 or tokens == 0 or batched < steps / 4:
        fail("invariance: a vacuous comparison (too few distinct texts, no logprobs, or too few "
             "batched steps)")


def cancellation(port):
    """8 streams of 4096 tokens dropped after their first event: their slots are freed at once,
    far from the 4096 decode steps they would otherwise run."""
    before = metrics(port)
    body = json.dumps({"model": MODEL, "prompt": "we", "max_tokens": 4096, "temperature": 1,
                       "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    sockets = [socket.create_connection((HOST, port), timeout=TIMEOUT) for _ in range(8)]
    try:
        for s in sockets:
            s.sendall(head + body)
        for s in sockets:
            got = b""
            while b"data: " not in got:
                data = s.recv(4096)
                if not data:
                    break
                got += data
            if not got.startswith(b"HTTP/1.1 200"):
                fail(f"cancellation: answer {got[:200]!r}")
    finally:
        for s in sockets:
            s.close()
    deadline = time.monotonic() + IDLE_WAIT_SECONDS
    while metrics(port).get("forge_active_slots") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = metrics(port)
    steps = after["forge_batch_size_count"] - before["forge_batch_size_count"]
    say(f"cancellation: 8 streams of 4096 tokens dropped after one event: {steps:.0f} decode "
        f"steps until no slot was active")
    if after.get("forge_active_slots") != 0 or steps >= 1024:
        fail(f"cancellation: forge_active_slots {after.get('forge_active_slots')} "
             f"{IDLE_WAIT_SECONDS} s after dropping the streams, {steps:.0f} decode steps run "
             "(expected 0 slots, and far fewer than 4096 steps)")


# ---- 2. Load and faults ----

# (body or raw bytes, path, the param the error must name or None)
INVALID = [
    (b'{"model": "tiny", "prompt": "we"', "/v1/completions", None),
    (b"not json at all", "/v1/completions", None),
    (b'["model", "tiny"]', "/v1/completions", None),
    ({"model": MODEL, "prompt": "we", "temperature": 3}, "/v1/completions", "temperature"),
    ({"model": MODEL, "prompt": "we", "max_tokens": -1}, "/v1/completions", "max_tokens"),
    ({"model": MODEL, "prompt": "we", "logprobs": 9}, "/v1/completions", "logprobs"),
    ({"model": MODEL, "prompt": "a~b"}, "/v1/completions", "prompt"),
    ({"model": MODEL, "prompt": "we are the people all"}, "/v1/completions", "prompt"),
    ({"model": MODEL, "prompt": "we", "n": 0}, "/v1/completions", "n"),
    ({"model": MODEL, "prompt": "we", "top_p": 2}, "/v1/completions", "top_p"),
    ({"model": MODEL, "prompt": 5}, "/v1/completions", "prompt"),
    ({"model": "nope", "prompt": "we"}, "/v1/completions", None),
    ({"model": MODEL}, "/v1/chat/completions", "messages"),
    ({"model": MODEL, "messages": [{"role": "robot", "content": "we"}]}, "/v1/chat/completions",
     "messages"),
    (b'{"model": "tiny", "messages": [', "/v1/chat/completions", None),
]


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}

    def add(self, key, n=1):
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + n


def valid_spec(rng):
    kind = "chat" if rng.random() < 0.35 else "completions"
    stream = rng.random() < 0.5
    body = {"model": MODEL, "max_tokens": rng.randint(1, 40),
            "temperature": rng.choice([0, 0.5, 0.8, 1.0])}
    if rng.random() < 0.7:
        body["seed"] = rng.randint(0, 1 << 30)
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt_text(rng, 10)}]
        if rng.random() < 0.3:
            body["logprobs"], body["top_logprobs"] = True, rng.randint(0, 3)
    else:
        body["prompt"] = prompt_text(rng)
        if rng.random() < 0.3:
            body["logprobs"] = rng.randint(0, 3)
    if rng.random() < 0.2:
        body["n"] = 2
    if rng.random() < 0.2:
        body["stop"] = [rng.choice(["e", "we", "!", "\n"])]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return kind, stream, body


def check_error_object(raw, param):
    d = json.loads(raw)
    e = d["error"]
    if not (isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str)
            and "param" in e and "code" in e):
        raise ValueError(f"not an OpenAI error object: {d}")
    if param is not None and e["param"] != param:
        raise ValueError(f"param {e['param']!r}, expected {param!r}: {d}")


def drop_stream(port, rng, tally):
    """Opens a long stream, reads one or two events, then closes the socket (or resets it)."""
    body = json.dumps({"model": MODEL, "prompt": prompt_text(rng), "max_tokens":
                       rng.randint(200, 400), "temperature": 0.9, "stream": True}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    s = socket.create_connection((HOST, port), timeout=TIMEOUT)
    try:
        s.sendall(head + body)
        got = b""
        while b"\r\n\r\n" not in got:
            data = s.recv(4096)
            if not data:
                break
            got += data
        if got.startswith(b"HTTP/1.1 429"):
            tally.add("429")
            return
        if not got.startswith(b"HTTP/1.1 200"):
            fail(f"dropped stream: answer {got[:200]!r}")
            return
        want = rng.randint(1, 2)
        while got.count(b"data: ") < want:
            data = s.recv(4096)
            if not data:
                fail(f"dropped stream: the server closed it after {got.count(b'data: ')} events")
                return
            got += data
        if rng.random() < 0.5:  # a reset rather than a close
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tally.add("disconnected")
    finally:
        s.close()


def load_client(port, index, deadline, tally):
    rng = random.Random(1000 + index)
    conn = None
    for _ in range(100000):  # bounded in count as well as time
        if time.monotonic() >= deadline:
            break
        r = rng.random()
        try:
            if r < 0.10:
                body, path, param = INVALID[rng.randrange(len(INVALID))]
                conn = conn or connect(port)
                status, _, raw = request(conn, "POST", path, body)
                if not 400 <= status < 500 or status == 429:
                    fail(f"invalid request {body!r} to {path}: status {status}, expected 4xx: "
                         f"{raw[:200]!r}")
                else:
                    check_error_object(raw, param)
                    tally.add("4xx")
            elif r < 0.20:
                drop_stream(port, rng, tally)
            else:
                spec = valid_spec(rng)
                conn = conn or connect(port)
                status, headers, raw = send(port, spec, conn)
                if status == 429:
                    check_error_object(raw, None)
                    if headers.get("retry-after") is None:
                        fail("429 without Retry-After")
                    tally.add("429")
                    continue
                choices, tokens = outcome(spec[0], spec[1], status, headers, raw)
                n = spec[2].get("n", 1)
                if len(choices) != n:
                    raise ValueError(f"{len(choices)} choices, asked {n}")
                limit = n * spec[2]["max_tokens"]
                if not isinstance(tokens, int) or not 0 <= tokens <= limit:
                    raise ValueError(f"usage completion_tokens {tokens}, max_tokens x n {limit}")
                if all(c[1] == "length" for c in choices) and tokens != limit:
                    raise ValueError(f"every choice ended by length after {tokens} tokens in all, "
                                     f"max_tokens x n {limit}")
                tally.add("ok")
                tally.add("stream" if spec[1] else "plain")
                tally.add("tokens", tokens)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            fail(f"client {index}: malformed answer: {type(e).__name__}: {e}")
            conn = None
        except (OSError, http.client.HTTPException) as e:
            fail(f"client {index}: connection error: {type(e).__name__}: {e}")
            if conn:
                conn.close()
            conn = None
    if conn:
        conn.close()


def load_and_faults(server):
    tally = Tally()
    before = metrics(server.port)
    start = time.monotonic()
    deadline = start + LOAD_SECONDS
    threads = [threading.Thread(target=load_client, args=(server.port, i, deadline, tally))
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    warmup = min(WARMUP_SECONDS, LOAD_SECONDS / 2)
    rss_warm = None
    rss_peak = 0
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline + 3 * TIMEOUT:
        if not server.alive():
            fail(f"the server died during the load (exit {server.proc.poll()})\n{server.tail()}")
            break
        rss = server.rss_kib() or 0
        rss_peak = max(rss_peak, rss)
        if rss_warm is None and time.monotonic() - start >= warmup:
            rss_warm = rss
        time.sleep(0.2)
    for t in threads:
        t.join(max(0.0, deadline + 3 * TIMEOUT - time.monotonic()))
    if any(t.is_alive() for t in threads):
        fail(f"{sum(t.is_alive() for t in threads)} load clients still running "
             f"{3 * TIMEOUT} s after the end of the load")
    elapsed = time.monotonic() - start
    if not server.alive():
        fail(f"the server died (exit {server.proc.poll()})\n{server.tail()}")
        return
    # The gauges settle: dropped streams cancelled, nothing waiting.
    settle = time.monotonic() + IDLE_WAIT_SECONDS
    while True:
        m = metrics(server.port)
        active, waiting = m.get("forge_active_slots"), m.get("forge_queue_length")
        if active == 0 and waiting == 0:
            break
        if time.monotonic() > settle:
            fail(f"/metrics {IDLE_WAIT_SECONDS} s after the load: forge_active_slots {active}, "
                 f"forge_queue_length {waiting}, expected 0 and 0")
            break
        time.sleep(0.1)
    rss_end = server.rss_kib()
    c = tally.counts
    say(f"load: {CLIENTS} clients for {elapsed:.1f} s: {c.get('ok', 0)} ok ({c.get('plain', 0)} "
        f"plain, {c.get('stream', 0)} streamed), {c.get('429', 0)} answered 429, {c.get('4xx', 0)} "
        f"invalid answered 4xx, {c.get('disconnected', 0)} streams dropped; "
        f"{c.get('tokens', 0)} tokens generated for the ok ones "
        f"({c.get('tokens', 0) / elapsed:.0f}/s)")
    generated = m.get('forge_generated_tokens_total{transport="http"}', 0)
    say(f"load: server /metrics: {generated:.0f} "
        f"tokens generated in all, {m.get('forge_batch_size_count', 0):.0f} decode steps")
    say(f"load: VmRSS {rss_warm} KiB after {warmup:g} s of load, {rss_peak} KiB at most, "
        f"{rss_end} KiB at the end")
    if c.get("ok", 0) == 0:
        fail("no request completed")
    # The server counted what the clients saw: 200 or 499 (the client left) for the completed and
    # dropped ones (a dropped stream may have ended before the server noticed), 429, and the 4xx.
    served = {}
    for key, value in m.items():
        if key.startswith("forge_requests_total{") and "/completions\"" in key:
            status = key.split('status="')[1].split('"')[0]
            served[status] = served.get(status, 0) + value - before.get(key, 0)
    say("load: server's count by status: " +
        ", ".join(f"{k} {v:.0f}" for k, v in sorted(served.items()) if v))
    done = served.get("200", 0) + served.get("499", 0)
    invalid = sum(v for k, v in served.items() if k.startswith("4") and k not in ("429", "499"))
    if (done != c.get("ok", 0) + c.get("disconnected", 0) or served.get("429", 0) != c.get("429", 0)
            or invalid != c.get("4xx", 0)):
        fail(f"the server counted {done:.0f} completed or dropped, {served.get('429', 0):.0f} 429, "
             f"{invalid:.0f} invalid; the clients {c.get('ok', 0) + c.get('disconnected', 0)}, "
             f"{c.get('429', 0)}, {c.get('4xx', 0)}")
    if rss_warm and rss_end and rss_end > rss_warm * (1 + RSS_GROWTH_LIMIT):
        fail(f"VmRSS grew from {rss_warm} KiB (after warm-up) to {rss_end} KiB at the end: "
             f"{100 * (rss_end / rss_warm - 1):.1f}%, over {100 * RSS_GROWTH_LIMIT:.0f}%")


def main():
    if len(sys.argv) != 3:
        raise SystemExit("usage: serve_load.py path/to/train path/to/serve")
    train, serve = sys.argv[1:]
    tmp = tempfile.mkdtemp(prefix="serve_load.")
    server = None
    try:
        t0 = time.monotonic()
        checkpoint = train_tiny(train, tmp)
        say(f"trained the tiny GPT in {time.monotonic() - t0:.1f} s")
        server = Server(serve, checkpoint, tmp)
        say(f"serve pid {server.proc.pid} on port {server.port}; load {LOAD_SECONDS:g} s, "
            f"{CLIENTS} clients, slots 8, max-queue 256, threads 1")
        batch_invariance(server.port)
        if not server.alive():
            fail(f"the server died during the invariance runs\n{server.tail()}")
        else:
            cancellation(server.port)
            load_and_faults(server)
        if server.alive():
            server.proc.send_signal(signal.SIGTERM)
            try:
                rc = server.proc.wait(15)
                if rc != 0:
                    fail(f"serve exited {rc} after SIGTERM, expected 0\n{server.tail()}")
            except subprocess.TimeoutExpired:
                fail("serve still running 15 s after SIGTERM")
    except Fatal as e:
        fail(str(e))
    except Exception as e:  # noqa: BLE001 (any error is a failure with its reason)
        fail(f"{type(e).__name__}: {e}")
    finally:
        if server:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"serve_load: {len(failures)} check(s) failed")
        sys.exit(1)
    print("serve_load: all checks passed")


if __name__ == "__main__":
    main()
