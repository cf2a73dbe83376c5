"""Quantization (issue 7), one script, one run: accuracy, size and latency of int8 against f32, and
our int8 against PyTorch 1.13's quantize_dynamic of the same Linear stack.

    /usr/bin/python3 bench/compare_quant.py [--build build] [--threads 1] [--epochs 5]
                                            [--gpt-checkpoint DIR] [--gpt-iters N]

1. Fashion-MNIST MLP 784-256-256-10 (`train mnist`): f32 and dynamic int8 from one run, QAT int8
   (the last epoch fake-quantized) from another with the same seed: test accuracy and model bytes.
   Latency at batch 1 and 128 (bench/quant_bench --model mnist).
2. 4 x Linear(1024, 1024): latency f32, int8, int4 at batch 1 and 64 (bench/quant_bench), and
   PyTorch's f32 and quantize_dynamic (every quantized engine it has) in the same run, under the
   fair setup of torch_env.py.
3. GPT, `cpu` preset (trained here unless --gpt-checkpoint names one): val loss f32 / int8 / int4
   (group 64) from `train gpt --eval-only`, tokens/s from `infer` (greedy, 256 tokens). Corpus:
   --data, else $TINYSHAKESPEARE, else ../shared/data/tinyshakespeare.txt.
Prints markdown tables for bench/RESULTS.md and each target's verdict.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from torch_env import TORCH_PYTHON, cpu_model, describe_torch_setup, torch_env  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, env=None):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout, out.stderr


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


def bench_lines(args, model, batches):
    out, _ = run([os.path.join(args.build, "bench", "quant_bench"), "--model", model, "--batch", batches,
                  "--threads", str(args.threads), "--repeats", str(args.repeats)])
    header = [l for l in out.splitlines() if l.startswith("#")]
    rows = {}
    for l in out.splitlines():
        f = l.split()
        if len(f) == 8 and f[1] == "batch":
            rows[(int(f[2]), f[3])] = (float(f[5]), float(f[7]))
    return header, rows


def torch_stack(args):
    out, _ = run([TORCH_PYTHON, os.path.join(ROOT, "bench", "quant_torch.py"), "--threads", str(args.threads),
                  "--batch", "1,64", "--repeats", str(args.repeats)], env=torch_env(args.threads))
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


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
    rows = {}
    for q in ("none", "int8", "int4"):
        group = ["--group", "64"] if q == "int4" else []
        out, _ = run([train, "gpt", "--preset", "cpu", "--data", args.data, "--eval-only", "--resume", ckpt,
                      "--quant", q, "--threads", str(args.threads)] + group)
        head = out.splitlines()[0]
        val = float(re.search(r"val loss ([0-9.]+)", head).group(1))
        mb = float(re.search(r"\| ([0-9.]+) MB", head).group(1))
        step = int(re.search(r"step (\d+)", head).group(1))
        tps = []
        for _ in range(3):
            _, err = run([infer, "--checkpoint", ckpt, "--quant", q, "--temperature", "0",
                          "--max-tokens", "256", "--threads", str(args.threads)] + group)
            tps.append(float(re.search(r"([0-9.]+) tokens/s", err).group(1)))
        tps.sort()
        rows[q] = (val, mb, tps[-1], tps[1], step)
    return ckpt, rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--threads", type=int, default=1, help="threads for latency (ours and PyTorch's)")
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--gpt-checkpoint", default="")
    ap.add_argument("--gpt-iters", type=int, default=0, help="train the cpu preset for N steps (0: its own)")
    ap.add_argument("--data", default=os.environ.get("TINYSHAKESPEARE") or
                    os.path.join(ROOT, "..", "shared", "data", "tinyshakespeare.txt"),
                    help="the corpus (default: $TINYSHAKESPEARE, else ../shared/data/tinyshakespeare.txt)")
    args = ap.parse_args()
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"# compare_quant | commit {commit} | cpu {cpu_model()} | latency threads {args.threads}, "
          f"training threads {args.train_threads}, repeats {args.repeats}")
    print(f"# reference: {describe_torch_setup()}")
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        # ---- 1. Fashion-MNIST ----
        acc = mnist(args, tmp)
        header, lat = bench_lines(args, "mnist", "1,128")
        print("\n".join(header))
        d, q = acc["dynamic"], acc["qat"]
        f32 = d["test_acc_f32"]
        print(f"\n## Fashion-MNIST MLP 784-256-256-10, {args.epochs} epochs (QAT: the last one fake-quantized)\n")
        print("| model | test acc | drop vs f32 (points) | bytes | vs f32 | latency b=1 ms (min / med) | b=128 ms |")
        print("|---|---|---|---|---|---|---|")

        def lat_cell(b, p):
            return f"{lat[(b, p)][0]:.4f} / {lat[(b, p)][1]:.4f}" if (b, p) in lat else "-"
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
        header, ours = bench_lines(args, "stack", "1,64")
        theirs = torch_stack(args)
        print("\n" + "\n".join(header))
        print(f"\n## 4 x Linear(1024, 1024), {args.threads} thread(s): ms per forward, min / median of {args.repeats}\n")
        print("| batch | forge f32 | forge int8 | forge int4 (g64) | torch f32 | " +
              " | ".join(f"torch int8 ({r['engine']})" for r in theirs if r["precision"] == "int8" and r["batch"] == 1) +
              " | f32 / int8 (forge) | forge int8 / torch int8 |")
        engines = [r["engine"] for r in theirs if r["precision"] == "int8" and r["batch"] == 1]
        print("|" + "---|" * (7 + len(engines)))
        for b in (1, 64):
            t32 = next(r for r in theirs if r["precision"] == "f32" and r["batch"] == b)
            tq = [next(r for r in theirs if r["engine"] == e and r["batch"] == b) for e in engines]
            best_t = min(r["min_ms"] for r in tq) if tq else float("nan")
            speed = ours[(b, "f32")][0] / ours[(b, "int8")][0]
            vs = ours[(b, "int8")][0] / best_t
            cells = [f"{ours[(b, p)][0]:.3f} / {ours[(b, p)][1]:.3f}" for p in ("f32", "int8", "int4")]
            print(f"| {b} | " + " | ".join(cells) + f" | {t32['min_ms']:.3f} / {t32['median_ms']:.3f} | " +
                  " | ".join(f"{r['min_ms']:.3f} / {r['median_ms']:.3f}" for r in tq) + f" | {speed:.2f}x | {vs:.2f} |")
            if b == 64:
                verdicts.append(f"int8 vs our f32 at batch 64: {speed:.2f}x faster (target >= 3): {'met' if speed >= 3 else 'NOT met'}")
                verdicts.append(f"our int8 / PyTorch int8 at batch 64: {vs:.2f} (target <= 0.7): {'met' if vs <= 0.7 else 'NOT met'}")
            else:
                verdicts.append(f"int8 vs our f32 at batch 1: {speed:.2f}x (target: not slower): {'met' if speed >= 1 else 'NOT met'}")

        # ---- 3. GPT ----
        ckpt, rows = gpt(args, tmp)
        print(f"\n## GPT `cpu` preset ({ckpt if args.gpt_checkpoint else 'trained here'}, step {rows['none'][4]}): "
              f"val loss and generation, {args.threads} thread(s)\n")
        print("| model | val loss | vs f32 | MB (tensors) | infer tokens/s (best / median of 3) |")
        print("|---|---|---|---|---|")
        for q, name in (("none", "f32"), ("int8", "int8 (dynamic)"), ("int4", "int4 (g64, weight-only)")):
            v, mb, best, med, _ = rows[q]
            print(f"| {name} | {v:.4f} | {v - rows['none'][0]:+.4f} | {mb:.2f} | {best:.0f} / {med:.0f} |")
    print("\n## Targets\n")
    for v in verdicts:
        print(f"- {v}")


if __name__ == "__main__":
    main()
