"""The one wrapper every stage's `main` goes through: logging, config, clean errors."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import UserError

log = logging.getLogger("pipeline")

USAGE = """usage: python -m pipeline.{stage} [--cfg] [key=value ...]

Hydra overrides, for example: model=minilm precision=fp16 backend=emulator
  --cfg    print the composed config and exit
Config groups live in conf/; see README.md."""


def setup_logging() -> None:
    level = os.environ.get("PIPELINE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr, force=True)
    for noisy in ("numexpr", "matplotlib", "PIL", "alembic", "urllib3", "git", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run_stage(stage: str, body: Callable[[DictConfig], object],
              argv: Sequence[str] | None = None) -> int:
    """Compose the config from argv and run ``body``; a UserError exits 2 with one line."""
    from pipeline.config import load_config

    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE.format(stage=stage))
        return 0
    show = "--cfg" in args
    args = [a for a in args if a != "--cfg"]
    started = time.perf_counter()
    try:
        cfg = load_config(args)
        if show:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        body(cfg)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"error: {stage} interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    log.info("%s done in %.1f s", stage, time.perf_counter() - started)
    return 0


def main_for(stage: str, body: Callable[[DictConfig], object]) -> None:
    sys.exit(run_stage(stage, body))
