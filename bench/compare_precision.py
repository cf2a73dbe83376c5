"""Mixed precision and activation checkpointing: step time, peak memory split and loss, one run.

    /usr/bin/python3 bench/compare_precision.py [--build build] [--shapes cpu,gpt2-small] [--threads 1,2]
                                                [--memory-shape baby] [--rounds 3] [--warmup 10]
                                                [--blas both] [--foreach both] ...

For each shape and thread count: forge's GPT training step (bench/gpt_step, GELU tanh) in f32, bf16
and f16 (f16 with the loss scaler), each without and with checkpointed blocks, beside PyTorch's step
in f32 and under its CPU autocast (bf16), all interleaved in the rounds of bench/harness.py;
PyTorch's settings are the fastest of a calibration (see compare_gpt.py). Then the
activation-dominated shape (the `baby` preset, B=64, T=256) at the largest thread count, where the
peak activation memory is what the comparison is about: one round with one warm-up step, so its
times are indicative only. Reports the median of the rounds' median and the best round's min ms per
step, the ratio to forge's f32 step and to PyTorch's, the peak bytes split at the peak (parameters
include the 16-bit cast cache), and the loss after the timed steps (the same random batches
everywhere).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from compare_gpt import STEPS, forge_side, reference_setup, torch_side  # noqa: E402

MB = 1 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--shapes", default="cpu,gpt2-small")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per process (0: the shape's own)")
    ap.add_argument("--memory-shape", default="baby", help="'' to skip")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--torch-precisions", default="f32,bf16",
                    help="PyTorch's runs (its bf16 autocast is ~16x its f32 on an AVX2-only CPU)")
    harness.add_arguments(ap, torch_optimizer=True)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    harness.print_setup(args, "compare_precision", [] if args.no_torch else threads)
    rows, figures = [], []

    def row(shape, t, impl, prec, ckpt, f, r, base, ref):
        ratio_f32 = f.median / base if base else float("nan")
        ratio_torch = f.median / ref if ref else float("nan")
        mem = (f"{r['peak_bytes'] / MB:>8.1f} {r['peak_parameters'] / MB:>7.1f} {r['peak_gradients'] / MB:>7.1f} "
               f"{r['peak_optimizer'] / MB:>7.1f} {r['peak_activations'] / MB:>7.1f} "
               f"{r['activations_peak'] / MB:>8.1f}") if "peak_bytes" in r else f"{'':>8} {'':>7} {'':>7} {'':>7} {'':>7} {'':>8}"
        rows.append(f"{shape:>10} {t:>3} {impl:>22} {prec:>5} {ckpt:>6} {f.median:>8.1f}{f.flag():1} {f.min:>9.1f} "
                    f"{ratio_f32:>6.2f} {ratio_torch:>6.2f} {mem} {r['loss']:>8.4f}")
        figures.append(f)

    jobs = [(s, t, args) for s in args.shapes.split(",") if s for t in threads]
    if args.memory_shape:
        memory = argparse.Namespace(**vars(args))
        memory.rounds, memory.warmup = 1, 1
        jobs.append((args.memory_shape, max(threads), memory))
    for shape, t, opts in jobs:
        steps = args.steps or STEPS[shape]
        ours = [forge_side(args.build, shape, t, steps, opts.warmup, "tanh", prec, ckpt)
                for prec in ("f32", "bf16", "f16") for ckpt in ("none", "blocks")]
        theirs = []
        if not args.no_torch:
            setup = reference_setup(shape, t, steps, opts)
            theirs = [torch_side(setup, shape, steps, opts.warmup, "tanh", prec)
                      for prec in args.torch_precisions.split(",")]
        runs = harness.run_rounds(ours + theirs, opts, f"{shape}, {t} thread(s)")
        fig = {s.name: harness.over_rounds(runs[s.name]) for s in ours + theirs}
        record = {s.name: runs[s.name][-1].records()[0] for s in ours + theirs}
        ref = {record[s.name]["precision"]: fig[s.name].median for s in theirs}
        base = fig[ours[0].name].median
        for s in ours:
            r = record[s.name]
            row(shape, t, "forge", r["precision"], r["checkpoint"], fig[s.name], r, base,
                ref.get("bf16" if r["precision"] != "f32" else "f32"))
        for s in theirs:
            r = record[s.name]
            row(shape, t, f"torch[{setup.label()}]", r["precision"], "none", fig[s.name], r, ref.get("f32"), None)
    print(f"\n{'shape':>10} {'thr':>3} {'impl':>22} {'prec':>5} {'ckpt':>6} {'med ms':>9} {'min ms':>9} "
          f"{'/f32':>6} {'/torch':>6} {'peak MB':>8} {'param':>7} {'grad':>7} {'optim':>7} {'activ':>7} "
          f"{'act peak':>8} {'loss':>8}")
    print("\n".join(rows) + harness.disturbed_note(figures))


if __name__ == "__main__":
    main()
