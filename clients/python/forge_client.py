"""A client of forge's OpenAI-compatible inference server, `serve` (Python standard library only).

Usage as a library::

    from forge_client import Client, RateLimitError

    client = Client("http://127.0.0.1:8080", api_key="sk-...")
    reply = client.complete(model="tiny", prompt="we", max_tokens=20, seed=1)
    print(reply["choices"][0]["text"])

    # Server-sent events; on_text gets each piece of text as it arrives.
    result = client.stream(model="tiny", prompt="we", max_tokens=20,
                           on_text=lambda piece: print(piece, end="", flush=True))
    print(result["finish_reason"], result.get("usage"))

    # The same over the WebSocket channel (GET /v1/stream); on_text returning False cancels.
    pieces = []
    result = client.stream_ws(model="tiny", prompt="we", max_tokens=100000,
                              on_text=lambda piece: pieces.append(piece) or len(pieces) < 10)
    assert result["finish_reason"] == "cancelled"

    client.chat([{"role": "user", "content": "we"}], model="tiny", max_tokens=8)

Usage from the command line (with this directory as the working directory or on sys.path)::

    python3 -m forge_client --url http://127.0.0.1:8080 --prompt "we" --max-tokens 20 --stream

Errors: an error answer of the server raises ApiError, or its subclass for the status
(AuthenticationError 401, BadRequestError 400, NotFoundError 404, RateLimitError 429, ServerError
5xx), carrying the server's OpenAI error object. 429 and 503 answers are retried (max_retries times,
exponential backoff, at least the server's Retry-After); no other error is. An answer that breaks
the protocol (a stream cut short, a malformed WebSocket frame or handshake) raises ProtocolError;
network failures raise OSError (TimeoutError when a connect or a read takes longer than its
timeout).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import sys
import time
import urllib.parse
import uuid
from typing import Callable, Iterator, Optional

__all__ = [
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "NotFoundError",
    "ProtocolError",
    "RateLimitError",
    "ServerError",
    "WebSocket",
    "WebSocketClosed",
    "main",
    "parse_metrics",
]

DEFAULT_URL = "http://127.0.0.1:8080"
RETRY_STATUSES = (429, 503)
MAX_ERROR_BODY = 1 << 20   # bytes of an error answer read at most
MAX_SSE_LINE = 1 << 24     # bytes of one server-sent event line
MAX_WS_MESSAGE = 1 << 24   # bytes of one WebSocket message
MAX_WS_HEADER = 1 << 16    # bytes of the WebSocket handshake's answer header
MAX_RETRY_AFTER = 60.0     # seconds: a longer Retry-After is waited this long
USER_AGENT = "forge-client-python/1"

# A text piece callback: gets each piece of generated text; returning False (not just a falsy
# value) stops the stream (see Client.stream and Client.stream_ws).
OnText = Optional[Callable[[str], Optional[bool]]]


# ---- Errors ----

class ApiError(Exception):
    """An error answer of the server: its status and OpenAI's error object.

    Attributes:
        status: the HTTP status. A WebSocket error message carries none: it is inferred from the
            error's code and type (401 invalid_api_key, 404 model_not_found, 429
            rate_limit_exceeded, 503 shutting_down, 500 another server_error, else 400).
        message, type, param, code: the fields of the error object (None when absent).
        error: the whole error object (a dict).
        retry_after: the seconds of the answer's Retry-After header, or None.
    """

    def __init__(self, status: int, error: dict, retry_after: Optional[float] = None):
        self.status = status
        self.error = error
        self.message = error.get("message") or f"HTTP {status}"
        self.type = error.get("type")
        self.param = error.get("param")
        self.code = error.get("code")
        self.retry_after = retry_after
        detail = f" (param {self.param})" if self.param else ""
        super().__init__(f"{status} {self.type or 'error'}: {self.message}{detail}")


class AuthenticationError(ApiError):
    """401: no API key, or one the server does not accept."""


class BadRequestError(ApiError):
    """400: a malformed request or a field out of range (.param names the field)."""


class NotFoundError(ApiError):
    """404: an unknown model or route."""


class RateLimitError(ApiError):
    """429: the server's queue is full (retried by the client before it is raised)."""


