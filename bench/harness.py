"""The measuring harness of every bench/compare_*.py: rounds, interleaving, disturbance, environments.

A compare script describes each program it times as a `Side` (its command, its environment, and how
to read its figures from its output), then lets the harness run them:

    opts = ap.parse_args()                      # after harness.add_arguments(ap)
    harness.print_setup(opts, "compare_x", threads=[1, 2])
    runs = harness.run_rounds([forge_side, torch_side], opts, "cpu, 1 thread")
    f, t = harness.over_rounds(runs[forge_side.name]), harness.over_rounds(runs[torch_side.name])
    print(f.median / t.median)

- Rounds interleave the sides (forge, torch, forge, torch, ...), so slow drifts of the machine hit
  both; each side reports per round its own min and median time (of steps, epochs, calls), and
  `over_rounds` gives the min of the rounds' mins and the median of the rounds' medians.
- Disturbance: around each run the harness reads the machine's CPU time (/proc/stat, every CPU,
  busy = all but idle and iowait, so a hypervisor's steal counts too) and the child's own CPU time
  (getrusage of waited-for children, which includes mpirun's ranks). Other processes' CPU over the
  run is the difference, printed as the average number of cores they used. Above --max-others the
  run is printed as disturbed and run again, at most --max-retries times; if every try was
  disturbed, the least disturbed is kept and marked (`*` in the tables).
- Pinning (--pin on, the default): a side that says how many threads T it uses runs confined by
  `taskset` to CPUs 0 .. T-1, so both sides of a comparison share the same cores. On a shared host
  the cores are not equally fast (here one vCPU ran a 1-thread step 15% slower than the other for
  minutes, then they swapped): unpinned, a 1-thread run lands on either, and the ratio takes that
  difference at random.
- Environments are built from scratch, not copied from the caller: PATH, HOME, LANG for both
  sides; PyTorch adds the OpenBLAS library and its thread variables (`TorchSetup`), forge the
  caller's FORGE_* variables (kernel or ISA overrides), if any. Each side's exact environment and
  command are printed the first time it runs.
- PyTorch at its best: `torch_setups` lists the settings worth trying (OpenBLAS built for OpenMP or
  for pthreads at 1 thread, AdamW's foreach implementation or its per-tensor loop), `fastest`
  times them in a short calibration and keeps the fastest, `best_per_key` picks per figure when
  the candidates all ran in the rounds.
"""
import dataclasses
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = "/usr/bin/python3"
OPENBLAS = {  # Debian's two OpenBLAS builds (libopenblas0-openmp, libopenblas0-pthread)
    "openmp": "/usr/lib/x86_64-linux-gnu/openblas-openmp",
    "pthread": "/usr/lib/x86_64-linux-gnu/openblas-pthread",
}
# Debian's OpenBLAS 0.3.21 does not know recent processors and falls back to slow kernels unless a
# core type is forced; it falls back by itself to the best the processor has (Haswell on AVX2).
OPENBLAS_CORETYPE = "Cooperlake"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Options

def add_arguments(ap, rounds=3, torch=True, torch_optimizer=False):
    """The harness's options on a script's parser: rounds, warm-up, disturbance; with torch, the
    PyTorch candidates (--blas, and --foreach for AdamW where torch_optimizer)."""
    g = ap.add_argument_group("measurement (bench/harness.py)")
    g.add_argument("--rounds", type=int, default=rounds, help="runs per side, interleaved")
    g.add_argument("--warmup", type=int, default=10, help="untimed steps (or calls) first, both sides")
    g.add_argument("--max-others", type=float, default=0.1,
                   help="a run is disturbed when other processes used more cores than this on average")
    g.add_argument("--max-retries", type=int, default=3, help="reruns of a disturbed run; 0: keep it")
    g.add_argument("--pin", choices=["on", "off"], default="on",
                   help="confine a side of T threads to CPUs 0..T-1 (taskset), both sides alike")
    if not torch:
        return
    g.add_argument("--calibration-rounds", type=int, default=1,
                   help="rounds timing PyTorch's candidate settings before the comparison")
    g.add_argument("--blas", choices=["both", "openmp", "pthread"], default="both",
                   help="PyTorch's OpenBLAS at 1 thread (more threads: openmp)")
    if torch_optimizer:
        g.add_argument("--foreach", choices=["both", "on", "off"], default="both",
                       help="PyTorch's AdamW: foreach (multi-tensor) or the per-tensor loop")


def print_setup(opts, script, threads=()):
    """The settings lines every script starts with: processor, commit, harness, PyTorch's libraries
    at the thread counts `threads` (none: the script runs no PyTorch)."""
    print(f"# {script} | cpu {cpu_model()} | cores {os.cpu_count()} | commit {commit()}")
    print(f"# rounds {opts.rounds} (interleaved), warm-up {opts.warmup}, a run is disturbed above "
          f"{opts.max_others:g} cores of other processes (retried up to {opts.max_retries} times), "
          f"pinning {opts.pin} (a side of T threads on CPUs 0..T-1)")
    print(f"# forge env: {format_env(forge_env())}")
    for blas in sorted({s.blas for t in threads for s in torch_setups(t, opts, optimizer=False)}):
        print(f"# torch with the {blas} OpenBLAS: {describe_torch(blas)}")
    if threads:
        print("# torch: each run's environment is printed with its command; OPENBLAS_NUM_THREADS = "
              "OMP_NUM_THREADS = torch.set_num_threads = T; 1 thread tries both OpenBLAS builds "
              "(--blas), more threads the OpenMP one")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# Environments

