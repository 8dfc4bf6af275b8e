"""The MLflow store, checked before the work: a server answers as MLflow; a local SQLite file is
readable, writable and not locked. Writers to a local store take a file lock, so concurrent
evaluations all land; runs a killed process left RUNNING are closed by the next writer."""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError
from pipeline.tracking.provenance import RUN_HOST, RUN_PID

log = logging.getLogger("pipeline.tracking")


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
