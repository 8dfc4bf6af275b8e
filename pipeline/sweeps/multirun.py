"""`python -m pipeline.<stage> -m ...`: Hydra's multirun, the way `@hydra.main` runs it.

Hydra's sweeper expands the overrides and its launcher (hydra/launcher=basic|joblib|cluster)
runs the jobs. Each job goes through the single-run path (pipeline/cli.py `_run_one`), so a
job's error is the same one line and exit code as a hand run. Hydra's run and sweep folders
go to a temporary folder that is removed afterwards, with no config copies and no log files:
nothing lands in the repository.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig

from pipeline.errors import UserError
from pipeline.tracking import JOB_ENV

log = logging.getLogger("pipeline")

# Hydra's own outputs off: no outputs/ or multirun/ folders, no .hydra/ copies, no .log files
QUIET = ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none",
         "hydra.job.chdir=false"]


def job(stage: str, body: Callable[[DictConfig], object], show: bool, conf_dir: str | None,
        cfg: DictConfig) -> int:
    """One job of a sweep, wherever the launcher runs it: the task overrides Hydra gave it,
    through the single-run path, composed from the driver's config folder (workers run the
    same checkout). Returns its exit code."""
    from hydra.core.hydra_config import HydraConfig

    from pipeline import cli

    cli.setup_logging()
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if conf_dir:
        os.environ["PIPELINE_CONF_DIR"] = conf_dir
    os.environ[JOB_ENV] = str(hydra_cfg.job.get("id") or f"job{hydra_cfg.job.num}")
    log.info("multirun job #%d: %s", hydra_cfg.job.num, " ".join(overrides))
    try:
        return cli._run_one(stage, body, overrides, show)
    finally:
        os.environ.pop(JOB_ENV, None)


def run(stage: str, body: Callable[[DictConfig], object], args: Sequence[str], show: bool) -> int:
    """Run the sweep; print one line per failed job; return the worst exit code."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from pipeline import config, schema

    conf_dir = Path(os.environ.get("PIPELINE_CONF_DIR") or config.CONF_DIR).resolve()
    scratch = tempfile.mkdtemp(prefix="pipeline-sweep-")
    overrides = [*QUIET, f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}",
                 "hydra.sweep.subdir=${hydra.job.num}", *args]
    schema.register()
    GlobalHydra.instance().clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name=stage,
                                         config_search_path=create_config_search_path(
                                             str(conf_dir)))
        results = hydra.multirun(config_name="config", overrides=overrides,
                                 task_function=functools.partial(
                                     job, stage, body, show, os.environ.get("PIPELINE_CONF_DIR")),
                                 with_log_configuration=False)
    except MissingConfigException as exc:
        raise config._missing_option(exc, list(args), conf_dir) from None
    except (HydraException, OmegaConfBaseException) as exc:
        raise config.composition_error(exc, list(args)) from None
    except UserError:
        raise
    except Exception as exc:  # the launcher or its engine failed: one line, not a traceback
        log.debug("sweep failed", exc_info=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        error = UserError(f"sweep failed in hydra/launcher: {type(exc).__name__}: {first}",
                          "check the launcher's settings (hydra.launcher.*); "
                          "PIPELINE_LOG_LEVEL=DEBUG shows the traceback")
        error.exit_code = 1
        raise error from None
    except KeyboardInterrupt:
        error = UserError(f"{stage} sweep interrupted", "jobs already finished kept their "
                          "outputs and MLflow runs; run the sweep again for the rest")
        error.exit_code = 130
        raise error from None
    finally:
        GlobalHydra.instance().clear()
        shutil.rmtree(scratch, ignore_errors=True)
    batches = results if isinstance(results, list) else []  # a sweeper may return its own
    return summarize([r for batch in batches for r in (batch if isinstance(batch, list) else [])])


def summarize(returns: list) -> int:
    """The worst exit code of the jobs; one line on stderr for each job that never finished
    (a job that finished with an error has already printed its own line)."""
    from pipeline.sweeps.cluster import Lost

    worst, done = 0, 0
    for ret in returns:
        value = ret.return_value
        if isinstance(value, Lost):
            print(f"error: sweep job #{ret.hydra_cfg.hydra.job.num} ({' '.join(ret.overrides)}) "
                  f"failed: {value.reason}", file=sys.stderr)
        code = value.exit_code if isinstance(value, Lost) else value if isinstance(value, int) else 0
        done += code == 0
        worst = max(worst, code)
    log.info("sweep: %d of %d jobs finished", done, len(returns))
    return worst
