"""Decoding against the memory-bandwidth bound (issue 21), one script, one run.

    python3 bench/decode_bound.py [--build build] [--rounds 5] [--tokens 64] [--threads 1]

A decoding step at batch 1 reads every weight once per token, so tokens/s can be at most
(read bandwidth) / (weight bytes). The script writes a GPT-2-small-shaped model (12 layers, 12
heads, width 768, context 256, the corpus's character vocabulary: `train gpt --max-iters 1`) and
its int8 form (`infer --save-quantized`) into a temporary directory, then in each round measures
the read bandwidth (`bench/stream_read`, 1 GiB) and `infer`'s tokens/s in f32 and int8 (greedy
would repeat; temperature 1 with the round as seed), interleaved. Bytes per token are the model
files' sizes (every tensor in them is read per token; the token and position embeddings only one
row each, a 0.1% overestimate of the bound's bytes here) plus the KV cache's keys and values that
attention reads, f32 in both precisions: 2 x layers x context x width x 4 bytes at each token's
context, averaged over the run (with --tokens 250 the context reaches the model's 256). Prints the
medians and best rounds and each precision's share of its bound. Corpus: --data, else
$TINYSHAKESPEARE, else ../shared/data/tinyshakespeare.txt.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def out(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def number(pattern, text, what):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"decode_bound: no {what} in:\n{text}")
    return float(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated (at most 250)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default=os.environ.get("TINYSHAKESPEARE") or
                    os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"))
    a = ap.parse_args()
    if not 1 <= a.tokens <= 250:
        sys.exit("decode_bound: --tokens must be 1..250 (the context stays within the model's 256)")
    if not os.path.isfile(a.data):
        sys.exit(f"decode_bound: no corpus at {a.data} (set TINYSHAKESPEARE or --data)")
    app = lambda name: os.path.join(a.build, "apps", name)
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "gpt")
        subprocess.run([app("train"), "gpt", "--data", a.data, "--out", model, "--max-iters", "1",
                        "--eval-iters", "1", "--eval-interval", "1", "--threads", "2",
                        "--n-layer", "12", "--n-head", "12", "--n-embd", "768",
                        "--block-size", "256", "--batch-size", "1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = sorted(d for d in os.listdir(model) if d.startswith("ckpt-"))[-1]
        f32_file = os.path.join(model, ckpt, "model.safetensors")
        int8_file = os.path.join(tmp, "int8.safetensors")
        subprocess.run([app("infer"), "--checkpoint", model, "--quant", "int8", "--max-tokens", "1",
                        "--save-quantized", int8_file], check=True, capture_output=True)
        files = {"f32": f32_file, "int8": int8_file}
        # The KV cache read per token, averaged: token i attends over the prompt and i + 1 more.
        layers, width, prompt = 12, 768, "ROMEO:"
        contexts = [min(256, len(prompt) + i + 1) for i in range(a.tokens)]
        kv = 2 * layers * width * 4 * sum(contexts) / len(contexts)
        nbytes = {k: os.path.getsize(v) + kv for k, v in files.items()}
        gbs, rate = [], {"f32": [], "int8": []}
        for r in range(a.rounds):
            s = out([os.path.join(a.build, "bench", "stream_read"), "--threads", str(a.threads),
                     "--mb", "1024", "--repeats", "5"])
            gbs.append(number(r"read GB/s best ([0-9.]+)", s, "bandwidth"))
            for prec, f in files.items():
                p = subprocess.run([app("infer"), "--checkpoint", f, "--max-tokens", str(a.tokens),
                                    "--threads", str(a.threads), "--temperature", "1", "--seed",
                                    str(r), "--prompt", prompt],
                                   capture_output=True, text=True, check=True)
                rate[prec].append(number(r"([0-9.]+) tokens/s", p.stdout + p.stderr, "tokens/s"))
    bw = statistics.median(gbs)
    print(f"# decode_bound: GPT-2-small shape (12 x 768, vocabulary of the corpus), batch 1, "
          f"threads {a.threads}, {a.tokens} tokens, {a.rounds} rounds; read bandwidth GB/s "
          f"median {bw:.2f} (rounds {min(gbs):.2f}-{max(gbs):.2f}); KV cache read per token "
          f"{kv / 1e6:.1f} MB on average (counted in MB / token)")
    print("| precision | MB / token | bound tokens/s | tokens/s median (best) | median / bound |")
    print("|---|---|---|---|---|")
    for prec in files:
        bound = bw * 1e9 / nbytes[prec]
        med = statistics.median(rate[prec])
        print(f"| {prec} | {nbytes[prec] / 1e6:.1f} | {bound:.1f} | {med:.1f} "
              f"({max(rate[prec]):.1f}) | {med / bound:.2f} |")


if __name__ == "__main__":
    main()
