"""Pipeline and tensor parallelism (issue 6): bubble, activation memory and all-reduce traffic.

    /usr/bin/python3 bench/compare_pipeline.py [--build build] [--pp 2,4] [--tp 2,4] [--steps 5]
                                              [--n-layer 4] [--n-embd 256] [--rounds 3]
                                              [--warmup 10] [--max-others 0.1] ...

Runs bench/pipeline_bench under tests/mpirun.sh, one thread per rank:
- `--mode bubble` on P ranks (one pipeline of P stages) for each P of --pp: per schedule (GPipe,
  1F1B) and number of micro-batches m (1, 2, 4, 8), the idle share of the pipeline against
  (P-1)/(m+P-1), and the micro-batches each stage holds at once with its peak activation memory;
- `--mode tp-bytes` on T ranks (one tensor-parallel group) for each T of --tp: the all-reduces of
  one forward and backward, per phase, against the count derived from the code.
The bubble runs are timings: the P's interleave in the rounds of bench/harness.py (other work on
this shared machine slows the stages unevenly, so a run that other processes disturbed is run
again), and every number of the bubble and memory tables is the median of that number over the
rounds. The traffic runs count calls and bytes, the same in every run: one round.
Prints the three tables in markdown (rows of every run together) for bench/RESULTS.md, each run's
settings lines first.
"""
import argparse
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROOT = harness.ROOT
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def side(build, ranks, args):
    """pipeline_bench on `ranks` ranks, one thread each."""
    cmd = ["sh", os.path.join(ROOT, "tests", "mpirun.sh"), str(ranks),
           os.path.join(build, "bench", "pipeline_bench"), "--threads", "1"] + args
    return harness.Side(f"{args[1]} on {ranks} ranks", cmd, harness.forge_env(), lambda out, err: {}, cwd=ROOT)


def tables_of(stdout):
    """The markdown tables of a run, each as a list of lines."""
    tables, table = [], []
    for line in stdout.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:  # a blank line ends a table
            tables.append(table)
            table = []
    if table:
        tables.append(table)
    return tables


def median_table(rounds):
    """One table from the same table of several rounds: each number is the median of its values
    over the rounds, with the first round's decimals; the text around the numbers must agree."""
    if len({len(t) for t in rounds}) != 1:
        sys.exit(f"the rounds' tables differ in length: {[len(t) for t in rounds]}")
    out = []
    for lines in zip(*rounds):
        if len({NUMBER.sub("#", line) for line in lines}) != 1:
            sys.exit("the rounds' tables differ in more than numbers:\n" + "\n".join(lines))
        values = [NUMBER.findall(line) for line in lines]
        column = iter(range(len(values[0])))

        def median(match):
            i, text = next(column), match.group(0)
            decimals = len(text.split(".")[1]) if "." in text else 0
            return f"{statistics.median(float(v[i]) for v in values):.{decimals}f}"
        out.append(NUMBER.sub(median, lines[0]))
    return out


def merged(tables):
    """One markdown table from several with the same header: the first's header, every body."""
    header = tables[0][:2]
    for t in tables[1:]:
        if t[:2] != header:
            sys.exit(f"tables with different headers:\n{header}\n{t[:2]}")
    return header + [row for t in tables for row in t[2:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--pp", default="2,4", help="pipeline sizes P for the bubble runs")
    ap.add_argument("--tp", default="2,4", help="tensor-parallel sizes T for the traffic runs")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    harness.add_arguments(ap, torch=False)
    a = ap.parse_args()
    build = os.path.join(ROOT, a.build) if not os.path.isabs(a.build) else a.build
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--n-layer", str(a.n_layer),
              "--n-embd", str(a.n_embd)]
    harness.print_setup(a, "compare_pipeline")

    bubble_sides = [side(build, int(p), ["--mode", "bubble"] + common) for p in a.pp.split(",")]
    traffic_sides = [side(build, int(t), ["--mode", "tp-bytes"] + common) for t in a.tp.split(",")]
    bubble_runs = harness.run_rounds(bubble_sides, a, "pipeline bubble")
    traffic_runs = harness.run_rounds(traffic_sides, a, "tensor-parallel traffic", rounds=1)

    settings, bubble, memory, traffic = [], [], [], []
    for s in bubble_sides:
        runs = bubble_runs[s.name]
        settings += runs[0].settings()
        settings.append(f"# {s.name}: other processes used " +
                        ", ".join(f"{r.others_cores:.2f}" for r in runs) + " cores in the rounds" +
                        (" (disturbed runs kept: the numbers include them)" if any(r.disturbed for r in runs) else ""))
        tables = [tables_of(r.stdout) for r in runs]
        bubble.append(median_table([t[0] for t in tables]))
        memory.append(median_table([t[1] for t in tables]))
    for s in traffic_sides:
        settings += traffic_runs[s.name][0].settings()
        traffic.append(tables_of(traffic_runs[s.name][0].stdout)[0])

    print(f"\n`/usr/bin/python3 bench/compare_pipeline.py{''.join(' ' + x for x in sys.argv[1:])}`")
    print(f"(nproc {os.cpu_count()}; bubble and memory: medians over {a.rounds} rounds)\n")
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
