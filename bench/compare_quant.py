"""Quantization (issue 7), one script, one run: accuracy, size and latency of int8 against f32, and
our int8 against PyTorch 1.13's quantize_dynamic of the same Linear stack.

    /usr/bin/python3 bench/compare_quant.py [--build build] [--threads 1] [--epochs 5]
                                            [--gpt-checkpoint DIR] [--gpt-iters N]
                                            [--rounds 3] [--warmup 10] [--blas both] ...

1. Fashion-MNIST MLP 784-256-256-10 (`train mnist`): f32 and dynamic int8 from one run, QAT int8
   (the last epoch fake-quantized) from another with the same seed: test accuracy and model bytes.
   Latency at batch 1 and 128 (bench/quant_bench --model mnist), forge against itself.
2. 4 x Linear(1024, 1024): latency f32, int8, int4 at batch 1 and 64 (bench/quant_bench), and
   PyTorch's f32 and quantize_dynamic (every quantized engine it has) in the same rounds (at 1
   thread once with each OpenBLAS build; per figure the faster).
3. GPT, `cpu` preset (trained here unless --gpt-checkpoint names one): val loss f32 / int8 / int4
   (group 64) from `train gpt --eval-only`, tokens/s from `infer` (greedy, 256 tokens; it has no
   warm-up option), the three interleaved in rounds. Corpus: --data, else $TINYSHAKESPEARE, else
   ../shared/data/tinyshakespeare.txt.
Every timing runs in the rounds of bench/harness.py (interleaved, disturbance retried, clean
environments): latencies are the best round's min and the median of the rounds' medians.
Prints markdown tables for bench/RESULTS.md and each target's verdict.
"""
import argparse
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = harness.ROOT


def run(cmd):
    """An untimed step (training, evaluation): its (stdout, stderr)."""
    return harness.run_checked(cmd, harness.forge_env(), ROOT)


def last_json(path, key):
    rec = None
    for line in open(path):
        r = json.loads(line)
        if key in r:
            rec = r
    return rec


def mnist(args, tmp):
    train = os.path.join(args.build, "apps", "train")
    res = {}
    for method in ("dynamic", "qat"):
        m = os.path.join(tmp, f"mnist-{method}.jsonl")
        run([train, "mnist", "--epochs", str(args.epochs), "--quant", method, "--metrics", m,
             "--threads", str(args.train_threads), "--seed", "0"])
        res[method] = last_json(m, "test_acc_int8")
    return res


def bench_times(stdout, _stderr):
    """quant_bench's lines "stack batch 64 f32 min_ms 1.2 median_ms 1.3": {(64, "f32"): (1.2, 1.3)}."""
    rows = {}
    for line in stdout.splitlines():
        f = line.split()
        if len(f) == 8 and f[1] == "batch":
            rows[(int(f[2]), f[3])] = (float(f[5]), float(f[7]))
    return rows


def torch_times(stdout, _stderr):
    """quant_torch's JSON lines: {(batch, "f32") or (batch, "int8 ENGINE"): (min_ms, median_ms)}."""
    return {(r["batch"], r["precision"] if r["engine"] == "-" else f"int8 {r['engine']}"): (r["min_ms"], r["median_ms"])
            for r in harness.json_records(stdout)}


