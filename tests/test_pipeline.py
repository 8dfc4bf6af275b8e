"""The real stages on the tiny encoder: what the packages contain, what evaluate and report say."""
from __future__ import annotations

import json

import numpy as np

from pipeline import artifacts, precision, programs
from tests.conftest import make_cfg

FLOAT = {"fp16", "fp32"}


def compute_ops(art, variant):
    ops = programs.read_ops(art / "convert" / variant / "model.mlpackage")
    return [r for r in ops if r.is_compute and r.dtype in FLOAT]


def test_trace_saves_program_inputs_and_reference(tiny_run):
    trace = tiny_run / "artifacts" / "trace"
    manifest = artifacts.read_json(trace / "manifest.json")
    assert manifest["inputs"] == [{"name": "image", "shape": [1, 3, 64, 64], "dtype": "float32"}]
    assert manifest["outputs"] == ["image_embeddings"]
    with np.load(trace / "inputs.npz") as inp, np.load(trace / "reference.npz") as ref:
        assert inp["image"].shape == (3, 1, 3, 64, 64)
        assert ref["image_embeddings"].shape == (3, 1, 32, 4, 4)
        assert np.isfinite(ref["image_embeddings"]).all()
    assert (trace / "model.pt").stat().st_size > 10_000


def test_fp32_package_has_no_fp16_compute_op(tiny_run):
    ops = compute_ops(tiny_run / "artifacts", "fp32")
    assert len(ops) > 200
    assert {r.dtype for r in ops} == {"fp32"}


def test_fp16_package_has_no_fp32_compute_op(tiny_run):
    ops = compute_ops(tiny_run / "artifacts", "fp16")
    assert {r.dtype for r in ops} == {"fp16"}


def test_mixed_package_keeps_exactly_the_selected_ops_in_fp32(tiny_run):
    art = tiny_run / "artifacts"
    fp32_ops = [r for r in compute_ops(art, "mixed") if r.dtype == "fp32"]
    report = artifacts.read_json(art / "convert" / "mixed" / "report.json")
    selected = report["selected_fp32_ops"]
    # the article's region, twice (two LayerNorm2d): pow, reduce_mean, add(eps), sqrt
    assert [s["op_type"] for s in selected] == ["pow", "reduce_mean", "add", "sqrt"] * 2
    assert sorted(r.name for r in fp32_ops) == sorted(s["saved_name"] for s in selected)
    assert report["fp32_not_selected"] == []
    assert len(report["fp32_compute_ops"]) == 8


def test_conversion_report_counts(tiny_run):
    art = tiny_run / "artifacts"
    r16 = artifacts.read_json(art / "convert" / "fp16" / "report.json")
    r32 = artifacts.read_json(art / "convert" / "fp32" / "report.json")
    mixed = artifacts.read_json(art / "convert" / "mixed" / "report.json")
    assert r16["ops_by_dtype"] == {"fp16": r16["compute_ops"]}
    assert r16["casts"] == 2 and r32["casts"] == 0  # input to fp16, output to fp32
    assert mixed["casts"] == 2 + 2 * 2  # into and out of each FP32 island
    assert r16["ops_by_type"]["pow"] == 2 and r16["ops_by_type"]["conv"] > 50
    assert 0.45 < r16["weight_bytes"] / r32["weight_bytes"] < 0.55
    assert 0 < r16["package_bytes"] < r32["package_bytes"]


