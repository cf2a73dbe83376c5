"""Data parallelism: tokens/s of 1 and 2 ranks, bucket sizes swept, exposed communication, one run.

    /usr/bin/python3 bench/compare_ddp.py [--build build] [--shapes cpu,gpt2-small]
                                          [--buckets 1,5,25,100] [--ranks 2] [--rounds 3]
                                          [--warmup 10] [--max-others 0.1] ...

For each shape: bench/gpt_step on 1 rank (no DDP), then under tests/mpirun.sh with R ranks and DDP
for each bucket size (MiB), one thread per rank, each rank with the shape's own batch (B=12 for
`cpu`, B=4 for GPT-2-small, T=64: the global batch grows with the ranks, as in DDP). The rounds
interleave the runs (1 rank, R ranks with each bucket size, then again), each after --warmup
untimed steps, with the disturbance check of bench/harness.py (the ranks' CPU time is the child's:
mpirun waits for them). Each run reports its median step; the table gives the median over rounds
(and the best round's min). Per step, DDP measures the time blocked in finish_grad_sync
(communication not hidden behind backward) and the time inside the all-reduces (on the
communicator's worker thread). The reference is forge's own 1-rank run in the same rounds.
"""
import argparse
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

STEPS = {"cpu": 20, "gpt2-small": 5, "baby": 2}


def side(build, shape, ranks, bucket_mb, steps, warmup):
    cmd = [os.path.join(build, "bench", "gpt_step"), "--shape", shape, "--threads", "1",
           "--steps", str(steps), "--warmup", str(warmup)]
    if ranks > 1:
        cmd = ["sh", os.path.join(harness.ROOT, "tests", "mpirun.sh"), str(ranks)] + cmd
        cmd += ["--bucket-mb", str(bucket_mb)]
    name = f"{ranks} rank(s)" + (f", {bucket_mb:g} MiB buckets" if ranks > 1 else "")
    return harness.Side(name, cmd, harness.forge_env(), harness.json_times("min_ms", "median_ms"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--buckets", default="1,5,25,100")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="timed steps per process (0: the shape's own)")
    harness.add_arguments(ap, torch=False)
    a = ap.parse_args()
    buckets = [float(b) for b in a.buckets.split(",")]
    print(f"# compare_ddp: {a.ranks} ranks x 1 thread against 1 rank x 1 thread; buckets {buckets} MiB")
    harness.print_setup(a, "compare_ddp")
    table, figures = [], []
    for shape in a.shapes.split(","):
        steps = a.steps or STEPS[shape]
        configs = [(1, 0.0)] + [(a.ranks, b) for b in buckets]
        sides = [side(a.build, shape, ranks, b, steps, a.warmup) for ranks, b in configs]
        runs = harness.run_rounds(sides, a, shape)

        def median_of(s, field):
            return statistics.median(r.records()[0][field] for r in runs[s.name])
        base = median_of(sides[0], "tokens_per_s")
        for (ranks, bucket_mb), s in zip(configs, sides):
            f = harness.over_rounds(runs[s.name])
            figures.append(f)
            ddp = re.search(r"DDP, (\d+) buckets", " ".join(runs[s.name][0].settings()))
            tps, wait = median_of(s, "tokens_per_s"), median_of(s, "comm_wait_ms_median")
            comm = (f"{wait:.1f} | {median_of(s, 'allreduce_ms_median'):.1f} | {100 * wait / f.median:.1f}%"
                    if ranks > 1 else "- | - | -")
            table.append(f"| {shape} | {ranks} | {f'{bucket_mb:g}' if ranks > 1 else '-'} | "
                         f"{ddp.group(1) if ddp else '-'} | {f.median:.1f}{f.flag()} (min {f.min:.1f}) | "
                         f"{tps:.0f} | {tps / base:.2f} | {comm} |")
    print("\n| shape | ranks | bucket MiB | buckets | ms/step | tokens/s | vs 1 rank | exposed ms | all-reduce ms "
          "| exposed / step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(table) + harness.disturbed_note(figures))


if __name__ == "__main__":
    main()
