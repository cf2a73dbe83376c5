#!/usr/bin/python3
"""clients/python/forge_client.py against a live `serve` of a tiny GPT (cli_python_client.sh).

Usage: python_client_check.py main|rate-limit BASE_URL [API_KEY]   (API_KEY default: $FORGE_API_KEY)

main: a serve with --model-name tiny, --chat-template (tests/cli_lib.sh's) and --max-tokens-limit
  100000. A seeded completion twice the same; the same text streamed as server-sent events and over
  the WebSocket; chat plain, streamed and over the WebSocket alike; a cancel mid-stream (WebSocket:
  finish_reason "cancelled"; both: the slot freed); a bad key, a bad field and an unknown model
  raising their typed errors, never retried; `python3 -m forge_client` printing the same text.
rate-limit: a serve with --slots 1 --max-queue 0 and --max-tokens-limit 10000000. While a
  WebSocket request holds the only slot, a client without retries gets RateLimitError (429,
  Retry-After 1); clients with retries (over HTTP, then over the WebSocket) get 429s, the holder
  cancels on the first, and they succeed; the metrics count the 429s.

Every wait is bounded (sockets 30 s, polls 10 s, threads 60 s); nothing asserts on timing. Prints
one line per check ("ok  ..." or "FAIL ..."); exits 1 on any failure.
"""
import base64
import hashlib
import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

CLIENT_DIR = pathlib.Path(__file__).resolve().parent.parent / "clients" / "python"
sys.path.insert(0, str(CLIENT_DIR))

from forge_client import (  # noqa: E402 (after the path)
    AuthenticationError, BadRequestError, Client, NotFoundError, RateLimitError, WebSocket,
    WebSocketClosed, parse_metrics)

MODEL = "tiny"
TIMEOUT = 30.0     # seconds, each socket read
POLL_SECONDS = 10  # a metric reaching its value
SAMPLING = {"model": MODEL, "temperature": 1, "seed": 7}
CHAT = [{"role": "user", "content": "we"}]
failures = 0


def report(what, ok, detail=""):
    """Prints one check's verdict (with `detail` on failure) and counts failures."""
    global failures
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + str(detail) if detail and not ok else ''}",
          flush=True)
    if not ok:
        failures += 1


def expect_error(what, cls, call, **fields):
    """Checks that call() raises `cls` with the given attribute values; returns the error."""
    try:
        call()
    except cls as e:
        wrong = {k: getattr(e, k) for k, v in fields.items() if getattr(e, k) != v}
        report(what, not wrong, f"{wrong} (expected {fields}): {e}")
        return e
    except Exception as e:  # noqa: BLE001 (any other outcome is this check's failure)
        report(what, False, f"raised {type(e).__name__}: {e}")
    else:
        report(what, False, "no error raised")
    return None


def wait_metric(client, name, want):
    """Polls /metrics (every 0.1 s, at most POLL_SECONDS) until sample `name` equals `want`;
    returns its last value (None when absent)."""
    value = None
    deadline = time.monotonic() + POLL_SECONDS
    for _ in range(POLL_SECONDS * 10 + 1):
        value = parse_metrics(client.metrics()).get(name)
        if value == want or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return value


def cancel_after(count):
    """An on_text callback that asks to stop once it has seen `count` pieces."""
    seen = []

    def on_text(piece):
        seen.append(piece)
        return len(seen) < count
    return on_text


# ---- main ----