def base_env():
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
            "LANG": "C.UTF-8"}


def forge_env(extra=None):
    env = base_env()
    env.update({k: v for k, v in os.environ.items() if k.startswith("FORGE_")})
    env.update(extra or {})
    return env


@dataclasses.dataclass(frozen=True)
class TorchSetup:
    """One way to run the PyTorch reference: threads, OpenBLAS build, and AdamW's implementation
    (foreach None: the benchmark has no optimizer)."""
    threads: int
    blas: str = "openmp"
    foreach: Optional[bool] = None

    def env(self):
        env = base_env()
        env.update({"LD_LIBRARY_PATH": OPENBLAS[self.blas], "OPENBLAS_CORETYPE": OPENBLAS_CORETYPE,
                    "OPENBLAS_NUM_THREADS": str(self.threads), "OMP_NUM_THREADS": str(self.threads),
                    "PYTHONUNBUFFERED": "1"})
        return env

    def flags(self):
        return ["--foreach"] if self.foreach else []

    def label(self):
        parts = [self.blas] + ([] if self.foreach is None else ["foreach" if self.foreach else "loop"])
        return ",".join(parts)


def torch_setups(threads, opts, optimizer=True):
    """The candidate settings of PyTorch at `threads`. The pthread OpenBLAS only at 1 thread: with
    more it starts its own pool beside torch's OpenMP one and they fight for the cores."""
    blases = ["openmp", "pthread"] if opts.blas == "both" else [opts.blas]
    if threads > 1:
        blases = ["openmp"]
    foreach = [None]
    if optimizer:
        foreach = {"both": [False, True], "on": [True], "off": [False]}[opts.foreach]
    return [TorchSetup(threads, b, f) for b in blases for f in foreach]


def format_env(env):
    return " ".join(f"{k}={v}" for k, v in sorted(env.items()))


_described = {}


def describe_torch(blas):
    """torch's version, the OpenBLAS file it actually loaded, and the core type OpenBLAS chose."""
    if blas not in _described:
        if not os.path.isdir(OPENBLAS[blas]):
            sys.exit(f"{OPENBLAS[blas]} is missing: apt-get install libopenblas0-{blas}")
        env = TorchSetup(1, blas).env()
        env["OPENBLAS_VERBOSE"] = "2"
        code = ("import torch; print(torch.__version__); "
                "print([l.split()[-1] for l in open('/proc/self/maps') if 'libopenblas' in l][0])")
        out = subprocess.run([TORCH_PYTHON, "-c", code], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"torch does not start with the {blas} OpenBLAS:\n{out.stderr}")
        version, lib = out.stdout.split()
        core = re.search(r"Core: (\S+)", out.stderr)
        _described[blas] = f"torch {version}, {lib}, core {core.group(1) if core else '?'}"
    return _described[blas]


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def commit():
    return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip() or "?"


# ---------------------------------------------------------------------------------------------
# Sides and runs

@dataclasses.dataclass
class Side:
    """A program timed in the rounds. parse(stdout, stderr) -> {key: (min, median)}: the run's own
    figures, lower is better (a script with one figure per run uses the key None)."""
    name: str
    cmd: list
    env: dict
    parse: Callable
    unit: str = "ms"
    cwd: Optional[str] = None
    threads: Optional[int] = None  # with --pin on, the run is confined to CPUs 0 .. threads-1


@dataclasses.dataclass
class Run:
    stdout: str
    stderr: str
    times: dict          # key -> (min, median), from Side.parse
    wall_s: float
    child_cpu_s: float   # the child's CPU time (user + system, with its waited-for children)
    others_cores: float  # other processes' CPU time / wall: cores they used on average
    disturbed: bool = False

    def records(self):
        return json_records(self.stdout)

    def settings(self):
        """The settings lines ("# ...") of stdout."""
        return [l for l in self.stdout.splitlines() if l.startswith("#")]


def json_records(stdout):
    """The JSON lines of a program's output."""
    return [json.loads(l) for l in stdout.splitlines() if l.startswith("{")]


def json_times(min_field, median_field):
    """A Side.parse for programs whose first JSON line carries a run's min and median."""
    def parse(stdout, _stderr):
        r = json_records(stdout)[0]
        return {None: (r[min_field], r[median_field])}
    return parse


def _busy_seconds():
    """CPU time of all CPUs since boot, all but idle and iowait (user .. steal; guest time is
    already inside user)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (sum(v) - v[3] - v[4]) / CLOCK_TICKS


def _children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_checked(cmd, env=None, cwd=None):
    """Runs a program that is not timed; exits naming it if it fails. Returns (stdout, stderr)."""
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout, out.stderr


def command(side, opts):
    """A side's command line, under taskset when it is pinned (see --pin)."""
    if getattr(opts, "pin", "off") == "on" and side.threads and side.threads < (os.cpu_count() or 1):
        cpus = "0" if side.threads == 1 else f"0-{side.threads - 1}"
        return ["taskset", "-c", cpus] + list(side.cmd)
    return list(side.cmd)


