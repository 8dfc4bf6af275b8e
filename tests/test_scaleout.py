"""Fanning out for real: a Ray cluster (a head and two workers started here) runs a sweep of
six evaluate jobs into an MLflow server on PostgreSQL (both started here, by the script
`make mlflow-server` uses); coreml jobs go only to a worker offering the `macos` resource;
a worker killed mid-job costs exactly that job, named in one line, with no run left RUNNING;
and DVC's own queue (`dvc exp run --queue`, `dvc queue start -j 2`) lands its runs too."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.services import mlflow_server
from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
VARIANTS = ["fp32", "fp16", "mixed", "optype", "fp16_b", "mixed_b"]


def env(**extra):
    e = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO),
         "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    e.pop("PIPELINE_JOB_ID", None)
    return {**e, **extra}


@pytest.fixture(scope="module")
def server():
    root = Path(tempfile.mkdtemp(prefix="mlflow-server-"))
    try:
        yield mlflow_server.start(root, mlflow_server.free_port()).uri
    finally:
        mlflow_server.stop(root)
        shutil.rmtree(root, ignore_errors=True)


def runs_in(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


class Cluster:
    """A Ray head (no CPUs: jobs run on workers only) and worker nodes, each node in its
    own session so a test can SIGKILL one node's processes and nothing else."""

    def __init__(self, workdir: Path):
        self.port = mlflow_server.free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.workdir = workdir

    def start(self, name: str, *args: str) -> None:
        target = ["--head", f"--port={self.port}", "--num-cpus=0", "--include-dashboard=false"] \
            if name == "head" else [f"--address={self.address}", "--num-cpus=1"]
        log = open(self.workdir / f"ray-{name}.log", "w")
        self.nodes[name] = subprocess.Popen(
            ["ray", "start", "--block", "--disable-usage-stats", *target, *args], env=env(),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(["ray", "status", f"--address={self.address}"], env=env(),
                                 capture_output=True, text=True).stdout
            active = out.split("Active:")[-1].split("Pending:")[0]
            if len(re.findall(r"node_", active)) >= count:
                return
            time.sleep(2)
        raise AssertionError(f"{count} Ray nodes did not come up:\n{out}")

    def kill(self, name: str) -> None:
        with_suppress_killpg(self.nodes.pop(name))

    def stop(self) -> None:
        """SIGKILL every node's session: a test cluster holds nothing worth a graceful stop,
        which took 36 s for three nodes (`ray start --block` on SIGTERM)."""
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                with_suppress_killpg(self.nodes.pop(name))


def with_suppress_killpg(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start("head")
        c.wait_nodes(1)
        c.start("linux1")  # one at a time: two raylets starting at once on 2 cores time out
        c.wait_nodes(2)
        c.start("linux2")
        c.wait_nodes(3)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """conf/ plus two more variants (six in all), their trace/convert/compile made by a
    joblib sweep (n_jobs=2): what the cluster's evaluate jobs read (a shared folder)."""
    root = tmp_path_factory.mktemp("scaleout")
    conf = root / "conf"
    shutil.copytree(REPO / "conf", conf)
    for name in ("fp16", "mixed"):
        text = (conf / "precision" / f"{name}.yaml").read_text()
        (conf / "precision" / f"{name}_b.yaml").write_text(
            re.sub(r"(?m)^name: .*$", f"name: {name}_b", text))
    base = ["model=tiny", f"paths.artifacts={root / 'artifacts'}", "tracking.enabled=false"]
    e = env(PIPELINE_CONF_DIR=str(conf))
    for stage in ("trace", "convert", "compile"):
        sweep = [] if stage == "trace" else ["-m", f"precision={','.join(VARIANTS)}",
                                             "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
        proc = subprocess.run([sys.executable, "-m", f"pipeline.{stage}", *base, *sweep], env=e,
                              cwd=root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(root.glob("outputs")) and not list(root.glob("multirun"))
    assert not list(root.rglob("*.log")) and not list(root.rglob(".hydra"))
    return root, e


def sweep(work, uri, cluster, *args, timeout=600):
    """Run an evaluate sweep on the cluster; also returns which node (session) each Ray job
    process belonged to, seen with ps while it ran (Ray ends its workers with the driver)."""
    root, e = work
    driver = subprocess.Popen(
        [sys.executable, "-m", "pipeline.evaluate", "-m", "model=tiny",
         f"paths.artifacts={root / 'artifacts'}", f"tracking.uri={uri}",
         "hydra/launcher=cluster", f"hydra.launcher.address={cluster.address}", *args],
        env=e, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sessions: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while driver.poll() is None and time.monotonic() < deadline:
        sessions.update(job_processes())
        time.sleep(0.3)
    out, err = driver.communicate(timeout=30)
    return subprocess.CompletedProcess(driver.args, driver.returncode, out, err), sessions


def job_processes() -> dict[int, int]:
    """pid -> session of every process running a sweep job on a Ray worker right now."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines() if "ray::_run_job" in line]
    return {int(r[0]): int(r[1]) for r in rows if len(r) == 3 and r[2].startswith("ray::_run_job")}


def test_cluster_sweep_of_six_jobs_lands_every_run_in_the_postgres_server(work, server, cluster):
    proc, sessions = sweep(work, server, cluster, f"precision={','.join(VARIANTS)}",
                           "tracking.experiment=six")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = runs_in(server, "six")
    assert sorted(r.data.tags["variant"] for r in runs) == sorted(VARIANTS)
    assert {r.info.status for r in runs} == {"FINISHED"}
    # the six jobs ran in Ray workers' processes on both worker nodes, not in the driver
    assert len({r.data.tags["pipeline.job"] for r in runs}) == 6
    ran_on = {sessions.get(int(r.data.tags["pipeline.pid"])) for r in runs}
    assert ran_on == {cluster.nodes[n].pid for n in ("linux1", "linux2")}, (ran_on, sessions)
    assert not list(work[0].glob("outputs")) and not list(work[0].rglob("multirun.yaml"))


def test_coreml_jobs_wait_for_a_mac_worker_and_only_it_takes_them(work, server, cluster):
    # no node offers `macos`: the job is not given to a Linux worker; it fails in one line
    proc, sessions = sweep(work, server, cluster, "precision=fp32,fp16", "backend=coreml",
                           "hydra.launcher.mac_wait_s=3", "tracking.experiment=mac")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 2, proc.stderr[-3000:]
    assert all("no Mac worker in the Ray cluster" in e and "--resources" in e for e in errors)
    assert not sessions and "_run_job pid=" not in proc.stderr  # no worker ever started one
    # a worker offering `macos` joins: the coreml jobs run there (and on Linux, the coreml
    # backend refuses in its own line: the routing worked, the platform is not a Mac)
    cluster.start("mac", '--resources={"macos": 1}')
    cluster.wait_nodes(4)
    proc, sessions = sweep(work, server, cluster, "precision=fp32", "backend=coreml",
                           "tracking.experiment=mac")
    assert set(sessions.values()) == {cluster.nodes["mac"].pid}, sessions
    assert proc.returncode == 2 and "macOS" in proc.stderr, proc.stderr[-3000:]
    cluster.kill("mac")


def _job_running_on(session: int) -> bool:
    return session in job_processes().values()


def test_a_worker_killed_mid_job_costs_that_job_only(work, server, cluster):
    root, e = work
    cmd = [sys.executable, "-m", "pipeline.evaluate", "-m", "model=tiny",
           f"paths.artifacts={root / 'artifacts'}", f"tracking.uri={server}",
           "tracking.experiment=kill", f"precision={','.join(VARIANTS[:4])}",
           "hydra/launcher=cluster", f"hydra.launcher.address={cluster.address}"]
    driver = subprocess.Popen(cmd, env=e, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    victim = cluster.nodes["linux1"].pid
    deadline = time.monotonic() + 180
    while not _job_running_on(victim) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _job_running_on(victim), "no job reached worker linux1"
    cluster.kill("linux1")
    out, err = driver.communicate(timeout=600)
    failed = [line for line in err.splitlines() if line.startswith("error: sweep job #")]
    assert driver.returncode == 1 and len(failed) == 1, err[-3000:]
    assert re.search(r"error: sweep job #\d \(.*precision=\w+.*\) failed: ", failed[0])
    lost = re.search(r"precision=(\w+)", failed[0]).group(1)
    runs = runs_in(server, "kill")
    assert all(r.info.status != "RUNNING" for r in runs)
    finished = sorted(r.data.tags["variant"] for r in runs if r.info.status == "FINISHED")
    assert finished == sorted(v for v in VARIANTS[:4] if v != lost)


def test_dvc_queue_runs_two_experiments_with_two_workers(tmp_path, server):
    from tests.test_dvc import copy_repo, sh

    repo = copy_repo(tmp_path / "repo")
    for chip in ("M1", "M2"):
        # -S takes Hydra's override grammar: a value with spaces and '=' is quoted in it
        sh(f"dvc exp run --queue -S model=tiny -S 'variants=[fp32,fp16]' -S \"overrides="
           f"'tracking.uri={server} tracking.experiment=queue device.chip={chip}'\"", repo)
    sh("dvc queue start -j 2", repo)
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            status = sh("dvc queue status", repo).stdout
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(10)  # each `dvc queue status` costs a second of CPU the jobs need
    finally:
        sh("dvc queue stop --kill", repo, check=False)
    assert status.count("Success") == 2, status
    shown = sh("dvc exp show --json", repo).stdout
    assert "device.chip=M1" in shown and "device.chip=M2" in shown
    runs = [r for r in runs_in(server, "queue") if r.data.tags.get("variant")]
    assert sorted((r.data.tags["variant"], r.data.params.get("device.chip")) for r in runs) == \
        [("fp16", "M1"), ("fp16", "M2"), ("fp32", "M1"), ("fp32", "M2")]
    assert {r.info.status for r in runs} == {"FINISHED"}
