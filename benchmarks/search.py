"""precision=auto on each built-in model: evaluations used against 2·k·log2(N), FP32 ops
chosen, accuracy reached, the device model's estimated Neural Engine share and latency (M2,
ALL: the search's objective), wall time.
    python -m benchmarks.search [--models edgesam minilm tiny]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pipeline import artifacts, programs
from pipeline.cli import setup_logging
from pipeline.config import load_config

CASES = {  # model -> extra overrides (a stricter target for minilm, whose FP16 already passes)
    "edgesam": [],
    "tiny": [],
    "minilm": [],
    "minilm@60dB": ["precision.target.min_snr_db=60", "search.max_evaluations=400"],
}


def bench(case: str, workdir: Path) -> dict:
    from pipeline import convert, trace

    model = case.split("@")[0]
    base = [f"model={model}", f"paths.artifacts={workdir}", "tracking.enabled=false"]
    trace.run(load_config(base))
    started = time.perf_counter()
    convert.run(load_config(base + ["precision=auto", *CASES[case]]))
    wall = time.perf_counter() - started
    report = artifacts.read_json(workdir / "convert" / "auto" / "report.json")
    s = report["search"]
    from pipeline.device import estimate

    ops = programs.read_ops(workdir / "convert" / "auto" / "model.mlpackage")
    est = estimate(ops, chip="M2", compute_units="ALL").summary()
    return {"case": case, "N": s["float_ops"], "evals": s["evaluations"], "bound": s["bound_2klog2n"],
            "fp32": len(s["fp32_ops"]), "snr": s["verified"]["snr_db"],
            "cos": s["verified"]["cosine_min"], "ne": est["ne_op_share"],
            "ms": est["latency_ms"], "search_s": wall, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(CASES))
    args = parser.parse_args()
    setup_logging()
    rows = []
    for case in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(bench(case, Path(tmp)))
    print("\nprecision=auto (accuracy emulated; NE share and ms estimated by the device model, "
          "chip M2, ALL)")
    print(f"{'model':12s} {'N ops':>6s} {'evals':>6s} {'2klog2N':>8s} {'FP32 ops':>8s} {'SNR dB':>7s} "
          f"{'cos min':>9s} {'NE share':>8s} {'est. ms':>8s} {'search s':>8s} {'wall s':>7s}")
    for r in rows:
        print(f"{r['case']:12s} {r['N']:6d} {r['evals']:6d} {r['bound']:8.1f} {r['fp32']:8d} "
              f"{r['snr']:7.1f} {r['cos']:9.6f} {r['ne']:8.3f} {r['ms']:8.2f} {r['search_s']:8.1f} "
              f"{r['wall_s']:7.1f}")


if __name__ == "__main__":
    main()
