"""The device model's figures for one package, as backend records: every backend has them
(the emulator reports them; the coreml backend logs them beside its measurements)."""
from __future__ import annotations

from pathlib import Path

from pipeline.backends.protocol import Latency, Table


class Estimates:
    """pipeline.device.estimate over one package's op records, once per compute-units setting."""

    def __init__(self, package: Path, chip: str):
        self.package = Path(package)
        self.chip = chip
        self._records = None
        self._by_units: dict = {}

    def records(self):
        from pipeline import programs

        if self._records is None:
            self._records = programs.read_ops(self.package)
        return self._records

    def get(self, compute_units: str):
        from pipeline.device import estimate

        if compute_units not in self._by_units:
            self._by_units[compute_units] = estimate(self.records(), chip=self.chip,
                                                     compute_units=compute_units)
        return self._by_units[compute_units]

    def calibration(self, compute_units: str) -> dict:
        return dict(self.get(compute_units).calibration or {})

    def table(self, compute_units: str) -> Table:
        est = self.get(compute_units)
        total = sum(o.ms for o in est.ops) or 1.0
        rows = [{"index": o.index, "op": o.name, "op_type": o.op_type, "dtype": o.dtype,
                 "device": o.device, "supported": o.supported, "cost": round(o.ms / total, 6),
                 "ms": round(o.ms, 6), "source": est.source} for o in est.ops]
        return Table(compute_units, est.source, rows)

    def latency(self, compute_units: str) -> Latency:
        est = self.get(compute_units)
        return Latency(compute_units, "estimated", est.source, round(float(est.latency_ms), 4),
                       extra={"calibration": dict(est.calibration or {})})
