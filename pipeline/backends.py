"""The two backends behind one interface.

- ``coreml`` (macOS only): compile to .mlmodelc, predict, measure latency per compute-unit
  setting, and read MLComputePlan placement, all through coremltools' documented API.
- ``emulator`` (everywhere): runs the saved program op by op (pipeline/emulator); its
  placement is an estimate (pipeline/placement.py) and it never reports latency.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.emulator.runtime import quiet
from pipeline.errors import UserError

COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def is_macos() -> bool:
    return platform.system() == "Darwin"


def coremltools():
    """Import coremltools without its Linux proxy warnings on stderr."""
    with quiet():
        import coremltools as ct
    return ct


def resolve_backend(requested: str) -> str:
    if requested == "auto":
        return "coreml" if is_macos() else "emulator"
    if requested == "coreml" and not is_macos():
        raise UserError("backend 'coreml' needs macOS (Core ML prediction, compilation and "
                        f"MLComputePlan exist only there); this is {platform.system()}",
                        "use backend=emulator (or auto)")
    return requested


def not_on_macos_reason() -> str:
    return (f"Core ML runs only on macOS; this is {platform.system()} {platform.machine()}, "
            "so nothing was measured")


# ------------------------------------------------------------------- coreml (macOS)

def compile_package(package: Path, dest: Path) -> Path:
    """Compile .mlpackage -> .mlmodelc with coremltools (macOS)."""
    ct = coremltools()
    compiled = Path(ct.models.utils.compile_model(str(package)))
    import shutil

    target = dest / "model.mlmodelc"
    shutil.copytree(compiled, target)
    return target


def _feed(inputs: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in inputs.items()}


def coreml_predict(compiled: Path, inputs: dict[str, np.ndarray],
                   compute_units: str = "ALL") -> list[dict[str, np.ndarray]]:
    ct = coremltools()
    model = ct.models.CompiledMLModel(str(compiled), getattr(ct.ComputeUnit, compute_units))
    n = len(next(iter(inputs.values())))
    return [{k: np.asarray(v, dtype=np.float32) for k, v in model.predict(_feed(inputs, i)).items()}
            for i in range(n)]


@dataclass
class Latency:
    compute_units: str
    median_ms: float
    p90_ms: float
    runs: int


def measure_latency(compiled: Path, inputs: dict[str, np.ndarray], compute_units: str,
                    warmup: int, runs: int) -> Latency:
    ct = coremltools()
    model = ct.models.CompiledMLModel(str(compiled), getattr(ct.ComputeUnit, compute_units))
    feed = _feed(inputs, 0)
    for _ in range(warmup):
        model.predict(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        model.predict(feed)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return Latency(compute_units, statistics.median(times),
                   times[min(len(times) - 1, int(0.9 * len(times)))], runs)


def compute_plan(compiled: Path, compute_units: str) -> list[dict[str, Any]]:
    """Per-op placement from MLComputePlan (macOS 14.4+): preferred and supported devices,
    estimated relative cost."""
    ct = coremltools()
    from coremltools.models.compute_plan import MLComputePlan

    plan = MLComputePlan.load_from_path(path=str(compiled),
                                        compute_units=getattr(ct.ComputeUnit, compute_units))
    program = plan.model_structure.program
    rows = []
    for function in program.functions.values():
        for op in function.block.operations:
            usage = plan.get_compute_device_usage_for_mlprogram_operation(op)
            cost = plan.get_estimated_cost_for_mlprogram_operation(op)
            if usage is None:
                continue
            name = op.outputs[0].name if op.outputs else op.operator_name
            rows.append({
                "op": name, "op_type": op.operator_name,
                "device": _device_name(usage.preferred_compute_device),
                "supported": ",".join(_device_name(d) for d in usage.supported_compute_devices),
                "cost": float(cost.weight) if cost is not None else None,
            })
    return rows


def _device_name(device) -> str:
    name = type(device).__name__
    return {"MLCPUComputeDevice": "CPU", "MLGPUComputeDevice": "GPU",
            "MLNeuralEngineComputeDevice": "NE"}.get(name, name)