class ServerError(ApiError):
    """5xx: a failure of the server, or 503 while it shuts down (503 is retried)."""


class ProtocolError(Exception):
    """The server's answer broke the protocol (HTTP, server-sent events or WebSocket)."""


class WebSocketClosed(ProtocolError):
    """The server closed the WebSocket; .code and .reason are those of its close frame."""

    def __init__(self, code: int, reason: str):
        self.code = code
        self.reason = reason
        super().__init__(f"the server closed the WebSocket: {code} {reason}".rstrip())


_ERROR_CLASSES = {400: BadRequestError, 401: AuthenticationError, 404: NotFoundError,
                  429: RateLimitError}
_STATUS_OF_CODE = {"invalid_api_key": 401, "model_not_found": 404, "rate_limit_exceeded": 429,
                   "shutting_down": 503, "too_many_connections": 503}


def error_for(status: int, error: dict, retry_after: Optional[float] = None) -> ApiError:
    """The ApiError subclass for an HTTP status, holding the error object `error`."""
    cls = _ERROR_CLASSES.get(status, ServerError if status >= 500 else ApiError)
    return cls(status, error, retry_after)


def _status_of(error: dict) -> int:
    """The HTTP status an error object stands for (WebSocket messages and stream events have
    none)."""
    if error.get("code") in _STATUS_OF_CODE:
        return _STATUS_OF_CODE[error["code"]]
    if error.get("type") == "server_error":
        return 500
    return 400


