"""The backends behind one protocol, and the device model's figures in every output.

Two parts:
- the emulator backend on the tiny model: metrics.json's latency and placement sections say
  "estimated", name the chip, and hold finite positive figures per compute-units setting;
  the report has the variant x compute-units table and the recommendation's rule;
- the coreml backend's code on Linux, driven through a STAND-IN for coremltools' macOS-only
  objects (CompiledMLModel, utils.compile_model, MLComputePlan with its device-usage and cost
  objects, the macOS version check). The stand-in predicts with the emulator and invents a
  plausible compute plan. This proves the wiring and the schemas (compile -> evaluate ->
  metrics.json, placement tables joined to ops.csv, MLflow names, the fallback below macOS
  14.4), NOT Core ML's behaviour: tests/test_coreml_backend.py runs the real thing on a Mac.
"""
from __future__ import annotations

import csv
import math
import shutil
import types
from pathlib import Path

import pytest

from pipeline import artifacts
from pipeline.backends import PLACEMENT_FIELDS, Settings
from pipeline.coreml_import import coremltools
from tests.conftest import make_cfg

UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------- emulator backend

def test_emulator_metrics_have_estimated_latency_and_placement_per_units(tiny_run):
    ev = tiny_run / "artifacts" / "evaluate"
    m = {v: artifacts.read_json(ev / v / "metrics.json") for v in ("fp32", "fp16", "mixed")}
    for v, metrics in m.items():
        lat, place = metrics["latency"], metrics["placement"]
        assert lat["status"] == "estimated" and lat["chip"] == "M2"
        assert lat["source"].startswith("estimated") and "M2" in lat["source"]
        assert place["source"].startswith("estimated") and place["chip"] == "M2"
        assert set(lat["estimated_ms"]) == set(UNITS) == set(place["by_compute_units"])
        assert all(math.isfinite(x) and x > 0 for x in lat["estimated_ms"].values())
        assert "measured_ms" not in lat  # off macOS nothing is measured
        assert metrics["diagnostics"]["source"].startswith("emulated")
        err = lat["calibration"]["median_abs_error"]  # None only while uncalibrated
        assert err is None or 0 < err < 1
        for summary in place["by_compute_units"].values():
            shares = [summary[f"{d}_op_share"] for d in ("ne", "gpu", "cpu")]
            assert abs(sum(shares) - 1) < 1e-3
    ms = {v: m[v]["latency"]["estimated_ms"]["ALL"] for v in m}
    assert ms["mixed"] >= ms["fp16"]             # FP32 islands cost something, never less
    assert ms["fp32"] > ms["fp16"]
    # an FP32 op never runs on the NE; the tiny graph (~1 ms) is too small to leave the CPU
    # by the device model, so "FP32 on the GPU" is checked on the default model (README)
    fp32_all = m["fp32"]["placement"]["by_compute_units"]["ALL"]
    assert fp32_all["ne_op_share"] == 0.0 and fp32_all["gpu_op_share"] + fp32_all["cpu_op_share"] == 1.0
    for v in m:  # ALL may use every unit, so it is never estimated slower than one subset
        assert m[v]["latency"]["estimated_ms"]["ALL"] <= min(m[v]["latency"]["estimated_ms"].values()) + 1e-6
    assert m["fp16"]["placement"]["by_compute_units"]["CPU_ONLY"]["cpu_op_share"] == 1.0
    # one placement table per setting, the headline's also as placement.csv, one schema
    head = read_csv(ev / "fp16" / "placement.csv")
    assert tuple(head[0]) == PLACEMENT_FIELDS
    for cu in UNITS:
        rows = read_csv(ev / "fp16" / "placement" / f"placement_{cu}.csv")
        assert tuple(rows[0]) == PLACEMENT_FIELDS and {r["device"] for r in rows} <= {"NE", "GPU", "CPU"}
        total = sum(float(r["ms"]) for r in rows)  # op times; dispatch and switches come on top
        assert 0 < total <= m["fp16"]["latency"]["estimated_ms"][cu] + 1e-3
    ops = {r["name"] for r in read_csv(ev / "fp16" / "ops.csv")}
    assert {r["op"] for r in head if r["op_type"] != "cast"} <= ops  # joined by op name


