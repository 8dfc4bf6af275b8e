"""MLflow tracking: one experiment per model; one parent run per pipeline run (a `dvc repro`,
a `dvc exp run`, or whatever sets PIPELINE_RUN_ID) with the evaluated variants and the
precision search as nested runs, and the report's comparison table, plots and recommendation
in the parent.

Stages are separate processes: they find their parent by a shared key (pipeline_run). The
first stage that needs the parent creates it and ends it at once, so no run is ever left
RUNNING; later stages find it by its tag. A stage run by hand, with no key, logs a plain
top-level run tagged `pipeline.run=standalone`. Variant runs are only ever created, so
re-running a stage adds a run; earlier records are never overwritten.
Writers to a local store take a file lock, so concurrent evaluations (dvc queue -j 2, several
shells) all land. A remote tracking URI is checked for an answer before anything is logged.

Metric names are short and grouped by kind with "/" (accuracy/, placement/, latency/,
program/), so MLflow's chart view groups and filters them; the same names (with "." in
place of "/") are the keys of each variant's DVC metrics file (summary.json).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.errors import UserError

log = logging.getLogger(__name__)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def split_numeric(flat: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    numbers, texts = {}, {}
    for k, v in flat.items():
        if isinstance(v, bool):
            numbers[k] = float(v)
        elif isinstance(v, (int, float)):
            numbers[k] = float(v)
        elif v is not None:
            texts[k] = str(v)
    return numbers, texts


def summary(result: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The headline figures of one variant's metrics.json, grouped by kind: MLflow logs them
    as ``kind/name`` and DVC shows them as ``kind.name`` (summary.json). A latency's name says
    where it came from: ``est_ms_<units>`` is the device model's estimate, ``measured_ms_<units>``
    a Core ML measurement; the emulator's wall time is never a latency."""
    acc, place, lat, prog = (result[k] for k in ("accuracy", "placement", "latency", "program"))
    ieee = (result.get("numerics") or {}).get("ieee") or {}
    out = {
        "accuracy": {"passes": acc["passes"], "snr_db": acc["snr_db"],
                     "cosine_min": acc["cosine_min"], "psnr_db": acc.get("psnr_db"),
                     "nonfinite_fraction": acc.get("nonfinite_fraction"),
                     "snr_db_ieee": ieee.get("snr_db")},
        "placement": {"ne_share": place["ne_op_share"], "gpu_share": place.get("gpu_op_share"),
                      "cpu_share": place.get("cpu_op_share"),
                      "ne_time_share": place.get("ne_time_share"),
                      "device_switches": place.get("device_switches")},
        "latency": {**{f"est_ms_{cu}": ms for cu, ms in lat["estimated_ms"].items()},
                    **{f"measured_ms_{cu}": ms for cu, ms in (lat.get("measured_ms") or {}).items()},
                    **{f"est_error_{cu}": e for cu, e in (lat.get("estimate_error") or {}).items()}},
        "program": {"fp32_ops": prog["fp32_compute_ops"], "casts": prog.get("casts"),
                    "overflowing_ops": (result.get("diagnostics") or {}).get("overflowing_ops")},
    }
    return {kind: {k: (float(v) if isinstance(v, bool) else v) for k, v in figures.items()
                   if isinstance(v, (int, float))} for kind, figures in out.items()}