class FakeWebSocketServer(threading.Thread):
    """One WebSocket connection on a loopback port, answering the client's handshake and then
    sending what serve never does: pings (one inside a fragmented message), a message in three
    fragments, 16- and 64-bit lengths, a close frame. Records what the client sends back."""

    MESSAGES = ['{"text": "fragmented"}', "x" * 300, "y" * 70000]

    def __init__(self):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/v1/stream"
        self.received = []  # (opcode, payload, masked) of each frame the client sent
        self.error = None

    @staticmethod
    def frame(opcode, payload, fin=True):
        """An unmasked server frame."""
        n = len(payload)
        length = (bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n) if n < 1 << 16
                  else bytes([127]) + struct.pack("!Q", n))
        return bytes([(0x80 if fin else 0) | opcode]) + length + payload

    @staticmethod
    def read_frame(f):
        """(opcode, unmasked payload, masked) of the client's next frame."""
        b0, b1 = f.read(2)
        n = b1 & 0x7F
        if n >= 126:
            (n,) = struct.unpack("!H" if n == 126 else "!Q", f.read(2 if n == 126 else 8))
        key = f.read(4) if b1 & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(f.read(n)))
        return b0 & 0x0F, payload, bool(b1 & 0x80)

    def run(self):
        try:
            conn, _ = self.listener.accept()
            with conn, conn.makefile("rb") as f:
                conn.settimeout(TIMEOUT)
                headers = {}
                for _ in range(100):  # the handshake's header lines, up to the blank one
                    line = f.readline(8192).decode("latin-1").strip()
                    if not line:
                        break
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                accept = base64.b64encode(hashlib.sha1(
                    (headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
                    .encode()).digest()).decode()
                conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                             .encode())
                first, rest = self.MESSAGES[0].encode()[:5], self.MESSAGES[0].encode()[5:]
                conn.sendall(self.frame(0x9, b"ping-1")
                             + self.frame(0x1, first, fin=False) + self.frame(0x9, b"ping-2")
                             + self.frame(0x0, rest[:6], fin=False) + self.frame(0x0, rest[6:])
                             + b"".join(self.frame(0x1, m.encode()) for m in self.MESSAGES[1:]))
                for _ in range(3):  # two pongs and a text message
                    self.received.append(self.read_frame(f))
                conn.sendall(self.frame(0x8, struct.pack("!H", 1001) + b"bye"))
                self.received.append(self.read_frame(f))
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            self.error = e
        finally:
            self.listener.close()


def check_websocket_framing():
    """The WebSocket client against FakeWebSocketServer."""
    server = FakeWebSocketServer()
    server.start()
    got, closed = [], None
    with WebSocket(server.url, timeout=TIMEOUT) as ws:
        for _ in FakeWebSocketServer.MESSAGES:
            got.append(ws.recv())
        ws.send_text("z" * 200)
        try:
            ws.recv()
        except WebSocketClosed as e:
            closed = e
    server.join(TIMEOUT)
    report("websocket: a fragmented message (a ping inside) and 16- and 64-bit lengths",
           got == FakeWebSocketServer.MESSAGES, [len(m) for m in got])
    want = [(0xA, b"ping-1", True), (0xA, b"ping-2", True), (0x1, b"z" * 200, True),
            (0x8, struct.pack("!H", 1001), True)]
    report("websocket: pings answered with pongs, a masked text frame, the close echoed",
           server.received == want and server.error is None,
           server.error or [(op, payload[:20], masked) for op, payload, masked in server.received])
    report("websocket: the server's close raises WebSocketClosed(1001, 'bye')",
           closed is not None and (closed.code, closed.reason) == (1001, "bye"), closed)


def check_generation(client):
    """Plain, SSE and WebSocket completions (and chats) of one seed agree."""
    request = {**SAMPLING, "prompt": "we", "max_tokens": 24}
    first = client.complete(**request)
    second = client.complete(**request)
    text = first["choices"][0]["text"]
    report("complete: a seeded text, the same twice",
           text and second["choices"][0]["text"] == text,
           f"{text!r} vs {second['choices'][0]['text']!r}")
    report("complete: finish_reason length, usage adding up",
           first["choices"][0]["finish_reason"] == "length"
           and first["usage"]["completion_tokens"] == 24
           and first["usage"]["total_tokens"] == first["usage"]["prompt_tokens"] + 24,
           first)

    for name, stream in (("stream (SSE)", client.stream), ("stream_ws", client.stream_ws)):
        pieces = []
        got = stream(on_text=pieces.append, **request)
        report(f"{name}: the plain text for the same seed", got["text"] == text,
               f"{got['text']!r} vs {text!r}")
        report(f"{name}: on_text got the text piece by piece, finish_reason length, usage",
               "".join(pieces) == text and len(pieces) > 1 and got["finish_reason"] == "length"
               and (got["usage"] or {}).get("completion_tokens") == 24, (pieces, got))

    chat_request = {**SAMPLING, "max_tokens": 8}
    answer = client.chat(CHAT, **chat_request)
    content = answer["choices"][0]["message"]["content"]
    report("chat: an assistant message", answer["choices"][0]["message"]["role"] == "assistant"
           and isinstance(content, str) and answer["usage"]["completion_tokens"] >= 1, answer)
    streamed = client.chat_stream(CHAT, **chat_request)
    report("chat_stream: the chat's content for the same seed", streamed["text"] == content,
           f"{streamed['text']!r} vs {content!r}")
    over_ws = client.stream_ws(messages=CHAT, **chat_request)
    report("stream_ws chat: the chat's content for the same seed", over_ws["text"] == content,
           f"{over_ws['text']!r} vs {content!r}")

    models = [m["id"] for m in client.models()["data"]]
    report("models: lists tiny", MODEL in models, models)


