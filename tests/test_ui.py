"""The MLflow UI, as a person sees it: `mlflow ui` on the project's store, opened in headless
Chromium. Skips only where no browser exists and CI is not set."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "tests" / "screenshots"

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("no chromium here (make test installs Debian's)", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_ui(tiny_run):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen([str(mlflow), "ui", "--backend-store-uri", f"sqlite:///{tiny_run / 'mlflow.db'}",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            cwd=tiny_run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"),
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
        pytest.fail("mlflow ui did not answer /health in 90 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def test_runs_and_metrics_show_in_the_mlflow_ui(mlflow_ui, tiny_run):
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = {r.data.tags["variant"]: r for r in client.search_runs([exp.experiment_id])
            if "variant" in r.data.tags}
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_context(viewport={"width": 1700, "height": 1000}).new_page()
        page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs"
                  "?workflowType=machine_learning&compareRunsMode=CHART")
        for variant in ("fp32", "fp16", "mixed"):
            expect(page.get_by_text(f"tiny-{variant}-emulator").first).to_be_visible(timeout=45_000)
        search = page.get_by_placeholder("Search metric charts")
        expect(search).to_be_visible(timeout=30_000)
        search.fill("accuracy.passes")  # many metrics now: find the chart by name
        expect(page.get_by_text("accuracy.passes").first).to_be_visible(timeout=30_000)
        search.fill("ne_op_share")
        expect(page.get_by_text("placement.ne_op_share").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SHOTS / "mlflow_runs_chart.png"), full_page=True)

        run = runs["fp16"]
        page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}")
        expect(page.get_by_text("accuracy.cosine_min").first).to_be_visible(timeout=45_000)
        expect(page.get_by_text("placement.ne_op_share").first).to_be_visible(timeout=30_000)
        # latency off macOS: the device model's estimate, named so (never the emulator's time)
        expect(page.get_by_text("latency_est_ms.ALL").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SHOTS / "mlflow_run_fp16.png"), full_page=True)
        browser.close()
    assert (SHOTS / "mlflow_runs_chart.png").stat().st_size > 20_000
