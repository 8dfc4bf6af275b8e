"""Emulated forward time / PyTorch eager FP32 forward time, per built-in model, measured
side by side in one run (interleaved, median of several repetitions).

Targets (issue 3): at most 1.5 for the FP32 program, 2 for the FP16 one. Issue 12: the FP16
program under device numerics (every op on the unit the placement picks; NE profile for most)
at most 2.5, under ieee numerics at most 1.5, both measured in the same run.
    python -m benchmarks.emulator_speed [--models edgesam minilm tiny] [--reps 5]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.cli import setup_logging
from pipeline.config import load_config
from pipeline.emulator import Emulator

log = logging.getLogger("benchmarks.emulator_speed")


def prepare(model: str, workdir: Path):
    from pipeline import convert, trace

    base = [f"model={model}", f"paths.artifacts={workdir}", "tracking.enabled=false"]
    if model == "edgesam":
        base.append("model.data.count=1")
    trace.run(load_config(base))
    for precision in ("fp32", "fp16"):
        convert.run(load_config(base + [f"precision={precision}"]))
    with np.load(workdir / "trace" / "inputs.npz") as npz:
        feeds = {k: npz[k][0] for k in npz.files}
    from pipeline.models import TupleOutputs, build_model

    cfg = load_config(base)
    eager = TupleOutputs(build_model(dict(cfg.model))).eval()
    return eager, feeds


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench(model: str, reps: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        eager, feeds = prepare(model, work)
        args = [torch.from_numpy(v) for v in feeds.values()]
        emu32 = Emulator(work / "convert" / "fp32" / "model.mlpackage", mode)
        emu16 = Emulator(work / "convert" / "fp16" / "model.mlpackage", mode)
        dev16 = Emulator(work / "convert" / "fp16" / "model.mlpackage", "device")
        with torch.inference_mode():
            runs = {"eager": lambda: eager(*args), "fp32": lambda: emu32.run(feeds),
                    "fp16": lambda: emu16.run(feeds), "device": lambda: dev16.run(feeds)}
            for fn in runs.values():
                fn()  # warm-up
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(reps):  # interleaved, so drift hits all three alike
                for k, fn in runs.items():
                    times[k] += timed(fn, 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "eager_ms": med["eager"] * 1e3, "fp32_ms": med["fp32"] * 1e3,
            "fp16_ms": med["fp16"] * 1e3, "fp32_ratio": med["fp32"] / med["eager"],
            "fp16_ratio": med["fp16"] / med["eager"], "device_ms": med["device"] * 1e3,
            "device_ratio": med["device"] / med["eager"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["edgesam", "minilm", "tiny", "custom"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mode", default="fp32_compute")
    args = parser.parse_args()
    setup_logging()
    rows = [bench(m, args.reps, args.mode) for m in args.models]
    print(f"\nemulator ({args.mode}) forward time / PyTorch eager FP32, median of {args.reps}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':10s} {'eager ms':>10s} {'fp32 ms':>10s} {'fp16 ms':>10s} {'device ms':>10s} "
          f"{'fp32 x':>8s} {'fp16 x':>8s} {'device x':>9s}")
    for r in rows:
        print(f"{r['model']:10s} {r['eager_ms']:10.1f} {r['fp32_ms']:10.1f} {r['fp16_ms']:10.1f} "
              f"{r['device_ms']:10.1f} {r['fp32_ratio']:8.2f} {r['fp16_ratio']:8.2f} "
              f"{r['device_ratio']:9.2f}")
    print(f"targets: fp32 <= 1.5, fp16 ({args.mode}) <= 1.5 (issue 12), "
          "fp16 under device numerics <= 2.5")


if __name__ == "__main__":
    main()
