"""`dvc repro` end to end in a temporary copy of the repo (tiny model): a second run does
nothing, editing the mixed config re-runs only mixed, a SIGKILL leaves nothing half-written,
concurrent evaluations all land in MLflow."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline import artifacts
from tests.conftest import REPO

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def env():
    e = dict(os.environ)
    e["PATH"] = f"{BIN}:{e['PATH']}"
    e["PYTHONPATH"] = ""
    return e


def sh(cmd, cwd, check=True, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, env=env(), shell=True, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def mlflow_runs(repo: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def copy_repo(dest: Path) -> Path:
    """The repository's files (tracked and new) in a fresh git repo at dest, model tiny."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    params = (dest / "params.yaml").read_text().replace("model: edgesam", "model: tiny")
    (dest / "params.yaml").write_text(params)
    (dest / "dvc.lock").unlink(missing_ok=True)
    sh("git init -q && git add -A && git -c user.email=t@t -c user.name=t commit -qm init", dest)
    return dest


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    dest = copy_repo(tmp_path_factory.mktemp("repo"))
    first = sh("dvc repro", dest)
    return dest, first.stdout


def test_repro_runs_every_stage_and_writes_metrics(repo):
    path, out = repo
    stages = ran_stages(out)
    assert stages[0] == "trace" and stages[-1] == "report"
    for v in ("fp32", "fp16", "mixed", "auto"):
        assert {f"convert@{v}", f"compile@{v}", f"evaluate@{v}"} <= set(stages)
    shown = sh("dvc metrics show", path).stdout
    assert "accuracy.cosine_min" in shown and "placement.ne_share" in shown
    variants = sorted(r.data.tags["variant"] for r in mlflow_runs(path) if "variant" in r.data.tags)
    assert variants == ["auto", "fp16", "fp32", "mixed"]
    assert [r for r in mlflow_runs(path) if r.data.tags.get("kind") == "search"]
    assert not list(path.glob("outputs")) and not list(path.glob("**/.hydra"))
    # one parent MLflow run for the `dvc repro`: the variants and the search nested, the
    # report in it, nothing left RUNNING
    runs = mlflow_runs(path)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert parent.data.tags["pipeline.source"].startswith("dvc repro (pid ")
    assert parent.data.tags["report.done"] == "true" and parent.data.tags["recommended"] != "none"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags.get("variant", "search") for r in children) == [
        "auto", "fp16", "fp32", "mixed", "search"]
    assert all(r.info.status == "FINISHED" for r in runs)


def test_second_repro_does_nothing(repo):
    path, _ = repo
    out = sh("dvc repro", path).stdout
    assert ran_stages(out) == []


def test_editing_a_precision_config_reruns_nothing_downstream(repo):
    path, _ = repo
    cfg = path / "conf" / "precision" / "mixed.yaml"
    original = cfg.read_text()
    cfg.write_text(original + "# edited\n")
    # The convert stages depend on conf/precision/ (a model may map a slot to another file:
    # model.variants), so they re-run; a comment changes nothing, every package comes out
    # byte-identical (tracked outputs are deterministic), so nothing downstream re-runs. Shown
    # on one variant's chain (evaluate@fp16 reads its convert and the FP32 reference's): every
    # convert stage has the same deps, and the other two would add a minute (auto searches).
    out = sh("dvc repro evaluate@fp16", path).stdout
    assert sorted(ran_stages(out)) == ["convert@fp16", "convert@fp32"], out[-2000:]
    cfg.write_text(original)  # undone: DVC's run cache has those converts, nothing runs
    out = sh("dvc repro", path).stdout
    assert ran_stages(out) == [] and out.count("is cached") == 2, out[-2000:]


