"""precision=auto: the search meets the target with no more FP32 ops than the article's
hand-written region, within the group-testing budget, verified by a real conversion."""
from __future__ import annotations

import numpy as np

import shutil

import pytest

from pipeline import artifacts, programs
from pipeline.emulator import Emulator
from tests.conftest import make_cfg


@pytest.fixture(scope="module")
def tiny_copy(tiny_run, tmp_path_factory):
    """The search adds a variant and MLflow runs: work on a copy, so the shared run stays
    as the other tests expect it, whatever the order."""
    dest = tmp_path_factory.mktemp("tiny_search") / "run"
    shutil.copytree(tiny_run, dest)
    return dest


def test_auto_finds_a_small_verified_set(tiny_copy, monkeypatch):
    from pipeline import compile as compile_stage
    from pipeline import convert, evaluate

    monkeypatch.chdir(tiny_copy)
    cfg = make_cfg(tiny_copy, "model=tiny", "precision=auto")
    convert.run(cfg)
    compile_stage.run(cfg)
    evaluate.run(cfg)
    art = tiny_copy / "artifacts"
    report = artifacts.read_json(art / "convert" / "auto" / "report.json")
    search = report["search"]
    article = artifacts.read_json(art / "convert" / "mixed" / "report.json")
    assert 0 < len(search["fp32_ops"]) <= len(article["fp32_compute_ops"])
    assert search["evaluations"] <= search["bound_2klog2n"]
    assert search["verified"]["snr_db"] >= 20.0
    # the saved package keeps exactly the found ops in FP32
    ops = programs.read_ops(art / "convert" / "auto" / "model.mlpackage")
    assert sorted(r.name for r in ops if r.is_compute and r.dtype == "fp32") == sorted(search["fp32_ops"])
    m = artifacts.read_json(art / "evaluate" / "auto" / "metrics.json")
    m32 = artifacts.read_json(art / "evaluate" / "fp32" / "metrics.json")
    assert m["accuracy"]["passes"] == 1
    mixed = artifacts.read_json(art / "evaluate" / "mixed" / "metrics.json")
    # the objective: estimated latency. Fewer FP32 ops than the article's region, never slower
    # by the device model; the search's own estimate (virtual program) matches the package's
    est = m["latency"]["estimated_ms"]["ALL"]
    assert est <= mixed["latency"]["estimated_ms"]["ALL"] * 1.001
    assert search["latency_est_ms"] == pytest.approx(est, rel=0.05)
    assert m["placement"]["ne_op_share"] >= m32["placement"]["ne_op_share"] == 0.0
    text = (art / "convert" / "auto" / "precision.yaml").read_text()
    assert "compute: mixed" in text and "Verified by a real conversion" in text


def test_found_config_converts_like_a_hand_written_one(tiny_copy, monkeypatch, tmp_path):
    """The written config is an ordinary mixed config: convert uses it as is."""
    from pipeline import convert
    from pipeline.config import CONF_DIR

    src = tiny_copy / "artifacts" / "convert" / "auto" / "precision.yaml"
    if not src.exists():
        test_auto_finds_a_small_verified_set(tiny_copy, monkeypatch)
    dest = CONF_DIR / "precision" / "test_found_tmp.yaml"
    shutil.copy(src, dest)
    dest.write_text(dest.read_text().replace("name: auto", "name: test_found_tmp"))
    try:
        monkeypatch.chdir(tmp_path)
        shutil.copytree(tiny_copy / "artifacts" / "trace", tmp_path / "artifacts" / "trace")
        convert.run(make_cfg(tmp_path, "model=tiny", "precision=test_found_tmp"))
    finally:
        dest.unlink()
    report = artifacts.read_json(tmp_path / "artifacts" / "convert" / "test_found_tmp" / "report.json")
    found = artifacts.read_json(tiny_copy / "artifacts" / "convert" / "auto" / "report.json")
    assert sorted(o["name"] for o in report["fp32_compute_ops"]) == sorted(found["search"]["fp32_ops"])


def test_search_logs_every_candidate_to_mlflow(tiny_copy, monkeypatch):
    from mlflow.tracking import MlflowClient

    if not (tiny_copy / "artifacts" / "convert" / "auto").exists():
        test_auto_finds_a_small_verified_set(tiny_copy, monkeypatch)
    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_copy / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") == "search"]
    assert runs
    run = runs[0]
    history = client.get_metric_history(run.info.run_id, "search/snr_db")
    assert len(history) == run.data.metrics["search/evaluations"] >= 2
    assert run.data.metrics["search/fp32_ops_chosen"] >= 1


def test_virtual_mixed_is_bit_exact_with_a_real_mixed_conversion(tiny_copy):
    art = tiny_copy / "artifacts"
    with np.load(art / "trace" / "inputs.npz") as npz:
        feeds = {k: npz[k][0] for k in npz.files}
    fp32 = Emulator(art / "convert" / "fp32" / "model.mlpackage")
    keep = {s["saved_name"] for s in
            artifacts.read_json(art / "convert" / "mixed" / "report.json")["selected_fp32_ops"]}
    for view, real in [(fp32.with_fp16_except(set()), "fp16"), (fp32.with_fp16_except(keep), "mixed")]:
        got = view.run(feeds)["image_embeddings"]
        want = Emulator(art / "convert" / real / "model.mlpackage").run(feeds)["image_embeddings"]
        np.testing.assert_array_equal(got, want)


