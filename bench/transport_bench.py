#!/usr/bin/env python3
"""serve's per-token cost by transport: the same seeded requests as server-sent events, over the
WebSocket channel and without streaming, at 1 and 16 concurrent streams, rounds interleaved.

    /usr/bin/python3 bench/transport_bench.py                  # cpu preset and gpt2-small shape
    /usr/bin/python3 bench/transport_bench.py --shapes cpu --rounds 5

Models and server as bench/serve_bench.py (random weights, `serve --threads 1 --slots 16`); the
clients run on one asyncio loop, each stream sending its requests one after another: SSE on a new
connection per request (as serve_bench), WebSocket on one socket per stream, plain requests on a
new connection each. Per transport and level: aggregate generated tokens/s (min and median over
the rounds) and the median inter-token gap as the client sees it. Target (issue 18): WebSocket
and SSE within 5% of each other in aggregate tokens/s.
"""
import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_bench  # noqa: E402  (Server, make_model, stream_once, plain_once, percentile, ...)


async def ws_connect(host, port):
    """A WebSocket on GET /v1/stream (RFC 6455 handshake; no extensions)."""
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    status = await reader.readline()
    if b" 101 " not in status:
        raise RuntimeError(f"upgrade refused: {status!r}")
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return reader, writer


def ws_text_frame(text):
    """A masked text frame, as a client must send."""
    payload, mask = text.encode(), os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def ws_message(reader):
    """The next text message (fragments joined; pings and pongs skipped)."""
    parts = []
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        data = await reader.readexactly(n)
        opcode = b0 & 0x0F
        if opcode == 8:
            raise RuntimeError("the server closed the WebSocket")
        if opcode in (9, 10):
            continue
        parts.append(data)
        if b0 & 0x80:
            return b"".join(parts)


async def ws_stream_once(reader, writer, request_id, seed, max_tokens):
    """One request on an open WebSocket; returns (ttft, [gaps], tokens)."""
    t0 = time.perf_counter()
    writer.write(ws_text_frame(json.dumps({
        "type": "completion", "id": request_id, "model": "m", "prompt": "ROMEO:",
        "max_tokens": max_tokens, "temperature": 1.0, "seed": seed})))
    await writer.drain()
    times = []
    while True:
        m = json.loads(await ws_message(reader))
        if m["type"] == "token":
            times.append(time.perf_counter())
        elif m["type"] == "done":
            break
        else:
            raise RuntimeError(f"WebSocket error: {m}")
    gaps = [b - a for a, b in zip(times, times[1:])]
    return (times[0] - t0 if times else float("nan")), gaps, len(times)


def run(server, transport, streams, requests_per_stream, max_tokens):
    """Aggregate tokens/s and the median inter-token gap of one transport at one level."""
    gaps, tokens = [], [0]

    async def client(i):
        ws = await ws_connect(server.host, server.port) if transport == "ws" else None
        for r in range(requests_per_stream):
            seed = 1000 * i + r
            if transport == "ws":
                _, g, n = await ws_stream_once(*ws, str(r), seed, max_tokens)
            elif transport == "sse":
                _, g, n = await serve_bench.stream_once(server.host, server.port, seed, max_tokens)
            else:
                g, n = [], await serve_bench.plain_once(server.host, server.port, seed, max_tokens)
            gaps.extend(g)
            tokens[0] += n
        if ws:
            ws[1].close()

    async def everyone():
        await asyncio.gather(*(client(i) for i in range(streams)))

    t0 = time.perf_counter()
    asyncio.run(everyone())
    return tokens[0] / (time.perf_counter() - t0), serve_bench.percentile(gaps, 50)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(serve_bench.ROOT, "build"))
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--streams", default="1,16")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    levels = [int(x) for x in a.streams.split(",")]
    transports = ["sse", "ws", "plain"]
    print(f"# transport_bench | {serve_bench.processor_name()} | cores {os.cpu_count()} | server --threads 1 "
          f"--slots {max(levels)} | clients: one asyncio loop | rounds {a.rounds}, transports "
          f"interleaved | load average {os.getloadavg()[0]:.2f}")
    tmp = tempfile.mkdtemp(prefix="transport_bench-")
    rows = []
    try:
        for shape in a.shapes.split(","):
            model = os.path.join(tmp, shape)
            serve_bench.make_model(a.build, shape, model)
            max_tokens = 200 if shape == "cpu" else 32
            server = serve_bench.Server(a.build, model, "none", slots=max(levels), extra=[])
            try:
                serve_bench.run_level(server, 1, 1, 8)  # warm-up
                for streams in levels:
                    per = (8 if streams == 1 else 2) if shape == "cpu" else (2 if streams == 1 else 1)
                    results = {t: [] for t in transports}
                    for _ in range(a.rounds):
                        for t in transports:
                            results[t].append(run(server, t, streams, per, max_tokens))
                    row = {"shape": shape, "streams": streams}
                    for t in transports:
                        rates = [r[0] for r in results[t]]
                        row[t] = (min(rates), statistics.median(rates),
                                  statistics.median(r[1] for r in results[t]))
                    rows.append(row)
                    print(f"# {shape} {streams} streams: " + ", ".join(
                        f"{t} {', '.join(f'{r[0]:.1f}' for r in results[t])}" for t in transports),
                        flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'shape':>10} {'streams':>7} | {'SSE tok/s min/med':>18} {'ITL ms':>7} | "
          f"{'WS tok/s min/med':>17} {'ITL ms':>7} | {'plain tok/s min/med':>19} | "
          f"{'WS/SSE med':>10}")
    for r in rows:
        s, w, p = r["sse"], r["ws"], r["plain"]
        print(f"{r['shape']:>10} {r['streams']:>7} | {s[0]:>8.1f} / {s[1]:>7.1f} {1e3 * s[2]:>7.2f} | "
              f"{w[0]:>7.1f} / {w[1]:>7.1f} {1e3 * w[2]:>7.2f} | {p[0]:>8.1f} / {p[1]:>8.1f} | "
              f"{w[1] / s[1]:>10.3f}")
    for r in rows:
        ratio = r["ws"][1] / r["sse"][1]
        print(f"- {r['shape']} {r['streams']} streams: WebSocket and SSE within 5%: {ratio:.3f}: "
              f"{'met' if abs(ratio - 1) <= 0.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
