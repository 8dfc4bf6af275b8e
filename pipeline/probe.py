"""Measure what this Mac's Neural Engine computes, and write it as a numerics profile.

    python -m pipeline.probe [--out ne_measured.yaml] [--chip M4]

Runs a suite of single-op programs (tiny torch models, traced, converted to FP16 by
coremltools) and reads back the engine's cliffs, table errors and special values. On macOS
they run through Core ML (CPU_AND_NE and ALL; the profile takes CPU_AND_NE); elsewhere they run
through the emulator under the published `ne` profile, which must reproduce the published
values (tests/test_numerics.py). The written profile is usable in place of the published one:
`evaluate.numerics_profile=ne_measured.yaml`.
"""
from __future__ import annotations

import argparse
import logging
import math
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

log = logging.getLogger("pipeline.probe")


def convert_fp16(module: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Trace ``module`` on ``x`` (input named x) and save an FP16 ML program at ``path``."""
    from pipeline.coreml_import import coremltools, quiet

    ct = coremltools()
    with quiet():
        traced = torch.jit.trace(module.eval(), x)
        ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=tuple(x.shape))],
                        convert_to="mlprogram", compute_precision=ct.precision.FLOAT16,
                        minimum_deployment_target=ct.target.iOS16)
        ml.save(str(path))
    return path


class Fn(torch.nn.Module):
    """A one-op model: ``fn(x)`` or ``fn(x, weight)``."""

    def __init__(self, fn, weight=None):
        super().__init__()
        self.fn = fn
        self.w = None if weight is None else torch.nn.Parameter(weight)

    def forward(self, x):
        return self.fn(x) if self.w is None else self.fn(x, self.w)


@dataclass
class Probe:
    name: str
    fn: Callable
    x: np.ndarray
    read: Callable[[np.ndarray, np.ndarray], float]  # (input, output) -> measured value
    weight: torch.Tensor | None = None


def _first(x: np.ndarray, mask: np.ndarray) -> float:
    return float(x[np.argmax(mask)]) if mask.any() else math.nan


def suite() -> list[Probe]:
    sweep = np.linspace(10.2, 10.6, 401, dtype=np.float32)[None]
    lse = np.repeat(np.linspace(7.4, 7.9, 501, dtype=np.float32)[:, None], 32, 1)
    expx = np.linspace(10.9, 11.2, 301, dtype=np.float32)[None]
    sig = np.linspace(-12, 12, 4801, dtype=np.float32)[None]
    fill = np.linspace(32000, 33600, 101, dtype=np.float32)[:, None].repeat(2, 1) / 2
    return [
        Probe("matmul_inf_cliff", torch.matmul, fill,
              lambda x, y: _first(x.sum(1), ~np.isfinite(y[:, 0])), torch.ones(2, 4)),
        Probe("softplus_cliff", torch.nn.functional.softplus, sweep,
              lambda x, y: _first(x[0], y[0] == 0.0)),
        Probe("logsumexp_collapse_c32", lambda t: torch.logsumexp(t, 1), lse,
              lambda x, y: _first(x[:, 0], y == 0.0)),
        Probe("exp_inf", torch.exp, expx, lambda x, y: _first(x[0], ~np.isfinite(y[0]))),
        Probe("sigmoid_max_abs_error", torch.sigmoid, sig,
              lambda x, y: float(np.abs(y - torch.sigmoid(torch.from_numpy(x)).numpy()).max())),
        Probe("tanh_max_abs_error", torch.tanh, sig,
              lambda x, y: float(np.abs(y - np.tanh(x)).max())),
        Probe("softmax_1000_1_2_3", lambda t: torch.softmax(t, -1),
              np.array([[1000, 1, 2, 3]], np.float32), lambda x, y: float(y[0, 0])),
        Probe("nan_plus_1", lambda t: t + 1.0, np.array([[np.nan, 1.0]], np.float32),
              lambda x, y: float(y[0, 0])),
        Probe("sigmoid_of_nan", torch.sigmoid, np.array([[np.nan, 0.0]], np.float32),
              lambda x, y: float(y[0, 0])),
    ]


def run_suite(numerics=None, compute_units: str | None = None) -> dict[str, float]:
    """Every probe's measured value: through Core ML when ``compute_units`` is given (macOS),
    else through the emulator with ``numerics`` (default: the published `ne` profile)."""
    from pipeline.emulator import Emulator
    from pipeline.emulator.numerics import Numerics

    numerics = numerics or Numerics("device", "ne")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in suite():
            package = convert_fp16(Fn(p.fn, p.weight), torch.from_numpy(p.x), Path(tmp) / f"{p.name}.mlpackage")
            if compute_units:
                y = _coreml(package, p.x, compute_units)
            else:
                y = next(iter(Emulator(package, numerics=numerics).run({"x": p.x}).values()))
            out[p.name] = round(p.read(p.x, np.asarray(y, np.float32)), 5)
    return out


def _coreml(package: Path, x: np.ndarray, compute_units: str) -> np.ndarray:
    """One prediction through Core ML on this Mac (macOS only)."""
    from pipeline.coreml_import import coremltools

    ct = coremltools()
    model = ct.models.MLModel(str(package), compute_units=getattr(ct.ComputeUnit, compute_units))
    return next(iter(model.predict({"x": x}).values()))


def to_profile(measured: dict[str, float], chip: str, source: str) -> dict:
    """A profile file: the published `ne` rules, overridden by what was measured."""
    rules: dict = {}
    cliff = measured.get("matmul_inf_cliff")
    if cliff and math.isfinite(cliff):
        rules["accumulator_limit"] = {"value": float(2 ** math.floor(math.log2(cliff))) if
                                      abs(cliff - 2 ** round(math.log2(cliff))) < 64 else cliff,
                                      "source": f"{source}: matmul inf at output {cliff}"}
    sp = measured.get("softplus_cliff")
    if sp and math.isfinite(sp):
        rules["softplus"] = {"value": float(math.exp(sp)), "source": f"{source}: softplus -> 0 at {sp}"}
    return {"unit": "NE", "base": "ne", "chip": chip, "source": source,
            "measurements": measured, "rules": rules}


def main() -> None:
    from pipeline.cli import setup_logging

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ne_measured.yaml")
    parser.add_argument("--chip", default=platform.processor() or "unknown")
    args = parser.parse_args()
    setup_logging()
    if platform.system() == "Darwin":
        measured = {cu: run_suite(compute_units=cu) for cu in ("CPU_AND_NE", "ALL")}
        profile = to_profile(measured["CPU_AND_NE"], args.chip, "measured (Core ML, CPU_AND_NE)")
        profile["measurements_all"] = measured["ALL"]
    else:
        profile = to_profile(run_suite(), args.chip, "emulated (published ne profile; not a measurement)")
    Path(args.out).write_text(yaml.safe_dump(profile, sort_keys=False))
    for k, v in profile["measurements"].items():
        print(f"{k:28s} {v}")
    print(f"wrote {args.out} ({profile['source']})")


if __name__ == "__main__":
    main()
