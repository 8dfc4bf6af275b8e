"""Bad input gets one clear line and exit code 2, never a traceback; faults leave a
consistent state. Each case asserts the message and what is (not) on disk afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline import compile as compile_stage
from pipeline import convert, evaluate, trace
from pipeline.cli import run_stage
from tests.conftest import REPO

STAGES = {"trace": trace.run, "convert": convert.run, "compile": compile_stage.run,
          "evaluate": evaluate.run}


@pytest.fixture
def stage(tmp_path, capsys, monkeypatch):
    """Run a stage in-process through its CLI wrapper; returns (exit code, stderr)."""
    monkeypatch.chdir(tmp_path)

    def call(name, *argv):
        code = run_stage(name, STAGES[name], [f"paths.artifacts={tmp_path / 'artifacts'}",
                                              f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                              *argv])
        err = capsys.readouterr().err
        errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
        return code, (errors[0] if errors else err)
    return call


def traced(stage, *argv):
    code, err = stage("trace", *argv)
    assert code == 0, err


@pytest.mark.parametrize("argv,expected", [
    (["precision=fp8"], "error: unknown precision 'fp8' -- choose one of: auto, auto_edgesam, fp16, fp32, mixed"),
    (["model=nope"], "error: unknown model 'nope' -- choose one of: bert_tiny, custom, edgesam, gpt2_tiny, llama_tiny, minilm, tiny, vit_tiny"),
    (["backend=tpu"], "error: unknown backend 'tpu' -- choose one of: auto, emulator, coreml"),
    (["evaluate.emulator_mode=fast"], "unknown evaluate.emulator_mode 'fast'"),
    (["precision=="], "bad override"),
    (["trace.method=onnx"], "unknown trace.method 'onnx'"),
])
def test_bad_names_are_one_line(stage, argv, expected):
    code, err = stage("trace", "model=tiny", *argv)
    assert code == 2 and expected in err


@pytest.mark.parametrize("override,expected", [
    ("precision.fp32_ops=[softmax]", "fp32_ops names op type 'softmax', which the program does not contain"),
    ("precision.fp32_names=[no_such_op*]", "fp32_names pattern 'no_such_op*' matches no op name"),
    ("precision.fp32_regions=[{start: pow, end: softmax}]", "region pow->softmax has no end"),
    ("precision.fp32_regions=[{start: sqrt, end: pow}]", "opened at op"),
    ("precision.fp32_regions=[{start: pow}]", "needs both a start and an end"),
    ("precision.compute=fp17", "unknown compute 'fp17'"),
])
def test_bad_mixed_configs_name_the_entry_and_write_nothing(stage, tmp_path, override, expected):
    traced(stage, "model=tiny")
    code, err = stage("convert", "model=tiny", "precision=mixed", override)
    assert code == 2 and expected in err, err
    assert not (tmp_path / "artifacts" / "convert" / "mixed").exists()


def test_model_target_that_does_not_import(stage, tmp_path):
    code, err = stage("trace", "model=custom", "model._target_=no_such_pkg.build")
    assert code == 2 and "model._target_ 'no_such_pkg.build' does not import" in err
    assert not (tmp_path / "artifacts" / "trace").exists()


def test_builder_that_returns_no_module(stage):
    code, err = stage("trace", "model=custom", "model._target_=tests.bad_models.not_a_module")
    assert code == 2 and "returned str, not a torch.nn.Module" in err


def test_missing_checkpoint(stage, tmp_path):
    code, err = stage("trace", "model=tiny", f"model.checkpoint={tmp_path / 'nope.pt'}")
    assert code == 2 and "checkpoint" in err and "not found" in err


def test_corrupt_checkpoint(stage, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    code, err = stage("trace", "model=tiny", f"model.checkpoint={bad}")
    assert code == 2 and "is not a readable torch checkpoint" in err


class Custom:
    pass


def test_pickle_refused_by_weights_only(stage, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {}, "extra": Custom()}, path)
    code, err = stage("trace", "model=tiny", f"model.checkpoint={path}")
    assert code == 2 and "refused by torch.load(weights_only=True)" in err
    assert "torch.save(model.state_dict(), PATH)" in err


def test_checkpoint_of_another_architecture(stage, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3)}, path)
    code, err = stage("trace", "model=tiny", f"model.checkpoint={path}")
    assert code == 2 and "does not fit the model" in err


def test_input_spec_that_does_not_fit(stage, tmp_path):
    code, err = stage("trace", "model=custom", "model.inputs=[{name: x, shape: [1, 8, 31]}]")
    assert code == 2 and err.startswith("error: trace failed: the model's forward pass on input 0")
    assert not (tmp_path / "artifacts" / "trace").exists()


def test_input_data_file_missing_and_mismatched(stage, tmp_path):
    code, err = stage("trace", "model=custom", f"model.data.file={tmp_path / 'x.npz'}")
    assert code == 2 and "input data file" in err and "not found" in err
    import numpy as np

    np.savez(tmp_path / "x.npz", x=np.zeros((2, 8, 7), np.float32))
    code, err = stage("trace", "model=custom", f"model.data.file={tmp_path / 'x.npz'}")
    assert code == 2 and "input 'x' data has shape [2, 8, 7]" in err


def test_unconvertible_model_names_stage_and_op(stage, tmp_path):
    model = ["model=custom", "model._target_=tests.bad_models.unconvertible"]
    traced(stage, *model)
    code, err = stage("convert", *model, "precision=fp16")
    assert code == 2 and err.startswith("error: convert failed:") and "'histc'" in err
    assert not (tmp_path / "artifacts" / "convert" / "fp16").exists()


def test_stage_order_mistakes(stage):
    code, err = stage("convert", "model=tiny", "precision=fp16")
    assert code == 2 and "run `python -m pipeline.trace` first" in err
    traced(stage, "model=tiny")
    code, err = stage("evaluate", "model=tiny", "precision=fp16")
    assert code == 2 and "run `python -m pipeline.convert model=tiny precision=fp16` first" in err


def test_tracking_uri_that_does_not_answer(stage, tmp_path):
    traced(stage, "model=custom")
    for step in ("convert", "compile"):
        assert stage(step, "model=custom", "precision=fp32")[0] == 0
    code, err = stage("evaluate", "model=custom", "precision=fp32", "tracking.uri=http://127.0.0.1:9")
    assert code == 2 and "MLflow tracking URI 'http://127.0.0.1:9' does not answer" in err
    assert not (tmp_path / "artifacts" / "evaluate" / "fp32").exists()


def test_nonfinite_outputs_are_results_not_crashes(stage, tmp_path):
    overrides = ["model=custom", "model._target_=tests.bad_models.square",
                 "model.inputs=[{name: x, shape: [1, 16], range: [-1000, 1000]}]"]
    traced(stage, *overrides)
    for v in ("fp32", "fp16"):
        for step in ("convert", "compile", "evaluate"):
            code, err = stage(step, *overrides, f"precision={v}")
            assert code == 0, err
    from pipeline import artifacts

    m = artifacts.read_json(tmp_path / "artifacts" / "evaluate" / "fp16" / "metrics.json")
    assert m["accuracy"]["nonfinite_fraction"] > 0.5 and m["accuracy"]["passes"] == 0
    assert m["accuracy"]["max_abs_error"] == float("inf")


def test_rerunning_evaluate_adds_runs_and_keeps_old_ones(stage, tmp_path):
    from mlflow.tracking import MlflowClient

    traced(stage, "model=custom")
    for step in ("convert", "compile", "evaluate", "evaluate"):
        assert stage(step, "model=custom", "precision=fp32")[0] == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("custom").experiment_id])
    assert len(runs) == 2 and len({r.info.run_id for r in runs}) == 2
    assert all(r.data.tags["variant"] == "fp32" for r in runs)


def cli(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_errors_have_no_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80garbage")
    for argv, needle in [(["pipeline.convert", "precision=fp8"], "unknown precision 'fp8'"),
                         (["pipeline.trace", "model=tiny", f"model.checkpoint={bad}"], "checkpoint")]:
        proc = cli(*argv, f"paths.artifacts={tmp_path / 'a'}", cwd=tmp_path)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and needle in errors[0]


def test_sigkill_during_trace_leaves_no_trace_output(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.trace", "model=edgesam",
                             f"paths.artifacts={tmp_path / 'a'}"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "samples of image" in line:  # building done, the reference forward passes run
            time.sleep(1.5)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    trace_dir = tmp_path / "a" / "trace"
    assert not trace_dir.exists() or (trace_dir / "manifest.json").is_file()
    leftovers = list((tmp_path / "a").glob(".trace.*.tmp")) if (tmp_path / "a").exists() else []
    assert all(not (p / "trace" / "manifest.json").exists() for p in leftovers)


def test_atomic_writes_and_cleanup_of_dead_writers(tmp_path):
    from pipeline import artifacts

    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(dest, is_dir=True) as tmp:
            (tmp / "half.json").write_text("{")
            raise RuntimeError("killed")
    assert not dest.exists() and not list(tmp_path.glob(".out.*.tmp"))
    dead = subprocess.Popen(["true"])
    dead.wait()
    for pid, name in ((dead.pid, ".out.dead.tmp"), (os.getpid(), ".out.live.tmp")):
        (tmp_path / name / "out").mkdir(parents=True)
        (tmp_path / name / ".pid").write_text(str(pid))
    with artifacts.atomic_path(dest, is_dir=True) as tmp:
        (tmp / "ok.json").write_text("{}")
    assert (dest / "ok.json").is_file()
    assert not (tmp_path / ".out.dead.tmp").exists()  # a dead writer's leftovers go
    assert (tmp_path / ".out.live.tmp").exists()      # a live writer's folder is never touched


HEAVY = ("torch", "coremltools", "mlflow", "matplotlib")


def test_stage_modules_load_no_heavy_machinery_until_they_work(tmp_path):
    """pipeline/cli.py's rule: importing a stage (what a sweep's driver and `--cfg` do)
    loads none of torch, coremltools, MLflow, matplotlib; a bad override, or a stage run
    before the one it reads, is answered before any of them loads (python -X importtime
    lists every module a process imports)."""
    code = ("import sys\nimport pipeline.trace, pipeline.convert, pipeline.compile, "
            "pipeline.evaluate, pipeline.report\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
    runs = [(s, "precision=fp8", "unknown precision 'fp8'")
            for s in ("trace", "convert", "compile", "evaluate", "report")]
    runs += [(s, "precision=fp16", "first") for s in ("convert", "compile", "evaluate")]
    for stage, override, needle in runs:
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", f"pipeline.{stage}",
                               "model=tiny", override, f"paths.artifacts={tmp_path / 'a'}"],
                              capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 2 and needle in proc.stderr.splitlines()[-1], proc.stderr[-500:]
        loaded = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()
                  if line.startswith("import time:")}
        assert not loaded & set(HEAVY), (stage, loaded & set(HEAVY))
        assert "pipeline.config" in loaded  # the listing is real: the config was composed


def test_coremltools_loads_without_the_probes_it_does_not_use():
    """pipeline/coreml_import.py: a stage's coremltools import skips scikit-learn (disabled
    by coremltools for this version anyway) and transformers (a flag nobody reads); both stay
    importable afterwards, and coremltools converts as before."""
    code = ("import sys\nfrom pipeline.coreml_import import coremltools\nct = coremltools()\n"
            "skipped = [m for m in ('sklearn', 'transformers') if m in sys.modules]\n"
            "from coremltools._deps import _HAS_SKLEARN\n"
            "import sklearn, transformers\n"
            "from coremltools.converters.mil import Builder as mb\n"
            "@mb.program(input_specs=[mb.TensorSpec(shape=(2,))])\n"
            "def prog(x):\n    return mb.relu(x=x)\n"
            "m = ct.convert(prog, convert_to='mlprogram')\n"
            "print(skipped, _HAS_SKLEARN, sklearn.__name__, transformers.__name__, "
            "type(m).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "False", "sklearn", "transformers", "MLModel"], proc.stdout
    assert "scikit-learn version" not in proc.stderr  # coremltools' warning is gone with it
