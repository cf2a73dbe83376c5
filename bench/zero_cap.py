#!/usr/bin/env python3
"""The largest GPT that trains under a per-rank memory cap, at each ZeRO stage (issue 19).

    python3 bench/zero_cap.py                        # dp 2, cap 1024 MiB, 768 wide
    python3 bench/zero_cap.py --dp 4 --cap-mb 512 --stages 2,3

For each of --zero 0 (DDP), 1, 2 and 3, a binary search over --n-layer for the deepest model of the
given width that runs `train gpt` for one step (forward, backward, AdamW, an evaluation) on
--dp ranks with `--memory-cap-mb`: the allocator refuses any allocation that would take a rank's
live bytes past the cap, so a run that fits is a measurement, not an estimate. Everything a rank
allocates counts (the corpus' tokens, the model, gradients, AdamW's state, activations,
communication buffers); no checkpoint is written (--out ''). Per stage: the largest depth, its
parameters, the bytes the ZeRO paper's formula gives for them (16P, 8P + 8P/N, 4P + 12P/N, 16P/N)
as a share of the cap, and what overflowed one layer deeper (the tag the error names).
"""
import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def params(layers, width, vocab, block):
    # train's GPT (no biases): per block 12 w^2 + two norms' w each; embeddings (tied head), ln_f.
    return layers * (12 * width * width + 2 * width) + vocab * width + block * width + width


def formula_bytes(stage, p, n):
    return [16 * p, 8 * p + 8 * p / n, 4 * p + 12 * p / n, 16 * p / n][stage]


def run(args, stage, layers):
    cmd = [os.path.join(ROOT, "tests/mpirun.sh"), str(args.dp), args.train, "gpt",
           "--dp", str(args.dp), "--zero", str(stage), "--n-layer", str(layers),
           "--n-head", str(args.n_head), "--n-embd", str(args.n_embd),
           "--block-size", str(args.block_size), "--batch-size", str(args.batch_size),
           "--max-iters", "1", "--eval-iters", "1", "--threads", "1", "--out", "",
           "--data", args.data, "--memory-cap-mb", str(args.cap_mb)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    out = r.stdout + r.stderr
    if r.returncode == 0:
        return True, "", time.time() - t0
    m = re.search(r"memory cap exceeded on \S+: (\w+) needs", out)
    if not m:
        sys.exit(f"zero_cap: {' '.join(cmd)} failed, not for the cap:\n{out[-2000:]}")
    return False, m.group(1), time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", default=os.path.join(ROOT, "build/apps/train"))
    ap.add_argument("--data", default=os.environ.get(
        "TINYSHAKESPEARE", os.path.join(ROOT, "../shared/data/tinyshakespeare.txt")))
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--cap-mb", type=float, default=1024)
    ap.add_argument("--n-embd", type=int, default=768)
    ap.add_argument("--n-head", type=int, default=12)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-layers", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--stages", default="0,1,2,3", help="comma-separated ZeRO stages (0: DDP)")
    args = ap.parse_args()
    vocab = 65  # the character tokenizer on Tiny Shakespeare
    print(f"# zero_cap: dp {args.dp}, cap {args.cap_mb} MiB per rank, GPT {args.n_embd} wide, "
          f"{args.n_head} heads, block {args.block_size}, batch {args.batch_size}, char vocab; "
          f"data {args.data}; {os.cpu_count()} cores")
    print("| stage | largest n_layer | parameters (M) | formula MiB | formula / cap | "
          "one layer deeper: overflowed | runs | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for stage in [int(x) for x in args.stages.split(",")]:
        lo, hi, runs, why, seconds = 0, args.max_layers + 1, 0, "", 0.0
        while hi - lo > 1:  # lo fits (0: nothing yet), hi does not
            mid = (lo + hi) // 2
            ok, tag, s = run(args, stage, mid)
            runs += 1
            seconds += s
            if ok:
                lo = mid
            else:
                hi, why = mid, tag
        p = params(lo, args.n_embd, vocab, args.block_size)
        f = formula_bytes(stage, p, args.dp) / 2**20
        name = "DDP" if stage == 0 else f"ZeRO-{stage}"
        print(f"| {name} | {lo} | {p / 1e6:.1f} | {f:.0f} | {f / args.cap_mb:.2f} | "
              f"{why or '-'} | {runs} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
