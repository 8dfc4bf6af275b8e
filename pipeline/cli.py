"""The one wrapper every stage's `main` goes through: logging, config, clean errors.

A stage's imports: a stage module (trace, convert, compile, evaluate, report) imports torch,
coremltools and the emulator inside the functions that use them, after checking its inputs,
never at the top. So `--help`, `--cfg`, a bad override or a missing upstream output answer
in under a second (not after a 7-second import), and a sweep's driver (`-m`,
pipeline/sweeps) does not load them only to hand the jobs to workers that load them again:
each joblib worker pays that import once (tests/test_errors.py checks the rule).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import UserError

log = logging.getLogger("pipeline")

USAGE = """usage: python -m pipeline.{stage} [--cfg] [-m] [key=value ...]

Hydra overrides, for example: model=minilm precision=fp16 backend=emulator
  --cfg          print the composed config and exit
  -m, --multirun run once per combination of sweep values: precision=fp16,mixed, through
                 Hydra's launcher: hydra/launcher=joblib (local processes) or cluster (Ray)
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
    if not multirun:
        return _run_one(stage, body, args, show)
    from pipeline.sweeps import multirun as sweeps

    try:
        return sweeps.run(stage, body, args, show)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code


def _run_one(stage: str, body: Callable[[DictConfig], object], args: list[str], show: bool) -> int:
    from pipeline.config import load_config

    started = time.perf_counter()
    previous = _terminate_as_interrupt()
    try:
        cfg = load_config(args)
        if show:
            print(OmegaConf.to_yaml(cfg, resolve=True))
            return 0
        check_artifacts_root(cfg.paths.artifacts)
        body(cfg)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print(f"error: {stage} {'terminated' if isinstance(exc, Terminated) else 'interrupted'}; "
              "nothing half-written was kept and its MLflow run (if any) was marked KILLED",
              file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a fault no check foresaw: one line, the traceback on request
        log.debug("%s failed", stage, exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"error: {stage} failed unexpectedly: {type(exc).__name__}: {first} -- check the "
              "inputs it names; PIPELINE_LOG_LEVEL=DEBUG shows the traceback", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    log.info("%s done in %.1f s", stage, time.perf_counter() - started)
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every cleanup (temporary folders, MLflow runs) runs."""


def _terminate_as_interrupt():
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise Terminated()
    return signal.signal(signal.SIGTERM, handler)


FIXES = {
    errno.ENOSPC: ("no space left on the device", "free space there, or set paths.artifacts "
                   "(and tracking.uri) to another disk, then re-run"),
    errno.EDQUOT: ("disk quota exceeded", "free space, or write elsewhere (paths.artifacts)"),
    errno.EROFS: ("read-only file system", "write elsewhere: paths.artifacts=DIR (and tracking.uri)"),
    errno.EACCES: ("permission denied", "make it writable, or write elsewhere: paths.artifacts=DIR"),
    errno.EPERM: ("operation not permitted", "make it writable, or write elsewhere: paths.artifacts=DIR"),
}


def os_error_line(exc: OSError) -> str:
    """An OSError (full disk, read-only folder, ...) as one line naming the path."""
    what, fix = FIXES.get(exc.errno, (exc.strerror or type(exc).__name__,
                                      "check the path and the disk, then re-run"))
    where = f" at '{exc.filename}'" if exc.filename else ""
    return f"{what}{where} -- {fix}"


def check_artifacts_root(root: str) -> None:
    """paths.artifacts must be (or become) a writable folder: checked before any work."""
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise UserError(f"paths.artifacts='{root}' is a file, not a folder",
                        "point paths.artifacts at a folder (default: artifacts)")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"paths.artifacts='{root}' is not writable ('{existing}' is read-only "
                        "or not a folder)", "make it writable, or set paths.artifacts=DIR")
    if path.is_dir():
        for sub in [path, *[p for p in path.iterdir() if p.is_dir()]]:
            if not os.access(sub, os.W_OK | os.X_OK):
                raise UserError(f"'{sub}' is not writable (read-only or no permission)",
                                "make it writable, or set paths.artifacts=DIR")


def main_for(stage: str, body: Callable[[DictConfig], object]) -> None:
    sys.exit(run_stage(stage, body))
