"""What every backend does for one variant, and the records it answers with.

A backend is bound to one converted package (and its compiled model, if any):
  compile(dest)            make the package runnable; returns the compile record (JSON-able)
  predict(inputs, units)   outputs for every sample, stacked, under one compute-units setting
  placement(units)         a placement Table: one row per op, the schema below
  latency(inputs, units)   a Latency figure: estimated ms always, measured ms where measured

Measured (MLComputePlan) and estimated (device model) placement tables share one schema,
PLACEMENT_FIELDS, keyed by op name (the ``name`` column of the emulator's ops.csv):
  index, op, op_type, dtype   the op, in program order
  device                      NE | GPU | CPU, the one it runs on (preferred device)
  supported                   the devices that could run it, comma-separated
  cost                        its share of the run's time, in [0, 1]
  ms                          its time: the device model's, or cost x measured latency
  source                      where the row came from (measured / estimated, chip, ...)
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.emulator.numerics import numerics_from

PLACEMENT_FIELDS = ("index", "op", "op_type", "dtype", "device", "supported", "cost", "ms",
                    "source")
DEVICES = ("NE", "GPU", "CPU")


@dataclass(frozen=True)
class Settings:
    chip: str = "M2"
    compute_units: str = "ALL"                   # the setting placement/latency headline uses
    latency_units: tuple[str, ...] = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
    warmup: int = 3
    runs: int = 20
    emulator_device: str = "cpu"
    numerics: Any = None                         # pipeline.emulator.numerics.Numerics

    @staticmethod
    def from_config(cfg) -> "Settings":
        lat = cfg.evaluate.latency
        units = tuple(dict.fromkeys([*lat.compute_units, cfg.device.compute_units]))
        return Settings(str(cfg.device.chip), str(cfg.device.compute_units), units,
                        int(lat.warmup), int(lat.runs), str(cfg.evaluate.device),
                        numerics_from(cfg))


@dataclass
class Table:
    """Per-op placement under one compute-units setting."""
    compute_units: str
    source: str
    rows: list[dict]
    note: str | None = None            # why a measurement fell back to the estimate
    agreement: float | None = None     # measured vs estimated device, share of ops (macOS)

    def summary(self) -> dict:
        out = {"source": self.source, "compute_units": self.compute_units,
               **summarize_table(self.rows)}
        if self.note:
            out["note"] = self.note
        if self.agreement is not None:
            out["estimate_agreement"] = round(self.agreement, 4)
        return out

    def write(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(PLACEMENT_FIELDS))
            w.writeheader()
            w.writerows({k: r.get(k) for k in PLACEMENT_FIELDS} for r in self.rows)


@dataclass
class Latency:
    """One compute-units setting's latency: the estimate always, the measurement on macOS."""
    compute_units: str
    status: str                        # "estimated" | "measured"
    source: str
    estimated_ms: float
    measured_ms: float | None = None   # median after warm-up
    p90_ms: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def estimate_error(self) -> float | None:
        """(estimated - measured) / measured: how far the device model was off here."""
        if self.measured_ms is None or self.measured_ms <= 0:
            return None
        return (self.estimated_ms - self.measured_ms) / self.measured_ms


def summarize_table(rows: list[dict]) -> dict:
    """Share of ops and of time per device, and device switches along the program."""
    n = max(1, len(rows))
    total = sum(float(r.get("cost") or 0.0) for r in rows) or 1.0
    out: dict = {"ops": len(rows)}
    for dev in DEVICES:
        mine = [r for r in rows if r["device"] == dev]
        out[f"{dev.lower()}_op_share"] = round(len(mine) / n, 4)
        out[f"{dev.lower()}_time_share"] = round(
            sum(float(r.get("cost") or 0.0) for r in mine) / total, 4)
    devices = [r["device"] for r in rows]
    out["device_switches"] = sum(1 for a, b in zip(devices, devices[1:]) if a != b)
    return out


def agreement(measured: list[dict], estimated: list[dict]) -> float | None:
    """Share of ops, joined by name, that the estimate puts on the measured device."""
    guess = {r["op"]: r["device"] for r in estimated}
    both = [r for r in measured if r["op"] in guess]
    if not both:
        return None
    return sum(r["device"] == guess[r["op"]] for r in both) / len(both)


class Backend(Protocol):
    name: str
    accuracy_source: str
    per_unit_predictions: bool         # do predictions differ per compute-units setting?

    def compile(self, dest: Path) -> dict: ...

    def predict(self, inputs: dict[str, np.ndarray], compute_units: str) -> dict[str, np.ndarray]: ...

    def placement(self, compute_units: str) -> Table: ...

    def latency(self, inputs: dict[str, np.ndarray], compute_units: str) -> Latency: ...
