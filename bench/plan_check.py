#!/usr/bin/env python3
"""Predicted against measured peak memory per rank, layout by layout.

For each layout, `build/apps/plan` predicts the training step's peak memory (recipes/plan.h) and
`build/apps/train gpt` runs a few steps of it (under mpirun when it has several ranks) with
--metrics; the last step's peak_bytes (the step's own peak on the rank where it is highest) is
compared with the prediction, tag by tag.

  python3 bench/plan_check.py                       # the default set, cpu preset
  python3 bench/plan_check.py --model "--n-layer 12 --n-embd 256" --world 2
  python3 bench/plan_check.py --layouts "dp2 z3" "pp2 mb4 gpipe" --tolerance 0.05
  python3 bench/plan_check.py --all --world 2      # every layout plan says runs on 2 ranks
  python3 bench/plan_check.py --all --world 4 --sample 40   # 40 of them, drawn with a fixed seed
  python3 bench/plan_check.py --all --world 2 --profile /tmp/p.json --calibrate-every 10 --steps 6
  python3 bench/plan_check.py --all --world 2 --profile /tmp/p.json --calibrate-every 10 --rounds 3
  python3 bench/plan_check.py --repredict /tmp/rows.json      # an earlier --json, predicted again

With --calibrate-every, each calibration is also kept as PROFILE.<run>.1, PROFILE.<run>.2, ...
(<run>: the run's start time and process id) and every round of --json's rows names the one it
was predicted from, beside the run's preset, model and threads; --repredict FILE predicts those
rows again, each with its own run's settings and batch and its rounds' profiles, with this build's
plan, against the same measurements (a change to the step-time model is then judged on runs it
was not tuned on, without running them again). Layout filters do not apply to it.

Exits 1 when a layout's prediction is off by more than --tolerance (relative, on peak_bytes).
Needs TINYSHAKESPEARE (or the corpus where train finds it) and, for several ranks, mpirun.
"""
import argparse
import json
import random
import os
import shlex
import shutil
import time
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAGS = ["parameters", "gradients", "optimizer", "activations", "other"]

# Short layout names -> train/plan flags. Unnamed dimensions are 1 / 1f1b / zero 0 / none.
DEFAULT = [
    "dp1", "dp1 ckpt", "dp1 mb4", "dp1 mb4 gpipe", "dp2", "dp2 z1", "dp2 z2", "dp2 z3",
    "tp2", "pp2 mb2", "pp2 mb4 gpipe", "pp2 mb2 ckpt", "dp2 tp2", "dp2 pp2 mb2 z2", "tp2 pp2 mb2",
]


def flags_of(name):
    f = {"dp": 1, "tp": 1, "pp": 1, "micro-batches": 1, "schedule": "1f1b", "zero": 0,
         "checkpoint": "none"}
    for part in name.split():
        if part == "ckpt":
            f["checkpoint"] = "blocks"
        elif part in ("gpipe", "1f1b"):
            f["schedule"] = part
        elif part.startswith("mb"):
            f["micro-batches"] = int(part[2:])
        elif part.startswith("z"):
            f["zero"] = int(part[1:])
        elif part[:2] in ("dp", "tp", "pp"):
            f[part[:2]] = int(part[2:])
        else:
            raise SystemExit(f"plan_check: layout '{name}': unknown part '{part}'")
    return f


def short_name(row):
    """plan's JSON row -> this script's layout name (global batch = --batch-size)."""
    parts = [f"dp{row['dp']}", f"tp{row['tp']}", f"pp{row['pp']}", f"mb{row['micro_batches']}",
             row["schedule"], f"z{row['zero']}"]
    if row["checkpoint"] == "blocks":
        parts.append("ckpt")
    return " ".join(parts)


