"""MLflow as its users expect: one parent run per pipeline run with the variants nested, the
comparison table, plots and recommendation in the parent, short metric names by kind,
params without empty values, descriptions that say what each variant is."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import artifacts, tracking
from tests.conftest import REPO


def store(tiny_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client, exp, client.search_runs([exp.experiment_id], max_results=1000)


def test_one_parent_holds_the_variants_and_the_report(tiny_run):
    client, exp, runs = store(tiny_run)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["pipeline.key"] == "id:tiny-session"
    variants = [r for r in runs if r.data.tags.get("kind") == "variant"]
    assert sorted(r.data.tags["variant"] for r in variants) == ["fp16", "fp32", "mixed"]
    assert {r.data.tags["mlflow.parentRunId"] for r in variants} == {parent.info.run_id}
    assert all(r.info.status == "FINISHED" for r in runs)
    # the report went into the parent: no report run of its own among the variants (a
    # report run by hand later, by other tests, is a standalone run)
    assert not [r for r in runs if r.data.tags.get("kind") == "report"
                and "standalone" not in r.data.tags.get("pipeline.run", "")]
    assert parent.data.tags["report.done"] == "true"
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.json", "report.md", "tradeoff.png", "ops.png"} <= names
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "comparison.json")).read())
    rows = {row[table["columns"].index("variant")]: dict(zip(table["columns"], row))
            for row in table["data"]}
    m16 = artifacts.read_json(tiny_run / "artifacts" / "evaluate" / "fp16" / "metrics.json")
    assert rows["fp16"]["snr_db"] == m16["accuracy"]["snr_db"]
    assert rows["fp16"]["latency_ms"] == pytest.approx(m16["latency"]["estimated_ms"]["ALL"])
    assert rows["fp16"]["latency_kind"] == "estimated" and rows["fp16"]["passes"] is False
    note = parent.data.tags["mlflow.note.content"]
    assert sum(line.startswith("| ") for line in note.splitlines()) == 4 and "| fp16 | **no** |" in note
    assert parent.data.tags["recommended"] in ("mixed", "fp32") and "Recommendation" in note
    view = json.loads(exp.tags["mlflow.sharedViewState.variants"])
    assert "metrics.`accuracy/snr_db`" in json.loads(view["state"])["selectedColumns"]


def test_variant_runs_have_short_grouped_metrics_clean_params_and_a_description(tiny_run):
    _, _, runs = store(tiny_run)
    run = next(r for r in runs if r.data.tags.get("variant") == "mixed")
    metrics = run.data.metrics
    assert 10 <= len(metrics) <= 25, sorted(metrics)
    assert {k.split("/")[0] for k in metrics} <= {"accuracy", "placement", "latency", "program",
                                                  "emulator"}
    assert {"accuracy/snr_db", "accuracy/passes", "placement/ne_share", "latency/est_ms_ALL",
            "program/fp32_ops"} <= set(metrics)
    assert not [k for k in metrics if k.startswith("latency/") and "_ms_" not in k]
    summary = artifacts.read_json(tiny_run / "artifacts" / "evaluate" / "mixed" / "summary.json")
    assert tracking.metric_names(summary) == {k: v for k, v in metrics.items()
                                              if not k.startswith("emulator/")}
    params = run.data.params
    assert not [k for k, v in params.items() if v in ("None", "[]", "{}", "")], params
    assert params["compute_units"] == "ALL" and params["device.compute_units"] == "ALL"
    note = run.data.tags["mlflow.note.content"]
    fp32_ops = int(metrics["program/fp32_ops"])
    assert note.startswith(f"FP16 with pow..sqrt kept in FP32: {fp32_ops} ops FP32; passes at ")
    assert f"est. {metrics['latency/est_ms_ALL']:.2f} ms on M2 (ALL)" in note
    bad = next(r for r in runs if r.data.tags.get("variant") == "fp16")
    assert "**fails**" in bad.data.tags["mlflow.note.content"]
    assert "first non-finite op: pow" in bad.data.tags["mlflow.note.content"]


def test_a_hand_run_outside_a_pipeline_is_a_standalone_run(tiny_run, tmp_path, monkeypatch):
    """No PIPELINE_RUN_ID, no dvc process above: a plain top-level run, tagged so."""
    from pipeline import evaluate
    from tests.conftest import make_cfg

    monkeypatch.delenv("PIPELINE_RUN_ID", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(tiny_run, "model=tiny", "precision=fp32",
                   f"tracking.uri=sqlite:///{tmp_path / 'hand.db'}")
    evaluate.run(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'hand.db'}")
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["pipeline.run"].startswith("standalone")
    assert run.info.status == "FINISHED"


def test_the_key_is_the_nearest_dvc_process_and_pipeline_run_id_wins(tmp_path):
    """A real process tree: a `dvc` executable (a script of that name) runs a shell that runs
    python; the python process finds the dvc process, whose pid and start time make the key."""
    fake = tmp_path / "dvc"
    fake.write_text(f"#!/bin/sh\nsh -c '{sys.executable} -c \"$1\"' sh \"$1\"\n")
    fake.chmod(0o755)
    code = ("import os, json; from pipeline import tracking; r = tracking.pipeline_run(); "
            "print(json.dumps([r.key, r.source, os.getppid()] if r else None))")
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_RUN_ID", "DVC_EXP_NAME")}
    env["PYTHONPATH"] = str(REPO)
    key, source, _ = json.loads(subprocess.run([str(fake), code], env=env, capture_output=True,
                                               text=True, check=True).stdout)
    assert key.startswith("dvc:") and "(pid " in source
    again = json.loads(subprocess.run([str(fake), code], env=env, capture_output=True, text=True,
                                      check=True).stdout)[0]
    assert again != key  # another dvc run, another parent
    exp = json.loads(subprocess.run([str(fake), code], env={**env, "DVC_EXP_NAME": "exp-1"},
                                    capture_output=True, text=True, check=True).stdout)[0]
    assert exp.startswith("dvc-exp:exp-1:") and len(exp) > len("dvc-exp:exp-1:") + 8
    given = tracking.pipeline_run({"PIPELINE_RUN_ID": "sweep-7", "DVC_EXP_NAME": "x"})
    assert given.key == "id:sweep-7"
    assert tracking.pipeline_run({}) is None or tracking.dvc_ancestor() is not None
    with pytest.raises(tracking.UserError, match="PIPELINE_RUN_ID='a b' is not a usable run id"):
        tracking.pipeline_run({"PIPELINE_RUN_ID": "a b"})
