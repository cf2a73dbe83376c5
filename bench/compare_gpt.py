"""GPT training step: forge against PyTorch in the same run, two shapes, 1 and 2 threads, both GELUs.

    /usr/bin/python3 bench/compare_gpt.py [--build build] [--shapes cpu,gpt2-small] [--threads 1,2]
                                          [--gelu tanh,erf] [--steps N] [--rounds 3] [--warmup 10]
                                          [--blas both] [--foreach both] [--max-others 0.1] ...

Shapes: `cpu` (the cpu preset: 4 layers, 4 heads, 128 wide, vocab 65, B=12, T=64) and
`gpt2-small` (12 layers, 12 heads, 768 wide, vocab 50257, B=4, T=64). For each shape and thread
count, a calibration first times PyTorch's candidate settings (at 1 thread the OpenMP and the
pthread OpenBLAS; AdamW with foreach=True and with its per-tensor loop) with the first GELU form,
and keeps the fastest as the reference. Then the rounds run forge's bench/gpt_step and PyTorch's
bench/gpt_torch.py in turn, for each GELU form (tanh: forge's default; erf: the exact form nanoGPT
uses), each process with --warmup untimed steps, then the shape's timed steps (see bench/harness.py
for rounds, disturbance and environments). The table gives per row the min of the rounds' min and
the median of the rounds' median ms per step, and forge / PyTorch of each (< 1: forge is faster).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = {"cpu": 20, "gpt2-small": 5, "baby": 2}  # timed steps per process


def forge_side(build, shape, threads, steps, warmup, gelu="tanh", precision="f32", checkpoint="none"):
    cmd = [os.path.join(build, "bench", "gpt_step"), "--shape", shape, "--threads", str(threads),
           "--steps", str(steps), "--warmup", str(warmup), "--gelu", gelu, "--precision", precision,
           "--checkpoint", checkpoint]
    return harness.Side(f"forge {precision} gelu={gelu} ckpt={checkpoint}", cmd, harness.forge_env(),
                        harness.json_times("min_ms", "median_ms"), threads=threads)


def torch_side(setup, shape, steps, warmup, gelu="tanh", precision="f32"):
    cmd = [harness.TORCH_PYTHON, os.path.join(HERE, "gpt_torch.py"), "--shape", shape, "--threads",
           str(setup.threads), "--steps", str(steps), "--warmup", str(warmup), "--gelu", gelu,
           "--precision", precision] + setup.flags()
    return harness.Side(f"torch[{setup.label()}] {precision} gelu={gelu}", cmd, setup.env(),
                        harness.json_times("min_ms", "median_ms"), threads=setup.threads)


def reference_setup(shape, threads, steps, opts, gelu="tanh"):
    """PyTorch's fastest settings for this shape and thread count (a calibration when several)."""
    setups = harness.torch_setups(threads, opts)
    sides = [torch_side(s, shape, steps, opts.warmup, gelu) for s in setups]
    best = harness.fastest(sides, opts, f"PyTorch settings, {shape}, {threads} thread(s), gelu={gelu}")
    return setups[sides.index(best)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--gelu", default="tanh,erf", help="GELU forms, each timed on both sides")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per process (0: the shape's own)")
    harness.add_arguments(ap, torch_optimizer=True)
    opts = ap.parse_args()
    threads = [int(t) for t in opts.threads.split(",")]
    gelus = opts.gelu.split(",")
    harness.print_setup(opts, "compare_gpt", threads)
    rows = []
    for shape in opts.shapes.split(","):
        steps = opts.steps or STEPS[shape]
        for t in threads:
            setup = reference_setup(shape, t, steps, opts, gelus[0])
            pairs = [(g, forge_side(opts.build, shape, t, steps, opts.warmup, g),
                      torch_side(setup, shape, steps, opts.warmup, g)) for g in gelus]
            runs = harness.run_rounds([side for _, f, r in pairs for side in (f, r)], opts,
                                      f"{shape}, {t} thread(s)")
            for gelu, f, r in pairs:
                record = runs[f.name][-1].records()[0]
                rows.append((shape, t, gelu, setup.label(), harness.over_rounds(runs[f.name]),
                             harness.over_rounds(runs[r.name]), record["batch"] * record["seq"],
                             record["peak_bytes"]))

    print(f"\n{'shape':>10} {'thr':>3} {'gelu':>4} {'torch setting':>15} {'forge min':>10} {'forge med':>10} "
          f"{'torch min':>10} {'torch med':>10} {'ratio min':>9} {'ratio med':>9} {'forge tok/s':>11} "
          f"{'torch tok/s':>11} {'forge peak MB':>13}")
    for shape, t, gelu, setting, f, r, tokens, peak in rows:
        print(f"{shape:>10} {t:>3} {gelu:>4} {setting:>15} {f.min:>10.1f} {f.median:>9.1f}{f.flag():1} "
              f"{r.min:>10.1f} {r.median:>9.1f}{r.flag():1} {f.min / r.min:>9.3f} {f.median / r.median:>9.3f} "
              f"{tokens / f.median * 1e3:>11.0f} {tokens / r.median * 1e3:>11.0f} {peak / 2**20:>13.1f}")
    print(f"(ms per step; min: the best round's min, med: the median of the rounds' medians; "
          f"ratios forge / PyTorch){harness.disturbed_note([f for row in rows for f in row[4:6]])}")


if __name__ == "__main__":
    main()
