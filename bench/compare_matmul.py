"""matmul GFLOP/s: forge's matmul op against torch.matmul (OpenBLAS) in the same run.

    /usr/bin/python3 bench/compare_matmul.py [--build build] [--threads 1,2] [--repeats 7]
                                             [--rounds 3] [--warmup 10] [--blas both] ...
    /usr/bin/python3 bench/compare_matmul.py --dtype bf16   # bf16 inputs on both sides, and
                                                            # forge's f32 beside them

With --dtype bf16 both take bf16 inputs (forge: the native AVX512_BF16 kernel where the processor
has it; PyTorch: its bf16 mm, oneDNN's where it has it), and forge's f32 product runs in the same
rounds, so the table also gives forge's bf16 / f32 throughput.

Each round runs forge's bench/matmul and PyTorch's bench/matmul_torch.py (at 1 thread once with
each OpenBLAS build, at more threads with the OpenMP one) in turn; every process times all shapes,
each after --warmup untimed products (see bench/harness.py for rounds, disturbance and
environments). Per shape, PyTorch's figure is that of its faster OpenBLAS (by the median), named in
the table. GFLOP/s from the best round's min time ("best") and from the median of the rounds'
median times ("med"); forge / PyTorch of each (> 1: forge is faster).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def product_times(stdout, _stderr):
    """Seconds per product, min and median of the repeats, per shape (m, n, k)."""
    return {(r["m"], r["n"], r["k"]): (r["min_s"], r["median_s"]) for r in harness.json_records(stdout)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per shape and process")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"], help="the inputs' type")
    harness.add_arguments(ap)
    opts = ap.parse_args()
    threads = [int(t) for t in opts.threads.split(",")]
    harness.print_setup(opts, "compare_matmul", threads)
    rows = []
    for t in threads:
        common = ["--threads", str(t), "--repeats", str(opts.repeats), "--warmup", str(opts.warmup)]
        typed = common + ["--dtype", opts.dtype]
        binary = os.path.join(opts.build, "bench", "matmul")
        ours = harness.Side("forge", [binary] + typed, harness.forge_env(), product_times, unit="s",
                            threads=t)
        f32 = harness.Side("forge-f32", [binary] + common, harness.forge_env(), product_times,
                           unit="s", threads=t)
        theirs = [harness.Side(f"torch[{s.label()}]", [harness.TORCH_PYTHON, os.path.join(HERE, "matmul_torch.py")]
                               + typed, s.env(), product_times, unit="s", threads=t)
                  for s in harness.torch_setups(t, opts, optimizer=False)]
        sides = [ours] + ([f32] if opts.dtype != "f32" else []) + theirs
        runs = harness.run_rounds(sides, opts, f"{t} thread(s) {opts.dtype}")
        for shape in runs[ours.name][0].times:
            name, r = harness.best_per_key(runs, [s.name for s in theirs], shape)
            own32 = harness.over_rounds(runs[f32.name], shape) if opts.dtype != "f32" else None
            rows.append((t, shape, harness.over_rounds(runs[ours.name], shape), r, name, own32))

    own = opts.dtype != "f32"
    print(f"\n{opts.dtype} inputs")
    print(f"{'threads':>7} {'m':>5} {'n':>6} {'k':>5} {'forge best':>10} {'forge med':>10} {'torch best':>10} "
          f"{'torch med':>10} {'torch setting':>16} {'ratio best':>10} {'ratio med':>10}"
          + (f" {'forge f32 med':>13} {'/ f32 med':>9}" if own else ""))
    for t, (m, n, k), f, r, name, f32 in rows:
        flop = 2.0 * m * n * k * 1e-9
        print(f"{t:>7} {m:>5} {n:>6} {k:>5} {flop / f.min:>10.1f} {flop / f.median:>9.1f}{f.flag():1} "
              f"{flop / r.min:>10.1f} {flop / r.median:>9.1f}{r.flag():1} {name:>16} {r.min / f.min:>10.2f} "
              f"{r.median / f.median:>10.2f}"
              + (f" {flop / f32.median:>12.1f}{f32.flag():1} {f32.median / f.median:>9.2f}" if own else ""))
    print(f"(GFLOP/s; ratios forge / PyTorch in GFLOP/s: > 1 forge is faster"
          f"{'; / f32: forge bf16 over forge f32' if own else ''})"
          f"{harness.disturbed_note([x for row in rows for x in row[2:4]])}")


if __name__ == "__main__":
    main()