def test_mlflow_names_say_estimated_and_tag_the_chip(tiny_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tiny_run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("variant") == "fp16"]
    data = runs[0].data
    m = artifacts.read_json(tiny_run / "artifacts" / "evaluate" / "fp16" / "metrics.json")
    assert data.metrics["latency/est_ms_ALL"] == pytest.approx(m["latency"]["estimated_ms"]["ALL"])
    assert not any(k.startswith("latency.estimated_ms") for k in data.metrics)
    assert data.tags["device.chip"] == "M2" and data.tags["latency.estimated"] == "true"
    assert data.tags["device.calibration.median_abs_error"] == str(
        m["latency"]["calibration"]["median_abs_error"])
    assert data.tags["latency.source"].startswith("estimated")


def test_report_has_variant_by_units_table_and_fastest_passing_rule(tiny_run, monkeypatch):
    from pipeline import report

    monkeypatch.chdir(tiny_run)
    report.run(make_cfg(tiny_run, "model=tiny"))
    md = (tiny_run / "artifacts" / "report" / "report.md").read_text()
    assert "| variant | CPU_ONLY | CPU_AND_GPU | CPU_AND_NE | ALL |" in md
    assert "**estimated** for M2" in md and "fastest variant that meets" in md
    rows = {line.split("|")[1].strip(): line for line in md.splitlines()
            if line.startswith("| fp") or line.startswith("| mixed")}
    assert {"fp32", "fp16", "mixed"} <= set(rows)
    # fp16 fails; of fp32 and mixed the faster, unless within 1%: then fewer FP32 ops (mixed)
    ev = tiny_run / "artifacts" / "evaluate"
    ms = {v: artifacts.read_json(ev / v / "metrics.json")["latency"]["estimated_ms"]["ALL"]
          for v in ("fp32", "mixed")}
    best = "mixed" if ms["mixed"] <= 1.01 * ms["fp32"] else "fp32"
    assert f"Recommendation: `{best}`" in md
    trade = read_csv(tiny_run / "artifacts" / "report" / "tradeoff.csv")
    assert all(float(r["latency_ms"]) > 0 and "estimated" in r["latency_source"] for r in trade)


def test_unknown_chip_is_one_line(tiny_run):
    from pipeline import evaluate
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="unknown device.chip 'M9'"):
        evaluate.run(make_cfg(tiny_run, "model=tiny", "precision=fp16", "device.chip=M9"))


# ------------------------------------------------------- coreml backend, stand-in

class _Device:
    pass


DEVICE_CLASSES = {n: type(f"ML{c}ComputeDevice", (_Device,), {})
                  for n, c in (("CPU", "CPU"), ("GPU", "GPU"), ("NE", "NeuralEngine"))}


LOADED: dict = {}  # package -> its op records or its emulator: load each once


