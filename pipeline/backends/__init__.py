"""The backends behind one interface (protocol.py): where a variant runs and who says so.

- ``emulator`` (everywhere, emulator.py): predictions from pipeline/emulator; placement and
  latency are the device model's estimates (pipeline/device) for the configured chip.
- ``coreml`` (macOS, coreml.py): measured with Core ML through coremltools: .mlmodelc, predict
  per compute-units setting, wall-clock latency, MLComputePlan placement; the device model's
  estimate is logged beside every measurement, with its error.

Stages call ``for_config(cfg, package, compiled)`` and the protocol; no stage branches on the
backend's name.
"""
from __future__ import annotations

import platform
from pathlib import Path

from pipeline.backends.protocol import (PLACEMENT_FIELDS, Backend, Settings, Table,
                                        summarize_table)
from pipeline.errors import UserError

__all__ = ["Backend", "PLACEMENT_FIELDS", "Settings", "Table", "for_config", "is_macos",
           "resolve_backend", "summarize_table"]


def is_macos() -> bool:
    return platform.system() == "Darwin"


def resolve_backend(requested: str) -> str:
    if requested == "auto":
        return "coreml" if is_macos() else "emulator"
    if requested == "coreml" and not is_macos():
        raise UserError("backend 'coreml' needs macOS (Core ML prediction, compilation and "
                        f"MLComputePlan exist only there); this is {platform.system()}",
                        "use backend=emulator (or auto)")
    return requested


def for_config(cfg, package: Path, compiled: Path | None = None) -> Backend:
    """The backend ``cfg.backend`` names, bound to one variant's package (and its compiled
    model, once the compile stage made one)."""
    from pipeline.backends.coreml import CoreMLBackend
    from pipeline.backends.emulator import EmulatorBackend

    name = resolve_backend(cfg.backend)
    settings = Settings.from_config(cfg)
    cls = CoreMLBackend if name == "coreml" else EmulatorBackend
    return cls(Path(package), compiled, settings)
