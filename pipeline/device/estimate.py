"""Estimated placement and latency of a Core ML program on a named chip, without a device.

estimate(read_ops(package), chip="M2", compute_units="ALL") places every op (partition.py)
and sums the per-op roofline times (cost.py), dispatch floors and switches. Every figure it
returns says it is estimated, names the chip and the model's validated error (data/fit.json).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline.device.chips import get_chip
from pipeline.device.cost import FIT_FILE, UNITS, Features, Params, op_times
from pipeline.device.partition import partition
from pipeline.errors import UserError
from pipeline.programs import OpRecord

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")
ALLOWED = {"CPU_ONLY": ("CPU",), "CPU_AND_GPU": ("GPU", "CPU"), "CPU_AND_NE": ("NE", "CPU"),
           "ALL": ("NE", "GPU", "CPU")}


@dataclass
class OpEstimate:
    index: int
    name: str
    op_type: str
    dtype: str
    device: str          # NE | GPU | CPU
    supported: str       # units able to run it, e.g. "NE,GPU,CPU"
    ms: float            # estimated time on its device (overheads included)
    reason: str


@dataclass
class DeviceEstimate:
    chip: str
    compute_units: str
    ops: list[OpEstimate]
    latency_ms: float
    switches: int
    segments: list[dict]
    calibration: dict = field(default_factory=dict)
    source: str = ""

    def summary(self) -> dict:
        """Flat, JSON-able: op and time share per unit, switches, latency, chip, source."""
        n = max(1, len(self.ops))
        busy = sum(o.ms for o in self.ops) or 1.0
        out: dict = {"chip": self.chip, "compute_units": self.compute_units,
                     "latency_ms": round(self.latency_ms, 4), "switches": self.switches,
                     "segments": len(self.segments), "ops": len(self.ops)}
        for unit in UNITS:
            mine = [o for o in self.ops if o.device == unit]
            out[f"{unit.lower()}_op_share"] = round(len(mine) / n, 4)
            out[f"{unit.lower()}_time_share"] = round(sum(o.ms for o in mine) / busy, 4)
        out["median_abs_error"] = self.calibration.get("median_abs_error")
        out["source"] = self.source
        return out

    def rows(self) -> list[dict]:
        """The per-op table (same columns as the measured MLComputePlan table, joined to
        ops.csv by op name): cost is the op's share of the summed op times, as Apple's
        MLComputePlan cost weight is a share in [0, 1]."""
        busy = sum(o.ms for o in self.ops) or 1.0
        return [{"op": o.name, "op_type": o.op_type, "dtype": o.dtype, "device": o.device,
                 "supported": o.supported, "cost": round(o.ms / busy, 6),
                 "ms": round(o.ms, 6), "reason": o.reason, "index": o.index} for o in self.ops]


def calibration() -> dict:
    if not FIT_FILE.is_file():
        return {"fit": "uncalibrated priors", "median_abs_error": None}
    return json.loads(FIT_FILE.read_text()).get("calibration", {})


def source_line(chip: str, cal: dict) -> str:
    err = cal.get("median_abs_error")
    valid = (f"leave-one-family-out median |error| {err:.0%}" if err is not None
             else "uncalibrated")
    if str(cal.get("chips", {}).get(chip, "")).startswith("no published row"):
        valid += f", no published {chip} measurement"
    return f"estimated (device model, chip {chip}; {valid})"


def check_units(compute_units: str) -> tuple[str, ...]:
    if compute_units not in ALLOWED:
        raise UserError(f"unknown compute units '{compute_units}'",
                        f"choose one of: {', '.join(COMPUTE_UNITS)}")
    return ALLOWED[compute_units]


def placed_ops(records: list[OpRecord]) -> list[OpRecord]:
    """The ops that get a unit: compute ops and casts (consts and constexpr weights do not)."""
    return [r for r in records if r.is_compute or r.op_type == "cast"]


def estimate(records: list[OpRecord], chip: str = "M2", compute_units: str = "ALL",
             params: Params | None = None) -> DeviceEstimate:
    spec = get_chip(chip)
    allowed = check_units(compute_units)
    p = params or Params.load()
    ops = placed_ops(records)
    feats = Features.of(ops)
    times = op_times(feats, allowed, spec, p)
    devices, total = partition(times, spec)
    result = []
    for r, units, why, t, dev in zip(ops, feats.units, feats.reasons, times, devices):
        reason = ("fastest allowed unit" if dev == min(t, key=t.get)
                  else "cheaper with its neighbours (dispatch floor, switches)")
        if "NE" not in units and "NE" in allowed:
            reason = f"{why}; {reason}"
        elif compute_units != "ALL":
            reason = f"compute units {compute_units}; {reason}"
        result.append(OpEstimate(r.index, r.name, r.op_type, r.dtype, dev, ",".join(units),
                                 t[dev], reason))
    segments = segments_of(result, spec)
    cal = calibration()
    return DeviceEstimate(chip, compute_units, result, total, max(0, len(segments) - 1),
                          segments, cal, source_line(chip, cal))


def segments_of(ops: list[OpEstimate], spec) -> list[dict]:
    segments: list[dict] = []
    for o in ops:
        if segments and segments[-1]["device"] == o.device:
            seg = segments[-1]
            seg["last_op"], seg["ops"], seg["ms"] = o.name, seg["ops"] + 1, seg["ms"] + o.ms
        else:
            overhead = spec.dispatch_ms(o.device) + (spec.switch_ms if segments else 0.0)
            segments.append({"device": o.device, "first_op": o.name, "last_op": o.name,
                             "ops": 1, "ms": overhead + o.ms})
    for seg in segments:
        seg["ms"] = round(seg["ms"], 6)
    return segments
