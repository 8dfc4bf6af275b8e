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

USAGE = """usage: python -m pipeline.{stage} [--cfg] [-m] [key=value ...]

Hydra overrides, for example: model=minilm precision=fp16 backend=emulator
  --cfg          print the composed config and exit
  -m, --multirun run once per combination of sweep values: precision=fp16,mixed
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
    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(USAGE.format(stage=stage))
        return 0
    show = "--cfg" in args
    multirun = "-m" in args or "--multirun" in args
    args = [a for a in args if a not in ("--cfg", "-m", "--multirun")]
    try:
        jobs = sweep(args) if multirun else [args]
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    worst = 0
    for i, job in enumerate(jobs):
        if multirun:
            log.info("multirun job %d/%d: %s", i + 1, len(jobs), " ".join(job))
        worst = max(worst, _run_one(stage, body, job, show))
    return worst


def _run_one(stage: str, body: Callable[[DictConfig], object], args: list[str], show: bool) -> int:
    from pipeline.config import load_config

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


def sweep(args: Sequence[str]) -> list[list[str]]:
    """Hydra's sweep syntax (a,b / range / choice) expanded to one override list per job."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(args))
    except HydraException as exc:
        raise UserError(f"bad override in {list(args)}: {str(exc).splitlines()[0]}") from None
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


def main_for(stage: str, body: Callable[[DictConfig], object]) -> None:
    sys.exit(run_stage(stage, body))