def measure(side, opts):
    """One run of a side, with the CPU time other processes took meanwhile."""
    busy0, cpu0, t0 = _busy_seconds(), _children_cpu_s(), time.perf_counter()
    stdout, stderr = run_checked(command(side, opts), side.env, side.cwd)
    wall = time.perf_counter() - t0
    busy1, cpu1 = _busy_seconds(), _children_cpu_s()
    child = cpu1 - cpu0
    # /proc/stat counts in ticks per CPU: allow one tick per CPU of rounding before blaming others.
    slack = (os.cpu_count() or 1) / CLOCK_TICKS
    others = max(0.0, busy1 - busy0 - child - slack) / wall
    return Run(stdout, stderr, side.parse(stdout, stderr), wall, child, others)


_announced = set()


def _announce(side, run, opts):
    """The first run of a side prints its command, environment and the program's settings lines."""
    identity = (side.name, tuple(side.cmd), tuple(sorted(side.env.items())))
    if identity in _announced:
        return
    _announced.add(identity)
    print(f"# [{side.name}] {' '.join(command(side, opts))}")
    print(f"# [{side.name}] env: {format_env(side.env)}")
    for line in run.settings():
        print(f"# [{side.name}] {line.lstrip('# ')}")


def run_undisturbed(side, opts, label):
    """Runs a side until other processes stay under --max-others, at most --max-retries times
    again; when every try was disturbed, keeps the least disturbed, marked."""
    tries = []
    for attempt in range(opts.max_retries + 1):
        run = measure(side, opts)
        _announce(side, run, opts)
        bad = run.others_cores > opts.max_others
        note = ""
        if bad:
            note = " DISTURBED: rerun" if attempt < opts.max_retries else " DISTURBED: no retries left"
        figure = ""
        if len(run.times) == 1:
            lo, med = next(iter(run.times.values()))
            figure = f"{med:.4g} {side.unit} median, {lo:.4g} min | "
        print(f"#   {label} {side.name}: {figure}{run.wall_s:.1f} s wall, own CPU {run.child_cpu_s:.1f} s, "
              f"others {run.others_cores:.2f} cores ({100 * run.others_cores / os.cpu_count():.0f}% of the "
              f"machine){note}", flush=True)
        if not bad:
            return run
        tries.append(run)
    kept = min(tries, key=lambda r: r.others_cores)
    kept.disturbed = True
    if len(tries) > 1:
        print(f"#   {label} {side.name}: kept the least disturbed try (others {kept.others_cores:.2f} cores)")
    return kept


def run_rounds(sides, opts, title, rounds=None):
    """Rounds x sides runs, interleaved (round 1: every side in order, then round 2, ...).
    Returns {side name: [Run per round]}."""
    rounds = opts.rounds if rounds is None else rounds
    print(f"# {title}: {rounds} round(s) of {', '.join(s.name for s in sides)}", flush=True)
    runs = {s.name: [] for s in sides}
    for r in range(rounds):
        for s in sides:
            runs[s.name].append(run_undisturbed(s, opts, f"round {r + 1}/{rounds}"))
    return runs


# ---------------------------------------------------------------------------------------------
# Figures over rounds

@dataclasses.dataclass
class Figure:
    min: float        # the best round's min
    median: float     # the median of the rounds' medians
    rounds: int
    disturbed: int    # rounds kept although disturbed

    def flag(self):
        """A mark for tables: '*' when a disturbed round went into the figure."""
        return "*" if self.disturbed else ""


def over_rounds(runs, key=None):
    return Figure(min(r.times[key][0] for r in runs), statistics.median(r.times[key][1] for r in runs),
                  len(runs), sum(r.disturbed for r in runs))


def fastest(candidates, opts, title, key=None):
    """The candidate side with the lowest median over --calibration-rounds rounds (no run when
    there is one candidate). Prints each candidate's figure and the choice."""
    if len(candidates) == 1:
        return candidates[0]
    runs = run_rounds(candidates, opts, f"calibration, {title}", rounds=opts.calibration_rounds)
    figures = {s.name: over_rounds(runs[s.name], key) for s in candidates}
    best = min(candidates, key=lambda s: figures[s.name].median)
    print(f"# calibration, {title}: " +
          ", ".join(f"{n} {f.median:.4g}{f.flag()}" for n, f in figures.items()) +
          f" {candidates[0].unit} (median) -> reference: {best.name}", flush=True)
    return best


def best_per_key(runs, names, key):
    """Among sides that all ran in the rounds, the one with the lowest median for `key`:
    (name, Figure)."""
    figures = [(n, over_rounds(runs[n], key)) for n in names]
    return min(figures, key=lambda nf: nf[1].median)


def disturbed_note(figures):
    if any(f.disturbed for f in figures):
        return "\n(*: a round kept although other processes disturbed it; see the round lines above)"
    return ""
