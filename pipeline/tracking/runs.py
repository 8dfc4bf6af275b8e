"""The runs themselves: one experiment per model, one parent run per pipeline run (created
FINISHED, found again by its key), the variants and the search nested under it, the report's
table, plots and recommendation in it, and the experiment view that shows them side by side."""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.errors import UserError
from pipeline.tracking.provenance import PipelineRun, git_commit, pipeline_run, process_tags
from pipeline.tracking.store import check_store, close_orphans, store_lock

log = logging.getLogger("pipeline.tracking")

# ---- the pipeline run: one parent MLflow run per `dvc repro` / `dvc exp run` / PIPELINE_RUN_ID
KIND, PIPELINE_KEY, NOTE = "kind", "pipeline.key", "mlflow.note.content"
PARENT_RUN = "mlflow.parentRunId"
# an evaluation run: on a first visit, MLflow's runs table expands the parents of such runs
RUN_TYPE = "mlflow.runType"
# a model-training experiment, not a GenAI one: the experiment tag MLflow's UI reads where it
# has no workflow switch (3.17's OSS UI follows ?workflowType=machine_learning: view_url)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str) -> str:
    """The experiment's id, created if missing (workers of a sweep may race to create it)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_KIND)
        except MlflowException:  # another worker created it first
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if not all(exp.tags.get(k) for k in EXPERIMENT_KIND):  # made by an earlier version
        for k, v in EXPERIMENT_KIND.items():
            client.set_experiment_tag(exp.experiment_id, k, v)
    return exp.experiment_id


def _parents(client, exp_id: str, key: str) -> list:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{PIPELINE_KEY}` = '{key}' and "
                              f"tags.`{KIND}` = 'pipeline'", max_results=50)
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def parent_run(client, exp_id: str, prun: PipelineRun, model: str) -> Any:
    """The pipeline run's parent MLflow run: found by its key, or created and ended at once
    (FINISHED: it holds no work of its own, so nothing can leave it RUNNING). Two creators at
    once (a remote store has no lock) both keep the older one and the other is deleted."""
    found = _parents(client, exp_id, prun.key)
    if found:
        return found[0]
    run = client.create_run(exp_id, run_name=f"{model}-{prun.label}", tags={
        KIND: "pipeline", PIPELINE_KEY: prun.key, "pipeline.source": prun.source,
        "model": model, "git_commit": git_commit(), **process_tags(),
        NOTE: f"Pipeline run of **{model}** ({prun.source}). Its variants are the nested runs; "
              "the report stage adds the comparison table, the plots and the recommendation."})
    client.set_terminated(run.info.run_id, "FINISHED")
    found = _parents(client, exp_id, prun.key)
    if found[0].info.run_id != run.info.run_id:
        client.delete_run(run.info.run_id)
    return found[0]


@contextlib.contextmanager
def session(uri: str, experiment: str) -> Iterator[tuple[Any, str, list[str]]]:
    """(client, experiment id, open runs) under the store lock. Every run the caller adds to
    the open list is ended FAILED (an error) or KILLED (interrupted) if the block does not
    finish; a store error becomes one line."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    check_store(uri)
    from mlflow.tracking import MlflowClient

    opened: list[str] = []
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        try:
            exp_id = experiment_id(client, experiment)
            close_orphans(client, exp_id)
            yield client, exp_id, opened
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
            for run_id in opened:
                with contextlib.suppress(Exception):
                    client.set_terminated(run_id, status)
            if isinstance(exc, (UserError, KeyboardInterrupt, SystemExit, OSError)):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"MLflow store '{uri}' failed while logging ({type(exc).__name__}: "
                            f"{first})", "check the store (or set tracking.enabled=false); the "
                            "run, if created, was marked FAILED") from None


def _grouping(client, exp_id: str, model: str) -> dict[str, str]:
    """Tags that nest a run under its pipeline run's parent, or mark it standalone."""
    prun = pipeline_run()
    if prun is None:
        return {"pipeline.run": "standalone (run by hand: set PIPELINE_RUN_ID to group runs)"}
    return {PARENT_RUN: parent_run(client, exp_id, prun, model).info.run_id,
            PIPELINE_KEY: prun.key}


def _log(client, run_id: str, metrics: Mapping[str, float], params: Mapping[str, Any],
         series: Mapping[str, list[float]] | None, artifact_files: list[Path]) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    points = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    points += [Metric(k, float(v), now, step) for k, vs in (series or {}).items()
               for step, v in enumerate(vs)]
    for start in range(0, max(1, len(points)), 900):  # MLflow takes 1000 per batch
        client.log_batch(run_id, metrics=points[start:start + 900],
                         params=[Param(k, str(v)[:6000]) for k, v in params.items()]
                         if start == 0 else [])
    for path in artifact_files:
        if path.is_file():
            client.log_artifact(run_id, str(path))