class StandInPlan:
    """MLComputePlan's surface: model_structure.program.functions[...].block.operations, and
    device usage / cost per operation. Placement here is a made-up rule, not Core ML's."""

    def __init__(self, package: Path, compute_units: str):
        from pipeline import programs

        if package not in LOADED:
            LOADED[package] = programs.read_ops(package)
        self.records = {r.output: r for r in LOADED[package]}
        ns = types.SimpleNamespace
        ops = [ns(operator_name="const", outputs=[ns(name="c0")], inputs={}, blocks=[])]
        ops += [ns(operator_name=r.op_type, outputs=[ns(name=r.output)], inputs={}, blocks=[])
                for r in self.records.values()]
        self.model_structure = ns(program=ns(functions={"main": ns(block=ns(operations=ops))}))
        self.units = compute_units

    def _device(self, rec) -> str:
        if self.units == "CPU_ONLY":
            return "CPU"
        if rec.dtype == "fp16" and self.units in ("ALL", "CPU_AND_NE"):
            return "NE"
        return "GPU" if self.units in ("ALL", "CPU_AND_GPU") else "CPU"

    def get_compute_device_usage_for_mlprogram_operation(self, op):
        rec = self.records.get(op.outputs[0].name)
        if rec is None:
            return None
        dev = DEVICE_CLASSES[self._device(rec)]()
        return types.SimpleNamespace(preferred_compute_device=dev,
                                     supported_compute_devices=[DEVICE_CLASSES["CPU"](), dev])

    def get_estimated_cost_for_mlprogram_operation(self, op):
        if op.outputs[0].name not in self.records:
            return None
        return types.SimpleNamespace(weight=1.0 / len(self.records))


class StandInCoreML:
    """The few coremltools objects the coreml backend calls, with the real ComputeUnit enum."""

    def __init__(self, plan_error: Exception | None = None):
        self.ComputeUnit = coremltools().ComputeUnit
        self.loaded: list[str] = []
        self.planned: list[str] = []
        outer = self

        def compile_model(path: str) -> str:
            dest = Path(path).parent / "_standin_build" / "model.mlmodelc"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(path, dest / "model.mlpackage")
            return str(dest)

        class CompiledMLModel:
            def __init__(self, path: str, compute_units):
                from pipeline.emulator import Emulator

                outer.loaded.append(compute_units.name)
                key = ("emulator", Path(path))
                if key not in LOADED:
                    LOADED[key] = Emulator(Path(path) / "model.mlpackage")
                self.emulator = LOADED[key]

            def predict(self, feed):  # the same feed gives the same outputs: run it once
                key = (id(self.emulator), *(v.tobytes() for v in feed.values()))
                if key not in LOADED:
                    LOADED[key] = self.emulator.run(feed)
                return LOADED[key]

        class MLComputePlan:
            @staticmethod
            def load_from_path(path: str, compute_units):
                if plan_error is not None:
                    raise plan_error
                outer.planned.append(compute_units.name)
                return StandInPlan(Path(path) / "model.mlpackage", compute_units.name)

        self.models = types.SimpleNamespace(
            CompiledMLModel=CompiledMLModel, utils=types.SimpleNamespace(compile_model=compile_model),
            compute_plan=types.SimpleNamespace(MLComputePlan=MLComputePlan))


@pytest.fixture
def on_stand_in_mac(monkeypatch):
    import pipeline.backends as backends
    from pipeline.backends import coreml

    def install(version=(14, 5), plan_error=None):
        ct = StandInCoreML(plan_error)
        monkeypatch.setattr(backends, "is_macos", lambda: True)
        monkeypatch.setattr(coreml, "ct_module", lambda: ct)
        monkeypatch.setattr(coreml, "macos_version", lambda: version)
        return ct
    return install


@pytest.fixture(scope="module")
def tiny_packages(tiny_run, tmp_path_factory):
    """The tiny run's trace and converted packages, without its emulator evaluations."""
    dest = tmp_path_factory.mktemp("coreml_standin")
    for part in ("trace", "convert"):
        shutil.copytree(tiny_run / "artifacts" / part, dest / "artifacts" / part)
    return dest


