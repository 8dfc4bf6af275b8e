"""The ``coreml`` backend (macOS): measured with Core ML through coremltools' documented API.

- compile: ``ct.models.utils.compile_model`` -> model.mlmodelc
- predict: ``ct.models.CompiledMLModel(path, compute_units)``, per compute-units setting
  (each unit computes differently, so accuracy is measured under each)
- latency: wall clock of ``predict`` (median and p90 after warm-up); the device model's
  estimate is logged beside it with its error, so every Mac run checks the model
- placement: ``MLComputePlan`` (macOS 14.4+; Apple's MLComputePlan documentation,
  https://developer.apple.com/documentation/coreml/mlcomputeplan-85vdw, availability
  "macOS: 14.4.0"). Below 14.4, or if it raises, the table is the device model's estimate
  with the reason, never a traceback. A row's ms is its cost weight x the measured median
  (what coremltools' MLModelBenchmarker does; shared/DEVICE_EVIDENCE.md section 3).
"""
from __future__ import annotations

import logging
import platform
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline.metrics import stack_samples
from pipeline.backends.estimated import Estimates
from pipeline.backends.protocol import Latency, Settings, Table, agreement

log = logging.getLogger("pipeline.backends.coreml")
COMPUTE_PLAN_MACOS = (14, 4)
DEVICE_NAMES = {"MLCPUComputeDevice": "CPU", "MLGPUComputeDevice": "GPU",
                "MLNeuralEngineComputeDevice": "NE"}


def ct_module():
    from pipeline.coreml_import import coremltools

    return coremltools()


def macos_version() -> tuple[int, ...]:
    """(major, minor) of this macOS; () elsewhere."""
    release = platform.mac_ver()[0]
    return tuple(int(p) for p in release.split(".") if p.isdigit()) if release else ()


def compute_plan_unavailable() -> str | None:
    """Why MLComputePlan cannot run here, or None when it can."""
    version = macos_version()
    if not version:
        return f"MLComputePlan needs macOS 14.4+; this is {platform.system()}"
    if version < COMPUTE_PLAN_MACOS:
        return (f"MLComputePlan needs macOS 14.4+; this is macOS "
                f"{'.'.join(map(str, version))}")
    return None


class CoreMLBackend:
    name = "coreml"
    accuracy_source = "measured (Core ML predict)"
    per_unit_predictions = True

    def __init__(self, package: Path, compiled: Path | None, settings: Settings):
        self.package = package
        self.compiled = compiled
        self.settings = settings
        self.estimates = Estimates(package, settings.chip)
        self._measured: dict[str, Latency] = {}

    # -- compile / predict -------------------------------------------------------------
    def compile(self, dest: Path) -> dict:
        ct = ct_module()
        built = Path(ct.models.utils.compile_model(str(self.package)))
        target = dest / "model.mlmodelc"
        shutil.copytree(built, target)
        self.compiled = target
        return {"coreml_compiled": True, "compiled": target.name}

    def model(self, compute_units: str):
        ct = ct_module()
        if self.compiled is None:
            raise RuntimeError("coreml backend: no compiled model (run the compile stage)")
        return ct.models.CompiledMLModel(str(self.compiled),
                                         getattr(ct.ComputeUnit, compute_units))

    def predict(self, inputs: dict[str, np.ndarray], compute_units: str) -> dict[str, np.ndarray]:
        model = self.model(compute_units)
        n = len(next(iter(inputs.values())))
        outs = [{k: np.asarray(v, dtype=np.float32)
                 for k, v in model.predict({k: v[i] for k, v in inputs.items()}).items()}
                for i in range(n)]
        return stack_samples(outs)

    # -- latency -----------------------------------------------------------------------
    def latency(self, inputs: dict[str, np.ndarray], compute_units: str) -> Latency:
        model = self.model(compute_units)
        feed = {k: v[0] for k, v in inputs.items()}
        for _ in range(self.settings.warmup):
            model.predict(feed)
        times = []
        for _ in range(max(1, self.settings.runs)):
            start = time.perf_counter()
            model.predict(feed)
            times.append((time.perf_counter() - start) * 1000)
        times.sort()
        estimate = self.estimates.latency(compute_units)
        figure = Latency(compute_units, "measured",
                         f"measured (Core ML predict, wall clock, {platform.machine()} "
                         f"macOS {'.'.join(map(str, macos_version()))})",
                         estimate.estimated_ms, round(statistics.median(times), 6),
                         round(times[min(len(times) - 1, int(0.9 * len(times)))], 6),
                         {**estimate.extra, "estimate_source": estimate.source})
        self._measured[compute_units] = figure
        return figure

    # -- placement ---------------------------------------------------------------------
    def placement(self, compute_units: str) -> Table:
        estimated = self.estimates.table(compute_units)
        reason = compute_plan_unavailable()
        if reason is None:
            try:
                rows = self.compute_plan(compute_units)
            except Exception as exc:  # noqa: BLE001 -- any failure falls back, with the reason
                reason = f"MLComputePlan failed: {type(exc).__name__}: {exc}"
            else:
                measured = Table(compute_units, "measured (Core ML MLComputePlan)", rows)
                measured.agreement = agreement(rows, estimated.rows)
                return measured
        log.warning("placement under %s: %s; using the device model's estimate", compute_units,
                    reason)
        estimated.note = reason
        return estimated

    def compute_plan(self, compute_units: str) -> list[dict]:
        """One row per op from MLComputePlan, in PLACEMENT_FIELDS, joined to the program's
        op records by output name (MLComputePlan names ops by their outputs)."""
        ct = ct_module()
        plan = ct.models.compute_plan.MLComputePlan.load_from_path(
            path=str(self.compiled), compute_units=getattr(ct.ComputeUnit, compute_units))
        by_output = {r.output: r for r in self.estimates.records()}
        measured = self._measured.get(compute_units)
        source = "measured (Core ML MLComputePlan)"
        rows = []
        for function in plan.model_structure.program.functions.values():
            for op in function.block.operations:
                usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
                if usage is None:  # consts and the like: no device
                    continue
                cost = plan.get_estimated_cost_for_mlprogram_operation(op)
                output = op.outputs[0].name if op.outputs else op.operator_name
                rec = by_output.get(output)
                weight = float(cost.weight) if cost is not None else 0.0
                rows.append({
                    "index": rec.index if rec else len(rows),
                    "op": rec.name if rec else output, "op_type": op.operator_name,
                    "dtype": rec.dtype if rec else "",
                    "device": device_name(usage.preferred_compute_device),
                    "supported": ",".join(device_name(d) for d in usage.supported_compute_devices),
                    "cost": weight,
                    "ms": None if measured is None else round(weight * measured.measured_ms, 6),
                    "source": source})
        return rows


def device_name(device) -> str:
    name = type(device).__name__
    return DEVICE_NAMES.get(name, name)
