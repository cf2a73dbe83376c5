"""The fair PyTorch setup of the developers' guide, shared by the comparison scripts.

Debian's torch 1.13 links OpenBLAS 0.3.21, which does not know recent processors and falls back to
slow kernels; its pthread build also fights torch's OpenMP pool. So the reference runs with the
OpenMP OpenBLAS, a core type forced (OpenBLAS falls back by itself when the processor lacks it) and
every thread count set before numpy or torch load.
"""
import os
import re
import subprocess

OPENBLAS_OPENMP = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
TORCH_PYTHON = "/usr/bin/python3"


def torch_env(threads):
    env = dict(os.environ)
    env.update({
        "LD_LIBRARY_PATH": OPENBLAS_OPENMP,
        "OPENBLAS_CORETYPE": "Cooperlake",
        "OPENBLAS_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def describe_torch_setup():
    """One line naming the OpenBLAS library and core type PyTorch actually uses here."""
    env = torch_env(1)
    env["OPENBLAS_VERBOSE"] = "2"
    out = subprocess.run([TORCH_PYTHON, "-c", "import torch; print('torch', torch.__version__)"],
                         env=env, capture_output=True, text=True)
    core = re.search(r"Core: (\S+)", out.stderr)
    have_lib = os.path.isdir(OPENBLAS_OPENMP)
    return (f"{out.stdout.strip()}, OpenBLAS {'openmp' if have_lib else 'default (openmp build missing!)'}"
            f", OPENBLAS_CORETYPE=Cooperlake -> core {core.group(1) if core else '?'}"
            f", OMP/OPENBLAS threads = torch.set_num_threads = T")


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def summary(xs):
    xs = sorted(xs)
    n = len(xs)
    med = xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])
    return xs[0], med
