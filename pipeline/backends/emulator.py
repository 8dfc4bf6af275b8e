"""The ``emulator`` backend (everywhere): predictions from pipeline/emulator, placement and
latency from the device model (pipeline/device) for the configured chip, labelled
"estimated" with the chip and the model's calibration error. The emulator's wall time is
never a latency."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from pipeline.metrics import stack_samples
from pipeline.backends.estimated import Estimates
from pipeline.backends.protocol import Latency, Settings, Table


class EmulatorBackend:
    name = "emulator"
    accuracy_source = "emulated"
    per_unit_predictions = False   # the emulator computes one way, whatever the setting

    def __init__(self, package: Path, compiled: Path | None, settings: Settings):
        self.package = package
        self.settings = settings
        self.estimates = Estimates(package, settings.chip)
        self._emulator = None

    def emulator(self):
        from pipeline.emulator import Emulator

        if self._emulator is None:
            self._emulator = Emulator(self.package, device=self.settings.emulator_device,
                                      numerics=self.settings.numerics)
        return self._emulator

    def compile(self, dest: Path) -> dict:
        plan = self.emulator().plan
        return {"coreml_compiled": False,
                "reason": f"Core ML compiles only on macOS; this is {platform.system()} "
                          f"{platform.machine()}, so no .mlmodelc was compiled",
                "emulator_plan": {"steps": len(plan.steps), "consts": len(plan.consts),
                                  "op_types": plan.op_types(), "all_ops_supported": True}}

    def predict(self, inputs: dict[str, np.ndarray], compute_units: str) -> dict[str, np.ndarray]:
        emulator = self.emulator()
        n = len(next(iter(inputs.values())))
        outs = [emulator.run({k: v[i] for k, v in inputs.items()}) for i in range(n)]
        return stack_samples(outs)

    def placement(self, compute_units: str) -> Table:
        return self.estimates.table(compute_units)

    def latency(self, inputs: dict[str, np.ndarray], compute_units: str) -> Latency:
        return self.estimates.latency(compute_units)