def metric_names(grouped: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{"accuracy": {"snr_db": x}}`` -> ``{"accuracy/snr_db": x}``, MLflow's names."""
    return {f"{kind}/{name}": float(v) for kind, figures in grouped.items()
            for name, v in figures.items()}


def headline_ms(grouped: Mapping[str, Mapping[str, float]], units: str) -> tuple[float, str]:
    """(ms, "measured" or "est") under ``units``: measured where measured, else estimated."""
    lat = grouped["latency"]
    if f"measured_ms_{units}" in lat:
        return lat[f"measured_ms_{units}"], "measured"
    return lat[f"est_ms_{units}"], "est"


def clean_params(flat: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params without empty values (None, "", [], {}): they would make the compare
    page's parallel-coordinates axes "unknown" or "[]". A list becomes "a,b"."""
    out = {}
    for key, value in flat.items():
        if value is None or value == "" or (isinstance(value, (list, tuple, dict)) and not value):
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        out[key] = str(value)
    return out


def device_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """Tags naming the chip the figures are for and the device model's calibration error."""
    lat = result.get("latency") or {}
    tags = {"device.chip": str(lat.get("chip", "")),
            "device.compute_units": str(lat.get("compute_units", "")),
            "latency.estimated": "true" if lat.get("status") == "estimated" else "false"}
    for key, value in (lat.get("calibration") or {}).items():
        if not isinstance(value, Mapping):
            tags[f"device.calibration.{key}"] = str(value)
    return tags


def git_commit(cwd: Path = Path(".")) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (commit + ("-dirty" if dirty else "")) if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dvc_stage_hashes(stages: list[str], lock_path: Path = Path("dvc.lock")) -> dict[str, str]:
    """md5 of each named stage's outputs, from dvc.lock (stages finished before this one)."""
    if not lock_path.is_file():
        return {}
    import yaml

    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    out = {}
    for stage in stages:
        entry = (lock.get("stages") or {}).get(stage) or {}
        hashes = [o.get("md5", "") for o in entry.get("outs") or []]
        if hashes:
            out[f"dvc.{stage}"] = ",".join(hashes)
    return out


def versions() -> dict[str, str]:
    import torch

    from pipeline.coreml_import import coremltools

    return {"coremltools": coremltools().__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _local_db(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


def check_uri(uri: str) -> None:
    """A remote URI must answer as an MLflow server; a local one must be a known scheme."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        fix = "start the server, or use tracking.uri=sqlite:///mlflow.db (or tracking.enabled=false)"
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                body = resp.read(64).decode("utf-8", "replace").strip()
        except urllib.error.HTTPError as exc:
            raise UserError(f"tracking URI '{uri}' answers, but not as an MLflow server "
                            f"(GET /health gave HTTP {exc.code})", fix) from None
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UserError(f"MLflow tracking URI '{uri}' does not answer ({reason})", fix) from None
        if body != "OK":
            raise UserError(f"tracking URI '{uri}' answers, but not as an MLflow server "
                            f"(GET /health gave {body[:30]!r}, MLflow says 'OK')", fix)
    elif not uri.startswith(("sqlite:///", "file:", "databricks", "postgresql", "mysql")):
        raise UserError(f"unsupported MLflow tracking URI '{uri}'",
                        "use sqlite:///mlflow.db or http(s)://host:port")


def check_store(uri: str) -> None:
    """Everything about the store that can be checked before the work: the server answers;
    a local database is a readable, writable SQLite file that is not locked, and the run
    artifacts folder (./mlruns) can be written."""
    check_uri(uri)
    db = _local_db(uri)
    if db is None:
        return
    fix = (f"move '{db}' away (MLflow makes a new one), or set tracking.uri=sqlite:///OTHER.db "
           "(or tracking.enabled=false)")
    if db.is_dir():
        raise UserError(f"MLflow store '{db}' is a directory, not an SQLite file", fix)
    _check_writable(db.parent if not db.exists() else db, "MLflow store")
    _check_writable(Path("mlruns") if Path("mlruns").exists() else Path("."),
                    "MLflow artifact folder")
    if db.exists() and db.stat().st_size:
        import sqlite3

        try:
            con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=5)
            try:
                con.execute("BEGIN IMMEDIATE")  # fails fast if another writer holds it
                con.execute("SELECT count(*) FROM sqlite_master").fetchone()
                con.execute("ROLLBACK")
            finally:
                con.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc):
                raise UserError(f"MLflow store '{db}' is locked by another process (waited 5 s)",
                                "wait for the other run to end, or stop the process holding "
                                "it (fuser mlflow.db)") from None
            raise UserError(f"MLflow store '{db}' cannot be opened ({exc})", fix) from None
        except sqlite3.DatabaseError as exc:
            raise UserError(f"MLflow store '{db}' is not a readable SQLite database ({exc})",
                            fix) from None


def _check_writable(path: Path, what: str) -> None:
    if not os.access(path, os.W_OK):
        raise UserError(f"{what} '{path}' is not writable (read-only or no permission)",
                        "make it writable, or set tracking.uri to a writable place "
                        "(or tracking.enabled=false)")


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    db = _local_db(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(str(db) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


RUN_PID, RUN_HOST, RUN_JOB = "pipeline.pid", "pipeline.host", "pipeline.job"
JOB_ENV = "PIPELINE_JOB_ID"  # set by a sweep's job (pipeline/sweeps): its runs carry the id


def process_tags() -> dict[str, str]:
    """Who made a run: its process and host, and the sweep job it belongs to (if any)."""
    tags = {RUN_PID: str(os.getpid()), RUN_HOST: socket.gethostname()}
    if os.environ.get(JOB_ENV):
        tags[RUN_JOB] = os.environ[JOB_ENV]
    return tags


def close_orphans(client, exp_id: str) -> int:
    """Runs this host started whose process is gone (killed with SIGKILL, power loss) are
    still RUNNING: mark them KILLED. Returns how many."""
    from pipeline.artifacts import _pid_alive

    closed = 0
    runs = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'",
                              max_results=1000)
    for run in runs:
        tags = run.data.tags
        if tags.get(RUN_HOST) != socket.gethostname():
            continue
        try:
            pid = int(tags.get(RUN_PID, ""))
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            client.set_terminated(run.info.run_id, "KILLED")
            log.warning("MLflow: run %s (pid %d, gone) was left RUNNING; marked KILLED",
                        run.info.run_id, pid)
            closed += 1
    return closed


# ---- the pipeline run: one parent MLflow run per `dvc repro` / `dvc exp run` / PIPELINE_RUN_ID
KIND, PIPELINE_KEY, NOTE = "kind", "pipeline.key", "mlflow.note.content"
PARENT_RUN = "mlflow.parentRunId"
# an evaluation run: on a first visit, MLflow's runs table expands the parents of such runs
RUN_TYPE = "mlflow.runType"
# a model-training experiment, not a GenAI one: the experiment tag MLflow's UI reads where it
# has no workflow switch (3.17's OSS UI follows ?workflowType=machine_learning: view_url)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
SAFE_ID = re.compile(r"[A-Za-z0-9_.:@/+-]{1,200}")


@dataclass(frozen=True)
class PipelineRun:
    key: str      # the parent run's tag pipeline.key
    label: str    # in the parent run's name
    source: str   # where the key came from


@dataclass(frozen=True)
class Process:
    pid: int
    ident: str    # host, boot and start time: a pid alone is reused
    command: str


def _linux_process(pid: int) -> tuple[int, str, list[str]] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[1]), fields[19], [a.decode("utf-8", "replace") for a in args if a]


def _ps_process(pid: int) -> tuple[int, str, list[str]] | None:
    try:
        out = subprocess.run(["ps", "-o", "ppid=,lstart=,args=", "-p", str(pid)],
                             capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) < 7:
        return None
    return int(out[0]), "_".join(out[1:6]), out[6:]


def _is_dvc(args: list[str]) -> bool:
    names = [Path(a).name for a in args[:3]]
    return bool(names) and (names[0] == "dvc" or names[1:2] == ["dvc"] or names[1:3] == ["-m", "dvc"])


def dvc_ancestor() -> Process | None:
    """The nearest `dvc` process above this one (DVC runs each stage command as its child,
    possibly through a shell; `dvc queue` workers run each experiment in its own one)."""
    linux = Path("/proc/self/stat").exists()
    boot = ""
    if linux:
        with contextlib.suppress(OSError):
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    pid = os.getppid()
    for _ in range(32):
        if pid <= 1:
            return None
        info = _linux_process(pid) if linux else _ps_process(pid)
        if info is None:
            return None
        ppid, started, args = info
        if _is_dvc(args):
            sub = next((a for a in args[1:] if not a.startswith("-") and Path(a).name != "dvc"), "")
            return Process(pid, f"{socket.gethostname()}:{boot}:{pid}:{started}",
                           f"dvc {sub}".strip())
        pid = ppid
    return None


def pipeline_run(environ: Mapping[str, str] = os.environ) -> PipelineRun | None:
    """The key every stage of one pipeline run shares: PIPELINE_RUN_ID if set (a launcher or
    a user grouping runs), else the DVC experiment's name with its dvc process, else the
    nearest dvc process (host, boot, pid, start time); None for a stage run by hand."""
    given = environ.get("PIPELINE_RUN_ID", "")
    if given:
        if not SAFE_ID.fullmatch(given):
            raise UserError(f"PIPELINE_RUN_ID={given!r} is not a usable run id",
                            "use up to 200 letters, digits and _ . : @ / + -")
        return PipelineRun(f"id:{given}", given, "PIPELINE_RUN_ID")
    dvc = dvc_ancestor()
    exp = environ.get("DVC_EXP_NAME", "")
    if exp:
        return PipelineRun(f"dvc-exp:{exp}:{dvc.ident if dvc else ''}", exp,
                           f"dvc experiment {exp}")
    if dvc:
        return PipelineRun(f"dvc:{dvc.ident}", f"{dvc.command.replace(' ', '-')}-{dvc.pid}",
                           f"{dvc.command} (pid {dvc.pid})")
    return None


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
