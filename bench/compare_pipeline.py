"""Pipeline and tensor parallelism (issue 6): bubble, activation memory and all-reduce traffic.

    /usr/bin/python3 bench/compare_pipeline.py [--build build] [--pp 2,4] [--tp 2,4] [--steps 5]
                                              [--n-layer 4] [--n-embd 256]

Runs bench/pipeline_bench under tests/mpirun.sh, one thread per rank:
- `--mode bubble` on P ranks (one pipeline of P stages) for each P of --pp: per schedule (GPipe,
  1F1B) and number of micro-batches m (1, 2, 4, 8), the idle share of the pipeline against
  (P-1)/(m+P-1), and the micro-batches each stage holds at once with its peak activation memory;
- `--mode tp-bytes` on T ranks (one tensor-parallel group) for each T of --tp: the all-reduces of
  one forward and backward, per phase, against the count derived from the code.
Prints the three tables in markdown (rows of every run together) for bench/RESULTS.md, each run's
settings lines first, with how busy the machine's CPUs were in the second before the run (other
work on this shared machine slows the stages unevenly).
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_busy(seconds=1.0):
    """The share of all CPUs' time spent on work (any process) over the next `seconds` (Linux)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def run(build, ranks, args):
    """Runs pipeline_bench on `ranks` ranks; returns (settings lines, tables as lists of lines)."""
    busy = cpu_busy()
    cmd = ["sh", os.path.join(ROOT, "tests", "mpirun.sh"), str(ranks),
           os.path.join(build, "bench", "pipeline_bench"), "--threads", "1"] + args
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    settings = [f"# CPUs busy in the second before the run: {100 * busy:.0f}%"]
    tables, table = [], []
    for line in out.stdout.splitlines():
        if line.startswith("#"):
            settings.append(line)
        elif line.startswith("|"):
            table.append(line)
        elif table:  # a blank line ends a table
            tables.append(table)
            table = []
    if table:
        tables.append(table)
    return settings, tables


def merged(tables):
    """One markdown table from several with the same header: the first's header, every body."""
    header = tables[0][:2]
    for t in tables[1:]:
        if t[:2] != header:
            sys.exit(f"tables with different headers:\n{header}\n{t[:2]}")
    return header + [row for t in tables for row in t[2:]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--pp", default="2,4", help="pipeline sizes P for the bubble runs")
    ap.add_argument("--tp", default="2,4", help="tensor-parallel sizes T for the traffic runs")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    a = ap.parse_args()
    build = os.path.join(ROOT, a.build) if not os.path.isabs(a.build) else a.build
    model = ["--n-layer", str(a.n_layer), "--n-embd", str(a.n_embd)]

    settings, bubble, memory, traffic = [], [], [], []
    for p in [int(v) for v in a.pp.split(",")]:
        s, tables = run(build, p, ["--mode", "bubble", "--steps", str(a.steps)] + model)
        settings += s
        bubble.append(tables[0])
        memory.append(tables[1])
    for t in [int(v) for v in a.tp.split(",")]:
        s, tables = run(build, t, ["--mode", "tp-bytes", "--steps", str(a.steps)] + model)
        settings += s
        traffic.append(tables[0])

    print(f"`/usr/bin/python3 bench/compare_pipeline.py{''.join(' ' + x for x in sys.argv[1:])}`")
    print(f"(nproc {os.cpu_count()})\n")
    print("```")
    print("\n".join(settings))
    print("```")
    print("\n### Pipeline bubble: idle share of the step\n")
    print("\n".join(merged(bubble)))
    print("\n### Activation memory per stage: micro-batches in flight and allocator peak\n")
    print("\n".join(merged(memory)))
    print("\n### Tensor-parallel all-reduces of one forward and backward, per rank\n")
    print("\n".join(merged(traffic)))


if __name__ == "__main__":
    main()
