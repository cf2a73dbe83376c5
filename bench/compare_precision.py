"""Mixed precision and activation checkpointing: step time, peak memory split and loss, one run.

    /usr/bin/python3 bench/compare_precision.py [--build build] [--rounds 2] [--shapes cpu,gpt2-small]
                                                [--threads 1,2] [--memory-shape baby]

For each shape and thread count: forge's GPT training step (bench/gpt_step) in f32, bf16 and f16
(f16 with the loss scaler), each without and with checkpointed blocks, beside PyTorch's step in f32
and under its CPU autocast (bf16), run one after the other in the same script. Then the
activation-dominated shape (the `baby` preset, B=64, T=256) at the largest thread count, where the
peak activation memory is what the comparison is about. Reports median and min ms per step, the
ratio to forge's f32 step and to PyTorch's, the peak bytes split at the peak (parameters include
the 16-bit cast cache), and the loss after the timed steps (the same random batches everywhere).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from torch_env import TORCH_PYTHON, cpu_model, describe_torch_setup, summary, torch_env  # noqa: E402

STEPS = {"cpu": 20, "gpt2-small": 4, "baby": 2}
MB = 1 << 20


def run_json(cmd, env=None):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")][0]


def forge(build, shape, threads, precision, checkpoint, rounds):
    runs = [run_json([os.path.join(build, "bench", "gpt_step"), "--shape", shape, "--threads", str(threads),
                      "--steps", str(STEPS[shape]), "--warmup", "1", "--precision", precision,
                      "--checkpoint", checkpoint]) for _ in range(rounds)]
    r = dict(runs[-1])
    r["min_ms"] = min(x["min_ms"] for x in runs)
    r["median_ms"] = summary([x["median_ms"] for x in runs])[1]
    return r


def torch(shape, threads, precision, rounds):
    here = os.path.dirname(os.path.abspath(__file__))
    runs = [run_json([TORCH_PYTHON, os.path.join(here, "gpt_torch.py"), "--shape", shape, "--threads",
                      str(threads), "--steps", str(STEPS[shape]), "--warmup", "1", "--precision", precision],
                     env=torch_env(threads)) for _ in range(rounds)]
    return {"min_ms": min(x["min_ms"] for x in runs), "median_ms": summary([x["median_ms"] for x in runs])[1],
            "loss": runs[-1]["loss"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--memory-shape", default="baby", help="'' to skip")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-precisions", default="f32,bf16",
                    help="PyTorch's runs (its bf16 autocast is ~16x its f32 on an AVX2-only CPU)")
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(f"# cpu: {cpu_model()}")
    if not args.no_torch:
        print(f"# reference: {describe_torch_setup()}")
    print(f"{'shape':>10} {'thr':>3} {'impl':>6} {'prec':>5} {'ckpt':>6} {'med ms':>9} {'min ms':>9} "
          f"{'/f32':>6} {'/torch':>6} {'peak MB':>8} {'param':>7} {'grad':>7} {'optim':>7} {'activ':>7} "
          f"{'act peak':>8} {'loss':>8}")

    def row(shape, t, impl, prec, ckpt, r, base, ref):
        ratio_f32 = r["median_ms"] / base if base else float("nan")
        ratio_torch = r["median_ms"] / ref if ref else float("nan")
        mem = (f"{r['peak_bytes'] / MB:>8.1f} {r['peak_parameters'] / MB:>7.1f} {r['peak_gradients'] / MB:>7.1f} "
               f"{r['peak_optimizer'] / MB:>7.1f} {r['peak_activations'] / MB:>7.1f} "
               f"{r['activations_peak'] / MB:>8.1f}") if "peak_bytes" in r else f"{'':>8} {'':>7} {'':>7} {'':>7} {'':>7} {'':>8}"
        print(f"{shape:>10} {t:>3} {impl:>6} {prec:>5} {ckpt:>6} {r['median_ms']:>9.1f} {r['min_ms']:>9.1f} "
              f"{ratio_f32:>6.2f} {ratio_torch:>6.2f} {mem} {r['loss']:>8.4f}", flush=True)

    jobs = [(s, t) for s in args.shapes.split(",") if s for t in threads]
    if args.memory_shape:
        jobs.append((args.memory_shape, max(threads)))
    for shape, t in jobs:
        ref = {}
        if not args.no_torch:
            for prec in args.torch_precisions.split(","):
                ref[prec] = torch(shape, t, prec, args.rounds)
        base = None
        for prec in ("f32", "bf16", "f16"):
            for ckpt in ("none", "blocks"):
                r = forge(args.build, shape, t, prec, ckpt, args.rounds)
                if base is None:
                    base = r["median_ms"]
                torch_ref = ref.get("bf16" if prec != "f32" else "f32", {}).get("median_ms")
                row(shape, t, "forge", prec, ckpt, r, base, torch_ref)
        for prec, r in ref.items():
            row(shape, t, "torch", prec, "none", r, ref["f32"]["median_ms"] if "f32" in ref else None, None)


if __name__ == "__main__":
    main()