def check_cancel(client):
    """on_text returning False cancels a long request; its slot is freed."""
    long_request = {"model": MODEL, "prompt": "we", "max_tokens": 100000}
    got = client.stream_ws(on_text=cancel_after(3), **long_request)
    report("stream_ws cancel: finish_reason cancelled, well before max_tokens",
           got["finish_reason"] == "cancelled"
           and (got["usage"] or {}).get("completion_tokens", 100000) < 100000, got)
    active = wait_metric(client, "forge_active_slots", 0)
    report("stream_ws cancel: forge_active_slots 0", active == 0, f"forge_active_slots {active}")

    got = client.stream(on_text=cancel_after(3), **long_request)
    report("stream (SSE) stopped by on_text: finish_reason cancelled",
           got["finish_reason"] == "cancelled" and got["text"], got)
    active = wait_metric(client, "forge_active_slots", 0)
    report("stream (SSE) stopped: forge_active_slots 0", active == 0,
           f"forge_active_slots {active}")


def check_errors(client, base_url):
    """Typed errors with the server's error object; none of them retried."""
    retries = []
    careful = Client(base_url, client.api_key, timeout=TIMEOUT, max_retries=5,
                     on_retry=lambda error, number, delay: retries.append(error.status))
    wrong_key = Client(base_url, "sk-wrong", timeout=TIMEOUT, max_retries=5,
                       on_retry=lambda error, number, delay: retries.append(error.status))
    request = {"model": MODEL, "prompt": "we", "max_tokens": 4}

    expect_error("a wrong key: AuthenticationError 401 invalid_api_key", AuthenticationError,
                 lambda: wrong_key.complete(**request), status=401, code="invalid_api_key")
    expect_error("a wrong key over the WebSocket: AuthenticationError at the upgrade",
                 AuthenticationError, lambda: wrong_key.stream_ws(**request), status=401)
    expect_error("no key: AuthenticationError", AuthenticationError,
                 lambda: Client(base_url, timeout=TIMEOUT).models(), status=401)
    error = expect_error("temperature 9: BadRequestError naming temperature", BadRequestError,
                         lambda: careful.complete(**request, temperature=9), status=400,
                         param="temperature", type="invalid_request_error")
    report("the error's message is the server's",
           error is not None and "temperature" in error.message, error and error.message)
    expect_error("temperature 9 streamed: BadRequestError naming temperature", BadRequestError,
                 lambda: careful.stream(**request, temperature=9), param="temperature")
    expect_error("temperature 9 over the WebSocket: BadRequestError naming temperature",
                 BadRequestError, lambda: careful.stream_ws(**request, temperature=9),
                 param="temperature")
    expect_error("an unknown model: NotFoundError naming model", NotFoundError,
                 lambda: careful.complete(**{**request, "model": "nope"}), status=404,
                 param="model", code="model_not_found")
    expect_error("an unknown model over the WebSocket: NotFoundError", NotFoundError,
                 lambda: careful.stream_ws(**{**request, "model": "nope"}), param="model")
    report("401, 400 and 404 are never retried", not retries, retries)


def check_cli(client, base_url):
    """`python3 -m forge_client` prints the text (the key from $FORGE_API_KEY)."""
    request = {**SAMPLING, "prompt": "all", "max_tokens": 5}
    want = client.complete(**request)["choices"][0]["text"]
    env = {**os.environ, "FORGE_API_KEY": client.api_key or "", "PYTHONDONTWRITEBYTECODE": "1"}
    base = [sys.executable, "-m", "forge_client", "--url", base_url, "--model", MODEL,
            "--prompt", "all", "--max-tokens", "5", "--temperature", "1", "--seed", "7"]
    for flags in ([], ["--ws"]):
        what = " ".join(["python3 -m forge_client --prompt all --max-tokens 5"] + flags)
        try:
            run = subprocess.run(base + flags, cwd=CLIENT_DIR, env=env, capture_output=True,
                                 text=True, timeout=60)
        except subprocess.TimeoutExpired:
            report(what, False, "still running after 60 s")
            continue
        report(f"{what}: prints the completion's text", run.returncode == 0
               and run.stdout == want + "\n",
               f"exit {run.returncode}, stdout {run.stdout!r} (expected {want!r}), "
               f"stderr {run.stderr[-300:]!r}")


# ---- rate-limit ----

