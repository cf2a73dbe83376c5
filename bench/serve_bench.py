#!/usr/bin/env python3
"""serve under load: aggregate tokens/s, time to first token and inter-token latency at 1, 4, 16
and 64 concurrent streams, against `infer`'s tokens/s on the same model in the same run.

    /usr/bin/python3 bench/serve_bench.py                       # cpu preset and gpt2-small shape
    /usr/bin/python3 bench/serve_bench.py --shapes cpu --quants none --streams 1,16

Models: random weights (one training step) of the `cpu` preset (4 layers x 4 heads x 128, block 64)
and of GPT-2 small's shape (12 x 12 x 768, block 256, the corpus's character
vocabulary), written by `train gpt` into a temporary directory. Each stream is one client
sending streaming /v1/completions requests (seeded, temperature 1, no stop, max_tokens fixed) one
after another, all clients on one asyncio event loop; the time of each SSE event's arrival gives time to first token (from sending the
request) and the gaps between tokens. The server runs with --threads 1 and the reference `infer`
too, leaving the other core to the clients. Targets (issue 17): 1 stream >= 0.9x infer's
tokens/s; 16 streams aggregate >= 6x the 1-stream figure; p99 inter-token latency at 16 streams
<= 3x the 1-stream p50.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def percentile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[i]


def processor_name():
    """The processor's model name, for benchmark headers."""
    m = re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read())
    return m.group(1) if m else "unknown processor"


def corpus_path():
    env = os.environ.get("TINYSHAKESPEARE")
    if env and os.path.exists(env):
        return env
    shared = os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt")
    if os.path.exists(shared):
        return shared
    sys.exit("serve_bench: no corpus (set TINYSHAKESPEARE)")


