"""Stage 3, compile: make a converted package runnable on the available backend.

- coreml (macOS): compiles model.mlpackage to model.mlmodelc with coremltools.
- emulator (elsewhere): no .mlmodelc can be made; instead it builds the emulator's execution
  plan, checks that it implements every op of the program, and records why no Core ML
  compilation happened.
Writes artifacts/compile/<variant>/compile.json (and model.mlmodelc on macOS).
"""
from __future__ import annotations

import logging
import platform
import time

from omegaconf import DictConfig

from pipeline import artifacts, lineage
from pipeline.backends import compile_package, not_on_macos_reason, resolve_backend
from pipeline.cli import main_for
from pipeline.config import to_dict, variant_dir
from pipeline.emulator import Emulator

log = logging.getLogger("pipeline.compile")


def run(cfg: DictConfig) -> None:
    variant = cfg.precision.name
    convert_dir = variant_dir(cfg, "convert")
    rerun = f"python -m pipeline.convert model={cfg.model.name} precision={variant}"
    converted = artifacts.open_output(convert_dir, rerun)
    lineage.check_section(converted, "precision", to_dict(cfg.precision), convert_dir, rerun)
    package = convert_dir / "model.mlpackage"
    backend = resolve_backend(cfg.backend)
    out_dir = variant_dir(cfg, "compile")
    started = time.perf_counter()
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        record = {"variant": variant, "backend": backend, "system": platform.system()}
        if backend == "coreml":
            compiled = compile_package(package, tmp)
            record.update(compiled=compiled.name, coreml_compiled=True)
        else:
            emulator = Emulator(package, cfg.evaluate.emulator_mode, "cpu")
            record.update(
                coreml_compiled=False,
                reason=not_on_macos_reason().replace("nothing was measured",
                                                     "no .mlmodelc was compiled"),
                emulator_plan={"steps": len(emulator.plan.steps),
                               "consts": len(emulator.plan.consts),
                               "op_types": emulator.plan.op_types(),
                               "all_ops_supported": True})
        artifacts.write_json(tmp / "compile.json", record)
        artifacts.write_lineage(tmp, "compile", {"backend": backend},
                                {"convert": converted["fingerprint"]})
    log.info("%s: %s compile ready in %.1f s -> %s", variant, backend,
             time.perf_counter() - started, out_dir)


def main() -> None:
    main_for("compile", run)


if __name__ == "__main__":
    main()