def forge_bench_side(args, model, batches):
    cmd = [os.path.join(args.build, "bench", "quant_bench"), "--model", model, "--batch", batches,
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    return harness.Side(f"forge {model}", cmd, harness.forge_env(), bench_times, cwd=ROOT,
                        threads=args.threads)


def torch_stack_sides(args):
    cmd = [harness.TORCH_PYTHON, os.path.join(ROOT, "bench", "quant_torch.py"), "--threads", str(args.threads),
           "--batch", "1,64", "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    return [harness.Side(f"torch[{s.label()}]", cmd, s.env(), torch_times, cwd=ROOT, threads=args.threads)
            for s in harness.torch_setups(args.threads, args, optimizer=False)]


def tokens_time(_stdout, stderr):
    """infer's "N tokens/s" on stderr, as seconds per token (lower is better, as every figure)."""
    per_token = 1.0 / float(re.search(r"([0-9.]+) tokens/s", stderr).group(1))
    return {None: (per_token, per_token)}


def gpt(args, tmp):
    train = os.path.join(args.build, "apps", "train")
    infer = os.path.join(args.build, "apps", "infer")
    ckpt = args.gpt_checkpoint
    if not ckpt:
        ckpt = os.path.join(tmp, "gpt")
        cmd = [train, "gpt", "--preset", "cpu", "--data", args.data, "--out", ckpt,
               "--threads", str(args.train_threads)]
        if args.gpt_iters:
            cmd += ["--max-iters", str(args.gpt_iters)]
        run(cmd)
    rows, sides = {}, []
    for q in ("none", "int8", "int4"):
        group = ["--group", "64"] if q == "int4" else []
        out, _ = run([train, "gpt", "--preset", "cpu", "--data", args.data, "--eval-only", "--resume", ckpt,
                      "--quant", q, "--threads", str(args.threads)] + group)
        head = out.splitlines()[0]
        val = float(re.search(r"val loss ([0-9.]+)", head).group(1))
        mb = float(re.search(r"\| ([0-9.]+) MB", head).group(1))
        step = int(re.search(r"step (\d+)", head).group(1))
        rows[q] = (val, mb, step)
        sides.append(harness.Side(f"infer {q}", [infer, "--checkpoint", ckpt, "--quant", q, "--temperature", "0",
                                                 "--max-tokens", "256", "--threads", str(args.threads)] + group,
                                  harness.forge_env(), tokens_time, unit="s/token", cwd=ROOT,
                                  threads=args.threads))
    runs = harness.run_rounds(sides, args, "GPT generation, f32 / int8 / int4")
    speed = {q: harness.over_rounds(runs[s.name]) for q, s in zip(("none", "int8", "int4"), sides)}
    return ckpt, rows, speed


def cell(f):
    """A latency figure for the tables: best / median ms (and * when a disturbed round is in it)."""
    return f"{f.min:.3f} / {f.median:.3f}{f.flag()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=1, help="threads for latency (ours and PyTorch's)")
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50, help="timed forwards per setting and process")
    ap.add_argument("--gpt-checkpoint", default="")
    ap.add_argument("--gpt-iters", type=int, default=0, help="train the cpu preset for N steps (0: its own)")
    ap.add_argument("--data", default=os.environ.get("TINYSHAKESPEARE") or
                    os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"),
                    help="the corpus (default: $TINYSHAKESPEARE, else ../shared/data/tinyshakespeare.txt)")
    harness.add_arguments(ap)
    args = ap.parse_args()
    harness.print_setup(args, "compare_quant", [args.threads])
    print(f"# latency threads {args.threads}, training threads {args.train_threads}, repeats {args.repeats}")
    verdicts, figures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # ---- 1. Fashion-MNIST ----
        acc = mnist(args, tmp)
        side = forge_bench_side(args, "mnist", "1,128")
        runs = harness.run_rounds([side], args, "MNIST MLP latency")
        lat = {key: harness.over_rounds(runs[side.name], key) for key in runs[side.name][0].times}
        figures += lat.values()
        d, q = acc["dynamic"], acc["qat"]
        f32 = d["test_acc_f32"]
        print(f"\n## Fashion-MNIST MLP 784-256-256-10, {args.epochs} epochs (QAT: the last one fake-quantized)\n")
        print("| model | test acc | drop vs f32 (points) | bytes | vs f32 | latency b=1 ms (best / med) | b=128 ms |")
        print("|---|---|---|---|---|---|---|")

        def lat_cell(b, p):
            return cell(lat[(b, p)]) if (b, p) in lat else "-"
        print(f"| f32 | {f32:.4f} | - | {d['bytes_f32']} | 1.000 | {lat_cell(1, 'f32')} | {lat_cell(128, 'f32')} |")
        drop_d = 100 * (f32 - d["test_acc_int8"])
        drop_q = 100 * (f32 - q["test_acc_int8"])
        ratio = d["bytes_int8"] / d["bytes_f32"]
        print(f"| dynamic int8 | {d['test_acc_int8']:.4f} | {drop_d:+.2f} | {d['bytes_int8']} | {ratio:.3f} | "
              f"{lat_cell(1, 'int8')} | {lat_cell(128, 'int8')} |")
        print(f"| QAT int8 | {q['test_acc_int8']:.4f} | {drop_q:+.2f} | {q['bytes_int8']} | "
              f"{q['bytes_int8'] / q['bytes_f32']:.3f} | (as dynamic's) | |")
        print(f"\n(QAT run's own f32 accuracy, same weights without fake quantization: {q['test_acc_f32']:.4f})")
        verdicts.append(f"int8 size {ratio:.3f}x f32 (target <= 0.26): {'met' if ratio <= 0.26 else 'NOT met'}")
        verdicts.append(f"dynamic drop {drop_d:.2f} points (target <= 0.8): {'met' if drop_d <= 0.8 else 'NOT met'}")
        verdicts.append(f"QAT drop {drop_q:.2f} points (target <= 0.3): {'met' if drop_q <= 0.3 else 'NOT met'}")

        # ---- 2. The Linear stack ----
        ours_side, theirs = forge_bench_side(args, "stack", "1,64"), torch_stack_sides(args)
        runs = harness.run_rounds([ours_side] + theirs, args, "4 x Linear(1024, 1024) latency")
        ours = {key: harness.over_rounds(runs[ours_side.name], key) for key in runs[ours_side.name][0].times}
        names = [s.name for s in theirs]
        torch_keys = runs[names[0]][0].times
        engines = [p for b, p in torch_keys if b == 1 and p != "f32"]
        best = {key: harness.best_per_key(runs, names, key) for key in torch_keys}
        figures += list(ours.values()) + [f for _, f in best.values()]
        print(f"\n## 4 x Linear(1024, 1024), {args.threads} thread(s): ms per forward, best / median over "
              f"{args.rounds} rounds of {args.repeats}; PyTorch: the faster of {', '.join(names)}\n")
        print("| batch | forge f32 | forge int8 | forge int4 (g64) | torch f32 | " +
              " | ".join(f"torch {e}" for e in engines) + " | f32 / int8 (forge) | forge int8 / torch int8 |")
        print("|" + "---|" * (7 + len(engines)))
        for b in (1, 64):
            tq = [best[(b, e)][1] for e in engines]
            best_t = min(f.min for f in tq) if tq else float("nan")
            speed = ours[(b, "f32")].min / ours[(b, "int8")].min
            vs = ours[(b, "int8")].min / best_t
            cells = [cell(ours[(b, p)]) for p in ("f32", "int8", "int4")]
            cells += [f"{cell(best[(b, p)][1])} ({best[(b, p)][0]})" for p in ["f32"] + engines]
            print(f"| {b} | " + " | ".join(cells) + f" | {speed:.2f}x | {vs:.2f} |")
            if b == 64:
                verdicts.append(f"int8 vs our f32 at batch 64 (best times): {speed:.2f}x faster (target >= 3): "
                                f"{'met' if speed >= 3 else 'NOT met'}")
                verdicts.append(f"our int8 / PyTorch int8 at batch 64 (best times): {vs:.2f} (target <= 0.7): "
                                f"{'met' if vs <= 0.7 else 'NOT met'}")
            else:
                verdicts.append(f"int8 vs our f32 at batch 1 (best times): {speed:.2f}x (target: not slower): "
                                f"{'met' if speed >= 1 else 'NOT met'}")

        # ---- 3. GPT ----
        ckpt, rows, speed = gpt(args, tmp)
        figures += speed.values()
        print(f"\n## GPT `cpu` preset ({ckpt if args.gpt_checkpoint else 'trained here'}, step {rows['none'][2]}): "
              f"val loss and generation, {args.threads} thread(s)\n")
        print(f"| model | val loss | vs f32 | MB (tensors) | infer tokens/s (best / median of {args.rounds} rounds) |")
        print("|---|---|---|---|---|")
        for q, name in (("none", "f32"), ("int8", "int8 (dynamic)"), ("int4", "int4 (g64, weight-only)")):
            v, mb, _ = rows[q]
            f = speed[q]
            print(f"| {name} | {v:.4f} | {v - rows['none'][0]:+.4f} | {mb:.2f} | "
                  f"{1 / f.min:.0f} / {1 / f.median:.0f}{f.flag()} |")
    if harness.disturbed_note(figures):
        print(harness.disturbed_note(figures).strip())
    print("\n## Targets\n")
    for v in verdicts:
        print(f"- {v}")


if __name__ == "__main__":
    main()
