"""f32 matmul GFLOP/s: forge's matmul op against torch.matmul (OpenBLAS) in the same run.

    /usr/bin/python3 bench/compare_matmul.py [--build build] [--threads 1,2]
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from torch_env import TORCH_PYTHON, cpu_model, describe_torch_setup, torch_env  # noqa: E402


def run_lines(cmd, env=None):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")], \
        [l for l in out.stdout.splitlines() if l.startswith("#")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"# cpu: {cpu_model()}")
    print(f"# reference: {describe_torch_setup()}")
    for t in [int(x) for x in args.threads.split(",")]:
        ours, header = run_lines([os.path.join(args.build, "bench", "matmul"), "--threads", str(t),
                                  "--repeats", str(args.repeats)])
        theirs, _ = run_lines([sys.executable, os.path.join(here, "matmul_torch.py"), "--threads", str(t),
                               "--repeats", str(args.repeats)], env=torch_env(t))
        print("\n".join(header))
        print(f"{'threads':>7} {'m':>5} {'n':>6} {'k':>5} {'forge GF/s':>11} {'torch GF/s':>11} {'forge/torch':>12}")
        for o, r in zip(ours, theirs):
            assert (o["m"], o["n"], o["k"]) == (r["m"], r["n"], r["k"])
            print(f"{t:>7} {o['m']:>5} {o['n']:>6} {o['k']:>5} {o['gflops']:>11.1f} {r['gflops']:>11.1f} "
                  f"{o['gflops'] / r['gflops']:>12.2f}")


if __name__ == "__main__":
    main()
