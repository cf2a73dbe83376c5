"""Fashion-MNIST MLP epoch: forge against PyTorch in the same run, at 1 and 2 threads.

    /usr/bin/python3 bench/compare_mlp.py [--build build] [--rounds 2] [--epochs 3]

Each round runs forge's bench/mlp_epoch and PyTorch's bench/mlp_torch.py one after the other
(alternating, so machine noise hits both), each for --epochs epochs in one process. The table gives
min and median seconds per epoch over all epochs of all rounds, and forge/PyTorch ratios (< 1:
forge is faster).
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from torch_env import TORCH_PYTHON, cpu_model, describe_torch_setup, summary, torch_env  # noqa: E402


def run_lines(cmd, env=None):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    ours = os.path.join(args.build, "bench", "mlp_epoch")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# MLP 784-256-256-10 relu, batch 128, AdamW lr 1e-3, f32, one epoch = 469 steps")
    print(f"# cpu: {cpu_model()}; commit {commit}; rounds {args.rounds} x epochs {args.epochs}")
    print(f"# reference: {describe_torch_setup()}")
    print(f"{'threads':>7} {'forge min':>10} {'forge med':>10} {'torch min':>10} {'torch med':>10} {'ratio min':>10} {'ratio med':>10}  acc forge/torch")
    for t in [int(x) for x in args.threads.split(",")]:
        f_times, t_times, f_acc, t_acc = [], [], [], []
        for _ in range(args.rounds):
            for r in run_lines([ours, "--threads", str(t), "--epochs", str(args.epochs)]):
                f_times.append(r["epoch_s"]); f_acc.append(r["test_acc"])
            for r in run_lines([TORCH_PYTHON, os.path.join(here, "mlp_torch.py"), "--threads", str(t),
                                "--epochs", str(args.epochs)], env=torch_env(t)):
                t_times.append(r["epoch_s"]); t_acc.append(r["test_acc"])
        fmin, fmed = summary(f_times)
        tmin, tmed = summary(t_times)
        print(f"{t:>7} {fmin:>10.3f} {fmed:>10.3f} {tmin:>10.3f} {tmed:>10.3f} {fmin / tmin:>10.3f} {fmed / tmed:>10.3f}  "
              f"{f_acc[args.epochs - 1]:.4f}/{t_acc[args.epochs - 1]:.4f} after {args.epochs} epochs")


if __name__ == "__main__":
    main()
