#!/usr/bin/env python3
"""Predicted against measured peak memory per rank, one point per layout: an SVG made with gnuplot
from the JSON files of bench/plan_check.py (--json). Points on the diagonal are exact; the band is
the +-5% target.

  python3 bench/plan_plot.py --out bench/plan_memory.svg /tmp/pc_w1.json /tmp/pc_w2.json ...
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="plan_check.py --json outputs")
    ap.add_argument("--out", required=True, help="the SVG to write")
    ap.add_argument("--title", default="")
    ap.add_argument("--metric", choices=["memory", "time"], default="memory",
                    help="peak memory per rank (MiB), or step time (ms; rows with a profile)")
    a = ap.parse_args()
    series = {}  # (model, ranks) -> [(measured MiB, predicted MiB)]
    for path in a.files:
        rows = json.load(open(path))
        model = os.path.splitext(os.path.basename(path))[0]
        for r in rows:
            key = f"{model}, {r['ranks']} rank{'s' if r['ranks'] > 1 else ''}"
            if a.metric == "memory":
                pt = (r["measured"]["peak_bytes"] / 2**20, r["predicted"]["peak_bytes"] / 2**20)
            elif "ms_per_step" in r["predicted"]:
                pt = (r["measured"]["median_ms_per_step"], r["predicted"]["ms_per_step"])
            else:
                continue
            series.setdefault(key, []).append(pt)
    band = 0.05 if a.metric == "memory" else 0.15
    unit = "MiB" if a.metric == "memory" else "ms"
    what = "peak memory per rank" if a.metric == "memory" else "step time"
    title = a.title or f"plan: predicted vs measured {what}"
    lo = min(min(x, y) for pts in series.values() for x, y in pts) * 0.8
    hi = max(max(x, y) for pts in series.values() for x, y in pts) * 1.25
    with tempfile.TemporaryDirectory() as tmp:
        plots = [f"x with lines lc rgb '#888888' title 'predicted = measured'",
                 f"{1 + band}*x with lines dt 2 lc rgb '#bbbbbb' title '+-{band:.0%}'",
                 f"{1 - band}*x with lines dt 2 lc rgb '#bbbbbb' notitle"]
        for i, (key, pts) in enumerate(sorted(series.items())):
            data = os.path.join(tmp, f"s{i}.dat")
            with open(data, "w") as fh:
                fh.writelines(f"{x} {y}\n" for x, y in pts)
            plots.append(f"'{data}' using 1:2 with points pt {i + 5} ps 0.8 title '{key} ({len(pts)})'")
        script = f"""
set terminal svg size 800,600 dynamic font 'sans,11'
set output '{a.out}'
set title '{title}'
set xlabel 'measured ({unit}): train --metrics, {"peak_bytes of the last step" if a.metric == "memory" else "median ms_per_step after the first"}'
set ylabel 'predicted ({unit}): build/apps/plan'
set logscale xy
set xrange [{lo}:{hi}]
set yrange [{lo}:{hi}]
set key top left
set grid
plot {', '.join(plots)}
"""
        subprocess.run(["gnuplot"], input=script, text=True, check=True)
    n = sum(len(p) for p in series.values())
    print(f"plan_plot: {n} layouts in {len(series)} series -> {a.out}")


if __name__ == "__main__":
    sys.exit(main())
