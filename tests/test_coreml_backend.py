"""The `coreml` backend on a real Mac: compile, predict, latency and MLComputePlan through
coremltools, with the device model's estimate beside each measurement. These need macOS
(14.4+ for MLComputePlan; below it placement falls back to the estimate); elsewhere they
skip, saying why. tests/test_backends.py drives the same code on Linux through a stand-in."""
from __future__ import annotations

import platform

import numpy as np
import pytest

from pipeline import artifacts
from pipeline.backends import PLACEMENT_FIELDS, Settings, is_macos, resolve_backend
from pipeline.errors import UserError

macos = pytest.mark.skipif(not is_macos(), reason=f"Core ML compile/predict/MLComputePlan need "
                                                  f"macOS; this is {platform.system()}")


def test_auto_backend_is_emulator_off_macos_and_coreml_is_refused_clearly():
    if is_macos():
        assert resolve_backend("auto") == "coreml"
    else:
        assert resolve_backend("auto") == "emulator"
        with pytest.raises(UserError, match="backend 'coreml' needs macOS"):
            resolve_backend("coreml")


@macos
def test_coreml_compile_predict_latency_and_plan(tmp_path, monkeypatch):
    from pipeline.backends.coreml import CoreMLBackend, compute_plan_unavailable
    from tests.conftest import run_variants

    monkeypatch.chdir(tmp_path)
    art = run_variants(tmp_path, "tiny", ("fp32", "fp16", "mixed"), "backend=coreml")
    backend = CoreMLBackend(art / "convert" / "fp32" / "model.mlpackage", None,
                            Settings(warmup=2, runs=5))
    backend.compile(tmp_path)
    with np.load(art / "trace" / "inputs.npz") as npz:
        inputs = {k: npz[k] for k in npz.files}
    with np.load(art / "trace" / "reference.npz") as npz:
        ref = npz["image_embeddings"]
    out = backend.predict(inputs, "CPU_ONLY")
    assert np.abs(out["image_embeddings"][0] - ref[0]).max() / np.abs(ref[0]).max() < 1e-3
    lat = backend.latency(inputs, "ALL")
    assert 0 < lat.measured_ms <= lat.p90_ms and lat.estimated_ms > 0
    table = backend.placement("ALL")
    assert table.rows and {r["device"] for r in table.rows} <= {"CPU", "GPU", "NE"}
    assert tuple(table.rows[0]) == PLACEMENT_FIELDS
    if compute_plan_unavailable() is None:
        assert table.source.startswith("measured") and table.agreement is not None
    else:
        assert table.source.startswith("estimated") and "14.4" in table.note
    m16 = artifacts.read_json(art / "evaluate" / "fp16" / "metrics.json")
    assert m16["latency"]["status"] == "measured"
    assert set(m16["latency"]["estimate_error"]) == set(m16["latency"]["measured_ms"])
    assert m16["accuracy"]["source"].startswith("measured")
    assert set(m16["accuracy"]["by_compute_units"]) == {"CPU_ONLY", "CPU_AND_GPU",
                                                        "CPU_AND_NE", "ALL"}
    assert m16["diagnostics"]["source"].startswith("emulated")
