"""An MLflow tracking server on a PostgreSQL backend store, with proxied artifact storage.

    python -m pipeline.services.mlflow_server start [--dir .mlflow-server] [--port 5050] [--host H]
    python -m pipeline.services.mlflow_server stop  [--dir .mlflow-server]

`start` installs Debian's postgresql when it is missing (apt-get, as root), initialises a
database cluster under DIR/pg (run as the `postgres` user when started by root), starts it on
a free port bound to 127.0.0.1, creates the `mlflow` database, then starts `mlflow server
--backend-store-uri postgresql://... --artifacts-destination DIR/artifacts --serve-artifacts`
and waits for /health. It prints the tracking URI to pass as `tracking.uri=...`. Everything
lives under DIR (git-ignored); `stop` ends both servers; a second `start` reuses the data.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.errors import UserError

DEFAULT_DIR = Path(".mlflow-server")
DEFAULT_PORT = 5050


@dataclass
class Server:
    uri: str          # the tracking URI: tracking.uri=<this>
    pg_port: int
    mlflow_pid: int
    root: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, env=env,
                       stdout=subprocess.DEVNULL)
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise UserError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl)",
                        "apt-get install -y postgresql (as root), then run this again")
    return Path(found[-1]).parent


def _as_pg(cmd: list[str]) -> list[str]:
    """Root may not run PostgreSQL: run its commands as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _owned(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")
        for parent in path.resolve().parents:  # postgres must reach its own folder
            if parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o001)


def start_postgres(root: Path) -> int:
    bindir, data, port = pg_bin(), root / "pg", free_port()
    _owned(root / "pg")
    _owned(root / "pg-run")
    if not (data / "PG_VERSION").is_file():
        subprocess.run(_as_pg([str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8"]), check=True,
                       stdout=subprocess.DEVNULL)
    options = f"-p {port} -k {(root / 'pg-run').resolve()} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_pg([str(bindir / "pg_ctl"), "-D", str(data.resolve()), "-o", options,
                           "-l", str((root / "pg-run" / "postgres.log").resolve()), "-w",
                           "start"]), check=True, stdout=subprocess.DEVNULL)
    have = subprocess.run(_as_pg([str(bindir / "psql"), "-h", "127.0.0.1", "-p", str(port),
                                  "-U", "postgres", "-tAc",
                                  "SELECT 1 FROM pg_database WHERE datname='mlflow'"]),
                          capture_output=True, text=True, check=True).stdout.strip()
    if have != "1":
        subprocess.run(_as_pg([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                               "-U", "postgres", "mlflow"]), check=True)
    return port


def wait_health(uri: str, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"mlflow server exited with code {proc.returncode} before answering",
                            f"see {log}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as resp:
                if resp.read(8).strip() == b"OK":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UserError(f"mlflow server at {uri} did not answer /health in {timeout:.0f} s",
                    f"see {log}")


def start(root: Path = DEFAULT_DIR, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> Server:
    root = Path(root)
    if (root / "server.json").is_file():
        stop(root)
    pg_port = start_postgres(root)
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    store = f"postgresql+psycopg2://postgres@127.0.0.1:{pg_port}/mlflow"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job consumers: runs only
    with open(root / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
             "--artifacts-destination", str((root / "artifacts").resolve()), "--serve-artifacts",
             "--host", host, "--port", str(port), "--workers", "1"],
            stdout=log, stderr=log, env=env, start_new_session=True)
    server = Server(f"http://{socket.gethostname() if host == '0.0.0.0' else host}:{port}", pg_port, proc.pid, str(root.resolve()))
    (root / "server.json").write_text(json.dumps(asdict(server)))
    try:
        wait_health(server.uri, proc, root / "mlflow.log")
    except BaseException:
        stop(root)
        raise
    return server


def _end_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it after ``grace`` seconds. A leader
    this process started is reaped as it exits (a zombie still counts as a member)."""
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while True:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            os.killpg(pid, 0)
            if time.monotonic() > deadline:
                os.killpg(pid, signal.SIGKILL)
                return
            time.sleep(0.1)
    except ProcessLookupError:
        pass


def stop(root: Path = DEFAULT_DIR) -> None:
    root = Path(root)
    info = root / "server.json"
    if info.is_file():
        server = Server(**json.loads(info.read_text()))
        _end_group(server.mlflow_pid)  # mlflow server and its workers
        info.unlink()
    if (root / "pg" / "postmaster.pid").is_file():
        subprocess.run(_as_pg([str(pg_bin() / "pg_ctl"), "-D", str((root / "pg").resolve()),
                               "-m", "fast", "-w", "stop"]), check=False,
                       stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.services.mlflow_server")
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 for workers elsewhere")
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            stop(args.dir)
            print(f"stopped the MLflow server and PostgreSQL under {args.dir}")
            return 0
        server = start(args.dir, args.port, args.host)
    except UserError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except subprocess.CalledProcessError as exc:
        print(f"error: {' '.join(map(str, exc.cmd))} failed (exit {exc.returncode}) -- see "
              f"{args.dir}/pg-run/postgres.log", file=sys.stderr)
        return 1
    print(f"MLflow server on PostgreSQL: tracking.uri={server.uri} (artifacts proxied into "
          f"{args.dir}/artifacts); stop it with `make mlflow-server-stop`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