class SlotHolder(threading.Thread):
    """Holds the server's only slot with a long WebSocket request until release() (or 30 s)."""

    def __init__(self, base_url, api_key):
        super().__init__(daemon=True)
        self.client = Client(base_url, api_key, timeout=TIMEOUT, max_retries=0)
        self.holding = threading.Event()
        self.released = threading.Event()
        self.result = None
        self.error = None

    def run(self):
        started = time.monotonic()

        def on_text(_piece):
            self.holding.set()
            return not self.released.is_set() and time.monotonic() - started < 30
        try:
            self.result = self.client.stream_ws(on_text=on_text, model=MODEL, prompt="we",
                                                max_tokens=10000000)
        except Exception as e:  # noqa: BLE001 (reported by the main thread)
            self.error = e
        finally:
            self.holding.set()  # wakes the main thread should the request fail

    def release(self):
        self.released.set()


def while_held(base_url, api_key, what, call):
    """Runs call(retrying_client) while a SlotHolder holds the only slot; the holder lets go at
    the client's first 429. Returns the statuses the client retried on."""
    holder = SlotHolder(base_url, api_key)
    holder.start()
    if not holder.holding.wait(TIMEOUT) or holder.error is not None:
        report(f"{what}: a long request holds the slot", False, holder.error or "no token")
        holder.release()
        return None
    retried = []

    def on_retry(error, number, delay):
        retried.append(error.status)
        holder.release()
    client = Client(base_url, api_key, timeout=TIMEOUT, max_retries=6, on_retry=on_retry)
    try:
        call(client)
    finally:
        holder.release()
        holder.join(60)
    report(f"{what}: the holder's request cancelled",
           not holder.is_alive() and holder.result is not None
           and holder.result["finish_reason"] == "cancelled", holder.error or holder.result)
    return retried


def check_rate_limit(base_url, api_key):
    """429s while the only slot is taken: raised without retries, retried (honouring Retry-After)
    until the slot frees with them."""
    request = {**SAMPLING, "prompt": "all", "max_tokens": 5}
    no_retries = Client(base_url, api_key, timeout=TIMEOUT, max_retries=0)
    while_held(base_url, api_key, "max_retries 0",
               lambda _client: expect_error(
                   "slot taken, max_retries 0: RateLimitError 429 with Retry-After 1",
                   RateLimitError, lambda: no_retries.complete(**request), status=429,
                   retry_after=1.0, code="rate_limit_exceeded"))

    for name, call in (("complete", lambda c: c.complete(**request)["choices"][0]["text"]),
                       ("stream_ws", lambda c: c.stream_ws(**request)["text"])):
        outcome = {}

        def attempt(client, call=call, outcome=outcome):
            outcome["text"] = call(client)
        retried = while_held(base_url, api_key, f"{name} with max_retries 6", attempt)
        if retried is None:
            continue
        report(f"{name} with max_retries 6: retried on 429, then the text",
               retried and set(retried) == {429} and outcome.get("text"), (retried, outcome))

    samples = parse_metrics(no_retries.metrics())
    refused = samples.get(
        'forge_requests_total{endpoint="/v1/completions",status="429",transport="http"}', 0)
    refused_ws = samples.get(
        'forge_requests_total{endpoint="/v1/stream",status="429",transport="ws"}', 0)
    report("metrics: the 429s counted (http and ws)", refused >= 2 and refused_ws >= 1,
           f"http {refused}, ws {refused_ws}")
    active = wait_metric(no_retries, "forge_active_slots", 0)
    report("rate-limit: forge_active_slots 0 at the end", active == 0,
           f"forge_active_slots {active}")


def main():
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("main", "rate-limit"):
        sys.exit(__doc__.split("\n\n")[1])
    group, base_url = sys.argv[1], sys.argv[2]
    api_key = sys.argv[3] if len(sys.argv) == 4 else os.environ.get("FORGE_API_KEY")
    if group == "main":
        client = Client(base_url, api_key, timeout=TIMEOUT)
        checks = [check_websocket_framing, lambda: check_generation(client),
                  lambda: check_cancel(client), lambda: check_errors(client, base_url),
                  lambda: check_cli(client, base_url)]
    else:
        checks = [lambda: check_rate_limit(base_url, api_key)]
    for check in checks:
        try:
            check()
        except Exception as e:  # noqa: BLE001 (an unexpected error fails this group, not the rest)
            report("unexpected error", False, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
    print(f"python client ({group}): " +
          (f"{failures} check(s) failed" if failures else "all checks passed"))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