def test_latency_objective_estimates_the_virtual_program_like_the_real_one(tiny_copy):
    """precision=auto compares FP32 sets by the device model's estimate on the virtual
    program's op records; that estimate matches the one on the real converted package."""
    from pipeline.device import estimate
    from pipeline.search import LatencyObjective

    art = tiny_copy / "artifacts"
    fp32_package = art / "convert" / "fp32" / "model.mlpackage"
    objective = LatencyObjective(Emulator(fp32_package), programs.read_ops(fp32_package),
                                 "M2", "ALL")
    keep = frozenset(s["saved_name"] for s in
                     artifacts.read_json(art / "convert" / "mixed" / "report.json")["selected_fp32_ops"])
    for kept, real in [(frozenset(), "fp16"), (keep, "mixed")]:
        want = estimate(programs.read_ops(art / "convert" / real / "model.mlpackage"),
                        chip="M2", compute_units="ALL").latency_ms
        assert objective(kept) == pytest.approx(want, rel=0.05), real
    assert objective(keep) >= objective(frozenset())  # FP32 islands never make it faster


def test_search_snr_is_the_evaluate_stage_snr(tiny_copy):
    """One SNR definition: the figure the search logs for a candidate is the figure the
    evaluate stage writes for the converted program with the same FP32 set, and both are the
    pooled ratio recomputed here from the reference and the emulated package's outputs."""
    from pipeline.search import Search, Target

    art = tiny_copy / "artifacts"
    inputs = artifacts.read_npz(art / "trace" / "inputs.npz")
    reference = artifacts.read_npz(art / "trace" / "reference.npz")
    samples = [{k: v[i] for k, v in inputs.items()} for i in range(len(next(iter(inputs.values()))))]
    assert len(samples) >= 2  # pooling and the worst sample differ only with several samples
    keep = frozenset(s["saved_name"] for s in artifacts.read_json(
        art / "convert" / "mixed" / "report.json")["selected_fp32_ops"])
    from pipeline.emulator.numerics import numerics_from
    from tests.conftest import make_cfg

    numerics = numerics_from(make_cfg(tiny_copy, "model=tiny"))  # the evaluate stage's: device
    search = Search(Emulator(art / "convert" / "fp32" / "model.mlpackage", numerics=numerics),
                    samples, reference, Target(min_snr_db=0.0))
    search.passes(keep)
    evaluated = artifacts.read_json(art / "evaluate" / "mixed" / "metrics.json")["accuracy"]
    emu = Emulator(art / "convert" / "mixed" / "model.mlpackage",
                   numerics=numerics_from(make_cfg(tiny_copy, "model=tiny")))
    out = np.stack([emu.run(s)["image_embeddings"] for s in samples]).astype(np.float64)
    ref = reference["image_embeddings"].astype(np.float64)
    pooled = 10 * np.log10((ref ** 2).sum() / ((out - ref) ** 2).sum())
    worst = min(10 * np.log10((r ** 2).sum() / ((o - r) ** 2).sum()) for r, o in zip(ref, out))
    # metrics.json rounds SNR to 0.01 dB (README, "Reproducibility")
    assert abs(search.trials[0].snr_db - evaluated["snr_db"]) <= 0.005 + 1e-9
    assert abs(evaluated["snr_db"] - pooled) <= 0.005 + 1e-9
    assert abs(pooled - worst) > 1e-3  # the two definitions do differ on this program


def test_internal_overflow_fails_the_tolerance_unless_allowed():
    """Outputs that match (60 dB) but three ops with inf inside: fails by default, passes when
    the tolerance allows it; the search's target reads the same setting."""
    from pipeline import metrics
    from pipeline.search import Target

    rng = np.random.default_rng(0)
    ref = {"y": rng.normal(size=(2, 100)).astype(np.float32)}
    out = {"y": ref["y"] * (1 + 1e-3)}
    tol = {"min_snr_db": 20.0, "min_cosine": 0.99}
    clean = metrics.accuracy(ref, out, tol, internal_nonfinite_ops=0)
    assert clean["passes"] == 1 and clean["snr_db"] > 59.0
    assert metrics.accuracy(ref, out, tol, internal_nonfinite_ops=3)["passes"] == 0
    assert metrics.accuracy(ref, out, {**tol, "allow_internal_nonfinite": True},
                            internal_nonfinite_ops=3)["passes"] == 1
    m = metrics.accuracy(ref, out, {}, internal_nonfinite_ops=3)
    assert not Target.from_config({"min_snr_db": 20.0}, {}).met(m)
    assert Target.from_config({"min_snr_db": 20.0, "allow_internal_nonfinite": True}, {}).met(m)
    assert Target.from_config({"min_snr_db": 20.0, "allow_internal_nonfinite": None}, {}).met(m) is False


def test_evaluate_counts_the_ops_that_overflow_inside(tiny_run):
    """tiny's FP16 variant overflows in LayerNorm2d's pow (massive activations): metrics.json
    counts the ops of ops.csv with an inf/NaN, and they make the variant fail."""
    import csv

    art = tiny_run / "artifacts" / "evaluate"
    for variant in ("fp32", "fp16", "mixed"):
        acc = artifacts.read_json(art / variant / "metrics.json")["accuracy"]
        with open(art / variant / "ops.csv") as f:
            bad = sum(1 for r in csv.DictReader(f) if int(r["inf_count"]) or int(r["nan_count"]))
        assert acc["internal_nonfinite_ops"] == bad
        if bad:
            assert acc["passes"] == 0
    assert artifacts.read_json(art / "fp16" / "metrics.json")["accuracy"]["internal_nonfinite_ops"] >= 1
