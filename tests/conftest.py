"""Shared fixtures: real Hydra configs, real stages run in-process on the tiny model."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# A suite started in the background by a shell without job control (`make test &`, nohup)
# inherits SIGINT ignored, and so would every stage it starts: the Ctrl-C tests would see
# their signal vanish. Python's own handler back, here and (by inheritance) in the children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from pipeline.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "fp16", "mixed")


def make_cfg(workdir: Path, *overrides: str):
    return load_config([f"paths.artifacts={workdir / 'artifacts'}",
                        f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", *overrides])


@pytest.fixture
def cfg_in(tmp_path):
    def build(*overrides):
        return make_cfg(tmp_path, *overrides)
    return build


def run_variants(workdir: Path, model: str, variants=VARIANTS, *extra: str, evaluate=True):
    from pipeline import compile as compile_stage
    from pipeline import convert, trace
    from pipeline import evaluate as evaluate_stage

    trace.run(make_cfg(workdir, f"model={model}", *extra))
    for v in variants:
        cfg = make_cfg(workdir, f"model={model}", f"precision={v}", *extra)
        convert.run(cfg)
        compile_stage.run(cfg)
    if evaluate:
        for v in variants:
            evaluate_stage.run(make_cfg(workdir, f"model={model}", f"precision={v}", *extra))
    return workdir / "artifacts"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """trace -> convert -> compile -> evaluate -> report of the tiny encoder, all three
    variants, as one pipeline run (PIPELINE_RUN_ID, as a launcher sets it): one parent MLflow
    run with the variants nested and the report in it."""
    from pipeline import report

    workdir = tmp_path_factory.mktemp("tiny")
    cwd = os.getcwd()
    os.chdir(workdir)  # MLflow artifacts (./mlruns) land in the temporary folder
    os.environ["PIPELINE_RUN_ID"] = "tiny-session"
    try:
        run_variants(workdir, "tiny")
        report.run(make_cfg(workdir, "model=tiny"))
    finally:
        del os.environ["PIPELINE_RUN_ID"]
        os.chdir(cwd)
    return workdir


# `make test` runs pytest-xdist with --dist loadfile --no-loadscope-reorder: workers take
# whole files in collection order, so the longest files go first (measured: test_dvc about
# 13 min, test_scaleout 8) and the last file to start is a short one
LONGEST_FIRST = ("test_dvc.py", "test_scaleout.py", "test_models.py", "test_fp16_pass.py",
                 "test_hostile.py")


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixtures
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's order kept


HEARTBEAT_S = float(os.environ.get("PIPELINE_TEST_HEARTBEAT", "30"))


class Heartbeat:
    """A line every HEARTBEAT_S seconds naming each test that has run that long, so a long
    end-to-end test (dvc repro, the browser) never leaves the suite silent. It lives where
    the terminal is: in the one pytest process, or in pytest-xdist's controller, which gets
    every worker's test starts and ends through these same hooks."""

    def __init__(self, config):
        self.reporter = config.pluginmanager.getplugin("terminalreporter")
        self.capman = config.pluginmanager.getplugin("capturemanager")
        self.running: dict[str, float] = {}
        self.lock, self.stop = threading.Lock(), threading.Event()
        threading.Thread(target=self.beat, daemon=True, name="test-heartbeat").start()

    def beat(self):
        while not self.stop.wait(HEARTBEAT_S):
            with self.lock:
                now = time.monotonic()
                long = [(now - t, n) for n, t in self.running.items() if now - t >= HEARTBEAT_S]
            for seconds, nodeid in sorted(long, reverse=True):
                self.write(f"[{seconds:4.0f} s] still running {nodeid}")

    def write(self, line: str):
        if self.capman is None:
            self.reporter.write_line(line)
            return
        with self.capman.global_and_fixture_disabled():
            self.reporter.ensure_newline()
            self.reporter.write_line(line)

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid):
        with self.lock:
            self.running[nodeid] = time.monotonic()

    @pytest.hookimpl
    def pytest_runtest_logfinish(self, nodeid):
        with self.lock:
            self.running.pop(nodeid, None)


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists
def pytest_configure(config):
    if HEARTBEAT_S > 0 and config.pluginmanager.getplugin("terminalreporter") is not None \
            and not hasattr(config, "workerinput"):  # not in an xdist worker: no terminal there
        config.pluginmanager.register(Heartbeat(config), "pipeline-heartbeat")


def pytest_unconfigure(config):
    beat = config.pluginmanager.get_plugin("pipeline-heartbeat")
    if beat is not None:
        beat.stop.set()
