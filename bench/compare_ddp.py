"""Data parallelism: tokens/s of 1 and 2 ranks, bucket sizes swept, exposed communication, one run.

    python3 bench/compare_ddp.py [--build build] [--rounds 2] [--shapes cpu,gpt2-small]
                                 [--buckets 1,5,25,100] [--ranks 2]

For each shape: bench/gpt_step on 1 rank (no DDP), then under `mpirun -np R` with DDP for each
bucket size (MiB), one thread per rank, each rank with the shape's own batch (B=12 for `cpu`,
B=4 for GPT-2-small, T=64: the global batch grows with the ranks, as in DDP). Rounds alternate
the runs; each run reports its median step; the table gives the median over rounds (and the
min). Per step, DDP measures the time blocked in finish_grad_sync (communication not hidden
behind backward) and the time inside the all-reduces (on the communicator's worker thread).
The reference is forge's own 1-rank run in the same script.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

STEPS = {"cpu": 20, "gpt2-small": 5, "baby": 2}
MPI_ENV = {"OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OMPI_MCA_btl": "self,vader"}


def run(build, shape, ranks, bucket_mb):
    cmd = [os.path.join(build, "bench", "gpt_step"), "--shape", shape, "--threads", "1",
           "--steps", str(STEPS[shape]), "--warmup", "1"]
    if ranks > 1:
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", str(ranks)] + cmd
        cmd += ["--bucket-mb", str(bucket_mb)]
    out = subprocess.run(cmd, env={**os.environ, **MPI_ENV}, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    header = [l for l in out.stdout.splitlines() if l.startswith("#")][0]
    return header, json.loads([l for l in out.stdout.splitlines() if l.startswith("{")][0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--buckets", default="1,5,25,100")
    ap.add_argument("--ranks", type=int, default=2)
    a = ap.parse_args()
    buckets = [float(b) for b in a.buckets.split(",")]
    print(f"# compare_ddp: {a.ranks} ranks x 1 thread against 1 rank x 1 thread; buckets {buckets} MiB; "
          f"{a.rounds} rounds; nproc {os.cpu_count()}")
    print("| shape | ranks | bucket MiB | buckets | ms/step | tokens/s | vs 1 rank | exposed ms | all-reduce ms "
          "| exposed / step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for shape in a.shapes.split(","):
        configs = [(1, 0.0)] + [(a.ranks, b) for b in buckets]
        results = {c: [] for c in configs}
        headers = {}
        for _ in range(a.rounds):
            for c in configs:
                h, r = run(a.build, shape, *c)
                headers[c] = h
                results[c].append(r)
        for c in configs:
            print(headers[c], file=sys.stderr)
        base = statistics.median(r["tokens_per_s"] for r in results[(1, 0.0)])
        for c in configs:
            rs = results[c]
            ms = statistics.median(r["median_ms"] for r in rs)
            ms_min = min(r["min_ms"] for r in rs)
            tps = statistics.median(r["tokens_per_s"] for r in rs)
            wait = statistics.median(r["comm_wait_ms_median"] for r in rs)
            ar = statistics.median(r["allreduce_ms_median"] for r in rs)
            nb = [h for h in [headers[c]] if "buckets" in h]
            nbuckets = nb[0].split("DDP, ")[1].split(" buckets")[0] if nb else "-"
            print(f"| {shape} | {c[0]} | {c[1]:g} | {nbuckets} | {ms:.1f} (min {ms_min:.1f}) | {tps:.0f} | "
                  f"{tps / base:.2f} | {wait:.1f} | {ar:.1f} | {100 * wait / ms:.1f}% |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