def test_coreml_backend_wiring_through_the_stand_in(tiny_packages, on_stand_in_mac, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipeline import compile as compile_stage
    from pipeline import evaluate

    ct = on_stand_in_mac()
    work = tiny_packages
    monkeypatch.chdir(work)
    cfg = make_cfg(work, "model=tiny", "backend=coreml", "precision=fp16",
                   "evaluate.latency.warmup=1", "evaluate.latency.runs=2")
    compile_stage.run(cfg)
    evaluate.run(cfg)
    ev = work / "artifacts" / "evaluate" / "fp16"
    record = artifacts.read_json(work / "artifacts" / "compile" / "fp16" / "compile.json")
    assert record["backend"] == "coreml" and record["coreml_compiled"]
    assert (work / "artifacts" / "compile" / "fp16" / record["compiled"]).is_dir()
    m = artifacts.read_json(ev / "metrics.json")
    # accuracy: measured under every setting (fp16 overflows at pow whatever the unit here)
    acc = m["accuracy"]
    assert acc["source"].startswith("measured") and set(acc["by_compute_units"]) == set(UNITS)
    assert all(a["passes"] == 0 for a in acc["by_compute_units"].values())
    assert set(UNITS) <= set(ct.loaded) and set(UNITS) <= set(ct.planned)
    # latency: measured, the estimate beside it, the error computed from the two
    lat = m["latency"]
    assert lat["status"] == "measured" and lat["source"].startswith("measured")
    assert lat["estimate_source"].startswith("estimated") and "M2" in lat["estimate_source"]
    for cu in UNITS:
        got, est = lat["measured_ms"][cu], lat["estimated_ms"][cu]
        assert got > 0 and lat["p90_ms"][cu] >= got and est > 0
        assert lat["estimate_error"][cu] == pytest.approx((est - got) / got, abs=1e-3)
    # placement: measured, with its agreement with the estimate; same schema as estimated
    place = m["placement"]
    assert place["source"] == "measured (Core ML MLComputePlan)"
    assert 0.0 <= place["estimate_agreement"] <= 1.0
    assert m["diagnostics"]["source"].startswith("emulated")
    assert m["diagnostics"]["first_nonfinite_op"]
    rows = read_csv(ev / "placement.csv")
    assert tuple(rows[0]) == PLACEMENT_FIELDS
    assert {r["device"] for r in rows} <= {"NE", "GPU"} and place["ne_op_share"] > 0.9
    ops = {r["name"] for r in read_csv(ev / "ops.csv")}
    assert {r["op"] for r in rows} <= ops   # joined to ops.csv by op name
    total = sum(float(r["ms"]) for r in rows)
    assert total == pytest.approx(lat["measured_ms"]["ALL"], rel=0.01)  # cost x measured
    # MLflow: names say measured / estimated
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    run = client.get_run(artifacts.read_json(evaluate.timings_path(cfg, "fp16"))["mlflow_run_id"])
    for cu in UNITS:
        assert run.data.metrics[f"latency/measured_ms_{cu}"] == pytest.approx(lat["measured_ms"][cu])
        assert run.data.metrics[f"latency/est_ms_{cu}"] == pytest.approx(lat["estimated_ms"][cu])
        assert f"latency/est_error_{cu}" in run.data.metrics
    assert run.data.tags["device.chip"] == "M2" and run.data.tags["backend"] == "coreml"


@pytest.mark.parametrize("version, error, reason", [
    ((14, 2), None, "MLComputePlan needs macOS 14.4+; this is macOS 14.2"),
    ((15, 1), RuntimeError("no plan for you"), "MLComputePlan failed: RuntimeError: no plan for you"),
])
def test_compute_plan_falls_back_to_the_estimate_with_the_reason(
        tiny_packages, on_stand_in_mac, version, error, reason):
    from pipeline.backends.coreml import CoreMLBackend
    from pipeline.backends.estimated import Estimates

    on_stand_in_mac(version, error)
    package = tiny_packages / "artifacts" / "convert" / "mixed" / "model.mlpackage"
    backend = CoreMLBackend(package, tiny_packages / "nowhere.mlmodelc", Settings())
    table = backend.placement("ALL")
    assert table.note == reason
    assert table.source.startswith("estimated") and "M2" in table.source
    assert table.summary()["note"] == reason
    assert table.rows == Estimates(package, "M2").table("ALL").rows
