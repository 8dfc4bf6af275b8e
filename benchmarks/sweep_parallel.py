"""The same 4-job sweep (convert a model, the default edgesam unless --model, to fp32, fp16,
mixed, optype), run one job after the other (hydra/launcher=basic) and with Hydra's joblib
launcher (n_jobs=2), the two interleaved in one run; prints each wall time and the ratio
joblib / sequential.
    python -m benchmarks.sweep_parallel [--repeats 3] [--model tiny]
Each joblib worker imports coremltools (and torch) once, about 3 s here; the driver imports
neither (pipeline/cli.py, a stage's imports). tiny's conversions take about 6 s each, so that
start-up weighs more there.
Each sweep is a fresh `python -m pipeline.convert -m ...` process, so both pay the same
start-up; the jobs write to separate artifact folders per launcher (one shared trace).

Each round also measures what the machine gives two processes at once: a plain Python loop
alone, then two copies side by side. With two copies at s times the time of one, 4 equal jobs
on 2 workers cannot take less than s/2 of the time one by one: the "floor" printed beside the
ratio (on a 2-vCPU VM, s moves between about 1.05 and 1.5 from hour to hour).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

JOBS = "precision=fp32,fp16,mixed,optype"
LAUNCHERS = {"sequential": ["hydra/launcher=basic"],
             "joblib": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}


def run(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    if proc.returncode:
        sys.exit(f"error: {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - started


SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(20_000_000):\n    x += i\n" \
       "print(time.perf_counter() - t)"


def floor() -> float:
    """s/2, where s is how much slower two copies of a Python loop run side by side than one
    alone (each copy's own time, averaged)."""
    def spin(copies: int) -> float:
        procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.PIPE, text=True)
                 for _ in range(copies)]
        return statistics.mean(float(p.communicate()[0]) for p in procs)
    return spin(2) / spin(1) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="edgesam", help="a conf/model name (default: edgesam)")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = [f"model={opts.model}", "tracking.enabled=false"]
        run(["pipeline.trace", *base, f"paths.artifacts={work / 'trace-only'}"], work)
        times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
        floors: list[float] = []
        for _ in range(opts.repeats):
            floors.append(floor())
            for name, launcher in LAUNCHERS.items():  # interleaved: seq, joblib, seq, ...
                art = work / name
                shutil.rmtree(art, ignore_errors=True)
                shutil.copytree(work / "trace-only", art)
                times[name].append(run(["pipeline.convert", "-m", *base, f"paths.artifacts={art}",
                                        JOBS, *launcher], work))
    seq, par = (statistics.median(times[n]) for n in LAUNCHERS)
    print(f"\n4 convert jobs of model {opts.model} on {os.cpu_count()} cores (median of "
          f"{opts.repeats}, interleaved)")
    print(f"{'launcher':22s} {'wall s':>7s}")
    print(f"{'basic (one by one)':22s} {seq:7.1f}")
    print(f"{'joblib, n_jobs=2':22s} {par:7.1f}")
    rounds = " ".join(f"{p / s:.2f}x (floor {f:.2f}x)"
                      for s, p, f in zip(*times.values(), floors))
    print(f"ratio joblib / sequential: {par / seq:.2f}x (target <= 0.65x); this machine's floor "
          f"for two processes: {statistics.median(floors):.2f}x")
    print(f"each round: {rounds}")


if __name__ == "__main__":
    main()