def log_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
            metrics: Mapping[str, float], tags: Mapping[str, str],
            artifact_files: list[Path], series: Mapping[str, list[float]] | None = None,
            description: str = "") -> str:
    """Create one new MLflow run with everything in it, nested under the pipeline run's
    parent when there is one; returns its run id.

    The run always ends: FINISHED, FAILED (an error) or KILLED (interrupted). Its pid and
    host are tags, so a run orphaned by SIGKILL is closed by the next one (close_orphans).
    """
    with session(uri, experiment) as (client, exp_id, opened):
        model = tags.get("model", experiment)
        run = client.create_run(exp_id, run_name=run_name, tags={
            **tags, **_grouping(client, exp_id, model), **process_tags(),
            **({NOTE: description[:8000]} if description else {}),
            **({RUN_TYPE: "evaluation"} if tags.get(KIND) == "variant" else {})})
        run_id = run.info.run_id
        opened.append(run_id)
        _log(client, run_id, metrics, params, series, artifact_files)
        client.set_terminated(run_id, "FINISHED")
        opened.remove(run_id)
    log.info("MLflow: run %s (%s) in experiment '%s' at %s", run_id, run_name, experiment, uri)
    return run_id


def log_report(uri: str, experiment: str, model: str, table: Mapping[str, list],
               description: str, tags: Mapping[str, str], artifact_files: list[Path],
               view_columns: list[str]) -> str:
    """The report into the pipeline run's parent: the comparison table (mlflow log_table:
    the UI's Artifacts and Evaluation views show it), the description (rendered on the run
    page), the plots and the recommendation tag. A parent that already holds a report (a
    reused PIPELINE_RUN_ID) gets a nested report run instead: nothing is overwritten. A
    report run by hand gets a top-level run of its own. Also saves the experiment view
    `variants` (the runs table with ``view_columns`` shown)."""
    with session(uri, experiment) as (client, exp_id, opened):
        prun = pipeline_run()
        parent = parent_run(client, exp_id, prun, model) if prun else None
        if parent is not None and parent.data.tags.get("report.done") != "true":
            run_id = parent.info.run_id
        else:
            grouping = ({PARENT_RUN: parent.info.run_id, PIPELINE_KEY: prun.key} if parent
                        else {"pipeline.run": "standalone (run by hand)"})
            run_id = client.create_run(exp_id, run_name=f"{model}-report", tags={
                KIND: "report", "model": model, **process_tags(), **grouping}).info.run_id
            opened.append(run_id)
        client.log_table(run_id, data=dict(table), artifact_file="comparison.json")
        _log(client, run_id, {}, {}, None, artifact_files)
        for key, value in {**tags, NOTE: description[:8000], "report.done": "true"}.items():
            client.set_tag(run_id, key, value)
        if opened:
            client.set_terminated(run_id, "FINISHED")
            opened.remove(run_id)
        save_view(client, exp_id, "variants", view_columns)
    log.info("MLflow: report in run %s of experiment '%s' at %s; the variants side by side: %s",
             run_id, experiment, uri, view_url(uri, exp_id))
    return run_id


def save_view(client, exp_id: str, name: str, columns: list[str]) -> None:
    """An experiment view (MLflow's saved/shared views: the experiment tag
    mlflow.sharedViewState.<name>, opened with ?viewStateShareKey=<name>) whose runs table
    shows ``columns`` (metric names) beside the run names."""
    import json

    keys = [f"metrics.`{c}`" for c in columns]
    state = {"selectedColumns": keys, "columnOrder": keys,  # widths apply to ordered columns
             "columnWidths": {k: int(22 + 6.5 * len(c)) for k, c in zip(keys, columns)},
             "compareRunsMode": "TABLE", "orderByKey": "attributes.start_time", "orderByAsc": False}
    now = int(time.time() * 1000)
    client.set_experiment_tag(exp_id, f"mlflow.sharedViewState.{name}", json.dumps(
        {"name": name, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}))


def view_url(uri: str, exp_id: str, name: str = "variants") -> str:
    """Where a person sees the variants side by side: the runs table in MLflow's model
    training view (the UI opens GenAI views without workflowType), with the view's columns."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return (f"{base}/#/experiments/{exp_id}/runs?viewStateShareKey={name}"
            "&workflowType=machine_learning")
