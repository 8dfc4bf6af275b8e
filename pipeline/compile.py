"""Stage 3, compile: make a converted package runnable on the configured backend.

The backend (pipeline/backends) does the work: ``coreml`` compiles model.mlpackage to
model.mlmodelc with coremltools (macOS); ``emulator`` builds the emulator's execution plan,
checks that it implements every op, and records why no Core ML compilation happened.
Writes artifacts/compile/<variant>/compile.json (and model.mlmodelc on macOS).
"""
from __future__ import annotations

import logging
import platform
import time

from omegaconf import DictConfig

from pipeline import artifacts, lineage
from pipeline.cli import main_for
from pipeline.config import to_dict, variant_dir

log = logging.getLogger("pipeline.compile")


def run(cfg: DictConfig) -> None:
    variant = cfg.precision.name
    convert_dir = variant_dir(cfg, "convert")
    rerun = f"python -m pipeline.convert model={cfg.model.name} precision={variant}"
    converted = artifacts.open_output(convert_dir, rerun)
    lineage.check_section(converted, "precision", to_dict(cfg.precision), convert_dir, rerun)
    from pipeline import backends  # after the checks, not above: pipeline/cli.py

    package = convert_dir / "model.mlpackage"
    backend = backends.for_config(cfg, package)
    out_dir = variant_dir(cfg, "compile")
    started = time.perf_counter()
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        record = {"variant": variant, "backend": backend.name, "system": platform.system(),
                  **backend.compile(tmp)}
        artifacts.write_json(tmp / "compile.json", record)
        artifacts.write_lineage(tmp, "compile", {"backend": backend.name},
                                {"convert": converted["fingerprint"]})
    log.info("%s: %s compile ready in %.1f s -> %s", variant, backend.name,
             time.perf_counter() - started, out_dir)


def main() -> None:
    main_for("compile", run)


if __name__ == "__main__":
    main()
