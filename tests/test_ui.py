"""The MLflow UI, as a person sees it: `mlflow ui` on the project's store, opened in headless
Chromium. Skips only where no browser exists and CI is not set."""
from __future__ import annotations

import os
import re
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


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])


def shown(value: float) -> str:
    """A metric as the runs table prints it (up to 4 decimals, no trailing zeros)."""
    return f"{value:.4f}".rstrip("0").rstrip(".")


def test_a_user_sees_each_variants_snr_ne_share_and_latency_without_clicks(mlflow_ui, tiny_run):
    """The link the report logs: the runs table in the model-training view, the pipeline
    run's parent expanded and its variants' SNR, passes, NE share and (estimated) latency in
    columns; then the parent's page with the comparison table and the recommendation."""
    from mlflow.tracking import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from pipeline import tracking

    uri = f"sqlite:///{tiny_run / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    variants = {r.data.tags["variant"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(variants) == {"fp32", "fp16", "mixed"}
    link = tracking.view_url(uri, exp.experiment_id).split("/#/", 1)[1]
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_context(viewport={"width": 1700, "height": 900}).new_page()
        page.goto(f"{mlflow_ui}/#/{link}")
        expect(page.get_by_text("fp16-emulator").first).to_be_visible(timeout=45_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "mlflow_variants_table.png"), full_page=True)  # if it fails
        for column in ("accuracy/snr_db", "accuracy/passes", "placement/ne_share",
                       "latency/est_ms_ALL"):
            expect(page.get_by_role("columnheader", name=column, exact=True).first).to_be_visible(
                timeout=30_000)
        for name, run in variants.items():
            m = run.data.metrics
            for column in ("accuracy/snr_db", "placement/ne_share", "latency/est_ms_ALL"):
                cell = page.locator(f'[role=row][row-id="{run.info.run_id}"] '
                                    f'[role=gridcell][col-id="metrics.`{column}`"]')
                expect(cell).to_be_visible(timeout=30_000)
                expect(cell).to_have_text(shown(m[column]), timeout=30_000)
        page.screenshot(path=str(SHOTS / "mlflow_variants_table.png"), full_page=True)

        page.goto(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
                  "?workflowType=machine_learning")
        description = page.get_by_role("table").first
        expect(description).to_be_visible(timeout=45_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(SHOTS / "mlflow_parent_run.png"), full_page=True)  # if it fails
        for header in ("variant", "SNR dB", "NE share", "estimated ms (ALL, M2)"):
            expect(description.get_by_role("columnheader", name=header, exact=True)).to_be_visible()
        snr16 = re.escape(f"{variants['fp16'].data.metrics['accuracy/snr_db']:.1f}")
        expect(description.get_by_role("row").nth(2)).to_contain_text(
            re.compile(rf"fp16\s*no\s*{snr16}"))
        for name in variants:
            expect(page.get_by_role("link", name=f"{name}-emulator")).to_be_visible()  # child runs
        page.screenshot(path=str(SHOTS / "mlflow_parent_run.png"), full_page=True)
        browser.close()
    assert (SHOTS / "mlflow_variants_table.png").stat().st_size > 20_000