def test_evaluate_fp16_fails_at_pow_and_mixed_passes(tiny_run):
    ev = tiny_run / "artifacts" / "evaluate"
    m16 = artifacts.read_json(ev / "fp16" / "metrics.json")
    mmx = artifacts.read_json(ev / "mixed" / "metrics.json")
    m32 = artifacts.read_json(ev / "fp32" / "metrics.json")
    assert m16["accuracy"]["passes"] == 0 and m16["accuracy"]["cosine_min"] < 0.5
    assert mmx["accuracy"]["passes"] == 1 and mmx["accuracy"]["snr_db"] > 40
    # device numerics by default; the same programs under IEEE numerics alongside
    assert m16["numerics"]["mode"] == "device" and mmx["numerics"]["ops_by_profile"]["ne"] > 200
    assert m16["numerics"]["ieee"]["passes"] == 0 and mmx["numerics"]["ieee"]["passes"] == 1
    assert mmx["numerics"]["ieee"]["snr_db"] >= mmx["accuracy"]["snr_db"]
    assert "verdict_changed" not in mmx["numerics"]
    assert m32["accuracy"]["snr_db"] > 80
    run16 = artifacts.read_json(ev / "fp16" / "run.json")
    assert run16["first_nonfinite_op"]["op_type"] == "pow"
    assert m16["accuracy"]["source"] == "emulated"
    assert m16["latency"]["status"] == "estimated" and "chip M2" in m16["latency"]["source"]
    # placement (the device model's; tests/test_backends.py checks it per setting): the ops
    # placed on the Neural Engine never include, by name, an FP32-typed op of the saved package
    # as coremltools' own loader reads it; so FP32 islands can only lower the NE share
    import csv

    from pipeline.emulator.runtime import dtype_str, load_program

    for variant in ("fp16", "mixed", "fp32"):
        prog = load_program(tiny_run / "artifacts" / "convert" / variant / "model.mlpackage")
        ops = [op for op in prog.functions["main"].operations if op.op_type != "const"]
        # casts are the boundary itself (the device model lets any unit convert: device/cost.py)
        fp32 = {op.name for op in ops if dtype_str(op.outputs[0]) == "fp32" and op.op_type != "cast"}
        with open(ev / variant / "placement.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and not {r["op"] for r in rows if r["device"] == "NE"} & fp32, variant
    assert m32["placement"]["ne_op_share"] == 0.0
    assert m16["placement"]["ne_op_share"] >= mmx["placement"]["ne_op_share"]
    assert 0 < len(artifacts.read_json(ev / ".." / "convert" / "mixed" / "report.json")
                   ["fp32_compute_ops"]) < 0.1 * m16["program"]["compute_ops"]
    assert m16["placement"]["source"].startswith("estimated")


def test_per_op_diagnostics_table(tiny_run):
    from pipeline.emulator.diagnostics import read_table

    rows = read_table(tiny_run / "artifacts" / "evaluate" / "fp16" / "ops.csv")
    first = [r for r in rows if r["first_nonfinite"]]
    assert len(first) == 1 and first[0]["op_type"] == "pow" and first[0]["inf_count"] > 0
    before = rows[: first[0]["index"]]
    assert all(r["inf_count"] == 0 for r in before)
    assert max(r["max_abs"] for r in before) <= 65504
    # device numerics (default): the NE's activation tables (sigmoid 0.0034 abs error) add
    # error that the synthetic weights amplify; under IEEE every op before the pow stays < 0.05
    errs = sorted(r["rel_error_vs_fp32"] for r in before if r["rel_error_vs_fp32"] is not None)
    assert errs[len(errs) // 2] < 0.02 and errs[-1] < 0.15
    ieee_diffs = [r["rel_diff_vs_ieee"] for r in before if r["rel_diff_vs_ieee"] is not None]
    assert len(ieee_diffs) > 0.9 * len(before) and max(ieee_diffs) < 0.15
    assert {r["numerics"] for r in rows} == {"ne", "ieee"}  # the output cast runs off the NE
    assert {r["numerics"] for r in rows if r["dtype"] == "fp16"} == {"ne"}
    mixed = read_table(tiny_run / "artifacts" / "evaluate" / "mixed" / "ops.csv")
    pows = [r for r in mixed if r["op_type"] == "pow"]
    assert pows and all(r["dtype"] == "fp32" for r in pows)
    assert any(r["max_abs"] > 65504 for r in pows)  # FP32 holds what FP16 cannot


def test_mlflow_has_one_run_per_variant_with_metrics_and_tags(tiny_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    by_variant = {r.data.tags["variant"]: r for r in runs if "variant" in r.data.tags}
    assert set(by_variant) == {"fp32", "fp16", "mixed"}
    r16 = by_variant["fp16"]
    assert r16.data.metrics["accuracy/passes"] == 0
    m16 = artifacts.read_json(tiny_run / "artifacts" / "evaluate" / "fp16" / "metrics.json")
    assert r16.data.metrics["placement/ne_share"] == m16["placement"]["ne_op_share"]
    assert r16.data.tags["accuracy.source"] == "emulated"
    assert r16.data.tags["latency.status"] == "estimated"
    assert r16.data.params["precision.compute"] == "fp16"
    for key in ("git_commit", "backend", "version.coremltools", "version.torch", "version.platform"):
        assert key in r16.data.tags
    names = {a.path for a in client.list_artifacts(r16.info.run_id)}
    assert {"metrics.json", "ops.csv", "placement.csv", "conversion_report.json"} <= names


def test_report_names_the_overflow_and_recommends_a_passing_variant(tiny_run, monkeypatch):
    from pipeline import report

    monkeypatch.chdir(tiny_run)
    report.run(make_cfg(tiny_run, "model=tiny"))
    md = (tiny_run / "artifacts" / "report" / "report.md").read_text()
    # the fastest passing variant (tests/test_backends.py checks the rule); never fp16 here
    assert "Recommendation: `mixed`" in md or "Recommendation: `fp32`" in md
    assert "(pow)" in md and "**estimated** for M2" in md and "emulated" in md
    for png in ("tradeoff.png", "ops.png"):
        assert (tiny_run / "artifacts" / "report" / png).stat().st_size > 10_000


def test_optype_guess_misses_the_add_eps_and_still_fails(tmp_path, monkeypatch):
    """Keeping pow, sqrt, real_div and reduce_mean in FP32 by type is not enough."""
    from tests.conftest import run_variants

    monkeypatch.chdir(tmp_path)
    run_variants(tmp_path, "tiny", ("fp32", "optype"))
    m = artifacts.read_json(tmp_path / "artifacts" / "evaluate" / "optype" / "metrics.json")
    run = artifacts.read_json(tmp_path / "artifacts" / "evaluate" / "optype" / "run.json")
    assert m["accuracy"]["passes"] == 0
    # the variance leaves the FP32 reduce_mean through a cast to FP16 for add(eps): inf there
    assert run["first_nonfinite_op"]["op_type"] in ("cast", "add")


def test_selector_regions_types_and_names():
    class Op:
        def __init__(self, op_type, name):
            self.op_type, self.name = op_type, name

    spec = precision.spec_from_config({"name": "m", "compute": "mixed", "fp32_ops": ["softmax"],
                                       "fp32_regions": [{"start": "pow", "end": "sqrt"}],
                                       "fp32_names": ["re:conv_7.*"]})
    sel = precision.OpSelector(spec)
    program = [("conv", "conv_1"), ("pow", "29"), ("reduce_mean", "v"), ("add", "34"),
               ("sqrt", "35"), ("real_div", "x"), ("softmax", "s"), ("conv", "conv_77"),
               ("pow", "40"), ("sqrt", "41"), ("const", "c")]
    keep16 = [sel(Op(t, n)) for t, n in program]
    assert keep16 == [True, False, False, False, False, True, False, False, False, False, True]
    sel.check()
    # the spec's record (written to report.json and MLflow) survives a JSON round trip intact
    assert json.loads(json.dumps(spec.describe())) == {
        "name": "m", "compute": "mixed", "fp32_ops": ["softmax"],
        "fp32_regions": [{"start": "pow", "end": "sqrt"}], "fp32_names": ["re:conv_7.*"]}


def test_multirun_goes_through_hydras_launchers_and_checks_every_job_first(tiny_run, capsys,
                                                                          monkeypatch):
    from pipeline import convert
    from pipeline.cli import run_stage

    monkeypatch.chdir(tiny_run)
    base = [f"paths.artifacts={tiny_run / 'artifacts'}", "model=tiny"]
    # Hydra's sweeper composes every job before launching any: a bad one stops the sweep
    code = run_stage("convert", convert.run, ["-m", *base, "precision=optype,nope"])
    err = capsys.readouterr().err
    assert code == 2 and "error: unknown precision 'nope'" in err
    assert not (tiny_run / "artifacts" / "convert" / "optype").exists()
    # the joblib launcher runs the jobs in worker processes; Hydra leaves nothing behind
    code = run_stage("convert", convert.run, ["-m", *base, "precision=optype,fp16",
                                              "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert code == 0, capsys.readouterr().err
    for v in ("optype", "fp16"):
        assert (tiny_run / "artifacts" / "convert" / v / "report.json").is_file()
    assert not [p for p in tiny_run.iterdir() if p.name in ("outputs", "multirun")]
    assert not list(tiny_run.rglob("*.log")) and not list(tiny_run.rglob("multirun.yaml"))
    code = run_stage("convert", convert.run, ["--multirun", "--cfg", *base, "precision=fp16,fp32"])
    out = capsys.readouterr().out
    assert code == 0 and "compute: fp16" in out and "compute: fp32" in out
