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

from pipeline import artifacts, backends
from pipeline.cli import main_for
from pipeline.config import variant_dir
from pipeline.errors import UserError

log = logging.getLogger("pipeline.compile")


def run(cfg: DictConfig) -> None:
    variant = cfg.precision.name
    package = variant_dir(cfg, "convert") / "model.mlpackage"
    if not package.exists():
        raise UserError(f"no converted package at {package}",
                        f"run `python -m pipeline.convert precision={variant}` first")
    backend = backends.for_config(cfg, package)
    out_dir = variant_dir(cfg, "compile")
    started = time.perf_counter()
    with artifacts.atomic_path(out_dir, is_dir=True) as tmp:
        record = {"variant": variant, "backend": backend.name, "platform": platform.platform(),
                  **backend.compile(tmp)}
        record["seconds"] = round(time.perf_counter() - started, 3)
        artifacts.write_json(tmp / "compile.json", record)
    log.info("%s: %s compile ready in %.1f s -> %s", variant, backend.name, record["seconds"],
             out_dir)


def main() -> None:
    main_for("compile", run)


if __name__ == "__main__":
    main()