def make_model(build, shape, out):
    args = [os.path.join(build, "apps", "train"), "gpt", "--data", corpus_path(), "--out", out,
            "--max-iters", "1", "--eval-iters", "1", "--eval-interval", "1", "--threads", "2"]
    if shape == "cpu":
        args += ["--preset", "cpu"]
    else:  # GPT-2 small's shape
        args += ["--n-layer", "12", "--n-head", "12", "--n-embd", "768", "--block-size", "256",
                 "--batch-size", "1"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def infer_tokens_per_s(build, model, quant, max_tokens, rounds):
    rates = []
    for r in range(rounds):
        p = subprocess.run([os.path.join(build, "apps", "infer"), "--checkpoint", model,
                            "--quant", quant, "--max-tokens", str(max_tokens), "--threads", "1",
                            "--temperature", "1", "--seed", str(r), "--prompt", "ROMEO:"],
                           capture_output=True, text=True, check=True)
        m = re.search(r"([0-9.]+) tokens/s", p.stderr)
        rates.append(float(m.group(1)))
    return rates


class Server:
    def __init__(self, build, model, quant, slots, extra):
        self.proc = subprocess.Popen(
            [os.path.join(build, "apps", "serve"), "--checkpoint", model, "--quant", quant,
             "--port", "0", "--threads", "1", "--slots", str(slots), "--max-queue", "1024",
             "--model-name", "m"] + extra,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 120
        line = ""
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if "listening on" in line or self.proc.poll() is not None:
                break
        m = re.search(r"http://([0-9.]+):([0-9]+)", line)
        if not m:
            self.stop()
            sys.exit(f"serve_bench: serve did not start ({line!r})")
        self.host, self.port = m.group(1), int(m.group(2))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def stream_once(host, port, seed, max_tokens):
    """One streaming request on its own connection; returns (ttft, [gaps], tokens)."""
    body = json.dumps({"model": "m", "prompt": "ROMEO:", "max_tokens": max_tokens,
                       "temperature": 1.0, "seed": seed, "stream": True}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"status line {status!r}")
    times = []
    # The body is chunked; each event is one chunk, so its `data:` line arrives whole.
    while True:
        line = await reader.readline()
        if not line or line.startswith(b"data: [DONE]"):
            break
        if line.startswith(b"data: "):
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0].get("finish_reason") is None:
                times.append(time.perf_counter())
    writer.close()
    gaps = [b - a for a, b in zip(times, times[1:])]
    return (times[0] - t0 if times else float("nan")), gaps, len(times)


async def plain_once(host, port, seed, max_tokens):
    """One non-streaming request; returns its completion tokens."""
    body = json.dumps({"model": "m", "prompt": "ROMEO:", "max_tokens": max_tokens,
                       "temperature": 1.0, "seed": seed}).encode()
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(f"status {head[:80]!r}")
    return json.loads(payload)["usage"]["completion_tokens"]


def run_plain(server, streams, requests_per_stream, max_tokens):
    """Aggregate tokens/s with non-streaming requests: one reply per request, so the client's own
    cost per token (parsing an event) does not cap the figure."""
    async def client(i):
        n = 0
        for r in range(requests_per_stream):
            n += await plain_once(server.host, server.port, 1000 * i + r, max_tokens)
        return n

    async def everyone():
        return sum(await asyncio.gather(*(client(i) for i in range(streams))))

    t0 = time.perf_counter()
    tokens = asyncio.run(everyone())
    return tokens / (time.perf_counter() - t0)


def run_level(server, streams, requests_per_stream, max_tokens):
    """`streams` clients on one event loop (arrival times are not delayed by other clients'
    Python work, as threads under the GIL would be), each sending its requests in turn."""
    ttfts, gaps, tokens = [], [], [0]

    async def client(i):
        for r in range(requests_per_stream):
            t, g, n = await stream_once(server.host, server.port, 1000 * i + r, max_tokens)
            ttfts.append(t)
            gaps.extend(g)
            tokens[0] += n

    async def everyone():
        await asyncio.gather(*(client(i) for i in range(streams)))

    t0 = time.perf_counter()
    asyncio.run(everyone())
    wall = time.perf_counter() - t0
    return {"streams": streams, "tokens": tokens[0], "wall": wall, "tok_s": tokens[0] / wall,
            "ttft_p50": percentile(ttfts, 50), "ttft_p99": percentile(ttfts, 99),
            "itl_p50": percentile(gaps, 50), "itl_p99": percentile(gaps, 99)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--quants", default="none,int8")
    ap.add_argument("--streams", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=0, help="per request (0: by shape)")
    ap.add_argument("--requests", type=int, default=0, help="per stream (0: by level)")
    ap.add_argument("--rounds", type=int, default=3, help="infer runs for its tokens/s")
    ap.add_argument("--server-args", default="",
                    help="more flags for serve, e.g. '--max-batch-tokens 32'")
    a = ap.parse_args()
    levels = [int(x) for x in a.streams.split(",")]
    print(f"# serve_bench | {processor_name()} | cores {os.cpu_count()} | server --threads 1 "
          f"{a.server_args}{' ' if a.server_args else ''}--slots {max(levels)}, infer --threads 1, "
          f"clients: one asyncio loop | load average "
          f"{os.getloadavg()[0]:.2f}")
    tmp = tempfile.mkdtemp(prefix="serve_bench-")
    rows = []
    try:
        for shape in a.shapes.split(","):
            model = os.path.join(tmp, shape)
            make_model(a.build, shape, model)
            max_tokens = a.max_tokens or (200 if shape == "cpu" else 48)
            for quant in a.quants.split(","):
                ref = infer_tokens_per_s(a.build, model, quant, max_tokens, a.rounds)
                ref_med = statistics.median(ref)
                print(f"# {shape} {quant}: infer {max_tokens} tokens, tokens/s "
                      f"{', '.join(f'{r:.1f}' for r in ref)} (median {ref_med:.1f})", flush=True)
                server = Server(a.build, model, quant, slots=max(levels),
                                extra=a.server_args.split())
                try:
                    run_level(server, 1, 1, 8)  # warm-up
                    base = None
                    for streams in levels:
                        per = a.requests or (4 if streams == 1 else 2 if streams <= 16 else 1)
                        r = run_level(server, streams, per, max_tokens)
                        r["plain_tok_s"] = run_plain(server, streams, per, max_tokens)
                        base = base or r
                        r.update(shape=shape, quant=quant, infer=ref_med)
                        rows.append(r)
                        print(f"#   {streams} streams: {r['tokens']} tokens in {r['wall']:.1f} s",
                              flush=True)
                finally:
                    server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'shape':>10} {'quant':>5} {'streams':>7} {'tok/s':>8} {'/infer':>7} {'/1 str':>7} "
          f"{'plain tok/s':>11} {'/1 str':>7} "
          f"{'TTFT p50 ms':>11} {'TTFT p99 ms':>11} {'ITL p50 ms':>10} {'ITL p99 ms':>10}")
    verdicts = []
    for r in rows:
        one = next(x for x in rows if x["shape"] == r["shape"] and x["quant"] == r["quant"]
                   and x["streams"] == min(levels))
        print(f"{r['shape']:>10} {r['quant']:>5} {r['streams']:>7} {r['tok_s']:>8.1f} "
              f"{r['tok_s'] / r['infer']:>7.2f} {r['tok_s'] / one['tok_s']:>7.2f} "
              f"{r['plain_tok_s']:>11.1f} {r['plain_tok_s'] / one['plain_tok_s']:>7.2f} "
              f"{1e3 * r['ttft_p50']:>11.1f} {1e3 * r['ttft_p99']:>11.1f} "
              f"{1e3 * r['itl_p50']:>10.2f} {1e3 * r['itl_p99']:>10.2f}")
        if r["streams"] == 1:
            verdicts.append((r, "1 stream >= 0.9x infer", r["tok_s"] / r["infer"] >= 0.9,
                             f"{r['tok_s'] / r['infer']:.2f}x"))
        if r["streams"] == 16:
            verdicts.append((r, "16 streams >= 6x 1 stream", r["tok_s"] / one["tok_s"] >= 6,
                             f"{r['tok_s'] / one['tok_s']:.2f}x streamed, "
                             f"{r['plain_tok_s'] / one['plain_tok_s']:.2f}x plain"))
            verdicts.append((r, "p99 ITL at 16 <= 3x p50 at 1", r["itl_p99"] <= 3 * one["itl_p50"],
                             f"{r['itl_p99'] / one['itl_p50']:.2f}x"))
    print("(tok/s: streamed, generated tokens / wall time, all streams; /infer: against infer's "
          "median on the same model; /1 str: against 1 stream; plain tok/s: the same requests "
          "without streaming, one reply each)")
    for r, what, ok, value in verdicts:
        print(f"- {r['shape']} {r['quant']}: {what}: {value}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
