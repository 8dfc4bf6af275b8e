"""The MLflow runs of a sweep job that died with its worker: none may stay RUNNING."""
from __future__ import annotations

import contextlib
import logging

from omegaconf import DictConfig

from pipeline.tracking import RUN_JOB as JOB_TAG

log = logging.getLogger("pipeline")


def close_job_runs(cfg: DictConfig, job_id: str) -> int:
    """Mark KILLED every RUNNING run tagged with this job's id, in the job's tracking store.
    Returns how many (0 when tracking is off or the store cannot be reached)."""
    if not cfg.tracking.enabled:
        return 0
    from mlflow.tracking import MlflowClient

    closed = 0
    with contextlib.suppress(Exception):
        client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
        exps = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(exps, filter_string=f"tags.`{JOB_TAG}` = '{job_id}' and "
                                      "attributes.status = 'RUNNING'", max_results=1000):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow: run %s of lost job %s was RUNNING; marked KILLED",
                        run.info.run_id, job_id)
            closed += 1
    return closed