def kill_during(path: Path, stage: str) -> None:
    """SIGKILL `dvc repro` while `stage` is writing: its temporary output folder exists.
    Only that stage is forced to run (`--single-item`), as a user re-running one stage does."""
    import threading

    kind, variant = stage.split("@")
    # dvc itself is our child (no shell in between), so we reap it and its PID really ends
    proc = subprocess.Popen([str(BIN / "dvc"), "repro", "--force", "--single-item", stage],
                            cwd=path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    parent = path / "artifacts" / kind
    deadline = time.time() + 600
    while not list(parent.glob(f".{variant}.*.tmp/{variant}")):
        assert proc.poll() is None, "dvc repro ended before the stage wrote anything"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


COMPLETE = {"convert": "report.json", "compile": "compile.json", "evaluate": "metrics.json"}


@pytest.mark.parametrize("stage", ["convert@mixed", "compile@mixed", "evaluate@mixed"])
def test_sigkill_leaves_nothing_half_written_and_repro_recovers(repo, stage):
    path, _ = repo
    runs_before = len(mlflow_runs(path))
    kill_during(path, stage)
    kind = stage.split("@")[0]
    target = path / "artifacts" / kind / "mixed"
    # killed mid-write: DVC had removed the old outputs and the stage wrote only to a
    # temporary sibling, so the real folder is absent or empty
    assert not target.exists() or not any(p.is_file() and p.name not in artifacts.UNTRACKED
                                          for p in target.rglob("*"))  # DVC's .gitignore
    assert list(target.parent.glob(".mixed.*.tmp"))  # the half-written one, set aside
    out = sh("dvc repro --force-downstream", path).stdout  # identical outputs stop the chain
    # re-run, or restored from DVC's run cache (outputs are deterministic, so it may hold them)
    assert stage in ran_stages(out) or f"Stage '{stage}' is cached" in out, out[-2000:]
    assert not list(target.parent.glob(".mixed.*.tmp"))  # the dead writer's leftovers cleaned
    assert (target / COMPLETE[kind]).is_file()
    assert sh("dvc status", path).stdout.strip().endswith("up to date.")
    assert len(mlflow_runs(path)) > runs_before  # earlier runs kept, new ones added
    parents = [r for r in mlflow_runs(path) if r.data.tags.get("kind") == "pipeline"]
    assert len({r.data.tags["pipeline.key"] for r in parents}) == len(parents) >= 2  # a new parent


def test_concurrent_evaluations_all_land(repo):
    path, _ = repo
    before = {r.info.run_id for r in mlflow_runs(path)}
    procs = [subprocess.Popen(f"python -m pipeline.evaluate model=tiny precision={v}", cwd=path,
                              env=env(), shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for v in ("fp32", "fp16", "mixed")]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    after = [r for r in mlflow_runs(path) if r.info.run_id not in before]
    assert sorted(r.data.tags["variant"] for r in after) == ["fp16", "fp32", "mixed"]
    for r in after:
        written = artifacts.read_json(path / "artifacts" / "evaluate" / r.data.tags["variant"]
                                      / "metrics.json")["accuracy"]
        assert r.data.metrics["accuracy/cosine_min"] == written["cosine_min"]
        assert r.data.metrics["accuracy/snr_db"] == written["snr_db"]
        assert r.info.status == "FINISHED"
    assert before <= {r.info.run_id for r in mlflow_runs(path)}
    # Re-evaluating wrote the same tracked bytes; the new wall times and run ids went outside
    # artifacts/evaluate, so the report (which depends on that folder) is not stale.
    assert sh("dvc status", path).stdout.strip().endswith("up to date.")


SLOTS = ["fp32", "fp16", "mixed", "auto"]
VARIANTS_OF = {"bert_tiny": ["fp32", "mixed"], "tiny": SLOTS}


def test_two_models_experiments_switch_and_compare_in_rows_that_fit_a_terminal(repo):
    """`dvc exp run -S model=bert_tiny`, then `-S model=tiny`: each model maps the variant
    slots to its own configs (an nn.LayerNorm model's mixed is mixed_layernorm, tiny's the
    article's region), so neither inherits the other's list. bert_tiny maps its slots as
    minilm does, at a fraction of the time (`dvc exp run -S model=minilm` then `-S
    model=tiny` ran here too: 14.5 min on a loaded machine). Then `make compare`'s command:
    one row per experiment and variant, at most 200 columns; each experiment's MLflow runs
    nest under a parent named after it. bert_tiny's experiment takes two of the slots (-S
    variants=...): the mapped one and the FP32 reference every evaluation needs (fp16 and auto
    map to themselves for both models: test_variants.py); tiny's experiment has all four."""
    path, _ = repo
    for model in ("bert_tiny", "tiny"):
        slots = ",".join(VARIANTS_OF[model])  # the workspace keeps the last experiment's params
        out = sh(f"dvc exp run -n {model}-exp -S model={model} -S 'variants=[{slots}]'", path,
                 timeout=1500).stdout
        # tiny's stages come back from DVC's run cache (the fixture ran them with these deps)
        assert "report" in ran_stages(out) or "Stage 'report' is cached" in out, out[-2000:]
        lineage = artifacts.read_json(path / "artifacts" / "convert" / "mixed" / "lineage.json")
        assert lineage["config"]["precision"]["config"] == ("mixed_layernorm" if model != "tiny"
                                                            else None)
        params = yaml.safe_load((path / "params.yaml").read_text())
        assert params["model"] == model and params["variants"] == VARIANTS_OF[model]
    wide = sh("dvc exp show --csv", path).stdout
    out = sh("python -m pipeline.compare", path).stdout
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 200, out
    rows = {(r[0], r[2]): r for r in (line.split() for line in lines[2:])}
    assert {(f"{m}-exp", v) for m in ("bert_tiny", "tiny") for v in VARIANTS_OF[m]} <= set(rows), out
    assert rows[("tiny-exp", "fp16")][1] == "tiny" and rows[("bert_tiny-exp", "mixed")][1] == "bert_tiny"
    summary = artifacts.read_json(path / "artifacts" / "evaluate" / "fp16" / "summary.json")
    row = rows[("tiny-exp", "fp16")]  # the workspace holds the last experiment's outputs
    assert row[3] == ("yes" if summary["accuracy"]["passes"] else "no")
    assert row[4] == f"{summary['accuracy']['snr_db']:.1f}"
    assert row[6] == f"{summary['placement']['ne_share']:.2f}"
    assert row[7] == f"{summary['latency']['est_ms_ALL']:.2f}" and row[8] == "est"
    assert "accuracy.snr_db" in wide  # dvc's own table has the same short keys
    md = sh("python -m pipeline.compare --md", path).stdout
    assert md.startswith("| experiment | model | variant |") and "| tiny-exp | tiny | fp16 |" in md
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bert_tiny")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "pipeline"]
    assert parent.info.run_name == "bert_tiny-bert_tiny-exp"
    nested = sorted(r.data.tags["variant"] for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                    and "variant" in r.data.tags)
    assert nested == sorted(VARIANTS_OF["bert_tiny"])
