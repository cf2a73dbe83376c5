"""GPT training step: forge against PyTorch in the same run, two shapes, 1 and 2 threads.

    /usr/bin/python3 bench/compare_gpt.py [--build build] [--rounds 2]

Shapes: `cpu` (the cpu preset: 4 layers, 4 heads, 128 wide, vocab 65, B=12, T=64) and
`gpt2-small` (12 layers, 12 heads, 768 wide, vocab 50257, B=4, T=64). Each round runs forge's
bench/gpt_step and PyTorch's bench/gpt_torch.py one after the other; min and median ms per step
over the rounds' timed steps, and forge / PyTorch (< 1: forge is faster).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from torch_env import TORCH_PYTHON, cpu_model, describe_torch_setup, torch_env  # noqa: E402


def run_json(cmd, env=None):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    lines = out.stdout.splitlines()
    return [json.loads(l) for l in lines if l.startswith("{")][0], [l for l in lines if l.startswith("#")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"# cpu: {cpu_model()}")
    print(f"# reference: {describe_torch_setup()}")
    steps = {"cpu": 20, "gpt2-small": 5}
    rows = []
    for shape in args.shapes.split(","):
        for t in [int(x) for x in args.threads.split(",")]:
            ours_min, ours_med, theirs_min, theirs_med = [], [], [], []
            for _ in range(args.rounds):
                o, header = run_json([os.path.join(args.build, "bench", "gpt_step"), "--shape", shape,
                                      "--threads", str(t), "--steps", str(steps[shape])])
                r, _ = run_json([TORCH_PYTHON, os.path.join(here, "gpt_torch.py"), "--shape", shape,
                                 "--threads", str(t), "--steps", str(steps[shape])], env=torch_env(t))
                ours_min.append(o["min_ms"]); ours_med.append(o["median_ms"])
                theirs_min.append(r["min_ms"]); theirs_med.append(r["median_ms"])
            print("\n".join(header))
            fm, fd = min(ours_min), sorted(ours_med)[len(ours_med) // 2]
            tm, td = min(theirs_min), sorted(theirs_med)[len(theirs_med) // 2]
            rows.append((shape, t, fm, fd, tm, td, o["tokens_per_s"], r["tokens_per_s"], o["peak_bytes"]))
    print(f"{'shape':>10} {'threads':>7} {'forge min':>10} {'forge med':>10} {'torch min':>10} {'torch med':>10} "
          f"{'ratio med':>9} {'forge tok/s':>11} {'torch tok/s':>11} {'forge peak MB':>13}")
    for shape, t, fm, fd, tm, td, ft, tt, peak in rows:
        print(f"{shape:>10} {t:>7} {fm:>10.1f} {fd:>10.1f} {tm:>10.1f} {td:>10.1f} {fd / td:>9.3f} {ft:>11.0f} {tt:>11.0f} "
              f"{peak / 2**20:>13.1f}")


if __name__ == "__main__":
    main()
