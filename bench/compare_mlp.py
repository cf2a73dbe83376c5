"""Fashion-MNIST MLP epoch: forge against PyTorch in the same run, at 1 and 2 threads.

    /usr/bin/python3 bench/compare_mlp.py [--build build] [--threads 1,2] [--epochs 3] [--rounds 3]
                                          [--warmup 10] [--blas both] [--foreach both] ...

For each thread count, a calibration first times PyTorch's candidate settings (at 1 thread the
OpenMP and the pthread OpenBLAS; AdamW with foreach=True and with its per-tensor loop) and keeps the
fastest as the reference. Then the rounds run forge's bench/mlp_epoch and PyTorch's
bench/mlp_torch.py in turn, each process --warmup untimed steps on a throwaway model, then --epochs
timed epochs (see bench/harness.py for rounds, disturbance and environments). A run's figures are
the min and median of its epochs; the table gives the min of the rounds' mins and the median of
the rounds' medians, in seconds per epoch, and forge / PyTorch of each (< 1: forge is faster).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def epoch_times(stdout, _stderr):
    """A run's min and median seconds per epoch."""
    times = [r["epoch_s"] for r in harness.json_records(stdout)]
    return {None: (min(times), statistics.median(times))}


def forge_side(build, threads, epochs, warmup):
    cmd = [os.path.join(build, "bench", "mlp_epoch"), "--threads", str(threads), "--epochs", str(epochs),
           "--warmup", str(warmup)]
    return harness.Side("forge", cmd, harness.forge_env(), epoch_times, unit="s", threads=threads)


def torch_side(setup, epochs, warmup):
    cmd = [harness.TORCH_PYTHON, os.path.join(HERE, "mlp_torch.py"), "--threads", str(setup.threads),
           "--epochs", str(epochs), "--warmup", str(warmup)] + setup.flags()
    return harness.Side(f"torch[{setup.label()}]", cmd, setup.env(), epoch_times, unit="s",
                        threads=setup.threads)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per process")
    ap.add_argument("--threads", default="1,2")
    harness.add_arguments(ap, torch_optimizer=True)
    opts = ap.parse_args()
    threads = [int(x) for x in opts.threads.split(",")]
    print("# MLP 784-256-256-10 relu, batch 128, AdamW lr 1e-3, f32, one epoch = 469 steps, "
          f"{opts.epochs} epochs per process")
    harness.print_setup(opts, "compare_mlp", threads)
    rows = []
    for t in threads:
        candidates = [torch_side(s, opts.epochs, opts.warmup) for s in harness.torch_setups(t, opts)]
        reference = harness.fastest(candidates, opts, f"PyTorch settings, {t} thread(s)")
        ours = forge_side(opts.build, t, opts.epochs, opts.warmup)
        runs = harness.run_rounds([ours, reference], opts, f"{t} thread(s)")
        accuracy = [runs[s.name][-1].records()[-1]["test_acc"] for s in (ours, reference)]
        rows.append((t, reference.name, harness.over_rounds(runs[ours.name]),
                     harness.over_rounds(runs[reference.name]), accuracy))

    print(f"\n{'threads':>7} {'torch setting':>22} {'forge min':>10} {'forge med':>10} {'torch min':>10} "
          f"{'torch med':>10} {'ratio min':>10} {'ratio med':>10}  acc forge/torch")
    for t, setting, f, r, acc in rows:
        print(f"{t:>7} {setting:>22} {f.min:>10.3f} {f.median:>9.3f}{f.flag():1} {r.min:>10.3f} "
              f"{r.median:>9.3f}{r.flag():1} {f.min / r.min:>10.3f} {f.median / r.median:>10.3f}  "
              f"{acc[0]:.4f}/{acc[1]:.4f} after {opts.epochs} epochs (last round)")
    print(f"(seconds per epoch; min: the best round's min, med: the median of the rounds' medians; "
          f"ratios forge / PyTorch){harness.disturbed_note([x for row in rows for x in row[2:4]])}")


if __name__ == "__main__":
    main()