def rank_note(pred, last):
    return "  (peak on rank %d, measured on rank %d)" % (pred["peak_rank"], last["peak_rank"])


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.stderr.write(f"command failed ({r.returncode}): {shlex.join(cmd)}\n{r.stdout}{r.stderr}")
        raise SystemExit(1)
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--model", default="", help="extra settings for both, e.g. '--n-layer 12'")
    ap.add_argument("--batch-size", type=int, default=12,
                    help="sequences per replica (with --all: the global batch)")
    ap.add_argument("--layouts", nargs="*", default=DEFAULT)
    ap.add_argument("--world", type=int, default=0, help="only layouts of this many ranks")
    ap.add_argument("--all", action="store_true",
                    help="every layout plan lists for --world ranks (global batch: --batch-size)")
    ap.add_argument("--sample", type=int, default=0, help="with --all: this many, drawn at random")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--repredict", metavar="FILE",
                    help="no runs: predict the rows of an earlier --json again, each round from "
                    "the profile it was predicted from, against its measurements")
    ap.add_argument("--profile", help="a machine profile (plan calibrate): also predicted against "
                    "measured step time (the median of the steps after the first)")
    ap.add_argument("--time-tolerance", type=float, default=0.15)
    ap.add_argument("--rounds", type=int, default=1,
                    help="measure every layout this many times, one round over all layouts "
                    "after another; step times are the median over rounds")
    ap.add_argument("--calibrate-every", type=int, default=0,
                    help="recalibrate (mpirun -np 2 plan calibrate, into --profile) before every K "
                    "layouts: this shared machine's speed drifts by up to 20%% over minutes, so "
                    "each prediction uses figures measured minutes, not an hour, before its run")
    a = ap.parse_args()
    if a.calibrate_every and not a.profile:
        raise SystemExit("plan_check: --calibrate-every needs --profile (the file it writes)")

    plan = os.path.join(a.build, "apps", "plan")
    train = os.path.join(a.build, "apps", "train")
    extra = shlex.split(a.model)
    rows, bad, bad_time = [], 0, []
    print(f"plan_check: preset {a.preset} {a.model}, batch {a.batch_size} per replica, "
          f"{a.steps} steps, {a.threads} thread(s) per rank, tolerance {a.tolerance:.0%}")
    print(f"{'layout':<18} {'ranks':>5} {'predicted':>10} {'measured':>10} {'ratio':>7}  "
          f"tags predicted/measured MiB (params grads optim acts other)")
    names = a.layouts
    if a.all and not a.repredict:
        if not a.world:
            raise SystemExit("plan_check: --all needs --world")
        listing = run([plan, "--preset", a.preset, *extra, "--world", str(a.world),
                       "--global-batch", str(a.batch_size), "--format", "json"])
        names = [short_name(json.loads(line)) for line in listing.splitlines()]
        if a.sample and a.sample < len(names):
            names = sorted(random.Random(1).sample(names, a.sample))
    calibrations = []  # the kept copies of each calibration's profile
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"

    def calibrate():
        out = run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", plan,
                   "calibrate", "--out", a.profile, "--preset", a.preset, *extra, "--threads",
                   str(a.threads), "--world", "2"])
        print("  " + out.strip().splitlines()[-1].strip())
        calibrations.append(f"{a.profile}.{run_id}.{len(calibrations) + 1}")
        shutil.copyfile(a.profile, calibrations[-1])

    settings = {"preset": a.preset, "model": a.model, "threads": a.threads}

    def common_flags(name, rows_per_replica=None, s=settings):
        f = flags_of(name)
        layout = []
        for k, v in f.items():
            layout += [f"--{k}", str(v)]
        if rows_per_replica is None:
            rows_per_replica = a.batch_size // f["dp"] if a.all else a.batch_size
        return f["dp"] * f["tp"] * f["pp"], ["--preset", s["preset"], *shlex.split(s["model"]),
                                              *layout, "--batch-size", str(rows_per_replica)]

    def predict(name, profile, kept=None, rows_per_replica=None, s=settings):
        """plan's prediction for the layout (with the profile's step time, if one); `kept`: the
        kept copy of that profile, named in the prediction."""
        common = common_flags(name, rows_per_replica, s)[1]
        prof = ["--profile", profile] if profile else []
        pred = json.loads(run([plan, *common, "--threads", str(s["threads"]), "--format", "json",
                               *prof]).splitlines()[0])
        if kept:
            pred["profile_file"] = kept
        return pred

    def measure(name):
        """plan's prediction for the layout and the last step of a run of it, with the median
        step time of the steps after the first."""
        world, common = common_flags(name)
        pred = predict(name, a.profile, calibrations[-1] if calibrations else None)
        with tempfile.TemporaryDirectory() as tmp:
            metrics = os.path.join(tmp, "m.jsonl")
            cmd = [train, "gpt", *common, "--max-iters",
                   str(a.steps), "--eval-interval", "1000", "--eval-iters", "1", "--threads",
                   str(a.threads), "--out", os.path.join(tmp, "out"), "--metrics", metrics]
            if world > 1:
                cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(world), *cmd]
            run(cmd)
            with open(metrics) as fh:
                steps = [json.loads(line) for line in fh if '"step"' in line]
        last = steps[-1]
        times = sorted(st["ms_per_step"] for st in steps[1:]) or [last["ms_per_step"]]
        last["median_ms_per_step"] = times[len(times) // 2]
        return world, pred, last

    names = [n for n in names if not a.world or
             flags_of(n)["dp"] * flags_of(n)["tp"] * flags_of(n)["pp"] == a.world]
    # Rounds go over every layout in turn, so a slow minute of this shared machine lands on one
    # round of many layouts, not on every round of one; the step time compared is the median
    # over rounds of each round's median step, against the median of the rounds' predictions
    # (each from the profile calibrated last before it).
    old = []
    if a.repredict:
        with open(a.repredict) as fh:
            old = json.load(fh)
        names = [row["layout"] for row in old]
    runs = {name: [] for name in names}
    runs_settings = {}  # each repredicted row's own run's settings
    if a.repredict:
        for row in old:
            s = runs_settings[row["layout"]] = row.get("settings", settings)
            files = row["predicted"].get("rounds_profile")
            if not files:
                raise SystemExit(f"plan_check: {a.repredict}: layout '{row['layout']}' does not "
                                 "name its rounds' profiles (measured without --calibrate-every, "
                                 "or before they were kept)")
            for i, file in enumerate(files):
                last = dict(row["measured"])
                last["median_ms_per_step"] = last["rounds_ms_per_step"][i]
                pred = predict(row["layout"], file, file, row["predicted"]["batch_size"], s)
                runs[row["layout"]].append((row["ranks"], pred, last))
        a.rounds = max(len(r) for r in runs.values())
        a.profile = a.profile or "(each round's own)"
    done = 0
    for rnd in range(0 if a.repredict else a.rounds):
        if a.rounds > 1:
            print(f"round {rnd + 1} of {a.rounds}")
        for name in names:
            if a.calibrate_every and done % a.calibrate_every == 0:
                calibrate()
            done += 1
            runs[name].append(measure(name))
            world, pred, last = runs[name][-1]
            if a.rounds > 1 and a.profile:
                print(f"  {name:<30} predicted {pred['ms_per_step']:8.2f} ms, measured "
                      f"{last['median_ms_per_step']:8.2f} ms")
                sys.stdout.flush()

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])

    for name in names:
        world, pred, last = runs[name][-1]
        if a.profile:
            # Each round's figures first: the last round's dicts are the ones overwritten here
            # with the medians (which replaced that round's own figures before 2026-12-08).
            last["rounds_ms_per_step"] = [r[2]["median_ms_per_step"] for r in runs[name]]
            pred["rounds_ms_per_step"] = [r[1]["ms_per_step"] for r in runs[name]]
            pred["ms_per_step"] = median(pred["rounds_ms_per_step"])
            last["median_ms_per_step"] = median(last["rounds_ms_per_step"])
            if all("profile_file" in r[1] for r in runs[name]):
                pred["rounds_profile"] = [r[1]["profile_file"] for r in runs[name]]
        p, m = pred["peak_bytes"], last["peak_bytes"]
        ratio = p / m
        ok = abs(ratio - 1) <= a.tolerance
        bad += not ok
        tags = " ".join(f"{pred[f'peak_{t}_bytes'] / 2**20:.2f}/{last[f'peak_{t}_bytes'] / 2**20:.2f}"
                        for t in TAGS)
        print(f"{name:<18} {world:>5} {p / 2**20:>10.2f} {m / 2**20:>10.2f} {ratio:>7.3f}  {tags}"
              f"{'' if ok else '  <-- off'}"
              f"{'' if pred['peak_rank'] == last['peak_rank'] else rank_note(pred, last)}")
        if a.profile:
            tr = pred["ms_per_step"] / last["median_ms_per_step"]
            tok = abs(tr - 1) <= a.time_tolerance
            bad_time.append(not tok)
            print(f"{'':<18} step time: predicted {pred['ms_per_step']:.2f} ms, measured "
                  f"{last['median_ms_per_step']:.2f} ms: {tr:.3f}{'' if tok else '  <-- off'}  "
                  f"(pipeline {pred['pipeline_ms']:.2f}, bubble {pred['bubble_ms']:.2f}, tp "
                  f"{pred['tp_comm_ms']:.2f}, dp exposed {pred['dp_exposed_ms']:.2f}, optimizer "
                  f"{pred['optimizer_ms']:.2f})")
        rows.append({"layout": name, "ranks": world, "predicted": pred, "measured": last,
                     "settings": runs_settings.get(name, settings)})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    print(f"{len(rows) - bad} of {len(rows)} within {a.tolerance:.0%}")
    if a.profile:
        print(f"step time: {bad_time.count(False)} of {len(bad_time)} within {a.time_tolerance:.0%}"
              + (" (medians over rounds)" if a.rounds > 1 else ""))
    if a.profile and a.rounds > 1:
        # Both sides' least disturbed round: this shared machine's other tenants only ever add
        # time, to a calibration (which then predicts too high) or to a run (measured too high).
        fastest = sum(abs(min(r["predicted"]["rounds_ms_per_step"]) /
                          min(r["measured"]["rounds_ms_per_step"]) - 1) <= a.time_tolerance
                      for r in rows)
        print(f"step time: {fastest} of {len(rows)} within {a.time_tolerance:.0%} "
              "(the fastest round's prediction against the fastest round's measurement)")
    if a.profile and rows:
        # plan's choice: the layout it predicts fastest, run against the fastest one measured.
        first = min(rows, key=lambda r: r["predicted"]["ms_per_step"])
        best = min(rows, key=lambda r: r["measured"]["median_ms_per_step"])
        first_ms = first["measured"]["median_ms_per_step"]
        best_ms = best["measured"]["median_ms_per_step"]
        ratio = first_ms / best_ms
        print(f"ranked first: {first['layout']}, measured {first_ms:.2f} ms; fastest measured: "
              f"{best['layout']}, {best_ms:.2f} ms: {ratio:.3f}"
              f"{'' if ratio <= 1.10 else '  <-- over 10%'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
