"""MLflow tracking: one experiment per model, one run per evaluated variant and backend.

Runs are only ever created, never updated or deleted, so re-running a stage adds a run.
Writers to a local store take a file lock, so concurrent evaluations (dvc queue -j 2, several
shells) all land. A remote tracking URI is checked for an answer before anything is logged.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import platform
import socket
import subprocess
import time
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


# metrics.json key prefix -> MLflow metric name prefix: a latency's name says where it came
# from (latency_est_ms.ALL is the device model's estimate, never a measurement)
METRIC_PREFIXES = {"latency.estimated_ms.": "latency_est_ms.",
                   "latency.measured_ms.": "latency_measured_ms.",
                   "latency.p90_ms.": "latency_measured_p90_ms.",
                   "latency.estimate_error.": "latency_est_error.",
                   "latency.calibration.": "latency_est_calibration."}


def metric_names(numbers: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for key, value in numbers.items():
        for prefix, name in METRIC_PREFIXES.items():
            if key.startswith(prefix):
                key = name + key[len(prefix):]
                break
        out[key] = value
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

    from pipeline.backends import coremltools

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


def experiment_id(client, name: str) -> str:
    """The experiment's id, created if missing; workers of a sweep may race to create it."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another worker created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_run(uri: str, experiment: str, run_name: str, params: Mapping[str, Any],
            metrics: Mapping[str, float], tags: Mapping[str, str],
            artifact_files: list[Path], series: Mapping[str, list[float]] | None = None) -> str:
    """Create one new MLflow run with everything in it; returns its run id.

    The run always ends: FINISHED, FAILED (an error) or KILLED (interrupted). Its pid and
    host are tags, so a run orphaned by SIGKILL is closed by the next one (close_orphans).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    check_store(uri)
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    run_id = None
    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        try:
            exp_id = experiment_id(client, experiment)
            close_orphans(client, exp_id)
            run = client.create_run(exp_id, run_name=run_name, tags={**tags, **process_tags()})
            run_id = run.info.run_id
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
            client.set_terminated(run_id, "FINISHED")
        except BaseException as exc:
            if run_id is not None:
                status = "KILLED" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "FAILED"
                with contextlib.suppress(Exception):
                    client.set_terminated(run_id, status)
            if isinstance(exc, (UserError, KeyboardInterrupt, SystemExit, OSError)):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"MLflow store '{uri}' failed while logging ({type(exc).__name__}: "
                            f"{first})", "check the store (or set tracking.enabled=false); the "
                            "run, if created, was marked FAILED") from None
    log.info("MLflow: run %s (%s) in experiment '%s' at %s", run_id, run_name, experiment, uri)
    return run_id