def _error_object(body: bytes, status: int) -> dict:
    """The `error` object of an error answer's body; a body that is not one becomes the
    message."""
    try:
        error = json.loads(body)["error"]
        if isinstance(error, dict):
            return error
    except (ValueError, KeyError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip()
    return {"message": text or f"HTTP {status}", "type": None, "param": None, "code": None}


def _retry_after(value: Optional[str]) -> Optional[float]:
    """The seconds of a Retry-After header (None when absent, or an HTTP date)."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


# ---- WebSocket (RFC 6455) ----

_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _mask(data: bytes, key: bytes) -> bytes:
    """`data` XORed with the 4-byte masking key repeated (RFC 6455 5.3)."""
    n = len(data)
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class WebSocket:
    """A minimal RFC 6455 client over a plain socket (ws://, or wss:// through ssl).

    Sends masked text frames; `recv` returns whole messages, reassembling fragments, answering
    pings with pongs and a close frame with a close frame (then raising WebSocketClosed). No
    extension or subprotocol is negotiated. Usable as a context manager (closes on exit).
    """

    def __init__(self, url: str, headers: Optional[dict] = None, timeout: float = 30.0,
                 connect_timeout: Optional[float] = None):
        """Connects and upgrades; raises ApiError (typed by status) when the server answers the
        upgrade with an error, ProtocolError when its answer is not a valid upgrade.

        timeout bounds each read and write of the socket; connect_timeout (default timeout) the
        TCP connect.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a ws:// or wss:// URL: {url}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        self._buffer = bytearray()
        self.closed = False
        sock = socket.create_connection(
            (parts.hostname, port), timeout=timeout if connect_timeout is None else connect_timeout)
        try:
            if parts.scheme == "wss":
                context = ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=parts.hostname)
            sock.settimeout(timeout)
            self._sock = sock
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            self._handshake(parts.netloc.rpartition("@")[2], target, headers or {})
        except BaseException:
            sock.close()
            raise

    def _handshake(self, host: str, target: str, headers: dict) -> None:
        """Sends the upgrade request and checks the 101 answer and its Sec-WebSocket-Accept."""
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
                 f"User-Agent: {USER_AGENT}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

        head = self._read_until(b"\r\n\r\n", MAX_WS_HEADER).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].isdigit():
            raise ProtocolError(f"WebSocket upgrade: not an HTTP status line: {status_line!r}")
        status = int(fields[1])
        answer = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            answer[name.strip().lower()] = value.strip()
        if status != 101:
            length = min(int(answer.get("content-length", "0") or 0), MAX_ERROR_BODY)
            body = self._recv_exact(length) if length > 0 else b""
            raise error_for(status, _error_object(body, status),
                            _retry_after(answer.get("retry-after")))
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest()).decode()
        if answer.get("upgrade", "").lower() != "websocket":
            raise ProtocolError("WebSocket upgrade: the 101 answer has no 'Upgrade: websocket'")
        if "upgrade" not in answer.get("connection", "").lower():
            raise ProtocolError("WebSocket upgrade: the 101 answer has no 'Connection: Upgrade'")
        if answer.get("sec-websocket-accept") != accept:
            raise ProtocolError("WebSocket upgrade: wrong Sec-WebSocket-Accept "
                                f"{answer.get('sec-websocket-accept')!r}, expected {accept!r}")

    # -- Bytes --

    def _fill(self) -> None:
        """Reads what the socket has into the buffer; ProtocolError at the end of the stream."""
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ProtocolError("the server closed the connection without a WebSocket close frame")
        self._buffer += chunk

    def _recv_exact(self, n: int) -> bytes:
        """The next n bytes of the connection."""
        while len(self._buffer) < n:
            self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _read_until(self, delimiter: bytes, limit: int) -> bytes:
        """The bytes up to `delimiter` (consumed, not returned); at most `limit` bytes."""
        while (end := self._buffer.find(delimiter)) < 0:
            if len(self._buffer) > limit:
                raise ProtocolError(f"WebSocket upgrade: no end of the header in {limit} bytes")
            self._fill()
        data = bytes(self._buffer[:end])
        del self._buffer[:end + len(delimiter)]
        return data

    # -- Frames --

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        """Sends one final, masked frame."""
        n = len(payload)
        header = bytearray([0x80 | opcode])
        if n < 126:
            header.append(0x80 | n)
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        key = os.urandom(4)
        self._sock.sendall(bytes(header) + key + _mask(payload, key))

    def _recv_frame(self) -> tuple[bool, int, bytes]:
        """The next frame: (fin, opcode, unmasked payload)."""
        b0, b1 = self._recv_exact(2)
        if b0 & 0x70:
            raise ProtocolError("WebSocket frame with reserved bits set (no extension was agreed)")
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._recv_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._recv_exact(8))
        if n > MAX_WS_MESSAGE:
            raise ProtocolError(f"WebSocket frame of {n} bytes (at most {MAX_WS_MESSAGE})")
        key = self._recv_exact(4) if b1 & 0x80 else None
        payload = self._recv_exact(n)
        return bool(b0 & 0x80), b0 & 0x0F, _mask(payload, key) if key else payload

    # -- Messages --

    def send_text(self, text: str) -> None:
        """Sends one text message (a single masked frame)."""
        self._send_frame(_TEXT, text.encode("utf-8"))

    def send_json(self, value) -> None:
        """Sends `value` as a JSON text message."""
        self.send_text(json.dumps(value))

    def recv(self):
        """The next data message: str for a text message, bytes for a binary one.

        Answers pings with pongs on the way. When the server closes, answers its close frame,
        closes the socket and raises WebSocketClosed. Each socket read is bounded by the timeout.
        """
        opcode, parts, size = None, [], 0
        while True:
            fin, op, payload = self._recv_frame()
            if op == _PING:
                self._send_frame(_PONG, payload)
                continue
            if op == _PONG:
                continue
            if op == _CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                reason = payload[2:].decode("utf-8", "replace")
                self._answer_close(payload[:2])
                raise WebSocketClosed(code, reason)
            if op == _CONTINUATION:
                if opcode is None:
                    raise ProtocolError("WebSocket continuation frame outside a message")
            elif op in (_TEXT, _BINARY):
                if opcode is not None:
                    raise ProtocolError("WebSocket data frame inside a fragmented message")
                opcode = op
            else:
                raise ProtocolError(f"WebSocket frame with unknown opcode {op:#x}")
            size += len(payload)
            if size > MAX_WS_MESSAGE:
                raise ProtocolError(f"WebSocket message over {MAX_WS_MESSAGE} bytes")
            parts.append(payload)
            if fin:
                data = b"".join(parts)
                return data.decode("utf-8") if opcode == _TEXT else data

    def recv_json(self):
        """The next message, decoded from JSON."""
        message = self.recv()
        try:
            return json.loads(message)
        except ValueError as e:
            raise ProtocolError(f"a WebSocket message that is not JSON: {message[:200]!r}") from e

    def _answer_close(self, code: bytes) -> None:
        """Answers the server's close frame (echoing its status code) and closes the socket."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self._send_frame(_CLOSE, code)
            self._sock.close()

    def close(self, code: int = 1000, wait: float = 2.0) -> None:
        """Sends a close frame, reads until the server's answers it (at most `wait` seconds), and
        closes the socket. Closing twice does nothing."""
        if self.closed:
            return
        self.closed = True
        try:
            self._send_frame(_CLOSE, struct.pack("!H", code))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                self._sock.settimeout(left)
                if self._recv_frame()[1] == _CLOSE:
                    break
        except (OSError, ProtocolError):
            pass  # the socket is closed below either way
        finally:
            self._sock.close()

    def __enter__(self) -> "WebSocket":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- Server-sent events ----

def _sse_data(response) -> Iterator[str]:
    """The data of each server-sent event of a response (an event's data lines joined by "\\n");
    other fields and comments are skipped."""
    data = []
    while True:
        line = response.readline(MAX_SSE_LINE + 1)
        if len(line) > MAX_SSE_LINE:
            raise ProtocolError(f"a server-sent event line over {MAX_SSE_LINE} bytes")
        if not line:  # the end of the response
            if data:
                yield "\n".join(data)
            return
        line = line.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            value = line[len("data:"):]
            data.append(value[1:] if value.startswith(" ") else value)


def _completion_piece(choice: dict) -> str:
    """The text of a streamed /v1/completions choice."""
    return choice.get("text") or ""


def _chat_piece(choice: dict) -> str:
    """The text of a streamed /v1/chat/completions choice (its delta's content)."""
    return (choice.get("delta") or {}).get("content") or ""


# ---- The client ----

class Client:
    """A client of one `serve` instance.

    Every call opens its own connection, so one Client may be shared by threads. `timeout` bounds
    each socket read (and the connect, unless `connect_timeout` is given): a stream may last
    longer as long as the server keeps sending. 429 and 503 answers are retried up to
    `max_retries` times, waiting min(backoff * 2**k, max_backoff) seconds before the k-th retry
    (k from 0), or the server's Retry-After (at most 60 s) when that is longer;
    `on_retry(error, retry_number, delay)` is called before each wait. A stream is never retried
    once some of its text has been delivered.
    """

    def __init__(self, base_url: str = DEFAULT_URL, api_key: Optional[str] = None,
                 timeout: float = 30.0, max_retries: int = 3, *,
                 connect_timeout: Optional[float] = None, backoff: float = 0.5,
                 max_backoff: float = 8.0,
                 on_retry: Optional[Callable[[ApiError, int, float], None]] = None):
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url
        self.api_key = api_key
        self.timeout = timeout
        self.connect_timeout = timeout if connect_timeout is None else connect_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.on_retry = on_retry
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")

    # -- Requests --

    def complete(self, **request) -> dict:
        """POST /v1/completions (model, prompt, max_tokens, temperature, top_p, top_k, stop, seed,
        n, logprobs, echo, ...): the completion object."""
        return self._json("POST", "/v1/completions", request)

    def chat(self, messages: list, **request) -> dict:
        """POST /v1/chat/completions with `messages` ([{"role", "content"}, ...]): the chat
        completion object."""
        return self._json("POST", "/v1/chat/completions", {**request, "messages": messages})

    def stream(self, on_text: OnText = None, **request) -> dict:
        """POST /v1/completions with "stream": true, read as server-sent events.

        Calls on_text(piece) for each piece of choice 0's text as it arrives; returns
        {"text", "finish_reason", "usage"} for choice 0 (usage: asked for with stream_options
        include_usage unless the request sets stream_options; None when absent). When on_text
        returns False the connection is closed (the server cancels the request) and
        finish_reason is "cancelled". An error event mid-stream raises its ApiError.
        """
        return self._stream("/v1/completions", request, on_text, _completion_piece)

    def chat_stream(self, messages: list, on_text: OnText = None, **request) -> dict:
        """POST /v1/chat/completions streamed: as `stream`, the pieces being the deltas'
        content."""
        return self._stream("/v1/chat/completions", {**request, "messages": messages}, on_text,
                            _chat_piece)

    def stream_ws(self, on_text: OnText = None, **request) -> dict:
        """One request over the WebSocket channel (GET /v1/stream) on a socket of its own.

        A request with "messages" is a chat, else a completion. Calls on_text(piece) for each
        token's text of choice 0; returns {"text", "finish_reason", "usage"} from choice 0's
        "done" message. When on_text returns False the client sends {"type": "cancel"} and reads
        on (calling on_text no more) until the server's "done", whose finish_reason is then
        "cancelled" (or the request's own, had it just ended). An "error" message raises its
        ApiError, the status inferred from the error object (see ApiError).
        """
        request_id = f"py-{uuid.uuid4().hex[:16]}"
        message = {**request, "type": "chat" if "messages" in request else "completion",
                   "id": request_id}
        delivered = False

        def attempt() -> dict:
            nonlocal delivered
            with self.websocket() as ws:
                ws.send_json(message)
                pieces, cancelled = [], False
                while True:  # ends with the request's "done" or "error"; each read is bounded
                    event = ws.recv_json()
                    if event.get("id") != request_id or event.get("index", 0) != 0:
                        continue
                    kind = event.get("type")
                    if kind == "error":
                        error = event.get("error") or {}
                        raise error_for(_status_of(error), error)
                    if kind == "done":
                        return {"text": "".join(pieces), "usage": event.get("usage"),
                                "finish_reason": event.get("finish_reason")}
                    if kind == "token" and not cancelled and event.get("text"):
                        pieces.append(event["text"])
                        delivered = True
                        if on_text is not None and on_text(event["text"]) is False:
                            ws.send_json({"type": "cancel", "id": request_id})
                            cancelled = True

        return self._retrying(attempt, lambda: not delivered)

    def models(self) -> dict:
        """GET /v1/models: {"object": "list", "data": [{"id", ...}, ...]}."""
        return self._json("GET", "/v1/models")

    def health(self) -> dict:
        """GET /health."""
        return self._json("GET", "/health")

    def metrics(self) -> str:
        """GET /metrics: the Prometheus text (see parse_metrics)."""
        def attempt() -> str:
            with self._exchange("GET", "/metrics") as response:
                return response.read().decode("utf-8")
        return self._retrying(attempt)

    def websocket(self) -> WebSocket:
        """A WebSocket open on GET /v1/stream with this client's key, for several requests in
        flight on one socket: send {"type": "completion" | "chat" | "cancel", "id", ...} with
        send_json, read the server's messages with recv_json."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        scheme = "wss" if self._https else "ws"
        return WebSocket(f"{scheme}://{self._netloc}{self._prefix}/v1/stream", headers,
                         timeout=self.timeout, connect_timeout=self.connect_timeout)

    # -- Plumbing --

    @contextlib.contextmanager
    def _exchange(self, method: str, path: str, body: Optional[dict] = None):
        """Sends one request; yields the response when its status is 2xx, else raises the
        ApiError for it. The connection is closed on exit."""
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        connection = cls(self._host, self._port, timeout=self.connect_timeout)
        try:
            connection.connect()
            connection.sock.settimeout(self.timeout)
            headers = {"Accept": "application/json, text/event-stream", "User-Agent": USER_AGENT}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            data = None
            if body is not None:
                data = json.dumps(body).encode("utf-8")
                headers["Content-Type"] = "application/json"
            connection.request(method, self._prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            try:
                if not 200 <= response.status < 300:
                    raise error_for(response.status,
                                    _error_object(response.read(MAX_ERROR_BODY), response.status),
                                    _retry_after(response.getheader("Retry-After")))
                yield response
            finally:
                response.close()
        finally:
            connection.close()

    def _json(self, method: str, path: str, body: Optional[dict] = None) -> dict:
        """A request whose answer is one JSON value (retried on 429 and 503)."""
        def attempt() -> dict:
            with self._exchange(method, path, body) as response:
                return json.loads(response.read())
        return self._retrying(attempt)

    def _stream(self, path: str, request: dict, on_text: OnText,
                piece_of: Callable[[dict], str]) -> dict:
        """A streamed request: collects choice 0 of its server-sent events (see `stream`)."""
        body = {**request, "stream": True}
        body.setdefault("stream_options", {"include_usage": True})
        delivered = False

        def attempt() -> dict:
            nonlocal delivered
            result = {"text": "", "finish_reason": None, "usage": None}
            pieces = []
            with self._exchange("POST", path, body) as response:
                for data in _sse_data(response):
                    if data == "[DONE]":
                        result["text"] = "".join(pieces)
                        return result
                    try:
                        chunk = json.loads(data)
                    except ValueError as e:
                        raise ProtocolError(
                            f"a server-sent event that is not JSON: {data[:200]!r}") from e
                    if "error" in chunk:
                        error = chunk["error"] if isinstance(chunk["error"], dict) else {}
                        raise error_for(_status_of(error), error)
                    if chunk.get("usage"):
                        result["usage"] = chunk["usage"]
                    for choice in chunk.get("choices") or ():
                        if choice.get("index", 0) != 0:
                            continue
                        piece = piece_of(choice)
                        if piece:
                            pieces.append(piece)
                            delivered = True
                            if on_text is not None and on_text(piece) is False:
                                return {**result, "text": "".join(pieces),
                                        "finish_reason": "cancelled"}
                        if choice.get("finish_reason"):
                            result["finish_reason"] = choice["finish_reason"]
            raise ProtocolError("the event stream ended without 'data: [DONE]'")

        return self._retrying(attempt, lambda: not delivered)

    def _retrying(self, attempt: Callable, retryable: Callable[[], bool] = lambda: True):
        """attempt(), retried after a 429 or 503 ApiError while retryable() (at most max_retries
        times, waiting as the class docstring says)."""
        for retry in range(self.max_retries + 1):
            try:
                return attempt()
            except ApiError as error:
                last = retry == self.max_retries
                if error.status not in RETRY_STATUSES or last or not retryable():
                    raise
                delay = min(self.backoff * 2 ** retry, self.max_backoff)
                if error.retry_after is not None:
                    delay = max(delay, min(error.retry_after, MAX_RETRY_AFTER))
                if self.on_retry is not None:
                    self.on_retry(error, retry + 1, delay)
                time.sleep(delay)


def parse_metrics(text: str) -> dict:
    """The samples of a Prometheus text exposition: {'name{labels}': value}, the name with its
    labels exactly as written (e.g. 'forge_active_slots', 'forge_requests_total{endpoint=
    "/v1/completions",status="429",transport="http"}'); comment lines are skipped."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            samples[name] = float(value)
    return samples


# ---- Command line ----

def main(argv: Optional[list] = None) -> int:
    """`python3 -m forge_client`: sends one prompt and prints the text as it arrives."""
    parser = argparse.ArgumentParser(
        prog="python3 -m forge_client",
        description="Send one prompt to forge's serve and print the generated text.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=os.environ.get("FORGE_API_KEY"),
                        help="the API key (default: $FORGE_API_KEY)")
    parser.add_argument("--model", help="the model (default: the server's first)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="a stop string (repeatable)")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as one user message to /v1/chat/completions")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds each connect and read may take (default 30)")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--stream", action="store_true", help="stream as server-sent events")
    transport.add_argument("--ws", action="store_true", help="stream over the WebSocket channel")
    args = parser.parse_args(argv)

    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    client = Client(args.url, args.api_key, timeout=args.timeout)
    try:
        request = {"model": args.model or client.models()["data"][0]["id"]}
        for field in ("max_tokens", "temperature", "top_p", "seed", "stop"):
            if getattr(args, field) is not None:
                request[field] = getattr(args, field)
        if args.chat:
            request["messages"] = [{"role": "user", "content": args.prompt}]
        else:
            request["prompt"] = args.prompt
        if args.ws:
            client.stream_ws(on_text=write, **request)
        elif args.stream:
            (client.chat_stream if args.chat else client.stream)(on_text=write, **request)
        elif args.chat:
            write(client.chat(**request)["choices"][0]["message"]["content"])
        else:
            write(client.complete(**request)["choices"][0]["text"])
        write("\n")
    except (ApiError, ProtocolError, OSError, LookupError) as e:
        print(f"forge_client: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
