"""Shared fixtures: real Hydra configs, real stages run in-process on the tiny model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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


HEARTBEAT_S = float(os.environ.get("PIPELINE_TEST_HEARTBEAT", "30"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A line every HEARTBEAT_S seconds while one test (with its fixtures) runs, so a long
    end-to-end test (dvc repro, the browser) never leaves the suite silent."""
    import threading
    import time

    config = item.config
    reporter = config.pluginmanager.getplugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    stop, started = threading.Event(), time.monotonic()

    def beat():
        while not stop.wait(HEARTBEAT_S):
            line = f"[{time.monotonic() - started:4.0f} s] still running {item.nodeid}"
            with capman.global_and_fixture_disabled():
                reporter.ensure_newline()
                reporter.write_line(line)

    if reporter is not None and capman is not None and HEARTBEAT_S > 0:
        threading.Thread(target=beat, daemon=True, name="test-heartbeat").start()
    try:
        yield
    finally:
        stop.set()
